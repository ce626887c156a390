//! An edge that cannot be starved: slow bodies, idle connections and forged floods, each bounded in
//! count and time, while genuine webhooks keep being answered within the deadline.

use std::time::{Duration, Instant};

use devstack::{Grants, KeyKind};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Sends `n` genuine webhooks one after another; returns the slowest answer.
async fn genuine_answers(app: &TestApp, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let started = Instant::now();
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            app.post_signed(&sms(&unique_phone(), &format!("genuine {i}"))),
        )
        .await
        .expect("a genuine webhook was not answered within 10 s");
        assert_eq!(response.status(), 200);
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// Opens a connection that sends headers announcing a body, then trickles it a byte at a time.
async fn trickler(addr: std::net::SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let head = "POST /webhooks/twilio HTTP/1.1\r\nHost: ingest.example.com\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.ok()?;
    Some(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_neither_last_nor_crowd_out_genuine_webhooks() {
    let app = spawn_app(shared_stack(Grants::None), KeyKind::Secret).await;
    let mut slow = Vec::new();
    for _ in 0..400 {
        slow.extend(trickler(app.addr).await);
    }
    assert_eq!(slow.len(), 400);
    // They keep trickling, a byte each every half second, while genuine webhooks arrive.
    let started = Instant::now();
    let trickle = async {
        let mut closed_after = Vec::new();
        while !slow.is_empty() && started.elapsed() < Duration::from_secs(15) {
            let mut still_open = Vec::new();
            for mut s in slow.drain(..) {
                if s.write_all(b"a").await.is_ok() && s.flush().await.is_ok() {
                    let mut buf = [0u8; 256];
                    match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) | Ok(Ok(_)) => closed_after.push(started.elapsed()),
                        Err(_) => still_open.push(s),
                    }
                } else {
                    closed_after.push(started.elapsed());
                }
            }
            slow = still_open;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        (slow.len(), closed_after)
    };
    let (slowest, (left_open, closed_after)) = tokio::join!(genuine_answers(&app, 20), trickle);
    assert!(slowest < Duration::from_millis(2_500), "a genuine webhook waited {slowest:?}");
    assert_eq!(left_open, 0, "slow bodies still open after 15 s");
    let latest = closed_after.iter().max().unwrap();
    assert!(*latest < Duration::from_secs(9), "a trickled body held its connection for {latest:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_cannot_exhaust_the_file_limit() {
    let stack = shared_stack(Grants::None);
    let port = devstack::free_port();
    // The service with a limit of 256 open files, hard and soft, as a small machine might have.
    let mut cmd = std::process::Command::new("bash");
    let binary = env!("CARGO_BIN_EXE_twilio-ingest");
    cmd.args(["-c", &format!("ulimit -n 256 && exec {binary}")]);
    let base = service_command(&stack.url(), KeyKind::Secret, &temp_dir("spool"), port);
    cmd.envs(base.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let log = temp_dir("log").join("service.log");
    cmd.stdout(std::fs::File::create(&log).unwrap()).stderr(std::fs::File::create(log.with_extension("err")).unwrap());
    let mut child = cmd.spawn().unwrap();
    tokio::task::spawn_blocking(move || wait_for_listener(port)).await.unwrap();

    // More connections than the service may keep open (256 files, less its reserve), each sending
    // nothing.
    let mut idle = Vec::new();
    let opened = Instant::now();
    for _ in 0..200 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(("127.0.0.1", port))).await {
            idle.push(s);
        }
    }
    // A genuine webhook still gets its answer: the idle ones are closed within seconds.
    let client = reqwest::Client::new();
    let params = sms(&unique_phone(), "after the idle ones");
    let started = Instant::now();
    let response = client
        .post(format!("http://127.0.0.1:{port}{}", twilio_ingest::WEBHOOK_PATH))
        .header("X-Twilio-Signature", sign(&params))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(&params))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .expect("a genuine webhook is answered");
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(12), "answered after {:?}", started.elapsed());
    // Each is closed at most FIRST_BYTE (5 s) after it was accepted, and the last of them waited
    // for the first ones' files: two rounds, and room for a machine busy with other tests.
    let deadline = tokio::time::Instant::from_std(opened + Duration::from_secs(25));
    let closed = futures_util::future::join_all(idle.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 16];
        matches!(tokio::time::timeout_at(deadline, s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }))
    .await;
    assert_eq!(closed.iter().filter(|c| **c).count(), 200, "idle connections left open after 25 s");
    devstack::signal(child.id(), libc::SIGTERM);
    child.wait().unwrap();
    let errors = std::fs::read_to_string(log.with_extension("err")).unwrap() + &std::fs::read_to_string(&log).unwrap();
    assert!(!errors.contains("Too many open files"), "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_floods_are_cheap_and_genuine_webhooks_keep_their_deadline() {
    let app = spawn_app(shared_stack(Grants::None), KeyKind::Secret).await;
    let forged = "a&".repeat(twilio_ingest::BODY_LIMIT / 2 - 1);
    let flood = async {
        let client = reqwest::Client::new();
        let url = app.url();
        let sends =
            (0..200).map(|_| client.post(&url).header("X-Twilio-Signature", "Zm9yZ2Vk").body(forged.clone()).send());
        let answers = futures_util::future::join_all(sends).await;
        answers.into_iter().filter(|a| a.as_ref().is_ok_and(|r| r.status() == 403)).count()
    };
    let (refused, slowest) = tokio::join!(flood, genuine_answers(&app, 20));
    assert_eq!(refused, 200);
    assert!(slowest < Duration::from_millis(2_500), "a genuine webhook waited {slowest:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_or_url_from_a_client_cannot_flood_the_log() {
    let stack = shared_stack(Grants::None);
    let port = devstack::free_port();
    let log = temp_dir("log").join("service.log");
    let mut child = service_command(&stack.url(), KeyKind::Secret, &temp_dir("spool"), port)
        .env("LOG_FORMAT", "json")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    tokio::task::spawn_blocking(move || wait_for_listener(port)).await.unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}{}", twilio_ingest::WEBHOOK_PATH);
    let long_query = format!("{base}?{}", "q".repeat(60_000));
    for (url, request_id) in [(long_query.as_str(), "x".repeat(5_000)), (base.as_str(), "evil\u{7f}id".into())] {
        let response = client
            .post(url)
            .header("X-Request-Id", request_id.as_str())
            .header("X-Twilio-Signature", "Zm9yZ2Vk")
            .body("a=b")
            .send()
            .await;
        if let Ok(response) = response {
            let echoed = response.headers().get("x-request-id").map(|v| v.len()).unwrap_or(0);
            assert_eq!(echoed, 36, "an unfit request id was echoed instead of replaced");
        }
    }
    let ok = client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .header("X-Request-Id", "trace-7f3a:b.c_d")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.headers()["x-request-id"], "trace-7f3a:b.c_d", "a plain request id is kept");
    devstack::signal(child.id(), libc::SIGTERM);
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("refused a webhook"), "{text}");
    let longest = text.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2_048, "a log line of {longest} bytes");
}
