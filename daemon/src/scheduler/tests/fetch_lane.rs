//! Fetch jobs: their own pool, each host's limits, and the breaker.

use std::collections::HashMap;

use tokio::sync::Notify;

use super::*;
use crate::admission::BreakerState;
use crate::job::{FetchSpec, JobKind};
use crate::runner::{Ended, HostOutcome};

fn fetch(url: &str) -> JobSpec {
    JobSpec {
        kind: JobKind::Fetch(FetchSpec::for_tests(url, "/tmp/quern-never-written")),
        ..JobSpec::exec_for_tests(&["true"])
    }
}

/// Jobs running now, by host, and the most that ever ran at once.
#[derive(Default)]
struct Seen {
    now: HashMap<String, usize>,
    most: HashMap<String, usize>,
    started: Vec<JobId>,
    /// (job, start, end) of each attempt, by the daemon's clock.
    spans: Vec<(JobId, Micros, Micros)>,
}

/// A kind that holds every attempt until `go` is notified (exec jobs
/// and fetch jobs alike), noting what runs.
fn gated(seen: &Arc<Mutex<Seen>>, go: &Arc<Notify>) -> Kinds {
    let (seen, go) = (seen.clone(), go.clone());
    crate::runner::testing::scripted_with_spec(move |spec, ctx| {
        let host = spec.host_key().unwrap_or_else(|| "exec".into());
        let (seen, go) = (seen.clone(), go.clone());
        Box::pin(async move {
            {
                let mut s = lock(&seen);
                s.started.push(ctx.job);
                let n = s.now.entry(host.clone()).or_default();
                *n += 1;
                let n = *n;
                let most = s.most.entry(host.clone()).or_default();
                *most = (*most).max(n);
            }
            go.notified().await;
            *lock(&seen).now.entry(host).or_default() -= 1;
            Ended::Succeeded {
                exit_code: None,
                result: None,
            }
        })
    })
}

/// A host at its limit holds up no other host: 20 jobs queued for
/// host A (one slot) and, last, one for host B; B's starts while A's
/// second still waits, and waiting A jobs take no slot of the pool.
#[tokio::test]
async fn a_busy_host_holds_up_no_other_host() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let go = Arc::new(Notify::new());
    let here = Here::start(1, gated(&seen, &go), |c| {
        c.fetch.concurrency = 4;
        c.fetch.per_host_concurrency = 1;
        c.fetch.default_rate = None;
    });
    let mut events = here.jobs.subscribe();
    let mut a = Vec::new();
    for i in 0..20 {
        a.push(here.submit(fetch(&format!("http://a.test/{i}"))).await);
    }
    let b = here.submit(fetch("http://b.test/x")).await;
    tokio::time::timeout(
        Duration::from_secs(30),
        Here::wait(&mut events, b.id, StateTag::Running),
    )
    .await
    .expect("host B's job started behind 20 of host A's");
    {
        let s = lock(&seen);
        assert_eq!(s.now.get("a.test:80"), Some(&1), "A kept to one slot");
        assert!(s.started.contains(&a[0].id) && !s.started.contains(&a[1].id));
    }
    // An exec job has its own pool, however many fetch jobs wait.
    let exec = here.submit(job(JobState::Queued).spec).await;
    tokio::time::timeout(
        Duration::from_secs(30),
        Here::wait(&mut events, exec.id, StateTag::Running),
    )
    .await
    .expect("an exec job started beside the fetch jobs");
    // Let everything through, one at a time per host, in order.
    let last = a.last().unwrap().id;
    let finish = async {
        loop {
            go.notify_waiters();
            tokio::select! {
                _ = Here::wait(&mut events, last, StateTag::Succeeded) => break,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), finish)
        .await
        .expect("every job of A ran");
    {
        let s = lock(&seen);
        assert_eq!(s.most.get("a.test:80"), Some(&1), "A never ran two at once");
        let order: Vec<JobId> = s
            .started
            .iter()
            .copied()
            .filter(|id| a.iter().any(|j| j.id == *id))
            .collect();
        assert_eq!(
            order,
            a.iter().map(|j| j.id).collect::<Vec<_>>(),
            "A's ran in order"
        );
    }
    here.stop().await;
}

/// A host that fails five requests in a row is opened: its queued jobs
/// wait in scheduled with the reason, using no attempt; after the open
/// period one probe goes at a time, and two answered probes close it.
#[tokio::test(start_paused = true)]
async fn a_failing_host_opens_its_breaker_and_a_probe_closes_it() {
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let kinds = {
        let (down, seen) = (down.clone(), seen.clone());
        crate::runner::testing::scripted_with_spec(move |spec, ctx| {
            let host = spec.host_key().unwrap();
            let (down, seen) = (down.clone(), seen.clone());
            Box::pin(async move {
                {
                    let mut s = lock(&seen);
                    let n = s.now.entry(host.clone()).or_default();
                    *n += 1;
                    let n = *n;
                    let most = s.most.entry(host.clone()).or_default();
                    *most = (*most).max(n);
                    s.started.push(ctx.job);
                }
                let start = ctx.env.clock.now_micros();
                // A request takes a while, so that probes could overlap.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut s = lock(&seen);
                *s.now.entry(host.clone()).or_default() -= 1;
                s.spans.push((ctx.job, start, ctx.env.clock.now_micros()));
                drop(s);
                if down.load(std::sync::atomic::Ordering::SeqCst) {
                    ctx.env.hosts.report(&host, HostOutcome::Failed);
                    Ended::Failed {
                        exit_code: None,
                        error: "503".into(),
                        retry: false,
                    }
                } else {
                    ctx.env.hosts.report(&host, HostOutcome::Answered);
                    Ended::Succeeded {
                        exit_code: None,
                        result: None,
                    }
                }
            })
        })
    };
    let here = Here::start(1, kinds, |c| {
        c.fetch.default_rate = None;
        c.fetch.per_host_concurrency = 4;
        c.fetch.breaker_failures = 5;
        c.fetch.breaker_open = Duration::from_secs(60);
    });
    let mut events = here.jobs.subscribe();
    let mut failing = Vec::new();
    for i in 0..5 {
        failing.push(here.submit(fetch(&format!("http://a.test/f{i}"))).await);
    }
    for j in &failing {
        Here::wait(&mut events, j.id, StateTag::Failed).await;
    }
    // Opened when the last failure was reported, at most this late.
    let opened_by = here.ctx.env.clock.now_micros();
    // The host is back, but nothing can know until a probe goes.
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    let (hosts, _) = here.jobs.hosts();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0].breaker, BreakerState::Open);
    assert_eq!(hosts[0].failures, 5);

    // Jobs for the open host wait in scheduled, with the reason. The
    // store answers from a thread of its own, and a paused runtime that
    // waits on it would skip ahead to the breaker's end; a task that
    // keeps yielding holds the clock still until they are all held back.
    let hold = tokio::spawn(async {
        loop {
            tokio::task::yield_now().await;
        }
    });
    let mut waiting = Vec::new();
    for i in 0..4 {
        waiting.push(here.submit(fetch(&format!("http://a.test/w{i}"))).await);
    }
    for j in &waiting {
        let ev = Here::wait(&mut events, j.id, StateTag::Scheduled).await;
        assert!(
            ev.error.contains("a.test:80 open after 5 failures"),
            "{ev:?}"
        );
        assert_eq!(ev.attempt, 0, "waiting used no attempt: {ev:?}");
    }
    hold.abort();
    for j in &waiting {
        let ev = Here::wait(&mut events, j.id, StateTag::Succeeded).await;
        assert_eq!(ev.attempt, 1, "one attempt, none used by the wait");
    }
    let (hosts, _) = here.jobs.hosts();
    assert!(
        hosts.is_empty(),
        "the breaker closed and the host is idle: {hosts:?}"
    );
    let mut spans: Vec<_> = lock(&seen)
        .spans
        .iter()
        .filter(|(id, ..)| waiting.iter().any(|j| j.id == *id))
        .copied()
        .collect();
    spans.sort_by_key(|&(_, start, _)| start);
    // Nothing ran while it was open...
    assert!(
        spans[0].1 + 1_000_000 >= opened_by + 60_000_000,
        "a job ran {} s after the breaker opened",
        (spans[0].1 - opened_by) as f64 / 1e6
    );
    // ...then the probes one at a time: the second began after the
    // first ended, and the rest after the second (four slots, yet).
    assert!(spans[1].1 >= spans[0].2, "{spans:?}");
    assert!(spans[2].1 >= spans[1].2, "{spans:?}");
    here.stop().await;
}
