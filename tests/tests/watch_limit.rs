//! A rule that finds no inotify watch left goes `degraded`, says which
//! limit and what it needs, and still triggers by comparing its tree.
//!
//! Alone in its own test binary: it lowers `fs.inotify.max_user_watches`,
//! which is the whole user's, so no other test may add watches meanwhile.
//! It needs root and a writable /proc/sys; elsewhere it says so and skips.

use std::fs;
use std::time::Duration;

use anyhow::{Result, ensure};
use quern_proto::v1::WatchState;
use quern_tests::TestDaemon;
use quern_tests::watch::{WatchEvents, add, get, job_of, paths_of, print_paths, spec};

const LIMIT: &str = "/proc/sys/fs/inotify/max_user_watches";

/// Puts the old limit back, however the test ends.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = fs::write(LIMIT, &self.0);
    }
}

#[tokio::test]
async fn out_of_watches_the_rule_degrades_and_still_triggers() -> Result<()> {
    let old = fs::read_to_string(LIMIT)?;
    if !nix::unistd::geteuid().is_root() || fs::write(LIMIT, old.trim()).is_err() {
        eprintln!("skipped: lowering {LIMIT} needs root and a writable /proc/sys (CI runs this)");
        return Ok(());
    }
    let daemon = TestDaemon::builder()
        .config("watch.poll_interval = \"100ms\"")
        .start()
        .await?;
    let (mut jobs, mut watches) = (daemon.client(), daemon.watches());
    let dir = daemon.dir().join("tree");
    for n in 0..40 {
        fs::create_dir_all(dir.join(format!("d{n}")))?;
    }
    let dir = dir.canonicalize()?;

    let rule = {
        let _restore = Restore(old.trim().to_string());
        fs::write(LIMIT, "8")?;
        add(
            &mut watches,
            spec(&dir, Duration::from_millis(50), print_paths()),
        )
        .await?
    };
    ensure!(rule.state == WatchState::Degraded as i32, "{rule:?}");
    ensure!(
        rule.state_reason
            .contains("fs.inotify.max_user_watches is 8")
            && rule.state_reason.contains("needs 41"),
        "{}",
        rule.state_reason
    );
    let mut events = WatchEvents::open(&mut jobs).await?;
    fs::write(dir.join("d7/file"), "1")?;
    let (job, _) = job_of(&events.triggered(rule.id).await?);
    ensure!(paths_of(&mut jobs, job).await? == ["d7/file".to_string()].into());
    let w = get(&mut watches, rule.id).await?;
    ensure!(
        w.state == WatchState::Degraded as i32 && w.kernel_watches == 0,
        "{w:?}"
    );
    Ok(())
}
