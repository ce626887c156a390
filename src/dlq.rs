//! Dead letters, for operators: list them, and re-drive them into `jobs` once their cause is fixed.

use std::time::Duration;

use crate::ingest::{classify, Classified, ReceivedAt};
use crate::supabase::{DeadLetter, Error, Supabase};
use crate::twilio::Params;

const TIMEOUT: Duration = Duration::from_secs(10);

/// What re-driving dead letters came to.
#[derive(Debug, Default)]
pub struct RedriveReport {
    /// Dead letters that are now jobs (or were already).
    pub replayed: Vec<String>,
    /// Dead letters that still cannot become jobs, with why.
    pub still_failing: Vec<(String, String)>,
}

/// Up to `limit` dead letters waiting, oldest first, and how many wait in all.
pub async fn pending(supabase: &Supabase, limit: usize) -> Result<(Vec<DeadLetter>, u64), Error> {
    let mut letters = supabase.pending_dead_letters(false, None, limit, TIMEOUT).await?;
    if letters.len() < limit {
        letters.extend(supabase.pending_dead_letters(true, None, limit - letters.len(), TIMEOUT).await?);
    }
    Ok((letters, supabase.count_pending_dead_letters(TIMEOUT).await?))
}

/// Tries up to `limit` pending dead letters: first those never tried again, then those an earlier
/// replay failed on, each oldest first, a page at a time. So letters that keep failing (however
/// many) never hide newer ones that a fix has made replayable. Idempotent: a replayed letter is
/// marked and not read again, and a MessageSid that already has a job does not get a second.
pub async fn replay(supabase: &Supabase, limit: usize) -> Result<RedriveReport, Error> {
    const PAGE: usize = 100;
    let mut report = RedriveReport::default();
    // The letters this run tried in its first pass are "tried" by the second: not again.
    let mut seen = std::collections::HashSet::new();
    let mut left = limit;
    for tried in [false, true] {
        let mut after: Option<DeadLetter> = None;
        while left > 0 {
            let page = supabase.pending_dead_letters(tried, after.as_ref(), left.min(PAGE), TIMEOUT).await?;
            let Some(last) = page.last().cloned() else { break };
            for letter in page {
                if seen.insert(letter.id.clone()) && left > 0 {
                    left -= 1;
                    redrive(supabase, letter, &mut report).await?;
                }
            }
            after = Some(last);
        }
    }
    Ok(report)
}

/// Deletes the pending dead letters with `ids`, or (with `unusable`) every unusable one; returns
/// how many went.
pub async fn discard(supabase: &Supabase, ids: &[uuid::Uuid], unusable: bool) -> Result<u64, Error> {
    supabase.discard_dead_letters(ids, unusable, TIMEOUT).await
}

async fn redrive(supabase: &Supabase, letter: DeadLetter, report: &mut RedriveReport) -> Result<(), Error> {
    let payload = decoded(&letter.payload);
    let outcome = match payload.as_object().map(Params::from_object) {
        None => Err("the payload is not an object".to_owned()),
        Some(params) => match classify(&params, arrival_of(&letter)) {
            Classified::Ignored => Ok(()),
            Classified::Unusable(letter) => Err(letter.why.to_string()),
            Classified::Job { job, .. } => {
                supabase.ingest_inbound(&[&job], TIMEOUT).await.map(drop).map_err(|e| e.to_string())
            }
        },
    };
    supabase.mark_dead_letter(&letter.id, outcome.as_ref().map(|_| ()).map_err(String::as_str), TIMEOUT).await?;
    match outcome {
        Ok(()) => report.replayed.push(letter.id),
        Err(why) => report.still_failing.push((letter.id, why)),
    }
    Ok(())
}

/// When a dead letter's webhook arrived, so its job takes its place in its channel's order; the
/// replay's own time for letters written before arrival times were kept.
fn arrival_of(letter: &DeadLetter) -> ReceivedAt {
    letter.received_at.as_deref().and_then(ReceivedAt::parse_rfc3339).unwrap_or_else(ReceivedAt::now)
}

/// The params a dead letter holds, whether stored as they are or, when jsonb could not hold them,
/// as JSON text (see [`crate::supabase::ENCODED_PAYLOAD`]).
fn decoded(payload: &serde_json::Value) -> std::borrow::Cow<'_, serde_json::Value> {
    let text = payload
        .get(crate::supabase::ENCODED_PAYLOAD)
        .filter(|e| *e == "json")
        .and_then(|_| payload.get("json"))
        .and_then(|t| t.as_str());
    match text.and_then(|t| serde_json::from_str(t).ok()) {
        Some(params) => std::borrow::Cow::Owned(params),
        None => std::borrow::Cow::Borrowed(payload),
    }
}
