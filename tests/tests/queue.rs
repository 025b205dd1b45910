//! End-to-end tests of the queue: priority order, delayed start and retries
//! with backoff, against the real quernd.

use std::time::{Duration, SystemTime};

use anyhow::{Result, ensure};
use quern_proto::v1::{CancelRequest, JobState};
use quern_tests::{
    EventStream, TestDaemon, duration, exec_spec, get, submit, system_time, timestamp,
    wait_for_terminal,
};

/// With one slot held by a blocker, jobs queued behind it in mixed order
/// must start strictly by priority, and by id within a priority.
#[tokio::test]
async fn priority_order_is_critical_then_normal_then_background_ties_by_id() -> Result<()> {
    let daemon = TestDaemon::builder().concurrency(1).start().await?;
    let mut client = daemon.client();
    let mut events = EventStream::from_now(&mut client, 0).await?;

    let blocker = submit(&mut client, exec_spec(["sleep", "1000"])).await?;
    events.wait_state(blocker.id, JobState::Running).await?;

    // Interleaved, so that neither id order nor submission order alone could
    // produce the expected start order.
    let mut by_priority: [(&str, i32, Vec<u64>); 3] = [
        ("critical", 20, Vec::new()),
        ("normal", 0, Vec::new()),
        ("background", -20, Vec::new()),
    ];
    for _ in 0..3 {
        for name in ["background", "normal", "critical"] {
            let mut spec = exec_spec(["true"]);
            spec.priority_name = name.to_owned();
            let job = submit(&mut client, spec).await?;
            let slot = by_priority
                .iter_mut()
                .find(|(n, _, _)| *n == name)
                .expect("known name");
            ensure!(
                job.priority == slot.1,
                "{name} resolved to priority {}, expected {}",
                job.priority,
                slot.1
            );
            slot.2.push(job.id);
        }
    }

    // Free the slot; only now may the queued jobs start, one at a time.
    client
        .cancel(CancelRequest {
            id: blocker.id,
            grace: Some(duration(Duration::ZERO)),
        })
        .await?;
    let expected: Vec<u64> = by_priority
        .iter()
        .flat_map(|(_, _, ids)| ids.clone())
        .collect();
    events.wait_all_terminal(&expected).await?;

    let started: Vec<u64> = events
        .seen()
        .iter()
        .filter(|e| e.state == JobState::Running as i32 && expected.contains(&e.job_id))
        .map(|e| e.job_id)
        .collect();
    ensure!(
        started == expected,
        "start order {started:?}, expected {expected:?} (critical, normal, background; ids ascending)"
    );
    Ok(())
}

/// A job with run_at in the future is scheduled until then and does not
/// start early.
#[tokio::test]
async fn delayed_job_does_not_start_before_run_at() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let mut events = EventStream::from_now(&mut client, 0).await?;

    let run_at = SystemTime::now() + Duration::from_millis(1500);
    let mut spec = exec_spec(["true"]);
    spec.run_at = Some(timestamp(run_at));
    let job = submit(&mut client, spec).await?;
    ensure!(
        job.state == JobState::Scheduled as i32,
        "a delayed job is {:?} on submit, expected scheduled",
        job.state()
    );

    // That it stays scheduled until run_at, and starts right then, is
    // tested on a clock the test controls, in the scheduler's own tests
    // (`a_delayed_job_starts_at_its_run_at_and_not_a_moment_before`):
    // here, on a slow machine, the hour could pass before a read.
    ensure!(
        job.run_at.is_some(),
        "a scheduled job has no run_at: {job:?}"
    );

    let done = wait_for_terminal(&mut client, job.id).await?;
    ensure!(
        done.state == JobState::Succeeded as i32,
        "delayed job ended {:?}: {done:?}",
        done.state()
    );
    let started = system_time(
        done.started_at
            .as_ref()
            .expect("a finished job has started_at"),
    );
    // The daemon may store times at millisecond precision, so allow that
    // much rounding and nothing more.
    ensure!(
        started + Duration::from_millis(1) >= run_at,
        "started {:?} before its run_at",
        run_at.duration_since(started).unwrap_or_default()
    );

    let first = events.wait_for(|e| e.job_id == job.id).await?;
    ensure!(
        first.state == JobState::Scheduled as i32,
        "first event of a delayed job is {first:?}, expected scheduled"
    );
    Ok(())
}

/// `false` with max_attempts 3 runs exactly 3 times, waits in scheduled
/// between attempts, and no retry starts before its backoff. How long the
/// waits are, and that they grow, is tested on a clock the test controls,
/// in the scheduler's tests (`retries_wait_the_backoff_and_it_grows`).
#[tokio::test]
async fn failing_job_is_retried_after_its_backoff() -> Result<()> {
    // Backoff before attempt n+1 is base * 2^(n-1) * jitter in [0.75, 1.0].
    let base = Duration::from_millis(100);
    let daemon = TestDaemon::builder()
        .config(r#"retry_base_delay = "100ms""#)
        .start()
        .await?;
    let mut client = daemon.client();
    let mut events = EventStream::from_now(&mut client, 0).await?;

    let mut spec = exec_spec(["false"]);
    spec.max_attempts = 3;
    let job = submit(&mut client, spec).await?;
    events
        .wait_for(|e| e.job_id == job.id && quern_tests::is_terminal(e.state))
        .await?;
    let done = get(&mut client, job.id).await?;

    ensure!(
        done.state == JobState::Failed as i32,
        "ended {:?}: {done:?}",
        done.state()
    );
    ensure!(
        done.attempts == 3,
        "attempts = {}, expected 3",
        done.attempts
    );
    ensure!(
        done.exit_code == Some(1),
        "exit_code = {:?}, expected 1",
        done.exit_code
    );
    ensure!(
        done.error.contains("exited with code 1"),
        "error {:?} does not say how it failed",
        done.error
    );

    let mine: Vec<_> = events
        .seen()
        .iter()
        .filter(|e| e.job_id == job.id)
        .collect();
    let runs: Vec<_> = mine
        .iter()
        .filter(|e| e.state == JobState::Running as i32)
        .collect();
    ensure!(
        runs.len() == 3,
        "{} running events, expected 3: {mine:?}",
        runs.len()
    );
    let attempts: Vec<u32> = runs.iter().map(|e| e.attempt).collect();
    ensure!(
        attempts == [1, 2, 3],
        "running events carry attempts {attempts:?}"
    );

    // Measure each wait from the retry's `scheduled` event to the next
    // `running` one, so the job's own run time is not counted.
    let retries: Vec<_> = mine
        .iter()
        .filter(|e| e.state == JobState::Scheduled as i32)
        .collect();
    ensure!(
        retries.len() == 2,
        "{} scheduled events, expected 2: {mine:?}",
        retries.len()
    );
    let wait = |n: usize| -> Result<Duration> {
        let from = system_time(retries[n].time.as_ref().expect("event time"));
        let to = system_time(runs[n + 1].time.as_ref().expect("event time"));
        Ok(to.duration_since(from)?)
    };
    let (wait1, wait2) = (wait(0)?, wait(1)?);
    // Lower bounds only, which a slow machine cannot break. They allow
    // 5 ms for the event times being taken a moment apart from the
    // daemon's own clock reads, and for rounding.
    let slack = Duration::from_millis(5);
    let (min1, min2) = (base * 3 / 4 - slack, base * 3 / 2 - slack);
    ensure!(
        wait1 >= min1,
        "first retry after {wait1:?}, expected at least {min1:?}"
    );
    ensure!(
        wait2 >= min2,
        "second retry after {wait2:?}, expected at least {min2:?}"
    );
    Ok(())
}
