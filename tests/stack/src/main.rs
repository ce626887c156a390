//! `devstack`: brings up the local Supabase-like stack and runs a command against it.
//!
//! Usage: devstack [--secret-key] [--no-default-grants] [--gateway-port N] [--db-port N] [-- COMMAND ARGS...]
//! The command gets SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY and DATABASE_URL; without one,
//! devstack prints them and waits for Ctrl-C. The stack stops when devstack does.

use std::process::{Command, ExitCode};

use devstack::{Grants, KeyKind, Stack};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let (flags, command) = args.split_at(split);
    let command = command.get(1..).unwrap_or_default();
    let key = if flags.iter().any(|f| f == "--secret-key") { KeyKind::Secret } else { KeyKind::LegacyJwt };
    let grants = if flags.iter().any(|f| f == "--no-default-grants") { Grants::None } else { Grants::Default };
    let mut gateway_port = None;
    let mut db_port = None;
    let mut rest = flags.iter();
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            "--secret-key" | "--no-default-grants" => {}
            "--gateway-port" => gateway_port = rest.next().and_then(|p| p.parse::<u16>().ok()),
            "--db-port" => db_port = rest.next().and_then(|p| p.parse::<u16>().ok()),
            unknown => {
                eprintln!("devstack: unknown flag {unknown}\nusage: devstack [--secret-key] [--no-default-grants] [--gateway-port N] [--db-port N] [-- COMMAND ARGS...]");
                return ExitCode::from(2);
            }
        }
    }

    eprintln!("devstack: starting PostgreSQL, PostgREST and the gateway...");
    let stack = match Stack::start_on(
        grants,
        gateway_port.unwrap_or_else(devstack::free_port),
        db_port.unwrap_or_else(devstack::free_port),
    ) {
        Ok(stack) => stack,
        Err(e) => {
            eprintln!("devstack: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let env = [
        ("SUPABASE_URL", stack.url()),
        ("SUPABASE_SERVICE_ROLE_KEY", key.service_key()),
        ("DATABASE_URL", format!("postgres://postgres@127.0.0.1:{}/postgres", stack.pg_port)),
    ];
    eprintln!("devstack: ready at {} (database on port {}, {:?} key, {:?} grants)", stack.url(), stack.pg_port, key, grants);

    if command.is_empty() {
        for (k, v) in &env {
            println!("export {k}='{v}'");
        }
        eprintln!("devstack: press Ctrl-C to stop");
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = ctrlc_channel(tx);
        let _ = rx.recv();
        return ExitCode::SUCCESS;
    }
    let status = Command::new(&command[0]).args(&command[1..]).envs(env).status();
    drop(stack);
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().unwrap_or(1) as u8),
        Err(e) => {
            eprintln!("devstack: cannot run {}: {e}", command[0]);
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
