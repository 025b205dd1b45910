//! P4: how fast `List` answers a page of 100 jobs filtered by state when the
//! store holds many jobs.
//!
//! The store gets a few finished jobs first (the oldest ids), then `jobs`
//! scheduled ones. Listing `scheduled` finds a full page at once; listing
//! `succeeded` newest first has to get past every scheduled job unless the
//! daemon indexes by state, which is what this scenario is meant to expose.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{JobState, ListRequest, ListResponse};
use tonic::transport::Channel;

use super::{Ctx, EventWatch, budget, exec, fill, in_an_hour, request, stats};
use crate::daemon::DaemonConfig;
use crate::report::{Metric, Run, Target};
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

    let mut first = Vec::new();
    for _ in 0..calls {
        let started = Instant::now();
        let page = list(&mut client, JobState::Scheduled, String::new()).await?;
        first.push(started.elapsed());
        expect_page(&page, JobState::Scheduled, jobs.min(u64::from(PAGE)))?;
    }

    // Follow page tokens from the newest job down, starting over when the
    // last page is reached. A walk that reaches the end must have seen every
    // scheduled job exactly once.
    let mut paging = Vec::new();
    let mut token = String::new();
    let mut seen = 0u64;
    let mut walks = 0u64;
    for _ in 0..calls {
        let started = Instant::now();
        let page = list(&mut client, JobState::Scheduled, std::mem::take(&mut token)).await?;
        paging.push(started.elapsed());
        expect_state(&page, JobState::Scheduled)?;
        seen += page.jobs.len() as u64;
        token = page.next_page_token;
        if token.is_empty() {
            walks += 1;
            run.check_count(
                format!("scheduled jobs seen in paging walk {walks}"),
                jobs,
                seen,
            )?;
            seen = 0;
        }
    }

    let mut sparse = Vec::new();
    for _ in 0..calls {
        let started = Instant::now();
        let page = list(&mut client, JobState::Succeeded, String::new()).await?;
        sparse.push(started.elapsed());
        expect_page(&page, JobState::Succeeded, finished.min(u64::from(PAGE)))?;
    }

    for (key, label, samples) in [
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
    ] {
        let s = Summary::of(samples);
        run.push(Metric::millis(
            format!("{key}_p50"),
            format!("{label}, p50"),
            s.p50,
        ));
        run.push(
            Metric::millis(format!("{key}_p99"), format!("{label}, p99"), s.p99)
                .target(Target::AtMost(2.0)),
        );
    }
    daemon.stop().await?;
    Ok(run)
}

async fn list(
    client: &mut JobsClient<Channel>,
    state: JobState,
    page_token: String,
) -> Result<ListResponse> {
    Ok(client
        .list(request(ListRequest {
            states: vec![state.into()],
            page_size: PAGE,
            page_token,
            ..ListRequest::default()
        }))
        .await
        .context("List failed")?
        .into_inner())
}

fn expect_page(page: &ListResponse, state: JobState, len: u64) -> Result<()> {
    if page.jobs.len() as u64 != len {
        bail!(
            "List of {state:?} jobs returned {} jobs, expected {len}",
            page.jobs.len()
        );
    }
    expect_state(page, state)
}

fn expect_state(page: &ListResponse, state: JobState) -> Result<()> {
    match page.jobs.iter().find(|j| j.state() != state) {
        Some(j) => bail!(
            "List filtered by {state:?} returned job {} in {:?}",
            j.id,
            j.state()
        ),
        None => Ok(()),
    }
}
