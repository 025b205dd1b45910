//! The daemon's clock: wall-clock time for what is stored (job times,
//! due times) and tokio's timers for waiting on it, behind one type so
//! that tests can run the scheduler and the runner under
//! `tokio::time::pause()`, where time jumps to the next timer instead of
//! passing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::job::Micros;

/// Where the time comes from. Cheap to copy.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// The system's wall clock: what the daemon runs on.
    System,
    /// Wall time that follows tokio's clock from a starting point, so that
    /// under `tokio::time::pause()` it advances exactly as the timers do.
    Tokio {
        /// The wall time at `start`.
        base: Micros,
        /// When the clock was made.
        start: Instant,
    },
}

impl Clock {
    /// A clock that follows tokio's time, starting at the system's wall
    /// time. For tests.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            base: system_micros(),
            start: Instant::now(),
        }
    }

    /// The current wall time.
    pub fn now_micros(&self) -> Micros {
        match self {
            Clock::System => system_micros(),
            Clock::Tokio { base, start } => base + start.elapsed().as_micros() as u64,
        }
    }

    /// The tokio instant at which wall time `at` comes (now, if it has).
    pub fn instant_at(&self, at: Micros) -> Instant {
        let wait = Duration::from_micros(at.saturating_sub(self.now_micros()));
        Instant::now() + wait
    }

    /// Waits for `d`.
    pub async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await
    }
}

/// Microseconds since the Unix epoch on the system's clock.
fn system_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under a paused runtime the tokio clock's wall time moves with the
    /// timers, to the microsecond, however long the test really takes.
    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let clock = Clock::tokio();
        let t0 = clock.now_micros();
        let due = t0 + 3_600_000_000;
        tokio::time::sleep_until(clock.instant_at(due)).await;
        assert_eq!(clock.now_micros(), due);
        assert_eq!(clock.instant_at(t0), Instant::now(), "a past time is now");
    }
}
