//! The job model: what a job is, what it runs, the states it moves
//! through, and the pure functions that move it. Shared by every subsystem;
//! it knows nothing of gRPC or redb. The store applies these transitions;
//! it never decides one itself.

use std::collections::BTreeMap;
use std::time::Duration;

pub mod fetch;
pub mod git;

pub use fetch::{FetchResult, FetchSpec, HttpMethod, Overwrite};

/// A job id: unique, monotonically increasing, never reused.
pub type JobId = u64;

/// Microseconds since the Unix epoch. Micro- rather than milliseconds so that
/// submit-to-start latency can be read off the timestamps.
pub type Micros = u64;

/// Named priority classes and their numeric values. The API offers the
/// same names (`api/convert.rs` checks that the two lists agree).
pub const PRIORITY_NAMES: [(&str, i32); 5] = [
    ("critical", 20),
    ("high", 10),
    ("normal", 0),
    ("low", -10),
    ("background", -20),
];

/// Resolves a priority name to its number.
pub fn priority_from_name(name: &str) -> Option<i32> {
    PRIORITY_NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, p)| p)
}

/// What to run and how; validated before it reaches the store.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    /// The kind of work and its kind-specific settings.
    pub kind: JobKind,
    /// Higher runs first.
    pub priority: i32,
    /// Free-form labels for filtering.
    pub labels: BTreeMap<String, String>,
    /// Do not start before this time.
    pub run_at: Option<Micros>,
    /// Kill an attempt that runs longer than this.
    pub timeout: Option<Duration>,
    /// Total attempts allowed, at least 1.
    pub max_attempts: u32,
    /// Deduplicates submits while the first job is unfinished.
    pub idempotency_key: Option<String>,
}

/// Attempts a job may be given, at most.
pub const MAX_ATTEMPTS: u32 = 100;

impl JobSpec {
    /// The host a job is limited by, `host:port`, for kinds that have one
    /// (fetch): admission's key for its rate, slots and breaker.
    pub fn host_key(&self) -> Option<String> {
        match &self.kind {
            JobKind::Fetch(f) => Some(f.host_key()),
            JobKind::Exec(_) | JobKind::Git(_) => None,
        }
    }

    /// The rules every spec must meet, whoever made it: what the store and
    /// the runner rely on. Returns the field (relative to the spec) and
    /// the reason. `api/convert.rs` checks requests against the API's own
    /// limits before this; a producer inside quernd builds its specs
    /// itself, and `jobs` checks them here.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err((
                ".max_attempts",
                format!(
                    "is {}; give 1 to {MAX_ATTEMPTS} attempts",
                    self.max_attempts
                ),
            ));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err((
                ".timeout",
                "must be positive; leave it unset for no timeout".into(),
            ));
        }
        match &self.kind {
            JobKind::Exec(e) => e.check(),
            JobKind::Fetch(f) => f.check(),
            JobKind::Git(g) => g.check(),
        }
    }
}

/// The kinds of work quern runs. Each has its module under `runner/`.
#[derive(Clone, Debug, PartialEq)]
pub enum JobKind {
    /// Run a command directly, with no shell.
    Exec(ExecSpec),
    /// Download a URL to a file, or send a request.
    Fetch(FetchSpec),
    /// Read a git repository's history and analyse it.
    Git(git::GitSpec),
}

/// A kind's name and number: the name is used in filters and output, the
/// number in the store's `by_kind` index. Numbers are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum KindTag {
    /// See [`JobKind::Exec`].
    Exec = 1,
    /// See [`JobKind::Fetch`].
    Fetch = 2,
    /// See [`JobKind::Git`].
    Git = 3,
}

impl KindTag {
    /// Every kind.
    pub const ALL: [KindTag; 3] = [KindTag::Exec, KindTag::Fetch, KindTag::Git];

    /// The kind's name as used in filters and output.
    pub fn name(self) -> &'static str {
        match self {
            KindTag::Exec => "exec",
            KindTag::Fetch => "fetch",
            KindTag::Git => "git",
        }
    }

    /// The kind with this name, if any.
    pub fn from_name(name: &str) -> Option<KindTag> {
        KindTag::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The names of every kind, for error messages.
    pub fn names() -> String {
        KindTag::ALL.map(KindTag::name).join(", ")
    }
}

impl JobKind {
    /// The kind's tag.
    pub fn tag(&self) -> KindTag {
        match self {
            JobKind::Exec(_) => KindTag::Exec,
            JobKind::Fetch(_) => KindTag::Fetch,
            JobKind::Git(_) => KindTag::Git,
        }
    }

    /// The kind's name as used in filters and output.
    pub fn name(&self) -> &'static str {
        self.tag().name()
    }
}

#[cfg(test)]
impl JobSpec {
    /// For tests: an exec spec of `argv` with one attempt and no options.
    pub(crate) fn exec_for_tests(argv: &[&str]) -> JobSpec {
        JobSpec {
            kind: JobKind::Exec(ExecSpec {
                argv: argv.iter().map(|a| a.to_string()).collect(),
                cwd: None,
                env: BTreeMap::new(),
            }),
            priority: 0,
            labels: BTreeMap::new(),
            run_at: None,
            timeout: None,
            max_attempts: 1,
            idempotency_key: None,
        }
    }
}

/// A command to run with no shell.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecSpec {
    /// The program and its arguments; never empty.
    pub argv: Vec<String>,
    /// Absolute working directory; `None` means the daemon's state dir.
    pub cwd: Option<String>,
    /// Variables added to the daemon's environment.
    pub env: BTreeMap<String, String>,
}

impl ExecSpec {
    /// See [`JobSpec::check`].
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.argv.first().is_none_or(|a| a.is_empty()) {
            return Err((
                ".exec.argv",
                "must not be empty; give the program to run as argv[0]".into(),
            ));
        }
        if self.cwd.as_ref().is_some_and(|c| !c.starts_with('/')) {
            return Err((".exec.cwd", "must be an absolute path".into()));
        }
        Ok(())
    }
}

/// What a running attempt left on record, so that recovery at boot can
/// deal with what is left of it. Each kind records its own.
#[derive(Clone, Debug, PartialEq)]
pub enum RunRecord {
    /// An exec attempt: its process group.
    Exec(ExecRun),
    /// An attempt that runs inside quernd: nothing outlives the daemon.
    InProcess,
}

/// The process group of a running exec attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecRun {
    /// The leader's pid, which is also its process group id.
    pub pid: u32,
    /// The leader's start time in clock ticks since boot, to tell it
    /// from an unrelated process that reused the pid.
    pub pid_start: u64,
    /// The kernel boot id when it started; after a reboot no process of
    /// it can remain.
    pub boot_id: String,
}

/// How far a running attempt has come, as its kind reports it. Live only:
/// never stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// What the attempt is doing, such as `download` or `walk`.
    pub phase: String,
    /// Units done so far.
    pub done: u64,
    /// Units in all, or 0 when unknown.
    pub total: u64,
    /// What is counted: `bytes`, `commits`, `files`.
    pub unit: String,
    /// Units per second lately, or 0 when unknown.
    pub rate: u64,
}

/// Where a job is in its lifecycle. Each state carries only the data that
/// makes sense in it, so for example a queued job cannot have a pid.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    /// Ready to run, waiting for a slot.
    Queued,
    /// Waiting for `run_at`: delayed, or backing off before a retry.
    Scheduled {
        /// When it becomes queued.
        run_at: Micros,
    },
    /// An attempt is running.
    Running {
        /// What the kind recorded about the attempt.
        run: RunRecord,
    },
    /// Finished successfully.
    Succeeded {
        /// When it finished.
        finished_at: Micros,
    },
    /// Gave up: see [`Job::error`].
    Failed {
        /// When it finished.
        finished_at: Micros,
    },
    /// Stopped by a cancel request.
    Cancelled {
        /// When it finished.
        finished_at: Micros,
    },
}

/// A compact tag for each state, used as an index key and in filters. The
/// numbers match the proto enum so that they read the same everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum StateTag {
    /// See [`JobState::Queued`].
    Queued = 1,
    /// See [`JobState::Scheduled`].
    Scheduled = 2,
    /// See [`JobState::Running`].
    Running = 3,
    /// See [`JobState::Succeeded`].
    Succeeded = 4,
    /// See [`JobState::Failed`].
    Failed = 5,
    /// See [`JobState::Cancelled`].
    Cancelled = 6,
}

impl StateTag {
    /// Every state, in tag order.
    pub const ALL: [StateTag; 6] = [
        StateTag::Queued,
        StateTag::Scheduled,
        StateTag::Running,
        StateTag::Succeeded,
        StateTag::Failed,
        StateTag::Cancelled,
    ];

    /// The tag for its number, if valid.
    pub fn from_u8(v: u8) -> Option<StateTag> {
        StateTag::ALL.into_iter().find(|t| *t as u8 == v)
    }

    /// The lowercase name used in output and messages.
    pub fn name(self) -> &'static str {
        match self {
            StateTag::Queued => "queued",
            StateTag::Scheduled => "scheduled",
            StateTag::Running => "running",
            StateTag::Succeeded => "succeeded",
            StateTag::Failed => "failed",
            StateTag::Cancelled => "cancelled",
        }
    }

    /// True for succeeded, failed and cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StateTag::Succeeded | StateTag::Failed | StateTag::Cancelled
        )
    }
}

impl JobState {
    /// The state's tag.
    pub fn tag(&self) -> StateTag {
        match self {
            JobState::Queued => StateTag::Queued,
            JobState::Scheduled { .. } => StateTag::Scheduled,
            JobState::Running { .. } => StateTag::Running,
            JobState::Succeeded { .. } => StateTag::Succeeded,
            JobState::Failed { .. } => StateTag::Failed,
            JobState::Cancelled { .. } => StateTag::Cancelled,
        }
    }
}

/// A stored job.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// What it runs.
    pub spec: JobSpec,
    /// Where it is.
    pub state: JobState,
    /// When it was accepted.
    pub queued_at: Micros,
    /// Attempts started so far.
    pub attempts: u32,
    /// When the latest attempt started.
    pub started_at: Option<Micros>,
    /// The latest attempt's exit code, if it exited normally.
    pub exit_code: Option<i32>,
    /// Why the latest attempt failed or the job was cancelled.
    pub error: String,
    /// The uid of the user who submitted it.
    pub owner_uid: u32,
    /// What the job produced, for kinds that report a result; set when it
    /// succeeded.
    pub result: Option<JobResult>,
    /// Why a scheduled job waits, when it is not for its `run_at` or a
    /// retry's backoff: a server's `Retry-After`, say. Empty otherwise.
    pub wait_reason: String,
}

/// What a job produced, one variant per kind that reports a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobResult {
    /// See [`FetchResult`].
    Fetch(FetchResult),
    /// See [`git::GitResult`].
    Git(Box<git::GitResult>),
}

/// How an attempt (or a job) ended, as decided by the runner.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The work was done.
    Succeeded {
        /// The exit code (0) of a process; `None` for a kind that runs in
        /// quernd.
        exit_code: Option<i32>,
        /// What it produced, for kinds that report a result.
        result: Option<JobResult>,
    },
    /// The attempt failed; `retry_at` is set when attempts remain.
    Failed {
        /// The exit code, if a process exited normally.
        exit_code: Option<i32>,
        /// Why it failed.
        error: String,
        /// When to run the next attempt, if any.
        retry_at: Option<Micros>,
    },
    /// Stopped by a cancel request.
    Cancelled {
        /// The exit code, if a process exited normally.
        exit_code: Option<i32>,
    },
    /// Interrupted by a graceful shutdown: back to queued, and the attempt
    /// is not counted.
    Requeue,
    /// The work cannot go on before `run_at`, for a reason outside the job
    /// (a server asked to wait with `Retry-After`): scheduled again, and
    /// the attempt is not counted.
    Deferred {
        /// When to try again.
        run_at: Micros,
        /// Why, shown while it waits.
        reason: String,
    },
}

impl Outcome {
    /// Whether the outcome ends the attempt (every outcome but a requeue,
    /// which takes the attempt back): its event carries the exit code and
    /// the error.
    pub fn ends_attempt(&self) -> bool {
        !matches!(self, Outcome::Requeue)
    }
}

/// Why a transition was refused: the job's state does not allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The state the job is in.
    pub state: StateTag,
    /// What the caller can do instead.
    pub hint: &'static str,
}

/// The error a cancelled job carries.
pub const CANCELLED_ERROR: &str = "cancelled by request";

impl Job {
    /// A job accepted at `at`: scheduled if `run_at` is still ahead, else
    /// queued.
    pub fn submitted(id: JobId, spec: JobSpec, owner_uid: u32, at: Micros) -> Job {
        let state = match spec.run_at {
            Some(run_at) if run_at > at => JobState::Scheduled { run_at },
            _ => JobState::Queued,
        };
        Job {
            id,
            spec,
            state,
            queued_at: at,
            attempts: 0,
            started_at: None,
            exit_code: None,
            error: String::new(),
            owner_uid,
            result: None,
            wait_reason: String::new(),
        }
    }

    /// When the job finished, for terminal states.
    pub fn finished_at(&self) -> Option<Micros> {
        match self.state {
            JobState::Succeeded { finished_at }
            | JobState::Failed { finished_at }
            | JobState::Cancelled { finished_at } => Some(finished_at),
            _ => None,
        }
    }

    fn require(&self, allowed: &[StateTag], hint: &'static str) -> Result<(), Refused> {
        let state = self.state.tag();
        if allowed.contains(&state) {
            Ok(())
        } else {
            Err(Refused { state, hint })
        }
    }

    /// Attempt `attempt` started at `at`, as `run`. Only a queued job can
    /// start.
    pub fn started(&self, attempt: u32, run: RunRecord, at: Micros) -> Result<Job, Refused> {
        self.require(&[StateTag::Queued], "only a queued job can start")?;
        Ok(Job {
            state: JobState::Running { run },
            attempts: attempt,
            started_at: Some(at),
            exit_code: None,
            error: String::new(),
            result: None,
            wait_reason: String::new(),
            ..self.clone()
        })
    }

    /// Attempt `attempt` ended at `at` with `outcome`. A queued job may
    /// finish too: an attempt that never got to start (a failed spawn, or a
    /// stop that came first). `started_at` is when the attempt started, if
    /// it did.
    pub fn finished(
        &self,
        attempt: u32,
        started_at: Option<Micros>,
        outcome: Outcome,
        at: Micros,
    ) -> Result<Job, Refused> {
        self.require(
            &[StateTag::Queued, StateTag::Running],
            "only a queued or running job can finish",
        )?;
        let mut job = self.clone();
        job.attempts = attempt;
        job.started_at = started_at.or(self.started_at);
        job.wait_reason.clear();
        match outcome {
            Outcome::Succeeded { exit_code, result } => {
                job.state = JobState::Succeeded { finished_at: at };
                job.exit_code = exit_code;
                job.error.clear();
                job.result = result;
            }
            Outcome::Failed {
                exit_code,
                error,
                retry_at,
            } => {
                job.exit_code = exit_code;
                job.error = error;
                job.state = match retry_at {
                    Some(run_at) => JobState::Scheduled { run_at },
                    None => JobState::Failed { finished_at: at },
                };
            }
            Outcome::Cancelled { exit_code } => {
                job.state = JobState::Cancelled { finished_at: at };
                job.exit_code = exit_code;
                job.error = CANCELLED_ERROR.into();
            }
            Outcome::Requeue => {
                job.state = JobState::Queued;
                job.attempts = attempt.saturating_sub(1);
            }
            Outcome::Deferred { run_at, reason } => {
                job.state = JobState::Scheduled { run_at };
                job.attempts = attempt.saturating_sub(1);
                job.exit_code = None;
                job.error.clear();
                job.wait_reason = reason;
            }
        }
        Ok(job)
    }

    /// Cancelled at `at` before it ran (queued) or while it waited
    /// (scheduled). A running job is stopped by its runner instead, which
    /// finishes it with [`Outcome::Cancelled`].
    pub fn cancelled(&self, at: Micros) -> Result<Job, Refused> {
        self.require(
            &[StateTag::Queued, StateTag::Scheduled],
            "only queued, scheduled or running jobs can be cancelled",
        )?;
        Ok(Job {
            state: JobState::Cancelled { finished_at: at },
            error: CANCELLED_ERROR.into(),
            exit_code: None,
            ..self.clone()
        })
    }

    /// Held back before it started, until `run_at`, for `reason` (its
    /// host's circuit breaker is open): from queued to scheduled, with no
    /// attempt used.
    pub fn deferred(&self, run_at: Micros, reason: String) -> Result<Job, Refused> {
        self.require(&[StateTag::Queued], "only a queued job can be held back")?;
        Ok(Job {
            state: JobState::Scheduled { run_at },
            wait_reason: reason,
            ..self.clone()
        })
    }

    /// Its start time came: from scheduled to queued.
    pub fn promoted(&self) -> Result<Job, Refused> {
        self.require(&[StateTag::Scheduled], "only a scheduled job becomes due")?;
        Ok(Job {
            state: JobState::Queued,
            wait_reason: String::new(),
            ..self.clone()
        })
    }
}

/// One recorded state change, as streamed by `Events`.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Global, strictly increasing sequence number.
    pub seq: u64,
    /// The job that changed.
    pub job_id: JobId,
    /// The state it entered.
    pub state: StateTag,
    /// When.
    pub at: Micros,
    /// The attempt this belongs to.
    pub attempt: u32,
    /// The exit code, when an attempt ended with one.
    pub exit_code: Option<i32>,
    /// Why an attempt failed or the job was cancelled.
    pub error: String,
}

impl Event {
    /// The event for `job`'s new state. `ended` says the change ends an
    /// attempt (or the job), so the event carries the exit code and error;
    /// a start or a promotion carries none.
    pub fn of(seq: u64, job: &Job, at: Micros, ended: bool) -> Event {
        Event {
            seq,
            job_id: job.id,
            state: job.state.tag(),
            at,
            attempt: job.attempts,
            exit_code: job.exit_code.filter(|_| ended),
            // A wait that uses no attempt says why in the error's place.
            error: if !ended {
                String::new()
            } else if job.error.is_empty() {
                job.wait_reason.clone()
            } else {
                job.error.clone()
            },
        }
    }
}

/// The delay before retry number `attempt` (1-based count of attempts
/// already made): exponential from `base`, capped at `max`, scaled by
/// `jitter` in [0.75, 1.0].
///
/// Written by hand because the delay must be a pure function of the attempt
/// number (it is stored as the next `run_at` and survives restarts); the
/// backoff crates model a stateful retry loop around a closure instead.
pub fn retry_delay(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let raw = base.saturating_mul(1u32 << exp.min(31)).min(max);
    // `mul_f64` panics where its product rounds past `Duration::MAX`, and
    // a config file can give delays that long (humantime reads up to
    // u64::MAX seconds). Past 2^53 seconds an f64 can't hold the delay
    // anyway, and 285 million years need no jitter.
    if raw.as_secs() >= 1 << 53 {
        return raw;
    }
    // The f64 product can also round up past `max`: an f64 holds 2^44
    // seconds only to 4 ms.
    raw.mul_f64(jitter.clamp(0.75, 1.0)).min(raw)
}

#[cfg(test)]
pub(crate) mod props;
#[cfg(test)]
mod tests;
