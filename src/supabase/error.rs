use std::borrow::Cow;

use serde::Deserialize;

use crate::text;

/// What went wrong talking to Supabase, split by [`Error::is_transient`] into what is worth
/// retrying and what is not.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not reach Supabase: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("Supabase did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// PostgreSQL's `details` (`Failing row contains (…)`, `Key (user_id)=(…)`) quote the row, with
    /// its phone number and body: they are kept apart from the message, which is what is logged.
    #[error("PostgREST answered {status}{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Api {
        status: u16,
        code: Option<String>,
        /// PostgREST's message and hint, clipped.
        message: String,
        /// PostgreSQL's details, clipped: for a dead letter's `error` and debug logs only.
        details: Option<String>,
        /// How long the server asked us to wait before trying again.
        retry_after: Option<std::time::Duration>,
    },
    /// An answer that is not the one PostgREST gives to this call: a redirect, an HTML page, a
    /// success without the status or body the call must have. Something other than PostgREST
    /// answered (a wrong URL, a captive portal, a proxy), so nothing can be taken as stored.
    #[error("not PostgREST's answer: {0}")]
    Unexpected(String),
    #[error("unexpected answer from PostgREST: {0}")]
    Decode(String),
}

#[derive(Deserialize)]
struct ApiBody {
    code: Option<String>,
    message: Option<String>,
    details: Option<String>,
    hint: Option<String>,
}

impl Error {
    /// The error a failed answer means: PostgREST's (or Supabase's gateway's) JSON error, or, for a
    /// body that is not one, an answer from something else.
    pub(crate) fn from_response(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<ApiBody>(body) {
            Ok(api) if api.code.is_some() || api.message.is_some() => {
                let mut message = api.message.unwrap_or_default();
                if let Some(hint) = api.hint {
                    message.push_str("; ");
                    message.push_str(&hint);
                }
                let message = text::snippet(message.as_bytes(), MAX_MESSAGE);
                let details = api.details.map(|d| text::snippet(d.as_bytes(), MAX_MESSAGE));
                Error::Api { status, code: api.code, message, details, retry_after: None }
            }
            // Cloudflare's and proxies' error pages are HTML: the status still tells an outage
            // (5xx) from a refusal, and the rest is not PostgREST speaking.
            _ if status >= 500 => {
                Error::Api { status, code: None, message: snippet(body), details: None, retry_after: None }
            }
            // A refusal in a page of someone else's (a body limit's 413, a firewall rule's 403, a
            // gateway's 401): whoever wrote it, the status still says what was refused, and
            // `is_transient` and `refuses_every_message` read it as they read PostgREST's. A batch
            // refused so is split like one PostgREST refused. A 404 or 405 page is not: that is a
            // wrong URL or something else answering, as is a page with any other status.
            _ if status >= 400 && !matches!(status, 404 | 405) => {
                Error::Api { status, code: None, message: snippet(body), details: None, retry_after: None }
            }
            _ => Error::Unexpected(format!("{status} with {}", snippet(body))),
        }
    }

    pub(crate) fn with_retry_after(self, wait: Option<std::time::Duration>) -> Self {
        match self {
            Error::Api { status, code, message, details, .. } => {
                Error::Api { status, code, message, details, retry_after: wait }
            }
            other => other,
        }
    }

    /// How long the server asked to wait before the next try, if it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The one rule that decides retry (and, past the deadline, the spool) versus dead letter.
    ///
    /// Transient: the request may succeed unchanged later — the network, a timeout, a gateway or
    /// PostgREST without a database (`PGRST000`–`PGRST003`), and SQLSTATE classes that mean the
    /// database was busy or restarting (08 connection, 40 rollback/deadlock, 53 resources, 57
    /// operator intervention, 58 system), Cloudflare's 520-527, an answer that is not
    /// PostgREST's ([`Error::Unexpected`]), and a schema that is not there yet
    /// ([`Error::is_schema_missing`]). Everything else (constraints, permissions) will fail the
    /// same way again, so the message is dead-lettered.
    pub fn is_transient(&self) -> bool {
        if self.is_schema_missing() || self.refuses_every_message() {
            return true;
        }
        match self {
            Error::Transport(_) | Error::Timeout(_) | Error::Unexpected(_) => true,
            Error::Decode(_) => false,
            Error::Api { status, code, .. } => match code.as_deref() {
                Some("PGRST000" | "PGRST001" | "PGRST002" | "PGRST003") => true,
                Some(c) if c.len() == 5 && !c.starts_with("PGRST") => {
                    matches!(&c[..2], "08" | "40" | "53" | "57" | "58")
                }
                // 520-527: Cloudflare, in front of hosted Supabase, could not reach the origin.
                _ => matches!(status, 408 | 429 | 500 | 502 | 503 | 504 | 520..=527),
            },
        }
    }

    /// The function, table or column a call needs is not in the database (or not yet in PostgREST's
    /// schema cache): a release that runs ahead of its migration. That is not the message's fault
    /// and waiting within one request will not fix it, so the message goes straight to the spool,
    /// and pushing the migration is the whole fix: replay then stores it.
    /// Refused for something no message did: the key (401; a JWT PostgREST will not take,
    /// `PGRST3xx`) or a grant the role lacks (`42501`). Every message would be refused alike (a
    /// key rotated, a grant revoked), so none is dead-lettered or split for it: it waits in the
    /// spool at once, readiness says why, and fixing the key or the grant is the whole recovery.
    pub fn refuses_every_message(&self) -> bool {
        match self {
            Error::Api { status: 401, .. } => true,
            Error::Api { code: Some(code), .. } => code == "42501" || code.starts_with("PGRST3"),
            _ => false,
        }
    }

    pub fn is_schema_missing(&self) -> bool {
        matches!(
            self,
            Error::Api { code: Some(code), .. }
                if matches!(code.as_str(), "PGRST202" | "PGRST204" | "PGRST205" | "42883" | "42P01" | "42703")
        )
    }

    /// PostgREST's own word that its schema cache lacks the function or table; PostgreSQL's
    /// (`42883`, `42P01`) says the database lacks it.
    pub fn is_missing_from_schema_cache(&self) -> bool {
        matches!(self, Error::Api { code: Some(code), .. } if matches!(code.as_str(), "PGRST202" | "PGRST205"))
    }

    /// What an operator should do about this error, in one sentence.
    pub fn hint(&self) -> &'static str {
        match self {
            _ if self.is_schema_missing() => {
                "the migrations are not pushed: `supabase link --project-ref <ref>` then `supabase db push --remote`"
            }
            Error::Api { status: 401, .. } => {
                "SUPABASE_SERVICE_ROLE_KEY is not a valid service-role key for SUPABASE_URL"
            }
            Error::Api { code: Some(code), .. } if code == "42501" => {
                "service_role lacks a grant the migrations give; push them again or restore the grant"
            }
            Error::Api { status: 403, .. } => "the key is not allowed to do this: use the service-role key, not anon",
            Error::Transport(_) | Error::Timeout(_) => {
                "Supabase did not answer: check SUPABASE_URL and the project's status"
            }
            Error::Unexpected(_) => {
                "something other than PostgREST answers at SUPABASE_URL/rest/v1: check SUPABASE_URL"
            }
            e if e.is_transient() => "Supabase is unavailable or restarting; it should pass on its own",
            _ => "Supabase answered something unexpected; see the error",
        }
    }

    /// The database refused a row whose foreign key points at nothing: for a job, a user that is
    /// not stored.
    pub fn is_foreign_key_violation(&self) -> bool {
        matches!(self, Error::Api { code: Some(code), .. } if code == "23503")
    }

    /// The error with PostgreSQL's details, for a dead letter's `error`, which sits beside the
    /// payload it quotes; bounded, as every part of it is clipped. Never for a log line at the
    /// default level: the details quote the row.
    pub fn with_details(&self) -> String {
        match self {
            Error::Api { details: Some(details), .. } => format!("{self}; details: {details}"),
            _ => self.to_string(),
        }
    }

    /// A short label for metrics: the HTTP status, or what happened instead.
    pub fn label(&self) -> Cow<'static, str> {
        match self {
            Error::Transport(_) => "unreachable".into(),
            Error::Timeout(_) => "timeout".into(),
            Error::Api { status, .. } => status.to_string().into(),
            Error::Decode(_) => "decode".into(),
            Error::Unexpected(_) => "unexpected".into(),
        }
    }
}

/// The most of a message, a detail or a body that an error keeps.
const MAX_MESSAGE: usize = 300;

/// The start of a body that is not PostgREST's, for an error message.
fn snippet(body: &[u8]) -> String {
    text::snippet(body, MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, body: &str) -> Error {
        Error::from_response(status, body.as_bytes())
    }

    #[test]
    fn an_outage_is_worth_retrying() {
        assert!(api(503, r#"{"code":"PGRST000","message":"Database connection error"}"#).is_transient());
        assert!(api(504, r#"{"code":"PGRST003","message":"Timed out acquiring connection"}"#).is_transient());
        assert!(api(502, "<html>Bad Gateway</html>").is_transient());
        assert!(api(500, r#"{"code":"40P01","message":"deadlock detected"}"#).is_transient());
        assert!(api(503, r#"{"code":"57P01","message":"terminating connection due to administrator command"}"#)
            .is_transient());
        assert!(Error::Timeout(std::time::Duration::from_secs(1)).is_transient());
    }

    #[test]
    fn cloudflare_and_other_impostors_are_worth_retrying() {
        for status in 520..=527 {
            assert!(api(status, "<html>Cloudflare</html>").is_transient(), "{status}");
        }
        // A 200, 404 or 307 page from something that is not PostgREST stores nothing.
        assert!(matches!(api(404, "<!doctype html><title>Not found</title>"), Error::Unexpected(_)));
        assert!(api(404, "<!doctype html>").is_transient());
        assert!(matches!(api(200, "<!doctype html>"), Error::Unexpected(_)));
    }

    #[test]
    fn a_refusal_in_someone_elses_page_is_still_a_refusal() {
        for refused in [
            api(413, "<html><center><h1>413 Request Entity Too Large</h1></center></html>"),
            api(403, "<html><body>Request blocked by rule 942100</body></html>"),
            api(403, r#"{"blocked":"sql injection"}"#),
            api(400, "{}"),
        ] {
            assert!(matches!(refused, Error::Api { .. }), "{refused}");
            assert!(!refused.is_transient(), "a batch refused so is split: {refused}");
            assert!(!refused.refuses_every_message(), "{refused}");
        }
    }

    #[test]
    fn a_refusal_is_not() {
        assert!(!api(409, r#"{"code":"23503","message":"violates foreign key"}"#).is_transient());
        assert!(!api(400, r#"{"code":"23514","message":"violates check constraint"}"#).is_transient());
        assert!(!api(500, r#"{"code":"22P02","message":"invalid input syntax"}"#).is_transient());
    }

    #[test]
    fn a_key_or_a_grant_refuses_every_message_alike_and_waits_for_its_fix() {
        for path in [
            api(401, r#"{"message":"Invalid API key"}"#),
            api(401, "<html>Unauthorized</html>"),
            api(401, r#"{"code":"PGRST301","message":"JWSError JWSInvalidSignature"}"#),
            api(403, r#"{"code":"42501","message":"permission denied for table jobs"}"#),
        ] {
            assert!(path.refuses_every_message(), "{path}");
            assert!(path.is_transient(), "no message is dead-lettered for it: {path}");
        }
        assert!(!api(409, r#"{"code":"23505","message":"duplicate key"}"#).refuses_every_message());
    }

    #[test]
    fn a_schema_not_pushed_yet_is_the_releases_fault_not_the_messages() {
        for missing in [
            api(404, r#"{"code":"PGRST202","message":"Could not find the function public.ingest_jobs"}"#),
            api(404, r#"{"code":"PGRST205","message":"Could not find the table public.dlq_jobs"}"#),
            api(404, r#"{"code":"42883","message":"function public.ingest_jobs(jsonb) does not exist"}"#),
            api(404, r#"{"code":"42P01","message":"relation \"public.jobs\" does not exist"}"#),
            api(400, r#"{"code":"PGRST204","message":"Could not find the 'received_at' column of 'dlq_jobs'"}"#),
        ] {
            assert!(missing.is_schema_missing(), "{missing}");
            assert!(missing.is_transient(), "{missing}");
            assert!(missing.hint().contains("supabase db push --remote"), "{missing}");
        }
        assert!(!api(403, r#"{"code":"42501","message":"permission denied"}"#).is_schema_missing());
    }

    #[test]
    fn each_hint_names_its_real_cause() {
        assert!(api(401, r#"{"message":"Invalid API key"}"#).hint().contains("SUPABASE_SERVICE_ROLE_KEY"));
        assert!(api(403, r#"{"code":"42501","message":"permission denied for table jobs"}"#).hint().contains("grant"));
        assert!(Error::Timeout(std::time::Duration::from_secs(1)).hint().contains("SUPABASE_URL"));
    }

    #[test]
    fn a_job_for_a_user_not_stored_is_told_apart_from_other_refusals() {
        assert!(api(409, r#"{"code":"23503","message":"violates foreign key"}"#).is_foreign_key_violation());
        assert!(!api(409, r#"{"code":"23505","message":"duplicate key"}"#).is_foreign_key_violation());
        assert!(!api(503, r#"{"code":"PGRST000","message":"Database connection error"}"#).is_foreign_key_violation());
    }

    #[test]
    fn the_message_keeps_code_and_hint() {
        let e = api(
            403,
            r#"{"code":"42501","message":"permission denied for table jobs","details":null,"hint":"grant it"}"#,
        );
        assert_eq!(e.to_string(), "PostgREST answered 403 (42501): permission denied for table jobs; grant it");
    }

    #[test]
    fn the_details_that_quote_a_row_stay_out_of_the_message() {
        let e = api(
            400,
            r#"{"code":"23514","message":"new row for relation \"jobs\" violates check constraint \"c\"","details":"Failing row contains (+14155550100, my secret body)","hint":null}"#,
        );
        assert!(!e.to_string().contains("+14155550100") && !e.to_string().contains("secret"), "{e}");
        assert!(e.with_details().contains("Failing row contains (+14155550100"), "{}", e.with_details());
    }

    #[test]
    fn every_part_of_an_error_is_bounded() {
        let huge = "x".repeat(200_000);
        let e = api(409, &serde_json::json!({"code": "23503", "message": huge, "details": huge}).to_string());
        assert!(e.with_details().len() < 1_000, "{}", e.with_details().len());
        assert!(api(404, &huge).to_string().len() < 400);
    }
}
