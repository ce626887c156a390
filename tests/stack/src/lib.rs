//! A local Supabase-like stack of real parts for tests, benchmarks and local runs: PostgreSQL
//! (Debian's binaries) with Supabase's roles, the project's migrations, PostgREST 12, and an nginx
//! gateway that behaves like Supabase's (`/rest/v1/`, `apikey` required, `sb_secret_…` swapped for a
//! service_role JWT). Everything binds 127.0.0.1 on free ports and dies with the process that
//! started it.

mod fault;
mod process;

use std::fs;
use std::io::Write as _;
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
}

struct Bins {
    pg: PathBuf,
    postgrest: PathBuf,
    nginx: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

/// The repository root (where `supabase/migrations` lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repo root exists")
}

impl Stack {
    pub fn start(grants: Grants) -> Result<Stack> {
        // A port is picked free, then bound by another process seconds later; a stack starting
        // alongside (the tests start several at once) can take it in between, and this one then
        // finds a stranger on its port. Such a stack is dropped and started again on fresh ports.
        let mut attempt = 1;
        loop {
            match Self::start_on(grants, free_port(), free_port()) {
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
        let bins = Bins::find()?;
        let dir = std::env::temp_dir().join(format!("devstack-{}-{}", std::process::id(), free_port()));
        fs::create_dir_all(&dir)?;
        let stack = Stack {
            dir,
            grants,
            pg_port,
            postgrest_port: free_port(),
            gateway_port,
            bins,
            children: Mutex::new([None, None, None]),
        };
        stack.init_postgres()?;
        stack.start_postgres()?;
        stack.bootstrap()?;
        stack.start_postgrest()?;
        stack.start_gateway()?;
        stack.wait_ready(Duration::from_secs(30))?;
        Ok(stack)
    }

    /// The project URL, as `SUPABASE_URL` would be.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    pub fn db_url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.pg_port)
    }

    fn init_postgres(&self) -> Result<()> {
        let data = self.dir.join("pg");
        fs::create_dir_all(&data)?;
        process::give_to_postgres(&self.dir)?;
        process::give_to_postgres(&data)?;
        let mut cmd = Command::new(self.bins.pg.join("initdb"));
        cmd.args(["-D"]).arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]);
        process::run_as_postgres(cmd, &self.dir.join("initdb.log"))
    }

    pub fn start_postgres(&self) -> Result<()> {
        let mut cmd = Command::new(self.bins.pg.join("postgres"));
        cmd.arg("-D").arg(self.dir.join("pg")).args([
            "-c", "listen_addresses=127.0.0.1",
            "-c", &format!("port={}", self.pg_port),
            "-c", "unix_socket_directories=",
            "-c", "max_connections=100",
            "-c", "shared_buffers=64MB",
        ]);
        let child = process::spawn_as_postgres(cmd, &self.dir.join("postgres.log"))?;
        self.keep(Part::Postgres, child, self.pg_port, "PostgreSQL")
    }

    /// Stops PostgreSQL the way an operator restart does (fast shutdown), and waits for it to exit.
    pub fn stop_postgres(&self) {
        self.stop_part(Part::Postgres, libc::SIGINT);
    }

    /// Records a started process in its slot and waits until it listens on `port`.
    fn keep(&self, part: Part, child: Child, port: u16, what: &str) -> Result<()> {
        self.children.lock().unwrap()[part as usize] = Some(child);
        self.wait_for_port(port, what)
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
        self.keep(Part::Gateway, child, self.gateway_port, "the nginx gateway")
    }

    fn gateway_config(&self) -> String {
        let service = jwt("service_role");
        let anon = jwt("anon");
        let tmp = self.dir.join("nginx-tmp");
        let tmp = tmp.display();
        format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/json;
    map_hash_bucket_size 512;
    # Keep request bodies (a batch is tens of KiB) in memory, as Supabase's gateway does, rather than
    # spooling them to a temp file and sending them upstream in separate segments.
    client_body_buffer_size 1m;
    client_max_body_size 10m;

    # What kind of key the apikey header holds, as Supabase's gateway sees it.
    map $http_apikey $key_kind {{
        default "invalid";
        "" "none";
        "{service}" "legacy";
        "{anon}" "legacy";
        "{secret}" "secret";
        "{publishable}" "publishable";
    }}
    # Legacy keys: Authorization passes through. Opaque keys: Authorization must be absent or the
    # same key, and the upstream gets the matching role's JWT.
    map "$key_kind|$http_authorization" $upstream_auth {{
        default "reject";
        "~^legacy\|" $http_authorization;
        "secret|" "Bearer {service}";
        "secret|Bearer {secret}" "Bearer {service}";
        "publishable|" "Bearer {anon}";
        "publishable|Bearer {publishable}" "Bearer {anon}";
    }}
    # A secret key is refused from a browser.
    map "$key_kind|$http_user_agent" $browser_secret {{
        default 0;
        "~^secret\|Mozilla/" 1;
    }}
    upstream postgrest {{
        server 127.0.0.1:{postgrest};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{gateway};
        location /rest/v1/ {{
            if ($key_kind = none) {{ return 401 '{{"message":"No API key found in request"}}'; }}
            if ($key_kind = invalid) {{ return 401 '{{"message":"Invalid API key"}}'; }}
            if ($upstream_auth = reject) {{ return 401 '{{"message":"Invalid API key"}}'; }}
            if ($browser_secret) {{ return 401 '{{"message":"Forbidden use of secret API key in browser"}}'; }}
            proxy_set_header Authorization $upstream_auth;
            proxy_set_header apikey "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://postgrest/;
        }}
        location / {{ return 404 '{{"message":"no Route matched with those values"}}'; }}
    }}
}}
"#,
            dir = self.dir.display(),
            secret = SECRET_KEY,
            publishable = PUBLISHABLE_KEY,
            postgrest = self.postgrest_port,
            gateway = self.gateway_port,
        )
    }

    fn wait_for_port(&self, port: u16, what: &str) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let mut logs = String::new();
        for log in ["postgres.log", "postgrest.log", "nginx.log", "nginx-error.log"] {
            if let Ok(text) = fs::read_to_string(self.dir.join(log)) {
                let tail = &text[text.len().saturating_sub(1500)..];
                logs.push_str(&format!("\n--- {log}:\n{tail}"));
            }
        }
        bail!("{what} did not start on port {port}{logs}")
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

    /// Runs SQL as the `postgres` superuser.
    pub fn execute(&self, sql: &str) -> Result<()> {
        let url = self.db_url();
        let sql = sql.to_owned();
        run_async(async move {
            let client = connect(&url).await?;
            client.batch_execute(&sql).await.context("running SQL")?;
            Ok(())
        })
    }

    /// Runs a query as the `postgres` superuser and returns the first column of each row as text.
    pub fn query(&self, sql: &str) -> Result<Vec<Option<String>>> {
        let url = self.db_url();
        let sql = sql.to_owned();
        run_async(async move {
            let client = connect(&url).await?;
            let rows = client.simple_query(&sql).await.context("running a query")?;
            Ok(rows
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
                    _ => None,
                })
                .collect())
        })
    }

    /// Supabase's roles and `auth` helpers, then every migration in order, each in one transaction.
    fn bootstrap(&self) -> Result<()> {
        let mut sql = String::from(BOOTSTRAP);
        if self.grants == Grants::Default {
            sql.push_str(DEFAULT_GRANTS);
        }
        self.execute(&sql)?;
        let mut migrations: Vec<PathBuf> = fs::read_dir(repo_root().join("supabase/migrations"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        migrations.sort();
        for path in migrations {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let (version, label) = name.split_once('_').unwrap_or((&name, ""));
            let body = fs::read_to_string(&path)?;
            self.execute(&format!(
                "begin;\n{body}\n;\ninsert into supabase_migrations.schema_migrations (version, name) values ('{version}', '{label}');\ncommit;"
            ))
            .with_context(|| format!("applying {}", path.display()))?;
        }
        Ok(())
    }

    /// Where this stack keeps its data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends to a log in the stack's directory, for tests that want a trace of what they did.
    pub fn note(&self, line: &str) {
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("notes.log")) {
            let _ = writeln!(f, "{line}");
        }
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

impl Bins {
    fn find() -> Result<Bins> {
        let pg = match std::env::var_os("PG_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
                    .context("PostgreSQL is not installed (no /usr/lib/postgresql); run scripts/install-deps")?
                    .filter_map(|e| e.ok())
                    .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
                    .filter(|(_, bin)| bin.join("postgres").exists())
                    .collect();
                versions.sort();
                versions.pop().context("no PostgreSQL server binaries; run scripts/install-deps")?.1
            }
        };
        let postgrest = std::env::var_os("POSTGREST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".tools/postgrest"));
        if !postgrest.exists() {
            bail!("PostgREST not found at {}; run scripts/install-deps", postgrest.display());
        }
        let nginx = std::env::var_os("NGINX_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
        if !nginx.exists() {
            bail!("nginx not found at {}; run scripts/install-deps", nginx.display());
        }
        Ok(Bins { pg, postgrest, nginx })
    }
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

/// What a Supabase project has before any migration: its roles, the `auth` helpers that read
/// PostgREST's request settings, and the migrations history table.
const BOOTSTRAP: &str = r#"
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
create role authenticator login noinherit password 'authenticator';
grant anon, authenticated, service_role to authenticator;
grant usage on schema public to anon, authenticated, service_role;
create schema extensions;
grant usage on schema extensions to anon, authenticated, service_role;

create schema auth;
grant usage on schema auth to anon, authenticated, service_role;
create function auth.jwt() returns jsonb language sql stable as
  $$ select coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb $$;
create function auth.uid() returns uuid language sql stable as
  $$ select nullif(auth.jwt() ->> 'sub', '')::uuid $$;
create function auth.role() returns text language sql stable as
  $$ select nullif(auth.jwt() ->> 'role', '') $$;

create schema supabase_migrations;
create table supabase_migrations.schema_migrations (version text primary key, statements text[], name text);
"#;

/// The default privileges older hosted projects have.
const DEFAULT_GRANTS: &str = r#"
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
"#;
