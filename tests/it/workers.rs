//! The README's worker loops, run as written with the client libraries worker authors use:
//! supabase-js on Node and supabase-py, installed by `scripts/install-deps`. Each is given only a
//! `handle` function; it must complete every job with the handler's result, in each channel's
//! order, and record the failure of a job whose handler throws.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use devstack::{repo_root, Grants, KeyKind, Stack};

use crate::helpers::*;

/// The code block that follows `heading` in the README.
fn readme_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let after = &readme[readme.find(heading).unwrap_or_else(|| panic!("no {heading:?} in the README"))..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_owned()
}

/// Three senders with four messages each, and one message whose handler throws.
fn queue_jobs(stack: &Stack) -> Vec<String> {
    let senders: Vec<String> = (0..3).map(|_| unique_phone()).collect();
    let mut values = Vec::new();
    for round in 0..4 {
        for sender in &senders {
            values.push((sender.clone(), format!("{sender} {round}")));
        }
    }
    values.push((senders[0].clone(), "explode".to_owned()));
    let rows: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, (sender, body))| {
            format!(
                "('{sender}', '{sender}', 'whatsapp:{sender}', 'dm', jsonb_build_object('Body', '{body}'), \
                 'SM{}', now() + {i} * interval '1 millisecond')",
                unique("w")
            )
        })
        .collect();
    let users: Vec<String> = senders.iter().map(|s| format!("('{s}')")).collect();
    stack
        .execute(&format!(
            "insert into users (phone_number) values {};
             insert into jobs (user_id, user_phone, source_channel_id, source_type, payload, message_sid, received_at)
             values {};",
            users.join(", "),
            rows.join(", ")
        ))
        .unwrap();
    senders
}

/// Runs a worker until every job but the exploding one is complete and that one has failed once
/// (or 30 s pass), then stops it.
fn run_until_drained(stack: &Stack, mut worker: Child) -> String {
    let until = Instant::now() + Duration::from_secs(30);
    let drained = loop {
        if count(stack, "select count(*) from jobs where status = 'complete' or last_error is not null") == 13 {
            break true;
        }
        if Instant::now() > until || worker.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = worker.kill();
    let output = worker.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(drained, "the worker did not complete the jobs; it said:\n{stderr}");
    stderr
}

fn assert_worked_like_the_readme_says(stack: &Stack, senders: &[String], error: &str) {
    for sender in senders {
        let done: Vec<(String, String)> = read_rows(
            stack,
            &format!(
                "select payload ->> 'Body', result ->> 'echoed' from jobs
                 where user_id = '{sender}' and status = 'complete' order by completed_at, received_at"
            ),
        );
        let expected: Vec<(String, String)> =
            (0..4).map(|round| (format!("{sender} {round}"), format!("{sender} {round}"))).collect();
        assert_eq!(done, expected, "{sender}'s jobs, in the order they were completed");
    }
    // Retried after its backoff (1 s after the first attempt), so it may be in its second by now.
    let failed: Vec<(String, String)> = read_rows(
        stack,
        "select (status in ('pending', 'processing'))::text, last_error from jobs where payload ->> 'Body' = 'explode'",
    );
    assert_eq!(failed, [("true".to_owned(), error.to_owned())], "the failing job is to be retried, with its error");
}

/// A directory for one worker's script, with `node_modules` pointing at the installed libraries.
fn worker_dir(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    let modules = repo_root().join(".tools/workers/js/node_modules");
    assert!(modules.is_dir(), "supabase-js is not installed: run scripts/install-deps");
    std::os::unix::fs::symlink(modules, dir.join("node_modules")).unwrap();
    dir
}

fn spawn(program: &Path, args: &[&str], stack: &Stack, key: KeyKind, lease_seconds: u32) -> Child {
    Command::new(program)
        .args(args)
        .env("LEASE_SECONDS", lease_seconds.to_string())
        .env("SUPABASE_URL", stack.url())
        .env("SUPABASE_SERVICE_ROLE_KEY", key.service_key())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// The README's supabase-js loop, written to a directory of its own with a `handle` that echoes,
/// throws on `explode` and takes 5 s on `slow`; returns node and its arguments.
fn js_worker() -> (PathBuf, Vec<String>) {
    let dir = worker_dir("js-worker");
    let script = readme_block("A worker in **supabase-js**")
        + "\nasync function handle(job) {\n\
           \x20 if (job.payload.Body === 'slow') await new Promise(r => setTimeout(r, 5000))\n\
           \x20 if (job.payload.Body === 'explode') throw new Error('boom')\n\
           \x20 return { echoed: job.payload.Body }\n\
           }\n";
    std::fs::write(dir.join("worker.mjs"), script).unwrap();
    // supabase-js 2 needs a WebSocket, which Node has built in from 22 and behind a flag in 20.
    let node_major: u32 =
        String::from_utf8(Command::new("node").arg("-p").arg("process.versions.node").output().unwrap().stdout)
            .unwrap()
            .split('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
    let mut args = vec![];
    if node_major < 22 {
        args.push("--experimental-websocket".to_owned());
    }
    args.push(dir.join("worker.mjs").to_str().unwrap().to_owned());
    (PathBuf::from("node"), args)
}

/// The README's supabase-py loop, with the same `handle` as [`js_worker`].
fn py_worker() -> (PathBuf, Vec<String>) {
    let python = repo_root().join(".tools/workers/py/bin/python");
    assert!(python.exists(), "supabase-py is not installed: run scripts/install-deps");
    let dir = temp_dir("py-worker");
    let script = "import time\n\
                  def handle(job):\n\
                  \x20   if job['payload']['Body'] == 'slow':\n\
                  \x20       time.sleep(5)\n\
                  \x20   if job['payload']['Body'] == 'explode':\n\
                  \x20       raise RuntimeError('boom')\n\
                  \x20   return {'echoed': job['payload']['Body']}\n\n"
        .to_owned()
        + &readme_block("The same in **supabase-py**");
    std::fs::write(dir.join("worker.py"), script).unwrap();
    (python, vec!["-u".to_owned(), dir.join("worker.py").to_str().unwrap().to_owned()])
}

fn start((program, args): &(PathBuf, Vec<String>), stack: &Stack, key: KeyKind, lease_seconds: u32) -> Child {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(program, &args, stack, key, lease_seconds)
}

/// One job that takes 5 s, leased for 2 s at a time, and two workers racing for it: the
/// heartbeat keeps the lease, so the job is handled once, in one attempt, by the worker that
/// claimed it.
fn assert_a_job_longer_than_its_lease_is_handled_once(worker: &(PathBuf, Vec<String>), key: KeyKind) {
    let stack = Stack::start(Grants::None).unwrap();
    let sender = unique_phone();
    stack
        .execute(&format!(
            "insert into users (phone_number) values ('{sender}');
             insert into jobs (user_id, user_phone, source_channel_id, source_type, payload, message_sid)
             values ('{sender}', '{sender}', '{sender}', 'dm', jsonb_build_object('Body', 'slow'), '{}')",
            unique("SM")
        ))
        .unwrap();
    let mut workers = [start(worker, &stack, key, 2), start(worker, &stack, key, 2)];
    let until = Instant::now() + Duration::from_secs(30);
    while count(&stack, "select count(*) from jobs where status = 'complete'") == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut said = String::new();
    for worker in &mut workers {
        let _ = worker.kill();
        let mut stderr = String::new();
        std::io::Read::read_to_string(worker.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        let _ = worker.wait();
        said += &stderr;
    }
    let rows: Vec<(String, i64, String)> = read_rows(&stack, "select status, attempts, result ->> 'echoed' from jobs");
    assert_eq!(rows, [("complete".to_owned(), 1, "slow".to_owned())], "the workers said:\n{said}");
}

#[test]
fn the_supabase_js_worker_in_the_readme_drains_the_queue() {
    let stack = Stack::start(Grants::None).unwrap();
    let senders = queue_jobs(&stack);
    let worker = start(&js_worker(), &stack, KeyKind::Secret, 60);
    run_until_drained(&stack, worker);
    assert_worked_like_the_readme_says(&stack, &senders, "Error: boom");
}

#[test]
fn the_supabase_js_worker_in_the_readme_keeps_a_job_longer_than_its_lease() {
    assert_a_job_longer_than_its_lease_is_handled_once(&js_worker(), KeyKind::Secret);
}

#[test]
fn the_supabase_py_worker_in_the_readme_keeps_a_job_longer_than_its_lease() {
    assert_a_job_longer_than_its_lease_is_handled_once(&py_worker(), KeyKind::LegacyJwt);
}

#[test]
fn the_supabase_py_worker_in_the_readme_drains_the_queue() {
    let stack = Stack::start(Grants::Default).unwrap();
    let senders = queue_jobs(&stack);
    let worker = start(&py_worker(), &stack, KeyKind::LegacyJwt, 60);
    run_until_drained(&stack, worker);
    assert_worked_like_the_readme_says(&stack, &senders, "boom");
}
