//! Daemon configuration: built-in defaults, overlaid by a TOML file, overlaid
//! by command-line flags and environment variables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod fetch;
pub mod git;
pub mod watch;

pub use fetch::FetchConfig;
pub use git::GitConfig;
pub use watch::WatchConfig;

/// Everything the daemon needs to know to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the database and job logs live.
    pub state_dir: PathBuf,
    /// The Unix socket to serve on.
    pub socket: PathBuf,
    /// How many jobs may run at once.
    pub concurrency: usize,
    /// Per-stream cap on captured output; the newest bytes are kept.
    pub log_cap_bytes: u64,
    /// How many stored events are kept for `Events` resume.
    pub event_retention: u64,
    /// The database's page cache. Small by default: the OS page cache
    /// serves the rest, and the daemon's memory stays flat as the queue
    /// grows.
    pub db_cache_bytes: usize,
    /// The first retry delay; later ones double.
    pub retry_base_delay: Duration,
    /// The longest retry delay.
    pub retry_max_delay: Duration,
    /// SIGTERM-to-SIGKILL grace for cancel, timeout and shutdown.
    pub default_grace: Duration,
    /// How long the store may hold a job's "running" or outcome write, while
    /// short jobs keep it busy (at least two jobs' writes within 2 ms), to
    /// share one commit with others. Zero never holds one. Job events can
    /// come up to this much later under such load, and a crash (kill -9,
    /// power loss) can catch up to this much more of jobs' progress
    /// unrecorded: such a job is recovered like any job running at a
    /// crash, as interrupted, or queued to run again if it was not yet
    /// recorded as running.
    pub commit_linger: Duration,
    /// How long finished jobs and events are kept.
    pub retention: Retention,
    /// The fetch kind's limits and timeouts (`[fetch]`).
    pub fetch: FetchConfig,
    /// Watch rules' limits (`[watch]`).
    pub watch: WatchConfig,
    /// The git kind's limits (`[git]`).
    pub git: GitConfig,
}

/// How long finished jobs, and the event log, are kept (`[retention]`).
/// Queued, scheduled and running jobs are never removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Finished jobs older than this are removed; `None` keeps them
    /// whatever their age.
    pub max_age: Option<Duration>,
    /// Beyond this many finished jobs, the oldest are removed; `None`
    /// keeps any number.
    pub max_finished: Option<u64>,
    /// Events older than this are removed; `None` keeps them whatever
    /// their age (the count window, `event_retention`, still applies).
    pub events_max_age: Option<Duration>,
}

impl Retention {
    /// No limit at all: everything is kept.
    pub const NONE: Retention = Retention {
        max_age: None,
        max_finished: None,
        events_max_age: None,
    };
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            max_age: Some(Duration::from_secs(7 * 86_400)),
            max_finished: Some(100_000),
            events_max_age: Some(Duration::from_secs(7 * 86_400)),
        }
    }
}

/// The `[retention]` table of the file. A zero turns a limit off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// See [`Retention::max_age`], as "7d", "12h", ...
    pub max_age: Option<String>,
    /// See [`Retention::max_finished`].
    pub max_finished: Option<u64>,
    /// See [`Retention::events_max_age`].
    pub events_max_age: Option<String>,
}

/// The longest [`Config::commit_linger`] accepted.
const MAX_COMMIT_LINGER: Duration = Duration::from_millis(100);

/// Errors loading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}; check the path passed to --config")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for quernd.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, from the TOML parser.
        message: String,
    },
    /// A value is out of range.
    #[error("config {key} = {value} is invalid: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
    /// A value is out of range, at a key made of parts (a host's table).
    #[error("config {key} = {value} is invalid: {reason}")]
    InvalidAt {
        /// The key, such as `fetch.hosts."example.org".rate`.
        key: String,
        /// The value given.
        value: String,
        /// What it must be.
        reason: String,
    },
    /// No default state dir could be found.
    #[error(
        "cannot find a state directory: neither XDG_STATE_HOME nor HOME is set; pass --state-dir"
    )]
    NoStateDir,
}

/// The on-disk TOML form. Every key is optional; unknown keys are refused so
/// that a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Config::state_dir`].
    pub state_dir: Option<PathBuf>,
    /// See [`Config::socket`].
    pub socket: Option<PathBuf>,
    /// See [`Config::concurrency`].
    pub concurrency: Option<usize>,
    /// See [`Config::log_cap_bytes`].
    pub log_cap_bytes: Option<u64>,
    /// See [`Config::event_retention`].
    pub event_retention: Option<u64>,
    /// See [`Config::db_cache_bytes`].
    pub db_cache_bytes: Option<usize>,
    /// See [`Config::retry_base_delay`], as "1s", "200ms", ...
    pub retry_base_delay: Option<String>,
    /// See [`Config::retry_max_delay`].
    pub retry_max_delay: Option<String>,
    /// See [`Config::default_grace`].
    pub default_grace: Option<String>,
    /// See [`Config::commit_linger`].
    pub commit_linger: Option<String>,
    /// See [`Config::retention`].
    #[serde(default)]
    pub retention: RetentionFile,
    /// See [`Config::fetch`].
    #[serde(default)]
    pub fetch: fetch::FetchFile,
    /// See [`Config::watch`].
    #[serde(default)]
    pub watch: watch::WatchFile,
    /// See [`Config::git`].
    #[serde(default)]
    pub git: git::GitFile,
}

/// Values given on the command line or in the environment; they win over the
/// file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--state-dir` / `QUERN_STATE_DIR`.
    pub state_dir: Option<PathBuf>,
    /// `--socket` / `QUERN_SOCKET`.
    pub socket: Option<PathBuf>,
    /// `--concurrency`.
    pub concurrency: Option<usize>,
    /// `--config`.
    pub config_file: Option<PathBuf>,
}

impl Config {
    /// Builds the configuration from defaults, the optional file and the
    /// overrides, in that order of precedence (last wins).
    pub fn load(overrides: Overrides) -> Result<Config, ConfigError> {
        let file = match &overrides.config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let state_dir = match overrides.state_dir.or(file.state_dir) {
            Some(dir) => dir,
            None => default_state_dir()?,
        };
        let socket = overrides
            .socket
            .or(file.socket)
            .unwrap_or_else(quern_proto::default_socket_path);
        let concurrency = overrides
            .concurrency
            .or(file.concurrency)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if concurrency == 0 || concurrency > 4096 {
            return Err(ConfigError::Invalid {
                key: "concurrency",
                value: concurrency.to_string(),
                reason: "must be between 1 and 4096",
            });
        }
        let log_cap_bytes = file.log_cap_bytes.unwrap_or(16 << 20);
        if log_cap_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "log_cap_bytes",
                value: log_cap_bytes.to_string(),
                reason: "must be at least 1024",
            });
        }
        let event_retention = file.event_retention.unwrap_or(100_000);
        if event_retention == 0 {
            return Err(ConfigError::Invalid {
                key: "event_retention",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        let commit_linger = duration("commit_linger", file.commit_linger, "10ms")?;
        if commit_linger > MAX_COMMIT_LINGER {
            return Err(ConfigError::Invalid {
                key: "commit_linger",
                value: format!(
                    "{:?}",
                    humantime::format_duration(commit_linger).to_string()
                ),
                reason: "must be at most 100ms (a longer wait only delays job events); \"0s\" turns it off",
            });
        }
        Ok(Config {
            state_dir,
            socket,
            concurrency,
            log_cap_bytes,
            event_retention,
            db_cache_bytes: file.db_cache_bytes.unwrap_or(16 << 20),
            retry_base_delay: duration("retry_base_delay", file.retry_base_delay, "1s")?,
            retry_max_delay: duration("retry_max_delay", file.retry_max_delay, "1h")?,
            default_grace: duration("default_grace", file.default_grace, "10s")?,
            commit_linger,
            retention: retention(file.retention)?,
            fetch: fetch::load(file.fetch)?,
            watch: watch::load(file.watch)?,
            git: git::load(file.git)?,
        })
    }

    /// Defaults suitable for tests: everything under `dir`.
    pub fn for_dir(dir: &Path) -> Config {
        Config {
            state_dir: dir.join("state"),
            socket: dir.join("quernd.sock"),
            concurrency: 2,
            log_cap_bytes: 16 << 20,
            event_retention: 100_000,
            db_cache_bytes: 16 << 20,
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(3600),
            default_grace: Duration::from_secs(10),
            commit_linger: Duration::from_millis(10),
            retention: Retention::default(),
            fetch: FetchConfig::default(),
            watch: WatchConfig::default(),
            git: GitConfig::default(),
        }
    }
}

fn retention(file: RetentionFile) -> Result<Retention, ConfigError> {
    let default = Retention::default();
    let age = |key, value: Option<String>, default: Option<Duration>| match value {
        None => Ok(default),
        Some(text) => duration(key, Some(text), "").map(|d| (!d.is_zero()).then_some(d)),
    };
    Ok(Retention {
        max_age: age("retention.max_age", file.max_age, default.max_age)?,
        max_finished: match file.max_finished {
            None => default.max_finished,
            Some(0) => None,
            Some(n) => Some(n),
        },
        events_max_age: age(
            "retention.events_max_age",
            file.events_max_age,
            default.events_max_age,
        )?,
    })
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim().replace('\n', " "),
    })
}

fn duration(
    key: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_string());
    humantime::parse_duration(&text).map_err(|_| ConfigError::Invalid {
        key,
        value: format!("{text:?}"),
        reason: "must be a duration such as \"500ms\", \"10s\" or \"1h\"",
    })
}

/// `$XDG_STATE_HOME/quern`, or the platform's equivalent.
fn default_state_dir() -> Result<PathBuf, ConfigError> {
    let dirs = directories::ProjectDirs::from("", "", "quern").ok_or(ConfigError::NoStateDir)?;
    Ok(dirs
        .state_dir()
        .unwrap_or_else(|| dirs.data_local_dir())
        .to_path_buf())
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_load_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.toml");
        std::fs::write(
            &path,
            "concurrency = 3\nretry_base_delay = \"200ms\"\nlog_cap_bytes = 65536\nstate_dir = \"/x\"\n",
        )
        .unwrap();
        let cfg = Config::load(Overrides {
            config_file: Some(path),
            concurrency: Some(5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.concurrency, 5);
        assert_eq!(cfg.retry_base_delay, Duration::from_millis(200));
        assert_eq!(cfg.log_cap_bytes, 65536);
        assert_eq!(cfg.state_dir, PathBuf::from("/x"));
        assert_eq!(cfg.default_grace, Duration::from_secs(10));
        assert_eq!(cfg.commit_linger, Duration::from_millis(10));
    }

    /// The README's configuration example is a file quernd takes, and the
    /// defaults it shows for `[fetch]` and `[watch]` are the real ones.
    #[test]
    fn the_readme_example_loads() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```toml\nconcurrency = 4")
            .expect("the README has its configuration example");
        let block = &readme[start + "```toml\n".len()..];
        let block = &block[..block.find("```").unwrap()];
        let dir = tempfile::tempdir().unwrap();
        let cfg = load_text(&dir.path().join("readme.toml"), block).unwrap();
        let d = FetchConfig::default();
        assert_eq!(cfg.fetch.concurrency, d.concurrency);
        assert_eq!(cfg.fetch.per_host_concurrency, d.per_host_concurrency);
        assert_eq!(cfg.fetch.default_rate, d.default_rate);
        assert_eq!(cfg.fetch.breaker_failures, d.breaker_failures);
        assert_eq!(cfg.fetch.breaker_open, d.breaker_open);
        assert_eq!(cfg.fetch.connect_timeout, d.connect_timeout);
        assert_eq!(cfg.fetch.idle_timeout, d.idle_timeout);
        assert_eq!(cfg.fetch.speed_limit, d.speed_limit);
        assert_eq!(cfg.fetch.speed_time, d.speed_time);
        assert_eq!(cfg.fetch.max_redirects, d.max_redirects);
        assert_eq!(cfg.fetch.limits_for("example.org:443").1, 1);
        let w = WatchConfig::default();
        assert_eq!(cfg.watch.max_rules, w.max_rules);
        assert_eq!(cfg.watch.poll_interval, w.poll_interval);
        assert_eq!(cfg.git, GitConfig::default());
    }

    /// Loads a config file holding `text`, written to `path`.
    fn load_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        std::fs::write(path, text).unwrap();
        Config::load(Overrides {
            config_file: Some(path.to_path_buf()),
            state_dir: Some("/s".into()),
            ..Default::default()
        })
    }

    #[test]
    fn commit_linger_can_be_set_or_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.toml");
        for (text, want) in [
            ("commit_linger = \"0s\"", Duration::ZERO),
            ("commit_linger = \"500us\"", Duration::from_micros(500)),
            ("commit_linger = \"100ms\"", Duration::from_millis(100)),
        ] {
            let cfg = load_text(&path, text).unwrap();
            assert_eq!(cfg.commit_linger, want, "{text}");
        }
    }

    #[test]
    fn retention_defaults_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.toml");
        let cfg = load_text(&path, "").unwrap();
        assert_eq!(cfg.retention.max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(cfg.retention.max_finished, Some(100_000));
        assert_eq!(
            cfg.retention.events_max_age,
            Some(Duration::from_secs(7 * 86_400))
        );
        let cfg = load_text(
            &path,
            "[retention]\nmax_age = \"12h\"\nmax_finished = 0\nevents_max_age = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(cfg.retention.max_age, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(cfg.retention.max_finished, None);
        assert_eq!(cfg.retention.events_max_age, None);
    }

    #[test]
    fn bad_files_are_refused_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.toml");
        for (text, needle) in [
            ("concurency = 3", "concurency"),
            ("default_grace = \"soon\"", "default_grace"),
            ("concurrency = 0", "concurrency"),
            (
                "commit_linger = \"1s\"",
                "commit_linger = \"1s\" is invalid: must be at most 100ms",
            ),
            ("commit_linger = 2", "commit_linger"),
            ("[retention]\nmax_age = \"a week\"", "retention.max_age"),
            ("[retention]\nmax_finshed = 5", "max_finshed"),
            ("[retention]\nmax_finished = -1", "max_finished"),
        ] {
            let err = load_text(&path, text).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
