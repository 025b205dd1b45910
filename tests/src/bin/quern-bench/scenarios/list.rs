//! P4: how fast `List` answers a page of 100 jobs filtered by state or by
//! kind when the store holds many jobs.
//!
//! The store gets a few finished jobs first (the oldest ids), then `jobs`
//! scheduled ones. Listing `scheduled` finds a full page at once; listing
//! `succeeded` newest first has to get past every scheduled job unless the
//! daemon indexes by state, which is what this scenario is meant to expose.
//! Every stored job is an exec job, so listing kind `exec` in any state also
//! finds a full page at once: what it shows is the cost of the kind filter
//! itself, which no state index can answer.
//!
//! The calls are timed from one thread, one at a time, and the natural limit
//! of a call is measured in the same run: a round trip of the same sizes over
//! a Unix socket, with nothing but an echo on the other end.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use prost::Message;
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{Job, JobState, ListRequest, ListResponse, job_spec};
use tonic::transport::Channel;

use super::{Ctx, EventWatch, budget, exec, fill, in_an_hour, stats};
use crate::daemon::{DaemonConfig, context_switches, cpu_time};
use crate::report::{Metric, Run, Target, Unit};
use crate::stats::Summary;

const PAGE: u32 = 100;

/// Stores `jobs` scheduled jobs plus a few succeeded ones, then times List.
pub async fn run(ctx: &Ctx<'_>, jobs: u64) -> Result<Run> {
    let (mut daemon, _) = ctx.start(DaemonConfig::default()).await?;
    let mut client = JobsClient::new(daemon.channel().await?);
    let mut run = Run::default();

    // Finished jobs: 1 per 100 stored, between 10 and 1000.
    let finished = (jobs / 100).clamp(10, 1_000);
    let mut events = EventWatch::subscribe(daemon.channel().await?).await?;
    fill(&mut client, finished, &exec(&["/bin/true"], None)).await?;
    let deadline = tokio::time::Instant::now() + budget(finished);
    let mut ended = 0;
    while ended < finished {
        if events.next(deadline).await?.is_terminal() {
            ended += 1;
        }
    }
    drop(events);

    let filled = fill(&mut client, jobs, &exec(&["true"], Some(in_an_hour()))).await?;
    run.push(Metric::rate(
        "fill_rate",
        "filling the store (SubmitBatch)",
        jobs,
        filled.elapsed,
    ));
    let counts = stats(&mut client).await?;
    run.check_count("scheduled jobs in Stats", jobs, counts.scheduled)?;
    run.check_count("succeeded jobs in Stats", finished, counts.succeeded)?;

    // Enough calls for a p99 that means something, fewer for tiny stores.
    let calls = jobs.clamp(100, 1_000);
    let socket = daemon.socket().to_path_buf();
    let pid = daemon.pid()?;
    let timed = tokio::task::spawn_blocking(move || {
        // The calls are made from one thread with its own single-threaded
        // runtime, as a command-line client or a script would make them.
        // On the bench's shared multi-threaded runtime every call also
        // passed between the bench's own threads, and on this 2-core
        // machine those wake-ups were as costly as the daemon's side.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a runtime for the List client")?
            .block_on(time_calls(&socket, pid, jobs, finished, calls))
    })
    .await
    .context("the List client panicked")??;
    let (request_bytes, reply_bytes) = (timed.request_bytes, timed.reply_bytes);
    let (mut floor, across) =
        tokio::task::spawn_blocking(move || raw_round_trips(request_bytes, reply_bytes, calls))
            .await
            .context("the raw round trip loop panicked")??;
    for (walk, seen) in timed.walks.iter().enumerate() {
        run.check_count(
            format!("scheduled jobs seen in paging walk {}", walk + 1),
            jobs,
            *seen,
        )?;
    }
    for (walk, seen) in timed.kind_walks.iter().enumerate() {
        run.check_count(
            format!("exec jobs seen in paging walk {}", walk + 1),
            jobs + finished,
            *seen,
        )?;
    }
    let Timed {
        mut first,
        mut paging,
        mut sparse,
        mut kind_first,
        mut kind_paging,
        ..
    } = timed;
    // The natural limit of a List call on this machine, in the same run:
    // each variant's p99 is also given as a multiple of it.
    let raw = Summary::of(&mut floor);
    let raw_label = if across {
        format!("raw round trip across two cores, {request_bytes} B out, {reply_bytes} B back")
    } else {
        format!("raw round trip, {request_bytes} B out, {reply_bytes} B back")
    };

    for (key, label, variant) in [
        ("scheduled_first", "scheduled, first page", &mut first),
        (
            "scheduled_paging",
            "scheduled, following page_token",
            &mut paging,
        ),
        (
            "succeeded_first",
            "succeeded (1 in 100), first page",
            &mut sparse,
        ),
        (
            "kind_exec_first",
            "kind exec (every job), first page",
            &mut kind_first,
        ),
        (
            "kind_exec_paging",
            "kind exec (every job), following page_token",
            &mut kind_paging,
        ),
    ] {
        let s = Summary::of(&mut variant.samples);
        run.push(Metric::millis(
            format!("{key}_p50"),
            format!("{label}, p50"),
            s.p50,
        ));
        run.push(
            Metric::millis(format!("{key}_p99"), format!("{label}, p99"), s.p99)
                .target(Target::AtMost(2.0)),
        );
        run.push(Metric::new(
            format!("{key}_p99_over_raw"),
            format!("{label}, p99 / raw round trip p99"),
            s.p99.as_secs_f64() / raw.p99.as_secs_f64().max(f64::MIN_POSITIVE),
            Unit::Ratio,
        ));
        // The daemon's own CPU per call: steadier than the latencies on a
        // noisy machine, and the figure to compare builds by.
        run.push(Metric::millis(
            format!("{key}_daemon_cpu"),
            format!("{label}, quernd CPU per call"),
            variant.daemon_cpu.div_f64(calls as f64),
        ));
        run.push(Metric::new(
            format!("{key}_daemon_switches"),
            format!("{label}, quernd context switches per call"),
            variant.daemon_switches as f64 / calls as f64,
            Unit::Mean,
        ));
    }
    run.push(Metric::millis(
        "raw_round_trip_p50",
        format!("{raw_label}, p50"),
        raw.p50,
    ));
    run.push(Metric::millis(
        "raw_round_trip_p99",
        format!("{raw_label}, p99"),
        raw.p99,
    ));
    daemon.stop().await?;
    Ok(run)
}

/// The List calls of one variant: their latencies, and the daemon CPU
/// they used together.
#[derive(Default)]
struct Variant {
    samples: Vec<Duration>,
    daemon_cpu: Duration,
    daemon_switches: u64,
}

/// What the List client measured.
struct Timed {
    first: Variant,
    paging: Variant,
    sparse: Variant,
    kind_first: Variant,
    kind_paging: Variant,
    /// For each paging walk through the scheduled jobs that reached the end,
    /// the jobs it saw.
    walks: Vec<u64>,
    /// The same for the walks through the exec jobs.
    kind_walks: Vec<u64>,
    /// The encoded sizes of a first-page request and its response.
    request_bytes: usize,
    reply_bytes: usize,
}

/// Makes `calls` List calls of each variant on a fresh connection.
async fn time_calls(
    socket: &Path,
    pid: u32,
    jobs: u64,
    finished: u64,
    calls: u64,
) -> Result<Timed> {
    let mut client = JobsClient::new(
        quern_proto::connect(socket)
            .await
            .with_context(|| format!("cannot connect to quernd at {}", socket.display()))?,
    );
    let page = u64::from(PAGE);
    let scheduled = Filter::State(JobState::Scheduled);
    let (first, reply_bytes) =
        first_pages(&mut client, pid, scheduled, jobs.min(page), calls).await?;
    let (paging, walks) = walk_pages(&mut client, pid, scheduled, calls).await?;
    let succeeded = Filter::State(JobState::Succeeded);
    let (sparse, _) = first_pages(&mut client, pid, succeeded, finished.min(page), calls).await?;
    // The kind filter runs last, so that the state filters' figures are
    // measured just as in runs from before it was part of P4.
    let exec = Filter::Kind("exec");
    let stored = jobs + finished;
    let (kind_first, _) = first_pages(&mut client, pid, exec, stored.min(page), calls).await?;
    let (kind_paging, kind_walks) = walk_pages(&mut client, pid, exec, calls).await?;
    Ok(Timed {
        first,
        paging,
        sparse,
        kind_first,
        kind_paging,
        walks,
        kind_walks,
        request_bytes: scheduled.request(String::new()).encoded_len(),
        reply_bytes,
    })
}

/// Lists the first page of `filter` `calls` times; every page must hold
/// `len` jobs. Also returns the encoded size of the last response.
async fn first_pages(
    client: &mut JobsClient<Channel>,
    pid: u32,
    filter: Filter,
    len: u64,
    calls: u64,
) -> Result<(Variant, usize)> {
    let mut variant = Variant::default();
    let mut reply_bytes = 0;
    let cpu = cpu_time(pid)?;
    let switches = context_switches(pid)?;
    for _ in 0..calls {
        let started = Instant::now();
        let page = list(client, filter, String::new()).await?;
        variant.samples.push(started.elapsed());
        expect_page(&page, filter, len)?;
        reply_bytes = page.encoded_len();
    }
    variant.daemon_cpu = cpu_time(pid)?.saturating_sub(cpu);
    variant.daemon_switches = context_switches(pid)?.saturating_sub(switches);
    Ok((variant, reply_bytes))
}

/// Makes `calls` List calls of `filter` following page tokens from the
/// newest job down, starting over when the last page is reached. Also
/// returns, for each walk that reached the end, how many jobs it saw, for
/// the caller to check against how many jobs the filter admits.
async fn walk_pages(
    client: &mut JobsClient<Channel>,
    pid: u32,
    filter: Filter,
    calls: u64,
) -> Result<(Variant, Vec<u64>)> {
    let mut variant = Variant::default();
    let mut walks = Vec::new();
    let cpu = cpu_time(pid)?;
    let switches = context_switches(pid)?;
    let mut token = String::new();
    let mut seen = 0u64;
    for _ in 0..calls {
        let started = Instant::now();
        let page = list(client, filter, std::mem::take(&mut token)).await?;
        variant.samples.push(started.elapsed());
        expect_filtered(&page, filter)?;
        seen += page.jobs.len() as u64;
        token = page.next_page_token;
        if token.is_empty() {
            walks.push(seen);
            seen = 0;
        }
    }
    variant.daemon_cpu = cpu_time(pid)?.saturating_sub(cpu);
    variant.daemon_switches = context_switches(pid)?.saturating_sub(switches);
    Ok((variant, walks))
}

/// The calling thread's CPU set.
fn own_cpus() -> Option<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and the kernel
    // writes at most its size into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

/// A set of the one CPU `cpu`.
fn only(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and `cpu` comes
    // from a set the kernel returned, so it is below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Moves the calling thread (or, in a forked child, the process) to `set`.
fn set_cpus(set: &libc::cpu_set_t) -> bool {
    // SAFETY: a plain system call on a set that outlives it; it is
    // async-signal-safe, so a forked child may make it too.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) == 0 }
}

/// Times `calls` round trips of `request` bytes out and `reply` bytes back
/// over a Unix socket to a forked child that only echoes: the natural limit
/// of one List call on this machine, with no gRPC, HTTP/2 or store in
/// between. The echo runs in a child process, as quernd does.
///
/// With two CPUs or more, the child and this thread are pinned to two
/// different ones, which is where a client and a daemon usually are.
/// Left to the kernel, the two sometimes shared a core, and a round trip
/// then took 4 µs instead of ~70 (2026-11-30), which made the floor, and
/// every ratio to it, depend on the run's luck.
/// Returns the samples, and whether the two were on different cores.
fn raw_round_trips(request: usize, reply: usize, calls: u64) -> Result<(Vec<Duration>, bool)> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    let before = own_cpus();
    let cpus: Vec<usize> = before
        .map(|set| {
            (0..libc::CPU_SETSIZE as usize)
                // SAFETY: reads a bit of a set the kernel filled in, below
                // its size.
                .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
                .collect()
        })
        .unwrap_or_default();
    let pinned = match cpus[..] {
        [ours, theirs, ..] => Some((only(ours), only(theirs))),
        _ => None,
    };
    let (mut ours, theirs) =
        std::os::unix::net::UnixStream::pair().context("cannot create a socket pair")?;
    let mut inbox = vec![0u8; request];
    let outbox = vec![7u8; reply];
    // SAFETY: the child only calls read, write and _exit, which are
    // async-signal-safe, on memory allocated before the fork; it never
    // returns into Rust code that could touch the parent's other threads'
    // state.
    let child = unsafe { libc::fork() };
    if child < 0 {
        bail!("cannot fork: {}", std::io::Error::last_os_error());
    }
    if child == 0 {
        let fd = theirs.as_raw_fd();
        // SAFETY: as above; the buffers outlive the loop, and the lengths
        // passed are theirs.
        unsafe {
            libc::close(ours.as_raw_fd());
            if let Some((_, cpu)) = &pinned {
                set_cpus(cpu);
            }
            loop {
                let mut got = 0;
                while got < request {
                    let n = libc::read(fd, inbox.as_mut_ptr().add(got).cast(), request - got);
                    if n <= 0 {
                        libc::_exit(0);
                    }
                    got += n as usize;
                }
                let mut sent = 0;
                while sent < reply {
                    let n = libc::write(fd, outbox.as_ptr().add(sent).cast(), reply - sent);
                    if n <= 0 {
                        libc::_exit(1);
                    }
                    sent += n as usize;
                }
            }
        }
    }
    drop(theirs);
    if let Some((cpu, _)) = &pinned {
        set_cpus(cpu);
    }
    let out = vec![1u8; request];
    let mut back = vec![0u8; reply];
    let mut samples = Vec::with_capacity(calls as usize);
    let timed = (|| -> std::io::Result<()> {
        for _ in 0..calls {
            let started = Instant::now();
            ours.write_all(&out)?;
            ours.read_exact(&mut back)?;
            samples.push(started.elapsed());
        }
        Ok(())
    })();
    drop(ours);
    // This is a pooled thread: give it its CPUs back.
    if let (Some(_), Some(set)) = (&pinned, &before) {
        set_cpus(set);
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above, which exits once its end of
    // the socket reads end of file.
    unsafe { libc::waitpid(child, &mut status, 0) };
    timed.context("the raw round trip to the echoing child failed")?;
    Ok((samples, pinned.is_some()))
}

/// What a variant lists by.
#[derive(Debug, Clone, Copy)]
enum Filter {
    /// Jobs in one state.
    State(JobState),
    /// Jobs of one kind, in any state.
    Kind(&'static str),
}

impl Filter {
    /// A request for a page of jobs that pass, after `page_token` (the
    /// first page when empty).
    fn request(self, page_token: String) -> ListRequest {
        let (states, kind) = match self {
            Filter::State(state) => (vec![state.into()], String::new()),
            Filter::Kind(kind) => (Vec::new(), kind.to_owned()),
        };
        ListRequest {
            states,
            kind,
            page_size: PAGE,
            page_token,
            ..ListRequest::default()
        }
    }

    /// Whether `job` belongs in a listing by this filter.
    fn admits(self, job: &Job) -> bool {
        match self {
            Filter::State(state) => job.state() == state,
            Filter::Kind(kind) => kind_of(job) == Some(kind),
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::State(state) => write!(f, "{state:?} jobs"),
            Filter::Kind(kind) => write!(f, "{kind} jobs"),
        }
    }
}

/// The name `ListRequest.kind` gives the job's kind, if it has one.
fn kind_of(job: &Job) -> Option<&'static str> {
    // Matched in full, so that a new kind cannot be added to the proto
    // without saying here what List calls it.
    match job.spec.as_ref()?.kind.as_ref()? {
        job_spec::Kind::Exec(_) => Some("exec"),
        job_spec::Kind::Fetch(_) => Some("fetch"),
        job_spec::Kind::Git(_) => Some("git"),
    }
}

async fn list(
    client: &mut JobsClient<Channel>,
    filter: Filter,
    page_token: String,
) -> Result<ListResponse> {
    Ok(client
        .list(super::request(filter.request(page_token)))
        .await
        .context("List failed")?
        .into_inner())
}

fn expect_page(page: &ListResponse, filter: Filter, len: u64) -> Result<()> {
    if page.jobs.len() as u64 != len {
        bail!(
            "List of {filter} returned {} jobs, expected {len}",
            page.jobs.len()
        );
    }
    expect_filtered(page, filter)
}

fn expect_filtered(page: &ListResponse, filter: Filter) -> Result<()> {
    match page.jobs.iter().find(|j| !filter.admits(j)) {
        Some(j) => bail!(
            "List of {filter} returned job {} in {:?} of kind {}",
            j.id,
            j.state(),
            kind_of(j).unwrap_or("(none)")
        ),
        None => Ok(()),
    }
}
