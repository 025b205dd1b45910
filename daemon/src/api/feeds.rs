//! The long-lived streams: Events (stored events, then live ones, with
//! progress updates if asked) and Logs (stored output, or live output
//! followed until the job finishes).

use std::sync::Arc;

use quern_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use super::convert;
use crate::job::{Event, JobId, Progress};
use crate::jobs::Jobs;
use crate::logs::{LogStore, Piece, Stream as LogStreamKind};
use crate::store::EventsPage;

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
                update = next_progress(&mut progress) => {
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

/// The next progress update, if progress is asked for; a subscriber that
/// fell behind skips to the newer updates, since only the newest matter.
/// Never resolves without a subscription.
async fn next_progress(
    progress: &mut Option<broadcast::Receiver<(JobId, Progress)>>,
) -> Option<(JobId, Progress)> {
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

    pub(super) async fn run(self, follow: bool) {
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
            tasks.push((
                idx,
                tokio::spawn(async move {
                    let reader = tokio::spawn(async move { live.follow(s, start, ctx).await });
                    let mut open = true;
                    while let Some(piece) = crx.recv().await {
                        if tx.send(Ok(piece_to_proto(s, piece))).await.is_err() {
                            open = false;
                            break;
                        }
                    }
                    drop(crx);
                    let end = reader.await.ok().and_then(Result::ok).or(start);
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
            let mut from = None;
            loop {
                let logs = self.logs.clone();
                let id = self.id;
                let page = tokio::task::spawn_blocking(move || {
                    logs.read_page(id, s, from, crate::logs::PAGE_MAX)
                })
                .await;
                let page = match page {
                    Ok(Ok(p)) => p,
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
                let next = page.piece.offset + page.piece.data.len() as u64;
                let last = next >= page.end || page.piece.data.is_empty();
                if !page.piece.data.is_empty() || page.piece.skipped > 0 {
                    for msg in split(s, page.piece) {
                        if self.tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                }
                if last {
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
/// carries the gap.
fn split(s: LogStreamKind, piece: Piece) -> Vec<pb::LogsResponse> {
    let mut out = Vec::new();
    let mut offset = piece.offset;
    let mut skipped = piece.skipped;
    let mut chunks = piece.data.chunks(MESSAGE_MAX).peekable();
    if chunks.peek().is_none() {
        return vec![piece_to_proto(s, piece)];
    }
    for chunk in chunks {
        out.push(piece_to_proto(
            s,
            Piece {
                skipped: std::mem::take(&mut skipped),
                offset,
                data: chunk.to_vec(),
            },
        ));
        offset += chunk.len() as u64;
    }
    out
}

fn piece_to_proto(s: LogStreamKind, piece: Piece) -> pb::LogsResponse {
    pb::LogsResponse {
        stream: convert::stream_to_proto(s) as i32,
        data: piece.data,
        skipped_bytes: piece.skipped,
        offset: piece.offset,
    }
}
