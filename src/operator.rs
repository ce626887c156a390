//! The operator's commands, kept out of `main.rs` so tests reach them without the binary:
//! `check` (is this deployment able to do its work?) and the signed sample webhook behind `sign`
//! and `send`. `dlq`, `jobs` and `spool` have modules of their own.

use std::time::Duration;

use secrecy::ExposeSecret;

use crate::supabase::Supabase;
use crate::twilio::credentials::Signer;
use crate::twilio::signature::{self, Algorithm};
use crate::twilio::Params;
use crate::{spool, Config, WEBHOOK_PATH};

const TIMEOUT: Duration = Duration::from_secs(10);
const PUSH_HINT: &str = "push the migrations: `supabase link --project-ref <ref>` then `supabase db push --remote`";
/// The functions are in the database, but PostgREST does not know them: its schema cache is older
/// than the migration (a self-hosted PostgREST without Supabase's reload triggers, say).
const RELOAD_HINT: &str = "the functions are in the database but not in PostgREST's schema cache: reload it with \
     `NOTIFY pgrst, 'reload schema';` (the SQL editor), or restart PostgREST";

/// What `check` found: one line a finding, and how many of them are problems.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub lines: Vec<String>,
    pub problems: usize,
}

impl CheckReport {
    fn ok(&mut self, line: String) {
        self.lines.push(line);
    }

    fn problem(&mut self, line: String) {
        self.lines.push(line);
        self.problems += 1;
    }
}

/// Checks the configuration, the key, the schema and its grants, the functions a batch calls, and
/// the spool, and says for each what is wrong and what to do.
pub async fn check(config: &Config) -> CheckReport {
    let mut report = CheckReport::default();
    report.ok(format!(
        "configuration: ok ({} key, webhook URL {})",
        config.service_key.kind(),
        config.public_url.join(WEBHOOK_PATH)
    ));
    let supabase = Supabase::new(&config.supabase_url, &config.service_key);
    // The functions are called below, where both are reported.
    match supabase.probe_tables(TIMEOUT).await {
        Ok(()) => report.ok("supabase: ok (users, jobs and dlq_jobs are readable with the key)".into()),
        Err((what, e)) => report.problem(format!("supabase: PROBLEM with {what}: {e}\n  {}", e.hint())),
    }
    match supabase.schema_report(TIMEOUT).await {
        Ok(tables) if tables.len() == crate::supabase::TABLES.len() => {
            let found: Vec<String> = tables.iter().flat_map(|t| t.problems()).collect();
            if found.is_empty() {
                report.ok("security: ok (RLS on, service_role granted, anon and authenticated granted nothing)".into());
            }
            for problem in found {
                report.problem(format!("security: PROBLEM: {problem}"));
            }
        }
        Ok(tables) => report.problem(format!(
            "security: PROBLEM: expected {} tables, found {}; {PUSH_HINT}",
            crate::supabase::TABLES.len(),
            tables.len()
        )),
        Err(e) => report.problem(format!("security: PROBLEM: cannot read the schema report ({e}); {}", e.hint())),
    }
    // The functions the database has, whatever PostgREST's schema cache says.
    let mut in_database: Vec<String> = Vec::new();
    match supabase.function_report(TIMEOUT).await {
        Ok(functions) => {
            in_database = functions.iter().map(|f| f.function_name.clone()).collect();
            let open: Vec<String> = functions
                .iter()
                .filter(|f| !f.public_role_privileges.is_empty())
                .map(|f| {
                    format!(
                        "function {}: {} may execute it; revoke it",
                        f.function_name,
                        f.public_role_privileges.join(" and ")
                    )
                })
                .collect();
            if open.is_empty() {
                report.ok(format!(
                    "security: ok ({} functions, none executable by anon or authenticated)",
                    functions.len()
                ));
            }
            for problem in open {
                report.problem(format!("security: PROBLEM: {problem}"));
            }
        }
        Err(e) => report.problem(format!("security: PROBLEM: cannot read the function report ({e}); {}", e.hint())),
    }
    // The very calls batches make, with nothing in them: proves the functions are there and the
    // key may run them, through the gateway, the way the service will. Both are reported.
    let ingest = [
        ("ingest_inbound", supabase.ingest_inbound(&[], TIMEOUT).await),
        ("ingest_jobs", supabase.ingest_jobs(&[], TIMEOUT).await),
    ];
    let failed: Vec<String> =
        ingest.iter().filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name} ({e})"))).collect();
    match ingest.iter().find_map(|(name, r)| r.as_ref().err().map(|e| (name, e))) {
        None => report.ok("ingest: ok (ingest_inbound and ingest_jobs answer)".into()),
        Some((name, e)) => {
            let stale = e.is_missing_from_schema_cache() && in_database.iter().any(|f| f == name);
            let hint = if stale { RELOAD_HINT } else { e.hint() };
            report.problem(format!("ingest: PROBLEM: cannot call {}; {hint}", failed.join(", ")))
        }
    }
    // Read without taking the spool from a service that may be running on this machine.
    let dir = &config.spool_dir;
    let spool =
        spool::health(dir).and_then(|()| spool::status(dir).map_err(|e| format!("SPOOL_DIR {}: {e}", dir.display())));
    match spool {
        Ok(status) => {
            report.ok(format!("spool: ok ({} waiting in {}, writable, room to spare)", status.depth, dir.display()))
        }
        Err(why) => report.problem(format!("spool: PROBLEM: {why}")),
    }
    report
}

/// Asks the service on this machine for its readiness (`/readyz` on `OPS_PORT`): whether it is
/// ready, and its answer. For `fly ssh console -C "twilio-ingest readyz"`: the image has no curl.
pub async fn readyz(config: &Config) -> Result<(bool, String), reqwest::Error> {
    let host = match config.host {
        // Listening everywhere, or on one address: the loopback reaches the first.
        None => "127.0.0.1".to_owned(),
        Some(ip) if ip.is_unspecified() => if ip.is_ipv6() { "[::1]" } else { "127.0.0.1" }.to_owned(),
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Some(ip) => ip.to_string(),
    };
    let url = format!("http://{host}:{}/readyz", config.ops_port);
    let answer = reqwest::Client::new().get(url).timeout(TIMEOUT).send().await?;
    let ready = answer.status().is_success();
    Ok((ready, answer.text().await?))
}

/// Which kind of webhook a sample is.
#[derive(Clone, Copy, Debug)]
pub enum SampleKind {
    /// A Messaging webhook: a direct message.
    Dm,
    /// A Conversations `onMessageAdded` webhook: a message in a group.
    Group,
}

/// A sample inbound message, for trying a deployment by hand.
#[derive(Clone, Debug)]
pub struct Sample {
    pub kind: SampleKind,
    pub from: String,
    pub body: String,
    pub profile_name: Option<String>,
    /// A fresh one when not given.
    pub message_sid: Option<String>,
}

/// A sample webhook as Twilio would send it to this deployment.
#[derive(Clone, Debug)]
pub struct SignedSample {
    pub url: String,
    pub params: Params,
    /// `X-Twilio-Signature`.
    pub signature: String,
    /// `X-Twilio-Webhooks-Signature-Settings`, when a SharedKey signed it.
    pub settings: Option<String>,
}

/// The sample as Twilio would send it to this deployment, signed with the first configured secret:
/// an auth token, or a SharedKey (HMAC-SHA256) when no token is configured.
pub fn signed_sample(config: &Config, sample: &Sample) -> SignedSample {
    let prefix = match sample.kind {
        SampleKind::Dm => "SM",
        SampleKind::Group => "IM",
    };
    let sid = sample.message_sid.clone().unwrap_or_else(|| format!("{prefix}{}", uuid::Uuid::new_v4().simple()));
    let signer = config.credentials.sample_signer();
    let account = match &signer {
        Signer::Token { account, .. } | Signer::SharedKey { account, .. } => account.clone(),
    };
    let mut pairs: Vec<(&str, String)> = match sample.kind {
        SampleKind::Dm => vec![
            ("MessageSid", sid.clone()),
            ("SmsMessageSid", sid.clone()),
            ("SmsSid", sid),
            ("AccountSid", account),
            ("From", sample.from.clone()),
            ("To", "+15005550001".into()),
            ("Body", sample.body.clone()),
            ("NumMedia", "0".into()),
            ("NumSegments", "1".into()),
            ("SmsStatus", "received".into()),
            ("ApiVersion", "2010-04-01".into()),
        ],
        SampleKind::Group => vec![
            ("EventType", "onMessageAdded".into()),
            ("ConversationSid", "CH00000000000000000000000000000000".into()),
            ("MessageSid", sid),
            ("AccountSid", account),
            ("Author", sample.from.clone()),
            ("Body", sample.body.clone()),
            ("Index", "0".into()),
            ("Source", "SMS".into()),
            ("RetryCount", "0".into()),
        ],
    };
    if let Some(name) = &sample.profile_name {
        pairs.push(("ProfileName", name.clone()));
    }
    let params = Params::from_pairs(pairs);
    let url = config.public_url.join(WEBHOOK_PATH);
    let (signature, settings) = match signer {
        Signer::Token { token, .. } => (signature::sign(token.expose_secret(), &url, &params), None),
        Signer::SharedKey { id, secret, .. } => (
            signature::sign_with(Algorithm::HmacSha256, secret.expose_secret(), &url, &params),
            Some(format!("key={id},algorithm=HMAC_SHA256")),
        ),
    };
    SignedSample { url, params, signature, settings }
}

/// POSTs a signed sample to `target`, as Twilio would; returns the status and body of the answer.
pub async fn send(target: &str, sample: &SignedSample) -> reqwest::Result<(reqwest::StatusCode, String)> {
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(sample.params.pairs()).finish();
    let mut request = reqwest::Client::new()
        .post(target)
        .header("X-Twilio-Signature", &sample.signature)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(settings) = &sample.settings {
        request = request.header("X-Twilio-Webhooks-Signature-Settings", settings);
    }
    let response = request.send().await?;
    let status = response.status();
    Ok((status, response.text().await?))
}
