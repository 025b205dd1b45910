//! The jobs service: the one way into the queue, and the domain side of
//! every request about jobs. It knows nothing of gRPC: `api` adapts it,
//! and producers inside quernd (watch rules, schedules) call it the same
//! way. Every submit is validated, stored durably and then handed to the
//! scheduler here, and nowhere else.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::admission::HostStatus;
use crate::clock::Clock;
use crate::error::Error;
use crate::job::{Event, Job, JobId, JobSpec, Progress};
use crate::progress::ProgressBoard;
use crate::scheduler::SchedulerHandle;
use crate::store::{Counters, EventsPage, ListQuery, RuleTrigger, Store, Submitted};
use crate::watch::rule::Rule;

/// The jobs service. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    store: Store,
    scheduler: SchedulerHandle,
    progress: Arc<ProgressBoard>,
    clock: Clock,
}

/// A spec's rules, then what its kind checks on disk before it is queued.
/// Those are a stat or two per spec, done inline: a hop to a blocking
/// thread per spec would cost more than the stats on a local disk.
pub(crate) fn check(spec: &JobSpec) -> Result<(), (&'static str, String)> {
    spec.check()?;
    match &spec.kind {
        crate::job::JobKind::Fetch(f) => crate::runner::fetch::check_files(f),
        crate::job::JobKind::Exec(_) => Ok(()),
        crate::job::JobKind::Git(g) => crate::runner::git::check_repo(g),
    }
}

impl Jobs {
    /// The service over the daemon's store and scheduler.
    pub fn new(
        store: Store,
        scheduler: SchedulerHandle,
        progress: Arc<ProgressBoard>,
        clock: Clock,
    ) -> Jobs {
        Jobs {
            store,
            scheduler,
            progress,
            clock,
        }
    }

    /// Stores one job of user `owner_uid` durably and tells the scheduler.
    /// Returns once it is on disk. A spec whose idempotency key an
    /// unfinished job holds returns that job, marked deduplicated.
    pub async fn submit(&self, spec: JobSpec, owner_uid: u32) -> Result<Submitted, Error> {
        check(&spec).map_err(|(field, reason)| Error::invalid(format!("spec{field}"), reason))?;
        let mut subs = self.store(vec![spec], owner_uid).await?;
        subs.pop()
            .ok_or_else(|| Error::Internal("the store returned no job".into()))
    }

    /// [`Jobs::submit`] for many jobs, in one durable transaction: all or
    /// none.
    pub async fn submit_batch(
        &self,
        specs: Vec<JobSpec>,
        owner_uid: u32,
    ) -> Result<Vec<Submitted>, Error> {
        for (i, spec) in specs.iter().enumerate() {
            check(spec)
                .map_err(|(field, reason)| Error::invalid(format!("specs[{i}]{field}"), reason))?;
        }
        self.store(specs, owner_uid).await
    }

    /// Stores a watch rule's trigger: its jobs (checked as Submit checks
    /// them), the rule's new snapshot and record, in one durable
    /// transaction, then tells the scheduler. `None` if the rule is gone.
    pub async fn trigger_rule(
        &self,
        t: RuleTrigger,
    ) -> Result<Option<(Rule, Vec<Submitted>)>, Error> {
        for spec in &t.specs {
            check(spec).map_err(|(field, reason)| Error::invalid(format!("job{field}"), reason))?;
        }
        let stored = self.store.trigger_rule(t).await?;
        if let Some((_, subs)) = &stored {
            self.scheduler
                .submitted(subs.iter().filter(|s| !s.deduplicated).map(|s| &s.job));
        }
        Ok(stored)
    }

    async fn store(&self, specs: Vec<JobSpec>, owner_uid: u32) -> Result<Vec<Submitted>, Error> {
        let subs = self
            .store
            .submit(specs, owner_uid, self.clock.now_micros())
            .await?;
        self.scheduler
            .submitted(subs.iter().filter(|s| !s.deduplicated).map(|s| &s.job));
        Ok(subs)
    }

    /// The current time on the daemon's clock.
    pub fn now(&self) -> crate::job::Micros {
        self.clock.now_micros()
    }

    /// One job.
    pub async fn get(&self, id: JobId) -> Result<Job, Error> {
        Ok(self.store.get(id).await?)
    }

    /// The latest progress of a running job, if its kind reports any.
    pub fn progress(&self, id: JobId) -> Option<Progress> {
        self.progress.get(id)
    }

    /// A page of jobs, and the cursor of the next page.
    pub async fn list(&self, q: ListQuery) -> Result<(Vec<Job>, Option<JobId>), Error> {
        Ok(self.store.list(q).await?)
    }

    /// Cancels a job, and returns it once it has stopped.
    pub async fn cancel(&self, id: JobId, grace: Duration) -> Result<Job, Error> {
        Ok(self.scheduler.cancel(id, grace).await?)
    }

    /// Counts by state, and the newest event's seq.
    pub async fn counters(&self) -> Result<Counters, Error> {
        Ok(self.store.counters().await?)
    }

    /// Stored events after `after`, at most `limit`, optionally of one job.
    pub async fn events_after(
        &self,
        after: u64,
        limit: usize,
        job: Option<JobId>,
    ) -> Result<EventsPage, Error> {
        Ok(self.store.events_after(after, limit, job).await?)
    }

    /// Live state changes, published once they are durable.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.store.subscribe()
    }

    /// Live progress reports.
    pub fn subscribe_progress(&self) -> broadcast::Receiver<(JobId, Progress)> {
        self.progress.subscribe()
    }

    /// Hosts of fetch jobs with something to show (see
    /// [`crate::admission::Hosts::snapshot`]), and the fetch pool's size.
    pub fn hosts(&self) -> (Vec<HostStatus>, usize) {
        self.scheduler.hosts()
    }

    /// Changes of hosts' breakers and pauses, as they happen.
    pub fn subscribe_hosts(&self) -> broadcast::Receiver<HostStatus> {
        self.scheduler.subscribe_hosts()
    }
}
