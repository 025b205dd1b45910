//! End-to-end tests of how fetch jobs treat each host, against the real
//! quernd and loopback HTTP servers the tests start: a host's rate paces its
//! requests, a host that must wait holds up no other host, and a host that
//! keeps failing has its breaker opened, its jobs held back in `scheduled`,
//! and closed again by probes.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{EventsRequest, EventsResponse, HostBreaker, JobSpec, JobState};
use quern_tests::http::{Reply, TestServer};
use quern_tests::{EventStream, TestDaemon, WAIT, fetch_spec, quernctl_bin, stats, submit};
use tokio::time::timeout;
use tonic::transport::Channel;

/// A daemon with these `[fetch]` lines, whose loopback requests never go
/// through a proxy from the environment.
async fn daemon_with_fetch(lines: &[String]) -> Result<TestDaemon> {
    let mut b = TestDaemon::builder().direct_to_loopback().config("[fetch]");
    for line in lines {
        b = b.config(line.clone());
    }
    b.start().await
}

/// A GET of `url` to `dest`, with one attempt.
fn fetch(url: &str, dest: &Path) -> JobSpec {
    JobSpec {
        max_attempts: 1,
        ..fetch_spec(url, dest)
    }
}

/// A server that answers every request with a small body and notes when
/// each came.
async fn timed_server() -> Result<(TestServer, Arc<Mutex<Vec<Instant>>>)> {
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = times.clone();
    let server = TestServer::start(move |_| {
        t.lock().unwrap().push(Instant::now());
        Reply::ok("ok")
    })
    .await?;
    Ok((server, times))
}

#[tokio::test]
async fn forty_requests_at_twenty_a_second_take_at_least_1_9_s() -> Result<()> {
    let (server, times) = timed_server().await?;
    let host = server.authority();
    let d = daemon_with_fetch(&[
        // Plenty of slots: only the rate may hold the jobs back.
        "per_host_concurrency = 16".into(),
        format!("[fetch.hosts.\"{host}\"]"),
        r#"rate = "20/s""#.into(),
    ])
    .await?;
    let mut client = d.client();
    let mut events = EventStream::from_now(&mut client, 0).await?;
    let mut ids = Vec::new();
    for i in 0..40 {
        let dest = d.dir().join(format!("p{i}"));
        ids.push(
            submit(&mut client, fetch(&server.url(&format!("/p{i}")), &dest))
                .await?
                .id,
        );
    }
    events.wait_all_terminal(&ids).await?;
    for id in &ids {
        let job = quern_tests::get(&mut client, *id).await?;
        ensure!(
            job.state == JobState::Succeeded as i32,
            "job {id}: {}",
            job.error
        );
    }
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 40, "one request per job");
    // 40 requests at 20/s, one at a time: 39 gaps of 50 ms. Only the lower
    // bound is asserted; a slow machine only makes it longer.
    let span = times[39] - times[0];
    assert!(
        span >= Duration::from_millis(1900),
        "40 requests at 20/s came within {span:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_slow_host_holds_up_no_job_of_another() -> Result<()> {
    let (a, a_times) = timed_server().await?;
    let (b, _) = timed_server().await?;
    let d = daemon_with_fetch(&[
        // One slot for everything would make A's waiting jobs block B if
        // they held one: they must not.
        "concurrency = 2".into(),
        format!("[fetch.hosts.\"{}\"]", a.authority()),
        r#"rate = "1/s""#.into(),
    ])
    .await?;
    let mut client = d.client();
    let mut events = EventStream::from_now(&mut client, 0).await?;
    for i in 0..20 {
        let dest = d.dir().join(format!("a{i}"));
        submit(&mut client, fetch(&a.url(&format!("/a{i}")), &dest)).await?;
    }
    let dest = d.dir().join("b");
    let submitted = Instant::now();
    let job = submit(&mut client, fetch(&b.url("/b"), &dest)).await?;
    events.wait_state(job.id, JobState::Running).await?;
    let waited = submitted.elapsed();
    // Had B waited behind A's queue, it would have waited about 19 s.
    let a_started = a_times.lock().unwrap().len();
    assert!(
        a_started <= 3,
        "B started only after {a_started} of A's jobs had gone"
    );
    assert!(
        waited <= Duration::from_secs(1),
        "B's job started {waited:?} after it was submitted, behind A's"
    );
    events.wait_state(job.id, JobState::Succeeded).await?;
    assert_eq!(std::fs::read(&dest)?, b"ok");
    Ok(())
}

/// Host events only: changes of hosts' breakers and pauses.
async fn host_events(client: &mut JobsClient<Channel>) -> Result<tonic::Streaming<EventsResponse>> {
    Ok(client
        .events(EventsRequest {
            after_seq: None,
            job_id: 0,
            progress: false,
            hosts: true,
            watches: false,
        })
        .await?
        .into_inner())
}

/// Reads host events until `host`'s breaker is `want`.
async fn wait_breaker(
    stream: &mut tonic::Streaming<EventsResponse>,
    host: &str,
    want: HostBreaker,
) -> Result<quern_proto::v1::HostStats> {
    timeout(WAIT, async {
        loop {
            let e = stream.message().await?.context("events ended")?;
            if let Some(h) = e.host
                && h.host == host
                && h.breaker == want as i32
            {
                return Ok(h);
            }
        }
    })
    .await
    .with_context(|| format!("{host}'s breaker never became {}", want.as_str_name()))?
}

#[tokio::test]
async fn five_503s_open_the_breaker_and_a_probe_closes_it() -> Result<()> {
    let answers = Arc::new(Mutex::new(0usize));
    let n = answers.clone();
    let server = TestServer::start(move |_| {
        let mut n = n.lock().unwrap();
        *n += 1;
        if *n <= 5 {
            Reply::status(503)
        } else {
            Reply::ok("back")
        }
    })
    .await?;
    let host = server.authority();
    let d = daemon_with_fetch(&[
        // One at a time, so that the five failures come before anything
        // else is sent.
        "per_host_concurrency = 1".into(),
        r#"default_rate = "100/s""#.into(),
        "breaker_failures = 5".into(),
        r#"breaker_open = "5s""#.into(),
    ])
    .await?;
    let mut client = d.client();
    let mut hosts = host_events(&mut client).await?;
    let mut events = EventStream::from_now(&mut client, 0).await?;
    let mut failing = Vec::new();
    for i in 0..5 {
        let dest = d.dir().join(format!("f{i}"));
        failing.push(
            submit(&mut client, fetch(&server.url(&format!("/f{i}")), &dest))
                .await?
                .id,
        );
    }
    events.wait_all_terminal(&failing).await?;
    let opened = wait_breaker(&mut hosts, &host, HostBreaker::Open).await?;
    assert_eq!(opened.failures, 5);
    assert!(opened.open_until.is_some(), "{opened:?}");

    // While it is open, new jobs wait in scheduled with the reason, and
    // use no attempt.
    let s = stats(&mut client).await?;
    let h = s.hosts.iter().find(|h| h.host == host);
    assert_eq!(
        h.map(|h| h.breaker),
        Some(HostBreaker::Open as i32),
        "Stats shows the open breaker: {:?}",
        s.hosts
    );
    // And so does `quernctl stats`.
    let out = tokio::process::Command::new(quernctl_bin())
        .arg("--socket")
        .arg(d.socket())
        .args(["stats", "--json"])
        .env_remove("QUERN_SOCKET")
        .kill_on_drop(true)
        .output();
    let out = timeout(WAIT, out).await.context("quernctl stats hung")??;
    ensure!(out.status.success(), "quernctl stats: {out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let shown = json["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["host"] == host.as_str()))
        .with_context(|| format!("quernctl stats shows no {host}: {json}"))?;
    assert_eq!(shown["breaker"], "open", "{json}");
    assert_eq!(shown["failures"], 5, "{json}");

    let mut waiting = Vec::new();
    for i in 0..3 {
        let dest = d.dir().join(format!("w{i}"));
        waiting.push(
            submit(&mut client, fetch(&server.url(&format!("/w{i}")), &dest))
                .await?
                .id,
        );
    }
    for id in &waiting {
        let e = events.wait_state(*id, JobState::Scheduled).await?;
        assert!(
            e.error
                .contains(&format!("host {host} open after 5 failures")),
            "{e:?}"
        );
        assert_eq!(e.attempt, 0, "the wait used no attempt: {e:?}");
    }
    assert_eq!(*answers.lock().unwrap(), 5, "nothing was sent while open");

    // Then a probe goes, it succeeds, a second closes the breaker, and the
    // rest run.
    wait_breaker(&mut hosts, &host, HostBreaker::HalfOpen).await?;
    wait_breaker(&mut hosts, &host, HostBreaker::Closed).await?;
    events.wait_all_terminal(&waiting).await?;
    for id in &waiting {
        let job = quern_tests::get(&mut client, *id).await?;
        assert_eq!(job.state, JobState::Succeeded as i32, "{job:?}");
        assert_eq!(job.attempts, 1, "one attempt, none used by the wait");
    }
    let s = stats(&mut client).await?;
    assert!(
        s.hosts
            .iter()
            .all(|h| h.host != host || h.breaker == HostBreaker::Closed as i32),
        "{:?}",
        s.hosts
    );
    Ok(())
}
