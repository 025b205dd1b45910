//! The exec job kind: runs argv directly, with no shell, in its own process
//! group, with stdout and stderr captured.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::job::{ExecSpec, JobId};
use crate::logs::{LiveLog, Stream};
use crate::platform::process::signal_group;

/// A started exec attempt.
pub struct Spawned {
    /// The leader process; its pid is also the group id.
    pub child: Child,
    /// The leader's pid.
    pub pid: u32,
    /// The threads copying stdout and stderr to the log files; they end when
    /// every process holding the pipes has exited.
    pub pumps: Vec<JoinHandle<()>>,
}

/// Starts `spec` as job `id`.
///
/// Must be called from a runtime worker thread, never from `spawn_blocking`:
/// the parent-death signal set below fires when the *thread* that forked the
/// child exits, and blocking-pool threads exit when idle, which would kill
/// the job early. Worker threads live as long as the daemon.
pub fn spawn(
    id: JobId,
    spec: &ExecSpec,
    default_cwd: &Path,
    live: &Arc<LiveLog>,
) -> Result<Spawned, String> {
    let cwd = spec.cwd.as_deref().map(Path::new).unwrap_or(default_cwd);
    if !cwd.is_dir() {
        return Err(format!(
            "working directory {} does not exist or is not a directory",
            cwd.display()
        ));
    }
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot create output pipe: {e}"))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .current_dir(cwd)
        .envs(&spec.env)
        .env("QUERN_JOB_ID", id.to_string())
        // The daemon's own readiness socket is not the job's business.
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        // Its own process group, so that cancel and timeout reach every
        // process the job starts, not just the first.
        .process_group(0)
        .kill_on_drop(false);
    #[cfg(target_os = "linux")]
    {
        let parent = nix::unistd::getpid();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe syscalls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                // If quernd dies (even by kill -9), the leader dies with it
                // instead of running on unsupervised.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The daemon may have died between fork and prctl, in which
                // case the signal was never armed.
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::other(
                        "quernd exited while starting the job",
                    ));
                }
                Ok(())
            });
        }
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", spec.argv[0]))?;
    // Dropping the command closes our copies of the pipes' write ends, so
    // the pumps see EOF once the job's processes are gone.
    drop(cmd);
    let pid = child
        .id()
        .ok_or_else(|| "the job process vanished before its pid was read".to_string())?;
    let pumps = [(Stream::Stdout, out_r), (Stream::Stderr, err_r)]
        .into_iter()
        .map(|(s, fd): (Stream, OwnedFd)| {
            let live = live.clone();
            tokio::task::spawn_blocking(move || live.pump(s, File::from(fd)))
        })
        .collect();
    Ok(Spawned { child, pid, pumps })
}

/// Stops the whole group: SIGTERM, up to `grace` for the leader to exit,
/// then SIGKILL. A zero grace kills at once.
pub async fn terminate(
    child: &mut Child,
    pgid: u32,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    if !grace.is_zero() {
        signal_group(pgid, Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            return status;
        }
    }
    signal_group(pgid, Signal::SIGKILL);
    child.wait().await
}

/// A human description of how a process ended, for `Job.error`.
pub fn describe(status: &ExitStatus) -> (Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (Some(code), format!("exited with code {code}")),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig)
                .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string());
            (None, format!("killed by signal {name}"))
        }
        (None, None) => (None, "ended for an unknown reason".to_string()),
    }
}
