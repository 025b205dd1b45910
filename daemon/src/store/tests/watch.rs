//! The store's watch rules: added, read, paused, triggered and removed,
//! on real files in temporary directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::*;
use crate::job::StateTag;
use crate::watch::rule::{DEFAULT_DEBOUNCE, DEFAULT_MAX_WAIT, OnBusy, RECENT_JOBS, TriggerRecord};
use crate::watch::snapshot::Stat;

fn open(dir: &Path) -> Store {
    Store::open(dir, 1000, 1 << 20, Duration::ZERO).unwrap()
}

fn rule_spec(root: &str) -> RuleSpec {
    RuleSpec {
        root: PathBuf::from(root),
        recursive: true,
        include: vec!["**/*.rs".into()],
        exclude: vec!["target".into()],
        no_ignore_files: false,
        debounce: DEFAULT_DEBOUNCE,
        max_wait: DEFAULT_MAX_WAIT,
        on_busy: OnBusy::Queue,
        job: JobSpec::exec_for_tests(&["make"]),
    }
}

/// A snapshot of `files`, each with its own size.
fn snapshot(files: &[&str]) -> Snapshot {
    let mut s = Snapshot::default();
    for (n, f) in files.iter().enumerate() {
        s.insert(
            Path::new(f),
            Stat {
                size: n as u64,
                mtime: 1_700_000_000_000_000_000,
                ino: 10 + n as u64,
                dir: false,
            },
        );
    }
    s
}

fn trigger(id: RuleId, specs: Vec<JobSpec>, snap: Option<Snapshot>, at: Micros) -> RuleTrigger {
    RuleTrigger {
        id,
        specs,
        owner_uid: 1000,
        snapshot: snap,
        reason: Reason::Change,
        paths: 2,
        at,
    }
}

fn job() -> JobSpec {
    JobSpec::exec_for_tests(&["make", "test"])
}

#[tokio::test]
async fn a_rule_is_added_with_its_snapshot_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(store.rules().await.unwrap().is_empty());
    let snap = snapshot(&["src/a.rs", "src/b.rs"]);
    let rule = store
        .add_rule(rule_spec("/src/one"), 1000, &snap, 5)
        .await
        .unwrap();
    assert_eq!(
        rule,
        Rule {
            id: 1,
            owner_uid: 1000,
            spec: rule_spec("/src/one"),
            created_at: 5,
            paused: false,
            jobs_made: 0,
            last_trigger: None,
            recent_jobs: vec![],
        }
    );
    let two = store
        .add_rule(rule_spec("/src/two"), 1001, &Snapshot::default(), 6)
        .await
        .unwrap();
    assert_eq!(two.id, 2);
    assert_eq!(store.rule(1).await.unwrap(), Some(rule.clone()));
    assert_eq!(store.rules().await.unwrap(), [rule, two]);
    assert_eq!(store.rule_snapshot(1).await.unwrap(), Some(snap));
    assert_eq!(
        store.rule_snapshot(2).await.unwrap(),
        Some(Snapshot::default())
    );
    assert_eq!(store.rule(3).await.unwrap(), None);
    assert_eq!(store.rule_snapshot(3).await.unwrap(), None);
    // Adding rules made no job and no event.
    let c = store.counters().await.unwrap();
    assert_eq!((c.next_id, c.last_seq()), (1, 0));
    store.close().await;
}

#[tokio::test]
async fn removed_rules_go_with_their_snapshots_and_their_ids_are_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let snap = snapshot(&["x"]);
    for n in 1..=3 {
        let r = store
            .add_rule(rule_spec("/r"), 1000, &snap, n)
            .await
            .unwrap();
        assert_eq!(r.id, n);
    }
    let gone = store.remove_rule(3).await.unwrap().unwrap();
    assert_eq!(gone.id, 3);
    assert_eq!(store.remove_rule(3).await.unwrap(), None);
    assert_eq!(store.rule(3).await.unwrap(), None);
    assert_eq!(store.rule_snapshot(3).await.unwrap(), None);
    // The newest id is not handed out again, here or after a reopen.
    let next = store
        .add_rule(rule_spec("/r"), 1000, &snap, 9)
        .await
        .unwrap();
    assert_eq!(next.id, 4);
    store.remove_rule(4).await.unwrap().unwrap();
    store.close().await;
    drop(store);
    let store = open(dir.path());
    let ids: Vec<RuleId> = store.rules().await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(ids, [1, 2]);
    let after = store
        .add_rule(rule_spec("/r"), 1000, &snap, 10)
        .await
        .unwrap();
    assert_eq!(after.id, 5);
    store.close().await;
}

#[tokio::test]
async fn a_rule_is_paused_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .add_rule(rule_spec("/r"), 1000, &Snapshot::default(), 1)
        .await
        .unwrap();
    let paused = store.set_rule_paused(1, true).await.unwrap().unwrap();
    assert!(paused.paused);
    assert!(store.rule(1).await.unwrap().unwrap().paused);
    // Again is no change, and no error.
    assert!(
        store
            .set_rule_paused(1, true)
            .await
            .unwrap()
            .unwrap()
            .paused
    );
    assert!(
        !store
            .set_rule_paused(1, false)
            .await
            .unwrap()
            .unwrap()
            .paused
    );
    assert!(!store.rule(1).await.unwrap().unwrap().paused);
    assert_eq!(store.set_rule_paused(7, true).await.unwrap(), None);
    store.close().await;
}

/// A trigger's job is a job like any submitted one: queued, in the ready
/// index, with its event; and the rule names it.
#[tokio::test]
async fn a_trigger_submits_its_job_and_the_rule_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .add_rule(rule_spec("/r"), 1000, &snapshot(&["a.rs"]), 1)
        .await
        .unwrap();
    // A job submitted before, so that the trigger's id is not 1 by chance.
    store.submit(vec![job()], 1000, 2).await.unwrap();
    let after = snapshot(&["a.rs", "b.rs"]);
    let (rule, submitted) = store
        .trigger_rule(trigger(1, vec![job()], Some(after.clone()), 3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(submitted.len(), 1);
    assert!(!submitted[0].deduplicated);
    let id = submitted[0].job.id;
    assert_eq!(id, 2);
    assert_eq!(
        rule.last_trigger,
        Some(TriggerRecord {
            at: 3,
            reason: Reason::Change,
            paths: 2,
            job_id: Some(id),
        })
    );
    assert_eq!((rule.jobs_made, rule.recent_jobs.clone()), (1, vec![id]));
    assert_eq!(store.rule(1).await.unwrap(), Some(rule));
    assert_eq!(store.rule_snapshot(1).await.unwrap(), Some(after));

    let stored = store.get(id).await.unwrap();
    assert_eq!(stored.state.tag(), StateTag::Queued);
    assert_eq!((stored.owner_uid, stored.queued_at), (1000, 3));
    let ready: Vec<JobId> = store
        .ready(10, &HashSet::new())
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ready, [1, 2]);
    // Its event is stored in the same transaction, after job 1's.
    let EventsPage::Events(events) = store.events_after(1, 10, None).await.unwrap() else {
        panic!("events pruned");
    };
    let seen: Vec<(JobId, StateTag, Micros)> =
        events.iter().map(|e| (e.job_id, e.state, e.at)).collect();
    assert_eq!(seen, [(id, StateTag::Queued, 3)]);
    store.close().await;
}

/// Newest first, at most [`RECENT_JOBS`], over triggers of several jobs;
/// a spec whose key an unfinished job holds makes no job and is not
/// counted.
#[tokio::test]
async fn recent_jobs_are_newest_first_and_bounded_and_duplicates_do_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .add_rule(rule_spec("/r"), 1000, &Snapshot::default(), 1)
        .await
        .unwrap();
    let mut made = Vec::new();
    for t in 0..4u64 {
        let (_, subs) = store
            .trigger_rule(trigger(1, vec![job(), job(), job()], None, 10 + t))
            .await
            .unwrap()
            .unwrap();
        made.extend(subs.iter().map(|s| s.job.id));
    }
    let rule = store.rule(1).await.unwrap().unwrap();
    assert_eq!(rule.jobs_made, 12);
    let newest: Vec<JobId> = made.iter().rev().take(RECENT_JOBS).copied().collect();
    assert_eq!(rule.recent_jobs, newest);
    // The first of the last trigger's jobs.
    assert_eq!(rule.last_trigger.unwrap().job_id, Some(made[9]));

    let mut keyed = job();
    keyed.idempotency_key = Some("rebuild".into());
    let (first, _) = store
        .trigger_rule(trigger(1, vec![keyed.clone()], None, 20))
        .await
        .unwrap()
        .unwrap();
    let (again, subs) = store
        .trigger_rule(trigger(1, vec![keyed], None, 21))
        .await
        .unwrap()
        .unwrap();
    assert!(subs[0].deduplicated);
    assert_eq!(subs[0].job.id, first.recent_jobs[0]);
    assert_eq!(again.jobs_made, first.jobs_made);
    assert_eq!(again.recent_jobs, first.recent_jobs);
    assert_eq!(again.last_trigger.unwrap().job_id, None);
    store.close().await;
}

/// A trigger that makes no job (skipped while busy, say) still records
/// itself and its snapshot.
#[tokio::test]
async fn a_trigger_without_jobs_records_itself_and_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .add_rule(rule_spec("/r"), 1000, &snapshot(&["a"]), 1)
        .await
        .unwrap();
    let after = snapshot(&["a", "b", "c"]);
    let (rule, subs) = store
        .trigger_rule(RuleTrigger {
            reason: Reason::Rescan,
            ..trigger(1, vec![], Some(after.clone()), 7)
        })
        .await
        .unwrap()
        .unwrap();
    assert!(subs.is_empty());
    assert_eq!(rule.jobs_made, 0);
    assert_eq!(
        rule.last_trigger,
        Some(TriggerRecord {
            at: 7,
            reason: Reason::Rescan,
            paths: 2,
            job_id: None,
        })
    );
    assert_eq!(store.rule_snapshot(1).await.unwrap(), Some(after));
    let c = store.counters().await.unwrap();
    assert_eq!((c.next_id, c.last_seq()), (1, 0), "no job, no event");
    store.close().await;
}

#[tokio::test]
async fn a_trigger_of_a_removed_rule_submits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .add_rule(rule_spec("/r"), 1000, &Snapshot::default(), 1)
        .await
        .unwrap();
    store.remove_rule(1).await.unwrap().unwrap();
    let answer = store
        .trigger_rule(trigger(1, vec![job()], Some(snapshot(&["a"])), 2))
        .await
        .unwrap();
    assert!(answer.is_none());
    let c = store.counters().await.unwrap();
    assert_eq!((c.next_id, c.last_seq()), (1, 0), "no job, no event");
    assert_eq!(store.rule_snapshot(1).await.unwrap(), None);
    store.close().await;
}

/// A failed transaction writes nothing of a trigger: no job, no change
/// to the rule or its snapshot; and an add that failed used up no id.
#[tokio::test]
async fn a_failed_commit_leaves_rules_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let before = snapshot(&["a"]);
    let rule = store
        .add_rule(rule_spec("/r"), 1000, &before, 1)
        .await
        .unwrap();
    store.fail_next_commits(1);
    let err = store
        .trigger_rule(trigger(1, vec![job()], Some(snapshot(&["a", "b"])), 2))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("failed on purpose"), "{err}");
    assert_eq!(store.rule(1).await.unwrap(), Some(rule));
    assert_eq!(store.rule_snapshot(1).await.unwrap(), Some(before.clone()));
    assert_eq!(store.counters().await.unwrap().next_id, 1);
    store.fail_next_commits(1);
    assert!(
        store
            .add_rule(rule_spec("/r"), 1000, &before, 3)
            .await
            .is_err()
    );
    let next = store
        .add_rule(rule_spec("/r"), 1000, &before, 4)
        .await
        .unwrap();
    assert_eq!(next.id, 2);
    store.close().await;
}

#[tokio::test]
async fn rules_and_snapshots_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let snap = snapshot(&["src/lib.rs", "src/main.rs"]);
    store
        .add_rule(rule_spec("/r"), 1000, &Snapshot::default(), 1)
        .await
        .unwrap();
    store.set_rule_paused(1, true).await.unwrap();
    let (rule, _) = store
        .trigger_rule(trigger(1, vec![job()], Some(snap.clone()), 2))
        .await
        .unwrap()
        .unwrap();
    store.close().await;
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.rules().await.unwrap(), [rule]);
    assert_eq!(store.rule_snapshot(1).await.unwrap(), Some(snap));
    store.close().await;
}

#[tokio::test]
async fn a_damaged_snapshot_is_an_error_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .add_rule(rule_spec("/r"), 1000, &snapshot(&["a", "b"]), 1)
        .await
        .unwrap();
    store.close().await;
    drop(store);
    {
        let db = redb::Database::open(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(super::super::schema::WATCH_SNAPSHOTS)
                .unwrap();
            t.insert(1, &[1u8, 5, 0, 1][..]).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = open(dir.path());
    let err = store.rule_snapshot(1).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("snapshot of watch rule 1 is damaged") && msg.contains("add it again"),
        "{msg}"
    );
    // The rule itself still reads.
    assert!(store.rule(1).await.unwrap().is_some());
    store.close().await;
}

/// The store written by the schema-3 quernd (see
/// tests/fixtures/make-store-schema-3.sh) opens as schema 4 with its jobs
/// as they were and no rules; a rule added then gets the first id and is
/// kept.
#[tokio::test]
async fn the_schema_3_store_migrates_and_takes_rules() {
    let dir = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/store-schema-3")
        .join(DB_FILE);
    std::fs::copy(from, dir.path().join(DB_FILE)).unwrap();
    let store = open(dir.path());
    let c = store.counters().await.unwrap();
    assert_eq!((c.next_id, c.next_watch_id), (7, 1));
    for tag in StateTag::ALL {
        assert_eq!(c.count(tag), 1, "{tag:?}");
    }
    let states: Vec<StateTag> = {
        let mut s = Vec::new();
        for id in 1..=6 {
            s.push(store.get(id).await.unwrap().state.tag());
        }
        s
    };
    use StateTag::*;
    assert_eq!(
        states,
        [Succeeded, Failed, Cancelled, Scheduled, Running, Queued]
    );
    assert_eq!(
        store.get(4).await.unwrap().spec.idempotency_key.as_deref(),
        Some("fixture-key")
    );
    assert!(store.rules().await.unwrap().is_empty());

    let rule = store
        .add_rule(rule_spec("/r"), 1000, &snapshot(&["a"]), 1)
        .await
        .unwrap();
    assert_eq!(rule.id, 1);
    let (_, subs) = store
        .trigger_rule(trigger(1, vec![job()], None, 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(subs[0].job.id, 7, "new ids continue above the old ones");
    store.close().await;
    drop(store);

    let db = redb::Database::open(dir.path().join(DB_FILE)).unwrap();
    let version = {
        use redb::ReadableDatabase;
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(super::super::schema::META).unwrap();
        meta.get("schema_version").unwrap().map(|v| v.value())
    };
    assert_eq!(version, Some(SCHEMA_VERSION));
    const { assert!(SCHEMA_VERSION >= 4) };
    drop(db);
    let store = open(dir.path());
    assert_eq!(store.rule(1).await.unwrap().unwrap().jobs_made, 1);
    store.close().await;
}
