//! Starting and stopping the stack's processes so that none outlives the process that started it.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

type Request = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Children are forked from one thread that lives as long as the process, because the kernel's
/// parent-death signal fires when the *thread* that forked a child exits: a child forked from a
/// test's thread would be killed when that test ends, while the stack is still shared.
fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("devstack-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // Keep the thread (and so the children) alive until the process exits.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning the spawner thread");
        Mutex::new(tx)
    })
}

fn postgres_ids() -> Option<(u32, u32)> {
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy the ids out at once.
    unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// PostgreSQL refuses to run as root, so as root its files and processes belong to `postgres`.
pub fn give_to_postgres(path: &Path) -> Result<()> {
    if running_as_root() {
        let (uid, gid) = postgres_ids().context("running as root needs a 'postgres' user for PostgreSQL")?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

fn prepare(cmd: &mut Command, log: &Path, as_postgres: bool) -> Result<()> {
    let out = File::create(log)?;
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    let ids = if as_postgres && running_as_root() { postgres_ids() } else { None };
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = ids {
                if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After setuid, which clears it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

pub fn spawn(mut cmd: Command, log: &Path) -> Result<Child> {
    prepare(&mut cmd, log, false)?;
    send(cmd)
}

pub fn spawn_as_postgres(mut cmd: Command, log: &Path) -> Result<Child> {
    prepare(&mut cmd, log, true)?;
    send(cmd)
}

fn send(cmd: Command) -> Result<Child> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let (reply, answer) = mpsc::channel();
    spawner().lock().unwrap().send((cmd, reply)).expect("the spawner thread lives forever");
    answer.recv().expect("the spawner answers").with_context(|| format!("starting {program}"))
}

/// Runs a command as `postgres` to completion.
pub fn run_as_postgres(cmd: Command, log: &Path) -> Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = spawn_as_postgres(cmd, log)?;
    let status = child.wait()?;
    if !status.success() {
        let mut text = String::new();
        File::open(log)?.read_to_string(&mut text)?;
        bail!("{program} failed ({status}): {text}");
    }
    Ok(())
}

/// Sends `signal` and waits for the process to exit, escalating to SIGKILL after 10 s.
pub fn stop(mut child: Child, signal: i32) {
    // SAFETY: kill with a pid we own.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    for _ in 0..200 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A minimal HTTP/1.1 GET's status, enough to poll readiness without an HTTP client dependency.
pub fn http_get_status(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<u16> {
    http_get(port, path, headers).map(|(status, _)| status)
}

/// A minimal HTTP/1.1 GET: the status and the body (of a response that is not chunked).
pub fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Some((status, body.to_owned()))
}

/// Sends `signal` to process `pid`, as `kill(1)` would: the tests' one way to signal a process.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions; a stale pid at worst signals nothing.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}
