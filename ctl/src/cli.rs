//! The command line of `quernctl`, as clap types. Values are parsed and
//! checked here, before any connection to the daemon is made.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand};
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
        /// Show at most this many rows of each table of a git job's result
        /// (--json always has every row)
        #[arg(long, value_name = "N", default_value_t = 20)]
        top: usize,
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
        /// Also print changes and triggers of your watch rules
        #[arg(long, conflicts_with = "job")]
        watches: bool,
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
    /// Watch rules: submit a job when files under a directory change and
    /// then settle
    Watch {
        /// What to do with rules.
        #[command(subcommand)]
        command: WatchCommand,
    },
}

/// The `watch` verbs.
// As for Command: one is built per run, so boxing `add` gains nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum WatchCommand {
    /// Add a rule; prints its id:
    /// `watch add DIR [OPTIONS] -- exec [OPTIONS] -- ARGV...`
    Add(WatchAddArgs),
    /// List your rules, with their state and last trigger
    #[command(visible_alias = "list")]
    Ls,
    /// Show one rule, with its most recent jobs
    Get {
        /// The rule id
        id: u64,
    },
    /// Remove a rule; the jobs it made are left alone
    #[command(visible_alias = "remove")]
    Rm {
        /// The rule id
        id: u64,
    },
    /// Pause a rule: no job is made until it is resumed, and what changed
    /// meanwhile then triggers it once
    Pause {
        /// The rule id
        id: u64,
    },
    /// Resume a paused rule
    Resume {
        /// The rule id
        id: u64,
    },
}

/// `watch add` flags, the directory, and the job to submit.
#[derive(Debug, Args)]
pub struct WatchAddArgs {
    /// The directory to watch; a relative path is taken from the current
    /// directory
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// Only paths (relative to DIR) matching this glob trigger; repeatable.
    /// `*` stays within a path component, `**` crosses them [default: every
    /// path]
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,

    /// Paths matching this glob never trigger, and a directory that matches
    /// is not watched; repeatable
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,

    /// Do not read .gitignore, .ignore and .git/info/exclude (.git/ is
    /// always excluded)
    #[arg(long)]
    pub no_ignore_files: bool,

    /// Watch DIR itself only, not the directories under it
    #[arg(long)]
    pub no_recursive: bool,

    /// Submit the job once no change has arrived for this long, such as
    /// 500ms [default: the daemon's, 100ms]
    #[arg(long, value_name = "DUR", value_parser = parse::duration)]
    pub debounce: Option<Duration>,

    /// Submit at least this often while changes keep coming, such as 30s
    /// [default: the daemon's, 10s]
    #[arg(long, value_name = "DUR", value_parser = parse::duration)]
    pub max_wait: Option<Duration>,

    /// What to do when the rule triggers while its previous job is queued
    /// or running: hold the changes for one job after it (coalesce), submit
    /// another (queue), cancel it and submit anew (restart), or make no job
    /// (skip) [default: coalesce]
    #[arg(long, value_name = "WHAT", value_parser = clap::builder::PossibleValuesParser::new(parse::ON_BUSY_NAMES))]
    pub on_busy: Option<String>,

    /// The job to submit.
    #[command(flatten)]
    pub job: JobTemplate,
}

/// The job a watch rule submits, given after `--` exactly as `quernctl
/// submit` takes it. It is parsed by the same clap types as `submit`, so
/// the two cannot drift apart, and while the command line is parsed, so a
/// mistake in it is a usage error (exit 2) like any other.
#[derive(Debug)]
pub struct JobTemplate(pub SubmitKind);

/// The clap id of the words after `--`.
const TEMPLATE_ARG: &str = "submit";

/// The submit arguments of `watch add`, parsed on their own.
#[derive(Debug, Parser)]
#[command(
    name = "quernctl watch add DIR --",
    bin_name = "quernctl watch add DIR --",
    no_binary_name = true
)]
struct SubmitLine {
    #[command(subcommand)]
    kind: SubmitKind,
}

impl Args for JobTemplate {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            clap::Arg::new(TEMPLATE_ARG)
                .value_name("SUBMIT ARGS")
                .help(
                    "The job, as `quernctl submit` takes it: `exec [OPTIONS] -- ARGV...`, \
                     `fetch [OPTIONS] URL` or `git [OPTIONS] REPO`",
                )
                .required(true)
                .last(true)
                .num_args(1..)
                .allow_hyphen_values(true),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for JobTemplate {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let words = matches
            .get_many::<String>(TEMPLATE_ARG)
            .into_iter()
            .flatten();
        let line = SubmitLine::try_parse_from(words)?;
        Ok(Self(line.kind))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// The job kinds `submit` knows.
#[derive(Debug, Subcommand)]
pub enum SubmitKind {
    /// Run a command directly, with no shell: `submit exec [OPTIONS] -- ARGV...`
    Exec(ExecArgs),
    /// Download a URL to a file, or send an HTTP request:
    /// `submit fetch [OPTIONS] URL`
    Fetch(FetchArgs),
    /// Analyse a git repository's history inside quernd:
    /// `submit git [OPTIONS] REPO`
    Git(GitArgs),
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

/// `submit git` flags and the repository.
#[derive(Debug, Args)]
pub struct GitArgs {
    /// A URL (https://, ssh://, git://, file://, or scp-like user@host:path),
    /// sent as given, or a local path, made absolute against the current
    /// directory
    #[arg(value_name = "REPO")]
    pub repo: String,

    /// A revision to analyse, such as main, v2.0 or a commit id;
    /// repeatable [default: HEAD]
    #[arg(long = "rev", value_name = "REV")]
    pub revs: Vec<String>,

    /// Analyse every branch and tag, besides the --rev ones
    #[arg(long)]
    pub all: bool,

    /// Only commits committed at or after DATE: an RFC 3339 time
    /// (2026-01-31T00:00:00Z), a date (2026-01-31, midnight UTC), or an age
    /// such as 30d or 2w (that long ago)
    #[arg(long, value_name = "DATE", value_parser = parse::git_date)]
    pub since: Option<SystemTime>,

    /// Only commits committed before DATE, given as for --since
    #[arg(long, value_name = "DATE", value_parser = parse::git_date)]
    pub until: Option<SystemTime>,

    /// An analysis to run; repeatable or comma-separated [default: summary,
    /// unless --search or --contains is given]
    #[arg(
        long = "analysis",
        value_name = "NAME",
        value_delimiter = ',',
        value_parser = clap::builder::PossibleValuesParser::new(parse::GIT_ANALYSIS_NAMES)
    )]
    pub analyses: Vec<String>,

    /// Also run the search analysis: commits whose message or trailers
    /// match this regular expression (Rust regex syntax); CVE ids are always
    /// found
    #[arg(long, value_name = "REGEX")]
    pub search: Option<String>,

    /// Also run the contains analysis: which branches and tags have this
    /// commit (4 to 40 hex digits), and which lack it but have an
    /// equivalent
    #[arg(long, value_name = "SHA")]
    pub contains: Option<String>,

    /// How many hotspots to keep [default: the daemon's, 50]
    #[arg(long, value_name = "N")]
    pub top: Option<u32>,

    /// Follow renames in churn, hotspots and ownership (off by default, as
    /// git log --numstat --no-renames)
    #[arg(long)]
    pub renames: bool,

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
    fn events_watches_is_a_flag_and_not_with_job() {
        let cli = Cli::try_parse_from(["quernctl", "events", "--watches"]).expect("parses");
        let Command::Events { watches, .. } = cli.command else {
            panic!("not events");
        };
        assert!(watches);
        let err = Cli::try_parse_from(["quernctl", "events", "--watches", "--job", "1"])
            .expect_err("both given");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
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
