//! P7a-P7c: the fetch kind of issue 14 against loopback HTTP servers the
//! bench starts itself ([`quern_tests::http::TestServer`]), so that the
//! network costs nothing and what is measured is quernd: one large download
//! against `curl`, a per-host rate held over 1,000 requests, and the memory
//! and CPU of 10,000 small downloads spread over 10 hosts.
//!
//! The servers run on the bench's own runtime, so curl and quernd are
//! served by the same code on the same cores.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{
    GetRequest, JobSpec, JobState, SubmitBatchRequest, SubmitRequest, job_result, job_spec,
};
use quern_tests::fetch_spec;
use quern_tests::http::{Reply, TestServer};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;
use tokio::process::Command;
use tonic::transport::Channel;

use super::{BATCH, Ctx, EventWatch, budget, request};
use crate::daemon::{DaemonConfig, Quernd, own_children_cpu_time};
use crate::report::{Metric, Run, Target, Unit};
use crate::stats;

const MIB: u64 = 1024 * 1024;

/// How many times P7a downloads each way; the best time of each is kept.
const ROUNDS: u32 = 3;

/// The rate P7b sets for its host, in requests per second.
const RATE: u32 = 20;

/// The hosts (loopback servers on their own ports) P7c spreads over.
const HOSTS: u64 = 10;

/// The body of each small download in P7b and P7c.
const SMALL: usize = 4096;

/// A temp dir for downloads under `--dir`, so they land on the filesystem
/// the bench was told to measure.
fn downloads_dir(ctx: &Ctx<'_>, prefix: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&ctx.options.dir)
        .with_context(|| format!("cannot create a temp dir in {}", ctx.options.dir.display()))
}

/// Submits `specs` with `SubmitBatch` calls of up to [`BATCH`] jobs.
async fn submit_all(client: &mut JobsClient<Channel>, specs: Vec<JobSpec>) -> Result<()> {
    let mut specs = specs.into_iter().peekable();
    while specs.peek().is_some() {
        let batch: Vec<JobSpec> = specs.by_ref().take(BATCH as usize).collect();
        let n = batch.len();
        let ids = client
            .submit_batch(request(SubmitBatchRequest { specs: batch }))
            .await
            .context("SubmitBatch failed")?
            .into_inner()
            .ids;
        if ids.len() != n {
            bail!("SubmitBatch of {n} jobs returned {} ids", ids.len());
        }
    }
    Ok(())
}

/// Waits until `jobs` jobs have ended, and fails unless all succeeded. The
/// daemon is fresh, so every terminal event is about one of the bench's
/// jobs.
async fn wait_all(
    events: &mut EventWatch,
    jobs: u64,
    deadline: tokio::time::Instant,
) -> Result<u64> {
    let mut succeeded = 0;
    let mut ended = 0;
    let mut first_error = String::new();
    while ended < jobs {
        let event = events.next(deadline).await?;
        if !event.is_terminal() {
            continue;
        }
        ended += 1;
        if event.state == JobState::Succeeded {
            succeeded += 1;
        } else if first_error.is_empty() {
            first_error = format!(
                "job {} ended {:?}: {}",
                event.job_id, event.state, event.error
            );
        }
    }
    if succeeded < jobs {
        bail!(
            "{} of {jobs} fetch jobs did not succeed; first: {first_error}",
            jobs - succeeded
        );
    }
    Ok(succeeded)
}

/// `len` bytes that are not all alike, made by repeating one MiB, so that a
/// misplaced or repeated chunk changes the digest.
fn large_body(len: u64) -> Bytes {
    let block: Vec<u8> = (0..MIB as usize)
        .map(|i| (i * 7 % 251) as u8 ^ (i >> 10) as u8)
        .collect();
    let mut body = Vec::with_capacity(len as usize);
    let mut n = 0u64;
    while n < len {
        let take = (len - n).min(MIB) as usize;
        body.extend_from_slice(&block[..take]);
        // Each MiB differs from the last in its first byte.
        let at = body.len() - take;
        body[at] ^= (n / MIB) as u8;
        n += take as u64;
    }
    Bytes::from(body)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Fails unless `path` holds `len` bytes, then deletes it, so the next
/// download starts from the same empty directory.
fn check_and_remove(path: &Path, len: u64, who: &str) -> Result<()> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("{who} left no file at {}", path.display()))?
        .len();
    if size != len {
        bail!(
            "{who} wrote {size} bytes to {}, expected {len}",
            path.display()
        );
    }
    std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))
}

/// Whether `curl` can be run.
async fn curl_available() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// What one download with curl took.
struct Curl {
    /// `curl -o dest url`, until curl exited.
    elapsed: Duration,
    /// The same, then an fsync of dest: quern makes a download durable
    /// before renaming it into place, and curl does not, so this is the
    /// like-for-like figure.
    synced: Duration,
    /// curl's own CPU time (user plus system).
    cpu: Duration,
}

/// Downloads `url` to `dest` with curl. Async, so the server on this
/// runtime keeps serving while curl runs.
async fn curl(url: &str, dest: &Path) -> Result<Curl> {
    // The bench's other children have all been waited for, so the growth
    // of this total is curl's.
    let cpu_before = own_children_cpu_time()?;
    let started = Instant::now();
    let output = Command::new("curl")
        .args(["-sS", "--fail", "--noproxy", "127.0.0.1", "-o"])
        .arg(dest)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .context("cannot run curl")?;
    let elapsed = started.elapsed();
    let cpu = own_children_cpu_time()?.saturating_sub(cpu_before);
    if !output.status.success() {
        bail!(
            "curl -o {} {url} failed ({}): {}",
            dest.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let file = dest.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&file)?.sync_all())
        .await
        .context("the fsync thread panicked")?
        .with_context(|| format!("cannot fsync {}", dest.display()))?;
    Ok(Curl {
        elapsed,
        synced: started.elapsed(),
        cpu,
    })
}

/// What one download through quern took.
struct Download {
    /// From sending Submit to receiving the `succeeded` event.
    elapsed: Duration,
    /// The daemon's own `transfer_time`: the request and the body.
    transfer: Duration,
    /// quernd's CPU time over the download.
    cpu: Duration,
}

/// Downloads `url` to `dest` through quern, verified against `sha256`.
async fn quern_download(
    daemon: &Quernd,
    client: &mut JobsClient<Channel>,
    events: &mut EventWatch,
    url: &str,
    dest: &Path,
    sha256: &str,
    deadline: tokio::time::Instant,
) -> Result<Download> {
    let mut spec = fetch_spec(url, dest);
    if let Some(job_spec::Kind::Fetch(f)) = spec.kind.as_mut() {
        // Verification is free for quern (it hashes while streaming
        // anyway), and makes success mean the bytes are right.
        f.sha256 = sha256.to_owned();
    }
    let cpu_before = daemon.cpu_time()?;
    let started = Instant::now();
    let id = client
        .submit(request(SubmitRequest { spec: Some(spec) }))
        .await
        .context("Submit failed")?
        .into_inner()
        .job
        .context("SubmitResponse has no job")?
        .id;
    let end = events
        .until(deadline, id, super::Event::is_terminal)
        .await?;
    let elapsed = started.elapsed();
    let cpu = daemon.cpu_time()?.saturating_sub(cpu_before);
    if end.state != JobState::Succeeded {
        bail!(
            "fetch job {id} of {url} ended {:?}: {}",
            end.state,
            end.error
        );
    }
    let job = client
        .get(request(GetRequest { id }))
        .await
        .context("Get failed")?
        .into_inner()
        .job
        .context("GetResponse has no job")?;
    let Some(job_result::Kind::Fetch(result)) = job.result.and_then(|r| r.kind) else {
        bail!("succeeded fetch job {id} has no fetch result");
    };
    let transfer = result
        .transfer_time
        .and_then(|d| Duration::try_from(d).ok())
        .context("the fetch result has no transfer_time")?;
    Ok(Download {
        elapsed,
        transfer,
        cpu,
    })
}

/// P7a: one download of `mib` MiB through quern and with curl, from the
/// same loopback server, alternating, best of [`ROUNDS`] each.
pub async fn download(ctx: &Ctx<'_>, mib: u64) -> Result<Run> {
    let len = mib * MIB;
    let (body, sha256) = tokio::task::spawn_blocking(move || {
        let body = large_body(len);
        let sha256 = sha256_hex(&body);
        (body, sha256)
    })
    .await
    .context("making the body panicked")?;
    // Bytes clones share the buffer: every answer is the same memory.
    let server = TestServer::start(move |_| Reply::ok(body.clone())).await?;
    let url = server.url("/p7a.bin");
    let dir = downloads_dir(ctx, "p7a")?;
    if ctx.environment.fs_type == "tmpfs" {
        eprintln!("P7a: --dir is on tmpfs, so neither download touches a disk");
    }
    let has_curl = curl_available().await;
    if !has_curl {
        eprintln!("P7a: curl is not on PATH; reporting quern's figures without the ratio");
    }

    // One request per round, seconds apart: the default config's rate
    // (4/s per host) never delays it, so the daemon runs as shipped.
    let (mut daemon, _) = ctx.start(DaemonConfig::default()).await?;
    let mut client = JobsClient::new(daemon.channel().await?);
    let mut events = EventWatch::subscribe(daemon.channel().await?).await?;

    let quern_dest = dir.path().join("quern.bin");
    let curl_dest = dir.path().join("curl.bin");
    // Each download may take up to a second per 10 MiB before the daemon
    // counts as stuck.
    let per_round = budget(0) + Duration::from_millis(100).saturating_mul(u32::try_from(mib)?);
    let mut quern = Duration::MAX;
    let mut transfer = Duration::MAX;
    let mut cpu = Duration::ZERO;
    let mut plain = Duration::MAX;
    let mut synced = Duration::MAX;
    let mut curl_cpu = Duration::ZERO;
    let mut succeeded = 0;
    for round in 0..ROUNDS {
        // Alternated, so a machine that gets busier during the run weighs
        // on both alike.
        for quern_turn in [round % 2 == 0, round % 2 == 1] {
            if quern_turn {
                let deadline = tokio::time::Instant::now() + per_round;
                let d = quern_download(
                    &daemon,
                    &mut client,
                    &mut events,
                    &url,
                    &quern_dest,
                    &sha256,
                    deadline,
                )
                .await?;
                check_and_remove(&quern_dest, len, "quern")?;
                quern = quern.min(d.elapsed);
                transfer = transfer.min(d.transfer);
                cpu += d.cpu;
                succeeded += 1;
            } else if has_curl {
                let c = curl(&url, &curl_dest).await?;
                check_and_remove(&curl_dest, len, "curl")?;
                plain = plain.min(c.elapsed);
                synced = synced.min(c.synced);
                curl_cpu += c.cpu;
            }
        }
    }

    let mut run = Run::default();
    run.check_count("fetch jobs succeeded", u64::from(ROUNDS), succeeded)?;
    let rate = |d: Duration| mib as f64 / d.as_secs_f64().max(1e-9);
    run.push(Metric::new(
        "quern_mib_s",
        "through quern (Submit -> succeeded event)",
        rate(quern),
        Unit::MiBPerSec,
    ));
    run.push(Metric::new(
        "quern_transfer_mib_s",
        "through quern, by its own transfer_time",
        rate(transfer),
        Unit::MiBPerSec,
    ));
    run.push(Metric::millis(
        "daemon_cpu",
        "quernd CPU per download",
        cpu / ROUNDS,
    ));
    if has_curl {
        run.push(Metric::new(
            "curl_mib_s",
            "curl -o FILE",
            rate(plain),
            Unit::MiBPerSec,
        ));
        run.push(Metric::millis(
            "curl_cpu",
            "curl's CPU per download",
            curl_cpu / ROUNDS,
        ));
        run.push(Metric::new(
            "curl_fsync_mib_s",
            "curl -o FILE, then fsync FILE",
            rate(synced),
            Unit::MiBPerSec,
        ));
        run.push(
            Metric::new(
                "ratio",
                "quern / curl",
                plain.as_secs_f64() / quern.as_secs_f64().max(1e-9),
                Unit::Ratio,
            )
            .target(Target::AtLeast(0.95)),
        );
        run.push(Metric::new(
            "ratio_fsync",
            "quern / (curl + fsync)",
            synced.as_secs_f64() / quern.as_secs_f64().max(1e-9),
            Unit::Ratio,
        ));
    }
    run.check_count(
        "requests the server saw",
        u64::from(ROUNDS) * (1 + u64::from(has_curl)),
        server.requests() as u64,
    )?;
    daemon.stop().await?;
    Ok(run)
}

/// P7b: `jobs` small downloads from one host limited to [`RATE`]/s, with
/// the request arrival times taken at the server.
pub async fn rate(ctx: &Ctx<'_>, jobs: u64) -> Result<Run> {
    let arrivals = Arc::new(Mutex::new(Vec::with_capacity(jobs as usize)));
    let server = {
        let arrivals = arrivals.clone();
        let body = Bytes::from(vec![b'x'; SMALL]);
        TestServer::start(move |_| {
            // Stamped in the handler, which runs as soon as hyper has read
            // the request head (a GET has no body to wait for).
            arrivals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Instant::now());
            Reply::ok(body.clone())
        })
        .await?
    };
    // The host gets 4 transfers at once, twice the default, so the only
    // thing spacing the requests is the rate.
    let config = DaemonConfig {
        tables: format!(
            "[fetch]\n[fetch.hosts.\"{}\"]\nrate = \"{RATE}/s\"\nconcurrency = 4\n",
            server.authority()
        ),
        ..DaemonConfig::default()
    };
    let dir = downloads_dir(ctx, "p7b")?;
    let (mut daemon, _) = ctx.start(config).await?;
    let mut client = JobsClient::new(daemon.channel().await?);
    let mut events = EventWatch::subscribe(daemon.channel().await?).await?;

    let specs = (0..jobs)
        .map(|i| {
            fetch_spec(
                server.url(&format!("/{i}.bin")),
                &dir.path().join(format!("{i}.bin")),
            )
        })
        .collect();
    // At the rate, the run takes jobs / RATE seconds; twice that plus a
    // minute before the daemon counts as stuck.
    let deadline =
        tokio::time::Instant::now() + budget(0) + Duration::from_secs(2 * jobs / u64::from(RATE));
    let started = Instant::now();
    submit_all(&mut client, specs).await?;
    let succeeded = wait_all(&mut events, jobs, deadline).await?;
    let elapsed = started.elapsed();

    let mut run = Run::default();
    run.check_count("fetch jobs succeeded", jobs, succeeded)?;
    let mut arrivals = arrivals.lock().unwrap_or_else(|e| e.into_inner()).clone();
    run.check_count("requests the server saw", jobs, arrivals.len() as u64)?;
    arrivals.sort_unstable();
    let (Some(first), Some(last)) = (arrivals.first(), arrivals.last()) else {
        bail!("the server saw no request");
    };
    let span = last.duration_since(*first);
    let achieved = (jobs - 1) as f64 / span.as_secs_f64().max(1e-9);
    let mut gaps: Vec<Duration> = arrivals
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .collect();
    let gap = stats::Summary::of(&mut gaps);
    let smallest = gaps.first().copied().unwrap_or_default();
    let largest = gaps.last().copied().unwrap_or_default();

    run.push(Metric::new(
        "rate",
        format!("achieved rate, (n-1) / (last - first arrival), set to {RATE}/s"),
        achieved,
        Unit::RequestsPerSec,
    ));
    run.push(
        Metric::new(
            "rate_error",
            format!("|achieved - {RATE}/s| / {RATE}/s"),
            (achieved / f64::from(RATE) - 1.0).abs() * 100.0,
            Unit::Percent,
        )
        .target(Target::AtMost(1.0)),
    );
    run.push(Metric::millis(
        "gap_p50",
        "gap between requests, p50",
        gap.p50,
    ));
    run.push(Metric::millis(
        "gap_p99",
        "gap between requests, p99",
        gap.p99,
    ));
    run.push(Metric::millis(
        "gap_min",
        "gap between requests, smallest",
        smallest,
    ));
    run.push(Metric::millis(
        "gap_max",
        "gap between requests, largest",
        largest,
    ));
    run.push(Metric::millis(
        "elapsed",
        "first SubmitBatch -> last job ended",
        elapsed,
    ));
    daemon.stop().await?;
    Ok(run)
}

/// P7c: `jobs` small downloads spread evenly over [`HOSTS`] loopback
/// servers, two at a time per host, with no rate limit.
pub async fn many_hosts(ctx: &Ctx<'_>, jobs: u64) -> Result<Run> {
    let hosts = jobs.min(HOSTS);
    let body = Bytes::from(vec![b'x'; SMALL]);
    let mut servers = Vec::new();
    for _ in 0..hosts {
        let body = body.clone();
        servers.push(TestServer::start(move |_| Reply::ok(body.clone())).await?);
    }
    // Global fetch concurrency covers every host's two slots; the default
    // rate (4/s per host) would make this a 250 s test of the rate, so it
    // is lifted: this measures the daemon, not the politeness.
    let config = DaemonConfig {
        tables: format!(
            "[fetch]\nconcurrency = {}\nper_host_concurrency = 2\ndefault_rate = \"unlimited\"\n",
            2 * hosts
        ),
        ..DaemonConfig::default()
    };
    let dir = downloads_dir(ctx, "p7c")?;
    let (mut daemon, _) = ctx.start(config).await?;
    let mut client = JobsClient::new(daemon.channel().await?);
    let mut events = EventWatch::subscribe(daemon.channel().await?).await?;

    let specs: Vec<JobSpec> = (0..jobs)
        .map(|i| {
            let server = &servers[(i % hosts) as usize];
            fetch_spec(
                server.url(&format!("/{i}.bin")),
                &dir.path().join(format!("{i}.bin")),
            )
        })
        .collect();
    // Read after the connections and the subscription are open: what a
    // daemon waiting for work holds.
    let idle = daemon.memory()?;
    let cpu_before = daemon.cpu_time()?;
    let deadline = tokio::time::Instant::now() + budget(jobs);
    let started = Instant::now();
    submit_all(&mut client, specs).await?;
    let succeeded = wait_all(&mut events, jobs, deadline).await?;
    let elapsed = started.elapsed();
    let cpu = daemon.cpu_time()?.saturating_sub(cpu_before);
    let after = daemon.memory()?;

    let mut run = Run::default();
    run.check_count("fetch jobs succeeded", jobs, succeeded)?;
    run.check_count(
        "requests the servers saw",
        jobs,
        servers.iter().map(|s| s.requests() as u64).sum(),
    )?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    run.push(Metric::millis(
        "elapsed",
        "first SubmitBatch -> last job ended",
        elapsed,
    ));
    run.push(Metric::rate("rate", "downloads", jobs, elapsed));
    run.push(Metric::millis(
        "daemon_cpu",
        "quernd CPU (utime + stime)",
        cpu,
    ));
    run.push(Metric::millis(
        "daemon_cpu_per_job",
        "quernd CPU per download",
        cpu.div_f64(jobs as f64),
    ));
    run.push(Metric::new(
        "idle_rss_mib",
        "RSS before submitting",
        mib(idle.current_kib),
        Unit::MiB,
    ));
    run.push(Metric::new(
        "idle_peak_rss_mib",
        "peak RSS before submitting (start-up included)",
        mib(idle.peak_kib),
        Unit::MiB,
    ));
    run.push(Metric::new(
        "peak_rss_mib",
        "peak RSS after the run",
        mib(after.peak_kib),
        Unit::MiB,
    ));
    run.push(
        Metric::new(
            "peak_over_idle_mib",
            "peak RSS after the run - RSS before submitting",
            mib(after.peak_kib.saturating_sub(idle.current_kib)),
            Unit::MiB,
        )
        .target(Target::AtMost(20.0)),
    );
    run.push(Metric::new(
        "hosts",
        "hosts (loopback servers)",
        hosts as f64,
        Unit::Count,
    ));
    daemon.stop().await?;
    Ok(run)
}
