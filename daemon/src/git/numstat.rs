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
//! by id, and so are the runs of entries two versions of a tree share; each
//! tree and blob is read and parsed once per thread (`objects.rs`: a
//! commit's new side is a later commit's old side); the per-file buffers
//! live in one [`Differ`] per pool thread; and commits are spread over the
//! CPU pool in runs of neighbours, oldest first where the packs store
//! versions in that order.

use std::cmp::Ordering as Order;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::diff::tree_with_rewrites::ChangeRef;
use gix::objs::tree::{EntryMode, name_order};
use rayon::prelude::*;

use super::attributes::{Attributes, Checker, Diffable};
use super::lines::LineDiff;
use super::objects::{Blob, Entry, Objects, PACK_CACHE, Packs};
use super::repo::{GitError, read_object};
use super::walk::WalkedCommit;
use crate::job::git::ChurnOptions;

/// Commits per unit of parallel work: neighbours share trees and blobs.
const RUN: usize = 32;

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

/// Commits' numstats, each commit's files a range of one list: going
/// through every commit's files reads memory in order, and there is one
/// list to free, not one per commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Numstats {
    commits: Vec<(ObjectId, std::ops::Range<u32>)>,
    files: Vec<FileStat>,
}

impl Numstats {
    /// Commits by id, each with its range of `files`.
    ///
    /// # Panics
    /// If a range is not within `files` (a bug of the caller).
    pub fn from_parts(
        commits: Vec<(ObjectId, std::ops::Range<u32>)>,
        files: Vec<FileStat>,
    ) -> Self {
        assert!(
            commits
                .iter()
                .all(|(_, r)| r.start <= r.end && r.end as usize <= files.len()),
            "numstat ranges past the files"
        );
        Numstats { commits, files }
    }

    pub fn len(&self) -> usize {
        self.commits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commits.is_empty()
    }

    /// Each commit and its files, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&ObjectId, &[FileStat])> + Clone {
        self.commits
            .iter()
            .map(|(id, r)| (id, &self.files[r.start as usize..r.end as usize]))
    }
}

impl FromIterator<CommitStats> for Numstats {
    fn from_iter<I: IntoIterator<Item = CommitStats>>(iter: I) -> Self {
        let mut all = Numstats::default();
        for (id, files) in iter {
            let start = all.files.len() as u32;
            all.files.extend(files);
            all.commits.push((id, start..all.files.len() as u32));
        }
        all
    }
}

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
    let trees: IdMap<ObjectId> = commits.iter().map(|c| (c.id, c.tree)).collect();
    let sync = repo.clone().into_sync();
    let packs = Arc::new(Packs::open(repo));
    // One Differ per pool thread, made on first use: a gix::Repository is
    // not Sync, and its delta cache is worth keeping between runs.
    let differs: Vec<Mutex<Option<Differ>>> = (0..pool.current_num_threads())
        .map(|_| Mutex::new(None))
        .collect();
    let done = AtomicU64::new(0);
    let oldest_first = match (commits.first(), commits.last()) {
        (Some(newest), Some(oldest)) => packs.deltas_run_forward(&newest.tree, &oldest.tree),
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
                    None => guard.insert(Differ::new(
                        sync.to_thread_local(),
                        packs.clone(),
                        opts,
                        attrs.checker(),
                    )?),
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
    let packs = Arc::new(Packs::open(repo));
    Differ::new(repo.clone(), packs, opts, attrs.checker())?.commit(commit, &IdMap::default())
}

/// A map keyed by object id, hashed by the id's leading bytes (already
/// random) rather than SipHash.
type IdMap<T> = gix::hashtable::HashMap<ObjectId, T>;

/// A side of a change: its mode and id.
type Side = Option<(EntryMode, ObjectId)>;

/// One thread's diffing state, reused from file to file and commit to
/// commit so the per-file loop allocates only the path it reports.
struct Differ {
    repo: gix::Repository,
    opts: ChurnOptions,
    /// The trees and blobs this thread read, parsed once each.
    objects: Objects,
    /// For the rename-following diff only (gix's).
    tree_state: gix::diff::tree::State,
    resources: gix::diff::blob::Platform,
    old_tree: Vec<u8>,
    new_tree: Vec<u8>,
    path: Vec<u8>,
    changes: Vec<(String, Side, Side)>,
    lines: LineDiff,
    attrs: Checker,
}

impl Differ {
    fn new(
        mut repo: gix::Repository,
        packs: Arc<Packs>,
        opts: ChurnOptions,
        attrs: Checker,
    ) -> Result<Differ, GitError> {
        // A thread-local handle starts with gix's defaults: no object cache,
        // and a pack cache of 64 delta bases. Trees and blobs are read
        // through `objects`, which keeps them parsed, so gix's object cache
        // would keep a second copy. The repository's own reads (the rename
        // diff's trees, a parent outside the walk) get a pack cache like
        // the one `objects` keeps, which holds what delta chains resolve
        // to, as the next version in a chain is a delta on it.
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
            objects: Objects::new(packs),
            tree_state: Default::default(),
            resources,
            old_tree: Vec::new(),
            new_tree: Vec::new(),
            path: Vec::new(),
            changes: Vec::new(),
            lines: LineDiff::default(),
            attrs,
        })
    }

    fn commit(
        &mut self,
        c: &WalkedCommit,
        trees: &IdMap<ObjectId>,
    ) -> Result<Vec<FileStat>, GitError> {
        // git log shows no diff for a merge unless asked (-m, --cc).
        if c.parent_count > 1 {
            return Ok(Vec::new());
        }
        let parent_tree = match &c.first_parent {
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
        if self.opts.renames {
            self.diff_with_renames(c.id, parent_tree, c.tree)?;
        } else {
            self.path.clear();
            self.diff_trees(parent_tree.as_ref().map(|t| t.as_ref()), Some(&c.tree))?;
        }
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

    /// Adds to `self.changes` the files that differ between trees `old`
    /// and `new` (either absent) under `self.path`, as git's tree diff
    /// finds them: entries paired by name in git's tree order, subtrees
    /// with equal ids skipped, and the runs of entries that are byte for
    /// byte the same at the trees' start and end never looked at.
    fn diff_trees(
        &mut self,
        old: Option<&gix::oid>,
        new: Option<&gix::oid>,
    ) -> Result<(), GitError> {
        let old = old
            .map(|id| self.objects.tree(&self.repo, id, None))
            .transpose()?;
        let new = new
            .map(|id| self.objects.tree(&self.repo, id, old.as_deref()))
            .transpose()?;
        let (olds, news) = match (&old, &new) {
            (Some(a), Some(b)) => a.differing(b),
            (Some(a), None) => (0..a.len(), 0..0),
            (None, Some(b)) => (0..0, 0..b.len()),
            (None, None) => return Ok(()),
        };
        let (mut i, mut j) = (olds.start, news.start);
        while i < olds.end || j < news.end {
            let a = old.as_deref().filter(|_| i < olds.end).map(|t| t.entry(i));
            let b = new.as_deref().filter(|_| j < news.end).map(|t| t.entry(j));
            let order = match (&a, &b) {
                (Some(a), Some(b)) => {
                    name_order(a.name, a.mode.is_tree(), b.name, b.mode.is_tree())
                }
                (Some(_), None) => Order::Less,
                _ => Order::Greater,
            };
            let (a, b) = match order {
                Order::Less => {
                    i += 1;
                    (a, None)
                }
                Order::Greater => {
                    j += 1;
                    (None, b)
                }
                Order::Equal => {
                    i += 1;
                    j += 1;
                    match (a, b) {
                        (Some(a), Some(b)) if a.mode == b.mode && a.id == b.id => continue,
                        pair => pair,
                    }
                }
            };
            let Some(e) = a.or(b) else { continue };
            let len = self.path.len();
            if len > 0 {
                self.path.push(b'/');
            }
            self.path.extend_from_slice(e.name);
            if e.mode.is_tree() {
                // Equal names pair a tree only with a tree.
                let (a, b) = (a.map(|e| e.id.to_owned()), b.map(|e| e.id.to_owned()));
                self.diff_trees(a.as_deref(), b.as_deref())?;
            } else {
                let side = |e: Option<Entry<'_>>| e.map(|e| (e.mode, e.id.to_owned()));
                let path = self.path.to_str_lossy().into_owned();
                self.changes.push((path, side(a), side(b)));
            }
            self.path.truncate(len);
        }
        Ok(())
    }

    /// Fills `self.changes` with the files that differ between the trees,
    /// pairing a deleted and an added file as a rename as `git log -M`
    /// does (gix's rewrite tracking).
    fn diff_with_renames(
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
        let rewrites = Some(gix::diff::Rewrites {
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
                // A directory's side is no side: its files come as changes
                // of their own, so a file that became a directory, or the
                // reverse, is the file's deletion or addition, as git
                // shows it.
                let file = |side: Side| side.filter(|(mode, _)| !mode.is_tree());
                let (old, new) = (file(sides.0), file(sides.1));
                if old.is_some() || new.is_some() {
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
        let a = self.load(old)?;
        let b = self.load(new)?;
        if diffable == Diffable::Auto && (a.binary || b.binary) {
            return Ok((0, 0, true));
        }
        if old.map(|s| s.1) == new.map(|s| s.1) {
            return Ok((0, 0, false));
        }
        let (la, lb) = (a.lines(), b.lines());
        if a.data.is_empty() {
            return Ok((lb.len() as u64, 0, false));
        }
        if b.data.is_empty() {
            return Ok((0, la.len() as u64, false));
        }
        let (added, removed) = self.lines.count((&a.data, &la), (&b.data, &lb));
        Ok((added, removed, false))
    }

    /// A side's content: a blob's, a submodule's `Subproject commit <id>`
    /// line (what git diffs for a gitlink), or nothing for an absent side.
    fn load(&mut self, side: Side) -> Result<Arc<Blob>, GitError> {
        match side {
            None => Ok(Arc::new(Blob::new(Vec::new()))),
            Some((mode, id)) if mode.is_commit() => Ok(Arc::new(Blob::new(
                format!("Subproject commit {}\n", id.to_hex()).into_bytes(),
            ))),
            Some((_, id)) => self.objects.blob(&self.repo, &id),
        }
    }
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
        by_path(&h.commits, stats)
    }

    /// The churn of `commits` with `stats`, per path: (revisions, added,
    /// removed).
    fn by_path(
        commits: &[WalkedCommit],
        stats: Vec<CommitStats>,
    ) -> BTreeMap<String, (u64, u64, u64)> {
        churn(commits, &stats.into_iter().collect())
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
        let ours = by_path(&h.commits, stats);
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
    fn lines_are_counted_as_git_counts_them() {
        for (data, n) in [(&b""[..], 0), (b"a\nb", 2), (b"a\nb\n", 2), (b"\n\n", 2)] {
            assert_eq!(count_lines(data), n, "{data:?}");
            assert_eq!(
                crate::git::lines::Lines::of(data).len() as u64,
                n,
                "{data:?}"
            );
        }
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
        let ours = by_path(&h.commits, stats);
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
