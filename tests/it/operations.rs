//! Running it: readiness, metrics, request ids, logs without secrets, configuration errors, the
//! operator commands, the Fly.io config, and the edge's limits.

use std::process::Command;
use std::time::Duration;

use devstack::{Grants, KeyKind, Stack};
use proptest::prelude::*;
use twilio_ingest::twilio::Params;

use crate::helpers::*;

/// The service binary configured for `stack` with `key`.
fn binary_for(stack: &Stack, key: KeyKind, port: u16) -> Command {
    service_command(&stack.url(), key, &temp_dir("spool"), port)
}

#[tokio::test]
async fn readyz_is_ok_with_a_working_stack_and_says_why_not_otherwise() {
    let app = spawn_app(shared_stack(Grants::None), KeyKind::Secret).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready = app.ops_get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.unwrap().contains("spool_depth 0"));
    app.stop().await;

    let nowhere = format!("http://127.0.0.1:{}", devstack::free_port());
    let app = spawn_app_at(&nowhere, KeyKind::Secret, &temp_dir("spool"), Default::default(), &[]).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_not_ready(&app, &["not ready: table users: could not reach Supabase"]).await;
    app.stop().await;
}

#[tokio::test]
async fn readyz_names_a_table_the_key_cannot_read() {
    let stack = Stack::start(Grants::None).unwrap();
    stack.execute("revoke select on table public.dlq_jobs from service_role").unwrap();
    let app = spawn_app(&stack, KeyKind::LegacyJwt).await;
    assert_not_ready(&app, &["table dlq_jobs", "42501"]).await;
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_webhooks_by_outcome_and_time_rest_calls() {
    let app = spawn_app(shared_stack(Grants::Default), KeyKind::LegacyJwt).await;
    // The recorder is the process's, shared with the tests running alongside: compare counts
    // before and after, and allow for others' increments.
    let value = |text: &str, series: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(series)).map_or(0.0, |v| v.trim().parse().unwrap())
    };
    let before = app.ops_get("/metrics").await.text().await.unwrap();
    for i in 0..3 {
        assert_eq!(app.post_signed(&sms(&unique_phone(), &format!("metrics {i}"))).await.status(), 200);
    }
    assert_eq!(app.post_with_signature(&sms(&unique_phone(), "x"), Some("forged")).await.status(), 403);
    let after = app.ops_get("/metrics").await.text().await.unwrap();
    let grew = |series: &str| value(&after, series) - value(&before, series);
    assert!(grew(r#"webhooks_total{outcome="ingested"}"#) >= 3.0, "{after}");
    assert!(grew(r#"webhooks_total{outcome="forged"}"#) >= 1.0, "{after}");
    assert!(grew(r#"webhook_duration_seconds_count{outcome="ingested"}"#) >= 3.0, "{after}");
    for expected in
        [r#"supabase_request_seconds_bucket{endpoint="ingest_inbound",status="ok""#, "batch_size_bucket", "spool_depth"]
    {
        assert!(after.contains(expected), "missing {expected} in:\n{after}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_request_id_is_echoed_or_generated() {
    let app = spawn_app(shared_stack(Grants::Default), KeyKind::Secret).await;
    let echoed =
        app.client.get(format!("http://{}/healthz", app.addr)).header("X-Request-Id", "req-42").send().await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "req-42");
    let generated = app.get("/healthz").await;
    assert_eq!(generated.headers()["x-request-id"].len(), 36);
    app.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let app = spawn_app(shared_stack(Grants::Default), KeyKind::Secret).await;
    let big = Params::from_pairs([("Body", "x".repeat(twilio_ingest::BODY_LIMIT + 1))]);
    assert_eq!(app.post_signed(&big).await.status(), 413);
    app.stop().await;
}

#[test]
fn bad_configuration_stops_start_up_naming_the_variable() {
    let stack = shared_stack(Grants::Default);
    for (unset, broken, expected) in [
        (Some("SUPABASE_URL"), None, "SUPABASE_URL is not set"),
        (Some("TWILIO_AUTH_TOKEN"), None, "TWILIO_AUTH_TOKEN is not set"),
        (None, Some(("PORT", "http")), "PORT is invalid"),
        (
            None,
            Some(("SUPABASE_SERVICE_ROLE_KEY", devstack::PUBLISHABLE_KEY)),
            "SUPABASE_SERVICE_ROLE_KEY is invalid: this is a publishable key",
        ),
    ] {
        let mut cmd = binary_for(stack, KeyKind::Secret, devstack::free_port());
        if let Some(var) = unset {
            cmd.env_remove(var);
        }
        if let Some((var, value)) = broken {
            cmd.env(var, value);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_show_the_auth_token_or_the_service_key_even_at_trace() {
    let stack = shared_stack(Grants::None);
    for key in [KeyKind::LegacyJwt, KeyKind::Secret] {
        let port = devstack::free_port();
        let mut cmd = binary_for(stack, key, port);
        let log = temp_dir("log").join("service.log");
        cmd.env("RUST_LOG", "trace").env("LOG_FORMAT", "json").stdout(std::fs::File::create(&log).unwrap());
        cmd.stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap());
        let mut child = cmd.spawn().unwrap();
        tokio::task::spawn_blocking(move || wait_for_listener(port)).await.unwrap();
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/webhooks/twilio");
        for sig in [Some(sign(&sms(&unique_phone(), "a"))), None] {
            let params = sms(&unique_phone(), "logged");
            let sig = sig.map(|_| sign(&params)).unwrap_or_else(|| "forged".into());
            let status =
                client.post(&url).header("X-Twilio-Signature", sig).body(form(&params)).send().await.unwrap().status();
            assert!(status == 200 || status == 403);
        }
        let _ = client.get(format!("http://127.0.0.1:{port}/readyz")).send().await;
        devstack::signal(child.id(), libc::SIGTERM);
        child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("webhook handled") && text.contains("refused a webhook"),
            "the log has the events:\n{text}"
        );
        let service_key = key.service_key();
        let jwt_signature = service_key.rsplit('.').next().unwrap();
        for secret in [TOKEN, service_key.as_str(), jwt_signature, devstack::SECRET_KEY] {
            assert!(!text.contains(secret), "a secret leaked into the log ({key:?})");
        }
    }
}

#[test]
fn check_reports_a_working_project_and_a_missing_grant_in_plain_words() {
    for grants in [Grants::Default, Grants::None] {
        let mut cmd = binary_for(shared_stack(grants), KeyKind::Secret, 8080);
        let out = cmd.arg("check").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{grants:?}: {stdout}");
        assert!(stdout.contains("supabase: ok"), "{stdout}");
        assert!(stdout.contains("security: ok (RLS on"), "{grants:?}: {stdout}");
        assert!(stdout.contains("none executable by anon or authenticated"), "{grants:?}: {stdout}");
        assert!(!stdout.contains("PROBLEM"), "{grants:?}: {stdout}");
        assert!(stdout.contains("ingest: ok"), "{grants:?}: {stdout}");
    }

    let broken = Stack::start(Grants::None).unwrap();
    broken
        .execute(
            "revoke select on table public.jobs from service_role;
             alter table public.users disable row level security;
             grant select on table public.dlq_jobs to anon;
             revoke execute on function public.ingest_jobs(jsonb) from service_role;
             grant execute on function public.claim_jobs(text, integer, integer, text[]) to anon;",
        )
        .unwrap();
    let mut cmd = binary_for(&broken, KeyKind::LegacyJwt, 8080);
    let out = cmd.arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    for expected in [
        "PROBLEM with table jobs",
        "42501",
        "table users: row level security is off",
        "table jobs: service_role may not select",
        "table dlq_jobs: anon/authenticated hold anon:select",
        "function claim_jobs: anon may execute it",
        // Both write jobs, so both fail.
        "ingest: PROBLEM: cannot call ingest_inbound (",
        ", ingest_jobs (",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}

#[tokio::test]
async fn send_signs_a_sample_message_that_the_service_ingests() {
    let stack = shared_stack(Grants::Default);
    let app = spawn_app(stack, KeyKind::LegacyJwt).await;
    let phone = unique_phone();
    let sid = unique("SM");
    let mut cmd = binary_for(stack, KeyKind::LegacyJwt, app.addr.port());
    cmd.args(["send", "--from", &format!("whatsapp:{phone}"), "--profile-name", "Grace", "--message-sid", &sid]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        read_column(stack, &format!("select user_id from jobs where message_sid = '{sid}'")),
        vec![Some(phone.clone())]
    );
    assert_eq!(
        read_column(stack, &format!("select first_name from users where phone_number = '{phone}'")),
        vec![Some("Grace".into())]
    );
    app.stop().await;
}

#[test]
fn fly_toml_agrees_with_the_code() {
    let text = std::fs::read_to_string(devstack::repo_root().join("fly.toml")).unwrap();
    let fly: toml::Value = toml::from_str(&text).unwrap();
    let env = &fly["env"];
    let service = &fly["http_service"];
    // The port the proxy forwards to is the one the service listens on.
    assert_eq!(service["internal_port"].as_integer(), Some(8080));
    assert_eq!(env["PORT"].as_str(), Some("8080"));
    assert_eq!(service["force_https"].as_bool(), Some(true));
    // Two machines, one at a time: a deploy never stops both.
    assert_eq!(service["min_machines_running"].as_integer(), Some(2));
    assert_eq!(service["auto_stop_machines"].as_str(), Some("off"));
    assert_eq!(fly["deploy"]["strategy"].as_str(), Some("rolling"));
    assert_eq!(fly["deploy"]["max_unavailable"].as_integer(), Some(1));
    // The one check a deploy waits for is liveness, on a route the public port has; no readiness
    // check can hold a deploy hostage to Supabase.
    let checks: Vec<&str> = service["checks"].as_array().unwrap().iter().map(|c| c["path"].as_str().unwrap()).collect();
    assert_eq!(checks, ["/healthz"]);
    assert!(fly.get("checks").is_none(), "top-level checks block deploys while Supabase is down");
    // Metrics are scraped from the operations port, which the configuration uses.
    let ops_port = env["OPS_PORT"].as_str().unwrap();
    assert_eq!(fly["metrics"]["port"].as_integer().map(|p| p.to_string()).as_deref(), Some(ops_port));
    assert_eq!(fly["metrics"]["path"].as_str(), Some("/metrics"));
    let config =
        config("http://127.0.0.1:1", KeyKind::Secret, &temp_dir("fly"), &[("OPS_PORT", ops_port), ("PORT", "8080")]);
    assert_eq!(config.ops_port.to_string(), ops_port);
    // Fly waits kill_timeout after SIGINT: the whole drain must fit, at the largest deadline.
    assert_eq!(fly["kill_signal"].as_str(), Some("SIGINT"));
    let kill_timeout: u64 = fly["kill_timeout"].as_str().unwrap().trim_end_matches('s').parse().unwrap();
    let worst = twilio_ingest::drain_limit(Duration::from_millis(4_500));
    assert!(
        worst < Duration::from_secs(kill_timeout),
        "a drain of {worst:?} does not fit kill_timeout {kill_timeout}s"
    );
    assert_eq!(env["SPOOL_DIR"].as_str(), Some("/data/spool"));
    assert_eq!(fly["mounts"][0]["destination"].as_str(), Some("/data"));
}

fn arbitrary_params() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        Just("From".to_string()),
        Just("MessageSid".to_string()),
        Just("Body".to_string()),
        Just("EventType".to_string()),
        Just("Author".to_string()),
        Just("NumMedia".to_string()),
        Just("Media".to_string()),
        ".{0,12}",
    ];
    prop::collection::vec((key, ".{0,40}"), 0..8)
}

/// Whatever arrives, the service does not panic or fail: a signed request is always answered
/// 200, and an unsigned one is refused and writes nothing.
#[test]
fn arbitrary_requests_never_break_the_edge() {
    let stack = Stack::start(Grants::None).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let app = runtime.block_on(spawn_app(&stack, KeyKind::Secret));
    let config = ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(
            &(arbitrary_params(), prop::collection::vec(any::<u8>(), 0..200), "[ -~]{0,40}"),
            |(pairs, raw, header)| {
                runtime.block_on(async {
                    let params = Params::from_pairs(pairs);
                    let signed = app.post_signed(&params).await.status();
                    prop_assert_eq!(signed, 200);
                    let unsigned = app
                        .client
                        .post(app.url())
                        .header("X-Twilio-Signature", header.trim())
                        .body(raw)
                        .send()
                        .await
                        .unwrap()
                        .status();
                    prop_assert_eq!(unsigned, 403);
                    Ok(())
                })
            },
        )
        .unwrap();
    runtime.block_on(app.stop());
    // Only the signed requests wrote anything: each became a job, a dead letter, or nothing.
    let written = count(&stack, "select count(*) from jobs") + count(&stack, "select count(*) from dlq_jobs");
    assert!(written <= 48, "{written} rows from 48 signed requests");
}

/// A client that trickles its headers is cut off instead of holding a connection open.
#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = spawn_app(shared_stack(Grants::Default), KeyKind::Secret).await;
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"POST /webhooks/twilio HTTP/1.1\r\nHost: ingest.example.com\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection is still open after 15 s");
    assert!(started.elapsed() < Duration::from_secs(8), "cut off after {:?}", started.elapsed());
    app.stop().await;
}

/// Metrics and readiness are for Fly's checks and scraper, on a port of their own; the public port
/// has the webhook and liveness only.
#[tokio::test]
async fn metrics_and_readiness_are_on_the_operations_port_only() {
    let app = spawn_app(shared_stack(Grants::None), KeyKind::Secret).await;
    for path in ["/metrics", "/readyz"] {
        assert_eq!(app.get(path).await.status(), 404, "{path} is on the public port");
        assert_eq!(app.ops_get(path).await.status(), 200, "{path} is not on the operations port");
    }
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.ops_get("/healthz").await.status(), 200);
    assert_ne!(app.addr.port(), app.ops_addr.port());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_status_and_drain_tell_an_operator_what_waits_and_empty_it() {
    let stack = shared_stack(Grants::None);
    let spool = temp_dir("operator-spool");
    let down = spawn_app_while_down(&spool, Default::default()).await;
    let messages: Vec<Params> = (0..3).map(|i| sms(&unique_phone(), &format!("waiting {i}"))).collect();
    for m in &messages {
        assert_eq!(down.post_signed(m).await.status(), 200);
    }
    down.stop().await;
    let run = |supabase: &str, args: &[&str]| run_binary(supabase, &spool, args);
    let (ok, status) = run(&stack.url(), &["spool", "status"]);
    assert!(ok && status.contains("3 record(s) waiting"), "{status}");
    let first = messages[0].get("MessageSid").unwrap();
    assert!(status.contains(&format!("oldest: {first}, received 20")), "{status}");

    // Supabase still down: the drain gives up at its deadline and says what is left.
    let (ok, left) = run(DOWN, &["spool", "drain", "--deadline", "2s"]);
    assert!(!ok && left.contains("3 record(s) left"), "{left}");
    let (ok, drained) = run(&stack.url(), &["spool", "drain", "--deadline", "30s"]);
    assert!(ok && drained.contains("empty (replayed here)"), "{drained}");
    let sids = sids_of(&messages);
    assert_each_stored_once(stack, &sids);
}

/// Operator commands stop on SIGINT too (as PID 1 in a container, nothing else would stop them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_command_stops_on_sigint() {
    let spool = temp_dir("interrupted");
    let down = spawn_app_while_down(&spool, Default::default()).await;
    assert_eq!(down.post_signed(&sms(&unique_phone(), "stuck")).await.status(), 200);
    down.stop().await;
    // Supabase stays down: left alone, this would keep trying for an hour.
    let child = service_command(DOWN, KeyKind::Secret, &spool, devstack::free_port())
        .args(["spool", "drain", "--deadline", "1h"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let sent = std::time::Instant::now();
    devstack::signal(child.id(), libc::SIGINT);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert!(sent.elapsed() < Duration::from_secs(3), "took {:?} to stop", sent.elapsed());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The service trusts the system's CA store and what SSL_CERT_FILE adds to it (a self-hosted
/// Supabase, an egress proxy with a private CA), and nothing it was not told to trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_trusts_a_private_ca_given_in_ssl_cert_file_and_no_other() {
    let stack = shared_stack(Grants::None);
    let tls = devstack::TlsGateway::start(stack).unwrap();
    let check = |ca: Option<&std::path::Path>| {
        let mut cmd = service_command(&tls.url(), KeyKind::Secret, &temp_dir("spool"), devstack::free_port());
        if let Some(ca) = ca {
            cmd.env("SSL_CERT_FILE", ca);
        }
        let out = cmd.arg("check").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (trusted, stdout) = check(Some(&tls.ca));
    assert!(trusted && stdout.contains("supabase: ok"), "{stdout}");
    let (untrusted, stdout) = check(None);
    assert!(!untrusted && stdout.contains("supabase: PROBLEM"), "an unknown CA was trusted:\n{stdout}");

    // A webhook through it, end to end.
    let port = devstack::free_port();
    let mut service = service_command(&tls.url(), KeyKind::Secret, &temp_dir("spool"), port)
        .env("SSL_CERT_FILE", &tls.ca)
        .spawn()
        .unwrap();
    tokio::task::spawn_blocking(move || wait_for_listener(port)).await.unwrap();
    let params = sms(&unique_phone(), "over TLS");
    let answer = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}{}", twilio_ingest::WEBHOOK_PATH))
        .header("X-Twilio-Signature", sign(&params))
        .body(form(&params))
        .send()
        .await
        .unwrap();
    let _ = service.kill();
    let _ = service.wait();
    assert_eq!(answer.status(), 200);
    // In jobs, so it went over TLS: the service was killed before any spool replay.
    let in_jobs = jobs_with_sid(stack, &sid_of(&params));
    assert_eq!(in_jobs, 1, "the message went to the spool rather than over TLS");
}

/// The operator's logic is the library's: a test reaches `check` and the signed sample without
/// the binary.
#[tokio::test]
async fn check_and_the_signed_sample_work_in_process() {
    let stack = shared_stack(Grants::None);
    let config = config(&stack.url(), KeyKind::Secret, &temp_dir("spool"), &[]);
    let report = twilio_ingest::operator::check(&config).await;
    assert_eq!(report.problems, 0, "{:#?}", report.lines);
    let app = spawn_app(stack, KeyKind::Secret).await;
    let sample = twilio_ingest::operator::Sample {
        kind: twilio_ingest::operator::SampleKind::Group,
        from: unique_phone(),
        body: "in process".into(),
        profile_name: None,
        message_sid: None,
    };
    let signed = twilio_ingest::operator::signed_sample(&config, &sample);
    let (status, _) = twilio_ingest::operator::send(&app.url(), &signed).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(jobs_with_sid(stack, &sid_of(&signed.params)), 1);
    app.stop().await;
}

/// The image is built the way fly.toml and the README promise: a pinned toolchain, fixed uid and
/// gid, a stripped binary, both ports exposed, and no local secrets in the build context.
#[test]
fn the_image_is_pinned_stripped_and_keeps_secrets_out_of_its_context() {
    let root = devstack::repo_root();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let from = dockerfile.lines().find(|l| l.starts_with("FROM rust:")).unwrap();
    let tag = from.trim_start_matches("FROM rust:").split_whitespace().next().unwrap();
    assert!(
        tag.chars().next().unwrap().is_ascii_digit() && tag.split('-').next().unwrap().contains('.'),
        "not pinned: {from}"
    );
    assert!(dockerfile.contains("groupadd --system --gid 10001 app"), "the group's gid is not fixed");
    assert!(dockerfile.contains("--uid 10001 --gid 10001"), "the user's ids are not fixed");
    assert!(dockerfile.contains("EXPOSE 8080 9091"));
    let cargo: toml::Value = toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    assert_eq!(cargo["profile"]["release"]["strip"].as_bool(), Some(true));
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for pattern in [".env*", "*.pem", "*.key", "target", ".git"] {
        assert!(ignored.lines().any(|l| l.trim() == pattern), ".dockerignore lacks {pattern}");
    }
}

/// `Application::build_with` takes its deadline from the configuration (INGEST_DEADLINE_MS), not
/// from the settings it is given: with Supabase down, a 600 ms deadline answers within it.
#[tokio::test]
async fn build_with_honours_the_configured_deadline() {
    let app = spawn_app_while_down(&temp_dir("spool"), Default::default()).await;
    let started = std::time::Instant::now();
    assert_eq!(app.post_signed(&sms(&unique_phone(), "deadline")).await.status(), 200);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1_200), "answered after {took:?}: the default 2.5 s deadline was used");
    app.stop().await;
}

/// Unless `HOST` says otherwise, both ports listen on IPv6 and IPv4 alike: Fly's private network,
/// which its metrics scraper and private checks use, is IPv6 only. Run in a network namespace of
/// its own, which has nothing but a loopback, so that listening everywhere reaches nothing else;
/// and `twilio-ingest readyz`, the README's way to ask from inside a machine, answers there.
#[test]
fn by_default_both_ports_answer_over_ipv6_and_ipv4() {
    let spool = temp_dir("spool");
    let script = r#"
ip link set lo up
"$BIN" serve 2>"$SPOOL_DIR/../serve.log" & pid=$!
python3 - <<'PY'
import socket, time
def status(host, port, path):
    deadline = time.time() + 20
    while True:
        try:
            s = socket.create_connection((host, port), timeout=2)
            break
        except OSError:
            if time.time() > deadline:
                return "unreachable"
            time.sleep(0.05)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data.split(b"\r\n")[0].decode()
for host in ["::1", "127.0.0.1"]:
    for port, path in [(8080, "/healthz"), (9091, "/healthz"), (9091, "/metrics")]:
        print(f"{host} {port}{path} {status(host, port, path)}")
PY
"$BIN" readyz; echo "readyz exit $?"
kill -TERM $pid; wait $pid
"#;
    let out = std::process::Command::new("unshare")
        .args(["--net", "sh", "-c", script])
        .env("BIN", env!("CARGO_BIN_EXE_twilio-ingest"))
        .env("TWILIO_AUTH_TOKEN", TOKEN)
        .env("PUBLIC_URL", PUBLIC_URL)
        // Nothing answers inside the namespace: the service spools, and is not ready.
        .env("SUPABASE_URL", "http://127.0.0.1:9")
        .env("SUPABASE_SERVICE_ROLE_KEY", KeyKind::Secret.service_key())
        .env("SPOOL_DIR", &spool)
        .env("PORT", "8080")
        .env("OPS_PORT", "9091")
        .env_remove("HOST")
        .output()
        .expect("unshare runs (it needs root, as CI has)");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    for host in ["::1", "127.0.0.1"] {
        for target in ["8080/healthz", "9091/healthz", "9091/metrics"] {
            assert!(printed.contains(&format!("{host} {target} HTTP/1.1 200 OK")), "{host} {target}:\n{printed}");
        }
    }
    // readyz reached the operations port, which said why it is not ready, and exits 1 for it.
    assert!(printed.contains("not ready:"), "{printed}");
    assert!(printed.contains("readyz exit 1"), "{printed}");
}

/// At the default level the logs hold no phone number, no message body and no unbounded text a
/// client sent, whatever goes wrong: a row the database refuses (PostgreSQL quotes it whole in
/// `details`), a sender that is not a phone (a 200 KB one), a sender unknown to the database. The
/// dead letters keep what an operator needs, bounded.
#[tokio::test]
async fn default_logs_hold_no_phone_number_body_or_unbounded_client_text() {
    let stack = devstack::Stack::start(Grants::None).unwrap();
    // A rule that refuses one body, so that PostgreSQL answers "Failing row contains (…)".
    stack
        .execute(
            "alter table jobs add constraint refuse_marked check (payload->>'Body' is distinct from 'REFUSE-ME-7261')",
        )
        .unwrap();
    let spool = temp_dir("spool");
    let port = devstack::free_port();
    let service = service_command(&stack.url(), KeyKind::Secret, &spool, port)
        .env("LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::task::spawn_blocking(move || wait_for_listener(port)).await.unwrap();
    let phone = unique_phone();
    let huge_sender = format!("+1{}", "9".repeat(200_000));
    let messages = [
        sms(&phone, "REFUSE-ME-7261"),
        sms(&huge_sender, "BODY-OF-A-NONPHONE-SENDER"),
        sms(&format!("whatsapp:{phone}"), "an ordinary private message body"),
    ];
    let client = reqwest::Client::new();
    for params in &messages {
        let answer = client
            .post(format!("http://127.0.0.1:{port}{}", twilio_ingest::WEBHOOK_PATH))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("X-Twilio-Signature", sign(params))
            .body(form(params))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let stopped = Command::new("kill").args(["-TERM", &service.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    let out = tokio::task::spawn_blocking(move || service.wait_with_output()).await.unwrap().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("dead-lettered"), "the scenario dead-lettered nothing:\n{logs}");
    let digits = phone.trim_start_matches('+');
    for line in logs.lines() {
        assert!(line.len() < 2_048, "a log line of {} bytes", line.len());
        for secret in [digits, "REFUSE-ME", "private message body", "BODY-OF-A-NONPHONE", "99999999"] {
            assert!(!line.contains(secret), "{secret:?} reached the log:\n{line}");
        }
    }
    // The dead letters say why, with the row's details, and bounded.
    let errors = stack.query("select error from dlq_jobs order by created_at").unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().flatten().any(|e| e.contains("Failing row contains")), "{errors:?}");
    assert!(errors.iter().flatten().all(|e| e.len() < 1_024), "{errors:?}");
}
