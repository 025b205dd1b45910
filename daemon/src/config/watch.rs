//! The `[watch]` table: how many watch rules quernd keeps, and how often a
//! rule that ran out of kernel watches compares its tree instead.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration};

/// Settings of watch rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// The most rules quernd keeps; `Add` beyond it is refused.
    pub max_rules: usize,
    /// How often a degraded rule (out of inotify watches or instances)
    /// compares its tree with its snapshot.
    pub poll_interval: Duration,
    /// Test hooks: a file `.quern-test-deaf` in a rule's root makes the
    /// rule drop its events, and `.quern-test-rescan` then makes it rescan,
    /// as a kernel queue overflow would. Set by the environment variable
    /// `QUERND_TEST_HOOKS=1`, for the end-to-end tests only.
    pub test_hooks: bool,
}

impl Default for WatchConfig {
    fn default() -> WatchConfig {
        WatchConfig {
            max_rules: 256,
            poll_interval: Duration::from_secs(2),
            test_hooks: false,
        }
    }
}

/// The `[watch]` table of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchFile {
    /// See [`WatchConfig::max_rules`].
    pub max_rules: Option<usize>,
    /// See [`WatchConfig::poll_interval`], as "2s", "500ms", ...
    pub poll_interval: Option<String>,
}

/// The `[watch]` table over the defaults.
pub fn load(file: WatchFile) -> Result<WatchConfig, ConfigError> {
    let d = WatchConfig::default();
    let max_rules = file.max_rules.unwrap_or(d.max_rules);
    if max_rules == 0 || max_rules > 65_536 {
        return Err(ConfigError::Invalid {
            key: "watch.max_rules",
            value: max_rules.to_string(),
            reason: "must be between 1 and 65536",
        });
    }
    let poll_interval = duration("watch.poll_interval", file.poll_interval, "2s")?;
    if poll_interval < Duration::from_millis(10) {
        return Err(ConfigError::Invalid {
            key: "watch.poll_interval",
            value: format!(
                "{:?}",
                humantime::format_duration(poll_interval).to_string()
            ),
            reason: "must be at least 10ms (each comparison walks the whole tree)",
        });
    }
    Ok(WatchConfig {
        max_rules,
        poll_interval,
        test_hooks: std::env::var_os("QUERND_TEST_HOOKS").is_some_and(|v| v == "1"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_limits() {
        assert_eq!(load(WatchFile::default()).unwrap().max_rules, 256);
        let e = load(WatchFile {
            max_rules: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("watch.max_rules"), "{e}");
        let e = load(WatchFile {
            poll_interval: Some("1ms".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("at least 10ms"), "{e}");
        let c = load(WatchFile {
            max_rules: Some(3),
            poll_interval: Some("250ms".into()),
        })
        .unwrap();
        assert_eq!(
            (c.max_rules, c.poll_interval),
            (3, Duration::from_millis(250))
        );
    }
}
