//! One formula for every wait that grows: model call retries, a task given back while its
//! models are down, writes that collide with other writers. The `n`th wait (from 0) is bounded
//! by `first × 2^n`, capped at `max`; jitter spreads the clients that failed together apart.

use std::time::Duration;

/// The bound of the `n`th wait: `first × 2^n`, at most `max`.
pub fn ceiling(first: Duration, max: Duration, n: u32) -> Duration {
    first.saturating_mul(1 << n.min(20)).min(max)
}

/// "Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter"): drawn uniformly
/// from `[0, ceiling]`, which spreads competing retries apart best.
pub fn full_jitter(first: Duration, max: Duration, n: u32) -> Duration {
    ceiling(first, max, n).mul_f64(fastrand::f64())
}

/// The ceiling itself, plus up to a tenth: for delays that must be at least this long (a
/// task kept out of sight while its models are down) but should not all end together.
pub fn growing(first: Duration, max: Duration, n: u32) -> Duration {
    ceiling(first, max, n).mul_f64(1.0 + fastrand::f64() * 0.1)
}

/// The waits between the attempts of one call: `attempts - 1` of them, each drawn with full
/// jitter under a ceiling that doubles from `first` up to `max`. An iterator, so retry
/// libraries (backon) take it as their backoff.
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    first: Duration,
    max: Duration,
    attempts: u32,
    done: u32,
}

impl Retries {
    /// The schedule of a call tried `attempts` times in all, the first included.
    pub fn new(first: Duration, max: Duration, attempts: u32) -> Self {
        Self { first, max, attempts, done: 0 }
    }
}

impl Iterator for Retries {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.done + 1 >= self.attempts {
            return None;
        }
        let wait = full_jitter(self.first, self.max, self.done);
        self.done += 1;
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_until_the_cap() {
        let (first, max) = (Duration::from_secs(30), Duration::from_secs(900));
        let bounds: Vec<u64> = (0..7).map(|n| ceiling(first, max, n).as_secs()).collect();
        assert_eq!(bounds, [30, 60, 120, 240, 480, 900, 900]);
        assert!(ceiling(first, max, u32::MAX) == max, "no overflow");
    }

    #[test]
    fn a_retry_schedule_has_a_wait_between_each_two_attempts_under_its_ceiling() {
        let (first, max) = (Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<_> = Retries::new(first, max, 8).collect();
        assert_eq!(waits.len(), 7);
        for (n, w) in waits.iter().enumerate() {
            assert!(*w <= ceiling(first, max, n as u32), "wait {n} = {w:?}");
        }
        assert_eq!(Retries::new(first, max, 1).count(), 0, "one attempt means no retry");
    }

    #[test]
    fn jittered_waits_stay_within_their_bounds() {
        for n in 0..10 {
            let (first, max) = (Duration::from_millis(10), Duration::from_millis(320));
            assert!(full_jitter(first, max, n) <= ceiling(first, max, n));
            let g = growing(first, max, n);
            assert!(g >= ceiling(first, max, n) && g <= ceiling(first, max, n).mul_f64(1.1));
        }
    }
}
