use serde_json::{Map, Value};

/// A webhook's parameters as Twilio sent them: decoded, in order, repeated keys kept.
///
/// This is what gets signed, what a job's `payload` holds, and what the spool and the dead-letter
/// queue keep, so a message can always be re-driven from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn from_form(body: &[u8]) -> Self {
        Params(form_urlencoded::parse(body).into_owned().collect())
    }

    /// A JSON webhook body: each top-level member is a param; non-string values keep their JSON text.
    pub fn from_json(body: &[u8]) -> Result<Self, serde_json::Error> {
        let object: Map<String, Value> = serde_json::from_slice(body)?;
        Ok(Self::from_object(&object))
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Params(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// Inverse of [`Params::to_payload`]: an array becomes a repeated key.
    pub fn from_object(object: &Map<String, Value>) -> Self {
        let mut pairs = Vec::with_capacity(object.len());
        for (key, value) in object {
            match value {
                Value::Array(values) => {
                    pairs.extend(values.iter().map(|v| (key.clone(), scalar_text(v))));
                }
                other => pairs.push((key.clone(), scalar_text(other))),
            }
        }
        Params(pairs)
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The first value of `key`, if it has any text.
    pub fn non_blank(&self, key: &str) -> Option<&str> {
        self.get(key).map(str::trim).filter(|v| !v.is_empty())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The params as one JSON object; a key that repeats becomes an array of its values.
    pub fn to_payload(&self) -> Value {
        let mut object = Map::with_capacity(self.0.len());
        for (key, value) in &self.0 {
            match object.get_mut(key) {
                None => {
                    object.insert(key.clone(), Value::String(value.clone()));
                }
                Some(Value::Array(values)) => values.push(Value::String(value.clone())),
                Some(first) => {
                    let first = first.take();
                    object.insert(key.clone(), Value::Array(vec![first, Value::String(value.clone())]));
                }
            }
        }
        Value::Object(object)
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_repeated_key_becomes_an_array_in_the_payload_and_back() {
        let params = Params::from_form(
            b"Body=hi+there&MessagingBinding.Address=%2B1555&MessagingBinding.Address=%2B1666&Empty=",
        );
        let payload = params.to_payload();
        assert_eq!(payload, json!({"Body": "hi there", "MessagingBinding.Address": ["+1555", "+1666"], "Empty": ""}));
        let back = Params::from_object(payload.as_object().unwrap());
        let mut a = back.pairs().to_vec();
        let mut b = params.pairs().to_vec();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn json_members_that_are_not_strings_keep_their_json_text() {
        let params = Params::from_json(br#"{"Index": 3, "Body": "x", "Attributes": {"a": 1}}"#).unwrap();
        assert_eq!(params.get("Index"), Some("3"));
        assert_eq!(params.get("Attributes"), Some(r#"{"a":1}"#));
    }
}
