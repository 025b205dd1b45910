//! End-to-end tests of the fetch kind against the real quernd and a
//! loopback HTTP server each test starts ([`quern_tests::http`]): verified
//! and atomic downloads, resume after drops and after `kill -9`, Retry-After,
//! redirects, limits, conditional GET, uploads, and bad input.
//!
//! The per-host pacing, head-of-line and breaker tests are in
//! `fetch_hosts.rs`; nothing here depends on per-host limits.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, ensure};
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{
    CancelRequest, EventsRequest, FetchOverwrite, FetchResult, FetchSpec, HttpHeader, Job, JobSpec,
    JobState, SubmitRequest, job_result, job_spec,
};
use quern_tests::http::{Reply, Resource, Seen, TestServer};
use quern_tests::{
    EventStream, TestDaemon, TestDaemonBuilder, WAIT, expect_code, fetch_mut, fetch_spec, get,
    state_name, submit, wait_for_terminal,
};
use sha2::{Digest as _, Sha256};
use tokio::time::timeout;
use tonic::Code;
use tonic::transport::Channel;

/// A daemon whose retries come quickly, and which never sends the test's
/// loopback requests through a proxy from the environment.
fn builder() -> TestDaemonBuilder {
    TestDaemon::builder()
        .direct_to_loopback()
        .config(r#"retry_base_delay = "100ms""#)
        .config(r#"retry_max_delay = "200ms""#)
}

async fn daemon() -> Result<TestDaemon> {
    builder().start().await
}

/// A daemon as [`daemon`] makes, with `[fetch]` settings.
async fn daemon_with_fetch(lines: &[&str]) -> Result<TestDaemon> {
    let mut b = builder().config("[fetch]");
    for line in lines {
        b = b.config(*line);
    }
    b.start().await
}

/// `n` bytes that are not all alike, so that a misplaced range shows.
fn body(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i * 7 % 251) as u8 ^ (i >> 10) as u8)
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A GET of `url` to `dest`, with three attempts.
fn fetch(url: &str, dest: &Path) -> JobSpec {
    JobSpec {
        max_attempts: 3,
        ..fetch_spec(url, dest)
    }
}

fn part(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

/// Runs `spec` to the end and returns the job.
async fn run(d: &TestDaemon, spec: JobSpec) -> Result<Job> {
    let mut client = d.client();
    let job = submit(&mut client, spec).await?;
    wait_for_terminal(&mut client, job.id).await
}

/// The fetch result of a succeeded job.
fn succeeded(job: &Job) -> Result<FetchResult> {
    ensure!(
        job.state == JobState::Succeeded as i32,
        "job {} is {}: {}",
        job.id,
        state_name(job.state),
        job.error
    );
    match job.result.as_ref().and_then(|r| r.kind.as_ref()) {
        Some(job_result::Kind::Fetch(f)) => Ok(f.clone()),
        other => anyhow::bail!("job {} has no fetch result: {other:?}", job.id),
    }
}

fn failed(job: &Job) -> Result<&str> {
    ensure!(
        job.state == JobState::Failed as i32,
        "job {} is {}, not failed: {job:?}",
        job.id,
        state_name(job.state)
    );
    Ok(&job.error)
}

#[tokio::test]
async fn a_plain_download_is_verified_and_reported() -> Result<()> {
    let data = body(300 * 1024);
    let res = Resource::new(data.clone(), "v1");
    let server = TestServer::start(move |req| res.answer(req, true)).await?;
    let d = daemon().await?;
    let dest = d.dir().join("plain.bin");
    let mut spec = fetch(&server.url("/plain.bin"), &dest);
    fetch_mut(&mut spec).sha256 = sha256(&data).to_uppercase();
    let job = run(&d, spec).await?;
    let r = succeeded(&job)?;
    assert_eq!(std::fs::read(&dest)?, data);
    assert_eq!(r.sha256, sha256(&data));
    assert_eq!(r.bytes, data.len() as u64);
    assert_eq!(r.status, 200);
    assert_eq!(r.final_url, server.url("/plain.bin"));
    assert!(!r.unchanged);
    assert_eq!(r.resumed_bytes, 0);
    assert!(!part(&dest).exists(), "the .part file was renamed away");
    assert_eq!(server.requests(), 1);
    Ok(())
}

#[tokio::test]
async fn a_wrong_checksum_fails_at_once_and_leaves_no_file() -> Result<()> {
    let data = body(64 * 1024);
    let res = Resource::new(data.clone(), "v1");
    let server = TestServer::start(move |req| res.answer(req, true)).await?;
    let d = daemon().await?;
    let dest = d.dir().join("wrong.bin");
    let mut spec = fetch(&server.url("/wrong.bin"), &dest);
    let wrong = "0".repeat(64);
    fetch_mut(&mut spec).sha256 = wrong.clone();
    let job = run(&d, spec).await?;
    let error = failed(&job)?;
    assert!(
        error.contains(&wrong) && error.contains(&sha256(&data)),
        "{error}"
    );
    assert!(!dest.exists() && !part(&dest).exists(), "no file is left");
    assert_eq!(server.requests(), 1, "a mismatch is not retried");
    assert_eq!(job.attempts, 1);
    Ok(())
}

#[tokio::test]
async fn a_dropped_download_resumes_with_range() -> Result<()> {
    let data = body(200 * 1024);
    let half = data.len() as u64 / 2;
    let res = Resource::new(data.clone(), "v1");
    let server = TestServer::start(move |req| {
        let r = res.answer(req, true);
        if req.n == 0 { r.drop_after(half) } else { r }
    })
    .await?;
    let d = daemon().await?;
    let dest = d.dir().join("resume.bin");
    let job = run(&d, fetch(&server.url("/resume.bin"), &dest)).await?;
    let r = succeeded(&job)?;
    assert_eq!(std::fs::read(&dest)?, data);
    assert_eq!(r.sha256, sha256(&data), "the hash covers the resumed bytes");
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let range = seen[1].header("range").context("the retry sends Range")?;
    let from: u64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .context("bytes=N-")?
        .parse()?;
    assert!(from > 0 && from <= half, "resumed from {from}");
    assert_eq!(seen[1].header("if-range"), Some("\"v1\""));
    assert_eq!(r.resumed_bytes, from);
    assert_eq!(r.status, 206);
    assert!(
        server.served() < data.len() as u64 * 11 / 10,
        "served {} for {}",
        server.served(),
        data.len()
    );
    Ok(())
}

#[tokio::test]
async fn a_server_that_ignores_range_restarts_the_file_cleanly() -> Result<()> {
    let data = body(200 * 1024);
    let res = Resource::new(data.clone(), "v1");
    let server = TestServer::start(move |req| {
        let r = res.answer(req, false);
        if req.n == 0 { r.drop_after(50_000) } else { r }
    })
    .await?;
    let d = daemon().await?;
    let dest = d.dir().join("norange.bin");
    let job = run(&d, fetch(&server.url("/norange.bin"), &dest)).await?;
    let r = succeeded(&job)?;
    assert!(
        server.seen()[1].header("range").is_some(),
        "a resume was tried"
    );
    assert_eq!(std::fs::read(&dest)?, data, "not appended to the old bytes");
    assert_eq!(r.resumed_bytes, 0);
    assert_eq!(r.sha256, sha256(&data));
    Ok(())
}

#[tokio::test]
async fn a_changed_etag_restarts_the_file() -> Result<()> {
    let old = body(200 * 1024);
    let new: Vec<u8> = old.iter().map(|b| b.wrapping_add(1)).collect();
    let v1 = Resource::new(old, "v1");
    let v2 = Resource::new(new.clone(), "v2");
    let server = TestServer::start(move |req| {
        if req.n == 0 {
            v1.answer(req, true).drop_after(80_000)
        } else {
            v2.answer(req, true)
        }
    })
    .await?;
    let d = daemon().await?;
    let dest = d.dir().join("changed.bin");
    let job = run(&d, fetch(&server.url("/changed.bin"), &dest)).await?;
    let r = succeeded(&job)?;
    assert_eq!(server.seen()[1].header("if-range"), Some("\"v1\""));
    assert_eq!(std::fs::read(&dest)?, new);
    assert_eq!(r.resumed_bytes, 0);
    assert_eq!(r.status, 200);
    Ok(())
}

#[tokio::test]
async fn kill_9_during_a_throttled_download_resumes_after_restart() -> Result<()> {
    interrupted_download(true).await
}

#[tokio::test]
async fn a_clean_restart_keeps_the_part_file_and_resumes_it() -> Result<()> {
    interrupted_download(false).await
}

/// Stops quernd (with SIGKILL, or SIGTERM when not `kill`) halfway through
/// a throttled download, restarts it, and checks the download resumes: the
/// file is right, and the server sent it not much more than once.
async fn interrupted_download(kill: bool) -> Result<()> {
    let data = body(400 * 1024);
    let res = Resource::new(data.clone(), "v1");
    let server = TestServer::start(move |req| res.answer(req, true).throttle(100 * 1024)).await?;
    let mut d = daemon().await?;
    let dest = d.dir().join("crash.bin");
    let mut client = d.client();
    let mut spec = fetch(&server.url("/crash.bin"), &dest);
    fetch_mut(&mut spec).sha256 = sha256(&data);
    let job = submit(&mut client, spec).await?;
    // Wait until a good part is on its way, as the job's progress says.
    let mut progress = client
        .events(EventsRequest {
            after_seq: None,
            job_id: job.id,
            progress: true,
            hosts: false,
            watches: false,
        })
        .await?
        .into_inner();
    timeout(WAIT, async {
        loop {
            let e = progress.message().await?.context("events ended")?;
            if let Some(p) = e.progress
                && p.phase == "download"
                && p.done >= 100 * 1024
            {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .context("no progress past 100 KiB")??;
    drop(progress);
    if kill {
        d.kill9().await?;
    } else {
        d.stop().await?;
    }
    d.restart().await?;
    let mut client = d.client();
    let job = wait_for_terminal(&mut client, job.id).await?;
    let r = succeeded(&job)?;
    assert_eq!(std::fs::read(&dest)?, data);
    assert!(r.resumed_bytes >= 100 * 1024, "resumed {}", r.resumed_bytes);
    let seen = server.seen();
    assert!(
        seen.last().and_then(|s| s.header("range")).is_some(),
        "{seen:?}"
    );
    assert!(
        server.served() < data.len() as u64 * 11 / 10,
        "served {} for a file of {}",
        server.served(),
        data.len()
    );
    Ok(())
}

#[tokio::test]
async fn retry_after_waits_without_using_an_attempt() -> Result<()> {
    let data = body(1000);
    let res = Resource::new(data.clone(), "v1");
    let server = TestServer::start(move |req| {
        if req.n == 0 {
            Reply::status(429).header("retry-after", "2")
        } else {
            res.answer(req, true)
        }
    })
    .await?;
    let d = daemon().await?;
    let dest = d.dir().join("later.bin");
    let mut client = d.client();
    let mut spec = fetch(&server.url("/later.bin"), &dest);
    spec.max_attempts = 1;
    let mut events = EventStream::from_now(&mut client, 0).await?;
    let job = submit(&mut client, spec).await?;
    events.wait_state(job.id, JobState::Running).await?;
    events.wait_state(job.id, JobState::Scheduled).await?;
    let waiting = get(&mut client, job.id).await?;
    // The wait is 2 s; the job is read right after it began.
    if waiting.state == JobState::Scheduled as i32 {
        assert!(
            waiting.wait_reason.contains(&server.authority())
                && waiting.wait_reason.contains("429")
                && waiting.wait_reason.contains("Retry-After"),
            "{:?}",
            waiting.wait_reason
        );
    }
    let job = wait_for_terminal(&mut client, job.id).await?;
    succeeded(&job)?;
    assert_eq!(std::fs::read(&dest)?, data);
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    Ok(())
}

#[tokio::test]
async fn a_redirect_chain_is_followed_and_a_loop_named() -> Result<()> {
    let data = body(5000);
    let res = Resource::new(data.clone(), "v1");
    let server = TestServer::start(move |req: &Seen| match req.path.as_str() {
        "/a" => Reply::redirect(302, "/b"),
        "/b" => Reply::redirect(301, "/c"),
        "/c" => res.answer(req, true),
        "/x" => Reply::redirect(307, "/y"),
        "/y" => Reply::redirect(308, "/x"),
        _ => Reply::status(404),
    })
    .await?;
    let d = daemon().await?;
    let dest = d.dir().join("chain.bin");
    let r = succeeded(&run(&d, fetch(&server.url("/a"), &dest)).await?)?;
    assert_eq!(r.final_url, server.url("/c"));
    assert_eq!(std::fs::read(&dest)?, data);

    let dest = d.dir().join("loop.bin");
    let job = run(&d, fetch(&server.url("/x"), &dest)).await?;
    let error = failed(&job)?;
    assert!(
        error.contains("loop")
            && error.contains(&server.url("/x"))
            && error.contains(&server.url("/y")),
        "{error}"
    );
    assert_eq!(job.attempts, 1, "a loop is not retried");
    assert!(!dest.exists());
    Ok(())
}

#[tokio::test]
async fn max_bytes_is_enforced_with_and_without_content_length() -> Result<()> {
    let data = body(100 * 1024);
    let res = Resource::new(data.clone(), "v1");
    let server = TestServer::start(move |req: &Seen| {
        let r = res.answer(req, true);
        if req.path == "/chunked" {
            r.chunked()
        } else {
            r
        }
    })
    .await?;
    let d = daemon().await?;
    for (path, words) in [
        ("/sized", "over max_bytes"),
        ("/chunked", "grew past max_bytes"),
    ] {
        let dest = d.dir().join(&path[1..]);
        let mut spec = fetch(&server.url(path), &dest);
        fetch_mut(&mut spec).max_bytes = Some(10_000);
        let job = run(&d, spec).await?;
        let error = failed(&job)?;
        assert!(error.contains(words), "{path}: {error}");
        assert_eq!(job.attempts, 1, "{path}: not retried");
        assert!(!dest.exists() && !part(&dest).exists(), "{path}");
    }
    // Under the limit, both pass.
    let dest = d.dir().join("fits");
    let mut spec = fetch(&server.url("/chunked"), &dest);
    fetch_mut(&mut spec).max_bytes = Some(data.len() as u64);
    succeeded(&run(&d, spec).await?)?;
    assert_eq!(std::fs::read(&dest)?, data);
    Ok(())
}

#[tokio::test]
async fn a_conditional_refetch_gets_304_and_leaves_the_file() -> Result<()> {
    let data = body(20_000);
    let res = Resource::new(data.clone(), "v1");
    let server = TestServer::start(move |req| res.answer(req, true)).await?;
    let d = daemon().await?;
    let dest = d.dir().join("cond.bin");
    succeeded(&run(&d, fetch(&server.url("/cond.bin"), &dest)).await?)?;
    let before = std::fs::metadata(&dest)?.modified()?;
    let r = succeeded(&run(&d, fetch(&server.url("/cond.bin"), &dest)).await?)?;
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].header("if-none-match"), Some("\"v1\""));
    assert_eq!(r.status, 304);
    assert!(r.unchanged);
    assert_eq!(std::fs::metadata(&dest)?.modified()?, before, "untouched");
    assert_eq!(std::fs::read(&dest)?, data);

    // A dest changed since is fetched whole, not revalidated.
    std::fs::write(&dest, b"edited")?;
    let r = succeeded(&run(&d, fetch(&server.url("/cond.bin"), &dest)).await?)?;
    assert_eq!(server.seen()[2].header("if-none-match"), None);
    assert_eq!(r.status, 200);
    assert_eq!(std::fs::read(&dest)?, data);
    Ok(())
}

#[tokio::test]
async fn overwrite_skip_and_error_send_no_request() -> Result<()> {
    let server = TestServer::start(|_| Reply::ok("new")).await?;
    let d = daemon().await?;
    let dest = d.dir().join("there");
    std::fs::write(&dest, b"old")?;
    let mut spec = fetch(&server.url("/f"), &dest);
    fetch_mut(&mut spec).overwrite = FetchOverwrite::Skip as i32;
    let r = succeeded(&run(&d, spec).await?)?;
    assert!(r.unchanged);
    assert_eq!(r.status, 0);
    let mut spec = fetch(&server.url("/f"), &dest);
    fetch_mut(&mut spec).overwrite = FetchOverwrite::Error as i32;
    let job = run(&d, spec).await?;
    assert!(failed(&job)?.contains("exists"));
    assert_eq!(server.requests(), 0);
    assert_eq!(std::fs::read(&dest)?, b"old");
    Ok(())
}

#[tokio::test]
async fn a_put_sends_its_body_file_intact() -> Result<()> {
    let server =
        TestServer::start(|req: &Seen| Reply::status(201).body(format!("got {}", req.body.len())))
            .await?;
    let d = daemon().await?;
    let upload = body(150 * 1024);
    let file = d.dir().join("upload.bin");
    std::fs::write(&file, &upload)?;
    let dest = d.dir().join("answer.txt");
    let mut spec = fetch(&server.url("/put"), &dest);
    let f = fetch_mut(&mut spec);
    f.method = "PUT".into();
    f.body_file = file.to_string_lossy().into_owned();
    f.headers = vec![HttpHeader {
        name: "X-Test".into(),
        value: "yes".into(),
    }];
    let r = succeeded(&run(&d, spec).await?)?;
    assert_eq!(r.status, 201);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].header("x-test"), Some("yes"));
    assert!(seen[0].body == upload[..], "the body arrived intact");
    assert_eq!(
        std::fs::read_to_string(&dest)?,
        format!("got {}", upload.len())
    );
    Ok(())
}

#[tokio::test]
async fn a_post_cut_after_sending_is_retried_only_if_allowed() -> Result<()> {
    let d = daemon().await?;
    let file = d.dir().join("hook.json");
    std::fs::write(&file, br#"{"event":"x"}"#)?;
    for (retry_unsafe, requests) in [(false, 1), (true, 3)] {
        let server = TestServer::start(|_| Reply::hang_up()).await?;
        let spec = JobSpec {
            kind: Some(job_spec::Kind::Fetch(FetchSpec {
                url: server.url("/hook"),
                method: "POST".into(),
                body_file: file.to_string_lossy().into_owned(),
                retry_unsafe,
                ..FetchSpec::default()
            })),
            max_attempts: 3,
            ..JobSpec::default()
        };
        let job = run(&d, spec).await?;
        failed(&job)?;
        assert_eq!(server.requests(), requests, "retry_unsafe {retry_unsafe}");
        assert_eq!(server.seen()[0].body.as_ref(), br#"{"event":"x"}"#);
    }
    Ok(())
}

#[tokio::test]
async fn a_connect_error_is_retried_even_for_a_post() -> Result<()> {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let d = daemon().await?;
    let spec = JobSpec {
        kind: Some(job_spec::Kind::Fetch(FetchSpec {
            url: format!("http://127.0.0.1:{port}/hook"),
            method: "POST".into(),
            ..FetchSpec::default()
        })),
        max_attempts: 2,
        ..JobSpec::default()
    };
    let job = run(&d, spec).await?;
    failed(&job)?;
    assert_eq!(job.attempts, 2, "{}", job.error);
    Ok(())
}

#[tokio::test]
async fn bad_fetch_specs_are_invalid_argument_naming_the_field() -> Result<()> {
    let d = daemon().await?;
    let dir = d.dir().to_path_buf();
    let ok = dir.join("ok.bin");
    type Change = Box<dyn Fn(&mut FetchSpec)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "scheme",
            Box::new(|f| f.url = "ftp://127.0.0.1/x".into()),
            "spec.fetch.url",
        ),
        (
            "unparsable",
            Box::new(|f| f.url = "not a url".into()),
            "spec.fetch.url",
        ),
        (
            "no host",
            Box::new(|f| f.url = "http://".into()),
            "spec.fetch.url",
        ),
        (
            "sha256",
            Box::new(|f| f.sha256 = "abc".into()),
            "spec.fetch.sha256",
        ),
        (
            "relative dest",
            Box::new(|f| f.dest = "rel/x".into()),
            "spec.fetch.dest",
        ),
        (
            "dest is a directory",
            Box::new({
                let dir = dir.clone();
                move |f| f.dest = dir.to_string_lossy().into_owned()
            }),
            "spec.fetch.dest",
        ),
        (
            "dest parent missing",
            Box::new({
                let dir = dir.clone();
                move |f| f.dest = dir.join("no/such/file").to_string_lossy().into_owned()
            }),
            "spec.fetch.dest",
        ),
        (
            "header name",
            Box::new(|f| {
                f.headers = vec![HttpHeader {
                    name: "bad name".into(),
                    value: "v".into(),
                }]
            }),
            "spec.fetch.headers",
        ),
        (
            "header value",
            Box::new(|f| {
                f.headers = vec![HttpHeader {
                    name: "X".into(),
                    value: "a\nb".into(),
                }]
            }),
            "spec.fetch.headers",
        ),
        (
            "max_bytes 0",
            Box::new(|f| f.max_bytes = Some(0)),
            "spec.fetch.max_bytes",
        ),
        (
            "missing body_file",
            Box::new({
                let dir = dir.clone();
                move |f| {
                    f.method = "PUT".into();
                    f.body_file = dir.join("none").to_string_lossy().into_owned();
                }
            }),
            "spec.fetch.body_file",
        ),
    ];
    let mut client = d.client();
    for (name, change, field) in cases {
        let mut spec = fetch("http://127.0.0.1:1/x", &ok);
        change(fetch_mut(&mut spec));
        let status = expect_code(
            client.submit(SubmitRequest { spec: Some(spec) }).await,
            Code::InvalidArgument,
        )
        .with_context(|| name.to_string())?;
        assert!(
            status.message().contains(field),
            "{name}: {}",
            status.message()
        );
    }
    // The same spec without the faults is accepted: the refusals were for
    // the fields named.
    submit(&mut client, fetch("http://127.0.0.1:1/x", &ok)).await?;
    Ok(())
}

#[tokio::test]
async fn a_silent_server_times_out_and_the_retry_resumes() -> Result<()> {
    let data = body(100 * 1024);
    let res = Resource::new(data.clone(), "v1");
    let server = TestServer::start(move |req| {
        let r = res.answer(req, true);
        if req.n == 0 { r.stall_after(30_000) } else { r }
    })
    .await?;
    let d = daemon_with_fetch(&[r#"idle_timeout = "1s""#]).await?;
    let dest = d.dir().join("idle.bin");
    let job = run(&d, fetch(&server.url("/idle.bin"), &dest)).await?;
    let r = succeeded(&job)?;
    assert_eq!(job.attempts, 2);
    assert_eq!(r.resumed_bytes, 30_000);
    assert_eq!(std::fs::read(&dest)?, data);
    Ok(())
}

#[tokio::test]
async fn a_transfer_below_the_speed_limit_fails_and_is_retried() -> Result<()> {
    let data = body(100 * 1024);
    let res = Resource::new(data.clone(), "v1");
    let server = TestServer::start(move |req| {
        let r = res.answer(req, true);
        // 2 KB/s: never silent long enough for the idle timeout.
        if req.n == 0 { r.throttle(2000) } else { r }
    })
    .await?;
    let d = daemon_with_fetch(&["speed_limit = 50000", r#"speed_time = "1s""#]).await?;
    let dest = d.dir().join("slow.bin");
    let mut client = d.client();
    let job = submit(&mut client, fetch(&server.url("/slow.bin"), &dest)).await?;
    let job = wait_for_terminal(&mut client, job.id).await?;
    let r = succeeded(&job)?;
    assert_eq!(job.attempts, 2);
    assert!(r.resumed_bytes > 0, "the slow bytes were kept");
    assert_eq!(std::fs::read(&dest)?, data);
    // The job's history says why the first attempt failed.
    let mut events = EventStream::after(&mut client, Some(0), job.id).await?;
    let e = events
        .wait_for(|e| e.state == JobState::Scheduled as i32)
        .await?;
    assert!(e.error.contains("speed_limit"), "{}", e.error);
    Ok(())
}

#[tokio::test]
async fn server_errors_are_retried_and_client_errors_are_not() -> Result<()> {
    let data = body(1000);
    let res = Resource::new(data.clone(), "v1");
    let server = TestServer::start(move |req: &Seen| match (req.path.as_str(), req.n) {
        ("/flaky", 0) => Reply::status(503),
        ("/flaky", _) => res.answer(req, true),
        _ => Reply::status(404),
    })
    .await?;
    let d = daemon().await?;
    let dest = d.dir().join("flaky.bin");
    let job = run(&d, fetch(&server.url("/flaky"), &dest)).await?;
    succeeded(&job)?;
    assert_eq!(job.attempts, 2, "a 503 without Retry-After uses an attempt");

    let dest = d.dir().join("missing.bin");
    let job = run(&d, fetch(&server.url("/missing"), &dest)).await?;
    assert!(failed(&job)?.contains("404"), "{}", job.error);
    assert_eq!(job.attempts, 1, "a 404 is final");
    assert!(!dest.exists() && !part(&dest).exists());
    Ok(())
}

/// A download that would take many minutes: 4 MiB at 8 KiB/s.
async fn slow_server() -> Result<TestServer> {
    let res = Resource::new(body(4 << 20), "v1");
    TestServer::start(move |req| res.answer(req, true).throttle(8 * 1024)).await
}

/// Waits until job `id` has downloaded some bytes, as its progress says.
async fn wait_downloading(client: &mut JobsClient<Channel>, id: u64) -> Result<()> {
    let mut progress = client
        .events(EventsRequest {
            after_seq: None,
            job_id: id,
            progress: true,
            hosts: false,
            watches: false,
        })
        .await?
        .into_inner();
    timeout(WAIT, async {
        loop {
            let e = progress.message().await?.context("events ended")?;
            if e.progress
                .is_some_and(|p| p.phase == "download" && p.done > 0)
            {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .context("the download never started")?
}

#[tokio::test]
async fn cancel_stops_a_download_at_once() -> Result<()> {
    let server = slow_server().await?;
    let d = daemon().await?;
    let dest = d.dir().join("slow.bin");
    let mut client = d.client();
    let job = submit(&mut client, fetch(&server.url("/slow.bin"), &dest)).await?;
    wait_downloading(&mut client, job.id).await?;
    // The Cancel is answered once the attempt has ended: had the transfer
    // gone on, that would be minutes from now, far past WAIT.
    let answer = timeout(
        WAIT,
        client.cancel(CancelRequest {
            id: job.id,
            ..CancelRequest::default()
        }),
    )
    .await
    .context("Cancel was not answered while the download went on")??
    .into_inner();
    let job = answer.job.context("Cancel returned no job")?;
    assert_eq!(job.state, JobState::Cancelled as i32, "{job:?}");
    assert!(
        !dest.exists(),
        "a cancelled download left {}",
        dest.display()
    );
    Ok(())
}

#[tokio::test]
async fn the_jobs_timeout_stops_a_download() -> Result<()> {
    let server = slow_server().await?;
    let d = daemon().await?;
    let dest = d.dir().join("slow.bin");
    let mut spec = fetch(&server.url("/slow.bin"), &dest);
    spec.max_attempts = 1;
    spec.timeout = Some(quern_tests::duration(std::time::Duration::from_secs(1)));
    let job = run(&d, spec).await?;
    let error = failed(&job)?;
    assert!(error.contains("timed out"), "{error}");
    assert!(
        !dest.exists(),
        "a download that timed out left {}",
        dest.display()
    );
    Ok(())
}
