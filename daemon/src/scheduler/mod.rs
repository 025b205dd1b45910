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
//!
//! The parts: `handle` (the handle and its messages), `core` (what runs
//! where, and starting ready jobs within what `admission` allows),
//! `threads` (the job threads) and this module's loop.

mod core;
mod handle;
mod threads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::job::Micros;
use crate::runner::{RunnerCtx, Stop};
use crate::store::StoreError;
use core::{Core, Slots};
pub use handle::SchedulerHandle;
use handle::{Msg, take_submitted};
use threads::JobThreads;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is completed before anything that
    // could panic, so a panic cannot leave them torn.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The scheduler task's state.
pub struct Scheduler {
    core: Arc<Core>,
    rx: mpsc::UnboundedReceiver<Msg>,
    next_due: Option<Micros>,
    /// The job threads, until [`Scheduler::spawn`] starts them; `None`
    /// when the scheduler runs on the caller's runtime (tests).
    threads: Option<JobThreads>,
}

impl Scheduler {
    /// Creates the scheduler, its handle, and `threads` job threads (at
    /// least one); jobs start within what `admission` allows. Nothing runs
    /// until [`Scheduler::spawn`].
    pub fn new(
        ctx: Arc<RunnerCtx>,
        admission: Admission,
        threads: usize,
    ) -> std::io::Result<(Scheduler, SchedulerHandle)> {
        let threads = JobThreads::new(threads)?;
        let handles = threads.handles();
        Ok(Scheduler::on(ctx, admission, handles, Some(threads)))
    }

    /// A scheduler whose jobs run on the current runtime, and whose loop
    /// the caller runs with [`Scheduler::run`]: for tests that control the
    /// clock with `tokio::time::pause()`, which only the runtime it was
    /// called on follows.
    #[cfg(test)]
    pub(crate) fn here(ctx: Arc<RunnerCtx>, admission: Admission) -> (Scheduler, SchedulerHandle) {
        Scheduler::on(ctx, admission, vec![Handle::current()], None)
    }

    fn on(
        ctx: Arc<RunnerCtx>,
        admission: Admission,
        threads: Vec<Handle>,
        runtimes: Option<JobThreads>,
    ) -> (Scheduler, SchedulerHandle) {
        let (handle, rx) = SchedulerHandle::new(admission.hosts().clone());
        let slots = Slots {
            running: HashMap::new(),
            load: vec![0; threads.len()],
            maybe_ready: true,
            paused_until: None,
            cancelling: Vec::new(),
            stopping: false,
            read_retry: std::time::Duration::ZERO,
            fetch_active: 0,
            fetch_maybe_ready: true,
            fetch_wake: None,
            deferring: std::collections::HashSet::new(),
        };
        let core = Arc::new(Core {
            ctx,
            admission,
            threads,
            slots: Mutex::new(slots),
            handle: handle.clone(),
            tracker: TaskTracker::new(),
            #[cfg(test)]
            placed: Mutex::new(Vec::new()),
            #[cfg(test)]
            ready_reads: std::sync::atomic::AtomicUsize::new(0),
        });
        // A host whose breaker or pause changed may take jobs again, or
        // must have them held back. Weak: the policy lives in the core.
        let weak = Arc::downgrade(&core);
        core.admission.hosts().on_change(Arc::new(move || {
            if let Some(core) = weak.upgrade() {
                core.handle.hosts_changed();
            }
        }));
        let s = Scheduler {
            core,
            rx,
            next_due: None,
            threads: runtimes,
        };
        (s, handle)
    }

    /// Starts the job threads (see `threads`); the scheduler's task runs
    /// on the first. Returns a receiver that resolves once `shutdown` has
    /// fired and the scheduler has stopped every job.
    pub fn spawn(mut self, shutdown: CancellationToken) -> std::io::Result<oneshot::Receiver<()>> {
        let threads = self.threads.take().ok_or_else(|| {
            std::io::Error::other("this scheduler runs on its caller's runtime; call run")
        })?;
        threads.start(self.run(shutdown))
    }

    /// Runs until `shutdown` fires, then stops every running job (they go
    /// back to the queue) and waits for them.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        match self.core.ctx.store.next_due().await {
            Ok(due) => self.next_due = due,
            Err(e) => tracing::error!(error = %e, "reading the next due job failed"),
        }
        loop {
            let clock = self.core.ctx.env.clock;
            if self.next_due.is_some_and(|d| d <= clock.now_micros()) {
                // Submits during the read must wake us (see `timer`).
                lock(&self.core.handle.submitted).timer = None;
                self.promote().await;
            }
            let paused_until = {
                let mut s = lock(&self.core.slots);
                self.core.dispatch(&mut s, None);
                match (s.paused_until, s.fetch_wake) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            lock(&self.core.handle.submitted).timer = self.next_due;
            let due = self.next_due.map(|due| clock.instant_at(due));
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
                let (ready, hosts, due) = take_submitted(&self.core.handle.submitted);
                if ready || hosts {
                    let mut s = lock(&self.core.slots);
                    // A submit does not say of which kind: both pools look.
                    s.maybe_ready |= ready;
                    s.fetch_maybe_ready = true;
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
                let res = self
                    .core
                    .ctx
                    .store
                    .cancel_pending(id, self.core.ctx.env.clock.now_micros())
                    .await;
                lock(&self.core.slots).stop_cancelling(id);
                let _ = reply.send(res);
            }
        }
    }

    async fn promote(&mut self) {
        let now = self.core.ctx.env.clock.now_micros();
        match self.core.ctx.store.promote_due(now).await {
            Ok(next) => {
                self.next_due = next;
                let mut s = lock(&self.core.slots);
                s.maybe_ready = true;
                s.fetch_maybe_ready = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "moving due jobs to the queue failed; retrying in 1s");
                self.next_due = Some(now + 1_000_000);
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
mod tests;
