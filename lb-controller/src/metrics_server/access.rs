//! Who may read `/metrics` over HTTPS, without I/O: the bearer token of a request, and the
//! verdicts the API server gave, remembered for a while so that a scrape every few seconds does
//! not cost two API calls (the TTLs of Kubernetes' delegated authentication and authorization).
//!
//! Tokens are kept only as SHA-256 digests, and the memory is bounded: a flood of random tokens
//! evicts the oldest verdicts, never grows the map.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// What the API server said of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated, and allowed `get` on `/metrics`.
    Allowed,
    /// TokenReview: not a valid token (401).
    Unauthenticated,
    /// SubjectAccessReview: a valid token of someone not allowed (403).
    Forbidden,
}

impl Verdict {
    /// The HTTP status and body of a refusal; `None` for [`Verdict::Allowed`].
    pub fn refusal(self) -> Option<(u16, String)> {
        match self {
            Verdict::Allowed => None,
            Verdict::Unauthenticated => Some((401, "Unauthorized\n".to_owned())),
            Verdict::Forbidden => Some((
                403,
                "Forbidden: get on the non-resource URL /metrics is not allowed\n".to_owned(),
            )),
        }
    }
}

/// How long an allowed token is believed (a revoked binding takes this long to bite).
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refusal is remembered (a new binding takes this long to work).
pub const DENIED_TTL: Duration = Duration::from_secs(10);
/// Verdicts remembered at most.
pub const MAX_ENTRIES: usize = 256;

/// The token of an `Authorization: Bearer TOKEN` header (the scheme's case ignored).
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

type Key = [u8; 32];

/// The remembered verdicts.
#[derive(Debug, Default)]
pub struct Verdicts {
    entries: HashMap<Key, (Verdict, Instant)>,
}

fn key(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

impl Verdicts {
    /// The verdict on `token` if one is still fresh at `now`.
    pub fn get(&self, token: &str, now: Instant) -> Option<Verdict> {
        let (verdict, at) = self.entries.get(&key(token))?;
        let ttl = match verdict {
            Verdict::Allowed => ALLOWED_TTL,
            _ => DENIED_TTL,
        };
        (now.saturating_duration_since(*at) < ttl).then_some(*verdict)
    }

    /// Remembers `verdict` on `token` from `now`, dropping stale verdicts and, when still full,
    /// the oldest.
    pub fn put(&mut self, token: &str, verdict: Verdict, now: Instant) {
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.retain(|_, (v, at)| {
                let ttl = if *v == Verdict::Allowed {
                    ALLOWED_TTL
                } else {
                    DENIED_TTL
                };
                now.saturating_duration_since(*at) < ttl
            });
        }
        if self.entries.len() >= MAX_ENTRIES
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k)
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(key(token), (verdict, now));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_read_from_the_header_and_nothing_else_passes() {
        assert_eq!(bearer(Some("Bearer abc.def")), Some("abc.def"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic dXNlcjpwYXNz")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn verdicts_last_their_ttl_and_refusals_a_shorter_one() {
        let t0 = Instant::now();
        let mut v = Verdicts::default();
        v.put("good", Verdict::Allowed, t0);
        v.put("bad", Verdict::Forbidden, t0);
        assert_eq!(v.get("good", t0 + DENIED_TTL), Some(Verdict::Allowed));
        assert_eq!(v.get("bad", t0 + DENIED_TTL / 2), Some(Verdict::Forbidden));
        assert_eq!(v.get("bad", t0 + DENIED_TTL), None);
        assert_eq!(v.get("good", t0 + ALLOWED_TTL), None);
        assert_eq!(v.get("other", t0), None);
    }

    #[test]
    fn a_flood_of_tokens_never_grows_the_memory_past_its_bound() {
        let t0 = Instant::now();
        let mut v = Verdicts::default();
        v.put("kept", Verdict::Allowed, t0 + Duration::from_secs(5));
        for i in 0..10 * MAX_ENTRIES {
            v.put(
                &format!("random-{i}"),
                Verdict::Unauthenticated,
                t0 + Duration::from_secs(6),
            );
        }
        assert!(v.len() <= MAX_ENTRIES, "{}", v.len());
        // The flood came after the allowed verdict, so it was the oldest and went first: a
        // token worth remembering is asked again, never wrongly believed.
        assert_eq!(v.get("kept", t0 + Duration::from_secs(6)), None);
        // Once the flood's refusals are stale they give their places back.
        v.put("later", Verdict::Allowed, t0 + Duration::from_secs(30));
        assert!(v.len() <= 2, "{}", v.len());
        assert_eq!(
            v.get("later", t0 + Duration::from_secs(31)),
            Some(Verdict::Allowed)
        );
    }
}
