//! Doubling waits between attempts to reach a peer that is away: the
//! client's reconnections to its server and the primary's to its replica.

use std::time::Duration;

/// Waits that start at a minimum and double after each attempt, up to a
/// maximum; [`Backoff::reset`] starts over once an attempt worked.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits from `min` up to `max` (`max` below `min` counts as `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), next: min }
    }

    /// The wait before the next attempt; the one after it is twice as long,
    /// up to the maximum.
    pub fn next_wait(&mut self) -> Duration {
        let now = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        now
    }

    /// Starts over from the minimum, after an attempt that got somewhere.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_up_to_the_maximum_and_start_over_on_reset() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let waits: Vec<_> = (0..6).map(|_| b.next_wait()).collect();
        assert_eq!(waits, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]);
        b.reset();
        assert_eq!((b.next_wait(), b.next_wait()), (100 * MS, 200 * MS));
    }

    #[test]
    fn a_maximum_below_the_minimum_keeps_the_minimum() {
        let mut b = Backoff::new(100 * MS, 10 * MS);
        assert_eq!((b.next_wait(), b.next_wait()), (100 * MS, 100 * MS));
    }

    #[test]
    fn huge_waits_saturate_instead_of_overflowing() {
        let mut b = Backoff::new(Duration::MAX / 2 + MS, Duration::MAX);
        b.next_wait();
        assert_eq!(b.next_wait(), Duration::MAX);
    }
}
