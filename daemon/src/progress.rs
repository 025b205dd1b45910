//! Live progress of running attempts: the latest report of each, for
//! `Get`, and a feed of reports, for `Events`. Nothing here is stored:
//! progress is worth showing while it is fresh, and a durable write per
//! report would cost more than the work it reports on (what must survive a
//! crash goes in the kind's checkpoint instead).
//!
//! A kind may report as often as it likes; each job's reports are passed
//! on at most [`MAX_RATE`] times per second, which is what a smooth progress
//! bar needs. A report that comes too soon is held, and the newest held one
//! goes out when the interval ends, so the last word is never lost. With
//! nobody subscribed, a report costs a lock and a clock read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::job::{JobId, Progress};

/// Reports passed on per job per second, at most.
pub const MAX_RATE: u32 = 10;

/// The interval that [`MAX_RATE`] allows between two reports of a job.
pub const INTERVAL: Duration = Duration::from_millis(1000 / MAX_RATE as u64);

/// How many reports a slow subscriber may fall behind before it misses
/// some (it then gets the newer ones; progress has no history to keep).
const FEED: usize = 1024;

/// Every running job's latest progress, and the feed of reports.
pub struct ProgressBoard {
    latest: Mutex<HashMap<JobId, Progress>>,
    feed: broadcast::Sender<(JobId, Progress)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is one map or field update; a panic cannot
    // leave one torn. A sink's lock is taken before the board's, never
    // the other way round.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for ProgressBoard {
    fn default() -> Self {
        ProgressBoard {
            latest: Mutex::new(HashMap::new()),
            feed: broadcast::channel(FEED).0,
        }
    }
}

impl ProgressBoard {
    /// A board with no jobs.
    pub fn new() -> Arc<ProgressBoard> {
        Arc::new(ProgressBoard::default())
    }

    /// The sink through which job `job`'s attempt reports. Called on the
    /// job's thread, whose runtime passes on held reports.
    pub fn sink(self: &Arc<Self>, job: JobId) -> ProgressSink {
        ProgressSink {
            job,
            board: self.clone(),
            runtime: tokio::runtime::Handle::current(),
            state: Arc::new(Mutex::new(SinkState {
                last: None,
                held: None,
                flushing: false,
                ended: false,
            })),
        }
    }

    /// Forgets `job`'s latest progress: for an attempt that ended without
    /// ending its sink (its task panicked).
    pub fn forget(&self, job: JobId) {
        lock(&self.latest).remove(&job);
    }

    /// The latest progress passed on for `job`, while its attempt runs.
    pub fn get(&self, job: JobId) -> Option<Progress> {
        lock(&self.latest).get(&job).cloned()
    }

    /// Reports as they are passed on.
    pub fn subscribe(&self) -> broadcast::Receiver<(JobId, Progress)> {
        self.feed.subscribe()
    }

    fn pass_on(&self, job: JobId, p: Progress) {
        lock(&self.latest).insert(job, p.clone());
        // No subscriber is fine: the report is kept for `get`.
        let _ = self.feed.send((job, p));
    }
}

/// What a kind reports progress through. Cheap to clone, and usable from
/// any thread, the CPU pool's included.
#[derive(Clone)]
pub struct ProgressSink {
    job: JobId,
    board: Arc<ProgressBoard>,
    /// The job thread's runtime, where a held report waits for its turn.
    runtime: tokio::runtime::Handle,
    state: Arc<Mutex<SinkState>>,
}

struct SinkState {
    /// When a report was last passed on.
    last: Option<Instant>,
    /// The newest report not yet passed on.
    held: Option<Progress>,
    /// A task will pass on `held` when the interval ends.
    flushing: bool,
    /// The attempt is over: nothing more is passed on.
    ended: bool,
}

impl ProgressSink {
    /// Reports progress. Passed on at once if the job's last report went
    /// out at least [`INTERVAL`] ago, else held and passed on (unless a
    /// newer one replaces it) when the interval ends.
    pub fn report(&self, p: Progress) {
        let now = Instant::now();
        let mut s = lock(&self.state);
        if s.ended {
            return;
        }
        match s.last {
            Some(last) if now < last + INTERVAL => {
                s.held = Some(p);
                if !std::mem::replace(&mut s.flushing, true) {
                    let at = last + INTERVAL;
                    drop(s);
                    let sink = self.clone();
                    self.runtime.spawn(async move {
                        tokio::time::sleep_until(at).await;
                        sink.flush();
                    });
                }
            }
            _ => {
                s.last = Some(now);
                s.held = None;
                // Under the sink's lock, so that `end` cannot come between
                // and leave a report on the board after the attempt.
                self.board.pass_on(self.job, p);
            }
        }
    }

    fn flush(&self) {
        let mut s = lock(&self.state);
        s.flushing = false;
        if s.ended {
            return;
        }
        if let Some(p) = s.held.take() {
            s.last = Some(Instant::now());
            self.board.pass_on(self.job, p);
        }
    }

    /// Ends the attempt's reports: a held one is dropped (the job's new
    /// state says more), and the job's latest progress is forgotten.
    pub fn end(&self) {
        let mut s = lock(&self.state);
        s.ended = true;
        s.held = None;
        // The board is shared by every job thread: a job that never
        // reported (every exec job) need not take its lock.
        if s.last.is_some() {
            lock(&self.board.latest).remove(&self.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(done: u64) -> Progress {
        Progress {
            phase: "download".into(),
            done,
            total: 1000,
            unit: "bytes".into(),
            rate: 0,
        }
    }

    /// A burst of reports is passed on at most once per interval, and the
    /// newest of the burst always goes out in the end.
    #[tokio::test(start_paused = true)]
    async fn reports_are_passed_on_at_most_ten_times_a_second_and_the_last_is_kept() {
        let board = ProgressBoard::new();
        let mut feed = board.subscribe();
        let sink = board.sink(7);
        let start = Instant::now();
        // 1000 reports over one second, one per millisecond.
        for n in 1..=1000u64 {
            sink.report(p(n));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Let a held report go out.
        tokio::time::sleep(INTERVAL * 2).await;
        let mut got = Vec::new();
        while let Ok((job, pr)) = feed.try_recv() {
            assert_eq!(job, 7);
            got.push((Instant::now() - start, pr.done));
        }
        assert_eq!(
            got.last().map(|g| g.1),
            Some(1000),
            "the last report was lost"
        );
        // One second of reports at 10 per second: 10, or 11 with the first
        // one at time zero, plus the held last one.
        assert!(
            (10..=12).contains(&got.len()),
            "{} reports passed on: {got:?}",
            got.len()
        );
        assert_eq!(board.get(7).map(|p| p.done), Some(1000));
        sink.end();
        assert_eq!(board.get(7), None);
        sink.report(p(1));
        assert_eq!(board.get(7), None, "a report after the end was passed on");
    }

    /// A report from a thread outside any runtime (as from the CPU pool)
    /// is passed on, and one held there goes out when its interval ends.
    #[tokio::test(start_paused = true)]
    async fn reports_may_come_from_any_thread() {
        let board = ProgressBoard::new();
        let sink = board.sink(3);
        let from_pool = sink.clone();
        std::thread::spawn(move || {
            from_pool.report(p(1));
            from_pool.report(p(2));
        })
        .join()
        .unwrap();
        assert_eq!(board.get(3).map(|p| p.done), Some(1));
        tokio::time::sleep(INTERVAL * 2).await;
        assert_eq!(board.get(3).map(|p| p.done), Some(2));
    }

    /// The reports of two jobs do not hold each other back.
    #[tokio::test(start_paused = true)]
    async fn each_job_has_its_own_interval() {
        let board = ProgressBoard::new();
        let mut feed = board.subscribe();
        let (a, b) = (board.sink(1), board.sink(2));
        a.report(p(1));
        b.report(p(2));
        let first: Vec<JobId> = [feed.try_recv(), feed.try_recv()]
            .into_iter()
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(first, [1, 2]);
    }
}
