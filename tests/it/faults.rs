//! Nothing acknowledged is lost: faults injected into real processes while signed messages flow.
//! Every acknowledged MessageSid must end up in `jobs` or `dlq_jobs`, exactly once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devstack::{FaultMode, FaultProxy, Grants, KeyKind, Stack};
use futures_util::StreamExt as _;
use twilio_ingest::ingest::Settings;

use crate::helpers::*;

const DEADLINE_MS: &str = "800";

fn fast_replay() -> Settings {
    Settings { replay_interval: Duration::from_millis(200), ..Settings::default() }
}

/// What one webhook delivery came to: the MessageSid, the status (None if the connection failed,
/// which Twilio retries), and how long the answer took.
type Sent = (String, Option<u16>, Duration);

/// Sends `n` distinct signed messages to `url` at `concurrency`, counting answers in `done`.
async fn send_load(url: String, n: usize, concurrency: usize, done: Arc<AtomicUsize>) -> Vec<Sent> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (client, url, done) = (client.clone(), url.clone(), done.clone());
            async move {
                let params = if i % 5 == 4 {
                    group_message("CH00000000000000000000000000000009", &unique_phone(), "group load")
                } else {
                    sms(&unique_phone(), "load")
                };
                let sid = sid_of(&params);
                let started = Instant::now();
                let status = client
                    .post(&url)
                    .header("X-Twilio-Signature", sign(&params))
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(form(&params))
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status().as_u16());
                done.fetch_add(1, Ordering::SeqCst);
                (sid, status, started.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

fn acknowledged(sent: &[Sent]) -> Vec<String> {
    sent.iter().filter(|(_, status, _)| *status == Some(200)).map(|(sid, _, _)| sid.clone()).collect()
}

async fn wait_until(done: &AtomicUsize, n: usize) {
    while done.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `fault` after a third of the load has been answered and `recover` after two thirds.
async fn load_through_fault(
    app: &TestApp,
    n: usize,
    fault: impl FnOnce() + Send + 'static,
    recover: impl FnOnce() + Send + 'static,
) -> Vec<Sent> {
    let done = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(send_load(app.url(), n, 16, done.clone()));
    wait_until(&done, n / 3).await;
    tokio::task::spawn_blocking(fault).await.unwrap();
    wait_until(&done, 2 * n / 3).await;
    tokio::task::spawn_blocking(recover).await.unwrap();
    load.await.unwrap()
}

/// Sends 300 messages while `fault` strikes and `recover` mends it, and checks every one is
/// answered 200 and stored exactly once after the spool drains.
async fn nothing_is_lost_through(grants: Grants, key: KeyKind, fault: fn(&Stack), recover: fn(&Stack)) {
    let stack = Arc::new(Stack::start(grants).unwrap());
    let app =
        spawn_app_at(&stack.url(), key, &temp_dir("spool"), fast_replay(), &[("INGEST_DEADLINE_MS", DEADLINE_MS)])
            .await;
    let (a, b) = (stack.clone(), stack.clone());
    let sent = load_through_fault(&app, 300, move || fault(&a), move || recover(&b)).await;
    let acked = acknowledged(&sent);
    assert_eq!(acked.len(), 300, "every signed request is answered 200");
    assert!(app.wait_for_empty_spool(Duration::from_secs(30)).await, "the spool drains after recovery");
    assert_each_stored_once(&stack, &acked);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgrest_killed_mid_run_and_restarted_loses_nothing() {
    nothing_is_lost_through(Grants::None, KeyKind::Secret, Stack::kill_postgrest, |s| s.start_postgrest().unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run_loses_nothing() {
    nothing_is_lost_through(Grants::Default, KeyKind::LegacyJwt, Stack::stop_postgres, |s| s.start_postgres().unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_gateway_still_gets_every_answer_within_the_deadline() {
    let stack = Stack::start(Grants::None).unwrap();
    let proxy = FaultProxy::start(stack.gateway_port);
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let app =
        spawn_app_at(&url, KeyKind::Secret, &temp_dir("spool"), fast_replay(), &[("INGEST_DEADLINE_MS", DEADLINE_MS)])
            .await;
    proxy.set(FaultMode::Stall);
    let sent = send_load(app.url(), 200, 16, Arc::new(AtomicUsize::new(0))).await;
    let slowest = sent.iter().map(|(_, _, took)| *took).max().unwrap();
    assert!(slowest < Duration::from_millis(800 + 400), "slowest answer took {slowest:?}");
    let acked = acknowledged(&sent);
    assert_eq!(acked.len(), 200);
    assert!(app.ingestor.spool_depth() > 0, "stalled messages wait in the spool");
    proxy.set(FaultMode::Pass);
    assert!(app.wait_for_empty_spool(Duration::from_secs(30)).await);
    assert_each_stored_once(&stack, &acked);
    app.stop().await;
}

async fn wait_for_jobs(stack: &Stack, sids: &[String], limit: Duration) {
    let until = Instant::now() + limit;
    let list = sql_list(sids);
    loop {
        let stored = count(stack, &format!("select count(*) from jobs where message_sid in ({list})"));
        if stored as usize >= sids.len() || Instant::now() > until {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A service that acknowledged `n` messages while its gateway stalled (so each waits in the spool),
/// then was killed with SIGKILL.
struct KilledWithSpool {
    stack: Stack,
    proxy: FaultProxy,
    supabase_url: String,
    spool: std::path::PathBuf,
    acked: Vec<String>,
}

async fn spool_then_sigkill(grants: Grants, n: usize) -> KilledWithSpool {
    let stack = Stack::start(grants).unwrap();
    let proxy = FaultProxy::start(stack.gateway_port);
    let supabase_url = format!("http://127.0.0.1:{}", proxy.port);
    let spool = temp_dir("spool");
    proxy.set(FaultMode::Stall);
    let mut service = Service::start(&supabase_url, &spool, DEADLINE_MS);
    let acked = acknowledged(&send_load(service.url(), n, 16, Arc::new(AtomicUsize::new(0))).await);
    assert_eq!(acked.len(), n);
    service.signal(libc::SIGKILL);
    service.child.wait().unwrap();
    assert_eq!(count(&stack, &format!("select count(*) from jobs where message_sid in ({})", sql_list(&acked))), 0);
    KilledWithSpool { stack, proxy, supabase_url, spool, acked }
}

impl KilledWithSpool {
    /// Lets Supabase answer again, restarts the service on the same spool, and checks that every
    /// acknowledged message is stored exactly once.
    async fn restart_and_check(&self) {
        self.proxy.set(FaultMode::Pass);
        let _restarted = Service::start(&self.supabase_url, &self.spool, DEADLINE_MS);
        wait_for_jobs(&self.stack, &self.acked, Duration::from_secs(30)).await;
        assert_each_stored_once(&self.stack, &self.acked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_right_after_acknowledging_replays_its_spool_on_restart() {
    spool_then_sigkill(Grants::None, 100).await.restart_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_spool_record_is_skipped_and_the_rest_replayed() {
    let killed = spool_then_sigkill(Grants::Default, 40).await;

    // A crash in the middle of the next append: a header and part of a record.
    let segment = std::fs::read_dir(&killed.spool).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let mut torn = 500u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xAB; 4]);
    torn.extend_from_slice(br#"{"payload":{"MessageSid":"SMtorn","From":"+1"#);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&torn);
    std::fs::write(&segment, bytes).unwrap();

    killed.restart_and_check().await;
    assert_eq!(count(&killed.stack, "select count(*) from jobs where message_sid = 'SMtorn'"), 0);
    assert_eq!(count(&killed.stack, "select count(*) from dlq_jobs where message_sid = 'SMtorn'"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_loses_nothing_and_exits_in_time() {
    let stack = Stack::start(Grants::None).unwrap();
    let mut service = Service::start(&stack.url(), &temp_dir("spool"), DEADLINE_MS);
    let done = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(send_load(service.url(), 300, 16, done.clone()));
    wait_until(&done, 100).await;
    let signalled = Instant::now();
    service.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || {
        let status = service.child.wait().unwrap();
        (status, service)
    })
    .await
    .unwrap()
    .0;
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    // The bound the README and fly.toml promise, drain_limit (one deadline and a second), plus
    // half a second for the process to start and stop.
    let bound = twilio_ingest::drain_limit(Duration::from_millis(800)) + Duration::from_millis(500);
    assert!(took < bound, "exit took {took:?}, over {bound:?}");
    let sent = load.await.unwrap();
    let acked = acknowledged(&sent);
    assert!(acked.len() >= 100, "{} acknowledged", acked.len());
    assert!(sent.iter().all(|(_, status, _)| matches!(status, None | Some(200))), "no error answers");
    assert_each_stored_once(&stack, &acked);
}

#[tokio::test]
async fn dlq_replay_moves_fixed_dead_letters_into_jobs_once_even_run_twice() {
    let stack = Stack::start(Grants::None).unwrap();
    // A rule these messages break (a grant revoked would refuse every message alike, and those
    // are spooled, not dead-lettered).
    stack
        .execute(
            "alter table public.jobs add constraint no_dead_letters check (payload->>'Body' not like 'dead letter%')",
        )
        .unwrap();
    let app = spawn_app(&stack, KeyKind::LegacyJwt).await;
    let mut sids = Vec::new();
    for i in 0..5 {
        let params = sms(&unique_phone(), &format!("dead letter {i}"));
        sids.push(sid_of(&params));
        assert_eq!(app.post_signed(&params).await.status(), 200);
    }
    assert_eq!(count(&stack, "select count(*) from dlq_jobs where error_kind = 'rejected' and replayed_at is null"), 5);

    let supabase = supabase_client(&stack, KeyKind::LegacyJwt);
    let still_broken = twilio_ingest::dlq::replay(&supabase, 100).await.unwrap();
    assert_eq!(still_broken.replayed.len(), 0);
    assert_eq!(still_broken.still_failing.len(), 5);
    assert_eq!(count(&stack, "select count(*) from dlq_jobs where replay_error like '%23514%'"), 5);

    stack.execute("alter table public.jobs drop constraint no_dead_letters").unwrap();
    let first = twilio_ingest::dlq::replay(&supabase, 100).await.unwrap();
    let second = twilio_ingest::dlq::replay(&supabase, 100).await.unwrap();
    assert_eq!((first.replayed.len(), first.still_failing.len()), (5, 0));
    assert_eq!((second.replayed.len(), second.still_failing.len()), (0, 0));
    let list = sql_list(&sids);
    assert_eq!(count(&stack, &format!("select count(*) from jobs where message_sid in ({list})")), 5);
    assert_eq!(
        count(&stack, &format!("select count(distinct message_sid) from jobs where message_sid in ({list})")),
        5
    );
    assert_eq!(count(&stack, "select count(*) from dlq_jobs where replayed_at is not null"), 5);
    app.stop().await;
}
