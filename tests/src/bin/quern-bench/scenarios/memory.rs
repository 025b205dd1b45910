//! P5: the daemon's peak RSS with `jobs` jobs queued, against the same with
//! 1k queued. The queue lives in the store, not in memory, so the two should
//! be close. The store's page cache is a fixed cost that a 1k queue does not
//! fill, so P5 also measures a tenth of `jobs`: from there to `jobs`, the
//! growth is what the queue itself costs.

use anyhow::{Context, Result};
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{JobState, SubmitRequest};

use super::{Ctx, EventWatch, budget, exec, fill, request, stats};
use crate::daemon::{DaemonConfig, Memory};
use crate::report::{Metric, Run, Target, Unit, thousands};

/// The baseline queue size issue 3 compares against.
const BASELINE: u64 = 1_000;

/// Measures peak RSS with `min(1000, jobs)`, `jobs / 10` (when that is
/// more than the baseline) and then `jobs` queued jobs, each on a fresh
/// daemon.
pub async fn run(ctx: &Ctx<'_>, jobs: u64) -> Result<Run> {
    let mut run = Run::default();
    let baseline = jobs.min(BASELINE);
    let tenth = jobs / 10;
    let small = queued_memory(ctx, baseline, &mut run).await?;
    let middle = if tenth > baseline {
        Some(queued_memory(ctx, tenth, &mut run).await?)
    } else {
        None
    };
    let large = queued_memory(ctx, jobs, &mut run).await?;

    let mib = |kib: u64| kib as f64 / 1024.0;
    run.push(
        Metric::new(
            "peak_rss_mib",
            format!("peak RSS, {} queued", thousands(jobs as f64)),
            mib(large.peak_kib),
            Unit::MiB,
        )
        .target(Target::AtMost(64.0)),
    );
    run.push(Metric::new(
        "rss_mib",
        format!("RSS after filling, {} queued", thousands(jobs as f64)),
        mib(large.current_kib),
        Unit::MiB,
    ));
    run.push(Metric::new(
        "baseline_peak_rss_mib",
        format!("peak RSS, {} queued", thousands(baseline as f64)),
        mib(small.peak_kib),
        Unit::MiB,
    ));
    run.push(Metric::new(
        "growth",
        "peak RSS growth over baseline",
        large.peak_kib as f64 / small.peak_kib.max(1) as f64,
        Unit::Ratio,
    ));
    if let Some(middle) = middle {
        run.push(Metric::new(
            "tenth_peak_rss_mib",
            format!("peak RSS, {} queued", thousands(tenth as f64)),
            mib(middle.peak_kib),
            Unit::MiB,
        ));
        run.push(Metric::new(
            "growth_last_tenfold",
            format!(
                "peak RSS growth from {} to {} queued",
                thousands(tenth as f64),
                thousands(jobs as f64)
            ),
            large.peak_kib as f64 / middle.peak_kib.max(1) as f64,
            Unit::Ratio,
        ));
    }
    Ok(run)
}

/// Starts a daemon that runs one job at a time, occupies that slot with a
/// long `sleep`, queues `jobs` jobs behind it, and reads its memory.
async fn queued_memory(ctx: &Ctx<'_>, jobs: u64, run: &mut Run) -> Result<Memory> {
    let config = DaemonConfig {
        concurrency: Some(1),
        ..DaemonConfig::default()
    };
    let (mut daemon, _) = ctx.start(config).await?;
    let mut client = JobsClient::new(daemon.channel().await?);

    // Only once the blocker runs is the slot taken; jobs submitted before
    // that could start and leave the queue.
    let mut events = EventWatch::subscribe(daemon.channel().await?).await?;
    let blocker = client
        .submit(request(SubmitRequest {
            spec: Some(exec(&["sleep", "3600"], None)),
        }))
        .await?
        .into_inner()
        .job
        .context("SubmitResponse has no job")?
        .id;
    let deadline = tokio::time::Instant::now() + budget(1);
    events
        .until(deadline, blocker, |e| e.state == JobState::Running)
        .await?;
    drop(events);

    fill(&mut client, jobs, &exec(&["/bin/true"], None)).await?;
    let counts = stats(&mut client).await?;
    run.check_count(
        format!("queued jobs in Stats ({jobs} queued)"),
        jobs,
        counts.queued,
    )?;
    run.check_count(
        format!("running jobs in Stats ({jobs} queued)"),
        1,
        counts.running,
    )?;
    let memory = daemon.memory()?;
    // SIGTERM cancels the sleep and puts it back in the queue; that is the
    // daemon's normal shutdown and takes no grace period, as sleep dies on
    // SIGTERM.
    daemon.stop().await?;
    Ok(memory)
}
