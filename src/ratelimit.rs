//! The send rate limit: a token bucket refilled evenly, with a burst of its full size.

use std::time::{Duration, Instant};

/// `per_10s` sends per 10 seconds, refilled continuously; a full bucket allows
/// a burst of `per_10s` sends at once. `per_10s == 0` means no limit.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    updated: Instant,
}

const WINDOW: Duration = Duration::from_secs(10);

impl TokenBucket {
    pub fn new(per_10s: u32) -> Self {
        let capacity = f64::from(per_10s);
        TokenBucket {
            capacity,
            tokens: capacity,
            per_second: capacity / WINDOW.as_secs_f64(),
            updated: Instant::now(),
        }
    }

    /// A full bucket is indistinguishable from a new one.
    pub fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * self.per_second >= self.capacity
    }

    /// Take one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    pub fn try_take_at(&mut self, now: Instant) -> bool {
        if self.capacity == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_refills_evenly() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(20);
        for _ in 0..20 {
            assert!(bucket.try_take_at(start));
        }
        assert!(
            !bucket.try_take_at(start),
            "the 21st send in a burst is refused"
        );
        // 20 per 10 s is one token every 500 ms.
        assert!(!bucket.try_take_at(start + Duration::from_millis(400)));
        assert!(bucket.try_take_at(start + Duration::from_millis(520)));
    }

    #[test]
    fn zero_means_unlimited() {
        let mut bucket = TokenBucket::new(0);
        assert!((0..10_000).all(|_| bucket.try_take()));
    }
}
