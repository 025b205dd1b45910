//! Starting and stopping the daemon: the socket, boot recovery, the gRPC
//! server, and the ordered shutdown.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quern_proto::v1::jobs_server::JobsServer;
use quern_proto::v1::watches_server::WatchesServer;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::api::{JobsService, WatchesService};
use crate::clock::Clock;
use crate::config::Config;
use crate::jobs::Jobs;
use crate::logs::LogStore;
use crate::platform;
use crate::progress::ProgressBoard;
use crate::retention::Retention;
use crate::runner::in_process::CpuPool;
use crate::runner::{self, KindEnv, RunnerCtx};
use crate::scheduler::Scheduler;
use crate::store::{Commit, Store, StoreError};
use crate::watch::rules::Watches;

mod authority;
use authority::AuthorityFilter;

/// Largest gRPC message accepted. Above one spec's own 1 MiB limit so that
/// big batches fit, and so that an oversized spec gets a precise
/// INVALID_ARGUMENT from validation rather than a transport error.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Most requests one connection may have open at once, streams included;
/// the server says so in its HTTP/2 settings, and a client's further
/// requests wait for one to end. Bounds what one client can make the daemon
/// hold, well above what a client follows at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// How long a shutdown waits for clients' open requests to end before it
/// closes their connections.
const SERVER_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Errors that stop the daemon from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon answers on the socket.
    #[error("socket {path} is in use by {owner}; stop that daemon or pass --socket")]
    SocketInUse {
        /// The socket.
        path: PathBuf,
        /// Who holds it, as far as we can tell.
        owner: String,
    },
    /// Something other than a socket is at the path.
    #[error("{path} exists and is not a socket; remove it or pass --socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The runtime directory is not private to us.
    #[error(
        "directory {path} is {problem}; remove it, or set XDG_RUNTIME_DIR, or pass --socket elsewhere"
    )]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A filesystem operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The store refused to open or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Server(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Binds the daemon's socket with mode 0600, in a directory created with
/// mode 0700. A stale socket (nobody answering) is replaced; a live one is
/// an error that names it.
///
/// Call this before starting any threads: it briefly changes the process
/// umask so the socket never exists with looser permissions.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, DaemonError> {
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                // A socket records who called listen(). If that process is
                // gone, what answered is a copy of its socket held by one of
                // its job processes that has neither exec'd nor died yet:
                // after a kill -9, that lasts until the parent-death signal
                // is delivered. The socket is stale all the same.
                Ok(stream) => match peer_pid(&stream) {
                    Some(pid) if !process_exists(pid) => {
                        tracing::info!(socket = %path.display(), pid, "replacing the socket of a daemon that is gone");
                        std::fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
                    }
                    pid => {
                        return Err(DaemonError::SocketInUse {
                            path: path.to_path_buf(),
                            owner: pid.map_or_else(
                                || "another process".to_string(),
                                |p| format!("pid {p}"),
                            ),
                        });
                    }
                },
                Err(_) => {
                    tracing::info!(socket = %path.display(), "replacing stale socket");
                    std::fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
                }
            }
        }
        Ok(_) => {
            return Err(DaemonError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(_) => {}
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err("bind socket", path))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("configure socket", path))?;
    Ok(listener)
}

fn peer_pid(stream: &std::os::unix::net::UnixStream) -> Option<i32> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.pid())
}

/// Whether process `pid` exists (another user's counts).
fn process_exists(pid: i32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// How long a start waits for the database lock of a daemon that is gone.
const STORE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens the store, waiting up to [`STORE_LOCK_WAIT`] while its file is
/// locked.
///
/// After a kill -9, a job process of the dead daemon that has neither
/// exec'd nor died yet holds a copy of the database's descriptor, and with
/// it redb's lock, until its parent-death signal is delivered: a few
/// milliseconds, longer on a loaded machine. The lock cannot be waited on
/// through redb, so the open is retried every 10 ms; a lock that outlasts
/// the wait belongs to a live daemon and is reported as such.
async fn open_store(config: &Config) -> Result<Store, StoreError> {
    let deadline = tokio::time::Instant::now() + STORE_LOCK_WAIT;
    loop {
        // Opening reads the file, and may migrate it: seconds, for a large
        // store, that must not hold a runtime thread.
        let (dir, retention, cache, linger) = (
            config.state_dir.clone(),
            config.event_retention,
            config.db_cache_bytes,
            config.commit_linger,
        );
        let opened =
            tokio::task::spawn_blocking(move || Store::open(&dir, retention, cache, linger))
                .await
                .map_err(|e| StoreError::Db {
                    op: "open",
                    detail: e.to_string(),
                })?;
        match opened {
            Err(StoreError::InUse { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            done => return done,
        }
    }
}

/// Creates `dir` (mode 0700) if needed. The /tmp fallback must be ours and
/// private, since anyone can create directories there.
fn ensure_private_dir(dir: &Path) -> Result<(), DaemonError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))?;
    if dir == quern_proto::fallback_runtime_dir() {
        let meta = std::fs::symlink_metadata(dir).map_err(io_err("inspect directory", dir))?;
        let me = nix::unistd::getuid().as_raw();
        if !meta.is_dir() || meta.uid() != me {
            return Err(DaemonError::UnsafeDir {
                path: dir.to_path_buf(),
                problem: format!("not a directory owned by uid {me}"),
            });
        }
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err("restrict directory", dir))?;
        }
    }
    Ok(())
}

/// Runs the daemon on `listener` until `shutdown` fires, then drains:
/// health NOT_SERVING, stop accepting, stop running jobs (they return to the
/// queue), close the store.
pub async fn run(
    config: Config,
    listener: tokio::net::UnixListener,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.state_dir)
        .map_err(io_err("create state directory", &config.state_dir))?;
    let store = open_store(&config).await?;
    let log_dir = config.state_dir.join("logs");
    let logs = Arc::new(
        LogStore::new(log_dir.clone(), config.log_cap_bytes)
            .map_err(io_err("create log directory", &log_dir))?,
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    health.set_not_serving::<JobsServer<JobsService>>().await;
    health
        .set_not_serving::<WatchesServer<WatchesService>>()
        .await;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let clock = Clock::System;
    let progress = ProgressBoard::new();
    let admission = Admission::with_fetch(config.concurrency, config.fetch.clone(), clock);
    let ctx = Arc::new(RunnerCtx {
        store: store.clone(),
        logs: logs.clone(),
        progress: progress.clone(),
        kinds: runner::Kinds::builtin(),
        env: Arc::new(KindEnv {
            // CPU-heavy work of in-process kinds gets a thread per core,
            // and no more: beyond that it would only take turns with the
            // jobs.
            cpu: CpuPool::new(cores)
                .map_err(|e| DaemonError::Server(format!("cannot start the CPU pool: {e}")))?,
            config: config.clone(),
            default_cwd: config.state_dir.clone(),
            state_dir: config.state_dir.clone(),
            clock,
            // Fetch attempts tell admission how each host answered.
            hosts: admission.hosts().clone(),
            git_result_json: crate::api::git_result_json,
        }),
    });
    // A job thread per core, or per job slot if fewer.
    let (scheduler, sched_handle) =
        Scheduler::new(ctx.clone(), admission, cores.min(config.concurrency))
            .map_err(|e| DaemonError::Server(format!("cannot start a jobs runtime: {e}")))?;

    let jobs = Jobs::new(store.clone(), sched_handle, progress, clock);
    let retention = Arc::new(Retention::new(
        store.clone(),
        logs.clone(),
        config.retention,
        clock,
        &config.state_dir,
    ));
    let watches_stop = shutdown.child_token();
    let watches = Watches::load(
        jobs.clone(),
        store.clone(),
        config.watch.clone(),
        &config.state_dir,
        config.default_grace,
        watches_stop,
    )
    .await
    .map_err(|e| DaemonError::Server(format!("cannot load the watch rules: {e}")))?;
    let watches_service = WatchesService::new(watches.clone(), jobs.clone());
    let streams_stop = shutdown.child_token();
    let service = JobsService::new(jobs, logs, retention.clone(), config.clone(), streams_stop)
        .with_watches(watches.clone());
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quern_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| DaemonError::Server(e.to_string()))?;

    // Only our own user may talk to us. The socket's mode already says so;
    // this also holds if someone loosens it.
    let me = nix::unistd::getuid().as_raw();
    let incoming = UnixListenerStream::new(listener)
        .filter(move |conn| match conn {
            Ok(stream) => match stream.peer_cred() {
                Ok(cred) if cred.uid() == me => true,
                Ok(cred) => {
                    tracing::warn!(uid = cred.uid(), "refused a connection from another user");
                    false
                }
                Err(_) => false,
            },
            Err(_) => true,
        })
        // Clients such as grpcio send the socket path as :authority, which h2
        // refuses; the filter gives h2 `localhost` instead (see its module).
        .map(|conn| conn.map(AuthorityFilter::new));

    let tracker = TaskTracker::new();
    let server_stop = shutdown.child_token();
    let server = {
        let stop = server_stop.clone();
        tracker.spawn(
            tonic::transport::Server::builder()
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                .add_service(health_service)
                .add_service(reflection)
                .add_service(
                    JobsServer::new(service)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES),
                )
                .add_service(
                    WatchesServer::new(watches_service)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES),
                )
                .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await }),
        )
    };

    recover(&ctx).await?;
    tracker.spawn(retention.run(shutdown.child_token()));

    let sched_stop = shutdown.child_token();
    let sched = scheduler
        .spawn(sched_stop)
        .map_err(|e| DaemonError::Server(format!("cannot start a jobs thread: {e}")))?;
    // Rules start after recovery, with the scheduler taking their jobs;
    // each first compares its tree with its snapshot (a catch-up).
    watches.begin();

    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health.set_serving::<JobsServer<JobsService>>().await;
    health.set_serving::<WatchesServer<WatchesService>>().await;
    platform::notify_ready();
    tracing::info!(socket = %config.socket.display(), state_dir = %config.state_dir.display(), concurrency = config.concurrency, "quernd ready");

    // A store that can no longer write stops the daemon, with an error,
    // so that a service manager restarts it: serving reads while every
    // write fails would look healthy and lose work.
    let store_failed = store.failed();
    let failure = tokio::select! {
        () = shutdown.cancelled() => None,
        () = store_failed.cancelled() => store.failure(),
    };
    if let Some(e) = &failure {
        tracing::error!(error = %e, "quernd stops: its store failed");
        shutdown.cancel();
    }
    tracing::info!("shutting down");
    platform::notify_stopping();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    health.set_not_serving::<JobsServer<JobsService>>().await;
    health
        .set_not_serving::<WatchesServer<WatchesService>>()
        .await;
    // The children of `shutdown` have fired too: the server stops
    // accepting, streams end, and the scheduler stops its jobs. Wait for
    // both before closing the store, which they still write to.
    let _ = sched.await;
    // Rules store their triggers until they stop.
    watches.closed().await;
    // Streams the daemon does not end itself, such as a health Watch, would
    // hold the server's drain open for as long as their client likes.
    let mut server = server;
    let served = match tokio::time::timeout(SERVER_DRAIN, &mut server).await {
        Ok(served) => served,
        Err(_) => {
            tracing::warn!(after = ?SERVER_DRAIN, "closing the connections of clients still streaming");
            server.abort();
            Ok(Ok(()))
        }
    };
    tracker.close();
    tracker.wait().await;
    store.close().await;
    tracing::info!("stopped");
    if let Some(e) = failure {
        return Err(e.into());
    }
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DaemonError::Server(e.to_string())),
        Err(e) => Err(DaemonError::Server(e.to_string())),
    }
}

/// Deals with jobs that were running when the previous daemon died: each
/// one's kind cleans up what its attempt left (for exec, what is left of
/// its process group), then the job is retried or failed. Runs before
/// health says SERVING.
async fn recover(ctx: &RunnerCtx) -> Result<(), DaemonError> {
    let interrupted = ctx.store.running().await?;
    for job in interrupted {
        let crate::job::JobState::Running { run } = &job.state else {
            continue;
        };
        let outcome = runner::recover(ctx, &job, run);
        let after = ctx
            .store
            // One job after another: each would wait out a linger.
            .finish(
                job.id,
                job.attempts,
                job.started_at,
                outcome,
                ctx.env.clock.now_micros(),
                Commit::Now,
            )
            .await?;
        tracing::warn!(
            job = job.id,
            state = after.state.tag().name(),
            "recovered job interrupted by a daemon restart"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Forks a child that runs `then` (async-signal-safe calls only) and
    /// exits; returns its pid.
    fn fork_child(then: impl FnOnce()) -> libc::pid_t {
        // SAFETY: the child only runs `then`, which the callers keep to
        // async-signal-safe calls, and then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            then();
            // SAFETY: ends the child without running any Rust cleanup.
            unsafe { libc::_exit(0) };
        }
        pid
    }

    fn reap(pid: libc::pid_t) {
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    }

    /// The socket answers, but the process that made it listen is gone: as
    /// after a kill -9 while a job process of the dead daemon still holds a
    /// copy of its socket. A new start must replace it, not refuse.
    #[test]
    fn a_socket_whose_listening_process_is_gone_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quernd.sock");
        let old = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        nix::sys::socket::bind(
            old.as_raw_fd(),
            &nix::sys::socket::UnixAddr::new(&path).unwrap(),
        )
        .unwrap();
        let raw = old.as_raw_fd();
        // SAFETY: listen(2) on a descriptor this process owns.
        let child = fork_child(|| unsafe {
            libc::listen(raw, 8);
        });
        reap(child);
        // Precondition: the old socket still answers, through our copy.
        let probe = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert_eq!(peer_pid(&probe), Some(child));
        drop(probe);

        let listener = bind(&path).expect("a socket whose daemon is gone is stale");
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        listener.set_nonblocking(false).unwrap();
        listener
            .accept()
            .expect("the new socket takes the connection");
    }

    #[test]
    fn a_socket_whose_listening_process_lives_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quernd.sock");
        let _first = bind(&path).unwrap();
        match bind(&path) {
            Err(DaemonError::SocketInUse { owner, .. }) => {
                assert_eq!(owner, format!("pid {}", std::process::id()));
            }
            other => panic!("expected SocketInUse, got {other:?}"),
        }
    }

    /// A process that inherited the database's descriptor holds its lock
    /// for a moment after the daemon is gone; the start waits it out. The
    /// lock here is the whole-file flock redb also takes on Linux, which a
    /// forked process shares until it exits, like the daemon's own locks.
    #[tokio::test]
    async fn a_start_waits_for_a_database_lock_held_by_a_dying_process() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path(), 10, 1 << 20, std::time::Duration::ZERO)
            .unwrap()
            .close()
            .await;
        let db = std::fs::File::open(dir.path().join(crate::store::DB_FILE)).unwrap();
        // SAFETY: flock(2) on a descriptor this test owns.
        let locked = unsafe { libc::flock(db.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(locked, 0, "flock: {}", std::io::Error::last_os_error());
        let child = fork_child(|| {
            // SAFETY: usleep is async-signal-safe.
            unsafe { libc::usleep(300_000) };
        });
        // Closing our descriptor leaves the lock to the child's copy, as a
        // kill -9 leaves it to a job process that has not exec'd yet.
        drop(db);
        // Precondition: the lock is what a plain open runs into.
        assert!(matches!(
            Store::open(dir.path(), 10, 1 << 20, std::time::Duration::ZERO),
            Err(StoreError::InUse { .. })
        ));

        let config = Config {
            state_dir: dir.path().to_path_buf(),
            ..Config::for_dir(dir.path())
        };
        let store = open_store(&config).await;
        reap(child);
        assert!(store.is_ok(), "{:?}", store.err());
    }

    /// A store whose writer dies stops the daemon: health goes NOT_SERVING,
    /// writes are UNAVAILABLE naming the cause, and `run` fails, so that
    /// quernd exits non-zero and its service manager restarts it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_whose_writer_dies_stops_the_daemon_with_an_error() {
        use quern_proto::v1::jobs_client::JobsClient;
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::health_client::HealthClient;

        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            // Retention keeps off the store, so that the first commit is
            // the test's Submit.
            retention: crate::config::Retention::NONE,
            ..Config::for_dir(dir.path())
        };
        crate::store::PANIC_AT_FIRST_COMMIT
            .lock()
            .unwrap()
            .push(config.state_dir.clone());
        let listener = tokio::net::UnixListener::from_std(bind(&config.socket).unwrap()).unwrap();
        let socket = config.socket.clone();
        let daemon = tokio::spawn(run(config, listener, CancellationToken::new()));

        let test = async {
            let channel = quern_proto::connect(&socket).await.unwrap();
            let mut watch = HealthClient::new(channel.clone())
                .watch(HealthCheckRequest::default())
                .await
                .unwrap()
                .into_inner();
            // Boot is done when health says SERVING.
            while watch.message().await.unwrap().unwrap().status != ServingStatus::Serving as i32 {}
            let spec = quern_proto::v1::JobSpec {
                kind: Some(quern_proto::v1::job_spec::Kind::Exec(
                    quern_proto::v1::ExecSpec {
                        argv: vec!["true".into()],
                        ..Default::default()
                    },
                )),
                ..Default::default()
            };
            let refused = JobsClient::new(channel)
                .submit(quern_proto::v1::SubmitRequest { spec: Some(spec) })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
            assert!(
                refused
                    .message()
                    .contains("its writer thread panicked: panicked on purpose by a test"),
                "{}",
                refused.message()
            );
            // Health says so before the server goes.
            let next = watch.message().await.unwrap().unwrap();
            assert_eq!(next.status, ServingStatus::NotServing as i32);
            // The server's drain waits for open streams to end.
            drop(watch);
            match daemon.await.unwrap() {
                Err(DaemonError::Store(StoreError::Failed { cause })) => {
                    assert!(cause.contains("panicked on purpose"), "{cause}")
                }
                other => panic!("run ended with {other:?}"),
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), test)
            .await
            .expect("the daemon stopped");
    }
}
