//! Starts, restarts and stops one real `quernd` process for a benchmark run.
//!
//! Readiness is the daemon's own word: it is started with `NOTIFY_SOCKET`
//! pointing at a datagram socket we bound, and is ready when it sends
//! `READY=1` (the sd_notify protocol). The health service is then asked to
//! confirm SERVING. Nothing here sleeps or polls.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// How long a start may take before we give up. Generous, because a restart
/// over a million stored jobs is exactly what P6 measures, and a slow daemon
/// should produce a slow figure rather than an error.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a SIGTERM drain may take. The bench never leaves jobs running at
/// shutdown that outlive the daemon's default 10 s grace period.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// A Unix socket path must fit in `sockaddr_un.sun_path`.
const MAX_SOCKET_PATH: usize = 107;

/// Settings written to the daemon's config file.
#[derive(Debug, Clone, Default)]
pub struct DaemonConfig {
    /// The concurrency limit; `None` keeps the daemon's default (CPUs).
    pub concurrency: Option<u32>,
    /// `retention.max_finished`; `None` keeps the daemon's default.
    pub max_finished: Option<u64>,
    /// `event_retention`; `None` keeps the daemon's default.
    pub event_retention: Option<u64>,
    /// TOML tables written after everything else, verbatim: the fetch
    /// scenarios' `[fetch]` table and its per-host limits.
    pub tables: String,
}

/// How long a start took.
#[derive(Debug, Clone, Copy)]
pub struct Startup {
    /// From spawning the process to receiving `READY=1`.
    pub to_ready: Duration,
    /// From spawning the process to the health service confirming SERVING.
    pub to_serving: Duration,
}

/// Memory figures of the daemon process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Peak resident set size (`VmHWM`), in KiB.
    pub peak_kib: u64,
    /// Current resident set size (`VmRSS`), in KiB.
    pub current_kib: u64,
}

/// A running (or stopped, between restarts) `quernd` with its own temporary
/// socket and state dir. Dropping it kills the process and deletes the dir.
pub struct Quernd {
    binary: PathBuf,
    socket: PathBuf,
    state_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    notify: UnixDatagram,
    child: Option<Child>,
    // Declared last so it is deleted after the process is gone.
    dir: TempDir,
}

impl Quernd {
    /// Starts a daemon on a fresh temp dir under `parent` and waits until it
    /// is SERVING.
    pub async fn start(
        binary: &Path,
        parent: &Path,
        config: DaemonConfig,
    ) -> Result<(Self, Startup)> {
        let dir = tempfile::Builder::new()
            .prefix("qb")
            .tempdir_in(parent)
            .with_context(|| format!("cannot create a temp dir in {}", parent.display()))?;
        let socket = dir.path().join("quernd.sock");
        let notify_path = dir.path().join("notify.sock");
        for path in [&socket, &notify_path] {
            if path.as_os_str().len() > MAX_SOCKET_PATH {
                bail!(
                    "socket path {} is too long for a Unix socket; pass a shorter --dir",
                    path.display()
                );
            }
        }
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir)
            .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
        let config_path = dir.path().join("quernd.toml");
        let mut toml = String::from("# written by quern-bench\n");
        if let Some(n) = config.concurrency {
            toml.push_str(&format!("concurrency = {n}\n"));
        }
        if let Some(n) = config.event_retention {
            toml.push_str(&format!("event_retention = {n}\n"));
        }
        // Tables go after the top-level keys.
        if let Some(n) = config.max_finished {
            toml.push_str(&format!("[retention]\nmax_finished = {n}\n"));
        }
        toml.push_str(&config.tables);
        std::fs::write(&config_path, toml)
            .with_context(|| format!("cannot write config {}", config_path.display()))?;
        let notify = UnixDatagram::bind(&notify_path)
            .with_context(|| format!("cannot bind notify socket {}", notify_path.display()))?;

        let mut daemon = Quernd {
            binary: binary.to_path_buf(),
            socket,
            state_dir,
            config: config_path,
            log: dir.path().join("quernd.log"),
            notify,
            child: None,
            dir,
        };
        let startup = daemon.spawn().await?;
        Ok((daemon, startup))
    }

    /// Starts the daemon again on the same socket and state dir after
    /// [`stop`](Self::stop) or [`kill`](Self::kill).
    pub async fn restart(&mut self) -> Result<Startup> {
        if self.child.is_some() {
            bail!("quernd is still running; stop it before restarting");
        }
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<Startup> {
        // A datagram left over from the previous process (STOPPING=1, say)
        // must not be mistaken for this one's readiness.
        let mut buf = [0u8; 4096];
        while self.notify.try_recv(&mut buf).is_ok() {}

        // The daemon's output goes to a file, not our terminal, so it can't
        // garble the table; it is quoted back when the daemon fails.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open daemon log {}", self.log.display()))?;
        let log_err = log.try_clone()?;

        let started = Instant::now();
        let mut child = Command::new(&self.binary)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--config")
            .arg(&self.config)
            .env("NOTIFY_SOCKET", self.notify_path())
            // The fetch scenarios' servers listen on loopback; a proxy set in
            // the bench's environment must not sit between them and quernd.
            .env("NO_PROXY", "127.0.0.1")
            .env("no_proxy", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // If the bench fails half way, the daemon must not outlive it.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;

        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let to_ready = loop {
            tokio::select! {
                received = self.notify.recv(&mut buf) => {
                    let n = received.context("cannot read the notify socket")?;
                    let message = String::from_utf8_lossy(&buf[..n]);
                    if message.lines().any(|line| line.trim() == "READY=1") {
                        break started.elapsed();
                    }
                }
                status = child.wait() => {
                    let status = status.context("cannot wait for quernd")?;
                    bail!(
                        "quernd exited ({status}) before sending READY=1; its log ends with:\n{}",
                        self.log_tail()
                    );
                }
                () = tokio::time::sleep_until(deadline) => {
                    bail!(
                        "quernd did not send READY=1 within {READY_TIMEOUT:?}; its log ends with:\n{}",
                        self.log_tail()
                    );
                }
            }
        };
        self.child = Some(child);

        // READY=1 is a promise that health already says SERVING; check it, so
        // a daemon that notifies too early shows up as an error here.
        let channel = self.channel().await?;
        let mut health = HealthClient::new(channel);
        for service in ["", "quern.v1.Jobs"] {
            let response = tokio::time::timeout(
                Duration::from_secs(10),
                health.check(HealthCheckRequest {
                    service: service.to_owned(),
                }),
            )
            .await
            .context("health check timed out")?
            .with_context(|| format!("health check of service {service:?} failed"))?;
            let status = response.into_inner().status();
            if status != ServingStatus::Serving {
                bail!("quernd sent READY=1 but health of service {service:?} is {status:?}");
            }
        }
        Ok(Startup {
            to_ready,
            to_serving: started.elapsed(),
        })
    }

    /// Opens a new connection (its own HTTP/2 connection) to the daemon.
    pub async fn channel(&self) -> Result<Channel> {
        tokio::time::timeout(Duration::from_secs(10), quern_proto::connect(&self.socket))
            .await
            .context("connecting to quernd timed out")?
            .with_context(|| format!("cannot connect to quernd at {}", self.socket.display()))
    }

    /// The daemon's state dir.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The socket the daemon listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .context("quernd is not running")
    }

    /// Reads the daemon's peak and current RSS.
    pub fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.pid()?);
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("{path} has no readable {name} line"))
        };
        Ok(Memory {
            peak_kib: field("VmHWM:")?,
            current_kib: field("VmRSS:")?,
        })
    }

    /// The CPU time the daemon's own threads have used so far (user plus
    /// system; its jobs' time is not included).
    pub fn cpu_time(&self) -> Result<Duration> {
        cpu_time(self.pid()?)
    }

    /// The CPU time of the daemon's job processes that it has reaped so far
    /// (user plus system, from `/proc/<pid>/stat`'s cutime and cstime).
    pub fn children_cpu_time(&self) -> Result<Duration> {
        stat_ticks(self.pid()?, 13, "cutime and cstime")
    }

    /// Sends SIGTERM and waits for a clean exit; returns how long the drain
    /// took.
    pub async fn stop(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let status = self.signal_and_wait(Signal::SIGTERM).await?;
        if !status.success() {
            bail!(
                "quernd exited with {status} after SIGTERM; its log ends with:\n{}",
                self.log_tail()
            );
        }
        Ok(started.elapsed())
    }

    /// Sends SIGKILL, as a crash would, and waits for the process to be gone.
    pub async fn kill(&mut self) -> Result<()> {
        self.signal_and_wait(Signal::SIGKILL).await?;
        Ok(())
    }

    async fn signal_and_wait(&mut self, signal: Signal) -> Result<std::process::ExitStatus> {
        let pid = self.pid()?;
        let mut child = self.child.take().context("quernd is not running")?;
        let raw = i32::try_from(pid).context("pid out of range")?;
        kill(Pid::from_raw(raw), signal)
            .with_context(|| format!("cannot send {signal} to quernd {pid}"))?;
        // On timeout the child is dropped here, which SIGKILLs it.
        tokio::time::timeout(STOP_TIMEOUT, child.wait())
            .await
            .with_context(|| format!("quernd did not exit within {STOP_TIMEOUT:?} of {signal}"))?
            .context("cannot wait for quernd")
    }

    fn notify_path(&self) -> PathBuf {
        self.dir.path().join("notify.sock")
    }

    /// The last lines of the daemon's output, for error messages.
    fn log_tail(&self) -> String {
        let text = match std::fs::read(&self.log) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => return format!("(cannot read {}: {e})", self.log.display()),
        };
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return "(it wrote nothing)".to_owned();
        }
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The CPU time the threads of process `pid` have used so far (user plus
/// system; its children's time is not included).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    // utime and stime are fields 14 and 15: 11 and 12 counted from the
    // state, the first field after the command name.
    stat_ticks(pid, 11, "utime and stime")
}

/// The sum of two consecutive clock-tick fields of `/proc/<pid>/stat`,
/// `skip` fields after the state, as a duration.
fn stat_ticks(pid: u32, skip: usize, what: &str) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let fields = quern_tests::stat_fields(&stat).map(|fields| fields.skip(skip));
    sum_of_two_ticks(fields, || format!("{path} has no readable {what}"))
}

/// The first two of `fields`, clock-tick counts, summed as a duration;
/// `missing` says what was not there.
fn sum_of_two_ticks<'a>(
    fields: Option<impl Iterator<Item = &'a str>>,
    missing: impl FnOnce() -> String,
) -> Result<Duration> {
    let ticks: Vec<u64> = fields
        .into_iter()
        .flat_map(|fields| fields.take(2))
        .map_while(|field| field.parse().ok())
        .collect();
    let [a, b] = ticks[..] else {
        bail!("{}", missing());
    };
    Ok(Duration::from_secs_f64(
        (a + b) as f64 / ticks_per_sec()? as f64,
    ))
}

fn ticks_per_sec() -> Result<u64> {
    // SAFETY: sysconf only reads a constant.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(per_sec)
        .ok()
        .filter(|&n| n > 0)
        .context("the clock tick rate is unknown")
}

/// The machine's idle time so far (idle plus iowait, summed over every
/// core), from `/proc/stat`.
pub fn idle_time() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    // After "cpu ": user, nice, system, idle, iowait.
    let fields = stat
        .lines()
        .find_map(|line| line.strip_prefix("cpu "))
        .map(|rest| rest.split_whitespace().skip(3));
    sum_of_two_ticks(fields, || {
        "/proc/stat has no readable idle and iowait times".to_string()
    })
}

/// The CPU time of this process's children that it has waited for (user
/// plus system).
pub fn own_children_cpu_time() -> Result<Duration> {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) != 0 {
            bail!("getrusage failed: {}", std::io::Error::last_os_error());
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Duration::from_secs_f64(
        secs(usage.ru_utime) + secs(usage.ru_stime),
    ))
}

/// How many times the threads of process `pid` have been switched out so
/// far, voluntarily (to wait) or not. Each voluntary switch is a sleep and
/// a wake-up, which on a VM can cost more than the work between them, and
/// unlike the CPU time the count hardly depends on how busy the host is.
/// A thread that exits between two readings takes its count with it, so a
/// difference can come out low; quernd's threads live as long as it does,
/// except idle blocking-pool threads.
pub fn context_switches(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for task in std::fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))? {
        let path = task
            .with_context(|| format!("cannot read {dir}"))?
            .path()
            .join("status");
        // A thread that exited since the listing has no status left.
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += status
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
            })
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}
