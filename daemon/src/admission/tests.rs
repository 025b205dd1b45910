//! Admission's pools.

use super::*;

#[test]
fn room_is_what_the_global_limit_leaves() {
    let a = Admission::new(4);
    assert_eq!(a.room(0), 4);
    assert_eq!(a.room(3), 1);
    assert_eq!(a.room(4), 0);
    assert_eq!(
        a.room(9),
        0,
        "more running than the limit (lowered on restart)"
    );
    assert_eq!(Admission::new(0).concurrency(), 1);
}

#[test]
fn fetch_jobs_have_a_pool_of_their_own() {
    let fetch = FetchConfig {
        concurrency: 3,
        ..FetchConfig::default()
    };
    let a = Admission::with_fetch(1, fetch, crate::clock::Clock::System);
    assert_eq!(a.room(1), 0, "exec is full");
    assert_eq!(a.fetch_room(0), 3, "and fetch is not");
    assert_eq!(a.fetch_room(3), 0);
}
