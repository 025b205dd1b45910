//! Migrations from older schema versions, one step per version, each in
//! resumable chunks: a step records how far it got in `meta`, in the same
//! transaction as the records it converted, so a crash or a kill during a
//! migration loses nothing and the next start carries on from there. The
//! schema version changes only in the step's last transaction, so until
//! then every older quernd still opens the file as before.
//!
//! The types a step reads are frozen copies of that version's records:
//! they never change, whatever the domain model becomes.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, WriteTransaction};

use super::record::{encode_event, encode_job};
use super::schema::{BY_KIND, EVENTS, JOBS, KIND_RUNS, META, index_kind, last_kind};
use super::{Result, StoreError, db_err};

/// Records converted per transaction: big enough that the commits cost
/// little next to the work, small enough that the writer's memory stays
/// bounded whatever the size of the store.
const CHUNK: usize = 10_000;

/// Migrates the store at `path` from `from` to the current version.
/// `owner_uid` becomes the owner of jobs from before owners were kept.
pub(super) fn run(db: &Database, path: &Path, from: u64, owner_uid: u32) -> Result<()> {
    let mut version = from;
    while version < super::schema::SCHEMA_VERSION {
        let started = Instant::now();
        let (jobs, events) = match version {
            1 => v1::to_v2(db, owner_uid, CHUNK, None)?,
            2 => to_v3(db)?,
            3 => to_v4(db)?,
            4 => to_v5(db)?,
            other => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!("schema version {other} was never written by any quernd"),
                });
            }
        };
        tracing::info!(
            store = %path.display(),
            from = version,
            to = version + 1,
            jobs,
            events,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "migrated the store"
        );
        version += 1;
    }
    Ok(())
}

/// Begins one transaction of a step, with quick repair as the writer's.
fn begin(db: &Database) -> Result<WriteTransaction> {
    let mut txn = db.begin_write().map_err(db_err("begin migration"))?;
    txn.set_quick_repair(true);
    Ok(txn)
}

/// Reads the step's progress marker `key` (the next key to convert).
fn marker(txn: &WriteTransaction, key: &str) -> Result<u64> {
    let meta = txn.open_table(META).map_err(db_err("open meta"))?;
    Ok(meta
        .get(key)
        .map_err(db_err("read meta"))?
        .map_or(0, |v| v.value()))
}

fn set_marker(txn: &WriteTransaction, key: &str, value: u64) -> Result<()> {
    let mut meta = txn.open_table(META).map_err(db_err("open meta"))?;
    meta.insert(key, value).map_err(db_err("write meta"))?;
    Ok(())
}

/// Takes up to `size` rows from `from` on, as (key, bytes).
fn chunk(
    table: &impl ReadableTable<u64, &'static [u8]>,
    from: u64,
    size: usize,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut rows = Vec::with_capacity(size);
    for row in table.range(from..).map_err(db_err("read for migration"))? {
        let (k, v) = row.map_err(db_err("read for migration"))?;
        rows.push((k.value(), v.value().to_vec()));
        if rows.len() == size {
            break;
        }
    }
    Ok(rows)
}

/// The rows of a table, as a chunk takes them: (key, bytes).
type Rows = [(u64, Vec<u8>)];

/// Rewrites every row of `table` with `convert`, a chunk of `chunk_size`
/// rows per transaction, each committed with a marker under `done` of how
/// far it got, so that a later call carries on from there. `crash` is for
/// tests: asked before each transaction, true ends the call as a crash
/// would, and the answer is `None`. Otherwise returns how many rows this
/// call converted.
fn rewrite(
    db: &Database,
    table: redb::TableDefinition<u64, &'static [u8]>,
    done: &str,
    chunk_size: usize,
    crash: &mut impl FnMut() -> bool,
    mut convert: impl FnMut(&WriteTransaction, &Rows) -> Result<()>,
) -> Result<Option<u64>> {
    let mut converted = 0;
    loop {
        if crash() {
            return Ok(None);
        }
        let txn = begin(db)?;
        let next = marker(&txn, done)?;
        let rows = {
            let t = txn.open_table(table).map_err(db_err("open table"))?;
            chunk(&t, next, chunk_size)?
        };
        let Some(&(last, _)) = rows.last() else {
            return Ok(Some(converted));
        };
        convert(&txn, &rows)?;
        set_marker(&txn, done, last + 1)?;
        txn.commit().map_err(db_err("commit migration"))?;
        converted += rows.len() as u64;
    }
}

/// Schema 3 only added fields and a kind to the records, each of which
/// reads as "as before" when missing, so no record is rewritten: the step
/// records the new version, which keeps older quernds (which would drop
/// the new fields when rewriting a record) from opening the file.
fn to_v3(db: &Database) -> Result<(u64, u64)> {
    record_version(db, 3)
}

/// Schema 4 added the watch rules' tables, which start empty (no store
/// before had rules) and are created at open like every table, and the
/// `next_watch_id` counter, which reads as 1 when missing. So no record
/// is rewritten: the step records the new version, which keeps an older
/// quernd, which would open the file and silently watch none of its
/// rules, from opening it.
fn to_v4(db: &Database) -> Result<(u64, u64)> {
    record_version(db, 4)
}

/// Schema 5: git jobs (a new arm of the spec and result records, which no
/// store before had), so the step only records the version.
fn to_v5(db: &Database) -> Result<(u64, u64)> {
    record_version(db, 5)
}

/// The whole of a step that rewrites nothing: the new version, in one
/// transaction.
fn record_version(db: &Database, version: u64) -> Result<(u64, u64)> {
    let txn = begin(db)?;
    {
        let mut meta = txn.open_table(META).map_err(db_err("open meta"))?;
        meta.insert("schema_version", version)
            .map_err(db_err("write meta"))?;
    }
    txn.commit().map_err(db_err("commit migration"))?;
    Ok((0, 0))
}

/// Schema 1: records were domain structs encoded positionally with
/// postcard, so no field could be added. Schema 2 stores protobuf
/// records, gives every job an owner and adds the kind index.
pub(super) mod v1 {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::job::{
        Event, ExecRun, ExecSpec, Job, JobKind, JobSpec, JobState, RunRecord, StateTag,
    };

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize, Debug, Clone))]
    struct JobV1 {
        id: u64,
        spec: SpecV1,
        state: StateV1,
        queued_at: u64,
        attempts: u32,
        started_at: Option<u64>,
        exit_code: Option<i32>,
        error: String,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize, Debug, Clone))]
    struct SpecV1 {
        kind: KindV1,
        priority: i32,
        labels: BTreeMap<String, String>,
        run_at: Option<u64>,
        timeout: Option<Duration>,
        max_attempts: u32,
        idempotency_key: Option<String>,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize, Debug, Clone))]
    enum KindV1 {
        Exec(ExecV1),
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize, Debug, Clone))]
    struct ExecV1 {
        argv: Vec<String>,
        cwd: Option<String>,
        env: BTreeMap<String, String>,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize, Debug, Clone))]
    enum StateV1 {
        Queued,
        Scheduled {
            run_at: u64,
        },
        Running {
            pid: u32,
            pid_start: u64,
            boot_id: String,
        },
        Succeeded {
            finished_at: u64,
        },
        Failed {
            finished_at: u64,
        },
        Cancelled {
            finished_at: u64,
        },
    }

    /// Encoded by its variant index, in this order.
    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize, Debug, Clone))]
    enum TagV1 {
        Queued,
        Scheduled,
        Running,
        Succeeded,
        Failed,
        Cancelled,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize, Debug, Clone))]
    struct EventV1 {
        seq: u64,
        job_id: u64,
        state: TagV1,
        at: u64,
        attempt: u32,
        exit_code: Option<i32>,
        error: String,
    }

    fn decode<'a, T: Deserialize<'a>>(what: &str, key: u64, bytes: &'a [u8]) -> Result<T> {
        postcard::from_bytes(bytes).map_err(|e| StoreError::Db {
            op: "migrate from schema 1",
            detail: format!("{what} {key} does not decode as schema 1: {e}"),
        })
    }

    fn job(old: JobV1, owner_uid: u32) -> Job {
        let KindV1::Exec(e) = old.spec.kind;
        let state = match old.state {
            StateV1::Queued => JobState::Queued,
            StateV1::Scheduled { run_at } => JobState::Scheduled { run_at },
            StateV1::Running {
                pid,
                pid_start,
                boot_id,
            } => JobState::Running {
                run: RunRecord::Exec(ExecRun {
                    pid,
                    pid_start,
                    boot_id,
                }),
            },
            StateV1::Succeeded { finished_at } => JobState::Succeeded { finished_at },
            StateV1::Failed { finished_at } => JobState::Failed { finished_at },
            StateV1::Cancelled { finished_at } => JobState::Cancelled { finished_at },
        };
        Job {
            id: old.id,
            spec: JobSpec {
                kind: JobKind::Exec(ExecSpec {
                    argv: e.argv,
                    cwd: e.cwd,
                    env: e.env,
                }),
                priority: old.spec.priority,
                labels: old.spec.labels,
                run_at: old.spec.run_at,
                timeout: old.spec.timeout,
                max_attempts: old.spec.max_attempts,
                idempotency_key: old.spec.idempotency_key,
            },
            state,
            queued_at: old.queued_at,
            attempts: old.attempts,
            started_at: old.started_at,
            exit_code: old.exit_code,
            error: old.error,
            owner_uid,
            result: None,
            wait_reason: String::new(),
        }
    }

    fn event(old: EventV1) -> Event {
        Event {
            seq: old.seq,
            job_id: old.job_id,
            state: match old.state {
                TagV1::Queued => StateTag::Queued,
                TagV1::Scheduled => StateTag::Scheduled,
                TagV1::Running => StateTag::Running,
                TagV1::Succeeded => StateTag::Succeeded,
                TagV1::Failed => StateTag::Failed,
                TagV1::Cancelled => StateTag::Cancelled,
            },
            at: old.at,
            attempt: old.attempt,
            exit_code: old.exit_code,
            error: old.error,
        }
    }

    #[cfg(test)]
    mod props;

    const JOBS_DONE: &str = "migrate.2.next_job";
    const EVENTS_DONE: &str = "migrate.2.next_event";

    /// Every job of a schema-1 store was submitted by the daemon's own
    /// user: quernd 1 refused connections from any other. So the owner of
    /// those jobs is the uid quernd runs as, `owner_uid`.
    ///
    /// Converts `chunk` records per transaction. Returns how many jobs and
    /// events it converted. `stop_after` is for tests: end (as a crash
    /// would) after that many transactions.
    pub(super) fn to_v2(
        db: &Database,
        owner_uid: u32,
        chunk_size: usize,
        stop_after: Option<usize>,
    ) -> Result<(u64, u64)> {
        let mut buf = Vec::new();
        let mut steps = 0;
        let mut crash = || {
            steps += 1;
            stop_after.is_some_and(|n| steps > n)
        };
        let jobs = rewrite(db, JOBS, JOBS_DONE, chunk_size, &mut crash, |txn, rows| {
            let mut jobs = txn.open_table(JOBS).map_err(db_err("open jobs"))?;
            let mut runs = txn
                .open_table(KIND_RUNS)
                .map_err(db_err("open kind_runs"))?;
            let mut by_kind = txn.open_table(BY_KIND).map_err(db_err("open by_kind"))?;
            // Where the previous chunk left the index.
            let mut last = last_kind(&runs)?;
            for (id, bytes) in rows {
                let new = job(decode("job", *id, bytes)?, owner_uid);
                encode_job(&mut buf, &new)?;
                jobs.insert(id, buf.as_slice())
                    .map_err(db_err("write job"))?;
                index_kind(&mut runs, &mut by_kind, &mut last, new.spec.kind.tag(), *id)?;
            }
            Ok(())
        })?;
        let Some(jobs) = jobs else {
            return Ok((0, 0));
        };
        let events = rewrite(
            db,
            EVENTS,
            EVENTS_DONE,
            chunk_size,
            &mut crash,
            |txn, rows| {
                let mut events = txn.open_table(EVENTS).map_err(db_err("open events"))?;
                for (seq, bytes) in rows {
                    encode_event(&mut buf, &event(decode("event", *seq, bytes)?))?;
                    events
                        .insert(seq, buf.as_slice())
                        .map_err(db_err("write event"))?;
                }
                Ok(())
            },
        )?;
        let Some(events) = events else {
            return Ok((jobs, 0));
        };
        let converted = (jobs, events);
        if crash() {
            return Ok(converted);
        }
        let txn = begin(db)?;
        {
            let mut meta = txn.open_table(META).map_err(db_err("open meta"))?;
            meta.insert("schema_version", 2)
                .map_err(db_err("write meta"))?;
            meta.remove(JOBS_DONE).map_err(db_err("write meta"))?;
            meta.remove(EVENTS_DONE).map_err(db_err("write meta"))?;
        }
        txn.commit().map_err(db_err("commit migration"))?;
        Ok(converted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::read;

    /// The fixture's database, copied to a temporary directory.
    fn fixture() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/store-schema-1")
            .join(super::super::DB_FILE);
        let to = dir.path().join(super::super::DB_FILE);
        std::fs::copy(&from, &to).unwrap();
        let db = Database::open(&to).unwrap();
        (dir, db)
    }

    fn version(db: &Database) -> Option<u64> {
        use redb::ReadableDatabase;
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        meta.get("schema_version").unwrap().map(|v| v.value())
    }

    fn contents(db: &Database) -> String {
        let jobs: Vec<_> = (1..=6).map(|id| read::get_job(db, id).unwrap()).collect();
        let events = read::events_after(db, 0, 1000, None).unwrap();
        format!("{jobs:#?}\n{events:#?}")
    }

    /// A migration cut short after any of its transactions (as by a kill)
    /// leaves a store that is still schema 1 and that the next start
    /// finishes: every job and event converted once, none lost.
    #[test]
    fn a_migration_cut_short_anywhere_is_finished_by_the_next() {
        let whole = {
            let (_dir, db) = fixture();
            v1::to_v2(&db, 7, 2, None).unwrap();
            contents(&db)
        };
        assert!(whole.contains("owner_uid: 7"), "{whole}");
        // Two records per transaction: the fixture's 6 jobs and its events
        // take a dozen, and the last sets the version.
        let mut cut_short = 0;
        for cut in 0..30 {
            let (_dir, db) = fixture();
            v1::to_v2(&db, 7, 2, Some(cut)).unwrap();
            if version(&db) != Some(2) {
                assert_eq!(version(&db), Some(1), "cut after {cut}");
                cut_short += 1;
                v1::to_v2(&db, 7, 2, None).unwrap();
            }
            assert_eq!(version(&db), Some(2));
            assert_eq!(contents(&db), whole, "cut after {cut}");
        }
        assert!(
            cut_short >= 10,
            "only {cut_short} cuts fell inside the migration"
        );
    }
}
