//! Configuration, loaded and checked once at start-up.
//!
//! Every problem is reported as one line naming the variable, and secrets are held in
//! [`SecretString`] so that neither `Debug` nor a log line can show them.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::supabase::ServiceKey;
use crate::twilio::webhook::is_sid;
use crate::twilio::{Credentials, PublicUrl};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// What requests are checked against: auth tokens, subaccounts, SharedKeys.
    pub credentials: Credentials,
    pub public_url: PublicUrl,
    pub supabase_url: String,
    pub service_key: ServiceKey,
    /// `HOST`: the one address to listen on. Unset, both ports listen on every address, IPv6 and
    /// IPv4 (`[::]` dual-stack): Fly's private network, which its metrics scraper and private
    /// checks use, is IPv6 only.
    pub host: Option<IpAddr>,
    pub port: u16,
    /// The operations port: `/metrics`, `/readyz` and `/healthz`, for Fly's checks and scraper,
    /// not for the internet (`OPS_PORT`, default 9091).
    pub ops_port: u16,
    pub spool_dir: PathBuf,
    /// How long a webhook may wait for Supabase before its message is spooled instead.
    pub deadline: Duration,
    pub log_format: LogFormat,
    /// Threads running the service's async work (`WORKER_THREADS`, default 1).
    pub worker_threads: usize,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &'static str| lookup(var).filter(|v| !v.trim().is_empty());
        let required = |var: &'static str| get(var).ok_or(ConfigError::Missing(var));
        let invalid = |var: &'static str, reason: &dyn std::fmt::Display| ConfigError::Invalid {
            var,
            reason: reason.to_string(),
        };

        // TWILIO_ACCOUNTS=<AccountSid>:<token>[,…]: subaccounts that sign with their own tokens. Each
        // entry holds a secret, and a slip (token first, a stray comma) would put it in the
        // message: an entry is named by its position, never by what it holds.
        let mut accounts = Vec::new();
        for (n, entry) in entries(get("TWILIO_ACCOUNTS")) {
            let at = |what: &str| invalid("TWILIO_ACCOUNTS", &format!("entry {n}: {what}"));
            let (sid, secret) = entry.split_once(':').ok_or_else(|| at("expected <AccountSid>:<token>"))?;
            if !is_sid(sid.trim(), &["AC"]) {
                return Err(at("does not start with an AccountSid (AC and 32 hex digits), then ':' and its token"));
            }
            let secret = token(secret.to_owned()).map_err(at)?;
            accounts.push((sid.trim().to_owned(), secret));
        }

        let mut auth_tokens = Vec::new();
        if let Some(primary) = get("TWILIO_AUTH_TOKEN") {
            auth_tokens.push(token(primary).map_err(|reason| invalid("TWILIO_AUTH_TOKEN", &reason))?);
        }
        if let Some(secondary) = get("TWILIO_AUTH_TOKEN_SECONDARY") {
            auth_tokens.push(token(secondary).map_err(|reason| invalid("TWILIO_AUTH_TOKEN_SECONDARY", &reason))?);
        }

        let account_sid = match get("TWILIO_ACCOUNT_SID") {
            Some(sid) if is_sid(sid.trim(), &["AC"]) => Some(sid.trim().to_owned()),
            Some(_) => return Err(invalid("TWILIO_ACCOUNT_SID", &"expected AC followed by 32 lowercase hex digits")),
            None => None,
        };

        // TWILIO_SHARED_KEYS=<keyId>=<secret>[,…]: SharedKeys, several while one is rotated. Named by
        // position too: which side of a slip is the secret cannot be told.
        let mut shared_keys: Vec<(String, SecretString)> = Vec::new();
        for (n, entry) in entries(get("TWILIO_SHARED_KEYS")) {
            let at = |what: &str| invalid("TWILIO_SHARED_KEYS", &format!("entry {n}: {what}"));
            let (id, secret) = entry.split_once('=').ok_or_else(|| at("expected <keyId>=<secret>"))?;
            let (id, secret) = (id.trim(), secret.trim());
            if id.is_empty() || secret.is_empty() || secret.contains(char::is_whitespace) {
                return Err(at("needs a key id and a secret"));
            }
            if shared_keys.iter().any(|(known, _)| known == id) {
                return Err(at("repeats the key id of an earlier entry"));
            }
            shared_keys.push((id.to_owned(), SecretString::from(secret.to_owned())));
        }
        // Some secret must sign webhooks: the main account's token, a subaccount's, or a SharedKey
        // (with which the auth token never needs to leave Twilio's console).
        let credentials = Credentials::new(auth_tokens, account_sid, accounts, shared_keys)
            .ok_or(ConfigError::Missing("TWILIO_AUTH_TOKEN"))?;

        let public_url = PublicUrl::parse(&required("PUBLIC_URL")?).map_err(|reason| invalid("PUBLIC_URL", &reason))?;

        let supabase_url = required("SUPABASE_URL")?;
        let parsed = url::Url::parse(&supabase_url).map_err(|e| invalid("SUPABASE_URL", &e))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(invalid("SUPABASE_URL", &"expected an http(s) URL such as https://xyz.supabase.co"));
        }
        let supabase_url = supabase_url.trim_end_matches('/').to_owned();
        // The REST API is SUPABASE_URL/rest/v1: the suffix given here would be doubled.
        if supabase_url.ends_with("/rest/v1") {
            return Err(invalid("SUPABASE_URL", &"give the project URL without /rest/v1 (https://<ref>.supabase.co)"));
        }

        let service_key = ServiceKey::parse(&required("SUPABASE_SERVICE_ROLE_KEY")?)
            .map_err(|reason| invalid("SUPABASE_SERVICE_ROLE_KEY", &reason))?;

        let host = match get("HOST") {
            Some(h) => Some(h.trim().parse().map_err(|e| invalid("HOST", &e))?),
            None => None,
        };
        let port = match get("PORT") {
            Some(p) => p.parse().map_err(|e| invalid("PORT", &e))?,
            None => 8080,
        };
        let ops_port = match get("OPS_PORT") {
            Some(p) => p.parse().map_err(|e| invalid("OPS_PORT", &e))?,
            None => 9091,
        };
        if ops_port == port && port != 0 {
            return Err(invalid("OPS_PORT", &format!("must differ from PORT ({port})")));
        }

        let spool_dir = PathBuf::from(required("SPOOL_DIR")?);

        let deadline = match get("INGEST_DEADLINE_MS") {
            Some(ms) => {
                let ms: u64 = ms.parse().map_err(|e| invalid("INGEST_DEADLINE_MS", &e))?;
                // Conversations gives a webhook 5 s in all; the answer must be on the wire before that.
                // Below 500 ms there is no time left for a write once the spool's share is kept
                // back: every message would be spooled with a healthy Supabase.
                if !(500..=4_500).contains(&ms) {
                    return Err(invalid("INGEST_DEADLINE_MS", &"must be between 500 and 4500"));
                }
                Duration::from_millis(ms)
            }
            None => Duration::from_millis(2_500),
        };

        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("pretty") | Some("text") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(invalid("LOG_FORMAT", &format!("'{other}', expected json or pretty"))),
        };

        // One worker by default: the service's own work per webhook is small and the rest is
        // waiting on Supabase, so a pool only adds cross-thread wake-ups (the README's Performance
        // section has the figures). Fly's shared-cpu-1x has one core anyway.
        let worker_threads = match get("WORKER_THREADS") {
            Some(n) => match n.parse::<usize>() {
                Ok(n @ 1..=64) => n,
                Ok(_) => return Err(invalid("WORKER_THREADS", &"must be between 1 and 64")),
                Err(e) => return Err(invalid("WORKER_THREADS", &e)),
            },
            None => 1,
        };

        Ok(Config {
            credentials,
            public_url,
            supabase_url,
            service_key,
            host,
            port,
            ops_port,
            spool_dir,
            deadline,
            log_format,
            worker_threads,
        })
    }
}

/// The non-blank entries of a comma-separated list, numbered from 1 for an error that names one.
fn entries(list: Option<String>) -> Vec<(usize, String)> {
    let list = list.unwrap_or_default();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .enumerate()
        .map(|(i, e)| (i + 1, e))
        .collect()
}

/// An auth token, or why the value cannot be one; the reason never quotes the value.
fn token(value: String) -> Result<SecretString, &'static str> {
    // Only a loose check, so that no future token format is refused: a pasted word, or a value
    // with spaces in it (two tokens, a line break), is caught; a wrong token shows as 403s.
    let value = value.trim().to_owned();
    if value.len() < 8 || value.contains(char::is_whitespace) {
        return Err("does not look like a Twilio auth token");
    }
    Ok(SecretString::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SERVICE_JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU";

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let mut map: HashMap<String, String> = [
            ("TWILIO_AUTH_TOKEN", "0123456789abcdef0123456789abcdef"),
            ("PUBLIC_URL", "https://ingest.example.com"),
            ("SUPABASE_URL", "https://abc.supabase.co"),
            ("SUPABASE_SERVICE_ROLE_KEY", SERVICE_JWT),
            ("SPOOL_DIR", "/data/spool"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in pairs {
            if v.is_empty() {
                map.remove(*k);
            } else {
                map.insert(k.to_string(), v.to_string());
            }
        }
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_complete_environment_loads_with_defaults() {
        let cfg = Config::from_lookup(env(&[])).unwrap();
        assert_eq!(cfg.port, 8080);
        assert_eq!(cfg.credentials.auth_token_count(), 1);
        assert_eq!(cfg.host, None, "both ports listen dual-stack unless HOST says otherwise");
        assert_eq!(cfg.deadline, Duration::from_millis(2_500));
        assert_eq!(cfg.worker_threads, 1);
    }

    #[test]
    fn each_missing_variable_is_named() {
        for var in ["TWILIO_AUTH_TOKEN", "PUBLIC_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "SPOOL_DIR"] {
            let err = Config::from_lookup(env(&[(var, "")])).unwrap_err();
            assert_eq!(err, ConfigError::Missing(var));
            assert_eq!(err.to_string(), format!("{var} is not set"));
        }
    }

    #[test]
    fn malformed_values_name_their_variable() {
        for (var, value) in [
            ("PORT", "eighty"),
            ("OPS_PORT", "8080"),
            ("OPS_PORT", "metrics"),
            ("PUBLIC_URL", "ingest.example.com"),
            ("SUPABASE_URL", "not a url"),
            ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_N7UND0UgjKTVK\u{7}Uodkm0Hg_xSvEMPvz"),
            ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_N7UND0UgjKTVK-Uodkm0Hg\n_xSvEMPvz"),
            ("INGEST_DEADLINE_MS", "499"),
            ("INGEST_DEADLINE_MS", "200"),
            ("SUPABASE_SERVICE_ROLE_KEY", "sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH"),
            ("TWILIO_ACCOUNT_SID", "XX123"),
            ("TWILIO_ACCOUNTS", "AC00000000000000000000000000000001"),
            ("TWILIO_ACCOUNTS", "XX00000000000000000000000000000001:0123456789abcdef0123456789abcdef"),
            ("TWILIO_ACCOUNTS", "AC00000000000000000000000000000001:short"),
            ("TWILIO_SHARED_KEYS", "KS1"),
            ("TWILIO_SHARED_KEYS", "=secret"),
            ("TWILIO_SHARED_KEYS", "KS1=a,KS1=b"),
            ("INGEST_DEADLINE_MS", "60000"),
            ("LOG_FORMAT", "xml"),
            ("HOST", "localhost:80"),
            ("WORKER_THREADS", "0"),
            ("WORKER_THREADS", "many"),
        ] {
            let err = Config::from_lookup(env(&[(var, value)])).unwrap_err();
            assert!(err.to_string().starts_with(&format!("{var} is invalid")), "{var}: {err}");
        }
    }

    #[test]
    fn a_malformed_secret_bearing_value_is_named_by_position_never_quoted() {
        const TOKEN: &str = "0123456789abcdef0123456789abcdef";
        const SID: &str = "AC00000000000000000000000000000001";
        for (var, value) in [
            // Token first: the natural slip.
            ("TWILIO_ACCOUNTS", format!("{TOKEN}:{SID}")),
            ("TWILIO_ACCOUNTS", format!("{SID}:{TOKEN},{TOKEN}")),
            ("TWILIO_ACCOUNTS", format!("{SID}:{TOKEN},{TOKEN}{SID}")),
            ("TWILIO_ACCOUNTS", format!("{SID}:short{TOKEN} x")),
            // The secret where the id goes, and no secret after it.
            ("TWILIO_SHARED_KEYS", format!("{TOKEN}=")),
            ("TWILIO_SHARED_KEYS", format!("={TOKEN}")),
            ("TWILIO_SHARED_KEYS", TOKEN.to_owned()),
            ("TWILIO_SHARED_KEYS", format!("{TOKEN}=a,{TOKEN}=b")),
            ("TWILIO_AUTH_TOKEN", format!("{TOKEN} {TOKEN}")),
            ("TWILIO_AUTH_TOKEN_SECONDARY", format!("{TOKEN}\n{TOKEN}")),
        ] {
            let err = Config::from_lookup(env(&[(var, &value)])).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{var} is invalid")), "{var}: {err}");
            for piece in [&TOKEN[..8], &TOKEN[8..16], &TOKEN[16..24], &TOKEN[24..]] {
                assert!(!err.contains(piece), "{var}={value:?} shows part of its secret: {err}");
            }
        }
        let err = Config::from_lookup(env(&[("TWILIO_ACCOUNTS", &format!("{SID}:{TOKEN},{TOKEN}:{SID}"))]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("entry 2"), "{err}");
    }

    #[test]
    fn shared_keys_alone_need_no_auth_token() {
        let cfg =
            Config::from_lookup(env(&[("TWILIO_AUTH_TOKEN", ""), ("TWILIO_SHARED_KEYS", "KS0123=shared-secret")]))
                .unwrap();
        assert_eq!(cfg.credentials.auth_token_count(), 0);
        // With no secret at all, the token is what is missing.
        assert_eq!(
            Config::from_lookup(env(&[("TWILIO_AUTH_TOKEN", "")])).unwrap_err(),
            ConfigError::Missing("TWILIO_AUTH_TOKEN")
        );
    }

    #[test]
    fn a_supabase_url_with_the_rest_suffix_says_to_drop_it() {
        for url in ["https://abc.supabase.co/rest/v1", "https://abc.supabase.co/rest/v1/"] {
            let err = Config::from_lookup(env(&[("SUPABASE_URL", url)])).unwrap_err().to_string();
            assert!(err.starts_with("SUPABASE_URL is invalid") && err.contains("without /rest/v1"), "{err}");
        }
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let cfg =
            Config::from_lookup(env(&[("TWILIO_AUTH_TOKEN_SECONDARY", "fedcba9876543210fedcba9876543210")])).unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(!shown.contains("fedcba9876543210"), "{shown}");
        assert!(!shown.contains("EGIM96RAZx35"), "{shown}");
    }
}
