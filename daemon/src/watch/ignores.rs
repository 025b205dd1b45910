//! Whether a path that an event names is ignored by the ignore files of
//! its tree: `.gitignore` and `.ignore` in its directory and every one
//! above it up to the rule's root, and the root's `.git/info/exclude`. The
//! walk ([`super::snapshot`]) gets this from the `ignore` crate's walker;
//! a single event's path needs the same answer without a walk, so this
//! keeps one `ignore::gitignore::Gitignore` matcher per directory, built
//! when first needed and dropped when one of its files changes.
//!
//! Precedence follows the walker's: a deeper directory's files beat a
//! shallower one's, within a directory `.ignore` beats `.gitignore`, and
//! `.git/info/exclude` comes last; a `!pattern` whitelists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// The ignore files of one rule's tree.
pub struct Ignores {
    root: PathBuf,
    on: bool,
    /// By directory, relative to the root ("" for the root).
    by_dir: HashMap<PathBuf, Gitignore>,
}

impl Ignores {
    /// `on` is false for a rule with `no_ignore_files`: nothing is ignored.
    pub fn new(root: &Path, on: bool) -> Ignores {
        Ignores {
            root: root.to_path_buf(),
            on,
            by_dir: HashMap::new(),
        }
    }

    /// Whether `rel` (relative to the root; `is_dir` if a directory) is
    /// ignored, itself or through a directory above it.
    pub fn ignored(&mut self, rel: &Path, is_dir: bool) -> bool {
        if !self.on {
            return false;
        }
        // Each directory on the way down, then the path itself.
        let mut prefix = PathBuf::new();
        let parts: Vec<_> = rel.components().collect();
        for (i, part) in parts.iter().enumerate() {
            prefix.push(part);
            let last = i + 1 == parts.len();
            if self.decides(&prefix, !last || is_dir) {
                return true;
            }
        }
        false
    }

    /// Whether `rel` itself is ignored by the files of the directories
    /// above it, deepest first; the first that matches decides.
    fn decides(&mut self, rel: &Path, is_dir: bool) -> bool {
        let abs = self.root.join(rel);
        let mut dir = rel.parent();
        while let Some(d) = dir {
            let m = self.matcher(d).matched(&abs, is_dir);
            if m.is_ignore() {
                return true;
            }
            if m.is_whitelist() {
                return false;
            }
            dir = d.parent();
        }
        false
    }

    fn matcher(&mut self, rel_dir: &Path) -> &Gitignore {
        let root = &self.root;
        self.by_dir
            .entry(rel_dir.to_path_buf())
            .or_insert_with(|| build(root, rel_dir))
    }

    /// If `rel` is an ignore file, forgets what was read of it, so that
    /// the next question reads it again; returns whether it was one.
    pub fn changed(&mut self, rel: &Path) -> bool {
        if !is_ignore_file(rel) {
            return false;
        }
        let dir = if rel.starts_with(".git") {
            PathBuf::new()
        } else {
            rel.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        self.by_dir.remove(&dir);
        true
    }
}

/// `.gitignore` or `.ignore` anywhere, or the root's `.git/info/exclude`.
pub fn is_ignore_file(rel: &Path) -> bool {
    rel == Path::new(".git/info/exclude")
        || rel
            .file_name()
            .is_some_and(|n| n == ".gitignore" || n == ".ignore")
}

/// The matcher of one directory's files. A file that is missing or
/// unreadable adds nothing; a bad line in one is skipped (as git and the
/// walker do) and the rest apply.
fn build(root: &Path, rel_dir: &Path) -> Gitignore {
    let dir = root.join(rel_dir);
    let mut b = GitignoreBuilder::new(&dir);
    // Lowest precedence first: later patterns win.
    if rel_dir.as_os_str().is_empty() {
        let exclude = dir.join(".git/info/exclude");
        if exclude.is_file() {
            let _ = b.add(exclude);
        }
    }
    for name in [".gitignore", ".ignore"] {
        let file = dir.join(name);
        if file.is_file() {
            let _ = b.add(file);
        }
    }
    b.build().unwrap_or_else(|_| Gitignore::empty())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn nested_files_ignore_whitelist_and_take_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join(".git/info")).unwrap();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join(".git/info/exclude"), "*.bak\n").unwrap();
        fs::write(root.join(".gitignore"), "*.log\nbuild/\n").unwrap();
        fs::write(root.join(".ignore"), "secret*\n").unwrap();
        fs::write(root.join("a/.gitignore"), "!keep.log\n*.tmp\n").unwrap();
        let mut ig = Ignores::new(root, true);
        let ignored = |ig: &mut Ignores, p: &str| ig.ignored(Path::new(p), false);
        assert!(ignored(&mut ig, "x.log"));
        assert!(
            ignored(&mut ig, "a/b/x.log"),
            "the root's file applies below"
        );
        assert!(!ignored(&mut ig, "a/keep.log"), "a deeper ! whitelists");
        assert!(ignored(&mut ig, "a/b/y.tmp"));
        assert!(!ignored(&mut ig, "y.tmp"), "a/.gitignore is a/'s only");
        assert!(ignored(&mut ig, "secret.txt"), ".ignore applies");
        assert!(ignored(&mut ig, "old.bak"), ".git/info/exclude applies");
        assert!(ignored(&mut ig, "build/out/x.o"), "under an ignored dir");
        assert!(ig.ignored(Path::new("build"), true));
        assert!(!ignored(&mut ig, "src/main.rs"));

        let mut off = Ignores::new(root, false);
        assert!(!off.ignored(Path::new("x.log"), false), "no_ignore_files");
    }

    /// An event's path gets the answer the walk gave: a file is in the
    /// snapshot exactly when it is not ignored.
    #[test]
    fn it_agrees_with_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [".git/info", "a/b", "a/skip", "c"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join(".git/info/exclude"), "*.bak\n").unwrap();
        fs::write(root.join(".gitignore"), "*.log\nskip/\n").unwrap();
        fs::write(root.join("a/.ignore"), "!b/keep.log\n*.tmp\n").unwrap();
        let files = [
            "top.txt",
            "top.log",
            "top.bak",
            "a/x.tmp",
            "a/x.txt",
            "a/b/keep.log",
            "a/b/other.log",
            "a/skip/in.txt",
            "c/d.txt",
            "c/d.tmp",
        ];
        for f in files {
            fs::write(root.join(f), "x").unwrap();
        }
        let filter = super::super::filter::Filter::new(&[], &[], true, true).unwrap();
        let snap = super::super::snapshot::Snapshot::take(root, &filter).unwrap();
        let mut ig = Ignores::new(root, true);
        for f in files {
            assert_eq!(
                snap.get(Path::new(f)).is_some(),
                !ig.ignored(Path::new(f), false),
                "{f}: the walk and the matcher disagree"
            );
        }
    }

    #[test]
    fn a_changed_ignore_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("a")).unwrap();
        let mut ig = Ignores::new(root, true);
        assert!(!ig.ignored(Path::new("a/x.log"), false));
        fs::write(root.join("a/.gitignore"), "*.log\n").unwrap();
        assert!(
            !ig.ignored(Path::new("a/x.log"), false),
            "what was read stays until told"
        );
        assert!(ig.changed(Path::new("a/.gitignore")));
        assert!(ig.ignored(Path::new("a/x.log"), false));
        assert!(!ig.changed(Path::new("a/x.log")), "not an ignore file");
        assert!(is_ignore_file(Path::new(".git/info/exclude")));
        assert!(!is_ignore_file(Path::new("a/.git/info/excluded")));
    }
}
