//! The `quern.v1.Watches` service: a thin adapter over
//! [`crate::watch::rules::Watches`], as [`super::JobsService`] is over the
//! jobs service.

use quern_proto::v1 as pb;
use quern_proto::v1::watches_server::Watches as WatchesApi;
use tonic::{Request, Response, Status};

use super::convert::watch as convert;
use super::{JobsService, peer_uid};
use crate::jobs::Jobs;
use crate::watch::rules::Watches;

/// The `quern.v1.Watches` service.
pub struct WatchesService {
    watches: Watches,
    jobs: Jobs,
}

impl WatchesService {
    /// The service over the daemon's rules; `jobs` looks up their jobs.
    pub fn new(watches: Watches, jobs: Jobs) -> WatchesService {
        WatchesService { watches, jobs }
    }

    fn watch(&self, v: &crate::watch::rules::RuleView) -> Option<pb::Watch> {
        Some(convert::watch_to_proto(v))
    }
}

#[tonic::async_trait]
impl WatchesApi for WatchesService {
    async fn add(
        &self,
        req: Request<pb::AddWatchRequest>,
    ) -> Result<Response<pb::AddWatchResponse>, Status> {
        let owner = peer_uid(&req);
        let spec = convert::add_from_proto(req.into_inner(), self.jobs.now())?;
        let view = self.watches.add(spec, owner).await?;
        Ok(Response::new(pb::AddWatchResponse {
            watch: self.watch(&view),
        }))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveWatchRequest>,
    ) -> Result<Response<pb::RemoveWatchResponse>, Status> {
        let id = convert::rule_id(req.into_inner().id)?;
        let view = self.watches.remove(id).await?;
        Ok(Response::new(pb::RemoveWatchResponse {
            watch: self.watch(&view),
        }))
    }

    async fn list(
        &self,
        _req: Request<pb::ListWatchesRequest>,
    ) -> Result<Response<pb::ListWatchesResponse>, Status> {
        Ok(Response::new(pb::ListWatchesResponse {
            watches: self
                .watches
                .list()
                .iter()
                .map(convert::watch_to_proto)
                .collect(),
        }))
    }

    async fn get(
        &self,
        req: Request<pb::GetWatchRequest>,
    ) -> Result<Response<pb::GetWatchResponse>, Status> {
        let id = convert::rule_id(req.into_inner().id)?;
        let view = self.watches.view(id)?;
        let mut recent_jobs = Vec::new();
        for &job in &view.rule.recent_jobs {
            // A pruned job is simply not shown.
            if let Ok(j) = self.jobs.get(job).await {
                recent_jobs.push(JobsService::job_of(&self.jobs, &j));
            }
        }
        Ok(Response::new(pb::GetWatchResponse {
            watch: self.watch(&view),
            recent_jobs,
        }))
    }

    async fn pause(
        &self,
        req: Request<pb::PauseWatchRequest>,
    ) -> Result<Response<pb::PauseWatchResponse>, Status> {
        let id = convert::rule_id(req.into_inner().id)?;
        let view = self.watches.pause(id).await?;
        Ok(Response::new(pb::PauseWatchResponse {
            watch: self.watch(&view),
        }))
    }

    async fn resume(
        &self,
        req: Request<pb::ResumeWatchRequest>,
    ) -> Result<Response<pb::ResumeWatchResponse>, Status> {
        let id = convert::rule_id(req.into_inner().id)?;
        let view = self.watches.resume(id).await?;
        Ok(Response::new(pb::ResumeWatchResponse {
            watch: self.watch(&view),
        }))
    }
}
