//! The job threads: one single-threaded runtime each, `quern-jobs-N`.
//!
//! A job's path (scheduler, runner, output pumps) is a few short steps,
//! each waking the next. On the shared multi-threaded runtime each wake-up
//! could hand a task to the other worker, and a thread switch costs more
//! on a small VM than the step it carries. On threads of their own quernd
//! spends ~20% less CPU per job in P3 (docs/benchmarks.md), while gRPC
//! keeps a worker per core, and a burst of requests and a burst of job
//! starts no longer wait for each other. A job stays on the thread it
//! started on, and the thread starts the next job when it ends (see
//! `Core::dispatch`).
//!
//! Job processes are started from these threads, and the parent-death
//! signal fires when the thread that started a process exits: the threads
//! only end after the scheduler has stopped every job.

use std::future::Future;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The job threads' runtimes, before their threads start.
pub(super) struct JobThreads {
    runtimes: Vec<Runtime>,
}

impl JobThreads {
    /// The runtimes of `n` job threads (at least one).
    pub(super) fn new(n: usize) -> std::io::Result<JobThreads> {
        let runtimes = (0..n.max(1))
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("quern-jobs-blocking")
                    .build()
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(JobThreads { runtimes })
    }

    /// Handles to spawn job tasks on, one per thread.
    pub(super) fn handles(&self) -> Vec<Handle> {
        self.runtimes.iter().map(|r| r.handle().clone()).collect()
    }

    /// Starts the threads; `main` runs on the first, and the others run
    /// their jobs until it has ended. The receiver resolves then.
    pub(super) fn start(
        self,
        main: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<oneshot::Receiver<()>> {
        let (done_tx, done_rx) = oneshot::channel();
        let finished = CancellationToken::new();
        let mut first = Some((main, done_tx));
        for (i, runtime) in self.runtimes.into_iter().enumerate() {
            let finished = finished.clone();
            let first = first.take();
            std::thread::Builder::new()
                .name(format!("quern-jobs-{i}"))
                .spawn(move || {
                    match first {
                        Some((main, done_tx)) => {
                            runtime.block_on(main);
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
}
