//! The store's tests: real files in temporary directories.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use super::writer::{BUSY_WINDOW, LINGER_MIN_OPS, Linger, Pace};
use super::*;
use crate::job::{ExecRun, JobKind, JobState, KindTag, StateTag};

fn spec(priority: i32) -> JobSpec {
    JobSpec {
        priority,
        ..JobSpec::exec_for_tests(&["true"])
    }
}

#[tokio::test]
async fn ready_order_survives_reopen_and_ids_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 100, 1 << 20, Duration::ZERO).unwrap();
    let subs = store
        .submit(vec![spec(-20), spec(0), spec(20), spec(0)], 1000, 1)
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
    let more = store.submit(vec![spec(0)], 1000, 2).await.unwrap();
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
        .submit((0..5).map(|_| spec(0)).collect(), 1000, 1)
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

/// The ids `q` lists, walked page by page to the end; no page is over
/// the query's limit.
async fn list_all(store: &Store, q: &ListQuery) -> Vec<JobId> {
    let mut q = q.clone();
    let mut got = Vec::new();
    loop {
        let (page, next) = store.list(q.clone()).await.unwrap();
        assert!(page.len() <= q.limit, "{q:?}");
        got.extend(page.iter().map(|j| j.id));
        match next {
            Some(n) => q.after = Some(n),
            None => return got,
        }
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
    store.submit(specs, 1000, 1).await.unwrap();
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
            for kind in [None, Some(KindTag::Exec)] {
                for oldest_first in [false, true] {
                    for limit in [1, 7, 100, 1000] {
                        let q = ListQuery {
                            states: states.clone(),
                            kind,
                            labels: labels.clone(),
                            limit,
                            after: None,
                            oldest_first,
                        };
                        let mut want: Vec<JobId> = all
                            .iter()
                            .filter(|j| states.is_empty() || states.contains(&j.state.tag()))
                            .filter(|j| q.kind.is_none_or(|k| j.spec.kind.tag() == k))
                            .filter(|j| {
                                q.labels
                                    .iter()
                                    .all(|(k, v)| j.spec.labels.get(k) == Some(v))
                            })
                            .map(|j| j.id)
                            .collect();
                        if !oldest_first {
                            want.reverse();
                        }
                        assert_eq!(list_all(&store, &q).await, want, "{q:?}");
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

fn running(pid: u32) -> RunRecord {
    RunRecord::Exec(ExecRun {
        pid,
        pid_start: 1,
        boot_id: "boot".into(),
    })
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
        .submit((0..12).map(|_| spec(0)).collect(), 1000, 1)
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
            Outcome::Succeeded {
                exit_code: Some(0),
                result: None,
            },
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
                let outcome = Outcome::Succeeded {
                    exit_code: Some(0),
                    result: None,
                };
                store
                    .finish(id, 1, Some(2), outcome, 5, Commit::Grouped)
                    .await
            }
        });
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(5));
        let submitted = store.submit(vec![spec(0)], 1000, 6).await;
        (grouped.await.unwrap(), submitted)
    })
    .await
    .expect("a Submit was held behind a grouped write");
    grouped.unwrap();
    submitted.unwrap();
    assert_eq!(store.commits() - before, 1);
}

/// A copy of the state dir written by the schema-1 quernd (see
/// tests/fixtures/make-store-schema-1.sh).
fn schema_1_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/store-schema-1")
        .join(DB_FILE);
    std::fs::copy(from, dir.path().join(DB_FILE)).unwrap();
    dir
}

/// Opening the schema-1 fixture migrates it: every job keeps its spec,
/// state and result, gains the daemon's user as its owner, and is found
/// through the new kind index; the events, the idempotency key and the
/// counters are intact, and new ids continue above the old ones.
#[tokio::test]
async fn the_schema_1_store_migrates_with_nothing_lost() {
    let dir = schema_1_store();
    let store = Store::open(dir.path(), 1000, 1 << 20, Duration::ZERO).unwrap();
    let me = nix::unistd::getuid().as_raw();
    let mut jobs = Vec::new();
    for id in 1..=6 {
        jobs.push(store.get(id).await.unwrap());
    }
    let states: Vec<StateTag> = jobs.iter().map(|j| j.state.tag()).collect();
    use StateTag::*;
    assert_eq!(
        states,
        [Succeeded, Failed, Cancelled, Scheduled, Running, Queued]
    );
    assert!(jobs.iter().all(|j| j.owner_uid == me), "{jobs:#?}");
    let argv = |j: &Job| match &j.spec.kind {
        JobKind::Exec(e) => e.argv.clone(),
        other => panic!("schema 1 had exec jobs only: {other:?}"),
    };
    assert_eq!(argv(&jobs[0]), ["sh", "-c", "echo out-1; echo err-1 >&2"]);
    assert_eq!(
        jobs[0].spec.labels.get("team").map(String::as_str),
        Some("infra")
    );
    assert_eq!(jobs[0].exit_code, Some(0));
    assert_eq!(
        (jobs[1].exit_code, jobs[1].error.as_str()),
        (Some(3), "exited with code 3")
    );
    assert_eq!(jobs[1].spec.priority, 10);
    assert_eq!(jobs[2].error, "cancelled by request");
    let four = &jobs[3];
    assert_eq!(four.spec.idempotency_key.as_deref(), Some("fixture-key"));
    assert_eq!(four.spec.max_attempts, 3);
    assert_eq!(four.spec.timeout, Some(Duration::from_secs(90)));
    match &four.spec.kind {
        JobKind::Exec(e) => {
            assert_eq!(e.cwd.as_deref(), Some("/"));
            assert_eq!(e.env.get("FIXTURE").map(String::as_str), Some("4"));
        }
        other => panic!("schema 1 had exec jobs only: {other:?}"),
    }
    match &jobs[4].state {
        JobState::Running {
            run: RunRecord::Exec(r),
        } => assert!(
            r.pid > 1 && r.pid_start > 0 && !r.boot_id.is_empty(),
            "{r:?}"
        ),
        other => panic!("job 5 is {other:?}"),
    }
    assert_eq!(jobs[5].spec.priority, -10);

    let c = store.counters().await.unwrap();
    for tag in StateTag::ALL {
        assert_eq!(c.count(tag), 1, "{tag:?}");
    }
    assert_eq!(c.next_id, 7);
    let EventsPage::Events(events) = store.events_after(0, 1000, None).await.unwrap() else {
        panic!("events pruned");
    };
    assert_eq!(events.len() as u64, c.last_seq());
    assert!(events.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    let failed = events
        .iter()
        .find(|e| e.job_id == 2 && e.state == StateTag::Failed)
        .unwrap();
    assert_eq!((failed.exit_code, failed.attempt), (Some(3), 1));

    let by_kind = ListQuery {
        kind: Some(KindTag::Exec),
        limit: 100,
        ..ListQuery::default()
    };
    let (listed, _) = store.list(by_kind).await.unwrap();
    assert_eq!(
        listed.iter().map(|j| j.id).collect::<Vec<_>>(),
        [6, 5, 4, 3, 2, 1]
    );

    let mut again = spec(0);
    again.idempotency_key = Some("fixture-key".into());
    let dedup = store.submit(vec![again], me, 5).await.unwrap();
    assert!(dedup[0].deduplicated);
    assert_eq!(dedup[0].job.id, 4);
    let fresh = store.submit(vec![spec(0)], me, 5).await.unwrap();
    assert_eq!(fresh[0].job.id, 7);
    store.close().await;
    drop(store);

    // Once migrated, it opens as it is.
    let store = Store::open(dir.path(), 1000, 1 << 20, Duration::ZERO).unwrap();
    assert_eq!(store.get(7).await.unwrap().owner_uid, me);
}

/// A store from a newer quernd is refused with both versions named and
/// the way out, and nothing in it is changed: the newer quernd still finds
/// its version and its jobs.
#[tokio::test]
async fn a_newer_store_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 10, 1 << 20, Duration::ZERO).unwrap();
    store.submit(vec![spec(0)], 0, 1).await.unwrap();
    store.close().await;
    drop(store);
    let path = dir.path().join(DB_FILE);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(schema::META)
            .unwrap()
            .insert("schema_version", SCHEMA_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(dir.path(), 10, 1 << 20, Duration::ZERO)
        .err()
        .expect("a newer store must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("schema version {}", SCHEMA_VERSION + 1))
            && msg.contains(&format!("versions up to {SCHEMA_VERSION}"))
            && msg.contains("upgrade quernd"),
        "{msg}"
    );
    let db = redb::Database::open(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = txn.open_table(schema::META).unwrap();
    let version = meta.get("schema_version").unwrap().map(|v| v.value());
    assert_eq!(version, Some(SCHEMA_VERSION + 1));
    let jobs = txn.open_table(schema::JOBS).unwrap();
    assert!(
        jobs.get(1).unwrap().is_some(),
        "the newer store lost its job"
    );
}

/// A checkpoint lives while its job is unfinished, and goes with the
/// job's end, whichever way it ends.
#[tokio::test]
async fn checkpoints_are_dropped_when_their_job_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 100, 1 << 20, Duration::ZERO).unwrap();
    let ids: Vec<JobId> = store
        .submit(vec![spec(0), spec(0)], 0, 1)
        .await
        .unwrap()
        .iter()
        .map(|s| s.job.id)
        .collect();
    for &id in &ids {
        store.save_checkpoint(id, vec![id as u8]).await.unwrap();
        assert_eq!(store.checkpoint(id).await.unwrap(), Some(vec![id as u8]));
    }
    store.cancel_pending(ids[0], 2).await.unwrap();
    let done = Outcome::Succeeded {
        exit_code: None,
        result: None,
    };
    store
        .finish(ids[1], 1, Some(2), done, 3, Commit::Now)
        .await
        .unwrap();
    for &id in &ids {
        assert_eq!(store.checkpoint(id).await.unwrap(), None);
        let refused = store.save_checkpoint(id, vec![1]).await;
        assert!(
            matches!(refused, Err(StoreError::NotFound(_))),
            "{refused:?}"
        );
    }
}

/// The kind index answers by runs of ids. With only one kind built in,
/// the runs of a second are written into the index by hand: every List by
/// kind, paged to the end in both directions and with or without a state
/// filter, agrees with the runs, and a new job continues the last run.
#[tokio::test]
async fn list_by_kind_follows_the_runs_of_the_kind_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1000, 1 << 20, Duration::ZERO).unwrap();
    store
        .submit((0..25).map(|_| spec(0)).collect(), 0, 1)
        .await
        .unwrap();
    for id in (3..=25).step_by(3) {
        store.cancel_pending(id, 2).await.unwrap();
    }
    store.close().await;
    drop(store);
    // Ids 5-8 and 12-19 belong to another kind (tag 2).
    let other = 2u8;
    {
        let db = redb::Database::open(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut runs = txn.open_table(schema::KIND_RUNS).unwrap();
            let mut by_kind = txn.open_table(schema::BY_KIND).unwrap();
            for (start, kind) in [(5, other), (9, 1), (12, other), (20, 1)] {
                runs.insert(start, kind).unwrap();
                by_kind.insert((kind, start), ()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path(), 1000, 1 << 20, Duration::ZERO).unwrap();
    let more = store.submit(vec![spec(0)], 0, 3).await.unwrap();
    assert_eq!(more[0].job.id, 26);
    let exec: Vec<JobId> = (1..=4).chain(9..=11).chain(20..=26).collect();
    for states in [vec![], vec![StateTag::Queued], vec![StateTag::Cancelled]] {
        for oldest_first in [false, true] {
            for limit in [1, 2, 3, 5, 100] {
                let q = ListQuery {
                    states: states.clone(),
                    kind: Some(KindTag::Exec),
                    limit,
                    oldest_first,
                    ..ListQuery::default()
                };
                let mut want: Vec<JobId> = Vec::new();
                for &id in &exec {
                    let state = store.get(id).await.unwrap().state.tag();
                    if states.is_empty() || states.contains(&state) {
                        want.push(id);
                    }
                }
                if !oldest_first {
                    want.reverse();
                }
                assert_eq!(list_all(&store, &q).await, want, "{q:?}");
            }
        }
    }
}

/// A file the daemon may not read, or a failing disk, is reported as what
/// it is: never as corrupt, whose advice (move it aside) could cost a
/// healthy queue.
#[test]
fn an_unreadable_database_is_not_called_corrupt() {
    let path = Path::new("/state/quern.redb");
    for errno in [libc::EACCES, libc::EIO, libc::EROFS] {
        let io = std::io::Error::from_raw_os_error(errno);
        let e = open_error(
            path,
            redb::DatabaseError::Storage(redb::StorageError::Io(io)),
        );
        let msg = e.to_string();
        assert!(matches!(e, StoreError::Unreadable { .. }), "{msg}");
        assert!(
            msg.starts_with("cannot open database /state/quern.redb: ")
                && msg.contains("check the file's permissions")
                && !msg.contains("corrupt")
                && !msg.contains("move it aside"),
            "{msg}"
        );
    }
    let corrupt = open_error(
        path,
        redb::DatabaseError::Storage(redb::StorageError::Corrupted("bad page".into())),
    );
    assert!(matches!(corrupt, StoreError::Corrupt { .. }), "{corrupt}");
}

/// A writer that dies without being closed fails every later write with
/// its cause, not as a store closing for shutdown; reads go on.
#[tokio::test]
async fn a_writer_that_panics_fails_every_write_by_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 100, 1 << 20, Duration::ZERO).unwrap();
    store.submit(vec![spec(0)], 0, 1).await.unwrap();
    assert!(store.failure().is_none());
    store.fail_next_commits(u32::MAX);
    for _ in 0..2 {
        match store.submit(vec![spec(0)], 0, 2).await {
            Err(StoreError::Failed { cause }) => assert_eq!(
                cause,
                "its writer thread panicked: panicked on purpose by a test"
            ),
            other => panic!("a dead writer answered {other:?}"),
        }
    }
    assert!(store.failed().is_cancelled());
    assert!(matches!(store.failure(), Some(StoreError::Failed { .. })));
    assert_eq!(store.counters().await.unwrap().count(StateTag::Queued), 1);
    store.close().await;
}

/// A write that fails for want of space latches redb's file; once space
/// is freed, the next write opens it again and succeeds, with no restart,
/// and reads work throughout. Needs root, for the tmpfs.
#[tokio::test]
async fn a_store_that_ran_out_of_space_writes_again_once_space_is_freed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        dir.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=4m"),
    )
    .unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(dir.path());
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; 2 << 20]).unwrap();
    let store = Store::open(dir.path(), 100, 1 << 20, Duration::ZERO).unwrap();
    store.skip_room_check();
    let mut big = spec(0);
    for k in 0..60 {
        big.labels.insert(format!("k{k}"), "x".repeat(1000));
    }
    let mut stored = 0;
    let err = loop {
        assert!(stored < 1000, "4 MiB never filled up");
        match store.submit(vec![big.clone()], 0, 1).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
    // Latched: a small write fails too, naming the cause; reads go on.
    let again = store.submit(vec![spec(0)], 0, 2).await.unwrap_err();
    assert!(matches!(again, StoreError::NoSpace { .. }), "{again}");
    assert_eq!(
        store.counters().await.unwrap().count(StateTag::Queued),
        stored
    );
    std::fs::remove_file(&filler).unwrap();
    store.submit(vec![spec(0)], 0, 3).await.unwrap();
    assert_eq!(
        store.counters().await.unwrap().count(StateTag::Queued),
        stored + 1
    );
    store.close().await;
}

/// Queued fetch jobs sit in the host index, not the ready one; each host's
/// head is its best job not skipped, and held-back hosts are passed over.
#[tokio::test]
async fn host_heads_are_each_hosts_best_job_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 100, 1 << 20, Duration::ZERO).unwrap();
    let fetch = |url: &str, priority: i32| JobSpec {
        kind: JobKind::Fetch(crate::job::FetchSpec::for_tests(url, "/tmp/x")),
        priority,
        ..JobSpec::exec_for_tests(&["true"])
    };
    let specs = vec![
        fetch("http://a.test/1", 0),  // 1
        fetch("http://a.test/2", 10), // 2: a's best
        fetch("http://b.test/1", 0),  // 3
        fetch("http://c.test/1", 5),  // 4
        fetch("http://b.test/2", 0),  // 5
        spec(0),                      // 6: exec, in the ready index
    ];
    store.submit(specs, 1000, 1).await.unwrap();
    let no_hosts: HashSet<String> = HashSet::new();
    let no_jobs: HashSet<JobId> = HashSet::new();
    let heads = |passed: &HashSet<String>, skip: &HashSet<JobId>| -> Vec<(String, JobId)> {
        store
            .host_heads(passed, skip)
            .unwrap()
            .into_iter()
            .map(|(h, j)| (h, j.id))
            .collect()
    };
    assert_eq!(
        heads(&no_hosts, &no_jobs),
        [
            ("a.test:80".to_string(), 2),
            ("b.test:80".to_string(), 3),
            ("c.test:80".to_string(), 4)
        ]
    );
    let skip: HashSet<JobId> = [2, 3, 4].into();
    assert_eq!(
        heads(&no_hosts, &skip),
        [("a.test:80".to_string(), 1), ("b.test:80".to_string(), 5)],
        "the next of each host, and none for a host whose jobs all run"
    );
    let passed: HashSet<String> = ["a.test:80".to_string()].into();
    assert_eq!(
        heads(&passed, &no_jobs),
        [("b.test:80".to_string(), 3), ("c.test:80".to_string(), 4)]
    );
    let ready: Vec<JobId> = store
        .ready(10, &no_jobs)
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ready, [6], "fetch jobs are not in the ready index");
}

mod watch;
