//! Throughput and latency of twilio-ingest against the raw PostgREST ceiling, in one run on one
//! stack: `cargo bench --bench throughput` (BENCH_MESSAGES=N to change the default 20,000).
//!
//! Baseline: one-row `POST /rest/v1/jobs` through the gateway, the cost of the naive design.
//! Service: distinct signed webhooks (80% dm, 20% group, 1,000 users, some repeated MessageSids)
//! through the release binary. Both at concurrency 32, then at 1. Every acknowledged message is
//! checked to be in the database exactly once, so a fast wrong run cannot pass.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use devstack::{free_port, Grants, KeyKind, Stack};
use futures_util::StreamExt as _;
use twilio_ingest::twilio::{signature, Params};

const TOKEN: &str = "7c8a2c5e0b1d4f3a9e6b8d2c1f0a3e5b";
const PUBLIC_URL: &str = "https://ingest.example.com";
const USERS: usize = 1_000;
const CONCURRENCY: usize = 32;

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
            "{:<28} {:>7} req  {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
            self.label,
            self.count,
            self.throughput(),
            ms(self.pct(0.50)),
            ms(self.pct(0.99)),
            ms(*self.latencies.iter().max().unwrap())
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn phone(i: usize) -> String {
    format!("+1555{:07}", i % USERS)
}

/// A request ready to send: body and headers built before the clock starts.
#[derive(Clone)]
struct Prepared {
    body: String,
    signature: Option<String>,
    sid: String,
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
        let sid = format!("SM{run}{i:026}");
        let params = if i % 5 == 4 {
            Params::from_pairs([
                ("EventType", "onMessageAdded".to_owned()),
                ("ConversationSid", format!("CH{:032}", i % 50)),
                ("MessageSid", sid.clone()),
                ("AccountSid", "AC00000000000000000000000000000000".to_owned()),
                ("Author", phone(i)),
                ("Body", "group message from the benchmark".to_owned()),
                ("Index", i.to_string()),
                ("Source", "SMS".to_owned()),
            ])
        } else {
            Params::from_pairs([
                ("MessageSid", sid.clone()),
                ("SmsMessageSid", sid.clone()),
                ("AccountSid", "AC00000000000000000000000000000000".to_owned()),
                ("From", format!("whatsapp:{}", phone(i))),
                ("To", "whatsapp:+15005550001".to_owned()),
                ("Body", "hello from the benchmark".to_owned()),
                ("ProfileName", "Bench".to_owned()),
                ("NumMedia", "0".to_owned()),
                ("SmsStatus", "received".to_owned()),
            ])
        };
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(params.pairs()).finish();
        out.push(Prepared { signature: Some(signature::sign(TOKEN, &url, &params)), body, sid });
    }
    out
}

fn raw_jobs(n: usize, run: &str) -> Vec<Prepared> {
    (0..n)
        .map(|i| {
            let sid = format!("SM{run}{i:026}");
            let p = phone(i);
            let body = format!(
                r#"{{"message_sid":"{sid}","user_id":"{p}","user_phone":"{p}","source_type":"dm","source_channel_id":"{p}","content_type":"text","payload":{{"MessageSid":"{sid}","From":"{p}","Body":"hello from the benchmark"}}}}"#
            );
            Prepared { body, signature: None, sid }
        })
        .collect()
}

async fn drive(label: &'static str, url: &str, requests: Vec<Prepared>, concurrency: usize, raw_key: Option<&str>) -> (Run, Vec<String>) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).tcp_nodelay(true).build().unwrap();
    let count = requests.len();
    let started = Instant::now();
    let results: Vec<(Duration, bool, String)> = futures_util::stream::iter(requests)
        .map(|r| {
            let client = client.clone();
            let url = url.to_owned();
            let raw_key = raw_key.map(str::to_owned);
            async move {
                let mut request = client.post(&url).body(r.body);
                request = match (&r.signature, raw_key) {
                    (Some(sig), _) => request
                        .header("X-Twilio-Signature", sig)
                        .header("Content-Type", "application/x-www-form-urlencoded"),
                    (None, Some(key)) => request
                        .header("apikey", &key)
                        .bearer_auth(&key)
                        .header("Content-Type", "application/json")
                        .header("Prefer", "return=minimal"),
                    (None, None) => unreachable!(),
                };
                let t = Instant::now();
                let ok = request.send().await.map(|resp| resp.status().is_success()).unwrap_or(false);
                (t.elapsed(), ok, r.sid)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|(_, ok, _)| !ok).count();
    assert_eq!(failed, 0, "{label}: {failed} requests failed");
    let latencies = results.iter().map(|(d, _, _)| *d).collect();
    let acked = results.into_iter().map(|(_, _, sid)| sid).collect();
    (Run { label, count, elapsed, latencies }, acked)
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

/// CPU time (clock ticks) used so far by each kind of process on the machine, by command name.
fn cpu_by_process() -> std::collections::BTreeMap<String, u64> {
    let mut ticks = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let used: u64 = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        let group = match name.as_str() {
            n if n.starts_with("postgrest") => "postgrest",
            n if n.starts_with("postgres") => "postgresql",
            n if n.starts_with("nginx") => "nginx",
            n if n.starts_with("twilio-ingest") => "service",
            n if n.starts_with("throughput") => "load generator",
            _ => continue,
        };
        *ticks.entry(group.to_owned()).or_insert(0) += used;
    }
    ticks
}

fn cpu_share(before: &std::collections::BTreeMap<String, u64>, after: &std::collections::BTreeMap<String, u64>) -> String {
    let used: Vec<(String, u64)> = after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0))).collect();
    let total: u64 = used.iter().map(|(_, v)| v).sum::<u64>().max(1);
    used.iter().map(|(k, v)| format!("{k} {:.0}%", 100.0 * *v as f64 / total as f64)).collect::<Vec<_>>().join(", ")
}

fn start_service(stack: &Stack, spool: &std::path::Path) -> (Child, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_twilio-ingest"))
        .env_clear()
        .env("TWILIO_AUTH_TOKEN", TOKEN)
        .env("PUBLIC_URL", PUBLIC_URL)
        .env("SUPABASE_URL", stack.url())
        .env("SUPABASE_SERVICE_ROLE_KEY", KeyKind::Secret.service_key())
        .env("SPOOL_DIR", spool)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let service_url = format!("http://127.0.0.1:{port}{}", twilio_ingest::WEBHOOK_PATH);
    let raw_url = format!("{}/rest/v1/jobs", stack.url());
    let key = devstack::jwt("service_role");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (base, svc, base1, svc1) = runtime.block_on(async {
        // Warm both paths (connections, PostgREST's schema cache, PostgreSQL's plans).
        drive("warm-up", &raw_url, raw_jobs(500, "W"), CONCURRENCY, Some(&key)).await;
        drive("warm-up", &service_url, webhooks(500, "V"), CONCURRENCY, None).await;

        let before = cpu_by_process();
        let (base, _) = drive("baseline: raw PostgREST", &raw_url, raw_jobs(n.min(10_000), "B"), CONCURRENCY, Some(&key)).await;
        let between = cpu_by_process();
        let (svc, acked) = drive("service", &service_url, webhooks(n, "S"), CONCURRENCY, None).await;
        let after = cpu_by_process();
        println!("CPU while measuring the baseline: {}", cpu_share(&before, &between));
        println!("CPU while measuring the service:  {}", cpu_share(&between, &after));
        stored_once(&stack, &acked);
        let (base1, _) = drive("baseline: raw PostgREST, c=1", &raw_url, raw_jobs(single, "C"), 1, Some(&key)).await;
        let (svc1, acked1) = drive("service, c=1", &service_url, webhooks(single, "D"), 1, None).await;
        stored_once(&stack, &acked1);
        (base, svc, base1, svc1)
    });
    let peak_rss = rss_kib(service.id(), "VmHWM:");
    if std::env::var_os("BENCH_METRICS").is_some() {
        let metrics = runtime.block_on(async {
            reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap()
        });
        println!("{metrics}");
    }
    let _ = service.kill();
    let _ = service.wait();
    let _ = std::fs::remove_dir_all(&spool);

    println!("\ntwilio-ingest throughput, {} cores, load generator + service + stack on one machine", std::thread::available_parallelism().map_or(0, |n| n.get()));
    for run in [&base, &svc, &base1, &svc1] {
        run.print();
    }
    let ratio = svc.throughput() / base.throughput();
    let p50_ratio = svc1.pct(0.5).as_secs_f64() / base1.pct(0.5).as_secs_f64();
    println!("\nthroughput ratio service/baseline at c={CONCURRENCY}: {ratio:.2}x   (target >= 3.00x)");
    println!("p99 at c={CONCURRENCY}: {:.2} ms   (target <= 25 ms)", ms(svc.pct(0.99)));
    println!("p50 ratio service/baseline at c=1: {p50_ratio:.2}x   (target <= 1.20x)");
    println!("service RSS: idle {:.1} MiB (target <= 20), peak under load {:.1} MiB (target <= 64)", idle_rss as f64 / 1024.0, peak_rss as f64 / 1024.0);
    println!("every acknowledged message is in jobs exactly once: checked");
}
