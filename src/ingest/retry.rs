//! Retrying what is worth retrying, within a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng as _;

use crate::supabase::Error;

/// An attempt needs at least this long to have a chance; with less left, stop and spool.
const MIN_ATTEMPT: Duration = Duration::from_millis(50);
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Runs `attempt` (given the time it may take) until it succeeds, fails for good
/// ([`Error::is_transient`] is false), or `until` leaves no room for another try. Backoff is
/// exponential with jitter, so a fleet of retries after an outage does not arrive in step.
pub(super) async fn until<T, F, Fut>(until: Instant, mut attempt: F) -> Result<T, Error>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left < MIN_ATTEMPT {
            return Err(Error::Timeout(left));
        }
        match attempt(left).await {
            Ok(value) => return Ok(value),
            // Waiting out the request will not bring a missing function: spool it at once.
            // Nothing to wait for: a refusal for good, or one that only an operator ends.
            Err(e) if !e.is_transient() || e.is_schema_missing() || e.refuses_every_message() => return Err(e),
            Err(e) => {
                // Honour Retry-After when the server gives one, as far as the deadline allows.
                let jittered = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
                let pause = e.retry_after().map_or(jittered, |asked| asked.max(jittered));
                if Instant::now() + pause + MIN_ATTEMPT > until {
                    return Err(e);
                }
                tracing::debug!(error = %e, ?pause, "retrying Supabase");
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn unavailable() -> Error {
        Error::from_response(503, br#"{"code":"PGRST000","message":"Database connection error"}"#)
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_until_it_succeeds() {
        let calls = AtomicU32::new(0);
        let result = until(Instant::now() + Duration::from_secs(2), |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Err(unavailable())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_permanent_failure_is_not_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = until(Instant::now() + Duration::from_secs(2), |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Error::from_response(400, br#"{"code":"23514","message":"violates check constraint"}"#)) }
        })
        .await;
        assert!(!result.unwrap_err().is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refusal_only_an_operator_ends_is_not_waited_out() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let result: Result<(), _> = until(Instant::now() + Duration::from_secs(2), |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Error::from_response(403, br#"{"code":"42501","message":"permission denied"}"#)) }
        })
        .await;
        assert!(result.unwrap_err().refuses_every_message());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn retry_after_is_honoured_within_the_deadline() {
        let asked = || unavailable().with_retry_after(Some(Duration::from_millis(400)));
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let result = until(started + Duration::from_secs(2), |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(asked())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 1);
        assert!(started.elapsed() >= Duration::from_millis(400), "retried after {:?}", started.elapsed());
        // A wait past the deadline is not waited: the caller spools at once.
        let started = Instant::now();
        let result: Result<(), _> = until(started + Duration::from_millis(300), |_| async { Err(asked()) }).await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_millis(100), "waited {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn retries_stop_at_the_deadline() {
        let started = Instant::now();
        let result: Result<(), _> = until(started + Duration::from_millis(300), |_| async { Err(unavailable()) }).await;
        assert!(result.unwrap_err().is_transient());
        assert!(started.elapsed() < Duration::from_millis(400));
    }
}
