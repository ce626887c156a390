//! Which key a request must be signed with, and which accounts may send webhooks.
//!
//! - With `X-Twilio-Webhooks-Signature-Settings` naming an algorithm, the request is signed with
//!   that SharedKey (`TWILIO_SHARED_KEYS`), chosen by the header's key id.
//! - Otherwise with an auth token, chosen by the request's `AccountSid`: a subaccount listed in
//!   `TWILIO_ACCOUNTS` must sign with its own token; any other account with `TWILIO_AUTH_TOKEN`
//!   (or its secondary), and must be `TWILIO_ACCOUNT_SID` when that is set. `AccountSid` is a
//!   signed param, so the signature that passes proves it: a request signed with one account's
//!   token but claiming another's fails, since the other's token is the one tried.

use secrecy::SecretString;

use super::signature::{self, Algorithm, PublicUrl, SignatureError};
use super::Params;

/// The secrets and account rules requests are checked against. `Debug` shows no secret. There is
/// always at least one secret to check with: [`Credentials::new`] refuses none.
#[derive(Clone)]
pub struct Credentials {
    /// `TWILIO_AUTH_TOKEN`, then `TWILIO_AUTH_TOKEN_SECONDARY`; empty when only subaccounts or
    /// SharedKeys are configured.
    auth_tokens: Vec<SecretString>,
    /// `TWILIO_ACCOUNT_SID`: the one account the auth token may sign for.
    account_sid: Option<String>,
    /// `TWILIO_ACCOUNTS`: subaccounts, each with its own token.
    accounts: Vec<(String, SecretString)>,
    /// `TWILIO_SHARED_KEYS`: SharedKey ids and secrets; several while rotating.
    shared_keys: Vec<(String, SecretString)>,
}

/// What a sample webhook is signed with: the first configured secret.
pub enum Signer<'a> {
    /// An auth token (the main account's or a subaccount's), for the account it signs for.
    Token { token: &'a SecretString, account: String },
    /// A SharedKey, named in the `X-Twilio-Webhooks-Signature-Settings` header the request carries.
    SharedKey { id: &'a str, secret: &'a SecretString, account: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("auth_tokens", &self.auth_tokens.len())
            .field("account_sid", &self.account_sid)
            .field("accounts", &self.accounts.iter().map(|(sid, _)| sid).collect::<Vec<_>>())
            .field("shared_keys", &self.shared_keys.iter().map(|(id, _)| id).collect::<Vec<_>>())
            .finish()
    }
}

/// Why a request was refused. No variant carries a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("signed with SharedKey {0:?}, which TWILIO_SHARED_KEYS does not hold")]
    UnknownSharedKey(String),
    #[error("X-Twilio-Webhooks-Signature-Settings names algorithm {0:?}; known are HMAC_SHA1 and HMAC_SHA256")]
    UnknownAlgorithm(String),
    #[error("X-Twilio-Webhooks-Signature-Settings names an algorithm but no key")]
    NoSharedKeyId,
    #[error("AccountSid {0:?} is not an account this service takes webhooks for")]
    WrongAccount(String),
}

impl Credentials {
    /// Checks a request and returns its params only if it is genuine and from an account this
    /// service takes webhooks for.
    pub fn verify(
        &self,
        url: &PublicUrl,
        path_and_query: &str,
        signature_header: Option<&str>,
        settings_header: Option<&str>,
        body: &[u8],
    ) -> Result<Params, Refusal> {
        signature::plausible(path_and_query, body)?;
        if let Some((key_id, algorithm)) = signature::shared_key_settings(settings_header) {
            let algorithm = Algorithm::parse(algorithm).ok_or_else(|| Refusal::UnknownAlgorithm(clip(algorithm)))?;
            let key_id = key_id.ok_or(Refusal::NoSharedKeyId)?;
            let (_, secret) = self
                .shared_keys
                .iter()
                .find(|(id, _)| id == key_id)
                .ok_or_else(|| Refusal::UnknownSharedKey(clip(key_id)))?;
            let params = signature::verify(url, path_and_query, signature_header, body, &[(algorithm, secret)])?;
            // The SharedKey's secret is this deployment's own, so it needs no auth token beside it;
            // TWILIO_ACCOUNT_SID, when set, still names the one account besides the listed ones.
            let account = params.get("AccountSid").unwrap_or_default();
            let listed = self.accounts.iter().any(|(sid, _)| sid == account);
            if !listed && self.account_sid.as_deref().is_some_and(|expected| expected != account) {
                return Err(Refusal::WrongAccount(clip(account)));
            }
            return Ok(params);
        }
        // The account the request says it is from picks the token; the signature then proves it.
        let claimed = claimed_account(path_and_query, body);
        if let Some((_, token)) = self.accounts.iter().find(|(sid, _)| Some(sid.as_str()) == claimed.as_deref()) {
            return Ok(signature::verify(
                url,
                path_and_query,
                signature_header,
                body,
                &[(Algorithm::HmacSha1, token)],
            )?);
        }
        if self.auth_tokens.is_empty() {
            return Err(Refusal::WrongAccount(clip(claimed.as_deref().unwrap_or_default())));
        }
        let keys: Vec<(Algorithm, &SecretString)> = self.auth_tokens.iter().map(|t| (Algorithm::HmacSha1, t)).collect();
        let params = signature::verify(url, path_and_query, signature_header, body, &keys)?;
        self.check_main_account(params.get("AccountSid").unwrap_or_default())?;
        Ok(params)
    }

    /// An account not listed in `TWILIO_ACCOUNTS` must be `TWILIO_ACCOUNT_SID` when that is set,
    /// and is taken only when `TWILIO_AUTH_TOKEN` is.
    fn check_main_account(&self, account: &str) -> Result<(), Refusal> {
        let allowed =
            !self.auth_tokens.is_empty() && self.account_sid.as_deref().is_none_or(|expected| expected == account);
        if allowed {
            Ok(())
        } else {
            Err(Refusal::WrongAccount(clip(account)))
        }
    }

    /// The credentials, or None when they hold no secret at all: nothing could then be verified.
    pub fn new(
        auth_tokens: Vec<SecretString>,
        account_sid: Option<String>,
        accounts: Vec<(String, SecretString)>,
        shared_keys: Vec<(String, SecretString)>,
    ) -> Option<Self> {
        let any = !auth_tokens.is_empty() || !accounts.is_empty() || !shared_keys.is_empty();
        any.then_some(Credentials { auth_tokens, account_sid, accounts, shared_keys })
    }

    /// How many auth tokens (primary and secondary) are configured.
    pub fn auth_token_count(&self) -> usize {
        self.auth_tokens.len()
    }

    /// The first secret that can sign a sample webhook: for `twilio-ingest sign` and `send`.
    pub fn sample_signer(&self) -> Signer<'_> {
        let main_account = || self.account_sid.clone().unwrap_or_else(|| format!("AC{}", "0".repeat(32)));
        if let Some(token) = self.auth_tokens.first() {
            return Signer::Token { token, account: main_account() };
        }
        if let Some((sid, token)) = self.accounts.first() {
            return Signer::Token { token, account: sid.clone() };
        }
        let (id, secret) = self.shared_keys.first().expect("Credentials::new refuses credentials without a secret");
        Signer::SharedKey { id, secret, account: main_account() }
    }
}

/// The `AccountSid` a request claims, before its signature is checked: in a form body, or in a
/// JSON one.
fn claimed_account(path_and_query: &str, body: &[u8]) -> Option<String> {
    let json = path_and_query.split_once('?').is_some_and(|(_, q)| q.contains("bodySHA256="));
    if json {
        Params::from_json(body).ok()?.get("AccountSid").map(str::to_owned)
    } else {
        form_urlencoded::parse(body).find(|(k, _)| k == "AccountSid").map(|(_, v)| v.into_owned())
    }
}

/// At most 64 characters of something a client sent, for a refusal that is logged.
fn clip(text: &str) -> String {
    crate::text::clip(text, 64).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://ingest.example.com";
    const MAIN: &str = "AC00000000000000000000000000000001";
    const SUB: &str = "AC00000000000000000000000000000002";
    const OTHER: &str = "AC00000000000000000000000000000003";
    const MAIN_TOKEN: &str = "11111111111111111111111111111111";
    const SUB_TOKEN: &str = "22222222222222222222222222222222";

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn message(account: &str) -> Params {
        Params::from_pairs([
            ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
            ("AccountSid", account),
            ("Body", "hi"),
        ])
    }

    fn body(params: &Params) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new()).extend_pairs(params.pairs()).finish().into_bytes()
    }

    fn check(
        credentials: &Credentials,
        params: &Params,
        signature: &str,
        settings: Option<&str>,
    ) -> Result<Params, Refusal> {
        let url = PublicUrl::parse(URL).unwrap();
        credentials.verify(&url, "/webhooks/twilio", Some(signature), settings, &body(params))
    }

    fn signed(key: &str, params: &Params) -> String {
        signature::sign(key, &format!("{URL}/webhooks/twilio"), params)
    }

    fn both() -> Credentials {
        Credentials {
            auth_tokens: vec![secret(MAIN_TOKEN)],
            account_sid: Some(MAIN.into()),
            accounts: vec![(SUB.into(), secret(SUB_TOKEN))],
            shared_keys: vec![],
        }
    }

    #[test]
    fn each_account_signs_with_its_own_token() {
        let c = both();
        assert!(check(&c, &message(MAIN), &signed(MAIN_TOKEN, &message(MAIN)), None).is_ok());
        assert!(check(&c, &message(SUB), &signed(SUB_TOKEN, &message(SUB)), None).is_ok());
    }

    #[test]
    fn a_token_cannot_sign_for_another_account() {
        let c = both();
        // The subaccount's token, claiming the main account, and the other way round.
        assert_eq!(
            check(&c, &message(MAIN), &signed(SUB_TOKEN, &message(MAIN)), None),
            Err(SignatureError::Mismatch.into())
        );
        assert_eq!(
            check(&c, &message(SUB), &signed(MAIN_TOKEN, &message(SUB)), None),
            Err(SignatureError::Mismatch.into())
        );
        // An unlisted account, signed with the main token, is not TWILIO_ACCOUNT_SID.
        assert_eq!(
            check(&c, &message(OTHER), &signed(MAIN_TOKEN, &message(OTHER)), None),
            Err(Refusal::WrongAccount(OTHER.into()))
        );
    }

    #[test]
    fn with_subaccounts_alone_no_other_account_is_taken() {
        let c = Credentials { auth_tokens: vec![], account_sid: None, ..both() };
        assert!(check(&c, &message(SUB), &signed(SUB_TOKEN, &message(SUB)), None).is_ok());
        assert_eq!(
            check(&c, &message(MAIN), &signed(MAIN_TOKEN, &message(MAIN)), None),
            Err(Refusal::WrongAccount(MAIN.into()))
        );
    }

    #[test]
    fn the_auth_token_alone_takes_any_account() {
        let c = Credentials::new(vec![secret(MAIN_TOKEN)], None, vec![], vec![]).unwrap();
        assert!(check(&c, &message(OTHER), &signed(MAIN_TOKEN, &message(OTHER)), None).is_ok());
    }

    /// Signatures twilio-python 9.13's RequestValidator computed (`compute_signature(uri, params,
    /// algorithm)`) for this secret, URL and message, form and JSON.
    const SHARED_SECRET: &str = "shared-key-secret-0123456789";
    const PYTHON_VECTORS: [(&str, bool, &str); 4] = [
        ("HMAC_SHA1", false, "et/jLrL17JuKxkPfuoI3ebg/x+I="),
        ("HMAC_SHA256", false, "KHbmEoqbi26MitIeybjeDjckyr3qDW1mLHS5Hepielw="),
        ("HMAC_SHA1", true, "VGGEKFw2r4Z8TA/Byy5wfZT5j3c="),
        ("HMAC_SHA256", true, "A0oo/rC7yFLDpF9gxWRLFPOSxqcFpmNas+Jpipg/ziE="),
    ];
    const JSON_BODY: &str = r#"{"MessageSid":"SM0123456789abcdef0123456789abcdef","AccountSid":"AC00000000000000000000000000000001","From":"+14155550100","Body":"hello"}"#;
    const JSON_HASH: &str = "3d855dd0a92dc0774d7cd0c907002aaf18baa0db761a1f6ffd302b0081b05ce0";

    fn python_message() -> Params {
        Params::from_pairs([
            ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
            ("AccountSid", MAIN),
            ("From", "+14155550100"),
            ("Body", "hello"),
        ])
    }

    fn with_keys(keys: &[(&str, &str)]) -> Credentials {
        Credentials { shared_keys: keys.iter().map(|(id, s)| (id.to_string(), secret(s))).collect(), ..both() }
    }

    fn check_vector(c: &Credentials, settings: &str, json: bool, signature: &str) -> Result<Params, Refusal> {
        let url = PublicUrl::parse(URL).unwrap();
        if json {
            c.verify(
                &url,
                &format!("/webhooks/twilio?bodySHA256={JSON_HASH}"),
                Some(signature),
                Some(settings),
                JSON_BODY.as_bytes(),
            )
        } else {
            c.verify(&url, "/webhooks/twilio", Some(signature), Some(settings), &body(&python_message()))
        }
    }

    #[test]
    fn shared_key_signatures_match_twilio_python_for_both_algorithms_and_body_kinds() {
        let c = with_keys(&[("KS0123", SHARED_SECRET)]);
        for (algorithm, json, signature) in PYTHON_VECTORS {
            let params = check_vector(&c, &format!("key=KS0123,algorithm={algorithm}"), json, signature)
                .unwrap_or_else(|e| panic!("{algorithm} json={json}: {e}"));
            assert_eq!(params.get("Body"), Some("hello"));
            // The same signature under the other algorithm is refused.
            let other = if algorithm == "HMAC_SHA1" { "HMAC_SHA256" } else { "HMAC_SHA1" };
            assert!(check_vector(&c, &format!("key=KS0123,algorithm={other}"), json, signature).is_err());
        }
        // As twilio-python reads the header: spaces trimmed, the algorithm in any case.
        assert!(check_vector(&c, " key = KS0123 , algorithm = hmac_sha256 ", false, PYTHON_VECTORS[1].2).is_ok());
        let ours = signature::sign_with(
            Algorithm::HmacSha256,
            SHARED_SECRET,
            &format!("{URL}/webhooks/twilio"),
            &python_message(),
        );
        assert_eq!(ours, PYTHON_VECTORS[1].2);
    }

    #[test]
    fn shared_keys_rotate_and_unknown_keys_or_algorithms_are_refused() {
        let rotating = with_keys(&[("KSold", "old-secret"), ("KS0123", SHARED_SECRET)]);
        assert!(check_vector(&rotating, "key=KS0123,algorithm=HMAC_SHA256", false, PYTHON_VECTORS[1].2).is_ok());
        let old = signature::sign_with(
            Algorithm::HmacSha256,
            "old-secret",
            &format!("{URL}/webhooks/twilio"),
            &python_message(),
        );
        assert!(check_vector(&rotating, "key=KSold,algorithm=HMAC_SHA256", false, &old).is_ok());
        // Signed with the old key but naming the new one.
        assert!(check_vector(&rotating, "key=KS0123,algorithm=HMAC_SHA256", false, &old).is_err());
        assert_eq!(
            check_vector(&rotating, "key=KSgone,algorithm=HMAC_SHA256", false, &old),
            Err(Refusal::UnknownSharedKey("KSgone".into()))
        );
        assert_eq!(
            check_vector(&rotating, "key=KS0123,algorithm=HMAC_SHA512", false, &old),
            Err(Refusal::UnknownAlgorithm("HMAC_SHA512".into()))
        );
        assert_eq!(check_vector(&rotating, "algorithm=HMAC_SHA256", false, &old), Err(Refusal::NoSharedKeyId));
    }

    #[test]
    fn a_settings_header_without_an_algorithm_means_the_auth_token() {
        let c = with_keys(&[("KS0123", SHARED_SECRET)]);
        let params = message(MAIN);
        let url = PublicUrl::parse(URL).unwrap();
        let by_token = signed(MAIN_TOKEN, &params);
        for settings in [None, Some("key=KS0123"), Some("algorithm="), Some("")] {
            assert!(
                c.verify(&url, "/webhooks/twilio", Some(&by_token), settings, &body(&params)).is_ok(),
                "{settings:?}"
            );
        }
    }

    #[test]
    fn shared_keys_alone_verify_without_an_auth_token() {
        let c = Credentials::new(vec![], Some(MAIN.into()), vec![], vec![("KS0123".into(), secret(SHARED_SECRET))])
            .unwrap();
        assert!(check_vector(&c, "key=KS0123,algorithm=HMAC_SHA256", false, PYTHON_VECTORS[1].2).is_ok());
        // Without a SharedKey header, there is no token to check with.
        let params = message(MAIN);
        assert_eq!(check(&c, &params, &signed(MAIN_TOKEN, &params), None), Err(Refusal::WrongAccount(MAIN.into())));
        // TWILIO_ACCOUNT_SID still holds for SharedKey-signed requests.
        let other =
            Credentials::new(vec![], Some(OTHER.into()), vec![], vec![("KS0123".into(), secret(SHARED_SECRET))])
                .unwrap();
        assert_eq!(
            check_vector(&other, "key=KS0123,algorithm=HMAC_SHA256", false, PYTHON_VECTORS[1].2),
            Err(Refusal::WrongAccount(MAIN.into()))
        );
    }

    #[test]
    fn credentials_without_any_secret_cannot_be_made() {
        assert!(Credentials::new(vec![], Some(MAIN.into()), vec![], vec![]).is_none());
    }

    #[test]
    fn debug_shows_no_secret() {
        let shown = format!("{:?}", Credentials { shared_keys: vec![("KS1".into(), secret("s3cr3t"))], ..both() });
        for secret in [MAIN_TOKEN, SUB_TOKEN, "s3cr3t"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("KS1") && shown.contains(SUB));
    }
}
