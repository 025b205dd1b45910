//! Admission: the one place that decides whether ready jobs may start,
//! given what is running. The scheduler asks it before it reads a single
//! ready job.
//!
//! Today it applies the global concurrency. Per-group limits, per-host
//! limits for fetch and a limit for CPU-heavy kinds will be added here (a
//! check of each ready job against them), and with them one rule that
//! already holds: **the cost of a dispatch grows
//! with the number of running jobs and of limits, never with the length
//! of the queue.** When no job may start, [`Admission::room`] is zero and
//! the scheduler reads nothing; a job held back by a narrower limit will
//! be set aside under that limit's key, and read again only when that
//! limit frees up, not on every dispatch.

/// What may start.
#[derive(Clone, Debug)]
pub struct Admission {
    /// Jobs that may run at once, of every kind together.
    concurrency: usize,
}

impl Admission {
    /// A policy of at most `concurrency` jobs at once (at least one).
    pub fn new(concurrency: usize) -> Admission {
        Admission {
            concurrency: concurrency.max(1),
        }
    }

    /// The global limit.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// How many more jobs may start while `running` hold a slot. Zero
    /// means no ready job needs to be read at all.
    pub fn room(&self, running: usize) -> usize {
        self.concurrency.saturating_sub(running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_what_the_global_limit_leaves() {
        let a = Admission::new(4);
        assert_eq!(a.room(0), 4);
        assert_eq!(a.room(3), 1);
        assert_eq!(a.room(4), 0);
        assert_eq!(
            a.room(9),
            0,
            "more running than the limit (lowered on restart)"
        );
        assert_eq!(Admission::new(0).concurrency(), 1);
    }
}
