//! A 200 is a promise: whatever the input, the disk or the spool's bytes do, nothing acknowledged
//! is lost or stranded, and nothing refused is stored behind the caller's back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use devstack::{FaultMode, FaultProxy, Grants, KeyKind, Stack};
use twilio_ingest::ingest::Settings;
use twilio_ingest::twilio::Params;

use crate::helpers::*;

async fn spool_while_down(spool: &Path, messages: &[Params]) {
    // No replay while down: every record stays in one segment.
    let app =
        spawn_app_while_down(spool, Settings { replay_interval: Duration::from_secs(3600), ..Settings::default() })
            .await;
    for m in messages {
        assert_eq!(app.post_signed(m).await.status(), 200);
    }
    assert_eq!(app.ingestor.spool_depth(), messages.len() as u64);
    app.stop().await;
}

async fn replay(stack: &Stack, spool: &Path) {
    let app = spawn_app_at(&stack.url(), KeyKind::Secret, spool, Default::default(), &[]).await;
    assert!(app.wait_for_empty_spool(Duration::from_secs(30)).await, "the spool did not drain");
    app.stop().await;
}

/// Signed messages PostgreSQL cannot take as they are.
fn poison() -> Vec<Params> {
    let nul = {
        let mut m = sms(&unique_phone(), "before\0after");
        m = Params::from_pairs(m.pairs().iter().cloned());
        m
    };
    let long_sid = {
        let pairs = sms(&unique_phone(), "long").pairs().to_vec();
        Params::from_pairs(pairs.into_iter().map(|(k, v)| {
            if k == "MessageSid" {
                (k, "SM".to_owned() + &"a".repeat(10_000))
            } else {
                (k, v)
            }
        }))
    };
    // A captured message with a boundary moved: `MessageSid=SM…NumMedia0`, NumMedia removed.
    let spliced = {
        let pairs = sms(&unique_phone(), "spliced").pairs().to_vec();
        let sid = pairs.iter().find(|(k, _)| k == "MessageSid").unwrap().1.clone();
        Params::from_pairs(pairs.into_iter().filter(|(k, _)| k != "NumMedia").map(|(k, v)| {
            if k == "MessageSid" {
                (k, format!("{sid}NumMedia0"))
            } else {
                (k, v)
            }
        }))
    };
    vec![nul, long_sid, spliced]
}

#[tokio::test]
async fn a_message_the_database_cannot_hold_is_dead_lettered_in_a_form_it_can() {
    for grants in [Grants::Default, Grants::None] {
        let stack = shared_stack(grants);
        let app = spawn_app(stack, KeyKind::Secret).await;
        for m in poison() {
            let sender = m.get("From").unwrap().to_owned();
            assert_eq!(app.post_signed(&m).await.status(), 200, "{grants:?}");
            // The sender is in the dead letter's payload, as JSON or as JSON text.
            let letters = count(stack, &format!("select count(*) from dlq_jobs where payload::text like '%{sender}%'"));
            assert_eq!(letters, 1, "{grants:?}: {:?} is not dead-lettered once", m.get("Body"));
            assert_eq!(count(stack, &format!("select count(*) from jobs where user_phone = '{sender}'")), 0);
        }
        // The NUL message's params come back exactly from its dead letter.
        let text = read_column(stack, "select payload->>'json' from dlq_jobs where payload ? 'twilio_ingest_encoded' and payload->>'json' like '%before%'");
        let params: serde_json::Value = serde_json::from_str(text[0].as_deref().unwrap()).unwrap();
        assert_eq!(params["Body"], "before\0after");
        app.stop().await;
    }
}

#[tokio::test]
async fn poison_in_the_spool_does_not_strand_the_messages_behind_it() {
    let stack = shared_stack(Grants::None);
    let spool = temp_dir("poison-spool");
    let (first, last) = (sms(&unique_phone(), "before the poison"), sms(&unique_phone(), "after the poison"));
    let mut messages = vec![first.clone()];
    messages.extend(poison());
    messages.push(last.clone());
    spool_while_down(&spool, &messages).await;
    replay(stack, &spool).await;
    assert_each_stored_once(stack, &[sid_of(&first), sid_of(&last)]);
    assert_eq!(
        count(
            stack,
            &format!("select count(*) from jobs where message_sid in ('{}', '{}')", sid_of(&first), sid_of(&last))
        ),
        2
    );
}

/// A gateway refuses a body past its limit (nginx's here is 10 MiB) with a 413, an HTML page. A
/// spool holds more than that after an outage: replay sends at most one segment's records at a
/// time, segments are cut at 4 MiB, and a batch refused as too large is split, not retried
/// unchanged for ever. 11 MB of spooled messages reach the database.
#[tokio::test]
async fn a_spool_bigger_than_the_gateway_takes_in_one_request_is_replayed() {
    let stack = shared_stack(Grants::None);
    let spool = temp_dir("big-spool");
    let messages: Vec<Params> = (0..45).map(|i| sms(&unique_phone(), &format!("{i}{}", "x".repeat(245_000)))).collect();
    spool_while_down(&spool, &messages).await;
    replay(stack, &spool).await;
    let sids: Vec<String> = messages.iter().map(sid_of).collect();
    assert_each_stored_once(stack, &sids);
    let list = sql_list(&sids);
    assert_eq!(count(stack, &format!("select count(*) from jobs where message_sid in ({list})")), 45);
}

/// Offsets at which the records of a new-format segment start.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    bytes.windows(4).enumerate().filter(|(_, w)| *w == [0xFF, b'T', b'I', b'1']).map(|(i, _)| i).collect()
}

fn segments(spool: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "records"))
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn damage_in_the_middle_of_a_spool_segment_costs_only_the_damaged_record() {
    let stack = shared_stack(Grants::None);
    let spool = temp_dir("damaged-spool");
    let messages: Vec<Params> = (0..10).map(|i| sms(&unique_phone(), &format!("spooled {i}"))).collect();
    spool_while_down(&spool, &messages).await;
    let segment = segments(&spool).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let starts = record_starts(&bytes);
    assert_eq!(starts.len(), 10);
    // One flipped bit in record 5, and zeros where a crash left a tail.
    bytes[starts[5] + 40] ^= 0x01;
    bytes.extend(std::iter::repeat_n(0u8, 512));
    std::fs::write(&segment, &bytes).unwrap();

    replay(stack, &spool).await;
    let survivors: Vec<String> = messages.iter().enumerate().filter(|(i, _)| *i != 5).map(|(_, m)| sid_of(m)).collect();
    assert_each_stored_once(stack, &survivors);
    assert_eq!(jobs_with_sid(stack, &sid_of(&messages[5])), 0);
    // The damaged bytes were moved aside, not deleted: the record and the zeros.
    let quarantined: Vec<Vec<u8>> = std::fs::read_dir(spool.join("quarantine"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(quarantined.iter().map(Vec::len).sum::<usize>(), (starts[6] - starts[5]) + 512);
    assert!(segments(&spool).is_empty(), "the replayed segment is gone");
}

#[test]
fn a_second_service_on_the_same_spool_refuses_to_start_naming_spool_dir() {
    let stack = shared_stack(Grants::None);
    let spool = temp_dir("shared-spool");
    let port = devstack::free_port();
    let mut first = service_command(&stack.url(), KeyKind::Secret, &spool, port).spawn().unwrap();
    wait_for_listener(port);
    let second = service_command(&stack.url(), KeyKind::Secret, &spool, devstack::free_port()).output().unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    let line = stderr.lines().find(|l| l.contains("SPOOL_DIR")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("in use by another twilio-ingest process"), "{line}");
}

/// A tmpfs of its own, unmounted when dropped; None where this process may not mount (not root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(options: &str) -> Option<Tmpfs> {
        let dir = temp_dir("tmpfs");
        let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(&dir).status();
        if mounted.is_ok_and(|s| s.success()) {
            Some(Tmpfs(dir))
        } else {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            None
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_read_only_spool_is_reported_by_check_and_readiness() {
    let Some(disk) = Tmpfs::mount("size=1m,ro") else { return };
    let stack = shared_stack(Grants::None);
    let check = service_command(&stack.url(), KeyKind::Secret, &disk.0, 8080).arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success());
    assert!(stdout.contains("spool: PROBLEM: SPOOL_DIR") && stdout.contains("not writable"), "{stdout}");

    // The service itself does not start on it, naming the variable.
    let out = service_command(&stack.url(), KeyKind::Secret, &disk.0, devstack::free_port()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("SPOOL_DIR"), "{stderr}");

    // A spool with too little room left for an outage: running, but not ready.
    let Some(small) = Tmpfs::mount("size=8m") else { return };
    let app = spawn_app_at(&stack.url(), KeyKind::Secret, &small.0, Default::default(), &[]).await;
    assert_not_ready(&app, &["SPOOL_DIR", "MiB free"]).await;
    app.stop().await;
}

#[tokio::test]
async fn a_full_disk_answers_503_truthfully_and_the_depth_stays_true() {
    let Some(disk) = Tmpfs::mount("size=48k") else { return };
    let stack = shared_stack(Grants::None);
    let app = spawn_app_while_down(&disk.0, Default::default()).await;
    let messages: Vec<Params> = (0..150).map(|i| sms(&unique_phone(), &format!("{i} {}", "x".repeat(400)))).collect();
    let answers = futures_util::future::join_all(messages.iter().map(|m| app.post_signed(m))).await;
    let (mut acknowledged, mut refused) = (Vec::new(), Vec::new());
    for (m, answer) in messages.iter().zip(answers) {
        match answer.status().as_u16() {
            200 => acknowledged.push(sid_of(m)),
            503 => refused.push(sid_of(m)),
            other => panic!("answered {other}"),
        }
    }
    assert!(
        !acknowledged.is_empty() && !refused.is_empty(),
        "{} acknowledged, {} refused",
        acknowledged.len(),
        refused.len()
    );
    assert_eq!(app.ingestor.spool_depth(), acknowledged.len() as u64, "the depth is what the disk holds");
    app.stop().await;

    replay(stack, &disk.0).await;
    assert_each_stored_once(stack, &acknowledged);
    let stored_anyway =
        count(stack, &format!("select count(*) from jobs where message_sid in ({})", sql_list(&refused)));
    assert_eq!(stored_anyway, 0, "messages answered 503 were stored");
}

/// An app talking to `stack` through a fault proxy, with replay every 100 ms.
async fn app_behind(proxy: &FaultProxy) -> TestApp {
    let settings = Settings { replay_interval: Duration::from_millis(100), ..Settings::default() };
    spawn_app_at(
        &format!("http://127.0.0.1:{}", proxy.port),
        KeyKind::LegacyJwt,
        &temp_dir("spool"),
        settings,
        &[("INGEST_DEADLINE_MS", "800")],
    )
    .await
}

/// Sends one message through a lying upstream: it must be acknowledged from the spool, with
/// nothing in jobs or dlq_jobs that the lie claimed, readiness must fail saying why, and once the
/// upstream tells the truth again the message is stored exactly once, never dead-lettered.
async fn lie_then_truth(mode: FaultMode, readiness_says: &str) -> (Stack, FaultProxy, String) {
    let stack = Stack::start(Grants::None).unwrap();
    let proxy = FaultProxy::start(stack.gateway_port);
    let app = app_behind(&proxy).await;
    proxy.set(mode);
    let message = sms(&unique_phone(), &format!("through {mode:?}"));
    assert_eq!(app.post_signed(&message).await.status(), 200);
    assert_eq!(app.ingestor.spool_depth(), 1, "{mode:?}: the lie was taken as stored");
    assert_not_ready(&app, &[readiness_says]).await;

    proxy.set(FaultMode::Pass);
    assert!(app.wait_for_empty_spool(Duration::from_secs(20)).await, "{mode:?}: the spool did not drain");
    assert_each_stored_once(&stack, &[sid_of(&message)]);
    assert_eq!(count(&stack, "select count(*) from dlq_jobs"), 0, "{mode:?}: dead-lettered");
    assert_eq!(app.ops_get("/readyz").await.status(), 200);
    app.stop().await;
    (stack, proxy, sid_of(&message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_never_followed_and_the_key_never_leaves() {
    let (_, proxy, _) = lie_then_truth(FaultMode::Redirect, "a redirect (307").await;
    assert_eq!(proxy.trap_visits(), 0, "the other origin was visited, key and all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_html_page_is_not_taken_for_a_write() {
    lie_then_truth(FaultMode::Html, "not PostgREST's answer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflares_522_is_an_outage_not_a_refusal() {
    lie_then_truth(FaultMode::Cloudflare522, "522").await;
}

/// The worst lie: the batch committed, and the answer said it failed. The message is spooled
/// and replayed as a duplicate: in jobs once, never also in dlq_jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_522_after_the_commit_leaves_the_message_in_jobs_once_and_not_dead_lettered() {
    let (stack, _, sid) = lie_then_truth(FaultMode::Cloudflare522AfterCommit, "522").await;
    assert_eq!(jobs_with_sid(&stack, &sid), 1);
}

/// 1,005 dead letters that can never become jobs, older than 5 that a fix made replayable: the
/// fixable ones are reached, and `dlq list` says how many wait in all.
#[tokio::test]
async fn dlq_replay_makes_progress_past_letters_that_keep_failing() {
    let stack = Stack::start(Grants::None).unwrap();
    stack
        .execute(
            "insert into dlq_jobs (dedupe_key, payload, error, error_kind, created_at)
             select 'sha256:' || i, jsonb_build_object('Body', 'no sender ' || i), 'no sender', 'unusable',
                    now() - interval '1 day' + i * interval '1 millisecond'
             from generate_series(1, 1005) as i",
        )
        .unwrap();
    let fixable: Vec<Params> = (0..5).map(|i| sms(&unique_phone(), &format!("fixable {i}"))).collect();
    for m in &fixable {
        let payload = serde_json::to_string(&m.to_payload()).unwrap().replace('\'', "''");
        stack
            .execute(&format!(
                "insert into dlq_jobs (message_sid, dedupe_key, payload, error, error_kind) values ('{0}', '{0}', '{payload}', 'grant revoked', 'rejected')",
                sid_of(m)
            ))
            .unwrap();
    }
    let supabase = supabase_client(&stack, KeyKind::Secret);
    let first = twilio_ingest::dlq::replay(&supabase, 1000).await.unwrap();
    assert_eq!((first.replayed.len(), first.still_failing.len()), (0, 1000));
    let second = twilio_ingest::dlq::replay(&supabase, 1000).await.unwrap();
    assert_eq!(second.replayed.len(), 5, "the fixable letters were not reached");
    let sids: Vec<String> = fixable.iter().map(sid_of).collect();
    assert_eq!(count(&stack, &format!("select count(*) from jobs where message_sid in ({})", sql_list(&sids))), 5);

    let spool = temp_dir("spool");
    let run = |args: &[&str]| run_binary(&stack.url(), &spool, args);
    let (ok, listed) = run(&["dlq", "list"]);
    assert!(ok && listed.contains("1005 dead letter(s) waiting, the oldest 50 shown"), "{listed}");
    for bad in ["0", "-1", "10001", "many"] {
        let (ok, refused) = run(&["dlq", "replay", &format!("--limit={bad}")]);
        assert!(!ok && refused.contains("not a number from 1 to 10000"), "--limit {bad}: {refused}");
    }

    // The exit codes follow convention: 1 while letters still fail, 2 for a command used wrongly
    // (checked before anything is sent), 0 once nothing is left to do.
    let exit = |args: &[&str]| {
        let out = service_command(&stack.url(), KeyKind::Secret, &spool, devstack::free_port())
            .env("LOG_FORMAT", "json")
            .args(args)
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        // A person runs these: no JSON log line beside the output, whatever LOG_FORMAT says.
        assert!(!printed.lines().any(|l| l.starts_with('{')), "{args:?} printed JSON logs:\n{printed}");
        (out.status.code(), printed)
    };
    let (code, printed) = exit(&["dlq", "replay"]);
    assert_eq!(code, Some(1), "replay with letters still failing: {printed}");
    assert!(printed.contains("still failing 1000"), "{printed}");
    for usage in [
        &["dlq", "discard"][..],
        &["dlq", "discard", "--id", "not-a-uuid"],
        &["jobs", "retry"],
        &["jobs", "retry", "--id", "not-a-uuid"],
    ] {
        let (code, printed) = exit(usage);
        assert_eq!(code, Some(2), "{usage:?}: {printed}");
    }
    let (code, printed) = exit(&["dlq", "discard", "--unusable"]);
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains("discarded 1005 dead letter(s)"), "{printed}");
    let (code, printed) = exit(&["dlq", "list"]);
    assert_eq!(code, Some(0), "{printed}");
    assert!(
        printed.contains("\n0 dead letter(s) waiting") || printed.starts_with("0 dead letter(s) waiting"),
        "{printed}"
    );
    // The replayed letters are kept: they are the record of what was re-driven.
    assert_eq!(count(&stack, "select count(*) from dlq_jobs where replayed_at is not null"), 5);
}

/// One replayer per spool, always: `spool drain` and the service's own background replay never
/// replay the same segments side by side, and two passes asked for at once replay each record
/// once between them.
#[tokio::test]
async fn a_spool_is_replayed_by_one_pass_at_a_time() {
    let stack = shared_stack(Grants::None);
    let spool = temp_dir("spool");
    let messages: Vec<Params> = (0..60).map(|i| sms(&unique_phone(), &format!("one replayer {i}"))).collect();
    spool_while_down(&spool, &messages).await;
    let app = spawn_app_at(
        &stack.url(),
        KeyKind::Secret,
        &spool,
        Settings { replay_interval: Duration::from_millis(1), ..Settings::default() },
        &[],
    )
    .await;
    let (a, b) = tokio::join!(app.ingestor.drain_spool(), app.ingestor.drain_spool());
    assert_eq!((a.stalled.as_deref(), b.stalled.as_deref()), (None, None));
    assert!(
        a.replayed + b.replayed <= messages.len(),
        "replayed {} + {} of {}",
        a.replayed,
        b.replayed,
        messages.len()
    );
    assert!(app.wait_for_empty_spool(Duration::from_secs(30)).await);
    app.stop().await;
    assert_each_stored_once(stack, &sids_of(&messages));

    // `spool drain` as an operator runs it: its pass alone, however the background is set.
    let spool = temp_dir("spool");
    let messages: Vec<Params> = (0..60).map(|i| sms(&unique_phone(), &format!("drained {i}"))).collect();
    spool_while_down(&spool, &messages).await;
    let config = config(&stack.url(), KeyKind::Secret, &spool, &[]);
    let drained = twilio_ingest::drain_spool(&config, Duration::from_secs(30)).await.unwrap();
    assert_eq!((drained.remaining, drained.last_stall), (0, None));
    assert_each_stored_once(stack, &sids_of(&messages));
}

/// `spool drain --deadline` keeps its deadline even when Supabase hangs in the middle of a pass.
#[tokio::test]
async fn spool_drain_keeps_its_deadline_while_supabase_hangs() {
    let stack = shared_stack(Grants::None);
    let spool = temp_dir("spool");
    let messages: Vec<Params> = (0..5).map(|i| sms(&unique_phone(), &format!("hung {i}"))).collect();
    spool_while_down(&spool, &messages).await;
    let proxy = FaultProxy::start(stack.gateway_port);
    proxy.set(FaultMode::Stall);
    let config = config(&format!("http://127.0.0.1:{}", proxy.port), KeyKind::Secret, &spool, &[]);
    let started = std::time::Instant::now();
    let drained = twilio_ingest::drain_spool(&config, Duration::from_secs(1)).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(2_500), "a 1 s deadline took {:?}", started.elapsed());
    assert_eq!(drained.remaining, 5, "nothing lost: every record is still in the spool");
    assert!(drained.last_stall.is_some());
}

/// A dead letter as the service writes one when a grant was revoked: replayable once fixed.
fn rejected_letter(stack: &Stack, message: &Params, received_at: &str) {
    let payload = serde_json::to_string(&message.to_payload()).unwrap().replace('\'', "''");
    stack
        .execute(&format!(
            "insert into dlq_jobs (message_sid, dedupe_key, payload, error, error_kind, received_at)
             values ('{0}', '{0}', '{payload}', 'grant revoked', 'rejected', '{received_at}')",
            sid_of(message)
        ))
        .unwrap();
}

/// On a database whose TimeZone is not UTC, PostgREST renders every time in that zone: a dead
/// letter replayed keeps its arrival time (its place in its channel), and `jobs stats` reads
/// every row.
#[tokio::test]
async fn times_from_a_database_outside_utc_are_read_as_the_same_moments() {
    let stack = Stack::start(Grants::None).unwrap();
    stack
        .execute_as_admin(
            "alter role authenticator set timezone = 'America/New_York';
             select pg_terminate_backend(pid) from pg_stat_activity where usename = 'authenticator';",
        )
        .unwrap();
    // PostgREST reconnects, now in New York time, once it has seen its connections go.
    let probe = reqwest::Client::new();
    let reconnected = async {
        loop {
            let answer = probe
                .get(format!("{}/rest/v1/jobs?select=id&limit=1", stack.url()))
                .header("apikey", KeyKind::Secret.service_key())
                .send()
                .await;
            if answer.is_ok_and(|a| a.status() == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reconnected).await.expect("PostgREST reconnects");
    let message = sms(&unique_phone(), "from a New York database");
    rejected_letter(&stack, &message, "2026-01-02T03:04:05.678901Z");
    let replayed = twilio_ingest::dlq::replay(&supabase_client(&stack, KeyKind::Secret), 10).await.unwrap();
    assert_eq!(replayed.replayed.len(), 1);
    let at = read_column(
        &stack,
        &format!(
            "select received_at = '2026-01-02T03:04:05.678901Z' from jobs where message_sid = '{}'",
            sid_of(&message)
        ),
    );
    assert_eq!(at, [Some("t".to_owned())], "the letter's arrival time was not kept");
    let (ok, stats) = run_binary(&stack.url(), &temp_dir("spool"), &["jobs", "stats"]);
    assert!(ok, "{stats}");
    assert!(stats.contains("oldest pending job: waiting"), "{stats}");
}

/// An erasure is not undone: deleting a user deletes their dead letters too, by every address
/// they wrote from, so `dlq replay` cannot bring them, or their messages, back. Other senders'
/// letters stay.
#[tokio::test]
async fn deleting_a_user_deletes_their_dead_letters_so_no_replay_brings_them_back() {
    let stack = Stack::start(Grants::None).unwrap();
    let app = spawn_app(&stack, KeyKind::Secret).await;
    let (phone, bsuid) = (unique_phone(), format!("US.{}", uuid::Uuid::new_v4().as_u128()));
    let mut linked = sms(&format!("whatsapp:{phone}"), "first").pairs().to_vec();
    linked.push(("ExternalUserId".into(), format!("whatsapp:{bsuid}")));
    assert_eq!(app.post_signed(&Params::from_pairs(linked)).await.status(), 200);
    app.stop().await;
    let theirs = [
        sms(&phone, "an sms"),
        sms(&format!("whatsapp:{phone}"), "whatsapp by phone"),
        sms(&format!("whatsapp:{bsuid}"), "whatsapp by id"),
        group_message(&unique("CH"), &phone, "in a group"),
    ];
    let someone_else = sms(&unique_phone(), "not theirs");
    for letter in theirs.iter().chain([&someone_else]) {
        rejected_letter(&stack, letter, "2026-01-01T00:00:00Z");
    }
    stack.execute(&format!("delete from users where phone_number = '{phone}'")).unwrap();
    assert_eq!(count(&stack, "select count(*) from dlq_jobs"), 1, "only the other sender's letter is left");
    let replayed = twilio_ingest::dlq::replay(&supabase_client(&stack, KeyKind::Secret), 10).await.unwrap();
    assert_eq!(replayed.replayed.len(), 1);
    assert_eq!(jobs_with_sid(&stack, &sid_of(&someone_else)), 1);
    assert_eq!(count(&stack, &format!("select count(*) from users where phone_number = '{phone}'")), 0);
    assert_eq!(count(&stack, &format!("select count(*) from user_identities where value = '{bsuid}'")), 0);
}

/// The spool's lock is the directory's own: `spool drain` beside a live service (here after an
/// operator deleted what older releases locked) never takes its spool, and leaves nothing in it,
/// as root or not, that the service's own user could not open. Every acknowledged message lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_drain_beside_a_live_service_never_takes_its_spool() {
    let stack = shared_stack(Grants::None);
    let proxy = FaultProxy::start(stack.gateway_port);
    proxy.set(FaultMode::Stall);
    let spool = temp_dir("spool");
    let settings = Settings { replay_interval: Duration::from_millis(200), ..Settings::default() };
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let app = spawn_app_at(&url, KeyKind::Secret, &spool, settings, &[("INGEST_DEADLINE_MS", "800")]).await;
    let first: Vec<Params> = (0..20).map(|i| sms(&unique_phone(), &format!("before the drain {i}"))).collect();
    for m in &first {
        assert_eq!(app.post_signed(m).await.status(), 200);
    }
    let _ = std::fs::remove_file(spool.join(".lock"));
    let (ok, said) = run_binary(&stack.url(), &spool, &["spool", "drain", "--deadline", "2s"]);
    assert!(!ok, "spool drain claimed to have emptied a spool it does not own: {said}");
    let names: Vec<String> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".records"))
        .collect();
    assert!(names.is_empty(), "spool drain left {names:?} in the spool");
    let later: Vec<Params> = (0..20).map(|i| sms(&unique_phone(), &format!("after the drain {i}"))).collect();
    for m in &later {
        assert_eq!(app.post_signed(m).await.status(), 200);
    }
    assert_eq!(app.ingestor.spool_depth(), 40, "every acknowledged message is in the live spool");
    proxy.set(FaultMode::Pass);
    assert!(app.wait_for_empty_spool(Duration::from_secs(60)).await, "the spool did not drain");
    app.stop().await;
    assert_each_stored_once(stack, &sids_of(&[first, later].concat()));
}

/// Something removes the segment the service is writing: what the service had not yet
/// acknowledged is written again to a new segment, so every later 200 is still true.
#[tokio::test]
async fn a_segment_removed_under_the_service_takes_nothing_it_acknowledges_later() {
    let stack = shared_stack(Grants::None);
    let spool = temp_dir("spool");
    let app =
        spawn_app_while_down(&spool, Settings { replay_interval: Duration::from_secs(3600), ..Settings::default() })
            .await;
    assert_eq!(app.post_signed(&sms(&unique_phone(), "in the removed segment")).await.status(), 200);
    for entry in std::fs::read_dir(&spool).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "records") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let later: Vec<Params> = (0..5).map(|i| sms(&unique_phone(), &format!("after the removal {i}"))).collect();
    for m in &later {
        assert_eq!(app.post_signed(m).await.status(), 200);
    }
    app.stop().await;
    replay(stack, &spool).await;
    assert_each_stored_once(stack, &sids_of(&later));
}

/// A grant revoked (or a key rotated) refuses every message alike. None is split for it or
/// dead-lettered: each is spooled at once, well within its deadline, readiness says why, and
/// restoring the grant is the whole recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_revoked_spools_every_message_at_once_and_restoring_it_heals() {
    let stack = Stack::start(Grants::None).unwrap();
    let settings = Settings { replay_interval: Duration::from_millis(200), ..Settings::default() };
    let app = spawn_app_at(&stack.url(), KeyKind::Secret, &temp_dir("spool"), settings, &[]).await;
    stack.execute("revoke insert on table public.jobs from service_role").unwrap();
    let messages: Vec<Params> = (0..40).map(|i| sms(&unique_phone(), &format!("while revoked {i}"))).collect();
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all(messages.iter().map(|m| app.post_signed(m))).await;
    let took = started.elapsed();
    assert!(answers.iter().all(|a| a.status() == 200));
    assert!(took < Duration::from_millis(1_500), "40 messages waited {took:?} for a refusal that will not change");
    assert_eq!(count(&stack, "select count(*) from dlq_jobs"), 0, "a grant revoked dead-lettered messages");
    assert!(app.ingestor.spool_depth() > 0);
    assert_not_ready(&app, &["42501"]).await;

    stack.execute("grant insert on table public.jobs to service_role").unwrap();
    assert!(app.wait_for_empty_spool(Duration::from_secs(30)).await, "the spool did not drain once the grant was back");
    app.stop().await;
    assert_each_stored_once(&stack, &sids_of(&messages));
}
