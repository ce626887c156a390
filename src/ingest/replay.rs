//! Drains the spool into Supabase once it is reachable again, oldest first.
//!
//! Replay is idempotent: a job already written (the batcher may have committed it just after its
//! request gave up waiting) is a duplicate, and a dead letter already written is not repeated. So a
//! segment is removed only once all its records are written, and re-reading it after a crash halfway
//! through does no harm.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::store::{Delivery, Reason};
use super::{classify, Classified, Inner, ReceivedAt, SpoolRecord};
use crate::spool::read_segment;
use crate::supabase::DeadLetterKind;
use crate::twilio::Params;

const CHUNK: usize = 200;
/// How long one chunk of a replay may keep retrying before the replay stops and waits.
const CHUNK_BUDGET: Duration = Duration::from_secs(10);
// At most this long between tries while Supabase stays away: live messages wait behind the spool,
// so it must notice a recovery soon, and one chunk every few seconds is no load.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// What one pass over the spool came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpoolDrainReport {
    /// Records written to `jobs` or `dlq_jobs` (or found there already).
    pub replayed: usize,
    /// Records still waiting in the spool.
    pub remaining: u64,
    /// Why the pass stopped early, if it did.
    pub stalled: Option<String>,
}

pub(super) async fn run(inner: Arc<Inner>, mut stop: oneshot::Receiver<()>) {
    if !inner.settings.background_replay {
        let _ = stop.await;
        return;
    }
    let mut wait = inner.settings.replay_interval;
    loop {
        if inner.spool.depth() > 0 {
            let report = drain(&inner).await;
            if report.replayed > 0 || report.stalled.is_some() {
                tracing::info!(
                    replayed = report.replayed,
                    remaining = report.remaining,
                    stalled = report.stalled,
                    "spool replay"
                );
            }
            // Back off while Supabase stays away, so an outage is not hammered. A pass that made
            // progress goes on at once: live messages wait behind what is left.
            wait = if report.stalled.is_some() {
                (wait * 2).min(MAX_WAIT)
            } else if report.remaining > 0 && report.replayed > 0 {
                Duration::ZERO
            } else {
                inner.settings.replay_interval
            };
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

pub(super) async fn drain(inner: &Inner) -> SpoolDrainReport {
    // A pass that waited for another finds what that one left.
    let _replayer = inner.replaying.lock().await;
    let mut report = SpoolDrainReport::default();
    let mut stalled_by_refusal = false;
    let segments = match inner.spool.rotate().await {
        Ok(segments) => segments,
        Err(e) => {
            report.stalled = Some(format!("cannot list the spool: {e}"));
            report.remaining = inner.spool.depth();
            return report;
        }
    };
    'segments: for path in segments {
        // Segments are a few MiB at most, read off the runtime's thread so webhooks do not wait.
        let read = tokio::task::spawn_blocking(move || read_segment(&path).map_err(|e| (path, e))).await;
        let segment = match read.expect("reading a segment does not panic") {
            Ok(segment) => segment,
            Err((path, e)) => {
                report.stalled = Some(format!("cannot read {}: {e}", path.display()));
                break;
            }
        };
        for chunk in segment.records.chunks(CHUNK) {
            if let Err((why, refused)) = replay_chunk(inner, chunk).await {
                report.stalled = Some(why);
                stalled_by_refusal = refused;
                break 'segments;
            }
            report.replayed += chunk.len();
        }
        // Every whole record is stored: move the damage aside, then let the segment go.
        let spool = inner.spool.clone();
        let path = segment.path.clone();
        let done =
            tokio::task::spawn_blocking(move || spool.quarantine(&segment).and_then(|()| spool.remove(&segment))).await;
        if let Err(e) = done.expect("removing a segment does not panic") {
            report.stalled = Some(format!("cannot quarantine or remove {}: {e}", path.display()));
            break;
        }
    }
    report.remaining = inner.spool.depth();
    inner.replay_refused.store(stalled_by_refusal, std::sync::atomic::Ordering::Relaxed);
    metrics::gauge!("spool_depth").set(report.remaining as f64);
    report
}

/// Stores a chunk of records; on failure, why, and whether it was a refusal of a record's content
/// rather than an outage.
async fn replay_chunk(inner: &Inner, records: &[Vec<u8>]) -> Result<(), (String, bool)> {
    let until = Instant::now() + CHUNK_BUDGET;
    let mut jobs = Vec::new();
    let mut dead = Vec::new();
    let mut unreadable = Vec::new();
    for record in records {
        // A record that passed its checksum but is not ours to read can only come from another
        // version or a bug. Replay must not stop behind it for good, nor drop it: its bytes go to
        // the dead-letter table, and replay moves on.
        let parsed = serde_json::from_slice::<SpoolRecord>(record).map_err(|e| e.to_string()).and_then(|r| {
            match r.payload.as_object() {
                Some(object) => Ok((Params::from_object(object), r.received_at_us)),
                None => Err("its payload is not an object".to_owned()),
            }
        });
        let (params, received_at_us) = match parsed {
            Ok(parsed) => parsed,
            Err(why) => {
                unreadable.push((BASE64.encode(record), why));
                continue;
            }
        };
        let received_at = received_at_us.map_or_else(ReceivedAt::now, ReceivedAt::from_micros);
        match classify(&params, received_at) {
            Classified::Ignored => {}
            Classified::Job { job, payload, .. } => jobs.push((job, payload)),
            Classified::Unusable(letter) => dead.push(letter),
        }
    }
    let jobs: Vec<_> = jobs.iter().map(|(job, payload)| (job, payload)).collect();
    let mut deliveries = inner.write_jobs(&jobs, until).await;
    for letter in &dead {
        deliveries.push(inner.dead_letter(letter, until).await);
    }
    for (bytes, why) in unreadable {
        let payload = serde_json::json!({ "unreadable_spool_record_base64": bytes });
        let error = format!("unreadable spool record: {why}");
        let reason = Reason { stored: error.clone(), logged: error };
        deliveries.push(
            inner.dead_letter_with(&payload, None, ReceivedAt::now(), reason, DeadLetterKind::Unusable, until).await,
        );
    }
    match deliveries.into_iter().find_map(|d| match d {
        Delivery::Unwritten { why, refused } => Some((why, refused)),
        Delivery::Written(_) => None,
    }) {
        Some(failed) => Err(failed),
        None => Ok(()),
    }
}
