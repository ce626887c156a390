//! The jobs as a work queue, used the way a worker written with supabase-js or supabase-py uses it:
//! RPC calls through the gateway with the service-role key. Each test has a stack of its own, since
//! a claim takes whatever job is oldest.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devstack::{jwt, Grants, KeyKind, Stack, PUBLISHABLE_KEY};
use rand::seq::SliceRandom as _;
use serde_json::{json, Value};
use twilio_ingest::ingest::{Arrival, ReceivedAt};
use twilio_ingest::supabase::{EncodedJob, NewJob};

use crate::helpers::*;

/// A worker as a supabase-js or supabase-py program is one: `rpc(name, args)` over HTTP.
pub(crate) struct Worker {
    client: reqwest::Client,
    url: String,
    key: KeyKind,
    name: String,
}

impl Worker {
    pub(crate) fn new(stack: &Stack, key: KeyKind, name: &str) -> Worker {
        Worker { client: reqwest::Client::new(), url: stack.url(), key, name: name.to_owned() }
    }

    pub(crate) async fn rpc(&self, function: &str, args: Value) -> (u16, Value) {
        let key = self.key.service_key();
        let mut request =
            self.client.post(format!("{}/rest/v1/rpc/{function}", self.url)).header("apikey", &key).json(&args);
        if self.key == KeyKind::LegacyJwt {
            request = request.bearer_auth(&key);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub(crate) async fn call(&self, function: &str, args: Value) -> Value {
        let (status, body) = self.rpc(function, args).await;
        assert_eq!(status, 200, "{function}: {body}");
        body
    }

    pub(crate) async fn claim(&self, max_jobs: u32, lease_seconds: u32) -> Vec<Value> {
        let claimed = self
            .call("claim_jobs", json!({"worker": self.name, "max_jobs": max_jobs, "lease_seconds": lease_seconds}))
            .await;
        claimed.as_array().unwrap().clone()
    }

    pub(crate) async fn complete(&self, ids: &[&str]) -> Vec<String> {
        let jobs: Vec<Value> = ids.iter().map(|id| json!({"id": id, "result": {"by": self.name}})).collect();
        let done = self.call("complete_jobs", json!({"worker": self.name, "jobs": jobs})).await;
        done.as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect()
    }

    pub(crate) async fn fail(&self, id: &str, error: &str, retry_in_seconds: Option<u32>, permanent: bool) -> Value {
        let args = json!({"id": id, "worker": self.name, "error": error, "retry_in_seconds": retry_in_seconds, "permanent": permanent});
        self.call("fail_job", args).await
    }
}

pub(crate) fn id(job: &Value) -> &str {
    job["id"].as_str().unwrap()
}

/// The job's position in its channel, as the test wrote it in the payload.
fn seq(job: &Value) -> i64 {
    job["payload"]["Seq"].as_str().unwrap().parse().unwrap()
}

/// Enqueues jobs through `ingest_batch`, as the service does: `arrivals` in the order they arrived
/// (channel, position in channel), written in batches of 200 in a shuffled order, so that the
/// order in the table is not the arrival order.
pub(crate) async fn enqueue(stack: &Stack, arrivals: &[(String, i64)]) -> Vec<String> {
    let mut jobs: Vec<EncodedJob> = arrivals
        .iter()
        .map(|(channel, seq)| {
            let sid = unique("SM");
            let payload = json!({"MessageSid": sid, "From": channel, "Seq": seq.to_string()});
            NewJob {
                message_sid: &sid,
                user_phone: Some(channel),
                bsuid: None,
                parent_bsuid: None,
                chat: None,
                first_name: None,
                source_type: "dm",
                source_channel_id: channel,
                channel_prefix: Some(""),
                content_type: "text",
                payload: &payload,
                received_at_us: ReceivedAt::now().as_micros(),
            }
            .encode()
        })
        .collect();
    let sids = jobs.iter().map(|j| j.message_sid.clone()).collect();
    jobs.shuffle(&mut rand::thread_rng());
    let supabase = supabase_client(stack, KeyKind::Secret);
    for batch in jobs.chunks(200) {
        let batch: Vec<&EncodedJob> = batch.iter().collect();
        supabase.ingest_inbound(&batch, Duration::from_secs(30)).await.unwrap();
    }
    sids
}

/// `rounds` messages from each of `channels` senders, interleaved: every sender's first, then every
/// sender's second, and so on, in a shuffled order of senders each round.
pub(crate) fn interleaved(channels: usize, rounds: i64) -> Vec<(String, i64)> {
    let senders: Vec<String> = (0..channels).map(|_| unique_phone()).collect();
    let mut arrivals = Vec::new();
    for round in 0..rounds {
        let mut order = senders.clone();
        order.shuffle(&mut rand::thread_rng());
        arrivals.extend(order.into_iter().map(|s| (s, round)));
    }
    arrivals
}

/// What the workers saw, checked as they go: a job handed out while its channel's previous job was
/// not done yet, or out of order, is a violation.
#[derive(Default)]
struct Ledger {
    last_done: HashMap<String, i64>,
    completed: Vec<String>,
    violations: Vec<String>,
}

/// `workers` workers claim in batches of `max_jobs` and complete until `total` jobs are complete.
async fn drain(stack: &Stack, key: KeyKind, workers: usize, max_jobs: u32, total: usize) -> Ledger {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let worker = Worker::new(stack, key, &format!("worker-{w}-{}", unique("")));
            let (ledger, done) = (ledger.clone(), done.clone());
            tokio::spawn(async move {
                while done.load(Ordering::SeqCst) < total {
                    let jobs = worker.claim(max_jobs, 60).await;
                    if jobs.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    {
                        // "Processing": each job must be the next of its channel. Recorded before
                        // complete_jobs commits, so the next job of the channel, which can only be
                        // claimed after that commit, always sees it.
                        let mut ledger = ledger.lock().unwrap();
                        for job in &jobs {
                            let channel = job["source_channel_id"].as_str().unwrap().to_owned();
                            let last = ledger.last_done.get(&channel).copied().unwrap_or(-1);
                            if seq(job) != last + 1 {
                                ledger.violations.push(format!("{channel}: got {} after {last}", seq(job)));
                            }
                            ledger.last_done.insert(channel, seq(job));
                        }
                    }
                    let ids: Vec<&str> = jobs.iter().map(id).collect();
                    let completed = worker.complete(&ids).await;
                    done.fetch_add(completed.len(), Ordering::SeqCst);
                    ledger.lock().unwrap().completed.extend(completed);
                }
            })
        })
        .collect();
    let all = futures_util::future::join_all(tasks);
    tokio::time::timeout(Duration::from_secs(120), all).await.expect("the queue drains within two minutes");
    Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap()
}

fn assert_drained_in_order(stack: &Stack, ledger: &Ledger, total: usize) {
    assert!(ledger.violations.is_empty(), "order broken: {:?}", &ledger.violations[..ledger.violations.len().min(10)]);
    assert_eq!(ledger.completed.len(), total, "completions reported");
    let distinct: HashSet<&String> = ledger.completed.iter().collect();
    assert_eq!(distinct.len(), total, "a job was completed twice");
    assert_eq!(count(stack, "select count(*) from jobs where status = 'complete' and attempts = 1"), total as i64);
    assert_eq!(count(stack, "select count(*) from jobs where completed_at < run_at"), 0, "started before its run_at");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_workers_drain_thousands_of_jobs_each_once_and_each_channel_in_arrival_order() {
    let stack = Stack::start(Grants::None).unwrap();
    let arrivals = interleaved(300, 10);
    enqueue(&stack, &arrivals).await;
    let ledger = drain(&stack, KeyKind::Secret, 8, 5, arrivals.len()).await;
    assert_drained_in_order(&stack, &ledger, arrivals.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_works_with_either_key_in_either_grant_mode() {
    for grants in [Grants::Default, Grants::None] {
        let stack = Stack::start(grants).unwrap();
        for key in [KeyKind::LegacyJwt, KeyKind::Secret] {
            let arrivals = interleaved(20, 5);
            enqueue(&stack, &arrivals).await;
            let ledger = drain(&stack, key, 4, 3, arrivals.len()).await;
            assert!(ledger.violations.is_empty(), "{grants:?} {key:?}: {:?}", ledger.violations);
            assert_eq!(ledger.completed.len(), arrivals.len(), "{grants:?} {key:?}");
        }
        assert_eq!(count(&stack, "select count(*) from jobs where status <> 'complete'"), 0);
    }
}

#[tokio::test]
async fn a_channels_next_job_waits_until_the_one_before_is_done() {
    let stack = Stack::start(Grants::None).unwrap();
    let sender = unique_phone();
    enqueue(&stack, &[(sender.clone(), 0), (sender.clone(), 1)]).await;
    let (a, b) = (Worker::new(&stack, KeyKind::Secret, "a"), Worker::new(&stack, KeyKind::Secret, "b"));
    let first = a.claim(10, 60).await;
    assert_eq!(first.len(), 1, "two jobs of one channel were handed out at once");
    assert_eq!(seq(&first[0]), 0);
    assert!(b.claim(10, 60).await.is_empty(), "the second job was handed out while the first was processing");
    // A job waiting for its retry still holds its channel.
    assert_eq!(a.fail(id(&first[0]), "try later", Some(1), false).await, "pending");
    assert!(b.claim(10, 60).await.is_empty(), "the second job overtook a retry");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = b.claim(10, 60).await;
    assert_eq!((again.len(), seq(&again[0]), again[0]["attempts"].as_i64()), (1, 0, Some(2)));
    // A job failed for good lets its channel go on.
    assert_eq!(b.fail(id(&again[0]), "bad input", None, true).await, "failed");
    let next = a.claim(10, 60).await;
    assert_eq!((next.len(), seq(&next[0])), (1, 1));
}

/// A channel with a long backlog at the front of the queue: while its next job is processing, a
/// claim looks past it to the channels behind, oldest first, whatever the backlog. While its next
/// job can go, a claim may answer with that job alone, the oldest that can go; it is never empty
/// while a job can go.
#[tokio::test]
async fn a_busy_channel_at_the_front_of_the_queue_does_not_hide_the_others() {
    let stack = Stack::start(Grants::None).unwrap();
    let busy = unique_phone();
    let mut arrivals: Vec<(String, i64)> = (0..300).map(|i| (busy.clone(), i)).collect();
    let others: Vec<String> = (0..20).map(|_| unique_phone()).collect();
    arrivals.extend(others.iter().map(|sender| (sender.clone(), 0)));
    enqueue(&stack, &arrivals).await;
    // Due in the order they arrived (enqueue writes them in shuffled batches, each due when written).
    stack.execute("update jobs set run_at = received_at").unwrap();
    let (a, b) = (Worker::new(&stack, KeyKind::Secret, "a"), Worker::new(&stack, KeyKind::Secret, "b"));

    let head = a.claim(10, 60).await;
    assert_eq!(head.len(), 1);
    assert_eq!((head[0]["source_channel_id"].as_str(), seq(&head[0])), (Some(busy.as_str()), 0));
    let behind = b.claim(10, 60).await;
    let senders: Vec<&str> = behind.iter().map(|j| j["source_channel_id"].as_str().unwrap()).collect();
    assert_eq!(senders, others[..10].iter().map(String::as_str).collect::<Vec<_>>(), "not the oldest ten behind");

    a.complete(&[id(&head[0])]).await;
    let rest = b.claim(100, 60).await;
    assert!(!rest.is_empty(), "a claim came back empty while jobs could go");
    assert_eq!((rest[0]["source_channel_id"].as_str(), seq(&rest[0])), (Some(busy.as_str()), 1));
}

#[tokio::test]
async fn a_message_that_waited_in_the_spool_keeps_its_place_in_its_channel() {
    let stack = Stack::start(Grants::None).unwrap();
    let sender = unique_phone();
    let spool = temp_dir("spool");
    // Supabase is unreachable: the first message is acknowledged from the spool.
    let down = spawn_app_while_down(&spool, Default::default()).await;
    let first = sms(&sender, "first");
    assert_eq!(down.post_signed(&first).await.status(), 200);
    assert_eq!(down.ingestor.spool_depth(), 1);
    down.stop().await;
    // The second arrives after it, and is stored before the first is replayed.
    let up = spawn_app(&stack, KeyKind::Secret).await;
    let second = sms(&sender, "second");
    assert_eq!(up.post_signed(&second).await.status(), 200);
    up.stop().await;
    let replayer = spawn_app_at(&stack.url(), KeyKind::Secret, &spool, Default::default(), &[]).await;
    assert!(replayer.wait_for_empty_spool(Duration::from_secs(20)).await);
    replayer.stop().await;

    let worker = Worker::new(&stack, KeyKind::Secret, "w");
    let claimed = worker.claim(10, 60).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0]["message_sid"].as_str(), first.get("MessageSid"), "the replayed message lost its place");
    worker.complete(&[id(&claimed[0])]).await;
    let claimed = worker.claim(10, 60).await;
    assert_eq!(claimed[0]["message_sid"].as_str(), second.get("MessageSid"));
}

#[tokio::test]
async fn a_worker_that_dies_mid_job_loses_nothing() {
    let stack = Stack::start(Grants::None).unwrap();
    enqueue(&stack, &[(unique_phone(), 0)]).await;
    let (dead, alive) = (Worker::new(&stack, KeyKind::Secret, "dead"), Worker::new(&stack, KeyKind::Secret, "alive"));
    let claimed = dead.claim(1, 1).await;
    assert_eq!(claimed.len(), 1);
    assert!(alive.claim(1, 60).await.is_empty(), "a leased job was handed out twice");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rescued = alive.claim(1, 60).await;
    assert_eq!(rescued.len(), 1, "the expired lease was not rescued");
    assert_eq!((id(&rescued[0]), rescued[0]["attempts"].as_i64()), (id(&claimed[0]), Some(2)));
    // The dead worker comes back too late: its completion and its heartbeat are refused.
    assert!(dead.complete(&[id(&claimed[0])]).await.is_empty());
    assert_eq!(
        dead.call("extend_job_lease", json!({"id": id(&claimed[0]), "worker": "dead", "lease_seconds": 60})).await,
        json!(false)
    );
    assert_eq!(
        alive.call("extend_job_lease", json!({"id": id(&claimed[0]), "worker": "alive", "lease_seconds": 60})).await,
        json!(true)
    );
    assert_eq!(alive.complete(&[id(&claimed[0])]).await, vec![id(&claimed[0]).to_owned()]);
}

/// A stack of its own with one job, which may be attempted `max_attempts` times.
async fn one_job(max_attempts: u32) -> Stack {
    let stack = Stack::start(Grants::None).unwrap();
    enqueue(&stack, &[(unique_phone(), 0)]).await;
    stack.execute(&format!("update jobs set max_attempts = {max_attempts}")).unwrap();
    stack
}

#[tokio::test]
async fn a_lease_that_expires_on_the_last_attempt_fails_the_job_and_says_so() {
    let stack = one_job(2).await;
    let worker = Worker::new(&stack, KeyKind::Secret, "crashy");
    for _ in 0..2 {
        assert_eq!(worker.claim(1, 1).await.len(), 1);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(worker.claim(1, 1).await.is_empty());
    let rows: Vec<(String, i64, String)> = read_rows(&stack, "select status, attempts, last_error from jobs");
    assert_eq!(rows, [("failed".into(), 2, "lease expired on attempt 2 of 2 (worker crashy)".into())]);
}

#[tokio::test]
async fn retries_back_off_and_exhausted_attempts_end_in_failed() {
    let stack = one_job(3).await;
    let worker = Worker::new(&stack, KeyKind::Secret, "w");
    let job = worker.claim(1, 60).await.remove(0);
    // The default backoff after the first attempt: 1 s, give or take 10%.
    assert_eq!(worker.fail(id(&job), "flaky", None, false).await, "pending");
    let wait: f64 = read_column(&stack, "select extract(epoch from run_at - updated_at) from jobs")[0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.85..=1.15).contains(&wait), "backoff of {wait} s after attempt 1");
    assert!(worker.claim(1, 60).await.is_empty(), "claimed before its run_at");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let job = worker.claim(1, 60).await.remove(0);
    assert_eq!(worker.fail(id(&job), "flaky", Some(0), false).await, "pending");
    let job = worker.claim(1, 60).await.remove(0);
    assert_eq!(job["attempts"].as_i64(), Some(3));
    assert_eq!(worker.fail(id(&job), "still flaky", Some(0), false).await, "failed");
    let rows: Vec<(String, String)> = read_rows(&stack, "select status, last_error from jobs");
    assert_eq!(rows, [("failed".into(), "still flaky".into())]);

    // Requeued by an operator, with its attempts reset.
    let requeued = worker.call("retry_failed_jobs", json!({"ids": [id(&job)]})).await;
    assert_eq!(requeued, json!(1));
    let job = worker.claim(1, 60).await.remove(0);
    assert_eq!(job["attempts"].as_i64(), Some(1));
}

#[tokio::test]
async fn terminal_states_never_change_whoever_writes() {
    let stack = Stack::start(Grants::None).unwrap();
    let sender = unique_phone();
    enqueue(&stack, &[(sender.clone(), 0), (sender.clone(), 1)]).await;
    let worker = Worker::new(&stack, KeyKind::Secret, "w");
    let job = worker.claim(1, 60).await.remove(0);
    worker.complete(&[id(&job)]).await;
    // A buggy worker PATCHing the table directly, as supabase-js `.update()` would.
    let client = reqwest::Client::new();
    let key = KeyKind::Secret.service_key();
    let patch = |filter: String, body: Value| {
        client.patch(format!("{}/rest/v1/jobs?{filter}", stack.url())).header("apikey", &key).json(&body).send()
    };
    let back = patch(format!("id=eq.{}", id(&job)), json!({"status": "pending"})).await.unwrap();
    assert_eq!(back.status(), 400, "complete -> pending was allowed");
    assert!(back.text().await.unwrap().contains("final"));
    let skip =
        patch(format!("status=eq.pending&source_channel_id=eq.{}", urlencode(&sender)), json!({"status": "complete"}))
            .await
            .unwrap();
    assert_eq!(skip.status(), 400, "pending -> complete without a claim was allowed");
    assert_eq!(count(&stack, "select count(*) from jobs where status = 'complete'"), 1);
    // Completing twice, or completing a job never claimed, does nothing.
    assert!(worker.complete(&[id(&job)]).await.is_empty());
}

/// A job holds a lease exactly while it is processing, whoever writes: a worker that PATCHes a job
/// complete ends its lease with it, and nothing can make a job processing without one.
#[tokio::test]
async fn a_lease_is_held_exactly_while_a_job_is_processing() {
    let (stack, worker) = three_senders(1).await;
    let job = worker.claim(1, 60).await.remove(0);
    let client = reqwest::Client::new();
    let key = KeyKind::Secret.service_key();
    let patch = |filter: String, body: Value| {
        client.patch(format!("{}/rest/v1/jobs?{filter}", stack.url())).header("apikey", &key).json(&body).send()
    };
    let done = patch(format!("id=eq.{}", id(&job)), json!({"status": "complete"})).await.unwrap();
    assert_eq!(done.status(), 204);
    let rows: Vec<(String, String)> =
        read_rows(&stack, &format!("select status, coalesce(locked_by, '') from jobs where id = '{}'", id(&job)));
    assert_eq!(rows, [("complete".into(), String::new())]);

    let leaseless = patch("status=eq.pending".into(), json!({"status": "processing"})).await.unwrap();
    assert_eq!(leaseless.status(), 400, "a job became processing without a lease");
    assert!(leaseless.text().await.unwrap().contains("jobs_lease_held"));
    assert_eq!(count(&stack, "select count(*) from jobs where status = 'processing'"), 0);
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A stack of its own with `rounds` messages from each of three senders queued, and a worker.
async fn three_senders(rounds: i64) -> (Stack, Worker) {
    let stack = Stack::start(Grants::None).unwrap();
    enqueue(&stack, &interleaved(3, rounds)).await;
    let worker = Worker::new(&stack, KeyKind::Secret, "w");
    (stack, worker)
}

#[tokio::test]
async fn stats_show_the_queue_by_source_type_and_status() {
    let (_stack, worker) = three_senders(2).await;
    let claimed = worker.claim(2, 60).await;
    worker.complete(&[id(&claimed[0])]).await;
    let stats = worker.call("job_queue_stats", json!({})).await;
    let rows: Vec<(String, String, i64)> = stats
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["source_type"].as_str().unwrap().into(),
                r["status"].as_str().unwrap().into(),
                r["jobs"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("dm".into(), "complete".into(), 1),
            ("dm".into(), "pending".into(), 4),
            ("dm".into(), "processing".into(), 1)
        ]
    );
}

#[tokio::test]
async fn an_ingest_batch_wakes_a_listening_worker() {
    let stack = Stack::start(Grants::None).unwrap();
    let (client, mut connection) = tokio_postgres::connect(&stack.db_url(), tokio_postgres::NoTls).await.unwrap();
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    client.batch_execute("listen jobs").await.unwrap();
    let app = spawn_app(&stack, KeyKind::Secret).await;
    let started = Instant::now();
    assert_eq!(app.post_signed(&sms(&unique_phone(), "wake up")).await.status(), 200);
    let (channel, payload) = tokio::time::timeout(Duration::from_secs(5), notifications.recv())
        .await
        .expect("a notification within 5 s")
        .unwrap();
    assert_eq!((channel.as_str(), payload.as_str()), ("jobs", r#"{"inserted" : 1}"#));
    assert!(started.elapsed() < Duration::from_secs(2));
    // A Twilio retry inserts nothing, and wakes no one.
    app.stop().await;
}

/// anon and authenticated get nothing from the queue, in either grant mode: not 404 (a function
/// that is missing would pass), but a refusal.
#[test]
fn anon_and_authenticated_may_call_no_queue_function() {
    for grants in [Grants::Default, Grants::None] {
        let stack = shared_stack(grants);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let client = reqwest::Client::new();
            let anon = jwt("anon");
            let authenticated = jwt("authenticated");
            let callers = [
                (anon.as_str(), Some(anon.as_str())),
                (PUBLISHABLE_KEY, None),
                (anon.as_str(), Some(authenticated.as_str())),
            ];
            for (apikey, bearer) in callers {
                for (function, args) in [
                    ("claim_jobs", json!({"worker": "intruder", "max_jobs": 10})),
                    ("complete_jobs", json!({"worker": "intruder", "jobs": []})),
                    ("fail_job", json!({"id": uuid::Uuid::new_v4().to_string(), "worker": "intruder", "error": "x"})),
                    (
                        "extend_job_lease",
                        json!({"id": uuid::Uuid::new_v4().to_string(), "worker": "intruder", "lease_seconds": 60}),
                    ),
                    ("job_queue_stats", json!({})),
                    ("retry_failed_jobs", json!({})),
                    ("ingest_function_report", json!({})),
                ] {
                    let mut request = client
                        .post(format!("{}/rest/v1/rpc/{function}", stack.url()))
                        .header("apikey", apikey)
                        .json(&args);
                    if let Some(bearer) = bearer {
                        request = request.bearer_auth(bearer);
                    }
                    let status = request.send().await.unwrap().status().as_u16();
                    assert!(matches!(status, 401 | 403), "{grants:?} {function} answered {status}");
                }
            }
        });
    }
}

/// The arrival time is the edge's, not the database's: jobs of one batch share `created_at` but
/// keep the order their webhooks came in.
#[tokio::test]
async fn jobs_of_one_batch_keep_their_arrival_order() {
    let stack = Stack::start(Grants::None).unwrap();
    let app = spawn_app(&stack, KeyKind::Secret).await;
    let sender = unique_phone();
    let messages: Vec<_> = (0..30).map(|i| sms(&sender, &format!("msg {i}"))).collect();
    let sids = sids_of(&messages);
    // Arrived in this order, all at once: the batcher takes them in as few batches as it can.
    let arrivals: Vec<Arrival> = messages.iter().map(|_| Arrival::now()).collect();
    let answers = messages.iter().zip(arrivals).map(|(m, arrival)| app.ingestor.ingest(m, arrival));
    for answer in futures_util::future::join_all(answers).await {
        answer.unwrap();
    }
    app.stop().await;
    let stored = read_column(&stack, "select message_sid from jobs order by received_at, id");
    let stored: Vec<String> = stored.into_iter().flatten().collect();
    assert_eq!(stored, sids);
    assert!(count(&stack, "select count(distinct received_at) from jobs") == 30);
}

/// Workers poll: a poll that finds nothing must cost next to nothing, however long the queue of
/// jobs waiting for a retry. Counted in the database (this transaction's table statistics).
#[test]
fn a_poll_with_nothing_due_reads_no_jobs() {
    let stack = Stack::start(Grants::None).unwrap();
    let sender = unique_phone();
    stack
        .execute(&format!(
            "insert into users (phone_number) values ('{sender}');
             insert into jobs (user_id, user_phone, source_channel_id, source_type, payload, message_sid, run_at)
             select '{sender}', '{sender}', 'ch' || (i % 500), 'dm', '{{}}', 'SM' || md5(i::text), now() + interval '1 hour'
             from generate_series(1, 50000) as i;
             analyze jobs;"
        ))
        .unwrap();
    let stats = read_column(
        &stack,
        "begin;
         select count(*) from claim_jobs('poller', 10);
         select seq_scan || ' ' || coalesce(idx_tup_fetch, 0) from pg_stat_xact_user_tables where relname = 'jobs';",
    );
    assert_eq!(stats[0].as_deref(), Some("0"), "a job was claimed");
    let (seq_scans, rows_read) = stats[1].as_deref().unwrap().split_once(' ').unwrap();
    assert_eq!(seq_scans, "0", "an empty poll scanned the table");
    assert!(rows_read.parse::<u64>().unwrap() < 100, "an empty poll read {rows_read} of 50,000 rows");
}

/// What one transaction of `sql` read of `jobs`, run (and committed) as service_role as PostgREST
/// runs a worker's call.
struct Reads {
    /// Index entries read, in all of jobs' indexes.
    entries: u64,
    seq_scans: u64,
    /// Entries read per index, for the failure message.
    by_index: String,
    /// The first column of the last row `sql` answered.
    answer: String,
}

fn reads_of_jobs(stack: &Stack, sql: &str) -> Reads {
    let rows = stack
        .query_rows(&format!(
            "begin;
             set local role service_role;
             {sql};
             select (select seq_scan from pg_stat_xact_user_tables where relname = 'jobs'),
                    (select string_agg(i.indexrelid::regclass || ' ' || pg_stat_get_xact_tuples_returned(i.indexrelid), ', ')
                     from pg_index as i where i.indrelid = 'public.jobs'::regclass);
             commit;"
        ))
        .expect("the transaction runs");
    let [.., answer, stats] = rows.as_slice() else { panic!("no answer from {sql}") };
    let by_index = stats[1].clone().unwrap();
    let entries = by_index.split(", ").map(|index| index.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap()).sum();
    Reads {
        entries,
        seq_scans: stats[0].as_deref().unwrap().parse().unwrap(),
        by_index,
        answer: answer[0].clone().unwrap_or_default(),
    }
}

/// A stack whose statistics describe a drained queue, as autovacuum leaves them: 20,000 jobs of one
/// user, all complete, analyzed, the partial indexes empty. Returns the stack and the user.
fn stack_with_a_drained_queue() -> (Stack, String) {
    let stack = Stack::start(Grants::None).unwrap();
    let sender = unique_phone();
    stack
        .execute(&format!(
            "insert into users (phone_number) values ('{sender}');
             insert into jobs (user_id, user_phone, source_channel_id, source_type, payload, message_sid, status)
             select '{sender}', '{sender}', 'old', 'dm', '{{}}', 'SMold' || i, 'complete'
             from generate_series(1, 20000) as i;"
        ))
        .unwrap();
    stack.execute("vacuum analyze jobs").unwrap();
    (stack, sender)
}

/// A queue's statistics lie: autovacuum looked when it was drained, and then a burst came. Told
/// that no job is pending or processing, the planner once walked a whole partial index for every
/// claim and every completion. Each must still read entries in proportion to the jobs it handles,
/// not to the backlog.
#[test]
fn claims_and_completions_stay_cheap_when_the_statistics_describe_an_empty_queue() {
    let (stack, sender) = stack_with_a_drained_queue();
    // The burst: 2,000 channels with ten messages each, not yet seen by autovacuum.
    stack
        .execute(&format!(
            "insert into jobs (user_id, user_phone, source_channel_id, source_type, payload, message_sid, received_at)
             select '{sender}', '{sender}', 'ch' || (i % 2000), 'dm', '{{}}', 'SMnew' || i,
                    now() - interval '1 hour' + i * interval '1 millisecond'
             from generate_series(1, 20000) as i"
        ))
        .unwrap();

    let claim = reads_of_jobs(&stack, "select string_agg(id::text, ',') from claim_jobs('w', 50)");
    let ids: Vec<&str> = claim.answer.split(',').collect();
    assert_eq!(ids.len(), 50, "the claim fell short");
    assert_eq!(claim.seq_scans, 0, "a claim scanned the table");
    assert!(claim.entries < 1_000, "a claim of 50 jobs of 20,000 read {}", claim.by_index);

    let batch = json!(ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()).to_string();
    let completion = reads_of_jobs(&stack, &format!("select count(*) from complete_jobs('w', '{batch}')"));
    assert_eq!(completion.answer, "50");
    assert_eq!(completion.seq_scans, 0, "a completion scanned the table");
    assert!(completion.entries < 200, "completing 50 jobs read {}", completion.by_index);

    let two = reads_of_jobs(&stack, "select string_agg(id::text, ',') from claim_jobs('w', 2)").answer;
    let (first, second) = two.split_once(',').unwrap();
    let failure = reads_of_jobs(&stack, &format!("select fail_job('{first}', 'w', 'boom')"));
    assert_eq!(failure.answer, "pending");
    assert!(failure.entries < 10, "failing one job read {}", failure.by_index);
    let heartbeat = reads_of_jobs(&stack, &format!("select extend_job_lease('{second}', 'w', 60)"));
    assert_eq!(heartbeat.answer, "t");
    assert!(heartbeat.entries < 10, "a heartbeat read {}", heartbeat.by_index);
}

/// The same lying statistics, and a claim that must look past a busy channel whose next job is
/// processing: it walks the open channels, one lookup each, not the backlog behind them.
#[test]
fn a_claim_past_a_busy_channel_reads_the_open_channels_not_the_backlog() {
    let (stack, sender) = stack_with_a_drained_queue();
    // 10,000 messages of one busy channel at the front, then 500 channels with one message each.
    stack
        .execute(&format!(
            "insert into jobs (user_id, user_phone, source_channel_id, source_type, payload, message_sid, received_at, run_at)
             select '{sender}', '{sender}', case when i <= 10000 then 'busy' else 'ch' || i end, 'dm', '{{}}',
                    'SMnew' || i, t, t
             from generate_series(1, 10500) as i,
                  lateral (select now() - interval '1 hour' + i * interval '1 millisecond' as t) as at"
        ))
        .unwrap();
    let head = reads_of_jobs(&stack, "select source_channel_id from claim_jobs('a', 1)");
    assert_eq!(head.answer, "busy");

    let behind = reads_of_jobs(&stack, "select count(*) from claim_jobs('b', 50)");
    assert_eq!(behind.answer, "50", "the claim did not reach the channels behind the busy one");
    assert_eq!(behind.seq_scans, 0, "a claim scanned the table");
    // Per open channel: a step to the next channel and a look at its first job.
    assert!(behind.entries < 5 * 501, "a claim past 10,000 blocked jobs read {}", behind.by_index);
}

#[tokio::test]
async fn operators_see_the_queue_and_requeue_failed_jobs_from_the_command_line() {
    let (stack, worker) = three_senders(1).await;
    let jobs = worker.claim(3, 60).await;
    for job in &jobs {
        worker.fail(id(job), "bad", None, true).await;
    }
    let spool = temp_dir("spool");
    let run = |args: &[&str]| run_binary(&stack.url(), &spool, args);
    let (ok, stats) = run(&["jobs", "stats"]);
    assert!(ok, "{stats}");
    assert!(stats.lines().any(|l| l.split_whitespace().take(3).eq(["dm", "failed", "3"])), "{stats}");
    assert!(stats.contains("oldest pending job: none pending"), "{stats}");

    let (ok, refused) = run(&["jobs", "retry"]);
    assert!(!ok && refused.contains("--all"), "{refused}");
    let (ok, one) = run(&["jobs", "retry", "--id", id(&jobs[0])]);
    assert!(ok && one.contains("requeued 1 failed job(s)"), "{one}");
    let (ok, rest) = run(&["jobs", "retry", "--failed-since", "1h"]);
    assert!(ok && rest.contains("requeued 2 failed job(s)"), "{rest}");
    let (ok, stats) = run(&["jobs", "stats"]);
    assert!(ok && stats.lines().any(|l| l.split_whitespace().take(3).eq(["dm", "pending", "3"])), "{stats}");
    assert!(stats.contains("oldest pending job: waiting"), "{stats}");
}
