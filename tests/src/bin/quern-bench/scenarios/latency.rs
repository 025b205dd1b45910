//! P2: how long a job waits between being accepted and being started, on an
//! idle daemon, one job at a time.
//!
//! Two views of the same interval: the daemon's own timestamps (`started_at -
//! queued_at` from `Get`), and what a client sees (from sending `Submit` to
//! receiving the `running` event).

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{GetRequest, JobState, SubmitRequest};

use super::{Ctx, EventWatch, budget, exec, request, stats};
use crate::daemon::DaemonConfig;
use crate::report::{Metric, Run, Target};
use crate::stats::Summary;

/// Submits `jobs` `/bin/true` jobs, each after the previous one finished.
pub async fn run(ctx: &Ctx<'_>, jobs: u64) -> Result<Run> {
    let (mut daemon, _) = ctx.start(DaemonConfig::default()).await?;
    let mut client = JobsClient::new(daemon.channel().await?);
    let mut events = EventWatch::subscribe(daemon.channel().await?).await?;
    let spec = exec(&["/bin/true"], None);

    let mut stamped = Vec::with_capacity(usize::try_from(jobs)?);
    let mut observed = Vec::with_capacity(usize::try_from(jobs)?);
    let mut acked = Vec::with_capacity(usize::try_from(jobs)?);
    for _ in 0..jobs {
        let deadline = tokio::time::Instant::now() + budget(1);
        let sent = Instant::now();
        let job = client
            .submit(request(SubmitRequest {
                spec: Some(spec.clone()),
            }))
            .await
            .context("Submit failed")?
            .into_inner()
            .job
            .context("SubmitResponse has no job")?;
        acked.push(sent.elapsed());
        // The running event may well have arrived before the Submit response;
        // the watcher stamped it on arrival either way.
        let running = events
            .until(deadline, job.id, |e| e.state == JobState::Running)
            .await?;
        observed.push(running.received.saturating_duration_since(sent));
        // Waiting for the end keeps the daemon idle for the next sample.
        let end = events
            .until(deadline, job.id, super::Event::is_terminal)
            .await?;
        if end.state != JobState::Succeeded {
            bail!(
                "job {} running /bin/true ended {:?}: {}",
                job.id,
                end.state,
                end.error
            );
        }

        let job = client
            .get(request(GetRequest { id: job.id }))
            .await
            .context("Get failed")?
            .into_inner()
            .job
            .context("GetResponse has no job")?;
        let id = job.id;
        let time = |t: Option<prost_types::Timestamp>, name: &str| -> Result<SystemTime> {
            let t = t.with_context(|| format!("job {id} has no {name}"))?;
            SystemTime::try_from(t).with_context(|| format!("job {id} has an invalid {name}"))
        };
        let queued_at = time(job.queued_at, "queued_at")?;
        let started_at = time(job.started_at, "started_at")?;
        // Both stamps come from the daemon's clock; a step of that clock
        // could make the difference negative, which we count as zero.
        stamped.push(
            started_at
                .duration_since(queued_at)
                .unwrap_or(Duration::ZERO),
        );
    }

    let mut run = Run::default();
    run.check_count("jobs started and succeeded", jobs, stamped.len() as u64)?;
    let stamped = Summary::of(&mut stamped);
    let observed = Summary::of(&mut observed);
    let acked = Summary::of(&mut acked);
    run.push(
        Metric::millis("stamped_p50", "started_at - queued_at, p50", stamped.p50)
            .target(Target::AtMost(3.0)),
    );
    run.push(
        Metric::millis("stamped_p99", "started_at - queued_at, p99", stamped.p99)
            .target(Target::AtMost(10.0)),
    );
    run.push(Metric::millis(
        "observed_p50",
        "Submit sent -> running event, p50",
        observed.p50,
    ));
    run.push(Metric::millis(
        "observed_p99",
        "Submit sent -> running event, p99",
        observed.p99,
    ));
    run.push(Metric::millis(
        "ack_p50",
        "Submit acknowledged, p50",
        acked.p50,
    ));
    run.check_count(
        "succeeded jobs in Stats",
        jobs,
        stats(&mut client).await?.succeeded,
    )?;
    daemon.stop().await?;
    Ok(run)
}
