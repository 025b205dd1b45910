//! The store's layout: its tables, the schema version, the counters kept
//! in `meta`, and opening a file: create, check the version, or migrate.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle};

use super::{Result, StoreError, db_err, migrate};
use crate::job::{JobId, KindTag, StateTag};

/// The on-disk format version. Bump it, and add a step to `migrate`,
/// whenever a table's layout or a record changes (see `record.rs` for why
/// even an added field bumps it).
///
/// - 1: records encoded positionally with postcard.
/// - 2: records are protobuf messages (`record.rs`); jobs have an owner;
///   the kind index (`kind_runs`, `by_kind`); the `checkpoints` table.
/// - 3: fetch jobs; a job's `result` and `wait_reason` (fields added to
///   the records); the `host_ready` table, which starts empty as no store
///   before had fetch jobs, so the step only records the version.
/// - 4: directory-watch rules: the `watch_rules` and `watch_snapshots`
///   tables and the `next_watch_id` counter, which start empty (and 1),
///   so the step only records the version.
/// - 5: git jobs: the git arm of the spec and result records (JSON of
///   `job/git.rs`'s types); no store before had one, so the step only
///   records the version.
pub const SCHEMA_VERSION: u64 = 5;

/// The database file's name inside the state dir.
pub const DB_FILE: &str = "quern.redb";

pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
/// (state tag, id): every job, for List by state and for recovery.
pub(super) const BY_STATE: TableDefinition<(u8, u64), ()> = TableDefinition::new("by_state");
/// The kind index, as runs of ids: first id -> kind tag. Every job from a
/// run's first id up to the next run's is of the run's kind. A new run
/// starts only where the kind changes from one job to the next, so a stream
/// of jobs of one kind writes nothing here: an entry per job cost a sixth
/// more pages per commit, and P1b 15% of its rate.
pub(super) const KIND_RUNS: TableDefinition<u64, u8> = TableDefinition::new("kind_runs");
/// (kind tag, first id) of every run in `kind_runs`: a kind's runs, for
/// List by kind.
pub(super) const BY_KIND: TableDefinition<(u8, u64), ()> = TableDefinition::new("by_kind");
/// (inverted priority, id): queued jobs in the order they should run.
pub(super) const READY: TableDefinition<(u32, u64), ()> = TableDefinition::new("ready");
/// (host, inverted priority, id): queued fetch jobs, by the host they
/// fetch from (`host:port`), each host's in the order they should run.
/// Fetch jobs are here instead of in `ready`: admission limits them per
/// host, and a host at its limit must not hold up the others' jobs, so
/// the scheduler reads the head of each host that may start one, never
/// past a host's jobs that may not (since schema 3).
pub(super) const HOST_READY: TableDefinition<(&str, u32, u64), ()> =
    TableDefinition::new("host_ready");
/// (run_at, id): scheduled jobs in the order they become due.
pub(super) const DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("due");
/// Idempotency key -> id of the unfinished job that holds it.
pub(super) const IDEM: TableDefinition<&str, u64> = TableDefinition::new("idempotency");
/// Job id -> the checkpoint its kind saved; dropped when the job finishes.
pub(super) const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
/// Watch rule id -> the rule's record (`record/watch.rs`), since schema 4.
pub(super) const WATCH_RULES: TableDefinition<u64, &[u8]> = TableDefinition::new("watch_rules");
/// Watch rule id -> the snapshot of the tree it last acted on
/// (`Snapshot::encode`), since schema 4. Apart from the rule's record,
/// which changes with every trigger too but is small, so that reading or
/// listing rules never reads their snapshots, which may be megabytes.
pub(super) const WATCH_SNAPSHOTS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("watch_snapshots");
/// seq -> event, the bounded window that `Events` resumes from.
pub(super) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

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
    /// The id the next watch rule gets. Ids are never reused, even after
    /// a rule is removed: a job's `quern.watch` label names its rule.
    pub next_watch_id: u64,
    /// The kind tag of the newest job (0 before the first): the kind of
    /// the run in `kind_runs` that the next job continues if it is of the
    /// same kind. Read off `kind_runs`, not kept in `meta`.
    pub last_kind: u8,
}

impl Counters {
    /// Jobs in one state.
    pub fn count(&self, tag: StateTag) -> u64 {
        self.counts[tag as usize]
    }

    /// Jobs in a finished state: succeeded, failed or cancelled.
    pub fn finished(&self) -> u64 {
        self.count(StateTag::Succeeded)
            + self.count(StateTag::Failed)
            + self.count(StateTag::Cancelled)
    }

    /// The newest event's seq, 0 when there has been none.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub(super) fn load(meta: &impl ReadableTable<&'static str, u64>) -> Result<Counters> {
        let get = |k: &str| -> Result<Option<u64>> {
            Ok(meta.get(k).map_err(db_err("read meta"))?.map(|v| v.value()))
        };
        let mut c = Counters {
            next_id: get("next_id")?.unwrap_or(1),
            next_seq: get("next_seq")?.unwrap_or(1),
            first_seq: get("first_seq")?.unwrap_or(1),
            next_watch_id: get("next_watch_id")?.unwrap_or(1),
            counts: [0; 7],
            last_kind: 0,
        };
        for tag in StateTag::ALL {
            c.counts[tag as usize] = get(count_key(tag))?.unwrap_or(0);
        }
        // The counters come from the file, and no quernd writes these: ids
        // and seqs start at 1 and the window never starts past its end.
        // Refused here, they would underflow later (`last_seq`, the event
        // pruning) instead.
        if c.next_id == 0 || c.next_seq == 0 || c.first_seq == 0 || c.first_seq > c.next_seq {
            return Err(StoreError::Db {
                op: "read counters",
                detail: format!(
                    "next_id {}, next_seq {} and first_seq {} in meta are inconsistent; the file is damaged",
                    c.next_id, c.next_seq, c.first_seq
                ),
            });
        }
        if c.next_watch_id == 0 {
            return Err(StoreError::Db {
                op: "read counters",
                detail: "next_watch_id in meta is 0, inconsistent as rule ids start at 1; the file is damaged".into(),
            });
        }
        Ok(c)
    }

    pub(super) fn save(&self, meta: &mut Table<&'static str, u64>) -> Result<()> {
        let mut put = |k: &str, v: u64| -> Result<()> {
            meta.insert(k, v).map_err(db_err("write meta"))?;
            Ok(())
        };
        put("next_id", self.next_id)?;
        put("next_seq", self.next_seq)?;
        put("first_seq", self.first_seq)?;
        put("next_watch_id", self.next_watch_id)?;
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
pub(super) fn ready_key(priority: i32, id: JobId) -> (u32, u64) {
    ((i32::MAX as i64 - priority as i64) as u32, id)
}

/// Adds job `id`, of `kind`, to the kind index: nothing to write if it
/// continues the run of the job before it (whose kind is `*last_kind`).
pub(super) fn index_kind(
    kind_runs: &mut Table<u64, u8>,
    by_kind: &mut Table<(u8, u64), ()>,
    last_kind: &mut u8,
    kind: KindTag,
    id: JobId,
) -> Result<()> {
    let kind = kind as u8;
    if *last_kind != kind {
        let write = db_err("write the kind index");
        kind_runs.insert(id, kind).map_err(&write)?;
        by_kind.insert((kind, id), ()).map_err(&write)?;
        *last_kind = kind;
    }
    Ok(())
}

/// The kind of the newest run, if any.
pub(super) fn last_kind(kind_runs: &impl ReadableTable<u64, u8>) -> Result<u8> {
    Ok(kind_runs
        .last()
        .map_err(db_err("read the kind index"))?
        .map_or(0, |(_, k)| k.value()))
}

/// Checks (or, for a new file, writes) the schema version, migrates an
/// older store, and loads the counters. `owner_uid` is the owner given to
/// jobs of a store older than owners (see `migrate`).
pub(super) fn open(db: &Database, path: &Path, owner_uid: u32) -> Result<Counters> {
    let version = {
        let txn = db.begin_read().map_err(db_err("begin read"))?;
        match txn.open_table(META) {
            Ok(meta) => meta
                .get("schema_version")
                .map_err(db_err("read meta"))?
                .map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(db_err("open meta")(e)),
        }
    };
    match version {
        Some(SCHEMA_VERSION) => {}
        Some(found) if found > SCHEMA_VERSION => {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found,
            });
        }
        Some(found) => migrate::run(db, path, found, owner_uid)?,
        None => {}
    }
    let txn = db.begin_write().map_err(db_err("begin write"))?;
    let mut counters = {
        let mut meta = txn.open_table(META).map_err(db_err("open meta"))?;
        if version.is_none() {
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
        Counters::load(&meta)?
    };
    // Create every table now so that readers never meet a missing one.
    let create = db_err("create table");
    txn.open_table(JOBS).map_err(&create)?;
    txn.open_table(BY_STATE).map_err(&create)?;
    txn.open_table(BY_KIND).map_err(&create)?;
    counters.last_kind = last_kind(&txn.open_table(KIND_RUNS).map_err(&create)?)?;
    txn.open_table(READY).map_err(&create)?;
    txn.open_table(HOST_READY).map_err(&create)?;
    txn.open_table(DUE).map_err(&create)?;
    txn.open_table(IDEM).map_err(&create)?;
    txn.open_table(EVENTS).map_err(&create)?;
    txn.open_table(CHECKPOINTS).map_err(&create)?;
    txn.open_table(WATCH_RULES).map_err(&create)?;
    txn.open_table(WATCH_SNAPSHOTS).map_err(&create)?;
    txn.commit().map_err(db_err("commit"))?;
    Ok(counters)
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

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
}
