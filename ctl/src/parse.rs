//! Parsers for flag values: priorities, `KEY=VALUE` pairs, durations, times,
//! job states, a fetch's URL, headers, sizes and overwrite mode, and a git
//! job's dates and analyses. Each returns a message that clap shows after
//! naming the flag and the value, so the messages say only what was
//! expected.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use quern_proto::v1::{FetchOverwrite, JobState};

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

/// Checks a fetch URL: it parses, is http or https, and has a host. The
/// daemon checks it again and is the authority; this only reports the
/// obvious mistakes before anything is sent. The URL is kept as typed.
pub fn http_url(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value).map_err(|err| {
        format!("{err}; expected an http or https URL such as https://example.org/file")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme {:?} is not supported; use an http or https URL",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(
            "the URL has no host; expected an http or https URL such as https://example.org/file"
                .to_owned(),
        );
    }
    Ok(value.to_owned())
}

/// Parses a `--header` value, `Name: value`, as curl takes it: the name is
/// an HTTP token, and blanks around the value are dropped.
pub fn header(value: &str) -> Result<(String, String), String> {
    const EXPECTED: &str = "expected NAME: VALUE, such as 'Accept: text/plain'";
    let Some((name, val)) = value.split_once(':') else {
        return Err(format!("there is no ':'; {EXPECTED}"));
    };
    if name.is_empty() {
        return Err(format!("the name before ':' is empty; {EXPECTED}"));
    }
    // The token characters of RFC 9110, section 5.6.2.
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if let Some(bad) = name.chars().find(|&c| !token(c)) {
        return Err(format!(
            "the name {name:?} has {bad:?}, which a header name cannot have; {EXPECTED}"
        ));
    }
    let val = val.trim_matches([' ', '\t']);
    // CR and LF would end the header early; other controls are refused by
    // HTTP libraries, so they are refused here with a clearer message.
    if let Some(bad) = val.chars().find(|&c| c.is_control() && c != '\t') {
        return Err(format!(
            "the value of {name} has the control character {bad:?}, which a header value cannot have"
        ));
    }
    Ok((name.to_owned(), val.to_owned()))
}

/// The size units `--max-bytes` knows, lowercase, with their factors:
/// SI units are powers of 1000, IEC units powers of 1024.
const SIZE_UNITS: [(&str, u64); 14] = [
    ("", 1),
    ("b", 1),
    ("k", 1000),
    ("kb", 1000),
    ("m", 1000_u64.pow(2)),
    ("mb", 1000_u64.pow(2)),
    ("g", 1000_u64.pow(3)),
    ("gb", 1000_u64.pow(3)),
    ("t", 1000_u64.pow(4)),
    ("tb", 1000_u64.pow(4)),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// Parses a positive byte count: a whole number, optionally followed by a
/// unit (`10M`, `2GB`, `512KiB`, `1gib`; case does not matter). The SI
/// units k, M, G, T are powers of 1000, as `quernctl` prints sizes; the IEC
/// units KiB, MiB, GiB, TiB are powers of 1024. 0 is refused: it would
/// refuse every body.
pub fn size(value: &str) -> Result<u64, String> {
    const EXPECTED: &str = "expected a byte count or a size such as 10M, 2GB or 512KiB";
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let unit = unit.trim_start().to_ascii_lowercase();
    if digits.is_empty() {
        return Err(EXPECTED.to_owned());
    }
    let factor = SIZE_UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, factor)| *factor)
        .ok_or_else(|| format!("unknown unit {unit:?}; {EXPECTED}"))?;
    let too_big = || {
        format!(
            "{value} is more than {} bytes; give a smaller size",
            u64::MAX
        )
    };
    let number: u64 = digits.parse().map_err(|_| too_big())?;
    let bytes = number.checked_mul(factor).ok_or_else(too_big)?;
    if bytes == 0 {
        return Err(
            "a limit of 0 bytes would refuse every body; give a positive size, or leave the flag out for no limit"
                .to_owned(),
        );
    }
    Ok(bytes)
}

/// The `--overwrite` names, with the proto values they stand for.
pub const OVERWRITE_NAMES: [(&str, FetchOverwrite); 3] = [
    ("replace", FetchOverwrite::Replace),
    ("skip", FetchOverwrite::Skip),
    ("error", FetchOverwrite::Error),
];

/// Parses an `--overwrite` name from [`OVERWRITE_NAMES`].
pub fn overwrite(value: &str) -> Result<FetchOverwrite, String> {
    OVERWRITE_NAMES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(value))
        .map(|(_, mode)| *mode)
        .ok_or_else(|| {
            format!(
                "expected one of {}",
                names(OVERWRITE_NAMES.iter().map(|(name, _)| *name))
            )
        })
}

/// The names `watch add --on-busy` takes, as `WatchSpec.on_busy` has them.
/// The daemon is the authority on them; clap refuses others early, listing
/// these.
pub const ON_BUSY_NAMES: [&str; 4] = ["coalesce", "queue", "restart", "skip"];

/// The analyses `submit git --analysis` takes. search and contains are
/// analyses too, but they need a value, so they have flags of their own
/// (`--search REGEX`, `--contains SHA`).
pub const GIT_ANALYSIS_NAMES: [&str; 5] = ["summary", "churn", "hotspots", "ownership", "coupling"];

/// Parses a `--since` or `--until` date of `submit git`; see [`git_date_at`].
pub fn git_date(value: &str) -> Result<SystemTime, String> {
    git_date_at(value, SystemTime::now())
}

/// Parses a date as `submit git` takes it, relative to `now`: an RFC 3339
/// time (`2026-01-31T00:00:00Z`; without a zone, UTC), a plain date
/// (`2026-01-31`, midnight UTC), or an age (`30d`, `2w`, `12h`), meaning
/// that long before `now`. An age is turned into a time here, once, so the
/// daemon and a retried attempt see the same window.
pub fn git_date_at(value: &str, now: SystemTime) -> Result<SystemTime, String> {
    const EXPECTED: &str = "expected an RFC 3339 time such as 2026-01-31T00:00:00Z, \
         a date such as 2026-01-31, or an age such as 30d or 2w";
    if let Ok(time) = humantime::parse_rfc3339_weak(value) {
        return Ok(time);
    }
    if let Some(time) = with_offset(value) {
        return Ok(time);
    }
    // humantime takes a time of day; a plain date is its midnight.
    let is_date = value.len() == 10
        && value.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if is_date {
        return humantime::parse_rfc3339(&format!("{value}T00:00:00Z"))
            .map_err(|err| format!("{err}; {EXPECTED}"));
    }
    let age = humantime::parse_duration(value).map_err(|_| EXPECTED.to_owned())?;
    now.checked_sub(age)
        .filter(|time| *time >= SystemTime::UNIX_EPOCH)
        .ok_or_else(|| format!("{value} ago is before 1970; give a shorter age or a date"))
}

/// An RFC 3339 time with a numeric offset, `2026-01-31T01:00:00+01:00`,
/// which humantime reads only as `Z`: the local time less the offset.
fn with_offset(value: &str) -> Option<SystemTime> {
    let split = value.len().checked_sub(6)?;
    let (local, offset) = (value.get(..split)?, value.get(split..)?);
    let bytes = offset.as_bytes();
    let sign = match bytes[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    if bytes[3] != b':' || !local.contains('T') {
        return None;
    }
    let hours: u64 = offset.get(1..3)?.parse().ok()?;
    let minutes: u64 = offset.get(4..6)?.parse().ok()?;
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    if sign > 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
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
    fn git_dates_are_times_dates_or_ages() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = 86_400;
        let cases = [
            ("2026-01-31T00:00:00Z", 1_769_817_600),
            ("2026-01-31T01:00:00+01:00", 1_769_817_600),
            ("2026-01-30T20:30:00-03:30", 1_769_817_600),
            ("2026-01-31T00:00:30", 1_769_817_630),
            ("2026-01-31", 1_769_817_600),
            ("30d", 1_800_000_000 - 30 * day),
            ("2w", 1_800_000_000 - 14 * day),
            ("12h", 1_800_000_000 - 12 * 3_600),
        ];
        for (value, want) in cases {
            let got = git_date_at(value, now).map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_secs()
            });
            assert_eq!(got, Ok(want), "{value}");
        }
    }

    #[test]
    fn bad_git_dates_say_what_was_expected() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let cases = [
            ("yesterday", "expected an RFC 3339 time"),
            ("2026-13-01", "expected an RFC 3339 time"),
            ("2026-1-31", "or an age such as 30d"),
            ("", "a date such as 2026-01-31"),
            ("100000w", "before 1970"),
        ];
        for (value, want) in cases {
            let err = git_date_at(value, now).expect_err(value);
            assert!(err.contains(want), "{value}: {err}");
        }
    }

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
    fn urls_must_be_http_or_https_with_a_host() {
        for good in [
            "http://example.org/a",
            "https://127.0.0.1:8080/x?y=1",
            "HTTPS://Example.org",
        ] {
            assert_eq!(http_url(good).as_deref(), Ok(good), "{good}");
        }
        let cases = [
            ("ftp://example.org/a", "scheme \"ftp\" is not supported"),
            ("file:///etc/passwd", "scheme \"file\" is not supported"),
            ("example.org/a", "relative URL without a base"),
            ("http://", "empty host"),
            ("", "expected an http or https URL"),
        ];
        for (input, want) in cases {
            let err = http_url(input).expect_err(input);
            assert!(err.contains(want), "input {input:?}: {err}");
        }
    }

    #[test]
    fn headers_split_at_the_first_colon_and_trim_the_value() {
        let cases = [
            ("Accept: text/plain", ("Accept", "text/plain")),
            ("X-Empty:", ("X-Empty", "")),
            ("Authorization:Bearer a:b", ("Authorization", "Bearer a:b")),
            ("X-Pad: \t spaced out \t", ("X-Pad", "spaced out")),
        ];
        for (input, (name, value)) in cases {
            assert_eq!(
                header(input),
                Ok((name.to_owned(), value.to_owned())),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn headers_refuse_a_missing_colon_a_bad_name_or_a_control_character() {
        let cases = [
            ("Accept text/plain", "there is no ':'"),
            (": x", "name before ':' is empty"),
            ("Bad Name: x", "has ' '"),
            ("Bad\u{e9}: x", "which a header name cannot have"),
            ("X-A: b\r\nX-Injected: 1", "control character '\\r'"),
            ("X-A: \0", "control character"),
        ];
        for (input, want) in cases {
            let err = header(input).expect_err(input);
            assert!(err.contains(want), "input {input:?}: {err}");
        }
    }

    #[test]
    fn sizes_take_si_and_iec_units() {
        let cases = [
            ("1", 1),
            ("1024", 1024),
            ("10B", 10),
            ("10k", 10_000),
            ("10M", 10_000_000),
            ("10 MB", 10_000_000),
            ("2gb", 2_000_000_000),
            ("3T", 3_000_000_000_000),
            ("512KiB", 512 * 1024),
            ("10MiB", 10 * 1024 * 1024),
            ("1GiB", 1 << 30),
            ("1gib", 1 << 30),
            ("2TiB", 2 << 40),
            ("18446744073709551615", u64::MAX),
        ];
        for (input, want) in cases {
            assert_eq!(size(input), Ok(want), "input {input:?}");
        }
    }

    #[test]
    fn sizes_refuse_zero_junk_and_overflow() {
        let cases = [
            ("0", "limit of 0 bytes would refuse every body"),
            ("0M", "limit of 0 bytes"),
            ("", "expected a byte count"),
            ("M", "expected a byte count"),
            ("-1", "expected a byte count"),
            ("1.5G", "unknown unit \".5g\""),
            ("10 apples", "unknown unit \"apples\""),
            ("18446744073709551616", "give a smaller size"),
            ("20000000TiB", "give a smaller size"),
        ];
        for (input, want) in cases {
            let err = size(input).expect_err(input);
            assert!(err.contains(want), "input {input:?}: {err}");
        }
    }

    #[test]
    fn overwrite_names() {
        assert_eq!(overwrite("replace"), Ok(FetchOverwrite::Replace));
        assert_eq!(overwrite("SKIP"), Ok(FetchOverwrite::Skip));
        assert_eq!(overwrite("error"), Ok(FetchOverwrite::Error));
        assert_eq!(
            overwrite("keep"),
            Err("expected one of replace, skip, error".to_owned())
        );
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
