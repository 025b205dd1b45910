//! Property tests of the config file: any text, valid, damaged or noise,
//! loads or is refused with a `ConfigError` naming the file or the key,
//! never a panic; and a valid file loads the values it gives.

use proptest::prelude::*;

use super::*;
use crate::props::{config, garble, text_edits};

/// The keys a file may hold.
const KEYS: [&str; 10] = [
    "state_dir",
    "socket",
    "concurrency",
    "log_cap_bytes",
    "event_retention",
    "db_cache_bytes",
    "retry_base_delay",
    "retry_max_delay",
    "default_grace",
    "commit_linger",
];

/// A valid file's values; `None` leaves the key out.
#[derive(Clone, Debug)]
struct Values {
    state_dir: Option<String>,
    socket: Option<String>,
    concurrency: Option<usize>,
    log_cap_bytes: Option<u64>,
    event_retention: Option<u64>,
    db_cache_bytes: Option<usize>,
    retry_base_delay: Option<Duration>,
    retry_max_delay: Option<Duration>,
    default_grace: Option<Duration>,
    commit_linger: Option<Duration>,
}

/// Any duration humantime writes: whole seconds up to u64::MAX, or
/// nanoseconds.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        any::<u64>().prop_map(Duration::from_secs),
        (0..100_000u64, 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

/// TOML integers are i64: larger ones are a parse error, tested below.
const TOML_MAX: u64 = i64::MAX as u64;

prop_compose! {
    fn values()(
        state_dir in prop::option::of("/[a-z]{1,8}"),
        socket in prop::option::of("/[a-z]{1,8}\\.sock"),
        concurrency in prop::option::of(1..=4096usize),
        log_cap_bytes in prop::option::of(1024..=TOML_MAX),
        event_retention in prop::option::of(1..=TOML_MAX),
        db_cache_bytes in prop::option::of(0..=TOML_MAX as usize),
        retry_base_delay in prop::option::of(duration()),
        retry_max_delay in prop::option::of(duration()),
        default_grace in prop::option::of(duration()),
        commit_linger in prop::option::of((0..=100_000u64).prop_map(Duration::from_micros)),
    ) -> Values {
        Values {
            state_dir, socket, concurrency, log_cap_bytes, event_retention, db_cache_bytes,
            retry_base_delay, retry_max_delay, default_grace, commit_linger,
        }
    }
}

impl Values {
    fn toml(&self) -> String {
        let quoted = |s: &str| format!("{s:?}");
        let human = |d: &Duration| quoted(&humantime::format_duration(*d).to_string());
        let lines = [
            self.state_dir.as_deref().map(quoted),
            self.socket.as_deref().map(quoted),
            self.concurrency.map(|n| n.to_string()),
            self.log_cap_bytes.map(|n| n.to_string()),
            self.event_retention.map(|n| n.to_string()),
            self.db_cache_bytes.map(|n| n.to_string()),
            self.retry_base_delay.as_ref().map(human),
            self.retry_max_delay.as_ref().map(human),
            self.default_grace.as_ref().map(human),
            self.commit_linger.as_ref().map(human),
        ];
        KEYS.iter()
            .zip(lines)
            .filter_map(|(k, v)| v.map(|v| format!("{k} = {v}\n")))
            .collect()
    }
}

/// Loads `bytes` as the config file at `path`.
fn load(path: &Path, bytes: &[u8]) -> Result<Config, ConfigError> {
    std::fs::write(path, bytes).unwrap();
    Config::load(Overrides {
        config_file: Some(path.to_path_buf()),
        ..Default::default()
    })
}

/// A refusal names the file or a key of it, and says what is wrong.
fn check_refusal(e: &ConfigError, path: &Path, utf8: bool) -> Result<(), TestCaseError> {
    match e {
        ConfigError::Parse { path: p, message } => {
            prop_assert_eq!(p, path);
            prop_assert!(!message.is_empty());
        }
        ConfigError::Invalid { key, reason, .. } => {
            prop_assert!(KEYS.contains(key), "{key}");
            prop_assert!(!reason.is_empty());
        }
        ConfigError::InvalidAt { key, reason, .. } => {
            prop_assert!(key.starts_with("fetch."), "{key}");
            prop_assert!(!reason.is_empty());
        }
        // Only bytes that are not UTF-8 fail to read.
        ConfigError::Read { path: p, .. } => {
            prop_assert_eq!(p, path);
            prop_assert!(!utf8, "{e}");
        }
        ConfigError::NoStateDir => {}
    }
    prop_assert!(e.to_string().len() > 10);
    Ok(())
}

#[test]
fn valid_files_load_their_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.toml");
    proptest!(config(), |(v in values())| {
        let c = load(&path, v.toml().as_bytes()).map_err(|e| {
            TestCaseError::fail(format!("{e} for {}", v.toml()))
        })?;
        if let Some(d) = &v.state_dir {
            prop_assert_eq!(&c.state_dir, Path::new(d));
        }
        let or = |d: Option<Duration>, default: Duration| d.unwrap_or(default);
        let defaults = Config::for_dir(dir.path());
        prop_assert_eq!(c.log_cap_bytes, v.log_cap_bytes.unwrap_or(16 << 20));
        prop_assert_eq!(c.event_retention, v.event_retention.unwrap_or(100_000));
        prop_assert_eq!(c.db_cache_bytes, v.db_cache_bytes.unwrap_or(16 << 20));
        prop_assert_eq!(c.retry_base_delay, or(v.retry_base_delay, defaults.retry_base_delay));
        prop_assert_eq!(c.retry_max_delay, or(v.retry_max_delay, defaults.retry_max_delay));
        prop_assert_eq!(c.default_grace, or(v.default_grace, defaults.default_grace));
        prop_assert_eq!(c.commit_linger, or(v.commit_linger, defaults.commit_linger));
        if let Some(n) = v.concurrency {
            prop_assert_eq!(c.concurrency, n);
        }
    });
}

#[test]
fn damaged_files_load_or_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.toml");
    proptest!(config(), |(
        v in values(),
        edits in prop::option::weighted(0.9, text_edits()),
        noise in prop::collection::vec(any::<u8>(), 0..64),
    )| {
        let bytes = match &edits {
            Some(edits) => garble(&v.toml(), edits).into_bytes(),
            None => noise,
        };
        if let Err(e) = load(&path, &bytes) {
            check_refusal(&e, &path, std::str::from_utf8(&bytes).is_ok())?;
        }
    });
}

/// One key set to a hostile value, quoted or bare: refused naming that
/// key, or, where TOML itself refuses it, the file.
#[test]
fn hostile_values_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.toml");
    proptest!(config(), |(
        key in prop::sample::select(&KEYS[..]),
        value in crate::props::piece(),
        quote in any::<bool>(),
    )| {
        let value = if quote { format!("{value:?}") } else { value };
        let text = format!("{key} = {value}\n");
        if let Err(e) = load(&path, text.as_bytes()) {
            check_refusal(&e, &path, true)?;
            if let ConfigError::Invalid { key: k, .. } = &e {
                prop_assert_eq!(*k, key);
            }
        }
    });
}
