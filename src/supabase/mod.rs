//! Supabase, reached only through its REST API (PostgREST under `SUPABASE_URL/rest/v1`) with the
//! service-role key. Nothing here knows about Twilio: it stores jobs, users and dead letters.

mod error;
mod key;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use postgrest::Builder;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use error::Error;
pub use key::ServiceKey;

/// The tables the service needs; `readyz` and `check` confirm each is reachable with the key.
pub const TABLES: [&str; 4] = ["users", "jobs", "dlq_jobs", "user_identities"];

/// Set by `ingest_inbound` and `ingest_jobs` only when some of a batch's messages already had a job:
/// their positions in the batch, comma-separated.
const DUPLICATES_HEADER: &str = "x-ingest-duplicates";

/// What PostgREST answered to a request that succeeded.
struct Answer {
    headers: HeaderMap,
    body: Bytes,
}

/// One job to insert, encoded once to JSON so retries and batch splits never re-serialise it.
#[derive(Clone, Debug)]
pub struct EncodedJob {
    pub message_sid: String,
    /// The sender's phone, when the message is from a phone and nothing else (an SMS, a WhatsApp
    /// message without a BSUID): such a job may go through `ingest_jobs`, keyed by phone, once its
    /// user is known to be stored.
    pub phone_only: Option<String>,
    /// When the webhook arrived, in microseconds since the Unix epoch.
    pub received_at_us: i64,
    /// The job brings a first name for its user.
    pub names_user: bool,
    json: String,
}

/// A job as `ingest_inbound` takes it: the sender by every address the message carries, which
/// the database resolves to one user.
#[derive(Serialize)]
pub struct NewJob<'a> {
    pub message_sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_phone: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bsuid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_bsuid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<&'a str>,
    pub first_name: Option<&'a str>,
    pub source_type: &'a str,
    /// A group's `ConversationSid`; for a direct message, `From` (the database makes the channel
    /// from `channel_prefix` and the user's key).
    pub source_channel_id: &'a str,
    /// A direct message's channel prefix: `whatsapp:`, or empty for SMS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_prefix: Option<&'a str>,
    pub content_type: &'a str,
    pub payload: &'a Value,
    /// Microseconds, not a timestamp string: exact, and cheap for the database to read.
    pub received_at_us: i64,
}

impl NewJob<'_> {
    pub fn encode(&self) -> EncodedJob {
        let phone_only = match (self.user_phone, self.bsuid, self.parent_bsuid, self.chat) {
            (Some(phone), None, None, None) => Some(phone.to_owned()),
            _ => None,
        };
        EncodedJob {
            message_sid: self.message_sid.to_owned(),
            phone_only,
            received_at_us: self.received_at_us,
            names_user: self.first_name.is_some(),
            json: serde_json::to_string(self).expect("a job is always serialisable"),
        }
    }
}

#[derive(Serialize, Debug, Clone)]
pub struct NewDeadLetter {
    message_sid: Option<String>,
    dedupe_key: String,
    payload: Value,
    pub error: String,
    error_kind: DeadLetterKind,
    /// When the webhook arrived (RFC 3339), so a re-driven letter keeps its place in its channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    received_at: Option<String>,
}

/// Why a message is a dead letter: the values of `dlq_jobs.error_kind`'s check constraint, and of
/// the `kind` label of `dlq_inserts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterKind {
    /// The webhook cannot become a job (no sender, a malformed SID, a NUL character...).
    Unusable,
    /// Supabase refused the job for good (a revoked grant, a changed schema...).
    Rejected,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Unusable => "unusable",
            DeadLetterKind::Rejected => "rejected",
        }
    }
}

/// Marks a dead letter's payload that is kept as JSON text because jsonb cannot hold it as it is
/// (a NUL character): `{"twilio_ingest_encoded": "json", "json": "<the params as JSON text>"}`.
pub const ENCODED_PAYLOAD: &str = "twilio_ingest_encoded";

impl NewDeadLetter {
    /// A dead letter for `payload`. `message_sid` must be a SID of Twilio's shape (bounded, safe
    /// to index); without one the letter is keyed by a hash of the payload. A payload jsonb cannot
    /// hold is stored as its JSON text, which it can, so every signed message has a place.
    pub fn new(message_sid: Option<&str>, payload: &Value, error: String, error_kind: DeadLetterKind) -> Self {
        // serde_json's map is sorted, so equal payloads serialise, and hash, alike.
        let text = payload.to_string();
        let dedupe_key = match message_sid {
            Some(sid) => sid.to_owned(),
            None => format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&text))),
        };
        let payload = if holds_nul(payload) {
            serde_json::json!({ ENCODED_PAYLOAD: "json", "json": text })
        } else {
            payload.clone()
        };
        NewDeadLetter {
            message_sid: message_sid.map(str::to_owned),
            dedupe_key,
            payload,
            error,
            error_kind,
            received_at: None,
        }
    }

    pub fn received_at(self, received_at: String) -> Self {
        NewDeadLetter { received_at: Some(received_at), ..self }
    }
}

/// Whether a key or string anywhere in `value` holds U+0000, which PostgreSQL cannot store.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

#[derive(Deserialize, Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    pub message_sid: Option<String>,
    pub payload: Value,
    pub error: String,
    pub error_kind: String,
    pub created_at: String,
    /// Absent on letters written before arrival times were kept.
    #[serde(default)]
    pub received_at: Option<String>,
    pub replayed_at: Option<String>,
    pub replay_error: Option<String>,
}

/// One row of `job_queue_stats`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct QueueStat {
    pub source_type: String,
    pub status: String,
    pub jobs: u64,
    /// When the oldest of these jobs arrived.
    pub oldest: Option<String>,
}

/// Who besides service_role may run one of the project's functions.
#[derive(Deserialize, Debug, Clone)]
pub struct FunctionReport {
    pub function_name: String,
    /// Of anon and authenticated, those that may execute it; there should be none.
    pub public_role_privileges: Vec<String>,
}

/// How one table is locked down, as `ingest_schema_report` sees it.
#[derive(Deserialize, Debug, Clone)]
pub struct TableReport {
    pub table_name: String,
    pub rls_enabled: bool,
    pub service_role_privileges: Vec<String>,
    /// Privileges anon or authenticated hold, as `role:privilege`; there should be none.
    pub public_role_privileges: Vec<String>,
}

impl TableReport {
    /// Each way the table falls short, in plain words.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let t = &self.table_name;
        if !self.rls_enabled {
            problems.push(format!("table {t}: row level security is off"));
        }
        for needed in ["select", "insert", "update"] {
            if !self.service_role_privileges.iter().any(|p| p == needed) {
                problems.push(format!("table {t}: service_role may not {needed}; the migration's grants are missing"));
            }
        }
        if !self.public_role_privileges.is_empty() {
            problems.push(format!(
                "table {t}: anon/authenticated hold {}; revoke them",
                self.public_role_privileges.join(", ")
            ));
        }
        problems
    }
}

#[derive(Clone)]
pub struct Supabase {
    rest_url: String,
    headers: HeaderMap,
    client: reqwest::Client,
    /// The requests batches make, built once by postgrest-rs; each batch clones one and adds its
    /// body, rather than formatting, parsing and merging the same URL and headers again.
    ingest_inbound: Arc<reqwest::Request>,
    ingest_jobs: Arc<reqwest::Request>,
}

impl Supabase {
    pub fn new(supabase_url: &str, key: &ServiceKey) -> Self {
        let client = reqwest::Client::builder()
            // A redirect would carry the key to wherever it points; it is answered as a failure.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .user_agent(concat!("twilio-ingest/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend initialises");
        let rest_url = format!("{}/rest/v1", supabase_url.trim_end_matches('/'));
        let headers = key.headers();
        let template = |function: &str| {
            // The function's one parameter is unnamed, so PostgREST passes the body to it as it
            // is. Without `columns` it would still parse the whole body first, to learn its keys;
            // naming them spares that.
            let request = Builder::new(format!("{rest_url}/rpc/{function}"), None, headers.clone(), client.clone())
                .rpc(String::new())
                .build()
                .query(&[("columns", "messages")])
                .build()
                .expect("SUPABASE_URL was checked to be a valid URL");
            Arc::new(request)
        };
        let (ingest_inbound, ingest_jobs) = (template("ingest_inbound"), template("ingest_jobs"));
        Supabase { rest_url, headers, client, ingest_inbound, ingest_jobs }
    }

    fn table(&self, table: &str) -> Builder {
        Builder::new(format!("{}/{table}", self.rest_url), None, self.headers.clone(), self.client.clone())
    }

    fn rpc(&self, function: &str, args: String) -> Builder {
        self.table(&format!("rpc/{function}")).rpc(args)
    }

    /// Upserts the users and inserts the jobs of one batch in one transaction. Returns the
    /// positions in `jobs` whose MessageSid already had a job before this call.
    pub async fn ingest_inbound(&self, jobs: &[&EncodedJob], timeout: Duration) -> Result<Vec<usize>, Error> {
        self.ingest("ingest_inbound", &self.ingest_inbound, jobs, timeout).await
    }

    /// Inserts the jobs of one batch whose users are all stored and have nothing to add, and
    /// answers like [`Supabase::ingest_inbound`]. A user that is not stored fails the whole batch,
    /// writing nothing, with [`Error::is_foreign_key_violation`].
    pub async fn ingest_jobs(&self, jobs: &[&EncodedJob], timeout: Duration) -> Result<Vec<usize>, Error> {
        self.ingest("ingest_jobs", &self.ingest_jobs, jobs, timeout).await
    }

    async fn ingest(
        &self,
        endpoint: &'static str,
        template: &reqwest::Request,
        jobs: &[&EncodedJob],
        timeout: Duration,
    ) -> Result<Vec<usize>, Error> {
        let mut body = String::with_capacity(2 + jobs.iter().map(|j| j.json.len() + 1).sum::<usize>());
        body.push('[');
        for (i, job) in jobs.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&job.json);
        }
        body.push(']');
        let mut request = template.try_clone().expect("the template's body is not a stream");
        *request.body_mut() = Some(body.into());
        let answer = self.execute(endpoint, request, None, Expect::NoContent, timeout).await?;
        Ok(duplicates(answer.headers.get(DUPLICATES_HEADER)))
    }

    /// Inserts dead letters; one already dead-lettered (same `dedupe_key`) is not repeated.
    pub async fn insert_dead_letters(&self, letters: &[NewDeadLetter], timeout: Duration) -> Result<(), Error> {
        let body = serde_json::to_string(letters).expect("a dead letter is always serialisable");
        let request = self.table("dlq_jobs").on_conflict("dedupe_key").insert(body);
        self.send("dlq_jobs", request, Some("return=minimal,resolution=ignore-duplicates"), Expect::Created, timeout)
            .await?;
        Ok(())
    }

    /// Dead letters not yet replayed, oldest first: those never tried again when `tried` is
    /// false, those a replay already failed on when it is true; after `after` (the last letter
    /// of the previous page) when given.
    pub async fn pending_dead_letters(
        &self,
        tried: bool,
        after: Option<&DeadLetter>,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<DeadLetter>, Error> {
        let request = self.table("dlq_jobs").select("*").is("replayed_at", "null");
        let mut request =
            if tried { request.not("is", "replay_error", "null") } else { request.is("replay_error", "null") };
        if let Some(last) = after {
            let (at, id) = (&last.created_at, &last.id);
            // Quoted: a timestamp holds the dots and colons PostgREST's filter syntax uses.
            request = request.or(format!(r#"created_at.gt."{at}",and(created_at.eq."{at}",id.gt.{id})"#));
        }
        self.fetch("dlq_jobs", request.order("created_at.asc,id.asc").limit(limit), timeout).await
    }

    /// How many dead letters wait to be replayed.
    pub async fn count_pending_dead_letters(&self, timeout: Duration) -> Result<u64, Error> {
        let request = self.table("dlq_jobs").select("id").is("replayed_at", "null").exact_count().limit(1);
        let answer = self.send("dlq_jobs", request, None, Expect::Json, timeout).await?;
        // `Content-Range: 0-0/1234`, or `*/0` when there are none.
        answer
            .headers
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit('/').next())
            .and_then(|total| total.parse().ok())
            .ok_or_else(|| Error::Decode("no total in Content-Range".into()))
    }

    /// Records the outcome of replaying a dead letter: replayed, or why it still fails.
    pub async fn mark_dead_letter(&self, id: &str, outcome: Result<(), &str>, timeout: Duration) -> Result<(), Error> {
        let patch = match outcome {
            Ok(()) => serde_json::json!({"replayed_at": "now", "replay_error": null}),
            Err(why) => serde_json::json!({"replay_error": why}),
        };
        let request = self.table("dlq_jobs").eq("id", id).update(patch.to_string());
        self.send("dlq_jobs", request, Some("return=minimal"), Expect::NoContent, timeout).await?;
        Ok(())
    }

    /// Deletes dead letters not yet replayed: those with the given ids, or (with `unusable`) every
    /// one that is unusable, which no fix on the database's side can turn into a job. Returns how
    /// many went. Replayed letters stay: they are the record of what was re-driven.
    pub async fn discard_dead_letters(
        &self,
        ids: &[uuid::Uuid],
        unusable: bool,
        timeout: Duration,
    ) -> Result<u64, Error> {
        let mut request = self.table("dlq_jobs").is("replayed_at", "null");
        if !ids.is_empty() {
            request = request.in_("id", ids.iter().map(|id| id.to_string()));
        }
        if unusable {
            request = request.eq("error_kind", DeadLetterKind::Unusable.as_str());
        }
        let request = request.select("id").delete();
        let answer = self.send("dlq_jobs", request, Some("return=representation"), Expect::Json, timeout).await?;
        let deleted: Vec<serde_json::Value> =
            serde_json::from_slice(&answer.body).map_err(|e| Error::Decode(format!("deleted dead letters: {e}")))?;
        Ok(deleted.len() as u64)
    }

    /// Proves the key may do what the service does: read one key from each table, and call each
    /// ingest function with an empty batch (which writes nothing). Says which table or function
    /// failed, so a release that runs ahead of its migration names the function it lacks.
    pub async fn probe(&self, timeout: Duration) -> Result<(), (String, Error)> {
        self.probe_tables(timeout).await?;
        self.ingest_inbound(&[], timeout).await.map_err(|e| ("function ingest_inbound".to_owned(), e))?;
        self.ingest_jobs(&[], timeout).await.map_err(|e| ("function ingest_jobs".to_owned(), e))?;
        Ok(())
    }

    /// The queue by source type and status (`job_queue_stats`).
    pub async fn job_queue_stats(&self, timeout: Duration) -> Result<Vec<QueueStat>, Error> {
        self.fetch("job_queue_stats", self.rpc("job_queue_stats", "{}".into()), timeout).await
    }

    /// Requeues failed jobs (`retry_failed_jobs`): those in `ids`, or failed since `since`, or
    /// all of them when both are `None`. Returns how many.
    pub async fn retry_failed_jobs(
        &self,
        ids: Option<&[String]>,
        since: Option<&str>,
        timeout: Duration,
    ) -> Result<u64, Error> {
        let args = serde_json::json!({"ids": ids, "since": since});
        self.fetch("retry_failed_jobs", self.rpc("retry_failed_jobs", args.to_string()), timeout).await
    }

    /// Which of the project's functions anon or authenticated may execute.
    pub async fn function_report(&self, timeout: Duration) -> Result<Vec<FunctionReport>, Error> {
        self.fetch("ingest_function_report", self.rpc("ingest_function_report", "{}".into()), timeout).await
    }

    /// The tables half of [`Supabase::probe`]: reads one key from each table.
    pub async fn probe_tables(&self, timeout: Duration) -> Result<(), (String, Error)> {
        for (table, key) in TABLES.into_iter().zip(["id", "id", "id", "user_id"]) {
            // Not limit(0): postgrest-rs computes a range end of limit - 1.
            let request = self.table(table).select(key).limit(1);
            self.send(table, request, None, Expect::Json, timeout).await.map_err(|e| (format!("table {table}"), e))?;
        }
        Ok(())
    }

    /// RLS and grants on the three tables.
    pub async fn schema_report(&self, timeout: Duration) -> Result<Vec<TableReport>, Error> {
        self.fetch("ingest_schema_report", self.rpc("ingest_schema_report", "{}".into()), timeout).await
    }

    /// Sends `request` and decodes its JSON answer.
    async fn fetch<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &'static str,
        request: Builder,
        timeout: Duration,
    ) -> Result<T, Error> {
        let answer = self.send(endpoint, request, None, Expect::Json, timeout).await?;
        serde_json::from_slice(&answer.body).map_err(|e| Error::Decode(e.to_string()))
    }

    async fn send(
        &self,
        endpoint: &'static str,
        request: Builder,
        prefer: Option<&'static str>,
        expect: Expect,
        timeout: Duration,
    ) -> Result<Answer, Error> {
        let request = request.build().build().map_err(Error::Transport)?;
        self.execute(endpoint, request, prefer, expect, timeout).await
    }

    /// Sends `request` within `timeout`, and records how long it took and how it ended under
    /// `endpoint` (the table or function it calls).
    async fn execute(
        &self,
        endpoint: &'static str,
        mut request: reqwest::Request,
        prefer: Option<&'static str>,
        expect: Expect,
        timeout: Duration,
    ) -> Result<Answer, Error> {
        let started = Instant::now();
        if let Some(prefer) = prefer {
            request.headers_mut().insert("Prefer", HeaderValue::from_static(prefer));
        }
        let result = tokio::time::timeout(timeout, async {
            let mut response = self.client.execute(request).await.map_err(Error::Transport)?;
            let status = response.status();
            let headers = std::mem::take(response.headers_mut());
            let body = response.bytes().await.map_err(Error::Transport)?;
            if status.is_redirection() {
                // Never followed: the next hop would get the key, and its answer would count.
                let to = headers.get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("nowhere");
                return Err(Error::Unexpected(format!("a redirect ({status}) to {}; not followed", clip(to))));
            }
            if !status.is_success() {
                let retry_after = headers
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                return Err(Error::from_response(status.as_u16(), &body).with_retry_after(retry_after));
            }
            expect.check(status.as_u16(), &headers, &body)?;
            Ok(Answer { headers, body })
        })
        .await
        .unwrap_or(Err(Error::Timeout(timeout)));
        let status = match &result {
            Ok(_) => "ok".into(),
            Err(e) => e.label(),
        };
        metrics::histogram!("supabase_request_seconds", "endpoint" => endpoint, "status" => status.clone())
            .record(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics::counter!("supabase_request_errors_total", "endpoint" => endpoint, "status" => status).increment(1);
        }
        result
    }
}

/// The one answer PostgREST gives to a call that worked; anything else came from something else.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// 204 and no body: a void function, or an update with `return=minimal`.
    NoContent,
    /// 201 and no body: an insert with `return=minimal`.
    Created,
    /// 200 (or 206, part of a counted read) and a JSON body: a read, or a function that returns
    /// something.
    Json,
}

impl Expect {
    fn check(self, status: u16, headers: &HeaderMap, body: &[u8]) -> Result<(), Error> {
        let json = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json") || v.starts_with("application/vnd.pgrst"));
        let fits = match self {
            Expect::NoContent => status == 204 && body.is_empty(),
            Expect::Created => status == 201 && body.is_empty(),
            // 206: a read with a range (a limit and an exact count) that holds part of the rows.
            Expect::Json => matches!(status, 200 | 206) && json,
        };
        if fits {
            return Ok(());
        }
        let kind =
            headers.get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("no content type");
        Err(Error::Unexpected(format!("{status} {}, {} bytes, where {self:?} was due", clip(kind), body.len())))
    }
}

/// At most 120 characters of something an upstream sent, for an error message.
fn clip(text: &str) -> &str {
    crate::text::clip(text, 120)
}

/// The positions an ingest function reported as already having a job; none when it said nothing.
///
/// The batch is committed by the time this is read, so a header that cannot be read costs only the
/// duplicate count in the metrics, never a message: it is logged and taken as "no duplicates".
fn duplicates(header: Option<&HeaderValue>) -> Vec<usize> {
    let Some(header) = header else { return Vec::new() };
    let parsed: Option<Vec<usize>> = header
        .to_str()
        .ok()
        .and_then(|text| text.split(',').filter(|p| !p.is_empty()).map(|p| p.trim().parse().ok()).collect());
    parsed.unwrap_or_else(|| {
        tracing::warn!(header = ?header, "unreadable {DUPLICATES_HEADER} header; counting the batch as new jobs");
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::{duplicates, DeadLetterKind, NewDeadLetter};
    use reqwest::header::HeaderValue;
    use serde_json::json;

    #[test]
    fn a_dead_letter_is_keyed_by_its_message_sid_or_else_by_its_payload() {
        let key = |sid: Option<&str>, payload| {
            NewDeadLetter::new(sid, &payload, "e".into(), DeadLetterKind::Unusable).dedupe_key
        };
        assert_eq!(key(Some("SM1"), json!({"a": "1"})), "SM1");
        assert_eq!(key(None, json!({"a": "1", "b": "2"})), key(None, json!({"b": "2", "a": "1"})));
        assert_ne!(key(None, json!({"a": "1"})), key(None, json!({"a": "2"})));
        assert!(key(None, json!({})).starts_with("sha256:"));
    }

    #[test]
    fn a_payload_jsonb_cannot_hold_is_kept_exactly_as_json_text() {
        let payload = json!({"Body": "a\u{0}b", "From": "+14155550100"});
        let letter = NewDeadLetter::new(None, &payload, "e".into(), DeadLetterKind::Unusable);
        assert_eq!(letter.payload[super::ENCODED_PAYLOAD], "json");
        let text = letter.payload["json"].as_str().unwrap();
        assert!(!text.contains('\0'), "the text itself holds no NUL");
        assert_eq!(serde_json::from_str::<serde_json::Value>(text).unwrap(), payload);
        // An ordinary payload is stored as it is.
        let plain = json!({"Body": "hi"});
        assert_eq!(NewDeadLetter::new(None, &plain, "e".into(), DeadLetterKind::Unusable).payload, plain);
    }

    #[test]
    fn duplicates_are_read_from_the_header_and_none_without_it() {
        let read = |v: &str| duplicates(Some(&HeaderValue::from_str(v).unwrap()));
        assert_eq!(duplicates(None), Vec::<usize>::new());
        assert_eq!(read(""), Vec::<usize>::new());
        assert_eq!(read("0,3,17"), vec![0, 3, 17]);
        // The batch is committed either way: an unreadable header must not fail it.
        assert_eq!(read("0,x"), Vec::<usize>::new());
    }
}
