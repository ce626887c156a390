//! Twilio's request signature, checked the way its own helper libraries check it.
//!
//! `X-Twilio-Signature` is base64(HMAC(key, URL + each param's key and value)), keys sorted
//! bytewise and each key's distinct values sorted (twilio-python `request_validator.py`,
//! twilio-node `webhooks.ts`). The key is the account's auth token with HMAC-SHA1, or, when the
//! request carries `X-Twilio-Webhooks-Signature-Settings: key=<id>,algorithm=<HMAC_SHA1|HMAC_SHA256>`,
//! that SharedKey's secret with that algorithm (twilio-python 9.13, `get_signature_algorithm`). A
//! JSON body is not in the HMAC: the URL carries `bodySHA256`, the hex SHA-256 of the raw body, and
//! that is checked instead.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Params;

/// Why a request was refused. None of these ever carries a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("no X-Twilio-Signature header")]
    Missing,
    #[error("the signature does not match the URL and params")]
    Mismatch,
    #[error("the body does not match its bodySHA256")]
    BodyHashMismatch,
    #[error("{0} form params, far more than any webhook Twilio sends")]
    Implausible(usize),
}

/// Far more params than any Twilio webhook carries (a Messaging webhook with ten media has under
/// sixty). A body with more is refused before it is decoded and sorted, so that forged bodies of
/// `a&a&a&…` cost a count of bytes, not the work a genuine webhook gets.
pub const MAX_PARAMS: usize = 512;

/// The base URL Twilio calls, as configured: TLS ends at the proxy, so the request itself cannot tell
/// the scheme or host that Twilio signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl {
    https: bool,
    /// The host as written, brackets and all for IPv6.
    host: String,
    port: Option<u16>,
    /// A path the proxy strips before the request reaches us, without a trailing slash.
    prefix: String,
}

impl PublicUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let (https, rest) = if let Some(rest) = raw.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = raw.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err("must start with https:// (or http:// for local use)".into());
        };
        if rest.contains(['?', '#']) {
            return Err("must not have a query or fragment".into());
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => {
                let port = authority[i + 1..].parse::<u16>().map_err(|_| "has an invalid port".to_string())?;
                (&authority[..i], Some(port))
            }
            _ => (authority, None),
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        Ok(PublicUrl { https, host: host.to_owned(), port, prefix: path.trim_end_matches('/').to_owned() })
    }

    fn origin(&self, port: Option<u16>) -> String {
        let scheme = if self.https { "https" } else { "http" };
        match port {
            Some(port) => format!("{scheme}://{}:{port}{}", self.host, self.prefix),
            None => format!("{scheme}://{}{}", self.host, self.prefix),
        }
    }

    /// The full URL Twilio called for a request whose raw path and query are `path_and_query`.
    pub fn join(&self, path_and_query: &str) -> String {
        self.origin(self.port) + path_and_query
    }

    /// Every spelling of the URL that Twilio's libraries accept, and no other: the union of what
    /// twilio-python 9.13 (`RequestValidator.validate`) and twilio-node 6.3 (`validateRequest`)
    /// try. Both take the URL as received with its port removed and, only when it has none, with
    /// the scheme's default port added. twilio-node also tries the URL as `new URL()` serialises
    /// it (`'` in a query becomes `%27`, a default port is dropped), with and without a port, and
    /// each of those with the query re-encoded by Node's legacy `querystring`. Built one at a
    /// time, as configured first, since a genuine request almost always matches that one.
    fn candidates<'a>(&'a self, path_and_query: &'a str) -> impl Iterator<Item = String> + 'a {
        let received = self.join(path_and_query);
        // The other spellings are made only if the first fails: most requests match the URL as
        // configured. twilio-python reads the URL through urlparse/geturl, which drops an empty
        // query's `?`; its port rules are twilio-node's.
        let spellings = std::iter::once(received.clone()).flat_map(|received| {
            let python = received.strip_suffix('?').unwrap_or(&received);
            [node_remove_port(python), node_add_port(python), node_remove_port(&received), node_add_port(&received)]
        });
        let normalized = std::iter::once(received.clone()).flat_map(|received| {
            let Ok(url) = url::Url::parse(&received) else { return Vec::new() };
            let url = url.to_string();
            let (without, with) = (node_remove_port(&url), node_add_port(&url));
            let legacy = [legacy_querystring(&without), legacy_querystring(&with)];
            [Some(without), Some(with)].into_iter().chain(legacy).flatten().collect()
        });
        let mut seen = Vec::new();
        std::iter::once(received).chain(spellings).chain(normalized).filter(move |c| {
            let new = !seen.contains(c);
            if new {
                seen.push(c.clone());
            }
            new
        })
    }
}

/// Where a URL's authority ends and what its port is, as twilio-node's `splitUrl` reads it:
/// (scheme and `//`, authority without the port, the port with its colon, the rest).
fn node_split(url: &str) -> Option<(&str, &str, &str, &str)> {
    let scheme_end = url.find("://")? + 3;
    let authority_end = url[scheme_end..].find(['/', '?', '#']).map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let after_bracket = authority[host_start..].rfind(']').map_or(host_start, |i| host_start + i + 1);
    let port_start = authority[after_bracket..].find(':').map_or(authority.len(), |i| after_bracket + i);
    Some((&url[..scheme_end], &authority[..port_start], &authority[port_start..], &url[authority_end..]))
}

/// twilio-node's `removePort`.
fn node_remove_port(url: &str) -> String {
    match node_split(url) {
        Some((scheme, host, _, rest)) => format!("{scheme}{host}{rest}"),
        None => url.to_owned(),
    }
}

/// twilio-node's `addPort`: the scheme's default port, where the URL names none.
fn node_add_port(url: &str) -> String {
    match node_split(url) {
        Some((scheme, host, "", rest)) => {
            let port = if scheme.eq_ignore_ascii_case("https://") { 443 } else { 80 };
            format!("{scheme}{host}:{port}{rest}")
        }
        _ => url.to_owned(),
    }
}

/// twilio-node's `withLegacyQuerystring`: the query parsed and re-serialised by Node's
/// `querystring` module, or None where that changes nothing twilio-node would try. `parse` splits
/// on `&` and `=`, decodes `+` and `%XX`, and groups a repeated key's values where the key first
/// appeared (array-index keys first, in numeric order, as JavaScript orders an object's keys);
/// `stringify` escapes all but `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
fn legacy_querystring(url: &str) -> Option<String> {
    let (base, query) = url.split_once('?')?;
    if query.is_empty() {
        return None;
    }
    let decode = |text: &str| {
        let text = text.replace('+', " ");
        percent_encoding::percent_decode_str(&text).decode_utf8_lossy().into_owned()
    };
    let mut keys: Vec<(String, Vec<String>)> = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
        let (key, value) = (decode(key), decode(value));
        match keys.iter_mut().find(|(k, _)| *k == key) {
            Some((_, values)) => values.push(value),
            None => keys.push((key, vec![value])),
        }
    }
    // JavaScript lists integer-like keys (canonical, below 2^32 - 1) first, in ascending order.
    let index = |key: &str| key.parse::<u32>().ok().filter(|n| *n < u32::MAX && n.to_string() == key);
    keys.sort_by_key(|(key, _)| index(key).map_or((1, 0), |n| (0, n)));
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'!')
        .remove(b'~')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')');
    let escape = |text: &str| percent_encoding::utf8_percent_encode(text, KEEP).to_string();
    let pairs: Vec<String> = keys
        .iter()
        .flat_map(|(key, values)| values.iter().map(move |value| format!("{}={}", escape(key), escape(value))))
        .collect();
    Some(format!("{base}?{}", pairs.join("&")))
}

/// The HMAC a signature is made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha1,
    HmacSha256,
}

impl Algorithm {
    /// The names Twilio uses, in any case, as twilio-python reads them (`.upper()`).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "HMAC_SHA1" => Some(Algorithm::HmacSha1),
            "HMAC_SHA256" => Some(Algorithm::HmacSha256),
            _ => None,
        }
    }
}

/// What `X-Twilio-Webhooks-Signature-Settings` names: the SharedKey's id, if given, and the
/// algorithm. None when the header is absent or names no algorithm: the auth-token rule applies.
/// Read as twilio-python's `get_signature_algorithm` reads it: comma-separated `name=value` parts,
/// trimmed, the first non-empty `algorithm` wins.
pub fn shared_key_settings(header: Option<&str>) -> Option<(Option<&str>, &str)> {
    let part = |wanted: &str| {
        header.unwrap_or_default().split(',').find_map(|part| {
            let (name, value) = part.split_once('=')?;
            (name.trim() == wanted && !value.trim().is_empty()).then(|| value.trim())
        })
    };
    part("algorithm").map(|algorithm| (part("key"), algorithm))
}

/// The signature Twilio computes for `url` and `params` with an auth token.
pub fn sign(token: &str, url: &str, params: &Params) -> String {
    sign_with(Algorithm::HmacSha1, token, url, params)
}

/// The signature Twilio computes for `url` and `params` with `secret` and `algorithm`.
pub fn sign_with(algorithm: Algorithm, secret: &str, url: &str, params: &Params) -> String {
    BASE64.encode(mac(algorithm, secret, url, &signing_order(params)))
}

/// The params as Twilio feeds them to the HMAC: keys sorted bytewise, each key's distinct values
/// sorted.
fn signing_order(params: &Params) -> Vec<(&str, &str)> {
    let mut pairs: Vec<(&str, &str)> = params.pairs().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

fn mac(algorithm: Algorithm, secret: &str, url: &str, pairs: &[(&str, &str)]) -> Vec<u8> {
    fn feed<M: Mac>(mut mac: M, url: &str, pairs: &[(&str, &str)]) -> Vec<u8> {
        mac.update(url.as_bytes());
        for (key, value) in pairs {
            mac.update(key.as_bytes());
            mac.update(value.as_bytes());
        }
        mac.finalize().into_bytes().to_vec()
    }
    let key = secret.as_bytes();
    match algorithm {
        Algorithm::HmacSha1 => {
            feed(Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes a key of any length"), url, pairs)
        }
        Algorithm::HmacSha256 => {
            feed(Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length"), url, pairs)
        }
    }
}

/// Refuses a form body with implausibly many params, by counting bytes, before anything decodes
/// it (see [`MAX_PARAMS`]). A JSON body (`bodySHA256` in the query) is checked by its hash instead.
pub fn plausible(path_and_query: &str, body: &[u8]) -> Result<(), SignatureError> {
    if body_hash(path_and_query).is_some() {
        return Ok(());
    }
    let params = body.iter().filter(|&&b| b == b'&').count() + 1;
    if params > MAX_PARAMS {
        return Err(SignatureError::Implausible(params));
    }
    Ok(())
}

fn body_hash(path_and_query: &str) -> Option<std::borrow::Cow<'_, str>> {
    let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "bodySHA256").map(|(_, v)| v)
}

/// Checks a request's signature over its raw body and returns its params only if it is genuine.
///
/// `path_and_query` is the request target exactly as received: re-serialising it could change
/// what was signed.
pub fn verify(
    url: &PublicUrl,
    path_and_query: &str,
    header: Option<&str>,
    body: &[u8],
    keys: &[(Algorithm, &SecretString)],
) -> Result<Params, SignatureError> {
    let header = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(SignatureError::Missing)?;
    plausible(path_and_query, body)?;
    let body_hash = body_hash(path_and_query);

    // A JSON body is covered by its hash, not by the HMAC, which then spans the URL alone.
    let signed_params = if body_hash.is_some() { Params::default() } else { Params::from_form(body) };
    // Compared as bytes, so the params are sorted once for every URL spelling and token. The
    // decoder refuses non-canonical base64, so equal bytes mean an equal header.
    let claimed = BASE64.decode(header).map_err(|_| SignatureError::Mismatch)?;
    let pairs = signing_order(&signed_params);
    // Each comparison is constant-time. Stopping at the first match tells a timing observer only
    // which public URL spelling, or which of the configured tokens, signed a genuine request.
    let genuine = url.candidates(path_and_query).any(|candidate| {
        keys.iter().any(|(algorithm, secret)| {
            bool::from(mac(*algorithm, secret.expose_secret(), &candidate, &pairs).as_slice().ct_eq(&claimed))
        })
    });
    if !genuine {
        return Err(SignatureError::Mismatch);
    }
    match body_hash {
        None => Ok(signed_params),
        Some(claimed) => {
            // Lowercase hex, as both libraries compare it: an uppercase hash is refused by both.
            let actual = hex::encode(Sha256::digest(body));
            if !bool::from(actual.as_bytes().ct_eq(claimed.as_bytes())) {
                return Err(SignatureError::BodyHashMismatch);
            }
            // Signed but not a JSON object: keep the raw text so the dead letter loses nothing.
            Ok(Params::from_json(body)
                .unwrap_or_else(|_| Params::from_pairs([("RawBody", String::from_utf8_lossy(body).into_owned())])))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `verify` with auth tokens, as most of these tests use it.
    fn verify(
        url: &PublicUrl,
        path: &str,
        header: Option<&str>,
        body: &[u8],
        tokens: &[SecretString],
    ) -> Result<Params, SignatureError> {
        let keys: Vec<(Algorithm, &SecretString)> = tokens.iter().map(|t| (Algorithm::HmacSha1, t)).collect();
        super::verify(url, path, header, body, &keys)
    }

    fn tokens(list: &[&str]) -> Vec<SecretString> {
        list.iter().map(|t| SecretString::from(t.to_string())).collect()
    }

    fn docs_params() -> Params {
        Params::from_pairs([
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ])
    }

    /// Twilio's documented example: its params, as a form body, and its token.
    fn docs_request() -> (Params, Vec<u8>, Vec<SecretString>) {
        let params = docs_params();
        let body = form(&params);
        (params, body, tokens(&["12345"]))
    }

    fn form(params: &Params) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new()).extend_pairs(params.pairs()).finish().into_bytes()
    }

    #[test]
    fn a_body_of_implausibly_many_params_is_refused_before_it_is_decoded() {
        let url = PublicUrl::parse("https://example.com").unwrap();
        let body = "a&".repeat(100_000);
        let tokens = [SecretString::from("12345".to_owned())];
        assert!(matches!(
            verify(&url, "/hook", Some("sig"), body.as_bytes(), &tokens),
            Err(SignatureError::Implausible(100_001))
        ));
        // A JSON body is covered by its hash, and its ampersands are text.
        let json = format!(r#"{{"Body":"{}"}}"#, "&".repeat(1_000));
        let hash = hex::encode(Sha256::digest(json.as_bytes()));
        let path = format!("/hook?bodySHA256={hash}");
        assert!(!matches!(
            verify(&url, &path, Some("sig"), json.as_bytes(), &tokens),
            Err(SignatureError::Implausible(_))
        ));
    }

    #[test]
    fn twilios_documented_example_signs_as_documented() {
        let sig = sign("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &docs_params());
        assert_eq!(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    }

    #[test]
    fn the_documented_example_verifies_as_a_request() {
        let url = PublicUrl::parse("https://mycompany.com").unwrap();
        let params = verify(
            &url,
            "/myapp.php?foo=1&bar=2",
            Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ="),
            &form(&docs_params()),
            &tokens(&["12345"]),
        )
        .unwrap();
        assert_eq!(params.get("Digits"), Some("1234"));
    }

    #[test]
    fn a_tampered_value_is_refused() {
        let url = PublicUrl::parse("https://mycompany.com").unwrap();
        let mut pairs = docs_params().pairs().to_vec();
        pairs[2].1 = "9999".into();
        let err = verify(
            &url,
            "/myapp.php?foo=1&bar=2",
            Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ="),
            &form(&Params::from_pairs(pairs)),
            &tokens(&["12345"]),
        );
        assert_eq!(err, Err(SignatureError::Mismatch));
    }

    #[test]
    fn a_wrong_token_is_refused_and_a_secondary_token_is_accepted() {
        let url = PublicUrl::parse("https://mycompany.com").unwrap();
        let body = form(&docs_params());
        let sig = Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        let path = "/myapp.php?foo=1&bar=2";
        assert_eq!(verify(&url, path, sig, &body, &tokens(&["54321"])), Err(SignatureError::Mismatch));
        assert!(verify(&url, path, sig, &body, &tokens(&["54321", "12345"])).is_ok());
    }

    #[test]
    fn a_header_that_is_not_the_signature_in_base64_is_refused() {
        let url = PublicUrl::parse("https://mycompany.com").unwrap();
        let body = form(&docs_params());
        let t = tokens(&["12345"]);
        let path = "/myapp.php?foo=1&bar=2";
        for header in ["not base64!", "0/KCTR6DLpKmkAf8muzZqo1nDgQ", "0/KCTR6DLpKmkAf8muzZqo1nDgR="] {
            assert_eq!(verify(&url, path, Some(header), &body, &t), Err(SignatureError::Mismatch), "{header}");
        }
    }

    #[test]
    fn a_missing_header_is_refused() {
        let url = PublicUrl::parse("https://mycompany.com").unwrap();
        let err = verify(&url, "/x", None, b"", &tokens(&["12345"]));
        assert_eq!(err, Err(SignatureError::Missing));
    }

    #[test]
    fn params_are_sorted_by_key_and_repeated_values_sorted_and_deduplicated() {
        // Hand-built the way twilio-python concatenates: url, then for each key its sorted distinct values.
        let url = "https://example.com/hook";
        let mut mac = Hmac::<Sha1>::new_from_slice(b"tok").unwrap();
        mac.update(b"https://example.com/hookA1B2Ba3Bz2C");
        let expected = BASE64.encode(mac.finalize().into_bytes());
        let params = Params::from_pairs([("Bz", "2"), ("B", "2"), ("Ba", "3"), ("C", ""), ("A", "1"), ("Bz", "2")]);
        assert_eq!(sign("tok", url, &params), expected);
        let reordered = Params::from_pairs([("Ba", "3"), ("A", "1"), ("C", ""), ("B", "2"), ("Bz", "2")]);
        assert_eq!(sign("tok", url, &reordered), expected);
    }

    #[test]
    fn a_repeated_key_contributes_each_of_its_values() {
        let one = Params::from_pairs([("Addr", "+1"), ("Addr", "+2")]);
        let other = Params::from_pairs([("Addr", "+2"), ("Addr", "+1")]);
        let only_first = Params::from_pairs([("Addr", "+1")]);
        assert_eq!(sign("t", "u", &one), sign("t", "u", &other));
        assert_ne!(sign("t", "u", &one), sign("t", "u", &only_first));
    }

    /// Twilio's documented example signed over `signed_url`, checked as a request to `path` on
    /// the service configured with `public_url`.
    fn check_docs_request(public_url: &str, path: &str, signed_url: &str) -> Result<Params, SignatureError> {
        let (params, body, t) = docs_request();
        let sig = sign("12345", signed_url, &params);
        verify(&PublicUrl::parse(public_url).unwrap(), path, Some(&sig), &body, &t)
    }

    #[test]
    fn the_url_is_accepted_with_its_port_removed_or_the_default_port_added() {
        let (plain, with_port) = ("https://mycompany.com", "https://mycompany.com:443/");
        assert!(check_docs_request(plain, "/myapp.php", "https://mycompany.com:443/myapp.php").is_ok());
        assert!(check_docs_request(with_port, "/myapp.php", "https://mycompany.com/myapp.php").is_ok());
        assert_eq!(
            check_docs_request(plain, "/myapp.php", "https://mycompany.com:8443/myapp.php"),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn with_a_port_of_its_own_the_default_port_is_not_accepted() {
        // twilio-python and twilio-node try "as is" and "without the port" when a port is given.
        let public = "https://mycompany.com:8443";
        assert!(check_docs_request(public, "/myapp.php", "https://mycompany.com:8443/myapp.php").is_ok());
        assert!(check_docs_request(public, "/myapp.php", "https://mycompany.com/myapp.php").is_ok());
        assert_eq!(
            check_docs_request(public, "/myapp.php", "https://mycompany.com:443/myapp.php"),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_raw_quote_in_the_query_is_accepted_signed_in_its_escaped_form_as_twilio_node_does() {
        let public = "https://mycompany.com";
        assert!(check_docs_request(public, "/hook?name=o'brien", "https://mycompany.com/hook?name=o%27brien").is_ok());
        assert!(check_docs_request(public, "/hook?name=o'brien", "https://mycompany.com/hook?name=o'brien").is_ok());
        // Node's legacy querystring turns %27 back into a quote, and re-encodes the rest.
        assert!(check_docs_request(public, "/hook?a=b%20c", "https://mycompany.com/hook?a=b%20c").is_ok());
        assert!(check_docs_request(public, "/hook?a=b+c", "https://mycompany.com/hook?a=b%20c").is_ok());
        // But nothing else of the URL may change.
        assert!(check_docs_request(public, "/hook?name=o'brien", "https://mycompany.com/hook?name=obrien").is_err());
    }

    #[test]
    fn an_uppercase_body_hash_is_refused_as_both_libraries_refuse_it() {
        let body = br#"{"From":"+15551230000","Body":"hi"}"#;
        let hash = hex::encode(Sha256::digest(body)).to_ascii_uppercase();
        let path = format!("/hook?bodySHA256={hash}");
        let url = PublicUrl::parse("https://example.com").unwrap();
        let sig = sign("tok", &url.join(&path), &Params::default());
        assert_eq!(verify(&url, &path, Some(&sig), body, &tokens(&["tok"])), Err(SignatureError::BodyHashMismatch));
    }

    #[test]
    fn node_querystring_is_reproduced() {
        assert_eq!(legacy_querystring("https://h/p?b=1&a=2&b=3").unwrap(), "https://h/p?b=1&b=3&a=2");
        assert_eq!(legacy_querystring("https://h/p?z=1&10=a&2=b").unwrap(), "https://h/p?2=b&10=a&z=1");
        assert_eq!(legacy_querystring("https://h/p?k&&x=%27+%3a").unwrap(), "https://h/p?k=&x='%20%3A");
        assert_eq!(legacy_querystring("https://h/p?"), None);
        assert_eq!(node_add_port("https://h/p"), "https://h:443/p");
        assert_eq!(node_add_port("http://[::1]:8080/p"), "http://[::1]:8080/p");
        assert_eq!(node_remove_port("http://[::1]:8080/p"), "http://[::1]/p");
    }

    #[test]
    fn a_trailing_slash_and_the_query_are_part_of_the_signed_url() {
        let signed = "https://mycompany.com/hook?a=1";
        assert!(check_docs_request("https://mycompany.com", "/hook?a=1", signed).is_ok());
        assert!(check_docs_request("https://mycompany.com", "/hook/?a=1", signed).is_err());
        assert!(check_docs_request("https://mycompany.com", "/hook?a=2", signed).is_err());
    }

    #[test]
    fn a_json_body_is_checked_against_its_body_sha256() {
        let body = br#"{"From":"+15551230000","Body":"hi"}"#;
        let hash = hex::encode(Sha256::digest(body));
        let path = format!("/hook?bodySHA256={hash}");
        let url = PublicUrl::parse("https://example.com").unwrap();
        let sig = sign("tok", &url.join(&path), &Params::default());
        let t = tokens(&["tok"]);
        let params = verify(&url, &path, Some(&sig), body, &t).unwrap();
        assert_eq!(params.get("Body"), Some("hi"));

        let tampered = br#"{"From":"+15551230000","Body":"HI"}"#;
        assert_eq!(verify(&url, &path, Some(&sig), tampered, &t), Err(SignatureError::BodyHashMismatch));
    }

    #[test]
    fn a_public_url_keeps_its_path_prefix() {
        let url = PublicUrl::parse("https://example.com:8443/twilio/").unwrap();
        assert_eq!(url.join("/webhooks/twilio"), "https://example.com:8443/twilio/webhooks/twilio");
        assert!(PublicUrl::parse("example.com").is_err());
        assert!(PublicUrl::parse("https://example.com:http").is_err());
        assert_eq!(PublicUrl::parse("http://[::1]:8080").unwrap().join("/x"), "http://[::1]:8080/x");
    }
}
