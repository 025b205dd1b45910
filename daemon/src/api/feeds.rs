//! The long-lived streams: Events (stored events, then live ones, with
//! progress updates if asked) and Logs (stored output, or live output
//! followed until the job finishes).

use std::sync::Arc;

use quern_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_util::task::AbortOnDropHandle;
use tonic::Status;

use super::convert;
use crate::admission::HostStatus;
use crate::job::{Event, JobId, Progress};
use crate::jobs::Jobs;
use crate::logs::{LogStore, Piece, Stream as LogStreamKind};
use crate::store::EventsPage;
use crate::watch::rules::RuleEvent;

/// How many stored events one read takes while replaying.
pub(super) const REPLAY_PAGE: usize = 1024;

/// Feeds one Events stream: stored events first, then live ones, with no
/// gap and no duplicate.
pub(super) struct EventFeed {
    jobs: Jobs,
    filter: Option<JobId>,
    /// The newest seq already delivered (or skipped as before the start).
    last: u64,
    tx: mpsc::Sender<Result<pb::EventsResponse, Status>>,
}

impl EventFeed {
    pub(super) fn new(
        jobs: Jobs,
        filter: Option<JobId>,
        last: u64,
        tx: mpsc::Sender<Result<pb::EventsResponse, Status>>,
    ) -> EventFeed {
        EventFeed {
            jobs,
            filter,
            last,
            tx,
        }
    }

    /// Sends `first_page`, then live events, and progress updates if
    /// `progress` is given, until the client goes away.
    pub(super) async fn run(
        mut self,
        first_page: Vec<Event>,
        mut live: broadcast::Receiver<Event>,
        mut progress: Option<broadcast::Receiver<(JobId, Progress)>>,
        mut hosts: Option<broadcast::Receiver<HostStatus>>,
        mut watches: Option<broadcast::Receiver<RuleEvent>>,
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
            let next = tokio::select! {
                ev = live.recv() => ev,
                change = next_newest(&mut hosts) => {
                    if let Some(h) = change
                        && self.filter.is_none()
                        && self
                            .tx
                            .send(Ok(convert::host_event_to_proto(&h, self.jobs.now())))
                            .await
                            .is_err()
                    {
                        return;
                    }
                    continue;
                }
                change = next_newest(&mut watches) => {
                    if let Some(w) = change
                        && self.filter.is_none()
                        && self
                            .tx
                            .send(Ok(convert::watch::watch_event_to_proto(&w, self.jobs.now())))
                            .await
                            .is_err()
                    {
                        return;
                    }
                    continue;
                }
                update = next_newest(&mut progress) => {
                    if let Some((job, p)) = update
                        && self.filter.is_none_or(|j| j == job)
                        && !self.send_progress(job, &p).await
                    {
                        return;
                    }
                    continue;
                }
            };
            match next {
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

    async fn send_progress(&self, job: JobId, p: &Progress) -> bool {
        let update = convert::progress_event_to_proto(job, p, self.jobs.now());
        self.tx.send(Ok(update)).await.is_ok()
    }

    async fn read_after(&self) -> Option<Vec<Event>> {
        match self
            .jobs
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

    async fn send(&mut self, ev: &Event) -> bool {
        if ev.seq <= self.last {
            return true;
        }
        self.last = ev.seq;
        self.tx.send(Ok(convert::event_to_proto(ev))).await.is_ok()
    }
}

/// The next live update (progress, hosts' changes), if they are asked
/// for; a subscriber that fell behind skips to the newer updates, since
/// only the newest matter. Never resolves without a subscription.
async fn next_newest<T: Clone>(progress: &mut Option<broadcast::Receiver<T>>) -> Option<T> {
    let Some(rx) = progress else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(update) => return Some(update),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => {
                *progress = None;
                return None;
            }
        }
    }
}

/// Feeds one Logs stream.
pub(super) struct LogFeed {
    jobs: Jobs,
    logs: Arc<LogStore>,
    id: JobId,
    streams: Vec<LogStreamKind>,
    tx: mpsc::Sender<Result<pb::LogsResponse, Status>>,
}

impl LogFeed {
    pub(super) fn new(
        jobs: Jobs,
        logs: Arc<LogStore>,
        id: JobId,
        streams: Vec<LogStreamKind>,
        tx: mpsc::Sender<Result<pb::LogsResponse, Status>>,
    ) -> LogFeed {
        LogFeed {
            jobs,
            logs,
            id,
            streams,
            tx,
        }
    }

    /// Sends the output asked for; see [`convert::LogsQuery`].
    pub(super) async fn run(self, follow: bool, offset: Option<u64>, limit: usize) {
        // Positions reached in each stream of the attempt being followed;
        // the first attempt followed is shown from its oldest kept byte
        // (earlier attempts' output included).
        let mut pos = [Some(0u64); 2];
        let mut followed: Option<Arc<crate::logs::LiveLog>> = None;
        loop {
            // Subscribe before looking at the job, so a change that happens
            // in between still wakes us.
            let mut events = self.jobs.subscribe();
            let job = match self.jobs.get(self.id).await {
                Ok(j) => j,
                Err(e) => {
                    let _ = self.tx.send(Err(e.into())).await;
                    return;
                }
            };
            let terminal = job.state.tag().is_terminal();
            if let Some(live) = self.logs.live(self.id).filter(|_| follow) {
                // A later attempt from its own beginning, since what came
                // before was sent live.
                if followed.as_ref().is_some_and(|f| !Arc::ptr_eq(f, &live)) {
                    pos = [None; 2];
                }
                followed = Some(live.clone());
                if !self.follow_live(live, &mut pos).await {
                    return;
                }
            }
            if terminal || !follow {
                // Output already followed live has been sent.
                if followed.is_none() {
                    self.send_stored(follow, offset, limit).await;
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
    /// stream is over: the client went away, or reading failed (the client
    /// has been told).
    async fn follow_live(
        &self,
        live: Arc<crate::logs::LiveLog>,
        pos: &mut [Option<u64>; 2],
    ) -> bool {
        let mut tasks = Vec::new();
        for &s in &self.streams {
            let idx = s as usize;
            let start = pos[idx];
            let (ctx, mut crx) = mpsc::channel::<Piece>(4);
            let live = live.clone();
            let tx = self.tx.clone();
            // Aborted with the feed (shutdown, or the client went away),
            // so no reader outlives its stream waiting for output.
            tasks.push((
                idx,
                AbortOnDropHandle::new(tokio::spawn(async move {
                    let reader = AbortOnDropHandle::new(tokio::spawn(async move {
                        live.follow(s, start, ctx).await
                    }));
                    let mut open = true;
                    while let Some(piece) = crx.recv().await {
                        if tx.send(Ok(piece_to_proto(s, piece, None))).await.is_err() {
                            open = false;
                            break;
                        }
                    }
                    drop(crx);
                    let end = match reader.await {
                        Ok(Ok(end)) => Ok(end),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    (open, end)
                })),
            ));
        }
        let mut open = true;
        let mut failed = None;
        for (idx, t) in tasks {
            match t.await {
                Ok((o, Ok(end))) => {
                    open &= o;
                    pos[idx] = Some(end);
                }
                Ok((_, Err(e))) => failed = Some(e),
                Err(e) => failed = Some(e.to_string()),
            }
        }
        if let Some(e) = failed {
            // A clean end would look like the whole output: say it is not.
            let _ = self
                .tx
                .send(Err(Status::internal(format!(
                    "reading the output of job {} failed: {e}; what was sent is incomplete",
                    self.id
                ))))
                .await;
            return false;
        }
        open
    }

    /// Sends stored output: without follow one page of each stream (from
    /// `offset`, at most `limit` bytes); with follow, all of it.
    async fn send_stored(&self, follow: bool, offset: Option<u64>, limit: usize) {
        for &s in &self.streams {
            let mut from = offset;
            loop {
                let logs = self.logs.clone();
                let id = self.id;
                let page =
                    tokio::task::spawn_blocking(move || logs.read_page(id, s, from, limit)).await;
                let page = match page {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => {
                        let _ = self
                            .tx
                            .send(Err(Status::internal(format!(
                                "reading the output of job {id} failed: {e}; what was sent is incomplete"
                            ))))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = self.tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                let next = page.piece.offset + page.piece.data.len() as u64;
                let more = next < page.end && !page.piece.data.is_empty();
                let next_offset = (more && !follow).then_some(next);
                if !page.piece.data.is_empty() || page.piece.skipped > 0 || next_offset.is_some() {
                    for msg in split(s, page.piece, next_offset) {
                        if self.tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                }
                if !more || !follow {
                    break;
                }
                from = Some(next);
            }
        }
    }
}

/// How much one Logs message carries at most.
const MESSAGE_MAX: usize = 64 * 1024;

/// One piece as messages of at most [`MESSAGE_MAX`] bytes; only the first
/// carries the gap, and only the last `next_offset`.
fn split(s: LogStreamKind, piece: Piece, next_offset: Option<u64>) -> Vec<pb::LogsResponse> {
    let mut out = Vec::new();
    let mut offset = piece.offset;
    let mut skipped = piece.skipped;
    for chunk in piece.data.chunks(MESSAGE_MAX) {
        out.push(piece_to_proto(
            s,
            Piece {
                skipped: std::mem::take(&mut skipped),
                offset,
                data: chunk.to_vec(),
            },
            None,
        ));
        offset += chunk.len() as u64;
    }
    match out.last_mut() {
        Some(last) => last.next_offset = next_offset,
        None => out.push(piece_to_proto(s, piece, next_offset)),
    }
    out
}

fn piece_to_proto(s: LogStreamKind, piece: Piece, next_offset: Option<u64>) -> pb::LogsResponse {
    pb::LogsResponse {
        stream: convert::stream_to_proto(s) as i32,
        data: piece.data,
        skipped_bytes: piece.skipped,
        offset: piece.offset,
        next_offset,
    }
}
