//! Per-connection rates (joins, client events): token buckets local to the session task, so
//! a check is a few arithmetic operations and no lock or database round trip.

use std::time::Duration;

use tokio::time::Instant;

/// How often one connection's rate refusals are audited at most.
pub const AUDIT_EVERY: Duration = Duration::from_secs(60);

/// A token bucket of `rate` tokens per second holding at most `burst`, starting full; the rate
/// and burst are the caller's (the same for every connection), so each connection holds only
/// one instant per bucket.
///
/// Kept as the instant at which the bucket will be full again (the generic cell rate
/// algorithm's "theoretical arrival time"): a take is allowed while that instant is less than
/// `burst` tokens' worth of time ahead of now, and moves it one token's worth of time later.
/// The takes it allows are those of a bucket counting its tokens, a token's time rounded down
/// to the nanosecond (so at most 1e9 a second are limited).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    full_at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new() -> TokenBucket {
        TokenBucket {
            full_at: Instant::now(),
        }
    }

    /// Takes one token from a bucket refilled at `rate` per second and holding at most `burst`
    /// (at least 1); `false` when it is empty (the caller is over the rate). A `rate` of 0
    /// means no limit.
    pub fn take(&mut self, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let now = Instant::now();
        let token = Duration::from_secs(1) / rate;
        // Time for the bucket to refill from empty, less one token: how far ahead of now the
        // instant may be for a token to be left.
        let room = token * (burst.max(1) - 1);
        let full_at = self.full_at.max(now);
        if full_at > now + room {
            return false;
        }
        self.full_at = full_at + token;
        true
    }
}

impl Default for TokenBucket {
    fn default() -> TokenBucket {
        TokenBucket::new()
    }
}

/// Whether a refusal at `now` should be audited, given the last audited one (at most one per
/// [`AUDIT_EVERY`]); updates `last` when it should.
pub fn audit_due(last: &mut Option<Instant>, now: Instant) -> bool {
    match last {
        Some(at) if now.duration_since(*at) < AUDIT_EVERY => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut bucket = TokenBucket::new();
        assert!(bucket.take(10, 3) && bucket.take(10, 3) && bucket.take(10, 3));
        assert!(!bucket.take(10, 3));
        // As if 100 ms had passed: one token back.
        bucket.full_at -= Duration::from_millis(100);
        assert!(bucket.take(10, 3));
        assert!(!bucket.take(10, 3));
        // As if a long time had passed (ten times the refill): a full burst again, never more.
        bucket.full_at -= Duration::from_secs(3);
        assert_eq!((0..10).filter(|_| bucket.take(10, 3)).count(), 3);
        let mut free = TokenBucket::new();
        assert!((0..10_000).all(|_| free.take(0, 1)));
        // A burst of 0 is taken as 1.
        let mut one = TokenBucket::new();
        assert!(one.take(10, 0));
        assert!(!one.take(10, 0));
    }

    #[test]
    fn refusals_are_audited_once_a_minute() {
        let mut last = None;
        let now = Instant::now();
        assert!(audit_due(&mut last, now));
        assert!(!audit_due(&mut last, now + Duration::from_secs(1)));
        assert!(audit_due(&mut last, now + AUDIT_EVERY));
    }
}
