//! End-to-end test support: [`TestDaemon`] runs the real `quernd` binary in a
//! private temp dir, and small helpers submit jobs and wait on their events
//! without sleeping or polling.

pub mod http;
pub mod watch;

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{
    EventsRequest, EventsResponse, ExecSpec, FetchSpec, GetRequest, Job, JobSpec, JobState,
    LogStream, LogsRequest, LogsResponse, StatsRequest, StatsResponse, SubmitRequest, job_spec,
};
use tempfile::TempDir;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};
use tokio::time::timeout;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The longest any single wait in these tests may take before the test fails.
///
/// It is generous because the machine is shared and debug builds are slow; a
/// healthy daemon answers in milliseconds, so only a broken one ever hits it.
pub const WAIT: Duration = Duration::from_secs(60);

/// The gRPC service name the daemon reports in `grpc.health.v1`.
pub const JOBS_SERVICE: &str = "quern.v1.Jobs";

/// The path of the `quernd` binary under test: `$QUERND_BIN` if set, else
/// `quernd` in the cargo target dir of the running test executable.
///
/// # Panics
///
/// When the binary does not exist, with the command that builds it.
pub fn quernd_bin() -> PathBuf {
    binary(
        "QUERND_BIN",
        "quernd",
        "cargo build -p quern-daemon --bin quernd",
    )
}

/// The path of the `quernctl` binary under test: `$QUERNCTL_BIN` if set,
/// else `quernctl` in the cargo target dir of the running test executable.
///
/// # Panics
///
/// When the binary does not exist, with the command that builds it.
pub fn quernctl_bin() -> PathBuf {
    binary(
        "QUERNCTL_BIN",
        "quernctl",
        "cargo build -p quern-ctl --bin quernctl",
    )
}

fn binary(var: &str, name: &str, build: &str) -> PathBuf {
    let path = match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => {
            // Test executables live in target/<profile>/deps/<name>-<hash>,
            // and cargo puts the workspace binaries in target/<profile>/.
            let exe = std::env::current_exe().expect("the test executable has a path");
            let mut dir = exe
                .parent()
                .expect("the test executable is in a directory")
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir.join(name)
        }
    };
    assert!(
        path.is_file(),
        "{name} not found at {}; build it with `{build}` or set {var} to its path",
        path.display()
    );
    path
}

/// Options for a [`TestDaemon`]; start with [`TestDaemon::builder`].
#[derive(Debug, Clone, Default)]
pub struct TestDaemonBuilder {
    concurrency: Option<u32>,
    config: Vec<String>,
    env: Vec<(OsString, OsString)>,
    socket: Option<PathBuf>,
    file_size_limit: Option<u64>,
}

impl TestDaemonBuilder {
    /// Passes `--concurrency n`.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// Adds one line to the daemon's TOML config file, e.g.
    /// `retry_base_delay = "200ms"`.
    pub fn config(mut self, line: impl Into<String>) -> Self {
        self.config.push(line.into());
        self
    }

    /// Sets an environment variable for the daemon (and so for its jobs).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Keeps a proxy set in the test's environment from sitting between
    /// the daemon and the loopback servers fetch tests start.
    pub fn direct_to_loopback(self) -> Self {
        self.env("NO_PROXY", "127.0.0.1")
            .env("no_proxy", "127.0.0.1")
    }

    /// Starts the daemon with `RLIMIT_FSIZE` at `bytes`: no file it (or a
    /// job) writes may grow past that.
    pub fn file_size_limit(mut self, bytes: u64) -> Self {
        self.file_size_limit = Some(bytes);
        self
    }

    /// Listens on `socket` instead of a fresh path in the temp dir; for
    /// tests of two daemons contending for one socket.
    pub fn socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.socket = Some(socket.into());
        self
    }

    /// Creates the temp dir, state dir and config file without starting
    /// anything, so a test can tamper with the state dir first.
    pub fn prepare(self) -> Result<PreparedDaemon> {
        let dir = tempfile::Builder::new()
            .prefix("quern-test-")
            .tempdir()
            .context("creating the test temp dir")?;
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let config_path = dir.path().join("quernd.toml");
        let mut config = self.config.join("\n");
        config.push('\n');
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let socket = self
            .socket
            .unwrap_or_else(|| dir.path().join("quernd.sock"));
        Ok(PreparedDaemon {
            log_path: dir.path().join("quernd.log"),
            socket,
            state_dir,
            config_path,
            concurrency: self.concurrency,
            env: self.env,
            file_size_limit: self.file_size_limit,
            dir,
        })
    }

    /// Prepares the temp dir and starts the daemon; see [`PreparedDaemon::start`].
    pub async fn start(self) -> Result<TestDaemon> {
        self.prepare()?.start().await
    }
}

/// A temp dir laid out for one daemon (state dir, config file, socket path)
/// that has not been started yet.
#[derive(Debug)]
pub struct PreparedDaemon {
    dir: TempDir,
    socket: PathBuf,
    state_dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    concurrency: Option<u32>,
    env: Vec<(OsString, OsString)>,
    file_size_limit: Option<u64>,
}

impl PreparedDaemon {
    /// The temp dir that holds everything else; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The socket the daemon listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's `--state-dir`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The file that collects the daemon's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The daemon's output so far, for failure messages.
    pub fn output(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(no output: {e})"),
        }
    }

    /// The `quernd` command line for this layout, with no stdio set up and
    /// no `NOTIFY_SOCKET`.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(quernd_bin());
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--config")
            .arg(&self.config_path);
        if let Some(n) = self.concurrency {
            cmd.arg("--concurrency").arg(n.to_string());
        }
        // Whatever the developer's shell exports must not redirect the
        // daemon elsewhere or make it signal a real service manager.
        cmd.env_remove("QUERN_SOCKET")
            .env_remove("QUERN_STATE_DIR")
            .env_remove("NOTIFY_SOCKET");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(bytes) = self.file_size_limit {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            // SAFETY: between fork and exec the hook only makes one system
            // call on a value prepared before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        cmd
    }

    /// Runs the daemon to completion, for tests of start-up failures, and
    /// returns its exit status and output. Fails if it is still running
    /// after [`WAIT`].
    pub async fn run_to_exit(&self) -> Result<Output> {
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A daemon that wrongly starts serving must not outlive the test.
            .kill_on_drop(true);
        let child = cmd.spawn().context("spawning quernd")?;
        timeout(WAIT, child.wait_with_output())
            .await
            .map_err(|_| anyhow!("quernd was expected to exit but still runs after {WAIT:?}"))?
            .context("waiting for quernd")
    }

    /// Starts the daemon and waits until it is ready: it has sent `READY=1`
    /// on `NOTIFY_SOCKET` and `grpc.health.v1` says SERVING.
    pub async fn start(self) -> Result<TestDaemon> {
        let mut daemon = TestDaemon {
            prepared: self,
            child: None,
            channel: None,
        };
        daemon.launch().await?;
        Ok(daemon)
    }
}

/// A real `quernd` process in its own temp dir, killed on drop.
///
/// Each test starts its own, so tests in one file can run in parallel.
#[derive(Debug)]
pub struct TestDaemon {
    // Owns the temp dir. Drop::drop reaps the daemon before any field is
    // dropped, so the dir is never removed under a live daemon.
    prepared: PreparedDaemon,
    child: Option<Child>,
    channel: Option<Channel>,
}

impl TestDaemon {
    /// Starts a daemon with default options.
    pub async fn start() -> Result<Self> {
        Self::builder().start().await
    }

    /// Options for a daemon that is not started yet.
    pub fn builder() -> TestDaemonBuilder {
        TestDaemonBuilder::default()
    }

    /// A client on this daemon's socket.
    ///
    /// # Panics
    ///
    /// When the daemon is stopped.
    pub fn client(&self) -> JobsClient<Channel> {
        let channel = self.channel.clone().expect("quernd is not running");
        JobsClient::new(channel)
    }

    /// The socket the daemon listens on.
    pub fn socket(&self) -> &Path {
        self.prepared.socket()
    }

    /// The daemon's `--state-dir`.
    pub fn state_dir(&self) -> &Path {
        self.prepared.state_dir()
    }

    /// The temp dir holding the state dir, the config and the output log;
    /// tests may put their own files here.
    pub fn dir(&self) -> &Path {
        self.prepared.dir()
    }

    /// The daemon's pid.
    ///
    /// # Panics
    ///
    /// When the daemon is stopped.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("quernd is not running")
    }

    /// Everything the daemon has written to stdout and stderr, across
    /// restarts, for failure messages.
    pub fn output(&self) -> String {
        self.prepared.output()
    }

    /// Sends SIGTERM and waits for a clean exit (status 0).
    pub async fn stop(&mut self) -> Result<()> {
        let status = self.signal_and_wait(Signal::SIGTERM).await?;
        ensure!(
            status.success(),
            "quernd exited with {status} after SIGTERM; its output:\n{}",
            self.output()
        );
        Ok(())
    }

    /// Sends SIGKILL and reaps the daemon, like a crash or power cut would
    /// end it.
    pub async fn kill9(&mut self) -> Result<()> {
        self.signal_and_wait(Signal::SIGKILL).await?;
        Ok(())
    }

    /// Starts the daemon again on the same state dir, socket and config,
    /// and waits until it is ready. It must have been stopped first.
    pub async fn restart(&mut self) -> Result<()> {
        ensure!(
            self.child.is_none(),
            "restart needs a stopped daemon; call stop() or kill9() first"
        );
        self.launch().await
    }

    async fn signal_and_wait(&mut self, signal: Signal) -> Result<ExitStatus> {
        let mut child = self.child.take().context("quernd is not running")?;
        self.channel = None;
        let pid = child.id().context("quernd was already reaped")?;
        kill(pid_of(pid), signal).with_context(|| format!("sending {signal} to quernd"))?;
        match timeout(WAIT, child.wait()).await {
            Ok(status) => Ok(status.context("waiting for quernd")?),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                bail!(
                    "quernd did not exit within {WAIT:?} of {signal}; its output:\n{}",
                    self.output()
                )
            }
        }
    }

    /// Spawns quernd and waits for READY=1 and a SERVING health check.
    async fn launch(&mut self) -> Result<()> {
        let p = &self.prepared;
        let notify_path = p.dir().join("notify.sock");
        // A fresh notify socket per start, so nothing an earlier daemon sent
        // (such as STOPPING=1, or a late READY=1) is read as this one's.
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)
            .with_context(|| format!("binding {}", notify_path.display()))?;

        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log_path)
            .with_context(|| format!("opening {}", p.log_path.display()))?;
        writeln!(log, "=== test harness: starting quernd ===")?;
        let mut cmd = p.command();
        cmd.env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: the closure only makes one prctl system call, which is
        // async-signal-safe, between fork and exec.
        unsafe {
            // If the test process dies without running Drop (killed by a
            // harness timeout), the daemon dies with it instead of leaking.
            // This fires when the spawning thread exits, which is fine: tests
            // spawn from runtime threads that live as long as the test.
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", quernd_bin().display()))?;

        let ready = wait_ready(&notify, &mut child);
        let outcome = match timeout(WAIT, ready).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(anyhow!("quernd sent no READY=1 within {WAIT:?}")),
        };
        let outcome = match outcome {
            Ok(()) => check_serving(&p.socket).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(channel) => {
                self.child = Some(child);
                self.channel = Some(channel);
                let _ = std::fs::remove_file(&notify_path);
                Ok(())
            }
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(e.context(format!("quernd output:\n{}", p.output())))
            }
        }
    }
}

/// Waits for a datagram carrying `READY=1`, failing early if the daemon
/// exits first.
async fn wait_ready(notify: &UnixDatagram, child: &mut Child) -> Result<()> {
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            received = notify.recv(&mut buf) => {
                let n = received.context("reading NOTIFY_SOCKET")?;
                // sd_notify messages are newline-separated assignments.
                let message = String::from_utf8_lossy(&buf[..n]);
                if message.lines().any(|line| line.trim() == "READY=1") {
                    return Ok(());
                }
            }
            status = child.wait() => {
                let status = status.context("waiting for quernd")?;
                bail!("quernd exited with {status} before sending READY=1");
            }
        }
    }
}

/// Connects to the socket and asserts that health says SERVING for the
/// server as a whole and for the Jobs service.
async fn check_serving(socket: &Path) -> Result<Channel> {
    let channel = timeout(WAIT, quern_proto::connect(socket))
        .await
        .map_err(|_| anyhow!("connecting to {} timed out", socket.display()))?
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", JOBS_SERVICE] {
        let response = timeout(
            WAIT,
            health.check(HealthCheckRequest {
                service: service.to_owned(),
            }),
        )
        .await
        .map_err(|_| anyhow!("health check of {service:?} timed out"))?
        .with_context(|| format!("health check of {service:?}"))?
        .into_inner();
        ensure!(
            response.status == ServingStatus::Serving as i32,
            "health of {service:?} is {:?} after READY=1, expected SERVING",
            ServingStatus::try_from(response.status)
        );
    }
    Ok(channel)
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Drop cannot await, so kill and reap synchronously: the daemon
            // must be gone before its temp dir is removed. Errors are
            // ignored because Drop must never panic.
            let _ = child.start_kill();
            if let Some(pid) = child.id() {
                let _ = nix::sys::wait::waitpid(pid_of(pid), None);
            }
        }
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).expect("pids fit in i32"))
}

/// An exec spec running `argv` with every other field at its default.
pub fn exec_spec<I, S>(argv: I) -> JobSpec
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    JobSpec {
        kind: Some(job_spec::Kind::Exec(ExecSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            ..ExecSpec::default()
        })),
        ..JobSpec::default()
    }
}

/// A GET of `url` to `dest`, with every other field at its default.
pub fn fetch_spec(url: impl Into<String>, dest: &Path) -> JobSpec {
    JobSpec {
        kind: Some(job_spec::Kind::Fetch(FetchSpec {
            url: url.into(),
            dest: dest.to_string_lossy().into_owned(),
            ..FetchSpec::default()
        })),
        ..JobSpec::default()
    }
}

/// The fetch part of a spec, for tests that adjust its fields.
///
/// # Panics
///
/// When the spec is not a fetch spec.
pub fn fetch_mut(spec: &mut JobSpec) -> &mut FetchSpec {
    match spec.kind.as_mut() {
        Some(job_spec::Kind::Fetch(f)) => f,
        other => panic!("spec is not a fetch spec: {other:?}"),
    }
}

/// An exec spec running `sh -c script`.
pub fn sh(script: &str) -> JobSpec {
    exec_spec(["sh", "-c", script])
}

/// The exec part of a spec, for tests that adjust argv, env or cwd.
///
/// # Panics
///
/// When the spec is not an exec spec.
pub fn exec_mut(spec: &mut JobSpec) -> &mut ExecSpec {
    match spec.kind.as_mut() {
        Some(job_spec::Kind::Exec(exec)) => exec,
        Some(other) => panic!("spec is not an exec spec: {other:?}"),
        None => panic!("spec has no kind"),
    }
}

/// Submits one job and returns it as stored.
pub async fn submit(client: &mut JobsClient<Channel>, spec: JobSpec) -> Result<Job> {
    let response = timeout(WAIT, client.submit(SubmitRequest { spec: Some(spec) }))
        .await
        .map_err(|_| anyhow!("Submit timed out"))?
        .context("Submit")?
        .into_inner();
    response.job.context("SubmitResponse has no job")
}

/// Gets one job by id.
pub async fn get(client: &mut JobsClient<Channel>, id: u64) -> Result<Job> {
    let response = timeout(WAIT, client.get(GetRequest { id }))
        .await
        .map_err(|_| anyhow!("Get {id} timed out"))?
        .with_context(|| format!("Get {id}"))?
        .into_inner();
    response
        .job
        .with_context(|| format!("GetResponse for {id} has no job"))
}

/// The daemon's current stats.
pub async fn stats(client: &mut JobsClient<Channel>) -> Result<StatsResponse> {
    Ok(timeout(WAIT, client.stats(StatsRequest {}))
        .await
        .map_err(|_| anyhow!("Stats timed out"))?
        .context("Stats")?
        .into_inner())
}

/// Whether a job in `state` is finished for good.
pub fn is_terminal(state: i32) -> bool {
    [JobState::Succeeded, JobState::Failed, JobState::Cancelled]
        .iter()
        .any(|s| *s as i32 == state)
}

/// A state's proto name, for messages.
pub fn state_name(state: i32) -> &'static str {
    JobState::try_from(state).map_or("(unknown state)", |s| s.as_str_name())
}

/// Waits until job `id` is finished and returns it.
///
/// It takes `last_event_seq` before reading the job, then resumes Events
/// from there: any change after the read is replayed, so nothing is missed
/// and nothing is polled.
pub async fn wait_for_terminal(client: &mut JobsClient<Channel>, id: u64) -> Result<Job> {
    let mut events = EventStream::from_now(client, id).await?;
    let job = get(client, id).await?;
    if is_terminal(job.state) {
        return Ok(job);
    }
    events
        .wait_for(|e| e.job_id == id && is_terminal(e.state))
        .await
        .with_context(|| format!("waiting for job {id} to finish"))?;
    get(client, id).await
}

/// Waits until job `id` is running and returns it (with its pid).
///
/// Uses the same Stats-then-Get-then-Events order as [`wait_for_terminal`].
/// Fails if the job finishes without being seen running.
pub async fn wait_for_running(client: &mut JobsClient<Channel>, id: u64) -> Result<Job> {
    let mut events = EventStream::from_now(client, id).await?;
    let job = get(client, id).await?;
    if job.state == JobState::Running as i32 {
        return Ok(job);
    }
    ensure!(
        !is_terminal(job.state),
        "job {id} is already {} and will never run: {job:?}",
        state_name(job.state)
    );
    let event = events
        .wait_for(|e| {
            e.job_id == id && (e.state == JobState::Running as i32 || is_terminal(e.state))
        })
        .await
        .with_context(|| format!("waiting for job {id} to run"))?;
    ensure!(
        event.state == JobState::Running as i32,
        "job {id} finished without running: {event:?}"
    );
    let job = get(client, id).await?;
    ensure!(
        job.state == JobState::Running as i32,
        "job {id} stopped running before it could be read: {job:?}"
    );
    Ok(job)
}

/// Submits `n` jobs that sleep for a long time and returns them once each
/// is running, with its pid: jobs for a test to stop, kill or outlive.
/// The daemon needs `n` free slots.
pub async fn start_sleepers(client: &mut JobsClient<Channel>, n: usize) -> Result<Vec<Job>> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(submit(client, exec_spec(["sleep", "1000"])).await?.id);
    }
    let mut running = Vec::with_capacity(n);
    for id in ids {
        running.push(wait_for_running(client, id).await?);
    }
    Ok(running)
}

/// An open `Events` stream that remembers every event it has yielded.
#[derive(Debug)]
pub struct EventStream {
    stream: tonic::Streaming<EventsResponse>,
    seen: Vec<EventsResponse>,
}

impl EventStream {
    /// Events from now on: resumes after the current `last_event_seq`, so
    /// every change after this call returns is delivered, even ones that
    /// happen before the server has registered the subscription.
    /// `job_id` 0 means all jobs.
    pub async fn from_now(client: &mut JobsClient<Channel>, job_id: u64) -> Result<Self> {
        let after = stats(client).await?.last_event_seq;
        Self::after(client, Some(after), job_id).await
    }

    /// Opens `Events` with the given `after_seq` and `job_id`.
    pub async fn after(
        client: &mut JobsClient<Channel>,
        after_seq: Option<u64>,
        job_id: u64,
    ) -> Result<Self> {
        let stream = timeout(
            WAIT,
            client.events(EventsRequest {
                after_seq,
                job_id,
                progress: false,
                hosts: false,
                watches: false,
            }),
        )
        .await
        .map_err(|_| anyhow!("opening Events timed out"))?
        .context("Events")?
        .into_inner();
        Ok(Self {
            stream,
            seen: Vec::new(),
        })
    }

    /// The next event, failing if none comes within [`WAIT`] or the stream
    /// ends or errors.
    pub async fn next(&mut self) -> Result<EventsResponse> {
        let event = timeout(WAIT, self.stream.message())
            .await
            .map_err(|_| anyhow!("no event within {WAIT:?}; seen so far: {:?}", self.seen))?
            .context("Events stream failed")?
            .context("Events stream ended")?;
        self.seen.push(event.clone());
        Ok(event)
    }

    /// Reads events until one matches, and returns it. The whole wait is
    /// bounded by [`WAIT`].
    pub async fn wait_for(
        &mut self,
        mut matches: impl FnMut(&EventsResponse) -> bool,
    ) -> Result<EventsResponse> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.next())
                .await
                .map_err(|_| {
                    anyhow!("no matching event within {WAIT:?}; seen: {:?}", self.seen)
                })??;
            if matches(&event) {
                return Ok(event);
            }
        }
    }

    /// Reads events until job `id` enters `state`.
    pub async fn wait_state(&mut self, id: u64, state: JobState) -> Result<EventsResponse> {
        self.wait_for(|e| e.job_id == id && e.state == state as i32)
            .await
            .with_context(|| format!("waiting for job {id} to be {}", state.as_str_name()))
    }

    /// Reads events until every id in `ids` has finished.
    pub async fn wait_all_terminal(&mut self, ids: &[u64]) -> Result<()> {
        let mut left: std::collections::HashSet<u64> = ids.iter().copied().collect();
        // Some may have finished in events already read.
        for e in &self.seen {
            if is_terminal(e.state) {
                left.remove(&e.job_id);
            }
        }
        while !left.is_empty() {
            let event = self
                .wait_for(|e| is_terminal(e.state) && left.contains(&e.job_id))
                .await
                .with_context(|| format!("waiting for jobs {left:?} to finish"))?;
            left.remove(&event.job_id);
        }
        Ok(())
    }

    /// Every event yielded so far, in order.
    pub fn seen(&self) -> &[EventsResponse] {
        &self.seen
    }
}

/// A job's captured output, split by stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JobOutput {
    /// Everything read from stdout chunks, in order.
    pub stdout: Vec<u8>,
    /// Everything read from stderr chunks, in order.
    pub stderr: Vec<u8>,
}

impl JobOutput {
    fn push(&mut self, chunk: LogsResponse) -> Result<()> {
        match LogStream::try_from(chunk.stream) {
            Ok(LogStream::Stdout) => self.stdout.extend_from_slice(&chunk.data),
            Ok(LogStream::Stderr) => self.stderr.extend_from_slice(&chunk.data),
            _ => bail!("log chunk with no stream: {chunk:?}"),
        }
        Ok(())
    }
}

/// Opens `Logs` for job `id`.
pub async fn open_logs(
    client: &mut JobsClient<Channel>,
    id: u64,
    follow: bool,
    stream: LogStream,
) -> Result<tonic::Streaming<LogsResponse>> {
    Ok(timeout(
        WAIT,
        client.logs(LogsRequest {
            job_id: id,
            follow,
            stream: stream as i32,
            ..LogsRequest::default()
        }),
    )
    .await
    .map_err(|_| anyhow!("opening Logs of {id} timed out"))?
    .with_context(|| format!("Logs of {id}"))?
    .into_inner())
}

/// Reads the whole stored output of job `id` (without follow, so what is
/// stored now), optionally of one stream only, a page at a time as the
/// daemon gives them.
pub async fn read_logs(
    client: &mut JobsClient<Channel>,
    id: u64,
    stream: LogStream,
) -> Result<JobOutput> {
    let streams = match stream {
        LogStream::Unspecified => vec![LogStream::Stdout, LogStream::Stderr],
        s => vec![s],
    };
    let mut output = JobOutput::default();
    for s in streams {
        let mut offset = None;
        loop {
            let req = LogsRequest {
                job_id: id,
                stream: s as i32,
                offset,
                ..LogsRequest::default()
            };
            let mut logs = timeout(WAIT, client.logs(req))
                .await
                .map_err(|_| anyhow!("opening Logs of {id} timed out"))?
                .with_context(|| format!("Logs of {id}"))?
                .into_inner();
            let mut next = None;
            while let Some(chunk) = timeout(WAIT, logs.message())
                .await
                .map_err(|_| anyhow!("Logs of {id} without follow did not end within {WAIT:?}"))?
                .with_context(|| format!("reading Logs of {id}"))?
            {
                next = chunk.next_offset.or(next);
                output.push(chunk)?;
            }
            match next {
                Some(n) => offset = Some(n),
                None => break,
            }
        }
    }
    Ok(output)
}

/// Follows job `id`'s stdout until it contains `needle`; for tests that
/// must know a job's script has reached some point.
pub async fn wait_for_stdout(
    client: &mut JobsClient<Channel>,
    id: u64,
    needle: &str,
) -> Result<()> {
    wait_for_output(client, id, LogStream::Stdout, needle).await
}

/// Follows one of job `id`'s streams (stdout or stderr) until it contains
/// `needle`.
pub async fn wait_for_output(
    client: &mut JobsClient<Channel>,
    id: u64,
    stream: LogStream,
    needle: &str,
) -> Result<()> {
    let mut logs = open_logs(client, id, true, stream).await?;
    let mut output = JobOutput::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    let seen = |o: &JobOutput| {
        let bytes = if stream == LogStream::Stderr {
            &o.stderr
        } else {
            &o.stdout
        };
        String::from_utf8_lossy(bytes).contains(needle)
    };
    while !seen(&output) {
        let chunk = tokio::time::timeout_at(deadline, logs.message())
            .await
            .map_err(|_| anyhow!("job {id} printed no {needle:?} within {WAIT:?}"))?
            .with_context(|| format!("following Logs of {id}"))?
            .with_context(|| format!("job {id} ended without printing {needle:?}"))?;
        output.push(chunk)?;
    }
    Ok(())
}

/// Asserts that a unary call failed with `code`, and returns the status.
pub fn expect_code<T: std::fmt::Debug>(
    result: std::result::Result<T, tonic::Status>,
    code: tonic::Code,
) -> Result<tonic::Status> {
    match result {
        Ok(value) => bail!("expected {code:?}, got success: {value:?}"),
        Err(status) if status.code() == code => Ok(status),
        Err(status) => bail!("expected {code:?}, got {status:?}"),
    }
}

/// Asserts that a server-streaming call failed with `code`, whether the
/// server refused the call itself or ended the stream with it first.
pub async fn expect_stream_code<T: std::fmt::Debug>(
    result: std::result::Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
    code: tonic::Code,
) -> Result<tonic::Status> {
    let mut stream = match result {
        Ok(response) => response.into_inner(),
        Err(status) => return expect_code::<()>(Err(status), code),
    };
    let first = timeout(WAIT, stream.message())
        .await
        .map_err(|_| anyhow!("expected {code:?}, but the stream stayed open for {WAIT:?}"))?;
    match first {
        Err(status) if status.code() == code => Ok(status),
        other => bail!("expected {code:?}, got {other:?}"),
    }
}

/// A proto duration for `d`.
///
/// # Panics
///
/// When `d` is too large for the proto type, which no test uses.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).expect("duration in range")
}

/// A proto timestamp for `time`.
pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

/// `time` as a [`SystemTime`].
///
/// # Panics
///
/// When the timestamp is out of range, which the daemon never sends.
pub fn system_time(time: &prost_types::Timestamp) -> SystemTime {
    SystemTime::try_from(*time).expect("timestamp in range")
}

/// The live processes whose process group is `pgid`, found by scanning
/// `/proc/*/stat`. Zombies are left out: they have exited and only wait for
/// a parent (possibly an init that never reaps) to collect them.
pub fn processes_in_group(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // The process may exit between read_dir and this read.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, group)) = parse_stat(&stat)
            && group == pgid
            && state != 'Z'
            && state != 'X'
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// The fields of a `/proc/<pid>/stat` line from the third (the state) on.
///
/// The second field is the command name in parentheses, which may itself
/// contain spaces and parentheses, so fields are counted from the last ')'.
pub fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// Parses the state and process group out of a `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    let mut fields = stat_fields(stat)?;
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Asserts that no process of group `pgid` survives.
///
/// A process killed with SIGKILL is not gone the instant `kill` returns: it
/// still has to be scheduled to exit. So each process still found in the
/// group is awaited through a pidfd, which becomes readable when it exits,
/// for at most `grace`. One that the daemon really left behind (a `sleep
/// 100`) outlives any grace a test uses, and fails the assertion.
pub async fn assert_group_gone(pgid: u32, grace: Duration) -> Result<()> {
    let survivors = survivors(processes_in_group(pgid), grace).await?;
    ensure!(
        survivors.is_empty(),
        "processes of group {pgid} survive: {survivors:?}"
    );
    Ok(())
}

/// Asserts that process `pid` exits within `grace` (waited for through a
/// pidfd, as in [`assert_group_gone`]).
pub async fn assert_process_gone(pid: u32, grace: Duration) -> Result<()> {
    let survivors = survivors(vec![pid], grace).await?;
    ensure!(survivors.is_empty(), "process survives: {survivors:?}");
    Ok(())
}

/// Which of `pids` are still alive after `grace`, described.
async fn survivors(pids: Vec<u32>, grace: Duration) -> Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + grace;
    let mut survivors = Vec::new();
    for pid in pids {
        let Some(fd) = pidfd_open(pid) else {
            // It exited between the scan and pidfd_open.
            continue;
        };
        // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and
        // the same for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(std::io::Error::from)
            .context("registering a pidfd with tokio")?;
        if tokio::time::timeout_at(deadline, fd.readable())
            .await
            .is_err()
        {
            survivors.push(describe_process(pid));
        }
    }
    Ok(survivors)
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0 as libc::c_uint) };
    if fd < 0 {
        return None;
    }
    let fd = libc::c_int::try_from(fd).ok()?;
    // SAFETY: the fd was just returned by the kernel and is owned by no one
    // else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn describe_process(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    format!("{pid} ({cmdline})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_counts_fields_after_the_last_paren() {
        let stat = "4242 (we) ird (name) S 1 4240 4240 0 -1 4194560";
        assert_eq!(parse_stat(stat), Some(('S', 4240)));
        assert_eq!(parse_stat("1 (sh) Z 0 77 77"), Some(('Z', 77)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn processes_in_group_finds_this_process() {
        let me = std::process::id();
        let pgid = nix::unistd::getpgrp().as_raw().cast_unsigned();
        assert!(processes_in_group(pgid).contains(&me));
    }

    /// The group check must be able to fail: a live process in the group
    /// is reported, and once it is killed the group counts as gone.
    #[tokio::test]
    async fn assert_group_gone_reports_a_survivor() -> Result<()> {
        use std::os::unix::process::CommandExt as _;
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .process_group(0)
            .spawn()?;
        let pgid = child.id();
        ensure!(
            processes_in_group(pgid) == [pgid],
            "the sleep leads its own group"
        );
        let err = assert_group_gone(pgid, Duration::from_millis(200))
            .await
            .expect_err("a live sleep must be reported");
        ensure!(
            err.to_string().contains("sleep 100"),
            "unhelpful report: {err}"
        );

        kill(Pid::from_raw(-pid_of(pgid).as_raw()), Signal::SIGKILL)?;
        // Not reaped on purpose: a zombie has exited and must not count.
        assert_group_gone(pgid, WAIT).await?;
        child.wait()?;
        Ok(())
    }

    #[test]
    fn terminal_states() {
        assert!(is_terminal(JobState::Failed as i32));
        assert!(is_terminal(JobState::Cancelled as i32));
        assert!(!is_terminal(JobState::Scheduled as i32));
        assert!(!is_terminal(JobState::Running as i32));
    }
}
