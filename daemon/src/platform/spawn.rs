//! Starting a job's process: in its own process group, with its stdio
//! replaced, and (on Linux) killed by the kernel if the daemon dies.
//!
//! On Linux this is hand-written on `clone(CLONE_VM | CLONE_VFORK)` because
//! no crate (std, tokio, nix) offers what a job start needs in one step:
//! std's `Command` falls back from `posix_spawn` to `fork` as soon as a
//! `pre_exec` hook is set, and arming the parent-death signal needs one.
//! Forking the multi-threaded daemon costs milliseconds per job (page-table
//! copies, TLB shootdowns, copy-on-write faults), and the previous way round
//! it, `posix_spawn`ing quernd itself as a shim that armed the signal and
//! exec'd the job, paid a whole extra exec. The child here shares the
//! daemon's memory until it execs (as `posix_spawn` does), makes only raw
//! async-signal-safe system calls, and the daemon waits for it through a
//! pidfd, so no SIGCHLD handler is involved.
//!
//! Elsewhere the job is started with std's `posix_spawn` path and there is
//! no parent-death signal.

use std::borrow::Cow;
use std::ffi::CStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::ExitStatus;

/// What to start.
pub struct SpawnSpec<'a> {
    /// The resolved executable.
    pub program: &'a Path,
    /// The full argv, argv[0] included (it need not name `program`).
    pub argv: &'a [String],
    /// The working directory.
    pub cwd: &'a Path,
    /// The whole environment of the new process, as `KEY=VALUE` strings.
    /// Borrowed where it can be: the variables every job inherits are
    /// encoded once (see `runner::exec`).
    pub env: Vec<Cow<'a, CStr>>,
    /// Becomes the job's stdout.
    pub stdout: OwnedFd,
    /// Becomes the job's stderr.
    pub stderr: OwnedFd,
}

/// A started job process, not yet waited for.
pub struct JobProcess {
    pid: u32,
    start_time: Option<u64>,
    status: Option<ExitStatus>,
    #[cfg(target_os = "linux")]
    waiter: linux::Waiter,
    #[cfg(not(target_os = "linux"))]
    child: tokio::process::Child,
}

impl JobProcess {
    /// The process id, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process's start time as `/proc/<pid>/stat` gives it, which with
    /// the pid tells this process from a later one that reuses the pid;
    /// `None` where unknown.
    pub fn start_time(&self) -> Option<u64> {
        self.start_time
    }

    /// Waits for the process to exit and reaps it. Cancel-safe, and may be
    /// called again after it returned: it then returns the same status.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        #[cfg(target_os = "linux")]
        let s = self.waiter.wait(self.pid).await?;
        #[cfg(not(target_os = "linux"))]
        let s = self.child.wait().await?;
        self.status = Some(s);
        Ok(s)
    }
}

/// Starts `spec`. Must be called from a thread that lives as long as the
/// job may run (a runtime worker, not `spawn_blocking`): on Linux the
/// parent-death signal fires when the *thread* that started the child
/// exits.
pub fn spawn(spec: SpawnSpec<'_>) -> io::Result<JobProcess> {
    #[cfg(target_os = "linux")]
    {
        linux::spawn(spec)
    }
    #[cfg(not(target_os = "linux"))]
    {
        portable_spawn(spec)
    }
}

#[cfg(not(target_os = "linux"))]
fn portable_spawn(spec: SpawnSpec<'_>) -> io::Result<JobProcess> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut cmd = tokio::process::Command::new(spec.program);
    cmd.arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .current_dir(spec.cwd)
        .env_clear()
        .envs(spec.env.iter().filter_map(|kv| {
            use std::os::unix::ffi::OsStrExt;
            let kv = kv.to_bytes();
            let eq = kv.iter().position(|&b| b == b'=')?;
            Some((
                std::ffi::OsStr::from_bytes(&kv[..eq]),
                std::ffi::OsStr::from_bytes(&kv[eq + 1..]),
            ))
        }))
        .stdin(Stdio::null())
        .stdout(Stdio::from(spec.stdout))
        .stderr(Stdio::from(spec.stderr))
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the job process vanished before its pid was read"))?;
    Ok(JobProcess {
        pid,
        start_time: crate::platform::process::start_time(pid),
        status: None,
        child,
    })
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::ffi::{CString, OsStr};
    use std::os::fd::{AsRawFd, FromRawFd, RawFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::atomic::{AtomicI32, Ordering};
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    /// Which step of starting the process failed, for the error message.
    fn step_name(step: i32) -> &'static str {
        match step {
            STEP_PARENT => "arming the parent-death signal",
            STEP_PGROUP => "creating its process group",
            STEP_CWD => "changing to its working directory",
            STEP_STDIO => "setting up its stdin, stdout and stderr",
            _ => "executing it",
        }
    }

    const STEP_PARENT: i32 = 1;
    const STEP_PGROUP: i32 = 2;
    const STEP_CWD: i32 = 3;
    const STEP_STDIO: i32 = 4;
    const STEP_EXEC: i32 = 5;

    fn cstring(s: &OsStr, what: &str) -> io::Result<CString> {
        CString::new(s.as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} contains a NUL byte"),
            )
        })
    }

    /// The child's stack. It runs a handful of system calls and nothing
    /// else, but glibc's wrappers and a debug build's frames need some room.
    const STACK_SIZE: usize = 64 * 1024;

    thread_local! {
        /// Each thread's child stack, kept between spawns: the child is done
        /// with it once `clone` returns (CLONE_VFORK), and allocating and
        /// zeroing a fresh one per job showed up in profiles as a 64 KiB
        /// memset plus 16 page faults.
        static STACK: std::cell::Cell<Option<Box<[u8]>>> = const { std::cell::Cell::new(None) };
    }

    /// `/dev/null`, opened once and shared by every job as its stdin: the
    /// child only dup2s it, so one descriptor serves them all.
    static DEV_NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

    fn dev_null() -> io::Result<RawFd> {
        if let Some(fd) = DEV_NULL.get() {
            return Ok(fd.as_raw_fd());
        }
        let fd = above_stdio(
            std::fs::File::open("/dev/null")
                .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/null: {e}")))?
                .into(),
        )?;
        // Two threads may race here; the loser's descriptor is closed.
        Ok(DEV_NULL.get_or_init(|| fd).as_raw_fd())
    }

    /// Everything the child reads, prepared by the parent: the child must
    /// not allocate or take a lock, because the daemon's other threads keep
    /// running in the same memory while it exists.
    #[repr(C)]
    struct ChildArgs {
        program: *const libc::c_char,
        argv: *const *const libc::c_char,
        envp: *const *const libc::c_char,
        cwd: *const libc::c_char,
        stdin: RawFd,
        stdout: RawFd,
        stderr: RawFd,
        parent: libc::pid_t,
        /// Where the child copies its own `/proc/self/stat`, for its start
        /// time, and how many bytes it copied (negative: none).
        stat: *mut u8,
        stat_cap: usize,
        stat_len: std::sync::atomic::AtomicIsize,
        /// Set by the child before it gives up: which step failed...
        failed_step: AtomicI32,
        /// ...and its errno.
        errno: AtomicI32,
    }

    /// The child side, running on its own stack in the daemon's memory
    /// until execve replaces it.
    extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` points at the parent's ChildArgs (and the buffer it
        // names), which outlive the child's use of them: the parent is
        // suspended (CLONE_VFORK) until we exec or exit. Every call below is
        // a plain system call wrapper.
        unsafe {
            let a = &*(arg as *const ChildArgs);
            let fail = |step: i32| -> libc::c_int {
                a.errno.store(*libc::__errno_location(), Ordering::Relaxed);
                a.failed_step.store(step, Ordering::Relaxed);
                libc::_exit(127)
            };
            // Handlers belong to the daemon's code; the job starts with the
            // default disposition for everything (the table is our own copy:
            // no CLONE_SIGHAND). Signals stay blocked meanwhile.
            // The raw system call, because glibc's wrapper refuses the two
            // signals it reserves (32 and 33), which may be ignored too. The
            // kernel's struct is handler, flags, restorer, mask: all zero is
            // SIG_DFL with an empty mask.
            let dfl = [0u64; 4];
            for sig in 1..=64 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::syscall(libc::SYS_rt_sigaction, sig, dfl.as_ptr(), 0usize, 8usize);
                }
            }
            // The child reads its own start time: the daemon reading
            // `/proc/<pid>/stat` after the start waits for the exec to
            // finish (the kernel holds a lock of the process while it
            // execs), a thread switch per job. Best effort: without /proc
            // the start time is unknown, as it was before.
            let fd = libc::open(
                c"/proc/self/stat".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                let n = libc::read(fd, a.stat.cast(), a.stat_cap);
                a.stat_len.store(n, Ordering::Relaxed);
                libc::close(fd);
            }
            if libc::setpgid(0, 0) != 0 {
                return fail(STEP_PGROUP);
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return fail(STEP_PARENT);
            }
            // The daemon may have died before the signal was armed, in which
            // case it will never come.
            if libc::getppid() != a.parent {
                *libc::__errno_location() = libc::ESRCH;
                return fail(STEP_PARENT);
            }
            if libc::chdir(a.cwd) != 0 {
                return fail(STEP_CWD);
            }
            // The sources are all above 2 (see `above_stdio`), so no dup2
            // clobbers a later source; dup2 clears close-on-exec on the copy.
            for (src, dst) in [(a.stdin, 0), (a.stdout, 1), (a.stderr, 2)] {
                if libc::dup2(src, dst) < 0 {
                    return fail(STEP_STDIO);
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execve(a.program, a.argv, a.envp);
            fail(STEP_EXEC)
        }
    }

    /// Moves `fd` to a number above 2 (close-on-exec), so the child's dup2
    /// onto 0, 1 and 2 never overwrites another source. Only matters when
    /// the daemon was started with its own stdio closed.
    fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
        if fd.as_raw_fd() > 2 {
            return Ok(fd);
        }
        // SAFETY: fcntl on a descriptor we own; the result is a new one we
        // take ownership of.
        let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if new < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `new` is a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(new) })
    }

    pub(super) fn spawn(spec: SpawnSpec<'_>) -> io::Result<JobProcess> {
        let program = cstring(spec.program.as_os_str(), "the program path")?;
        let argv: Vec<CString> = spec
            .argv
            .iter()
            .map(|a| cstring(OsStr::new(a), "an argument"))
            .collect::<io::Result<_>>()?;
        let cwd = cstring(spec.cwd.as_os_str(), "the working directory")?;
        let ptrs = |v: &mut dyn Iterator<Item = *const libc::c_char>| {
            v.chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        let argv_ptrs = ptrs(&mut argv.iter().map(|c| c.as_ptr()));
        let env_ptrs = ptrs(&mut spec.env.iter().map(|c| c.as_ptr()));
        let stdin = dev_null()?;
        let stdout = above_stdio(spec.stdout)?;
        let stderr = above_stdio(spec.stderr)?;
        let mut stat = [0u8; 1024];
        let args = ChildArgs {
            program: program.as_ptr(),
            argv: argv_ptrs.as_ptr(),
            envp: env_ptrs.as_ptr(),
            cwd: cwd.as_ptr(),
            stdin,
            stdout: stdout.as_raw_fd(),
            stderr: stderr.as_raw_fd(),
            parent: std::process::id() as libc::pid_t,
            stat: stat.as_mut_ptr(),
            stat_cap: stat.len(),
            stat_len: std::sync::atomic::AtomicIsize::new(-1),
            failed_step: AtomicI32::new(0),
            errno: AtomicI32::new(0),
        };
        let mut stack = STACK
            .take()
            .unwrap_or_else(|| vec![0u8; STACK_SIZE].into_boxed_slice());
        // The stack grows down; the top must be 16-byte aligned.
        let top = (stack.as_mut_ptr() as usize + STACK_SIZE) & !15;

        // Block every signal while the child shares our memory, so none of
        // the daemon's handlers runs on the child's stack; the child resets
        // dispositions and unblocks before exec.
        // SAFETY: plain signal-mask calls on this thread, restored below;
        // clone runs `child_main` with `args`, which lives until after the
        // child has exec'd or exited (CLONE_VFORK suspends us until then).
        let pid = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let pid = libc::clone(
                child_main,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                &args as *const ChildArgs as *mut libc::c_void,
            );
            let clone_err = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                return Err(io::Error::new(
                    clone_err.kind(),
                    format!("cannot create a process: {clone_err}"),
                ));
            }
            pid
        };
        STACK.set(Some(stack));
        let step = args.failed_step.load(Ordering::Relaxed);
        if step != 0 {
            // The child has exited (or is about to): reap it.
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            let err = io::Error::from_raw_os_error(args.errno.load(Ordering::Relaxed));
            return Err(io::Error::new(
                err.kind(),
                format!("{}: {err}", step_name(step)),
            ));
        }
        let waiter = Waiter::new(pid)?;
        let start_time = usize::try_from(args.stat_len.load(Ordering::Relaxed))
            .ok()
            .and_then(|n| crate::platform::process::parse_start_time(&stat[..n.min(stat.len())]));
        Ok(JobProcess {
            pid: pid as u32,
            start_time,
            status: None,
            waiter,
        })
    }

    /// How the daemon learns that the process exited.
    pub(super) enum Waiter {
        /// A pidfd, readable once the process exits, in the runtime's epoll.
        PidFd(AsyncFd<OwnedFd>),
        /// Kernels before 5.3 have no pidfd: a thread blocks in waitpid.
        Thread(Option<tokio::sync::oneshot::Receiver<io::Result<ExitStatus>>>),
    }

    impl Waiter {
        fn new(pid: libc::pid_t) -> io::Result<Waiter> {
            // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if fd >= 0 {
                // SAFETY: a fresh descriptor nobody else owns; the AsyncFd
                // owns it from here and nothing replaces or closes it.
                let async_fd = unsafe {
                    let fd = OwnedFd::from_raw_fd(fd as RawFd);
                    AsyncFd::register_with_interest(fd, Interest::READABLE)?
                };
                return Ok(Waiter::PidFd(async_fd));
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("quernd-wait".into())
                .spawn(move || {
                    let status = waitpid(pid, 0).and_then(|s| {
                        s.ok_or_else(|| io::Error::other("waitpid returned without a status"))
                    });
                    let _ = tx.send(status);
                })?;
            Ok(Waiter::Thread(Some(rx)))
        }

        pub(super) async fn wait(&mut self, pid: u32) -> io::Result<ExitStatus> {
            match self {
                Waiter::PidFd(fd) => loop {
                    let mut guard = fd.readable().await?;
                    if let Some(s) = waitpid(pid as libc::pid_t, libc::WNOHANG)? {
                        return Ok(s);
                    }
                    guard.clear_ready();
                },
                Waiter::Thread(rx) => {
                    let r = rx
                        .as_mut()
                        .ok_or_else(|| io::Error::other("the job process was already reaped"))?;
                    let s = r
                        .await
                        .map_err(|_| io::Error::other("the waiting thread died"))?;
                    *rx = None;
                    s
                }
            }
        }
    }

    /// Reaps `pid`: `Some(status)` once it exited, `None` if `WNOHANG` and
    /// it still runs.
    fn waitpid(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, flags) };
            if r == pid {
                return Ok(Some(ExitStatus::from_raw(status)));
            }
            if r == 0 {
                return Ok(None);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::path::PathBuf;

    /// What a test job left behind.
    struct Ran {
        status: ExitStatus,
        out: String,
        err: String,
        /// What /proc shows for the job's stdout and stderr: "pipe:[inode]".
        out_link: String,
        err_link: String,
    }

    /// Runs `sh -c script` through [`spawn`] in `cwd`.
    async fn run(script: &str, cwd: &Path) -> io::Result<Ran> {
        use std::os::fd::AsRawFd;
        let (out_r, out_w) = std::io::pipe()?;
        let (err_r, err_w) = std::io::pipe()?;
        let link = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}"));
        let out_link = link(out_r.as_raw_fd())?.display().to_string();
        let err_link = link(err_r.as_raw_fd())?.display().to_string();
        let argv = ["sh".to_string(), "-c".to_string(), script.to_string()];
        let mut child = spawn(SpawnSpec {
            program: Path::new("/bin/sh"),
            argv: &argv,
            cwd,
            env: vec![Cow::Borrowed(c"QUERN_TEST=yes")],
            stdout: out_w.into(),
            stderr: err_w.into(),
        })?;
        let status = child.wait().await?;
        // A second wait gives the same answer instead of an error.
        assert_eq!(child.wait().await?, status);
        let read = |mut r: std::io::PipeReader| {
            let mut s = String::new();
            r.read_to_string(&mut s).map(|_| s)
        };
        Ok(Ran {
            status,
            out: read(out_r)?,
            err: read(err_r)?,
            out_link,
            err_link,
        })
    }

    /// The job starts clean: its own process group, default signal
    /// dispositions (the daemon ignores SIGPIPE), nothing blocked, stdin
    /// from /dev/null, stdout and stderr on the given pipes and no other
    /// descriptor of them, the given cwd, and exactly the given environment.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_child_starts_clean() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        let ran = run(
            "for f in /proc/$$/fd/*; do echo \"${f##*/} $(readlink $f)\"; done; \
             grep -E '^Sig(Ign|Blk)' /proc/self/status; \
             echo pgrp=$(cut -d' ' -f5 /proc/$$/stat) pid=$$; pwd; env",
            &cwd,
        )
        .await
        .unwrap();
        assert!(ran.status.success(), "{}", ran.err);
        let out = &ran.out;
        let lines: Vec<&str> = out.lines().collect();
        // The descriptors come first, one "fd target" line each.
        let fds: Vec<&str> = lines
            .iter()
            .take_while(|l| !l.starts_with("Sig"))
            .copied()
            .collect();
        assert!(fds.contains(&"0 /dev/null"), "{out}");
        assert!(
            fds.contains(&format!("1 {}", ran.out_link).as_str()),
            "{out}"
        );
        assert!(
            fds.contains(&format!("2 {}", ran.err_link).as_str()),
            "{out}"
        );
        // The read ends, and the daemon's copies of the write ends, are not
        // leaked into the job: each pipe is open exactly once.
        for link in [&ran.out_link, &ran.err_link] {
            let n = fds.iter().filter(|l| l.ends_with(link.as_str())).count();
            assert_eq!(n, 1, "{link} open {n} times in the job: {out}");
        }
        let rest = &lines[fds.len()..];
        assert_eq!(rest[0], "SigBlk:\t0000000000000000");
        assert_eq!(rest[1], "SigIgn:\t0000000000000000");
        let (pgrp, pid) = rest[2].split_once(' ').unwrap();
        assert_eq!(
            pgrp.trim_start_matches("pgrp="),
            pid.trim_start_matches("pid=")
        );
        assert_eq!(rest[3], cwd.to_str().unwrap());
        // sh adds PWD and the like; QUERN_TEST is the only given variable,
        // and nothing of the test process's environment leaks in.
        assert!(rest[4..].contains(&"QUERN_TEST=yes"), "{out}");
        assert!(!out.contains("CARGO"), "{out}");
    }

    #[tokio::test]
    async fn a_missing_cwd_is_an_error_naming_the_step() {
        let missing = PathBuf::from("/quern-surely-missing-dir");
        let err = run("true", &missing).await.err().expect("must fail");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string()
                .contains("changing to its working directory"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_file_that_cannot_run_is_an_error_naming_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("not-executable");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let (_r, w) = std::io::pipe().unwrap();
        let (_r2, w2) = std::io::pipe().unwrap();
        let err = spawn(SpawnSpec {
            program: &script,
            argv: &["x".to_string()],
            cwd: dir.path(),
            env: Vec::new(),
            stdout: w.into(),
            stderr: w2.into(),
        })
        .err()
        .expect("must fail");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("executing it"), "{err}");
    }

    /// Starts on one thread reuse one child stack and share one /dev/null:
    /// a start that failed half way must not spoil the ones after it.
    #[tokio::test]
    async fn starts_after_a_failed_start_still_work() {
        let dir = tempfile::tempdir().unwrap();
        let missing = PathBuf::from("/quern-surely-missing-dir");
        run("true", &missing).await.err().expect("must fail");
        for i in 0..3 {
            let ran = run(&format!("readlink /proc/$$/fd/0; echo {i}"), dir.path())
                .await
                .unwrap();
            assert!(ran.status.success(), "{}", ran.err);
            assert_eq!(ran.out, format!("/dev/null\n{i}\n"));
        }
    }

    /// The start time taken at spawn is the one `/proc` shows for the
    /// running job, which is what recovery compares after a crash.
    #[tokio::test]
    async fn the_start_time_is_the_one_proc_shows() {
        let dir = tempfile::tempdir().unwrap();
        let (_r, w) = std::io::pipe().unwrap();
        let (_r2, w2) = std::io::pipe().unwrap();
        let mut child = spawn(SpawnSpec {
            program: Path::new("/bin/sleep"),
            argv: &["sleep".to_string(), "60".to_string()],
            cwd: dir.path(),
            env: Vec::new(),
            stdout: w.into(),
            stderr: w2.into(),
        })
        .unwrap();
        let pid = child.pid();
        let shown = crate::platform::process::start_time(pid);
        crate::platform::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        child.wait().await.unwrap();
        assert!(shown.is_some(), "no /proc/{pid}/stat for a running job");
        assert_eq!(child.start_time(), shown);
    }

    #[tokio::test]
    async fn the_exit_status_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let ran = run("exit 7", dir.path()).await.unwrap();
        assert_eq!(ran.status.code(), Some(7));
        let ran = run("kill -TERM $$", dir.path()).await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(ran.status.signal(), Some(libc::SIGTERM));
    }
}
