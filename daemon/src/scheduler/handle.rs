//! The scheduler's handle and its messages: how the rest of quernd tells
//! the scheduler about new jobs and asks it to cancel one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::lock;
use crate::admission::{HostStatus, Hosts};
use crate::job::{Job, JobId, JobState, Micros};
use crate::store::StoreError;

/// Messages the scheduler acts on.
pub(super) enum Msg {
    /// Jobs were submitted (see [`Submitted`] for which), or job starts
    /// were paused: the scheduler rereads when to wake next.
    Wake,
    /// Stop a job; reply with it once it has stopped.
    Cancel {
        id: JobId,
        grace: Duration,
        reply: oneshot::Sender<Result<Job, StoreError>>,
    },
}

/// A cheap, cloneable way to talk to the scheduler.
#[derive(Clone)]
pub struct SchedulerHandle {
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    pub(super) submitted: Arc<Mutex<Submitted>>,
    /// The per-host policy of fetch jobs, for Stats and Events.
    hosts: Arc<Hosts>,
}

/// What submissions the scheduler has not looked at yet, merged, so that
/// one [`Msg::Wake`] covers however many came meanwhile. The scheduler runs
/// on its own thread, and a message per Submit woke that thread once per
/// call under many concurrent clients (P1a: twice the daemon's context
/// switches per job).
#[derive(Default)]
pub(super) struct Submitted {
    /// Some are ready to run.
    pub(super) ready: bool,
    /// The earliest one scheduled for later.
    pub(super) due: Option<Micros>,
    /// A `Wake` is on its way.
    pub(super) told: bool,
    /// Some host changed (a breaker, a pause, held-back jobs): fetch jobs
    /// may start.
    pub(super) hosts: bool,
    /// When the scheduler will next read the store's due jobs at the
    /// latest: a job scheduled for that time or later needs no wake-up
    /// (P1a submits jobs for an hour ahead). `None` while the scheduler is
    /// reading that index, so a job stored meanwhile is never missed.
    pub(super) timer: Option<Micros>,
}

/// What the scheduler does on a [`Msg::Wake`]: takes what was submitted
/// (whether any are ready, and the earliest due), so that the next Submit
/// sends a wake-up again. The published timer stays.
pub(super) fn take_submitted(m: &Mutex<Submitted>) -> (bool, bool, Option<Micros>) {
    let mut s = lock(m);
    s.told = false;
    (
        std::mem::take(&mut s.ready),
        std::mem::take(&mut s.hosts),
        s.due.take(),
    )
}

impl SchedulerHandle {
    /// A handle, and the scheduler's end of its channel.
    pub(super) fn new(hosts: Arc<Hosts>) -> (SchedulerHandle, mpsc::UnboundedReceiver<Msg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = SchedulerHandle {
            tx,
            submitted: Arc::new(Mutex::new(Submitted::default())),
            hosts,
        };
        (handle, rx)
    }

    /// Hosts of fetch jobs with something to show, and the fetch pool's
    /// size.
    pub fn hosts(&self) -> (Vec<HostStatus>, usize) {
        (self.hosts.snapshot(), self.hosts.config().concurrency)
    }

    /// Changes of hosts' breakers and pauses, as they happen.
    pub fn subscribe_hosts(&self) -> broadcast::Receiver<HostStatus> {
        self.hosts.subscribe()
    }

    /// Tells the scheduler about newly stored jobs.
    pub fn submitted<'a>(&self, jobs: impl IntoIterator<Item = &'a Job>) {
        let mut ready = false;
        let mut due: Option<Micros> = None;
        for j in jobs {
            match j.state {
                JobState::Queued => ready = true,
                JobState::Scheduled { run_at } => due = Some(due.map_or(run_at, |d| d.min(run_at))),
                _ => {}
            }
        }
        if !ready && due.is_none() {
            return;
        }
        let mut s = lock(&self.submitted);
        if !ready && s.timer.zip(due).is_some_and(|(timer, due)| timer <= due) {
            return;
        }
        s.ready |= ready;
        if let Some(d) = due {
            s.due = Some(s.due.map_or(d, |n| n.min(d)));
        }
        if !std::mem::replace(&mut s.told, true) {
            drop(s);
            let _ = self.tx.send(Msg::Wake);
        }
    }

    /// Tells the scheduler that jobs were moved to scheduled until `at`.
    pub(super) fn due_at(&self, at: Micros) {
        let mut s = lock(&self.submitted);
        s.due = Some(s.due.map_or(at, |d| d.min(at)));
        s.hosts = true;
        if !std::mem::replace(&mut s.told, true) {
            drop(s);
            let _ = self.tx.send(Msg::Wake);
        }
    }

    /// Tells the scheduler that a host's breaker or pause changed, so
    /// that its jobs may start, or must be held back.
    pub(super) fn hosts_changed(&self) {
        let mut s = lock(&self.submitted);
        s.hosts = true;
        if !std::mem::replace(&mut s.told, true) {
            drop(s);
            let _ = self.tx.send(Msg::Wake);
        }
    }

    /// Cancels a job and returns it after it stopped.
    pub async fn cancel(&self, id: JobId, grace: Duration) -> Result<Job, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Cancel { id, grace, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}
