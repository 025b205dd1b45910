//! Per-commit numstats: the files a commit changed, with lines added and
//! removed, counted as `git log --numstat --no-renames` counts them (or as
//! `git log --numstat -M` does, with [`ChurnOptions::renames`]).
//!
//! git's rules, followed here: a merge shows no diff; a root commit is
//! diffed against the empty tree; a file with a NUL byte in the first 8000
//! bytes of either side is binary and counts no lines (git prints `-`); a
//! change of mode alone counts `0 0`; a submodule's side is the line
//! `Subproject commit <id>`. Lines are compared with their terminators, so
//! a lost final newline changes the last line, and the line diff is Myers
//! with git's preprocessing (imara-diff's port of xdiff), which gives git's
//! counts where Histogram does not.
//!
//! This is the expensive part of churn, so: unchanged subtrees are skipped
//! by id (gix's tree diff), each blob is read once per diff, the per-file
//! buffers live in one [`Differ`] per pool thread, and commits are spread
//! over the CPU pool in runs of neighbours (a commit's old side is often
//! its neighbour's new side, which the object cache then holds).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gix::ObjectId;
use gix::bstr::{BStr, BString, ByteSlice};
use gix::diff::tree_with_rewrites::ChangeRef;
use gix::objs::tree::EntryMode;
use rayon::prelude::*;

use super::attributes::{Attributes, Checker, Diffable};
use super::lines::LineDiff;
use super::repo::{GitError, deltas_run_forward, read_object};
use super::walk::WalkedCommit;
use crate::job::git::ChurnOptions;

/// git looks this far into a file for a NUL byte to call it binary
/// (`FIRST_FEW_BYTES` in git's `xdiff-interface.c`).
const BINARY_PROBE: usize = 8000;

/// Commits per unit of parallel work: neighbours share trees and blobs.
const RUN: usize = 32;

/// Bytes of delta bases each diffing thread keeps.
const PACK_CACHE: usize = 96 << 20;

/// One file in one commit's numstat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStat {
    /// The path after the commit (with renames on, the new path); shared
    /// by all of a path's entries loaded from the cache.
    pub path: std::sync::Arc<str>,
    /// Lines added and removed; both 0 for a binary file.
    pub added: u64,
    pub removed: u64,
    /// git prints `-\t-` for it.
    pub binary: bool,
}

/// A commit's numstat, in the order git prints paths (byte order).
pub type CommitStats = (ObjectId, Vec<FileStat>);

/// The numstat of each of `commits`, in their order, computed on `pool`.
/// Looks at `cancel` before each commit and calls `progress` (commits done
/// so far) after each run of [`RUN`] commits.
pub fn numstats(
    repo: &gix::Repository,
    commits: &[WalkedCommit],
    opts: ChurnOptions,
    attrs: &Attributes,
    pool: &rayon::ThreadPool,
    cancel: &AtomicBool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<CommitStats>, GitError> {
    // Parents' trees, so a commit's old side needs no extra read when its
    // parent was walked too.
    let trees: HashMap<ObjectId, ObjectId> = commits.iter().map(|c| (c.id, c.tree)).collect();
    let sync = repo.clone().into_sync();
    // One Differ per pool thread, made on first use: a gix::Repository is
    // not Sync, and its delta cache is worth keeping between runs.
    let differs: Vec<Mutex<Option<Differ>>> = (0..pool.current_num_threads())
        .map(|_| Mutex::new(None))
        .collect();
    let done = AtomicU64::new(0);
    let oldest_first = match (commits.first(), commits.last()) {
        (Some(newest), Some(oldest)) => deltas_run_forward(repo, &newest.tree, &oldest.tree),
        _ => false,
    };
    let order: Vec<&WalkedCommit> = if oldest_first {
        commits.iter().rev().collect()
    } else {
        commits.iter().collect()
    };
    let runs: Vec<Result<Vec<CommitStats>, GitError>> = pool.install(|| {
        order
            .par_chunks(RUN)
            .map(|run| {
                let slot = rayon::current_thread_index().unwrap_or(0) % differs.len().max(1);
                let mut guard = differs[slot].lock().unwrap_or_else(|p| p.into_inner());
                let differ = match guard.as_mut() {
                    Some(d) => d,
                    None => {
                        guard.insert(Differ::new(sync.to_thread_local(), opts, attrs.checker())?)
                    }
                };
                let mut out = Vec::with_capacity(run.len());
                for c in run {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(GitError::Cancelled);
                    }
                    out.push((c.id, differ.commit(c, &trees)?));
                }
                progress(done.fetch_add(run.len() as u64, Ordering::Relaxed) + run.len() as u64);
                Ok(out)
            })
            .collect()
    });
    let mut all = Vec::with_capacity(commits.len());
    for run in runs {
        all.extend(run?);
    }
    if oldest_first {
        all.reverse();
    }
    Ok(all)
}

/// The numstat of one commit, on the calling thread (for tests and small
/// jobs).
pub fn numstat(
    repo: &gix::Repository,
    commit: &WalkedCommit,
    opts: ChurnOptions,
) -> Result<Vec<FileStat>, GitError> {
    let attrs = Attributes::of(repo)?;
    Differ::new(repo.clone(), opts, attrs.checker())?.commit(commit, &HashMap::new())
}

/// A side of a change: its mode and id.
type Side = Option<(EntryMode, ObjectId)>;

/// One thread's diffing state, reused from file to file and commit to
/// commit so the per-file loop allocates only the path it reports.
struct Differ {
    repo: gix::Repository,
    opts: ChurnOptions,
    tree_state: gix::diff::tree::State,
    resources: gix::diff::blob::Platform,
    old_tree: Vec<u8>,
    new_tree: Vec<u8>,
    old: Vec<u8>,
    new: Vec<u8>,
    changes: Vec<(String, Side, Side)>,
    lines: LineDiff,
    attrs: Checker,
}

impl Differ {
    fn new(
        mut repo: gix::Repository,
        opts: ChurnOptions,
        attrs: Checker,
    ) -> Result<Differ, GitError> {
        // A thread-local handle starts with gix's defaults: no object cache,
        // and a pack cache of 64 delta bases. A commit's trees are read
        // again as its child's old side, and a file's blob again when the
        // next commit touching it comes; the pack cache, which keeps every
        // packed object read (by its offset), answers both, so no object
        // cache keeps a second copy of each. It is sized as git's
        // (`core.deltaBaseCacheLimit`, 96 MiB).
        repo.object_cache_size(None);
        repo.objects.set_pack_cache(|| {
            Box::new(gix::odb::pack::cache::lru::MemoryCappedHashmap::new(
                PACK_CACHE,
            ))
        });
        let resources = repo
            .diff_resource_cache_for_tree_diff()
            .map_err(|e| GitError::Diff {
                commit: repo.object_hash().null(),
                detail: format!("could not set up blob diffs: {e}"),
            })?;
        Ok(Differ {
            repo,
            opts,
            tree_state: Default::default(),
            resources,
            old_tree: Vec::new(),
            new_tree: Vec::new(),
            old: Vec::new(),
            new: Vec::new(),
            changes: Vec::new(),
            lines: LineDiff::default(),
            attrs,
        })
    }

    fn commit(
        &mut self,
        c: &WalkedCommit,
        trees: &HashMap<ObjectId, ObjectId>,
    ) -> Result<Vec<FileStat>, GitError> {
        // git log shows no diff for a merge unless asked (-m, --cc).
        if c.parents.len() > 1 {
            return Ok(Vec::new());
        }
        let parent_tree = match c.parents.first() {
            None => None,
            Some(p) => Some(match trees.get(p) {
                Some(t) => *t,
                None => {
                    let data = read_object(&self.repo, p, "commit", &mut self.old_tree)?;
                    gix::objs::CommitRefIter::from_bytes(data.data, self.repo.object_hash())
                        .tree_id()
                        .map_err(|e| GitError::Object {
                            what: "commit",
                            id: *p,
                            detail: e.to_string(),
                        })?
                }
            }),
        };
        self.diff_trees(c.id, parent_tree, c.tree)?;
        let mut changes = std::mem::take(&mut self.changes);
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::with_capacity(changes.len());
        for (path, old, new) in changes.drain(..) {
            let (added, removed, binary) = self.count(&path, old, new)?;
            out.push(FileStat {
                path: path.into(),
                added,
                removed,
                binary,
            });
        }
        self.changes = changes;
        Ok(out)
    }

    /// Fills `self.changes` with the files that differ between the trees.
    fn diff_trees(
        &mut self,
        commit: ObjectId,
        old: Option<ObjectId>,
        new: ObjectId,
    ) -> Result<(), GitError> {
        let hash = self.repo.object_hash();
        let old_len = match old {
            Some(id) => read_object(&self.repo, &id, "tree", &mut self.old_tree)?
                .data
                .len(),
            None => 0,
        };
        let new_len = read_object(&self.repo, &new, "tree", &mut self.new_tree)?
            .data
            .len();
        let lhs = gix::objs::TreeRefIter::from_bytes(&self.old_tree[..old_len], hash);
        let rhs = gix::objs::TreeRefIter::from_bytes(&self.new_tree[..new_len], hash);
        if !self.opts.renames {
            // No renames: gix's plain tree diff, which skips unchanged
            // subtrees by id and allocates nothing per entry.
            let mut collect = Collect {
                path: Default::default(),
                queue: Default::default(),
                changes: &mut self.changes,
            };
            return gix::diff::tree(
                lhs,
                rhs,
                &mut self.tree_state,
                &self.repo.objects,
                &mut collect,
            )
            .map_err(|e| GitError::Diff {
                commit,
                detail: e.to_string(),
            });
        }
        let rewrites = self.opts.renames.then_some(gix::diff::Rewrites {
            copies: None,
            // git's defaults for -M: 50% similar, at most 1000 candidates
            // (diff.renameLimit), empty files never paired.
            percentage: Some(0.5),
            limit: 1000,
            track_empty: false,
        });
        let changes = &mut self.changes;
        gix::diff::tree_with_rewrites(
            lhs,
            rhs,
            &mut self.resources,
            &mut self.tree_state,
            &self.repo.objects,
            |change: ChangeRef<'_>| {
                let sides = match change {
                    ChangeRef::Addition { entry_mode, id, .. } => (None, Some((entry_mode, id))),
                    ChangeRef::Deletion { entry_mode, id, .. } => (Some((entry_mode, id)), None),
                    ChangeRef::Modification {
                        previous_entry_mode,
                        previous_id,
                        entry_mode,
                        id,
                        ..
                    } => (
                        Some((previous_entry_mode, previous_id)),
                        Some((entry_mode, id)),
                    ),
                    ChangeRef::Rewrite {
                        source_entry_mode,
                        source_id,
                        entry_mode,
                        id,
                        ..
                    } => (Some((source_entry_mode, source_id)), Some((entry_mode, id))),
                };
                if let Some((old, new)) = file_sides(sides.0, sides.1) {
                    changes.push((change.location().to_str_lossy().into_owned(), old, new));
                }
                Ok(std::ops::ControlFlow::Continue(()))
            },
            gix::diff::tree_with_rewrites::Options {
                location: Some(gix::diff::tree::recorder::Location::Path),
                rewrites,
            },
        )
        .map_err(|e| GitError::Diff {
            commit,
            detail: e.to_string(),
        })?;
        self.resources.clear_resource_cache_keep_allocation();
        Ok(())
    }

    /// Lines added and removed from `old` to `new` at `path`, and whether
    /// git calls the pair binary (by its attributes, or its bytes).
    fn count(&mut self, path: &str, old: Side, new: Side) -> Result<(u64, u64, bool), GitError> {
        let diffable = self.attrs.diffable(path, &self.repo.objects)?;
        if diffable == Diffable::Binary {
            return Ok((0, 0, true));
        }
        let old_len = load(&self.repo, old, &mut self.old)?;
        let new_len = load(&self.repo, new, &mut self.new)?;
        let (a, b) = (&self.old[..old_len], &self.new[..new_len]);
        if diffable == Diffable::Auto && (is_binary(a) || is_binary(b)) {
            return Ok((0, 0, true));
        }
        if old.map(|s| s.1) == new.map(|s| s.1) {
            return Ok((0, 0, false));
        }
        if a.is_empty() {
            return Ok((count_lines(b), 0, false));
        }
        if b.is_empty() {
            return Ok((0, count_lines(a), false));
        }
        let (added, removed) = self.lines.count(a, b);
        Ok((added, removed, false))
    }
}

/// A change's sides as files: a directory's side is no side (its files
/// come as changes of their own), so a file that became a directory, or
/// the reverse, is the file's deletion or addition, as git shows it.
/// `None` when neither side is a file.
fn file_sides(old: Side, new: Side) -> Option<(Side, Side)> {
    let file = |side: Side| side.filter(|(mode, _)| !mode.is_tree());
    let (old, new) = (file(old), file(new));
    (old.is_some() || new.is_some()).then_some((old, new))
}

/// The file changes of a plain tree diff, with their paths from the root
/// (see [`file_sides`]).
struct Collect<'a> {
    path: BString,
    /// Paths of subtrees queued for the breadth-first walk.
    queue: VecDeque<BString>,
    changes: &'a mut Vec<(String, Side, Side)>,
}

impl Collect<'_> {
    fn push(&mut self, component: &BStr) {
        if component.is_empty() {
            return;
        }
        if !self.path.is_empty() {
            self.path.push(b'/');
        }
        self.path.extend_from_slice(component);
    }

    fn record(&mut self, old: Side, new: Side) {
        let path = self.path.to_str_lossy().into_owned();
        self.changes.push((path, old, new));
    }
}

impl gix::diff::tree::Visit for Collect<'_> {
    fn pop_front_tracked_path_and_set_current(&mut self) {
        self.path = self.queue.pop_front().unwrap_or_default();
    }

    fn push_back_tracked_path_component(&mut self, component: &BStr) {
        self.push(component);
        self.queue.push_back(self.path.clone());
    }

    fn push_path_component(&mut self, component: &BStr) {
        self.push(component);
    }

    fn pop_path_component(&mut self) {
        match self.path.rfind_byte(b'/') {
            Some(at) => self.path.truncate(at),
            None => self.path.clear(),
        }
    }

    fn visit(&mut self, change: gix::diff::tree::visit::Change) -> gix::diff::tree::visit::Action {
        use gix::diff::tree::visit::Change;
        let sides = match change {
            Change::Addition {
                entry_mode, oid, ..
            } => (None, Some((entry_mode, oid))),
            Change::Deletion {
                entry_mode, oid, ..
            } => (Some((entry_mode, oid)), None),
            Change::Modification {
                previous_entry_mode,
                previous_oid,
                entry_mode,
                oid,
            } => (
                Some((previous_entry_mode, previous_oid)),
                Some((entry_mode, oid)),
            ),
        };
        if let Some((old, new)) = file_sides(sides.0, sides.1) {
            self.record(old, new);
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// Reads a side's content into `buf` and returns its length: a blob's
/// bytes, a submodule's `Subproject commit <id>` line (what git diffs for
/// a gitlink), or nothing for an absent side.
fn load(repo: &gix::Repository, side: Side, buf: &mut Vec<u8>) -> Result<usize, GitError> {
    match side {
        None => Ok(0),
        Some((mode, id)) if mode.is_commit() => {
            buf.clear();
            buf.extend_from_slice(b"Subproject commit ");
            buf.extend_from_slice(id.to_hex().to_string().as_bytes());
            buf.push(b'\n');
            Ok(buf.len())
        }
        Some((_, id)) => Ok(read_object(repo, &id, "blob", buf)?.data.len()),
    }
}

/// git's rule (`buffer_is_binary`): a NUL byte among the first 8000.
pub fn is_binary(data: &[u8]) -> bool {
    data[..data.len().min(BINARY_PROBE)].contains(&0)
}

/// Lines as git counts them: a final line without a newline still counts.
pub fn count_lines(data: &[u8]) -> u64 {
    let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(data.last().is_some_and(|&b| b != b'\n'))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::git::analyses::churn;
    use crate::git::fixture::{self, Fixture};
    use crate::git::repo::open_local;
    use crate::git::synthetic::synthetic_fast_import_stream;
    use crate::git::walk::{WalkSpec, walk};

    fn pool() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool")
    }

    /// Our churn of HEAD, per path: (revisions, added, removed).
    fn our_churn(f: &Fixture) -> BTreeMap<String, (u64, u64, u64)> {
        let repo = open_local(f.path()).expect("opens");
        let cancel = AtomicBool::new(false);
        let h = walk(&repo, &WalkSpec::default(), &cancel, &|_| {}).expect("walks");
        let stats = numstats(
            &repo,
            &h.commits,
            ChurnOptions::default(),
            &crate::git::attributes::Attributes::of(&repo).expect("attributes"),
            &pool(),
            &cancel,
            &|_| {},
        )
        .expect("numstats");
        churn(&h.commits, &stats)
            .files
            .into_iter()
            .map(|f| (f.path, (f.revisions, f.added, f.removed)))
            .collect()
    }

    #[test]
    fn churn_matches_git_log_numstat_on_the_history_fixture() {
        let f = fixture::history();
        let git = f.git_numstat(&["--no-renames"]);
        assert_eq!(git.len(), 6, "{git:?}");
        assert_eq!(our_churn(&f), git);
    }

    #[test]
    fn churn_matches_git_log_numstat_on_a_generated_history() {
        let f = Fixture::new();
        f.fast_import(&synthetic_fast_import_stream(400, 30, 7));
        let git = f.git_numstat(&["--no-renames"]);
        let total: u64 = git.values().map(|v| v.1 + v.2).sum();
        // The stream really edits: hundreds of revisions, thousands of lines.
        assert!(
            git.len() >= 25 && total > 3000,
            "{} files, {total} lines",
            git.len()
        );
        assert_eq!(our_churn(&f), git);
    }

    /// A file that becomes a directory, and back: the file's lines go
    /// and the directory's files come, as git counts them.
    #[test]
    fn a_file_turned_directory_counts_as_git_counts_it() {
        let f = Fixture::new();
        let commit = |n: u32, body: &str| {
            format!(
                "commit refs/heads/main\nmark :{n}\nauthor Ann <ann@example.org> {n}000 +0000\n\
                 committer Ann <ann@example.org> {n}000 +0000\ndata 2\nc\n{}{body}\n",
                if n > 1 {
                    format!("from :{}\n", n - 1)
                } else {
                    String::new()
                }
            )
        };
        let stream = [
            commit(1, "M 100644 inline x\ndata 6\n1\n2\n3\n"),
            commit(
                2,
                "D x\nM 100644 inline x/a\ndata 2\na\nM 100644 inline x/b\ndata 4\nb\nc\n",
            ),
            commit(3, "D x\nM 100644 inline x\ndata 2\n4\n"),
        ]
        .concat();
        f.fast_import(&stream);
        let git = f.git_numstat(&["--no-renames"]);
        assert_eq!(git.get("x"), Some(&(3, 4, 3)), "{git:?}");
        assert_eq!(git.get("x/b"), Some(&(2, 2, 2)), "{git:?}");
        assert_eq!(our_churn(&f), git);
        // With renames on, the same (nothing here is a rename).
        let repo = open_local(f.path()).expect("opens");
        let cancel = AtomicBool::new(false);
        let h = walk(&repo, &WalkSpec::default(), &cancel, &|_| {}).expect("walks");
        let renames = ChurnOptions { renames: true };
        let stats = numstats(
            &repo,
            &h.commits,
            renames,
            &Attributes::of(&repo).expect("attributes"),
            &pool(),
            &cancel,
            &|_| {},
        )
        .expect("diffs");
        let ours: BTreeMap<String, (u64, u64, u64)> = churn(&h.commits, &stats)
            .files
            .into_iter()
            .map(|f| (f.path, (f.revisions, f.added, f.removed)))
            .collect();
        assert_eq!(ours, git);
    }

    #[test]
    fn a_commits_numstat_lists_binary_and_renamed_files_as_git_does() {
        let f = fixture::history();
        let repo = open_local(f.path()).expect("opens");
        let cancel = AtomicBool::new(false);
        let h = walk(&repo, &WalkSpec::default(), &cancel, &|_| {}).expect("walks");
        let by_message = |m: &str| {
            h.commits
                .iter()
                .find(|c| {
                    let commit = repo.find_commit(c.id).expect("commit reads");
                    commit.message_raw_sloppy().trim() == m.as_bytes()
                })
                .expect("commit")
        };
        let s = |path: &str, added, removed, binary| FileStat {
            path: path.into(),
            added,
            removed,
            binary,
        };
        let plain = ChurnOptions::default();
        assert_eq!(
            numstat(&repo, by_message("image"), plain).expect("numstat"),
            vec![s("c.txt", 1, 0, false), s("img.bin", 0, 0, true)]
        );
        let rename = by_message("rename");
        assert_eq!(
            numstat(&repo, rename, plain).expect("numstat"),
            vec![s("c.txt", 0, 2, false), s("d.txt", 2, 0, false)]
        );
        assert_eq!(
            numstat(&repo, rename, ChurnOptions { renames: true }).expect("numstat"),
            vec![s("d.txt", 0, 0, false)]
        );
        assert_eq!(
            numstat(&repo, by_message("merge side"), plain).expect("numstat"),
            vec![]
        );
    }

    #[test]
    fn numstats_stop_when_cancelled() {
        let f = fixture::history();
        let repo = open_local(f.path()).expect("opens");
        let cancel = AtomicBool::new(false);
        let h = walk(&repo, &WalkSpec::default(), &cancel, &|_| {}).expect("walks");
        cancel.store(true, Ordering::Relaxed);
        let err = numstats(
            &repo,
            &h.commits,
            ChurnOptions::default(),
            &crate::git::attributes::Attributes::of(&repo).expect("attributes"),
            &pool(),
            &cancel,
            &|_| {},
        )
        .expect_err("cancelled");
        assert!(matches!(err, GitError::Cancelled), "{err}");
    }

    #[test]
    fn lines_and_binary_follow_gits_rules() {
        assert_eq!(count_lines(b""), 0);
        assert_eq!(count_lines(b"a\nb"), 2);
        assert_eq!(count_lines(b"a\nb\n"), 2);
        let mut late_nul = vec![b'a'; BINARY_PROBE];
        late_nul.push(0);
        assert!(!is_binary(&late_nul));
        late_nul[BINARY_PROBE - 1] = 0;
        assert!(is_binary(&late_nul));
    }

    /// P8b's rough timing, by phase: our walk, numstats (on one thread and
    /// on two) and churn, against `git log --numstat --no-renames` to
    /// /dev/null, on 20,000 synthetic commits. Reported, not asserted
    /// (timings belong in quern-bench); the results must still agree. Run
    /// with `cargo test --release -p quern-daemon churn_timing -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "a timing, for --release by hand"]
    fn churn_timing_against_git_log() {
        let f = Fixture::new();
        f.fast_import(&synthetic_fast_import_stream(20_000, 400, 3));
        let t = std::time::Instant::now();
        let status = std::process::Command::new("git")
            .args(["log", "--numstat", "--no-renames", "HEAD"])
            .current_dir(f.path())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("git runs");
        assert!(status.success());
        let git_time = t.elapsed();

        let repo = open_local(f.path()).expect("opens");
        let cancel = AtomicBool::new(false);
        let t = std::time::Instant::now();
        let h = walk(&repo, &WalkSpec::default(), &cancel, &|_| {}).expect("walks");
        let walked = t.elapsed();
        let t = std::time::Instant::now();
        let opts = ChurnOptions::default();
        let stats = numstats(
            &repo,
            &h.commits,
            opts,
            &Attributes::of(&repo).expect("attributes"),
            &pool(),
            &cancel,
            &|_| {},
        )
        .expect("diffs");
        let diffed = t.elapsed();
        let t = std::time::Instant::now();
        let ours: BTreeMap<String, (u64, u64, u64)> = churn(&h.commits, &stats)
            .files
            .into_iter()
            .map(|f| (f.path, (f.revisions, f.added, f.removed)))
            .collect();
        let churned = t.elapsed();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        let t = std::time::Instant::now();
        numstats(
            &repo,
            &h.commits,
            opts,
            &Attributes::of(&repo).expect("attributes"),
            &one,
            &cancel,
            &|_| {},
        )
        .expect("diffs");
        let on_one = t.elapsed();
        let total = walked + diffed + churned;
        println!(
            "git log --numstat --no-renames > /dev/null: {git_time:?}\n\
             quern: walk {walked:?}, numstats {diffed:?} (one thread: {on_one:?}), churn {churned:?}; \
             total {total:?}, git's time / ours {:.2}",
            git_time.as_secs_f64() / total.as_secs_f64()
        );
        assert_eq!(ours, f.git_numstat(&["--no-renames"]));
    }
}
