//! Retention's tests: a real store and log directory in a temporary
//! directory, with jobs finished at chosen times.

use std::time::Duration;

use super::*;
use crate::job::{JobSpec, RunRecord};
use crate::store::EventsPage;

const DAY: u64 = 86_400_000_000;
const HOUR: u64 = 3_600_000_000;

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    logs: Arc<LogStore>,
    log_dir: std::path::PathBuf,
    retention: Arc<Retention>,
    now: Micros,
}

fn fixture(policy: config::Retention) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1_000_000, 1 << 20, Duration::ZERO).unwrap();
    let log_dir = dir.path().join("logs");
    let logs = Arc::new(LogStore::new(log_dir.clone(), 1 << 20).unwrap());
    let retention = Arc::new(Retention::new(
        store.clone(),
        logs.clone(),
        policy,
        Clock::System,
        dir.path(),
    ));
    Fixture {
        dir,
        store,
        logs,
        log_dir,
        retention,
        now: Clock::System.now_micros(),
    }
}

fn spec() -> JobSpec {
    JobSpec::exec_for_tests(&["true"])
}

/// Only the age limit.
fn by_age(age: Duration) -> config::Retention {
    config::Retention {
        max_age: Some(age),
        max_finished: None,
        events_max_age: None,
    }
}

impl Fixture {
    /// A job submitted at `at`, still queued.
    async fn queued(&self, at: Micros) -> JobId {
        self.store.submit(vec![spec()], 0, at).await.unwrap()[0]
            .job
            .id
    }

    /// A job submitted at `submitted` and cancelled at `finished`.
    async fn finished(&self, submitted: Micros, finished: Micros) -> JobId {
        let id = self.queued(submitted).await;
        self.store.cancel_pending(id, finished).await.unwrap();
        id
    }

    fn write_log(&self, id: JobId, bytes: usize) {
        std::fs::write(self.log_dir.join(format!("{id}.out")), vec![b'x'; bytes]).unwrap();
    }

    async fn exists(&self, id: JobId) -> bool {
        match self.store.get(id).await {
            Ok(_) => true,
            Err(StoreError::NotFound(_)) => false,
            Err(e) => panic!("get {id}: {e}"),
        }
    }
}

#[tokio::test]
async fn the_age_limit_removes_old_finished_jobs_with_their_logs_and_nothing_else() {
    let f = fixture(by_age(Duration::from_secs(7 * 86_400)));
    let now = f.now;
    let old = f.finished(now - 9 * DAY, now - 8 * DAY).await;
    // Submitted before the cutoff but finished after it: kept, and the walk
    // steps over it to the next one.
    let late = f.finished(now - 9 * DAY, now - HOUR).await;
    let old_too = f.finished(now - 8 * DAY, now - 7 * DAY - HOUR).await;
    let recent = f.finished(now - 2 * DAY, now - DAY).await;
    let queued = f.queued(now - 30 * DAY).await;
    let running = f.queued(now - 30 * DAY).await;
    f.store
        .mark_running(running, 1, RunRecord::InProcess, now - 29 * DAY)
        .await
        .unwrap();
    let mut scheduled = spec();
    scheduled.run_at = Some(now + DAY);
    let scheduled = f
        .store
        .submit(vec![scheduled], 0, now - 30 * DAY)
        .await
        .unwrap()[0]
        .job
        .id;
    f.write_log(old, 1000);
    f.write_log(old_too, 24);
    f.write_log(recent, 7);

    let policy = f.retention.policy();
    let dry = f.retention.prune(policy, true).await.unwrap();
    assert_eq!((dry.jobs, dry.log_bytes), (2, 1024));
    assert!(f.exists(old).await, "a dry run removes nothing");
    assert!(f.log_dir.join(format!("{old}.out")).exists());

    let done = f.retention.prune(policy, false).await.unwrap();
    assert_eq!(done, dry, "the dry run said what the real one would do");
    for id in [old, old_too] {
        assert!(!f.exists(id).await, "job {id} is past the age limit");
        assert_eq!(f.logs.size(id), 0, "job {id}'s logs go with it");
    }
    for id in [late, recent, queued, running, scheduled] {
        assert!(f.exists(id).await, "job {id} is kept");
    }
    assert_eq!(f.logs.size(recent), 7);
    assert_eq!(f.store.counters().await.unwrap().finished(), 2);
    assert_eq!(
        f.retention.prune(policy, false).await.unwrap(),
        Pruned::default(),
        "a second pass finds nothing more"
    );
}

#[tokio::test]
async fn the_count_limit_removes_the_oldest_finished_jobs() {
    let f = fixture(config::Retention {
        max_age: None,
        max_finished: Some(3),
        events_max_age: None,
    });
    let now = f.now;
    let mut finished = Vec::new();
    for i in 0..10 {
        finished.push(f.finished(now - HOUR + i, now - HOUR + i).await);
        if i == 4 {
            // Unfinished jobs in between are neither counted nor removed.
            f.queued(now).await;
        }
    }
    let pruned = f
        .retention
        .prune(f.retention.policy(), false)
        .await
        .unwrap();
    assert_eq!(pruned.jobs, 7);
    for (i, id) in finished.iter().enumerate() {
        assert_eq!(f.exists(*id).await, i >= 7, "job {id}");
    }
    assert!(f.exists(6).await, "the queued job stays");
    let c = f.store.counters().await.unwrap();
    assert_eq!(
        (c.finished(), c.count(crate::job::StateTag::Queued)),
        (3, 1)
    );
}

#[tokio::test]
async fn the_key_of_a_pruned_job_is_free_again() {
    let f = fixture(by_age(Duration::from_secs(3600)));
    let now = f.now;
    let mut keyed = spec();
    keyed.idempotency_key = Some("nightly".into());
    let first = f
        .store
        .submit(vec![keyed.clone()], 0, now - DAY)
        .await
        .unwrap()[0]
        .job
        .id;
    f.store.cancel_pending(first, now - DAY).await.unwrap();
    assert_eq!(
        f.retention
            .prune(f.retention.policy(), false)
            .await
            .unwrap()
            .jobs,
        1
    );
    let again = &f.store.submit(vec![keyed], 0, now).await.unwrap()[0];
    assert!(!again.deduplicated);
    assert_ne!(again.job.id, first);
}

/// A pass over many jobs is many short transactions, and a submit made
/// while it runs is answered before it ends, not after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_prune_runs_in_chunks_while_submits_continue() {
    let f = fixture(by_age(Duration::from_secs(3600)));
    let now = f.now;
    let n = 20_000u64;
    let ids: Vec<JobId> = f
        .store
        .submit(vec![spec(); n as usize], 0, now - DAY)
        .await
        .unwrap()
        .iter()
        .map(|s| s.job.id)
        .collect();
    // Sent all at once, so that the writer groups them.
    let mut cancels = tokio::task::JoinSet::new();
    for id in ids {
        let store = f.store.clone();
        cancels.spawn(async move { store.cancel_pending(id, now - DAY).await });
    }
    for r in cancels.join_all().await {
        r.unwrap();
    }
    let commits_before = f.store.commits();
    let mut finished = f.store.finished_count();
    assert_eq!(*finished.borrow_and_update(), n);

    let retention = f.retention.clone();
    let pass = tokio::spawn(async move { retention.prune(retention.policy(), false).await });
    // Once the first chunk is committed, the pass is under way.
    finished.wait_for(|&left| left < n).await.unwrap();
    let submitted = f.queued(now).await;
    assert!(
        !pass.is_finished(),
        "the submit of job {submitted} waited for the whole pass"
    );
    assert_eq!(pass.await.unwrap().unwrap().jobs, n);
    assert!(
        f.store.commits() - commits_before >= n / crate::store::MAX_PRUNED as u64,
        "{} commits for {n} jobs",
        f.store.commits() - commits_before
    );
    assert!(f.exists(submitted).await);
    assert_eq!(f.store.counters().await.unwrap().finished(), 0);
}

#[tokio::test]
async fn old_events_are_removed_and_resuming_before_them_is_out_of_range() {
    let f = fixture(config::Retention {
        max_age: None,
        max_finished: None,
        events_max_age: Some(Duration::from_secs(86_400)),
    });
    let now = f.now;
    f.finished(now - 3 * DAY, now - 2 * DAY).await; // events 1, 2
    f.queued(now - HOUR).await; // event 3
    let pruned = f
        .retention
        .prune(f.retention.policy(), false)
        .await
        .unwrap();
    assert_eq!((pruned.jobs, pruned.events), (0, 2));
    match f.store.events_after(0, 10, None).await.unwrap() {
        EventsPage::Pruned { first_retained } => assert_eq!(first_retained, 3),
        EventsPage::Events(e) => panic!("resumed from pruned events: {e:?}"),
    }
    match f.store.events_after(2, 10, None).await.unwrap() {
        EventsPage::Events(e) => assert_eq!(e.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]),
        EventsPage::Pruned { .. } => panic!("seq 3 is retained"),
    }
}

#[tokio::test]
async fn the_background_loop_prunes_once_the_count_limit_is_crossed() {
    let f = fixture(config::Retention {
        max_age: None,
        max_finished: Some(5),
        events_max_age: None,
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(f.retention.clone().run(stop.clone()));
    let now = f.now;
    for i in 0..20 {
        f.finished(now + i, now + i).await;
    }
    // A pass starts once the count passes the limit by 1% (at least one
    // job), and brings it back to the limit.
    let mut finished = f.store.finished_count();
    tokio::time::timeout(Duration::from_secs(60), finished.wait_for(|&n| n <= 6))
        .await
        .expect("the loop brought the finished jobs down to the limit")
        .unwrap();
    assert!(
        f.exists(20).await && !f.exists(1).await,
        "the oldest went first"
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn logs_of_jobs_no_longer_stored_are_swept() {
    let f = fixture(by_age(Duration::from_secs(3600)));
    let kept = f.queued(f.now).await;
    f.queued(f.now).await;
    f.write_log(kept, 3);
    // Job 2 has no such output; ids 1 and 2 exist, 7 was never handed out
    // (its files are not the store's to judge). Job 0 cannot exist.
    f.write_log(0, 5);
    f.write_log(7, 11);
    assert_eq!(f.retention.sweep_orphan_logs().await.unwrap(), 5);
    assert_eq!(f.logs.size(kept), 3);
    assert_eq!(f.logs.size(7), 11);
    assert_eq!(f.logs.size(0), 0);
}

/// A pruned job of a watch rule takes its changed-paths file along, but
/// only a file in `<state_dir>/watch`: a path elsewhere, or one that
/// climbs out of it, is the user's, and a job without the label is not
/// a watch job whatever its environment says. A dry run deletes nothing.
#[tokio::test]
async fn a_pruned_watch_jobs_paths_file_goes_only_from_our_directory() {
    use crate::job::JobKind;
    use crate::watch::rule::{CHANGED_PATHS_ENV, WATCH_LABEL};

    let f = fixture(by_age(Duration::from_secs(3600)));
    let now = f.now;
    let watch = f.dir.path().join("watch");
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(&watch).unwrap();
    std::fs::create_dir_all(elsewhere.path().join("watch")).unwrap();
    let ours = watch.join("1-7.paths");
    let outside = elsewhere.path().join("watch/1-8.paths");
    let climbing = watch.join("../1-9.paths");
    let unlabelled = watch.join("1-10.paths");
    for file in [&ours, &outside, &climbing, &unlabelled] {
        std::fs::write(file, "src/a.rs\n").unwrap();
    }
    let job = |file: &std::path::Path, labelled: bool| {
        let mut s = spec();
        if labelled {
            s.labels.insert(WATCH_LABEL.into(), "1".into());
        }
        if let JobKind::Exec(e) = &mut s.kind {
            e.env
                .insert(CHANGED_PATHS_ENV.into(), file.display().to_string());
        }
        s
    };
    let specs = vec![
        job(&ours, true),
        job(&outside, true),
        job(&climbing, true),
        job(&unlabelled, false),
        // A file already gone is no error.
        job(&watch.join("gone.paths"), true),
    ];
    let ids: Vec<JobId> = f
        .store
        .submit(specs, 0, now - DAY)
        .await
        .unwrap()
        .iter()
        .map(|s| s.job.id)
        .collect();
    for id in &ids {
        f.store.cancel_pending(*id, now - DAY).await.unwrap();
    }

    let policy = f.retention.policy();
    assert_eq!(f.retention.prune(policy, true).await.unwrap().jobs, 5);
    assert!(ours.exists(), "a dry run deletes nothing");
    assert_eq!(f.retention.prune(policy, false).await.unwrap().jobs, 5);
    assert!(!ours.exists(), "the watch job's file went with it");
    assert!(outside.exists(), "a file outside our directory is kept");
    assert!(climbing.exists(), "a path that climbs out is kept");
    assert!(
        unlabelled.exists(),
        "a job without the label is not a watch job"
    );
}

/// A pruned job takes the result file of a git result over the size limit
/// along (and a dry run counts its bytes); a kept job keeps its file.
#[tokio::test]
async fn a_pruned_jobs_git_result_file_goes_with_it() {
    use crate::runner::git::result_file;

    let f = fixture(by_age(Duration::from_secs(3600)));
    let old = f.queued(f.now - DAY).await;
    f.store.cancel_pending(old, f.now - DAY).await.unwrap();
    let kept = f.queued(f.now).await;
    let (gone, stays) = (
        result_file(f.dir.path(), old),
        result_file(f.dir.path(), kept),
    );
    std::fs::create_dir_all(gone.parent().unwrap()).unwrap();
    std::fs::write(&gone, [b'x'; 40]).unwrap();
    std::fs::write(&stays, b"{}").unwrap();

    let policy = f.retention.policy();
    let dry = f.retention.prune(policy, true).await.unwrap();
    assert_eq!((dry.jobs, dry.log_bytes), (1, 40), "{dry:?}");
    assert!(gone.exists(), "a dry run deletes nothing");
    let done = f.retention.prune(policy, false).await.unwrap();
    assert_eq!((done.jobs, done.log_bytes), (1, 40), "{done:?}");
    assert!(!gone.exists(), "the pruned job's result file went with it");
    assert!(stays.exists(), "a kept job's file is kept");
}
