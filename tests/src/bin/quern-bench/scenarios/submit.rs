//! P1: how fast jobs can be stored durably, through `Submit` (P1a),
//! `SubmitBatch` (P1b) and the `quernctl` command line (P1c). Every job is
//! due in an hour, so nothing runs and only the write path is measured.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use quern_proto::v1::SubmitRequest;
use quern_proto::v1::jobs_client::JobsClient;
use tokio::task::JoinSet;

use super::{Ctx, exec, fill, in_an_hour, request, stats};
use crate::daemon::{DaemonConfig, context_switches, cpu_time};
use crate::report::{Metric, Run, Target, Unit};
use crate::stats::Summary;

/// P1a: `jobs` Submits at each client count, every client with its own
/// connection so one HTTP/2 connection is never the bottleneck.
pub async fn concurrent(ctx: &Ctx<'_>, jobs: u64) -> Result<Run> {
    let (mut daemon, _) = ctx.start(DaemonConfig::default()).await?;
    let levels = &ctx.options.clients;
    let max_clients = levels.iter().copied().max().unwrap_or(1);
    // Connections are opened before the clock starts: a real client opens
    // one once and submits many jobs over it.
    let mut clients = Vec::with_capacity(max_clients);
    for _ in 0..max_clients {
        clients.push(JobsClient::new(daemon.channel().await?));
    }

    let spec = exec(&["true"], Some(in_an_hour()));
    let mut run = Run::default();
    let pid = daemon.pid()?;
    let me = std::process::id();
    for &level in levels {
        let mut tasks = JoinSet::new();
        let cpu = cpu_time(pid)?;
        let switches = context_switches(pid)?;
        let bench_cpu = cpu_time(me)?;
        let started = Instant::now();
        for (i, client) in clients.iter().take(level).enumerate() {
            let mut client = client.clone();
            let spec = spec.clone();
            // Spread the jobs so the counts add up exactly.
            let share = jobs / level as u64 + u64::from((i as u64) < jobs % level as u64);
            tasks.spawn(async move {
                let mut latencies = Vec::with_capacity(usize::try_from(share)?);
                for _ in 0..share {
                    let call = Instant::now();
                    client
                        .submit(request(SubmitRequest {
                            spec: Some(spec.clone()),
                        }))
                        .await
                        .context("Submit failed")?;
                    latencies.push(call.elapsed());
                }
                anyhow::Ok(latencies)
            });
        }
        let mut latencies = Vec::with_capacity(usize::try_from(jobs)?);
        while let Some(done) = tasks.join_next().await {
            latencies.extend(done.context("a submitting client panicked")??);
        }
        let elapsed = started.elapsed();
        let cpu = cpu_time(pid)?.saturating_sub(cpu);
        let switches = context_switches(pid)?.saturating_sub(switches);
        // Nothing else in the bench runs meanwhile: this is the clients.
        let bench_cpu = cpu_time(me)?.saturating_sub(bench_cpu);
        run.check_count(
            format!("Submits acknowledged with {level} clients"),
            jobs,
            latencies.len() as u64,
        )?;

        let plural = if level == 1 { "client" } else { "clients" };
        let mut rate = Metric::rate(
            format!("clients_{level}"),
            format!("{level} {plural}"),
            jobs,
            elapsed,
        );
        if level == 64 {
            rate = rate.target(Target::AtLeast(25_000.0));
        }
        // Jobs per fsync: above 1 only if concurrent Submits share commits.
        let per_fsync = rate.value / ctx.environment.fsyncs_per_sec();
        run.push(rate);
        run.push(Metric::new(
            format!("clients_{level}_jobs_per_fsync"),
            format!("{level} {plural}: rate / fsync limit"),
            per_fsync,
            Unit::Ratio,
        ));
        let latency = Summary::of(&mut latencies);
        run.push(Metric::millis(
            format!("clients_{level}_p50"),
            format!("{level} {plural}: Submit p50"),
            latency.p50,
        ));
        run.push(Metric::millis(
            format!("clients_{level}_p99"),
            format!("{level} {plural}: Submit p99"),
            latency.p99,
        ));
        // Steadier than the rate on a noisy machine: what each Submit cost
        // the daemon.
        run.push(Metric::millis(
            format!("clients_{level}_daemon_cpu"),
            format!("{level} {plural}: quernd CPU per job"),
            cpu.div_f64(jobs as f64),
        ));
        run.push(Metric::new(
            format!("clients_{level}_daemon_switches"),
            format!("{level} {plural}: quernd context switches per job"),
            switches as f64 / jobs as f64,
            Unit::Mean,
        ));
        // The clients share the machine with the daemon: what they took
        // from it.
        run.push(Metric::millis(
            format!("clients_{level}_bench_cpu"),
            format!("{level} {plural}: the clients' CPU per job"),
            bench_cpu.div_f64(jobs as f64),
        ));
    }

    let mut client = JobsClient::new(daemon.channel().await?);
    let expected = jobs * levels.len() as u64;
    run.check_count(
        "scheduled jobs in Stats",
        expected,
        stats(&mut client).await?.scheduled,
    )?;
    daemon.stop().await?;
    Ok(run)
}

/// P1b: `jobs` jobs in `SubmitBatch` calls of 10k, one call at a time.
pub async fn batch(ctx: &Ctx<'_>, jobs: u64) -> Result<Run> {
    let (mut daemon, _) = ctx.start(DaemonConfig::default()).await?;
    let mut client = JobsClient::new(daemon.channel().await?);
    let filled = fill(&mut client, jobs, &exec(&["true"], Some(in_an_hour()))).await?;

    let mut run = Run::default();
    run.push(
        Metric::rate("rate", "SubmitBatch rate", jobs, filled.elapsed)
            .target(Target::AtLeast(250_000.0)),
    );
    let mut calls = filled.calls;
    let calls = Summary::of(&mut calls);
    run.push(Metric::millis("call_p50", "one call, p50", calls.p50));
    run.push(Metric::millis("call_p99", "one call, p99", calls.p99));
    run.check_count(
        "scheduled jobs in Stats",
        jobs,
        stats(&mut client).await?.scheduled,
    )?;
    daemon.stop().await?;
    Ok(run)
}

/// P1c: `jobs` sequential `quernctl submit exec --in 1h -- true` runs, timed
/// as a whole, against a plain spawn+wait of `/bin/true`, the floor any
/// command-line client pays.
pub async fn cli(ctx: &Ctx<'_>, jobs: u64) -> Result<Run> {
    let (mut daemon, _) = ctx.start(DaemonConfig::default()).await?;
    let quernctl = ctx.options.quernctl.clone();
    let socket = daemon.socket().to_path_buf();
    let spawn_samples = jobs.min(1_000);

    // Blocking process spawns belong on a blocking thread, not on a runtime
    // worker.
    let (total, mut each, bare) = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut each = Vec::with_capacity(usize::try_from(jobs)?);
        let started = Instant::now();
        for _ in 0..jobs {
            let call = Instant::now();
            let output = Command::new(&quernctl)
                .arg("--socket")
                .arg(&socket)
                .args(["submit", "exec", "--in", "1h", "--", "true"])
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("cannot run {}", quernctl.display()))?;
            each.push(call.elapsed());
            if !output.status.success() {
                bail!(
                    "quernctl submit failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            let stdout = String::from_utf8_lossy(&output.stdout);
            if stdout.trim().parse::<u64>().is_err() {
                bail!("quernctl submit printed {:?}, not a job id", stdout.trim());
            }
        }
        let total = started.elapsed();
        let bare = spawn_loop(spawn_samples)?;
        Ok((total, each, bare))
    })
    .await
    .context("the quernctl loop panicked")??;

    let mut run = Run::default();
    let per_call = total.div_f64(jobs as f64);
    let per_spawn = mean(&bare);
    run.push(
        Metric::millis("per_invocation", "quernctl submit, mean", per_call)
            .target(Target::AtMost(5.0)),
    );
    let each = Summary::of(&mut each);
    run.push(Metric::millis(
        "per_invocation_p50",
        "quernctl submit, p50",
        each.p50,
    ));
    run.push(Metric::millis(
        "per_invocation_p99",
        "quernctl submit, p99",
        each.p99,
    ));
    run.push(Metric::millis(
        "bare_spawn",
        "spawn+wait /bin/true, mean",
        per_spawn,
    ));
    run.push(Metric::millis(
        "overhead",
        "quernctl over a bare spawn",
        per_call.saturating_sub(per_spawn),
    ));

    let mut client = JobsClient::new(daemon.channel().await?);
    run.check_count(
        "scheduled jobs in Stats",
        jobs,
        stats(&mut client).await?.scheduled,
    )?;
    daemon.stop().await?;
    Ok(run)
}

/// Spawns `/bin/true` and waits for it, `n` times, returning each duration.
fn spawn_loop(n: u64) -> Result<Vec<Duration>> {
    let mut each = Vec::with_capacity(usize::try_from(n)?);
    for _ in 0..n {
        let call = Instant::now();
        let status = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run /bin/true")?;
        each.push(call.elapsed());
        if !status.success() {
            bail!("/bin/true exited with {status}");
        }
    }
    Ok(each)
}

fn mean(samples: &[Duration]) -> Duration {
    let total: Duration = samples.iter().sum();
    total.div_f64(samples.len().max(1) as f64)
}
