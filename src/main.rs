use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use secrecy::ExposeSecret;

use twilio_ingest::twilio::{signature, Params};
use twilio_ingest::{dlq, supabase::Supabase, telemetry, Application, Config, WEBHOOK_PATH};

/// Receives Twilio webhooks and turns each inbound message into a job row in Supabase.
///
/// Configuration comes from the environment (TWILIO_AUTH_TOKEN, PUBLIC_URL, SUPABASE_URL,
/// SUPABASE_SERVICE_ROLE_KEY, SPOOL_DIR, ...); see the README.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Check the configuration and that Supabase answers with the key and has the tables.
    Check,
    /// Print a signed sample webhook as a curl command, for local testing.
    Sign(SampleArgs),
    /// Sign a sample webhook and POST it to the running service.
    Send {
        #[command(flatten)]
        sample: SampleArgs,
        /// Where to send it; defaults to the service on this machine.
        #[arg(long)]
        target: Option<String>,
    },
    /// Inspect and re-drive dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Inspect the job queue and requeue failed jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Inspect and drain this machine's spool (SPOOL_DIR).
    #[command(subcommand)]
    Spool(SpoolCommand),
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// What waits in the spool: records, the oldest, segments, bytes, damage.
    Status,
    /// Replay the spool into Supabase until it is empty or the deadline passes, and say what is
    /// left. Run it before scaling down or destroying a volume.
    Drain {
        /// How long to keep trying (30s, 5m, 1h).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        deadline: Duration,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Jobs by source type and status, and how long the oldest pending job has waited.
    Stats,
    /// Put failed jobs back to pending, with their attempts reset.
    Retry {
        /// A failed job's id; repeat for several.
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
        /// Jobs that failed since this time (2026-11-24T10:00:00Z) or this long ago (2h).
        #[arg(long, value_name = "TIME", value_parser = twilio_ingest::jobs::parse_since)]
        failed_since: Option<String>,
        /// Every failed job; needed when neither --id nor --failed-since is given.
        #[arg(long, conflicts_with_all = ["ids", "failed_since"])]
        all: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters not yet replayed, oldest first.
    List {
        /// How many to show, 1 to 10000.
        #[arg(long, default_value_t = 50, value_parser = limit)]
        limit: usize,
    },
    /// Re-drive dead letters into jobs once their cause is fixed; safe to run twice. Letters never
    /// tried again go first, so those that keep failing never hide newer ones.
    Replay {
        /// How many to try, 1 to 10000.
        #[arg(long, default_value_t = 1000, value_parser = limit)]
        limit: usize,
    },
}

#[derive(clap::Args)]
struct SampleArgs {
    /// A Messaging webhook (dm) or a Conversations onMessageAdded webhook (group).
    #[arg(long, value_enum, default_value_t = SampleKind::Dm)]
    kind: SampleKind,
    /// The sender, E.164; prefix with whatsapp: for a WhatsApp message.
    #[arg(long, default_value = "+15005550006")]
    from: String,
    #[arg(long, default_value = "Hello from twilio-ingest")]
    body: String,
    /// WhatsApp profile name, which becomes the user's first name.
    #[arg(long)]
    profile_name: Option<String>,
    /// The MessageSid; a fresh one if not given. Send the same one twice to see deduplication.
    #[arg(long)]
    message_sid: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SampleKind {
    Dm,
    Group,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("twilio-ingest: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let result = runtime.block_on(async move {
        let command = cli.command.unwrap_or(Command::Serve);
        if matches!(command, Command::Serve) {
            // The service drains on the signal itself (see run_until).
            return serve(&config).await;
        }
        // An operator command must stop on Ctrl-C or `docker stop` too, even as PID 1 (where the
        // kernel ignores signals that have no handler).
        tokio::select! {
            result = operate(&config, command) => result,
            () = twilio_ingest::shutdown_signal() => anyhow::bail!("interrupted"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twilio-ingest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn operate(config: &Config, command: Command) -> anyhow::Result<()> {
    let config = config.clone();
    {
        match command {
            Command::Serve => serve(&config).await,
            Command::Check => check(&config).await,
            Command::Sign(sample) => {
                let (url, params, sig) = signed_sample(&config, &sample);
                let mut curl = format!("curl -sS -X POST '{url}' -H 'X-Twilio-Signature: {sig}'");
                for (k, v) in params.pairs() {
                    curl.push_str(&format!(" --data-urlencode '{k}={}'", v.replace('\'', r"'\''")));
                }
                println!("{curl}");
                Ok(())
            }
            Command::Send { sample, target } => send(&config, &sample, target).await,
            Command::Dlq(command) => dlq_command(&config, command).await,
            Command::Jobs(command) => jobs_command(&config, command).await,
            Command::Spool(command) => spool_command(&config, command).await,
        }
    }
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    tracing::info!(
        addr = %app.local_addr(),
        webhook = %config.public_url.join(WEBHOOK_PATH),
        key = config.service_key.kind(),
        "twilio-ingest listening"
    );
    app.run_until(twilio_ingest::shutdown_signal()).await?;
    Ok(())
}

const PUSH_HINT: &str = "push the migrations: `supabase link --project-ref <ref>` then `supabase db push --remote`";

async fn check(config: &Config) -> anyhow::Result<()> {
    println!(
        "configuration: ok ({} key, webhook URL {})",
        config.service_key.kind(),
        config.public_url.join(WEBHOOK_PATH)
    );
    let supabase = Supabase::new(&config.supabase_url, &config.service_key);
    let mut problems = 0;
    match supabase.probe(Duration::from_secs(10)).await {
        Ok(()) => println!("supabase: ok (users, jobs and dlq_jobs are readable; ingest_batch and ingest_jobs answer)"),
        Err((what, e)) => {
            problems += 1;
            println!("supabase: PROBLEM with {what}: {e}");
            println!("  {}", e.hint());
        }
    }
    match supabase.schema_report(Duration::from_secs(10)).await {
        Ok(tables) if tables.len() == 3 => {
            let found: Vec<String> = tables.iter().flat_map(|t| t.problems()).collect();
            if found.is_empty() {
                println!("security: ok (RLS on, service_role granted, anon and authenticated granted nothing)");
            }
            for problem in &found {
                println!("security: PROBLEM: {problem}");
            }
            problems += found.len();
        }
        Ok(tables) => {
            problems += 1;
            println!("security: PROBLEM: expected 3 tables, found {}; {}", tables.len(), PUSH_HINT);
        }
        Err(e) => {
            problems += 1;
            println!("security: PROBLEM: cannot read the schema report ({e}); {}", e.hint());
        }
    }
    match supabase.function_report(Duration::from_secs(10)).await {
        Ok(functions) => {
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
                println!("security: ok ({} functions, none executable by anon or authenticated)", functions.len());
            }
            for problem in &open {
                println!("security: PROBLEM: {problem}");
            }
            problems += open.len();
        }
        Err(e) => {
            problems += 1;
            println!("security: PROBLEM: cannot read the function report ({e}); {}", e.hint());
        }
    }
    // The very calls batches make, with nothing in them: proves the functions are there and the
    // key may run them, through the gateway, the way the service will. Both are reported, where
    // the probe above stops at the first failure.
    let timeout = Duration::from_secs(10);
    let ingest = [
        ("ingest_batch", supabase.ingest_batch(&[], timeout).await),
        ("ingest_jobs", supabase.ingest_jobs(&[], timeout).await),
    ];
    let failed: Vec<String> =
        ingest.iter().filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name} ({e})"))).collect();
    if failed.is_empty() {
        println!("ingest: ok (ingest_batch and ingest_jobs answer)");
    } else {
        problems += 1;
        let hint = ingest.iter().find_map(|(_, r)| r.as_ref().err()).map_or("", |e| e.hint());
        println!("ingest: PROBLEM: cannot call {}; {hint}", failed.join(", "));
    }
    // Read without taking the spool from a service that may be running on this machine.
    let spool = twilio_ingest::spool::health(&config.spool_dir).and_then(|()| {
        twilio_ingest::spool::status(&config.spool_dir)
            .map_err(|e| format!("SPOOL_DIR {}: {e}", config.spool_dir.display()))
    });
    match spool {
        Ok(status) => {
            println!("spool: ok ({} waiting in {}, writable, room to spare)", status.depth, config.spool_dir.display())
        }
        Err(why) => {
            problems += 1;
            println!("spool: PROBLEM: {why}");
        }
    }
    if problems > 0 {
        anyhow::bail!("{problems} problem(s) found");
    }
    Ok(())
}

fn signed_sample(config: &Config, sample: &SampleArgs) -> (String, Params, String) {
    let sid = sample.message_sid.clone().unwrap_or_else(|| {
        let prefix = match sample.kind {
            SampleKind::Dm => "SM",
            SampleKind::Group => "IM",
        };
        format!("{prefix}{}", uuid::Uuid::new_v4().simple())
    });
    let (secret, account) = config.credentials.sample_signer();
    let mut pairs: Vec<(String, String)> = match sample.kind {
        SampleKind::Dm => vec![
            ("MessageSid".into(), sid.clone()),
            ("SmsMessageSid".into(), sid.clone()),
            ("SmsSid".into(), sid),
            ("AccountSid".into(), account),
            ("From".into(), sample.from.clone()),
            ("To".into(), "+15005550001".into()),
            ("Body".into(), sample.body.clone()),
            ("NumMedia".into(), "0".into()),
            ("NumSegments".into(), "1".into()),
            ("SmsStatus".into(), "received".into()),
            ("ApiVersion".into(), "2010-04-01".into()),
        ],
        SampleKind::Group => vec![
            ("EventType".into(), "onMessageAdded".into()),
            ("ConversationSid".into(), "CH00000000000000000000000000000000".into()),
            ("MessageSid".into(), sid),
            ("AccountSid".into(), account),
            ("Author".into(), sample.from.clone()),
            ("Body".into(), sample.body.clone()),
            ("Index".into(), "0".into()),
            ("Source".into(), "SMS".into()),
            ("RetryCount".into(), "0".into()),
        ],
    };
    if let Some(name) = &sample.profile_name {
        pairs.push(("ProfileName".into(), name.clone()));
    }
    let params = Params::from_pairs(pairs);
    let url = config.public_url.join(WEBHOOK_PATH);
    let sig = signature::sign(secret.expose_secret(), &url, &params);
    (url, params, sig)
}

async fn send(config: &Config, sample: &SampleArgs, target: Option<String>) -> anyhow::Result<()> {
    let (_, params, sig) = signed_sample(config, sample);
    let target = target.unwrap_or_else(|| format!("http://127.0.0.1:{}{WEBHOOK_PATH}", config.port));
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(params.pairs()).finish();
    let response = reqwest::Client::new()
        .post(&target)
        .header("X-Twilio-Signature", sig)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    println!("{} {status}: {}", params.get("MessageSid").unwrap_or_default(), response.text().await?.trim());
    if !status.is_success() {
        anyhow::bail!("the service answered {status}");
    }
    Ok(())
}

async fn dlq_command(config: &Config, command: DlqCommand) -> anyhow::Result<()> {
    let supabase = Supabase::new(&config.supabase_url, &config.service_key);
    match command {
        DlqCommand::List { limit } => {
            let (letters, waiting) = dlq::pending(&supabase, limit).await?;
            for l in &letters {
                println!(
                    "{}  {}  {:<11}  {}  {}{}",
                    l.id,
                    l.created_at,
                    l.error_kind,
                    l.message_sid.as_deref().unwrap_or("-"),
                    l.error,
                    l.replay_error.as_deref().map(|e| format!("  (last replay: {e})")).unwrap_or_default()
                );
            }
            println!(
                "{waiting} dead letter(s) waiting{}",
                if waiting > letters.len() as u64 {
                    format!(", the oldest {} shown", letters.len())
                } else {
                    String::new()
                }
            );
        }
        DlqCommand::Replay { limit } => {
            let report = dlq::replay(&supabase, limit).await?;
            for (id, why) in &report.still_failing {
                println!("still failing: {id}: {why}");
            }
            println!("replayed {}, still failing {}", report.replayed.len(), report.still_failing.len());
        }
    }
    Ok(())
}

async fn jobs_command(config: &Config, command: JobsCommand) -> anyhow::Result<()> {
    let supabase = Supabase::new(&config.supabase_url, &config.service_key);
    match command {
        JobsCommand::Stats => println!("{}", twilio_ingest::jobs::stats(&supabase).await?),
        JobsCommand::Retry { ids, failed_since, all } => {
            if ids.is_empty() && failed_since.is_none() && !all {
                anyhow::bail!("say which failed jobs to retry: --id ID, --failed-since TIME, or --all");
            }
            let selection = twilio_ingest::jobs::RetrySelection { ids, failed_since };
            let requeued = twilio_ingest::jobs::retry(&supabase, &selection).await?;
            println!("requeued {requeued} failed job(s)");
        }
    }
    Ok(())
}

/// `--limit`: a count from 1 to 10,000.
fn limit(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err(format!("{text:?} is not a number from 1 to 10000")),
    }
}

async fn spool_command(config: &Config, command: SpoolCommand) -> anyhow::Result<()> {
    let dir = config.spool_dir.display();
    match command {
        SpoolCommand::Status => {
            let status = twilio_ingest::spool::status(&config.spool_dir)?;
            println!(
                "spool {dir}: {} record(s) waiting in {} segment(s), {} bytes",
                status.depth, status.segments, status.bytes
            );
            if status.damaged_bytes > 0 {
                println!("damaged: {} bytes, to be moved to {dir}/quarantine/ on replay", status.damaged_bytes);
            }
            match status.oldest.as_deref().map(twilio_ingest::ingest::describe_spool_record) {
                Some(oldest) => println!("oldest: {oldest}"),
                None => println!("oldest: none waiting"),
            }
        }
        SpoolCommand::Drain { deadline } => {
            let drained = twilio_ingest::drain_spool(config, deadline).await?;
            let who = if drained.by_this_process { "replayed here" } else { "the running service replays it; watched" };
            if drained.remaining == 0 {
                println!("spool {dir}: empty ({who})");
            } else {
                let why = drained.last_stall.map(|s| format!("; last stall: {s}")).unwrap_or_default();
                anyhow::bail!("spool {dir}: {} record(s) left after {deadline:?} ({who}){why}", drained.remaining);
            }
        }
    }
    Ok(())
}
