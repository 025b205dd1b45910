//! Property tests of the record encoding: every job and event survives a
//! round trip, and damaged or random bytes decode or fail with a typed
//! error, never a panic.

use proptest::prelude::*;

use super::*;
use crate::job::props::{any_duration, job};
use crate::props::{byte_edits, config, damage};

/// Timeouts the encoding keeps exactly: whole microseconds.
fn exact() -> BoxedStrategy<Duration> {
    any::<u64>().prop_map(Duration::from_micros).boxed()
}

fn event() -> impl Strategy<Value = Event> {
    (
        any::<u64>(),
        any::<u64>(),
        prop::sample::select(StateTag::ALL.to_vec()),
        any::<u64>(),
        any::<u32>(),
        prop::option::of(any::<i32>()),
        ".{0,20}",
    )
        .prop_map(
            |(seq, job_id, state, at, attempt, exit_code, error)| Event {
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

/// A decode failure is the store's typed error, saying it was a decode
/// and what was wrong.
fn check_refusal(e: StoreError) -> Result<(), TestCaseError> {
    match e {
        StoreError::Db { op, detail } => {
            prop_assert!(op.starts_with("decode"), "{op}");
            prop_assert!(!detail.is_empty(), "{op}");
        }
        other => return Err(TestCaseError::fail(format!("untyped refusal: {other:?}"))),
    }
    Ok(())
}

/// Bytes to decode: a valid record damaged, or noise.
fn damaged(valid: Vec<u8>, edits: Option<Vec<crate::props::ByteEdit>>, noise: Vec<u8>) -> Vec<u8> {
    match edits {
        Some(edits) => damage(valid, &edits),
        None => noise,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn jobs_round_trip(j in job(exact())) {
        let mut buf = Vec::new();
        encode_job(&mut buf, &j).unwrap();
        prop_assert_eq!(decode_job(&buf).unwrap(), j);
    }

    /// A timeout is stored in whole microseconds: it may grow by less
    /// than one, up to the largest that fits, but never becomes zero (no
    /// timeout at all is `None`, and `check` refuses a zero one), and
    /// what `check` passed before storing it still passes.
    #[test]
    fn timeouts_keep_their_meaning(j in job(any_duration().boxed())) {
        let mut buf = Vec::new();
        encode_job(&mut buf, &j).unwrap();
        let back = decode_job(&buf).unwrap();
        prop_assert_eq!(back.spec.check().is_ok(), j.spec.check().is_ok());
        match (j.spec.timeout, back.spec.timeout) {
            (None, None) => {}
            (Some(t), Some(b)) => {
                let most = Duration::from_micros(u64::MAX);
                prop_assert_eq!(b.is_zero(), t.is_zero());
                prop_assert!(b >= t.min(most), "{t:?} stored as {b:?}");
                prop_assert!(b.saturating_sub(t) < Duration::from_micros(1), "{t:?} stored as {b:?}");
            }
            (t, b) => prop_assert!(false, "{t:?} stored as {b:?}"),
        }
    }

    #[test]
    fn damaged_jobs_decode_or_fail_typed(
        j in job(exact()),
        edits in prop::option::weighted(0.9, byte_edits()),
        noise in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut buf = Vec::new();
        encode_job(&mut buf, &j).unwrap();
        match decode_job(&damaged(buf, edits, noise)) {
            // Whatever decoded is a job the store can write again as is.
            Ok(d) => {
                let mut again = Vec::new();
                encode_job(&mut again, &d).unwrap();
                prop_assert_eq!(decode_job(&again).unwrap(), d);
            }
            Err(e) => check_refusal(e)?,
        }
    }

    #[test]
    fn events_round_trip_and_damaged_ones_fail_typed(
        ev in event(),
        edits in prop::option::weighted(0.9, byte_edits()),
        noise in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut buf = Vec::new();
        encode_event(&mut buf, &ev).unwrap();
        prop_assert_eq!(&decode_event(&buf).unwrap(), &ev);
        if let Err(e) = decode_event(&damaged(buf, edits, noise)) {
            check_refusal(e)?;
        }
    }
}
