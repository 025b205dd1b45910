//! P6 and P6b: how long the daemon takes to come back with many jobs stored,
//! after a clean SIGTERM shutdown (P6) and after kill -9 (P6b).
//!
//! The clock runs from spawning the new process to the health service
//! confirming SERVING, so it includes opening the store and, after a crash,
//! whatever recovery the store and the daemon do.

use anyhow::Result;
use quern_proto::v1::jobs_client::JobsClient;

use super::{Ctx, exec, fill, in_an_hour, stats};
use crate::daemon::DaemonConfig;
use crate::report::{Metric, Run, Target};

/// How the first daemon ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// SIGTERM: a graceful drain.
    Term,
    /// SIGKILL: a crash.
    Kill,
}

/// Stores `jobs` scheduled jobs, stops the daemon the given way, and times
/// the restart.
pub async fn run(ctx: &Ctx<'_>, jobs: u64, stop: Stop) -> Result<Run> {
    let (mut daemon, empty) = ctx.start(DaemonConfig::default()).await?;
    let mut client = JobsClient::new(daemon.channel().await?);
    fill(&mut client, jobs, &exec(&["true"], Some(in_an_hour()))).await?;
    drop(client);

    let mut run = Run::default();
    match stop {
        Stop::Term => {
            let drained = daemon.stop().await?;
            run.push(Metric::millis("shutdown", "SIGTERM until exit", drained));
        }
        Stop::Kill => daemon.kill().await?,
    }
    let restart = daemon.restart().await?;
    run.push(
        Metric::millis("to_serving", "start until SERVING", restart.to_serving)
            .target(Target::AtMost(500.0)),
    );
    run.push(Metric::millis(
        "to_ready",
        "start until READY=1",
        restart.to_ready,
    ));
    run.push(Metric::millis(
        "empty_to_serving",
        "start with an empty store, for comparison",
        empty.to_serving,
    ));

    // Every acknowledged job must have survived, however the daemon ended.
    let mut client = JobsClient::new(daemon.channel().await?);
    run.check_count(
        "scheduled jobs in Stats after restart",
        jobs,
        stats(&mut client).await?.scheduled,
    )?;
    daemon.stop().await?;
    Ok(run)
}
