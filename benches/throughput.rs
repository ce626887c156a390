//! Throughput and latency of twilio-ingest against the raw PostgREST ceiling, in one run on one
//! stack: `cargo bench --bench throughput` (BENCH_MESSAGES=N to change the default 20,000).
//!
//! Baseline: one-row `POST /rest/v1/jobs` through the gateway, the cost of the naive design,
//! storing the same row the service stores for the same message.
//! Service: distinct signed webhooks (80% dm, 20% group, 1,000 users, some repeated MessageSids)
//! through the release binary. Both at concurrency 32, one after the other; then at concurrency 1,
//! interleaved request by request, so that whatever drifts on the machine meanwhile lands on both
//! alike. Every acknowledged message is checked to be in the database exactly once, so a fast
//! wrong run cannot pass.
//!
//! Drain: then every job stored is drained by concurrent workers through the queue's RPC
//! (`claim_jobs` in batches, `complete_jobs`), each claim checked against its channel's arrival
//! order, and the drain rate is compared with the service's ingest rate of the same run.
//!
//! The load generator shares the two cores with the service and the stack, so it is kept lean: one
//! thread, bare HTTP/1.1 keep-alive connections, every request built before the clock starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use devstack::{free_port, Grants, KeyKind, Stack};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use twilio_ingest::twilio::{signature, Params};

use devstack::{PUBLIC_URL, TWILIO_TOKEN as TOKEN};
const USERS: usize = 1_000;
const CONCURRENCY: usize = 32;
/// The drain phase: workers, and how many jobs each claims at a time.
const WORKERS: usize = 4;
const CLAIM_BATCH: usize = 100;

/// Where requests go and the headers every one of them carries.
struct Target {
    addr: SocketAddr,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// A request ready to send: body and signature built before the clock starts.
#[derive(Clone)]
struct Prepared {
    body: Bytes,
    signature: Option<HeaderValue>,
    sid: String,
}

struct Run {
    label: &'static str,
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn throughput(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
    }
    fn print(&self) {
        println!(
            "{:<30} {:>6} req  {:>6.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
            self.label,
            self.count,
            self.throughput(),
            ms(self.pct(0.50)),
            ms(self.pct(0.99)),
            ms(*self.latencies.iter().max().expect("a run is never empty"))
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn phone(i: usize) -> String {
    format!("+1555{:07}", i % USERS)
}

/// The `i`th message of a run: 80% WhatsApp dms with a profile name, 20% Conversations messages,
/// built by the same fixtures as the tests'.
fn message(i: usize, run: &str) -> Params {
    // Twilio's shape: two letters and 32 hex digits, the run's label as two of them.
    let digits = format!("{:02x}{i:030}", run.as_bytes()[0]);
    if i % 5 == 4 {
        // (i / 5), not i: every fifth message is a group one, and `i % 50` of those would reach
        // only the ten conversations whose number ends in 4 or 9.
        let conversation = format!("CH{:032}", (i / 5) % 50);
        Params::from_pairs(devstack::conversation_params(
            &format!("IM{digits}"),
            &conversation,
            &phone(i),
            "group message from the benchmark",
            i,
        ))
    } else {
        let from = format!("whatsapp:{}", phone(i));
        let mut pairs =
            devstack::sms_params(&format!("SM{digits}"), &from, "whatsapp:+15005550001", "hello from the benchmark");
        pairs.push(("ProfileName".into(), "Bench".into()));
        Params::from_pairs(pairs)
    }
}

fn webhooks(n: usize, run: &str) -> Vec<Prepared> {
    let url = format!("{PUBLIC_URL}{}", twilio_ingest::WEBHOOK_PATH);
    let mut out: Vec<Prepared> = Vec::with_capacity(n);
    for i in 0..n {
        // One in fifty is a Twilio retry of an earlier message.
        if i % 50 == 49 {
            let earlier = out[i / 2].clone();
            out.push(earlier);
            continue;
        }
        let params = message(i, run);
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(params.pairs()).finish();
        let signature =
            HeaderValue::from_str(&signature::sign(TOKEN, &url, &params)).expect("base64 is a header value");
        let sid = params.get("MessageSid").expect("every message has one").to_owned();
        out.push(Prepared { body: body.into(), signature: Some(signature), sid });
    }
    out
}

/// The baseline's requests: for each message, the one row the naive design would insert, with the
/// same columns and payload the service stores for it.
fn raw_jobs(n: usize, run: &str) -> Vec<Prepared> {
    (0..n)
        .map(|i| {
            let params = message(i, run);
            let sid = params.get("MessageSid").expect("every message has one").to_owned();
            let (source_type, channel) = match params.get("ConversationSid") {
                Some(conversation) => ("group", conversation.to_owned()),
                None => ("dm", params.get("From").expect("a dm has a sender").to_owned()),
            };
            let job = serde_json::json!({
                "message_sid": sid,
                "user_id": phone(i),
                "user_phone": phone(i),
                "source_type": source_type,
                "source_channel_id": channel,
                "content_type": "text",
                "payload": params.to_payload(),
            });
            Prepared { body: job.to_string().into(), signature: None, sid }
        })
        .collect()
}

async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("the target listens");
    stream.set_nodelay(true).unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("an HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender
}

/// Sends one request on `sender` and reads the whole answer; true if it was a success.
async fn send(sender: &mut SendRequest<Full<Bytes>>, target: &Target, request: &Prepared) -> bool {
    let mut builder = hyper::Request::post(target.path.as_str()).header(HOST, "127.0.0.1");
    for (name, value) in &target.headers {
        builder = builder.header(name, value);
    }
    if let Some(signature) = &request.signature {
        builder = builder.header("x-twilio-signature", signature);
    }
    let request = builder.body(Full::new(request.body.clone())).expect("a well-formed request");
    // nginx closes a keep-alive connection after 1,000 requests (keepalive_requests); a client
    // then opens another, and so does this one, inside the request's time.
    if sender.ready().await.is_err() {
        *sender = connect(target.addr).await;
        if sender.ready().await.is_err() {
            return false;
        }
    }
    match sender.send_request(request).await {
        Ok(response) => {
            let ok = response.status().is_success();
            ok & response.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

/// Sends `requests` over `concurrency` keep-alive connections, each taking the next request as
/// soon as it has its answer. Returns the run and the MessageSids that were acknowledged.
async fn drive(
    label: &'static str,
    target: &Target,
    requests: Vec<Prepared>,
    concurrency: usize,
) -> (Run, Vec<String>) {
    let count = requests.len();
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        senders.push(connect(target.addr).await);
    }
    let started = Instant::now();
    let workers = senders.into_iter().map(|mut sender| {
        let (requests, next) = (requests.clone(), next.clone());
        async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = requests.get(i) else { break };
                let t = Instant::now();
                let ok = send(&mut sender, target, request).await;
                done.push((t.elapsed(), ok, i));
            }
            done
        }
    });
    let results: Vec<(Duration, bool, usize)> =
        futures_util::future::join_all(workers).await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|(_, ok, _)| !ok).count();
    assert_eq!(failed, 0, "{label}: {failed} requests failed");
    let latencies = results.iter().map(|(d, _, _)| *d).collect();
    let acked = results.iter().map(|(_, _, i)| requests[*i].sid.clone()).collect();
    (Run { label, count, elapsed, latencies }, acked)
}

/// One request at a time, alternating between the lanes, so each lane's latencies are taken under
/// the same conditions as the others'. The order rotates every round, so no lane always follows
/// the same other one. Returns one run per lane and each lane's acknowledged sids.
async fn interleaved(lanes: Vec<(&'static str, &Target, Vec<Prepared>)>) -> Vec<(Run, Vec<String>)> {
    let mut senders = Vec::new();
    for (_, target, _) in &lanes {
        senders.push(connect(target.addr).await);
    }
    let rounds = lanes.iter().map(|(_, _, r)| r.len()).min().unwrap_or(0);
    let mut latencies = vec![Vec::with_capacity(rounds); lanes.len()];
    for round in 0..rounds {
        for k in 0..lanes.len() {
            let lane = (round + k) % lanes.len();
            let (label, target, requests) = &lanes[lane];
            let t = Instant::now();
            assert!(send(&mut senders[lane], target, &requests[round]).await, "{label}: a request failed");
            latencies[lane].push(t.elapsed());
        }
    }
    lanes
        .into_iter()
        .zip(latencies)
        .map(|((label, _, requests), latencies)| {
            let elapsed = latencies.iter().sum();
            let acked = requests.into_iter().take(rounds).map(|r| r.sid).collect();
            (Run { label, count: rounds, elapsed, latencies }, acked)
        })
        .collect()
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// CPU time (clock ticks) used so far by each kind of process on the machine, and by the machine
/// as a whole (busy, total), so a phase can say where its CPU went and how busy the cores were.
struct Cpu {
    by_process: BTreeMap<&'static str, u64>,
    busy: u64,
    total: u64,
}

impl Cpu {
    fn now() -> Cpu {
        let mut by_process = BTreeMap::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
            let name = &stat[open + 1..close];
            let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            let used: u64 = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
            let group = match name {
                n if n.starts_with("postgrest") => "postgrest",
                n if n.starts_with("postgres") => "postgresql",
                n if n.starts_with("nginx") => "nginx",
                n if n.starts_with("twilio-ingest") => "service",
                n if n.starts_with("throughput") => "load generator",
                _ => continue,
            };
            *by_process.entry(group).or_insert(0) += used;
        }
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let ticks: Vec<u64> =
            stat.lines().next().unwrap().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        let total: u64 = ticks.iter().sum();
        let idle = ticks[3] + ticks.get(4).copied().unwrap_or(0);
        Cpu { by_process, busy: total - idle, total }
    }

    /// Where the CPU went between `self` and `later`, per request of `run`.
    fn since(&self, later: &Cpu, run: &Run) -> String {
        let tick_us = 1_000_000.0 / 100.0;
        let per_request: Vec<String> = later
            .by_process
            .iter()
            .map(|(k, v)| {
                let used = v - self.by_process.get(k).copied().unwrap_or(0);
                format!("{k} {:.0}", used as f64 * tick_us / run.count as f64)
            })
            .collect();
        let busy = 100.0 * (later.busy - self.busy) as f64 / (later.total - self.total).max(1) as f64;
        format!("cores {busy:.0}% busy; CPU µs per request: {}", per_request.join(", "))
    }
}

fn start_service(stack: &Stack, spool: &std::path::Path) -> (Child, u16) {
    let port = free_port();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_twilio-ingest"));
    let child = devstack::service_command(binary, &stack.url(), KeyKind::Secret, spool, port)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    devstack::wait_for_listener(port);
    (child, port)
}

fn stored_once(stack: &Stack, sids: &[String]) {
    let mut distinct = sids.to_vec();
    distinct.sort();
    distinct.dedup();
    let list = distinct.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(",");
    let rows: i64 = stack.query(&format!("select count(*) from jobs where message_sid in ({list})")).unwrap()[0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rows as usize, distinct.len(), "every acknowledged message is one job");
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT MET"
    }
}

fn main() {
    // `cargo test --all-targets` runs bench targets too; only `cargo bench` passes --bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("throughput: skipped (run it with `cargo bench --bench throughput`)");
        return;
    }
    let n: usize = std::env::var("BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let single = (n / 20).clamp(200, 1_000);
    let stack = Stack::start(Grants::None).expect("the stack starts");
    stack
        .execute(&format!(
            "insert into users (phone_number) select '+1555' || lpad(g::text, 7, '0') from generate_series(0, {}) g",
            USERS - 1
        ))
        .unwrap();
    let spool = std::env::temp_dir().join(format!("bench-spool-{}", std::process::id()));
    let (mut service, port) = start_service(&stack, &spool);
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(service.id(), "VmRSS:");

    let key = HeaderValue::from_str(&devstack::jwt("service_role")).unwrap();
    let service_target = Target {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        path: twilio_ingest::WEBHOOK_PATH.to_owned(),
        headers: vec![(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"))],
    };
    let raw_target = Target {
        addr: SocketAddr::from(([127, 0, 0, 1], stack.gateway_port)),
        path: "/rest/v1/jobs".to_owned(),
        headers: vec![
            (HeaderName::from_static("apikey"), key.clone()),
            (
                hyper::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {}", key.to_str().unwrap())).unwrap(),
            ),
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (HeaderName::from_static("prefer"), HeaderValue::from_static("return=minimal")),
        ],
    };

    // The load generator: one thread, which the CPU accounting counts as "load generator".
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (base, svc, single_runs, cpu_base, cpu_svc) = runtime.block_on(async {
        // Warm both paths (connections, PostgREST's schema cache, PostgreSQL's plans).
        drive("warm-up", &raw_target, raw_jobs(500, "W"), CONCURRENCY).await;
        drive("warm-up", &service_target, webhooks(500, "V"), CONCURRENCY).await;
        interleaved(vec![
            ("warm-up", &raw_target, raw_jobs(100, "X")),
            ("warm-up", &service_target, webhooks(100, "Y")),
        ])
        .await;

        let before = Cpu::now();
        let (base, _) = drive("baseline: raw PostgREST", &raw_target, raw_jobs(n.min(10_000), "B"), CONCURRENCY).await;
        let between = Cpu::now();
        let (svc, acked) = drive("service", &service_target, webhooks(n, "S"), CONCURRENCY).await;
        let after = Cpu::now();
        stored_once(&stack, &acked);
        let single_runs = interleaved(vec![
            ("baseline: raw PostgREST, c=1", &raw_target, raw_jobs(single, "C")),
            ("service, c=1", &service_target, webhooks(single, "D")),
        ])
        .await;
        stored_once(&stack, &single_runs[1].1);
        let (cpu_base, cpu_svc) = (before.since(&between, &base), between.since(&after, &svc));
        (base, svc, single_runs, cpu_base, cpu_svc)
    });
    let peak_rss = rss_kib(service.id(), "VmHWM:");
    let cpu_before_drain = Cpu::now();
    let drained = runtime.block_on(drain(&stack));
    let cpu_drain = cpu_before_drain
        .since(&Cpu::now(), &Run { label: "drain", count: drained.jobs, elapsed: drained.elapsed, latencies: vec![] });
    if std::env::var_os("BENCH_METRICS").is_some() {
        let metrics = runtime.block_on(async {
            reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap()
        });
        println!("{metrics}");
    }
    let _ = service.kill();
    let _ = service.wait();
    let _ = std::fs::remove_dir_all(&spool);

    let (base1, svc1) = (&single_runs[0].0, &single_runs[1].0);
    println!(
        "\ntwilio-ingest throughput, {} cores, load generator + service + stack on one machine",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("while measuring the baseline: {cpu_base}");
    println!("while measuring the service:  {cpu_svc}");
    for run in [&base, &svc, base1, svc1] {
        run.print();
    }
    let ratio = svc.throughput() / base.throughput();
    let p99 = ms(svc.pct(0.99));
    let p50_ratio = svc1.pct(0.5).as_secs_f64() / base1.pct(0.5).as_secs_f64();
    let (idle, peak) = (idle_rss as f64 / 1024.0, peak_rss as f64 / 1024.0);
    println!(
        "\nthroughput ratio service/baseline at c={CONCURRENCY}: {ratio:.2}x   (target >= 3.00x: {})",
        verdict(ratio >= 3.0)
    );
    println!("p99 at c={CONCURRENCY}: {p99:.2} ms   (target <= 25 ms: {})", verdict(p99 <= 25.0));
    println!("p50 ratio service/baseline at c=1: {p50_ratio:.3}x   (target <= 1.200x: {})", verdict(p50_ratio <= 1.2));
    println!(
        "service RSS: idle {idle:.1} MiB (target <= 20: {}), peak under load {peak:.1} MiB (target <= 64: {})",
        verdict(idle <= 20.0),
        verdict(peak <= 64.0)
    );
    println!("every acknowledged message is in jobs exactly once: checked");
    let drain_ratio = drained.rate() / svc.throughput();
    println!("\nwhile draining: {cpu_drain} (per job)");
    println!(
        "drain round trips: {} claims (mean {:.2} ms, {:.1} jobs each), {} completions (mean {:.2} ms)",
        drained.claims,
        drained.claim_time.as_secs_f64() * 1000.0 / drained.claims.max(1) as f64,
        drained.jobs as f64 / drained.claims.max(1) as f64,
        drained.completions,
        drained.complete_time.as_secs_f64() * 1000.0 / drained.completions.max(1) as f64
    );
    println!(
        "\nqueue drain: {WORKERS} workers claiming {CLAIM_BATCH} at a time through PostgREST: {} jobs in {:.2} s, {:.0} jobs/s \
         ({} channels, each in arrival order: checked)",
        drained.jobs,
        drained.elapsed.as_secs_f64(),
        drained.rate(),
        drained.channels
    );
    println!(
        "drain/ingest ratio: {drain_ratio:.2}x  (drain {:.0} jobs/s vs service ingest {:.0} msg/s at c={CONCURRENCY}; target >= 1.00x: {})",
        drained.rate(),
        svc.throughput(),
        verdict(drain_ratio >= 1.0)
    );
}

/// What the drain phase measured.
struct Drained {
    jobs: usize,
    channels: usize,
    elapsed: Duration,
    /// Claims that returned jobs, and the time all claims took.
    claims: usize,
    claim_time: Duration,
    completions: usize,
    complete_time: Duration,
}

impl Drained {
    fn rate(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64()
    }
}

/// Drains every pending job with `WORKERS` concurrent workers, each looping claim_jobs ->
/// complete_jobs through the gateway as a supabase-js worker would. Each claimed job must be the
/// next of its channel in arrival order; the run panics if one is not.
async fn drain(stack: &Stack) -> Drained {
    use std::collections::HashMap;
    use std::sync::Mutex;

    let total: usize = stack.query("select count(*) from jobs where status = 'pending'").unwrap()[0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    // Each channel's jobs in arrival order, to check the claims against.
    let rows = stack
        .query("select source_channel_id || ' ' || id from jobs where status = 'pending' order by received_at, id")
        .unwrap();
    let mut expected: HashMap<String, std::collections::VecDeque<String>> = HashMap::new();
    for row in rows.into_iter().flatten() {
        let (channel, id) = row.split_once(' ').unwrap();
        expected.entry(channel.to_owned()).or_default().push_back(id.to_owned());
    }
    let channels = expected.len();
    let expected = Arc::new(Mutex::new(expected));
    let done = Arc::new(AtomicUsize::new(0));
    let timings = Arc::new(Mutex::new((0usize, Duration::ZERO, 0usize, Duration::ZERO)));
    let client = reqwest::Client::builder().pool_max_idle_per_host(WORKERS).tcp_nodelay(true).build().unwrap();
    let key = KeyKind::Secret.service_key();
    let url = stack.url();
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (client, key, url, expected, done) =
                (client.clone(), key.clone(), url.clone(), expected.clone(), done.clone());
            let timings = timings.clone();
            tokio::spawn(async move {
                let worker = format!("bench-{w}");
                // One RPC through the gateway, its JSON answer decoded.
                let rpc = |function: &'static str, args: serde_json::Value| {
                    let request =
                        client.post(format!("{url}/rest/v1/rpc/{function}")).header("apikey", &key).json(&args);
                    async move { request.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
                };
                while done.load(Ordering::SeqCst) < total {
                    let claim_started = Instant::now();
                    let claimed =
                        rpc("claim_jobs", serde_json::json!({"worker": worker, "max_jobs": CLAIM_BATCH})).await;
                    let claimed = claimed.as_array().expect("claim_jobs answers an array");
                    timings.lock().unwrap().1 += claim_started.elapsed();
                    if claimed.is_empty() {
                        // Nothing's turn has come: the rest wait behind jobs in flight. Polling
                        // again at once would only take CPU from the workers finishing those.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    timings.lock().unwrap().0 += 1;
                    {
                        let mut expected = expected.lock().unwrap();
                        for job in claimed {
                            let channel = job["source_channel_id"].as_str().unwrap();
                            let next = expected.get_mut(channel).and_then(|q| q.pop_front());
                            assert_eq!(next.as_deref(), job["id"].as_str(), "channel {channel} out of arrival order");
                        }
                    }
                    let ids: Vec<serde_json::Value> =
                        claimed.iter().map(|j| serde_json::json!({"id": j["id"]})).collect();
                    let complete_started = Instant::now();
                    let completed = rpc("complete_jobs", serde_json::json!({"worker": worker, "jobs": ids})).await;
                    let completed = completed.as_array().expect("complete_jobs answers an array");
                    assert_eq!(completed.len(), claimed.len(), "a claimed job was not completed");
                    {
                        let mut t = timings.lock().unwrap();
                        t.2 += 1;
                        t.3 += complete_started.elapsed();
                    }
                    done.fetch_add(completed.len(), Ordering::SeqCst);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = started.elapsed();
    let left = stack.query("select count(*) from jobs where status <> 'complete'").unwrap();
    assert_eq!(left[0].as_deref(), Some("0"), "jobs left after the drain");
    let (claims, claim_time, completions, complete_time) = *timings.lock().unwrap();
    Drained { jobs: total, channels, elapsed, claims, claim_time, completions, complete_time }
}
