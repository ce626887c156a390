//! Coalesces concurrent jobs into one REST round trip.
//!
//! No timer: a batch is whatever queued while the previous batches were in flight, so one
//! message alone goes out at once and a burst shares round trips.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::store::Delivery;
use super::{IngestError, Inner, Outcome, ReceivedAt};
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
            Delivery::Unwritten { why, .. } => {
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
