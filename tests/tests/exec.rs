//! End-to-end tests of exec jobs: timeouts and cancels that must take the
//! whole process tree down, and captured output, against the real quernd.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, ensure};
use quern_proto::v1::{CancelRequest, Job, JobSpec, JobState, LogStream, SubmitBatchRequest};
use quern_tests::{
    EventStream, JobOutput, TestDaemon, assert_group_gone, duration, exec_mut, exec_spec,
    expect_code, open_logs, processes_in_group, read_logs, sh, submit, system_time, timestamp,
    wait_for_output, wait_for_running, wait_for_stdout, wait_for_terminal,
};
use tokio::time::timeout;
use tonic::Code;
use tonic::transport::Channel;

use quern_proto::v1::jobs_client::JobsClient;

/// How long a process the daemon killed may take to actually exit. A
/// `sleep 100` it forgot outlives this by far.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// A shell that puts a second process in its group, says so, and waits.
/// The "started" line lets the test know the background child exists, so
/// that "the group is empty afterwards" means the tree was killed.
const TREE: &str = "sleep 100 & echo started; sleep 100";

/// Starts `spec` and returns it once running with its tree in place.
async fn start_tree(client: &mut JobsClient<Channel>, spec: JobSpec) -> Result<Job> {
    let job = submit(client, spec).await?;
    let running = wait_for_running(client, job.id).await?;
    ensure!(running.pid != 0, "a running job has pid 0: {running:?}");
    wait_for_stdout(client, job.id, "started").await?;
    let group = processes_in_group(running.pid);
    ensure!(
        group.len() >= 2,
        "job {} should lead a group of sh and its background sleep, found {group:?}",
        job.id
    );
    Ok(running)
}

/// A 1 s timeout fails the job with a timeout error and leaves nothing of
/// its process group behind.
#[tokio::test]
async fn timeout_fails_the_job_and_kills_its_whole_group() -> Result<()> {
    let daemon = TestDaemon::builder()
        .config(r#"default_grace = "1s""#)
        .start()
        .await?;
    let mut client = daemon.client();
    let mut spec = sh(TREE);
    spec.timeout = Some(duration(Duration::from_secs(1)));
    let running = start_tree(&mut client, spec).await?;

    let done = wait_for_terminal(&mut client, running.id).await?;
    ensure!(
        done.state == JobState::Failed as i32,
        "ended {:?}: {done:?}",
        done.state()
    );
    ensure!(
        done.error.contains("timed out"),
        "error {:?} does not say timed out",
        done.error
    );
    let ran = system_time(done.finished_at.as_ref().context("no finished_at")?).duration_since(
        system_time(done.started_at.as_ref().context("no started_at")?),
    )?;
    ensure!(
        ran >= Duration::from_millis(999),
        "killed after {ran:?}, before its 1 s timeout"
    );
    assert_group_gone(running.pid, EXIT_GRACE).await
}

/// Cancelling a running job returns it cancelled, once stopped, with its
/// whole group gone.
#[tokio::test]
async fn cancel_of_a_running_job_kills_its_whole_group() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let running = start_tree(&mut client, sh(TREE)).await?;

    let cancelled = timeout(
        quern_tests::WAIT,
        client.cancel(CancelRequest {
            id: running.id,
            grace: Some(duration(Duration::from_secs(5))),
        }),
    )
    .await??
    .into_inner()
    .job
    .context("CancelResponse has no job")?;
    ensure!(
        cancelled.state == JobState::Cancelled as i32,
        "Cancel returned the job {:?}, expected cancelled: {cancelled:?}",
        cancelled.state()
    );
    ensure!(
        cancelled.pid == 0,
        "a cancelled job still reports pid {}",
        cancelled.pid
    );
    assert_group_gone(running.pid, EXIT_GRACE).await
}

/// A tree that ignores SIGTERM is still taken down: after the grace period
/// the daemon must escalate to SIGKILL.
#[tokio::test]
async fn cancel_escalates_to_sigkill_when_sigterm_is_ignored() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    // An ignored signal disposition survives exec, so the sleeps ignore
    // SIGTERM too.
    let running = start_tree(&mut client, sh(&format!("trap '' TERM; {TREE}"))).await?;

    let grace = Duration::from_millis(500);
    let asked = SystemTime::now();
    let cancelled = timeout(
        quern_tests::WAIT,
        client.cancel(CancelRequest {
            id: running.id,
            grace: Some(duration(grace)),
        }),
    )
    .await??
    .into_inner()
    .job
    .context("CancelResponse has no job")?;
    ensure!(
        cancelled.state == JobState::Cancelled as i32,
        "Cancel returned {:?}: {cancelled:?}",
        cancelled.state()
    );
    // Nothing in the tree dies of SIGTERM, so Cancel cannot have returned
    // before the grace period ran out.
    let took = asked.elapsed()?;
    ensure!(
        took >= grace,
        "Cancel returned after {took:?}, before the {grace:?} grace"
    );
    assert_group_gone(running.pid, EXIT_GRACE).await
}

/// A queued job cancelled before a slot frees up never runs.
#[tokio::test]
async fn cancel_of_a_queued_job_means_it_never_runs() -> Result<()> {
    let daemon = TestDaemon::builder().concurrency(1).start().await?;
    let mut client = daemon.client();
    let mut events = EventStream::from_now(&mut client, 0).await?;
    let blocker = submit(&mut client, exec_spec(["sleep", "1000"])).await?;
    events.wait_state(blocker.id, JobState::Running).await?;

    let queued = submit(&mut client, exec_spec(["true"])).await?;
    ensure!(
        queued.state == JobState::Queued as i32,
        "behind a blocker it is {:?}",
        queued.state()
    );
    let cancelled = client
        .cancel(CancelRequest {
            id: queued.id,
            grace: None,
        })
        .await?
        .into_inner()
        .job
        .context("CancelResponse has no job")?;
    ensure!(
        cancelled.state == JobState::Cancelled as i32,
        "Cancel returned {:?}",
        cancelled.state()
    );
    ensure!(
        cancelled.attempts == 0,
        "a job that never ran has {} attempts",
        cancelled.attempts
    );

    // Free the slot and run a later job of the same priority to completion.
    // Had the cancelled job stayed in the queue, its lower id would have
    // made it run first.
    client
        .cancel(CancelRequest {
            id: blocker.id,
            grace: Some(duration(Duration::ZERO)),
        })
        .await?;
    let sentinel = submit(&mut client, exec_spec(["true"])).await?;
    events.wait_all_terminal(&[sentinel.id]).await?;
    let ran: Vec<_> = events
        .seen()
        .iter()
        .filter(|e| e.job_id == queued.id && e.state == JobState::Running as i32)
        .collect();
    ensure!(ran.is_empty(), "the cancelled job ran: {ran:?}");
    let after = quern_tests::get(&mut client, queued.id).await?;
    ensure!(
        after.state == JobState::Cancelled as i32,
        "it is now {:?}",
        after.state()
    );
    Ok(())
}

/// A Cancel of the next job in line that lands just as a slot frees never
/// lets that job run. Each job says, through one FIFO, that it is about to
/// exit, and then waits on a second FIFO until the test lets it go. The
/// test cancels the job after it and lets it go in both orders: the
/// Cancel sent first meets the slot's next start while it is committed,
/// and sent second it races that start. A Cancel answered with the job
/// cancelled before it started must mean its process never ran.
#[tokio::test]
async fn cancel_of_the_next_job_as_its_slot_frees_never_runs_it() -> Result<()> {
    const JOBS: usize = 60;
    let daemon = TestDaemon::builder().concurrency(1).start().await?;
    let mut client = daemon.client();
    let said = daemon.dir().join("said");
    let go = daemon.dir().join("go");
    for fifo in [&said, &go] {
        nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::S_IRWXU)?;
    }
    let marks = daemon.dir().join("marks");
    std::fs::create_dir(&marks)?;
    let mark = |i: usize| marks.join(i.to_string());
    let specs = (0..JOBS)
        .map(|i| {
            exec_spec([
                "sh".to_string(),
                "-c".into(),
                r#"touch "$1"; echo "$2" > "$3"; read _ < "$4""#.into(),
                "sh".into(),
                mark(i).display().to_string(),
                i.to_string(),
                said.display().to_string(),
                go.display().to_string(),
            ])
        })
        .collect();
    let ids = client
        .submit_batch(SubmitBatchRequest { specs })
        .await?
        .into_inner()
        .ids;
    ensure!(ids.len() == JOBS, "{} of {JOBS} jobs stored", ids.len());
    // Lets the job that last wrote to `said` exit. Only a job that is
    // waiting on `go` opens it, so this never blocks for long: a job
    // that a Cancel killed never wrote.
    let release = || {
        let go = go.clone();
        async move {
            timeout(
                quern_tests::WAIT,
                tokio::task::spawn_blocking(move || std::fs::write(go, "\n")),
            )
            .await
            .context("no job waited to be let go")???;
            anyhow::Ok(())
        }
    };

    let mut never_started = Vec::new();
    loop {
        // Returns once job `n` has written its line and closed the FIFO.
        // It then waits to be let go. A job that a Cancel killed never
        // gets here: nothing reads `said` while a Cancel is answered.
        let path = said.clone();
        let line = timeout(
            quern_tests::WAIT,
            tokio::task::spawn_blocking(move || std::fs::read_to_string(path)),
        )
        .await
        .context("no job wrote to the FIFO")???;
        let n: usize = line
            .trim()
            .parse()
            .with_context(|| format!("a job wrote {line:?}"))?;
        // The last job is never cancelled, so that it ends the loop.
        if n + 2 >= JOBS {
            release().await?;
            if n + 1 == JOBS {
                break;
            }
            continue;
        }
        let id = ids[n + 1];
        let request = CancelRequest { id, grace: None };
        let answer = if n.is_multiple_of(2) {
            // The Cancel goes out first: the spawned task sends it while
            // this one yields, and the job exits while it is committed.
            let mut c = client.clone();
            let cancel = tokio::spawn(async move { c.cancel(request).await });
            tokio::task::yield_now().await;
            release().await?;
            cancel.await?
        } else {
            // The job exits first, and the Cancel races its slot's next
            // start.
            release().await?;
            client.cancel(request).await
        };
        let job = answer
            .with_context(|| format!("Cancel of job {id}"))?
            .into_inner()
            .job
            .context("CancelResponse has no job")?;
        ensure!(
            job.state == JobState::Cancelled as i32,
            "Cancel of job {id} answered {:?}",
            job.state()
        );
        if job.attempts == 0 {
            never_started.push(n + 1);
        }
    }
    let mut events = EventStream::after(&mut client, Some(0), 0).await?;
    events.wait_all_terminal(&ids).await?;
    ensure!(
        !never_started.is_empty(),
        "no Cancel came before its job started, so nothing was tested"
    );
    for &i in &never_started {
        let id = ids[i];
        let ran = events
            .seen()
            .iter()
            .any(|e| e.job_id == id && e.state == JobState::Running as i32);
        ensure!(!ran, "job {id} ran after its Cancel said it never started");
        ensure!(
            !mark(i).exists(),
            "job {id}'s process ran after its Cancel said it never started"
        );
        let after = quern_tests::get(&mut client, id).await?;
        ensure!(
            after.state == JobState::Cancelled as i32,
            "job {id} is now {:?}",
            after.state()
        );
    }
    ensure!(
        !daemon.output().contains("recording the job failed"),
        "the daemon could not record a job:\n{}",
        daemon.output()
    );
    Ok(())
}

/// Cancel of a finished job is FAILED_PRECONDITION, and of an unknown id
/// NOT_FOUND.
#[tokio::test]
async fn cancel_of_finished_or_unknown_jobs_is_refused() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let job = submit(&mut client, exec_spec(["true"])).await?;
    let done = wait_for_terminal(&mut client, job.id).await?;
    ensure!(
        done.state == JobState::Succeeded as i32,
        "`true` ended {:?}",
        done.state()
    );

    expect_code(
        client
            .cancel(CancelRequest {
                id: job.id,
                grace: None,
            })
            .await,
        Code::FailedPrecondition,
    )?;
    let after = quern_tests::get(&mut client, job.id).await?;
    ensure!(after == done, "a refused Cancel changed the job: {after:?}");

    expect_code(
        client
            .cancel(CancelRequest {
                id: job.id + 1_000_000,
                grace: None,
            })
            .await,
        Code::NotFound,
    )?;
    Ok(())
}

/// A Cancel that meets a failing job with a retry left cancels it, however
/// the two race: whether it lands while the job is queued, while it runs,
/// in the moment after it exited but before its failure is recorded, or
/// after its retry was scheduled. A Cancel that answered with the job
/// scheduled to run again would have cancelled nothing.
#[tokio::test]
async fn cancel_racing_a_failure_still_cancels_the_retry() -> Result<()> {
    // The retry waits an hour, so it can only be the Cancel that ends it.
    let daemon = TestDaemon::builder()
        .config(r#"retry_base_delay = "1h""#)
        .start()
        .await?;
    let mut client = daemon.client();
    let mut spec = exec_spec(["false"]);
    spec.max_attempts = 2;
    // Each round lets the job get a little further before the Cancel, by
    // one more Get round trip, so the rounds spread over every window.
    for round in 0..40 {
        let job = submit(&mut client, spec.clone()).await?;
        for _ in 0..round % 8 {
            quern_tests::get(&mut client, job.id).await?;
        }
        let reply = client
            .cancel(CancelRequest {
                id: job.id,
                grace: Some(duration(Duration::ZERO)),
            })
            .await
            .with_context(|| format!("cancel of job {} in round {round}", job.id))?
            .into_inner()
            .job
            .context("CancelResponse has no job")?;
        ensure!(
            reply.state == JobState::Cancelled as i32,
            "round {round}: Cancel answered with the job {:?}: {reply:?}",
            reply.state()
        );
        let after = quern_tests::get(&mut client, job.id).await?;
        ensure!(
            after.state == JobState::Cancelled as i32 && after.attempts <= 1,
            "round {round}: after the Cancel the job is {:?}: {after:?}",
            after.state()
        );
    }
    Ok(())
}

/// A job asked to stop gets its grace period to finish, and its output is
/// copied meanwhile: one that writes more than a pipe holds only once it
/// gets SIGTERM finishes writing and exits, instead of blocking on a full
/// pipe until the SIGKILL at the end of the grace.
#[tokio::test]
async fn a_stopping_job_can_write_more_than_a_pipe_holds() -> Result<()> {
    const BYTES: usize = 200_000;
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    // Silent on stdout until SIGTERM; "ready" on stderr once the trap is
    // set, so the cancel cannot come before it.
    let script = format!(
        "trap 'head -c {BYTES} /dev/zero | tr \"\\000\" x; exit 0' TERM; \
         echo ready >&2; while :; do sleep 1; done"
    );
    let job = submit(&mut client, sh(&script)).await?;
    wait_for_output(&mut client, job.id, LogStream::Stderr, "ready").await?;
    let cancelled = timeout(
        quern_tests::WAIT,
        client.cancel(CancelRequest {
            id: job.id,
            // Far longer than the test may take: a job blocked on its
            // pipe would only end at the SIGKILL after it.
            grace: Some(duration(Duration::from_secs(600))),
        }),
    )
    .await
    .context("the job did not end within the wait: its output is not copied while it stops")??
    .into_inner()
    .job
    .context("CancelResponse has no job")?;
    ensure!(
        cancelled.state == JobState::Cancelled as i32,
        "Cancel returned the job {:?}: {cancelled:?}",
        cancelled.state()
    );
    let out = read_logs(&mut client, job.id, LogStream::Stdout).await?;
    ensure!(
        out.stdout.len() == BYTES && out.stdout.iter().all(|&b| b == b'x'),
        "captured {} bytes of stdout, expected {BYTES} x's",
        out.stdout.len()
    );
    Ok(())
}

/// A job whose output outgrows the daemon's file size limit
/// (`RLIMIT_FSIZE`) loses the rest of its output, not the daemon: the
/// kernel's SIGXFSZ would otherwise kill quernd, and every running job
/// with it.
#[tokio::test]
async fn output_past_the_file_size_limit_does_not_kill_the_daemon() -> Result<()> {
    const LIMIT: u64 = 8 << 20;
    let daemon = TestDaemon::builder()
        .file_size_limit(LIMIT)
        .config(format!("log_cap_bytes = {}", 4 * LIMIT))
        .start()
        .await?;
    let mut client = daemon.client();
    let job = submit(&mut client, sh(&format!("head -c {} /dev/zero", 2 * LIMIT))).await?;
    let done = wait_for_terminal(&mut client, job.id).await?;
    ensure!(
        done.state == JobState::Succeeded as i32,
        "ended {:?}: {done:?}\n{}",
        done.state(),
        daemon.output()
    );
    let out = read_logs(&mut client, job.id, LogStream::Stdout).await?;
    ensure!(
        out.stdout.len() as u64 <= LIMIT,
        "kept {} bytes of output past a {LIMIT}-byte file size limit",
        out.stdout.len()
    );
    // Still serving and running jobs, and a job does not inherit the
    // daemon's ignoring of SIGXFSZ (or of anything else).
    let next = submit(&mut client, sh("grep SigIgn /proc/self/status")).await?;
    let next = wait_for_terminal(&mut client, next.id).await?;
    ensure!(
        next.state == JobState::Succeeded as i32,
        "the next job ended {:?}",
        next.state()
    );
    let shown = read_logs(&mut client, next.id, LogStream::Stdout).await?;
    let shown = String::from_utf8_lossy(&shown.stdout);
    ensure!(
        shown.trim() == "SigIgn:\t0000000000000000",
        "a job started with ignored signals: {shown:?}"
    );
    Ok(())
}

/// stdout and stderr are captured, and kept apart.
#[tokio::test]
async fn stdout_and_stderr_are_captured_separately() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let job = submit(&mut client, sh("echo out; echo err >&2; echo out2")).await?;
    let done = wait_for_terminal(&mut client, job.id).await?;
    ensure!(
        done.state == JobState::Succeeded as i32,
        "ended {:?}: {done:?}",
        done.state()
    );

    let both = read_logs(&mut client, job.id, LogStream::Unspecified).await?;
    let expected = JobOutput {
        stdout: b"out\nout2\n".to_vec(),
        stderr: b"err\n".to_vec(),
    };
    ensure!(both == expected, "captured {both:?}, expected {expected:?}");

    let only_stderr = read_logs(&mut client, job.id, LogStream::Stderr).await?;
    ensure!(
        only_stderr.stdout.is_empty() && only_stderr.stderr == expected.stderr,
        "Logs for stderr only returned {only_stderr:?}"
    );
    Ok(())
}

/// The job also sees QUERN_JOB_ID, its env and its cwd.
#[tokio::test]
async fn job_gets_its_id_env_and_cwd() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let mut spec = sh(r#"echo "$QUERN_JOB_ID $GREETING $(pwd)""#);
    let cwd = daemon.dir().to_path_buf();
    exec_mut(&mut spec)
        .env
        .insert("GREETING".into(), "hello".into());
    exec_mut(&mut spec).cwd = cwd.display().to_string();
    let job = submit(&mut client, spec).await?;
    wait_for_terminal(&mut client, job.id).await?;
    let out = read_logs(&mut client, job.id, LogStream::Stdout).await?;
    // pwd prints the canonical path, and the temp dir may be behind a
    // symlink.
    let expected = format!("{} hello {}\n", job.id, cwd.canonicalize()?.display());
    ensure!(
        out.stdout == expected.as_bytes(),
        "job printed {:?}, expected {expected:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

/// With a 64 KiB cap, ~330 KiB of output keeps exactly the newest 64 KiB,
/// shown from the first whole line.
#[tokio::test]
async fn log_cap_keeps_exactly_the_newest_bytes() -> Result<()> {
    const CAP: usize = 65536;
    let daemon = TestDaemon::builder()
        .config(format!("log_cap_bytes = {CAP}"))
        .start()
        .await?;
    let mut client = daemon.client();
    let last = 60_000;
    let job = submit(&mut client, exec_spec(["seq", "1", &last.to_string()])).await?;
    let done = wait_for_terminal(&mut client, job.id).await?;
    ensure!(
        done.state == JobState::Succeeded as i32,
        "seq ended {:?}: {done:?}",
        done.state()
    );

    let full: String = (1..=last).map(|n| format!("{n}\n")).collect();
    ensure!(
        full.len() > 4 * CAP,
        "the job must write several times the cap"
    );
    let out = read_logs(&mut client, job.id, LogStream::Stdout)
        .await?
        .stdout;
    // The kept bytes start mid-line; what is shown starts at the next
    // line, within 4 KiB.
    ensure!(
        out.len() <= CAP && out.len() > CAP - 4096,
        "shown {} bytes, expected the newest {CAP} from their first line",
        out.len()
    );
    ensure!(
        full.as_bytes()[full.len() - out.len() - 1] == b'\n',
        "the shown output starts mid-line"
    );
    ensure!(
        out.ends_with(format!("\n{last}\n").as_bytes()),
        "the kept output does not end with the last line"
    );
    ensure!(!out.starts_with(b"1\n2\n"), "the oldest lines were kept");
    ensure!(
        out == full.as_bytes()[full.len() - out.len()..],
        "the shown bytes are not the newest bytes of the output"
    );
    Ok(())
}

/// Logs with follow delivers a line while the job still runs, then the
/// rest, then ends when the job finishes.
#[tokio::test]
async fn logs_follow_streams_lines_as_they_are_written() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let gate = daemon.dir().join("gate");
    let mut spec = sh(r#"echo first; while [ ! -e "$GATE" ]; do sleep 0.05; done; echo second"#);
    exec_mut(&mut spec)
        .env
        .insert("GATE".into(), gate.display().to_string());
    let job = submit(&mut client, spec).await?;

    let mut logs = open_logs(&mut client, job.id, true, LogStream::Unspecified).await?;
    let mut out = Vec::new();
    // The job cannot print "second" until the gate exists, so "first"
    // arriving here proves output streams while the job runs.
    while !out.ends_with(b"first\n") {
        let chunk = timeout(quern_tests::WAIT, logs.message())
            .await?
            .context("following Logs")?
            .context("Logs ended before the job printed anything")?;
        out.extend_from_slice(&chunk.data);
    }
    ensure!(
        out == b"first\n",
        "before the gate, Logs gave {:?}",
        String::from_utf8_lossy(&out)
    );

    std::fs::write(&gate, b"")?;
    // Read to the end: with follow the stream must end by itself once the
    // job has finished, or this times out.
    while let Some(chunk) = timeout(quern_tests::WAIT, logs.message())
        .await
        .context("Logs with follow did not end after the job finished")?
        .context("following Logs")?
    {
        out.extend_from_slice(&chunk.data);
    }
    ensure!(
        out == b"first\nsecond\n",
        "Logs gave {:?}",
        String::from_utf8_lossy(&out)
    );
    let done = quern_tests::get(&mut client, job.id).await?;
    ensure!(
        done.state == JobState::Succeeded as i32,
        "the job is {:?}",
        done.state()
    );
    Ok(())
}

/// A job whose run_at is far ahead never starts during a test; used to
/// check Logs on a job with no output yet.
#[tokio::test]
async fn logs_of_a_job_that_has_not_run_are_empty() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let mut spec = exec_spec(["echo", "never"]);
    spec.run_at = Some(timestamp(SystemTime::now() + Duration::from_secs(3600)));
    let job = submit(&mut client, spec).await?;
    let out = read_logs(&mut client, job.id, LogStream::Unspecified).await?;
    ensure!(
        out == JobOutput::default(),
        "a job that never ran has output {out:?}"
    );
    Ok(())
}

/// A program that does not exist fails the job with an error naming it,
/// and a missing working directory fails it naming the directory: neither
/// leaves the job stuck or the daemon hurt.
#[tokio::test]
async fn unstartable_jobs_fail_with_the_reason() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let missing = submit(&mut client, exec_spec(["quern-no-such-program", "x"])).await?;
    let done = wait_for_terminal(&mut client, missing.id).await?;
    ensure!(
        done.state == JobState::Failed as i32
            && done.error.contains("quern-no-such-program")
            && done.error.contains("no such executable"),
        "a missing program should fail naming it: {done:?}"
    );
    let mut spec = exec_spec(["true"]);
    let gone = daemon.dir().join("no-such-dir");
    exec_mut(&mut spec).cwd = gone.display().to_string();
    let job = submit(&mut client, spec).await?;
    let done = wait_for_terminal(&mut client, job.id).await?;
    ensure!(
        done.state == JobState::Failed as i32 && done.error.contains("no-such-dir"),
        "a missing cwd should fail naming it: {done:?}"
    );
    // The daemon still runs jobs afterwards.
    let ok = submit(&mut client, exec_spec(["true"])).await?;
    let done = wait_for_terminal(&mut client, ok.id).await?;
    ensure!(done.state == JobState::Succeeded as i32, "{done:?}");
    Ok(())
}

/// The job sees its own argv, with argv[0] as given, and its process is
/// the program itself, not some launcher in between.
#[tokio::test]
async fn the_job_process_is_the_program_with_its_own_argv() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    // argv[0] is "sh" as given (not the resolved /usr/bin/sh), and the
    // process's name is the program's.
    let job = submit(
        &mut client,
        exec_spec([
            "sh",
            "-c",
            "head -c 2 /proc/$$/cmdline; echo; cat /proc/$$/comm; echo \"$0\"",
            "first-arg",
        ]),
    )
    .await?;
    wait_for_terminal(&mut client, job.id).await?;
    let out = read_logs(&mut client, job.id, LogStream::Stdout).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text == "sh\nsh\nfirst-arg\n" || text == "sh\ndash\nfirst-arg\n",
        "unexpected output {text:?}"
    );
    Ok(())
}

/// Following a retried job whose first attempt overflowed the cap still
/// delivers the whole of the second attempt: it is followed from where the
/// first one ended.
#[tokio::test]
async fn logs_follow_carries_on_through_a_retry() -> Result<()> {
    let daemon = TestDaemon::builder()
        .config("log_cap_bytes = 65536")
        .config("retry_base_delay = \"300ms\"")
        .start()
        .await?;
    let mut client = daemon.client();
    let mark = daemon.dir().join("second-attempt");
    let script = format!(
        "if [ -e {m} ]; then seq 100001 104000; else touch {m}; seq 1 20000; exit 1; fi",
        m = mark.display()
    );
    let mut spec = sh(&script);
    spec.max_attempts = 2;
    // Delayed, so the stream is open before the first byte is written.
    spec.run_at = Some(timestamp(SystemTime::now() + Duration::from_millis(500)));
    let job = submit(&mut client, spec).await?;
    let mut logs = open_logs(&mut client, job.id, true, LogStream::Stdout).await?;
    let mut output = JobOutput::default();
    while let Some(chunk) = timeout(quern_tests::WAIT, logs.message())
        .await
        .context("the followed stream did not end")??
    {
        output.stdout.extend_from_slice(&chunk.data);
    }
    let done = wait_for_terminal(&mut client, job.id).await?;
    ensure!(
        done.state == JobState::Succeeded as i32 && done.attempts == 2,
        "{done:?}"
    );
    let second: String = (100001..=104000).map(|n| format!("{n}\n")).collect();
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        text.ends_with(&second) && text.contains("\n20000\n"),
        "the followed output lacks the end of attempt 1 or part of attempt 2 ({} bytes, ends {:?}, {:?} {:?})",
        text.len(),
        &text[text.len().saturating_sub(80)..],
        text.find("100001").map(|i| &text[i.saturating_sub(100)..i]),
        &text[..100]
    );
    Ok(())
}
