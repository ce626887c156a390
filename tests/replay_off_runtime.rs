//! Replay reads, quarantines and removes spool segments off the async runtime, so webhooks do not
//! wait while it works through a large one. A test binary of its own, so that nothing else competes
//! for the cores while it times the runtime.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use twilio_ingest::ingest::Settings;
use twilio_ingest::{Application, Config};

#[tokio::test(flavor = "current_thread")]
async fn a_large_segment_does_not_stall_the_runtime() {
    let spool = std::env::temp_dir().join(format!("twilio-ingest-replay-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&spool).unwrap();
    // A 96 MiB segment in the old format that holds no whole record: all of it is damage, to be
    // read, copied to quarantine/ and removed.
    std::fs::write(spool.join(format!("{:020}.spool", 0)), vec![0xFF_u8; 96 << 20]).unwrap();
    let env: HashMap<&str, String> = [
        ("TWILIO_AUTH_TOKEN", "7c8a2c5e0b1d4f3a9e6b8d2c1f0a3e5b".to_owned()),
        ("PUBLIC_URL", "https://ingest.example.com".to_owned()),
        ("SUPABASE_URL", "http://127.0.0.1:1".to_owned()),
        ("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz".to_owned()),
        ("SPOOL_DIR", spool.display().to_string()),
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", "0".to_owned()),
        ("OPS_PORT", "0".to_owned()),
    ]
    .into_iter()
    .collect();
    let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
    // No background replay: the test runs the one pass itself.
    let settings = Settings { replay_interval: Duration::from_secs(3600), ..Settings::default() };
    let app = Application::build_with(&config, settings).await.unwrap();
    let ingestor = app.ingestor().clone();

    // A task that should wake every 5 ms, as a webhook's handler would need to run.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let ticker = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        loop {
            let slept = Instant::now();
            tokio::select! {
                _ = &mut stopped => return worst,
                () = tokio::time::sleep(Duration::from_millis(5)) => worst = worst.max(slept.elapsed()),
            }
        }
    });
    tokio::task::yield_now().await;
    let report = ingestor.drain_spool().await;
    let _ = stop.send(());
    let worst = ticker.await.unwrap();

    assert_eq!(report.remaining, 0, "{report:?}");
    let kept: u64 =
        std::fs::read_dir(spool.join("quarantine")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert_eq!(kept, 96 << 20, "the damaged bytes were not all moved aside");
    eprintln!("worst wake-up: {worst:?}");
    assert!(worst < Duration::from_millis(40), "the runtime stalled for {worst:?} while replay worked");
    let _ = std::fs::remove_dir_all(&spool);
}
