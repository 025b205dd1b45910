//! The single writer: one thread that applies every write, grouping
//! whatever is waiting into one transaction (group commit), and the
//! operations it is sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot, watch};

use super::inbox;
use super::prune::{PruneChunk, PruneStep};
use super::schema::{Counters, META};
use super::tx::Tx;
use super::{Result, StoreError, Submitted, db_err};
use crate::job::{Event, Job, JobId, JobSpec, Micros, Outcome, RunRecord};
use crate::watch::follow::Reason;
use crate::watch::rule::{Rule, RuleId, RuleSpec};

/// How many queued requests one transaction takes at most, so that one huge
/// burst cannot delay its first acknowledgements without bound.
pub(super) const MAX_BATCH_OPS: usize = 4096;

/// Free space below which no commit is made (see [`Writer::check_room`]).
pub(super) const MIN_FREE_BYTES: u64 = 2 << 20;

/// How long a reopen waits for readers to let go of the database.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a commit may write to the file, as a multiple of its records'
/// bytes: pages are written whole, and the B-tree pages above them and
/// the allocator's state are written anew.
const COMMIT_SPACE_FACTOR: u64 = 8;

/// How many job-progress writes (see [`Commit::Grouped`]) must have come
/// within [`BUSY_WINDOW`] before the writer waits for more. One job at a
/// time writes two per run, so an idle daemon never waits; short jobs
/// running back to back on every slot write many more.
pub(super) const LINGER_MIN_OPS: usize = 4;

/// How far back the writer looks to judge whether job progress comes fast
/// enough to wait for (or the linger, if shorter). Fixed rather than the
/// linger itself: with a 10 ms linger, four writes in 10 ms would call one
/// job started every few milliseconds "busy", and hold its events.
pub(super) const BUSY_WINDOW: Duration = Duration::from_millis(2);

/// How the writer groups job progress.
#[derive(Clone, Copy, Debug)]
pub(super) struct Linger {
    /// The longest a write is held.
    pub(super) max: Duration,
    /// See [`BUSY_WINDOW`].
    pub(super) busy_window: Duration,
}

impl Linger {
    pub(super) fn new(max: Duration) -> Linger {
        Linger {
            max,
            busy_window: max.min(BUSY_WINDOW),
        }
    }
}

/// How soon a write must be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// As soon as the writer is free: someone is waiting on it, or the
    /// caller writes one at a time and would wait on every linger.
    Now,
    /// A job's progress, which no client is waiting to have acknowledged:
    /// while the daemon is busy with short jobs, the writer may hold it for
    /// up to the configured linger so that it shares a commit (and its
    /// `fdatasync`s) with others like it. Its events go out when it
    /// commits, so they can come up to that much later.
    Grouped,
}

/// What a trigger answers: the rule as recorded and its jobs, or `None`
/// if the rule is gone.
pub(super) type TriggerAnswer = Option<(Rule, Vec<Submitted>)>;

/// A write, and where its answer goes.
pub(super) enum Op {
    Submit {
        specs: Vec<JobSpec>,
        owner_uid: u32,
        at: Micros,
        reply: oneshot::Sender<Result<Vec<Submitted>>>,
    },
    MarkRunning {
        id: JobId,
        attempt: u32,
        run: RunRecord,
        at: Micros,
        reply: oneshot::Sender<Result<Job>>,
    },
    Finish {
        id: JobId,
        attempt: u32,
        started_at: Option<Micros>,
        outcome: Outcome,
        at: Micros,
        commit: Commit,
        reply: oneshot::Sender<Result<Job>>,
    },
    CancelPending {
        id: JobId,
        at: Micros,
        reply: oneshot::Sender<Result<Job>>,
    },
    SaveCheckpoint {
        id: JobId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
    Promote {
        now: Micros,
        reply: oneshot::Sender<Result<Option<Micros>>>,
    },
    Prune {
        step: PruneStep,
        reply: oneshot::Sender<Result<PruneChunk>>,
    },
    DeferHost {
        host: String,
        run_at: Micros,
        reason: String,
        at: Micros,
        limit: usize,
        reply: oneshot::Sender<Result<usize>>,
    },
    /// A new watch rule; its snapshot comes encoded, as the writer
    /// should not spend its time on what the caller's thread can do.
    AddRule {
        spec: Box<RuleSpec>,
        owner_uid: u32,
        snapshot: Vec<u8>,
        at: Micros,
        reply: oneshot::Sender<Result<Rule>>,
    },
    RemoveRule {
        id: RuleId,
        reply: oneshot::Sender<Result<Option<Rule>>>,
    },
    SetRulePaused {
        id: RuleId,
        paused: bool,
        reply: oneshot::Sender<Result<Option<Rule>>>,
    },
    /// A rule's trigger: its jobs, as [`Op::Submit`] stores them, and
    /// what the rule records of it, in one transaction.
    TriggerRule {
        id: RuleId,
        specs: Vec<JobSpec>,
        owner_uid: u32,
        snapshot: Option<Vec<u8>>,
        reason: Reason,
        paths: u64,
        at: Micros,
        reply: oneshot::Sender<Result<TriggerAnswer>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

impl Op {
    /// Answers the op with `e`, unapplied.
    pub(super) fn fail(self, e: StoreError) {
        match self {
            Op::Submit { reply, .. } => drop(reply.send(Err(e))),
            Op::MarkRunning { reply, .. }
            | Op::Finish { reply, .. }
            | Op::CancelPending { reply, .. } => drop(reply.send(Err(e))),
            Op::SaveCheckpoint { reply, .. } => drop(reply.send(Err(e))),
            Op::Promote { reply, .. } => drop(reply.send(Err(e))),
            Op::Prune { reply, .. } => drop(reply.send(Err(e))),
            Op::DeferHost { reply, .. } => drop(reply.send(Err(e))),
            Op::AddRule { reply, .. } => drop(reply.send(Err(e))),
            Op::RemoveRule { reply, .. } | Op::SetRulePaused { reply, .. } => {
                drop(reply.send(Err(e)))
            }
            Op::TriggerRule { reply, .. } => drop(reply.send(Err(e))),
            // Handled by the writer's loop; never in a batch.
            Op::Close { reply } => drop(reply.send(())),
        }
    }

    /// Whether the writer may hold this op back to group it with others.
    /// Only the runner marks jobs running, so those always may.
    /// Every other op has a caller waiting on it, a watch rule's too: a
    /// trigger submits jobs, and a rule added or paused is answered to a
    /// client. Listed one by one, so that a new op must be judged here.
    pub(super) fn may_wait(&self) -> bool {
        match self {
            Op::MarkRunning { .. } => true,
            Op::Finish { commit, .. } => *commit == Commit::Grouped,
            Op::Submit { .. }
            | Op::CancelPending { .. }
            | Op::SaveCheckpoint { .. }
            | Op::Promote { .. }
            | Op::Prune { .. }
            | Op::DeferHost { .. }
            | Op::AddRule { .. }
            | Op::RemoveRule { .. }
            | Op::SetRulePaused { .. }
            | Op::TriggerRule { .. }
            | Op::Close { .. } => false,
        }
    }
}

/// The single writer: owns the counters and applies batches of operations.
pub(super) struct Writer {
    pub(super) db: Arc<super::DbCell>,
    pub(super) counters: Counters,
    pub(super) retention: u64,
    pub(super) events: broadcast::Sender<Event>,
    /// How many jobs are finished, as committed.
    pub(super) finished: watch::Sender<u64>,
    /// [`Store::open`]'s `commit_linger`.
    pub(super) linger: Duration,
    pub(super) pace: Pace,
    /// Transactions committed since open.
    pub(super) commits: Arc<AtomicU64>,
    /// The state dir, named when its disk is full.
    pub(super) dir: std::path::PathBuf,
    /// A write failed for want of space. redb then refuses every later
    /// write until the database is opened again, which the next batch
    /// does first.
    pub(super) out_of_space: bool,
    /// Set when the writer cannot go on; `run` returns it.
    pub(super) fatal: Option<String>,
    /// For tests: skip the room check, to meet a real full disk.
    #[cfg(test)]
    pub(super) unchecked: Arc<std::sync::atomic::AtomicBool>,
    /// See [`Store::fail_next_commits`].
    #[cfg(test)]
    pub(super) failing: Arc<std::sync::atomic::AtomicU32>,
}

/// Whether grouped writes (see [`Commit::Grouped`]) are coming fast enough
/// to be worth waiting for: at least [`LINGER_MIN_OPS`] within one window
/// ([`BUSY_WINDOW`]).
pub(super) struct Pace {
    window: Duration,
    /// When the latest grouped writes were committed, newest last; at most
    /// [`LINGER_MIN_OPS`] of them, which is all the question needs.
    pub(super) recent: VecDeque<Instant>,
}

impl Pace {
    pub(super) fn new(window: Duration) -> Pace {
        Pace {
            window,
            recent: VecDeque::with_capacity(LINGER_MIN_OPS),
        }
    }

    /// Whether, with `waiting` grouped writes in hand at `now`, enough have
    /// come within the window.
    pub(super) fn busy(&mut self, now: Instant, waiting: usize) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.window)
        {
            self.recent.pop_front();
        }
        self.recent.len() + waiting >= LINGER_MIN_OPS
    }

    /// Records that `count` grouped writes were committed at `at`.
    pub(super) fn note(&mut self, at: Instant, count: usize) {
        for _ in 0..count.min(LINGER_MIN_OPS) {
            if self.recent.len() == LINGER_MIN_OPS {
                self.recent.pop_front();
            }
            self.recent.push_back(at);
        }
    }
}

/// A reply to send once the batch's fate is known.
pub(super) type Pending = Box<dyn FnOnce(Option<StoreError>) + Send>;

pub(super) fn pending<T: Send + 'static>(
    reply: oneshot::Sender<Result<T>>,
    value: Result<T>,
) -> Pending {
    Box::new(move |failed| {
        let _ = reply.send(match failed {
            Some(e) => Err(e),
            None => value,
        });
    })
}

impl Writer {
    /// Applies batches until closed. Returns why, if the writer cannot go
    /// on (its database could not be opened again).
    pub(super) fn run(mut self, rx: inbox::Receiver<Op>) -> Result<(), String> {
        let mut batch = Vec::new();
        while rx.recv(&mut batch, MAX_BATCH_OPS) {
            self.linger(&rx, &mut batch);
            let mut close = None;
            let ops: Vec<Op> = batch
                .drain(..)
                .filter_map(|op| match op {
                    Op::Close { reply } => {
                        close = Some(reply);
                        None
                    }
                    op => Some(op),
                })
                .collect();
            if !ops.is_empty() {
                self.commit_batch(ops);
                if let Some(cause) = self.fatal.take() {
                    return Err(cause);
                }
            }
            if let Some(reply) = close {
                // Release our handle on the database before saying so, so
                // that once the last `Store` is dropped the file is closed
                // and can be opened again at once.
                drop(self);
                drop(rx);
                tracing::debug!("store writer closed");
                let _ = reply.send(());
                return Ok(());
            }
        }
        Ok(())
    }

    /// While short jobs keep every slot busy, each job's "running" and
    /// outcome writes would otherwise get a commit of their own, with two
    /// `fdatasync`s each; that was the store thread's largest cost in P3
    /// (see docs/benchmarks.md). So when `batch` holds only such writes and
    /// at least [`LINGER_MIN_OPS`] came within the last [`BUSY_WINDOW`],
    /// wait up to the linger for more to share the commit. Such writes join
    /// without waking the writer; any other write ends the wait at once, so
    /// nothing a client waits on is held back.
    fn linger(&mut self, rx: &inbox::Receiver<Op>, batch: &mut Vec<Op>) {
        if self.linger.is_zero() || !batch.iter().all(Op::may_wait) {
            return;
        }
        let now = Instant::now();
        if self.pace.busy(now, batch.len()) {
            rx.linger(batch, MAX_BATCH_OPS, now + self.linger);
        }
        let grouped = batch.iter().filter(|op| op.may_wait()).count();
        self.pace.note(Instant::now(), grouped);
    }

    /// Refuses a commit that the disk may not have room for, before redb
    /// writes anything: once a write of redb's fails, redb refuses every
    /// later one until the file is opened again, so running out of space
    /// would take a restart to recover from. Refused here, a Submit is
    /// accepted again as soon as space is freed.
    ///
    /// New jobs must leave [`MIN_FREE_BYTES`] free, so that the jobs
    /// already accepted can still record their progress; other writes a
    /// quarter of it.
    fn check_room(&mut self, written: usize, submits: bool) -> Result<()> {
        #[cfg(test)]
        if self.unchecked.load(Ordering::Relaxed) {
            return Ok(());
        }
        let free = super::free_bytes(&self.dir);
        let reserve = if submits {
            MIN_FREE_BYTES
        } else {
            MIN_FREE_BYTES / 4
        };
        let needed = reserve.saturating_add(COMMIT_SPACE_FACTOR.saturating_mul(written as u64));
        if free >= needed {
            return Ok(());
        }
        Err(self.no_space(free))
    }

    /// The refusal of a write for want of space, with the free space.
    fn no_space(&self, free: u64) -> StoreError {
        StoreError::NoSpace {
            dir: self.dir.clone(),
            free,
        }
    }

    /// After a write failed for want of space, redb refuses every write
    /// until the file is opened again: once there is room, reopen it. The
    /// counters need no reload, as nothing of a failed transaction was
    /// applied to them.
    fn recover_space(&mut self) -> Result<()> {
        let free = super::free_bytes(&self.dir);
        if free < MIN_FREE_BYTES {
            return Err(self.no_space(free));
        }
        match self.db.reopen(REOPEN_WAIT) {
            Ok(()) => {
                tracing::info!(dir = %self.dir.display(), "space was freed; the store writes again");
                self.out_of_space = false;
                Ok(())
            }
            Err(e) => {
                let cause =
                    format!("its database could not be opened again after a failed write: {e}");
                self.fatal = Some(cause.clone());
                Err(StoreError::Failed { cause })
            }
        }
    }

    /// What a failed write means to the caller: a full disk is said to
    /// be one, with the free space, since it is the caller's to fix.
    fn write_error(&mut self, op: &'static str, e: impl Into<redb::Error>) -> StoreError {
        let e: redb::Error = e.into();
        let no_space = match &e {
            redb::Error::Io(io) => {
                matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
            }
            // An earlier failed write latched the file as failed.
            redb::Error::PreviousIo => self.out_of_space,
            _ => false,
        };
        if !no_space {
            return db_err(op)(e);
        }
        self.out_of_space = true;
        self.no_space(super::free_bytes(&self.dir))
    }

    fn commit_batch(&mut self, ops: Vec<Op>) {
        let mut counters = self.counters;
        let mut published = Vec::new();
        let mut replies: Vec<Pending> = Vec::with_capacity(ops.len());
        // Ops not yet applied when the transaction fails are answered with
        // its error too: dropping one would read to its caller as a daemon
        // shutting down.
        let mut ops = ops.into_iter();
        let result = (|| -> Result<()> {
            if self.out_of_space {
                self.recover_space()?;
            }
            let db = self.db.get()?;
            let mut txn = db
                .begin_write()
                .map_err(|e| self.write_error("begin write", e))?;
            // Quick repair keeps the allocator state in each commit, so that
            // a restart after kill -9 or power loss opens at once instead of
            // walking the whole file.
            txn.set_quick_repair(true);
            {
                let mut tx = Tx::open(&txn, &mut counters, &mut published)?;
                for op in ops.by_ref() {
                    replies.push(tx.apply(op)?);
                }
                tx.prune_events(self.retention)?;
                self.check_room(tx.written, tx.submits)?;
            }
            {
                let mut meta = txn.open_table(META).map_err(db_err("open meta"))?;
                counters.save(&mut meta)?;
            }
            // u32::MAX: a writer that panics, as a bug in it would.
            #[cfg(test)]
            if self.failing.load(Ordering::Relaxed) == u32::MAX {
                panic!("panicked on purpose by a test");
            }
            #[cfg(test)]
            if self
                .failing
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                // Dropped uncommitted: nothing in it is written.
                return Err(StoreError::Db {
                    op: "commit",
                    detail: "failed on purpose by a test".into(),
                });
            }
            txn.commit().map_err(|e| self.write_error("commit", e))?;
            self.commits.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.counters = counters;
                let finished = counters.finished();
                self.finished
                    .send_if_modified(|n| std::mem::replace(n, finished) != finished);
                for r in replies {
                    r(None);
                }
                for ev in published {
                    // No subscribers is fine: the events are stored.
                    let _ = self.events.send(ev);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store transaction failed; nothing in it was written");
                for r in replies {
                    r(Some(e.clone()));
                }
                for op in ops {
                    op.fail(e.clone());
                }
            }
        }
    }
}
