//! When a rule's changes have settled: no event for `debounce`, or
//! `max_wait` since the first unsettled change, whichever comes first, so
//! that a steady stream of writes still triggers. Plain state driven by
//! the instants it is given: the watcher sleeps until [`Settle::due`] (one
//! timer, no polling) and then takes the batch.
//!
//! Hand-written rather than notify-debouncer-full: that debouncer checks
//! its queue on a tick (a quarter of its timeout, by its docs), which is
//! polling, and has one timeout and no `max_wait`; a rule needs both
//! limits, the union of the paths it saw, and a wake-up only when due.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

/// The changes a rule has seen and not yet acted on.
#[derive(Debug)]
pub struct Settle {
    debounce: Duration,
    max_wait: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
    paths: BTreeSet<PathBuf>,
}

impl Settle {
    /// `max_wait` below `debounce` is taken as `debounce` (the API refuses
    /// it before it gets here).
    pub fn new(debounce: Duration, max_wait: Duration) -> Settle {
        Settle {
            debounce,
            max_wait: max_wait.max(debounce),
            first: None,
            last: None,
            paths: BTreeSet::new(),
        }
    }

    /// A change to `path` (relative to the root), seen at `now`.
    pub fn record(&mut self, path: PathBuf, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.paths.insert(path);
    }

    /// When the changes seen settle, if there are any.
    pub fn due(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.debounce).min(first + self.max_wait))
    }

    /// Whether the unsettled changes have waited `max_wait` by `now`.
    pub fn max_wait_reached(&self, now: Instant) -> bool {
        self.first.is_some_and(|first| first + self.max_wait <= now)
    }

    /// The changed paths, if they have settled by `now`; the state starts
    /// over. Changes recorded after this go to the next batch.
    pub fn take_due(&mut self, now: Instant) -> Option<BTreeSet<PathBuf>> {
        if self.due()? > now {
            return None;
        }
        self.first = None;
        self.last = None;
        Some(std::mem::take(&mut self.paths))
    }

    /// Unsettled paths held.
    pub fn pending(&self) -> usize {
        self.paths.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn paths(p: &[&str]) -> BTreeSet<PathBuf> {
        p.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn a_change_settles_after_the_debounce() {
        let t0 = Instant::now();
        let mut s = Settle::new(100 * MS, 10_000 * MS);
        assert_eq!(s.due(), None, "nothing seen, nothing due");
        s.record("a".into(), t0);
        assert_eq!(s.due(), Some(t0 + 100 * MS));
        assert_eq!(s.take_due(t0 + 99 * MS), None);
        assert_eq!(s.take_due(t0 + 100 * MS), Some(paths(&["a"])));
        assert_eq!(s.due(), None, "it starts over");
        assert_eq!(s.take_due(t0 + 500 * MS), None);
    }

    #[test]
    fn each_change_pushes_the_settle_back_and_the_paths_add_up() {
        let t0 = Instant::now();
        let mut s = Settle::new(100 * MS, 10_000 * MS);
        s.record("a".into(), t0);
        s.record("b".into(), t0 + 60 * MS);
        s.record("a".into(), t0 + 120 * MS);
        assert_eq!(s.pending(), 2);
        assert_eq!(s.take_due(t0 + 200 * MS), None);
        assert_eq!(s.due(), Some(t0 + 220 * MS));
        assert_eq!(s.take_due(t0 + 220 * MS), Some(paths(&["a", "b"])));
    }

    #[test]
    fn a_steady_stream_still_triggers_every_max_wait() {
        let t0 = Instant::now();
        let mut s = Settle::new(100 * MS, 1_000 * MS);
        let mut batches = Vec::new();
        // A write every 50 ms for 2.5 s: never 100 ms of quiet.
        for i in 0..50u32 {
            let now = t0 + i * 50 * MS;
            if let Some(b) = s.take_due(now) {
                batches.push((now - t0, b.len()));
            }
            s.record(format!("f{i}").into(), now);
        }
        assert_eq!(
            batches,
            [(1_000 * MS, 20), (2_000 * MS, 20)],
            "a batch each max_wait after its first change, holding every path"
        );
    }

    #[test]
    fn max_wait_is_reached_max_wait_after_the_first_unsettled_change() {
        let t0 = Instant::now();
        let mut s = Settle::new(100 * MS, 1_000 * MS);
        assert!(!s.max_wait_reached(t0), "nothing seen, nothing waits");
        s.record("a".into(), t0);
        s.record("b".into(), t0 + 900 * MS);
        assert!(!s.max_wait_reached(t0 + 999 * MS));
        assert!(s.max_wait_reached(t0 + 1_000 * MS));
        assert!(s.take_due(t0 + 1_000 * MS).is_some());
        assert!(!s.max_wait_reached(t0 + 5_000 * MS), "it starts over");
    }

    #[test]
    fn max_wait_below_debounce_is_the_debounce() {
        let t0 = Instant::now();
        let mut s = Settle::new(100 * MS, 10 * MS);
        s.record("a".into(), t0);
        assert_eq!(s.due(), Some(t0 + 100 * MS));
    }
}
