use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use twilio_ingest::{dlq, operator, supabase::Supabase, telemetry, Application, Config, WEBHOOK_PATH};

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
    /// Ask the service running on this machine whether it is ready (its operations port's
    /// /readyz), print the answer, and exit 0 only if it is.
    Readyz,
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
        #[arg(long = "id", value_name = "ID", value_parser = uuid_arg)]
        ids: Vec<uuid::Uuid>,
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
    /// tried again go first, so those that keep failing never hide newer ones. Exits 1 while any
    /// still fails.
    Replay {
        /// How many to try, 1 to 10000.
        #[arg(long, default_value_t = 1000, value_parser = limit)]
        limit: usize,
    },
    /// Delete dead letters that will never become jobs, so that `dlq list` can reach zero. Letters
    /// already replayed are kept.
    Discard {
        /// A dead letter's id; repeat for several.
        #[arg(long = "id", value_name = "ID", value_parser = uuid_arg, required_unless_present = "unusable")]
        ids: Vec<uuid::Uuid>,
        /// Every unusable letter (no sender, a malformed SID...): nothing can make a job of them.
        #[arg(long)]
        unusable: bool,
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

/// A command used wrongly: exits 2, as clap's own usage errors do; any other failure exits 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("twilio-ingest: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    let serving = matches!(command, Command::Serve);
    // The service logs as configured (JSON on Fly). A command is run by a person, whose output on
    // stdout must not be mixed with JSON lines: its logs are text, on stderr.
    telemetry::init_logging(if serving { config.log_format } else { twilio_ingest::config::LogFormat::Pretty });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let result = runtime.block_on(async move {
        if serving {
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
        Err(e) if e.is::<Usage>() => {
            let _ = Cli::command().error(clap::error::ErrorKind::ArgumentConflict, e).print();
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("twilio-ingest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn operate(config: &Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(config).await,
        Command::Check => check(config).await,
        Command::Sign(sample) => {
            let signed = signed_sample(config, &sample);
            let mut curl = format!("curl -sS -X POST '{}' -H 'X-Twilio-Signature: {}'", signed.url, signed.signature);
            if let Some(settings) = &signed.settings {
                curl.push_str(&format!(" -H 'X-Twilio-Webhooks-Signature-Settings: {settings}'"));
            }
            for (k, v) in signed.params.pairs() {
                curl.push_str(&format!(" --data-urlencode '{k}={}'", v.replace('\'', r"'\''")));
            }
            println!("{curl}");
            Ok(())
        }
        Command::Send { sample, target } => send(config, &sample, target).await,
        Command::Dlq(command) => dlq_command(config, command).await,
        Command::Jobs(command) => jobs_command(config, command).await,
        Command::Spool(command) => spool_command(config, command).await,
        Command::Readyz => readyz(config).await,
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

async fn check(config: &Config) -> anyhow::Result<()> {
    let report = operator::check(config).await;
    for line in &report.lines {
        println!("{line}");
    }
    if report.problems > 0 {
        anyhow::bail!("{} problem(s) found", report.problems);
    }
    Ok(())
}

fn signed_sample(config: &Config, sample: &SampleArgs) -> operator::SignedSample {
    let kind = match sample.kind {
        SampleKind::Dm => operator::SampleKind::Dm,
        SampleKind::Group => operator::SampleKind::Group,
    };
    let message = operator::Sample {
        kind,
        from: sample.from.clone(),
        body: sample.body.clone(),
        profile_name: sample.profile_name.clone(),
        message_sid: sample.message_sid.clone(),
    };
    operator::signed_sample(config, &message)
}

async fn send(config: &Config, sample: &SampleArgs, target: Option<String>) -> anyhow::Result<()> {
    let signed = signed_sample(config, sample);
    let target = target.unwrap_or_else(|| format!("http://127.0.0.1:{}{WEBHOOK_PATH}", config.port));
    let (status, answer) = operator::send(&target, &signed).await?;
    println!("{} {status}: {}", signed.params.get("MessageSid").unwrap_or_default(), answer.trim());
    if !status.is_success() {
        anyhow::bail!("the service answered {status}");
    }
    Ok(())
}

async fn readyz(config: &Config) -> anyhow::Result<()> {
    let (ready, answer) = operator::readyz(config).await?;
    print!("{answer}");
    if !ready {
        anyhow::bail!("not ready");
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
            if !report.still_failing.is_empty() {
                anyhow::bail!("{} dead letter(s) still fail", report.still_failing.len());
            }
        }
        DlqCommand::Discard { ids, unusable } => {
            let discarded = dlq::discard(&supabase, &ids, unusable).await?;
            println!("discarded {discarded} dead letter(s)");
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
                return Err(
                    Usage("say which failed jobs to retry: --id ID, --failed-since TIME, or --all".into()).into()
                );
            }
            let ids = ids.iter().map(uuid::Uuid::to_string).collect();
            let selection = twilio_ingest::jobs::RetrySelection { ids, failed_since };
            let requeued = twilio_ingest::jobs::retry(&supabase, &selection).await?;
            println!("requeued {requeued} failed job(s)");
        }
    }
    Ok(())
}

/// `--id`: a uuid, checked before anything is sent.
fn uuid_arg(text: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(text.trim()).map_err(|_| format!("{text:?} is not an id (a uuid)"))
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
