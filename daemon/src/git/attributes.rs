//! What `.gitattributes` say about diffing a path, read as `git log
//! --numstat` reads them: from the work tree's files (then the index) when
//! there is a work tree, and from `$GIT_DIR/info/attributes`; a bare
//! repository (a mirror) has only the latter, as git reads no tree's
//! `.gitattributes` there unless told to (`attr.tree`, not followed).
//! `-diff` (and the `binary` macro) makes a file binary, `diff` makes it
//! text even with NUL bytes, and `diff=<driver>` is binary when the
//! repository's config sets `diff.<driver>.binary`.
//!
//! Not followed: a driver's `textconv` (running a configured command is
//! not something a daemon does on a repository it analyses); the file is
//! then diffed as it is.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gix::bstr::{BStr, ByteSlice};
use sha2::{Digest, Sha256};

use super::repo::GitError;

/// How a path's contents are to be diffed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diffable {
    /// By git's own test: binary when a NUL byte is among the first 8000.
    Auto,
    /// Always line by line.
    Text,
    /// Never: a revision with no lines.
    Binary,
}

/// A repository's attributes for diffing, prepared once per job and
/// checked through a [`Checker`] per thread.
#[derive(Clone)]
pub struct Attributes {
    /// `None` when the repository has no attributes at all.
    stack: Option<gix::worktree::Stack>,
    binary_drivers: Arc<HashSet<String>>,
    fingerprint: String,
}

impl Attributes {
    /// Reads the attribute files and the drivers' config of `repo`.
    pub fn of(repo: &gix::Repository) -> Result<Attributes, GitError> {
        let repo_path = || -> PathBuf { repo.workdir().unwrap_or(repo.git_dir()).to_path_buf() };
        let failed = |e: &dyn std::fmt::Display| GitError::Attributes {
            repo: repo_path(),
            detail: e.to_string(),
        };
        // A bare repository's attributes come from info/attributes alone:
        // an empty index maps no .gitattributes.
        let worktree_index;
        let empty;
        let index: &gix::index::State = if repo.workdir().is_some() {
            worktree_index = repo.index_or_empty().map_err(|e| failed(&e))?;
            &worktree_index
        } else {
            empty = gix::index::State::new(repo.object_hash());
            &empty
        };
        let mut binary_drivers = HashSet::new();
        let config = repo.config_snapshot();
        if let Some(sections) = config.plumbing().sections_by_name("diff") {
            for s in sections {
                let Some(name) = s.header().subsection_name() else {
                    continue;
                };
                if s.value("binary")
                    .is_some_and(|v| gix::config::Boolean::try_from(v).is_ok_and(|b| b.0))
                {
                    binary_drivers.insert(name.to_str_lossy().into_owned());
                }
            }
        }
        // What the attributes are made of, for the numstat cache's key:
        // each tracked .gitattributes (as the work tree has it, or its
        // blob), info/attributes, and the binary drivers.
        let mut sources: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for entry in index.entries() {
            let path = entry.path(index);
            if path != ".gitattributes" && !path.ends_with(b"/.gitattributes") {
                continue;
            }
            let on_disk = repo.workdir().and_then(|w| {
                let relative = gix::path::from_bstr(path).ok()?;
                std::fs::read(w.join(relative)).ok()
            });
            let content = on_disk.unwrap_or_else(|| entry.id.as_bytes().to_vec());
            sources.push((path.to_vec(), content));
        }
        let info = repo.common_dir().join("info").join("attributes");
        if let Ok(content) = std::fs::read(&info) {
            sources.push((b"info/attributes".to_vec(), content));
        }
        let mut drivers: Vec<&String> = binary_drivers.iter().collect();
        drivers.sort();
        for d in drivers {
            sources.push((b"diff driver".to_vec(), d.as_bytes().to_vec()));
        }
        let fingerprint = if sources.is_empty() {
            "none".into()
        } else {
            sources.sort();
            let mut hash = Sha256::new();
            for (path, content) in &sources {
                hash.update((path.len() as u64).to_le_bytes());
                hash.update(path);
                hash.update((content.len() as u64).to_le_bytes());
                hash.update(content);
            }
            hash.finalize()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let stack = match repo.workdir() {
            // A bare repository with no sources: nothing could say
            // anything, every path is Auto, unlooked.
            None if sources.is_empty() => None,
            workdir => {
                let source = if workdir.is_some() {
                    gix::worktree::stack::state::attributes::Source::WorktreeThenIdMapping
                } else {
                    gix::worktree::stack::state::attributes::Source::IdMapping
                };
                let stack = repo
                    .attributes_only(index, source)
                    .map_err(|e| failed(&e))?;
                Some(stack.detach())
            }
        };
        Ok(Attributes {
            stack,
            binary_drivers: Arc::new(binary_drivers),
            fingerprint,
        })
    }

    /// A short key of what the attributes are made of: `none` when there
    /// are none; another value when any source changed.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A checker for one thread.
    pub fn checker(&self) -> Checker {
        let outcome = self
            .stack
            .as_ref()
            .map(|s| s.selected_attribute_matches(["diff"]));
        Checker {
            stack: self.stack.clone(),
            outcome,
            binary_drivers: self.binary_drivers.clone(),
            memo: HashMap::new(),
        }
    }
}

/// Looks up paths, remembering each answer (a history names the same
/// paths again and again).
pub struct Checker {
    stack: Option<gix::worktree::Stack>,
    outcome: Option<gix::attrs::search::Outcome>,
    binary_drivers: Arc<HashSet<String>>,
    memo: HashMap<Box<str>, Diffable>,
}

impl Checker {
    /// How `path` (from the repository's root) is to be diffed.
    pub fn diffable(
        &mut self,
        path: &str,
        objects: &dyn gix::objs::Find,
    ) -> Result<Diffable, GitError> {
        let (Some(stack), Some(outcome)) = (self.stack.as_mut(), self.outcome.as_mut()) else {
            return Ok(Diffable::Auto);
        };
        if let Some(d) = self.memo.get(path) {
            return Ok(*d);
        }
        let platform = stack
            .at_entry(
                <&BStr>::from(path.as_bytes()),
                Some(gix::index::entry::Mode::FILE),
                objects,
            )
            .map_err(|e| GitError::Attributes {
                repo: Path::new(path).to_path_buf(),
                detail: e.to_string(),
            })?;
        outcome.reset();
        platform.matching_attributes(outcome);
        let mut verdict = Diffable::Auto;
        for m in outcome.iter_selected() {
            verdict = match m.assignment.state {
                gix::attrs::StateRef::Set => Diffable::Text,
                gix::attrs::StateRef::Unset => Diffable::Binary,
                gix::attrs::StateRef::Value(v) => {
                    if self
                        .binary_drivers
                        .contains(v.as_bstr().to_str_lossy().as_ref())
                    {
                        Diffable::Binary
                    } else {
                        Diffable::Auto
                    }
                }
                gix::attrs::StateRef::Unspecified => Diffable::Auto,
            };
        }
        self.memo.insert(path.into(), verdict);
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::git::analyses::churn;
    use crate::git::fixture::{ALICE, Fixture, JAN_1_2024};
    use crate::git::numstat::{Numstats, numstats};
    use crate::git::repo::open_local;
    use crate::git::walk::{WalkSpec, walk};
    use crate::job::git::ChurnOptions;

    fn our_churn(path: &Path) -> (BTreeMap<String, (u64, u64, u64)>, String) {
        let repo = open_local(path).expect("opens");
        let cancel = AtomicBool::new(false);
        let h = walk(&repo, &WalkSpec::default(), &cancel, &|_| {}).expect("walks");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        let attrs = Attributes::of(&repo).expect("attributes");
        let opts = ChurnOptions::default();
        let stats: Numstats = numstats(&repo, &h.commits, opts, &attrs, &pool, &cancel, &|_| {})
            .expect("numstats")
            .into_iter()
            .collect();
        let files = churn(&h.commits, &stats)
            .files
            .into_iter()
            .map(|f| (f.path, (f.revisions, f.added, f.removed)))
            .collect();
        (files, attrs.fingerprint().to_string())
    }

    #[test]
    fn churn_follows_gitattributes_as_git_log_does() {
        let f = Fixture::new();
        let rules: &[u8] = b"*.txt -diff\n*.dat binary\nforced diff\n*.cfg diff=blobby\n";
        f.commit(
            JAN_1_2024,
            ALICE,
            "start",
            &[
                (".gitattributes", Some(rules)),
                ("notes.txt", Some(b"1\n2\n")),
                ("table.dat", Some(b"x\n")),
                ("forced", Some(b"a\0b\nc\n")),
                ("sub/a.cfg", Some(b"k=v\n")),
                ("sub/plain", Some(b"p\n")),
            ],
        );
        f.git(&["config", "diff.blobby.binary", "true"]);
        f.commit(
            JAN_1_2024 + 3600,
            ALICE,
            "change",
            &[
                ("notes.txt", Some(b"1\n3\n4\n")),
                ("table.dat", Some(b"y\n")),
                ("forced", Some(b"a\0b\nd\ne\n")),
                ("sub/a.cfg", Some(b"k=w\n")),
                ("sub/plain", Some(b"q\n")),
            ],
        );
        let git = f.git_numstat(&["--no-renames"]);
        // -diff, the binary macro and a binary driver: no lines; `diff`:
        // lines despite the NUL byte; no attribute: lines.
        assert_eq!(git["notes.txt"], (2, 0, 0));
        assert_eq!(git["table.dat"], (2, 0, 0));
        assert_eq!(git["sub/a.cfg"], (2, 0, 0));
        assert_eq!(git["forced"], (2, 4, 1));
        assert_eq!(git["sub/plain"], (2, 2, 1));
        let (ours, fingerprint) = our_churn(f.path());
        assert_eq!(ours, git);
        assert_ne!(fingerprint, "none");

        // A bare clone: git reads no tree's .gitattributes there, so
        // only the NUL byte makes a file binary...
        let bare = f.bare_clone();
        let git_bare = bare.git_numstat(&["--no-renames"]);
        assert_eq!(git_bare["sub/a.cfg"], (2, 2, 1));
        assert_eq!(git_bare["notes.txt"], (2, 4, 1));
        assert_eq!(git_bare["forced"], (2, 0, 0));
        let (ours_bare, bare_fingerprint) = our_churn(bare.path());
        assert_eq!(ours_bare, git_bare);
        assert_eq!(bare_fingerprint, "none");
        // ... until info/attributes says otherwise.
        std::fs::create_dir_all(bare.path().join("info")).expect("mkdir");
        std::fs::write(bare.path().join("info/attributes"), "*.txt -diff\n").expect("write");
        let git_bare = bare.git_numstat(&["--no-renames"]);
        assert_eq!(git_bare["notes.txt"], (2, 0, 0));
        let (ours_bare, bare_fingerprint) = our_churn(bare.path());
        assert_eq!(ours_bare, git_bare);
        assert_ne!(bare_fingerprint, "none");

        // Another rule is another fingerprint (the numstat cache's key).
        f.commit(
            JAN_1_2024 + 7200,
            ALICE,
            "rules",
            &[(".gitattributes", Some(b"*.dat binary\n"))],
        );
        let (ours, changed) = our_churn(f.path());
        assert_ne!(changed, fingerprint);
        assert_eq!(ours, f.git_numstat(&["--no-renames"]));
    }

    #[test]
    fn a_repository_without_attributes_has_none() {
        let f = Fixture::new();
        f.commit(JAN_1_2024, ALICE, "start", &[("a", Some(b"a\0\n"))]);
        let (ours, fingerprint) = our_churn(f.path());
        assert_eq!(fingerprint, "none");
        assert_eq!(ours, f.git_numstat(&["--no-renames"]));
        assert_eq!(ours["a"], (1, 0, 0));
    }
}
