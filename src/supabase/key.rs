use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};

/// The key the service talks to Supabase with. Both kinds Supabase issues are accepted, and each is
/// sent the way Supabase's gateway expects it.
#[derive(Clone)]
pub enum ServiceKey {
    /// A legacy `service_role` JWT: sent as `apikey` and as `Authorization: Bearer`.
    LegacyJwt(SecretString),
    /// An `sb_secret_…` key: sent as `apikey` only; the gateway swaps in a service_role JWT.
    Secret(SecretString),
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceKey::{}([redacted])", self.kind())
    }
}

impl ServiceKey {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        // It goes into HTTP headers, which hold visible ASCII only. Said without the key itself.
        if let Some(bad) = raw.chars().position(|c| !c.is_ascii_graphic()) {
            return Err(format!("the key holds a character that cannot be sent (at position {bad}); copy it again"));
        }
        if raw.starts_with("sb_secret_") {
            return Ok(ServiceKey::Secret(SecretString::from(raw.to_owned())));
        }
        if raw.starts_with("sb_publishable_") {
            return Err("this is a publishable key; use a secret key (sb_secret_…) or the service_role JWT".into());
        }
        let role = jwt_role(raw).ok_or("expected an sb_secret_… key or a service_role JWT")?;
        if role != "service_role" {
            return Err(format!("this JWT is for role '{role}'; use the service_role key"));
        }
        Ok(ServiceKey::LegacyJwt(SecretString::from(raw.to_owned())))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ServiceKey::LegacyJwt(_) => "LegacyJwt",
            ServiceKey::Secret(_) => "Secret",
        }
    }

    pub(crate) fn headers(&self) -> HeaderMap {
        let sensitive = |value: &str| {
            let mut value = HeaderValue::from_str(value).expect("a parsed key is printable ASCII");
            value.set_sensitive(true);
            value
        };
        let mut headers = HeaderMap::new();
        match self {
            ServiceKey::LegacyJwt(jwt) => {
                headers.insert("apikey", sensitive(jwt.expose_secret()));
                headers.insert(AUTHORIZATION, sensitive(&format!("Bearer {}", jwt.expose_secret())));
            }
            ServiceKey::Secret(key) => {
                headers.insert("apikey", sensitive(key.expose_secret()));
            }
        }
        headers
    }
}

/// The `role` claim of an HS256 JWT, without checking its signature: only Supabase can do that.
fn jwt_role(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_header, claims, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !token.is_ascii() {
        return None;
    }
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
    claims.get("role")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU";
    const ANON: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0";

    #[test]
    fn a_legacy_key_goes_in_apikey_and_bearer() {
        let h = ServiceKey::parse(SERVICE).unwrap().headers();
        assert_eq!(h["apikey"], SERVICE);
        assert_eq!(h[AUTHORIZATION], format!("Bearer {SERVICE}").as_str());
    }

    #[test]
    fn a_secret_key_goes_in_apikey_only() {
        let h = ServiceKey::parse("sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz").unwrap().headers();
        assert_eq!(h["apikey"], "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz");
        assert!(h.get(AUTHORIZATION).is_none());
    }

    #[test]
    fn the_anon_key_or_a_publishable_key_is_refused_with_a_reason() {
        assert!(ServiceKey::parse(ANON).unwrap_err().contains("'anon'"));
        assert!(ServiceKey::parse("sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH")
            .unwrap_err()
            .contains("publishable"));
        assert!(ServiceKey::parse("hunter2").is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let shown = format!("{:?}", ServiceKey::parse(SERVICE).unwrap());
        assert_eq!(shown, "ServiceKey::LegacyJwt([redacted])");
    }
}
