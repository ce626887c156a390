//! `devstack`: brings up the local Supabase-like stack and runs a command against it.
//!
//! The command gets SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY and DATABASE_URL; without one,
//! devstack prints them and waits for Ctrl-C. The stack stops when devstack does.

use std::process::{Command, ExitCode};

use clap::Parser;
use devstack::{Grants, KeyKind, Stack};

#[derive(Parser)]
#[command(about = "Brings up a local Supabase-like stack and runs a command against it")]
struct Args {
    /// Give the command the `sb_secret_…` key instead of the legacy service_role JWT.
    #[arg(long)]
    secret_key: bool,
    /// No default privileges on `public`, as on projects created since mid-2026.
    #[arg(long)]
    no_default_grants: bool,
    /// Push supabase/seed.sql after the migrations, as `supabase db reset` does locally.
    #[arg(long)]
    seed: bool,
    /// The gateway's port (SUPABASE_URL); a free one if not given.
    #[arg(long)]
    gateway_port: Option<u16>,
    /// PostgreSQL's port (DATABASE_URL); a free one if not given.
    #[arg(long)]
    db_port: Option<u16>,
    /// The command to run once the stack is up, and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let key = if args.secret_key { KeyKind::Secret } else { KeyKind::LegacyJwt };
    let grants = if args.no_default_grants { Grants::None } else { Grants::Default };

    eprintln!("devstack: starting PostgreSQL, PostgREST and the gateway...");
    let started = Stack::start_on(
        grants,
        args.gateway_port.unwrap_or_else(devstack::free_port),
        args.db_port.unwrap_or_else(devstack::free_port),
    )
    .and_then(|stack| {
        if args.seed {
            stack.push_migrations(&devstack::repo_root(), true)?;
        }
        Ok(stack)
    });
    let stack = match started {
        Ok(stack) => stack,
        Err(e) => {
            eprintln!("devstack: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let env = [
        ("SUPABASE_URL", stack.url()),
        ("SUPABASE_SERVICE_ROLE_KEY", key.service_key()),
        ("DATABASE_URL", stack.database_url()),
    ];
    eprintln!(
        "devstack: ready at {} (database on port {}, {:?} key, {:?} grants)",
        stack.url(),
        stack.pg_port,
        key,
        grants
    );

    let Some((program, rest)) = args.command.split_first() else {
        for (k, v) in &env {
            println!("export {k}='{v}'");
        }
        eprintln!("devstack: press Ctrl-C to stop");
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = ctrlc_channel(tx);
        let _ = rx.recv();
        return ExitCode::SUCCESS;
    };
    let status = Command::new(program).args(rest).envs(env).status();
    drop(stack);
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().unwrap_or(1) as u8),
        Err(e) => {
            eprintln!("devstack: cannot run {program}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Waits for SIGINT or SIGTERM on a small runtime and reports it on `tx`.
fn ctrlc_channel(tx: std::sync::mpsc::Sender<()>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
            tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
        });
        let _ = tx.send(());
    });
    Ok(())
}
