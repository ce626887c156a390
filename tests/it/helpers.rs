//! Test helpers: shared real stacks, an app per test on port 0, and signed webhooks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use devstack::{Grants, KeyKind, Stack};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use twilio_ingest::ingest::{Ingestor, Settings};
use twilio_ingest::twilio::{signature, Params};
use twilio_ingest::{Application, Config, WEBHOOK_PATH};

pub use devstack::{wait_for_listener, PUBLIC_URL, TWILIO_TOKEN as TOKEN};

/// One stack per grants mode, started on first use and shared by the tests that only add rows.
pub fn shared_stack(grants: Grants) -> &'static Stack {
    static DEFAULT: OnceLock<Stack> = OnceLock::new();
    static NONE: OnceLock<Stack> = OnceLock::new();
    let cell = match grants {
        Grants::Default => &DEFAULT,
        Grants::None => &NONE,
    };
    cell.get_or_init(|| Stack::start(grants).expect("the test stack starts"))
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twilio-ingest-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn config(supabase_url: &str, key: KeyKind, spool_dir: &std::path::Path, extra: &[(&str, &str)]) -> Config {
    let mut env: HashMap<String, String> = [
        ("TWILIO_AUTH_TOKEN", TOKEN.to_owned()),
        ("PUBLIC_URL", PUBLIC_URL.to_owned()),
        ("SUPABASE_URL", supabase_url.to_owned()),
        ("SUPABASE_SERVICE_ROLE_KEY", key.service_key()),
        ("SPOOL_DIR", spool_dir.display().to_string()),
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", "0".to_owned()),
        ("OPS_PORT", "0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    Config::from_lookup(|k| env.get(k).cloned()).expect("a valid test configuration")
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    /// The operations port: `/metrics`, `/readyz`, `/healthz`.
    pub ops_addr: std::net::SocketAddr,
    pub ingestor: Ingestor,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

pub async fn spawn_app(stack: &Stack, key: KeyKind) -> TestApp {
    spawn_app_at(&stack.url(), key, &temp_dir("spool"), Settings::default(), &[]).await
}

pub async fn spawn_app_at(
    supabase_url: &str,
    key: KeyKind,
    spool_dir: &std::path::Path,
    settings: Settings,
    extra: &[(&str, &str)],
) -> TestApp {
    let config = config(supabase_url, key, spool_dir, extra);
    // TEST_LOG=1 shows the apps' logs (RUST_LOG picks the level), as zero2prod's tests do.
    if std::env::var_os("TEST_LOG").is_some() {
        twilio_ingest::telemetry::init_logging(twilio_ingest::config::LogFormat::Pretty);
    }
    let app = Application::build_with(&config, settings).await.expect("the app starts");
    let (addr, ops_addr) = (app.local_addr(), app.ops_addr());
    let ingestor = app.ingestor().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        ops_addr,
        ingestor,
        client: reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap(),
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
    pub fn url(&self) -> String {
        format!("http://{}{WEBHOOK_PATH}", self.addr)
    }

    /// Posts `params` signed with the test token over the public URL, as Twilio would.
    pub async fn post_signed(&self, params: &Params) -> reqwest::Response {
        let sig = sign(params);
        self.post_with_signature(params, Some(&sig)).await
    }

    pub async fn post_with_signature(&self, params: &Params, sig: Option<&str>) -> reqwest::Response {
        let mut request =
            self.client.post(self.url()).header("Content-Type", "application/x-www-form-urlencoded").body(form(params));
        if let Some(sig) = sig {
            request = request.header("X-Twilio-Signature", sig);
        }
        request.send().await.expect("the service answers")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("http://{}{path}", self.addr)).send().await.expect("the service answers")
    }

    /// A GET on the operations port.
    pub async fn ops_get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("http://{}{path}", self.ops_addr)).send().await.expect("the service answers")
    }

    /// Waits until the spool is empty (replay is a background task) or `limit` passes.
    pub async fn wait_for_empty_spool(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if self.ingestor.spool_depth() == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Stops the app as a signal would and waits for it to drain.
    pub async fn stop(self) {
        let TestApp { ingestor, stop, task, .. } = self;
        // The batcher drains once every handle on its queue is gone, this one included.
        drop(ingestor);
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        if let Some(task) = task {
            task.await.unwrap().unwrap();
        }
    }
}

/// The service binary, configured for the test token, `supabase_url` and `key`, on loopback `port`.
pub fn service_command(
    supabase_url: &str,
    key: KeyKind,
    spool_dir: &std::path::Path,
    port: u16,
) -> std::process::Command {
    devstack::service_command(
        std::path::Path::new(env!("CARGO_BIN_EXE_twilio-ingest")),
        supabase_url,
        key,
        spool_dir,
        port,
    )
}

pub fn sign(params: &Params) -> String {
    signature::sign(TOKEN, &format!("{PUBLIC_URL}{WEBHOOK_PATH}"), params)
}

pub fn form(params: &Params) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(params.pairs()).finish()
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A fresh E.164 number no other test uses.
pub fn unique_phone() -> String {
    let n = uuid::Uuid::new_v4().as_u128() % 8_000_000_000;
    format!("+1{}", 2_000_000_000 + n)
}

/// An SMS from `from` with a fresh MessageSid.
pub fn sms(from: &str, body: &str) -> Params {
    Params::from_pairs(devstack::sms_params(&unique("SM"), from, "+15005550001", body))
}

/// A message in Conversation `conversation` from `author`, with a fresh MessageSid.
pub fn group_message(conversation: &str, author: &str, body: &str) -> Params {
    Params::from_pairs(devstack::conversation_params(&unique("IM"), conversation, author, body, 0))
}

/// The service's own Supabase client for `stack`, with a service key of `key`'s kind: for tests
/// that call what the service calls (ingest functions, dead-letter replay) directly.
pub fn supabase_client(stack: &Stack, key: KeyKind) -> twilio_ingest::supabase::Supabase {
    let key = twilio_ingest::supabase::ServiceKey::parse(&key.service_key()).expect("a test key parses");
    twilio_ingest::supabase::Supabase::new(&stack.url(), &key)
}

/// The first column of each row a query returns, as text.
pub fn read_column(stack: &Stack, sql: &str) -> Vec<Option<String>> {
    stack.query(sql).expect("the query runs")
}

pub fn count(stack: &Stack, sql: &str) -> i64 {
    read_column(stack, sql)[0].as_deref().unwrap().parse().unwrap()
}

pub fn sql_list(sids: &[String]) -> String {
    sids.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(",")
}

/// Asserts that every MessageSid is in `jobs` or `dlq_jobs`, and in exactly one row of one of them.
pub fn assert_each_stored_once(stack: &Stack, sids: &[String]) {
    let list = sql_list(sids);
    let rows: Vec<(String, i64)> = read_rows(
        stack,
        &format!(
            "select s.sid, (select count(*) from jobs j where j.message_sid = s.sid)
                 + (select count(*) from dlq_jobs d where d.message_sid = s.sid)
             from unnest(array[{list}]::text[]) as s(sid)"
        ),
    );
    let wrong: Vec<(String, i64)> = rows.into_iter().filter(|(_, stored)| *stored != 1).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} messages not stored exactly once (MessageSid, times stored): {:?}",
        wrong.len(),
        sids.len(),
        &wrong[..wrong.len().min(10)]
    );
}

/// Runs a scenario against an app on each shared stack, with each kind of key.
#[macro_export]
macro_rules! on_every_stack {
    ($scenario:ident) => {
        mod $scenario {
            use devstack::{Grants, KeyKind};
            async fn run(grants: Grants, key: KeyKind) {
                let stack = $crate::helpers::shared_stack(grants);
                let app = $crate::helpers::spawn_app(stack, key).await;
                super::$scenario(stack, &app).await;
                app.stop().await;
            }
            macro_rules! variant {
                ($name:ident, $grants:expr, $key:expr) => {
                    #[tokio::test]
                    async fn $name() {
                        run($grants, $key).await
                    }
                };
            }
            variant!(legacy_key_default_grants, Grants::Default, KeyKind::LegacyJwt);
            variant!(legacy_key_no_default_grants, Grants::None, KeyKind::LegacyJwt);
            variant!(secret_key_default_grants, Grants::Default, KeyKind::Secret);
            variant!(secret_key_no_default_grants, Grants::None, KeyKind::Secret);
        }
    };
}

/// Nothing listens there: every call to it fails at once, as in an outage.
pub const DOWN: &str = "http://127.0.0.1:1";

/// An app whose Supabase is down, so that every message it acknowledges is in its spool.
pub async fn spawn_app_while_down(spool_dir: &std::path::Path, settings: Settings) -> TestApp {
    spawn_app_at(DOWN, KeyKind::Secret, spool_dir, settings, &[("INGEST_DEADLINE_MS", "600")]).await
}

/// Runs the service binary with `args` (an operator command) against `supabase_url`, and returns
/// whether it succeeded and all it printed.
pub fn run_binary(supabase_url: &str, spool_dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out =
        service_command(supabase_url, KeyKind::Secret, spool_dir, devstack::free_port()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// Asserts that `/readyz` answers 503 and says each of `expected`.
pub async fn assert_not_ready(app: &TestApp, expected: &[&str]) {
    let answer = app.ops_get("/readyz").await;
    assert_eq!(answer.status(), 503);
    let body = answer.text().await.unwrap();
    for words in expected {
        assert!(body.contains(words), "readiness does not say {words:?}:\n{body}");
    }
}

/// A message's MessageSid.
pub fn sid_of(params: &Params) -> String {
    params.get("MessageSid").expect("a message has a MessageSid").to_owned()
}

/// The MessageSids of `messages`.
pub fn sids_of(messages: &[Params]) -> Vec<String> {
    messages.iter().map(sid_of).collect()
}

/// How many jobs have this MessageSid (one, or none).
pub fn jobs_with_sid(stack: &Stack, sid: &str) -> i64 {
    count(stack, &format!("select count(*) from jobs where message_sid = '{sid}'"))
}

/// A row a test reads, typed: a tuple of columns, each parsed from PostgreSQL's text (NULL as "").
pub trait Row: Sized {
    fn from_columns(columns: Vec<Option<String>>) -> Self;
}

fn column<T: std::str::FromStr>(columns: &mut impl Iterator<Item = Option<String>>) -> T
where
    T::Err: std::fmt::Debug,
{
    columns.next().expect("the query has this column").unwrap_or_default().parse().expect("the column parses")
}

impl<A: std::str::FromStr, B: std::str::FromStr> Row for (A, B)
where
    A::Err: std::fmt::Debug,
    B::Err: std::fmt::Debug,
{
    fn from_columns(columns: Vec<Option<String>>) -> Self {
        let mut columns = columns.into_iter();
        (column(&mut columns), column(&mut columns))
    }
}

impl<A: std::str::FromStr, B: std::str::FromStr, C: std::str::FromStr> Row for (A, B, C)
where
    A::Err: std::fmt::Debug,
    B::Err: std::fmt::Debug,
    C::Err: std::fmt::Debug,
{
    fn from_columns(columns: Vec<Option<String>>) -> Self {
        let mut columns = columns.into_iter();
        (column(&mut columns), column(&mut columns), column(&mut columns))
    }
}

/// The rows a query returns, each as a typed tuple.
pub fn read_rows<T: Row>(stack: &Stack, sql: &str) -> Vec<T> {
    stack.query_rows(sql).expect("the query runs").into_iter().map(T::from_columns).collect()
}

/// The service as a separate process, to be killed for real.
pub struct Service {
    pub child: std::process::Child,
    pub port: u16,
}

impl Service {
    /// Logs (JSON) go to the file beside `spool_dir`, `<spool_dir>.log`.
    pub fn start(supabase_url: &str, spool_dir: &std::path::Path, deadline_ms: &str) -> Service {
        let port = devstack::free_port();
        let child = service_command(supabase_url, KeyKind::Secret, spool_dir, port)
            .env("INGEST_DEADLINE_MS", deadline_ms)
            .env("LOG_FORMAT", "json")
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new().create(true).append(true).open(spool_dir.with_extension("log")).unwrap(),
            )
            .spawn()
            .unwrap();
        wait_for_listener(port);
        Service { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/twilio", self.port)
    }

    pub fn signal(&self, signal: i32) {
        devstack::signal(self.child.id(), signal);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
