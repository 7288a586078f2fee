//! Leader election over a `coordination.k8s.io` Lease, as client-go does it, as a pure state
//! machine: the caller reads the Lease, asks [`Elector::step`] what to do, and writes.
//!
//! Expiry is judged by the local clock from the moment this replica *saw* the record change,
//! never from the timestamps inside it, so clock skew between nodes cannot make two replicas
//! lead at once. Writes carry the resourceVersion that was read: when two replicas race for an
//! expired Lease, the API server accepts one write and answers 409 to the other.
use std::time::{Duration, Instant};

/// The parts of a Lease the election looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `None` or empty: released.
    pub holder: Option<String>,
    pub duration: Duration,
    /// `renewTime` as the API returned it; only compared, never trusted as a clock.
    pub renew_time: Option<String>,
    pub transitions: i32,
}

/// What to write next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// There is no Lease: create it, held by us.
    Create,
    /// The Lease is free or expired: take it (with this transition count).
    Acquire { transitions: i32 },
    /// We hold it: renew.
    Renew,
    /// Someone else holds it and has renewed within the lease duration.
    Follow {
        holder: String,
        expires_in: Duration,
    },
}

pub struct Elector {
    identity: String,
    seen: Option<(Record, Instant)>,
}

impl Elector {
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            seen: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Decides from the Lease as read at `now`.
    pub fn step(&mut self, current: Option<&Record>, now: Instant) -> Step {
        let Some(record) = current else {
            self.seen = None;
            return Step::Create;
        };
        let observed = match &self.seen {
            Some((seen, at)) if seen == record => *at,
            _ => {
                self.seen = Some((record.clone(), now));
                now
            }
        };
        match record.holder.as_deref() {
            Some(h) if h == self.identity => Step::Renew,
            Some(h) if !h.is_empty() => {
                let expires = observed + record.duration;
                if now < expires {
                    Step::Follow {
                        holder: h.to_owned(),
                        expires_in: expires - now,
                    }
                } else {
                    Step::Acquire {
                        transitions: record.transitions.saturating_add(1),
                    }
                }
            }
            _ => Step::Acquire {
                transitions: record.transitions.saturating_add(1),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str, renew: &str) -> Record {
        Record {
            holder: Some(by.into()),
            duration: Duration::from_secs(15),
            renew_time: Some(renew.into()),
            transitions: 3,
        }
    }

    #[test]
    fn no_lease_means_create_and_our_own_means_renew() {
        let mut e = Elector::new("a");
        let t0 = Instant::now();
        assert_eq!(e.step(None, t0), Step::Create);
        assert_eq!(e.step(Some(&held("a", "1")), t0), Step::Renew);
    }

    #[test]
    fn a_live_holder_is_followed_until_it_stops_renewing() {
        let mut e = Elector::new("b");
        let t0 = Instant::now();
        let step = e.step(Some(&held("a", "1")), t0);
        assert_eq!(
            step,
            Step::Follow {
                holder: "a".into(),
                expires_in: Duration::from_secs(15)
            }
        );
        // a renews at t0+10: the clock restarts from when b sees the new record.
        let t10 = t0 + Duration::from_secs(10);
        assert!(matches!(
            e.step(Some(&held("a", "2")), t10),
            Step::Follow { .. }
        ));
        let t24 = t0 + Duration::from_secs(24);
        assert!(
            matches!(e.step(Some(&held("a", "2")), t24), Step::Follow { expires_in, .. } if expires_in == Duration::from_secs(1))
        );
        // No renewal for the whole duration: take it.
        let t25 = t0 + Duration::from_secs(25);
        assert_eq!(
            e.step(Some(&held("a", "2")), t25),
            Step::Acquire { transitions: 4 }
        );
    }

    #[test]
    fn timestamps_inside_the_record_are_not_trusted() {
        // The holder's clock is far behind: a renewTime "in the past" must not make b take
        // over a lease it has just seen being renewed.
        let mut e = Elector::new("b");
        let t0 = Instant::now();
        let ancient = held("a", "1970-01-01T00:00:00.000000Z");
        assert!(matches!(e.step(Some(&ancient), t0), Step::Follow { .. }));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let mut e = Elector::new("b");
        let released = Record {
            holder: Some(String::new()),
            duration: Duration::from_secs(1),
            renew_time: None,
            transitions: 7,
        };
        assert_eq!(
            e.step(Some(&released), Instant::now()),
            Step::Acquire { transitions: 8 }
        );
    }
}
