//! The gRPC layer: a thin adapter from `quern.v1.Jobs` to the jobs service
//! and the log store. Each handler converts the request (`convert.rs`,
//! where every check of a request lives), calls the domain, and converts
//! the answer back. Proto types never leave this module.

mod convert;
mod feeds;
mod status;
mod watches;

use std::pin::Pin;
use std::sync::Arc;

use quern_proto::v1 as pb;
use quern_proto::v1::jobs_server::Jobs as JobsApi;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::Error;
use crate::jobs::Jobs;
use crate::logs::LogStore;
use crate::retention::Retention;
use crate::store::EventsPage;
use feeds::{EventFeed, LogFeed, REPLAY_PAGE};

/// How long a stream cut by shutdown waits to tell its client so.
const STREAM_END_NOTICE: std::time::Duration = std::time::Duration::from_secs(1);

pub use convert::limits;
pub use watches::WatchesService;

/// A git result in the JSON form clients read back from a result file
/// (`quern_proto::json`): what the git kind writes when a result is over
/// `[git] max_result_bytes`. Given to the kind through `KindEnv`, so that
/// the domain never sees the wire's shapes.
pub fn git_result_json(r: &crate::job::git::GitResult) -> String {
    quern_proto::json::git_result_json(&convert::git::git_result_to_proto(r)).to_string()
}

/// The `quern.v1.Jobs` service.
pub struct JobsService {
    jobs: Jobs,
    logs: Arc<LogStore>,
    retention: Arc<Retention>,
    config: Arc<Config>,
    /// Fires on shutdown, ending long-lived streams.
    shutdown: CancellationToken,
    /// The watch rules, whose changes Events carries.
    watches: Option<crate::watch::rules::Watches>,
}

impl JobsService {
    /// Builds the service over the daemon's subsystems.
    pub fn new(
        jobs: Jobs,
        logs: Arc<LogStore>,
        retention: Arc<Retention>,
        config: Arc<Config>,
        shutdown: CancellationToken,
    ) -> JobsService {
        JobsService {
            jobs,
            logs,
            retention,
            config,
            shutdown,
            watches: None,
        }
    }

    /// Lets Events carry the changes of `watches`' rules.
    pub fn with_watches(mut self, watches: crate::watch::rules::Watches) -> JobsService {
        self.watches = Some(watches);
        self
    }

    /// The job with its live progress, in proto form. Only a running job
    /// can have progress, so only its lookup takes the board's lock (a
    /// List page would otherwise take it a hundred times).
    fn job(&self, job: &crate::job::Job) -> pb::Job {
        JobsService::job_of(&self.jobs, job)
    }

    /// [`JobsService::job`] for other services of the API.
    fn job_of(jobs: &Jobs, job: &crate::job::Job) -> pb::Job {
        let running = job.state.tag() == crate::job::StateTag::Running;
        let progress = running.then(|| jobs.progress(job.id)).flatten();
        convert::job_to_proto(job, progress.as_ref())
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The uid of the user on the other end of the request's connection. Every
/// connection quernd accepts is from a Unix socket whose peer credentials
/// were read at accept; without them (a test serving another transport)
/// the caller counts as the daemon's own user.
fn peer_uid<T>(req: &Request<T>) -> u32 {
    req.extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map_or_else(|| nix::unistd::getuid().as_raw(), |cred| cred.uid())
}

#[tonic::async_trait]
impl JobsApi for JobsService {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let owner = peer_uid(&req);
        let spec = convert::submit_from_proto(req.into_inner(), self.jobs.now())?;
        let sub = self.jobs.submit(spec, owner).await?;
        Ok(Response::new(pb::SubmitResponse {
            job: Some(self.job(&sub.job)),
            deduplicated: sub.deduplicated,
        }))
    }

    async fn submit_batch(
        &self,
        req: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let owner = peer_uid(&req);
        let specs = convert::submit_batch_from_proto(req.into_inner(), self.jobs.now())?;
        let subs = self.jobs.submit_batch(specs, owner).await?;
        Ok(Response::new(pb::SubmitBatchResponse {
            ids: subs.iter().map(|s| s.job.id).collect(),
        }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let id = convert::job_id(req.into_inner().id, "id")?;
        let job = self.jobs.get(id).await?;
        Ok(Response::new(pb::GetResponse {
            job: Some(self.job(&job)),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let q = convert::list_from_proto(req.into_inner())?;
        let (jobs, next) = self.jobs.list(q).await?;
        Ok(Response::new(pb::ListResponse {
            jobs: jobs.iter().map(|j| self.job(j)).collect(),
            next_page_token: convert::page_token(next),
        }))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let (id, grace) = convert::cancel_from_proto(req.into_inner(), self.config.default_grace)?;
        let job = self.jobs.cancel(id, grace).await?;
        Ok(Response::new(pb::CancelResponse {
            job: Some(self.job(&job)),
        }))
    }

    type EventsStream = BoxStream<pb::EventsResponse>;

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let r = convert::events_from_proto(req.into_inner())?;
        // Subscribe before reading anything stored, so that no event falls
        // between the replay and the live feed; duplicates are dropped by
        // seq in the feed.
        let live = self.jobs.subscribe();
        let progress = r.progress.then(|| self.jobs.subscribe_progress());
        let hosts = r.hosts.then(|| self.jobs.subscribe_hosts());
        let watches = if r.watches {
            Some(
                self.watches
                    .as_ref()
                    .ok_or_else(|| Error::Unavailable("watch rules are not running".into()))?
                    .subscribe(),
            )
        } else {
            None
        };
        let (last, first_page) = match r.after_seq {
            Some(after) => match self.jobs.events_after(after, REPLAY_PAGE, r.job).await? {
                EventsPage::Events(evs) => (after, evs),
                EventsPage::Pruned { first_retained } => {
                    return Err(Error::OutOfRange(format!(
                        "events after seq {after} are no longer kept (the oldest kept is {first_retained}); resync with List, then resume from Stats.last_event_seq"
                    ))
                    .into());
                }
            },
            None => (self.jobs.counters().await?.last_seq(), Vec::new()),
        };
        let (tx, rx) = mpsc::channel(256);
        let feed = EventFeed::new(self.jobs.clone(), r.job, last, tx);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = feed.run(first_page, live, progress, hosts, watches) => {}
                _ = shutdown.cancelled() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type LogsStream = BoxStream<pb::LogsResponse>;

    async fn logs(
        &self,
        req: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = convert::logs_from_proto(req.into_inner())?;
        // Fail fast on an unknown id, before the stream starts.
        self.jobs.get(r.job).await?;
        let (tx, rx) = mpsc::channel(64);
        let feed = LogFeed::new(
            self.jobs.clone(),
            self.logs.clone(),
            r.job,
            r.streams,
            tx.clone(),
        );
        let shutdown = self.shutdown.clone();
        let id = r.job;
        tokio::spawn(async move {
            tokio::select! {
                _ = feed.run(r.follow, r.offset, r.limit) => {}
                _ = shutdown.cancelled() => {
                    // The end of a Logs stream means "that is all the
                    // output": one cut short must say it was. A client
                    // that reads nothing any more is not waited for long.
                    let stop = Status::unavailable(format!(
                        "quernd is shutting down; the output of job {id} was not sent to its end; ask again once it is back"
                    ));
                    let _ = tokio::time::timeout(STREAM_END_NOTICE, tx.send(Err(stop))).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stats(
        &self,
        _req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let c = self.jobs.counters().await?;
        let mut stats = convert::stats_to_proto(&c, self.config.concurrency);
        let (hosts, fetch_concurrency) = self.jobs.hosts();
        stats.fetch_concurrency = u32::try_from(fetch_concurrency).unwrap_or(u32::MAX);
        stats.hosts = hosts.iter().map(convert::host_to_proto).collect();
        Ok(Response::new(stats))
    }

    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let r = req.into_inner();
        let policy = convert::prune_from_proto(&r, self.retention.policy())?;
        let pruned = self
            .retention
            .prune(policy, r.dry_run)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::PruneResponse {
            jobs: pruned.jobs,
            events: pruned.events,
            log_bytes: pruned.log_bytes,
        }))
    }
}

#[cfg(test)]
mod tests;
