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

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle,
    WriteTransaction,
};
use tokio::sync::{broadcast, oneshot};

use crate::job::{Event, Job, JobId, JobSpec, JobState, Micros, StateTag};

mod inbox;

/// The on-disk format version. Bump it, and add a migration, whenever a
/// table's layout or a record's encoding changes.
pub const SCHEMA_VERSION: u64 = 1;

/// The database file's name inside the state dir.
pub const DB_FILE: &str = "quern.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
/// (state tag, id): every job, for List by state and for recovery.
const BY_STATE: TableDefinition<(u8, u64), ()> = TableDefinition::new("by_state");
/// (inverted priority, id): queued jobs in the order they should run.
const READY: TableDefinition<(u32, u64), ()> = TableDefinition::new("ready");
/// (run_at, id): scheduled jobs in the order they become due.
const DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("due");
/// Idempotency key -> id of the unfinished job that holds it.
const IDEM: TableDefinition<&str, u64> = TableDefinition::new("idempotency");
/// seq -> event, the bounded window that `Events` resumes from.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// How many queued requests one transaction takes at most, so that one huge
/// burst cannot delay its first acknowledgements without bound.
const MAX_BATCH_OPS: usize = 4096;

/// How many job-progress writes (see [`Commit::Grouped`]) must have come
/// within [`BUSY_WINDOW`] before the writer waits for more. One job at a
/// time writes two per run, so an idle daemon never waits; short jobs
/// running back to back on every slot write many more.
const LINGER_MIN_OPS: usize = 4;

/// How far back the writer looks to judge whether job progress comes fast
/// enough to wait for (or the linger, if shorter). Fixed rather than the
/// linger itself: with a 10 ms linger, four writes in 10 ms would call one
/// job started every few milliseconds "busy", and hold its events.
const BUSY_WINDOW: Duration = Duration::from_millis(2);

/// How the writer groups job progress.
#[derive(Clone, Copy, Debug)]
struct Linger {
    /// The longest a write is held.
    max: Duration,
    /// See [`BUSY_WINDOW`].
    busy_window: Duration,
}

impl Linger {
    fn new(max: Duration) -> Linger {
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
    /// The file was written by another version of quern.
    #[error(
        "database {path} has schema version {found}, but this quernd understands only version {SCHEMA_VERSION}; run the quernd that wrote it, or move the file aside"
    )]
    UnknownSchema {
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

fn db_err<E: std::fmt::Display>(op: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Db {
        op,
        detail: e.to_string(),
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

/// How an attempt (or a job) ended, as decided by the runner.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Exit code 0.
    Succeeded {
        /// Always 0, kept for the record.
        exit_code: i32,
    },
    /// The attempt failed; `retry_at` is set when attempts remain.
    Failed {
        /// The exit code, if the process exited normally.
        exit_code: Option<i32>,
        /// Why it failed.
        error: String,
        /// When to run the next attempt, if any.
        retry_at: Option<Micros>,
    },
    /// Stopped by a cancel request.
    Cancelled {
        /// The exit code, if the process exited normally.
        exit_code: Option<i32>,
    },
    /// Interrupted by a graceful shutdown: back to queued, and the attempt
    /// is not counted.
    Requeue,
}

/// Counts by state and the event window, as kept in the meta table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// The id the next job gets.
    pub next_id: u64,
    /// The seq the next event gets.
    pub next_seq: u64,
    /// The oldest stored event's seq (== next_seq when none is stored).
    pub first_seq: u64,
    /// Jobs per state, indexed by tag.
    pub counts: [u64; 7],
}

impl Counters {
    /// Jobs in one state.
    pub fn count(&self, tag: StateTag) -> u64 {
        self.counts[tag as usize]
    }

    /// The newest event's seq, 0 when there has been none.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    fn load(meta: &impl ReadableTable<&'static str, u64>) -> Result<Counters> {
        let get = |k: &str| -> Result<Option<u64>> {
            Ok(meta.get(k).map_err(db_err("read meta"))?.map(|v| v.value()))
        };
        let mut c = Counters {
            next_id: get("next_id")?.unwrap_or(1),
            next_seq: get("next_seq")?.unwrap_or(1),
            first_seq: get("first_seq")?.unwrap_or(1),
            counts: [0; 7],
        };
        for tag in StateTag::ALL {
            c.counts[tag as usize] = get(count_key(tag))?.unwrap_or(0);
        }
        Ok(c)
    }

    fn save(&self, meta: &mut Table<&'static str, u64>) -> Result<()> {
        let mut put = |k: &str, v: u64| -> Result<()> {
            meta.insert(k, v).map_err(db_err("write meta"))?;
            Ok(())
        };
        put("next_id", self.next_id)?;
        put("next_seq", self.next_seq)?;
        put("first_seq", self.first_seq)?;
        for tag in StateTag::ALL {
            put(count_key(tag), self.counts[tag as usize])?;
        }
        Ok(())
    }
}

fn count_key(tag: StateTag) -> &'static str {
    match tag {
        StateTag::Queued => "count.queued",
        StateTag::Scheduled => "count.scheduled",
        StateTag::Running => "count.running",
        StateTag::Succeeded => "count.succeeded",
        StateTag::Failed => "count.failed",
        StateTag::Cancelled => "count.cancelled",
    }
}

/// Orders higher priorities first in an ascending index.
fn ready_key(priority: i32, id: JobId) -> (u32, u64) {
    ((i32::MAX as i64 - priority as i64) as u32, id)
}

/// Encodes `v` into `buf`, replacing what it held, keeping its capacity.
fn encode_into<T: serde::Serialize>(buf: &mut Vec<u8>, v: &T) -> Result<()> {
    let mut reused = std::mem::take(buf);
    reused.clear();
    *buf = postcard::to_extend(v, reused).map_err(db_err("encode record"))?;
    Ok(())
}

fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(db_err("decode record"))
}

/// What List asks for.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Any of these states; empty means all.
    pub states: Vec<StateTag>,
    /// Only this kind.
    pub kind: Option<String>,
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

enum Op {
    Submit {
        specs: Vec<JobSpec>,
        at: Micros,
        reply: oneshot::Sender<Result<Vec<Submitted>>>,
    },
    MarkRunning {
        id: JobId,
        attempt: u32,
        state: JobState,
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
    Promote {
        now: Micros,
        reply: oneshot::Sender<Result<Option<Micros>>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

impl Op {
    /// Whether the writer may hold this op back to group it with others.
    /// Only the runner marks jobs running, so those always may.
    fn may_wait(&self) -> bool {
        match self {
            Op::MarkRunning { .. } => true,
            Op::Finish { commit, .. } => *commit == Commit::Grouped,
            _ => false,
        }
    }
}

/// A handle to the store: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    ops: inbox::Sender<Op>,
    events: broadcast::Sender<Event>,
    commits: Arc<AtomicU64>,
    /// For tests: how many of the next transactions fail.
    #[cfg(test)]
    failing: Arc<std::sync::atomic::AtomicU32>,
}

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
        let db = opened.map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.clone() },
            other => StoreError::Corrupt {
                path: path.clone(),
                detail: other.to_string(),
            },
        })?;
        let counters = init_schema(&db, &path)?;
        let db = Arc::new(db);
        let (ops, rx) = inbox::channel();
        let (events, _) = broadcast::channel(LIVE_EVENTS);
        let commits = Arc::new(AtomicU64::new(0));
        #[cfg(test)]
        let failing = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let writer = Writer {
            db: db.clone(),
            counters,
            retention: event_retention,
            events: events.clone(),
            linger: linger.max,
            pace: Pace::new(linger.busy_window),
            commits: commits.clone(),
            #[cfg(test)]
            failing: failing.clone(),
        };
        std::thread::Builder::new()
            .name("quern-store".into())
            .spawn(move || writer.run(rx))
            .map_err(db_err("start writer thread"))?;
        Ok(Store {
            db,
            ops,
            events,
            commits,
            #[cfg(test)]
            failing,
        })
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `op` for the writer; only an op that may not wait wakes a
    /// writer that lingers (see [`Writer::linger`]).
    fn send(&self, op: Op) -> Result<()> {
        let urgent = !op.may_wait();
        self.ops.send(op, urgent).map_err(|_| StoreError::Closed)
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
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(db_err("join reader"))?
    }

    /// Stores the specs in one durable transaction. Returns once they are on
    /// disk.
    pub async fn submit(&self, specs: Vec<JobSpec>, at: Micros) -> Result<Vec<Submitted>> {
        self.call(|reply| Op::Submit { specs, at, reply }).await
    }

    /// Records that attempt `attempt` of a queued job started as `state`
    /// (which must be [`JobState::Running`]). The request is queued for the
    /// writer at once; the returned future only waits for the commit, so the
    /// caller can go on while it happens. Writes are applied in the order
    /// they are queued, so a later [`Store::finish`] lands after it.
    pub fn mark_running(
        &self,
        id: JobId,
        attempt: u32,
        state: JobState,
        at: Micros,
    ) -> impl std::future::Future<Output = Result<Job>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Op::MarkRunning {
            id,
            attempt,
            state,
            at,
            reply,
        });
        async move {
            sent?;
            rx.await.map_err(|_| StoreError::Closed)?
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

    /// Moves every scheduled job due by `now` to queued. Returns when the
    /// next one is due.
    pub async fn promote_due(&self, now: Micros) -> Result<Option<Micros>> {
        self.call(|reply| Op::Promote { now, reply }).await
    }

    /// Commits what is pending and stops the writer; later writes fail with
    /// [`StoreError::Closed`].
    pub async fn close(&self) {
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

    /// Live events, published after each commit.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// One job. A bounded read (one lookup), so it runs on the caller's
    /// thread; see [`Store::read`].
    pub async fn get(&self, id: JobId) -> Result<Job> {
        get_job(&self.db, id)?.ok_or(StoreError::NotFound(id))
    }

    /// The committed counters. One row, read on the caller's thread.
    pub async fn counters(&self) -> Result<Counters> {
        let txn = self.db.begin_read().map_err(db_err("begin read"))?;
        let meta = txn.open_table(META).map_err(db_err("open meta"))?;
        Counters::load(&meta)
    }

    /// A page of jobs; the second value is the cursor for the next page.
    ///
    /// Without a kind or label filter the page is bounded: at most
    /// `limit + 1` index entries per state and as many jobs. That read runs
    /// on the caller's thread. A kind or label filter can scan the whole
    /// table, so those pages are read on a blocking-pool thread.
    pub async fn list(&self, q: ListQuery) -> Result<(Vec<Job>, Option<JobId>)> {
        if q.kind.is_none() && q.labels.is_empty() {
            list_jobs(&self.db, &q)
        } else {
            self.read(move |db| list_jobs(db, &q)).await
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
        self.read(move |db| events_after(db, after, limit, job))
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
        ready_jobs(&self.db, limit, skip)
    }

    /// When the earliest scheduled job is due. One index entry, read on the
    /// caller's thread.
    pub async fn next_due(&self) -> Result<Option<Micros>> {
        let txn = self.db.begin_read().map_err(db_err("begin read"))?;
        let due = txn.open_table(DUE).map_err(db_err("open due"))?;
        Ok(due
            .first()
            .map_err(db_err("read due"))?
            .map(|(k, _)| k.value().0))
    }

    /// Every job recorded as running: after a crash, these were interrupted.
    pub async fn running(&self) -> Result<Vec<Job>> {
        self.read(|db| {
            let txn = db.begin_read().map_err(db_err("begin read"))?;
            let by_state = txn.open_table(BY_STATE).map_err(db_err("open by_state"))?;
            let jobs = txn.open_table(JOBS).map_err(db_err("open jobs"))?;
            let tag = StateTag::Running as u8;
            let mut out = Vec::new();
            for item in by_state
                .range((tag, 0u64)..=(tag, u64::MAX))
                .map_err(db_err("read by_state"))?
            {
                let (k, _) = item.map_err(db_err("read by_state"))?;
                let id = k.value().1;
                if let Some(v) = jobs.get(id).map_err(db_err("read job"))? {
                    out.push(decode::<Job>(v.value())?);
                }
            }
            Ok(out)
        })
        .await
    }
}

/// Checks (or, for a new file, writes) the schema version and loads the
/// counters.
fn init_schema(db: &Database, path: &Path) -> Result<Counters> {
    let txn = db.begin_write().map_err(db_err("begin write"))?;
    let counters = {
        let mut meta = txn.open_table(META).map_err(db_err("open meta"))?;
        let version = meta
            .get("schema_version")
            .map_err(db_err("read meta"))?
            .map(|v| v.value());
        match version {
            Some(SCHEMA_VERSION) => {}
            Some(found) => {
                return Err(StoreError::UnknownSchema {
                    path: path.to_path_buf(),
                    found,
                });
            }
            None => {
                // A file with tables but no version is someone else's redb
                // database: refuse it rather than add our tables to it.
                let foreign = txn
                    .list_tables()
                    .map_err(db_err("list tables"))?
                    .any(|t| t.name() != "meta");
                if foreign {
                    return Err(StoreError::Corrupt {
                        path: path.to_path_buf(),
                        detail: "it has no quern schema version".into(),
                    });
                }
                meta.insert("schema_version", SCHEMA_VERSION)
                    .map_err(db_err("write meta"))?;
            }
        }
        Counters::load(&meta)?
    };
    // Create every table now so that readers never meet a missing one.
    txn.open_table(JOBS).map_err(db_err("create table"))?;
    txn.open_table(BY_STATE).map_err(db_err("create table"))?;
    txn.open_table(READY).map_err(db_err("create table"))?;
    txn.open_table(DUE).map_err(db_err("create table"))?;
    txn.open_table(IDEM).map_err(db_err("create table"))?;
    txn.open_table(EVENTS).map_err(db_err("create table"))?;
    txn.commit().map_err(db_err("commit"))?;
    Ok(counters)
}

fn get_job(db: &Database, id: JobId) -> Result<Option<Job>> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let jobs = txn.open_table(JOBS).map_err(db_err("open jobs"))?;
    match jobs.get(id).map_err(db_err("read job"))? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

fn matches(job: &Job, q: &ListQuery) -> bool {
    if q.kind.as_ref().is_some_and(|k| job.spec.kind.name() != k) {
        return false;
    }
    q.labels
        .iter()
        .all(|(k, v)| job.spec.labels.get(k) == Some(v))
}

fn list_jobs(db: &Database, q: &ListQuery) -> Result<(Vec<Job>, Option<JobId>)> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let jobs = txn.open_table(JOBS).map_err(db_err("open jobs"))?;
    let want = q.limit + 1;
    // Ids strictly beyond the cursor, in the listing's direction.
    let (lo, hi) = match (q.after, q.oldest_first) {
        (None, _) => (0, u64::MAX),
        (Some(a), true) => (a.saturating_add(1), u64::MAX),
        (Some(a), false) => (0, a.saturating_sub(1)),
    };
    let mut found: Vec<Job> = Vec::new();
    if lo > hi || (q.after == Some(0) && !q.oldest_first) {
        return Ok((found, None));
    }
    // Adds `job` if it matches; true once the page is full.
    let keep = |job: Job, found: &mut Vec<Job>| -> bool {
        if matches(&job, q) {
            found.push(job);
        }
        found.len() >= want
    };
    let take = |id: u64, found: &mut Vec<Job>| -> Result<bool> {
        Ok(match jobs.get(id).map_err(db_err("read job"))? {
            Some(v) => keep(decode(v.value())?, found),
            None => found.len() >= want,
        })
    };
    let filtered = q.kind.is_some() || !q.labels.is_empty();
    if q.states.is_empty() {
        // The jobs table itself, decoding each row as the walk passes it.
        let range = jobs.range(lo..=hi).map_err(db_err("read jobs"))?;
        let rows: Box<dyn Iterator<Item = _>> = if q.oldest_first {
            Box::new(range)
        } else {
            Box::new(range.rev())
        };
        for row in rows {
            let (_, v) = row.map_err(db_err("read jobs"))?;
            if keep(decode(v.value())?, &mut found) {
                break;
            }
        }
    } else {
        // Each state's index yields ids in order; take `want` from each and
        // merge, which is enough for one page.
        let by_state = txn.open_table(BY_STATE).map_err(db_err("open by_state"))?;
        let states: std::collections::BTreeSet<StateTag> = q.states.iter().copied().collect();
        let mut merged: Vec<Job> = Vec::new();
        let mut ids: Vec<JobId> = Vec::new();
        for tag in states {
            let t = tag as u8;
            let range = by_state
                .range((t, lo)..=(t, hi))
                .map_err(db_err("read by_state"))?;
            let index = range.map(|item| item.map(|(k, _)| k.value().1));
            let index: Box<dyn Iterator<Item = _>> = if q.oldest_first {
                Box::new(index)
            } else {
                Box::new(index.rev())
            };
            if filtered {
                // Only the job itself says whether it matches.
                let mut part = Vec::new();
                for id in index {
                    if take(id.map_err(db_err("read by_state"))?, &mut part)? {
                        break;
                    }
                }
                merged.extend(part);
            } else {
                // Every indexed id matches: the page is the first `want`.
                for id in index.take(want) {
                    ids.push(id.map_err(db_err("read by_state"))?);
                }
            }
        }
        if !filtered {
            ids.sort_unstable();
            if q.oldest_first {
                ids.truncate(want);
            } else {
                ids.drain(..ids.len().saturating_sub(want));
            }
            merged = fetch_jobs(&jobs, &ids)?;
        }
        if q.oldest_first {
            merged.sort_by_key(|j| j.id);
        } else {
            merged.sort_by_key(|j| std::cmp::Reverse(j.id));
        }
        merged.truncate(want);
        found = merged;
    }
    let next = if found.len() > q.limit {
        found.truncate(q.limit);
        found.last().map(|j| j.id)
    } else {
        None
    };
    Ok((found, next))
}

/// Reads the jobs `ids` (ascending, no duplicates), in that order. Ids that
/// lie close together, as a page of one state's index usually does, are
/// read in one walk over the table, which visits each leaf page once; a
/// lookup per id would descend the tree from the root every time, and with
/// a large store most of those pages come from the OS, not redb's cache.
fn fetch_jobs(jobs: &ReadOnlyTable<u64, &[u8]>, ids: &[JobId]) -> Result<Vec<Job>> {
    let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(ids.len());
    // Dense enough that walking past the others costs less than descents.
    if last - first < 8 * ids.len() as u64 {
        let mut wanted = ids.iter().peekable();
        for row in jobs.range(first..=last).map_err(db_err("read jobs"))? {
            let (k, v) = row.map_err(db_err("read jobs"))?;
            let id = k.value();
            while wanted.next_if(|&&w| w < id).is_some() {}
            if wanted.next_if_eq(&&id).is_some() {
                out.push(decode(v.value())?);
            }
            if wanted.peek().is_none() {
                break;
            }
        }
    } else {
        for &id in ids {
            if let Some(v) = jobs.get(id).map_err(db_err("read job"))? {
                out.push(decode(v.value())?);
            }
        }
    }
    Ok(out)
}

fn events_after(db: &Database, after: u64, limit: usize, job: Option<JobId>) -> Result<EventsPage> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let meta = txn.open_table(META).map_err(db_err("open meta"))?;
    let counters = Counters::load(&meta)?;
    // The window must still hold seq after+1 (unless nothing newer exists).
    if after.saturating_add(1) < counters.first_seq {
        return Ok(EventsPage::Pruned {
            first_retained: counters.first_seq,
        });
    }
    let events = txn.open_table(EVENTS).map_err(db_err("open events"))?;
    let mut out = Vec::new();
    for item in events
        .range(after.saturating_add(1)..)
        .map_err(db_err("read events"))?
    {
        let (_, v) = item.map_err(db_err("read events"))?;
        let ev: Event = decode(v.value())?;
        if job.is_none_or(|j| j == ev.job_id) {
            out.push(ev);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(EventsPage::Events(out))
}

fn ready_jobs(db: &Database, limit: usize, skip: &HashSet<JobId>) -> Result<Vec<Job>> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let ready = txn.open_table(READY).map_err(db_err("open ready"))?;
    let jobs = txn.open_table(JOBS).map_err(db_err("open jobs"))?;
    let mut out = Vec::with_capacity(limit);
    for item in ready.iter().map_err(db_err("read ready"))? {
        if out.len() >= limit {
            break;
        }
        let (k, _) = item.map_err(db_err("read ready"))?;
        let id = k.value().1;
        if skip.contains(&id) {
            continue;
        }
        if let Some(v) = jobs.get(id).map_err(db_err("read job"))? {
            out.push(decode(v.value())?);
        }
    }
    Ok(out)
}

/// The single writer: owns the counters and applies batches of operations.
struct Writer {
    db: Arc<Database>,
    counters: Counters,
    retention: u64,
    events: broadcast::Sender<Event>,
    /// [`Store::open`]'s `commit_linger`.
    linger: Duration,
    pace: Pace,
    /// Transactions committed since open.
    commits: Arc<AtomicU64>,
    /// See [`Store::fail_next_commits`].
    #[cfg(test)]
    failing: Arc<std::sync::atomic::AtomicU32>,
}

/// Whether grouped writes (see [`Commit::Grouped`]) are coming fast enough
/// to be worth waiting for: at least [`LINGER_MIN_OPS`] within one window
/// ([`BUSY_WINDOW`]).
struct Pace {
    window: Duration,
    /// When the latest grouped writes were committed, newest last; at most
    /// [`LINGER_MIN_OPS`] of them, which is all the question needs.
    recent: VecDeque<Instant>,
}

impl Pace {
    fn new(window: Duration) -> Pace {
        Pace {
            window,
            recent: VecDeque::with_capacity(LINGER_MIN_OPS),
        }
    }

    /// Whether, with `waiting` grouped writes in hand at `now`, enough have
    /// come within the window.
    fn busy(&mut self, now: Instant, waiting: usize) -> bool {
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
    fn note(&mut self, at: Instant, count: usize) {
        for _ in 0..count.min(LINGER_MIN_OPS) {
            if self.recent.len() == LINGER_MIN_OPS {
                self.recent.pop_front();
            }
            self.recent.push_back(at);
        }
    }
}

/// A reply to send once the batch's fate is known.
type Pending = Box<dyn FnOnce(Option<StoreError>) + Send>;

fn pending<T: Send + 'static>(reply: oneshot::Sender<Result<T>>, value: Result<T>) -> Pending {
    Box::new(move |failed| {
        let _ = reply.send(match failed {
            Some(e) => Err(e),
            None => value,
        });
    })
}

impl Writer {
    fn run(mut self, rx: inbox::Receiver<Op>) {
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
            }
            if let Some(reply) = close {
                // Release our handle on the database before saying so, so
                // that once the last `Store` is dropped the file is closed
                // and can be opened again at once.
                drop(self);
                drop(rx);
                tracing::debug!("store writer closed");
                let _ = reply.send(());
                return;
            }
        }
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

    fn commit_batch(&mut self, ops: Vec<Op>) {
        let mut counters = self.counters;
        let mut published = Vec::new();
        let mut replies: Vec<Pending> = Vec::with_capacity(ops.len());
        let result = (|| -> Result<()> {
            let mut txn = self.db.begin_write().map_err(db_err("begin write"))?;
            // Quick repair keeps the allocator state in each commit, so that
            // a restart after kill -9 or power loss opens at once instead of
            // walking the whole file.
            txn.set_quick_repair(true);
            {
                let mut tx = Tx::open(&txn, &mut counters, &mut published)?;
                for op in ops {
                    replies.push(tx.apply(op)?);
                }
                tx.prune_events(self.retention)?;
            }
            {
                let mut meta = txn.open_table(META).map_err(db_err("open meta"))?;
                counters.save(&mut meta)?;
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
            txn.commit().map_err(db_err("commit"))?;
            self.commits.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.counters = counters;
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
            }
        }
    }
}

/// The tables of one write transaction, with the index upkeep in one place.
struct Tx<'t> {
    jobs: Table<'t, u64, &'static [u8]>,
    by_state: Table<'t, (u8, u64), ()>,
    ready: Table<'t, (u32, u64), ()>,
    due: Table<'t, (u64, u64), ()>,
    idem: Table<'t, &'static str, u64>,
    events: Table<'t, u64, &'static [u8]>,
    counters: &'t mut Counters,
    published: &'t mut Vec<Event>,
    /// Where records are encoded before they are inserted, reused for the
    /// whole batch: a fresh, growing vector per record cost about 5% of the
    /// writer's time in SubmitBatch.
    scratch: Vec<u8>,
}

impl<'t> Tx<'t> {
    fn open(
        txn: &'t WriteTransaction,
        counters: &'t mut Counters,
        published: &'t mut Vec<Event>,
    ) -> Result<Tx<'t>> {
        let open = db_err("open table");
        Ok(Tx {
            jobs: txn.open_table(JOBS).map_err(&open)?,
            by_state: txn.open_table(BY_STATE).map_err(&open)?,
            ready: txn.open_table(READY).map_err(&open)?,
            due: txn.open_table(DUE).map_err(&open)?,
            idem: txn.open_table(IDEM).map_err(&open)?,
            events: txn.open_table(EVENTS).map_err(&open)?,
            counters,
            published,
            scratch: Vec::new(),
        })
    }

    /// Applies one operation. An `Err` is a storage failure that aborts the
    /// whole batch; a logical refusal (not found, wrong state) is returned
    /// inside the reply and writes nothing.
    fn apply(&mut self, op: Op) -> Result<Pending> {
        Ok(match op {
            Op::Submit { specs, at, reply } => {
                let mut out = Vec::with_capacity(specs.len());
                for spec in specs {
                    out.push(self.submit(spec, at)?);
                }
                pending(reply, Ok(out))
            }
            Op::MarkRunning {
                id,
                attempt,
                state,
                at,
                reply,
            } => {
                let old =
                    match self.load_in(id, &[StateTag::Queued], "only a queued job can start")? {
                        Ok(old) => old,
                        Err(refused) => return Ok(pending(reply, Err(refused))),
                    };
                let mut job = old.clone();
                job.state = state;
                job.attempts = attempt;
                job.started_at = Some(at);
                job.exit_code = None;
                job.error.clear();
                self.save(Some(&old), &job)?;
                self.emit(&job, at, false)?;
                pending(reply, Ok(job))
            }
            Op::Finish {
                id,
                attempt,
                started_at,
                outcome,
                at,
                reply,
                ..
            } => {
                let old = match self.load_in(
                    id,
                    &[StateTag::Queued, StateTag::Running],
                    "only a queued or running job can finish",
                )? {
                    Ok(old) => old,
                    Err(refused) => return Ok(pending(reply, Err(refused))),
                };
                let job = self.finish(old, attempt, started_at, outcome, at)?;
                pending(reply, Ok(job))
            }
            Op::CancelPending { id, at, reply } => {
                let old = match self.load_in(
                    id,
                    &[StateTag::Queued, StateTag::Scheduled],
                    "only queued, scheduled or running jobs can be cancelled",
                )? {
                    Ok(old) => old,
                    Err(refused) => return Ok(pending(reply, Err(refused))),
                };
                let mut job = old.clone();
                job.state = JobState::Cancelled { finished_at: at };
                job.error = "cancelled by request".into();
                job.exit_code = None;
                self.save(Some(&old), &job)?;
                self.release_key(&job)?;
                self.emit(&job, at, true)?;
                pending(reply, Ok(job))
            }
            Op::Promote { now, reply } => {
                let mut due_ids = Vec::new();
                for item in self
                    .due
                    .range(..=(now, u64::MAX))
                    .map_err(db_err("read due"))?
                {
                    let (k, _) = item.map_err(db_err("read due"))?;
                    due_ids.push(k.value().1);
                }
                for id in due_ids {
                    if let Some(old) = self.load(id)? {
                        let mut job = old.clone();
                        job.state = JobState::Queued;
                        self.save(Some(&old), &job)?;
                        self.emit(&job, now, false)?;
                    }
                }
                let next = self
                    .due
                    .first()
                    .map_err(db_err("read due"))?
                    .map(|(k, _)| k.value().0);
                pending(reply, Ok(next))
            }
            Op::Close { .. } => unreachable!("close is handled by the writer loop"),
        })
    }

    fn submit(&mut self, spec: JobSpec, at: Micros) -> Result<Submitted> {
        if let Some(key) = &spec.idempotency_key {
            let existing = self
                .idem
                .get(key.as_str())
                .map_err(db_err("read idempotency"))?;
            if let Some(id) = existing.map(|v| v.value())
                && let Some(job) = self.load(id)?
                && !job.state.tag().is_terminal()
            {
                return Ok(Submitted {
                    job,
                    deduplicated: true,
                });
            }
        }
        let id = self.counters.next_id;
        self.counters.next_id += 1;
        let state = match spec.run_at {
            Some(run_at) if run_at > at => JobState::Scheduled { run_at },
            _ => JobState::Queued,
        };
        let job = Job {
            id,
            spec,
            state,
            queued_at: at,
            attempts: 0,
            started_at: None,
            exit_code: None,
            error: String::new(),
        };
        self.save(None, &job)?;
        if let Some(key) = &job.spec.idempotency_key {
            self.idem
                .insert(key.as_str(), id)
                .map_err(db_err("write idempotency"))?;
        }
        self.emit(&job, at, false)?;
        Ok(Submitted {
            job,
            deduplicated: false,
        })
    }

    fn finish(
        &mut self,
        old: Job,
        attempt: u32,
        started_at: Option<Micros>,
        outcome: Outcome,
        at: Micros,
    ) -> Result<Job> {
        let mut job = old.clone();
        job.attempts = attempt;
        job.started_at = started_at.or(old.started_at);
        let ended = !matches!(outcome, Outcome::Requeue);
        match outcome {
            Outcome::Succeeded { exit_code } => {
                job.state = JobState::Succeeded { finished_at: at };
                job.exit_code = Some(exit_code);
                job.error.clear();
            }
            Outcome::Failed {
                exit_code,
                error,
                retry_at,
            } => {
                job.exit_code = exit_code;
                job.error = error;
                job.state = match retry_at {
                    Some(run_at) => JobState::Scheduled { run_at },
                    None => JobState::Failed { finished_at: at },
                };
            }
            Outcome::Cancelled { exit_code } => {
                job.state = JobState::Cancelled { finished_at: at };
                job.exit_code = exit_code;
                job.error = "cancelled by request".into();
            }
            Outcome::Requeue => {
                job.state = JobState::Queued;
                job.attempts = attempt.saturating_sub(1);
            }
        }
        self.save(Some(&old), &job)?;
        if job.state.tag().is_terminal() {
            self.release_key(&job)?;
        }
        self.emit(&job, at, ended)?;
        Ok(job)
    }

    /// Frees a finished job's idempotency key, so a later submit with the
    /// same key creates a new job.
    fn release_key(&mut self, job: &Job) -> Result<()> {
        if let Some(key) = &job.spec.idempotency_key {
            let holder = self
                .idem
                .get(key.as_str())
                .map_err(db_err("read idempotency"))?
                .map(|v| v.value());
            if holder == Some(job.id) {
                self.idem
                    .remove(key.as_str())
                    .map_err(db_err("write idempotency"))?;
            }
        }
        Ok(())
    }

    /// Loads a job that must be in one of `allowed`. The outer `Err` is a
    /// storage failure; the inner one a refusal (unknown id, or a state that
    /// does not allow the operation, explained by `hint`) that writes nothing.
    fn load_in(
        &self,
        id: JobId,
        allowed: &[StateTag],
        hint: &'static str,
    ) -> Result<Result<Job, StoreError>> {
        Ok(match self.load(id)? {
            Some(job) if allowed.contains(&job.state.tag()) => Ok(job),
            Some(job) => Err(StoreError::WrongState {
                id,
                state: job.state.tag().name(),
                hint,
            }),
            None => Err(StoreError::NotFound(id)),
        })
    }

    fn load(&self, id: JobId) -> Result<Option<Job>> {
        match self.jobs.get(id).map_err(db_err("read job"))? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Writes `new` and moves its index entries from `old`'s state to its own.
    fn save(&mut self, old: Option<&Job>, new: &Job) -> Result<()> {
        let idx = db_err("write index");
        if let Some(old) = old {
            let tag = old.state.tag();
            self.by_state.remove((tag as u8, old.id)).map_err(&idx)?;
            self.counters.counts[tag as usize] -= 1;
            match old.state {
                JobState::Queued => {
                    self.ready
                        .remove(ready_key(old.spec.priority, old.id))
                        .map_err(&idx)?;
                }
                JobState::Scheduled { run_at } => {
                    self.due.remove((run_at, old.id)).map_err(&idx)?;
                }
                _ => {}
            }
        }
        let tag = new.state.tag();
        self.by_state
            .insert((tag as u8, new.id), ())
            .map_err(&idx)?;
        self.counters.counts[tag as usize] += 1;
        match new.state {
            JobState::Queued => {
                self.ready
                    .insert(ready_key(new.spec.priority, new.id), ())
                    .map_err(&idx)?;
            }
            JobState::Scheduled { run_at } => {
                self.due.insert((run_at, new.id), ()).map_err(&idx)?;
            }
            _ => {}
        }
        encode_into(&mut self.scratch, new)?;
        self.jobs
            .insert(new.id, self.scratch.as_slice())
            .map_err(db_err("write job"))?;
        Ok(())
    }

    /// Records the job's new state as an event, in the same transaction as
    /// the change itself, so the event log and the jobs never disagree.
    /// `ended` says the change ends an attempt (or the job), so the event
    /// carries the exit code and error; a start or a promotion carries none.
    fn emit(&mut self, job: &Job, at: Micros, ended: bool) -> Result<()> {
        let seq = self.counters.next_seq;
        self.counters.next_seq += 1;
        let ev = Event {
            seq,
            job_id: job.id,
            state: job.state.tag(),
            at,
            attempt: job.attempts,
            exit_code: job.exit_code.filter(|_| ended),
            error: if ended {
                job.error.clone()
            } else {
                String::new()
            },
        };
        encode_into(&mut self.scratch, &ev)?;
        self.events
            .insert(seq, self.scratch.as_slice())
            .map_err(db_err("write event"))?;
        self.published.push(ev);
        Ok(())
    }

    /// Drops the oldest events beyond the retention window, in one cursor
    /// pass (a per-key remove walked the tree once per event and cost about
    /// 13% of SubmitBatch throughput once the window was full).
    fn prune_events(&mut self, retention: u64) -> Result<()> {
        let c = &mut *self.counters;
        let excess = (c.next_seq - c.first_seq).saturating_sub(retention);
        if excess == 0 {
            return Ok(());
        }
        let new_first = c.first_seq + excess;
        self.events
            .retain_in(c.first_seq..new_first, |_, _| false)
            .map_err(db_err("prune events"))?;
        c.first_seq = new_first;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{ExecSpec, JobKind};

    fn spec(priority: i32) -> JobSpec {
        JobSpec {
            kind: JobKind::Exec(ExecSpec {
                argv: vec!["true".into()],
                cwd: None,
                env: BTreeMap::new(),
            }),
            priority,
            labels: BTreeMap::new(),
            run_at: None,
            timeout: None,
            max_attempts: 1,
            idempotency_key: None,
        }
    }

    #[test]
    fn ready_keys_order_by_priority_then_id() {
        let mut keys = [
            ready_key(0, 5),
            ready_key(20, 9),
            ready_key(-20, 1),
            ready_key(0, 2),
            ready_key(i32::MIN, 3),
            ready_key(i32::MAX, 4),
        ];
        keys.sort();
        let order: Vec<u64> = keys.iter().map(|k| k.1).collect();
        assert_eq!(order, vec![4, 9, 2, 5, 1, 3]);
    }

    #[tokio::test]
    async fn ready_order_survives_reopen_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 100, 1 << 20, Duration::ZERO).unwrap();
        let subs = store
            .submit(vec![spec(-20), spec(0), spec(20), spec(0)], 1)
            .await
            .unwrap();
        let ids: Vec<u64> = subs.iter().map(|s| s.job.id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        store.close().await;
        drop(store);

        let store = Store::open(dir.path(), 100, 1 << 20, Duration::ZERO).unwrap();
        let ready = store.ready(10, &HashSet::new()).unwrap();
        let order: Vec<u64> = ready.iter().map(|j| j.id).collect();
        assert_eq!(order, vec![3, 2, 4, 1]);
        let more = store.submit(vec![spec(0)], 2).await.unwrap();
        assert_eq!(more[0].job.id, 5);
        let c = store.counters().await.unwrap();
        assert_eq!(c.count(StateTag::Queued), 5);
        assert_eq!(c.last_seq(), 5);
    }

    #[tokio::test]
    async fn events_window_is_bounded_and_reports_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3, 1 << 20, Duration::ZERO).unwrap();
        store
            .submit((0..5).map(|_| spec(0)).collect(), 1)
            .await
            .unwrap();
        match store.events_after(0, 100, None).await.unwrap() {
            EventsPage::Pruned { first_retained } => assert_eq!(first_retained, 3),
            other => panic!("expected pruned, got {other:?}"),
        }
        match store.events_after(2, 100, None).await.unwrap() {
            EventsPage::Events(evs) => {
                assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5])
            }
            other => panic!("expected events, got {other:?}"),
        }
    }

    /// Every List query, walked page by page to the end, returns exactly
    /// the jobs a brute-force filter over all of them does, in order, with
    /// no page over its limit. The states interleave: queued ids are dense,
    /// scheduled ones every third, cancelled ones every eleventh (sparse
    /// enough to be read one lookup at a time).
    #[tokio::test]
    async fn list_pages_agree_with_a_brute_force_model() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 10_000, 1 << 20, Duration::ZERO).unwrap();
        let specs = (1..=400u64)
            .map(|n| {
                let mut s = spec(0);
                if n % 3 == 0 {
                    s.run_at = Some(u64::MAX / 2);
                }
                if n % 2 == 1 {
                    s.labels.insert("parity".into(), "odd".into());
                }
                s
            })
            .collect();
        store.submit(specs, 1).await.unwrap();
        for id in (11..=400).step_by(11) {
            store.cancel_pending(id, 2).await.unwrap();
        }
        let mut all = Vec::new();
        for id in 1..=400 {
            all.push(store.get(id).await.unwrap());
        }

        use StateTag::*;
        let odd: BTreeMap<String, String> = [("parity".into(), "odd".into())].into();
        for states in [
            vec![],
            vec![Queued],
            vec![Scheduled],
            vec![Cancelled],
            vec![Queued, Cancelled],
            vec![Succeeded],
        ] {
            for labels in [BTreeMap::new(), odd.clone()] {
                for kind in [None, Some("exec".to_string())] {
                    for oldest_first in [false, true] {
                        for limit in [1, 7, 100, 1000] {
                            let q = ListQuery {
                                states: states.clone(),
                                kind: kind.clone(),
                                labels: labels.clone(),
                                limit,
                                after: None,
                                oldest_first,
                            };
                            let mut want: Vec<JobId> = all
                                .iter()
                                .filter(|j| states.is_empty() || states.contains(&j.state.tag()))
                                .filter(|j| matches(j, &q))
                                .map(|j| j.id)
                                .collect();
                            if !oldest_first {
                                want.reverse();
                            }
                            let mut got = Vec::new();
                            let mut q = q;
                            loop {
                                let (page, next) = store.list(q.clone()).await.unwrap();
                                assert!(page.len() <= limit);
                                got.extend(page.iter().map(|j| j.id));
                                match next {
                                    Some(n) => q.after = Some(n),
                                    None => break,
                                }
                            }
                            assert_eq!(got, want, "{q:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn garbage_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let garbage = vec![0x5au8; 8192];
        std::fs::write(&path, &garbage).unwrap();
        let err = Store::open(dir.path(), 10, 1 << 20, Duration::ZERO)
            .err()
            .expect("must refuse");
        assert!(err.to_string().contains("quern.redb"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), garbage);
    }

    fn running(pid: u32) -> JobState {
        JobState::Running {
            pid,
            pid_start: 1,
            boot_id: "boot".into(),
        }
    }

    /// A long linger still judges "busy" over a short window, so one job
    /// every few milliseconds never has its events held.
    #[test]
    fn the_busy_window_is_short_whatever_the_linger() {
        let long = Linger::new(Duration::from_millis(10));
        assert_eq!(long.max, Duration::from_millis(10));
        assert_eq!(long.busy_window, BUSY_WINDOW);
        let short = Linger::new(Duration::from_micros(500));
        assert_eq!(short.busy_window, Duration::from_micros(500));
    }

    #[test]
    fn pace_is_busy_only_when_enough_grouped_writes_came_within_the_window() {
        let window = Duration::from_millis(2);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut pace = Pace::new(window);
        // One job at a time: a "running" write, then its outcome.
        assert!(!pace.busy(ms(0), 1));
        pace.note(ms(0), 1);
        assert!(!pace.busy(ms(1), 1));
        pace.note(ms(1), 1);
        // Two more in hand, within the window of the two before: busy.
        assert!(pace.busy(ms(2), 2));
        // A few in hand at once is busy by itself.
        assert!(Pace::new(window).busy(t0, LINGER_MIN_OPS));
        // The earlier ones age out of the window.
        assert!(!pace.busy(ms(10), 2));
        // Many at once are remembered as enough, not more.
        pace.note(ms(10), 100);
        assert_eq!(pace.recent.len(), LINGER_MIN_OPS);
        assert!(pace.busy(ms(11), 0));
        assert!(!pace.busy(ms(13), 0));
    }

    /// While grouped writes come fast, the writer holds them for one
    /// commit; any other write ends the wait at once. The linger is far
    /// longer than the test may take, so a wait that nothing ended would
    /// show as a timeout, not as a slow pass.
    #[tokio::test]
    async fn grouped_writes_share_a_commit_and_other_writes_are_not_held() {
        let dir = tempfile::tempdir().unwrap();
        // Judged busy over the whole linger too: the test's writes come
        // slowly, so that a held write shows in the commit count.
        let linger = Linger {
            max: Duration::from_secs(30),
            busy_window: Duration::from_secs(30),
        };
        let prompt = Duration::from_secs(10);
        let store = Store::open_with(dir.path(), 1000, 1 << 20, linger).unwrap();
        let jobs: Vec<u64> = store
            .submit((0..12).map(|_| spec(0)).collect(), 1)
            .await
            .unwrap()
            .iter()
            .map(|s| s.job.id)
            .collect();

        // Fewer than LINGER_MIN_OPS so far: each commits alone.
        let before = store.commits();
        for &id in &jobs[..LINGER_MIN_OPS - 1] {
            let marked = tokio::time::timeout(prompt, store.mark_running(id, 1, running(1), 2));
            marked.await.expect("an idle writer held a write").unwrap();
        }
        assert_eq!(store.commits() - before, LINGER_MIN_OPS as u64 - 1);

        // Now busy: the next grouped writes wait for each other, however
        // slowly they come (each would otherwise be a commit of its own).
        let before = store.commits();
        let mut marks = Vec::new();
        for &id in &jobs[LINGER_MIN_OPS - 1..] {
            marks.push(store.mark_running(id, 1, running(1), 3));
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(store.commits(), before, "a grouped write was not held");
        // An outcome written with Commit::Now is not held, and ends the
        // wait for those before it.
        let done = tokio::time::timeout(
            prompt,
            store.finish(
                jobs[0],
                1,
                Some(2),
                Outcome::Succeeded { exit_code: 0 },
                4,
                Commit::Now,
            ),
        )
        .await
        .expect("a Commit::Now write was held")
        .unwrap();
        assert!(matches!(done.state, JobState::Succeeded { .. }), "{done:?}");
        for m in marks {
            let job = tokio::time::timeout(prompt, m).await.unwrap().unwrap();
            assert!(matches!(job.state, JobState::Running { .. }), "{job:?}");
        }
        assert_eq!(store.commits() - before, 1, "the held writes were split");

        // A client's write ends the wait too.
        let before = store.commits();
        let (grouped, submitted) = tokio::time::timeout(prompt, async {
            // Sent first, so that it is the write the writer holds.
            let grouped = tokio::spawn({
                let store = store.clone();
                let id = jobs[1];
                async move {
                    let outcome = Outcome::Succeeded { exit_code: 0 };
                    store
                        .finish(id, 1, Some(2), outcome, 5, Commit::Grouped)
                        .await
                }
            });
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(5));
            let submitted = store.submit(vec![spec(0)], 6).await;
            (grouped.await.unwrap(), submitted)
        })
        .await
        .expect("a Submit was held behind a grouped write");
        grouped.unwrap();
        submitted.unwrap();
        assert_eq!(store.commits() - before, 1);
    }
}
