//! Property tests of reading schema-1 records: every job and event of
//! schema 1 converts to the same job or event, and damaged bytes convert
//! or fail with a typed error, never a panic.

use proptest::prelude::*;

use super::*;
use crate::job::props::job as any_job;
use crate::props::{ByteEdit, byte_edits, config, damage};
use crate::store::record::decode_job;

/// `j` as schema 1 wrote it. Schema 1 had exec runs only, so an
/// in-process run is written as an exec run of pid 0.
fn v1(j: &Job) -> JobV1 {
    let JobKind::Exec(e) = &j.spec.kind else {
        unreachable!("schema 1 had exec jobs only, and the generator makes only those")
    };
    let state = match &j.state {
        JobState::Queued => StateV1::Queued,
        JobState::Scheduled { run_at } => StateV1::Scheduled { run_at: *run_at },
        JobState::Running { run } => match run {
            RunRecord::Exec(r) => StateV1::Running {
                pid: r.pid,
                pid_start: r.pid_start,
                boot_id: r.boot_id.clone(),
            },
            RunRecord::InProcess => StateV1::Running {
                pid: 0,
                pid_start: 0,
                boot_id: String::new(),
            },
        },
        JobState::Succeeded { finished_at } => StateV1::Succeeded {
            finished_at: *finished_at,
        },
        JobState::Failed { finished_at } => StateV1::Failed {
            finished_at: *finished_at,
        },
        JobState::Cancelled { finished_at } => StateV1::Cancelled {
            finished_at: *finished_at,
        },
    };
    JobV1 {
        id: j.id,
        spec: SpecV1 {
            kind: KindV1::Exec(ExecV1 {
                argv: e.argv.clone(),
                cwd: e.cwd.clone(),
                env: e.env.clone(),
            }),
            priority: j.spec.priority,
            labels: j.spec.labels.clone(),
            run_at: j.spec.run_at,
            timeout: j.spec.timeout,
            max_attempts: j.spec.max_attempts,
            idempotency_key: j.spec.idempotency_key.clone(),
        },
        state,
        queued_at: j.queued_at,
        attempts: j.attempts,
        started_at: j.started_at,
        exit_code: j.exit_code,
        error: j.error.clone(),
    }
}

fn exact() -> BoxedStrategy<Duration> {
    any::<u64>().prop_map(Duration::from_micros).boxed()
}

fn event_v1() -> impl Strategy<Value = EventV1> {
    let tag = prop_oneof![
        Just(TagV1::Queued),
        Just(TagV1::Scheduled),
        Just(TagV1::Running),
        Just(TagV1::Succeeded),
        Just(TagV1::Failed),
        Just(TagV1::Cancelled),
    ];
    (
        any::<u64>(),
        any::<u64>(),
        tag,
        any::<u64>(),
        any::<u32>(),
        prop::option::of(any::<i32>()),
        ".{0,20}",
    )
        .prop_map(
            |(seq, job_id, state, at, attempt, exit_code, error)| EventV1 {
                seq,
                job_id,
                state,
                at,
                attempt,
                exit_code,
                error,
            },
        )
}

/// A failure to read schema 1 is the store's typed error, naming the
/// record.
fn check_refusal(e: StoreError, what: &str) -> Result<(), TestCaseError> {
    match e {
        StoreError::Db { op, detail } => {
            prop_assert_eq!(op, "migrate from schema 1");
            prop_assert!(detail.starts_with(what), "{detail}");
        }
        other => return Err(TestCaseError::fail(format!("untyped refusal: {other:?}"))),
    }
    Ok(())
}

fn damaged(valid: Vec<u8>, edits: Option<Vec<ByteEdit>>, noise: Vec<u8>) -> Vec<u8> {
    match edits {
        Some(edits) => damage(valid, &edits),
        None => noise,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn schema_1_jobs_convert_unchanged(j in any_job(exact()), owner in any::<u32>()) {
        let bytes = postcard::to_allocvec(&v1(&j)).unwrap();
        let new = job(decode("job", j.id, &bytes).unwrap(), owner);
        let mut want = j.clone();
        want.owner_uid = owner;
        if matches!(j.state, JobState::Running { run: RunRecord::InProcess }) {
            want.state = new.state.clone();
        }
        prop_assert_eq!(&new, &want);
    }

    #[test]
    fn damaged_schema_1_jobs_convert_or_fail_typed(
        j in any_job(crate::job::props::any_duration().boxed()),
        edits in prop::option::weighted(0.9, byte_edits()),
        noise in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = damaged(postcard::to_allocvec(&v1(&j)).unwrap(), edits, noise);
        match decode::<JobV1>("job", 7, &bytes) {
            // What decodes is stored in schema 2 and read back the same,
            // as the migration does.
            Ok(old) => {
                let new = job(old, 1);
                let mut buf = Vec::new();
                encode_job(&mut buf, &new).unwrap();
                prop_assert_eq!(decode_job(&buf).unwrap().id, new.id);
            }
            Err(e) => check_refusal(e, "job 7 ")?,
        }
    }

    #[test]
    fn schema_1_events_convert_or_fail_typed(
        ev in event_v1(),
        edits in prop::option::weighted(0.9, byte_edits()),
        noise in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = postcard::to_allocvec(&ev).unwrap();
        let new = event(decode("event", ev.seq, &bytes).unwrap());
        prop_assert_eq!((new.seq, new.job_id, new.at, new.attempt), (ev.seq, ev.job_id, ev.at, ev.attempt));
        prop_assert_eq!((new.exit_code, &new.error), (ev.exit_code, &ev.error));
        match decode::<EventV1>("event", 9, &damaged(bytes, edits, noise)) {
            Ok(old) => {
                let mut buf = Vec::new();
                encode_event(&mut buf, &event(old)).unwrap();
            }
            Err(e) => check_refusal(e, "event 9 ")?,
        }
    }
}
