//! What the scheduler's task and every job's task share: which jobs run
//! where (`Slots`), and starting the next ready jobs (`Core::dispatch`),
//! which the admission policy bounds.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::handle::{Msg, SchedulerHandle};
use super::lock;
use crate::admission::{Admission, Admit};
use crate::job::{Job, JobId, Micros, StateTag};
use crate::platform::panic_message;
use crate::runner::{RunnerCtx, Stop, record_panic, run_attempt};
use crate::store::StoreError;

/// How long job starts pause after the store failed to record a job.
pub(super) const STORE_FAILURE_PAUSE: Duration = Duration::from_secs(1);

/// The first wait before the ready index is read again after a read
/// failed; each failure in a row doubles it, up to [`READ_RETRY_MAX`].
pub(super) const READ_RETRY_FIRST: Duration = Duration::from_millis(50);

/// Queued jobs of a host moved to scheduled per store write when its
/// breaker opens: one bounded write transaction each.
const DEFER_CHUNK: usize = 1024;

/// The longest wait between reads of a failing ready index.
pub(super) const READ_RETRY_MAX: Duration = Duration::from_secs(5);

pub(super) struct Running {
    pub(super) stop: Option<oneshot::Sender<Stop>>,
    pub(super) waiters: Vec<oneshot::Sender<Result<Job, StoreError>>>,
    /// Its processes are gone and its slot was given back; only the commit
    /// of its outcome is pending.
    released: bool,
    /// The job thread it runs on.
    thread: usize,
    /// The host whose slot it holds, for a fetch job.
    host: Option<String>,
}

/// Which jobs run where, shared by the scheduler and the job threads.
pub(super) struct Slots {
    pub(super) running: HashMap<JobId, Running>,
    /// How many entries of `running` whose processes still hold a slot
    /// are on each job thread.
    pub(super) load: Vec<usize>,
    /// The ready index may hold jobs we have not started.
    pub(super) maybe_ready: bool,
    /// No job starts before this: set when the store failed to record a
    /// job, so that a failing disk (full, read-only) does not turn into a
    /// tight loop of jobs that run but cannot be recorded.
    pub(super) paused_until: Option<Instant>,
    /// Jobs not running whose Cancel the store is deciding: none of them
    /// may start meanwhile, or it would run although the Cancel was
    /// accepted. A list, because two Cancels of one job may overlap.
    pub(super) cancelling: Vec<JobId>,
    /// Shutting down: nothing more starts.
    pub(super) stopping: bool,
    /// The wait before the next read of the ready index, after reads
    /// failed in a row; zero after a read succeeds.
    pub(super) read_retry: Duration,
    /// Fetch jobs holding a slot of the fetch pool.
    pub(super) fetch_active: usize,
    /// Some host may be able to start a queued fetch job: set by submits,
    /// promotions, a fetch job's end, a host's change and `fetch_wake`.
    pub(super) fetch_maybe_ready: bool,
    /// When the earliest host that had to wait (its rate, a server's
    /// pause) may take a job again.
    pub(super) fetch_wake: Option<Instant>,
    /// Hosts whose queued jobs are being moved to scheduled (their
    /// breaker opened): passed over until that is done.
    pub(super) deferring: HashSet<String>,
}

impl Slots {
    /// How many slots are taken.
    fn active(&self) -> usize {
        self.load.iter().sum()
    }

    /// Jobs a read of the queue must pass over: running ones (still
    /// queued in the store until their start is recorded) and those whose
    /// Cancel the store is deciding.
    fn not_startable(&self) -> HashSet<JobId> {
        self.running
            .keys()
            .chain(self.cancelling.iter())
            .copied()
            .collect()
    }

    /// Slots taken by exec jobs.
    fn exec_active(&self) -> usize {
        self.active() - self.fetch_active
    }

    /// Gives a job's slot back, once. Returns its thread if this freed it,
    /// and the host whose slot it also held, for a fetch job (which the
    /// caller gives back to admission).
    fn release(&mut self, id: JobId) -> Option<(usize, Option<String>)> {
        let r = self.running.get_mut(&id)?;
        if std::mem::replace(&mut r.released, true) {
            return None;
        }
        let thread = r.thread;
        self.load[thread] -= 1;
        let host = r.host.clone();
        // A slot is free, and there may be more ready jobs.
        if host.is_some() {
            self.fetch_active -= 1;
            self.fetch_maybe_ready = true;
        } else {
            self.maybe_ready = true;
        }
        tracing::trace!(job = id, thread, "slot released");
        Some((thread, host))
    }

    pub(super) fn stop_cancelling(&mut self, id: JobId) {
        if let Some(at) = self.cancelling.iter().position(|&c| c == id) {
            self.cancelling.swap_remove(at);
        }
    }
}

/// The job thread with the fewest running jobs.
fn least_loaded(load: &[usize]) -> usize {
    load.iter()
        .enumerate()
        .min_by_key(|&(_, n)| *n)
        .map_or(0, |(i, _)| i)
}

/// What the scheduler's task and every job's task share.
pub(super) struct Core {
    pub(super) ctx: Arc<RunnerCtx>,
    /// What may start.
    pub(super) admission: Admission,
    /// The job threads' runtimes; the scheduler's task runs on the first.
    pub(super) threads: Vec<Handle>,
    /// A lock, not state owned by the scheduler's task and changed by
    /// messages: a job that ends must start the next one on its own
    /// thread, and a message to the scheduler's thread and a spawn back
    /// would be the two hand-offs this design removes (P3 in
    /// docs/benchmarks.md). Only this module's tasks take it; it is held
    /// for bookkeeping and one bounded read of the ready index, and never
    /// across an `.await`.
    pub(super) slots: Mutex<Slots>,
    /// To tell the scheduler of retries and pauses.
    pub(super) handle: SchedulerHandle,
    pub(super) tracker: TaskTracker,
    /// For tests: which thread started each job, and where it ran.
    #[cfg(test)]
    pub(super) placed: Mutex<Vec<super::tests::Placed>>,
    /// For tests: how many ready jobs dispatches have read.
    #[cfg(test)]
    pub(super) ready_reads: std::sync::atomic::AtomicUsize,
}

impl Core {
    /// Starts ready jobs while slots are free: the first on `here`, the
    /// thread whose job just gave its slot back, and any others on the
    /// threads with the fewest jobs.
    ///
    /// Starting the next job on the thread that saw the last one end is
    /// what keeps a core busy: the end of a job wakes its thread on the
    /// core the job left, and the new job's process starts there. With one
    /// thread for every job, the cores sat idle 0.11 ms per job while the
    /// wake-up and the start crossed over; with a thread per core, 0.04 ms
    /// (P3 in docs/benchmarks.md).
    pub(super) fn dispatch(self: &Arc<Self>, s: &mut Slots, mut here: Option<usize>) {
        if s.stopping {
            return;
        }
        if let Some(until) = s.paused_until {
            if Instant::now() < until {
                return;
            }
            s.paused_until = None;
        }
        self.dispatch_fetch(s, &mut here);
        while s.maybe_ready {
            // Asked before anything is read: with no room, a dispatch
            // costs nothing, however long the queue.
            let free = self.admission.room(s.exec_active());
            if free == 0 {
                break;
            }
            let skip = s.not_startable();
            // Read under the lock, so that two threads never pick the same
            // job: one bounded read of the ready index.
            let jobs = match self.ctx.store.ready(free, &skip) {
                Ok(j) => {
                    s.read_retry = Duration::ZERO;
                    j
                }
                Err(e) => return self.read_failed(s, "reading ready jobs failed", &e),
            };
            #[cfg(test)]
            self.ready_reads
                .fetch_add(jobs.len(), std::sync::atomic::Ordering::Relaxed);
            if jobs.len() < free {
                s.maybe_ready = false;
            }
            for job in jobs {
                let thread = here.take().unwrap_or_else(|| least_loaded(&s.load));
                self.start(s, job, thread, None);
            }
        }
    }

    /// A read of a ready index failed. Queued jobs must not sit idle until
    /// something else happens: starts pause, and the index is read again
    /// after the pause, which the scheduler's timer covers, longer each
    /// time.
    fn read_failed(&self, s: &mut Slots, what: &str, e: &StoreError) {
        s.read_retry = (s.read_retry * 2).clamp(READ_RETRY_FIRST, READ_RETRY_MAX);
        tracing::error!(error = %e, retry_in = ?s.read_retry, "{what}");
        s.paused_until = Some(Instant::now() + s.read_retry);
        // This may run on a job's thread, while the scheduler sleeps on a
        // timer set before the pause.
        let _ = self.handle.tx.send(Msg::Wake);
    }

    /// Starts queued fetch jobs while the fetch pool has room: in each
    /// pass, the head of every host's queue is read (one seek per host)
    /// and, best priority first, each is started if admission lets its
    /// host take one now. A host that may not (its slots, its rate, a
    /// pause, a probe in flight) is passed over, so it holds up no other
    /// host, and a job waiting for its host holds no slot. A host whose
    /// breaker is open has its queued jobs moved to scheduled.
    fn dispatch_fetch(self: &Arc<Self>, s: &mut Slots, here: &mut Option<usize>) {
        if s.fetch_wake.is_some_and(|w| Instant::now() >= w) {
            s.fetch_wake = None;
            s.fetch_maybe_ready = true;
        }
        while s.fetch_maybe_ready {
            if self.admission.fetch_room(s.fetch_active) == 0 {
                // Stays maybe-ready: a fetch job's end sets it anyway.
                return;
            }
            let heads = match self.host_heads(s) {
                Ok(h) => h,
                Err(e) => return self.read_failed(s, "reading ready fetch jobs failed", &e),
            };
            let mut started = false;
            let mut wait: Option<Instant> = None;
            for (host, job) in heads {
                if self.admission.fetch_room(s.fetch_active) == 0 {
                    break;
                }
                match self.admission.hosts().admit(&host) {
                    Admit::Yes => {
                        let thread = here.take().unwrap_or_else(|| least_loaded(&s.load));
                        s.fetch_active += 1;
                        self.start(s, job, thread, Some(host));
                        started = true;
                    }
                    Admit::WaitUntil(t) => wait = Some(wait.map_or(t, |w| w.min(t))),
                    Admit::Busy => {}
                    Admit::Open { until, reason } => self.defer_host(s, host, until, reason),
                }
            }
            if let Some(t) = wait
                && s.fetch_wake.is_none_or(|w| t < w)
            {
                s.fetch_wake = Some(t);
                // This may run on a job's thread, while the scheduler
                // sleeps on a timer set before; it sends nothing when the
                // wake-up did not move earlier, so this cannot loop.
                let _ = self.handle.tx.send(Msg::Wake);
            }
            if !started {
                s.fetch_maybe_ready = false;
            }
        }
    }

    /// The first queued job of every host with queued fetch jobs, best
    /// first, but for hosts whose jobs are being held back: one store read
    /// (one index seek per host, and one job read each).
    fn host_heads(&self, s: &Slots) -> Result<Vec<(String, Job)>, StoreError> {
        let skip = s.not_startable();
        let mut heads = self.ctx.store.host_heads(&s.deferring, &skip)?;
        heads.sort_by_key(|(_, j)| (std::cmp::Reverse(j.spec.priority), j.id));
        Ok(heads)
    }

    /// Moves `host`'s queued jobs to scheduled until `until` (its breaker
    /// is open), in chunks, off the lock: the host is passed over
    /// meanwhile, and looked at again after each chunk.
    fn defer_host(self: &Arc<Self>, s: &mut Slots, host: String, until: Micros, reason: String) {
        if !s.deferring.insert(host.clone()) {
            return;
        }
        let core = self.clone();
        self.threads[0].spawn(self.tracker.track_future(async move {
            let at = core.ctx.env.clock.now_micros();
            let moved = core
                .ctx
                .store
                .defer_host(host.clone(), until, reason, at, DEFER_CHUNK)
                .await;
            let mut s = lock(&core.slots);
            s.deferring.remove(&host);
            s.fetch_maybe_ready = true;
            match moved {
                Ok(n) => tracing::info!(host, jobs = n, "held a host's queued fetch jobs back while its breaker is open"),
                Err(e) => {
                    tracing::error!(host, error = %e, "holding a host's fetch jobs back failed; trying again in 1s");
                    let again = Instant::now() + Duration::from_secs(1);
                    s.fetch_wake = Some(s.fetch_wake.map_or(again, |w| w.min(again)));
                }
            }
            drop(s);
            // They are due when the breaker lets a probe through.
            core.handle.due_at(until);
        }));
    }

    fn start(self: &Arc<Self>, s: &mut Slots, job: Job, thread: usize, host: Option<String>) {
        let (stop_tx, stop_rx) = oneshot::channel();
        let id = job.id;
        s.running.insert(
            id,
            Running {
                stop: Some(stop_tx),
                waiters: Vec::new(),
                released: false,
                thread,
                host,
            },
        );
        s.load[thread] += 1;
        #[cfg(test)]
        lock(&self.placed).push(super::tests::Placed::new(id, thread));
        let core = self.clone();
        let released = {
            let core = self.clone();
            move || core.released(id)
        };
        let attempt = job.attempts + 1;
        // On a job thread's runtime, where the job process is forked: see
        // runner::exec::spawn for why that matters.
        self.threads[thread].spawn(self.tracker.track_future(async move {
            #[cfg(test)]
            super::tests::Placed::ran(&core.placed, id);
            let ctx = core.ctx.clone();
            // A panic in the attempt must still end the job, free its slot
            // and answer its Cancel: `exited` does all three.
            let run = AssertUnwindSafe(run_attempt(ctx.clone(), job, stop_rx, released))
                .catch_unwind()
                .await;
            let result = match run {
                Ok(result) => result,
                Err(panic) => record_panic(&ctx, id, attempt, panic_message(&*panic)).await,
            };
            core.exited(id, result).await;
        }));
    }

    /// A job's processes are gone: its slot takes the next ready job, on
    /// the same thread.
    fn released(self: &Arc<Self>, id: JobId) {
        let mut s = lock(&self.slots);
        if let Some((thread, host)) = s.release(id) {
            if let Some(host) = host {
                self.admission.hosts().release(&host);
            }
            self.dispatch(&mut s, Some(thread));
        }
    }

    /// A job's task ended with `result`, the job as stored afterwards.
    async fn exited(self: &Arc<Self>, id: JobId, result: Result<Job, StoreError>) {
        let paused = match &result {
            Ok(_) => false,
            // Shutting down: nothing to pause for.
            Err(e @ StoreError::Closed) => {
                tracing::warn!(job = id, error = %e, "recording the job failed; it stays as stored");
                false
            }
            Err(e) => {
                tracing::error!(job = id, error = %e, "recording the job failed; it stays as stored, and no job starts for {STORE_FAILURE_PAUSE:?}");
                true
            }
        };
        let (waiters, recheck) = {
            let mut s = lock(&self.slots);
            if paused {
                s.paused_until = Some(Instant::now() + STORE_FAILURE_PAUSE);
                // The job stays as stored, queued as a rule, and a read of
                // the ready index while it ran skipped it and may have
                // found nothing else: after the pause, the index must be
                // read again, or the job waits for an unrelated submit.
                s.maybe_ready = true;
                s.fetch_maybe_ready = true;
                // This runs on a job's thread, while the scheduler sleeps
                // on a timer set before the pause: it must look again, or
                // the jobs left queued wait for some unrelated event.
                let _ = self.handle.tx.send(Msg::Wake);
            }
            // A job that never started gives its slot back only now.
            let freed = s.release(id);
            let Some(r) = s.running.remove(&id) else {
                return;
            };
            // A Cancel that arrived while the job ran gets the job as the
            // cancel left it. If the job ended on its own first (its
            // outcome may even have been committed and seen before the
            // Cancel came in), the cancel stopped nothing: the store
            // decides as for any job we do not run, so a finished job is
            // refused and one queued again for a retry is cancelled
            // before it can run again.
            let recheck = !r.waiters.is_empty()
                && result
                    .as_ref()
                    .is_ok_and(|job| job.state.tag() != StateTag::Cancelled);
            if recheck {
                s.cancelling.push(id);
            }
            if let Some((thread, host)) = freed {
                if let Some(host) = host {
                    self.admission.hosts().release(&host);
                }
                self.dispatch(&mut s, Some(thread));
            }
            (r.waiters, recheck)
        };
        // Only now that the job is out of `running`, which every start
        // skips: a retry promoted and looked for before then would be
        // skipped, and nothing would look again.
        if let Ok(job) = &result {
            // A retry scheduled for later.
            self.handle.submitted([job]);
        }
        if paused {
            // So that the scheduler's timer covers the end of the pause.
            let _ = self.handle.tx.send(Msg::Wake);
        }
        if waiters.is_empty() {
            return;
        }
        let answer = if recheck {
            let answer = self
                .ctx
                .store
                .cancel_pending(id, self.ctx.env.clock.now_micros())
                .await;
            lock(&self.slots).stop_cancelling(id);
            answer
        } else {
            result
        };
        for w in waiters {
            let _ = w.send(answer.clone());
        }
    }
}
