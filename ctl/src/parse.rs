//! Parsers for flag values: priorities, `KEY=VALUE` pairs, durations, times
//! and job states. Each returns a message that clap shows after naming the
//! flag and the value, so the messages say only what was expected.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use quern_proto::v1::JobState;

/// The priority names the daemon knows, with the numbers they stand for.
///
/// The daemon is the authority on these; they are checked here only so that
/// an obvious typo fails before anything is sent.
pub use quern_proto::PRIORITY_NAMES;

/// The lowercase state names, in lifecycle order, as shown and accepted by
/// quernctl.
pub const STATE_NAMES: [(&str, JobState); 6] = [
    ("queued", JobState::Queued),
    ("scheduled", JobState::Scheduled),
    ("running", JobState::Running),
    ("succeeded", JobState::Succeeded),
    ("failed", JobState::Failed),
    ("cancelled", JobState::Cancelled),
];

/// A `--priority` value: a number goes to `JobSpec.priority`, a name to
/// `JobSpec.priority_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// An explicit number; higher runs first.
    Number(i32),
    /// One of [`PRIORITY_NAMES`], lowercase.
    Name(&'static str),
}

/// Parses a `--priority` value: a number, or a name from [`PRIORITY_NAMES`]
/// in any case.
pub fn priority(value: &str) -> Result<Priority, String> {
    if let Ok(number) = value.parse::<i32>() {
        return Ok(Priority::Number(number));
    }
    if let Some((name, _)) = PRIORITY_NAMES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(value))
    {
        return Ok(Priority::Name(name));
    }
    // A number that did not fit i32 deserves a different hint than a typo.
    if value.parse::<i128>().is_ok() {
        return Err(format!(
            "priority numbers must be between {} and {}",
            i32::MIN,
            i32::MAX
        ));
    }
    Err(format!(
        "expected a number or one of {}",
        names(PRIORITY_NAMES.iter().map(|(name, _)| *name))
    ))
}

/// Parses a `KEY=VALUE` pair. The value may be empty and may contain `=`;
/// the key may not be empty.
pub fn key_value(value: &str) -> Result<(String, String), String> {
    let Some((key, val)) = value.split_once('=') else {
        return Err("expected KEY=VALUE".to_owned());
    };
    if key.is_empty() {
        return Err("the key before '=' is empty; expected KEY=VALUE".to_owned());
    }
    Ok((key.to_owned(), val.to_owned()))
}

/// Collects `KEY=VALUE` pairs given with `flag` into a map, refusing a key
/// given twice rather than silently keeping one of the values.
pub fn into_map(
    flag: &str,
    pairs: impl IntoIterator<Item = (String, String)>,
) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    for (key, value) in pairs {
        if map.contains_key(&key) {
            return Err(format!("{flag} {key} is given twice; give each key once"));
        }
        map.insert(key, value);
    }
    Ok(map)
}

/// Parses a duration such as `10s`, `1h30m` or `500ms`.
pub fn duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value)
        .map_err(|err| format!("{err}; expected a duration such as 10s, 500ms or 1h30m"))
}

/// Parses an RFC 3339 time such as `2030-01-02T15:04:05Z`. A time without a
/// zone is taken as UTC.
pub fn time(value: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(value)
        .map_err(|err| format!("{err}; expected an RFC 3339 time such as 2030-01-02T15:04:05Z"))
}

/// Parses a lowercase state name from [`STATE_NAMES`].
pub fn state(value: &str) -> Result<JobState, String> {
    STATE_NAMES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(value))
        .map(|(_, state)| *state)
        .ok_or_else(|| {
            format!(
                "expected one of {}",
                names(STATE_NAMES.iter().map(|(name, _)| *name))
            )
        })
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_accepts_numbers_and_names() {
        let cases = [
            ("0", Priority::Number(0)),
            ("15", Priority::Number(15)),
            ("-10", Priority::Number(-10)),
            ("+3", Priority::Number(3)),
            ("critical", Priority::Name("critical")),
            ("high", Priority::Name("high")),
            ("normal", Priority::Name("normal")),
            ("low", Priority::Name("low")),
            ("background", Priority::Name("background")),
            ("HIGH", Priority::Name("high")),
        ];
        for (input, want) in cases {
            assert_eq!(priority(input), Ok(want), "input {input:?}");
        }
    }

    #[test]
    fn priority_refuses_unknown_names_and_out_of_range_numbers() {
        let cases = [
            ("bogus", "expected a number or one of critical, high"),
            ("", "expected a number"),
            ("urgent", "background"),
            ("1.5", "expected a number"),
            ("2147483648", "between -2147483648 and 2147483647"),
            ("-99999999999", "between"),
        ];
        for (input, want) in cases {
            let err = priority(input).expect_err(input);
            assert!(err.contains(want), "input {input:?}: {err}");
        }
    }

    #[test]
    fn key_value_splits_at_the_first_equals() {
        let cases = [
            ("a=b", ("a", "b")),
            ("a=", ("a", "")),
            ("a=b=c", ("a", "b=c")),
            ("PATH=/bin:/usr/bin", ("PATH", "/bin:/usr/bin")),
        ];
        for (input, (key, value)) in cases {
            assert_eq!(
                key_value(input),
                Ok((key.to_owned(), value.to_owned())),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn key_value_refuses_a_missing_equals_or_key() {
        for (input, want) in [
            ("ab", "expected KEY=VALUE"),
            ("", "expected KEY=VALUE"),
            ("=b", "key before '=' is empty"),
        ] {
            let err = key_value(input).expect_err(input);
            assert!(err.contains(want), "input {input:?}: {err}");
        }
    }

    #[test]
    fn into_map_refuses_a_repeated_key() {
        let pairs = [("a", "1"), ("b", "2"), ("a", "3")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        let err = into_map("--label", pairs).expect_err("a twice");
        assert_eq!(err, "--label a is given twice; give each key once");

        let map = into_map("--env", [("a".to_owned(), "1".to_owned())]).expect("one key");
        assert_eq!(map.get("a").map(String::as_str), Some("1"));
    }

    #[test]
    fn durations_are_humantime() {
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        let err = duration("ten").expect_err("not a duration");
        assert!(err.contains("expected a duration such as 10s"), "{err}");
    }

    #[test]
    fn times_are_rfc3339() {
        let want = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000);
        assert_eq!(time("2030-01-01T00:00:00Z"), Ok(want));
        // Without a zone the time is taken as UTC.
        assert_eq!(time("2030-01-01 00:00:00"), Ok(want));
        let err = time("tomorrow").expect_err("not a time");
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn states_are_lowercase_names() {
        for (name, want) in STATE_NAMES {
            assert_eq!(state(name), Ok(want));
        }
        let err = state("done").expect_err("unknown state");
        assert_eq!(
            err,
            "expected one of queued, scheduled, running, succeeded, failed, cancelled"
        );
    }
}
