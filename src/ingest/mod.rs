//! Ingest: turns a genuine webhook into a job, a dead letter, or a spooled record, and says which
//! only once the message is durable in one of them.
//!
//! Jobs from concurrent requests are coalesced into one REST round trip (`batcher`) and stored
//! (`store`): a refused batch is split to find the message at fault, which alone is dead-lettered;
//! Supabase failures worth retrying are retried until the request's deadline (`retry`), then the
//! message is spooled and replayed later (`replay`). Each message keeps the moment it arrived
//! (`arrival`), its place in its channel's order.

mod arrival;
mod batcher;
mod known_users;
mod replay;
mod retry;
mod store;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use self::arrival::{Arrival, ReceivedAt};
use self::known_users::KnownUsers;
pub use self::replay::SpoolDrainReport;
use self::store::Delivery;
use crate::spool::Spool;
use crate::supabase::{EncodedJob, NewJob, Supabase};
use crate::twilio::{webhook, Channel, InboundMessage, Params, Unusable, Webhook};

/// Time kept back from a request's deadline for writing the spool if Supabase does not answer.
const SPOOL_RESERVE: Duration = Duration::from_millis(250);

/// Where a message ended up. Every variant but `Ignored` means it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ingested,
    /// A job with this MessageSid already existed: a Twilio retry or re-send.
    Duplicate,
    DeadLettered,
    Spooled,
    /// Genuine, but not an inbound message; nothing to store.
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ingested => "ingested",
            Outcome::Duplicate => "duplicate",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Spooled => "spooled",
            Outcome::Ignored => "ignored",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Supabase could not take the message and neither could the spool's disk.
    #[error("the message could not be made durable anywhere: {0}")]
    NotDurable(#[from] std::io::Error),
}

/// What a spool record holds: the params as received, from which everything else is derived again,
/// and when they arrived.
#[derive(Serialize, Deserialize)]
struct SpoolRecord {
    payload: Value,
    /// Absent in records written before arrival times were kept; those take their replay's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    received_at_us: Option<i64>,
}

/// One line about a spool record for an operator: its MessageSid and when it arrived.
pub fn describe_spool_record(record: &[u8]) -> String {
    match serde_json::from_slice::<SpoolRecord>(record) {
        Ok(r) => {
            let sid = r.payload.get("MessageSid").and_then(Value::as_str).unwrap_or("no MessageSid");
            let at = r.received_at_us.map(|us| ReceivedAt::from_micros(us).to_rfc3339());
            format!("{sid}, received {}", at.as_deref().unwrap_or("at an unrecorded time"))
        }
        Err(_) => format!("{} bytes that are not a message", record.len()),
    }
}

/// A signed message that cannot become a job, on its way to `dlq_jobs`.
pub(crate) struct UnusableLetter {
    payload: Value,
    message_sid: Option<String>,
    received_at: ReceivedAt,
    pub why: Unusable,
}

/// The tunables of ingest; the defaults are the production ones.
#[derive(Clone, Debug)]
pub struct Settings {
    pub deadline: Duration,
    pub max_batch: usize,
    pub batches_in_flight: usize,
    pub queue_capacity: usize,
    pub replay_interval: Duration,
    /// Whether a background task replays the spool. `spool drain` replays it itself, in passes
    /// it times to its own deadline.
    pub background_replay: bool,
    /// How many users to remember as stored, so that their jobs skip the users upsert
    /// (`known_users`); 0 remembers none.
    pub known_users: usize,
    /// How long a remembered user is trusted before the next batch upserts them again.
    pub known_user_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            deadline: Duration::from_millis(2_500),
            max_batch: 200,
            batches_in_flight: 2,
            queue_capacity: 8_192,
            replay_interval: Duration::from_secs(1),
            background_replay: true,
            known_users: 10_000,
            known_user_ttl: Duration::from_secs(600),
        }
    }
}

#[derive(Clone)]
pub struct Ingestor {
    inner: Arc<Inner>,
    queue: mpsc::Sender<batcher::Pending>,
}

struct Inner {
    supabase: Supabase,
    spool: Spool,
    known_users: KnownUsers,
    settings: Settings,
    /// Set by a replay pass that stopped on a record refused for its content, not by an outage:
    /// live messages then stop waiting behind the spool, which may not drain for a while.
    replay_refused: std::sync::atomic::AtomicBool,
    /// Held by whichever pass is replaying the spool: one replayer per spool, always. (The spool's
    /// lock keeps other processes out; this keeps the background replay and `spool drain`'s own
    /// passes from replaying the same segments side by side.)
    replaying: tokio::sync::Mutex<()>,
}

/// The background tasks behind an [`Ingestor`]; [`Workers::shutdown`] drains them.
pub struct Workers {
    batcher: JoinHandle<()>,
    replayer: JoinHandle<()>,
    stop_replay: oneshot::Sender<()>,
}

impl Ingestor {
    pub fn start(supabase: Supabase, spool: Spool, settings: Settings) -> (Ingestor, Workers) {
        let known_users = KnownUsers::new(settings.known_users, settings.known_user_ttl);
        let inner = Arc::new(Inner {
            supabase,
            spool,
            known_users,
            settings,
            replay_refused: std::sync::atomic::AtomicBool::new(false),
            replaying: tokio::sync::Mutex::new(()),
        });
        let (queue, receiver) = mpsc::channel(inner.settings.queue_capacity);
        let batcher = tokio::spawn(batcher::run(inner.clone(), receiver));
        let (stop_replay, stopped) = oneshot::channel();
        let replayer = tokio::spawn(replay::run(inner.clone(), stopped));
        (Ingestor { inner, queue }, Workers { batcher, replayer, stop_replay })
    }

    /// Makes a genuine webhook durable and says where it went. `arrival.instant` starts its
    /// deadline; `arrival.at` is its place in its channel's order.
    ///
    /// Returns an error only if the message could not be written to Supabase nor to the spool.
    pub async fn ingest(
        &self,
        params: &Params,
        arrival: Arrival,
    ) -> Result<(Outcome, Option<InboundMessage>), IngestError> {
        // A bug must not lose a message Twilio will not send again: if anything below panics, the
        // params go to the spool as they are, and replay will meet the bug again later, not drop it.
        match AssertUnwindSafe(self.ingest_inner(params, arrival)).catch_unwind().await {
            Ok(result) => result,
            Err(_) => {
                tracing::error!("ingest panicked; spooling the message");
                self.spool(&params.to_payload(), arrival.at).await?;
                Ok((Outcome::Spooled, None))
            }
        }
    }

    async fn ingest_inner(
        &self,
        params: &Params,
        arrival: Arrival,
    ) -> Result<(Outcome, Option<InboundMessage>), IngestError> {
        let deadline = arrival.instant + self.inner.settings.deadline;
        let until = deadline.checked_sub(SPOOL_RESERVE).unwrap_or(deadline);
        match classify(params, arrival.at) {
            Classified::Ignored => Ok((Outcome::Ignored, None)),
            Classified::Unusable(letter) => match self.inner.dead_letter(&letter, until).await {
                Delivery::Written(outcome) => Ok((outcome, None)),
                Delivery::Unwritten { .. } => Ok((self.spool(&letter.payload, arrival.at).await?, None)),
            },
            // A message received while the spool holds messages received before it goes behind
            // them, so that none of those is still missing from the queue when its turn comes.
            Classified::Job { message, .. } if self.inner.waits_behind_spool() => {
                Ok((self.spool(&params.to_payload(), arrival.at).await?, Some(message)))
            }
            Classified::Job { job, payload, message } => {
                let (reply, answer) = oneshot::channel();
                let pending = batcher::Pending { job, payload, received_at: arrival.at, until, reply };
                let queued = tokio::time::timeout_at(until.into(), self.queue.send(pending)).await;
                let answer = match queued {
                    Ok(Ok(())) => tokio::time::timeout_at(deadline.into(), answer).await.ok().and_then(Result::ok),
                    _ => None,
                };
                let outcome = match answer {
                    Some(result) => result?,
                    // The batcher is late or gone. It may still commit the job; replay then finds a duplicate.
                    None => self.spool(&params.to_payload(), arrival.at).await?,
                };
                Ok((outcome, Some(message)))
            }
        }
    }

    async fn spool(&self, payload: &Value, received_at: ReceivedAt) -> Result<Outcome, IngestError> {
        self.inner.spool_payload(payload, received_at).await?;
        Ok(Outcome::Spooled)
    }

    pub fn spool_depth(&self) -> u64 {
        self.inner.spool.depth()
    }

    /// Replays the spool once, as the background replayer does, and says what is left.
    pub async fn drain_spool(&self) -> SpoolDrainReport {
        replay::drain(&self.inner).await
    }

    /// Whether the spool could take a message now (see [`crate::spool::health`]); says why not.
    pub async fn spool_health(&self) -> Result<(), String> {
        let dir = self.inner.spool.dir().to_owned();
        tokio::task::spawn_blocking(move || crate::spool::health(&dir)).await.unwrap_or_else(|e| Err(e.to_string()))
    }
}

impl Workers {
    /// Stops taking work, finishes what was queued, and stops the replayer.
    pub async fn shutdown(self, ingestor: Ingestor) {
        drop(ingestor);
        let _ = self.stop_replay.send(());
        let _ = self.batcher.await;
        let _ = self.replayer.await;
    }
}

pub(crate) enum Classified {
    Ignored,
    Job { job: EncodedJob, payload: Value, message: InboundMessage },
    Unusable(UnusableLetter),
}

/// What a genuine webhook, received at `received_at`, is to become: nothing, a job, or a dead letter.
pub(crate) fn classify(params: &Params, received_at: ReceivedAt) -> Classified {
    let payload = params.to_payload();
    match webhook::parse(params) {
        Ok(Webhook::Ignored { event }) => {
            tracing::info!(%event, "acknowledged and ignored: not an inbound message");
            Classified::Ignored
        }
        Ok(Webhook::Message(message)) => {
            let sender = &message.sender;
            let (source_channel_id, channel_prefix) = match &message.channel {
                Channel::Direct { prefix } => (params.non_blank("From").unwrap_or_default(), Some(prefix.as_str())),
                Channel::Conversation(sid) => (sid.as_str(), None),
            };
            let job = NewJob {
                message_sid: &message.message_sid,
                user_phone: sender.phone_number().map(|p| p.as_str()),
                bsuid: sender.business_id().map(|b| b.as_str()),
                parent_bsuid: sender.parent_id().map(|b| b.as_str()),
                chat: sender.chat_identity(),
                first_name: message.first_name.as_deref(),
                source_type: message.kind.as_str(),
                source_channel_id,
                channel_prefix,
                content_type: message.content_type.as_str(),
                payload: &payload,
                received_at_us: received_at.as_micros(),
            }
            .encode();
            Classified::Job { job, payload, message }
        }
        Err(why) => {
            let message_sid = webhook::message_sid(params).map(str::to_owned);
            Classified::Unusable(UnusableLetter { payload, message_sid, received_at, why })
        }
    }
}

impl Inner {
    /// Whether a new message must go to the spool, behind the ones waiting there: while any
    /// wait, unless replay is stuck on one refused for its content (order cannot be kept behind a
    /// message nobody will take, and holding every later one would stop the queue).
    fn waits_behind_spool(&self) -> bool {
        self.spool.depth() > 0 && !self.replay_refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn spool_payload(&self, payload: &Value, received_at: ReceivedAt) -> std::io::Result<()> {
        let record = SpoolRecord { payload: payload.clone(), received_at_us: Some(received_at.as_micros()) };
        let record = serde_json::to_vec(&record).expect("JSON always serialises");
        self.spool.append(record).await?;
        metrics::gauge!("spool_depth").set(self.spool.depth() as f64);
        Ok(())
    }
}
