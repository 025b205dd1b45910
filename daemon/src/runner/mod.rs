//! Runs one attempt of a job and records how it ended.
//!
//! Each kind of job is one module here, behind [`Kind`]: it starts an
//! attempt from the spec and a context ([`AttemptCtx`]: the job, the
//! attempt number, a cancellation token, a progress sink, a checkpoint and
//! an output log), and returns an [`Attempt`] that can be awaited, stopped
//! with a grace period, and described for recovery. This module holds
//! only what every kind shares: the timeout, stop requests, the retry
//! decision and recording the outcome.
//!
//! **A kind never touches the store, the scheduler or another job**: its
//! context holds no way to ([`KindEnv`] is all of the daemon it sees); it
//! reports through the context, and its attempt's result is recorded here.
//! A kind that runs inside quernd ([`in_process`]) runs as a task on the
//! job's thread and must not block it: CPU-heavy work goes to the
//! [`in_process::CpuPool`].
//!
//! Adding a kind: a module here, an arm in [`Kinds::get`], and an arm in
//! the proto conversion (`api/convert.rs`). Its spec is a variant of
//! `JobKind` in `job.rs`, with its tag and its rules, and it is stored by
//! an arm in `store/record.rs` (with a schema step): the domain model and
//! the store sit below the runner, so they cannot take the spec from here.

pub mod exec;
pub mod fetch;
pub mod git;
pub mod in_process;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::job::{
    Job, JobId, JobResult, JobSpec, KindTag, Micros, Outcome, RunRecord, retry_delay,
};
use crate::logs::{LiveLog, LogStore};
use crate::progress::{ProgressBoard, ProgressSink};
use crate::store::{Commit, Store, StoreError};

/// Why the scheduler wants a job stopped.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// A cancel request, with its grace period (SIGTERM to SIGKILL for
    /// exec).
    Cancel {
        /// The grace period.
        grace: Duration,
    },
    /// The daemon is shutting down: stop, and put the job back in the queue.
    Shutdown,
}

/// What every attempt needs.
pub struct RunnerCtx {
    /// Where outcomes are recorded.
    pub store: Store,
    /// Where output goes.
    pub logs: Arc<LogStore>,
    /// Where progress goes.
    pub progress: Arc<ProgressBoard>,
    /// Which code runs each kind.
    pub kinds: Kinds,
    /// What kinds may use.
    pub env: Arc<KindEnv>,
}

/// The part of the daemon a kind may use, besides its [`AttemptCtx`]: no
/// store, no scheduler, no other job.
pub struct KindEnv {
    /// Where kinds run CPU-heavy work.
    pub cpu: in_process::CpuPool,
    /// Timeouts, grace and retry settings.
    pub config: Arc<Config>,
    /// The working directory of jobs that name none.
    pub default_cwd: PathBuf,
    /// The daemon's state directory: a kind keeps its own files under
    /// `state_dir/<kind>/` (fetch: the validators of past downloads).
    pub state_dir: PathBuf,
    /// How the daemon reads the time; see [`crate::clock`].
    pub clock: crate::clock::Clock,
    /// Where fetch attempts report how each host answered, and wait for
    /// a host's rate (see [`HostFeedback`]).
    pub hosts: Arc<dyn HostFeedback>,
    /// Renders a git result as the file clients read back when it is over
    /// `[git] max_result_bytes`: the API's JSON form, which the server
    /// supplies (`api::git_result_json`), as kinds do not know the wire.
    pub git_result_json: fn(&crate::job::git::GitResult) -> String,
}

/// What a fetch attempt tells the per-host policy (in `admission`) about
/// its requests, and asks of it. Admission takes a host's turn (its rate,
/// a slot) before the attempt starts, for the attempt's first request;
/// this is for the rest.
pub trait HostFeedback: Send + Sync {
    /// How a request to `host` (`host:port`, as `config::fetch::host_key`
    /// makes it) went: for the host's circuit breaker, and its pauses.
    fn report(&self, host: &str, outcome: HostOutcome);

    /// Waits until `host`'s rate allows one more request: for requests
    /// after an attempt's first (a redirect to another URL), whose turn
    /// admission did not take.
    fn pace<'a>(&'a self, host: &'a str) -> BoxFuture<'a, ()>;
}

/// How a host answered one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostOutcome {
    /// It answered, with anything but a 5xx (a 404 is the host working).
    Answered,
    /// A connect error, a reset, a timeout or a 5xx: counts towards
    /// opening its breaker.
    Failed,
    /// It asked for a pause (429 or 503 with `Retry-After`): no request
    /// goes to it for this long.
    RetryAfter(Duration),
}

/// A [`HostFeedback`] that limits nothing: for tests of other parts.
pub struct NoHostLimits;

impl HostFeedback for NoHostLimits {
    fn report(&self, _host: &str, _outcome: HostOutcome) {}

    fn pace<'a>(&'a self, _host: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// A kind of job: how to start an attempt of it, and what to do at boot
/// about an attempt that was running when quernd died.
pub trait Kind: Send + Sync {
    /// Starts an attempt of `spec`. An `Err` says why it could not start,
    /// and counts as a failed attempt (retried while attempts remain).
    fn start(&self, spec: &JobSpec, ctx: AttemptCtx) -> Result<Box<dyn Attempt>, String>;

    /// Deals with what is left of an attempt recorded as `run` when the
    /// daemon died under it. Returns a description of what it did, if
    /// anything, for the log.
    fn recover(&self, run: &RunRecord) -> Option<String>;
}

/// A future a kind's attempt returns.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A started attempt.
pub trait Attempt: Send {
    /// What to record about it while it runs, for recovery.
    fn record(&self) -> RunRecord;

    /// Waits until the work ends on its own. Must be cancel-safe: the
    /// runner drops it to stop the attempt, then calls [`Attempt::stop`].
    fn wait(&mut self) -> BoxFuture<'_, Ended>;

    /// Stops the work: asks it to end, waits up to `grace`, then forces it.
    /// Returns once it has stopped.
    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, ()>;

    /// Releases what the attempt holds once it ended or was stopped (for
    /// exec: what is left of the process group, and the output pipes).
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// How the work of an attempt ended on its own.
#[derive(Clone, Debug, PartialEq)]
pub enum Ended {
    /// It did what it was asked.
    Succeeded {
        /// A process's exit code (0), if the kind runs one.
        exit_code: Option<i32>,
        /// What it produced, for kinds that report a result.
        result: Option<JobResult>,
    },
    /// It cannot go on for now, for a reason outside the job (a server
    /// answered `Retry-After`): the job waits in scheduled for `after`, and
    /// the attempt is not counted.
    Deferred {
        /// How long to wait.
        after: Duration,
        /// Why, shown while the job waits.
        reason: String,
    },
    /// It failed.
    Failed {
        /// A process's exit code, if it exited normally.
        exit_code: Option<i32>,
        /// Why, for `Job.error`.
        error: String,
        /// Whether another attempt could succeed. A kind says no for a
        /// failure that would repeat, such as a checksum mismatch.
        retry: bool,
    },
}

/// What a kind gets for one attempt.
pub struct AttemptCtx {
    /// The job.
    pub job: JobId,
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// Fires when the attempt must stop: an in-process kind ends its work
    /// when it does (exec is stopped by signals instead).
    pub cancel: CancellationToken,
    /// Where the attempt reports its progress.
    pub progress: ProgressSink,
    /// The job's checkpoint, kept across attempts and restarts.
    pub checkpoint: Checkpoint,
    /// The job's captured output.
    pub output: Arc<LiveLog>,
    /// The daemon's settings and shared pools.
    pub env: Arc<KindEnv>,
}

/// A job's checkpoint: a few bytes a kind saves so that the next attempt,
/// even after a crash of quernd, can resume instead of starting over
/// (where a download got to, the last commit analysed). Saved durably;
/// dropped once the job finishes.
#[derive(Clone)]
pub struct Checkpoint {
    /// Private, so that the kind reaches the store only through this.
    runner: Arc<RunnerCtx>,
    job: JobId,
}

/// The largest checkpoint a kind may save. A checkpoint says where to
/// resume, not what was done: that belongs in files.
pub const CHECKPOINT_MAX_BYTES: usize = 64 * 1024;

impl Checkpoint {
    /// The checkpoint saved by an earlier attempt, if any.
    pub async fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.runner.store.checkpoint(self.job).await
    }

    /// Saves `bytes` durably, replacing the previous checkpoint. Returns
    /// once it is on disk.
    pub async fn save(&self, bytes: Vec<u8>) -> Result<(), StoreError> {
        if bytes.len() > CHECKPOINT_MAX_BYTES {
            return Err(StoreError::TooLarge {
                what: "checkpoint",
                size: bytes.len(),
                max: CHECKPOINT_MAX_BYTES,
            });
        }
        self.runner.store.save_checkpoint(self.job, bytes).await
    }
}

/// The kind registry: the one place a kind's tag finds its code.
#[derive(Clone, Default)]
pub struct Kinds {
    /// For tests: the kind every job runs as.
    every: Option<Arc<dyn Kind>>,
}

impl Kinds {
    /// The kinds quern is built with.
    pub fn builtin() -> Kinds {
        Kinds { every: None }
    }

    /// For tests: every job runs as `kind`, whatever its spec says, so
    /// that the scheduler and the runner can be tested with work whose
    /// timing the test controls.
    #[cfg(test)]
    pub fn every_job_as(kind: Arc<dyn Kind>) -> Kinds {
        Kinds { every: Some(kind) }
    }

    /// The code of kind `tag`.
    pub fn get(&self, tag: KindTag) -> &dyn Kind {
        if let Some(k) = &self.every {
            return k.as_ref();
        }
        match tag {
            KindTag::Exec => &exec::Exec,
            KindTag::Fetch => &fetch::Fetch,
            KindTag::Git => &git::Git,
        }
    }
}

/// Why the runner stopped waiting for the work.
enum Why {
    Ended(Ended),
    TimedOut(Duration),
    Stopped(Stop),
}

/// Runs the next attempt of `job` (which the store has as queued) to the
/// end, and returns the job as stored afterwards.
///
/// `released` is called once the attempt's work is gone (for exec: its
/// processes), before the outcome is committed, so the scheduler can reuse
/// the slot without waiting for the disk. It is not called if the attempt
/// never started.
pub async fn run_attempt(
    ctx: Arc<RunnerCtx>,
    job: Job,
    mut stop: oneshot::Receiver<Stop>,
    released: impl FnOnce(),
) -> Result<Job, StoreError> {
    let attempt = job.attempts + 1;
    let id = job.id;
    // A stop that came before the start: never start.
    if let Ok(s) = stop.try_recv() {
        let outcome = match s {
            Stop::Cancel { .. } => Outcome::Cancelled { exit_code: None },
            Stop::Shutdown => Outcome::Requeue,
        };
        return record(&ctx, id, attempt, None, outcome).await;
    }
    let output = ctx.logs.start(id);
    let progress = ctx.progress.sink(id);
    let started_at = ctx.env.clock.now_micros();
    let cancel = CancellationToken::new();
    let attempt_ctx = AttemptCtx {
        job: id,
        attempt,
        cancel: cancel.clone(),
        progress: progress.clone(),
        checkpoint: Checkpoint {
            runner: ctx.clone(),
            job: id,
        },
        output,
        env: ctx.env.clone(),
    };
    let mut running = match ctx
        .kinds
        .get(job.spec.kind.tag())
        .start(&job.spec, attempt_ctx)
    {
        Ok(a) => a,
        Err(error) => {
            // Nothing ran, so no output or progress will come.
            progress.end();
            ctx.logs.finish(id);
            let outcome = failed(&ctx, &job, attempt, None, error, true);
            return record(&ctx, id, attempt, Some(started_at), outcome).await;
        }
    };
    // Not awaited here: the commit overlaps with the attempt's run. For
    // exec, the parent-death signal covers the moment before it is
    // durable; the finish below is queued after it.
    let marked = ctx
        .store
        .mark_running(id, attempt, running.record(), started_at);
    let timeout = job.spec.timeout;
    let grace = ctx.env.config.default_grace;
    let why = tokio::select! {
        ended = running.wait() => Why::Ended(ended),
        _ = sleep_or_forever(&ctx.env.clock, timeout) => Why::TimedOut(timeout.unwrap_or_default()),
        // A dropped sender means the scheduler is gone: treat as shutdown.
        s = &mut stop => Why::Stopped(s.unwrap_or(Stop::Shutdown)),
    };
    // A Cancel brings its own grace period; a timeout and a shutdown use
    // the daemon's.
    let stop_within = match why {
        Why::Ended(_) => None,
        Why::Stopped(Stop::Cancel { grace }) => Some(grace),
        Why::TimedOut(_) | Why::Stopped(Stop::Shutdown) => Some(grace),
    };
    if let Some(grace) = stop_within {
        cancel.cancel();
        running.stop(grace).await;
    }
    running.close().await;
    progress.end();
    // The work is gone: the slot can take the next job while the outcome
    // is committed.
    released();
    if let Err(e) = marked.await {
        // Without a record of it running, the store still has the job
        // queued, and it will be started again.
        ctx.logs.finish(id);
        return Err(e);
    }
    let outcome = match why {
        Why::Ended(Ended::Succeeded { exit_code, result }) => {
            Outcome::Succeeded { exit_code, result }
        }
        Why::Ended(Ended::Deferred { after, reason }) => Outcome::Deferred {
            run_at: deferred_until(&ctx, after),
            reason,
        },
        Why::Ended(Ended::Failed {
            exit_code,
            error,
            retry,
        }) => failed(&ctx, &job, attempt, exit_code, error, retry),
        Why::TimedOut(t) => failed(
            &ctx,
            &job,
            attempt,
            None,
            format!("timed out after {}", humantime::format_duration(t)),
            true,
        ),
        Why::Stopped(Stop::Cancel { .. }) => Outcome::Cancelled { exit_code: None },
        Why::Stopped(Stop::Shutdown) => Outcome::Requeue,
    };
    let result = record(&ctx, id, attempt, Some(started_at), outcome).await;
    ctx.logs.finish(id);
    result
}

/// Records how an attempt ended. Mostly no client waits on that, so the
/// store may group it with other jobs' progress while it is busy; but a
/// Cancel call is answered with the cancelled job, so that outcome is
/// committed at once.
async fn record(
    ctx: &RunnerCtx,
    id: JobId,
    attempt: u32,
    started_at: Option<Micros>,
    outcome: Outcome,
) -> Result<Job, StoreError> {
    let at = ctx.env.clock.now_micros();
    let commit = match outcome {
        Outcome::Cancelled { .. } => Commit::Now,
        _ => Commit::Grouped,
    };
    ctx.store
        .finish(id, attempt, started_at, outcome, at, commit)
        .await
}

/// Records that attempt `attempt` of job `id` ended in a panic of its task,
/// which `message` describes: the job fails for good (the same attempt
/// would most likely panic again), and what the attempt held in memory,
/// its live output and progress, is let go. A bug in quernd, so it says
/// so, but one job's bug must not take its slot or a Cancel with it.
pub async fn record_panic(
    ctx: &RunnerCtx,
    id: JobId,
    attempt: u32,
    message: &str,
) -> Result<Job, StoreError> {
    tracing::error!(
        job = id,
        attempt,
        panic = message,
        "a job's task panicked; the job is failed"
    );
    ctx.logs.finish(id);
    ctx.progress.forget(id);
    let outcome = Outcome::Failed {
        exit_code: None,
        error: format!("internal error: {message}; this is a bug in quernd, please report it"),
        retry_at: None,
    };
    let at = ctx.env.clock.now_micros();
    ctx.store
        .finish(id, attempt, None, outcome, at, Commit::Now)
        .await
}

/// When a job deferred for `after` is due: capped at an hour, whatever the
/// kind asked, so that a server's date far ahead cannot park a job for good.
fn deferred_until(ctx: &RunnerCtx, after: Duration) -> Micros {
    let after = after.min(MAX_DEFER);
    let micros = u64::try_from(after.as_micros()).unwrap_or(u64::MAX);
    ctx.env.clock.now_micros().saturating_add(micros)
}

/// The longest a kind may defer a job by.
pub const MAX_DEFER: Duration = Duration::from_secs(3600);

async fn sleep_or_forever(clock: &crate::clock::Clock, d: Option<Duration>) {
    match d {
        Some(d) => clock.sleep(d).await,
        None => std::future::pending().await,
    }
}

/// A failed attempt: retried after backoff while attempts remain, unless
/// the kind said another attempt cannot help.
fn failed(
    ctx: &RunnerCtx,
    job: &Job,
    attempt: u32,
    exit_code: Option<i32>,
    error: String,
    retry: bool,
) -> Outcome {
    let config = &ctx.env.config;
    let retry_at = (retry && attempt < job.spec.max_attempts).then(|| {
        let jitter: f64 = rand::random_range(0.75..=1.0);
        let delay = retry_delay(
            attempt,
            config.retry_base_delay,
            config.retry_max_delay,
            jitter,
        );
        // Saturating: a config may give delays past u64::MAX microseconds,
        // which a cast would wrap, or an add overflow, to a retry at once.
        let delay = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        ctx.env.clock.now_micros().saturating_add(delay)
    });
    Outcome::Failed {
        exit_code,
        error,
        retry_at,
    }
}

/// Deals with a job found running at boot: its daemon died under it. Its
/// kind cleans up what the attempt left (for exec, its process group), and
/// the outcome retries it if attempts remain.
pub fn recover(ctx: &RunnerCtx, job: &Job, run: &RunRecord) -> Outcome {
    if let Some(did) = ctx.kinds.get(job.spec.kind.tag()).recover(run) {
        tracing::info!(job = job.id, "{did}");
    }
    failed(
        ctx,
        job,
        job.attempts,
        None,
        "interrupted by daemon restart".to_string(),
        true,
    )
}

#[cfg(test)]
impl RunnerCtx {
    /// For tests: a context over a fresh store in `dir`, with one CPU
    /// thread.
    pub(crate) fn for_tests(
        dir: &std::path::Path,
        config: Config,
        kinds: Kinds,
        clock: crate::clock::Clock,
    ) -> Arc<RunnerCtx> {
        let store = Store::open(dir, 1000, 1 << 20, Duration::ZERO).unwrap();
        Arc::new(RunnerCtx {
            store,
            logs: Arc::new(LogStore::new(dir.join("logs"), 1 << 20).unwrap()),
            progress: ProgressBoard::new(),
            kinds,
            env: Arc::new(KindEnv {
                cpu: in_process::CpuPool::new(1).unwrap(),
                config: Arc::new(config),
                default_cwd: dir.into(),
                state_dir: dir.into(),
                clock,
                hosts: Arc::new(NoHostLimits),
                git_result_json: crate::api::git_result_json,
            }),
        })
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
