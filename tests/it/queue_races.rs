//! The queue keeps its word on every path: under concurrent claims, when an earlier job comes
//! back while a later one runs, for heartbeats that send nonsense, for sessions that never set
//! anything, and for arguments a worker gets wrong.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devstack::{FaultMode, FaultProxy, Grants, KeyKind, Stack};
use serde_json::json;
use twilio_ingest::ingest::Settings;
use twilio_ingest::twilio::Params;

use crate::helpers::*;
use crate::queue::{enqueue, id, interleaved, Worker};

/// A connection of its own, as `service_role`: a session on which nothing was ever set.
async fn fresh_session(stack: &Stack) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&stack.db_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute("set role service_role").await.unwrap();
    client
}

/// Three workers claim at once and fail every job they get with an hour's backoff. No job may be
/// handed out twice: each went back to waiting an hour the moment it failed. (Before, a job
/// another claim failed between this claim's reading and its locking was handed out at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failed_with_a_backoff_is_never_claimed_before_its_run_at() {
    let stack = Stack::start(Grants::None).unwrap();
    enqueue(&stack, &interleaved(2_000, 1)).await;
    let claims: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let until = Instant::now() + Duration::from_secs(60);
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (url, claims) = (stack.db_url(), claims.clone());
            tokio::spawn(async move {
                let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                let worker = format!("racer-{w}");
                let mut empty = 0;
                while empty < 3 && Instant::now() < until {
                    let rows = db.query("select id::text from claim_jobs($1, 5)", &[&worker]).await.unwrap();
                    empty = if rows.is_empty() { empty + 1 } else { 0 };
                    for row in rows {
                        let id: String = row.get(0);
                        *claims.lock().unwrap().entry(id.clone()).or_default() += 1;
                        db.execute("select fail_job($1::text::uuid, $2, 'not now', 3600)", &[&id, &worker])
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let claims = claims.lock().unwrap();
    let twice: Vec<_> = claims.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(claims.len(), 2_000, "every job was claimed");
    assert!(twice.is_empty(), "{} jobs claimed again before their run_at, e.g. {:?}", twice.len(), twice.first());
    assert_eq!(count(&stack, "select count(*) from jobs where attempts <> 1"), 0);
}

/// An earlier job of a channel that comes back while a later one is processing waits for it:
/// a channel never has two jobs processing, and what it hands out next is its earliest open job.
/// Tried for each way back: retry_failed_jobs, and an insert that arrives late (a dlq replay or
/// a spool replay, both of which keep the message's arrival time).
#[tokio::test]
async fn a_channel_never_has_two_jobs_processing_whatever_brings_a_job_back() {
    let stack = Stack::start(Grants::None).unwrap();
    let sender = unique_phone();
    enqueue(&stack, &[(sender.clone(), 0), (sender.clone(), 1), (sender.clone(), 2)]).await;
    let worker = Worker::new(&stack, KeyKind::Secret, "w");
    let first = worker.claim(10, 60).await;
    assert_eq!(first.len(), 1);
    assert_eq!(worker.fail(id(&first[0]), "gave up", None, true).await, "failed");
    let second = worker.claim(10, 60).await;
    assert_eq!(second.len(), 1, "the next job goes once the first has failed");

    // Requeued while the second is processing.
    assert_eq!(worker.call("retry_failed_jobs", json!({"ids": [id(&first[0])]})).await, json!(1));
    assert!(worker.claim(10, 60).await.is_empty(), "the requeued job went beside the processing one");
    // A message that waited somewhere, arriving now with an arrival time before all of them.
    let late = unique("SM");
    stack
        .execute(&format!(
            "insert into jobs (user_id, user_phone, source_channel_id, source_type, payload, message_sid, received_at)
             values ('{sender}', '{sender}', '{sender}', 'dm', '{{}}', '{late}', now() - interval '1 day')"
        ))
        .unwrap();
    assert!(worker.claim(10, 60).await.is_empty(), "the late job went beside the processing one");

    assert_eq!(worker.complete(&[id(&second[0])]).await.len(), 1);
    let next = worker.claim(10, 60).await;
    assert_eq!(next.len(), 1, "one at a time");
    assert_eq!(next[0]["message_sid"], json!(late), "the earliest open job comes next");
    assert_eq!(count(&stack, "select count(*) from jobs where status = 'processing'"), 1);
}

/// A heartbeat refuses a lease it cannot use, as claim_jobs does, and never shortens a lease.
#[tokio::test]
async fn a_heartbeat_never_shortens_a_lease() {
    let stack = Stack::start(Grants::None).unwrap();
    enqueue(&stack, &[(unique_phone(), 0)]).await;
    let worker = Worker::new(&stack, KeyKind::Secret, "w");
    let job = worker.claim(1, 300).await.remove(0);
    for lease in [json!(null), json!(0), json!(-5), json!(86_401)] {
        let (status, body) =
            worker.rpc("extend_job_lease", json!({"id": id(&job), "worker": "w", "lease_seconds": lease})).await;
        assert_eq!(status, 400, "lease_seconds {lease}: {body}");
        assert_eq!(body["code"], json!("22023"), "{body}");
    }
    let extended = worker.call("extend_job_lease", json!({"id": id(&job), "worker": "w", "lease_seconds": 10})).await;
    assert_eq!(extended, json!(true), "the worker holds the job");
    let left: f64 = read_column(&stack, "select extract(epoch from locked_until - now()) from jobs")[0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left > 250.0, "a heartbeat of 10 s shortened a 300 s lease to {left} s");
    let longer = worker.call("extend_job_lease", json!({"id": id(&job), "worker": "w", "lease_seconds": 600})).await;
    assert_eq!(longer, json!(true));
    assert_eq!(count(&stack, "select count(*) from jobs where locked_until > now() + interval '550 seconds'"), 1);
}

/// Out of `failed` only through retry_failed_jobs: not by a PATCH, on a session where nothing was
/// ever set, nor on one that sets the old switch itself.
#[tokio::test]
async fn a_failed_job_stays_failed_on_a_fresh_session_whatever_it_sets() {
    let stack = Stack::start(Grants::None).unwrap();
    enqueue(&stack, &[(unique_phone(), 0)]).await;
    let worker = Worker::new(&stack, KeyKind::Secret, "w");
    let job = worker.claim(1, 60).await.remove(0);
    assert_eq!(worker.fail(id(&job), "no", None, true).await, "failed");

    let session = fresh_session(&stack).await;
    let refused = session.execute("update public.jobs set status = 'pending' where status = 'failed'", &[]).await;
    let code = refused.expect_err("a fresh session moved a failed job back").code().cloned();
    assert_eq!(code, Some(tokio_postgres::error::SqlState::CHECK_VIOLATION));
    let session = fresh_session(&stack).await;
    let switched = session
        .batch_execute(
            "select set_config('twilio_ingest.requeue', 'on', false);
             update public.jobs set status = 'pending' where status = 'failed'",
        )
        .await;
    assert!(switched.is_err(), "set_config switched the guard off");
    let patch = reqwest::Client::new()
        .patch(format!("{}/rest/v1/jobs?id=eq.{}", stack.url(), id(&job)))
        .header("apikey", KeyKind::Secret.service_key())
        .json(&json!({"status": "pending"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 400);
    assert_eq!(count(&stack, "select count(*) from jobs where status = 'failed'"), 1);

    // The one way out still works, from a fresh session too.
    let session = fresh_session(&stack).await;
    let requeued: i64 = session.query_one("select retry_failed_jobs()", &[]).await.unwrap().get(0);
    assert_eq!(requeued, 1);
    assert_eq!(count(&stack, "select count(*) from jobs where status = 'pending' and attempts = 0"), 1);
}

/// Arguments a worker gets wrong get an error, not silence; a batch of completions is not lost
/// for one bad id in it, and an id given twice keeps its first result.
#[tokio::test]
async fn the_queue_refuses_arguments_it_cannot_honour_and_keeps_what_it_can() {
    let stack = Stack::start(Grants::None).unwrap();
    let senders: Vec<String> = (0..3).map(|_| unique_phone()).collect();
    enqueue(&stack, &senders.iter().map(|s| (s.clone(), 0)).collect::<Vec<_>>()).await;
    let worker = Worker::new(&stack, KeyKind::Secret, "w");
    for args in [
        json!({"worker": "   "}),
        json!({"worker": "\t"}),
        json!({"worker": "w", "source_types": []}),
        json!({"worker": "w", "source_types": ["DM"]}),
        json!({"worker": "w", "source_types": ["dm", null]}),
    ] {
        let (status, body) = worker.rpc("claim_jobs", args.clone()).await;
        assert_eq!((status, body["code"].clone()), (400, json!("22023")), "{args}: {body}");
    }
    let jobs = worker.claim(3, 60).await;
    assert_eq!(jobs.len(), 3);
    let done = worker
        .call(
            "complete_jobs",
            json!({"worker": "w", "jobs": [
                {"id": id(&jobs[0]), "result": {"n": 1}},
                {"id": "not-a-uuid", "result": {"n": 0}},
                {"id": id(&jobs[0]), "result": {"n": 2}},
                {"id": id(&jobs[1])},
                "junk",
            ]}),
        )
        .await;
    let mut done: Vec<&str> = done.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    done.sort();
    let mut expected = vec![id(&jobs[0]), id(&jobs[1])];
    expected.sort();
    assert_eq!(done, expected, "the valid ids are completed");
    assert_eq!(
        read_column(&stack, &format!("select result->>'n' from jobs where id = '{}'", id(&jobs[0]))),
        [Some("1".to_owned())],
        "the first result given counts"
    );
}

/// After an outage, a channel's messages that waited it out in the spool are handed out before
/// the ones received after Supabase came back: a new message goes behind the spool while any
/// message waits there. (The replay here runs only when the test says, so that a worker has all
/// the time it wants to take a newer message first, if one were there to take.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_received_after_an_outage_go_after_those_that_waited_it_out() {
    let stack = Stack::start(Grants::None).unwrap();
    let proxy = FaultProxy::start(stack.gateway_port);
    proxy.set(FaultMode::Cloudflare522);
    let settings = Settings { replay_interval: Duration::from_secs(3600), ..Settings::default() };
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let app = spawn_app_at(&url, KeyKind::Secret, &temp_dir("spool"), settings, &[("INGEST_DEADLINE_MS", "800")]).await;
    let sender = unique_phone();
    let during: Vec<Params> = (0..4).map(|i| sms(&sender, &format!("during the outage {i}"))).collect();
    let after: Vec<Params> = (0..4).map(|i| sms(&sender, &format!("after it {i}"))).collect();
    for m in &during {
        assert_eq!(app.post_signed(m).await.status(), 200);
    }
    proxy.set(FaultMode::Pass);
    for m in &after {
        assert_eq!(app.post_signed(m).await.status(), 200);
    }
    let worker = Worker::new(&stack, KeyKind::Secret, "eager");
    let mut handed_out = Vec::new();
    take_for(&worker, &mut handed_out, Duration::from_secs(1)).await;
    let replayed = app.ingestor.drain_spool().await;
    assert_eq!((replayed.replayed, replayed.remaining), (8, 0), "every message went through the spool, in order");
    take_for(&worker, &mut handed_out, Duration::from_secs(10)).await;
    app.stop().await;
    assert_eq!(handed_out, sids_of(&[during, after].concat()), "the channel's order across the outage");
}

/// A worker that takes whatever can go the moment it is there, for `limit` or until 8 jobs.
async fn take_for(worker: &Worker, handed_out: &mut Vec<String>, limit: Duration) {
    let until = Instant::now() + limit;
    while handed_out.len() < 8 && Instant::now() < until {
        for job in worker.claim(1, 60).await {
            handed_out.push(job["message_sid"].as_str().unwrap().to_owned());
            worker.complete(&[id(&job)]).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
