//! Per-connection rates (joins, client events): token buckets local to the session task, so
//! a check is a few arithmetic operations and no lock or database round trip.

use std::time::Duration;

use tokio::time::Instant;

/// How often one connection's rate refusals are audited at most.
pub const AUDIT_EVERY: Duration = Duration::from_secs(60);

/// A token bucket: `rate` tokens per second, at most `burst` held; starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second; 0 means no limit.
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` per second (`rate` 0: unlimited).
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            at: Instant::now(),
        }
    }

    /// Takes one token; `false` when the bucket is empty (the caller is over the rate).
    pub fn take(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
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
        let mut bucket = TokenBucket::new(10, 3);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take());
        // As if 100 ms had passed: one token back.
        bucket.at -= Duration::from_millis(100);
        assert!(bucket.take());
        assert!(!bucket.take());
        let mut free = TokenBucket::new(0, 1);
        assert!((0..10_000).all(|_| free.take()));
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
