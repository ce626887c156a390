//! Coalesces concurrent jobs into one REST round trip.
//!
//! No timer: a batch is whatever queued while the previous batches were in flight, so one
//! message alone goes out at once and a burst shares round trips.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{retry, Delivery, IngestError, Inner, Outcome, ReceivedAt};
use crate::supabase::EncodedJob;

pub(super) struct Pending {
    pub job: EncodedJob,
    pub payload: Value,
    pub received_at: ReceivedAt,
    /// When the request must stop waiting for Supabase and spool instead.
    pub until: Instant,
    pub reply: oneshot::Sender<Result<Outcome, IngestError>>,
}

pub(super) async fn run(inner: Arc<Inner>, mut queue: mpsc::Receiver<Pending>) {
    let in_flight = inner.settings.batches_in_flight;
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let Some(first) = queue.recv().await else { break };
        let mut batch = Vec::with_capacity(inner.settings.max_batch);
        batch.push(first);
        while batch.len() < inner.settings.max_batch {
            match queue.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        metrics::histogram!("batch_size").record(batch.len() as f64);
        let inner = inner.clone();
        tokio::spawn(async move {
            flush(&inner, batch).await;
            drop(slot);
        });
    }
    // The queue is closed: wait for the batches still in flight.
    let _ = slots.acquire_many(in_flight as u32).await;
}

async fn flush(inner: &Inner, batch: Vec<Pending>) {
    let until = batch.iter().map(|p| p.until).min().expect("a batch is never empty");
    let jobs: Vec<(&EncodedJob, &Value)> = batch.iter().map(|p| (&p.job, &p.payload)).collect();
    let deliveries = inner.write_jobs(&jobs, until).await;
    // Spool every unwritten job at once so they share the spool's fsync.
    let results = join_all(batch.iter().zip(deliveries).map(|(pending, delivery)| async move {
        match delivery {
            Delivery::Written(outcome) => Ok(outcome),
            Delivery::Unwritten(why) => {
                tracing::warn!(message_sid = %pending.job.message_sid, %why, "not stored in Supabase in time; spooling");
                inner.spool_payload(&pending.payload, pending.received_at).await.map(|()| Outcome::Spooled).map_err(IngestError::from)
            }
        }
    }))
    .await;
    for (pending, result) in batch.into_iter().zip(results) {
        let _ = pending.reply.send(result);
    }
}

impl Inner {
    /// Writes `jobs` in as few round trips as it can and says, for each in order, where it went.
    ///
    /// A batch whose users are all known to be stored skips the users upsert. A batch that
    /// Supabase refuses for good is split in halves until the message at fault is alone, so only
    /// it is dead-lettered and its neighbours are not punished.
    pub(super) async fn write_jobs(&self, jobs: &[(&EncodedJob, &Value)], until: Instant) -> Vec<Delivery> {
        let mut deliveries: Vec<Option<Delivery>> = jobs.iter().map(|_| None).collect();
        // A work stack of index ranges still to write, each with whether its users may be
        // skipped; splits push their halves.
        let mut ranges = vec![(0..jobs.len(), true)];
        while let Some((range, may_skip_users)) = ranges.pop() {
            let chunk: Vec<&EncodedJob> = jobs[range.clone()].iter().map(|(job, _)| *job).collect();
            let skip_users = may_skip_users && self.known_users.need_nothing(&chunk);
            let written = retry::until(until, |timeout| {
                let chunk = &chunk;
                async move {
                    if skip_users {
                        self.supabase.ingest_jobs(chunk, timeout).await
                    } else {
                        self.supabase.ingest_batch(chunk, timeout).await
                    }
                }
            })
            .await;
            match written {
                Ok(existed) => {
                    if !skip_users {
                        self.known_users.learn(&chunk);
                    }
                    // A MessageSid twice in one batch is written once, for its first occurrence.
                    let mut seen = HashSet::with_capacity(range.len());
                    for (position, i) in range.enumerate() {
                        let first = seen.insert(jobs[i].0.message_sid.as_str());
                        let outcome =
                            if first && !existed.contains(&position) { Outcome::Ingested } else { Outcome::Duplicate };
                        deliveries[i] = Some(Delivery::Written(outcome));
                    }
                }
                // A user thought stored is gone, and nothing was written: again, with the users.
                Err(e) if skip_users && e.is_foreign_key_violation() => {
                    tracing::info!(error = %e, "a known user is no longer stored; upserting the batch's users");
                    self.known_users.forget(&chunk);
                    ranges.push((range, false));
                }
                Err(e) if e.is_transient() => {
                    for i in range {
                        deliveries[i] = Some(Delivery::Unwritten(e.to_string()));
                    }
                }
                Err(_) if range.len() > 1 => {
                    let mid = range.start + range.len() / 2;
                    ranges.push((mid..range.end, may_skip_users));
                    ranges.push((range.start..mid, may_skip_users));
                }
                Err(e) => {
                    let (job, payload) = jobs[range.start];
                    let received_at = ReceivedAt::from_micros(job.received_at_us);
                    deliveries[range.start] = Some(
                        self.dead_letter_with(
                            payload,
                            Some(&job.message_sid),
                            received_at,
                            e.to_string(),
                            "rejected",
                            until,
                        )
                        .await,
                    );
                }
            }
        }
        deliveries.into_iter().map(|d| d.expect("every range is resolved")).collect()
    }
}
