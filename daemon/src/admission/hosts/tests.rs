//! The per-host policy on its own: slots, pauses, the breaker's states
//! and the rate.

use super::*;
use crate::clock::Clock;

fn hosts(change: impl FnOnce(&mut FetchConfig)) -> Hosts {
    let mut c = FetchConfig {
        default_rate: None,
        ..FetchConfig::default()
    };
    change(&mut c);
    Hosts::new(c, Clock::tokio())
}

#[tokio::test(start_paused = true)]
async fn a_host_gets_its_slots_and_no_more() {
    let h = hosts(|c| c.per_host_concurrency = 2);
    assert_eq!(h.admit("a:80"), Admit::Yes);
    assert_eq!(h.admit("a:80"), Admit::Yes);
    assert_eq!(h.admit("a:80"), Admit::Busy);
    assert_eq!(h.admit("b:80"), Admit::Yes, "another host has its own");
    h.release("a:80");
    assert_eq!(h.admit("a:80"), Admit::Yes);
}

#[tokio::test(start_paused = true)]
async fn a_hosts_own_table_overrides_the_default() {
    let h = hosts(|c| {
        c.hosts.insert(
            "a".into(),
            crate::config::fetch::HostLimits {
                rate: None,
                concurrency: Some(1),
            },
        );
    });
    assert_eq!(h.admit("a:443"), Admit::Yes);
    assert_eq!(h.admit("a:443"), Admit::Busy);
}

#[tokio::test(start_paused = true)]
async fn retry_after_pauses_the_host_without_counting_a_failure() {
    let h = hosts(|_| {});
    h.report("a:80", HostOutcome::RetryAfter(Duration::from_secs(5)));
    let Admit::WaitUntil(t) = h.admit("a:80") else {
        panic!("not paused");
    };
    assert_eq!(t - Instant::now(), Duration::from_secs(5));
    assert_eq!(h.snapshot()[0].failures, 0);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(h.admit("a:80"), Admit::Yes);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_probes_one_at_a_time_and_closes_after_two() {
    let h = hosts(|c| {
        c.breaker_failures = 3;
        c.breaker_open = Duration::from_secs(60);
        c.per_host_concurrency = 8;
    });
    let mut changes = h.subscribe();
    for _ in 0..2 {
        h.report("a:80", HostOutcome::Failed);
    }
    // An answer in between resets the count.
    h.report("a:80", HostOutcome::Answered);
    for _ in 0..3 {
        h.report("a:80", HostOutcome::Failed);
    }
    let opened = changes.try_recv().expect("an event when it opened");
    assert_eq!(opened.breaker, BreakerState::Open);
    assert!(
        matches!(h.admit("a:80"), Admit::Open { reason, .. } if reason.contains("open after 3 failures"))
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    // Half-open: one probe, and no second while it runs.
    assert_eq!(h.admit("a:80"), Admit::Yes);
    assert_eq!(h.snapshot()[0].breaker, BreakerState::HalfOpen);
    assert_eq!(h.admit("a:80"), Admit::Busy);
    h.report("a:80", HostOutcome::Answered);
    h.release("a:80");
    assert_eq!(h.admit("a:80"), Admit::Yes, "the second probe");
    assert_eq!(h.admit("a:80"), Admit::Busy);
    h.report("a:80", HostOutcome::Answered);
    h.release("a:80");
    assert_eq!(h.snapshot(), vec![], "closed, and idle");
    assert_eq!(h.admit("a:80"), Admit::Yes);
    assert_eq!(h.admit("a:80"), Admit::Yes, "closed: every slot again");

    // A failed probe opens it again at once.
    let h = hosts(|c| c.breaker_failures = 1);
    h.report("b:80", HostOutcome::Failed);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(h.admit("b:80"), Admit::Yes);
    h.report("b:80", HostOutcome::Failed);
    assert!(matches!(h.admit("b:80"), Admit::Open { .. }));
}

/// The rate is governor's: a request per interval, never two at once, and
/// a request may take its turn up to a tenth of the interval early (the
/// slack that keeps late wake-ups from slowing the long-run rate). This
/// reads the real clock, so the bounds are an hour's, far from any noise.
#[test]
fn a_rate_spaces_requests() {
    let h = Hosts::new(
        FetchConfig {
            default_rate: Rate::parse("1/h").unwrap(),
            ..FetchConfig::default()
        },
        Clock::System,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(h.admit("a:80"), Admit::Yes);
        h.release("a:80");
        let Admit::WaitUntil(t) = h.admit("a:80") else {
            panic!("a second request within the hour was let through");
        };
        let wait = t - Instant::now();
        assert!(
            wait > Duration::from_secs(3200) && wait <= Duration::from_secs(3600),
            "the second request waits {wait:?}, not 0.9 to 1 hour"
        );
        assert_eq!(h.admit("b:80"), Admit::Yes, "each host has its own turn");
    });
}
