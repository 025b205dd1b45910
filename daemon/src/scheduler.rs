//! The scheduler: the single owner of what runs. It is fed by a closed set of
//! messages over a channel and wakes only on a message (submit, exit,
//! cancel) or on a timer set to the next `run_at`; it never polls.
//!
//! The queue itself lives in the store; the scheduler holds only the jobs it
//! has started, so its memory does not grow with the queue.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::job::{Job, JobId, JobState, Micros, StateTag, now_micros};
use crate::runner::{RunnerCtx, Stop, run_attempt};
use crate::store::StoreError;

/// How long job starts pause after the store failed to record a job.
const STORE_FAILURE_PAUSE: Duration = Duration::from_secs(1);

/// Messages the scheduler acts on.
enum Msg {
    /// Jobs were submitted: see [`Submitted`] for which.
    Wake,
    /// Stop a job; reply with it once it has stopped.
    Cancel {
        id: JobId,
        grace: Duration,
        reply: oneshot::Sender<Result<Job, StoreError>>,
    },
    /// A job's processes are gone; its slot is free.
    Released { id: JobId },
    /// A job task ended; its result is the job as stored afterwards.
    Exited {
        id: JobId,
        result: Box<Result<Job, StoreError>>,
    },
}

/// A cheap, cloneable way to talk to the scheduler.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Msg>,
    submitted: Arc<Mutex<Submitted>>,
}

/// What submissions the scheduler has not looked at yet, merged, so that
/// one [`Msg::Wake`] covers however many came meanwhile. The scheduler runs
/// on its own thread, and a message per Submit woke that thread once per
/// call under many concurrent clients (P1a: twice the daemon's context
/// switches per job).
#[derive(Default)]
struct Submitted {
    /// Some are ready to run.
    ready: bool,
    /// The earliest one scheduled for later.
    due: Option<Micros>,
    /// A `Wake` is on its way.
    told: bool,
    /// When the scheduler will next read the store's due jobs at the
    /// latest: a job scheduled for that time or later needs no wake-up
    /// (P1a submits jobs for an hour ahead). `None` while the scheduler is
    /// reading that index, so a job stored meanwhile is never missed.
    timer: Option<Micros>,
}

fn lock(m: &Mutex<Submitted>) -> std::sync::MutexGuard<'_, Submitted> {
    // Only plain fields are set under it, so a panic cannot leave it torn.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the scheduler does on a [`Msg::Wake`]: takes what was submitted
/// (whether any are ready, and the earliest due), so that the next Submit
/// sends a wake-up again. The published timer stays.
fn take_submitted(m: &Mutex<Submitted>) -> (bool, Option<Micros>) {
    let mut s = lock(m);
    s.told = false;
    (std::mem::take(&mut s.ready), s.due.take())
}

impl SchedulerHandle {
    /// Tells the scheduler about newly stored jobs.
    pub fn submitted(&self, jobs: &[Job]) {
        let mut ready = false;
        let mut due: Option<Micros> = None;
        for j in jobs {
            match j.state {
                JobState::Queued => ready = true,
                JobState::Scheduled { run_at } => due = Some(due.map_or(run_at, |d| d.min(run_at))),
                _ => {}
            }
        }
        if !ready && due.is_none() {
            return;
        }
        let mut s = lock(&self.submitted);
        if !ready && s.timer.zip(due).is_some_and(|(timer, due)| timer <= due) {
            return;
        }
        s.ready |= ready;
        if let Some(d) = due {
            s.due = Some(s.due.map_or(d, |n| n.min(d)));
        }
        if !std::mem::replace(&mut s.told, true) {
            drop(s);
            let _ = self.tx.send(Msg::Wake);
        }
    }

    /// Cancels a job and returns it after it stopped.
    pub async fn cancel(&self, id: JobId, grace: Duration) -> Result<Job, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Cancel { id, grace, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

struct Running {
    stop: Option<oneshot::Sender<Stop>>,
    waiters: Vec<oneshot::Sender<Result<Job, StoreError>>>,
    /// Its processes are gone and its slot was given back; only the commit
    /// of its outcome is pending.
    released: bool,
}

/// The scheduler task's state.
pub struct Scheduler {
    ctx: Arc<RunnerCtx>,
    rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::UnboundedSender<Msg>,
    running: HashMap<JobId, Running>,
    /// Entries of `running` whose processes still hold a slot.
    active: usize,
    concurrency: usize,
    next_due: Option<Micros>,
    /// The ready index may hold jobs we have not started.
    maybe_ready: bool,
    /// No job starts before this: set when the store failed to record a
    /// job, so that a failing disk (full, read-only) does not turn into a
    /// tight loop of jobs that run but cannot be recorded.
    paused_until: Option<Instant>,
    tracker: TaskTracker,
    /// Shared with every [`SchedulerHandle`].
    submitted: Arc<Mutex<Submitted>>,
}

impl Scheduler {
    /// Creates the scheduler and its handle. Nothing runs until [`run`].
    ///
    /// [`run`]: Scheduler::run
    pub fn new(ctx: Arc<RunnerCtx>, concurrency: usize) -> (Scheduler, SchedulerHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let submitted = Arc::new(Mutex::new(Submitted::default()));
        let handle = SchedulerHandle {
            tx: tx.clone(),
            submitted: submitted.clone(),
        };
        let s = Scheduler {
            ctx,
            rx,
            tx,
            running: HashMap::new(),
            active: 0,
            concurrency,
            next_due: None,
            maybe_ready: true,
            paused_until: None,
            tracker: TaskTracker::new(),
            submitted,
        };
        (s, handle)
    }

    /// Runs until `shutdown` fires, then stops every running job (they go
    /// back to the queue) and waits for them.
    pub async fn run(mut self, shutdown: CancellationToken) {
        match self.ctx.store.next_due().await {
            Ok(due) => self.next_due = due,
            Err(e) => tracing::error!(error = %e, "reading the next due job failed"),
        }
        loop {
            if self.next_due.is_some_and(|d| d <= now_micros()) {
                // Submits during the read must wake us (see `timer`).
                lock(&self.submitted).timer = None;
                self.promote().await;
            }
            self.dispatch().await;
            lock(&self.submitted).timer = self.next_due;
            let due = self.next_due.map(|due| {
                let wait = Duration::from_micros(due.saturating_sub(now_micros()));
                Instant::now() + wait
            });
            let timer = match (due, self.paused_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(m) => self.handle(m).await,
                    None => break,
                },
                _ = sleep_until_opt(timer) => {}
            }
            // Take whatever else is waiting before the next dispatch, so a
            // burst of exits costs one store read, not one each.
            while let Ok(m) = self.rx.try_recv() {
                self.handle(m).await;
            }
        }
        self.drain().await;
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Wake => {
                let (ready, due) = take_submitted(&self.submitted);
                self.maybe_ready |= ready;
                if let Some(d) = due {
                    self.next_due = Some(self.next_due.map_or(d, |n| n.min(d)));
                }
            }
            Msg::Cancel { id, grace, reply } => {
                if let Some(r) = self.running.get_mut(&id) {
                    if let Some(stop) = r.stop.take() {
                        let _ = stop.send(Stop::Cancel { grace });
                    }
                    r.waiters.push(reply);
                } else {
                    // Not started by us, so queued, scheduled or finished:
                    // the store decides, atomically.
                    let res = self.ctx.store.cancel_pending(id, now_micros()).await;
                    let _ = reply.send(res);
                }
            }
            Msg::Released { id } => {
                let already = self
                    .running
                    .get_mut(&id)
                    .map(|r| std::mem::replace(&mut r.released, true));
                if let Some(already) = already {
                    self.release(id, already);
                }
            }
            Msg::Exited { id, result } => {
                let result = *result;
                if let Ok(Job {
                    state: JobState::Scheduled { run_at },
                    ..
                }) = &result
                {
                    self.next_due = Some(self.next_due.map_or(*run_at, |n| n.min(*run_at)));
                }
                match &result {
                    Ok(_) => {}
                    // Shutting down: nothing to pause for.
                    Err(e @ StoreError::Closed) => {
                        tracing::warn!(job = id, error = %e, "recording the job failed; it stays as stored");
                    }
                    Err(e) => {
                        tracing::error!(job = id, error = %e, "recording the job failed; it stays as stored, and no job starts for {STORE_FAILURE_PAUSE:?}");
                        self.paused_until = Some(Instant::now() + STORE_FAILURE_PAUSE);
                    }
                }
                if let Some(r) = self.running.remove(&id) {
                    self.release(id, r.released);
                    // A Cancel that arrived while the job ran gets the job as
                    // the cancel left it. If the job ended on its own first
                    // (its outcome may even have been committed and seen
                    // before the Cancel came in), the cancel stopped
                    // nothing: the store decides as for any job we do not
                    // run, so a finished job is refused and one queued again
                    // for a retry is cancelled before it can run again.
                    let answer = match result {
                        Ok(job)
                            if !r.waiters.is_empty() && job.state.tag() != StateTag::Cancelled =>
                        {
                            self.ctx.store.cancel_pending(id, now_micros()).await
                        }
                        other => other,
                    };
                    for w in r.waiters {
                        let _ = w.send(answer.clone());
                    }
                }
            }
        }
    }

    /// Gives a job's slot back, once.
    fn release(&mut self, id: JobId, already: bool) {
        if !already {
            self.active -= 1;
            // A slot is free, and there may be more ready jobs.
            self.maybe_ready = true;
            tracing::trace!(job = id, "slot released");
        }
    }

    async fn promote(&mut self) {
        match self.ctx.store.promote_due(now_micros()).await {
            Ok(next) => {
                self.next_due = next;
                self.maybe_ready = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "moving due jobs to the queue failed; retrying in 1s");
                self.next_due = Some(now_micros() + 1_000_000);
            }
        }
    }

    /// Starts ready jobs while slots are free.
    async fn dispatch(&mut self) {
        if let Some(until) = self.paused_until {
            if Instant::now() < until {
                return;
            }
            self.paused_until = None;
        }
        while self.maybe_ready && self.active < self.concurrency {
            let free = self.concurrency - self.active;
            let skip: HashSet<JobId> = self.running.keys().copied().collect();
            let jobs = match self.ctx.store.ready(free, &skip) {
                Ok(j) => j,
                Err(e) => {
                    tracing::error!(error = %e, "reading ready jobs failed");
                    self.maybe_ready = false;
                    return;
                }
            };
            if jobs.len() < free {
                self.maybe_ready = false;
            }
            for job in jobs {
                self.start(job);
            }
        }
    }

    fn start(&mut self, job: Job) {
        let (stop_tx, stop_rx) = oneshot::channel();
        let id = job.id;
        self.running.insert(
            id,
            Running {
                stop: Some(stop_tx),
                waiters: Vec::new(),
                released: false,
            },
        );
        self.active += 1;
        let ctx = self.ctx.clone();
        let tx = self.tx.clone();
        let released = {
            let tx = self.tx.clone();
            move || {
                let _ = tx.send(Msg::Released { id });
            }
        };
        // Spawned onto the jobs thread's runtime, where the job process
        // is forked: see runner::exec::spawn for why that matters.
        self.tracker.spawn(async move {
            let result = run_attempt(ctx, job, stop_rx, released).await;
            let _ = tx.send(Msg::Exited {
                id,
                result: Box::new(result),
            });
        });
    }

    /// Stops every running job for shutdown and waits until all have ended.
    async fn drain(mut self) {
        tracing::info!(running = self.running.len(), "stopping running jobs");
        for r in self.running.values_mut() {
            if let Some(stop) = r.stop.take() {
                let _ = stop.send(Stop::Shutdown);
            }
        }
        while !self.running.is_empty() {
            match self.rx.recv().await {
                Some(Msg::Exited { id, result }) => {
                    if let Some(r) = self.running.remove(&id) {
                        for w in r.waiters {
                            let _ = w.send(Err(StoreError::Closed));
                        }
                    }
                    if let Err(e) = *result {
                        tracing::error!(job = id, error = %e, "recording a stopped job failed");
                    }
                }
                Some(Msg::Cancel { reply, .. }) => {
                    let _ = reply.send(Err(StoreError::Closed));
                }
                Some(Msg::Wake) | Some(Msg::Released { .. }) => {}
                None => break,
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{ExecSpec, JobKind, JobSpec};
    use std::collections::BTreeMap;

    fn job(state: JobState) -> Job {
        Job {
            id: 1,
            spec: JobSpec {
                kind: JobKind::Exec(ExecSpec {
                    argv: vec!["true".into()],
                    cwd: None,
                    env: BTreeMap::new(),
                }),
                priority: 0,
                labels: BTreeMap::new(),
                run_at: None,
                timeout: None,
                max_attempts: 1,
                idempotency_key: None,
            },
            state,
            queued_at: 0,
            attempts: 0,
            started_at: None,
            exit_code: None,
            error: String::new(),
        }
    }

    /// A handle as [`Scheduler::new`] makes it, with the scheduler's ends
    /// of what it shares.
    fn handle() -> (
        SchedulerHandle,
        mpsc::UnboundedReceiver<Msg>,
        Arc<Mutex<Submitted>>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let submitted = Arc::new(Mutex::new(Submitted::default()));
        let handle = SchedulerHandle {
            tx,
            submitted: submitted.clone(),
        };
        (handle, rx, submitted)
    }

    /// However many Submits come before the scheduler looks, it gets one
    /// wake-up, and sees all of them: ready jobs, and the earliest due.
    #[test]
    fn submissions_merge_into_one_wake_until_the_scheduler_looks() {
        let (handle, mut rx, submitted) = handle();
        handle.submitted(&[job(JobState::Scheduled { run_at: 50 })]);
        handle.submitted(&[job(JobState::Queued)]);
        handle.submitted(&[job(JobState::Scheduled { run_at: 20 })]);
        // Finished jobs (an idempotent resubmit) need no wake-up at all.
        handle.submitted(&[job(JobState::Succeeded { finished_at: 1 })]);
        assert!(matches!(rx.try_recv(), Ok(Msg::Wake)));
        assert!(rx.try_recv().is_err(), "more than one wake-up was sent");

        // What the scheduler does on the wake-up.
        assert_eq!(take_submitted(&submitted), (true, Some(20)));

        // Once it has looked, the next Submit wakes it again.
        handle.submitted(&[job(JobState::Scheduled { run_at: 70 })]);
        assert!(matches!(rx.try_recv(), Ok(Msg::Wake)));
        assert_eq!(take_submitted(&submitted), (false, Some(70)));
    }

    /// A job due no earlier than the scheduler's own timer needs no
    /// wake-up; an earlier one, a ready one, or any while the scheduler
    /// rereads the due jobs (no timer published) does.
    #[test]
    fn jobs_due_after_the_schedulers_timer_do_not_wake_it() {
        let (handle, mut rx, submitted) = handle();
        let mut woken = |handle: &SchedulerHandle, job: Job| {
            handle.submitted(&[job]);
            let woke = rx.try_recv().is_ok();
            // The scheduler looks; its published timer stays.
            take_submitted(&submitted);
            woke
        };
        assert!(woken(&handle, job(JobState::Scheduled { run_at: 80 })));
        lock(&submitted).timer = Some(60);
        assert!(!woken(&handle, job(JobState::Scheduled { run_at: 60 })));
        assert!(!woken(&handle, job(JobState::Scheduled { run_at: 80 })));
        assert!(woken(&handle, job(JobState::Scheduled { run_at: 59 })));
        assert!(woken(&handle, job(JobState::Queued)));
        lock(&submitted).timer = None;
        assert!(woken(&handle, job(JobState::Scheduled { run_at: 80 })));
    }
}
