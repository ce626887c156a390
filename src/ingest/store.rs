//! Storing in Supabase: jobs in as few round trips as can be, and dead letters, each retried
//! within its deadline. The batcher and the spool's replay both store through here.

use std::collections::HashSet;
use std::time::Instant;

use serde_json::Value;

use super::{retry, Inner, Outcome, ReceivedAt, UnusableLetter};
use crate::supabase::{DeadLetterKind, EncodedJob, NewDeadLetter};

/// Why a message is dead-lettered, twice: as `dlq_jobs.error` keeps it, beside the payload, with
/// the values at fault; and as a log line at the default level may show it, without them.
pub(super) struct Reason {
    pub stored: String,
    pub logged: String,
}

/// What a write to Supabase came to for one message.
pub(super) enum Delivery {
    Written(Outcome),
    /// Supabase could not take it in time, for the reason given; the message must go to the spool.
    /// `refused`: it was refused for its content, not kept out by an outage (or a key or grant
    /// that refuses every message alike), so trying again unchanged will not help.
    Unwritten {
        why: String,
        refused: bool,
    },
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
            let skip_users = may_skip_users && self.known_users.all_stored_and_named(&chunk);
            let written = retry::until(until, |timeout| {
                let chunk = &chunk;
                async move {
                    if skip_users {
                        self.supabase.ingest_jobs(chunk, timeout).await
                    } else {
                        self.supabase.ingest_inbound(chunk, timeout).await
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
                        deliveries[i] = Some(Delivery::Unwritten { why: e.to_string(), refused: false });
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
                            Reason { stored: e.with_details(), logged: e.to_string() },
                            DeadLetterKind::Rejected,
                            until,
                        )
                        .await,
                    );
                }
            }
        }
        deliveries.into_iter().map(|d| d.expect("every range is resolved")).collect()
    }

    /// Dead-letters one letter for `reason`, retrying what is worth retrying until `until`.
    pub(super) async fn dead_letter_with(
        &self,
        payload: &Value,
        message_sid: Option<&str>,
        received_at: ReceivedAt,
        reason: Reason,
        kind: DeadLetterKind,
        until: Instant,
    ) -> Delivery {
        let letter =
            NewDeadLetter::new(message_sid, payload, reason.stored, kind).received_at(received_at.to_rfc3339());
        let written = retry::until(until, |timeout| {
            let letters = std::slice::from_ref(&letter);
            async move { self.supabase.insert_dead_letters(letters, timeout).await }
        })
        .await;
        match written {
            Ok(()) => {
                tracing::warn!(message_sid, reason = %reason.logged, kind = kind.as_str(), "dead-lettered");
                tracing::debug!(message_sid, error = %letter.error, "dead letter's error as stored");
                metrics::counter!("dlq_inserts_total", "kind" => kind.as_str()).increment(1);
                Delivery::Written(Outcome::DeadLettered)
            }
            Err(e) => {
                tracing::error!(message_sid, error = %e, "could not dead-letter");
                Delivery::Unwritten { why: e.to_string(), refused: !e.is_transient() }
            }
        }
    }

    pub(super) async fn dead_letter(&self, letter: &UnusableLetter, until: Instant) -> Delivery {
        let reason = Reason { stored: letter.why.detail(), logged: letter.why.to_string() };
        self.dead_letter_with(
            &letter.payload,
            letter.message_sid.as_deref(),
            letter.received_at,
            reason,
            DeadLetterKind::Unusable,
            until,
        )
        .await
    }
}
