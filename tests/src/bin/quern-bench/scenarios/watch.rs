//! The watch scenarios of issue 15: how soon a write starts its job (P9a),
//! a burst of files in new directories (P9b), and what a rule over a big
//! tree costs to add and to keep (P9c).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::watches_client::WatchesClient;
use quern_proto::v1::{
    AddWatchRequest, EventsRequest, GetRequest, GetWatchRequest, JobState, WatchSpec, WatchTrigger,
    job_spec,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::{Ctx, EventWatch, RPC_TIMEOUT, budget, exec, request};
use crate::daemon::DaemonConfig;
use crate::report::{Metric, Run, Target, Unit};
use crate::stats::Summary;

/// The debounce P9a measures against.
const P9A_DEBOUNCE: Duration = Duration::from_millis(50);

/// Files per directory in P9b and P9c.
const PER_DIR: u64 = 100;

/// The idle window of P9c at full size (100k files); smaller runs idle a
/// proportionally shorter time, at least a second.
const IDLE: Duration = Duration::from_secs(60);

/// A rule over `root` running `true` after `debounce`.
fn rule(root: &Path, debounce: Duration) -> WatchSpec {
    WatchSpec {
        root: root.to_string_lossy().into_owned(),
        debounce: Some(prost_types::Duration::try_from(debounce).expect("small")),
        job: Some(exec(&["true"], None)),
        ..WatchSpec::default()
    }
}

/// The triggers of every rule, as they come, with the time they arrived.
async fn triggers(channel: Channel) -> Result<mpsc::UnboundedReceiver<(Instant, WatchTrigger)>> {
    let mut client = JobsClient::new(channel);
    let opening = client.events(EventsRequest {
        watches: true,
        ..EventsRequest::default()
    });
    let mut stream = tokio::time::timeout(RPC_TIMEOUT, opening)
        .await
        .context("Events did not open in time")?
        .context("Events failed")?
        .into_inner();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(e)) = stream.message().await {
            if let Some(w) = e.watch
                && w.change == "triggered"
                && let Some(t) = w.trigger
                && tx.send((Instant::now(), t)).is_err()
            {
                break;
            }
        }
    });
    Ok(rx)
}

async fn next_trigger(
    rx: &mut mpsc::UnboundedReceiver<(Instant, WatchTrigger)>,
    deadline: tokio::time::Instant,
) -> Result<(Instant, WatchTrigger)> {
    match tokio::time::timeout_at(deadline, rx.recv()).await {
        Err(_) => bail!("no trigger arrived in time; the rule seems stuck"),
        Ok(None) => bail!("the daemon ended the Events stream"),
        Ok(Some(t)) => Ok(t),
    }
}

/// A fresh directory for a scenario's tree, under the bench dir.
fn tree_dir(ctx: &Ctx<'_>, name: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("quern-bench-{name}-"))
        .tempdir_in(&ctx.options.dir)
        .context("cannot make the tree's directory")
}

/// Makes `files` files, [`PER_DIR`] to a directory, each directory two
/// levels down (`dNN/eNNN/`); returns their paths relative to `root`.
fn make_tree(root: &Path, files: u64) -> Result<BTreeSet<PathBuf>> {
    let mut made = BTreeSet::new();
    let dirs = files.div_ceil(PER_DIR);
    for d in 0..dirs {
        let dir = PathBuf::from(format!("d{:02}/e{d:04}", d % 10));
        std::fs::create_dir_all(root.join(&dir))?;
        for f in 0..PER_DIR.min(files - d * PER_DIR) {
            let rel = dir.join(format!("{f}.txt"));
            std::fs::write(root.join(&rel), b"x")?;
            made.insert(rel);
        }
    }
    Ok(made)
}

async fn add(client: &mut WatchesClient<Channel>, spec: WatchSpec) -> Result<u64> {
    Ok(client
        .add(request(AddWatchRequest { spec: Some(spec) }))
        .await
        .context("Add failed")?
        .into_inner()
        .watch
        .context("AddWatchResponse has no watch")?
        .id)
}

/// P9a: `writes` writes, one at a time, each after the previous one's job
/// has finished; the latency is from the write to the job's `started_at`.
pub async fn latency(ctx: &Ctx<'_>, writes: u64) -> Result<Run> {
    let tree = tree_dir(ctx, "p9a")?;
    let root = tree.path().canonicalize()?;
    let (mut daemon, _) = ctx.start(DaemonConfig::default()).await?;
    let mut jobs = JobsClient::new(daemon.channel().await?);
    let mut watches = WatchesClient::new(daemon.channel().await?);
    let mut trig = triggers(daemon.channel().await?).await?;
    let mut events = EventWatch::subscribe(daemon.channel().await?).await?;
    add(&mut watches, rule(&root, P9A_DEBOUNCE)).await?;

    let mut to_start = Vec::new();
    let mut to_trigger = Vec::new();
    for n in 0..writes {
        let deadline = tokio::time::Instant::now() + budget(1);
        let written = SystemTime::now();
        let wrote = Instant::now();
        std::fs::write(root.join(format!("f{}", n % 10)), n.to_string())?;
        let (arrived, t) = next_trigger(&mut trig, deadline).await?;
        to_trigger.push(arrived.saturating_duration_since(wrote));
        let end = events
            .until(deadline, t.job_id, super::Event::is_terminal)
            .await?;
        if end.state != JobState::Succeeded {
            bail!("job {} ended {:?}: {}", t.job_id, end.state, end.error);
        }
        let job = jobs
            .get(request(GetRequest { id: t.job_id }))
            .await
            .context("Get failed")?
            .into_inner()
            .job
            .context("GetResponse has no job")?;
        let started = SystemTime::try_from(job.started_at.context("the job has no started_at")?)?;
        to_start.push(started.duration_since(written).unwrap_or(Duration::ZERO));
    }

    let mut run = Run::default();
    run.check_count("jobs started", writes, to_start.len() as u64)?;
    let start = Summary::of(&mut to_start);
    let trigger = Summary::of(&mut to_trigger);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    run.push(
        Metric::millis("start_p50", "write -> job started_at, p50", start.p50)
            .target(Target::AtMost(ms(P9A_DEBOUNCE) + 5.0)),
    );
    run.push(
        Metric::millis("start_p99", "write -> job started_at, p99", start.p99)
            .target(Target::AtMost(ms(P9A_DEBOUNCE) + 20.0)),
    );
    run.push(Metric::millis(
        "trigger_p50",
        "write -> trigger event received, p50",
        trigger.p50,
    ));
    run.push(Metric::millis(
        "debounce",
        "the rule's debounce",
        P9A_DEBOUNCE,
    ));
    daemon.stop().await?;
    Ok(run)
}

/// The paths in job `id`'s changed paths file.
async fn paths_file(client: &mut JobsClient<Channel>, id: u64) -> Result<BTreeSet<PathBuf>> {
    let job = client
        .get(request(GetRequest { id }))
        .await
        .context("Get failed")?
        .into_inner()
        .job
        .context("GetResponse has no job")?;
    let Some(job_spec::Kind::Exec(e)) = job.spec.and_then(|s| s.kind) else {
        bail!("job {id} is not an exec job");
    };
    let file = e
        .env
        .get("QUERN_CHANGED_PATHS_FILE")
        .with_context(|| format!("job {id} has no QUERN_CHANGED_PATHS_FILE"))?;
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
    Ok(text.lines().map(PathBuf::from).collect())
}

/// A rule's `max_wait` when none is given (issue 15).
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);

/// P9b: a burst of `files` files in new directories, under a rule with the
/// default timings; the jobs it makes, and the paths they miss.
pub async fn burst(ctx: &Ctx<'_>, files: u64) -> Result<Run> {
    let tree = tree_dir(ctx, "p9b")?;
    let root = tree.path().canonicalize()?;
    let (mut daemon, _) = ctx.start(DaemonConfig::default()).await?;
    let mut jobs = JobsClient::new(daemon.channel().await?);
    let mut watches = WatchesClient::new(daemon.channel().await?);
    let mut trig = triggers(daemon.channel().await?).await?;
    let id = add(&mut watches, rule(&root, Duration::from_millis(100))).await?;

    let started = Instant::now();
    let made = make_tree(&root, files)?;
    let burst = started.elapsed();
    let ended = Instant::now();
    let deadline = tokio::time::Instant::now() + budget(files);
    let mut seen = BTreeSet::new();
    let mut made_jobs = 0u64;
    let mut last = ended;
    while !made.is_subset(&seen) {
        let (arrived, t) = next_trigger(&mut trig, deadline).await?;
        made_jobs += 1;
        last = arrived;
        seen.extend(paths_file(&mut jobs, t.job_id).await?);
    }
    // Quiet for a while: any further job the burst made would show now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rule = watches
        .get(request(GetWatchRequest { id }))
        .await
        .context("Get of the rule failed")?
        .into_inner()
        .watch
        .context("GetWatchResponse has no watch")?;
    let missed = made.difference(&seen).count() as u64;

    let mut run = Run::default();
    run.check_count("paths missed", 0, missed)?;
    run.check_count("jobs counted by the rule", made_jobs, rule.jobs_made)?;
    run.push(Metric::millis("burst", "making the files", burst));
    run.push(Metric::millis(
        "to_last_trigger",
        "end of the burst -> last trigger",
        last.saturating_duration_since(ended),
    ));
    run.push(
        Metric::new("jobs", "jobs made", rule.jobs_made as f64, Unit::Count)
            .target(Target::AtMost(2.0)),
    );
    // A burst longer than max_wait (10 s by default) triggers every
    // max_wait by design; on a disk where making the files is that slow,
    // the jobs above are these plus one, not a failure to coalesce.
    run.push(Metric::new(
        "max_wait_triggers",
        "triggers max_wait forces in a burst this long",
        (burst.as_secs_f64() / DEFAULT_MAX_WAIT.as_secs_f64()).floor(),
        Unit::Count,
    ));
    run.push(
        Metric::new("missed", "paths missed", missed as f64, Unit::Count)
            .target(Target::AtMost(0.0)),
    );
    run.push(Metric::new(
        "dirs",
        "new directories",
        files.div_ceil(PER_DIR) as f64,
        Unit::Count,
    ));
    daemon.stop().await?;
    Ok(run)
}

/// P9c: a rule over a tree of `files` files: how long `Add` takes, the
/// daemon's CPU while the tree is idle, and its memory above a daemon with
/// no rule.
pub async fn idle(ctx: &Ctx<'_>, files: u64) -> Result<Run> {
    let tree = tree_dir(ctx, "p9c")?;
    let root = tree.path().canonicalize()?;
    make_tree(&root, files)?;
    let (mut daemon, _) = ctx.start(DaemonConfig::default()).await?;
    let mut watches = WatchesClient::new(daemon.channel().await?);
    let before = daemon.memory()?;

    let added = Instant::now();
    let id = add(&mut watches, rule(&root, Duration::from_millis(100))).await?;
    let add_time = added.elapsed();
    let after_add = daemon.memory()?;
    let window = IDLE
        .mul_f64((files as f64 / 100_000.0).min(1.0))
        .max(Duration::from_secs(1));
    let cpu_before = daemon.cpu_time()?;
    tokio::time::sleep(window).await;
    let cpu = daemon.cpu_time()?.saturating_sub(cpu_before);
    let after = daemon.memory()?;
    let rule = watches
        .get(request(GetWatchRequest { id }))
        .await
        .context("Get of the rule failed")?
        .into_inner()
        .watch
        .context("GetWatchResponse has no watch")?;

    let mut run = Run::default();
    run.check_count("triggers while idle", 0, rule.jobs_made)?;
    let dirs = files.div_ceil(PER_DIR);
    // The files, their `eNNN` directories and the ten `dNN` above them.
    run.check_count(
        "paths in the snapshot",
        files + dirs + dirs.min(10),
        rule.snapshot_paths,
    )?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let over = after.current_kib.saturating_sub(before.current_kib);
    run.push(Metric::millis(
        "add",
        "Add, until the rule is watching",
        add_time,
    ));
    run.push(
        Metric::millis("idle_cpu", "quernd CPU over the idle window", cpu)
            .target(Target::AtMost(100.0)),
    );
    run.push(Metric::millis("idle_window", "the idle window", window));
    run.push(Metric::new(
        "rss_over_no_rule_mib",
        "RSS with the rule - RSS before it",
        mib(over),
        Unit::MiB,
    ));
    run.push(Metric::new(
        "peak_over_no_rule_mib",
        "peak RSS while adding - RSS before it",
        mib(after_add.peak_kib.saturating_sub(before.current_kib)),
        Unit::MiB,
    ));
    run.push(Metric::new(
        "bytes_per_path",
        "RSS over no rule, per snapshot path",
        over as f64 * 1024.0 / rule.snapshot_paths.max(1) as f64,
        Unit::Count,
    ));
    run.push(Metric::new(
        "kernel_watches",
        "inotify watches held",
        rule.kernel_watches as f64,
        Unit::Count,
    ));
    daemon.stop().await?;
    Ok(run)
}
