//! P10: whether the disk use reaches a steady size when jobs keep coming
//! and retention is on. No-op jobs run through the daemon in tenths; after
//! each, the store file and the log directory are measured. With
//! `max_finished` kept, the sizes must level off: freed pages and log
//! files are reused, not grown past.

use std::path::Path;

use anyhow::{Context, Result, bail};
use quern_proto::v1::jobs_client::JobsClient;

use super::{Ctx, EventWatch, budget, exec, fill};
use crate::daemon::DaemonConfig;
use crate::report::{Metric, Run, Target, Unit};

/// Runs `jobs` `/bin/true` jobs in ten rounds and measures after each,
/// with the daemon keeping a tenth of them: the 100k of 1M. The
/// stored events are held to as many (the default 100k at full size), so
/// that a smaller run levels off too.
pub async fn run(ctx: &Ctx<'_>, jobs: u64) -> Result<Run> {
    let keep = (jobs / 10).max(1);
    let config = DaemonConfig {
        max_finished: Some(keep),
        event_retention: Some(keep),
        ..DaemonConfig::default()
    };
    let (daemon, _) = ctx.start(config).await?;
    let mut client = JobsClient::new(daemon.channel().await?);
    let mut events = EventWatch::subscribe(daemon.channel().await?).await?;
    let round = (jobs / 10).max(1);
    let spec = exec(&["/bin/true"], None);
    let mut run = Run::default();
    let mut sizes = Vec::new();
    let mut done = 0;
    while done < jobs {
        let n = round.min(jobs - done);
        fill(&mut client, n, &spec).await?;
        let deadline = tokio::time::Instant::now() + budget(n);
        let mut finished = 0;
        while finished < n {
            let event = events.next(deadline).await?;
            if event.is_terminal() {
                if event.state != quern_proto::v1::JobState::Succeeded {
                    bail!(
                        "job {} ended {:?}: {}",
                        event.job_id,
                        event.state,
                        event.error
                    );
                }
                finished += 1;
            }
        }
        done += n;
        let store = file_size(&daemon.state_dir().join("quern.redb"))?;
        let logs = dir_size(&daemon.state_dir().join("logs"))?;
        let k = done / 1000;
        run.push(Metric::new(
            format!("store_mib_{k}k"),
            format!("store file after {k}k jobs"),
            mib(store),
            Unit::MiB,
        ));
        run.push(Metric::new(
            format!("logs_mib_{k}k"),
            format!("log dir after {k}k jobs"),
            mib(logs),
            Unit::MiB,
        ));
        sizes.push(store + logs);
    }
    // The check: the size after all the jobs against the size
    // after three tenths of them.
    if let (Some(third), Some(last)) = (sizes.get(2), sizes.last()) {
        run.push(
            Metric::new(
                "growth",
                "store + logs: after all jobs / after 3 tenths",
                *last as f64 / (*third).max(1) as f64,
                Unit::Ratio,
            )
            .target(Target::AtMost(1.2)),
        );
    }
    run.check_count("jobs run", jobs, done)?;
    Ok(run)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Space the file takes on disk.
fn file_size(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    Ok(meta.blocks() * 512)
}

/// Space the directory and the files in it take on disk, the directory's
/// own entries included: a directory that once held many files keeps its
/// size.
fn dir_size(path: &Path) -> Result<u64> {
    let mut total = file_size(path)?;
    for entry in
        std::fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))?
    {
        let entry = entry?;
        // A file removed while listing is no longer using space.
        if let Ok(size) = file_size(&entry.path()) {
            total += size;
        }
    }
    Ok(total)
}
