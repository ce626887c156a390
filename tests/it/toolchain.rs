//! The project on the toolchain users have: PostgreSQL 17, a hosted project's roles, migrations
//! pushed by the real Supabase CLI, and schema changes that go live the way they do on Supabase.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devstack::{project_copy, repo_root, Grants, KeyKind, Stack};
use twilio_ingest::ingest::Settings;

use crate::helpers::*;

fn migration_files() -> i64 {
    std::fs::read_dir(repo_root().join("supabase/migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sql"))
        .count() as i64
}

#[test]
fn migrations_are_pushed_by_the_cli_as_a_postgres_that_is_not_a_superuser() {
    for grants in [Grants::Default, Grants::None] {
        let stack = shared_stack(grants);
        // The major scripts/test asked for (PG_MAJOR, 17 by default).
        let version = read_column(stack, "show server_version_num")[0].clone().unwrap();
        assert_eq!(version[..2], devstack::pg_major(), "server_version_num {version}");
        assert_eq!(
            read_column(stack, "select rolsuper::text from pg_roles where rolname = current_user"),
            [Some("false".into())]
        );
        assert_eq!(
            read_column(stack, "select tableowner::text from pg_tables where tablename = 'jobs'"),
            [Some("postgres".into())]
        );
        // The CLI's own history, as on a hosted project: one row per migration file.
        assert_eq!(count(stack, "select count(*) from supabase_migrations.schema_migrations"), migration_files());
        // A second push finds nothing to do and changes nothing.
        let again = stack.push_migrations(&repo_root(), false).unwrap();
        assert!(again.contains("up to date"), "{again}");
        assert_eq!(count(stack, "select count(*) from supabase_migrations.schema_migrations"), migration_files());
    }
}

/// `supabase db reset` (and `db push --include-seed`) applies seed.sql after the migrations: it
/// must fit the schema.
#[test]
fn the_seed_applies_on_top_of_the_migrations() {
    let stack = Stack::start(Grants::None).unwrap();
    stack.push_migrations(&repo_root(), true).unwrap();
    assert_eq!(count(&stack, "select count(*) from jobs"), 3);
    assert_eq!(count(&stack, "select count(*) from dlq_jobs"), 1);
    // Every user keyed, and the withheld phone's job answered on its WhatsApp id.
    assert_eq!(count(&stack, "select count(*) from users where id in ('+14155550100', '+447700900123')"), 2);
    assert_eq!(
        read_column(&stack, "select reply_to from jobs where user_phone is null"),
        [Some("whatsapp:US.13491208655302741918".to_owned())]
    );
}

/// Sends signed messages to `app` one after another until `stop` is set (at most `limit` of them),
/// and returns the MessageSids answered 200.
async fn keep_sending(app: &TestApp, stop: &AtomicBool, limit: usize) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for i in 0..limit {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let params = sms(&unique_phone(), &format!("during the push {i}"));
        let response = app.post_signed(&params).await;
        assert_eq!(response.status(), 200, "a webhook during the push was refused");
        acknowledged.push(sid_of(&params));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_pushed_to_a_running_stack_is_live_without_a_restart() {
    let stack = Stack::start(Grants::None).unwrap();
    let app = spawn_app(&stack, KeyKind::Secret).await;
    let project = project_copy(None).unwrap();
    std::fs::write(
        project.join("supabase/migrations/29991231000000_pushed_while_running.sql"),
        "create function public.pushed_while_running() returns integer language sql as $$ select 42 $$;
         revoke execute on function public.pushed_while_running() from public, anon, authenticated;
         grant execute on function public.pushed_while_running() to service_role;",
    )
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sending = {
        let stop = stop.clone();
        async move { keep_sending(&app, &stop, 500).await }
    };
    let pushing = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stack = &stack;
        let project = project.clone();
        let output = tokio::task::block_in_place(|| stack.push_migrations(&project, false)).unwrap();
        assert!(output.contains("29991231000000"), "{output}");
        // PostgREST was not restarted: its schema cache reloads on the event triggers' NOTIFY.
        let client = reqwest::Client::new();
        let key = KeyKind::Secret.service_key();
        let until = Instant::now() + Duration::from_secs(10);
        let answer = loop {
            let response = client
                .post(format!("{}/rest/v1/rpc/pushed_while_running", stack.url()))
                .header("apikey", &key)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            if response.status() == 200 || Instant::now() > until {
                break (response.status().as_u16(), response.text().await.unwrap());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        answer
    };
    let (acknowledged, answer) = tokio::join!(sending, pushing);
    assert_eq!(answer, (200, "42".to_owned()), "the pushed function is not live");
    assert!(acknowledged.len() >= 10, "only {} webhooks were sent around the push", acknowledged.len());
    assert_each_stored_once(&stack, &acknowledged);
    assert_eq!(count(&stack, "select count(*) from dlq_jobs"), 0);
    let _ = std::fs::remove_dir_all(project);
}

/// A release deployed before its migration was pushed: its functions are missing. That is not the
/// messages' fault: they are spooled, not dead-lettered, readiness names the missing function, and
/// pushing the migration is the whole fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_ahead_of_its_migration_spools_and_heals_once_it_is_pushed() {
    // The project as it was before ingest_batch and ingest_jobs existed, and as the release
    // before this one left it (no user_identities, no ingest_inbound).
    for (grants, up_to) in [(Grants::Default, "20261123000100"), (Grants::None, "20261124000200")] {
        let before = project_copy(Some(up_to)).unwrap();
        let stack = Stack::start_from(grants, &before).unwrap();
        let settings = Settings { replay_interval: Duration::from_millis(100), ..Settings::default() };
        let app = spawn_app_at(&stack.url(), KeyKind::LegacyJwt, &temp_dir("spool"), settings, &[]).await;

        let mut sids = Vec::new();
        for i in 0..5 {
            let params = sms(&unique_phone(), &format!("ahead of the migration {i}"));
            let started = Instant::now();
            let response = app.post_signed(&params).await;
            assert_eq!(response.status(), 200);
            // Spooled at once, not after retrying until the deadline.
            assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
            sids.push(sid_of(&params));
        }
        assert_eq!(app.ingestor.spool_depth(), 5, "{grants:?}");
        assert_eq!(count(&stack, "select count(*) from jobs"), 0);
        assert_eq!(
            count(&stack, "select count(*) from dlq_jobs"),
            0,
            "{grants:?}: a missing function dead-lettered messages"
        );
        assert_not_ready(&app, &["table users", "supabase db push --remote"]).await;

        stack.push_migrations(&repo_root(), false).unwrap();
        assert!(
            app.wait_for_empty_spool(Duration::from_secs(30)).await,
            "{grants:?}: the spool did not drain after the push"
        );
        assert_each_stored_once(&stack, &sids);
        assert_eq!(count(&stack, &format!("select count(*) from jobs where message_sid in ({})", sql_list(&sids))), 5);
        assert_eq!(app.ops_get("/readyz").await.status(), 200);
        app.stop().await;
        let _ = std::fs::remove_dir_all(before);
    }
}

/// The CLI commands a user runs without Docker accept this project's config.toml (CLI 3 refuses
/// keys it no longer knows, such as `[inbucket]`): `migration list`, `gen types`, `db reset`.
#[test]
fn the_cli_commands_that_need_no_docker_accept_the_project() {
    let stack = Stack::start(Grants::None).unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(repo_root().join(".tools/supabase"))
            .args(args)
            .arg(format!("--remote={}", stack.database_url()))
            .arg("--workdir")
            .arg(repo_root())
            .env("SUPABASE_TELEMETRY_DISABLED", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "supabase {args:?}:\n{text}");
        text
    };
    let listed = cli(&["migration", "list"]);
    for file in std::fs::read_dir(repo_root().join("supabase/migrations")).unwrap() {
        let name = file.unwrap().file_name().to_string_lossy().into_owned();
        let version = name.split('_').next().unwrap();
        assert_eq!(listed.matches(version).count(), 2, "{version} is not both local and remote:\n{listed}");
    }
    let types = cli(&["gen", "types", "typescript"]);
    for name in
        ["claim_jobs", "complete_jobs", "fail_job", "ingest_batch", "ingest_inbound", "user_identities", "reply_to"]
    {
        assert!(types.contains(name), "no {name} in the generated types");
    }
    let reset = cli(&["db", "reset", "--yes"]);
    assert!(reset.contains("Seeding data from supabase/seed.sql"), "{reset}");
    assert_eq!(count(&stack, "select count(*) from jobs"), 3);
}

/// Rows migrate into the queue's lease rule. A job some earlier worker left `processing` had no
/// lease, so it could never expire: after the push it holds one that has run out, and the next
/// claim takes it back before newer work. A job a worker PATCHed complete kept its lease: it ends,
/// though the job is final.
#[test]
fn jobs_migrate_to_holding_a_lease_exactly_while_processing() {
    let before = project_copy(Some("20261124000100")).unwrap();
    let stack = Stack::start_from(Grants::None, &before).unwrap();
    let sender = unique_phone();
    stack
        .execute(&format!(
            "insert into users (phone_number) values ('{sender}');
             insert into jobs (user_id, user_phone, source_channel_id, source_type, payload, message_sid, status)
             values ('{sender}', '{sender}', 'a', 'dm', '{{}}', 'SMnew', 'pending'),
                    ('{sender}', '{sender}', 'b', 'dm', '{{}}', 'SMstuck', 'processing'),
                    ('{sender}', '{sender}', 'c', 'dm', '{{}}', 'SMpatched', 'pending');
             update jobs set status = 'processing', locked_by = 'old', locked_until = now() + interval '1 hour'
             where message_sid = 'SMpatched';
             update jobs set status = 'complete' where message_sid = 'SMpatched';"
        ))
        .unwrap();
    stack.push_migrations(&repo_root(), false).unwrap();

    let leases: Vec<(String, String, String)> = read_rows(
        &stack,
        "select message_sid, status, coalesce((locked_until <= now())::text, 'no lease') from jobs order by 1",
    );
    assert_eq!(
        leases,
        [
            ("SMnew".into(), "pending".into(), "no lease".into()),
            ("SMpatched".into(), "complete".into(), "no lease".into()),
            ("SMstuck".into(), "processing".into(), "true".into()),
        ]
    );
    let claimed: Vec<(String, i64)> =
        read_rows(&stack, "select message_sid, attempts from claim_jobs('after-the-push', 1)");
    assert_eq!(claimed, [("SMstuck".into(), 1)]);
    let _ = std::fs::remove_dir_all(before);
}

/// The tests start many stacks at once, each on ports that were free when it picked them. A stack
/// whose server finds its port already held must fail to start (and be started again elsewhere),
/// never come up talking to the other stack's servers: when that one stopped, every test on this
/// one would lose its database.
#[test]
fn a_stack_whose_port_is_held_by_another_stack_refuses_to_use_it() {
    let first = shared_stack(Grants::None);
    let taken_database = Stack::start_on(Grants::None, devstack::free_port(), first.pg_port)
        .err()
        .expect("a stack came up on another stack's PostgreSQL");
    assert!(format!("{taken_database:#}").contains("PostgreSQL"), "{taken_database:#}");
    let taken_gateway = Stack::start_on(Grants::None, first.gateway_port, devstack::free_port())
        .err()
        .expect("a stack came up behind another stack's gateway");
    assert!(
        format!("{taken_gateway:#}")
            .contains(&format!("another server listens on the gateway's port {}", first.gateway_port)),
        "{taken_gateway:#}"
    );
    // And the stack that held them is untouched.
    assert_eq!(count(first, "select count(*) from supabase_migrations.schema_migrations"), migration_files());
    first.wait_ready(Duration::from_secs(5)).unwrap();
}

/// The `ingest:` line of `check`, once it `contains` what is awaited (within 5 s).
async fn check_ingest_line(config: &twilio_ingest::Config, contains: &str) -> String {
    let mut line = String::new();
    for _ in 0..100 {
        let report = twilio_ingest::operator::check(config).await;
        line = report.lines.iter().find(|l| l.starts_with("ingest:")).cloned().unwrap();
        if line.contains(contains) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    line
}

/// `check` tells a schema cache that lags the database (the function is there, PostgREST does not
/// know it) from a migration not pushed, and gives the fix for each.
#[tokio::test]
async fn check_tells_a_stale_schema_cache_from_a_migration_not_pushed() {
    let stack = Stack::start(Grants::None).unwrap();
    let config = config(&stack.url(), KeyKind::Secret, &temp_dir("spool"), &[]);
    // No reload triggers (as on a self-hosted PostgREST without them): the cache changes only
    // when told to, so each state below is the one the test made.
    stack
        .execute_as_admin("alter event trigger pgrst_ddl_watch disable; alter event trigger pgrst_drop_watch disable")
        .unwrap();
    // A migration not pushed: the function is not in the database, nor (once reloaded) in the
    // cache, which PostgREST says with PGRST202.
    stack
        .execute("alter function public.ingest_jobs(jsonb) rename to ingest_jobs_hidden; notify pgrst, 'reload schema'")
        .unwrap();
    let line = check_ingest_line(&config, "PGRST202").await;
    assert!(line.contains("ingest_jobs") && line.contains("supabase db push --remote"), "{line}");
    // A stale cache: the function is back in the database, and PostgREST is not told.
    stack.execute("alter function public.ingest_jobs_hidden(jsonb) rename to ingest_jobs").unwrap();
    let line = check_ingest_line(&config, "PROBLEM").await;
    assert!(line.contains("NOTIFY pgrst, 'reload schema'") && !line.contains("db push"), "{line}");
    // The fix it names is the fix.
    stack.execute("notify pgrst, 'reload schema'").unwrap();
    let line = check_ingest_line(&config, "ingest: ok").await;
    assert!(line.starts_with("ingest: ok"), "{line}");
}

/// `supabase/schema.sql` is the schema as the migrations leave it, so that a reader finds the
/// current version of every table and function in one file rather than stitching migrations
/// together. It is rendered from a stack's catalogs; when a migration changes the schema, this
/// fails until the file is rendered again: `UPDATE_SCHEMA=1 cargo test --test it
/// toolchain::supabase_schema_sql`.
#[test]
fn supabase_schema_sql_is_the_schema_the_migrations_leave() {
    // PostgreSQL 17 is what hosted projects run; another major may render the same schema
    // differently.
    if devstack::pg_major() != "17" {
        return;
    }
    let stack = Stack::start(Grants::None).unwrap();
    let objects: Vec<String> = read_column(&stack, include_str!("schema_snapshot.sql")).into_iter().flatten().collect();
    let rendered = format!(
        "-- The schema as supabase/migrations leave it: generated, never edited by hand. The\n\
         -- migrations are what is applied; this is what they add up to. Regenerate with\n\
         -- `UPDATE_SCHEMA=1 cargo test --test it toolchain::supabase_schema_sql`.\n\n{}\n",
        objects.join("\n\n")
    );
    let path = repo_root().join("supabase/schema.sql");
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let first_difference = committed
        .lines()
        .zip(rendered.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(committed.lines().count().min(rendered.lines().count()));
    assert!(
        committed == rendered,
        "supabase/schema.sql is not what the migrations leave (first difference at line {}: {:?}); \
         run `UPDATE_SCHEMA=1 cargo test --test it toolchain::supabase_schema_sql` and commit it",
        first_difference + 1,
        rendered.lines().nth(first_difference)
    );
}
