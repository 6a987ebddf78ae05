//! Open-loop pacing: the n-th operation is due at a fixed time whatever happened to the ones
//! before, so a slow answer delays later operations only once every sender is busy, and the
//! benchmark reports how late the sends fell rather than quietly slowing down to the server's
//! pace.

use std::time::Duration;

use tokio::time::Instant;

/// A fixed rate from a start time.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    start: Instant,
    per_sec: f64,
}

impl Pace {
    /// `per_sec` operations a second from `start` (a rate of 0 or less is taken as 1 a second).
    pub fn new(start: Instant, per_sec: f64) -> Self {
        Pace {
            start,
            per_sec: if per_sec > 0.0 { per_sec } else { 1.0 },
        }
    }

    /// When operation `n` (from 0) is due.
    pub fn due(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 / self.per_sec)
    }

    /// How many operations fall due within `window` of the start.
    pub fn count(&self, window: Duration) -> u64 {
        (window.as_secs_f64() * self.per_sec).ceil() as u64
    }
}
