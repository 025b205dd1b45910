//! End-to-end tests of watch rules against the real daemon: what a change
//! submits, what is ignored, `on_busy`, `max_wait`, catch-up across a
//! restart, the rescan after a lost event queue, a vanished root, and bad
//! input. Every wait is on an event, never a sleep.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, ensure};
use quern_proto::v1::{
    GetWatchRequest, JobState, ListRequest, PauseWatchRequest, PruneRequest, RemoveWatchRequest,
    ResumeWatchRequest, WatchState,
};
use quern_tests::watch::{WatchEvents, add, get, job_of, paths_of, print_paths, spec};
use quern_tests::{
    EventStream, TestDaemon, duration, expect_code, get as get_job, sh, stats, system_time,
    wait_for_running, wait_for_terminal,
};

const DEBOUNCE: Duration = Duration::from_millis(100);

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A fresh directory to watch, inside the daemon's temp dir.
fn root(daemon: &TestDaemon, name: &str) -> Result<std::path::PathBuf> {
    let dir = daemon.dir().join(name);
    fs::create_dir_all(&dir)?;
    Ok(dir.canonicalize()?)
}

#[tokio::test]
async fn a_write_triggers_one_job_after_the_debounce_with_its_path() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let (mut jobs, mut watches) = (daemon.client(), daemon.watches());
    let dir = root(&daemon, "tree")?;
    let rule = add(&mut watches, spec(&dir, DEBOUNCE, print_paths())).await?;
    ensure!(rule.state == WatchState::Active as i32, "{rule:?}");
    let mut events = WatchEvents::open(&mut jobs).await?;

    let written = SystemTime::now();
    fs::write(dir.join("a.txt"), "1")?;
    let e = events.triggered(rule.id).await?;
    let (job, reason) = job_of(&e);
    ensure!(reason == "change", "{e:?}");
    let t = e.trigger.as_ref().unwrap();
    let settled = system_time(t.time.as_ref().unwrap());
    ensure!(
        settled.duration_since(written).unwrap_or_default() >= DEBOUNCE - Duration::from_millis(5),
        "triggered before the debounce had passed: {e:?}"
    );
    ensure!(paths_of(&mut jobs, job).await? == set(&["a.txt"]));
    let j = get_job(&mut jobs, job).await?;
    ensure!(j.spec.as_ref().unwrap().labels.get("quern.watch") == Some(&rule.id.to_string()));
    ensure!(j.spec.as_ref().unwrap().labels.get("quern.watch.reason") == Some(&"change".into()));
    let out = quern_tests::read_logs(&mut jobs, job, quern_proto::v1::LogStream::Stdout).await?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(
        text.contains(&format!("id={} root={}", rule.id, dir.display())),
        "{text}"
    );

    // One write, one job: the next job holds only the next write.
    fs::write(dir.join("b.txt"), "1")?;
    let (job2, _) = job_of(&events.triggered(rule.id).await?);
    ensure!(paths_of(&mut jobs, job2).await? == set(&["b.txt"]));
    let w = get(&mut watches, rule.id).await?;
    ensure!(w.jobs_made == 2, "{w:?}");
    ensure!(w.recent_job_ids == vec![job2, job], "{w:?}");
    Ok(())
}

#[tokio::test]
async fn a_burst_in_nested_new_directories_makes_at_most_two_jobs_and_misses_nothing() -> Result<()>
{
    let daemon = TestDaemon::start().await?;
    let (mut jobs, mut watches) = (daemon.client(), daemon.watches());
    let dir = root(&daemon, "tree")?;
    // A long debounce, so that a slow machine's pause in the burst does not
    // split it into many jobs.
    let rule = add(
        &mut watches,
        spec(&dir, Duration::from_millis(500), print_paths()),
    )
    .await?;
    let mut events = WatchEvents::open(&mut jobs).await?;

    let mut want = BTreeSet::new();
    for a in 0..10 {
        for b in 0..10 {
            let sub = format!("d{a}/e{b}/f");
            fs::create_dir_all(dir.join(&sub))?;
            for n in 0..100 {
                let p = format!("{sub}/{n}.txt");
                fs::write(dir.join(&p), "x")?;
                want.insert(p);
            }
        }
    }
    let mut got = BTreeSet::new();
    let mut made = Vec::new();
    while !want.is_subset(&got) {
        let (job, _) = job_of(&events.triggered(rule.id).await?);
        made.push(job);
        got.extend(paths_of(&mut jobs, job).await?);
        ensure!(made.len() <= 2, "more than 2 jobs: {made:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_rename_and_a_delete_are_changes() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let (mut jobs, mut watches) = (daemon.client(), daemon.watches());
    let dir = root(&daemon, "tree")?;
    fs::write(dir.join("a"), "1")?;
    fs::write(dir.join("b"), "1")?;
    let rule = add(&mut watches, spec(&dir, DEBOUNCE, print_paths())).await?;
    let mut events = WatchEvents::open(&mut jobs).await?;

    fs::rename(dir.join("a"), dir.join("c"))?;
    let (job, _) = job_of(&events.triggered(rule.id).await?);
    ensure!(paths_of(&mut jobs, job).await? == set(&["a", "c"]));
    fs::remove_file(dir.join("b"))?;
    let (job, _) = job_of(&events.triggered(rule.id).await?);
    ensure!(paths_of(&mut jobs, job).await? == set(&["b"]));
    Ok(())
}

#[tokio::test]
async fn ignored_paths_never_trigger() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let (mut jobs, mut watches) = (daemon.client(), daemon.watches());
    let dir = root(&daemon, "tree")?;
    fs::write(dir.join(".gitignore"), "ignored.txt\ntarget/\n")?;
    fs::create_dir_all(dir.join(".git"))?;
    fs::create_dir_all(dir.join("target/debug"))?;
    let mut s = spec(&dir, DEBOUNCE, print_paths());
    s.exclude = vec!["*.log".into()];
    let rule = add(&mut watches, s).await?;
    let mut events = WatchEvents::open(&mut jobs).await?;

    fs::write(dir.join(".git/index"), "x")?;
    fs::write(dir.join("target/debug/out"), "x")?;
    fs::create_dir_all(dir.join("target/new"))?;
    fs::write(dir.join("target/new/file"), "x")?;
    fs::write(dir.join("ignored.txt"), "x")?;
    fs::write(dir.join("run.log"), "x")?;
    // Every ignored write came before this one, so had any of them
    // triggered, it would be in this job or an earlier one.
    fs::write(dir.join("sentinel"), "x")?;
    let (job, _) = job_of(&events.triggered(rule.id).await?);
    ensure!(paths_of(&mut jobs, job).await? == set(&["sentinel"]));
    let w = get(&mut watches, rule.id).await?;
    ensure!(w.jobs_made == 1, "{w:?}");
    Ok(())
}

/// A job that prints its paths, then waits until `release` exists.
fn held_job(release: &Path) -> quern_proto::v1::JobSpec {
    sh(&format!(
        r#"cat "$QUERN_CHANGED_PATHS_FILE"; echo "--"; while [ ! -e '{}' ]; do sleep 0.02; done"#,
        release.display()
    ))
}

#[tokio::test]
async fn coalesce_holds_one_job_with_the_union_behind_the_running_one() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let (mut jobs, mut watches) = (daemon.client(), daemon.watches());
    let dir = root(&daemon, "tree")?;
    let release = daemon.dir().join("release");
    let rule = add(&mut watches, spec(&dir, DEBOUNCE, held_job(&release))).await?;
    let mut events = WatchEvents::open(&mut jobs).await?;

    fs::write(dir.join("a"), "1")?;
    let (first, _) = job_of(&events.triggered(rule.id).await?);
    wait_for_running(&mut jobs, first).await?;
    fs::write(dir.join("b"), "1")?;
    let held = |n: u64| {
        move |w: &quern_proto::v1::WatchEvent| {
            w.change == "held" && w.trigger.as_ref().is_some_and(|t| t.paths == n)
        }
    };
    events.wait_for(held(1)).await?;
    fs::write(dir.join("c"), "1")?;
    events.wait_for(held(2)).await?;
    ensure!(get(&mut watches, rule.id).await?.jobs_made == 1);

    fs::write(&release, "")?;
    let (second, _) = job_of(&events.triggered(rule.id).await?);
    ensure!(paths_of(&mut jobs, first).await? == set(&["a"]));
    ensure!(paths_of(&mut jobs, second).await? == set(&["b", "c"]));
    let w = get(&mut watches, rule.id).await?;
    ensure!(w.jobs_made == 2 && w.pending_paths == 0, "{w:?}");
    Ok(())
}

#[tokio::test]
async fn restart_cancels_the_running_job_and_carries_its_paths() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let (mut jobs, mut watches) = (daemon.client(), daemon.watches());
    let dir = root(&daemon, "tree")?;
    let release = daemon.dir().join("release");
    let mut s = spec(&dir, DEBOUNCE, held_job(&release));
    s.on_busy = "restart".into();
    let rule = add(&mut watches, s).await?;
    let mut events = WatchEvents::open(&mut jobs).await?;

    fs::write(dir.join("a"), "1")?;
    let (first, _) = job_of(&events.triggered(rule.id).await?);
    wait_for_running(&mut jobs, first).await?;
    fs::write(dir.join("b"), "1")?;
    let (second, _) = job_of(&events.triggered(rule.id).await?);
    let j = wait_for_terminal(&mut jobs, first).await?;
    ensure!(j.state == JobState::Cancelled as i32, "{j:?}");
    fs::write(&release, "")?;
    ensure!(paths_of(&mut jobs, second).await? == set(&["a", "b"]));
    Ok(())
}

#[tokio::test]
async fn skip_makes_no_job_while_one_runs() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let (mut jobs, mut watches) = (daemon.client(), daemon.watches());
    let dir = root(&daemon, "tree")?;
    let release = daemon.dir().join("release");
    let mut s = spec(&dir, DEBOUNCE, held_job(&release));
    s.on_busy = "skip".into();
    let rule = add(&mut watches, s).await?;
    let mut events = WatchEvents::open(&mut jobs).await?;

    fs::write(dir.join("a"), "1")?;
    let (first, _) = job_of(&events.triggered(rule.id).await?);
    wait_for_running(&mut jobs, first).await?;
    fs::write(dir.join("b"), "1")?;
    let skipped = events
        .wait_for(|w| w.change == "triggered" && w.trigger.as_ref().is_some_and(|t| t.job_id == 0))
        .await?;
    ensure!(skipped.trigger.as_ref().unwrap().paths == 1);
    fs::write(&release, "")?;
    wait_for_terminal(&mut jobs, first).await?;
    fs::write(dir.join("c"), "1")?;
    let (second, _) = job_of(&events.triggered(rule.id).await?);
    ensure!(paths_of(&mut jobs, second).await? == set(&["c"]));
    ensure!(get(&mut watches, rule.id).await?.jobs_made == 2);
    Ok(())
}

#[tokio::test]
async fn max_wait_fires_during_a_steady_stream_of_writes() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let (mut jobs, mut watches) = (daemon.client(), daemon.watches());
    let dir = root(&daemon, "tree")?;
    // Writes come every 20 ms, so a 500 ms debounce never passes while
    // they go on: only max_wait can trigger.
    let mut s = spec(&dir, Duration::from_millis(500), print_paths());
    s.max_wait = Some(duration(Duration::from_millis(1500)));
    let rule = add(&mut watches, s).await?;
    let mut events = WatchEvents::open(&mut jobs).await?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, dir) = (stop.clone(), dir.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fs::write(dir.join("stream"), n.to_string()).unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    let first = SystemTime::now();
    let e = events.triggered(rule.id).await;
    ensure!(!writer.is_finished(), "the writer stopped first");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await?;
    let e = e?;
    let settled = system_time(e.trigger.as_ref().unwrap().time.as_ref().unwrap());
    ensure!(
        settled.duration_since(first).unwrap_or_default() >= Duration::from_millis(1400),
        "triggered before max_wait: {e:?}"
    );
    let (job, _) = job_of(&e);
    ensure!(paths_of(&mut jobs, job).await? == set(&["stream"]));
    Ok(())
}

/// The ids of jobs first queued after event `after`.
async fn new_jobs(daemon: &TestDaemon, after: u64, want: usize) -> Result<Vec<u64>> {
    let mut client = daemon.client();
    let mut events = EventStream::after(&mut client, Some(after), 0).await?;
    let mut ids = Vec::new();
    while ids.len() < want {
        let e = events
            .wait_for(|e| e.state == JobState::Queued as i32 && e.attempt == 0)
            .await?;
        if !ids.contains(&e.job_id) {
            ids.push(e.job_id);
        }
    }
    Ok(ids)
}

#[tokio::test]
async fn changes_while_stopped_trigger_exactly_one_catch_up() -> Result<()> {
    let mut daemon = TestDaemon::start().await?;
    let dir = root(&daemon, "tree")?;
    fs::write(dir.join("kept"), "1")?;
    fs::write(dir.join("edited"), "1")?;
    fs::write(dir.join("removed"), "1")?;
    let rule = add(&mut daemon.watches(), spec(&dir, DEBOUNCE, print_paths())).await?;
    let seq = stats(&mut daemon.client()).await?.last_event_seq;

    daemon.kill9().await?;
    fs::write(dir.join("edited"), "longer")?;
    fs::remove_file(dir.join("removed"))?;
    fs::create_dir(dir.join("new"))?;
    fs::write(dir.join("new/made"), "1")?;
    daemon.restart().await?;

    let ids = new_jobs(&daemon, seq, 1).await?;
    let mut jobs = daemon.client();
    let j = get_job(&mut jobs, ids[0]).await?;
    let labels = &j.spec.as_ref().unwrap().labels;
    ensure!(
        labels.get("quern.watch.reason") == Some(&"catch-up".into()),
        "{j:?}"
    );
    ensure!(paths_of(&mut jobs, ids[0]).await? == set(&["edited", "new", "new/made", "removed"]));

    // A write after the catch-up is a change of its own: exactly one
    // catch-up was made.
    let mut events = WatchEvents::open(&mut jobs).await?;
    fs::write(dir.join("after"), "1")?;
    let (job, reason) = job_of(&events.triggered(rule.id).await?);
    ensure!(reason == "change");
    ensure!(paths_of(&mut jobs, job).await? == set(&["after"]));
    ensure!(get(&mut daemon.watches(), rule.id).await?.jobs_made == 2);
    Ok(())
}

#[tokio::test]
async fn no_change_while_stopped_means_no_job() -> Result<()> {
    let mut daemon = TestDaemon::start().await?;
    let dir = root(&daemon, "tree")?;
    fs::write(dir.join("kept"), "1")?;
    let rule = add(&mut daemon.watches(), spec(&dir, DEBOUNCE, print_paths())).await?;
    let seq = stats(&mut daemon.client()).await?.last_event_seq;
    daemon.stop().await?;
    daemon.restart().await?;

    let mut jobs = daemon.client();
    let w = get(&mut daemon.watches(), rule.id).await?;
    ensure!(w.state == WatchState::Active as i32, "{w:?}");
    let mut events = WatchEvents::open(&mut jobs).await?;
    fs::write(dir.join("sentinel"), "1")?;
    let (job, reason) = job_of(&events.triggered(rule.id).await?);
    ensure!(reason == "change");
    // The sentinel's job is the first job since the restart.
    let ids = new_jobs(&daemon, seq, 1).await?;
    ensure!(
        ids == vec![job],
        "jobs since the restart: {ids:?}, sentinel's {job}"
    );
    ensure!(paths_of(&mut jobs, job).await? == set(&["sentinel"]));
    Ok(())
}

#[tokio::test]
async fn a_lost_event_queue_is_made_good_by_a_rescan() -> Result<()> {
    let daemon = TestDaemon::builder()
        .env("QUERND_TEST_HOOKS", "1")
        .start()
        .await?;
    let (mut jobs, mut watches) = (daemon.client(), daemon.watches());
    let dir = root(&daemon, "tree")?;
    fs::write(dir.join("old"), "1")?;
    let rule = add(&mut watches, spec(&dir, DEBOUNCE, print_paths())).await?;
    let mut events = WatchEvents::open(&mut jobs).await?;

    // From the hook on, the rule drops its events, as after an overflow.
    fs::write(dir.join(".quern-test-deaf"), "")?;
    fs::write(dir.join("old"), "changed")?;
    fs::create_dir(dir.join("sub"))?;
    fs::write(dir.join("sub/new"), "1")?;
    fs::write(dir.join(".quern-test-rescan"), "")?;
    let (job, reason) = job_of(&events.triggered(rule.id).await?);
    ensure!(reason == "rescan");
    ensure!(paths_of(&mut jobs, job).await? == set(&["old", "sub", "sub/new"]));
    Ok(())
}

#[tokio::test]
async fn a_vanished_root_goes_to_error_and_comes_back_with_a_catch_up() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let (mut jobs, mut watches) = (daemon.client(), daemon.watches());
    let dir = root(&daemon, "tree")?;
    fs::write(dir.join("gone"), "1")?;
    let rule = add(&mut watches, spec(&dir, DEBOUNCE, print_paths())).await?;
    let mut events = WatchEvents::open(&mut jobs).await?;

    fs::remove_dir_all(&dir)?;
    let e = events.state(rule.id, WatchState::Error).await?;
    let w = e.watch.unwrap();
    ensure!(w.state_reason.contains("vanished"), "{w:?}");
    let w = get(&mut watches, rule.id).await?;
    ensure!(
        w.state == WatchState::Error as i32 && w.kernel_watches == 0,
        "{w:?}"
    );

    fs::create_dir(&dir)?;
    fs::write(dir.join("back"), "1")?;
    events.state(rule.id, WatchState::Active).await?;
    let mut got = BTreeSet::new();
    let mut reasons = BTreeSet::new();
    while !got.contains("back") {
        let (job, reason) = job_of(&events.triggered(rule.id).await?);
        reasons.insert(reason);
        got.extend(paths_of(&mut jobs, job).await?);
    }
    ensure!(reasons.contains("catch-up"), "{reasons:?}");
    ensure!(
        got.contains("gone"),
        "the removed file was not reported: {got:?}"
    );
    Ok(())
}

#[tokio::test]
async fn pause_holds_changes_until_resume_and_remove_stops_the_rule() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let (mut jobs, mut watches) = (daemon.client(), daemon.watches());
    let dir = root(&daemon, "tree")?;
    let rule = add(&mut watches, spec(&dir, DEBOUNCE, print_paths())).await?;
    let mut events = WatchEvents::open(&mut jobs).await?;

    let paused = watches
        .pause(PauseWatchRequest { id: rule.id })
        .await?
        .into_inner()
        .watch
        .unwrap();
    ensure!(paused.state == WatchState::Paused as i32);
    fs::write(dir.join("while-paused"), "1")?;
    let resumed = watches
        .resume(ResumeWatchRequest { id: rule.id })
        .await?
        .into_inner()
        .watch
        .unwrap();
    ensure!(resumed.state != WatchState::Paused as i32);
    let (job, reason) = job_of(&events.triggered(rule.id).await?);
    ensure!(reason == "catch-up");
    ensure!(paths_of(&mut jobs, job).await? == set(&["while-paused"]));

    // The paths file goes when its job's record is pruned.
    let j = get_job(&mut jobs, job).await?;
    let file = match j.spec.unwrap().kind.unwrap() {
        quern_proto::v1::job_spec::Kind::Exec(e) => e.env["QUERN_CHANGED_PATHS_FILE"].clone(),
        other => anyhow::bail!("{other:?}"),
    };
    ensure!(Path::new(&file).exists());
    jobs.prune(PruneRequest {
        older_than: Some(duration(Duration::ZERO)),
        ..Default::default()
    })
    .await?;
    ensure!(!Path::new(&file).exists(), "{file} is still there");

    let removed = watches
        .remove(RemoveWatchRequest { id: rule.id })
        .await?
        .into_inner();
    ensure!(removed.watch.unwrap().id == rule.id);
    expect_code(
        watches.get(GetWatchRequest { id: rule.id }).await,
        tonic::Code::NotFound,
    )?;
    ensure!(
        watches
            .list(quern_proto::v1::ListWatchesRequest {})
            .await?
            .into_inner()
            .watches
            .is_empty()
    );
    // Jobs it made are left alone; a write now makes none.
    let listed = jobs
        .list(ListRequest {
            labels: [("quern.watch".to_string(), rule.id.to_string())].into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(listed.jobs.is_empty(), "pruned, so none: {listed:?}");
    Ok(())
}

#[tokio::test]
async fn rules_survive_a_restart() -> Result<()> {
    let mut daemon = TestDaemon::start().await?;
    let dir = root(&daemon, "tree")?;
    let mut s = spec(&dir, DEBOUNCE, print_paths());
    s.include = vec!["**/*.rs".into()];
    s.on_busy = "queue".into();
    let rule = add(&mut daemon.watches(), s).await?;
    daemon.stop().await?;
    daemon.restart().await?;
    let w = get(&mut daemon.watches(), rule.id).await?;
    let (a, b) = (w.spec.clone().unwrap(), rule.spec.clone().unwrap());
    ensure!(a == b, "{a:?} != {b:?}");
    let mut jobs = daemon.client();
    let mut events = WatchEvents::open(&mut jobs).await?;
    fs::write(dir.join("skipped.txt"), "1")?;
    fs::write(dir.join("main.rs"), "1")?;
    let (job, _) = job_of(&events.triggered(rule.id).await?);
    ensure!(paths_of(&mut jobs, job).await? == set(&["main.rs"]));
    Ok(())
}

#[tokio::test]
async fn bad_rules_are_refused_naming_the_field() -> Result<()> {
    let daemon = TestDaemon::builder()
        .config("watch.max_rules = 1")
        .start()
        .await?;
    let mut watches = daemon.watches();
    let dir = root(&daemon, "tree")?;
    let file = dir.join("file");
    fs::write(&file, "x")?;
    type Spoil = Box<dyn Fn(&mut quern_proto::v1::WatchSpec)>;
    let cases: Vec<(Spoil, &str)> = vec![
        (Box::new(|s| s.root = "relative/dir".into()), "spec.root"),
        (
            Box::new(|s| s.root = format!("{}/missing", s.root)),
            "spec.root",
        ),
        (
            Box::new(move |s| s.root = file.to_string_lossy().into_owned()),
            "spec.root",
        ),
        (Box::new(|s| s.include = vec!["a[".into()]), "spec.include"),
        (Box::new(|s| s.exclude = vec!["{x".into()]), "spec.exclude"),
        (
            Box::new(|s| s.debounce = Some(duration(Duration::ZERO))),
            "spec.debounce",
        ),
        (
            Box::new(|s| s.max_wait = Some(duration(Duration::from_millis(10)))),
            "spec.max_wait",
        ),
        (Box::new(|s| s.on_busy = "later".into()), "spec.on_busy"),
        (
            Box::new(|s| s.job = Some(quern_tests::exec_spec(Vec::<String>::new()))),
            "spec.job.exec.argv",
        ),
        (
            Box::new(|s| s.job = Some(quern_proto::v1::JobSpec::default())),
            "spec.job.kind",
        ),
    ];
    for (spoil, field) in cases {
        let mut s = spec(&dir, DEBOUNCE, print_paths());
        spoil(&mut s);
        let st = expect_code(
            watches
                .add(quern_proto::v1::AddWatchRequest { spec: Some(s) })
                .await,
            tonic::Code::InvalidArgument,
        )
        .with_context(|| field.to_string())?;
        ensure!(
            st.message().starts_with(&format!("{field}:")),
            "{field}: {}",
            st.message()
        );
    }
    add(&mut watches, spec(&dir, DEBOUNCE, print_paths())).await?;
    let st = expect_code(
        watches
            .add(quern_proto::v1::AddWatchRequest {
                spec: Some(spec(&dir, DEBOUNCE, print_paths())),
            })
            .await,
        tonic::Code::InvalidArgument,
    )?;
    ensure!(st.message().contains("watch.max_rules"), "{}", st.message());
    expect_code(
        watches.get(GetWatchRequest { id: 99 }).await,
        tonic::Code::NotFound,
    )?;
    Ok(())
}
