//! When a webhook arrived: the instant its deadline runs from, and the wall-clock moment that gives
//! its job a place in its channel's order.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The moment the service received a webhook, in microseconds since the Unix epoch.
///
/// Strictly increasing within a process: two webhooks received in the same microsecond (or while
/// the wall clock steps back) still get distinct, ordered values. So the jobs of one batch, which
/// share a transaction and so a `created_at`, keep the order they arrived in. Kept in the spool
/// record and the dead letter, so a message that waited out an outage keeps its place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReceivedAt(i64);

impl ReceivedAt {
    pub fn now() -> Self {
        static LAST: AtomicI64 = AtomicI64::new(0);
        let wall = wall_clock_micros();
        let previous = LAST
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(wall.max(last + 1)))
            .expect("the update always returns Some");
        ReceivedAt(wall.max(previous + 1))
    }

    pub fn from_micros(micros: i64) -> Self {
        ReceivedAt(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// Reads a `timestamptz` as PostgREST renders it, in the database's `TimeZone`, whatever
    /// that is (`2026-11-24T10:59:25.354568+00:00`, `2026-11-24T05:59:25.354568-05:00`), or as
    /// [`ReceivedAt::to_rfc3339`] writes it.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
        let micros = time.unix_timestamp_nanos() / 1_000;
        Some(ReceivedAt(i64::try_from(micros).ok()?))
    }

    /// How long ago this was (zero if it is in the future).
    pub fn age(self) -> Duration {
        Duration::from_micros(wall_clock_micros().saturating_sub(self.0).max(0) as u64)
    }

    /// As PostgreSQL reads a `timestamptz`: RFC 3339, UTC, to the microsecond.
    pub fn to_rfc3339(self) -> String {
        let time = UNIX_EPOCH + Duration::from_micros(self.0.max(0) as u64);
        humantime::format_rfc3339_micros(time).to_string()
    }
}

/// The wall clock, in microseconds since the Unix epoch.
fn wall_clock_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// A webhook's arrival, as the edge records it before anything else.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// Where the request's deadline runs from.
    pub instant: Instant,
    pub at: ReceivedAt,
}

impl Arrival {
    pub fn now() -> Self {
        Arrival { instant: Instant::now(), at: ReceivedAt::now() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_strictly_increasing_even_within_one_microsecond() {
        let times: Vec<ReceivedAt> = (0..10_000).map(|_| ReceivedAt::now()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn an_arrival_reads_as_a_timestamp_to_the_microsecond() {
        assert_eq!(ReceivedAt::from_micros(1_795_000_000_123_456).to_rfc3339(), "2026-11-18T11:06:40.123456Z");
    }

    #[test]
    fn a_timestamp_from_postgrest_is_read_to_the_microsecond() {
        let at = ReceivedAt::parse_rfc3339("2026-11-18T11:06:40.123456+00:00").unwrap();
        assert_eq!(at, ReceivedAt::from_micros(1_795_000_000_123_456));
        assert_eq!(ReceivedAt::parse_rfc3339(&at.to_rfc3339()), Some(at));
        assert_eq!(ReceivedAt::parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn a_timestamp_in_any_offset_is_the_same_moment() {
        let utc = ReceivedAt::from_micros(1_795_000_000_123_456);
        for text in
            ["2026-11-18T06:06:40.123456-05:00", "2026-11-18T16:36:40.123456+05:30", "2026-11-18T11:06:40.123456Z"]
        {
            assert_eq!(ReceivedAt::parse_rfc3339(text), Some(utc), "{text}");
        }
    }
}
