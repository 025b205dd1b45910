//! End-to-end tests of the `quernctl` verbs for fetch jobs and `follow`,
//! against a real `quernd`: what `submit fetch` sends is read back through
//! the gRPC API, refusals exit non-zero with their message and submit
//! nothing, `result` explains a job that has none, and `follow` streams a
//! job until it ends and exits with its outcome.
//!
//! No test here needs a download to succeed: the URLs point at 127.0.0.1
//! ports where nothing listens, or at jobs scheduled an hour ahead, so the
//! tests hold whether or not this build of quernd runs fetch jobs.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::{Output, Stdio};

use anyhow::{Context as _, Result, bail, ensure};
use quern_proto::v1::{FetchOverwrite, FetchSpec, Job, JobState, job_spec};
use quern_tests::{TestDaemon, WAIT, get, quernctl_bin, stats, wait_for_running};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;
use tokio::time::timeout;

/// A URL on 127.0.0.1 where nothing listens (port 1 is reserved for
/// tcpmux, which no test machine runs), so a fetch of it fails at connect.
const DEAD_URL: &str = "http://127.0.0.1:1/files/report.csv";

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

async fn run(mut cmd: Command, args: &[&str]) -> Result<Output> {
    timeout(WAIT, cmd.output())
        .await
        .with_context(|| format!("quernctl {args:?} still runs after {WAIT:?}"))?
        .with_context(|| format!("running quernctl {args:?}"))
}

/// Runs `quernctl` from `cwd` and requires it to succeed; returns stdout.
async fn ok_in(daemon: &TestDaemon, cwd: &Path, args: &[&str]) -> Result<String> {
    let output = run(command(daemon, cwd, args), args).await?;
    ensure!(
        output.status.success(),
        "quernctl {args:?} exited with {}; stderr: {}",
        output.status,
        text(&output.stderr)
    );
    Ok(text(&output.stdout))
}

/// Runs `quernctl` from `cwd` and requires it to fail with exit code 1 or
/// 2 and a `quernctl: ` message; returns stderr.
async fn err_in(daemon: &TestDaemon, cwd: &Path, args: &[&str]) -> Result<String> {
    let output = run(command(daemon, cwd, args), args).await?;
    ensure!(
        matches!(output.status.code(), Some(1 | 2)),
        "quernctl {args:?} exited with {}, not 1 or 2; stdout: {}",
        output.status,
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

fn id_of(stdout: &str) -> Result<u64> {
    stdout
        .trim_end()
        .parse()
        .with_context(|| format!("submit printed {stdout:?}, not an id"))
}

/// The fetch spec of a stored job.
fn fetch_of(job: &Job) -> Result<&FetchSpec> {
    match job.spec.as_ref().and_then(|spec| spec.kind.as_ref()) {
        Some(job_spec::Kind::Fetch(fetch)) => Ok(fetch),
        other => bail!("job {} is not a fetch job: {other:?}", job.id),
    }
}

/// A directory under the daemon's temp dir to run quernctl from, so that
/// relative paths have a known base.
fn workdir(daemon: &TestDaemon) -> Result<std::path::PathBuf> {
    let cwd = daemon.dir().join("work");
    std::fs::create_dir_all(&cwd)?;
    Ok(cwd)
}

#[tokio::test]
async fn submit_fetch_sends_every_flag_and_absolute_paths() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let cwd = workdir(&daemon)?;
    std::fs::create_dir(cwd.join("out"))?;
    let digest = "AB".repeat(32);

    let args = [
        "submit",
        "fetch",
        "--dest",
        "out/data.bin",
        "--sha256",
        &digest,
        "--header",
        "Accept: application/octet-stream",
        "-H",
        "X-Trace:  abc ",
        "--header",
        "Accept: */*",
        "--max-bytes",
        "2KiB",
        "--overwrite",
        "error",
        "--priority",
        "high",
        "--label",
        "batch=9",
        "--max-attempts",
        "4",
        "--timeout",
        "90s",
        "--key",
        "nightly-data",
        // An hour ahead, so the job stays as submitted for the whole test.
        "--in",
        "1h",
        DEAD_URL,
    ];
    let id = id_of(&ok_in(&daemon, &cwd, &args).await?)?;

    // The daemon's own view of the job, through the API.
    let job = get(&mut client, id).await?;
    let fetch = fetch_of(&job)?;
    ensure!(fetch.url == DEAD_URL, "{fetch:?}");
    ensure!(
        Path::new(&fetch.dest) == cwd.join("out/data.bin"),
        "dest {:?} is not absolute against the cwd {cwd:?}",
        fetch.dest
    );
    // The daemon stores the digest lowercase.
    ensure!(fetch.sha256 == digest.to_ascii_lowercase(), "{fetch:?}");
    let headers: Vec<(&str, &str)> = fetch
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_str()))
        .collect();
    ensure!(
        headers
            == [
                ("Accept", "application/octet-stream"),
                ("X-Trace", "abc"),
                ("Accept", "*/*"),
            ],
        "{headers:?}"
    );
    ensure!(fetch.max_bytes == Some(2048), "{fetch:?}");
    ensure!(fetch.overwrite == FetchOverwrite::Error as i32, "{fetch:?}");
    ensure!(!fetch.retry_unsafe, "{fetch:?}");
    ensure!(
        fetch.method.is_empty() || fetch.method == "GET",
        "{fetch:?}"
    );
    let spec = job.spec.as_ref().context("spec")?;
    ensure!(job.priority == 10, "priority {}", job.priority);
    ensure!(spec.labels.get("batch").map(String::as_str) == Some("9"));
    ensure!(spec.max_attempts == 4, "{spec:?}");
    ensure!(spec.timeout.map(|t| t.seconds) == Some(90), "{spec:?}");
    ensure!(spec.idempotency_key == "nightly-data", "{spec:?}");
    ensure!(job.state == JobState::Scheduled as i32, "{job:?}");

    // `get --json` shows the same spec, with the proto's field names.
    let shown: Value =
        serde_json::from_str(&ok_in(&daemon, &cwd, &["--json", "get", &id.to_string()]).await?)?;
    let want = json!({
        "url": DEAD_URL,
        "dest": cwd.join("out/data.bin").to_str().context("utf-8 temp dir")?,
        "sha256": digest.to_ascii_lowercase(),
        "headers": [
            { "name": "Accept", "value": "application/octet-stream" },
            { "name": "X-Trace", "value": "abc" },
            { "name": "Accept", "value": "*/*" },
        ],
        "max_bytes": 2048,
        "overwrite": "error",
        // The daemon stores the method it resolved, GET.
        "method": fetch.method,
        "body_file": "",
        "retry_unsafe": false,
    });
    ensure!(shown["spec"]["fetch"] == want, "{}", shown["spec"]["fetch"]);
    ensure!(shown["result"] == Value::Null, "{shown}");
    ensure!(shown["wait_reason"] == "", "{shown}");

    // `list` shows what the job does in its command column.
    let listed = ok_in(&daemon, &cwd, &["list"]).await?;
    let dest = cwd.join("out/data.bin");
    ensure!(
        listed.contains(&format!("GET {DEAD_URL} -> {}", dest.display())),
        "{listed}"
    );
    Ok(())
}

#[tokio::test]
async fn submit_fetch_names_the_file_after_the_url_or_discards_the_body() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let cwd = workdir(&daemon)?;

    // A GET without --dest: the decoded last segment, in the cwd; the query
    // plays no part.
    let url = "http://127.0.0.1:1/exports/2030/data%20set.csv?sig=a/b.txt";
    let id = id_of(&ok_in(&daemon, &cwd, &["submit", "fetch", "--in", "1h", url]).await?)?;
    let job = get(&mut client, id).await?;
    let fetch = fetch_of(&job)?;
    ensure!(
        Path::new(&fetch.dest) == cwd.join("data set.csv"),
        "dest {:?}",
        fetch.dest
    );
    // No method was given: the daemon's default, which it may store as "".
    ensure!(
        fetch.method.is_empty() || fetch.method == "GET",
        "{fetch:?}"
    );

    // A POST without --dest sends the body file, by its absolute path, and
    // keeps no answer.
    std::fs::write(cwd.join("event.json"), b"{}")?;
    let args = [
        "submit",
        "fetch",
        "-X",
        "post",
        "--body-file",
        "event.json",
        "--retry-unsafe",
        "--in",
        "1h",
        "http://127.0.0.1:1/hooks/",
    ];
    let id = id_of(&ok_in(&daemon, &cwd, &args).await?)?;
    let job = get(&mut client, id).await?;
    let fetch = fetch_of(&job)?;
    ensure!(fetch.method.eq_ignore_ascii_case("POST"), "{fetch:?}");
    ensure!(fetch.dest.is_empty(), "{fetch:?}");
    ensure!(
        Path::new(&fetch.body_file) == cwd.join("event.json"),
        "{fetch:?}"
    );
    ensure!(fetch.retry_unsafe, "{fetch:?}");
    Ok(())
}

#[tokio::test]
async fn submit_fetch_refusals_exit_non_zero_and_submit_nothing() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let cwd = workdir(&daemon)?;
    std::fs::write(cwd.join("body"), b"x")?;

    // (arguments, words the message must contain). The first ones are
    // refused by quernctl, the last ones by the daemon, whose message
    // quernctl shows as it is.
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["http://127.0.0.1:1/dir/"],
            &["cannot name the file", "pass --dest PATH"],
        ),
        (&["http://127.0.0.1:1"], &["pass --dest PATH"]),
        (
            &["http://127.0.0.1:1/a%2Fb"],
            &["has a '/'", "pass --dest PATH"],
        ),
        (&["ftp://127.0.0.1/f"], &["scheme \"ftp\" is not supported"]),
        (
            &["--max-bytes", "0", DEAD_URL],
            &["--max-bytes", "limit of 0 bytes"],
        ),
        (
            &["--header", "no colon here", DEAD_URL],
            &["--header", "expected NAME: VALUE"],
        ),
        (
            &["--overwrite", "sometimes", DEAD_URL],
            &["--overwrite", "replace, skip, error"],
        ),
        (&["--sha256", "abc", DEAD_URL], &[".fetch.sha256", "64 hex"]),
        (
            &["--body-file", "body", DEAD_URL],
            &[".fetch.body_file", "not allowed with GET"],
        ),
        (
            &["-X", "TRACE", DEAD_URL],
            &[".fetch.method", "not supported"],
        ),
        (&["--dest", "dir/", DEAD_URL], &[".fetch.dest", "directory"]),
    ];
    for (flags, words) in cases {
        let mut args = vec!["submit", "fetch"];
        args.extend_from_slice(flags);
        let stderr = err_in(&daemon, &cwd, &args).await?;
        for word in *words {
            ensure!(stderr.contains(word), "{args:?}: {stderr}");
        }
    }
    let counts = stats(&mut client).await?;
    let total = counts.queued
        + counts.scheduled
        + counts.running
        + counts.succeeded
        + counts.failed
        + counts.cancelled;
    ensure!(total == 0, "refused submits stored jobs: {counts:?}");
    Ok(())
}

#[tokio::test]
async fn result_of_a_job_without_one_says_why_and_fails() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let cwd = workdir(&daemon)?;

    // A fetch that has not run yet.
    let id = id_of(&ok_in(&daemon, &cwd, &["submit", "fetch", "--in", "1h", DEAD_URL]).await?)?;
    let stderr = err_in(&daemon, &cwd, &["result", &id.to_string()]).await?;
    ensure!(
        stderr.contains(&format!("job {id} has no result yet: it is scheduled")),
        "{stderr}"
    );

    // A fetch that failed: nothing listens on the port.
    let id = id_of(&ok_in(&daemon, &cwd, &["submit", "fetch", DEAD_URL]).await?)?;
    let job = quern_tests::wait_for_terminal(&mut client, id).await?;
    ensure!(job.state == JobState::Failed as i32, "{job:?}");
    for args in [
        &["result", &id.to_string()][..],
        &["--json", "result", &id.to_string()][..],
    ] {
        let stderr = err_in(&daemon, &cwd, args).await?;
        ensure!(
            stderr.contains(&format!(
                "job {id} has no result: it failed ({})",
                job.error
            )),
            "{stderr}"
        );
    }

    // An exec job, which never has one.
    let id = id_of(&ok_in(&daemon, &cwd, &["submit", "exec", "--", "true"]).await?)?;
    quern_tests::wait_for_terminal(&mut client, id).await?;
    let stderr = err_in(&daemon, &cwd, &["result", &id.to_string()]).await?;
    ensure!(
        stderr.contains(&format!("job {id} is an exec job, which reports no result")),
        "{stderr}"
    );

    // An unknown job is the daemon's NOT_FOUND.
    let stderr = err_in(&daemon, &cwd, &["result", "999999"]).await?;
    ensure!(stderr.contains("999999"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn follow_streams_a_commands_output_and_exits_zero_when_it_succeeds() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let cwd = workdir(&daemon)?;
    let fifo = daemon.dir().join("release");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU)?;
    let script = format!(
        "echo first; read line < '{}'; echo second; echo oops >&2",
        fifo.display()
    );
    let id = id_of(
        &ok_in(
            &daemon,
            &cwd,
            &["submit", "exec", "--", "sh", "-c", &script],
        )
        .await?,
    )?;

    let args = ["follow", &id.to_string()];
    let mut follow = command(&daemon, &cwd, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(follow.stdout.take().context("piped stdout")?).lines();
    let stderr = follow.stderr.take().context("piped stderr")?;
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let mut reader = BufReader::new(stderr);
        tokio::io::AsyncReadExt::read_to_string(&mut reader, &mut text)
            .await
            .map(|_| text)
    });

    // The first line arrives while the job is blocked on the fifo, so it
    // was streamed, not read after the job ended.
    let first = timeout(WAIT, lines.next_line())
        .await
        .context("no first line")??;
    ensure!(first.as_deref() == Some("first"), "{first:?}");
    let mut writer = timeout(WAIT, tokio::fs::OpenOptions::new().write(true).open(&fifo))
        .await
        .context("the job never opened the fifo")??;
    writer.write_all(b"go\n").await?;
    drop(writer);

    // stdout carries the job's stdout and nothing else.
    let second = timeout(WAIT, lines.next_line())
        .await
        .context("no second line")??;
    ensure!(second.as_deref() == Some("second"), "{second:?}");
    let end = timeout(WAIT, lines.next_line())
        .await
        .context("follow did not end")??;
    ensure!(end.is_none(), "{end:?}");
    let status = timeout(WAIT, follow.wait())
        .await
        .context("follow did not exit")??;
    let stderr = timeout(WAIT, stderr)
        .await
        .context("stderr never closed")???;
    ensure!(status.success(), "{status}; stderr: {stderr}");

    // stderr has the job's stderr and the state changes.
    ensure!(stderr.contains("oops\n"), "{stderr}");
    ensure!(
        stderr.contains(&format!("quernctl: job {id} running")),
        "{stderr}"
    );
    ensure!(
        stderr.contains(&format!("quernctl: job {id} succeeded")),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn follow_exits_one_with_the_error_when_the_job_fails() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let cwd = workdir(&daemon)?;

    // A command that fails.
    let id = id_of(
        &ok_in(
            &daemon,
            &cwd,
            &["submit", "exec", "--", "sh", "-c", "echo done; exit 3"],
        )
        .await?,
    )?;
    let args = ["follow", &id.to_string()];
    let output = run(command(&daemon, &cwd, &args), &args).await?;
    ensure!(output.status.code() == Some(1), "{}", output.status);
    ensure!(text(&output.stdout) == "done\n", "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    ensure!(
        stderr.ends_with(&format!("quernctl: job {id} failed: exited with code 3\n")),
        "{stderr}"
    );

    // A fetch that fails: nothing listens. stdout is a pipe, so the view is
    // plain lines, ending with the failed state.
    let id = id_of(&ok_in(&daemon, &cwd, &["submit", "fetch", DEAD_URL]).await?)?;
    let args = ["follow", &id.to_string()];
    let output = run(command(&daemon, &cwd, &args), &args).await?;
    ensure!(output.status.code() == Some(1), "{}", output.status);
    let stdout = text(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    ensure!(
        last.starts_with(&format!("job {id} failed")),
        "last line {last:?} of {stdout:?}"
    );
    // No terminal control sequences in a pipe.
    ensure!(!stdout.contains('\x1b'), "{stdout:?}");
    let stderr = text(&output.stderr);
    ensure!(
        stderr.starts_with(&format!("quernctl: job {id} failed: ")),
        "{stderr}"
    );

    // `follow --json` gives the same story as event objects.
    let args = ["--json", "follow", &id.to_string()];
    let output = run(command(&daemon, &cwd, &args), &args).await?;
    ensure!(output.status.code() == Some(1), "{}", output.status);
    let stdout = text(&output.stdout);
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .with_context(|| format!("not JSON lines: {stdout:?}"))?;
    ensure!(last["job_id"] == id && last["state"] == "failed", "{last}");
    Ok(())
}

#[tokio::test]
async fn follow_fails_when_the_daemon_goes_away() -> Result<()> {
    let mut daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let cwd = workdir(&daemon)?;
    let fifo = daemon.dir().join("release");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU)?;
    let script = format!("echo first; read line < '{}'", fifo.display());
    let id = id_of(
        &ok_in(
            &daemon,
            &cwd,
            &["submit", "exec", "--", "sh", "-c", &script],
        )
        .await?,
    )?;
    wait_for_running(&mut client, id).await?;

    let args = ["follow", &id.to_string()];
    let mut follow = command(&daemon, &cwd, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(follow.stdout.take().context("piped stdout")?).lines();
    // follow is attached once the job's output reaches it.
    let first = timeout(WAIT, lines.next_line())
        .await
        .context("no first line")??;
    ensure!(first.as_deref() == Some("first"), "{first:?}");

    daemon.kill9().await?;
    let output = timeout(WAIT, follow.wait_with_output())
        .await
        .context("follow still runs after the daemon died")??;
    ensure!(!output.status.success(), "{}", output.status);
    let stderr = text(&output.stderr);
    ensure!(stderr.contains("quernctl: "), "{stderr}");

    // Release the job if it outlived the daemon and still waits on the
    // fifo. The open does not block: with no reader left it fails, and
    // then there is nothing to release.
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&fifo);
    if let Ok(mut writer) = writer {
        std::io::Write::write_all(&mut writer, b"go\n")?;
    }
    Ok(())
}
