//! Retention inside one write transaction: removing finished jobs and old
//! events, a bounded chunk at a time.
//!
//! A pass over a large store is cut into chunks so that no transaction
//! holds the writer for long: submits queued behind a chunk wait for at
//! most one chunk's work (see [`MAX_PRUNED`]). The caller (`retention`)
//! carries the pass from one chunk to the next in [`PruneStep`].

use std::path::PathBuf;

use redb::{ReadableTable, ReadableTableMetadata};

use super::record::decode_event;
use super::tx::Tx;
use super::{Result, db_err};
use crate::job::{Job, JobId, JobKind, Micros, StateTag};
use crate::watch::rule::{CHANGED_PATHS_ENV, WATCH_LABEL};

/// Most jobs one chunk removes. Removing a job deletes its record and its
/// state index entry: with the lookups, ~8 µs a job on the project's test
/// VM, so a chunk of jobs stays within ~2-3 ms of write work.
pub const MAX_PRUNED: usize = 256;

/// Most finished jobs one chunk looks at, kept or removed.
pub(super) const MAX_SCANNED: usize = 1024;

/// Most events one chunk looks at.
pub(super) const MAX_EVENTS: usize = 1024;

/// Most kind-index runs one chunk drops.
const MAX_RUNS: usize = 1024;

/// The finished states, whose jobs may be pruned.
const FINISHED: [StateTag; 3] = [StateTag::Succeeded, StateTag::Failed, StateTag::Cancelled];

/// What a prune pass removes, and how far it has come. Jobs are visited in
/// id order, which is submission order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneStep {
    /// Remove finished jobs that finished before this time.
    pub finished_before: Option<Micros>,
    /// Remove this many more of the oldest finished jobs, whatever their
    /// age (the count limit).
    pub excess: u64,
    /// Remove events recorded before this time.
    pub events_before: Option<Micros>,
    /// Report what would be removed, and remove nothing.
    pub dry_run: bool,
    /// The pass has looked at finished jobs up to this id.
    pub after: JobId,
    /// A dry run has looked at events before this seq.
    pub events_from: u64,
}

/// What one chunk removed (or, in a dry run, would remove).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneChunk {
    /// The removed jobs. Their logs are the caller's to delete.
    pub jobs: Vec<JobId>,
    /// The changed-paths files of the removed jobs that watch rules made
    /// (labelled [`WATCH_LABEL`], with [`CHANGED_PATHS_ENV`] set), as
    /// their environment gives them: the caller's to delete, like the
    /// logs, but only those in its own directory, since a user may put
    /// any path in a job's environment.
    pub watch_files: Vec<PathBuf>,
    /// How many events were removed.
    pub events: u64,
    /// The rest of the pass, or `None` when it is done.
    pub next: Option<PruneStep>,
    /// The earliest time a job this chunk kept could have finished: with
    /// the age limit added, the first moment the next pass may find one
    /// old enough. `None` when the chunk saw no such job.
    pub kept_job_since: Option<Micros>,
    /// When the oldest event this chunk kept was recorded.
    pub kept_event_since: Option<Micros>,
}

impl Tx<'_> {
    /// Applies one chunk of the pass `step`.
    pub(super) fn prune(&mut self, mut step: PruneStep) -> Result<PruneChunk> {
        let mut chunk = PruneChunk::default();
        let jobs_done = self.prune_jobs(&mut step, &mut chunk)?;
        let events_done = self.prune_events_by_age(&mut step, &mut chunk)?;
        if !step.dry_run && !chunk.jobs.is_empty() {
            self.prune_kind_runs()?;
        }
        chunk.next = (!(jobs_done && events_done)).then_some(step);
        Ok(chunk)
    }

    /// Removes finished jobs in id order, first the `excess` oldest, then
    /// those that finished before the cutoff. Returns whether the pass is
    /// done with jobs.
    ///
    /// The age walk stops at the first job submitted at or after the
    /// cutoff: it cannot have finished before it, and (ids growing with
    /// submission time) neither can any later one. A job that finished
    /// after the cutoff but was submitted before it is kept and stepped
    /// over.
    fn prune_jobs(&mut self, step: &mut PruneStep, chunk: &mut PruneChunk) -> Result<bool> {
        if step.excess == 0 && step.finished_before.is_none() {
            return Ok(true);
        }
        // The lowest finished ids after the cursor, merged from the three
        // finished states' runs of the state index.
        let read = db_err("read the state index");
        let mut ids: Vec<(JobId, StateTag)> = Vec::with_capacity(MAX_SCANNED);
        let mut more = false;
        for tag in FINISHED {
            let t = tag as u8;
            for (taken, item) in self
                .by_state
                .range((t, step.after.saturating_add(1))..=(t, u64::MAX))
                .map_err(&read)?
                .enumerate()
            {
                if taken == MAX_SCANNED {
                    more = true;
                    break;
                }
                let (k, _) = item.map_err(&read)?;
                ids.push((k.value().1, tag));
            }
        }
        ids.sort_unstable_by_key(|(id, _)| *id);
        if ids.len() > MAX_SCANNED {
            ids.truncate(MAX_SCANNED);
            more = true;
        }
        for (id, tag) in ids {
            if chunk.jobs.len() == MAX_PRUNED {
                return Ok(false);
            }
            let Some(job) = self.load(id)? else {
                // An index entry without its job: nothing to keep, so
                // drop the entry rather than trip over it every pass.
                if !step.dry_run {
                    self.by_state.remove((tag as u8, id)).map_err(&read)?;
                    self.counters.counts[tag as usize] -= 1;
                }
                step.after = id;
                continue;
            };
            let finished = job.finished_at().unwrap_or(job.queued_at);
            let remove = if step.excess > 0 {
                step.excess -= 1;
                true
            } else if let Some(cutoff) = step.finished_before {
                if finished < cutoff {
                    true
                } else if job.queued_at >= cutoff {
                    chunk.kept_job_since = min_some(chunk.kept_job_since, job.queued_at);
                    return Ok(true);
                } else {
                    chunk.kept_job_since = min_some(chunk.kept_job_since, finished);
                    false
                }
            } else {
                return Ok(true);
            };
            if remove {
                if !step.dry_run {
                    self.remove_job(&job, tag)?;
                }
                chunk.jobs.push(id);
                chunk.watch_files.extend(watch_file(&job));
            }
            step.after = id;
        }
        Ok(!more)
    }

    /// Deletes a finished job and everything kept for it in the store.
    fn remove_job(&mut self, job: &Job, tag: StateTag) -> Result<()> {
        let write = db_err("prune a job");
        self.jobs.remove(job.id).map_err(&write)?;
        self.by_state.remove((tag as u8, job.id)).map_err(&write)?;
        self.counters.counts[tag as usize] -= 1;
        // Its checkpoint and key are normally dropped when the job
        // finishes; a job that somehow kept either must not leave it
        // behind.
        self.release(job)
    }

    /// Removes the oldest events recorded before the cutoff. Returns
    /// whether the pass is done with events.
    fn prune_events_by_age(
        &mut self,
        step: &mut PruneStep,
        chunk: &mut PruneChunk,
    ) -> Result<bool> {
        let Some(cutoff) = step.events_before else {
            return Ok(true);
        };
        let read = db_err("read events");
        let first = self.counters.first_seq;
        let from = if step.dry_run {
            step.events_from.max(first)
        } else {
            first
        };
        // Events are stored in the order they happened, so the walk stops
        // at the first one young enough to keep.
        let mut end = from;
        let mut done = true;
        for (n, item) in self.events.range(from..).map_err(&read)?.enumerate() {
            if n == MAX_EVENTS {
                done = false;
                break;
            }
            let (k, v) = item.map_err(&read)?;
            let at = decode_event(v.value())?.at;
            if at >= cutoff {
                chunk.kept_event_since = Some(at);
                break;
            }
            end = k.value() + 1;
        }
        chunk.events = end - from;
        if step.dry_run {
            step.events_from = end;
        } else if end > first {
            self.events
                .retain_in(first..end, |_, _| false)
                .map_err(db_err("prune events"))?;
            self.counters.first_seq = end;
        }
        Ok(done)
    }

    /// Drops the kind index's runs that no longer hold a job: those that
    /// end at or below the lowest id left. The newest run always stays, as
    /// the one the next job may continue.
    fn prune_kind_runs(&mut self) -> Result<()> {
        let read = db_err("read the kind index");
        let lowest = match self.jobs.first().map_err(db_err("read jobs"))? {
            Some((k, _)) => k.value(),
            None => self.counters.next_id,
        };
        if self.kind_runs.len().map_err(&read)? < 2 {
            return Ok(());
        }
        let mut empty = Vec::new();
        let mut prev: Option<(u64, u8)> = None;
        for item in self.kind_runs.iter().map_err(&read)? {
            let (k, v) = item.map_err(&read)?;
            let run = (k.value(), v.value());
            match prev {
                // The previous run ends where this one starts.
                Some(p) if run.0 <= lowest && empty.len() < MAX_RUNS => empty.push(p),
                Some(_) => break,
                None => {}
            }
            prev = Some(run);
        }
        let write = db_err("write the kind index");
        for (first, kind) in empty {
            self.kind_runs.remove(first).map_err(&write)?;
            self.by_kind.remove((kind, first)).map_err(&write)?;
        }
        Ok(())
    }
}

/// The changed-paths file of a job a watch rule made, if it has one.
fn watch_file(job: &Job) -> Option<PathBuf> {
    if !job.spec.labels.contains_key(WATCH_LABEL) {
        return None;
    }
    match &job.spec.kind {
        JobKind::Exec(e) => e.env.get(CHANGED_PATHS_ENV).map(PathBuf::from),
        _ => None,
    }
}

fn min_some(a: Option<Micros>, b: Micros) -> Option<Micros> {
    Some(a.map_or(b, |a| a.min(b)))
}
