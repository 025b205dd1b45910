//! The exec job kind: runs argv directly, with no shell, in its own process
//! group, with stdout and stderr captured. Stopping it is SIGTERM to the
//! group, the grace period, then SIGKILL; and once the leader has exited,
//! SIGKILL to whatever it left in its group, so nothing of the job
//! outlives it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;

use super::{Attempt, AttemptCtx, BoxFuture, Ended, Kind};
use crate::job::{ExecRun, ExecSpec, JobId, JobKind, JobSpec, RunRecord};
use crate::logs::{LiveLog, Stream};
use crate::platform::process::{boot_id, kill_leftover_group, signal_group};
use crate::platform::spawn::{JobProcess, SpawnSpec};

/// How long to wait for output pipes to drain after the group was killed.
/// Only a process that left the group (setsid) can hold them longer, and it
/// must not keep the job from finishing.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The exec kind.
pub struct Exec;

impl Kind for Exec {
    fn start(&self, spec: &JobSpec, ctx: AttemptCtx) -> Result<Box<dyn Attempt>, String> {
        #[allow(unreachable_patterns)] // until there is a second kind
        let spec = match &spec.kind {
            JobKind::Exec(e) => e,
            other => return Err(format!("the exec kind cannot run a {} job", other.name())),
        };
        let spawned = spawn(ctx.job, spec, &ctx.env.default_cwd, &ctx.output)?;
        let pid = spawned.child.pid();
        Ok(Box::new(ExecAttempt {
            job: ctx.job,
            pid,
            pid_start: spawned.child.start_time().unwrap_or(0),
            child: Some(spawned.child),
            pumps: spawned.pumps,
            drained: false,
        }))
    }

    fn recover(&self, run: &RunRecord) -> Option<String> {
        let RunRecord::Exec(r) = run else {
            return None;
        };
        kill_leftover_group(r.pid, r.pid_start, &r.boot_id)
            .then(|| format!("killed leftover process group {}", r.pid))
    }
}

/// A running exec attempt.
struct ExecAttempt {
    job: JobId,
    pid: u32,
    pid_start: u64,
    /// The leader, until [`Attempt::close`]. Dropped there rather than
    /// when the outcome is committed, which under load can be a linger
    /// later: every open descriptor (it holds a pidfd) makes each later
    /// job start copy a bigger table.
    child: Option<JobProcess>,
    pumps: Pumps,
    /// The pumps have ended: every process holding the pipes is gone.
    drained: bool,
}

impl ExecAttempt {
    /// Runs `work` while copying the job's output, so that a job that
    /// writes a lot never blocks on a full pipe, also during its grace
    /// period.
    async fn pumping<T>(
        pumps: &mut Pumps,
        drained: &mut bool,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => break out,
                () = &mut *pumps, if !*drained => *drained = true,
            }
        }
    }
}

impl Attempt for ExecAttempt {
    fn record(&self) -> RunRecord {
        RunRecord::Exec(ExecRun {
            pid: self.pid,
            pid_start: self.pid_start,
            boot_id: boot_id(),
        })
    }

    fn wait(&mut self) -> BoxFuture<'_, Ended> {
        Box::pin(async move {
            let Some(child) = self.child.as_mut() else {
                return Ended::Failed {
                    exit_code: None,
                    error: "the job's process was already closed".into(),
                    retry: true,
                };
            };
            match Self::pumping(&mut self.pumps, &mut self.drained, child.wait()).await {
                Ok(status) if status.success() => Ended::Succeeded {
                    exit_code: Some(0),
                    result: None,
                },
                Ok(status) => {
                    let (exit_code, error) = describe(&status);
                    Ended::Failed {
                        exit_code,
                        error,
                        retry: true,
                    }
                }
                Err(e) => Ended::Failed {
                    exit_code: None,
                    error: format!("waiting for the job's process failed: {e}"),
                    retry: true,
                },
            }
        })
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(child) = self.child.as_mut() {
                let pid = self.pid;
                let stopped = terminate(child, pid, grace);
                let _ = Self::pumping(&mut self.pumps, &mut self.drained, stopped).await;
            }
        })
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        self.child = None;
        Box::pin(async move {
            let id = self.job;
            // Take down anything the leader left behind in its group.
            signal_group(self.pid, Signal::SIGKILL);
            if !self.drained
                && tokio::time::timeout(DRAIN_LIMIT, &mut self.pumps)
                    .await
                    .is_err()
            {
                tracing::warn!(
                    job = id,
                    "job output still open after its group was killed; a process left the group"
                );
                // Keep copying what it writes, without holding up the job's end.
                tokio::spawn(self.pumps);
            }
        })
    }
}

/// A started exec attempt.
struct Spawned {
    /// The leader process; its pid is also the group id.
    child: JobProcess,
    /// Copies stdout and stderr to the log files; it ends when every
    /// process holding the pipes has exited. The caller must poll it while
    /// the job runs, or a job that fills a pipe blocks.
    ///
    /// A future rather than two spawned tasks: a task each cost an
    /// allocation and a scheduling round per job, and three tasks woken at
    /// once by a job's exit had the runtime wake a second worker to share
    /// them.
    pumps: Pumps,
}

/// See [`Spawned::pumps`].
type Pumps = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Starts `spec` as job `id`.
///
/// Must be called from a job thread (or another thread that lives as
/// long as the daemon), never from `spawn_blocking`:
/// the parent-death signal set up here fires when the *thread* that started
/// the child exits, and blocking-pool threads exit when idle, which would
/// kill the job early. The job threads live until every job has stopped.
fn spawn(
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
    // Resolve the program here, so a missing one is a clear spawn error
    // rather than an exit code.
    let path_var = spec
        .env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok());
    let cannot_start = |e: &dyn std::fmt::Display| format!("cannot start {:?}: {e}", spec.argv[0]);
    let program = which::which_in(&spec.argv[0], path_var, cwd).map_err(|_| {
        cannot_start(&format_args!(
            "no such executable (looked in PATH and {})",
            cwd.display()
        ))
    })?;
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot create output pipe: {e}"))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let child = crate::platform::spawn::spawn(SpawnSpec {
        program: &program,
        // The job's argv[0] as given, not the resolved path.
        argv: &spec.argv,
        cwd,
        env: job_env(id, &spec.env).map_err(|e| cannot_start(&e))?,
        stdout: out_w,
        stderr: err_w,
    })
    .map_err(|e| cannot_start(&e))?;
    // The write ends were moved into the spawn and are closed by now, so
    // the pumps see EOF once the job's processes are gone.
    let (out, err) = (
        live.clone().pump(Stream::Stdout, out_r),
        live.clone().pump(Stream::Stderr, err_r),
    );
    let pumps = Box::pin(async move {
        tokio::join!(out, err);
    });
    Ok(Spawned { child, pumps })
}

/// The job's environment: the daemon's, without its readiness socket (not
/// the job's business), then the job's own variables, then `QUERN_JOB_ID`.
fn job_env(id: JobId, own: &BTreeMap<String, String>) -> Result<Vec<Cow<'static, CStr>>, String> {
    let inherited = inherited_env();
    let mut env = Vec::with_capacity(inherited.len() + own.len() + 1);
    for (key, kv) in inherited {
        let replaced = key == "QUERN_JOB_ID" || key.to_str().is_some_and(|k| own.contains_key(k));
        if !replaced {
            env.push(Cow::Borrowed(kv.as_c_str()));
        }
    }
    let entry = |k: &str, v: &str| {
        CString::new(format!("{k}={v}"))
            .map(Cow::Owned)
            .map_err(|_| format!("environment variable {k:?} contains a NUL byte"))
    };
    for (k, v) in own {
        env.push(entry(k, v)?);
    }
    env.push(entry("QUERN_JOB_ID", &id.to_string())?);
    Ok(env)
}

/// The daemon's environment less `NOTIFY_SOCKET`, each variable with its
/// name and as the `KEY=VALUE` string a job gets. Read once, at the first
/// job start: the daemon never changes its own environment, and copying
/// every variable twice per job was most of a job start's allocations in
/// P3.
fn inherited_env() -> &'static [(OsString, CString)] {
    static ENV: OnceLock<Vec<(OsString, CString)>> = OnceLock::new();
    ENV.get_or_init(|| {
        std::env::vars_os()
            .filter(|(k, _)| k != "NOTIFY_SOCKET")
            .filter_map(|(k, v)| {
                let mut kv = Vec::with_capacity(k.len() + v.len() + 1);
                kv.extend_from_slice(k.as_bytes());
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                // The environment cannot hold a NUL byte; skip rather than
                // trust that.
                Some((k, CString::new(kv).ok()?))
            })
            .collect()
    })
}

/// Stops the whole group: SIGTERM, up to `grace` for the leader to exit,
/// then SIGKILL. A zero grace kills at once.
async fn terminate(
    child: &mut JobProcess,
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
fn describe(status: &ExitStatus) -> (Option<i32>, String) {
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

    /// A job starts with its own argv[0], in its own process group, with
    /// QUERN_JOB_ID set.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_runs_as_given() {
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
        let mut spawned = spawn(42, &spec, dir.path(), &live).unwrap();
        let (status, ()) = tokio::join!(spawned.child.wait(), spawned.pumps);
        let status = status.unwrap();
        assert!(status.success());
        let out = String::from_utf8(logs.read_stored(42, Stream::Stdout).unwrap()).unwrap();
        let pid = spawned.child.pid();
        assert_eq!(out, format!("sh 42 {pid} {pid}\n"));
    }

    /// A job's own variable replaces the inherited one of the same name,
    /// and the rest of the daemon's environment comes along unchanged.
    #[test]
    fn a_jobs_own_variables_replace_inherited_ones() {
        let inherited = inherited_env();
        assert!(
            inherited.iter().any(|(k, _)| k == "PATH"),
            "the test process has no PATH"
        );
        let own = BTreeMap::from([("PATH".to_string(), "/only/here".to_string())]);
        let env: Vec<String> = job_env(7, &own)
            .unwrap()
            .iter()
            .map(|kv| kv.to_string_lossy().into_owned())
            .collect();
        let paths: Vec<&String> = env.iter().filter(|kv| kv.starts_with("PATH=")).collect();
        assert_eq!(paths, ["PATH=/only/here"]);
        assert!(env.contains(&"QUERN_JOB_ID=7".to_string()), "{env:?}");
        // PATH replaced, QUERN_JOB_ID added.
        assert_eq!(env.len(), inherited.len() + 1, "{env:?}");
        let err = job_env(7, &BTreeMap::from([("X".to_string(), "a\0b".to_string())]));
        assert!(err.unwrap_err().contains("\"X\" contains a NUL byte"));
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
        let err = spawn(1, &spec, dir.path(), &live).err().expect("must fail");
        assert!(err.contains("quern-surely-missing"), "{err}");
    }
}
