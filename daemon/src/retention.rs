//! Retention: removing finished jobs, their logs and old events, so that a
//! daemon that runs for months keeps a bounded disk.
//!
//! A pass is cut into chunks, each its own short write transaction (see
//! `store::prune`), so that submits keep flowing while a large backlog is
//! removed. Passes run in the background when the count limit is crossed,
//! and on a timer set to the moment the oldest kept job or event comes of
//! age; `quernctl prune` runs one at once.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config;
use crate::job::{JobId, Micros};
use crate::logs::LogStore;
use crate::runner::git::result_file;
use crate::store::{PruneStep, Store, StoreError};
use crate::watch::rule::WATCH_DIR;

/// The soonest a background pass follows the previous one: a steady trickle
/// of jobs coming of age is removed in batches, not one by one.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a background pass waits: a bound on how far a change of
/// the wall clock can delay one.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// How long the background loop waits after a failed pass, at first.
const RETRY_FIRST: Duration = Duration::from_secs(5);

/// What a pass removed, or in a dry run would remove.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished jobs.
    pub jobs: u64,
    /// Stored events.
    pub events: u64,
    /// Bytes of captured output.
    pub log_bytes: u64,
}

/// A pass's outcome, and when the next one may find something.
#[derive(Clone, Copy, Debug, Default)]
struct Pass {
    pruned: Pruned,
    /// The earliest moment a kept job or event comes of age.
    next_due: Option<Micros>,
    /// Jobs were over the count limit, and the pass removed none of them.
    stuck: bool,
}

/// The retention service. Cheap to share.
pub struct Retention {
    store: Store,
    logs: Arc<LogStore>,
    /// `<state_dir>/watch`: the only place a pruned job's changed-paths
    /// file is deleted from.
    watch_dir: PathBuf,
    /// `<state_dir>`: a pruned git job's result file, if it had one, goes
    /// from `runner::git::result_file` under it.
    state_dir: PathBuf,
    policy: config::Retention,
    clock: Clock,
    /// One pass at a time: the background one or `quernctl prune`.
    pass: tokio::sync::Mutex<()>,
}

impl Retention {
    /// The service over the daemon's store and logs, with the configured
    /// limits. `state_dir` is the daemon's, whose `watch` directory holds
    /// the changed-paths files of watch rules' jobs.
    pub fn new(
        store: Store,
        logs: Arc<LogStore>,
        policy: config::Retention,
        clock: Clock,
        state_dir: &Path,
    ) -> Retention {
        Retention {
            store,
            logs,
            watch_dir: state_dir.join(WATCH_DIR),
            state_dir: state_dir.to_path_buf(),
            policy,
            clock,
            pass: tokio::sync::Mutex::new(()),
        }
    }

    /// The configured limits.
    pub fn policy(&self) -> config::Retention {
        self.policy
    }

    /// Runs a pass now with `policy`, removing finished jobs (with their
    /// logs) and events beyond its limits; a dry run only counts them.
    pub async fn prune(
        &self,
        policy: config::Retention,
        dry_run: bool,
    ) -> Result<Pruned, StoreError> {
        Ok(self.pass(policy, dry_run).await?.pruned)
    }

    async fn pass(&self, policy: config::Retention, dry_run: bool) -> Result<Pass, StoreError> {
        if policy == config::Retention::NONE {
            return Ok(Pass::default());
        }
        let _one = self.pass.lock().await;
        let now = self.clock.now_micros();
        let before = |age: Option<Duration>| age.map(|a| now.saturating_sub(micros(a)));
        let finished = self.store.counters().await?.finished();
        let mut step = PruneStep {
            finished_before: before(policy.max_age),
            excess: policy
                .max_finished
                .map_or(0, |keep| finished.saturating_sub(keep)),
            events_before: before(policy.events_max_age),
            dry_run,
            ..PruneStep::default()
        };
        let mut pass = Pass {
            stuck: step.excess > 0,
            ..Pass::default()
        };
        let (mut kept_job, mut kept_event) = (None::<Micros>, None::<Micros>);
        loop {
            let chunk = self.store.prune(step).await?;
            pass.pruned.jobs += chunk.jobs.len() as u64;
            pass.stuck &= chunk.jobs.is_empty();
            pass.pruned.events += chunk.events;
            pass.pruned.log_bytes += self.drop_logs(chunk.jobs, dry_run).await;
            if !dry_run {
                self.drop_watch_files(chunk.watch_files).await;
            }
            kept_job = min(kept_job, chunk.kept_job_since);
            kept_event = min(kept_event, chunk.kept_event_since);
            match chunk.next {
                Some(next) => step = next,
                None => break,
            }
        }
        // Nothing kept means whatever finishes next does so from now on.
        let due = |age: Option<Duration>, since: Option<Micros>| {
            age.map(|a| since.unwrap_or(now).saturating_add(micros(a)))
        };
        pass.next_due = min(
            due(policy.max_age, kept_job),
            due(policy.events_max_age, kept_event),
        );
        Ok(pass)
    }

    /// Deletes (or, in a dry run, measures) the logs of pruned jobs, and
    /// the result files of git jobs over the size limit, off the runtime's
    /// threads. Returns the bytes they held.
    async fn drop_logs(&self, jobs: Vec<JobId>, dry_run: bool) -> u64 {
        if jobs.is_empty() {
            return 0;
        }
        let logs = self.logs.clone();
        let state_dir = self.state_dir.clone();
        tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .map(|id| {
                    let result = result_file(&state_dir, id);
                    let result_bytes = std::fs::metadata(&result).map_or(0, |m| m.len());
                    if dry_run {
                        logs.size(id) + result_bytes
                    } else {
                        if result_bytes > 0 {
                            let _ = std::fs::remove_file(&result);
                        }
                        logs.remove(id) + result_bytes
                    }
                })
                .sum()
        })
        .await
        .unwrap_or(0)
    }

    /// Deletes the changed-paths files of pruned jobs of watch rules, off
    /// the runtime's threads: only those inside `<state_dir>/watch`, as
    /// the path comes from the job's environment, which a user may set to
    /// anything. A file already gone is fine.
    async fn drop_watch_files(&self, files: Vec<PathBuf>) {
        if files.is_empty() {
            return;
        }
        let dir = self.watch_dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for file in files.iter().filter(|f| inside(&dir, f)) {
                match std::fs::remove_file(file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(
                        file = %file.display(),
                        error = %e,
                        "cannot delete a pruned watch job's changed-paths file"
                    ),
                }
            }
        })
        .await;
    }

    /// Removes log files whose job is gone: a crash between a prune's
    /// commit and the deletion of its logs leaves them behind.
    async fn sweep_orphan_logs(&self) -> Result<u64, StoreError> {
        let logs = self.logs.clone();
        let ids = tokio::task::spawn_blocking(move || logs.job_ids())
            .await
            .unwrap_or_default();
        let next_id = self.store.counters().await?.next_id;
        let mut orphans = Vec::new();
        for (n, id) in ids.into_iter().enumerate() {
            // Ids the store has not handed out yet are not ours to judge.
            if id < next_id && matches!(self.store.get(id).await, Err(StoreError::NotFound(_))) {
                orphans.push(id);
            }
            if n % 256 == 255 {
                tokio::task::yield_now().await;
            }
        }
        Ok(self.drop_logs(orphans, false).await)
    }

    /// The background loop, until `stop` fires: a pass at start, then
    /// whenever the count limit is crossed or the next job or event comes
    /// of age.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        match self.sweep_orphan_logs().await {
            Ok(0) => {}
            Ok(bytes) => tracing::info!(bytes, "removed the logs of jobs no longer stored"),
            Err(e) => tracing::warn!(error = %e, "cannot look for logs of removed jobs"),
        }
        let mut finished = self.store.finished_count();
        // Wake a little past the limit, so that a pass removes a batch
        // rather than a job at a time.
        let threshold = self
            .policy
            .max_finished
            .map(|keep| keep.saturating_add((keep / 100).max(1)));
        let mut retry = RETRY_FIRST;
        loop {
            // Whether crossing the count limit may start the next pass: not
            // after a failure, which waits out its delay, nor after a pass
            // that could remove nothing, which would only repeat.
            let mut on_count = false;
            // A pass stops between chunks at shutdown: each chunk is its
            // own transaction, and logs left by one cut short are swept at
            // the next start.
            let pass = tokio::select! {
                () = stop.cancelled() => return,
                pass = self.pass(self.policy, false) => pass,
            };
            let wait = match pass {
                Ok(pass) => {
                    retry = RETRY_FIRST;
                    on_count = !pass.stuck;
                    let p = pass.pruned;
                    if p.jobs + p.events > 0 {
                        tracing::info!(
                            jobs = p.jobs,
                            events = p.events,
                            log_bytes = p.log_bytes,
                            "retention removed finished jobs and old events"
                        );
                    }
                    let now = self.clock.now_micros();
                    pass.next_due.map_or(MAX_INTERVAL, |at| {
                        Duration::from_micros(at.saturating_sub(now))
                            .clamp(MIN_INTERVAL, MAX_INTERVAL)
                    })
                }
                Err(StoreError::Closed) => return,
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?retry, "retention pass failed; finished jobs are kept until it succeeds");
                    let wait = retry;
                    retry = (retry * 2).min(MAX_INTERVAL);
                    wait
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.clock.sleep(wait) => {}
                Ok(_) = finished.wait_for(|&n| threshold.is_some_and(|t| n > t)), if on_count => {}
            }
        }
    }
}

/// Whether `path` names something inside `dir`, judged by its
/// components: below `dir`, and with no `..` that could climb back out.
fn inside(dir: &Path, path: &Path) -> bool {
    path.strip_prefix(dir).is_ok_and(|rest| {
        !rest.as_os_str().is_empty() && rest.components().all(|c| matches!(c, Component::Normal(_)))
    })
}

fn micros(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn min(a: Option<Micros>, b: Option<Micros>) -> Option<Micros> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests;
