//! The job queue, for operators: its state at a glance, and failed jobs put back to work.
//! Workers use the SQL functions directly (see the README's "Processing jobs").

use std::time::Duration;

use crate::ingest::ReceivedAt;
use crate::supabase::{Error, QueueStat, Supabase};

const TIMEOUT: Duration = Duration::from_secs(10);

/// `job_queue_stats`, and how long the oldest pending job has waited.
#[derive(Debug)]
pub struct QueueReport {
    pub stats: Vec<QueueStat>,
    pub oldest_pending_age: Option<Duration>,
}

pub async fn stats(supabase: &Supabase) -> Result<QueueReport, Error> {
    let stats = supabase.job_queue_stats(TIMEOUT).await?;
    let oldest_pending_age = stats
        .iter()
        .filter(|s| s.status == "pending")
        .filter_map(|s| s.oldest.as_deref().and_then(ReceivedAt::parse_rfc3339))
        .min()
        .map(ReceivedAt::age);
    Ok(QueueReport { stats, oldest_pending_age })
}

impl std::fmt::Display for QueueReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:<11} {:<11} {:>10}  oldest", "source_type", "status", "jobs")?;
        for s in &self.stats {
            writeln!(
                f,
                "{:<11} {:<11} {:>10}  {}",
                s.source_type,
                s.status,
                s.jobs,
                s.oldest.as_deref().unwrap_or("-")
            )?;
        }
        match self.oldest_pending_age {
            Some(age) => write!(
                f,
                "oldest pending job: waiting {}",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            ),
            None => write!(f, "oldest pending job: none pending"),
        }
    }
}

/// Which failed jobs to requeue.
#[derive(Debug, Default)]
pub struct RetrySelection {
    pub ids: Vec<String>,
    /// RFC 3339, as PostgreSQL reads it.
    pub failed_since: Option<String>,
}

/// Reads `--failed-since`: a time (`2026-11-24T10:00:00Z`) or how long ago (`2h`, `30m`).
pub fn parse_since(text: &str) -> Result<String, String> {
    if let Some(at) = ReceivedAt::parse_rfc3339(text) {
        return Ok(at.to_rfc3339());
    }
    let ago = humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is neither a time (2026-11-24T10:00:00Z) nor a duration (2h)"))?;
    let micros =
        ReceivedAt::now().as_micros() - i64::try_from(ago.as_micros()).map_err(|_| "too long ago".to_owned())?;
    Ok(ReceivedAt::from_micros(micros).to_rfc3339())
}

/// Requeues the failed jobs selected (all of them when nothing is selected); returns how many.
pub async fn retry(supabase: &Supabase, selection: &RetrySelection) -> Result<u64, Error> {
    let ids = (!selection.ids.is_empty()).then_some(selection.ids.as_slice());
    supabase.retry_failed_jobs(ids, selection.failed_since.as_deref(), TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_since_takes_a_time_or_how_long_ago() {
        assert_eq!(parse_since("2026-11-18T11:06:40Z").unwrap(), "2026-11-18T11:06:40.000000Z");
        let two_hours_ago = ReceivedAt::parse_rfc3339(&parse_since("2h").unwrap()).unwrap();
        assert!((two_hours_ago.age().as_secs() as i64 - 7200).abs() < 5);
        assert!(parse_since("last tuesday").unwrap_err().contains("neither a time"));
    }
}
