//! End-to-end test of a graceful restart: after SIGTERM and a new start on
//! the same state dir, the queue is exactly as it was.

use std::time::{Duration, SystemTime};

use anyhow::{Result, ensure};
use quern_proto::v1::JobState;
use quern_tests::{
    EventStream, TestDaemon, assert_group_gone, exec_spec, get, start_sleepers, stats, submit,
    timestamp,
};

/// Delayed jobs, queued jobs and an interrupted running job all survive
/// SIGTERM and a restart with the same states, specs and times, and ids are
/// not reused afterwards.
#[tokio::test]
async fn graceful_restart_keeps_the_queue() -> Result<()> {
    let mut daemon = TestDaemon::builder().concurrency(1).start().await?;
    let mut client = daemon.client();
    let mut events = EventStream::from_now(&mut client, 0).await?;

    let blocker = submit(&mut client, exec_spec(["sleep", "1000"])).await?;
    events.wait_state(blocker.id, JobState::Running).await?;

    let mut ids = Vec::new();
    for n in 0..3 {
        let mut spec = exec_spec(["echo", "delayed"]);
        spec.run_at = Some(timestamp(SystemTime::now() + Duration::from_secs(3600)));
        spec.labels.insert("n".into(), n.to_string());
        spec.max_attempts = 2;
        ids.push(submit(&mut client, spec).await?.id);
    }
    for n in 0..3 {
        // Below the blocker's priority, so after the restart the blocker
        // takes the one slot again and these stay queued.
        let mut spec = exec_spec(["echo", "queued"]);
        spec.priority = -1 - n;
        spec.labels.insert("n".into(), n.to_string());
        ids.push(submit(&mut client, spec).await?.id);
    }
    let mut before = Vec::new();
    for id in &ids {
        before.push(get(&mut client, *id).await?);
    }
    let seq_before = stats(&mut client).await?.last_event_seq;
    drop(events);

    daemon.stop().await?;
    daemon.restart().await?;
    let mut client = daemon.client();

    for old in &before {
        let new = get(&mut client, old.id).await?;
        ensure!(
            new.state == old.state,
            "job {} was {:?}, is {:?}",
            old.id,
            old.state(),
            new.state()
        );
        ensure!(
            new.spec == old.spec,
            "job {} spec changed: {:?} -> {:?}",
            old.id,
            old.spec,
            new.spec
        );
        ensure!(
            new.queued_at == old.queued_at,
            "job {} queued_at changed",
            old.id
        );
        ensure!(new.run_at == old.run_at, "job {} run_at changed", old.id);
        ensure!(
            new.priority == old.priority,
            "job {} priority changed",
            old.id
        );
    }

    // The drain stopped the blocker and put it back in the queue without
    // counting that attempt; with the slot free it may already run again.
    let blocker_now = get(&mut client, blocker.id).await?;
    let state = blocker_now.state();
    ensure!(
        state == JobState::Queued || state == JobState::Running,
        "the interrupted blocker is {state:?}, expected queued or running again: {blocker_now:?}"
    );
    ensure!(
        blocker_now.attempts <= 1,
        "the interrupted attempt was counted: attempts = {}",
        blocker_now.attempts
    );

    let after = stats(&mut client).await?;
    ensure!(
        after.last_event_seq >= seq_before,
        "event seqs went back from {seq_before} to {}",
        after.last_event_seq
    );
    let newer = submit(&mut client, exec_spec(["true"])).await?;
    let highest = ids.iter().copied().max().unwrap_or(blocker.id);
    ensure!(
        newer.id > highest,
        "id {} reused or went back (highest was {highest})",
        newer.id
    );
    Ok(())
}

/// SIGTERM stops the jobs of every job thread, not only the scheduler's:
/// with more slots than one thread would take, each running job's whole
/// group is gone once the daemon has exited, and each job is back in the
/// queue with its attempt not counted, as a drain leaves it, rather than
/// found running by the next start and failed as interrupted.
#[tokio::test]
async fn sigterm_stops_and_requeues_the_jobs_of_every_job_thread() -> Result<()> {
    const JOBS: usize = 4;
    let mut daemon = TestDaemon::builder()
        .concurrency(JOBS as u32)
        .start()
        .await?;
    let mut client = daemon.client();
    let running = start_sleepers(&mut client, JOBS).await?;

    daemon.stop().await?;
    for job in &running {
        assert_group_gone(job.pid, Duration::from_secs(10)).await?;
    }
    daemon.restart().await?;
    let mut client = daemon.client();
    for id in running.iter().map(|j| j.id) {
        let job = get(&mut client, id).await?;
        let state = job.state();
        ensure!(
            state == JobState::Queued || state == JobState::Running,
            "job {id} is {state:?} after the restart, expected queued or running again: {job:?}"
        );
        ensure!(
            job.attempts <= 1 && job.error.is_empty(),
            "job {id} was not put back by the drain but recovered as interrupted: {job:?}"
        );
    }
    Ok(())
}
