//! The `[fetch]` table: how many downloads run, how politely each host is
//! treated, and when a transfer counts as stalled.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration};

/// Settings of the fetch kind.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchConfig {
    /// Fetch jobs that may transfer at once, over all hosts. Separate from
    /// the daemon's `concurrency`, which exec jobs use.
    pub concurrency: usize,
    /// Fetch jobs that may transfer from one host at once, unless the host
    /// has its own limit.
    pub per_host_concurrency: usize,
    /// Requests a host may be sent, unless it has its own rate; `None` is
    /// no limit.
    pub default_rate: Option<Rate>,
    /// Limits for single hosts, by `host` (any port) or `host:port`.
    pub hosts: BTreeMap<String, HostLimits>,
    /// How long a connection may take to open.
    pub connect_timeout: Duration,
    /// How long a response may send nothing (headers or body) before the
    /// attempt fails.
    pub idle_timeout: Duration,
    /// A transfer slower than this many bytes per second for `speed_time`
    /// fails, as curl's `--speed-limit`; 0 turns the rule off.
    pub speed_limit: u64,
    /// See `speed_limit`.
    pub speed_time: Duration,
    /// Redirects followed at most.
    pub max_redirects: usize,
    /// Failures in a row (connect errors, resets, timeouts, 5xx) that open
    /// a host's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker keeps a host's jobs waiting before one
    /// probe is let through.
    pub breaker_open: Duration,
}

impl Default for FetchConfig {
    fn default() -> FetchConfig {
        FetchConfig {
            concurrency: 16,
            per_host_concurrency: 2,
            default_rate: Some(Rate {
                count: 4,
                per: Duration::from_secs(1),
            }),
            hosts: BTreeMap::new(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            speed_limit: 1024,
            speed_time: Duration::from_secs(60),
            max_redirects: crate::job::fetch::MAX_REDIRECTS,
            breaker_failures: 5,
            breaker_open: Duration::from_secs(60),
        }
    }
}

impl FetchConfig {
    /// The limits for `host_port` (`host:port`, as [`host_key`] makes it):
    /// its own table if it has one (`host:port` first, then `host`), else
    /// the defaults.
    pub fn limits_for(&self, host_port: &str) -> (Option<Rate>, usize) {
        let host = host_port
            .rsplit_once(':')
            .map_or(host_port, |(host, _)| host);
        let own = self.hosts.get(host_port).or_else(|| self.hosts.get(host));
        let rate = match own.and_then(|h| h.rate) {
            Some(r) => r,
            None => self.default_rate,
        };
        let concurrency = own
            .and_then(|h| h.concurrency)
            .unwrap_or(self.per_host_concurrency);
        (rate, concurrency)
    }
}

/// A host's own limits; what is not given is the default.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostLimits {
    /// `Some(None)` is "unlimited".
    pub rate: Option<Option<Rate>>,
    /// Transfers from the host at once.
    pub concurrency: Option<usize>,
}

/// A request rate: `count` requests per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period; at least 1.
    pub count: u32,
    /// The period; positive.
    pub per: Duration,
}

impl Rate {
    /// The time between two requests at this rate.
    pub fn interval(self) -> Duration {
        self.per / self.count
    }

    /// Parses `"4/s"`, `"20/m"`, `"1/h"`, `"1/5s"` or `"unlimited"` (which
    /// is `None`).
    pub fn parse(text: &str) -> Result<Option<Rate>, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("unlimited") {
            return Ok(None);
        }
        let bad = || {
            format!(
                "{text:?} is not a rate; write requests per period, such as \"4/s\", \"30/m\" or \"1/5s\", or \"unlimited\""
            )
        };
        let (count, per) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match per.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => humantime::parse_duration(other).map_err(|_| bad())?,
        };
        if count == 0 || per.is_zero() {
            return Err(format!(
                "{text:?} allows no request at all; give at least 1 per period, or \"unlimited\""
            ));
        }
        Ok(Some(Rate { count, per }))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.as_secs() {
            1 if self.per.subsec_nanos() == 0 => write!(f, "{}/s", self.count),
            60 if self.per.subsec_nanos() == 0 => write!(f, "{}/m", self.count),
            3600 if self.per.subsec_nanos() == 0 => write!(f, "{}/h", self.count),
            _ => write!(f, "{}/{}", self.count, humantime::format_duration(self.per)),
        }
    }
}

pub use crate::job::fetch::host_key;

/// The `[fetch]` table of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchFile {
    concurrency: Option<usize>,
    per_host_concurrency: Option<usize>,
    default_rate: Option<String>,
    #[serde(default)]
    hosts: BTreeMap<String, HostFile>,
    connect_timeout: Option<String>,
    idle_timeout: Option<String>,
    speed_limit: Option<u64>,
    speed_time: Option<String>,
    max_redirects: Option<usize>,
    breaker_failures: Option<u32>,
    breaker_open: Option<String>,
}

/// A `[fetch.hosts."NAME"]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    rate: Option<String>,
    concurrency: Option<usize>,
}

fn invalid(key: String, value: impl fmt::Display, reason: String) -> ConfigError {
    ConfigError::InvalidAt {
        key,
        value: value.to_string(),
        reason,
    }
}

fn limit(key: &str, n: usize) -> Result<usize, ConfigError> {
    if (1..=4096).contains(&n) {
        Ok(n)
    } else {
        Err(invalid(
            key.to_string(),
            n,
            "must be between 1 and 4096".into(),
        ))
    }
}

/// Reads the `[fetch]` table over the defaults.
pub fn load(file: FetchFile) -> Result<FetchConfig, ConfigError> {
    let d = FetchConfig::default();
    let rate = |key: String, text: &str| {
        Rate::parse(text).map_err(|why| invalid(key, format!("{text:?}"), why))
    };
    let mut hosts = BTreeMap::new();
    for (name, h) in file.hosts {
        if name.is_empty() || name.contains('/') || name.contains(char::is_whitespace) {
            return Err(invalid(
                format!("fetch.hosts.{name:?}"),
                "(table)",
                "must be named by a host, or host:port, such as \"example.org\" or \"127.0.0.1:8080\"".into(),
            ));
        }
        let key = |field: &str| format!("fetch.hosts.{name:?}.{field}");
        let limits = HostLimits {
            rate: match &h.rate {
                Some(text) => Some(rate(key("rate"), text)?),
                None => None,
            },
            concurrency: match h.concurrency {
                Some(n) => Some(limit(&key("concurrency"), n)?),
                None => None,
            },
        };
        hosts.insert(name.to_ascii_lowercase(), limits);
    }
    let max_redirects = file.max_redirects.unwrap_or(d.max_redirects);
    if max_redirects > 50 {
        return Err(invalid(
            "fetch.max_redirects".into(),
            max_redirects,
            "must be at most 50".into(),
        ));
    }
    let breaker_failures = file.breaker_failures.unwrap_or(d.breaker_failures);
    if breaker_failures == 0 {
        return Err(invalid(
            "fetch.breaker_failures".into(),
            0,
            "must be at least 1".into(),
        ));
    }
    let positive = |key: &'static str, value: Option<String>, default: Duration| {
        let Some(text) = value else {
            return Ok(default);
        };
        let d = duration(key, Some(text.clone()), "")?;
        if d.is_zero() {
            return Err(invalid(
                key.into(),
                format!("{text:?}"),
                "must be positive".into(),
            ));
        }
        Ok(d)
    };
    Ok(FetchConfig {
        concurrency: limit(
            "fetch.concurrency",
            file.concurrency.unwrap_or(d.concurrency),
        )?,
        per_host_concurrency: limit(
            "fetch.per_host_concurrency",
            file.per_host_concurrency.unwrap_or(d.per_host_concurrency),
        )?,
        default_rate: match &file.default_rate {
            Some(text) => rate("fetch.default_rate".into(), text)?,
            None => d.default_rate,
        },
        hosts,
        connect_timeout: positive(
            "fetch.connect_timeout",
            file.connect_timeout,
            d.connect_timeout,
        )?,
        idle_timeout: positive("fetch.idle_timeout", file.idle_timeout, d.idle_timeout)?,
        speed_limit: file.speed_limit.unwrap_or(d.speed_limit),
        speed_time: positive("fetch.speed_time", file.speed_time, d.speed_time)?,
        max_redirects,
        breaker_failures,
        breaker_open: positive("fetch.breaker_open", file.breaker_open, d.breaker_open)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FetchConfig, ConfigError> {
        #[derive(Deserialize)]
        struct Top {
            #[serde(default)]
            fetch: FetchFile,
        }
        let top: Top = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "test".into(),
            message: e.to_string(),
        })?;
        load(top.fetch)
    }

    #[test]
    fn rates_parse_and_print() {
        let r = |count, secs| {
            Some(Rate {
                count,
                per: Duration::from_secs(secs),
            })
        };
        assert_eq!(Rate::parse("4/s"), Ok(r(4, 1)));
        assert_eq!(Rate::parse(" 30/m "), Ok(r(30, 60)));
        assert_eq!(Rate::parse("1/h"), Ok(r(1, 3600)));
        assert_eq!(Rate::parse("1/5s"), Ok(r(1, 5)));
        assert_eq!(Rate::parse("unlimited"), Ok(None));
        for bad in ["4", "x/s", "4/fortnight", "0/s", "1/0s", "-1/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(r(4, 1).unwrap().to_string(), "4/s");
        assert_eq!(r(1, 5).unwrap().to_string(), "1/5s");
        assert_eq!(r(20, 1).unwrap().interval(), Duration::from_millis(50));
    }

    #[test]
    fn the_issue_example_loads_and_hosts_override_the_defaults() {
        let cfg = parse(
            "[fetch]\nconcurrency = 16\nper_host_concurrency = 2\ndefault_rate = \"4/s\"\n\n[fetch.hosts.\"example.org\"]\nrate = \"1/s\"\nconcurrency = 1\n\n[fetch.hosts.\"127.0.0.1:8080\"]\nrate = \"unlimited\"\n",
        )
        .unwrap();
        let four = Rate::parse("4/s").unwrap();
        let one = Rate::parse("1/s").unwrap();
        assert_eq!(cfg.limits_for("example.org:443"), (one, 1));
        assert_eq!(cfg.limits_for("example.org:80"), (one, 1));
        assert_eq!(cfg.limits_for("127.0.0.1:8080"), (None, 2));
        assert_eq!(cfg.limits_for("127.0.0.1:8081"), (four, 2));
        assert_eq!(parse("").unwrap(), FetchConfig::default());
    }

    #[test]
    fn host_keys_make_the_port_explicit() {
        let key = |u: &str| host_key(&url::Url::parse(u).unwrap());
        assert_eq!(key("https://Example.org/a"), "example.org:443");
        assert_eq!(key("http://example.org/a"), "example.org:80");
        assert_eq!(key("http://127.0.0.1:8080/a"), "127.0.0.1:8080");
        assert_eq!(key("http://[::1]:9/a"), "[::1]:9");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, needle) in [
            ("[fetch]\nconcurrency = 0", "fetch.concurrency"),
            ("[fetch]\ndefault_rate = \"fast\"", "fetch.default_rate"),
            (
                "[fetch.hosts.\"a.org\"]\nrate = \"0/s\"",
                "fetch.hosts.\"a.org\".rate",
            ),
            (
                "[fetch.hosts.\"a.org\"]\nconcurrency = 0",
                "fetch.hosts.\"a.org\".concurrency",
            ),
            ("[fetch.hosts.\"a.org\"]\nrte = \"1/s\"", "rte"),
            (
                "[fetch.hosts.\"a b\"]\nrate = \"1/s\"",
                "must be named by a host",
            ),
            ("[fetch]\nidle_timeout = \"0s\"", "fetch.idle_timeout"),
            ("[fetch]\nbreaker_failures = 0", "fetch.breaker_failures"),
            ("[fetch]\nmax_redirects = 99", "fetch.max_redirects"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }
}
