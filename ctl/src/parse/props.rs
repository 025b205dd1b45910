//! Property tests of the flag parsers: any text, valid, damaged or noise,
//! parses or is refused with a message saying what was expected, never a
//! panic; and what quernctl prints parses back to the same value.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use proptest::test_runner::Config;

use super::*;
use crate::output;

/// A few thousand cases, unless `PROPTEST_CASES` says otherwise (the long
/// run in `docs/benchmarks.md`). An explicit `cases` would override
/// proptest's own reading of the variable, so it is read here.
fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    Config {
        cases,
        ..Config::default()
    }
}

/// Text parsers trip on: signs, separators, numbers past every integer
/// type, NaN, wide and invisible unicode, NUL.
const HOSTILE: &[&str] = &[
    "",
    "\0",
    "=",
    "-",
    "+",
    " ",
    ".",
    ":",
    "T",
    "Z",
    "z",
    "e",
    "0",
    "-1",
    "s",
    "ms",
    "ns",
    "years",
    "month",
    "2147483648",
    "-2147483649",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999",
    "NaN",
    "inf",
    "1e309",
    "é",
    "𝄞",
    "\u{202e}",
    "\u{feff}",
    "9999-12-31T23:59:60Z",
    "+99999-01-01",
];

/// A piece to insert: hostile text or any string.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(HOSTILE).prop_map(str::to_owned),
        1 => any::<String>(),
        1 => ("[0-9]", 1..60usize).prop_map(|(d, n)| d.repeat(n)),
    ]
}

/// `valid` damaged: pieces inserted at char positions, then cut.
fn damaged(valid: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    let edits = prop::collection::vec((any::<usize>(), piece()), 1..4);
    (valid, edits, prop::option::of(any::<usize>())).prop_map(|(v, edits, cut)| {
        let mut chars: Vec<char> = v.chars().collect();
        for (at, p) in edits {
            let at = at % (chars.len() + 1);
            chars.splice(at..at, p.chars());
        }
        if let Some(cut) = cut {
            chars.truncate(cut % (chars.len() + 1));
        }
        chars.into_iter().collect()
    })
}

/// Valid flag values, damaged values and noise.
fn input(valid: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    prop_oneof![valid.clone(), damaged(valid), any::<String>(), piece()]
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        any::<u64>().prop_map(Duration::from_secs),
        (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
        (0..100_000u64, 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

/// Times RFC 3339 can write: years 1970 to 9999.
fn any_time() -> impl Strategy<Value = SystemTime> {
    (0..253_402_300_800u64, 0..1_000_000_000u32)
        .prop_map(|(s, n)| SystemTime::UNIX_EPOCH + Duration::new(s, n))
}

fn durations() -> BoxedStrategy<String> {
    prop_oneof![
        any_duration().prop_map(|d| humantime::format_duration(d).to_string()),
        prop::sample::select(&["10s", "1h30m", "500ms", "2days 3h"][..]).prop_map(str::to_owned),
    ]
    .boxed()
}

fn times() -> BoxedStrategy<String> {
    any_time()
        .prop_map(|t| humantime::format_rfc3339_nanos(t).to_string())
        .boxed()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn durations_parse_or_say_what_was_expected(s in input(durations())) {
        if let Err(e) = duration(&s) {
            prop_assert!(e.contains("expected a duration such as"), "{e}");
        }
    }

    /// A duration `quernctl get` shows is one `--timeout` takes back.
    #[test]
    fn durations_quernctl_shows_parse_back(d in any_duration()) {
        let Ok(seconds) = i64::try_from(d.as_secs()) else { return Ok(()) };
        let shown = output::human_duration(prost_types::Duration {
            seconds,
            nanos: d.subsec_nanos() as i32,
        });
        prop_assert_eq!(duration(&shown), Ok(d), "{}", shown);
    }

    #[test]
    fn times_parse_or_say_what_was_expected(s in input(times())) {
        if let Err(e) = time(&s) {
            prop_assert!(e.contains("RFC 3339"), "{e}");
        }
    }

    /// A time `quernctl` prints in JSON is one `--at` takes back.
    #[test]
    fn times_quernctl_shows_parse_back(t in any_time()) {
        prop_assert_eq!(time(&humantime::format_rfc3339(t).to_string()), Ok(t));
    }

    #[test]
    fn key_values_split_at_the_first_equals(s in input("[a-z]{0,5}=[a-z=]{0,5}".boxed())) {
        match key_value(&s) {
            Ok((k, v)) => {
                prop_assert!(!k.is_empty() && !k.contains('='));
                prop_assert_eq!(format!("{k}={v}"), s);
            }
            Err(e) => prop_assert!(e.contains("KEY=VALUE"), "{e}"),
        }
    }

    #[test]
    fn priorities_and_states_parse_or_list_the_names(
        p in input(prop_oneof![
            any::<i32>().prop_map(|n| n.to_string()),
            prop::sample::select(PRIORITY_NAMES.map(|(n, _)| n).to_vec()).prop_map(str::to_owned),
        ].boxed()),
        s in input(prop::sample::select(STATE_NAMES.map(|(n, _)| n).to_vec()).prop_map(str::to_owned).boxed()),
    ) {
        match priority(&p) {
            Ok(Priority::Number(n)) => prop_assert_eq!(p.parse::<i32>().ok(), Some(n)),
            Ok(Priority::Name(n)) => prop_assert!(n.eq_ignore_ascii_case(&p)),
            Err(e) => prop_assert!(e.contains("priority numbers") || e.contains("critical"), "{e}"),
        }
        match state(&s) {
            Ok(st) => prop_assert!(STATE_NAMES.iter().any(|(n, t)| *t == st && n.eq_ignore_ascii_case(&s))),
            Err(e) => prop_assert!(e.contains("queued"), "{e}"),
        }
    }
}
