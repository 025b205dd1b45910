//! The gRPC layer: a thin adapter from `quern.v1.Jobs` to the store, the
//! scheduler and the log store. Proto types never leave this module.

mod convert;
mod status;

use std::pin::Pin;
use std::sync::Arc;

use quern_proto::v1 as pb;
use quern_proto::v1::jobs_server::Jobs;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::Error;
use crate::job::{JobId, now_micros};
use crate::logs::{LogStore, Stream as LogStreamKind};
use crate::scheduler::SchedulerHandle;
use crate::store::{EventsPage, ListQuery, Store};

pub use convert::limits;

/// How many stored events one read takes while replaying.
const REPLAY_PAGE: usize = 1024;

/// The `quern.v1.Jobs` service.
pub struct JobsService {
    store: Store,
    scheduler: SchedulerHandle,
    logs: Arc<LogStore>,
    config: Arc<Config>,
    /// Fires on shutdown, ending long-lived streams.
    shutdown: CancellationToken,
}

impl JobsService {
    /// Builds the service over the daemon's subsystems.
    pub fn new(
        store: Store,
        scheduler: SchedulerHandle,
        logs: Arc<LogStore>,
        config: Arc<Config>,
        shutdown: CancellationToken,
    ) -> JobsService {
        JobsService {
            store,
            scheduler,
            logs,
            config,
            shutdown,
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn require_id(id: JobId, field: &str) -> Result<JobId, Status> {
    if id == 0 {
        return Err(Error::invalid(field, "must be a job id (ids start at 1)").into());
    }
    Ok(id)
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let now = now_micros();
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Error::invalid("spec", "missing; give the job to run"))?;
        let spec = convert::spec_from_proto(spec, convert::SpecPath(None), now)?;
        let mut out = self.store.submit(vec![spec], now).await?;
        let sub = out
            .pop()
            .ok_or_else(|| Error::Internal("store returned no job".into()))?;
        if !sub.deduplicated {
            self.scheduler.submitted(std::slice::from_ref(&sub.job));
        }
        Ok(Response::new(pb::SubmitResponse {
            job: Some(convert::job_to_proto(&sub.job)),
            deduplicated: sub.deduplicated,
        }))
    }

    async fn submit_batch(
        &self,
        req: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let now = now_micros();
        let specs = req.into_inner().specs;
        if specs.is_empty() {
            return Err(Error::invalid("specs", "must hold at least one job").into());
        }
        if specs.len() > limits::BATCH {
            return Err(Error::invalid(
                "specs",
                format!(
                    "has {} jobs; at most {} per call, split the batch",
                    specs.len(),
                    limits::BATCH
                ),
            )
            .into());
        }
        // Validate all before storing any: the batch is all or none.
        let specs = specs
            .into_iter()
            .enumerate()
            .map(|(i, s)| convert::spec_from_proto(s, convert::SpecPath(Some(i)), now))
            .collect::<Result<Vec<_>, _>>()?;
        let subs = self.store.submit(specs, now).await?;
        let ids = subs.iter().map(|s| s.job.id).collect();
        let fresh: Vec<_> = subs
            .into_iter()
            .filter(|s| !s.deduplicated)
            .map(|s| s.job)
            .collect();
        self.scheduler.submitted(&fresh);
        Ok(Response::new(pb::SubmitBatchResponse { ids }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let id = require_id(req.into_inner().id, "id")?;
        let job = self.store.get(id).await?;
        Ok(Response::new(pb::GetResponse {
            job: Some(convert::job_to_proto(&job)),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let r = req.into_inner();
        let mut states = Vec::new();
        for (i, s) in r.states.iter().enumerate() {
            if let Some(t) = convert::state_from_proto(&format!("states[{i}]"), *s)? {
                states.push(t);
            }
        }
        let kind = match r.kind.as_str() {
            "" => None,
            "exec" => Some(r.kind.clone()),
            other => {
                return Err(Error::invalid(
                    "kind",
                    format!("unknown kind {other:?}; known kinds: exec"),
                )
                .into());
            }
        };
        let limit = match r.page_size {
            0 => 100,
            n @ 1..=1000 => n as usize,
            n => {
                return Err(Error::invalid(
                    "page_size",
                    format!("is {n}; at most 1000, page through the rest with page_token"),
                )
                .into());
            }
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(r.page_token.parse::<u64>().map_err(|_| {
                Error::invalid(
                    "page_token",
                    "is not a token from a previous ListResponse; pass next_page_token unchanged",
                )
            })?)
        };
        let q = ListQuery {
            states,
            kind,
            labels: r.labels.into_iter().collect(),
            limit,
            after,
            oldest_first: r.oldest_first,
        };
        let (jobs, next) = self.store.list(q).await?;
        Ok(Response::new(pb::ListResponse {
            jobs: jobs.iter().map(convert::job_to_proto).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let r = req.into_inner();
        let id = require_id(r.id, "id")?;
        let grace = match &r.grace {
            Some(g) => convert::duration("grace", g)?,
            None => self.config.default_grace,
        };
        let job = self.scheduler.cancel(id, grace).await?;
        Ok(Response::new(pb::CancelResponse {
            job: Some(convert::job_to_proto(&job)),
        }))
    }

    type EventsStream = BoxStream<pb::EventsResponse>;

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let r = req.into_inner();
        let filter = (r.job_id != 0).then_some(r.job_id);
        // Subscribe before reading anything stored, so that no event falls
        // between the replay and the live feed; duplicates are dropped by
        // seq below.
        let live = self.store.subscribe();
        let (last, first_page) = match r.after_seq {
            Some(after) => match self.store.events_after(after, REPLAY_PAGE, filter).await? {
                EventsPage::Events(evs) => (after, evs),
                EventsPage::Pruned { first_retained } => {
                    return Err(Error::OutOfRange(format!(
                        "events after seq {after} are no longer kept (the oldest kept is {first_retained}); resync with List, then resume from Stats.last_event_seq"
                    ))
                    .into());
                }
            },
            None => (self.store.counters().await?.last_seq(), Vec::new()),
        };
        let (tx, rx) = mpsc::channel(256);
        let feed = EventFeed {
            store: self.store.clone(),
            filter,
            last,
            tx,
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = feed.run(first_page, live) => {}
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
        let r = req.into_inner();
        let id = require_id(r.job_id, "job_id")?;
        // Fail fast on an unknown id, before the stream starts.
        self.store.get(id).await?;
        let streams: Vec<LogStreamKind> = match pb::LogStream::try_from(r.stream) {
            Ok(pb::LogStream::Stdout) => vec![LogStreamKind::Stdout],
            Ok(pb::LogStream::Stderr) => vec![LogStreamKind::Stderr],
            Ok(pb::LogStream::Unspecified) => vec![LogStreamKind::Stdout, LogStreamKind::Stderr],
            Err(_) => {
                return Err(
                    Error::invalid("stream", format!("{} is not a log stream", r.stream)).into(),
                );
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let feed = LogFeed {
            store: self.store.clone(),
            logs: self.logs.clone(),
            id,
            streams,
            tx,
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = feed.run(r.follow) => {}
                _ = shutdown.cancelled() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stats(
        &self,
        _req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        use crate::job::StateTag as T;
        let c = self.store.counters().await?;
        Ok(Response::new(pb::StatsResponse {
            queued: c.count(T::Queued),
            scheduled: c.count(T::Scheduled),
            running: c.count(T::Running),
            succeeded: c.count(T::Succeeded),
            failed: c.count(T::Failed),
            cancelled: c.count(T::Cancelled),
            queue_depth: c.count(T::Queued) + c.count(T::Scheduled),
            concurrency: self.config.concurrency as u32,
            last_event_seq: c.last_seq(),
        }))
    }
}

/// Feeds one Events stream: stored events first, then live ones, with no
/// gap and no duplicate.
struct EventFeed {
    store: Store,
    filter: Option<JobId>,
    /// The newest seq already delivered (or skipped as before the start).
    last: u64,
    tx: mpsc::Sender<Result<pb::EventsResponse, Status>>,
}

impl EventFeed {
    async fn run(
        mut self,
        first_page: Vec<crate::job::Event>,
        mut live: broadcast::Receiver<crate::job::Event>,
    ) {
        let mut page = first_page;
        loop {
            // Replay stored pages until they run out.
            while !page.is_empty() {
                let full = page.len() >= REPLAY_PAGE;
                for ev in std::mem::take(&mut page) {
                    if !self.send(&ev).await {
                        return;
                    }
                }
                if full {
                    page = match self.read_after().await {
                        Some(p) => p,
                        None => return,
                    };
                }
            }
            match live.recv().await {
                Ok(ev) => {
                    if ev.seq <= self.last || self.filter.is_some_and(|j| j != ev.job_id) {
                        continue;
                    }
                    if !self.send(&ev).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // We fell behind the live feed; the store has everything
                    // we missed, so catch up from there.
                    page = match self.read_after().await {
                        Some(p) => p,
                        None => return,
                    };
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn read_after(&self) -> Option<Vec<crate::job::Event>> {
        match self
            .store
            .events_after(self.last, REPLAY_PAGE, self.filter)
            .await
        {
            Ok(EventsPage::Events(evs)) => Some(evs),
            Ok(EventsPage::Pruned { first_retained }) => {
                let _ = self
                    .tx
                    .send(Err(Status::out_of_range(format!(
                        "this stream fell behind and events after seq {} are no longer kept (oldest kept: {first_retained}); resync with List, then resume from Stats.last_event_seq",
                        self.last
                    ))))
                    .await;
                None
            }
            Err(e) => {
                let _ = self.tx.send(Err(e.into())).await;
                None
            }
        }
    }

    async fn send(&mut self, ev: &crate::job::Event) -> bool {
        if ev.seq <= self.last {
            return true;
        }
        self.last = ev.seq;
        self.tx.send(Ok(convert::event_to_proto(ev))).await.is_ok()
    }
}

/// Feeds one Logs stream.
struct LogFeed {
    store: Store,
    logs: Arc<LogStore>,
    id: JobId,
    streams: Vec<LogStreamKind>,
    tx: mpsc::Sender<Result<pb::LogsResponse, Status>>,
}

fn stream_to_proto(s: LogStreamKind) -> pb::LogStream {
    match s {
        LogStreamKind::Stdout => pb::LogStream::Stdout,
        LogStreamKind::Stderr => pb::LogStream::Stderr,
    }
}

impl LogFeed {
    async fn run(self, follow: bool) {
        // Positions reached in each stream of the attempt being followed.
        let mut pos = [0u64; 2];
        let mut followed: Option<Arc<crate::logs::LiveLog>> = None;
        loop {
            // Subscribe before looking at the job, so a change that happens
            // in between still wakes us.
            let mut events = self.store.subscribe();
            let job = match self.store.get(self.id).await {
                Ok(j) => j,
                Err(e) => {
                    let _ = self.tx.send(Err(e.into())).await;
                    return;
                }
            };
            let terminal = job.state.tag().is_terminal();
            if let Some(live) = self.logs.live(self.id).filter(|_| follow) {
                // The first attempt we follow is shown from its oldest kept
                // byte (earlier attempts' output included); a later one from
                // its own beginning, since what came before was sent live.
                if followed.as_ref().is_some_and(|f| !Arc::ptr_eq(f, &live)) {
                    for s in [LogStreamKind::Stdout, LogStreamKind::Stderr] {
                        pos[s as usize] = live.start(s);
                    }
                }
                followed = Some(live.clone());
                if !self.follow_live(live, &mut pos).await {
                    return;
                }
            }
            if terminal || !follow {
                // Output already followed live has been sent.
                if followed.is_none() {
                    self.send_stored().await;
                }
                return;
            }
            // Queued, scheduled, or between attempts: wait for its next
            // state change.
            loop {
                match events.recv().await {
                    Ok(ev) if ev.job_id == self.id => break,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }

    /// Streams the live output until its writers finish. False when the
    /// client went away.
    async fn follow_live(&self, live: Arc<crate::logs::LiveLog>, pos: &mut [u64; 2]) -> bool {
        let mut tasks = Vec::new();
        for &s in &self.streams {
            let idx = s as usize;
            let start = pos[idx];
            let (ctx, mut crx) = mpsc::channel::<Vec<u8>>(8);
            let live = live.clone();
            let tx = self.tx.clone();
            tasks.push((
                idx,
                tokio::spawn(async move {
                    let reader = tokio::spawn(async move { live.follow(s, start, ctx).await });
                    let mut open = true;
                    while let Some(data) = crx.recv().await {
                        let msg = pb::LogsResponse {
                            stream: stream_to_proto(s) as i32,
                            data,
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            open = false;
                            break;
                        }
                    }
                    drop(crx);
                    let end = reader.await.ok().and_then(Result::ok).unwrap_or(start);
                    (open, end)
                }),
            ));
        }
        let mut open = true;
        for (idx, t) in tasks {
            match t.await {
                Ok((o, end)) => {
                    open &= o;
                    pos[idx] = end;
                }
                Err(_) => open = false,
            }
        }
        open
    }

    async fn send_stored(&self) {
        for &s in &self.streams {
            let logs = self.logs.clone();
            let id = self.id;
            let data = tokio::task::spawn_blocking(move || logs.read_stored(id, s)).await;
            let data = match data {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    let _ = self
                        .tx
                        .send(Err(Status::internal(format!(
                            "reading output of job {id} failed: {e}"
                        ))))
                        .await;
                    return;
                }
                Err(e) => {
                    let _ = self.tx.send(Err(Status::internal(e.to_string()))).await;
                    return;
                }
            };
            for chunk in data.chunks(64 * 1024) {
                let msg = pb::LogsResponse {
                    stream: stream_to_proto(s) as i32,
                    data: chunk.to_vec(),
                };
                if self.tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        }
    }
}
