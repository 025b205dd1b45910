//! End-to-end tests of `quernctl` against a real `quernd`: each verb is run
//! as a process, and what it prints or exits with is checked against the
//! daemon's own view of the jobs through the gRPC API.

use std::path::Path;
use std::process::{Output, Stdio};

use anyhow::{Context as _, Result, ensure};
use quern_proto::v1::{JobState, job_spec};
use quern_tests::{TestDaemon, WAIT, get, quernctl_bin, stats, wait_for_running};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;
use tokio::time::timeout;

/// A `quernctl` command aimed at `daemon`, run from `cwd`, with nothing
/// from the developer's environment redirecting it.
fn command(daemon: &TestDaemon, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(quernctl_bin());
    cmd.arg("--socket")
        .arg(daemon.socket())
        .args(args)
        .current_dir(cwd)
        .env_remove("QUERN_SOCKET")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `quernctl` to completion from the daemon's temp dir.
async fn quernctl(daemon: &TestDaemon, args: &[&str]) -> Result<Output> {
    run(command(daemon, daemon.dir(), args), args).await
}

async fn run(mut cmd: Command, args: &[&str]) -> Result<Output> {
    timeout(WAIT, cmd.output())
        .await
        .with_context(|| format!("quernctl {args:?} still runs after {WAIT:?}"))?
        .with_context(|| format!("running quernctl {args:?}"))
}

/// Runs `quernctl` and requires it to succeed, returning its stdout.
async fn quernctl_ok(daemon: &TestDaemon, args: &[&str]) -> Result<String> {
    let output = quernctl(daemon, args).await?;
    ensure!(
        output.status.success(),
        "quernctl {args:?} exited with {}; stderr: {}",
        output.status,
        text(&output.stderr)
    );
    Ok(text(&output.stdout))
}

/// Runs `quernctl` and requires it to fail, returning its stderr.
async fn quernctl_err(daemon: &TestDaemon, args: &[&str]) -> Result<String> {
    let output = quernctl(daemon, args).await?;
    ensure!(
        !output.status.success(),
        "quernctl {args:?} succeeded; stdout: {}",
        text(&output.stdout)
    );
    let stderr = text(&output.stderr);
    ensure!(
        stderr.starts_with("quernctl: "),
        "quernctl {args:?} stderr lacks the prefix: {stderr}"
    );
    Ok(stderr)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Submits `argv` with `submit exec` and returns the id it printed.
async fn submit(daemon: &TestDaemon, flags: &[&str], argv: &[&str]) -> Result<u64> {
    let mut args = vec!["submit", "exec"];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(argv);
    let stdout = quernctl_ok(daemon, &args).await?;
    stdout
        .trim_end()
        .parse()
        .with_context(|| format!("submit printed {stdout:?}, not an id"))
}

fn json(stdout: &str) -> Result<Value> {
    serde_json::from_str(stdout).with_context(|| format!("not JSON: {stdout:?}"))
}

#[tokio::test]
async fn submit_json_prints_the_stored_job_and_sends_the_cwd() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let cwd = daemon.dir().join("work");
    std::fs::create_dir(&cwd)?;

    let args = ["--json", "submit", "exec", "--", "true"];
    let output = run(command(&daemon, &cwd, &args), &args).await?;
    ensure!(output.status.success(), "{}", text(&output.stderr));
    let job = json(&text(&output.stdout))?;

    let id = job["id"].as_u64().context("id is a number")?;
    let state = job["state"].as_str().context("state is a string")?;
    ensure!(
        ["queued", "running", "succeeded"].contains(&state),
        "state {state:?}"
    );
    ensure!(
        job["spec"]["exec"]["argv"] == serde_json::json!(["true"]),
        "{job}"
    );

    // The job exists, and runs where quernctl was run.
    let stored = get(&mut client, id).await?;
    let Some(job_spec::Kind::Exec(exec)) = stored.spec.and_then(|spec| spec.kind) else {
        anyhow::bail!("job {id} is not an exec job");
    };
    ensure!(exec.argv == ["true"], "{exec:?}");
    ensure!(
        Path::new(&exec.cwd) == cwd,
        "cwd {:?}, not {cwd:?}",
        exec.cwd
    );
    Ok(())
}

#[tokio::test]
async fn submit_flags_reach_the_daemon() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let flags = [
        "--priority",
        "high",
        "--label",
        "team=infra",
        "--env",
        "GREETING=hi",
        "--timeout",
        "30s",
        "--max-attempts",
        "2",
        "--key",
        "nightly",
        "--in",
        "1h",
    ];
    let id = submit(&daemon, &flags, &["true"]).await?;

    let job = get(&mut client, id).await?;
    ensure!(job.state == JobState::Scheduled as i32, "{job:?}");
    ensure!(job.priority == 10, "high is 10: {job:?}");
    let spec = job.spec.clone().context("job has a spec")?;
    ensure!(
        spec.labels.get("team").map(String::as_str) == Some("infra"),
        "{spec:?}"
    );
    ensure!(spec.max_attempts == 2, "{spec:?}");
    ensure!(spec.idempotency_key == "nightly", "{spec:?}");
    ensure!(spec.timeout.map(|t| t.seconds) == Some(30), "{spec:?}");
    let Some(job_spec::Kind::Exec(exec)) = &spec.kind else {
        anyhow::bail!("not an exec job");
    };
    ensure!(
        exec.env.get("GREETING").map(String::as_str) == Some("hi"),
        "{exec:?}"
    );

    // The same key while the job is unfinished returns the same job.
    let again = submit(&daemon, &["--key", "nightly"], &["true"]).await?;
    ensure!(
        again == id,
        "deduplicated submit returned {again}, not {id}"
    );

    // A scheduled job can be cancelled at once.
    let stdout = quernctl_ok(&daemon, &["cancel", &id.to_string()]).await?;
    ensure!(stdout == format!("job {id} cancelled\n"), "{stdout:?}");
    Ok(())
}

#[tokio::test]
async fn bad_input_shows_the_daemons_message() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    // Zero is a valid duration locally; only the daemon refuses it, naming
    // the field.
    let stderr = quernctl_err(
        &daemon,
        &["submit", "exec", "--timeout", "0s", "--", "true"],
    )
    .await?;
    ensure!(stderr.contains("timeout"), "{stderr}");
    ensure!(stats(&mut daemon.client()).await?.queue_depth == 0);

    let stderr = quernctl_err(&daemon, &["get", "999"]).await?;
    ensure!(stderr.contains("999"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn wait_exits_zero_only_when_every_job_succeeded() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let ok = submit(&daemon, &[], &["true"]).await?;
    let bad = submit(&daemon, &[], &["false"]).await?;

    let stdout = quernctl_ok(&daemon, &["wait", &ok.to_string()]).await?;
    ensure!(stdout == format!("job {ok} succeeded\n"), "{stdout:?}");

    let stderr = quernctl_err(&daemon, &["wait", &bad.to_string()]).await?;
    ensure!(
        stderr == format!("quernctl: not every job succeeded: job {bad} failed\n"),
        "{stderr}"
    );
    let stderr = quernctl_err(&daemon, &["wait", &ok.to_string(), &bad.to_string()]).await?;
    ensure!(stderr.contains(&format!("job {bad} failed")), "{stderr}");
    ensure!(!stderr.contains(&format!("job {ok} ")), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn wait_follows_a_running_job_until_it_finishes() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    // The job blocks opening the fifo until the test writes to it, so it is
    // certainly unfinished when `wait` starts.
    let fifo = daemon.dir().join("release");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU)?;
    let script = format!("read line < '{}'", fifo.display());
    let id = submit(&daemon, &[], &["sh", "-c", &script]).await?;
    wait_for_running(&mut client, id).await?;

    // A wait bounded by a timeout gives up on the still-running job.
    let stderr = quernctl_err(&daemon, &["wait", "--timeout", "300ms", &id.to_string()]).await?;
    ensure!(stderr.contains("timed out"), "{stderr}");

    let args = ["wait", &id.to_string()];
    let waiting = command(&daemon, daemon.dir(), &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Opening for writing blocks until the job has the fifo open to read.
    let mut writer = timeout(WAIT, tokio::fs::OpenOptions::new().write(true).open(&fifo))
        .await
        .context("the job never opened the fifo")??;
    writer.write_all(b"go\n").await?;
    drop(writer);

    let output = timeout(WAIT, waiting.wait_with_output())
        .await
        .context("wait did not return after the job finished")??;
    ensure!(output.status.success(), "{}", text(&output.stderr));
    ensure!(text(&output.stdout) == format!("job {id} succeeded\n"));
    Ok(())
}

#[tokio::test]
async fn logs_split_stdout_and_stderr() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let id = submit(
        &daemon,
        &[],
        &["sh", "-c", "echo out; echo err >&2; printf 'x\\0y'"],
    )
    .await?;
    quernctl_ok(&daemon, &["wait", &id.to_string()]).await?;

    let output = quernctl(&daemon, &["logs", &id.to_string()]).await?;
    ensure!(output.status.success(), "{}", text(&output.stderr));
    // Raw bytes, NUL included.
    ensure!(output.stdout == b"out\nx\0y", "{:?}", text(&output.stdout));
    ensure!(output.stderr == b"err\n", "{:?}", text(&output.stderr));

    // Follow on a finished job prints the same and ends.
    let output = quernctl(&daemon, &["logs", "--follow", &id.to_string()]).await?;
    ensure!(output.status.success(), "{}", text(&output.stderr));
    ensure!(output.stdout == b"out\nx\0y", "{:?}", text(&output.stdout));
    Ok(())
}

#[tokio::test]
async fn logs_follow_streams_output_as_it_is_written() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let fifo = daemon.dir().join("release");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU)?;
    let script = format!("echo first; read line < '{}'; echo second", fifo.display());
    let id = submit(&daemon, &[], &["sh", "-c", &script]).await?;

    let args = ["logs", "--follow", &id.to_string()];
    let mut follow = command(&daemon, daemon.dir(), &args)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(follow.stdout.take().context("piped stdout")?).lines();
    // The first line arrives while the job is still blocked on the fifo,
    // so it was streamed, not read after the job ended.
    let first = timeout(WAIT, lines.next_line())
        .await
        .context("no first line")??;
    ensure!(first.as_deref() == Some("first"), "{first:?}");

    let mut writer = timeout(WAIT, tokio::fs::OpenOptions::new().write(true).open(&fifo))
        .await
        .context("the job never opened the fifo")??;
    writer.write_all(b"go\n").await?;
    drop(writer);

    let second = timeout(WAIT, lines.next_line())
        .await
        .context("no second line")??;
    ensure!(second.as_deref() == Some("second"), "{second:?}");
    // The job is done, so follow ends by itself.
    let end = timeout(WAIT, lines.next_line())
        .await
        .context("follow did not end")??;
    ensure!(end.is_none(), "{end:?}");
    let status = timeout(WAIT, follow.wait())
        .await
        .context("follow did not exit")??;
    ensure!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn list_filters_by_state() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let ok = submit(&daemon, &["--label", "kind=good"], &["true"]).await?;
    let bad = submit(&daemon, &[], &["false"]).await?;
    quernctl_err(&daemon, &["wait", &ok.to_string(), &bad.to_string()]).await?;

    let ids_in = |stdout: &str| -> Vec<String> {
        // Skip the header; the id is the first column.
        stdout
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let stdout = quernctl_ok(&daemon, &["list", "--state", "succeeded"]).await?;
    ensure!(stdout.starts_with("ID "), "{stdout}");
    ensure!(ids_in(&stdout) == [ok.to_string()], "{stdout}");
    let stdout = quernctl_ok(&daemon, &["list", "--state", "failed"]).await?;
    ensure!(ids_in(&stdout) == [bad.to_string()], "{stdout}");
    let stdout = quernctl_ok(&daemon, &["list", "--label", "kind=good"]).await?;
    ensure!(ids_in(&stdout) == [ok.to_string()], "{stdout}");

    let list = json(&quernctl_ok(&daemon, &["--json", "list"]).await?)?;
    let got: Vec<(u64, &str)> = list
        .as_array()
        .context("list --json is an array")?
        .iter()
        .filter_map(|job| Some((job["id"].as_u64()?, job["state"].as_str()?)))
        .collect();
    // Newest first.
    ensure!(got == [(bad, "failed"), (ok, "succeeded")], "{list}");
    Ok(())
}

#[tokio::test]
async fn cancel_stops_a_running_job() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let id = submit(&daemon, &[], &["sleep", "100"]).await?;
    wait_for_running(&mut client, id).await?;

    let stdout = quernctl_ok(&daemon, &["cancel", "--grace", "5s", &id.to_string()]).await?;
    ensure!(stdout == format!("job {id} cancelled\n"), "{stdout:?}");
    let job = get(&mut client, id).await?;
    ensure!(job.state == JobState::Cancelled as i32, "{job:?}");

    let shown = json(&quernctl_ok(&daemon, &["--json", "get", &id.to_string()]).await?)?;
    ensure!(
        shown["id"] == id && shown["state"] == "cancelled",
        "{shown}"
    );

    // A finished job cannot be cancelled again.
    quernctl_err(&daemon, &["cancel", &id.to_string()]).await?;
    let stderr = quernctl_err(&daemon, &["wait", &id.to_string()]).await?;
    ensure!(stderr.contains(&format!("job {id} cancelled")), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn stats_json_counts_by_state() -> Result<()> {
    let daemon = TestDaemon::builder().concurrency(3).start().await?;
    let ok = submit(&daemon, &[], &["true"]).await?;
    quernctl_ok(&daemon, &["wait", &ok.to_string()]).await?;

    let counts = json(&quernctl_ok(&daemon, &["--json", "stats"]).await?)?;
    let want = serde_json::json!({
        "queued": 0,
        "scheduled": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
        "queue_depth": 0,
        "concurrency": 3,
        "fetch_concurrency": 16,
        "last_event_seq": stats(&mut daemon.client()).await?.last_event_seq,
        "hosts": [],
    });
    ensure!(counts == want, "{counts} != {want}");
    Ok(())
}

#[tokio::test]
async fn events_replay_a_jobs_changes_as_json_lines() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let id = submit(&daemon, &[], &["true"]).await?;
    quernctl_ok(&daemon, &["wait", &id.to_string()]).await?;

    // The stream never ends on its own: read until the final state, then
    // stop the process.
    let args = ["--json", "events", "--after", "0", "--job", &id.to_string()];
    let mut events = command(&daemon, daemon.dir(), &args)
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = events.stdout.take().context("piped stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    loop {
        let line = timeout(WAIT, lines.next_line())
            .await
            .with_context(|| format!("no event within {WAIT:?}; seen {seen:?}"))??
            .with_context(|| format!("events ended early; seen {seen:?}"))?;
        let event = json(&line)?;
        ensure!(event["job_id"] == id, "{event}");
        let state = event["state"].as_str().context("state")?.to_owned();
        let seq = event["seq"].as_u64().context("seq")?;
        seen.push((seq, state.clone()));
        if state == "succeeded" {
            break;
        }
    }
    events.kill().await?;

    let states: Vec<&str> = seen.iter().map(|(_, state)| state.as_str()).collect();
    ensure!(states == ["queued", "running", "succeeded"], "{seen:?}");
    ensure!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "seq not increasing: {seen:?}"
    );
    Ok(())
}

/// `prune --keep` removes the oldest finished jobs with their logs, never
/// an unfinished one; `--dry-run` first says so and removes nothing.
#[tokio::test]
async fn prune_removes_the_oldest_finished_jobs_and_their_logs() -> Result<()> {
    let daemon = TestDaemon::builder().concurrency(1).start().await?;
    let mut client = daemon.client();
    let mut done = Vec::new();
    for i in 0..3 {
        let job =
            quern_tests::submit(&mut client, quern_tests::sh(&format!("echo out-{i}"))).await?;
        quern_tests::wait_for_terminal(&mut client, job.id).await?;
        done.push(job.id);
    }
    let sleeper =
        quern_tests::submit(&mut client, quern_tests::exec_spec(["sleep", "600"])).await?;
    wait_for_running(&mut client, sleeper.id).await?;
    let log_dir = daemon.state_dir().join("logs");
    let first_log = log_dir.join(format!("{}.out", done[0]));
    ensure!(first_log.exists(), "job {} wrote no log file", done[0]);

    let dry = quernctl_ok(&daemon, &["prune", "--keep", "1", "--dry-run"]).await?;
    ensure!(
        dry.starts_with("would remove 2 finished jobs, ") && dry.ends_with(" of logs\n"),
        "{dry}"
    );
    ensure!(
        get(&mut client, done[0]).await.is_ok(),
        "a dry run removed a job"
    );

    let out = quernctl_ok(&daemon, &["--json", "prune", "--keep", "1"]).await?;
    let pruned = json(&out)?;
    ensure!(
        pruned["jobs"] == 2 && pruned["dry_run"] == false,
        "{pruned}"
    );
    // Each job printed "out-N\n": 6 bytes of stdout.
    ensure!(pruned["log_bytes"] == 12, "{pruned}");
    for id in &done[..2] {
        let gone = get(&mut client, *id).await;
        ensure!(gone.is_err(), "job {id} is still there: {gone:?}");
    }
    ensure!(
        !first_log.exists(),
        "{} is left behind",
        first_log.display()
    );
    ensure!(
        get(&mut client, done[2]).await.is_ok(),
        "the newest finished job stays"
    );
    let running = get(&mut client, sleeper.id).await?;
    ensure!(running.state == JobState::Running as i32, "{running:?}");

    let err = quernctl_err(&daemon, &["prune", "--older-than", "soon"]).await?;
    ensure!(err.contains("--older-than"), "{err}");
    Ok(())
}
