//! Watch rule helpers for the end-to-end suites: a rule's spec, its
//! client, and a stream of its events, all waited on without sleeping.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::watches_client::WatchesClient;
use quern_proto::v1::{
    AddWatchRequest, EventsRequest, EventsResponse, GetWatchRequest, JobSpec, LogStream, Watch,
    WatchEvent, WatchSpec, WatchState,
};
use tokio::time::timeout;
use tonic::transport::Channel;

use crate::{TestDaemon, WAIT, duration, read_logs, sh, wait_for_terminal};

/// A job that prints its changed paths file, then the rule's variables,
/// for [`paths_of`] and the tests to read.
pub fn print_paths() -> JobSpec {
    sh(
        r#"cat "$QUERN_CHANGED_PATHS_FILE"; echo "--"; echo "id=$QUERN_WATCH_ID root=$QUERN_WATCH_ROOT""#,
    )
}

/// A rule over `root` that runs `job`, with `debounce`.
pub fn spec(root: &Path, debounce: Duration, job: JobSpec) -> WatchSpec {
    WatchSpec {
        root: root.to_string_lossy().into_owned(),
        debounce: Some(duration(debounce)),
        job: Some(job),
        ..WatchSpec::default()
    }
}

impl TestDaemon {
    /// A Watches client on this daemon's socket.
    ///
    /// # Panics
    ///
    /// When the daemon is stopped.
    pub fn watches(&self) -> WatchesClient<Channel> {
        WatchesClient::new(self.channel.clone().expect("quernd is not running"))
    }
}

/// Adds a rule and returns it.
pub async fn add(client: &mut WatchesClient<Channel>, spec: WatchSpec) -> Result<Watch> {
    timeout(WAIT, client.add(AddWatchRequest { spec: Some(spec) }))
        .await
        .map_err(|_| anyhow!("Add timed out"))?
        .context("Add")?
        .into_inner()
        .watch
        .context("Add returned no watch")
}

/// One rule, and its recent jobs' ids.
pub async fn get(client: &mut WatchesClient<Channel>, id: u64) -> Result<Watch> {
    timeout(WAIT, client.get(GetWatchRequest { id }))
        .await
        .map_err(|_| anyhow!("Get timed out"))?
        .context("Get")?
        .into_inner()
        .watch
        .context("Get returned no watch")
}

/// The lines of a [`print_paths`] job's paths file, once it has finished.
pub async fn paths_of(client: &mut JobsClient<Channel>, job: u64) -> Result<BTreeSet<String>> {
    wait_for_terminal(client, job).await?;
    let out = read_logs(client, job, LogStream::Stdout).await?;
    let text = String::from_utf8(out.stdout).context("paths are not UTF-8")?;
    let (paths, _) = text
        .split_once("--\n")
        .with_context(|| format!("job {job} printed no paths file: {text:?}"))?;
    Ok(paths.lines().map(str::to_string).collect())
}

/// An `Events` stream of rule changes and triggers only.
pub struct WatchEvents {
    stream: tonic::Streaming<EventsResponse>,
    seen: Vec<WatchEvent>,
}

impl WatchEvents {
    /// Rule events from now on.
    pub async fn open(client: &mut JobsClient<Channel>) -> Result<Self> {
        let stream = timeout(
            WAIT,
            client.events(EventsRequest {
                watches: true,
                ..EventsRequest::default()
            }),
        )
        .await
        .map_err(|_| anyhow!("opening Events timed out"))?
        .context("Events")?
        .into_inner();
        Ok(Self {
            stream,
            seen: Vec::new(),
        })
    }

    /// Reads rule events until one matches, within [`WAIT`] in all.
    pub async fn wait_for(
        &mut self,
        mut matches: impl FnMut(&WatchEvent) -> bool,
    ) -> Result<WatchEvent> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.message())
                .await
                .map_err(|_| {
                    anyhow!(
                        "no matching rule event within {WAIT:?}; seen: {:#?}",
                        self.seen
                    )
                })?
                .context("Events stream failed")?
                .context("Events stream ended")?;
            let Some(w) = next.watch else { continue };
            self.seen.push(w.clone());
            if matches(&w) {
                return Ok(w);
            }
        }
    }

    /// The next trigger of rule `id` that made a job.
    pub async fn triggered(&mut self, id: u64) -> Result<WatchEvent> {
        self.wait_for(|w| {
            w.change == "triggered"
                && w.watch.as_ref().is_some_and(|r| r.id == id)
                && w.trigger.as_ref().is_some_and(|t| t.job_id != 0)
        })
        .await
        .with_context(|| format!("waiting for rule {id} to make a job"))
    }

    /// The next change of rule `id` into `state`.
    pub async fn state(&mut self, id: u64, state: WatchState) -> Result<WatchEvent> {
        self.wait_for(|w| {
            w.watch
                .as_ref()
                .is_some_and(|r| r.id == id && r.state == state as i32)
                && w.change == "state"
        })
        .await
        .with_context(|| format!("waiting for rule {id} to be {}", state.as_str_name()))
    }

    /// Every rule event read so far.
    pub fn seen(&self) -> &[WatchEvent] {
        &self.seen
    }
}

/// The job a trigger event made, and its reason.
pub fn job_of(e: &WatchEvent) -> (u64, String) {
    let t = e.trigger.as_ref().expect("a trigger event");
    (t.job_id, t.reason.clone())
}
