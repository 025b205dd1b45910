//! The command line of `quernctl`, as clap types. Values are parsed and
//! checked here, before any connection to the daemon is made.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use quern_proto::v1::{FetchOverwrite, JobState};

use crate::parse::{self, Priority};

/// `quernctl [--socket PATH] [--json] VERB`
#[derive(Debug, Parser)]
#[command(
    name = "quernctl",
    version,
    about = "Submit, inspect and follow jobs of the quernd job daemon"
)]
pub struct Cli {
    /// The daemon's Unix socket [default: $XDG_RUNTIME_DIR/quern/quernd.sock,
    /// or /tmp/quern-UID/quernd.sock]
    #[arg(long, env = "QUERN_SOCKET", value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,

    /// Print JSON instead of tables (one document, or one object per line
    /// for streams)
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
// One Command is built per run, so the size of its largest variant (submit
// with all its flags) costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a job; prints its id
    Submit {
        /// The kind of job.
        #[command(subcommand)]
        kind: SubmitKind,
    },
    /// Show one job
    Get {
        /// The job id
        id: u64,
    },
    /// Print what a finished job produced, such as a download's final URL,
    /// size and SHA-256; fails for a job that has no result (yet)
    Result {
        /// The job id
        id: u64,
    },
    /// Follow one job until it finishes: a progress bar for a download,
    /// state changes and output for a command; exits 0 only if it succeeded
    Follow {
        /// The job id
        id: u64,
    },
    /// List jobs, newest first
    List(ListArgs),
    /// Cancel a job: SIGTERM, then SIGKILL after the grace period
    Cancel {
        /// The job id
        id: u64,
        /// Time between SIGTERM and SIGKILL, such as 5s; 0s kills at once
        /// [default: the daemon's, 10s]
        #[arg(long, value_name = "DUR", value_parser = parse::duration)]
        grace: Option<Duration>,
    },
    /// Wait for jobs to finish; exits 0 only if all of them succeeded
    Wait {
        /// The job ids
        #[arg(required = true, value_name = "ID")]
        ids: Vec<u64>,
        /// Give up after this long, such as 30s or 1h, and exit non-zero
        #[arg(long, value_name = "DUR", value_parser = parse::duration)]
        timeout: Option<Duration>,
    },
    /// Print a job's captured stdout and stderr
    Logs {
        /// The job id
        id: u64,
        /// Keep printing new output until the job finishes
        #[arg(long, short)]
        follow: bool,
    },
    /// Print job state changes as they happen, until interrupted
    Events {
        /// Only this job's events
        #[arg(long, value_name = "ID")]
        job: Option<u64>,
        /// First replay the stored events after this sequence number
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// Also print progress updates of running jobs (at most 10 per
        /// second per job)
        #[arg(long)]
        progress: bool,
        /// Also print changes of the hosts fetch jobs use: a breaker that
        /// opens, goes half-open or closes, a host that asks for a pause
        #[arg(long, conflicts_with = "job")]
        hosts: bool,
    },
    /// Show job counts by state
    Stats,
    /// Remove finished jobs, with their logs, and old events now; limits
    /// not given are the daemon's configured retention. Queued, scheduled
    /// and running jobs are never removed
    Prune {
        /// Remove finished jobs that finished longer ago than this, such as
        /// 7d or 12h; 0s removes every finished job
        #[arg(long, value_name = "DUR", value_parser = parse::duration)]
        older_than: Option<Duration>,
        /// Keep at most this many finished jobs, removing the oldest
        #[arg(long, value_name = "N")]
        keep: Option<u64>,
        /// Print what would be removed, and remove nothing
        #[arg(long)]
        dry_run: bool,
    },
}

/// The job kinds `submit` knows.
#[derive(Debug, Subcommand)]
pub enum SubmitKind {
    /// Run a command directly, with no shell: `submit exec [OPTIONS] -- ARGV...`
    Exec(ExecArgs),
    /// Download a URL to a file, or send an HTTP request:
    /// `submit fetch [OPTIONS] URL`
    Fetch(FetchArgs),
}

/// The flags every kind of job takes, shared by the `submit` verbs.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// A number (higher runs first) or one of critical, high, normal, low,
    /// background
    #[arg(long, value_name = "N|NAME", allow_negative_numbers = true, value_parser = parse::priority)]
    pub priority: Option<Priority>,

    /// A label to filter on later; repeatable
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub labels: Vec<(String, String)>,

    /// Stop an attempt that runs longer than this, such as 30s or 1h30m
    #[arg(long, value_name = "DUR", value_parser = parse::duration)]
    pub timeout: Option<Duration>,

    /// Do not start before this RFC 3339 time, such as 2030-01-02T15:04:05Z
    #[arg(long, value_name = "TIME", value_parser = parse::time, conflicts_with = "delay")]
    pub at: Option<SystemTime>,

    /// Do not start before this much time has passed, such as 10m
    #[arg(long = "in", id = "delay", value_name = "DUR", value_parser = parse::duration)]
    pub delay: Option<Duration>,

    /// Run up to this many times until it succeeds, with backoff in between
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,

    /// An idempotency key: while a job with this key is unfinished, submitting
    /// again returns that job instead of a new one
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
}

/// `submit exec` flags and the command to run.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The flags of every kind.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Working directory [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// An environment variable for the job; repeatable
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub env: Vec<(String, String)>,

    /// The program and its arguments
    // trailing_var_arg lets `submit exec ls -l` work as well as
    // `submit exec -- ls -l`: everything from the program on is its argv.
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, value_name = "ARGV")]
    pub argv: Vec<String>,
}

/// `submit fetch` flags and the URL.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The http or https URL to download, or to send the request to
    #[arg(value_name = "URL", value_parser = parse::http_url)]
    pub url: String,

    /// Where to save the response body; a relative path is taken from the
    /// current directory [default: for GET, the URL's last path segment in
    /// the current directory; for other methods, the body is discarded]
    #[arg(long, value_name = "PATH")]
    pub dest: Option<PathBuf>,

    /// The SHA-256 the body must have, as 64 hex digits; a mismatch fails
    /// the job and leaves no file
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,

    /// An extra request header, such as 'Authorization: Bearer x';
    /// repeatable, and a name may repeat
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = parse::header)]
    pub headers: Vec<(String, String)>,

    /// Fail a body larger than this: a byte count, or a size such as 10M,
    /// 2GB (powers of 1000) or 512KiB, 1GiB (powers of 1024)
    #[arg(long, value_name = "SIZE", value_parser = parse::size)]
    pub max_bytes: Option<u64>,

    /// What to do when the destination exists: replace it once the new body
    /// is complete, skip the download (GET only), or fail [default: replace]
    #[arg(long, value_name = "WHAT", value_parser = parse::overwrite)]
    pub overwrite: Option<FetchOverwrite>,

    /// The HTTP method: GET, POST, PUT, PATCH or DELETE [default: GET]
    #[arg(long, short = 'X', value_name = "METHOD")]
    pub method: Option<String>,

    /// Send this file's content as the request body (not with GET); a
    /// relative path is taken from the current directory
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,

    /// Retry a POST or PATCH even after the request was sent, which may
    /// repeat its effect on the server
    #[arg(long)]
    pub retry_unsafe: bool,

    /// The flags of every kind.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `list` filters.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state; repeatable or comma-separated
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = parse::state)]
    pub state: Vec<JobState>,

    /// Only jobs of this kind, such as exec
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,

    /// Only jobs with this label; repeatable, all must match
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub labels: Vec<(String, String)>,

    /// Show at most this many jobs
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn argv_may_follow_double_dash_or_start_at_the_program() {
        for line in [
            &["quernctl", "submit", "exec", "--", "ls", "-l"][..],
            &["quernctl", "submit", "exec", "ls", "-l"][..],
        ] {
            let cli = Cli::try_parse_from(line).expect("parses");
            let Command::Submit {
                kind: SubmitKind::Exec(args),
            } = cli.command
            else {
                panic!("not submit exec");
            };
            assert_eq!(args.argv, ["ls", "-l"]);
        }
    }

    #[test]
    fn negative_priority_is_a_value_not_a_flag() {
        let cli = Cli::try_parse_from(["quernctl", "submit", "exec", "--priority", "-10", "true"])
            .expect("parses");
        let Command::Submit {
            kind: SubmitKind::Exec(args),
        } = cli.command
        else {
            panic!("not submit exec");
        };
        assert_eq!(args.common.priority, Some(Priority::Number(-10)));
    }

    #[test]
    fn at_and_in_are_exclusive() {
        let err = Cli::try_parse_from([
            "quernctl",
            "submit",
            "exec",
            "--at",
            "2030-01-01T00:00:00Z",
            "--in",
            "5m",
            "true",
        ])
        .expect_err("both given");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn submit_without_argv_is_refused() {
        let err = Cli::try_parse_from(["quernctl", "submit", "exec", "--"]).expect_err("no argv");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn list_states_may_be_comma_separated() {
        let cli =
            Cli::try_parse_from(["quernctl", "list", "--state", "queued,running"]).expect("parses");
        let Command::List(args) = cli.command else {
            panic!("not list");
        };
        assert_eq!(args.state, [JobState::Queued, JobState::Running]);
    }
}
