//! End-to-end tests of start-up safety: a corrupt store is refused and left
//! untouched, a live socket is never stolen, a stale one is replaced.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};

use anyhow::{Context as _, Result, ensure};
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{JobState, StatsRequest};
use quern_tests::{TestDaemon, exec_spec, get, submit, wait_for_terminal};

/// A `quern.redb` full of garbage makes quernd exit non-zero, naming the
/// file, without modifying it.
#[tokio::test]
async fn corrupt_store_is_refused_and_left_untouched() -> Result<()> {
    let prepared = TestDaemon::builder().prepare()?;
    let store = prepared.state_dir().join("quern.redb");
    // Not a redb header, and long enough to look like a real file.
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&store, &garbage)?;

    let output = prepared.run_to_exit().await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success(),
        "quernd started on a corrupt store; stderr:\n{stderr}"
    );
    ensure!(
        stderr.contains(&store.display().to_string()),
        "stderr does not name {}:\n{stderr}",
        store.display()
    );
    ensure!(
        std::fs::read(&store)? == garbage,
        "quernd modified the corrupt store file"
    );
    Ok(())
}

/// A second quernd on a socket where the first is serving exits non-zero
/// naming the socket, and the first keeps serving on it.
#[tokio::test]
async fn second_daemon_on_a_live_socket_exits_and_the_first_keeps_serving() -> Result<()> {
    let first = TestDaemon::start().await?;
    let mut client = first.client();
    let job = submit(&mut client, exec_spec(["true"])).await?;

    // Its own state dir, so the socket is the only thing they share.
    let second = TestDaemon::builder().socket(first.socket()).prepare()?;
    let output = second.run_to_exit().await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success(),
        "a second quernd started on a live socket:\n{stderr}"
    );
    ensure!(
        stderr.contains(&first.socket().display().to_string()),
        "stderr does not name the socket {}:\n{stderr}",
        first.socket().display()
    );

    // A new connection, not the old one: an unlinked or replaced socket file
    // would leave existing connections working but refuse new ones.
    let channel = quern_proto::connect(first.socket()).await?;
    let mut fresh = JobsClient::new(channel);
    fresh.stats(StatsRequest {}).await?;
    let done = wait_for_terminal(&mut fresh, job.id).await?;
    ensure!(
        done.state == JobState::Succeeded as i32,
        "job ended {:?}",
        done.state()
    );
    Ok(())
}

/// After kill -9 the socket file is left behind; a new start replaces it.
#[tokio::test]
async fn stale_socket_is_replaced() -> Result<()> {
    let mut daemon = TestDaemon::start().await?;
    let job = submit(&mut daemon.client(), exec_spec(["true"])).await?;
    daemon.kill9().await?;
    ensure!(
        std::fs::symlink_metadata(daemon.socket())?
            .file_type()
            .is_socket(),
        "precondition: kill -9 should leave the socket file behind"
    );
    daemon.restart().await?;
    get(&mut daemon.client(), job.id).await?;
    Ok(())
}

/// An unknown config key is an error: quernd exits non-zero naming the
/// key, and `TestDaemon` reports that it exited before READY, with its
/// output.
#[tokio::test]
async fn unknown_config_key_is_refused() -> Result<()> {
    let builder = TestDaemon::builder().config("no_such_key = 1");
    let output = builder.clone().prepare()?.run_to_exit().await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success(),
        "quernd accepted an unknown key:\n{stderr}"
    );
    ensure!(
        stderr.contains("no_such_key"),
        "stderr does not name the key:\n{stderr}"
    );

    let err = builder.start().await.expect_err("start must fail");
    let report = format!("{err:#}");
    ensure!(
        report.contains("before sending READY=1") && report.contains("no_such_key"),
        "start() should say quernd exited early and show its output: {report}"
    );
    Ok(())
}

/// Dropping a `TestDaemon` kills and reaps the daemon.
#[tokio::test]
async fn drop_kills_the_daemon() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let proc_dir = format!("/proc/{}", daemon.pid());
    drop(daemon);
    // Reaped, not just killed: a zombie would still have a /proc entry.
    ensure!(
        !std::path::Path::new(&proc_dir).exists(),
        "quernd outlived its TestDaemon"
    );
    Ok(())
}

/// The socket is private to the user: mode 0600.
#[tokio::test]
async fn socket_is_mode_0600() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mode = std::fs::metadata(daemon.socket())?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "socket mode is {mode:o}, expected 600");
    Ok(())
}

/// What the daemon stores (the queue with its argv and env, and the jobs'
/// output) is private to the user even under a permissive umask.
#[tokio::test]
async fn stored_state_is_private_to_the_user() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let job = submit(&mut client, exec_spec(["echo", "secret output"])).await?;
    let done = wait_for_terminal(&mut client, job.id).await?;
    ensure!(done.state == JobState::Succeeded as i32, "{done:?}");
    let mode = |p: std::path::PathBuf| -> Result<u32> {
        Ok(std::fs::metadata(&p)?.permissions().mode() & 0o777)
    };
    let state = daemon.state_dir().to_path_buf();
    let logs = state.join("logs");
    let log = std::fs::read_dir(&logs)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{}.", job.id)))
        })
        .ok_or_else(|| anyhow::anyhow!("no log file for job {} in {}", job.id, logs.display()))?;
    for (path, want) in [
        (state.join("quern.redb"), 0o600),
        (logs.clone(), 0o700),
        (log, 0o600),
    ] {
        let got = mode(path.clone())?;
        ensure!(
            got == want,
            "{} has mode {got:o}, expected {want:o}",
            path.display()
        );
    }
    Ok(())
}

/// A client that keeps a stream open which the daemon does not end itself
/// (a health Watch) cannot hold a shutdown: SIGTERM still stops quernd,
/// cleanly, within the test's wait.
#[tokio::test]
async fn sigterm_stops_the_daemon_while_a_client_watches_health() -> Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut daemon = TestDaemon::start().await?;
    let channel = quern_proto::connect(daemon.socket()).await?;
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await?
        .into_inner();
    // The stream is open and answered before the signal.
    watch
        .message()
        .await?
        .context("the health Watch ended at once")?;
    daemon.stop().await?;
    Ok(())
}
