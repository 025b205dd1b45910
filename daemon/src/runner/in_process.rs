//! What kinds that run inside quernd share: an attempt that is a task on
//! the job's thread, and a bounded pool for their CPU-heavy work.
//!
//! The job threads also run the scheduler and every other job, so an
//! in-process kind's task must only wait there, never compute for long: a
//! long analysis on a job thread would delay other jobs' starts and every
//! Cancel. Its heavy work goes to [`CpuPool`], whose threads do nothing
//! else.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Attempt, AttemptCtx, BoxFuture, Ended};
use crate::job::RunRecord;

/// An attempt whose work is a task in quernd. Nothing of it can outlive
/// the daemon, so it records nothing for recovery.
pub struct InProcess {
    task: JoinHandle<Ended>,
    cancel: CancellationToken,
}

impl InProcess {
    /// Starts the future `work` makes of the attempt's context as a task
    /// on the current (job) thread. It must end soon after `ctx.cancel`
    /// fires; one that does not is aborted once the grace period is over.
    pub fn start<F>(ctx: AttemptCtx, work: impl FnOnce(AttemptCtx) -> F) -> Box<dyn Attempt>
    where
        F: Future<Output = Ended> + Send + 'static,
    {
        let cancel = ctx.cancel.clone();
        Box::new(InProcess {
            task: tokio::spawn(work(ctx)),
            cancel,
        })
    }
}

impl Attempt for InProcess {
    fn record(&self) -> RunRecord {
        RunRecord::InProcess
    }

    fn wait(&mut self) -> BoxFuture<'_, Ended> {
        Box::pin(async move {
            match (&mut self.task).await {
                Ok(ended) => ended,
                Err(e) => Ended::Failed {
                    exit_code: None,
                    error: format!("the job's task ended abnormally: {e}"),
                    // A panic would only happen again.
                    retry: false,
                },
            }
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.cancel.cancel();
            if tokio::time::timeout(grace, &mut self.task).await.is_err() {
                self.task.abort();
                let _ = (&mut self.task).await;
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// A fixed set of threads for CPU-heavy work of in-process kinds.
///
/// rayon's pool, because it is a well-kept bounded pool; tokio's blocking
/// pool is not one (it grows to hundreds of threads and is shared with
/// every blocking read).
#[derive(Clone)]
pub struct CpuPool {
    pool: Arc<rayon::ThreadPool>,
}

/// The pool is gone, or the work panicked.
#[derive(Debug, thiserror::Error)]
#[error("the CPU pool dropped the work (it panicked, or quernd is stopping)")]
pub struct CpuPoolError;

impl CpuPool {
    /// A pool of `threads` threads (at least one), named `quern-cpu-N`.
    pub fn new(threads: usize) -> std::io::Result<CpuPool> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("quern-cpu-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(CpuPool {
            pool: Arc::new(pool),
        })
    }

    /// How many threads it has: at most this many pieces of work run at
    /// once.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The pool itself, for work that spreads over it (the git kind's
    /// diffs) from inside a piece of work it runs.
    pub fn rayon(&self) -> Arc<rayon::ThreadPool> {
        self.pool.clone()
    }

    /// Runs `work` on the pool and waits for its result without blocking
    /// the calling thread. Work beyond the pool's size waits its turn.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CpuPoolError> {
        let (tx, rx) = oneshot::channel();
        self.pool.spawn(move || {
            let _ = tx.send(work());
        });
        rx.await.map_err(|_| CpuPoolError)
    }
}
