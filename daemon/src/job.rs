//! The job model: what a job is, what it runs, and the states it moves
//! through. Shared by every subsystem; it knows nothing of gRPC or redb.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A job id: unique, monotonically increasing, never reused.
pub type JobId = u64;

/// Microseconds since the Unix epoch. Micro- rather than milliseconds so that
/// submit-to-start latency can be read off the timestamps.
pub type Micros = u64;

/// The current time as [`Micros`].
pub fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Named priority classes and their numeric values, as the API defines
/// them.
pub use quern_proto::PRIORITY_NAMES;

/// Resolves a priority name to its number.
pub fn priority_from_name(name: &str) -> Option<i32> {
    PRIORITY_NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, p)| p)
}

/// What to run and how; validated before it reaches the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

/// The kinds of work quern runs. New kinds are appended, never inserted, so
/// that stored records keep decoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobKind {
    /// Run a command directly, with no shell.
    Exec(ExecSpec),
}

impl JobKind {
    /// The kind's name as used in filters and output.
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Exec(_) => "exec",
        }
    }
}

/// A command to run with no shell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The program and its arguments; never empty.
    pub argv: Vec<String>,
    /// Absolute working directory; `None` means the daemon's state dir.
    pub cwd: Option<String>,
    /// Variables added to the daemon's environment.
    pub env: BTreeMap<String, String>,
}

/// Where a job is in its lifecycle. Each state carries only the data that
/// makes sense in it, so for example a queued job cannot have a pid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobState {
    /// Ready to run, waiting for a slot.
    Queued,
    /// Waiting for `run_at`: delayed, or backing off before a retry.
    Scheduled {
        /// When it becomes queued.
        run_at: Micros,
    },
    /// Its process is running.
    Running {
        /// The leader's pid, which is also its process group id.
        pid: u32,
        /// The leader's start time in clock ticks since boot, to tell it
        /// from an unrelated process that reused the pid.
        pid_start: u64,
        /// The kernel boot id when it started; after a reboot no process of
        /// it can remain.
        boot_id: String,
    },
    /// Finished with exit code 0.
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
}

impl Job {
    /// When the job finished, for terminal states.
    pub fn finished_at(&self) -> Option<Micros> {
        match self.state {
            JobState::Succeeded { finished_at }
            | JobState::Failed { finished_at }
            | JobState::Cancelled { finished_at } => Some(finished_at),
            _ => None,
        }
    }
}

/// One recorded state change, as streamed by `Events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    raw.mul_f64(jitter.clamp(0.75, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_cap() {
        let base = Duration::from_millis(200);
        let max = Duration::from_secs(10);
        // Even the worst jitter for attempt n+1 beats the best for attempt n,
        // which is what makes "growing delays" a guarantee, not a tendency.
        for n in 1..5 {
            assert!(retry_delay(n + 1, base, max, 0.75) > retry_delay(n, base, max, 1.0));
        }
        assert_eq!(retry_delay(1, base, max, 1.0), base);
        assert_eq!(retry_delay(50, base, max, 1.0), max);
        assert_eq!(retry_delay(3, base, max, 0.1), Duration::from_millis(600));
    }

    #[test]
    fn priority_names_resolve() {
        assert_eq!(priority_from_name("critical"), Some(20));
        assert_eq!(priority_from_name("Background"), Some(-20));
        assert_eq!(priority_from_name("urgent"), None);
    }

    #[test]
    fn state_tags_round_trip() {
        for t in StateTag::ALL {
            assert_eq!(StateTag::from_u8(t as u8), Some(t));
        }
        assert_eq!(StateTag::from_u8(0), None);
        assert!(StateTag::Cancelled.is_terminal() && !StateTag::Running.is_terminal());
    }
}
