//! The users Supabase is known to hold, by phone, so that a batch of messages from phones alone
//! (SMS, WhatsApp without a BSUID) can skip resolving its senders (`ingest_jobs` instead of
//! `ingest_inbound`). A message that carries any other address always resolves, so that the
//! address is linked.
//!
//! Learnt only from batches that went through `ingest_inbound`, which leaves every user of the batch
//! stored, and named if any of its messages brought a name. Trusted for `ttl` only, because other
//! hands may change `users`: a user deleted meanwhile shows up at once as a foreign key refusal,
//! and the caller forgets it and sends the batch again with its users; a user whose name was
//! cleared is named again by the first message after `ttl`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::supabase::EncodedJob;

pub(super) struct KnownUsers {
    users: Mutex<HashMap<String, Known>>,
    capacity: usize,
    ttl: Duration,
}

#[derive(Clone, Copy)]
struct Known {
    /// The user has a first name, so a message bringing one has nothing to add.
    named: bool,
    learnt: Instant,
}

impl KnownUsers {
    /// Remembers at most `capacity` users (none if it is 0), each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        KnownUsers { users: Mutex::new(HashMap::new()), capacity, ttl }
    }

    /// True if every job's user is known to be stored and the job has nothing to add to it.
    pub fn all_stored_and_named(&self, jobs: &[&EncodedJob]) -> bool {
        let now = Instant::now();
        let users = self.users.lock().expect("no panic while holding the lock");
        jobs.iter().all(|job| {
            job.phone_only
                .as_ref()
                .and_then(|phone| users.get(phone))
                .is_some_and(|known| self.fresh(known, now) && (known.named || !job.names_user))
        })
    }

    /// Records that `ingest_inbound` stored the users of `jobs`.
    pub fn learn(&self, jobs: &[&EncodedJob]) {
        if self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let mut users = self.users.lock().expect("no panic while holding the lock");
        for (job, phone) in jobs.iter().filter_map(|job| Some((job, job.phone_only.as_ref()?))) {
            if users.len() >= self.capacity && !users.contains_key(phone) {
                users.retain(|_, known| self.fresh(known, now));
                if users.len() >= self.capacity {
                    // Memory stays bounded; forgetting everyone costs each of them one upsert.
                    users.clear();
                }
            }
            let known = users.entry(phone.clone()).or_insert(Known { named: false, learnt: now });
            // What was learnt before this batch counts only while it is fresh.
            known.named = (known.named && self.fresh(known, now)) || job.names_user;
            known.learnt = now;
        }
    }

    /// Forgets the users of `jobs`, after Supabase said one of them is not stored.
    pub fn forget(&self, jobs: &[&EncodedJob]) {
        let mut users = self.users.lock().expect("no panic while holding the lock");
        for phone in jobs.iter().filter_map(|job| job.phone_only.as_ref()) {
            users.remove(phone);
        }
    }

    fn fresh(&self, known: &Known, now: Instant) -> bool {
        now.duration_since(known.learnt) < self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supabase::NewJob;

    const HOUR: Duration = Duration::from_secs(3600);

    fn job(phone: &str, first_name: Option<&str>) -> EncodedJob {
        let payload = serde_json::json!({});
        NewJob {
            message_sid: "SM1",
            user_phone: Some(phone),
            bsuid: None,
            parent_bsuid: None,
            chat: None,
            first_name,
            source_type: "dm",
            source_channel_id: phone,
            channel_prefix: Some(""),
            content_type: "text",
            payload: &payload,
            received_at_us: 0,
        }
        .encode()
    }

    #[test]
    fn a_user_never_stored_through_ingest_inbound_is_not_known() {
        let known = KnownUsers::new(10, HOUR);
        assert!(!known.all_stored_and_named(&[&job("+15550000001", None)]));
        assert!(known.all_stored_and_named(&[]), "an empty batch has no user to upsert");
    }

    #[test]
    fn a_message_with_a_bsuid_always_resolves_its_sender() {
        let known = KnownUsers::new(10, HOUR);
        let payload = serde_json::json!({});
        let with_bsuid = NewJob {
            message_sid: "SM2",
            user_phone: Some("+15550000001"),
            bsuid: Some("US.1"),
            parent_bsuid: None,
            chat: None,
            first_name: None,
            source_type: "dm",
            source_channel_id: "whatsapp:+15550000001",
            channel_prefix: Some("whatsapp:"),
            content_type: "text",
            payload: &payload,
            received_at_us: 0,
        }
        .encode();
        known.learn(&[&with_bsuid, &job("+15550000001", None)]);
        assert!(!known.all_stored_and_named(&[&with_bsuid]), "its BSUID may need linking");
        assert!(known.all_stored_and_named(&[&job("+15550000001", None)]));
    }

    #[test]
    fn a_nameless_user_still_needs_a_name_that_a_message_brings() {
        let known = KnownUsers::new(10, HOUR);
        let (nameless, named) = (job("+15550000001", None), job("+15550000001", Some("Ada")));
        known.learn(&[&nameless]);
        assert!(known.all_stored_and_named(&[&nameless]));
        assert!(!known.all_stored_and_named(&[&named]));
        known.learn(&[&named]);
        assert!(known.all_stored_and_named(&[&named]));
        assert!(known.all_stored_and_named(&[&nameless]), "a later nameless message keeps the name");
    }

    #[test]
    fn one_unknown_user_sends_the_whole_batch_through_the_upsert() {
        let known = KnownUsers::new(10, HOUR);
        let (a, b) = (job("+15550000001", None), job("+15550000002", None));
        known.learn(&[&a]);
        assert!(!known.all_stored_and_named(&[&a, &b]));
    }

    #[test]
    fn a_forgotten_user_is_upserted_again() {
        let known = KnownUsers::new(10, HOUR);
        let a = job("+15550000001", None);
        known.learn(&[&a]);
        known.forget(&[&a]);
        assert!(!known.all_stored_and_named(&[&a]));
    }

    #[test]
    fn what_was_learnt_expires() {
        let known = KnownUsers::new(10, Duration::ZERO);
        let a = job("+15550000001", Some("Ada"));
        known.learn(&[&a]);
        assert!(!known.all_stored_and_named(&[&a]));
    }

    #[test]
    fn memory_stays_within_capacity() {
        let known = KnownUsers::new(3, HOUR);
        let jobs: Vec<EncodedJob> = (0..10).map(|i| job(&format!("+1555000000{i}"), None)).collect();
        for job in &jobs {
            known.learn(&[job]);
            assert!(known.users.lock().unwrap().len() <= 3);
        }
        assert!(known.all_stored_and_named(&[&jobs[9]]), "the latest is kept");
    }

    #[test]
    fn a_capacity_of_zero_never_skips_the_upsert() {
        let known = KnownUsers::new(0, HOUR);
        let a = job("+15550000001", None);
        known.learn(&[&a]);
        assert!(!known.all_stored_and_named(&[&a]));
    }
}
