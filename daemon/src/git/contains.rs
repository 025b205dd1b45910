//! The `contains` analysis: which branches and tags have a commit in their
//! history, and, on each branch that lacks it, the commits that are the
//! same change by another id (a backport): the same `Change-Id:` trailer,
//! a `(cherry picked from commit X)` line naming it, or the same patch-id.
//!
//! The patch-id is git's `patch-id --stable` of the commit's diff against
//! its first parent, computed here from the trees (see [`patch_id`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use gix::bstr::ByteSlice;
use gix::diff::blob::{Algorithm, Diff, InternedInput};

use crate::git::search::{cherry_picked_from, trailers};
use crate::job::git::{Contains, Equivalence, Lacking};

/// Why `contains` failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainsError {
    #[error(
        "commit {commit:?} is not a hex object id; pass 4 to 40 hex digits, as `git log --format=%H` prints them"
    )]
    BadCommitArg { commit: String },
    #[error(
        "commit {commit} is not in the repository ({message}); check the id, or fetch the branch that has it"
    )]
    UnknownCommit { commit: String, message: String },
    #[error("contains was cancelled")]
    Cancelled,
    #[error("{what} failed: {message}; check the repository with `git fsck`")]
    Gix { what: String, message: String },
}

/// Maps a gix failure to [`ContainsError::Gix`], naming what was being done.
fn gix_err(what: impl Into<String>) -> impl FnOnce(gix::Error) -> ContainsError {
    let what = what.into();
    move |e| ContainsError::Gix {
        what,
        message: format!("{e:#}"),
    }
}

fn check_cancel(cancel: &AtomicBool) -> Result<(), ContainsError> {
    if cancel.load(Ordering::Relaxed) {
        Err(ContainsError::Cancelled)
    } else {
        Ok(())
    }
}

/// Checks the commit argument at submit time: a hex object id of 4 to 40
/// digits. Whether the repository has it is known only when the job runs.
pub fn check_commit_arg(s: &str) -> Result<(), String> {
    let ok = (4..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(ContainsError::BadCommitArg {
            commit: s.to_string(),
        }
        .to_string())
    }
}

/// Which refs [`tips`] lists.
#[derive(Clone, Copy)]
enum RefKind {
    Local,
    Remote,
    Tags,
}

/// One branch or tag tip, peeled to its commit.
struct Tip {
    name: String,
    commit: gix::ObjectId,
}

/// The refs under one category, by short name, peeled to commits. Refs
/// that are symbolic (`origin/HEAD`) repeat another and are skipped, and
/// so are tags of trees or blobs, which have no history.
fn tips(repo: &gix::Repository, which: RefKind) -> Result<Vec<Tip>, ContainsError> {
    let what = match which {
        RefKind::Local => "local branches",
        RefKind::Remote => "remote-tracking branches",
        RefKind::Tags => "tags",
    };
    let platform = repo
        .references()
        .map_err(gix_err(format!("listing the {what}")))?;
    let iter = match which {
        RefKind::Local => platform.local_branches(),
        RefKind::Remote => platform.remote_branches(),
        RefKind::Tags => platform.tags(),
    }
    .map_err(gix_err(format!("listing the {what}")))?;
    let mut out = Vec::new();
    for r in iter {
        let mut r = r.map_err(gix_err(format!("reading the {what}")))?;
        if r.target().try_id().is_none() {
            continue;
        }
        let name = r.name().shorten().to_str_lossy().into_owned();
        let id = r
            .peel_to_id()
            .map_err(gix_err(format!("peeling {name}")))?
            .detach();
        let object = repo
            .find_object(id)
            .map_err(gix_err(format!("reading the tip of {name}")))?;
        if let Ok(commit) = object.peel_to_commit() {
            out.push(Tip {
                name,
                commit: commit.id,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What the equivalence rules compare of a commit.
struct Marks {
    change_ids: Vec<String>,
    picked_from: Vec<String>,
}

fn marks(message: &str) -> Marks {
    Marks {
        change_ids: trailers(message)
            .into_iter()
            .filter(|t| t.key.eq_ignore_ascii_case("Change-Id") && !t.value.is_empty())
            .map(|t| t.value)
            .collect(),
        picked_from: message
            .lines()
            .filter_map(cherry_picked_from)
            .map(str::to_ascii_lowercase)
            .collect(),
    }
}

/// The branches and tags whose history contains `commit_hex`, and for
/// each branch that lacks it, its equivalent commits.
///
/// Branches are local ones and remote-tracking ones (`origin/x`, as in a
/// mirror of a clone); tags are peeled. On a lacking branch only commits
/// that are not in the commit's own history are looked at (its ancestors
/// cannot be a backport of it), each found by every rule that holds, in
/// the walk's order. Patch-ids are computed only for commits that touch
/// the same paths, since a patch-id hashes the paths.
pub fn contains(
    repo: &gix::Repository,
    commit_hex: &str,
    cancel: &AtomicBool,
) -> Result<Contains, ContainsError> {
    check_commit_arg(commit_hex).map_err(|_| ContainsError::BadCommitArg {
        commit: commit_hex.to_string(),
    })?;
    let unknown = |message: String| ContainsError::UnknownCommit {
        commit: commit_hex.to_string(),
        message,
    };
    let target = repo
        .rev_parse_single(commit_hex)
        .map_err(|e| unknown(format!("{e:#}")))?
        .object()
        .map_err(|e| unknown(format!("{e:#}")))?
        .peel_to_commit()
        .map_err(|e| unknown(format!("{e:#}")))?;
    let target_id = target.id;
    let target_hex = target_id.to_string();
    let target_marks = marks(&String::from_utf8_lossy(target.message_raw_sloppy()));
    let target_paths = changed_paths(repo, target_id)?;
    let mut target_patch_id: Option<Option<String>> = None;

    let mut branches = tips(repo, RefKind::Local)?;
    branches.extend(tips(repo, RefKind::Remote)?);
    let tags = tips(repo, RefKind::Tags)?;

    // One graph for all the merge-base queries: it keeps the commits it
    // has read, so each later query is cheaper.
    let commit_graph = repo
        .commit_graph_if_enabled()
        .map_err(gix_err("opening the commit-graph"))?;
    let mut graph = repo.revision_graph(commit_graph.as_ref());
    let mut has: HashMap<gix::ObjectId, bool> = HashMap::new();
    let mut contains_target = |tip: gix::ObjectId| -> Result<bool, ContainsError> {
        if let Some(known) = has.get(&tip) {
            return Ok(*known);
        }
        check_cancel(cancel)?;
        let base = repo
            .merge_base_with_graph(target_id, tip, &mut graph)
            .map_err(gix_err(format!(
                "finding the merge base of {target_id} and {tip}"
            )))?;
        let yes = base.is_some_and(|b| b.detach() == target_id);
        has.insert(tip, yes);
        Ok(yes)
    };

    let mut out = Contains {
        commit: target_hex.clone(),
        ..Contains::default()
    };
    for tag in &tags {
        if contains_target(tag.commit)? {
            out.tags.push(tag.name.clone());
        }
    }
    let mut lacking_tips = Vec::new();
    for branch in &branches {
        if contains_target(branch.commit)? {
            out.branches.push(branch.name.clone());
        } else {
            lacking_tips.push(branch);
        }
    }

    // Branches share commits; each candidate is judged once.
    let mut judged: HashMap<gix::ObjectId, Vec<Equivalence>> = HashMap::new();
    for branch in lacking_tips {
        let walk = repo
            .rev_walk([branch.commit])
            .with_hidden([target_id])
            .all()
            .map_err(gix_err(format!("walking {}", branch.name)))?;
        let mut equivalents = Vec::new();
        for info in walk {
            check_cancel(cancel)?;
            let id = info
                .map_err(gix_err(format!("walking {}", branch.name)))?
                .id;
            let found = match judged.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(judge(
                    repo,
                    id,
                    target_id,
                    &target_marks,
                    &target_paths,
                    &mut target_patch_id,
                    cancel,
                )?),
            };
            equivalents.extend(found.iter().map(|e| (id.to_string(), *e)));
        }
        out.lacking.push(Lacking {
            branch: branch.name.clone(),
            equivalents,
        });
    }
    Ok(out)
}

/// The rules that find `id` equivalent to the target.
fn judge(
    repo: &gix::Repository,
    id: gix::ObjectId,
    target_id: gix::ObjectId,
    target: &Marks,
    target_paths: &BTreeSet<Vec<u8>>,
    target_patch_id: &mut Option<Option<String>>,
    cancel: &AtomicBool,
) -> Result<Vec<Equivalence>, ContainsError> {
    let commit = repo
        .find_commit(id)
        .map_err(gix_err(format!("reading commit {id}")))?;
    let m = marks(&String::from_utf8_lossy(commit.message_raw_sloppy()));
    let mut found = Vec::new();
    if m.change_ids.iter().any(|c| target.change_ids.contains(c)) {
        found.push(Equivalence::ChangeId);
    }
    // git writes the full id; an abbreviated one of 7 or more digits is
    // accepted too, as people shorten it by hand.
    if m.picked_from
        .iter()
        .any(|x| x.len() >= 7 && target_id.to_string().starts_with(x.as_str()))
    {
        found.push(Equivalence::CherryPickedFrom);
    }
    if !target_paths.is_empty() && changed_paths(repo, id)? == *target_paths {
        let ours = match target_patch_id {
            Some(p) => p.clone(),
            None => {
                let p = patch_id_cancellable(repo, target_id, cancel)?;
                *target_patch_id = Some(p.clone());
                p
            }
        };
        if ours.is_some() && patch_id_cancellable(repo, id, cancel)? == ours {
            found.push(Equivalence::PatchId);
        }
    }
    Ok(found)
}

/// One file's change in a commit's diff against its first parent.
struct FileChange {
    path: Vec<u8>,
    old: Option<(u16, gix::ObjectId)>,
    new: Option<(u16, gix::ObjectId)>,
}

/// Blob, executable, link and submodule are different kinds: git shows a
/// change of kind as a deletion and an addition, not a mode change.
fn same_kind(a: u16, b: u16) -> bool {
    let kind = |m: u16| match m {
        0o120000 => 1,
        0o160000 => 2,
        _ => 0,
    };
    kind(a) == kind(b)
}

/// The file changes of `id` against its first parent (or the empty tree),
/// without rename detection, in git's order (by path).
fn file_changes(
    repo: &gix::Repository,
    id: gix::ObjectId,
) -> Result<Vec<FileChange>, ContainsError> {
    use gix::object::tree::diff::ChangeDetached as C;
    let commit = repo
        .find_commit(id)
        .map_err(gix_err(format!("reading commit {id}")))?;
    let tree = commit
        .tree()
        .map_err(gix_err(format!("reading the tree of {id}")))?;
    let parent = match commit.parent_ids().next() {
        Some(p) => Some(
            repo.find_commit(p.detach())
                .and_then(|c| c.tree())
                .map_err(gix_err(format!("reading the tree of {p}, parent of {id}")))?,
        ),
        None => None,
    };
    let changes = repo
        .diff_tree_to_tree(
            parent.as_ref(),
            &tree,
            gix::diff::Options::default().with_rewrites(None),
        )
        .map_err(gix_err(format!("diffing commit {id}")))?;
    let mut out = Vec::new();
    for change in changes {
        match change {
            C::Addition {
                location,
                entry_mode,
                id,
                ..
            } if !entry_mode.is_tree() => out.push(FileChange {
                path: location.into(),
                old: None,
                new: Some((entry_mode.value(), id)),
            }),
            C::Deletion {
                location,
                entry_mode,
                id,
                ..
            } if !entry_mode.is_tree() => out.push(FileChange {
                path: location.into(),
                old: Some((entry_mode.value(), id)),
                new: None,
            }),
            C::Modification {
                location,
                previous_entry_mode,
                previous_id,
                entry_mode,
                id,
            } if !entry_mode.is_tree() && !previous_entry_mode.is_tree() => {
                let (pm, m) = (previous_entry_mode.value(), entry_mode.value());
                if same_kind(pm, m) {
                    out.push(FileChange {
                        path: location.into(),
                        old: Some((pm, previous_id)),
                        new: Some((m, id)),
                    });
                } else {
                    out.push(FileChange {
                        path: location.clone().into(),
                        old: Some((pm, previous_id)),
                        new: None,
                    });
                    out.push(FileChange {
                        path: location.into(),
                        old: None,
                        new: Some((m, id)),
                    });
                }
            }
            // A directory replaced by a file (or back) shows as a
            // deletion and an addition of the entries themselves.
            C::Modification {
                location,
                previous_entry_mode,
                previous_id,
                entry_mode,
                id,
            } => {
                if !previous_entry_mode.is_tree() {
                    out.push(FileChange {
                        path: location.clone().into(),
                        old: Some((previous_entry_mode.value(), previous_id)),
                        new: None,
                    });
                }
                if !entry_mode.is_tree() {
                    out.push(FileChange {
                        path: location.into(),
                        old: None,
                        new: Some((entry_mode.value(), id)),
                    });
                }
            }
            _ => {}
        }
    }
    // Stable, so a deletion stays before the addition at the same path.
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn changed_paths(
    repo: &gix::Repository,
    id: gix::ObjectId,
) -> Result<BTreeSet<Vec<u8>>, ContainsError> {
    Ok(file_changes(repo, id)?
        .into_iter()
        .map(|c| c.path)
        .collect())
}

/// git's `patch-id --stable` of commit `id`'s diff against its first
/// parent (the empty tree for a root commit), as hex; `None` for a commit
/// that changes nothing, for which git prints no patch-id either.
///
/// This computes what `git show <id> | git patch-id --stable` does from
/// the trees, without rendering the diff: the file header and mode lines,
/// `---`/`+++` and the hunk lines, each with all whitespace removed, hunk
/// headers and `index` lines left out, hashed per file and the per-file
/// hashes summed. Binary files hash their full blob ids, as
/// `git show --full-index` renders them. Two deviations, both rare: paths
/// are hashed unquoted (git quotes names with control or non-ASCII
/// bytes), and the line diff is gix's Myers with git's slider heuristic,
/// which can differ from git's when a change has several equally short
/// diffs. Both sides of an equivalence are computed here, so neither
/// changes which commits match.
pub fn patch_id(
    repo: &gix::Repository,
    id: gix::ObjectId,
) -> Result<Option<String>, ContainsError> {
    patch_id_cancellable(repo, id, &AtomicBool::new(false))
}

fn patch_id_cancellable(
    repo: &gix::Repository,
    id: gix::ObjectId,
    cancel: &AtomicBool,
) -> Result<Option<String>, ContainsError> {
    let mut state = PatchIdState::new(repo.object_hash());
    for file in file_changes(repo, id)? {
        check_cancel(cancel)?;
        let load = |side: Option<(u16, gix::ObjectId)>| -> Result<Vec<u8>, ContainsError> {
            match side {
                None => Ok(Vec::new()),
                // A submodule's diff is the line naming its commit.
                Some((0o160000, oid)) => Ok(format!("Subproject commit {oid}\n").into_bytes()),
                Some((_, oid)) => Ok(repo
                    .find_blob(oid)
                    .map_err(gix_err(format!("reading blob {oid}")))?
                    .take_data()),
            }
        };
        let (old, new) = (load(file.old)?, load(file.new)?);
        state.file(&file, &old, &new)?;
    }
    state.finish()
}

/// git's `patch-id` reader, as the states it passes through for a diff it
/// rendered itself (builtin/patch-id.c): per-file hashes are flushed when
/// a text file's last hunk is followed by another file and after a binary
/// file; a file with only header lines (a mode change, an empty new file)
/// runs on into the next file's hash; and the header line of a file right
/// after a binary one is not hashed, since the reader is skipping the
/// binary body when it meets it.
struct PatchIdState {
    kind: gix::hash::Kind,
    hasher: gix::hash::Hasher,
    sum: Vec<u8>,
    hashed_len: usize,
    after_text: bool,
    after_binary: bool,
}

impl PatchIdState {
    fn new(kind: gix::hash::Kind) -> PatchIdState {
        PatchIdState {
            kind,
            hasher: gix::hash::hasher(kind),
            sum: vec![0; kind.len_in_bytes()],
            hashed_len: 0,
            after_text: false,
            after_binary: false,
        }
    }

    /// Hashes one line with all whitespace removed, as patch-id does.
    fn line(&mut self, parts: &[&[u8]]) {
        for part in parts {
            let kept: Vec<u8> = part
                .iter()
                .copied()
                .filter(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
                .collect();
            self.hashed_len += kept.len();
            self.hasher.update(&kept);
        }
    }

    /// Adds the current hash to the sum, byte by byte from the first with
    /// carry, and starts a new one.
    fn flush(&mut self) -> Result<(), ContainsError> {
        let hasher = std::mem::replace(&mut self.hasher, gix::hash::hasher(self.kind));
        let digest = hasher.try_finalize().map_err(gix_err("hashing a patch"))?;
        let mut carry: u16 = 0;
        for (s, d) in self.sum.iter_mut().zip(digest.as_bytes()) {
            carry += u16::from(*s) + u16::from(*d);
            *s = carry as u8;
            carry >>= 8;
        }
        Ok(())
    }

    fn file(&mut self, f: &FileChange, old: &[u8], new: &[u8]) -> Result<(), ContainsError> {
        if self.after_text {
            self.flush()?;
        }
        let p = f.path.as_slice();
        if !self.after_binary {
            self.line(&[b"diff --git a/", p, b" b/", p]);
        }
        self.after_text = false;
        self.after_binary = false;
        match (f.old, f.new) {
            (None, Some((m, _))) => self.line(&[format!("new file mode {m:o}").as_bytes()]),
            (Some((m, _)), None) => self.line(&[format!("deleted file mode {m:o}").as_bytes()]),
            (Some((a, _)), Some((b, _))) if a != b => {
                self.line(&[format!("old mode {a:o}").as_bytes()]);
                self.line(&[format!("new mode {b:o}").as_bytes()]);
            }
            _ => {}
        }
        if old == new {
            return Ok(());
        }
        let binary = |d: &[u8]| d[..d.len().min(8000)].contains(&0);
        if binary(old) || binary(new) {
            let hex = |s: Option<(u16, gix::ObjectId)>| match s {
                Some((_, oid)) => oid.to_string(),
                None => gix::ObjectId::null(self.kind).to_string(),
            };
            let (a, b) = (hex(f.old), hex(f.new));
            // Not whitespace-stripped, and not counted: patch-id takes
            // these from the index line, outside its line hashing.
            self.hasher.update(a.as_bytes());
            self.hasher.update(b.as_bytes());
            self.flush()?;
            self.after_binary = true;
            return Ok(());
        }
        match f.old {
            Some(_) => self.line(&[b"--- a/", p]),
            None => self.line(&[b"--- /dev/null"]),
        }
        match f.new {
            Some(_) => self.line(&[b"+++ b/", p]),
            None => self.line(&[b"+++ /dev/null"]),
        }
        self.hunks(old, new);
        self.after_text = true;
        Ok(())
    }

    /// The hunk lines of a unified diff with git's three lines of context;
    /// changes at most six unchanged lines apart share a hunk, as in
    /// git's xdiff. Hunk headers are not hashed, so only the lines matter.
    fn hunks(&mut self, old: &[u8], new: &[u8]) {
        const CONTEXT: u32 = 3;
        let input = InternedInput::new(old, new);
        let mut diff = Diff::compute(Algorithm::Myers, &input);
        diff.postprocess_lines(&input);
        let changes: Vec<_> = diff.hunks().collect();
        let before_len = input.before.len() as u32;
        let mut i = 0;
        while i < changes.len() {
            let mut j = i;
            while j + 1 < changes.len()
                && changes[j + 1].before.start - changes[j].before.end <= 2 * CONTEXT
            {
                j += 1;
            }
            let mut pos = changes[i].before.start.saturating_sub(CONTEXT);
            for h in &changes[i..=j] {
                for t in &input.before[pos as usize..h.before.start as usize] {
                    self.line(&[input.interner[*t]]);
                }
                for t in &input.before[h.before.start as usize..h.before.end as usize] {
                    self.line(&[b"-", input.interner[*t]]);
                }
                for t in &input.after[h.after.start as usize..h.after.end as usize] {
                    self.line(&[b"+", input.interner[*t]]);
                }
                pos = h.before.end;
            }
            let end = (changes[j].before.end + CONTEXT).min(before_len);
            for t in &input.before[pos as usize..end as usize] {
                self.line(&[input.interner[*t]]);
            }
            i = j + 1;
        }
    }

    fn finish(mut self) -> Result<Option<String>, ContainsError> {
        self.flush()?;
        if self.hashed_len == 0 {
            return Ok(None);
        }
        Ok(Some(self.sum.iter().map(|b| format!("{b:02x}")).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::fixture::Fixture;
    use std::io::Write;
    use std::process::{Command, Stdio};

    const ANN: (&str, &str) = ("Ann", "ann@example.org");

    fn oid(hex: &str) -> gix::ObjectId {
        gix::ObjectId::from_hex(hex.as_bytes()).unwrap()
    }

    /// What `git show --full-index <id> | git patch-id --stable` prints
    /// as the patch-id, or `None` when it prints nothing.
    fn git_patch_id(f: &Fixture, id: &str) -> Option<String> {
        let show = f.git(&["show", "--no-renames", "--full-index", id]);
        let mut child = Command::new("git")
            .args(["patch-id", "--stable"])
            .current_dir(f.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{show}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let out = String::from_utf8(out.stdout).unwrap();
        out.split_whitespace().next().map(str::to_string)
    }

    fn lines(n: usize, changed: &[(usize, &str)]) -> Vec<u8> {
        (1..=n)
            .map(|i| match changed.iter().find(|c| c.0 == i) {
                Some((_, s)) => format!("{s}\n"),
                None => format!("line {i}\n"),
            })
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn patch_id_is_gits_stable_patch_id() {
        use std::os::unix::fs::PermissionsExt;
        let f = Fixture::new();
        let a = f.commit(
            1_000,
            ANN,
            "root\n",
            &[
                ("a.txt", Some(&lines(30, &[]))),
                ("bin.dat", Some(b"\0\x01\x02 binary\n")),
                ("gone.txt", Some(b"going\n  away\n")),
                ("script.sh", Some(b"#!/bin/sh\necho hi\n")),
            ],
        );
        std::os::unix::fs::symlink("a.txt", f.path().join("link")).unwrap();
        std::fs::set_permissions(
            f.path().join("script.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        // Changes 2 and 27 are hunks of their own; 10 and 14 are three
        // lines apart and share one; a binary file followed by a
        // header-only file (the empty one) followed by a deletion; a
        // mode-only change; a last line without a newline.
        let b = f.commit(
            2_000,
            ANN,
            "many kinds of change\n",
            &[
                (
                    "a.txt",
                    Some(&lines(
                        30,
                        &[
                            (2, "two\tchanged"),
                            (10, "ten"),
                            (14, "fourteen"),
                            (27, "x"),
                        ],
                    )),
                ),
                ("bin.dat", Some(b"\0\x01\x03 binary\n")),
                ("empty.txt", Some(b"")),
                ("gone.txt", None),
                ("new.txt", Some(b"fresh\nno newline")),
            ],
        );
        let empty = f.commit(3_000, ANN, "nothing\n", &[]);
        let repo = gix::open(f.path()).unwrap();
        for id in [&a, &b] {
            let ours = patch_id(&repo, oid(id)).unwrap();
            assert!(ours.is_some());
            assert_eq!(ours, git_patch_id(&f, id), "commit {id}");
        }
        assert_eq!(git_patch_id(&f, &empty), None);
        assert_eq!(patch_id(&repo, oid(&empty)).unwrap(), None);
    }

    /// main: c0, then the fix F (with a Change-Id), tagged v1.0 and
    /// continued on `feature`. Each rel-N branch forks at c0 (tag v0.1)
    /// and gets F back in a different way.
    struct Backports {
        f: Fixture,
        fix: String,
        by_patch_id: String,
        by_pick_line: String,
        by_change_id: String,
        by_all: String,
    }

    fn backports() -> Backports {
        let f = Fixture::new();
        let c0 = f.commit(1_000, ANN, "start\n", &[("lib.txt", Some(&lines(12, &[])))]);
        f.git(&["tag", "v0.1"]);
        for b in ["rel-1", "rel-2", "rel-3", "rel-4"] {
            f.git(&["branch", b, &c0]);
        }
        let fix = f.commit(
            2_000,
            ANN,
            "Fix the frobnicator\n\nChange-Id: I1111\n",
            &[("lib.txt", Some(&lines(12, &[(6, "fixed")])))],
        );
        f.git(&["tag", "-a", "-m", "one", "v1.0"]);
        f.git(&["checkout", "-q", "-b", "feature"]);
        f.commit(3_000, ANN, "feature work\n", &[("feat.txt", Some(b"f\n"))]);

        // rel-1: a plain cherry-pick whose message lost the Change-Id,
        // then unrelated work: the same patch-id only.
        f.git(&["checkout", "-q", "rel-1"]);
        f.git_at(&["cherry-pick", &fix], Some(4_000), ANN);
        f.git_at(
            &[
                "commit",
                "-q",
                "--amend",
                "-m",
                "Fix the frobnicator (backport)",
            ],
            Some(4_000),
            ANN,
        );
        let by_patch_id = f.git(&["rev-parse", "HEAD"]);
        f.commit(4_100, ANN, "later\n", &[("other.txt", Some(b"o\n"))]);

        // rel-2: a context line differs, so the patch-id does; -x names
        // the fix, and the Change-Id was dropped.
        f.git(&["checkout", "-q", "rel-2"]);
        f.commit(
            5_000,
            ANN,
            "reword 3\n",
            &[("lib.txt", Some(&lines(12, &[(3, "THREE")])))],
        );
        f.git_at(&["cherry-pick", "-x", &fix], Some(5_100), ANN);
        let msg = format!("Fix the frobnicator\n\n(cherry picked from commit {fix})\n");
        f.git_at(&["commit", "-q", "--amend", "-m", &msg], Some(5_100), ANN);
        let by_pick_line = f.git(&["rev-parse", "HEAD"]);

        // rel-3: the same change reworked, under the same Change-Id.
        f.git(&["checkout", "-q", "rel-3"]);
        let by_change_id = f.commit(
            6_000,
            ANN,
            "Fix the frobnicator differently\n\nChange-Id: I1111\n",
            &[("lib.txt", Some(&lines(12, &[(6, "fixed another way")])))],
        );

        // rel-4: cherry-pick -x as is: every rule holds.
        f.git(&["checkout", "-q", "rel-4"]);
        f.git_at(&["cherry-pick", "-x", &fix], Some(7_000), ANN);
        let by_all = f.git(&["rev-parse", "HEAD"]);
        f.git(&["checkout", "-q", "main"]);
        Backports {
            f,
            fix,
            by_patch_id,
            by_pick_line,
            by_change_id,
            by_all,
        }
    }

    #[test]
    fn contains_lists_the_refs_and_finds_backports_by_each_rule() {
        let b = backports();
        // Remote-tracking branches count as branches, named as
        // `git branch -r` does; origin/HEAD repeats one and is skipped.
        b.f.git(&["update-ref", "refs/remotes/origin/main", &b.fix]);
        b.f.git(&["update-ref", "refs/remotes/origin/rel-3", &b.by_change_id]);
        b.f.git(&[
            "symbolic-ref",
            "refs/remotes/origin/HEAD",
            "refs/remotes/origin/main",
        ]);
        let repo = gix::open(b.f.path()).unwrap();
        let got = contains(&repo, &b.fix[..10], &AtomicBool::new(false)).unwrap();
        let lacking = |branch: &str, equivalents: &[(&str, Equivalence)]| Lacking {
            branch: branch.into(),
            equivalents: equivalents
                .iter()
                .map(|(c, e)| (c.to_string(), *e))
                .collect(),
        };
        use Equivalence::*;
        assert_eq!(
            got,
            Contains {
                commit: b.fix.clone(),
                branches: vec!["feature".into(), "main".into(), "origin/main".into()],
                tags: vec!["v1.0".into()],
                lacking: vec![
                    lacking("rel-1", &[(&b.by_patch_id, PatchId)]),
                    lacking("rel-2", &[(&b.by_pick_line, CherryPickedFrom)]),
                    lacking("rel-3", &[(&b.by_change_id, ChangeId)]),
                    lacking(
                        "rel-4",
                        &[
                            (&b.by_all, ChangeId),
                            (&b.by_all, CherryPickedFrom),
                            (&b.by_all, PatchId)
                        ]
                    ),
                    lacking("origin/rel-3", &[(&b.by_change_id, ChangeId)]),
                ],
            }
        );
        // The patch-ids agree with git's: equal where a rule says so.
        assert_eq!(
            git_patch_id(&b.f, &b.by_patch_id),
            git_patch_id(&b.f, &b.fix)
        );
        assert_ne!(
            git_patch_id(&b.f, &b.by_pick_line),
            git_patch_id(&b.f, &b.fix)
        );
        assert_eq!(
            patch_id(&repo, oid(&b.fix)).unwrap(),
            git_patch_id(&b.f, &b.fix)
        );
    }

    #[test]
    fn bad_and_unknown_commits_are_errors_naming_them() {
        assert_eq!(check_commit_arg("abcd"), Ok(()));
        assert_eq!(check_commit_arg(&"a".repeat(40)), Ok(()));
        for bad in ["abc", "main", "xyz1234", &"a".repeat(41), ""] {
            let err = check_commit_arg(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("commit {bad:?} is not a hex object id")),
                "{err}"
            );
        }
        let b = backports();
        let repo = gix::open(b.f.path()).unwrap();
        let cancel = AtomicBool::new(false);
        let err = contains(&repo, "0000000000000000000000000000000000000001", &cancel).unwrap_err();
        assert!(matches!(err, ContainsError::UnknownCommit { .. }), "{err}");
        assert!(
            err.to_string().starts_with(
                "commit 0000000000000000000000000000000000000001 is not in the repository"
            ),
            "{err}"
        );
        assert!(matches!(
            contains(&repo, "main", &cancel),
            Err(ContainsError::BadCommitArg { .. })
        ));
        cancel.store(true, Ordering::Relaxed);
        assert!(matches!(
            contains(&repo, &b.fix, &cancel),
            Err(ContainsError::Cancelled)
        ));
    }
}
