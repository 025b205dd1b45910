//! Generated domain values, for the property tests here and in the store,
//! and the property of `JobSpec::check`: it never panics, and what it
//! passes is what the store and the runner rely on.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::props::{config, text};

fn strings(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..max)
}

fn map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(text(), text(), 0..3)
}

/// Any timeout at all, sub-microsecond and centuries included.
pub(crate) fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
        (0..3u64, 0..3_000u32).prop_map(|(s, n)| Duration::new(s, n)),
        Just(Duration::MAX),
        Just(Duration::ZERO),
    ]
}

prop_compose! {
    /// A spec with any values, valid or not: the store must keep whatever
    /// it was given, and `check` must judge it.
    pub(crate) fn spec(timeout: BoxedStrategy<Duration>)(
        argv in strings(4),
        cwd in prop::option::of(text()),
        env in map(),
        priority in any::<i32>(),
        labels in map(),
        run_at in prop::option::of(any::<u64>()),
        timeout in prop::option::of(timeout),
        max_attempts in prop_oneof![any::<u32>(), 0..=101u32],
        idempotency_key in prop::option::of(text()),
    ) -> JobSpec {
        JobSpec {
            kind: JobKind::Exec(ExecSpec { argv, cwd, env }),
            priority,
            labels,
            run_at,
            timeout,
            max_attempts,
            idempotency_key,
        }
    }
}

fn state() -> impl Strategy<Value = JobState> {
    let run = prop_oneof![
        (any::<u32>(), any::<u64>(), text()).prop_map(|(pid, pid_start, boot_id)| {
            RunRecord::Exec(ExecRun {
                pid,
                pid_start,
                boot_id,
            })
        }),
        Just(RunRecord::InProcess),
    ];
    prop_oneof![
        Just(JobState::Queued),
        any::<u64>().prop_map(|run_at| JobState::Scheduled { run_at }),
        run.prop_map(|run| JobState::Running { run }),
        any::<u64>().prop_map(|finished_at| JobState::Succeeded { finished_at }),
        any::<u64>().prop_map(|finished_at| JobState::Failed { finished_at }),
        any::<u64>().prop_map(|finished_at| JobState::Cancelled { finished_at }),
    ]
}

prop_compose! {
    /// A job with any values, its spec's timeout drawn from `timeout`.
    pub(crate) fn job(timeout: BoxedStrategy<Duration>)(
        id in any::<u64>(),
        spec in spec(timeout),
        state in state(),
        queued_at in any::<u64>(),
        attempts in any::<u32>(),
        started_at in prop::option::of(any::<u64>()),
        exit_code in prop::option::of(any::<i32>()),
        error in text(),
        owner_uid in any::<u32>(),
    ) -> Job {
        Job { id, spec, state, queued_at, attempts, started_at, exit_code, error, owner_uid, result: None, wait_reason: String::new() }
    }
}

proptest! {
    #![proptest_config(config())]

    /// `check` refuses naming a field of the spec with a reason, and what
    /// it passes has a program to run, an absolute cwd if any, 1 to 100
    /// attempts and no zero timeout.
    #[test]
    fn check_passes_only_what_the_runner_relies_on(s in spec(any_duration().boxed())) {
        match s.check() {
            Ok(()) => {
                let JobKind::Exec(e) = &s.kind else {
                    return Err(TestCaseError::fail("the generator makes exec specs only"));
                };
                prop_assert!(e.argv.first().is_some_and(|a| !a.is_empty()));
                prop_assert!(e.cwd.as_ref().is_none_or(|c| c.starts_with('/')));
                prop_assert!((1..=MAX_ATTEMPTS).contains(&s.max_attempts));
                prop_assert!(s.timeout.is_none_or(|t| !t.is_zero()));
            }
            Err((field, reason)) => {
                prop_assert!(field.starts_with('.') && field.len() > 1, "{field}");
                prop_assert!(!reason.is_empty(), "{field}");
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// The backoff takes any settings a config file can give (humantime
    /// reads up to u64::MAX seconds) and any attempt count: it never
    /// panics and never waits longer than `max`.
    #[test]
    fn retry_delays_stay_within_max(
        attempt in any::<u32>(),
        base in any_duration(),
        max in any_duration(),
        jitter in prop_oneof![0.75..=1.0f64, -1.0..2.0f64],
    ) {
        let d = retry_delay(attempt, base, max, jitter);
        prop_assert!(d <= max, "{d:?} > {max:?}");
        prop_assert!(d >= base.min(max).mul_f64(0.74), "{d:?} for {base:?}");
    }
}
