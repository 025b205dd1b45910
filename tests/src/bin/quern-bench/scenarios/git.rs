//! The git scenarios of issue 16, on a synthetic repository the bench makes
//! with `git fast-import`: the commit walk against `git rev-list --count`
//! (P8a), the full churn against `git log --numstat --no-renames` (P8b),
//! and a re-run after 10 new commits with the numstat cache (P8c).

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{
    GetRequest, GitAnalysis, GitResult, GitSpec, JobSpec, JobState, SubmitRequest, job_result,
    job_spec,
};
use tonic::transport::Channel;

use super::{Ctx, EventWatch, budget, request};
use crate::daemon::DaemonConfig;
use crate::report::{Metric, Run, Target, Unit};

/// Files the synthetic history edits, a few lines at a time.
const FILES: u64 = 200;

/// A `git fast-import` stream of `commits` commits on `main`, each editing
/// one or two files with a few lines changed, from a fixed seed.
fn stream(commits: u64, start: u64) -> String {
    let mut out = String::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ start;
    let mut next = || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x >> 33
    };
    for i in start..start + commits {
        out.push_str(&format!(
            "commit refs/heads/main\ncommitter Bench <b@example.org> {} +0000\ndata 7\ncommit\n",
            1_600_000_000 + i * 60
        ));
        if i == start && start > 0 {
            // A later import continues the branch already there.
            out.push_str("from refs/heads/main^0\n");
        }
        for _ in 0..1 + next() % 2 {
            let f = next() % FILES;
            let lines = 20 + next() % 40;
            let body: String = (0..lines)
                .map(|l| format!("{f} line {l} {}\n", (next() % 8) * u64::from(l % 5 == 0)))
                .collect();
            out.push_str(&format!(
                "M 100644 inline src/f{f}.txt\ndata {}\n{body}\n",
                body.len()
            ));
        }
    }
    out
}

fn fast_import(dir: &Path, commits: u64, start: u64) -> Result<()> {
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot run git fast-import; is git installed?")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(stream(commits, start).as_bytes())?;
    ensure!(child.wait()?.success(), "git fast-import failed");
    Ok(())
}

/// Runs git in `dir` with stdout to /dev/null; returns how long it took.
fn time_git(dir: &Path, args: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdout(Stdio::null())
        .status()?;
    ensure!(status.success(), "git {args:?} failed");
    Ok(started.elapsed())
}

fn spec(repo: &Path, analysis: &str) -> JobSpec {
    JobSpec {
        kind: Some(job_spec::Kind::Git(GitSpec {
            repo: repo.to_string_lossy().into_owned(),
            analyses: vec![GitAnalysis {
                name: analysis.into(),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Submits a git job, waits for it, and returns its result and its run
/// time by the daemon's stamps (`finished_at - started_at`).
async fn run_job(
    client: &mut JobsClient<Channel>,
    events: &mut EventWatch,
    spec: JobSpec,
) -> Result<(GitResult, Duration)> {
    let job = client
        .submit(request(SubmitRequest { spec: Some(spec) }))
        .await
        .context("Submit failed")?
        .into_inner()
        .job
        .context("no job")?;
    let end = events
        .until(
            tokio::time::Instant::now() + budget(1) * 10,
            job.id,
            super::Event::is_terminal,
        )
        .await?;
    if end.state != JobState::Succeeded {
        bail!("git job {} ended {:?}: {}", job.id, end.state, end.error);
    }
    let job = client
        .get(request(GetRequest { id: job.id }))
        .await?
        .into_inner()
        .job
        .context("no job")?;
    let t = |ts: Option<prost_types::Timestamp>| -> Result<std::time::SystemTime> {
        Ok(std::time::SystemTime::try_from(ts.context("no time")?)?)
    };
    let took = t(job.finished_at)?
        .duration_since(t(job.started_at)?)
        .unwrap_or_default();
    match job.result.and_then(|r| r.kind) {
        Some(job_result::Kind::Git(g)) => Ok((g, took)),
        _ => bail!("job {} has no git result", job.id),
    }
}

/// A synthetic repository of `commits` commits under the bench dir.
fn repository(ctx: &Ctx<'_>, commits: u64) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("quern-bench-git-")
        .tempdir_in(&ctx.options.dir)?;
    let status = Command::new("git")
        .args(["init", "-q", "-b", "main"])
        .current_dir(dir.path())
        .status()?;
    ensure!(status.success(), "git init failed");
    fast_import(dir.path(), commits, 0)?;
    Ok(dir)
}

/// How many files' (revisions, added, removed) in `r` differ from
/// `git log --numstat --no-renames` at `rev`.
fn differing(dir: &Path, r: &GitResult, rev: &str) -> Result<u64> {
    let out = Command::new("git")
        .args(["log", "--numstat", "--no-renames", "--format=", rev])
        .current_dir(dir)
        .output()?;
    ensure!(out.status.success(), "git log failed");
    let mut theirs: std::collections::BTreeMap<String, (u64, u64, u64)> = Default::default();
    for line in String::from_utf8(out.stdout)?
        .lines()
        .filter(|l| !l.is_empty())
    {
        let mut f = line.split('\t');
        let (a, d, p) = (f.next(), f.next(), f.next());
        let e = theirs.entry(p.unwrap_or_default().to_string()).or_default();
        e.0 += 1;
        e.1 += a.and_then(|a| a.parse().ok()).unwrap_or(0);
        e.2 += d.and_then(|d| d.parse().ok()).unwrap_or(0);
    }
    let ours: std::collections::BTreeMap<String, (u64, u64, u64)> = r
        .churn
        .as_ref()
        .map(|c| {
            c.files
                .iter()
                .map(|f| (f.path.clone(), (f.revisions, f.added, f.removed)))
                .collect()
        })
        .unwrap_or_default();
    let keys: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    Ok(keys
        .into_iter()
        .filter(|k| ours.get(*k) != theirs.get(*k))
        .count() as u64)
}

/// P8a: the walk (a `summary` job) against `git rev-list --count HEAD`.
pub async fn walk(ctx: &Ctx<'_>, commits: u64) -> Result<Run> {
    let repo = repository(ctx, commits)?;
    let (mut daemon, _) = ctx.start(DaemonConfig::default()).await?;
    let mut client = JobsClient::new(daemon.channel().await?);
    let mut events = EventWatch::subscribe(daemon.channel().await?).await?;
    let git = time_git(repo.path(), &["rev-list", "--count", "HEAD"])?;
    let (r, took) = run_job(&mut client, &mut events, spec(repo.path(), "summary")).await?;
    let mut run = Run::default();
    run.check_count("commits walked", commits, r.commits)?;
    let rate = commits as f64 / took.as_secs_f64();
    run.push(
        Metric::new("walk_rate", "summary job: commits/s", rate, Unit::Count)
            .target(Target::AtLeast(100_000.0)),
    );
    run.push(Metric::millis(
        "job",
        "summary job (started -> finished)",
        took,
    ));
    run.push(Metric::millis("git", "git rev-list --count HEAD", git));
    run.push(
        Metric::new(
            "vs_git",
            "git's time / quern's",
            git.as_secs_f64() / took.as_secs_f64(),
            Unit::Ratio,
        )
        .target(Target::AtLeast(1.0)),
    );
    daemon.stop().await?;
    Ok(run)
}

/// P8b and P8c: the full churn against `git log --numstat --no-renames`,
/// then a re-run after 10 new commits.
pub async fn churn(ctx: &Ctx<'_>, commits: u64) -> Result<Run> {
    let repo = repository(ctx, commits)?;
    let (mut daemon, _) = ctx.start(DaemonConfig::default()).await?;
    let mut client = JobsClient::new(daemon.channel().await?);
    let mut events = EventWatch::subscribe(daemon.channel().await?).await?;
    let git = time_git(repo.path(), &["log", "--numstat", "--no-renames", "HEAD"])?;
    let (first, took) = run_job(&mut client, &mut events, spec(repo.path(), "churn")).await?;
    fast_import(repo.path(), 10, commits)?;
    let (second, again) = run_job(&mut client, &mut events, spec(repo.path(), "churn")).await?;

    let mut run = Run::default();
    run.check_count("commits in the first run", commits, first.commits)?;
    run.check_count(
        "files whose churn differs from git's",
        0,
        // The first run's commits: all but the 10 added since.
        differing(repo.path(), &first, "HEAD~10")?,
    )?;
    run.check_count("commits computed on the re-run", 10, second.computed)?;
    run.check_count("commits reused on the re-run", commits, second.reused)?;
    run.push(Metric::millis(
        "churn",
        "churn job (started -> finished)",
        took,
    ));
    run.push(Metric::millis(
        "git",
        "git log --numstat --no-renames HEAD > /dev/null",
        git,
    ));
    run.push(
        Metric::new(
            "vs_git",
            "P8b: git's time / quern's",
            git.as_secs_f64() / took.as_secs_f64(),
            Unit::Ratio,
        )
        .target(Target::AtLeast(3.0)),
    );
    run.push(Metric::millis(
        "rerun",
        "re-run after 10 new commits",
        again,
    ));
    run.push(
        Metric::new(
            "rerun_share",
            "P8c: re-run / first run",
            100.0 * again.as_secs_f64() / took.as_secs_f64(),
            Unit::Percent,
        )
        .target(Target::AtMost(5.0)),
    );
    daemon.stop().await?;
    Ok(run)
}
