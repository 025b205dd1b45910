//! Runs one attempt of a job and records how it ended. One file per job
//! kind; this module holds what every kind shares: the attempt lifecycle,
//! timeouts, stop requests and the retry decision.

pub mod exec;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::job::{Job, JobId, JobKind, JobState, Micros, now_micros, retry_delay};
use crate::logs::LogStore;
use crate::platform::process::{boot_id, signal_group};
use crate::store::{Commit, Outcome, Store, StoreError};

/// Why the scheduler wants a job stopped.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// A cancel request, with its SIGTERM-to-SIGKILL grace.
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
    /// Timeouts, grace and retry settings.
    pub config: Arc<Config>,
    /// The working directory of jobs that name none.
    pub default_cwd: PathBuf,
}

/// How long to wait for output pipes to drain after the group was killed.
/// Only a process that left the group (setsid) can hold them longer, and it
/// must not keep the job from finishing.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// How an attempt ended, before it is turned into an [`Outcome`].
enum Ended {
    Exited(std::process::ExitStatus),
    TimedOut(Duration),
    Stopped(Stop),
}

/// Runs the next attempt of `job` (which the store has as queued) to the
/// end, and returns the job as stored afterwards.
///
/// `released` is called once the job's processes are gone, before the
/// outcome is committed, so the scheduler can reuse the slot without
/// waiting for the disk. It is not called if the job never started.
pub async fn run_attempt(
    ctx: Arc<RunnerCtx>,
    job: Job,
    mut stop: oneshot::Receiver<Stop>,
    released: impl FnOnce(),
) -> Result<Job, StoreError> {
    let attempt = job.attempts + 1;
    let id = job.id;
    // A stop that came before the start: never spawn.
    if let Ok(s) = stop.try_recv() {
        let outcome = match s {
            Stop::Cancel { .. } => Outcome::Cancelled { exit_code: None },
            Stop::Shutdown => Outcome::Requeue,
        };
        return record(&ctx, id, attempt, None, outcome).await;
    }
    let JobKind::Exec(spec) = &job.spec.kind;
    let live = ctx.logs.start(id);
    let started_at = now_micros();
    let spawned = exec::spawn(id, spec, &ctx.default_cwd, &live);
    let spawned = match spawned {
        Ok(s) => s,
        Err(error) => {
            // Nothing ran, so no output will come.
            ctx.logs.finish(id);
            let outcome = failed(&ctx.config, &job, attempt, None, error);
            return record(&ctx, id, attempt, Some(started_at), outcome).await;
        }
    };
    let pid = spawned.child.pid();
    let running = JobState::Running {
        pid,
        pid_start: spawned.child.start_time().unwrap_or(0),
        boot_id: boot_id(),
    };
    // Not awaited here: the commit overlaps with the job's run. The
    // parent-death signal covers the moment before it is durable, and the
    // finish below is queued after it.
    let marked = ctx.store.mark_running(id, attempt, running, started_at);
    let timeout = job.spec.timeout;
    let grace = ctx.config.default_grace;
    let mut pumps = spawned.pumps;
    let mut drained = false;
    // In a block so that the leader's handle, and its pidfd, close as soon
    // as it is reaped rather than when the outcome is committed, which
    // under load can be a linger later: every open descriptor makes each
    // later job start copy a bigger table.
    let ended = {
        let mut child = spawned.child;
        let child = &mut child;
        let work = async {
            tokio::select! {
                status = child.wait() => match status {
                    Ok(s) => Ended::Exited(s),
                    Err(e) => {
                        tracing::error!(job = id, error = %e, "waiting for job process failed");
                        Ended::Stopped(Stop::Cancel { grace: Duration::ZERO })
                    }
                },
                _ = sleep_or_forever(timeout) => {
                    let _ = exec::terminate(child, pid, grace).await;
                    Ended::TimedOut(timeout.unwrap_or_default())
                }
                s = &mut stop => {
                    // A dropped sender means the scheduler is gone: treat as shutdown.
                    let s = s.unwrap_or(Stop::Shutdown);
                    let g = match s { Stop::Cancel { grace } => grace, Stop::Shutdown => grace };
                    let _ = exec::terminate(child, pid, g).await;
                    Ended::Stopped(s)
                }
            }
        };
        // The output is copied all along, also while a stopped job gets its
        // grace period, so a job that writes a lot never blocks on a full pipe.
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                ended = &mut work => break ended,
                () = &mut pumps, if !drained => drained = true,
            }
        }
    };
    // Take down anything the leader left behind in its group, so that
    // nothing of the job outlives it.
    signal_group(pid, Signal::SIGKILL);
    if !drained && tokio::time::timeout(DRAIN_LIMIT, &mut pumps).await.is_err() {
        tracing::warn!(
            job = id,
            "job output still open after its group was killed; a process left the group"
        );
        // Keep copying what it writes, without holding up the job's end.
        tokio::spawn(pumps);
    }
    // The processes are gone: the slot can take the next job while the
    // outcome is committed.
    released();
    if let Err(e) = marked.await {
        // Without a record of it running, the store still has the job
        // queued, and it will be started again.
        ctx.logs.finish(id);
        return Err(e);
    }
    let outcome = match ended {
        Ended::Exited(status) if status.success() => Outcome::Succeeded { exit_code: 0 },
        Ended::Exited(status) => {
            let (code, error) = exec::describe(&status);
            failed(&ctx.config, &job, attempt, code, error)
        }
        Ended::TimedOut(t) => failed(
            &ctx.config,
            &job,
            attempt,
            None,
            format!("timed out after {}", humantime::format_duration(t)),
        ),
        Ended::Stopped(Stop::Cancel { .. }) => Outcome::Cancelled { exit_code: None },
        Ended::Stopped(Stop::Shutdown) => Outcome::Requeue,
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
    let at = now_micros();
    let commit = match outcome {
        Outcome::Cancelled { .. } => Commit::Now,
        _ => Commit::Grouped,
    };
    ctx.store
        .finish(id, attempt, started_at, outcome, at, commit)
        .await
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// A failed attempt: retried after backoff while attempts remain.
fn failed(
    config: &Config,
    job: &Job,
    attempt: u32,
    exit_code: Option<i32>,
    error: String,
) -> Outcome {
    let retry_at = (attempt < job.spec.max_attempts).then(|| {
        let jitter: f64 = rand::random_range(0.75..=1.0);
        let delay = retry_delay(
            attempt,
            config.retry_base_delay,
            config.retry_max_delay,
            jitter,
        );
        now_micros() + delay.as_micros() as u64
    });
    Outcome::Failed {
        exit_code,
        error,
        retry_at,
    }
}

/// The outcome for a job found running at boot: its daemon died under it.
pub fn interrupted(config: &Config, job: &Job) -> Outcome {
    failed(
        config,
        job,
        job.attempts,
        None,
        "interrupted by daemon restart".to_string(),
    )
}
