//! Memory stays flat when nothing scrapes `/metrics`. A test binary of its own, so that nothing else
//! in the process moves its memory while it measures.
//!
//! The Prometheus exporter keeps every histogram sample until something folds it into its buckets.
//! On Fly nothing may scrape for weeks; the recorder's upkeep does the folding on a timer.

use std::time::Duration;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn histogram_samples_do_not_pile_up_when_nothing_scrapes() {
    let _handle = twilio_ingest::telemetry::metrics();
    let mut after_round = Vec::new();
    for round in 0..4 {
        // What a busy service records in a while: half a million request timings.
        for i in 0..500_000u32 {
            metrics::histogram!("webhook_duration_seconds", "outcome" => "ingested").record(f64::from(i % 1000) / 1e5);
        }
        after_round.push(rss_kib());
        if round < 3 {
            // Longer than one upkeep period, so the samples are folded before the next round.
            std::thread::sleep(Duration::from_secs(6));
        }
    }
    let grew = after_round[3].saturating_sub(after_round[0]);
    // Kept samples would take about 4 MiB a round; folded ones, nothing.
    assert!(grew < 3 * 1024, "RSS grew by {grew} KiB over three more rounds with nothing scraping: {after_round:?}");
}
