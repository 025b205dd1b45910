//! Property tests of opening a store whose `meta` table holds any values:
//! it opens with counters the writer can use, or fails with a typed
//! error, never a panic.

use proptest::prelude::*;
use redb::backends::InMemoryBackend;

use super::*;
use crate::props::config;

/// Every key `meta` holds.
const KEYS: [&str; 11] = [
    "schema_version",
    "next_id",
    "next_seq",
    "first_seq",
    "count.queued",
    "count.scheduled",
    "count.running",
    "count.succeeded",
    "count.failed",
    "count.cancelled",
    "next_watch_id",
];

fn value() -> impl Strategy<Value = Option<u64>> {
    prop::option::weighted(
        0.8,
        prop_oneof![
            prop::sample::select(vec![0, 1, 2, 3, u64::MAX - 1, u64::MAX]),
            any::<u64>(),
        ],
    )
}

/// An in-memory database whose `meta` holds `values`, one per key of
/// [`KEYS`], unset where `None`.
fn db_with(values: &[Option<u64>]) -> Database {
    let db = Database::builder()
        .create_with_backend(InMemoryBackend::new())
        .unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        for (k, v) in KEYS.iter().zip(values) {
            if let Some(v) = v {
                meta.insert(*k, *v).unwrap();
            }
        }
    }
    txn.commit().unwrap();
    db
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_meta_opens_usable_or_fails_typed(
        values in prop::collection::vec(value(), KEYS.len()),
        current in any::<bool>(),
    ) {
        let mut values = values;
        if current {
            // Most cases past the version check, to reach the counters.
            values[0] = Some(SCHEMA_VERSION);
        }
        let db = db_with(&values);
        match open(&db, Path::new("/q.redb"), 1000) {
            Ok(c) => {
                prop_assert!(c.next_id >= 1);
                prop_assert!(c.next_watch_id >= 1);
                prop_assert!(1 <= c.first_seq && c.first_seq <= c.next_seq);
                prop_assert_eq!(c.last_seq(), c.next_seq - 1);
            }
            Err(e) => prop_assert!(matches!(
                e,
                StoreError::Corrupt { .. } | StoreError::NewerSchema { .. } | StoreError::Db { .. }
            ), "{e:?}"),
        }
    }
}

/// Found by the property above: counters no quernd writes opened, and
/// then underflowed in `last_seq` (asked by every `Stats`) or when
/// pruning events.
#[test]
fn inconsistent_counters_are_refused() {
    let v = Some(SCHEMA_VERSION);
    for (next_id, next_seq, first_seq) in [(0, 1, 1), (1, 0, 0), (1, 5, 6), (1, 5, 0)] {
        let db = db_with(&[v, Some(next_id), Some(next_seq), Some(first_seq)]);
        let err = open(&db, Path::new("/q.redb"), 1000).unwrap_err();
        assert!(err.to_string().contains("inconsistent"), "{err}");
    }
}
