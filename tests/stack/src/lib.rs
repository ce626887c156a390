//! A local Supabase-like stack of real parts for tests, benchmarks and local runs: PostgreSQL 17
//! (or the `PG_MAJOR` that `scripts/test` names) with a hosted project's roles (a `supabase_admin` superuser, `postgres` not one) and its
//! schema-reload event triggers, the project's migrations pushed by the real Supabase CLI, PostgREST
//! 12, and an nginx gateway that behaves like Supabase's (`/rest/v1/`, `apikey` required,
//! `sb_secret_…` swapped for a service_role JWT). Everything binds 127.0.0.1 on free ports and dies
//! with the process that started it. `scripts/install-deps` puts the binaries in `.tools/`.

mod fault;
#[allow(unsafe_code)]
mod process;
mod service;
mod tls;

use std::collections::BTreeSet;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use fault::{FaultMode, FaultProxy};
pub use process::signal;
pub use service::{
    conversation_params, service_command, sms_params, wait_for_listener, ACCOUNT_SID, PUBLIC_URL, TWILIO_TOKEN,
};
pub use tls::TlsGateway;

/// The local CLI's public demo JWT secret (for local use only).
pub const JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
/// The local CLI's opaque keys (for local use only).
pub const SECRET_KEY: &str = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz";
pub const PUBLISHABLE_KEY: &str = "sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH";

/// An HS256 JWT for `role`, signed with [`JWT_SECRET`], with the local CLI's claims.
pub fn jwt(role: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":"supabase-demo","role":"{role}","exp":1983812996}}"#));
    let mut mac = Hmac::<Sha256>::new_from_slice(JWT_SECRET.as_bytes()).expect("any key length");
    mac.update(format!("{header}.{claims}").as_bytes());
    format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grants {
    /// Older projects: default privileges give anon, authenticated and service_role everything.
    Default,
    /// Projects created since mid-2026: nothing is granted unless a migration grants it.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    LegacyJwt,
    Secret,
}

impl KeyKind {
    /// The service-role key of this kind.
    pub fn service_key(self) -> String {
        match self {
            KeyKind::LegacyJwt => jwt("service_role"),
            KeyKind::Secret => SECRET_KEY.to_owned(),
        }
    }
}

/// The stack's processes, each in its slot while it runs.
#[derive(Clone, Copy)]
enum Part {
    Postgres = 0,
    Postgrest = 1,
    Gateway = 2,
}

pub struct Stack {
    dir: PathBuf,
    pub grants: Grants,
    pub pg_port: u16,
    pub postgrest_port: u16,
    pub gateway_port: u16,
    bins: Bins,
    children: Mutex<[Option<Child>; 3]>,
    /// `devstack.lock` in `dir`, locked while the stack lives; see [`sweep_stale_dirs`].
    _lock: fs::File,
}

struct Bins {
    pg: PathBuf,
    postgrest: PathBuf,
    nginx: PathBuf,
    supabase: PathBuf,
}

/// A loopback port nothing listens on, and that this process has not handed out before.
///
/// The kernel can give the same free port to two callers in a row once the first has closed its
/// probe, and the tests start many stacks at once: two stacks could each pick it, and the one whose
/// server then failed to bind would work against the other's, until the other stopped. A port once
/// handed out is never handed out again by this process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..1_000 {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port();
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("no loopback port left that this process has not handed out")
}

/// The repository root (where `supabase/migrations` lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repo root exists")
}

impl Stack {
    /// A stack with every migration of the repository pushed.
    pub fn start(grants: Grants) -> Result<Stack> {
        Self::start_from(grants, &repo_root())
    }

    /// A stack with the migrations of the Supabase project in `workdir` pushed (see
    /// [`project_copy`] for one that holds only some of them).
    pub fn start_from(grants: Grants, workdir: &Path) -> Result<Stack> {
        // A port is picked free, then bound by another process seconds later; a stack starting
        // alongside (the tests start several at once) can take it in between, and this one then
        // finds a stranger on its port. Such a stack is dropped and started again on fresh ports.
        let mut attempt = 1;
        loop {
            match Self::start_on_from(grants, free_port(), free_port(), workdir) {
                Ok(stack) => return Ok(stack),
                Err(e) if attempt < 3 => {
                    eprintln!("devstack: the stack did not come up ({e:#}); starting it again on other ports");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts a stack on given gateway and database ports, so its URLs are known in advance.
    pub fn start_on(grants: Grants, gateway_port: u16, pg_port: u16) -> Result<Stack> {
        Self::start_on_from(grants, gateway_port, pg_port, &repo_root())
    }

    fn start_on_from(grants: Grants, gateway_port: u16, pg_port: u16, workdir: &Path) -> Result<Stack> {
        let bins = Bins::find()?;
        sweep_stale_dirs();
        let dir = std::env::temp_dir().join(format!("devstack-{}-{}", std::process::id(), free_port()));
        // Made here or not at all: a stack removes its directory when dropped, and one that took
        // over another's would take the other's database with it (PostgreSQL shuts down within a
        // minute of losing its lock file; the likely cause of a CI run that lost a shared stack).
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock = fs::File::create(dir.join(LOCK_FILE))?;
        lock.lock()?;
        let stack = Stack {
            dir,
            grants,
            pg_port,
            postgrest_port: free_port(),
            gateway_port,
            bins,
            children: Mutex::new([None, None, None]),
            _lock: lock,
        };
        stack.init_postgres()?;
        stack.start_postgres()?;
        stack.bootstrap()?;
        stack.push_migrations(workdir, false)?;
        stack.start_postgrest()?;
        stack.start_gateway()?;
        stack.wait_ready(Duration::from_secs(30))?;
        // A PostgREST that lost its port to another stack's exits at once; the gateway would
        // otherwise have answered through the other one.
        stack.check_running(Part::Postgrest, "PostgREST")?;
        Ok(stack)
    }

    /// The project URL, as `SUPABASE_URL` would be.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    /// Connection settings for `postgres`, the role migrations and operators use (not a superuser).
    pub fn db_url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.pg_port)
    }

    /// The same as a URL, as the Supabase CLI and `DATABASE_URL` take it.
    pub fn database_url(&self) -> String {
        format!("postgres://postgres:postgres@127.0.0.1:{}/postgres", self.pg_port)
    }

    fn admin_url(&self) -> String {
        format!("host=127.0.0.1 port={} user=supabase_admin dbname=postgres", self.pg_port)
    }

    fn init_postgres(&self) -> Result<()> {
        let data = self.dir.join("pg");
        fs::create_dir_all(&data)?;
        process::give_to_postgres(&self.dir)?;
        process::give_to_postgres(&data)?;
        let mut cmd = Command::new(self.bins.pg.join("initdb"));
        cmd.args(["-D"]).arg(&data).args([
            "-U",
            "supabase_admin",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ]);
        process::run_as_postgres(cmd, &self.dir.join("initdb.log"))
    }

    pub fn start_postgres(&self) -> Result<()> {
        let mut cmd = Command::new(self.bins.pg.join("postgres"));
        cmd.arg("-D").arg(self.dir.join("pg")).args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("port={}", self.pg_port),
            "-c",
            "unix_socket_directories=",
            "-c",
            // Tests share a stack across threads, and each query of theirs has a connection of its
            // own; room to spare, so that none waits for a slot.
            "max_connections=200",
            "-c",
            "shared_buffers=64MB",
        ]);
        let child = process::spawn_as_postgres(cmd, &self.dir.join("postgres.log"))?;
        self.keep(Part::Postgres, child, self.pg_port, "PostgreSQL")?;
        self.check_postgres_is_ours()
    }

    /// A server on our port is not necessarily ours: another one may have held it, and ours then
    /// failed to bind. Ours is the one whose data directory is this stack's.
    fn check_postgres_is_ours(&self) -> Result<()> {
        let ours = self.dir.join("pg");
        let url = self.admin_url();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            self.check_running(Part::Postgres, "PostgreSQL")?;
            let asked = {
                let url = url.clone();
                run_async(async move {
                    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                    tokio::spawn(connection);
                    let row = client.query_one("select current_setting('data_directory')", &[]).await?;
                    Ok(row.get::<_, String>(0))
                })
            };
            match asked {
                Ok(theirs) if same_path(Path::new(&theirs), &ours) => return Ok(()),
                Ok(theirs) => bail!(
                    "another PostgreSQL (data directory {theirs}) listens on port {}; ours could not bind it",
                    self.pg_port
                ),
                // Still starting up, or a stranger that is not even PostgreSQL: ask until ours
                // answers or exits.
                Err(e) if Instant::now() > until => {
                    bail!("PostgreSQL on port {} did not answer as this stack's: {e:#}", self.pg_port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Stops PostgreSQL the way an operator restart does (fast shutdown), and waits for it to exit.
    pub fn stop_postgres(&self) {
        self.stop_part(Part::Postgres, libc::SIGINT);
    }

    /// Records a started process in its slot and waits until it listens on `port`, or exits.
    fn keep(&self, part: Part, child: Child, port: u16, what: &str) -> Result<()> {
        self.children.lock().unwrap()[part as usize] = Some(child);
        self.wait_for_port(part, port, what)
    }

    /// Fails, with the logs, if the process in `part`'s slot has exited (or was never started).
    fn check_running(&self, part: Part, what: &str) -> Result<()> {
        let exited = match &mut self.children.lock().unwrap()[part as usize] {
            Some(child) => child.try_wait()?.map(|status| status.to_string()),
            None => Some("not started".to_owned()),
        };
        match exited {
            Some(status) => bail!("{what} exited ({status}){}", self.log_tails()),
            None => Ok(()),
        }
    }

    fn stop_part(&self, part: Part, signal: i32) {
        let child = self.children.lock().unwrap()[part as usize].take();
        if let Some(child) = child {
            process::stop(child, signal);
        }
    }

    pub fn start_postgrest(&self) -> Result<()> {
        let mut cmd = Command::new(&self.bins.postgrest);
        cmd.env_clear()
            .env("PGRST_DB_URI", format!("postgres://authenticator:authenticator@127.0.0.1:{}/postgres", self.pg_port))
            .env("PGRST_DB_SCHEMAS", "public,graphql_public")
            .env("PGRST_DB_ANON_ROLE", "anon")
            .env("PGRST_DB_EXTRA_SEARCH_PATH", "public,extensions")
            .env("PGRST_DB_MAX_ROWS", "1000")
            .env("PGRST_DB_POOL", "10")
            .env("PGRST_JWT_SECRET", JWT_SECRET)
            .env("PGRST_SERVER_HOST", "127.0.0.1")
            .env("PGRST_SERVER_PORT", self.postgrest_port.to_string())
            .env("PGRST_LOG_LEVEL", "error");
        let child = process::spawn(cmd, &self.dir.join("postgrest.log"))?;
        self.keep(Part::Postgrest, child, self.postgrest_port, "PostgREST")
    }

    /// Kills PostgREST outright, as a crash would.
    pub fn kill_postgrest(&self) {
        self.stop_part(Part::Postgrest, libc::SIGKILL);
    }

    fn start_gateway(&self) -> Result<()> {
        let conf = self.dir.join("nginx.conf");
        fs::create_dir_all(self.dir.join("nginx-tmp"))?;
        fs::write(&conf, self.gateway_config())?;
        let mut cmd = Command::new(&self.bins.nginx);
        cmd.arg("-c").arg(&conf).arg("-p").arg(&self.dir).arg("-e").arg(self.dir.join("nginx-error.log"));
        let child = process::spawn(cmd, &self.dir.join("nginx.log"))?;
        self.keep(Part::Gateway, child, self.gateway_port, "the nginx gateway")?;
        // nginx retries a port in use for seconds before it gives up, so a gateway that answers
        // may still be another stack's: ours tells its directory.
        match process::http_get(self.gateway_port, "/__devstack/dir", &[]) {
            Some((200, dir)) if dir == self.dir.display().to_string() => Ok(()),
            answer => {
                bail!("another server listens on the gateway's port {} (it answered {answer:?})", self.gateway_port)
            }
        }
    }

    fn gateway_config(&self) -> String {
        let tmp = self.dir.join("nginx-tmp");
        let values = [
            ("dir", self.dir.display().to_string()),
            ("tmp", tmp.display().to_string()),
            ("service", jwt("service_role")),
            ("anon", jwt("anon")),
            ("secret", SECRET_KEY.to_owned()),
            ("publishable", PUBLISHABLE_KEY.to_owned()),
            ("postgrest", self.postgrest_port.to_string()),
            ("gateway", self.gateway_port.to_string()),
        ];
        values
            .iter()
            .fold(GATEWAY_TEMPLATE.to_owned(), |conf, (name, value)| conf.replace(&format!("{{{{{name}}}}}"), value))
    }

    fn wait_for_port(&self, part: Part, port: u16, what: &str) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            self.check_running(part, what)?;
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("{what} did not start on port {port}{}", self.log_tails())
    }

    /// The end of each log of the stack's servers, to explain a failure.
    fn log_tails(&self) -> String {
        let mut logs = String::new();
        for log in ["postgres.log", "postgrest.log", "nginx.log", "nginx-error.log"] {
            if let Ok(text) = fs::read_to_string(self.dir.join(log)) {
                let tail = &text[text.floor_char_boundary(text.len().saturating_sub(1500))..];
                logs.push_str(&format!("\n--- {log}:\n{tail}"));
            }
        }
        logs
    }

    /// Waits until the tables answer through the gateway with the service key.
    pub fn wait_ready(&self, limit: Duration) -> Result<()> {
        let until = Instant::now() + limit;
        let key = jwt("service_role");
        loop {
            let status = process::http_get_status(
                self.gateway_port,
                "/rest/v1/jobs?select=id&limit=0",
                &[("apikey", &key), ("Authorization", &format!("Bearer {key}"))],
            );
            if status == Some(200) {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("the stack is not ready (last status {status:?}); logs are in {}", self.dir.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs SQL as `postgres`, the role that owns the project's objects.
    pub fn execute(&self, sql: &str) -> Result<()> {
        execute_at(self.db_url(), sql)
    }

    /// Runs SQL as `supabase_admin`, the superuser a hosted project keeps to itself: for a test
    /// that must change what only it may (event triggers, say).
    pub fn execute_as_admin(&self, sql: &str) -> Result<()> {
        execute_at(self.admin_url(), sql)
    }

    /// Runs a query as `postgres` and returns the first column of each row as text.
    pub fn query(&self, sql: &str) -> Result<Vec<Option<String>>> {
        Ok(self.query_rows(sql)?.into_iter().map(|row| row.into_iter().next().flatten()).collect())
    }

    /// Runs a query as `postgres` and returns every column of each row as text.
    pub fn query_rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let url = self.db_url();
        let sql = sql.to_owned();
        run_async(async move {
            let client = connect(&url).await?;
            let rows = client.simple_query(&sql).await.context("running a query")?;
            Ok(rows
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                    }
                    _ => None,
                })
                .collect())
        })
    }

    /// A hosted project's roles, `auth` helpers and schema-reload triggers, made by the superuser.
    fn bootstrap(&self) -> Result<()> {
        let mut sql = String::from(BOOTSTRAP);
        if self.grants == Grants::Default {
            sql.push_str(DEFAULT_GRANTS);
        }
        execute_at(self.admin_url(), &sql).context("bootstrapping the roles")
    }

    /// Pushes the migrations of the Supabase project in `workdir` (and its seed, if asked) with
    /// the real Supabase CLI, as `supabase db push --remote=<database URL>` does for a hosted
    /// project: connected as `postgres`, recording each in `supabase_migrations.schema_migrations`.
    /// Returns what the CLI printed.
    pub fn push_migrations(&self, workdir: &Path, include_seed: bool) -> Result<String> {
        let mut cmd = Command::new(&self.bins.supabase);
        cmd.args(["db", "push", "--yes", "--workdir"])
            .arg(workdir)
            .arg(format!("--remote={}", self.database_url()))
            .env("SUPABASE_TELEMETRY_DISABLED", "1")
            .env("DO_NOT_TRACK", "1");
        if include_seed {
            cmd.arg("--include-seed");
        }
        let output = cmd.output().context("running the Supabase CLI")?;
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            bail!("supabase db push failed ({}):\n{text}", output.status);
        }
        Ok(text)
    }
}

fn execute_at(url: String, sql: &str) -> Result<()> {
    {
        let sql = sql.to_owned();
        run_async(async move {
            let client = connect(&url).await?;
            client.batch_execute(&sql).await.context("running SQL")?;
            Ok(())
        })
    }
}

impl Stack {
    /// The nginx binary the gateway runs.
    pub fn nginx_bin(&self) -> &Path {
        &self.bins.nginx
    }

    /// Where this stack keeps its data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop_part(Part::Gateway, libc::SIGKILL);
        self.stop_part(Part::Postgrest, libc::SIGKILL);
        // Immediate shutdown: the data is thrown away next.
        self.stop_part(Part::Postgres, libc::SIGQUIT);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The PostgreSQL major version stacks run: `PG_MAJOR` (as `scripts/test` sets it), 17 by default,
/// the hosted projects' major.
pub fn pg_major() -> String {
    std::env::var("PG_MAJOR").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "17".into())
}

impl Bins {
    /// The binaries `scripts/install-deps` puts in `.tools/`, or those the environment names.
    fn find() -> Result<Bins> {
        let tool = |var: &str, default: PathBuf| std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
        let tools = repo_root().join(".tools");
        let bins = Bins {
            pg: tool("PG_BIN", tools.join(format!("pg{}/bin", pg_major()))),
            postgrest: tool("POSTGREST_BIN", tools.join("postgrest")),
            nginx: tool("NGINX_BIN", PathBuf::from("/usr/sbin/nginx")),
            supabase: tool("SUPABASE_BIN", tools.join("supabase")),
        };
        for (what, path) in [
            ("PostgreSQL", bins.pg.join("postgres")),
            ("PostgREST", bins.postgrest.clone()),
            ("nginx", bins.nginx.clone()),
            ("the Supabase CLI", bins.supabase.clone()),
        ] {
            if !path.exists() {
                bail!("{what} not found at {}; run scripts/install-deps", path.display());
            }
        }
        Ok(bins)
    }
}

/// A copy of the repository's Supabase project (config.toml, seed.sql, migrations) in a new
/// directory, holding only the migrations up to and including `up_to` when it is given: a project
/// as it was before a later migration, to push that one while a stack runs.
pub fn project_copy(up_to: Option<&str>) -> Result<PathBuf> {
    let from = repo_root().join("supabase");
    let dir = std::env::temp_dir().join(format!("devstack-project-{}-{}", std::process::id(), free_port()));
    fs::create_dir_all(dir.join("supabase/migrations"))?;
    for file in ["config.toml", "seed.sql"] {
        fs::copy(from.join(file), dir.join("supabase").join(file))?;
    }
    for entry in fs::read_dir(from.join("migrations"))? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if up_to.is_none_or(|last| name.as_str() <= last || name.starts_with(last)) {
            fs::copy(&path, dir.join("supabase/migrations").join(&name))?;
        }
    }
    Ok(dir)
}

const LOCK_FILE: &str = "devstack.lock";

/// Removes the directories of stacks whose process is gone. A stack shared by the tests of one
/// binary lives in a static and is never dropped, so each test run would otherwise leave its 40 MB
/// behind. A stack holds a lock on a file in its directory for as long as it lives, and the kernel
/// lets it go when the process ends, however it ends: a directory whose lock can be taken is
/// stale. Directories touched in the last minute are left alone, since a stack starting right now
/// may not have locked its file yet. Once per process.
fn sweep_stale_dirs() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let recent = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|at| at.elapsed().is_ok_and(|age| age < Duration::from_secs(60)));
            if !name.starts_with("devstack-") || recent {
                continue;
            }
            let path = entry.path();
            let stale = match fs::File::open(path.join(LOCK_FILE)) {
                Ok(lock) => lock.try_lock().is_ok(),
                // A project copy, or a stack from before the lock: by its process id.
                Err(_) => name
                    .trim_start_matches("devstack-project-")
                    .trim_start_matches("devstack-")
                    .split_once('-')
                    .and_then(|(pid, _)| pid.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists()),
            };
            if stale {
                let _ = fs::remove_dir_all(&path);
            }
        }
    });
}

/// Whether two paths name the same directory (the server may report it without resolving links).
fn same_path(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                return Ok(client);
            }
            Err(e) if Instant::now() > until => return Err(e).context("connecting to PostgreSQL"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Runs a future to completion on a runtime of its own, so callers need not be async and nothing
/// outlives the call on someone else's runtime.
fn run_async<T: Send + 'static>(f: impl std::future::Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(f)
    })
    .join()
    .expect("the SQL thread does not panic")
}

/// What a hosted project has before any migration (see the file for what and why).
const BOOTSTRAP: &str = include_str!("../sql/bootstrap.sql");

/// The nginx configuration of the gateway, with `{{name}}` placeholders.
const GATEWAY_TEMPLATE: &str = include_str!("../nginx.conf.template");

/// The default privileges older hosted projects have.
const DEFAULT_GRANTS: &str = include_str!("../sql/default-grants.sql");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        // The kernel draws bind(0)'s port from some 14,000 (the odd half of the ephemeral range):
        // 3,000 draws repeat one almost surely, unless repeats are refused.
        let mut seen = BTreeSet::new();
        for _ in 0..3_000 {
            let port = free_port();
            assert!(seen.insert(port), "port {port} was handed out twice");
        }
    }
}
