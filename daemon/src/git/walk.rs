//! Walking history: the revisions a job names resolved to tips, then every
//! commit reachable from them, once each, kept if its committer date is in
//! the job's window. Each commit comes back with what the analyses need,
//! its author already put through `.mailmap`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gix::ObjectId;
use gix::bstr::ByteSlice;

use super::cache::{Graph, slack};
use super::repo::GitError;
use crate::job::Micros;
use crate::job::git::Author;

/// How often (in commits) the walk looks at the cancellation flag and
/// reports progress: often enough that a cancel lands within milliseconds,
/// rarely enough that the atomic load costs nothing.
pub const CHECK_EVERY: u64 = 256;

/// What to walk: the job's revisions and date window.
#[derive(Clone, Debug, Default)]
pub struct WalkSpec<'a> {
    /// Revisions (anything `git rev-parse` takes that names a commit);
    /// empty means `HEAD`.
    pub revs: &'a [String],
    /// Every branch and tag too.
    pub all: bool,
    /// Keep commits whose committer date is at or after this.
    pub since: Option<Micros>,
    /// Keep commits whose committer date is before this.
    pub until: Option<Micros>,
}

/// One commit, as the analyses need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalkedCommit {
    pub id: ObjectId,
    /// Its tree, so numstats need not read the commit again.
    pub tree: ObjectId,
    /// Its first parent (the mainline), `None` for a root.
    pub first_parent: Option<ObjectId>,
    /// How many parents it has: more than one is a merge.
    pub parent_count: u32,
    /// After `.mailmap`, trimmed, as `git shortlog -e` shows it; shared
    /// by all of the author's commits.
    pub author: Arc<Author>,
    /// The author date, seconds since the epoch, and the author's offset
    /// from UTC in seconds (east positive).
    pub author_time: i64,
    pub author_offset: i32,
    /// The committer date, seconds since the epoch.
    pub committer_time: i64,
}

/// The walked history.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The resolved tips, in the order asked for, each once.
    pub tips: Vec<ObjectId>,
    /// The commits kept, newest committer date first (ties by id, so the
    /// order is the same on every run).
    pub commits: Vec<WalkedCommit>,
}

impl History {
    /// The kept commit with the newest committer date: the state of the
    /// files that hotspots measure.
    pub fn newest(&self) -> Option<&WalkedCommit> {
        self.commits.first()
    }
}

/// Resolves the spec's revisions to commit ids, in order, each once. An
/// unknown revision is an error naming it.
pub fn resolve_tips(
    repo: &gix::Repository,
    spec: &WalkSpec<'_>,
) -> Result<Vec<ObjectId>, GitError> {
    let repo_path = || -> PathBuf { repo.workdir().unwrap_or(repo.git_dir()).to_path_buf() };
    let mut tips = Vec::new();
    let push = |id: ObjectId, tips: &mut Vec<ObjectId>| {
        if !tips.contains(&id) {
            tips.push(id);
        }
    };
    for rev in spec.revs {
        let id = repo
            .rev_parse_single(rev.as_bytes().as_bstr())
            .map_err(|e| GitError::UnknownRevision {
                repo: repo_path(),
                rev: rev.clone(),
                detail: e.to_string(),
            })?;
        let object = id.object().map_err(|e| GitError::UnknownRevision {
            repo: repo_path(),
            rev: rev.clone(),
            detail: e.to_string(),
        })?;
        let kind = object.kind;
        let commit = object.peel_to_commit().map_err(|_| GitError::NotACommit {
            rev: rev.clone(),
            kind: kind.to_string(),
        })?;
        push(commit.id, &mut tips);
    }
    if spec.all {
        let refs_err = |e: &dyn std::fmt::Display| GitError::References {
            repo: repo_path(),
            detail: e.to_string(),
        };
        let platform = repo.references().map_err(|e| refs_err(&e))?;
        let mut names_and_ids = Vec::new();
        for prefix in ["refs/heads/", "refs/tags/"] {
            let iter = platform.prefixed(prefix).map_err(|e| refs_err(&e))?;
            for r in iter {
                let mut r = r.map_err(|e| refs_err(&e))?;
                // A tag of a tree or blob has no history; git log --all
                // skips it too.
                if let Ok(commit) = r.peel_to_commit() {
                    names_and_ids.push((r.name().as_bstr().to_owned(), commit.id));
                }
            }
        }
        names_and_ids.sort();
        for (_, id) in names_and_ids {
            push(id, &mut tips);
        }
    }
    if spec.revs.is_empty() {
        match repo.head_id() {
            Ok(id) => tips.insert(0, id.detach()),
            // With --all, a repository whose HEAD is unborn may still have
            // branches; only with nothing to walk is that an error.
            Err(_) if !tips.is_empty() => {}
            Err(_) => return Err(GitError::Unborn { repo: repo_path() }),
        }
        let mut seen = std::collections::HashSet::new();
        tips.retain(|id| seen.insert(*id));
    }
    Ok(tips)
}

/// Walks every commit reachable from the spec's tips, keeping those in its
/// date window. Looks at `cancel` and calls `progress` (commits read so
/// far) every [`CHECK_EVERY`] commits.
pub fn walk(
    repo: &gix::Repository,
    spec: &WalkSpec<'_>,
    cancel: &AtomicBool,
    progress: &dyn Fn(u64),
) -> Result<History, GitError> {
    walk_cached(repo, spec, &mut Graph::in_memory(), cancel, progress)
}

/// [`walk`], reading from `repo` only the commits `graph` lacks, and
/// adding those to it.
pub fn walk_cached(
    repo: &gix::Repository,
    spec: &WalkSpec<'_>,
    graph: &mut Graph,
    cancel: &AtomicBool,
    progress: &dyn Fn(u64),
) -> Result<History, GitError> {
    let started = std::time::Instant::now();
    let tips = resolve_tips(repo, spec)?;
    let mailmap = repo.open_mailmap();
    let resolved = started.elapsed();
    // In micros as i128: committer dates before 1970 are negative, and a
    // window bound in micros has no exact value in seconds.
    let since = spec.since.map(i128::from);
    let until = spec.until.map(i128::from);
    // Each raw identity's mailmapped author, made once and shared by its
    // commits: a history has far fewer authors than commits.
    let mut authors: Vec<Option<Arc<Author>>> = Vec::new();
    // The walk goes by the graph's numbers: each commit reached is marked
    // in the graph, and a commit the graph lacks is added unread and read
    // when the walk takes it. Tips are pushed last first, so the first tip
    // is walked first.
    let walk = graph.begin_walk();
    let mut stack: Vec<u32> = Vec::new();
    for tip in tips.iter().rev() {
        let i = graph.number(*tip);
        if graph.reach(i, walk) {
            stack.push(i);
        }
    }
    // Nearly every commit of the graph is walked, and a few new ones: one
    // allocation, not a chain of doublings (each a copy of all before, and
    // fresh pages to fault in). Room never used is never touched, so costs
    // no memory.
    let mut commits = Vec::with_capacity(slack(graph.len()));
    let mut buf = Vec::new();
    let mut read = 0u64;
    while let Some(i) = stack.pop() {
        read += 1;
        if read.is_multiple_of(CHECK_EVERY) {
            if cancel.load(Ordering::Relaxed) {
                return Err(GitError::Cancelled);
            }
            progress(read);
        }
        let node = graph.node(repo, i, &mut buf)?;
        let parent_count = graph.parents(&node).len();
        // By place: reaching a parent marks it in the graph.
        for k in 0..parent_count {
            let p = graph.parents(&node)[k];
            if graph.reach(p, walk) {
                stack.push(p);
            }
        }
        let first_parent = graph.parents(&node).first().map(|p| graph.id(*p));
        let micros = i128::from(node.committer_time) * 1_000_000;
        let kept = since.is_none_or(|s| micros >= s) && until.is_none_or(|u| micros < u);
        if !kept {
            continue;
        }
        let slot = node.identity as usize;
        if authors.len() <= slot {
            authors.resize(slot + 1, None);
        }
        let author = authors[slot]
            .get_or_insert_with(|| {
                let (name, email) = graph.identity(node.identity);
                let mapped = mailmap.resolve(gix::actor::SignatureRef {
                    name,
                    email,
                    time: "",
                });
                Arc::new(Author {
                    name: mapped.name.to_str_lossy().trim().to_string(),
                    email: mapped.email.to_str_lossy().trim().to_string(),
                })
            })
            .clone();
        commits.push(WalkedCommit {
            id: graph.id(i),
            tree: node.tree,
            first_parent,
            parent_count: parent_count as u32,
            author,
            author_time: node.author_time,
            author_offset: node.author_offset,
            committer_time: node.committer_time,
        });
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(GitError::Cancelled);
    }
    progress(read);
    let walked = started.elapsed();
    // Ids are unique, so the order is total and an in-place unstable sort
    // gives the same order as a stable one.
    commits.sort_unstable_by(|a, b| {
        b.committer_time
            .cmp(&a.committer_time)
            .then(a.id.cmp(&b.id))
    });
    tracing::debug!(
        commits = commits.len(),
        read,
        resolve_us = resolved.as_micros() as u64,
        walk_us = (walked - resolved).as_micros() as u64,
        sort_us = (started.elapsed() - walked).as_micros() as u64,
        "git walk"
    );
    Ok(History { tips, commits })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::git::fixture::{self, Fixture, JAN_1_2024};
    use crate::git::repo::open_local;
    use crate::git::synthetic::synthetic_fast_import_stream;

    fn count(f: &Fixture, spec: &WalkSpec<'_>) -> usize {
        let repo = open_local(f.path()).expect("opens");
        walk(&repo, spec, &AtomicBool::new(false), &|_| {})
            .expect("walks")
            .commits
            .len()
    }

    #[test]
    fn walks_revisions_all_refs_and_the_date_window() {
        let f = fixture::history();
        assert_eq!(count(&f, &WalkSpec::default()), 8);
        let side = ["side".to_string()];
        assert_eq!(
            count(
                &f,
                &WalkSpec {
                    revs: &side,
                    ..Default::default()
                }
            ),
            4
        );
        let first = ["main~3".to_string(), "side".to_string()];
        assert_eq!(
            count(
                &f,
                &WalkSpec {
                    revs: &first,
                    ..Default::default()
                }
            ),
            5
        );
        f.git(&["checkout", "-q", "--detach", "main~2"]);
        assert_eq!(
            count(
                &f,
                &WalkSpec {
                    all: true,
                    ..Default::default()
                }
            ),
            8
        );
        // From the side commit (Feb 5) up to, not including, the last
        // (Mar 2): side, main work, merge, rename.
        let day = 86_400_000_000u64;
        let since = (JAN_1_2024 as u64) * 1_000_000 + 35 * day;
        let until = (JAN_1_2024 as u64) * 1_000_000 + 61 * day + 9 * 3_600_000_000;
        let main = ["main".to_string()];
        let window = WalkSpec {
            revs: &main,
            since: Some(since),
            until: Some(until),
            ..Default::default()
        };
        assert_eq!(count(&f, &window), 4);
    }

    #[test]
    fn a_cached_graph_is_read_only_for_new_commits_and_follows_a_force_push() {
        let f = fixture::history();
        let repo = open_local(f.path()).expect("opens");
        let cancel = AtomicBool::new(false);
        let all = WalkSpec {
            all: true,
            ..Default::default()
        };
        let plain = walk(&repo, &all, &cancel, &|_| {}).expect("walks");
        let mut graph = Graph::in_memory();
        let first = walk_cached(&repo, &all, &mut graph, &cancel, &|_| {}).expect("walks");
        assert_eq!(graph.added(), 8);
        assert_eq!(first.commits, plain.commits);
        // Again: every commit from the graph, none read, the same history
        // (authors through .mailmap included).
        let mut again = graph;
        let before = again.added();
        let second = walk_cached(&repo, &all, &mut again, &cancel, &|_| {}).expect("walks");
        assert_eq!(again.added(), before);
        assert_eq!(second.commits, plain.commits);
        // Main rewound past the rename and given a new commit: only that
        // one is read, and the rename (cached) is no longer walked.
        f.git(&["reset", "-q", "--hard", "main~2"]);
        f.commit(
            JAN_1_2024 + 90 * 86_400,
            fixture::CAROL,
            "new",
            &[("e.txt", Some(b"e\n"))],
        );
        let third = walk_cached(&repo, &all, &mut again, &cancel, &|_| {}).expect("walks");
        assert_eq!(again.added(), before + 1);
        let fresh = walk(&repo, &all, &cancel, &|_| {}).expect("walks");
        assert_eq!(third.commits, fresh.commits);
        assert_eq!(third.commits.len(), 7);
    }

    #[test]
    fn a_prefetched_graph_gives_the_same_walk_and_leaves_only_loose_commits() {
        let f = fixture::history();
        f.git(&["repack", "-adq"]);
        f.commit(
            JAN_1_2024 + 90 * 86_400,
            fixture::CAROL,
            "loose",
            &[("e.txt", Some(b"e\n"))],
        );
        let repo = open_local(f.path()).expect("opens");
        let cancel = AtomicBool::new(false);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut graph = Graph::in_memory();
        // The 8 packed commits; the new one is loose.
        assert_eq!(
            graph.prefetch(&repo, &pool, &cancel).expect("prefetches"),
            8
        );
        let all = WalkSpec {
            all: true,
            ..Default::default()
        };
        let walked = walk_cached(&repo, &all, &mut graph, &cancel, &|_| {}).expect("walks");
        assert_eq!(graph.added(), 9);
        assert_eq!(
            walked.commits,
            walk(&repo, &all, &cancel, &|_| {}).expect("walks").commits
        );
        // Nothing more to read: a second prefetch adds none.
        assert_eq!(
            graph.prefetch(&repo, &pool, &cancel).expect("prefetches"),
            0
        );
        // A cancel stops it.
        cancel.store(true, Ordering::Relaxed);
        let err = Graph::in_memory()
            .prefetch(&repo, &pool, &cancel)
            .expect_err("cancelled");
        assert!(matches!(err, GitError::Cancelled), "{err}");
    }

    #[test]
    #[ignore = "a timing, for --release by hand"]
    fn walk_timing_against_git_rev_list() {
        let f = Fixture::new();
        f.fast_import(&synthetic_fast_import_stream(50_000, 200, 1));
        let time_git = || {
            let t = std::time::Instant::now();
            let ok = std::process::Command::new("git")
                .args(["rev-list", "--count", "HEAD"])
                .current_dir(f.path())
                .stdout(std::process::Stdio::null())
                .status()
                .expect("git runs")
                .success();
            assert!(ok);
            t.elapsed()
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let cancel = AtomicBool::new(false);
        for _ in 0..3 {
            let git = time_git();
            let repo = open_local(f.path()).expect("opens");
            let t = std::time::Instant::now();
            let h = walk(&repo, &WalkSpec::default(), &cancel, &|_| {}).expect("walks");
            let plain = t.elapsed();
            let t = std::time::Instant::now();
            let mut g = Graph::in_memory();
            let n = g.prefetch(&repo, &pool, &cancel).expect("prefetch");
            let fetched = t.elapsed();
            let h2 =
                walk_cached(&repo, &WalkSpec::default(), &mut g, &cancel, &|_| {}).expect("walks");
            let pre = t.elapsed();
            assert_eq!(h.commits, h2.commits);
            println!(
                "git {git:?}; walk {plain:?}; prefetch {fetched:?} ({n}) + walk = {pre:?}; git/ours {:.2} {:.2}",
                git.as_secs_f64() / plain.as_secs_f64(),
                git.as_secs_f64() / pre.as_secs_f64()
            );
        }
    }

    #[test]
    fn an_unknown_revision_is_named() {
        let f = fixture::history();
        let repo = open_local(f.path()).expect("opens");
        let revs = ["no-such-branch".to_string()];
        let err = walk(
            &repo,
            &WalkSpec {
                revs: &revs,
                ..Default::default()
            },
            &AtomicBool::new(false),
            &|_| {},
        )
        .expect_err("unknown");
        let msg = err.to_string();
        assert!(matches!(err, GitError::UnknownRevision { .. }), "{msg}");
        assert!(
            msg.starts_with("revision no-such-branch is not in the repository at "),
            "{msg}"
        );
        let empty = Fixture::new();
        let repo = open_local(empty.path()).expect("opens");
        let err = walk(
            &repo,
            &WalkSpec::default(),
            &AtomicBool::new(false),
            &|_| {},
        )
        .expect_err("unborn");
        assert!(matches!(err, GitError::Unborn { .. }), "{err}");
    }

    #[test]
    fn a_cancel_lands_at_the_next_check() {
        let f = Fixture::new();
        f.fast_import(&synthetic_fast_import_stream(600, 5, 1));
        let repo = open_local(f.path()).expect("opens");
        let cancel = AtomicBool::new(false);
        let reports = Cell::new(Vec::new());
        let err = walk(&repo, &WalkSpec::default(), &cancel, &|n| {
            let mut r = reports.take();
            r.push(n);
            reports.set(r);
            cancel.store(true, Ordering::Relaxed);
        })
        .expect_err("cancelled");
        assert!(matches!(err, GitError::Cancelled), "{err}");
        // One report at 256 commits read, then the check at 512 stops it.
        assert_eq!(reports.take(), vec![CHECK_EVERY]);
        cancel.store(false, Ordering::Relaxed);
        let all = walk(&repo, &WalkSpec::default(), &cancel, &|_| {}).expect("walks");
        assert_eq!(all.commits.len(), 600);
    }
}
