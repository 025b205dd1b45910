//! Property tests of request conversion: generated and damaged requests
//! never panic, every refusal is InvalidArgument naming a field, and every
//! spec accepted meets the domain's own rules and converts back unchanged.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::props::{byte_edits, config, damage, text};

/// Integers at and around every limit the conversion checks.
fn edgy_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        prop::sample::select(vec![0, 1, -1, i64::MAX, i64::MIN, 315_537_897_599]),
        0..4_000_000_000i64,
    ]
}

fn edgy_i32() -> impl Strategy<Value = i32> {
    prop_oneof![
        any::<i32>(),
        prop::sample::select(vec![0, 1, -1, 999, 1000, 999_999_999, 1_000_000_000]),
        prop::sample::select(vec![i32::MAX, i32::MIN, 20, -20]),
    ]
}

fn edgy_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        prop::sample::select(vec![0, 1, 100, 101, 1000, 1001, u32::MAX]),
    ]
}

fn timestamp() -> impl Strategy<Value = prost_types::Timestamp> {
    (edgy_i64(), edgy_i32()).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos })
}

fn duration() -> impl Strategy<Value = prost_types::Duration> {
    (edgy_i64(), edgy_i32()).prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos })
}

/// A string whose length sits on one of the limits, or one past it.
fn sized() -> impl Strategy<Value = String> {
    prop::sample::select(vec![127, 128, 129, 256, 257, 1024, 1025, 131_072, 131_073])
        .prop_map(|n| "x".repeat(n))
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![8 => text(), 1 => sized()]
}

fn map(max: usize) -> impl Strategy<Value = HashMap<String, String>> {
    prop::collection::hash_map(field(), field(), 0..max)
}

/// A plausible word: what real specs hold.
fn word() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.-]{1,10}"
}

prop_compose! {
    /// A spec the API accepts.
    fn valid_spec()(
        argv in prop::collection::vec(word(), 1..4),
        cwd in prop_oneof![Just(String::new()), word().prop_map(|w| format!("/{w}"))],
        env in prop::collection::hash_map("[A-Z_]{1,6}", word(), 0..3),
        priority in -30..30i32,
        priority_name in prop::sample::select(vec!["", "high", "Low", "critical"]),
        labels in prop::collection::hash_map(word(), word(), 0..3),
        run_at in prop::option::of((0..2_000_000_000i64, 0..1_000_000_000i32)),
        timeout in prop::option::of((0..100_000i64, 1..1_000_000_000i32)),
        max_attempts in 0..=100u32,
        idempotency_key in prop_oneof![Just(String::new()), word()],
    ) -> pb::JobSpec {
        pb::JobSpec {
            kind: Some(pb::job_spec::Kind::Exec(pb::ExecSpec { argv, cwd, env })),
            priority,
            labels,
            run_at: run_at.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
            timeout: timeout.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
            max_attempts,
            idempotency_key,
            priority_name: priority_name.to_owned(),
        }
    }
}

/// One field of a spec set to a hostile or boundary value.
#[derive(Clone, Debug)]
enum Edit {
    NoKind,
    NoArgv,
    Argv(usize, String),
    ManyArgs(usize),
    Cwd(String),
    Env(String, String),
    ManyEnv(usize),
    Label(String, String),
    ManyLabels(usize),
    Priority(i32),
    PriorityName(String),
    RunAt(prost_types::Timestamp),
    Timeout(prost_types::Duration),
    MaxAttempts(u32),
    Key(String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        Just(Edit::NoKind),
        Just(Edit::NoArgv),
        (0..4usize, field()).prop_map(|(i, a)| Edit::Argv(i, a)),
        (4090..4100usize).prop_map(Edit::ManyArgs),
        field().prop_map(Edit::Cwd),
        (field(), field()).prop_map(|(k, v)| Edit::Env(k, v)),
        (1020..1030usize).prop_map(Edit::ManyEnv),
        (field(), field()).prop_map(|(k, v)| Edit::Label(k, v)),
        (60..70usize).prop_map(Edit::ManyLabels),
        edgy_i32().prop_map(Edit::Priority),
        field().prop_map(Edit::PriorityName),
        timestamp().prop_map(Edit::RunAt),
        duration().prop_map(Edit::Timeout),
        edgy_u32().prop_map(Edit::MaxAttempts),
        field().prop_map(Edit::Key),
    ]
}

fn apply(mut p: pb::JobSpec, edits: Vec<Edit>) -> pb::JobSpec {
    let numbered = |n: usize| (0..n).map(|i| (format!("k{i}"), "v".to_owned()));
    for e in edits {
        let exec = match p.kind.as_mut() {
            Some(pb::job_spec::Kind::Exec(x)) => Some(x),
            _ => None,
        };
        match (e, exec) {
            (Edit::NoKind, _) => p.kind = None,
            (Edit::NoArgv, Some(x)) => x.argv.clear(),
            (Edit::Argv(i, a), Some(x)) => {
                let i = i.min(x.argv.len());
                x.argv.insert(i, a);
            }
            (Edit::ManyArgs(n), Some(x)) => x.argv.resize(n, "a".into()),
            (Edit::Cwd(c), Some(x)) => x.cwd = c,
            (Edit::Env(k, v), Some(x)) => {
                x.env.insert(k, v);
            }
            (Edit::ManyEnv(n), Some(x)) => x.env.extend(numbered(n)),
            (Edit::Label(k, v), _) => {
                p.labels.insert(k, v);
            }
            (Edit::ManyLabels(n), _) => p.labels.extend(numbered(n)),
            (Edit::Priority(n), _) => p.priority = n,
            (Edit::PriorityName(n), _) => p.priority_name = n,
            (Edit::RunAt(t), _) => p.run_at = Some(t),
            (Edit::Timeout(t), _) => p.timeout = Some(t),
            (Edit::MaxAttempts(n), _) => p.max_attempts = n,
            (Edit::Key(k), _) => p.idempotency_key = k,
            (_, None) => {}
        }
    }
    p
}

/// A valid spec, as is or with one to three fields set to hostile or
/// boundary values.
fn spec() -> impl Strategy<Value = pb::JobSpec> {
    prop_oneof![
        1 => valid_spec(),
        3 => (valid_spec(), prop::collection::vec(edit(), 1..4)).prop_map(|(p, e)| apply(p, e)),
    ]
}

/// A fixed "now" near today, so the run_at horizon is exercised.
const NOW: Micros = 1_790_000_000_000_000;

/// The property: `result` is a spec that meets the domain's rules and
/// converts back unchanged, or InvalidArgument naming a field under
/// `prefix` (`spec` or `specs[i]`) with a reason, which the API sends as
/// an InvalidArgument status starting with that field.
fn check_spec(
    result: Result<JobSpec, Error>,
    path: SpecPath,
    prefix: &str,
) -> Result<(), TestCaseError> {
    match result {
        Ok(spec) => {
            prop_assert_eq!(spec.check(), Ok(()), "accepted {:?}", spec);
            let back = spec_from_proto(spec_to_proto(&spec), path, NOW);
            prop_assert_eq!(back.ok(), Some(spec.clone()));
        }
        Err(e) => check_refusal(e, prefix)?,
    }
    Ok(())
}

/// A refusal is InvalidArgument naming a field under `prefix`, with a
/// reason, and becomes a status that says both.
fn check_refusal(e: Error, prefix: &str) -> Result<(), TestCaseError> {
    let Error::InvalidArgument { field, reason } = &e else {
        return Err(TestCaseError::fail(format!("untyped refusal: {e:?}")));
    };
    prop_assert!(field.starts_with(prefix), "field {field:?} for {prefix}");
    prop_assert!(!reason.is_empty(), "no reason for {field}");
    let (field, message) = (field.clone(), e.to_string());
    let status = tonic::Status::from(e);
    prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
    prop_assert_eq!(status.message(), message.as_str());
    prop_assert!(status.message().starts_with(&field));
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_specs_convert_or_name_the_field(p in spec(), i in prop::option::of(0..5usize)) {
        let prefix = SpecPath(i).field("");
        check_spec(spec_from_proto(p, SpecPath(i), NOW), SpecPath(i), &prefix)?;
    }

    /// A valid request sent as damaged bytes: what still decodes as a
    /// request must convert or be refused naming a field.
    #[test]
    fn damaged_submits_convert_or_name_the_field(
        specs in prop::collection::vec(spec(), 1..3),
        edits in byte_edits(),
    ) {
        let batch = pb::SubmitBatchRequest { specs };
        let bytes = damage(batch.encode_to_vec(), &edits);
        if let Ok(r) = pb::SubmitRequest::decode(bytes.as_slice()) {
            check_spec(submit_from_proto(r, NOW), SpecPath(None), "spec")?;
        }
        if let Ok(r) = pb::SubmitBatchRequest::decode(bytes.as_slice()) {
            match submit_batch_from_proto(r, NOW) {
                Ok(specs) => {
                    for (i, s) in specs.into_iter().enumerate() {
                        check_spec(Ok(s), SpecPath(Some(i)), "")?;
                    }
                }
                Err(e) => check_refusal(e, "specs")?,
            }
        }
    }

    #[test]
    fn list_requests_convert_or_name_the_field(
        states in prop::collection::vec(edgy_i32(), 0..4),
        kind in prop_oneof![Just("exec".to_owned()), text()],
        labels in map(3),
        page_size in edgy_u32(),
        page_token in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), text()],
        oldest_first in any::<bool>(),
        edits in prop::option::of(byte_edits()),
    ) {
        let mut r = pb::ListRequest { states, kind, labels, page_size, page_token, oldest_first };
        if let Some(edits) = edits {
            match pb::ListRequest::decode(damage(r.encode_to_vec(), &edits).as_slice()) {
                Ok(damaged) => r = damaged,
                Err(_) => return Ok(()),
            }
        }
        match list_from_proto(r.clone()) {
            Ok(q) => {
                prop_assert!((1..=1000).contains(&q.limit));
                prop_assert_eq!(q.labels.len(), r.labels.len());
                prop_assert!(q.states.len() <= r.states.len());
            }
            Err(e) => check_refusal(e, "")?,
        }
    }

    #[test]
    fn cancel_and_logs_requests_convert_or_name_the_field(
        id in prop_oneof![Just(0u64), any::<u64>()],
        grace in prop::option::of(duration()),
        stream in edgy_i32(),
        offset in prop::option::of(prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()]),
        limit in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
        follow in any::<bool>(),
    ) {
        let default = Duration::from_secs(10);
        match cancel_from_proto(pb::CancelRequest { id, grace }, default) {
            Ok((got, g)) => {
                prop_assert_eq!(got, id);
                prop_assert!(grace.is_some() || g == default);
            }
            Err(e) => check_refusal(e, "")?,
        }
        let r = pb::LogsRequest { job_id: id, stream, follow, offset, limit };
        if let Err(e) = logs_from_proto(r) {
            check_refusal(e, "")?;
        }
    }
}

/// A time the API hands out converts back to itself: what `Get` shows as
/// `run_at` can be sent again.
#[test]
fn times_round_trip() {
    proptest!(config(), |(m in any::<u64>())| {
        prop_assert_eq!(ts_to_micros("t", &micros_to_ts(m)).ok(), Some(m));
    });
}
