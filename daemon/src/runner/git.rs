//! The git kind: reads a repository (a local one in place, or the mirror
//! of a URL, brought up to date first), walks the revisions asked for and
//! runs the analyses, all on the CPU pool (`crate::git` does the work).
//! Cancel and timeouts set a flag that the walk, the diffs and the
//! analyses check often.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::in_process::InProcess;
use super::{Attempt, AttemptCtx, Ended, Kind};
use crate::git::attributes::Attributes;
use crate::git::cache::{self, Graph, NumstatCache};
use crate::git::numstat::{Numstats, numstats};
use crate::git::walk::{History, WalkSpec, walk_cached};
use crate::git::{GitError, analyses, contains, mirror, open_local, search};
use crate::job::git::{Analysis, ChurnOptions, GitResult, GitSpec, is_url};
use crate::job::{JobId, JobKind, JobResult, JobSpec, Progress, RunRecord};
use crate::progress::ProgressSink;

/// How long a cancelled job waits for its work to notice the cancel
/// before it ends without it (see `run`).
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The git kind.
pub struct Git;

impl Kind for Git {
    fn start(&self, spec: &JobSpec, ctx: AttemptCtx) -> Result<Box<dyn Attempt>, String> {
        let JobKind::Git(spec) = &spec.kind else {
            return Err("the git kind was given another kind's spec".into());
        };
        spec.check().map_err(|(f, r)| format!("spec{f}: {r}"))?;
        let spec = spec.clone();
        Ok(InProcess::start(ctx, move |ctx| run(spec, ctx)))
    }

    /// Nothing to clean: the attempt was work in the quernd that died; a
    /// mirror's first clone left at most a temp dir, which the next sync
    /// removes.
    fn recover(&self, _run: &RunRecord) -> Option<String> {
        None
    }
}

/// What went wrong, and whether another attempt could do better.
struct Failure {
    error: String,
    retry: bool,
}

impl From<GitError> for Failure {
    fn from(e: GitError) -> Failure {
        Failure {
            error: e.to_string(),
            retry: false,
        }
    }
}

/// Checks at submit what can be known then of a local repository: that it
/// is one, and that its revisions exist. A mirror is only read at run
/// time.
pub fn check_repo(spec: &GitSpec) -> Result<(), (&'static str, String)> {
    if is_url(&spec.repo) {
        return mirror::normalize_url(&spec.repo)
            .map(|_| ())
            .map_err(|e| (".git.repo", e));
    }
    let repo = open_local(Path::new(&spec.repo)).map_err(|e| (".git.repo", e.to_string()))?;
    crate::git::walk::resolve_tips(
        &repo,
        &WalkSpec {
            revs: &spec.revs,
            all: spec.all,
            since: None,
            until: None,
        },
    )
    .map_err(|e| (".git.revs", e.to_string()))?;
    Ok(())
}

async fn run(spec: GitSpec, ctx: AttemptCtx) -> Ended {
    let cancel = Arc::new(AtomicBool::new(false));
    let bridge = {
        let (flag, token) = (cancel.clone(), ctx.cancel.clone());
        tokio::spawn(async move {
            token.cancelled().await;
            flag.store(true, Ordering::Relaxed);
        })
    };
    let pool = ctx.env.cpu.rayon();
    let dirs = Dirs {
        mirrors: ctx.env.state_dir.join("git").join("mirrors"),
        caches: ctx.env.state_dir.join("git").join("cache"),
        cache_age: ctx.env.config.retention.max_age,
    };
    let progress = ctx.progress.clone();
    let flag = cancel.clone();
    let file = result_file(&ctx.env.state_dir, ctx.job);
    let limit = ctx.env.config.git.max_result_bytes;
    let render = ctx.env.git_result_json;
    let work = ctx.env.cpu.run(move || {
        let result = analyse(&spec, &dirs, &pool, &flag, &progress)?;
        spill(result, &file, limit, render)
    });
    tokio::pin!(work);
    let done = tokio::select! {
        done = &mut work => done,
        () = ctx.cancel.cancelled() => {
            // The walk and the diffs see the flag within milliseconds; a
            // fetch blocked on a silent server sees it only when its read
            // returns (at the HTTP client's timeout). So the work gets
            // a moment to stop, and is then left to end on its own: it
            // removes its half-made clone and releases the mirror's lock
            // when the read returns, and nothing waits for its result.
            match tokio::time::timeout(CANCEL_GRACE, &mut work).await {
                Ok(done) => done,
                Err(_) => {
                    tracing::warn!(job = %ctx.job, "git job cancelled while its work was blocked; the work ends on its own");
                    Ok(Err(Failure {
                        error: "stopped".into(),
                        retry: false,
                    }))
                }
            }
        }
    };
    bridge.abort();
    match done {
        Ok(Ok(result)) => Ended::Succeeded {
            exit_code: None,
            result: Some(JobResult::Git(Box::new(result))),
        },
        Ok(Err(f)) => Ended::Failed {
            exit_code: None,
            error: if cancel.load(Ordering::Relaxed) {
                "stopped".into()
            } else {
                f.error
            },
            retry: f.retry,
        },
        Err(e) => Ended::Failed {
            exit_code: None,
            error: e.to_string(),
            retry: false,
        },
    }
}

/// Where job `job`'s result goes when it is over the size limit:
/// `<state_dir>/git/results/<job>.json`. Retention deletes it with the
/// job's record.
pub fn result_file(state_dir: &Path, job: JobId) -> PathBuf {
    state_dir
        .join("git")
        .join("results")
        .join(format!("{job}.json"))
}

/// `result` as it is, or, when its JSON (by `render`, the form clients
/// read back) is over `limit` bytes, written whole to `file` (owner-only,
/// in a directory only the owner can list) and replaced by its counts,
/// the file's path and its size.
fn spill(
    result: GitResult,
    file: &Path,
    limit: u64,
    render: fn(&GitResult) -> String,
) -> Result<GitResult, Failure> {
    let json = render(&result);
    let bytes = json.len() as u64;
    if bytes <= limit {
        return Ok(result);
    }
    let failed = |what: &str, e: std::io::Error| Failure {
        error: format!(
            "the result is {bytes} bytes, over [git] max_result_bytes ({limit}), and {what} {}: {e}; free space there or raise the limit",
            file.display()
        ),
        retry: false,
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| failed("cannot create the directory of", e))?;
    // Written to a temp file, synced, then renamed: a crash leaves no half
    // result under the name the job records.
    let temp = file.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        f.write_all(json.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&temp, file)?;
        std::fs::File::open(dir)?.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&temp);
        return Err(failed("cannot be written to", e));
    }
    Ok(GitResult {
        analyses: result.analyses,
        commits: result.commits,
        reused: result.reused,
        computed: result.computed,
        file: Some(file.to_string_lossy().into_owned()),
        file_bytes: bytes,
        ..GitResult::default()
    })
}

fn report(progress: &ProgressSink, phase: &str, done: u64, total: u64) {
    progress.report(Progress {
        phase: phase.into(),
        done,
        total,
        unit: "commits".into(),
        rate: 0,
    });
}

/// Where the kind keeps its files.
struct Dirs {
    mirrors: std::path::PathBuf,
    caches: std::path::PathBuf,
    /// Caches of repositories no job used for this long are removed.
    cache_age: Option<std::time::Duration>,
}

/// The numstat options the analyses need, each once.
fn numstat_options(analyses: &[Analysis]) -> Vec<ChurnOptions> {
    let mut wanted = Vec::new();
    for a in analyses {
        let o = match a {
            Analysis::Churn(o) | Analysis::Ownership(o) => *o,
            Analysis::Hotspots { churn, .. } => *churn,
            Analysis::Coupling(_) => ChurnOptions::default(),
            Analysis::Summary | Analysis::Search { .. } | Analysis::Contains { .. } => continue,
        };
        if !wanted.contains(&o) {
            wanted.push(o);
        }
    }
    wanted
}

/// The walked history, and when each step ended (from the job's start).
struct Walked {
    history: History,
    prefetched: std::time::Duration,
    walked: std::time::Duration,
    graph_saved: std::time::Duration,
}

/// Walks the history through the repository's commit graph cache, and
/// saves what the walk added to it.
#[allow(clippy::too_many_arguments)]
fn walk_history(
    repo: &gix::Repository,
    walk_spec: &WalkSpec<'_>,
    dirs: &Dirs,
    key: &str,
    pool: &rayon::ThreadPool,
    cancel: &AtomicBool,
    progress: &ProgressSink,
    started: Instant,
) -> Result<Walked, Failure> {
    // Commits read by an earlier job are not read again; on the first
    // job, the packs' commits are read in parallel before the walk.
    let mut graph = Graph::load(&dirs.caches, key);
    tracing::debug!(
        commits = graph.len(),
        load_ms = started.elapsed().as_millis() as u64,
        "git graph loaded"
    );
    if graph.is_empty() {
        report(progress, "walking", 0, 0);
        graph.prefetch(repo, pool, cancel)?;
    }
    let prefetched = started.elapsed();
    let history = walk_cached(repo, walk_spec, &mut graph, cancel, &|n| {
        report(progress, "walking", n, 0)
    })?;
    let walked = started.elapsed();
    if let Err(e) = graph.save() {
        tracing::warn!(error = %e, "cannot save the git commit graph cache; the next run reads the commits again");
    }
    drop(graph);
    Ok(Walked {
        history,
        prefetched,
        walked,
        graph_saved: started.elapsed(),
    })
}

/// The whole attempt, on a pool thread.
fn analyse(
    spec: &GitSpec,
    dirs: &Dirs,
    pool: &rayon::ThreadPool,
    cancel: &AtomicBool,
    progress: &ProgressSink,
) -> Result<GitResult, Failure> {
    let started = Instant::now();
    // Held until the analyses are done: jobs on one mirror take turns.
    let (repo, mirror) = if is_url(&spec.repo) {
        report(progress, "fetching", 0, 0);
        let m = mirror::sync(&dirs.mirrors, &spec.repo, cancel).map_err(|e| Failure {
            retry: !matches!(e, mirror::MirrorError::Cancelled),
            error: e.to_string(),
        })?;
        (open_local(&m.path)?, Some(m))
    } else {
        (open_local(Path::new(&spec.repo))?, None)
    };
    let opened = started.elapsed();
    if let Some(age) = dirs.cache_age {
        cache::prune(&dirs.caches, age);
    }
    let key = cache::repo_key(
        &spec.repo,
        mirror
            .as_ref()
            .and_then(|m| m.path.file_name())
            .and_then(|n| n.to_str()),
    );
    let walk_spec = WalkSpec {
        revs: &spec.revs,
        all: spec.all,
        since: spec.since,
        until: spec.until,
    };
    // Read once: what .gitattributes say about diffing (binary, -diff).
    let attrs = Attributes::of(&repo)?;
    let attributed = started.elapsed();
    // The numstat caches the analyses use are read on a thread of their
    // own while the history is walked.
    let wanted = numstat_options(&spec.analyses);
    let fingerprint = attrs.fingerprint().to_string();
    let (walked, mut preloaded) = std::thread::scope(|s| {
        let loader = s.spawn(|| {
            wanted
                .iter()
                .map(|o| (*o, NumstatCache::load(&dirs.caches, &key, *o, &fingerprint)))
                .collect::<HashMap<_, _>>()
        });
        let walked = walk_history(
            &repo, &walk_spec, dirs, &key, pool, cancel, progress, started,
        );
        // A loader that panicked leaves the caches to be read below.
        (walked, loader.join().unwrap_or_default())
    });
    let Walked {
        history,
        prefetched,
        walked,
        graph_saved,
    } = walked?;
    let commits = &history.commits;
    let total = commits.len() as u64;
    let mut result = GitResult {
        analyses: spec.analyses.iter().map(|a| a.name().to_string()).collect(),
        commits: total,
        ..GitResult::default()
    };
    // Each set of numstat options is computed once for all the analyses
    // that use it, and only for commits the cache lacks.
    // Shared, not copied, between the analyses that use one set of options.
    let mut stats: HashMap<ChurnOptions, Arc<Numstats>> = HashMap::new();
    let (mut computed, mut reused) = (0, 0);
    let mut in_stats = std::time::Duration::ZERO;
    let mut stats_of = |opts: ChurnOptions| -> Result<Arc<Numstats>, Failure> {
        if let Some(s) = stats.get(&opts) {
            return Ok(s.clone());
        }
        let at = Instant::now();
        let mut cached = preloaded
            .remove(&opts)
            .unwrap_or_else(|| NumstatCache::load(&dirs.caches, &key, opts, attrs.fingerprint()));
        let loaded = at.elapsed();
        // One lookup per commit: where its files lie in the cache's list.
        let mut ranges: Vec<Option<std::ops::Range<u32>>> =
            commits.iter().map(|c| cached.range(&c.id)).collect();
        let missing: Vec<_> = commits
            .iter()
            .zip(&ranges)
            .filter(|(_, r)| r.is_none())
            .map(|(c, _)| c.clone())
            .collect();
        let got = numstats(&repo, &missing, opts, &attrs, pool, cancel, &|n| {
            report(progress, "diffing", n, missing.len() as u64)
        })?;
        let diffed = at.elapsed();
        computed += got.len() as u64;
        reused += (commits.len() - missing.len()) as u64;
        for (id, files) in got {
            cached.insert(id, files);
        }
        if let Err(e) = cached.save() {
            tracing::warn!(error = %e, "cannot save the git numstat cache; the next run diffs again");
        }
        let saved = at.elapsed();
        // The cache's list of files becomes the analyses' (nothing copied),
        // each commit with its range of it.
        let listed: Vec<(gix::ObjectId, std::ops::Range<u32>)> = commits
            .iter()
            .zip(ranges.iter_mut())
            .map(|(c, r)| {
                let r = r.take().or_else(|| cached.range(&c.id)).unwrap_or(0..0);
                (c.id, r)
            })
            .collect();
        let all = Arc::new(Numstats::from_parts(listed, cached.into_files()));
        stats.insert(opts, all.clone());
        in_stats += at.elapsed();
        tracing::debug!(
            renames = opts.renames,
            load_ms = loaded.as_millis() as u64,
            diff_ms = (diffed - loaded).as_millis() as u64,
            save_ms = (saved - diffed).as_millis() as u64,
            take_ms = (at.elapsed() - saved).as_millis() as u64,
            "git numstats"
        );
        Ok(all)
    };
    for a in &spec.analyses {
        if cancel.load(Ordering::Relaxed) {
            return Err(GitError::Cancelled.into());
        }
        match a {
            Analysis::Summary => result.summary = Some(analyses::summary(commits)),
            Analysis::Churn(o) => {
                let stats = stats_of(*o)?;
                result.churn = Some(analyses::churn(commits, &stats));
            }
            Analysis::Hotspots { top, churn } => {
                let stats = stats_of(*churn)?;
                let c = analyses::churn(commits, &stats);
                let newest = history.newest().map(|c| c.tree);
                result.hotspots = Some(match newest {
                    Some(tree) => analyses::hotspots(&repo, tree, &c, *top)?,
                    None => Vec::new(),
                });
            }
            Analysis::Ownership(o) => {
                let stats = stats_of(*o)?;
                result.ownership = Some(analyses::ownership(commits, &stats));
            }
            Analysis::Coupling(o) => {
                let plain = stats_of(ChurnOptions::default())?;
                result.coupling = Some(analyses::coupling(&plain, *o));
            }
            Analysis::Search { regex } => {
                report(progress, "searching", 0, total);
                let ids: Vec<gix::ObjectId> = commits.iter().map(|c| c.id).collect();
                let hits = search::search(&repo, &ids, regex, cancel).map_err(|e| Failure {
                    error: e.to_string(),
                    retry: false,
                })?;
                result.search = Some(hits);
            }
            Analysis::Contains { commit } => {
                report(progress, "aggregating", total, total);
                let found = contains::contains(&repo, commit, cancel).map_err(|e| Failure {
                    error: e.to_string(),
                    retry: false,
                })?;
                result.contains = Some(found);
            }
        }
    }
    result.computed = computed;
    result.reused = reused;
    tracing::debug!(
        repo = %spec.repo,
        commits = total,
        computed,
        reused,
        open_ms = opened.as_millis() as u64,
        attrs_ms = attributed.as_millis() as u64,
        prefetch_ms = prefetched.as_millis() as u64,
        walk_ms = walked.as_millis() as u64,
        graph_save_ms = (graph_saved - walked).as_millis() as u64,
        numstats_ms = in_stats.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "git job analysed"
    );
    // A big history and its numstats take milliseconds to free, which the
    // job's result need not wait for.
    let garbage = (history, stats);
    // If no thread can be made, spawn hands the closure back in its error
    // only by dropping it: here, which frees the garbage inline.
    let _ = std::thread::Builder::new()
        .name("quern-free".into())
        .spawn(move || drop(garbage));
    Ok(result)
}
