//! The scheduler: the single owner of what runs. It is fed by a closed set of
//! messages over a channel and wakes only on a message (submit, cancel) or on
//! a timer set to the next `run_at`; it never polls.
//!
//! Jobs run on one or more job threads, each with a single-threaded
//! runtime (see [`Scheduler::spawn`]); the scheduler's own task
//! runs on the first. A job that ends starts the next ready one itself, on
//! its own thread, so that a busy queue keeps each thread's slot filled
//! without a hand-off: see [`Core::released`].
//!
//! The queue itself lives in the store; the scheduler holds only the jobs it
//! has started, so its memory does not grow with the queue.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
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
    /// Jobs were submitted (see [`Submitted`] for which), or job starts
    /// were paused: the scheduler rereads when to wake next.
    Wake,
    /// Stop a job; reply with it once it has stopped.
    Cancel {
        id: JobId,
        grace: Duration,
        reply: oneshot::Sender<Result<Job, StoreError>>,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is completed before anything that
    // could panic, so a panic cannot leave them torn.
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
    /// A handle, and the scheduler's end of its channel.
    fn new() -> (SchedulerHandle, mpsc::UnboundedReceiver<Msg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = SchedulerHandle {
            tx,
            submitted: Arc::new(Mutex::new(Submitted::default())),
        };
        (handle, rx)
    }

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
    /// The job thread it runs on.
    thread: usize,
}

/// Which jobs run where, shared by the scheduler and the job threads.
struct Slots {
    running: HashMap<JobId, Running>,
    /// How many entries of `running` whose processes still hold a slot
    /// are on each job thread.
    load: Vec<usize>,
    /// The ready index may hold jobs we have not started.
    maybe_ready: bool,
    /// No job starts before this: set when the store failed to record a
    /// job, so that a failing disk (full, read-only) does not turn into a
    /// tight loop of jobs that run but cannot be recorded.
    paused_until: Option<Instant>,
    /// Jobs not running whose Cancel the store is deciding: none of them
    /// may start meanwhile, or it would run although the Cancel was
    /// accepted. A list, because two Cancels of one job may overlap.
    cancelling: Vec<JobId>,
    /// Shutting down: nothing more starts.
    stopping: bool,
}

impl Slots {
    /// How many slots are taken.
    fn active(&self) -> usize {
        self.load.iter().sum()
    }

    /// Gives a job's slot back, once. Returns its thread if this freed it.
    fn release(&mut self, id: JobId) -> Option<usize> {
        let r = self.running.get_mut(&id)?;
        if std::mem::replace(&mut r.released, true) {
            return None;
        }
        let thread = r.thread;
        self.load[thread] -= 1;
        // A slot is free, and there may be more ready jobs.
        self.maybe_ready = true;
        tracing::trace!(job = id, thread, "slot released");
        Some(thread)
    }

    fn stop_cancelling(&mut self, id: JobId) {
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
struct Core {
    ctx: Arc<RunnerCtx>,
    concurrency: usize,
    /// The job threads' runtimes; the scheduler's task runs on the first.
    threads: Vec<Handle>,
    /// A lock, not state owned by the scheduler's task and changed by
    /// messages: a job that ends must start the next one on its own
    /// thread, and a message to the scheduler's thread and a spawn back
    /// would be the two hand-offs this design removes (P3 in
    /// docs/benchmarks.md). Only this module's tasks take it; it is held
    /// for bookkeeping and one bounded read of the ready index, and never
    /// across an `.await`.
    slots: Mutex<Slots>,
    /// To tell the scheduler of retries and pauses.
    handle: SchedulerHandle,
    tracker: TaskTracker,
    /// For tests: which thread started each job, and where it ran.
    #[cfg(test)]
    placed: Mutex<Vec<tests::Placed>>,
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
    fn dispatch(self: &Arc<Self>, s: &mut Slots, mut here: Option<usize>) {
        if s.stopping {
            return;
        }
        if let Some(until) = s.paused_until {
            if Instant::now() < until {
                return;
            }
            s.paused_until = None;
        }
        while s.maybe_ready && s.active() < self.concurrency {
            let free = self.concurrency - s.active();
            let skip: HashSet<JobId> = s
                .running
                .keys()
                .chain(s.cancelling.iter())
                .copied()
                .collect();
            // Read under the lock, so that two threads never pick the same
            // job: one bounded read of the ready index.
            let jobs = match self.ctx.store.ready(free, &skip) {
                Ok(j) => j,
                Err(e) => {
                    tracing::error!(error = %e, "reading ready jobs failed");
                    s.maybe_ready = false;
                    return;
                }
            };
            if jobs.len() < free {
                s.maybe_ready = false;
            }
            for job in jobs {
                let thread = here.take().unwrap_or_else(|| least_loaded(&s.load));
                self.start(s, job, thread);
            }
        }
    }

    fn start(self: &Arc<Self>, s: &mut Slots, job: Job, thread: usize) {
        let (stop_tx, stop_rx) = oneshot::channel();
        let id = job.id;
        s.running.insert(
            id,
            Running {
                stop: Some(stop_tx),
                waiters: Vec::new(),
                released: false,
                thread,
            },
        );
        s.load[thread] += 1;
        #[cfg(test)]
        lock(&self.placed).push(tests::Placed::new(id, thread));
        let core = self.clone();
        let released = {
            let core = self.clone();
            move || core.released(id)
        };
        // On a job thread's runtime, where the job process is forked: see
        // runner::exec::spawn for why that matters.
        self.threads[thread].spawn(self.tracker.track_future(async move {
            #[cfg(test)]
            tests::Placed::ran(&core.placed, id);
            let result = run_attempt(core.ctx.clone(), job, stop_rx, released).await;
            core.exited(id, result).await;
        }));
    }

    /// A job's processes are gone: its slot takes the next ready job, on
    /// the same thread.
    fn released(self: &Arc<Self>, id: JobId) {
        let mut s = lock(&self.slots);
        if let Some(thread) = s.release(id) {
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
            if let Some(thread) = freed {
                self.dispatch(&mut s, Some(thread));
            }
            (r.waiters, recheck)
        };
        // Only now that the job is out of `running`, which every start
        // skips: a retry promoted and looked for before then would be
        // skipped, and nothing would look again.
        if let Ok(job) = &result {
            // A retry scheduled for later.
            self.handle.submitted(std::slice::from_ref(job));
        }
        if paused {
            // So that the scheduler's timer covers the end of the pause.
            let _ = self.handle.tx.send(Msg::Wake);
        }
        if waiters.is_empty() {
            return;
        }
        let answer = if recheck {
            let answer = self.ctx.store.cancel_pending(id, now_micros()).await;
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

/// The scheduler task's state.
pub struct Scheduler {
    core: Arc<Core>,
    rx: mpsc::UnboundedReceiver<Msg>,
    next_due: Option<Micros>,
    /// The job threads' runtimes, until [`Scheduler::spawn`] gives each
    /// its thread.
    runtimes: Vec<Runtime>,
}

impl Scheduler {
    /// Creates the scheduler, its handle, and the runtimes of `threads`
    /// job threads (at least one). Nothing runs until [`Scheduler::spawn`].
    pub fn new(
        ctx: Arc<RunnerCtx>,
        concurrency: usize,
        threads: usize,
    ) -> std::io::Result<(Scheduler, SchedulerHandle)> {
        let runtimes = (0..threads.max(1))
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("quern-jobs-blocking")
                    .build()
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let threads: Vec<Handle> = runtimes.iter().map(|r| r.handle().clone()).collect();
        let (handle, rx) = SchedulerHandle::new();
        let slots = Slots {
            running: HashMap::new(),
            load: vec![0; threads.len()],
            maybe_ready: true,
            paused_until: None,
            cancelling: Vec::new(),
            stopping: false,
        };
        let core = Arc::new(Core {
            ctx,
            concurrency,
            threads,
            slots: Mutex::new(slots),
            handle: handle.clone(),
            tracker: TaskTracker::new(),
            #[cfg(test)]
            placed: Mutex::new(Vec::new()),
        });
        let s = Scheduler {
            core,
            rx,
            next_due: None,
            runtimes,
        };
        Ok((s, handle))
    }

    /// Starts the job threads, `quern-jobs-N`, each on its runtime; the
    /// scheduler's task runs on the first. Returns a receiver that
    /// resolves once `shutdown` has fired and the scheduler has stopped
    /// every job.
    ///
    /// A job's path (scheduler, runner, output pumps) is a few short
    /// steps, each waking the next. On the shared multi-threaded runtime
    /// each wake-up could hand a task to the other worker, and a thread
    /// switch costs more on a small VM than the step it carries. On threads
    /// of their own quernd spends ~20% less CPU per job in P3
    /// (docs/benchmarks.md), while gRPC keeps a worker per core, and a
    /// burst of requests and a burst of job starts no longer wait for each
    /// other. A job stays on the thread it started on, and the thread
    /// starts the next job when it ends (see [`Core::dispatch`]).
    ///
    /// Job processes are started from these threads, and the parent-death
    /// signal fires when the thread that started a process exits: the
    /// threads only end after the scheduler has stopped every job.
    pub fn spawn(mut self, shutdown: CancellationToken) -> std::io::Result<oneshot::Receiver<()>> {
        let (done_tx, done_rx) = oneshot::channel();
        let finished = CancellationToken::new();
        let runtimes = std::mem::take(&mut self.runtimes);
        let mut first = Some((self, shutdown, done_tx));
        for (i, runtime) in runtimes.into_iter().enumerate() {
            let finished = finished.clone();
            let first = first.take();
            std::thread::Builder::new()
                .name(format!("quern-jobs-{i}"))
                .spawn(move || {
                    match first {
                        Some((scheduler, shutdown, done_tx)) => {
                            runtime.block_on(scheduler.run(shutdown));
                            finished.cancel();
                            let _ = done_tx.send(());
                        }
                        None => runtime.block_on(finished.cancelled()),
                    }
                    // Output still copied for a process that left its job's
                    // group must not hold up the daemon's exit.
                    runtime.shutdown_background();
                })?;
        }
        Ok(done_rx)
    }

    /// Runs until `shutdown` fires, then stops every running job (they go
    /// back to the queue) and waits for them.
    async fn run(mut self, shutdown: CancellationToken) {
        match self.core.ctx.store.next_due().await {
            Ok(due) => self.next_due = due,
            Err(e) => tracing::error!(error = %e, "reading the next due job failed"),
        }
        loop {
            if self.next_due.is_some_and(|d| d <= now_micros()) {
                // Submits during the read must wake us (see `timer`).
                lock(&self.core.handle.submitted).timer = None;
                self.promote().await;
            }
            let paused_until = {
                let mut s = lock(&self.core.slots);
                self.core.dispatch(&mut s, None);
                s.paused_until
            };
            lock(&self.core.handle.submitted).timer = self.next_due;
            let due = self.next_due.map(|due| {
                let wait = Duration::from_micros(due.saturating_sub(now_micros()));
                Instant::now() + wait
            });
            let timer = match (due, paused_until) {
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
            // burst of messages costs one store read, not one each.
            while let Ok(m) = self.rx.try_recv() {
                self.handle(m).await;
            }
        }
        self.drain().await;
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Wake => {
                let (ready, due) = take_submitted(&self.core.handle.submitted);
                if ready {
                    lock(&self.core.slots).maybe_ready = true;
                }
                if let Some(d) = due {
                    self.next_due = Some(self.next_due.map_or(d, |n| n.min(d)));
                }
            }
            Msg::Cancel { id, grace, reply } => {
                let reply = {
                    let mut s = lock(&self.core.slots);
                    if let Some(r) = s.running.get_mut(&id) {
                        if let Some(stop) = r.stop.take() {
                            let _ = stop.send(Stop::Cancel { grace });
                        }
                        r.waiters.push(reply);
                        return;
                    }
                    // Not started by us, so queued, scheduled or finished:
                    // the store decides, atomically, and no job thread
                    // starts it meanwhile.
                    s.cancelling.push(id);
                    reply
                };
                let res = self.core.ctx.store.cancel_pending(id, now_micros()).await;
                lock(&self.core.slots).stop_cancelling(id);
                let _ = reply.send(res);
            }
        }
    }

    async fn promote(&mut self) {
        match self.core.ctx.store.promote_due(now_micros()).await {
            Ok(next) => {
                self.next_due = next;
                lock(&self.core.slots).maybe_ready = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "moving due jobs to the queue failed; retrying in 1s");
                self.next_due = Some(now_micros() + 1_000_000);
            }
        }
    }

    /// Stops every running job for shutdown and waits until all have ended.
    async fn drain(mut self) {
        {
            let mut s = lock(&self.core.slots);
            s.stopping = true;
            tracing::info!(running = s.running.len(), "stopping running jobs");
            for r in s.running.values_mut() {
                if let Some(stop) = r.stop.take() {
                    let _ = stop.send(Stop::Shutdown);
                }
            }
        }
        self.core.tracker.close();
        let ended = self.core.tracker.wait();
        let mut ended = std::pin::pin!(ended);
        loop {
            tokio::select! {
                () = &mut ended => break,
                msg = self.rx.recv() => match msg {
                    Some(Msg::Cancel { reply, .. }) => {
                        let _ = reply.send(Err(StoreError::Closed));
                    }
                    Some(Msg::Wake) => {}
                    None => {
                        ended.await;
                        break;
                    }
                },
            }
        }
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

    /// A handle, with the scheduler's ends of what it shares.
    fn handle() -> (
        SchedulerHandle,
        mpsc::UnboundedReceiver<Msg>,
        Arc<Mutex<Submitted>>,
    ) {
        let (handle, rx) = SchedulerHandle::new();
        let submitted = handle.submitted.clone();
        (handle, rx, submitted)
    }

    /// Where a job was started: the thread given its slot, the OS thread
    /// that started it, and the one its task then ran on.
    #[derive(Debug)]
    pub(super) struct Placed {
        id: JobId,
        thread: usize,
        by: Option<String>,
        ran_on: Option<String>,
    }

    impl Placed {
        pub(super) fn new(id: JobId, thread: usize) -> Placed {
            Placed {
                id,
                thread,
                by: std::thread::current().name().map(str::to_owned),
                ran_on: None,
            }
        }

        pub(super) fn ran(placed: &Mutex<Vec<Placed>>, id: JobId) {
            let name = std::thread::current().name().map(str::to_owned);
            if let Some(p) = lock(placed).iter_mut().find(|p| p.id == id) {
                p.ran_on = name;
            }
        }
    }

    /// A scheduler over a real store in a temporary directory, with
    /// `threads` job threads, as the daemon runs it.
    struct Rig {
        _dir: tempfile::TempDir,
        store: crate::store::Store,
        core: Arc<Core>,
        stop: CancellationToken,
        done: oneshot::Receiver<()>,
    }

    impl Rig {
        /// Stores `jobs` copies of a `true` job, then starts the
        /// scheduler; `before` runs in between.
        fn start(
            concurrency: usize,
            threads: usize,
            jobs: usize,
            before: impl FnOnce(&crate::store::Store),
        ) -> (
            Rig,
            Vec<JobId>,
            tokio::sync::broadcast::Receiver<crate::job::Event>,
        ) {
            use crate::config::Config;
            use crate::logs::LogStore;
            use crate::store::Store;

            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), 1000, 1 << 20, Duration::ZERO).unwrap();
            let config = Config {
                concurrency,
                ..Config::for_dir(dir.path())
            };
            let ctx = Arc::new(RunnerCtx {
                store: store.clone(),
                logs: Arc::new(LogStore::new(dir.path().join("logs"), 1 << 20).unwrap()),
                config: Arc::new(config),
                default_cwd: dir.path().into(),
            });
            let (scheduler, _handle) = Scheduler::new(ctx, concurrency, threads).unwrap();
            let core = scheduler.core.clone();
            let events = store.subscribe();
            let spec = job(JobState::Queued).spec;
            let ids = block_on(store.submit(vec![spec; jobs], now_micros()))
                .unwrap()
                .into_iter()
                .map(|s| s.job.id)
                .collect();
            before(&store);

            let stop = CancellationToken::new();
            let done = scheduler.spawn(stop.clone()).unwrap();
            let rig = Rig {
                _dir: dir,
                store,
                core,
                stop,
                done,
            };
            (rig, ids, events)
        }

        /// Stops the scheduler, and returns once it has stopped every job.
        fn stop(self) -> (crate::store::Store, Arc<Core>) {
            self.stop.cancel();
            self.done.blocking_recv().unwrap();
            (self.store, self.core)
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Reads events until each of `ids` has succeeded, failing the test
    /// on a failed job or after `within`. Returns every event read.
    fn wait_succeeded(
        events: &mut tokio::sync::broadcast::Receiver<crate::job::Event>,
        ids: &[JobId],
        within: Duration,
    ) -> Vec<crate::job::Event> {
        let mut left: HashSet<JobId> = ids.iter().copied().collect();
        let mut seen = Vec::new();
        block_on(async {
            let deadline = Instant::now() + within;
            while !left.is_empty() {
                let event = tokio::time::timeout_at(deadline, events.recv())
                    .await
                    .unwrap_or_else(|_| panic!("jobs {left:?} did not finish; saw {seen:#?}"))
                    .expect("the store's events ended");
                assert_ne!(event.state, StateTag::Failed, "a job failed: {event:?}");
                if event.state == StateTag::Succeeded {
                    left.remove(&event.job_id);
                }
                seen.push(event);
            }
        });
        seen
    }

    /// With two job threads, jobs run on both, each on the thread its slot
    /// was given, and a thread whose job ended starts the next job itself,
    /// in its own slot, without handing it to the scheduler's thread.
    #[test]
    fn a_job_that_ends_starts_the_next_on_its_own_thread() {
        const JOBS: usize = 40;
        let (rig, ids, mut events) = Rig::start(2, 2, JOBS, |_| {});
        wait_succeeded(&mut events, &ids, Duration::from_secs(60));
        let (store, core) = rig.stop();

        for &id in &ids {
            let job = stored(&store, id);
            assert_eq!(job.state.tag(), StateTag::Succeeded, "{job:?}");
        }
        let placed = lock(&core.placed);
        assert_eq!(placed.len(), JOBS, "{placed:#?}");
        for p in placed.iter() {
            let slot = format!("quern-jobs-{}", p.thread);
            assert_eq!(p.ran_on.as_deref(), Some(slot.as_str()), "{p:?}");
        }
        // Only a job's own task starts jobs on the second thread, so each
        // start from there must have stayed there.
        let by_second: Vec<_> = placed
            .iter()
            .filter(|p| p.by.as_deref() == Some("quern-jobs-1"))
            .collect();
        for p in &by_second {
            assert_eq!(p.thread, 1, "a job thread handed its next job away: {p:?}");
        }
        assert!(
            by_second.len() >= JOBS / 4,
            "the second thread started only {} of {JOBS} jobs itself: {placed:#?}",
            by_second.len()
        );
    }

    /// When the store cannot record a job, no job starts for
    /// [`STORE_FAILURE_PAUSE`], and starts resume on their own after it,
    /// with nothing else happening to wake the scheduler.
    #[test]
    fn a_store_failure_pauses_job_starts_until_the_pause_ends() {
        // One slot. The first write once the scheduler runs is the first
        // job's "running" mark, and it fails: that job stays queued, to be
        // started again. The second job took the slot when the first one's
        // process ended, before the failure was seen, and the third may
        // have too, depending on how quickly the failure comes back; but
        // the first job's second try can only come after the pause.
        let (rig, ids, mut events) = Rig::start(1, 1, 3, |store| store.fail_next_commits(1));
        let seen = wait_succeeded(&mut events, &ids, Duration::from_secs(30));
        rig.stop();

        let starts: Vec<(JobId, Micros)> = seen
            .iter()
            .filter(|e| e.state == StateTag::Running)
            .map(|e| (e.job_id, e.at))
            .collect();
        let retried: Vec<Micros> = starts
            .iter()
            .filter(|(id, _)| *id == ids[0])
            .map(|&(_, at)| at)
            .collect();
        assert_eq!(
            retried.len(),
            1,
            "the first job's failed start was recorded: {seen:#?}"
        );
        let before: Vec<Micros> = starts
            .iter()
            .filter(|&&(id, at)| id != ids[0] && at < retried[0])
            .map(|&(_, at)| at)
            .collect();
        assert!(
            !before.is_empty(),
            "the second job did not start first: {seen:#?}"
        );
        // Jobs that started before the failure was seen did so at most
        // moments before it; allow that, and the two clocks (wall for
        // events, monotonic for the pause), 100 ms.
        let pause = STORE_FAILURE_PAUSE.as_micros() as u64 - 100_000;
        for at in before {
            assert!(
                retried[0] >= at + pause,
                "the first job started again {} µs after another job, within the pause: {seen:#?}",
                retried[0] - at
            );
        }
    }

    fn stored(store: &crate::store::Store, id: JobId) -> Job {
        block_on(store.get(id)).unwrap()
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
