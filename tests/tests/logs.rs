//! End-to-end tests of captured output: what `Logs` and `quernctl logs`
//! tell a reader about bytes the daemon dropped, and how they end.

use std::process::Stdio;

use anyhow::{Context as _, Result, bail, ensure};
use quern_proto::v1::{JobState, LogStream, LogsRequest, LogsResponse};
use quern_tests::{TestDaemon, WAIT, exec_spec, quernctl_bin, submit, wait_for_terminal};
use tokio::io::AsyncReadExt as _;
use tokio::process::Command;
use tokio::time::timeout;

/// The cap the tests run with: small, so a few MB of output wrap it often.
const CAP: u64 = 1 << 20;

async fn daemon() -> Result<TestDaemon> {
    TestDaemon::builder()
        .config(format!("log_cap_bytes = {CAP}"))
        .start()
        .await
}

/// What `seq 1 n` prints.
fn seq(n: u64) -> Vec<u8> {
    (1..=n)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

/// `quernctl logs ID [flags]` aimed at `daemon`, its stdout piped.
fn quernctl_logs(daemon: &TestDaemon, id: u64, flags: &[&str]) -> Command {
    let mut cmd = Command::new(quernctl_bin());
    cmd.arg("--socket")
        .arg(daemon.socket())
        .arg("logs")
        .arg(id.to_string())
        .args(flags)
        .env_remove("QUERN_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Checks what `quernctl logs` printed for `seq 1 n`: every line is the
/// number after the one before, except right after a marker line; a
/// number is never spliced; the last is `n`. The line before a marker may
/// be cut short (the rest of it was dropped), but only cut. Returns how
/// many markers.
fn check_seq_with_markers(out: &str, n: u64) -> Result<usize> {
    let is_marker = |l: &str| l.starts_with("[quern: ") && l.ends_with(" skipped]");
    let lines: Vec<&str> = out.lines().collect();
    let mut prev = 0u64;
    let mut after_marker = false;
    let mut markers = 0;
    for (i, line) in lines.iter().enumerate() {
        if is_marker(line) {
            ensure!(!after_marker, "two markers in a row");
            after_marker = true;
            markers += 1;
            continue;
        }
        let before_marker = lines.get(i + 1).is_some_and(|l| is_marker(l));
        let next = (prev + 1).to_string();
        if before_marker && !after_marker && next.starts_with(line) && *line != next {
            // A line cut by the gap that follows.
            continue;
        }
        let v: u64 = line
            .parse()
            .with_context(|| format!("line {line:?} after {prev} is not a number"))?;
        if after_marker {
            ensure!(v > prev + 1, "a marker after {prev} skipped nothing: {v}");
        } else {
            ensure!(v == prev + 1, "{v} follows {prev} without a marker");
        }
        after_marker = false;
        prev = v;
    }
    ensure!(prev == n, "the output ends at {prev}, not {n}");
    Ok(markers)
}

/// The case: `quernctl logs -f` on a job printing ~20 MB, with a
/// reader that takes nothing until the job has finished. It gets a marker
/// line for each gap, whole lines after each, and the end of the output.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_follower_gets_markers_and_whole_lines() -> Result<()> {
    let daemon = daemon().await?;
    let mut client = daemon.client();
    let n = 3_000_000;
    let job = submit(&mut client, exec_spec(["seq", "1", &n.to_string()])).await?;
    let mut follower = quernctl_logs(&daemon, job.id, &["-f"]).spawn()?;
    // Nobody reads quernctl's stdout until the job is done: it blocks on
    // the pipe, and the daemon's follower falls behind.
    let done = wait_for_terminal(&mut client, job.id).await?;
    ensure!(
        done.state == JobState::Succeeded as i32,
        "job ended {done:?}"
    );
    let mut out = String::new();
    let mut stdout = follower.stdout.take().context("no stdout")?;
    timeout(WAIT, stdout.read_to_string(&mut out))
        .await
        .context("quernctl logs -f did not end after the job")??;
    let status = follower.wait().await?;
    ensure!(status.success(), "quernctl logs -f exited {status}");
    let markers = check_seq_with_markers(&out, n)?;
    ensure!(markers >= 1, "no gap marker in {} bytes", out.len());
    Ok(())
}

/// All messages of one Logs call.
async fn logs(daemon: &TestDaemon, req: LogsRequest) -> Result<Vec<LogsResponse>> {
    let mut client = daemon.client();
    let mut stream = client.logs(req).await?.into_inner();
    let mut all = Vec::new();
    while let Some(m) = stream.message().await? {
        all.push(m);
    }
    Ok(all)
}

/// A finished job whose output passed the cap: Logs says how many bytes
/// were dropped before the first one it sends, and the rest adds up.
#[tokio::test(flavor = "multi_thread")]
async fn logs_of_a_capped_job_say_what_was_dropped() -> Result<()> {
    let daemon = daemon().await?;
    let mut client = daemon.client();
    let n = 500_000;
    let job = submit(&mut client, exec_spec(["seq", "1", &n.to_string()])).await?;
    wait_for_terminal(&mut client, job.id).await?;
    let all = seq(n);
    let msgs = logs(
        &daemon,
        LogsRequest {
            job_id: job.id,
            stream: LogStream::Stdout as i32,
            ..LogsRequest::default()
        },
    )
    .await?;
    let Some(first) = msgs.first() else {
        bail!("no output came back")
    };
    ensure!(
        first.skipped_bytes > all.len() as u64 - CAP,
        "{} skipped",
        first.skipped_bytes
    );
    ensure!(
        first.offset == first.skipped_bytes,
        "first offset {}",
        first.offset
    );
    let mut at = 0;
    for m in &msgs {
        ensure!(
            m.offset == at + m.skipped_bytes,
            "message at {} after {at}",
            m.offset
        );
        let start = usize::try_from(m.offset)?;
        ensure!(
            m.data == all[start..start + m.data.len()],
            "bytes at {start} differ"
        );
        at = m.offset + m.data.len() as u64;
    }
    ensure!(at == all.len() as u64, "the output ends at {at}");
    Ok(())
}

/// `quernctl logs` without follow pages through output larger than one
/// response may carry (4 MiB), and prints all of it, byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn quernctl_logs_pages_through_large_output() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let n = 1_000_000;
    let job = submit(&mut client, exec_spec(["seq", "1", &n.to_string()])).await?;
    wait_for_terminal(&mut client, job.id).await?;
    let out = timeout(WAIT, quernctl_logs(&daemon, job.id, &[]).output())
        .await
        .context("quernctl logs hung")??;
    ensure!(out.status.success(), "quernctl logs exited {}", out.status);
    let all = seq(n);
    ensure!(all.len() > 4 << 20, "the output fits in one page");
    ensure!(
        out.stdout == all,
        "printed {} bytes of {}",
        out.stdout.len(),
        all.len()
    );
    Ok(())
}

/// `quernctl logs -f` whose daemon goes away, by SIGTERM or by kill -9,
/// exits non-zero and says the output stopped short.
#[tokio::test(flavor = "multi_thread")]
async fn quernctl_logs_follow_fails_when_the_daemon_goes() -> Result<()> {
    for kill9 in [false, true] {
        let mut daemon = daemon().await?;
        let mut client = daemon.client();
        let job = submit(&mut client, quern_tests::sh("echo started; exec sleep 600")).await?;
        let mut follower = quernctl_logs(&daemon, job.id, &["-f"]).spawn()?;
        // The first line shows the follower is following.
        let mut stdout = follower.stdout.take().context("no stdout")?;
        let mut first = [0u8; 8];
        timeout(WAIT, stdout.read_exact(&mut first))
            .await
            .context("no output reached quernctl logs -f")??;
        ensure!(&first == b"started\n", "got {first:?}");
        if kill9 {
            daemon.kill9().await?;
        } else {
            daemon.stop().await?;
        }
        let out = timeout(WAIT, follower.wait_with_output())
            .await
            .context("quernctl logs -f outlived its daemon")??;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "exited {} (kill9: {kill9})",
            out.status
        );
        ensure!(
            stderr.contains(&format!(
                "the output of job {} stopped before its end",
                job.id
            )),
            "stderr: {stderr}"
        );
    }
    Ok(())
}

/// Unmounts a file system the test mounted, after the daemon using it has
/// gone (declare it before the daemon).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A job whose output fills the disk of the log directory (a 1 MiB tmpfs)
/// succeeds all the same: its output is truncated, with a marker line
/// where it stops. Needs root to mount.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_output_fills_the_disk_still_succeeds() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tiny tmpfs for the log directory needs root");
        return Ok(());
    }
    let prepared = TestDaemon::builder().prepare()?;
    let logs_dir = prepared.state_dir().join("logs");
    std::fs::create_dir(&logs_dir)?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(&logs_dir)
        .status()?;
    if !mounted.success() {
        eprintln!("skipped: cannot mount a tmpfs here ({mounted}), though root");
        return Ok(());
    }
    let _unmount = Mounted(logs_dir.clone());
    let daemon = prepared.start().await?;
    let mut client = daemon.client();
    let n = 1_000_000;
    let job = submit(&mut client, exec_spec(["seq", "1", &n.to_string()])).await?;
    let done = wait_for_terminal(&mut client, job.id).await?;
    ensure!(
        done.state == JobState::Succeeded as i32,
        "the job ended {:?}: {}",
        done.state(),
        done.error
    );
    let out = quern_tests::read_logs(&mut client, job.id, LogStream::Stdout).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tail = &text[text.len().saturating_sub(200)..];
    ensure!(
        tail.ends_with("[quern: output truncated: No space left on device (os error 28)]\n"),
        "no marker at the end: {tail:?}"
    );
    ensure!(text.starts_with("1\n2\n3\n"), "the start is lost");
    ensure!(
        out.stdout.len() <= 1 << 20,
        "{} bytes on a 1 MiB disk",
        out.stdout.len()
    );
    Ok(())
}
