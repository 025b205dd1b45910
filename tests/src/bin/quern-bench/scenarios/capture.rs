//! P13: what capturing a job's output costs. One command that prints a lot
//! is timed, in the same run, through quern (submit, then the success
//! event), written straight to a file, written to /dev/null, and piped
//! through `cat` to /dev/null (the cost of one more pipe, which any capture
//! through a pipe pays).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{JobState, SubmitRequest};

use super::{Ctx, EventWatch, budget, exec, request};
use crate::daemon::DaemonConfig;
use crate::report::{Metric, Run, Target, Unit};

/// How many times each way runs; the best time of each is kept.
const ROUNDS: u64 = 3;

/// The shell command that prints `mib` MiB: lines of 99 x's, as in the issue.
fn command(mib: u64) -> String {
    format!("yes {} | head -c {mib}M", "x".repeat(99))
}

/// Runs the command once each way, `mib` MiB of output.
pub async fn run(ctx: &Ctx<'_>, mib: u64) -> Result<Run> {
    let cmd = command(mib);
    let (mut daemon, _) = ctx.start(DaemonConfig::default()).await?;
    let mut client = JobsClient::new(daemon.channel().await?);
    let mut events = EventWatch::subscribe(daemon.channel().await?).await?;

    // Alternated, so a machine that gets busier during the run weighs on
    // each way alike; the best of each is kept.
    let mut quern = Duration::MAX;
    let mut file = Duration::MAX;
    let mut null = Duration::MAX;
    let mut piped = Duration::MAX;
    let out_path = ctx.options.dir.join("p13-output");
    let mut succeeded = 0;
    let mut daemon_cpu = Duration::ZERO;
    for _ in 0..ROUNDS {
        let cpu_before = daemon.cpu_time()?;
        let started = Instant::now();
        let job = client
            .submit(request(SubmitRequest {
                spec: Some(exec(&["sh", "-c", &cmd], None)),
            }))
            .await
            .context("Submit failed")?
            .into_inner()
            .job
            .context("SubmitResponse has no job")?;
        let deadline = tokio::time::Instant::now() + budget(mib * 10);
        let end = events
            .until(deadline, job.id, super::Event::is_terminal)
            .await?;
        if end.state != JobState::Succeeded {
            bail!(
                "job {} ({cmd}) ended {:?}: {}",
                job.id,
                end.state,
                end.error
            );
        }
        quern = quern.min(started.elapsed());
        daemon_cpu += daemon.cpu_time()?.saturating_sub(cpu_before);
        succeeded += 1;

        let target = std::fs::File::create(&out_path)
            .with_context(|| format!("cannot create {}", out_path.display()))?;
        file = file.min(direct(&cmd, Stdio::from(target))?);
        std::fs::remove_file(&out_path).ok();
        null = null.min(direct(&cmd, Stdio::null())?);
        piped = piped.min(direct(&format!("{cmd} | cat"), Stdio::null())?);
    }

    let mut run = Run::default();
    run.check_count("jobs succeeded", ROUNDS, succeeded)?;
    run.push(Metric::millis(
        "quern",
        "through quern (submit -> succeeded)",
        quern,
    ));
    // What the capture itself costs, whatever else the machine does.
    run.push(Metric::millis(
        "daemon_cpu",
        "quernd CPU per run through quern",
        daemon_cpu / u32::try_from(ROUNDS)?,
    ));
    run.push(Metric::millis("file", "to a file on disk", file));
    run.push(Metric::millis("null", "to /dev/null", null));
    // Any capture through a pipe pays for one more pipe between the job
    // and the reader: `cat` reading it and writing to /dev/null is that
    // cost alone.
    run.push(Metric::millis(
        "piped",
        "through one more pipe (| cat) to /dev/null",
        piped,
    ));
    run.push(
        Metric::new(
            "ratio",
            "through quern / to /dev/null",
            quern.as_secs_f64() / null.as_secs_f64().max(1e-9),
            Unit::Ratio,
        )
        .target(Target::AtMost(1.5)),
    );
    daemon.stop().await?;
    Ok(run)
}

/// Runs the command with its stdout going to `stdout`, and times it.
fn direct(cmd: &str, stdout: Stdio) -> Result<Duration> {
    let started = Instant::now();
    let status = Command::new("sh")
        .args(["-c", cmd])
        .stdout(stdout)
        .status()
        .context("cannot run sh")?;
    let took = started.elapsed();
    if !status.success() {
        bail!("{cmd} failed: {status}");
    }
    Ok(took)
}
