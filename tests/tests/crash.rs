//! End-to-end crash test: kill -9 the real quernd in the middle of
//! concurrent submits and running jobs, restart it, and check that nothing
//! acknowledged was lost and the interrupted jobs were recovered.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, ensure};
use quern_proto::v1::{JobSpec, JobState, SubmitBatchRequest};
use quern_tests::{
    TestDaemon, assert_group_gone, assert_process_gone, exec_spec, get, processes_in_group, sh,
    start_sleepers, submit, timestamp, wait_for_running, wait_for_stdout,
};
use rand::Rng as _;

const SUBMITTERS: usize = 8;

/// A tree whose background child outlives the daemon when it is killed.
/// The "started" line tells the test that child exists.
fn tree(max_attempts: u32) -> JobSpec {
    let mut spec = sh("sleep 100 & echo started; sleep 100");
    spec.max_attempts = max_attempts;
    // Ahead of anything else, so the slots are theirs.
    spec.priority_name = "critical".into();
    spec
}

/// Acknowledged submits survive kill -9; jobs running at the crash are
/// failed (or rescheduled when attempts remain) and their process groups
/// are gone after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_job_and_recovers_running_ones() -> Result<()> {
    let mut daemon = TestDaemon::builder()
        .concurrency(4)
        // Long enough that the rescheduled job is still waiting when the
        // test looks at it.
        .config(r#"retry_base_delay = "1h""#)
        .start()
        .await?;
    let mut client = daemon.client();

    // Three trees with no attempts left, one with a retry to spare.
    let mut running = Vec::new();
    for max_attempts in [1, 1, 1, 2] {
        let job = submit(&mut client, tree(max_attempts)).await?;
        let job = wait_for_running(&mut client, job.id).await?;
        wait_for_stdout(&mut client, job.id, "started").await?;
        running.push(job);
    }

    // Each submitter says when its first Submit is acknowledged, so that
    // the crash comes while they are all under way, however slow the
    // machine is to get them started.
    let (first_ack, mut first_acks) = tokio::sync::mpsc::channel::<()>(SUBMITTERS);
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|n| {
            let mut client = daemon.client();
            let first_ack = first_ack.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                // Delayed jobs, so nothing competes with the trees for
                // slots or CPU; the point is the durability of Submit.
                let mut spec = exec_spec(["true"]);
                spec.run_at = Some(timestamp(SystemTime::now() + Duration::from_secs(3600)));
                spec.labels.insert("submitter".into(), n.to_string());
                // Stops at the first error, which is the crash.
                while let Ok(job) = submit(&mut client, spec.clone()).await {
                    if acked.is_empty() {
                        let _ = first_ack.try_send(());
                    }
                    acked.push(job.id);
                }
                acked
            })
        })
        .collect();

    drop(first_ack);
    for _ in 0..SUBMITTERS {
        tokio::time::timeout(quern_tests::WAIT, first_acks.recv())
            .await
            .context("a submitter had no Submit acknowledged")?
            .context("a submitter stopped before its first Submit was acknowledged")?;
    }

    // The randomised crash point: waiting here is the experiment itself,
    // not a wait for readiness or state.
    let crash_after = Duration::from_millis(rand::rng().random_range(50..=500));
    tokio::time::sleep(crash_after).await;
    daemon.kill9().await?;

    let mut acked = Vec::new();
    for submitter in submitters {
        acked.extend(
            tokio::time::timeout(quern_tests::WAIT, submitter)
                .await
                .context("a submitter kept going after the daemon died")??,
        );
    }
    ensure!(
        !acked.is_empty(),
        "no submit was acknowledged in {crash_after:?}"
    );
    // Shown with --nocapture, and with the failure if a check below fails.
    eprintln!(
        "kill -9 after {crash_after:?}, {} submits acknowledged",
        acked.len()
    );
    let mut unique = acked.clone();
    unique.sort_unstable();
    unique.dedup();
    ensure!(unique.len() == acked.len(), "an id was acknowledged twice");

    // The daemon's children die with it, but their background sleeps do
    // not: this is what the restart has to clean up.
    for job in &running {
        ensure!(
            !processes_in_group(job.pid).is_empty(),
            "precondition: job {}'s group {} should outlive the daemon",
            job.id,
            job.pid
        );
    }

    daemon.restart().await?;
    let mut client = daemon.client();

    for id in &acked {
        get(&mut client, *id).await.with_context(|| {
            format!("acknowledged job {id} is lost (crash after {crash_after:?})")
        })?;
    }

    for job in &running {
        let now = get(&mut client, job.id).await?;
        if job.spec.as_ref().is_some_and(|s| s.max_attempts == 2) {
            ensure!(
                now.state == JobState::Scheduled as i32,
                "job {} with an attempt left is {:?}, expected rescheduled: {now:?}",
                job.id,
                now.state()
            );
        } else {
            ensure!(
                now.state == JobState::Failed as i32
                    && now.error.contains("interrupted by daemon restart"),
                "job {} is {:?} with error {:?}, expected failed, interrupted by daemon restart",
                job.id,
                now.state(),
                now.error
            );
        }
        ensure!(
            now.attempts == 1,
            "job {} has {} attempts, expected 1",
            job.id,
            now.attempts
        );
        // Recovery happens before READY, so the groups were killed already;
        // the grace only covers the kernel finishing them off.
        assert_group_gone(job.pid, Duration::from_secs(10)).await?;
    }
    Ok(())
}

/// The kernel kills a job's process as soon as quernd dies, before any
/// restart: the parent-death signal is armed in every job process, from
/// whichever job thread started it. (Their children are left to boot
/// recovery, tested above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_process_dies_with_the_daemon() -> Result<()> {
    const JOBS: usize = 4;
    let mut daemon = TestDaemon::builder()
        .concurrency(JOBS as u32)
        .start()
        .await?;
    let mut client = daemon.client();
    let pids: Vec<u32> = start_sleepers(&mut client, JOBS)
        .await?
        .iter()
        .map(|j| j.pid)
        .collect();
    for &pid in &pids {
        ensure!(
            processes_in_group(pid) == vec![pid],
            "the job's group should hold just its own process"
        );
    }
    daemon.kill9().await?;
    let mut gone = Ok(());
    for &pid in &pids {
        if let Err(e) = assert_process_gone(pid, Duration::from_secs(10)).await {
            // Leave nothing behind for the next test.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            gone = Err(e);
        }
    }
    gone
}

/// kill -9 while short jobs run back to back, with their progress writes
/// held to share commits (a long `commit_linger` makes the crash all but
/// certain to land while some are held): every outcome a client was shown
/// is still there after the restart, and every job still ends, none lost
/// and none stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_among_short_jobs_keeps_every_outcome_that_was_shown() -> Result<()> {
    const JOBS: usize = 300;
    const SEEN_BEFORE_CRASH: usize = 20;
    let mut daemon = TestDaemon::builder()
        .concurrency(2)
        .config(r#"commit_linger = "100ms""#)
        .start()
        .await?;
    let mut client = daemon.client();
    let mut events = quern_tests::EventStream::from_now(&mut client, 0).await?;
    let ids = client
        .submit_batch(SubmitBatchRequest {
            specs: vec![exec_spec(["true"]); JOBS],
        })
        .await
        .context("SubmitBatch")?
        .into_inner()
        .ids;
    ensure!(ids.len() == JOBS, "{} ids for {JOBS} jobs", ids.len());

    let mut shown = HashSet::new();
    while shown.len() < SEEN_BEFORE_CRASH {
        let e = events
            .wait_for(|e| e.state == JobState::Succeeded as i32)
            .await?;
        shown.insert(e.job_id);
    }
    daemon.kill9().await?;
    daemon.restart().await?;
    let mut client = daemon.client();

    for id in &shown {
        let job = get(&mut client, *id).await?;
        ensure!(
            job.state == JobState::Succeeded as i32,
            "job {id} was shown succeeded before the crash and is now {:?}: {job:?}",
            job.state()
        );
    }
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for id in &ids {
        let job = quern_tests::wait_for_terminal(&mut client, *id)
            .await
            .with_context(|| format!("job {id} never finished after the restart"))?;
        let interrupted = job.state == JobState::Failed as i32
            && job.error.contains("interrupted by daemon restart");
        ensure!(
            job.state == JobState::Succeeded as i32 || interrupted,
            "job {id} ended {:?} with error {:?}",
            job.state(),
            job.error
        );
        *outcomes.entry(job.state().as_str_name()).or_default() += 1;
    }
    // Shown with --nocapture, and with the failure if a check above fails.
    eprintln!("after kill -9 and restart: {outcomes:?}");
    Ok(())
}
