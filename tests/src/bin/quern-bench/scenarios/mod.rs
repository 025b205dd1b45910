//! The scenarios of issues 3, 14, 15 and 16, and what they share: starting a daemon, building
//! no-op job specs, bulk filling the store, and following the Events stream.

mod capture;
mod fetch;
mod git;
mod latency;
mod list;
mod memory;
mod restart;
mod retention;
mod submit;
mod throughput;
mod watch;

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use prost_types::Timestamp;
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{
    EventsRequest, ExecSpec, JobSpec, JobState, StatsRequest, StatsResponse, SubmitBatchRequest,
    job_spec,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::args::Options;
use crate::daemon::{DaemonConfig, Quernd, Startup};
use crate::environment::Environment;
use crate::report::Run;

/// Jobs per `SubmitBatch` call when filling the store: the size P1b measures.
pub const BATCH: u64 = 10_000;

/// One benchmark scenario; see docs/benchmarks.md for what each measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `Submit` throughput at several client counts.
    P1a,
    /// `SubmitBatch` throughput.
    P1b,
    /// Per-invocation cost of `quernctl submit`.
    P1c,
    /// Latency from submit to started.
    P2,
    /// End-to-end throughput of no-op jobs against a raw spawn loop.
    P3,
    /// `List` latency over a large store.
    P4,
    /// Daemon peak RSS with many queued jobs.
    P5,
    /// Restart time after SIGTERM with many jobs stored.
    P6,
    /// Restart time after kill -9 with many jobs stored.
    P6b,
    /// One large fetch download against curl.
    P7a,
    /// A per-host fetch rate held over many small downloads.
    P7b,
    /// Memory and CPU of many small fetch downloads over 10 hosts.
    P7c,
    /// The git kind's commit walk against git rev-list.
    P8a,
    /// The git kind's churn against git log --numstat, and a re-run.
    P8b,
    /// Latency from a write to its watch rule's job start.
    P9a,
    /// A burst of files in new directories under a watch rule.
    P9b,
    /// A watch rule over a big tree: add time, idle CPU, memory.
    P9c,
    /// Disk use under a steady stream of jobs, with retention on.
    P10,
    /// What capturing a job's output costs against /dev/null.
    P13,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Scenario; 19] = [
        Scenario::P1a,
        Scenario::P1b,
        Scenario::P1c,
        Scenario::P2,
        Scenario::P3,
        Scenario::P4,
        Scenario::P5,
        Scenario::P6,
        Scenario::P6b,
        Scenario::P7a,
        Scenario::P7b,
        Scenario::P7c,
        Scenario::P8a,
        Scenario::P8b,
        Scenario::P9a,
        Scenario::P9b,
        Scenario::P9c,
        Scenario::P10,
        Scenario::P13,
    ];

    /// Finds a scenario by its id, ignoring case.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.id().eq_ignore_ascii_case(name))
    }

    /// The id used in issue 3 and on the command line.
    pub fn id(self) -> &'static str {
        match self {
            Scenario::P1a => "P1a",
            Scenario::P1b => "P1b",
            Scenario::P1c => "P1c",
            Scenario::P2 => "P2",
            Scenario::P3 => "P3",
            Scenario::P4 => "P4",
            Scenario::P5 => "P5",
            Scenario::P6 => "P6",
            Scenario::P6b => "P6b",
            Scenario::P7a => "P7a",
            Scenario::P7b => "P7b",
            Scenario::P7c => "P7c",
            Scenario::P8a => "P8a",
            Scenario::P8b => "P8b",
            Scenario::P9a => "P9a",
            Scenario::P9b => "P9b",
            Scenario::P9c => "P9c",
            Scenario::P10 => "P10",
            Scenario::P13 => "P13",
        }
    }

    /// A one-line description.
    pub fn title(self) -> &'static str {
        match self {
            Scenario::P1a => "Submit: durable jobs/s with concurrent clients",
            Scenario::P1b => "SubmitBatch: durable jobs/s, 10k jobs per call",
            Scenario::P1c => "quernctl submit exec --in 1h -- true: cost per invocation",
            Scenario::P2 => "submit -> started latency of /bin/true on an idle daemon",
            Scenario::P3 => "no-op exec jobs end to end vs a raw spawn+wait loop",
            Scenario::P4 => "List, page size 100, filtered by state or kind, over a full store",
            Scenario::P5 => "daemon peak RSS with N queued jobs vs 1k",
            Scenario::P6 => "restart (SIGTERM, start) with N jobs stored, until SERVING",
            Scenario::P6b => "restart after kill -9 with N jobs stored, until SERVING",
            Scenario::P7a => "one N MiB fetch from a loopback server: quern vs curl -o FILE",
            Scenario::P7b => "N small fetches from one host limited to 20/s: rate at the server",
            Scenario::P7c => "N small fetches from 10 hosts, 2 at a time each: time, CPU, RSS",
            Scenario::P8a => "git kind: walk N commits (a summary job) vs git rev-list --count",
            Scenario::P8b => {
                "git kind: churn of N commits vs git log --numstat; re-run after 10 more (P8c)"
            }
            Scenario::P9a => "N writes under a rule with a 50 ms debounce: write -> job started",
            Scenario::P9b => "a burst of N files in N/100 new directories: jobs made, paths missed",
            Scenario::P9c => "a rule over a tree of N files: Add time, idle CPU, RSS over no rule",
            Scenario::P10 => "store and log dir size as N no-op jobs run, keeping N/10 finished",
            Scenario::P13 => "a job printing N MiB: through quern vs to a file vs to /dev/null",
        }
    }

    /// The size issue 3 asks for: jobs per client level for P1a, samples for
    /// P2, stored jobs for P4-P6, MiB of output for P13; and issue 14: MiB
    /// of the download for P7a, downloads for P7b and P7c.
    pub fn default_jobs(self) -> u64 {
        match self {
            Scenario::P1a => 50_000,
            Scenario::P1b => 200_000,
            Scenario::P1c => 10_000,
            Scenario::P2 => 1_000,
            Scenario::P3 => 20_000,
            Scenario::P4 | Scenario::P5 | Scenario::P6 | Scenario::P6b | Scenario::P10 => 1_000_000,
            Scenario::P7a => 1_024,
            Scenario::P7b => 1_000,
            Scenario::P7c => 10_000,
            Scenario::P8a | Scenario::P8b => 50_000,
            Scenario::P9a => 200,
            Scenario::P9b | Scenario::P9c => 100_000,
            Scenario::P13 => 2_000,
        }
    }

    /// Runs the scenario once, on a daemon of its own.
    pub async fn run(self, ctx: &Ctx<'_>, jobs: u64) -> Result<Run> {
        let run = match self {
            Scenario::P1a => submit::concurrent(ctx, jobs).await,
            Scenario::P1b => submit::batch(ctx, jobs).await,
            Scenario::P1c => submit::cli(ctx, jobs).await,
            Scenario::P2 => latency::run(ctx, jobs).await,
            Scenario::P3 => throughput::run(ctx, jobs).await,
            Scenario::P4 => list::run(ctx, jobs).await,
            Scenario::P5 => memory::run(ctx, jobs).await,
            Scenario::P6 => restart::run(ctx, jobs, restart::Stop::Term).await,
            Scenario::P6b => restart::run(ctx, jobs, restart::Stop::Kill).await,
            Scenario::P7a => fetch::download(ctx, jobs).await,
            Scenario::P7b => fetch::rate(ctx, jobs).await,
            Scenario::P7c => fetch::many_hosts(ctx, jobs).await,
            Scenario::P8a => git::walk(ctx, jobs).await,
            Scenario::P8b => git::churn(ctx, jobs).await,
            Scenario::P9a => watch::latency(ctx, jobs).await,
            Scenario::P9b => watch::burst(ctx, jobs).await,
            Scenario::P9c => watch::idle(ctx, jobs).await,
            Scenario::P10 => retention::run(ctx, jobs).await,
            Scenario::P13 => capture::run(ctx, jobs).await,
        };
        run.with_context(|| format!("scenario {} failed", self.id()))
    }
}

/// What a scenario run may use.
pub struct Ctx<'a> {
    /// The command line.
    pub options: &'a Options,
    /// The machine, including the fsync latency P1 compares against.
    pub environment: &'a Environment,
}

impl Ctx<'_> {
    /// Starts a fresh daemon for this run.
    pub async fn start(&self, config: DaemonConfig) -> Result<(Quernd, Startup)> {
        Quernd::start(&self.options.quernd, &self.options.dir, config).await
    }
}

/// The longest a unary call may take. Far beyond any target (a SubmitBatch
/// of 10k jobs should take tens of milliseconds), so only a hang trips it.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// Wraps a message in a request with a deadline. tonic's client enforces the
/// `grpc-timeout` it sends, so a daemon that never answers fails the call
/// instead of hanging the bench.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(RPC_TIMEOUT);
    request
}

/// How long to wait for `jobs` jobs to be processed before calling the
/// daemon stuck: a minute plus 5 ms a job, far beyond any target, so only a
/// hang trips it.
pub fn budget(jobs: u64) -> Duration {
    Duration::from_secs(60)
        + Duration::from_millis(5).saturating_mul(u32::try_from(jobs).unwrap_or(u32::MAX))
}

/// An hour from now: jobs due then stay `scheduled` for the whole run.
pub fn in_an_hour() -> Timestamp {
    Timestamp::from(SystemTime::now() + Duration::from_secs(3600))
}

/// An exec job of `argv`, due at `run_at` (now when `None`).
pub fn exec(argv: &[&str], run_at: Option<Timestamp>) -> JobSpec {
    JobSpec {
        kind: Some(job_spec::Kind::Exec(ExecSpec {
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            ..ExecSpec::default()
        })),
        run_at,
        ..JobSpec::default()
    }
}

/// The outcome of storing many jobs with `SubmitBatch`.
pub struct Fill {
    /// How long all the calls took.
    pub elapsed: Duration,
    /// The duration of each call.
    pub calls: Vec<Duration>,
}

/// Stores `jobs` copies of `spec` with `SubmitBatch` calls of up to
/// [`BATCH`] jobs, one after another, checking every call stored its whole
/// batch under fresh ids.
pub async fn fill(client: &mut JobsClient<Channel>, jobs: u64, spec: &JobSpec) -> Result<Fill> {
    let mut calls = Vec::new();
    let mut last_id = 0;
    let mut left = jobs;
    let started = Instant::now();
    while left > 0 {
        let n = left.min(BATCH);
        let specs = vec![spec.clone(); usize::try_from(n)?];
        let call = Instant::now();
        let ids = client
            .submit_batch(request(SubmitBatchRequest { specs }))
            .await
            .context("SubmitBatch failed")?
            .into_inner()
            .ids;
        calls.push(call.elapsed());
        if ids.len() as u64 != n {
            bail!("SubmitBatch of {n} jobs returned {} ids", ids.len());
        }
        // Ids only grow, so a batch's ids must be increasing and above the
        // previous batch's: anything else means jobs were merged or reused.
        for &id in &ids {
            if id <= last_id {
                bail!("SubmitBatch returned id {id} after id {last_id}; ids must increase");
            }
            last_id = id;
        }
        left -= n;
    }
    Ok(Fill {
        elapsed: started.elapsed(),
        calls,
    })
}

/// The daemon's counts by state.
pub async fn stats(client: &mut JobsClient<Channel>) -> Result<StatsResponse> {
    Ok(client
        .stats(request(StatsRequest {}))
        .await
        .context("Stats failed")?
        .into_inner())
}

/// A job state change, stamped with when the bench received it.
#[derive(Debug, Clone)]
pub struct Event {
    /// When the message arrived in the bench process.
    pub received: Instant,
    /// The job it is about.
    pub job_id: u64,
    /// The state the job entered.
    pub state: JobState,
    /// Why an attempt failed, if it did.
    pub error: String,
}

impl Event {
    /// Whether the job is finished for good.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.state,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// Follows the daemon's Events stream from the moment of subscribing.
///
/// A task reads the stream as fast as it arrives and stamps each event, so
/// the bench's own pace (it may be busy submitting) never delays the stamp or
/// makes the daemon buffer.
pub struct EventWatch {
    events: mpsc::UnboundedReceiver<Result<Event, tonic::Status>>,
    reader: JoinHandle<()>,
}

impl EventWatch {
    /// Subscribes to all jobs' events.
    pub async fn subscribe(channel: Channel) -> Result<Self> {
        let mut client = JobsClient::new(channel);
        // Resuming after the current last sequence number, rather than asking
        // for live events only, guarantees no event of a job submitted after
        // this call is missed, however the server registers live listeners.
        let after_seq = stats(&mut client).await?.last_event_seq;
        // A deadline on a streaming call would cut the stream, so only the
        // wait for the stream to open is bounded.
        let opening = client.events(EventsRequest {
            after_seq: Some(after_seq),
            job_id: 0,
            progress: false,
            hosts: false,
            watches: false,
        });
        let mut stream = tokio::time::timeout(RPC_TIMEOUT, opening)
            .await
            .context("Events did not open in time")?
            .context("Events failed")?
            .into_inner();
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                let item = match stream.message().await {
                    Ok(Some(e)) => Ok(Event {
                        received: Instant::now(),
                        job_id: e.job_id,
                        state: e.state(),
                        error: e.error,
                    }),
                    // The daemon ended the stream; the receiver sees the
                    // channel close.
                    Ok(None) => break,
                    Err(status) => Err(status),
                };
                let failed = item.is_err();
                if tx.send(item).is_err() || failed {
                    break;
                }
            }
        });
        Ok(EventWatch { events, reader })
    }

    /// The next event, or an error if none arrives before `deadline`.
    pub async fn next(&mut self, deadline: tokio::time::Instant) -> Result<Event> {
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Err(_) => bail!("no job event arrived in time; the daemon seems stuck"),
            Ok(None) => bail!("the daemon ended the Events stream"),
            Ok(Some(Err(status))) => Err(status).context("the Events stream failed"),
            Ok(Some(Ok(event))) => Ok(event),
        }
    }

    /// Skips events until one about `job_id` satisfies `wanted`.
    pub async fn until(
        &mut self,
        deadline: tokio::time::Instant,
        job_id: u64,
        wanted: impl Fn(&Event) -> bool,
    ) -> Result<Event> {
        loop {
            let event = self.next(deadline).await?;
            if event.job_id == job_id && wanted(&event) {
                return Ok(event);
            }
        }
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
