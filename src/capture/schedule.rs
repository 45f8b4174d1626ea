//! When the change listener ([`super::listener`]) reads the outbox and retries: the follow-up
//! after a bell, the spacing of reads under sustained load, and the back-off of failed
//! attempts.
//!
//! Every node reads the outbox for its own subscribers, so each read costs the database once
//! per node: a read's index scans and, for its page, one row-level security check. Under
//! sustained load the reads are spaced out, so that one read answers many bells; at low rates
//! nothing is held back (docs/capture.md, "How often a node reads").

use std::time::Duration;

use crate::shutdown::Shutdown;

/// After a bell, or a read that found rows, read again this soon: writers that committed while
/// another transaction's bell was ringing (and so skipped theirs) are picked up quickly.
pub(super) const FOLLOW_UP: Duration = Duration::from_millis(2);
/// After this many reads in a row that found rows (about 50 ms of changes without a break),
/// the node's reads keep up without bells and it rests the bell ([`super::bell`]).
pub(super) const REST_AFTER: u32 = 8;

/// Spacing of reads under sustained load: after `k` reads in a row that found rows, the next
/// one starts no sooner than `k − 1` × [`FOLLOW_UP`] after the previous one started, up to the
/// maximum spacing (`--change-read-spacing`). Bells that ring meanwhile are answered by that one
/// read. A read that finds nothing ends the streak, so at low rates a bell is answered at once.
#[derive(Debug)]
pub(super) struct Pace {
    /// Reads in a row that found rows.
    streak: u32,
    /// The longest spacing.
    max_spacing: Duration,
    /// The next read starts no sooner than this.
    pub(super) next: tokio::time::Instant,
}

impl Pace {
    /// Reads spaced up to `max_spacing` apart under sustained load.
    pub(super) fn new(max_spacing: Duration) -> Pace {
        Pace {
            streak: 0,
            max_spacing,
            next: tokio::time::Instant::now(),
        }
    }

    /// Whether a read may start now.
    pub(super) fn due(&self) -> bool {
        tokio::time::Instant::now() >= self.next
    }

    /// Whether reads run at their sustained pace (see [`REST_AFTER`]).
    pub(super) fn sustained(&self) -> bool {
        self.streak >= REST_AFTER
    }

    /// Records a read that started at `started` and found rows or not.
    pub(super) fn read(&mut self, started: tokio::time::Instant, found: bool) {
        self.streak = if found {
            self.streak.saturating_add(1)
        } else {
            0
        };
        // The first read with rows holds nothing back: a lone change is answered at once.
        let spaced = self.streak.saturating_sub(1).min(64);
        self.next = started + (FOLLOW_UP * spaced).min(self.max_spacing);
    }
}

/// Exponential back-off from 100 ms to 5 s.
#[derive(Debug)]
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff(Duration::from_millis(100))
    }

    pub(super) fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        d
    }

    /// Sleeps the next delay; returns true when shutdown came first.
    pub(super) async fn wait(&mut self, shutdown: &Shutdown) -> bool {
        let d = self.next();
        tokio::select! {
            () = shutdown.cancelled() => true,
            () = tokio::time::sleep(d) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_READ_SPACING: Duration = Duration::from_millis(20);

    /// Guards the low-rate promise: a lone change, and the read after a quiet one, are never
    /// held back; only a streak of reads with rows is spaced out, up to the maximum.
    #[test]
    fn reads_are_spaced_only_under_sustained_load() {
        let mut pace = Pace::new(MAX_READ_SPACING);
        assert!(pace.due());
        // A read that started now: what it sets without spacing is due at once.
        let past = tokio::time::Instant::now();
        pace.read(past, true);
        assert_eq!(
            pace.next, past,
            "the first read with rows holds nothing back"
        );
        assert!(pace.due());
        pace.read(past, true);
        assert_eq!(pace.next, past + FOLLOW_UP);
        for _ in 0..20 {
            pace.read(past, true);
        }
        assert_eq!(pace.next, past + MAX_READ_SPACING);
        assert!(pace.sustained());
        // A read starting in an hour: the next one is not due before it.
        let later = tokio::time::Instant::now() + Duration::from_secs(3600);
        pace.read(later, true);
        assert!(!pace.due());
        pace.read(past, false);
        assert_eq!(
            pace.next, past,
            "a read that found nothing ends the spacing"
        );
        assert!(!pace.sustained(), "and the sustained pace");
        pace.read(past, true);
        assert_eq!(pace.next, past);
    }

    /// The spacing is the setting's: up to a longer maximum, and none at all with `0ms`, where
    /// a streak of reads with rows still counts towards the sustained pace.
    #[test]
    fn the_maximum_spacing_is_the_settings() {
        let past = tokio::time::Instant::now();
        let mut slow = Pace::new(Duration::from_millis(100));
        for _ in 0..100 {
            slow.read(past, true);
        }
        assert_eq!(slow.next, past + Duration::from_millis(100));
        let mut none = Pace::new(Duration::ZERO);
        for _ in 0..REST_AFTER {
            none.read(past, true);
            assert_eq!(none.next, past);
        }
        assert!(none.sustained());
    }
}
