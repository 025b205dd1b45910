//! P3: how many no-op exec jobs the daemon runs per second end to end,
//! against the physical limit: the same number of `/bin/true` spawned and
//! waited for directly by the bench, with as many threads as the daemon
//! runs jobs at once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use quern_proto::v1::JobState;
use quern_proto::v1::jobs_client::JobsClient;

use super::{Ctx, EventWatch, budget, exec, fill, stats};
use crate::daemon::{DaemonConfig, context_switches, idle_time, own_children_cpu_time};
use crate::report::{Metric, Run, Target, Unit};

/// Runs `jobs` `/bin/true` jobs through the daemon, then `jobs` raw spawns.
pub async fn run(ctx: &Ctx<'_>, jobs: u64) -> Result<Run> {
    let (mut daemon, _) = ctx.start(DaemonConfig::default()).await?;
    let mut client = JobsClient::new(daemon.channel().await?);
    // The raw loop copies whatever concurrency the daemon really uses.
    let concurrency = stats(&mut client).await?.concurrency.max(1);
    let mut events = EventWatch::subscribe(daemon.channel().await?).await?;

    let pid = daemon.pid()?;
    let cpu_before = daemon.cpu_time()?;
    let jobs_cpu_before = daemon.children_cpu_time()?;
    let idle_before = idle_time()?;
    let switches_before = context_switches(pid)?;
    let started = Instant::now();
    // Submitting happens concurrently with the first jobs running: that is
    // part of the end-to-end cost being measured.
    let submitting = {
        let mut client = client.clone();
        tokio::spawn(async move { fill(&mut client, jobs, &exec(&["/bin/true"], None)).await })
    };
    let deadline = tokio::time::Instant::now() + budget(jobs);
    let (mut succeeded, mut failed) = (0u64, 0u64);
    let mut first_error = String::new();
    // The daemon is fresh, so every terminal event is one of our jobs, and
    // with one attempt each, every job ends exactly once.
    while succeeded + failed < jobs {
        let event = events.next(deadline).await?;
        if !event.is_terminal() {
            continue;
        }
        if event.state == JobState::Succeeded {
            succeeded += 1;
        } else {
            failed += 1;
            if first_error.is_empty() {
                first_error = format!(
                    "job {} ended {:?}: {}",
                    event.job_id, event.state, event.error
                );
            }
        }
    }
    let elapsed = started.elapsed();
    let daemon_cpu = daemon.cpu_time()?.saturating_sub(cpu_before);
    let daemon_jobs_cpu = daemon.children_cpu_time()?.saturating_sub(jobs_cpu_before);
    let daemon_idle = idle_time()?.saturating_sub(idle_before);
    let daemon_switches = context_switches(pid)?.saturating_sub(switches_before);
    submitting.await.context("the submitting task panicked")??;
    if failed > 0 {
        bail!("{failed} of {jobs} /bin/true jobs did not succeed; first: {first_error}");
    }

    let raw_jobs_cpu_before = own_children_cpu_time()?;
    let raw_idle_before = idle_time()?;
    let raw = tokio::task::spawn_blocking(move || raw_spawn_loop(jobs, concurrency))
        .await
        .context("the raw spawn loop panicked")??;
    let raw_jobs_cpu = own_children_cpu_time()?.saturating_sub(raw_jobs_cpu_before);
    let raw_idle = idle_time()?.saturating_sub(raw_idle_before);

    let mut run = Run::default();
    let per_job = |d: Duration| d.div_f64(jobs as f64);
    run.check_count("jobs succeeded", jobs, succeeded)?;
    let daemon_rate = Metric::rate("daemon_rate", "through quernd", jobs, elapsed);
    let raw_rate = Metric::rate(
        "raw_rate",
        format!("raw spawn+wait, {concurrency} threads"),
        jobs,
        raw,
    );
    let ratio = daemon_rate.value / raw_rate.value;
    run.push(daemon_rate);
    run.push(raw_rate);
    run.push(Metric::new("ratio", "quernd / raw", ratio, Unit::Ratio).target(Target::AtLeast(0.8)));
    // The daemon's own CPU per job, without the jobs' processes: steadier
    // than the rates on a noisy machine, and what the ratio is lost to.
    run.push(Metric::millis(
        "daemon_cpu_per_job",
        "quernd CPU per job",
        per_job(daemon_cpu),
    ));
    // Each switch is a sleep and a wake-up of one of the daemon's threads,
    // which on a VM can cost more than the work between them.
    run.push(Metric::new(
        "daemon_switches_per_job",
        "quernd context switches per job",
        daemon_switches as f64 / jobs as f64,
        Unit::Mean,
    ));
    // Where the rest of the machine went: the jobs' own processes (what
    // the raw loop pays too) and the cores' idle time, which the raw loop
    // hardly has. Both are sampled while the run is going on, from the
    // kernel's counters, so other load on the machine shows up here too.
    run.push(Metric::millis(
        "daemon_jobs_cpu_per_job",
        "job processes' CPU per job, through quernd",
        per_job(daemon_jobs_cpu),
    ));
    run.push(Metric::millis(
        "raw_jobs_cpu_per_job",
        "job processes' CPU per job, raw",
        per_job(raw_jobs_cpu),
    ));
    run.push(Metric::millis(
        "daemon_idle_per_job",
        "cores' idle time per job, through quernd",
        per_job(daemon_idle),
    ));
    run.push(Metric::millis(
        "raw_idle_per_job",
        "cores' idle time per job, raw",
        per_job(raw_idle),
    ));
    run.push(Metric::new(
        "concurrency",
        "jobs at once",
        f64::from(concurrency),
        Unit::Count,
    ));
    run.check_count(
        "succeeded jobs in Stats",
        jobs,
        stats(&mut client).await?.succeeded,
    )?;
    daemon.stop().await?;
    Ok(run)
}

/// Spawns and waits for `/bin/true` `jobs` times, spread over `threads`
/// threads each running a sequential loop; returns the wall time.
fn raw_spawn_loop(jobs: u64, threads: u32) -> Result<Duration> {
    let threads = u64::from(threads);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let loops: Vec<_> = (0..threads)
            .map(|i| {
                let share = jobs / threads + u64::from(i < jobs % threads);
                scope.spawn(move || -> Result<()> {
                    for _ in 0..share {
                        let status = Command::new("/bin/true")
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .context("cannot run /bin/true")?;
                        if !status.success() {
                            bail!("/bin/true exited with {status}");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in loops {
            match handle.join() {
                Ok(result) => result?,
                Err(_) => bail!("a raw spawn thread panicked"),
            }
        }
        Ok(())
    })?;
    Ok(started.elapsed())
}
