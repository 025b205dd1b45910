//! The exec job kind: runs argv directly, with no shell, in its own process
//! group, with stdout and stderr captured.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
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

/// The hidden first argument that makes `quernd` act as the exec shim: see
/// [`shim_main`].
pub const SHIM_ARG: &str = "__quern-exec-shim";

/// How a job process is started.
#[derive(Clone, Debug)]
pub enum Launcher {
    /// Through the shim binary (normally `quernd` itself): the daemon starts
    /// it with `posix_spawn`, which shares the daemon's memory until the
    /// exec instead of copying its page tables, and the shim arms the
    /// parent-death signal and execs the job. Forking a multi-threaded
    /// daemon for every job costs milliseconds of page-table copying, TLB
    /// shootdowns and copy-on-write faults; this costs one extra exec.
    Shim(PathBuf),
    /// fork, arm the parent-death signal in the child, exec. For embedders
    /// of the library that have no shim binary.
    Fork,
}

/// Starts `spec` as job `id`.
///
/// Must be called from a runtime worker thread, never from `spawn_blocking`:
/// the parent-death signal set up here fires when the *thread* that started
/// the child exits, and blocking-pool threads exit when idle, which would
/// kill the job early. Worker threads live as long as the daemon.
pub fn spawn(
    id: JobId,
    spec: &ExecSpec,
    default_cwd: &Path,
    launcher: &Launcher,
    live: &Arc<LiveLog>,
) -> Result<Spawned, String> {
    let cwd = spec.cwd.as_deref().map(Path::new).unwrap_or(default_cwd);
    if !cwd.is_dir() {
        return Err(format!(
            "working directory {} does not exist or is not a directory",
            cwd.display()
        ));
    }
    // Resolve the program here, so a missing one is a clear spawn error
    // rather than an exit code from the shim.
    let path_var = spec
        .env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok());
    let program = which::which_in(&spec.argv[0], path_var, cwd).map_err(|_| {
        format!(
            "cannot start {:?}: no such executable (looked in PATH and {})",
            spec.argv[0],
            cwd.display()
        )
    })?;
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot create output pipe: {e}"))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let parent = nix::unistd::getpid();
    let mut cmd = match launcher {
        Launcher::Shim(shim) => {
            let mut c = Command::new(shim);
            c.arg(SHIM_ARG)
                .arg(parent.as_raw().to_string())
                .arg(&program);
            c
        }
        Launcher::Fork => {
            let mut c = Command::new(&program);
            #[cfg(target_os = "linux")]
            // SAFETY: the closure runs in the forked child before exec and
            // only makes async-signal-safe syscalls (prctl, getppid).
            unsafe {
                c.pre_exec(move || arm_parent_death(parent.as_raw()));
            }
            c
        }
    };
    // The job's argv[0] as given, not the resolved path (with the shim, the
    // shim carries it and passes it on at its exec).
    cmd.arg0(&spec.argv[0])
        .args(&spec.argv[1..])
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

/// Arms SIGKILL-on-parent-death, and refuses to go on if the parent (pid
/// `parent`) already died, in which case the signal would never come.
#[cfg(target_os = "linux")]
fn arm_parent_death(parent: i32) -> std::io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if nix::unistd::getppid().as_raw() != parent {
        return Err(std::io::Error::other(
            "quernd exited while starting the job",
        ));
    }
    Ok(())
}

/// The exec shim: `quernd __quern-exec-shim <daemon pid> <program> [args...]`
/// (with argv[0] set to the job's). Arms the parent-death signal, so the job
/// dies with the daemon even after kill -9, then execs the program in place:
/// same pid, process group, cwd, environment and stdio. Never returns.
pub fn shim_main(args: Vec<std::ffi::OsString>) -> ! {
    use std::os::unix::process::CommandExt;
    let parent: i32 = args
        .get(2)
        .and_then(|p| p.to_str())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    #[cfg(target_os = "linux")]
    if let Err(e) = arm_parent_death(parent) {
        eprintln!("quernd exec shim: {e}");
        std::process::exit(127);
    }
    let (Some(program), Some(argv0)) = (args.get(3), args.first()) else {
        eprintln!("quernd exec shim: missing program; this mode is for quernd's own use");
        std::process::exit(127);
    };
    let err = std::process::Command::new(program)
        .arg0(argv0)
        .args(&args[4..])
        .exec();
    eprintln!("quernd: cannot start {program:?}: {err}");
    std::process::exit(127);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::LogStore;
    use std::collections::BTreeMap;

    /// The fork fallback (no shim binary) starts the job with its own argv[0],
    /// in its own process group, with QUERN_JOB_ID set.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fork_launcher_runs_the_job_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path().join("logs"), 1 << 20).unwrap();
        let live = logs.start(42);
        let spec = ExecSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "head -c 2 /proc/$$/cmdline; echo \" $QUERN_JOB_ID $(cut -d' ' -f5 /proc/$$/stat) $$\"".into(),
            ],
            cwd: None,
            env: BTreeMap::new(),
        };
        let mut spawned = spawn(42, &spec, dir.path(), &Launcher::Fork, &live).unwrap();
        let status = spawned.child.wait().await.unwrap();
        for p in spawned.pumps {
            p.await.unwrap();
        }
        assert!(status.success());
        let out = String::from_utf8(logs.read_stored(42, Stream::Stdout).unwrap()).unwrap();
        let pid = spawned.pid;
        assert_eq!(out, format!("sh 42 {pid} {pid}\n"));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path().join("logs"), 1 << 20).unwrap();
        let live = logs.start(1);
        let spec = ExecSpec {
            argv: vec!["quern-surely-missing".into()],
            cwd: None,
            env: BTreeMap::new(),
        };
        let err = spawn(1, &spec, dir.path(), &Launcher::Fork, &live)
            .err()
            .expect("must fail");
        assert!(err.contains("quern-surely-missing"), "{err}");
    }
}
