//! The durable job store, and the only module that touches redb.
//!
//! All writes go through one writer thread that batches whatever requests are
//! waiting into a single transaction (group commit): one fsync acknowledges
//! many submits, so throughput grows with the number of concurrent clients
//! instead of being capped by the disk's fsync rate. Reads use redb's MVCC
//! read transactions from any thread and never wait for the writer.
//!
//! Jobs live on disk, not in memory: the scheduler finds ready jobs through
//! the `ready` index, ordered by (priority desc, id asc), and delayed ones
//! through the `due` index, ordered by time.
//!
//! The parts: `schema` (tables, version, opening), `migrate` (older
//! versions), `record` (the on-disk encoding), `read` (reads), `writer`
//! (the writer thread and group commit), `tx` (what one write does), and
//! what one write does to jobs being pruned (`prune`) and to watch rules
//! (`rules`).

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redb::Database;
use tokio::sync::{broadcast, oneshot, watch};

use crate::job::{Event, Job, JobId, JobSpec, KindTag, Micros, Outcome, RunRecord, StateTag};
use crate::watch::follow::Reason;
use crate::watch::rule::{Rule, RuleId, RuleSpec};
use crate::watch::snapshot::Snapshot;

mod inbox;
mod migrate;
mod prune;
mod read;
mod record;
mod rules;
mod schema;
mod tx;
mod writer;

pub use prune::{MAX_PRUNED, PruneChunk, PruneStep};
pub use schema::{Counters, DB_FILE, SCHEMA_VERSION};
pub use writer::Commit;
use writer::{Linger, Op, Pace, Writer};

/// Errors from the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No job has this id.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The job is in a state that does not allow the operation.
    #[error("job {id} is {state}; {hint}")]
    WrongState {
        /// The job.
        id: JobId,
        /// Its state.
        state: &'static str,
        /// What the caller can do instead.
        hint: &'static str,
    },
    /// The file is not a quern database, or is damaged.
    #[error(
        "database {path} is corrupt or not a quern database ({detail}); move it aside to start empty, quernd will not overwrite it"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb or the check said.
        detail: String,
    },
    /// The file could not be opened for a reason of the file system, such
    /// as its permissions or a failing disk: not a judgement of its
    /// contents.
    #[error(
        "cannot open database {path}: {detail}; check the file's permissions, its owner and the disk (nothing in it was changed)"
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        detail: String,
    },
    /// The disk holding the state dir is full: a write was not made.
    #[error(
        "no space left on the disk of {dir} ({free} bytes free): nothing was written; free some space on that disk"
    )]
    NoSpace {
        /// The state dir.
        dir: PathBuf,
        /// Bytes free for the daemon's user, as statvfs says.
        free: u64,
    },
    /// The file was written by a newer quernd.
    #[error(
        "database {path} has schema version {found}, written by a newer quernd; this quernd understands versions up to {SCHEMA_VERSION}: upgrade quernd to open it (nothing in the file was changed)"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
    /// Another process has the database open.
    #[error("database {path} is in use by another quernd; stop it or pass a different --state-dir")]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// A value is over its limit.
    #[error("the {what} is {size} bytes, over the limit of {max}")]
    TooLarge {
        /// What it is.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The store's writer stopped without being closed: no write can be
    /// made until quernd is restarted.
    #[error(
        "the store failed ({cause}); quernd is exiting so that its service manager restarts it"
    )]
    Failed {
        /// What stopped the writer.
        cause: String,
    },
    /// The store is shutting down and takes no more writes.
    #[error("the store is closed because quernd is shutting down")]
    Closed,
    /// redb failed: I/O or internal error.
    #[error("database {op} failed: {detail}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// redb's message.
        detail: String,
    },
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// The refusal of a transition of job `id`.
    fn refused(id: JobId, r: crate::job::Refused) -> StoreError {
        StoreError::WrongState {
            id,
            state: r.state.name(),
            hint: r.hint,
        }
    }
}

fn db_err<E: std::fmt::Display>(op: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Db {
        op,
        detail: e.to_string(),
    }
}

/// Why the database would not open: in use, unreadable (permissions, I/O),
/// or damaged. Only the last is advice to move the file aside; telling
/// that to someone whose healthy file is merely unreadable could cost them
/// their queue.
fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
            path: path.to_path_buf(),
        },
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => StoreError::Unreadable {
            path: path.to_path_buf(),
            detail: io.to_string(),
        },
        other => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

/// Bytes free for an unprivileged user on the file system of `dir`.
// The field types of statvfs differ between platforms.
#[allow(clippy::useless_conversion)]
pub(crate) fn free_bytes(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir).map_or(0, |s| {
        u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size()))
    })
}

/// The open database, shared by the writer and every reader. The writer
/// opens the file again after a write failed for want of space: redb
/// refuses every write after one fails, until it is reopened. Readers
/// take a reference for one read; a reopen holds the lock while it waits
/// for theirs to go, so they never see the file closed.
pub(super) struct DbCell {
    db: std::sync::RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    cache_bytes: usize,
}

impl DbCell {
    /// The database, for one read or one transaction.
    pub(super) fn get(&self) -> Result<Arc<Database>> {
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Failed {
                cause: "its database could not be opened again after a failed write".into(),
            })
    }

    /// Closes the file and opens it again, once no reader holds it (at
    /// most `wait`). On failure nothing is left open.
    pub(super) fn reopen(&self, wait: Duration) -> Result<()> {
        let mut slot = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let deadline = std::time::Instant::now() + wait;
        while slot.as_ref().is_some_and(|db| Arc::strong_count(db) > 1) {
            if std::time::Instant::now() > deadline {
                return Err(StoreError::Db {
                    op: "reopen",
                    detail: "readers still hold the database".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // The file lock is released only when the old handle is dropped.
        *slot = None;
        let mut builder = Database::builder();
        builder.set_cache_size(self.cache_bytes);
        let db = builder
            .open(&self.path)
            .map_err(|e| open_error(&self.path, e))?;
        *slot = Some(Arc::new(db));
        Ok(())
    }
}

/// The result of storing one submitted spec.
#[derive(Clone, Debug)]
pub struct Submitted {
    /// The stored job (the existing one, when deduplicated).
    pub job: Job,
    /// True when the idempotency key matched an unfinished job.
    pub deduplicated: bool,
}

/// One trigger of a watch rule, to record with the jobs it makes (see
/// [`Store::trigger_rule`]).
#[derive(Clone, Debug)]
pub struct RuleTrigger {
    /// The rule.
    pub id: RuleId,
    /// The jobs to submit, made from its template; none if it made none.
    pub specs: Vec<JobSpec>,
    /// Who the jobs belong to: the rule's owner.
    pub owner_uid: u32,
    /// The snapshot that includes the trigger's changes, to replace the
    /// rule's; `None` keeps the stored one.
    pub snapshot: Option<Snapshot>,
    pub reason: Reason,
    /// How many paths changed.
    pub paths: u64,
    /// When its changes settled.
    pub at: Micros,
}

/// What List asks for.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Any of these states; empty means all.
    pub states: Vec<StateTag>,
    /// Only this kind.
    pub kind: Option<KindTag>,
    /// All of these labels.
    pub labels: BTreeMap<String, String>,
    /// At most this many.
    pub limit: usize,
    /// Continue after this id (exclusive), in the listing's direction.
    pub after: Option<JobId>,
    /// Ascending ids instead of descending.
    pub oldest_first: bool,
}

/// Stored events after a point, and whether the window still reaches it.
#[derive(Debug)]
pub enum EventsPage {
    /// The events, oldest first.
    Events(Vec<Event>),
    /// Events after the requested seq were already pruned; the oldest
    /// retained one is given.
    Pruned {
        /// The oldest retained seq.
        first_retained: u64,
    },
}

/// A handle to the store: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Store {
    db: Arc<DbCell>,
    ops: inbox::Sender<Op>,
    events: broadcast::Sender<Event>,
    finished: watch::Receiver<u64>,
    fate: Arc<Fate>,
    commits: Arc<AtomicU64>,
    /// For tests: how many of the next transactions fail.
    #[cfg(test)]
    failing: Arc<std::sync::atomic::AtomicU32>,
    /// For tests: how many of the next reads of ready jobs fail.
    #[cfg(test)]
    failing_reads: Arc<std::sync::atomic::AtomicU32>,
    /// For tests: the writer skips its room check.
    #[cfg(test)]
    unchecked: Arc<std::sync::atomic::AtomicBool>,
}

/// Whether the writer is gone, and why: closed by [`Store::close`], or
/// failed. What a caller whose request the writer dropped needs, and no
/// more, so that a pending write holds this rather than the whole store.
#[derive(Default)]
struct Fate {
    /// Set by [`Store::close`], so that a writer gone after it is closed,
    /// not failed.
    closing: std::sync::atomic::AtomicBool,
    /// Why the writer stopped, if it stopped without being closed.
    failure: std::sync::OnceLock<String>,
    /// Fires once `failure` is set.
    failed: tokio_util::sync::CancellationToken,
}

impl Fate {
    /// Why the writer dropped a request: closed, or failed. A failed
    /// writer drops its requests while it unwinds, a moment before it
    /// records why, hence the short wait for the cause.
    async fn gone(&self) -> StoreError {
        if self.closing.load(Ordering::Acquire) {
            return StoreError::Closed;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.failed.cancelled()).await;
        self.lost()
    }

    /// [`Fate::gone`] for a caller that cannot wait.
    fn lost(&self) -> StoreError {
        match self.failure.get() {
            Some(cause) => StoreError::Failed {
                cause: cause.clone(),
            },
            None if self.closing.load(Ordering::Acquire) => StoreError::Closed,
            None => StoreError::Failed {
                cause: "its writer thread stopped".into(),
            },
        }
    }
}

/// For tests: the state dirs whose store's writer panics at its first
/// commit, for tests that run the whole daemon and cannot reach its store.
#[cfg(test)]
pub(crate) static PANIC_AT_FIRST_COMMIT: std::sync::Mutex<Vec<PathBuf>> =
    std::sync::Mutex::new(Vec::new());

/// Capacity of the live event channel. A subscriber that falls further
/// behind than this catches up from the stored window instead.
const LIVE_EVENTS: usize = 16 * 1024;

impl Store {
    /// Opens (or creates) the database in `state_dir` and starts the writer
    /// thread. Refuses a corrupt file or an unknown schema version rather
    /// than starting empty.
    ///
    /// `commit_linger` is how long the writer may hold a job's progress
    /// while it is busy (see [`Commit::Grouped`]); zero never holds it.
    pub fn open(
        state_dir: &Path,
        event_retention: u64,
        cache_bytes: usize,
        commit_linger: Duration,
    ) -> Result<Store> {
        Store::open_with(
            state_dir,
            event_retention,
            cache_bytes,
            Linger::new(commit_linger),
        )
    }

    fn open_with(
        state_dir: &Path,
        event_retention: u64,
        cache_bytes: usize,
        linger: Linger,
    ) -> Result<Store> {
        let path = state_dir.join(DB_FILE);
        // An empty file is one we created and then died before redb wrote
        // its header: nothing to lose, so initialise it like a new one.
        let fresh = std::fs::metadata(&path).map_or(true, |m| m.len() == 0);
        if fresh {
            // Created here, mode 0600, so the queue (argv, env, labels) is
            // private to the daemon's user whatever the umask; redb then
            // initialises the empty file.
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(db_err("create database file"))?;
        }
        let mut builder = Database::builder();
        // redb's default page cache is 1 GiB, which would let the daemon's
        // memory grow with the queue; the OS page cache backs this one.
        builder.set_cache_size(cache_bytes);
        let opened = if fresh {
            builder.create(&path)
        } else {
            builder.open(&path)
        };
        let db = opened.map_err(|e| open_error(&path, e))?;
        // Jobs from before owners were recorded were all submitted by the
        // daemon's own user (see `migrate`).
        let counters = schema::open(&db, &path, nix::unistd::getuid().as_raw())?;
        let db = Arc::new(DbCell {
            db: std::sync::RwLock::new(Some(Arc::new(db))),
            path: path.clone(),
            cache_bytes,
        });
        let (ops, rx) = inbox::channel();
        let (events, _) = broadcast::channel(LIVE_EVENTS);
        let commits = Arc::new(AtomicU64::new(0));
        let (finished_tx, finished) = watch::channel(counters.finished());
        #[cfg(test)]
        let failing = Arc::new(std::sync::atomic::AtomicU32::new(0));
        #[cfg(test)]
        let unchecked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        #[cfg(test)]
        if PANIC_AT_FIRST_COMMIT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&state_dir.to_path_buf())
        {
            failing.store(u32::MAX, Ordering::Relaxed);
        }
        let writer = Writer {
            db: db.clone(),
            counters,
            retention: event_retention,
            events: events.clone(),
            finished: finished_tx,
            linger: linger.max,
            pace: Pace::new(linger.busy_window),
            commits: commits.clone(),
            dir: state_dir.to_path_buf(),
            out_of_space: false,
            fatal: None,
            #[cfg(test)]
            unchecked: unchecked.clone(),
            #[cfg(test)]
            failing: failing.clone(),
        };
        let fate = Arc::new(Fate::default());
        let writer_fate = fate.clone();
        std::thread::Builder::new()
            .name("quern-store".into())
            .spawn(move || {
                // Without its writer the store takes no write: say so,
                // rather than let every caller think quernd is stopping.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.run(rx)));
                let why = match run {
                    Ok(Ok(())) => None,
                    Ok(Err(cause)) => Some(cause),
                    Err(panic) => Some(format!(
                        "its writer thread panicked: {}",
                        crate::platform::panic_message(&*panic)
                    )),
                };
                if let Some(why) = why {
                    tracing::error!(cause = %why, "the store failed; quernd stops");
                    let _ = writer_fate.failure.set(why);
                    writer_fate.failed.cancel();
                }
            })
            .map_err(db_err("start writer thread"))?;
        Ok(Store {
            db,
            ops,
            events,
            finished,
            fate,
            commits,
            #[cfg(test)]
            failing,
            #[cfg(test)]
            failing_reads: Arc::default(),
            #[cfg(test)]
            unchecked,
        })
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err(self.fate.gone().await),
        }
    }

    /// Fires if the writer stops without being closed; then every write
    /// fails with [`StoreError::Failed`].
    pub fn failed(&self) -> tokio_util::sync::CancellationToken {
        self.fate.failed.clone()
    }

    /// Why the writer stopped, once [`Store::failed`] has fired.
    pub fn failure(&self) -> Option<StoreError> {
        self.fate.failure.get().map(|cause| StoreError::Failed {
            cause: cause.clone(),
        })
    }

    /// Queues `op` for the writer; only an op that may not wait wakes a
    /// writer that lingers (see [`Writer::linger`]).
    fn send(&self, op: Op) -> Result<()> {
        let urgent = !op.may_wait();
        self.ops.send(op, urgent).map_err(|_| self.fate.lost())
    }

    /// Runs a read that may be long (a scan) on a blocking-pool thread.
    ///
    /// Reads with a small bound (a lookup, one page of an index) run on the
    /// caller's thread instead. On this project's 2-core test VM, waking a
    /// thread on the other core costs ~0.1 ms of CPU, more than such a read:
    /// quern-bench p4's List of 100 jobs used 0.57-0.65 ms of daemon CPU per
    /// call with the hop and 0.43-0.48 ms without. The bound is what keeps a
    /// runtime thread from stalling: a page from a cold cache is at most a
    /// few hundred page reads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.get()?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(db_err("join reader"))?
    }

    /// Stores the specs in one durable transaction. Returns once they are on
    /// disk.
    /// `owner_uid` is the user who submitted them.
    pub async fn submit(
        &self,
        specs: Vec<JobSpec>,
        owner_uid: u32,
        at: Micros,
    ) -> Result<Vec<Submitted>> {
        self.call(|reply| Op::Submit {
            specs,
            owner_uid,
            at,
            reply,
        })
        .await
    }

    /// Records that attempt `attempt` of a queued job started, as `run`. The request is queued for the
    /// writer at once; the returned future only waits for the commit, so the
    /// caller can go on while it happens. Writes are applied in the order
    /// they are queued, so a later [`Store::finish`] lands after it.
    pub fn mark_running(
        &self,
        id: JobId,
        attempt: u32,
        run: RunRecord,
        at: Micros,
    ) -> impl std::future::Future<Output = Result<Job>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Op::MarkRunning {
            id,
            attempt,
            run,
            at,
            reply,
        });
        let fate = self.fate.clone();
        async move {
            sent?;
            match rx.await {
                Ok(answer) => answer,
                Err(_) => Err(fate.gone().await),
            }
        }
    }

    /// Records how an attempt ended. The runner passes
    /// [`Commit::Grouped`], or [`Commit::Now`] for an outcome a Cancel call
    /// waits for; a caller that records one job after another passes
    /// [`Commit::Now`].
    pub async fn finish(
        &self,
        id: JobId,
        attempt: u32,
        started_at: Option<Micros>,
        outcome: Outcome,
        at: Micros,
        commit: Commit,
    ) -> Result<Job> {
        self.call(|reply| Op::Finish {
            id,
            attempt,
            started_at,
            outcome,
            at,
            commit,
            reply,
        })
        .await
    }

    /// Cancels a job that is queued or scheduled.
    pub async fn cancel_pending(&self, id: JobId, at: Micros) -> Result<Job> {
        self.call(|reply| Op::CancelPending { id, at, reply }).await
    }

    /// Saves job `id`'s checkpoint durably, replacing the previous one.
    /// A finished job's is refused as not found: nothing would read it.
    pub async fn save_checkpoint(&self, id: JobId, bytes: Vec<u8>) -> Result<()> {
        self.call(|reply| Op::SaveCheckpoint { id, bytes, reply })
            .await
    }

    /// Job `id`'s checkpoint, if one was saved. One lookup, read on the
    /// caller's thread.
    pub async fn checkpoint(&self, id: JobId) -> Result<Option<Vec<u8>>> {
        read::checkpoint(&*self.db.get()?, id)
    }

    /// Moves every scheduled job due by `now` to queued. Returns when the
    /// next one is due.
    pub async fn promote_due(&self, now: Micros) -> Result<Option<Micros>> {
        self.call(|reply| Op::Promote { now, reply }).await
    }

    /// Moves up to `limit` queued jobs of `host` (in run order) to
    /// scheduled until `run_at`, saying why in their `wait_reason`, as of
    /// `at`: a host whose circuit breaker opened. Returns how many moved;
    /// fewer than `limit` means none is left.
    pub async fn defer_host(
        &self,
        host: String,
        run_at: Micros,
        reason: String,
        at: Micros,
        limit: usize,
    ) -> Result<usize> {
        self.call(|reply| Op::DeferHost {
            host,
            run_at,
            reason,
            at,
            limit,
            reply,
        })
        .await
    }

    /// Applies one chunk of a prune pass: removes (or, in a dry run,
    /// counts) finished jobs and old events, within a bounded amount of
    /// work. The chunk says how to go on. Logs are not touched: the
    /// caller deletes those of the jobs removed.
    pub async fn prune(&self, step: PruneStep) -> Result<PruneChunk> {
        self.call(|reply| Op::Prune { step, reply }).await
    }

    /// Stores a new watch rule with the next id (never one used before),
    /// not paused and with nothing done yet, and `snapshot`, the tree it
    /// starts from, in one durable transaction.
    pub async fn add_rule(
        &self,
        spec: RuleSpec,
        owner_uid: u32,
        snapshot: &Snapshot,
        at: Micros,
    ) -> Result<Rule> {
        // Encoded here, on the caller's thread, not on the writer's, which
        // every write waits for.
        let snapshot = snapshot.encode();
        self.call(|reply| Op::AddRule {
            spec: Box::new(spec),
            owner_uid,
            snapshot,
            at,
            reply,
        })
        .await
    }

    /// Deletes watch rule `id` and its snapshot. Returns the rule as it
    /// was, or `None` if there was no such rule. Its jobs stay.
    pub async fn remove_rule(&self, id: RuleId) -> Result<Option<Rule>> {
        self.call(|reply| Op::RemoveRule { id, reply }).await
    }

    /// Pauses or resumes watch rule `id`. Returns the rule as it now is,
    /// or `None` if there is no such rule.
    pub async fn set_rule_paused(&self, id: RuleId, paused: bool) -> Result<Option<Rule>> {
        self.call(|reply| Op::SetRulePaused { id, paused, reply })
            .await
    }

    /// Records a trigger of a watch rule in one durable transaction: its
    /// jobs are submitted as [`Store::submit`] does (ids, indexes,
    /// events, idempotency keys), its snapshot replaces the rule's if
    /// given, and the rule counts the new jobs and keeps the trigger and
    /// their ids. A trigger with no specs still records itself and its
    /// snapshot. `None`, with nothing written and no job submitted, if
    /// the rule no longer exists.
    pub async fn trigger_rule(&self, t: RuleTrigger) -> Result<Option<(Rule, Vec<Submitted>)>> {
        let snapshot = t.snapshot.as_ref().map(Snapshot::encode);
        self.call(|reply| Op::TriggerRule {
            id: t.id,
            specs: t.specs,
            owner_uid: t.owner_uid,
            snapshot,
            reason: t.reason,
            paths: t.paths,
            at: t.at,
            reply,
        })
        .await
    }

    /// Every watch rule, in id order. There are few, but each read
    /// decodes them all, so it runs on a blocking-pool thread.
    pub async fn rules(&self) -> Result<Vec<Rule>> {
        self.read(read::rules).await
    }

    /// Watch rule `id`, if it exists. One lookup, read on the caller's
    /// thread.
    pub async fn rule(&self, id: RuleId) -> Result<Option<Rule>> {
        read::rule(&*self.db.get()?, id)
    }

    /// The snapshot watch rule `id` last acted on, if the rule exists.
    /// It may hold a whole tree, so it is read and decoded on a
    /// blocking-pool thread.
    pub async fn rule_snapshot(&self, id: RuleId) -> Result<Option<Snapshot>> {
        self.read(move |db| {
            let Some(bytes) = read::rule_snapshot(db, id)? else {
                return Ok(None);
            };
            Snapshot::decode(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Db {
                    op: "decode watch snapshot",
                    detail: format!(
                        "the snapshot of watch rule {id} is damaged ({e}); remove the rule and add it again"
                    ),
                })
        })
        .await
    }

    /// How many jobs are finished, as committed, updated after every
    /// commit that changes it.
    pub fn finished_count(&self) -> watch::Receiver<u64> {
        self.finished.clone()
    }

    /// Commits what is pending and stops the writer; later writes fail with
    /// [`StoreError::Closed`].
    pub async fn close(&self) {
        self.fate.closing.store(true, Ordering::Release);
        let (reply, rx) = oneshot::channel();
        if self.send(Op::Close { reply }).is_ok() {
            let _ = rx.await;
        }
    }

    /// How many transactions the writer has committed since open: for
    /// tests and diagnostics of how writes are grouped.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// For tests: the next `n` transactions fail as a full or failing disk
    /// would make them, writing nothing.
    #[cfg(test)]
    pub(crate) fn fail_next_commits(&self, n: u32) {
        self.failing.store(n, Ordering::Relaxed);
    }

    /// For tests: the next `n` reads of ready jobs fail, as a failing disk
    /// would make them.
    #[cfg(test)]
    pub(crate) fn fail_next_ready_reads(&self, n: u32) {
        self.failing_reads.store(n, Ordering::Relaxed);
    }

    /// For tests: the writer commits without checking for room first, so
    /// that a full disk fails redb's own write.
    #[cfg(test)]
    pub(crate) fn skip_room_check(&self) {
        self.unchecked.store(true, Ordering::Relaxed);
    }

    /// For tests: how many of the reads set to fail are still to come.
    #[cfg(test)]
    pub(crate) fn ready_reads_to_fail(&self) -> u32 {
        self.failing_reads.load(Ordering::Relaxed)
    }

    /// Live events, published after each commit.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// One job. A bounded read (one lookup), so it runs on the caller's
    /// thread; see [`Store::read`].
    pub async fn get(&self, id: JobId) -> Result<Job> {
        read::get_job(&*self.db.get()?, id)?.ok_or(StoreError::NotFound(id))
    }

    /// The committed counters. One row, read on the caller's thread.
    pub async fn counters(&self) -> Result<Counters> {
        read::counters(&*self.db.get()?)
    }

    /// A page of jobs; the second value is the cursor for the next page.
    ///
    /// A page filtered by state or by kind is bounded: at most `limit + 1`
    /// index entries per state (or of the kind) and as many jobs, so it is
    /// read on the caller's thread. A label filter, or a kind and a state
    /// together, can walk far past jobs that do not match, so those pages
    /// are read on a blocking-pool thread (see [`read::list_is_bounded`]).
    pub async fn list(&self, q: ListQuery) -> Result<(Vec<Job>, Option<JobId>)> {
        if read::list_is_bounded(&q) {
            read::list_jobs(&*self.db.get()?, &q)
        } else {
            self.read(move |db| read::list_jobs(db, &q)).await
        }
    }

    /// Stored events with seq > `after`, at most `limit`, optionally of one
    /// job.
    pub async fn events_after(
        &self,
        after: u64,
        limit: usize,
        job: Option<JobId>,
    ) -> Result<EventsPage> {
        self.read(move |db| read::events_after(db, after, limit, job))
            .await
    }

    /// Up to `limit` queued jobs in run order, skipping ids in `skip`.
    ///
    /// Runs on the caller's thread, like the other bounded reads: it
    /// reads at most `limit + skip.len()` index entries and as many jobs,
    /// almost always from the cache, and the scheduler calls it for every
    /// free slot. The hop to a blocking thread and back cost more than the
    /// read (quern-bench p3: 0.72-0.78 ms of daemon CPU per job with the
    /// hop, 0.66-0.68 without).
    pub fn ready(&self, limit: usize, skip: &HashSet<JobId>) -> Result<Vec<Job>> {
        #[cfg(test)]
        if self
            .failing_reads
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Db {
                op: "read ready jobs",
                detail: "failed on purpose by a test".into(),
            });
        }
        read::ready_jobs(&*self.db.get()?, limit, skip)
    }

    /// The first queued fetch job of every host with queued fetch jobs,
    /// except the hosts in `passed_over` and the jobs in `skip`: one read
    /// transaction, one index seek per host, however many jobs each has.
    /// Read on the caller's thread, like [`Store::ready`].
    pub fn host_heads(
        &self,
        passed_over: &HashSet<String>,
        skip: &HashSet<JobId>,
    ) -> Result<Vec<(String, Job)>> {
        read::host_heads(&*self.db.get()?, passed_over, skip)
    }

    /// When the earliest scheduled job is due. One index entry, read on the
    /// caller's thread.
    pub async fn next_due(&self) -> Result<Option<Micros>> {
        read::next_due(&*self.db.get()?)
    }

    /// Every job recorded as running: after a crash, these were interrupted.
    pub async fn running(&self) -> Result<Vec<Job>> {
        self.read(read::running_jobs).await
    }
}

#[cfg(test)]
mod tests;
