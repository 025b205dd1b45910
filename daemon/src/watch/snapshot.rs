//! The stat snapshot of a rule's tree: for every covered file and every
//! directory walked, its size, mtime and inode, keyed by its path relative
//! to the root. Two snapshots compared give the real changes: what a
//! restart, a paused rule or an overflowed kernel queue would otherwise
//! lose.
//!
//! Paths are kept as raw bytes (`Box<[u8]>`, 16 bytes and the path's own
//! length), not `PathBuf` (24 bytes and spare capacity), in a `BTreeMap`,
//! so that two snapshots compare in one ordered pass.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::filter::Filter;

/// What is kept of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime: i64,
    pub ino: u64,
    pub dir: bool,
}

impl Stat {
    fn of(meta: &std::fs::Metadata) -> Stat {
        Stat {
            size: meta.size(),
            mtime: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ino: meta.ino(),
            dir: meta.is_dir(),
        }
    }
}

/// How a path changed between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Created,
    Modified,
    Removed,
}

/// One changed path, relative to the root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub path: PathBuf,
    pub kind: ChangeKind,
}

/// A rule's tree as it was at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    entries: BTreeMap<Box<[u8]>, Stat>,
}

impl Snapshot {
    /// Walks `root` as `filter` says: directories it may not enter are
    /// never read, ignore files apply when the filter says so, symlinks
    /// are not followed. A path that vanishes during the walk is left
    /// out; the root itself must be a readable directory.
    pub fn take(root: &Path, filter: &Filter) -> io::Result<Snapshot> {
        if !std::fs::metadata(root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        let mut walk = ignore::WalkBuilder::new(root);
        walk.hidden(false)
            .parents(false)
            .git_global(false)
            .git_ignore(filter.ignore_files)
            .git_exclude(filter.ignore_files)
            .ignore(filter.ignore_files)
            // `.gitignore` applies whether or not the tree is a repository.
            .require_git(false)
            .follow_links(false);
        if !filter.recursive {
            walk.max_depth(Some(1));
        }
        let base = root.to_path_buf();
        let entering = filter.clone();
        walk.filter_entry(move |e| {
            if !e.file_type().is_some_and(|t| t.is_dir()) {
                return true;
            }
            match e.path().strip_prefix(&base) {
                Ok(rel) => rel.as_os_str().is_empty() || entering.enters(rel),
                Err(_) => true,
            }
        });
        let mut entries = BTreeMap::new();
        for item in walk.build() {
            let entry = match item {
                Ok(e) => e,
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(into_io(e)),
            };
            let Ok(rel) = entry.path().strip_prefix(root) else {
                continue;
            };
            if rel.as_os_str().is_empty() {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(into_io(e)),
            };
            if !meta.is_dir() && !filter.covers(rel) {
                continue;
            }
            entries.insert(rel.as_os_str().as_bytes().into(), Stat::of(&meta));
        }
        Ok(Snapshot { entries })
    }

    /// Paths held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Brings the entries of `paths` (relative to `root`) up to date, as
    /// a walk would find them now: after a settle, so that the snapshot
    /// kept is the tree the rule last acted on, without walking it all.
    /// A path gone takes everything below it along.
    pub fn refresh<'a>(
        &mut self,
        root: &Path,
        filter: &Filter,
        paths: impl IntoIterator<Item = &'a PathBuf>,
    ) {
        for rel in paths {
            let key: Box<[u8]> = rel.as_os_str().as_bytes().into();
            match std::fs::symlink_metadata(root.join(rel)) {
                Ok(meta) if meta.is_dir() || filter.covers(rel) => {
                    self.entries.insert(key, Stat::of(&meta));
                }
                _ => {
                    let mut under = key.to_vec();
                    under.push(b'/');
                    self.entries.remove(&key);
                    let gone: Vec<Box<[u8]>> = self
                        .entries
                        .range::<[u8], _>((
                            std::ops::Bound::Included(&under[..]),
                            std::ops::Bound::Unbounded,
                        ))
                        .take_while(|(k, _)| k.starts_with(&under))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in gone {
                        self.entries.remove(&k);
                    }
                }
            }
        }
    }

    /// The directories held, relative to the root, parents first.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.entries
            .iter()
            .filter(|(_, s)| s.dir)
            .map(|(p, _)| PathBuf::from(OsStr::from_bytes(p)))
            .collect()
    }

    /// What one path was, if held.
    pub fn get(&self, rel: &Path) -> Option<Stat> {
        self.entries.get(rel.as_os_str().as_bytes()).copied()
    }

    /// The changes from `self` (before) to `after`, in path order: paths
    /// only in `after` were created, paths only here were removed, and a
    /// file whose size, mtime or inode differs was modified (a rename over
    /// it changes its inode, an edit its mtime). A directory counts as
    /// modified only when its inode changed: its mtime moves with every
    /// file made or removed in it, which are changes of their own.
    pub fn diff(&self, after: &Snapshot) -> Vec<Change> {
        use std::cmp::Ordering;
        let mut out = Vec::new();
        let mut push = |path: &[u8], kind| {
            out.push(Change {
                path: PathBuf::from(OsStr::from_bytes(path)),
                kind,
            });
        };
        let mut a = self.entries.iter().peekable();
        let mut b = after.entries.iter().peekable();
        loop {
            let order = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((pa, _)), Some((pb, _))) => pa.cmp(pb),
            };
            match order {
                Ordering::Less => {
                    if let Some((p, _)) = a.next() {
                        push(p, ChangeKind::Removed);
                    }
                }
                Ordering::Greater => {
                    if let Some((p, _)) = b.next() {
                        push(p, ChangeKind::Created);
                    }
                }
                Ordering::Equal => {
                    if let (Some((p, sa)), Some((_, sb))) = (a.next(), b.next()) {
                        let changed = if sa.dir || sb.dir {
                            sa.dir != sb.dir || sa.ino != sb.ino
                        } else {
                            sa != sb
                        };
                        if changed {
                            push(p, ChangeKind::Modified);
                        }
                    }
                }
            }
        }
        out
    }
}

fn vanished(e: &ignore::Error) -> bool {
    e.io_error()
        .is_some_and(|io| io.kind() == io::ErrorKind::NotFound)
}

fn into_io(e: ignore::Error) -> io::Error {
    match e.into_io_error() {
        Some(io) => io,
        None => io::Error::other("walking the tree failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn all() -> Filter {
        Filter::new(&[], &[], true, true).unwrap()
    }

    fn changes(c: &[Change]) -> Vec<(String, ChangeKind)> {
        c.iter()
            .map(|c| (c.path.to_string_lossy().into_owned(), c.kind))
            .collect()
    }

    #[test]
    fn creates_edits_renames_and_deletes_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/keep.txt"), "1").unwrap();
        fs::write(root.join("a/edit.txt"), "1").unwrap();
        fs::write(root.join("gone.txt"), "1").unwrap();
        fs::write(root.join("old.txt"), "1").unwrap();
        let before = Snapshot::take(root, &all()).unwrap();
        assert_eq!(before.len(), 6, "{before:?}");
        assert!(before.get(Path::new("a/b")).unwrap().dir);

        fs::write(root.join("a/edit.txt"), "longer").unwrap();
        fs::remove_file(root.join("gone.txt")).unwrap();
        fs::rename(root.join("old.txt"), root.join("new.txt")).unwrap();
        fs::create_dir(root.join("c")).unwrap();
        fs::write(root.join("c/made.txt"), "1").unwrap();
        let after = Snapshot::take(root, &all()).unwrap();
        assert_eq!(
            changes(&before.diff(&after)),
            [
                ("a/edit.txt".into(), ChangeKind::Modified),
                ("c".into(), ChangeKind::Created),
                ("c/made.txt".into(), ChangeKind::Created),
                ("gone.txt".into(), ChangeKind::Removed),
                ("new.txt".into(), ChangeKind::Created),
                ("old.txt".into(), ChangeKind::Removed),
            ]
        );
        assert!(after.diff(&after).is_empty(), "no change, no changes");
    }

    #[test]
    fn a_file_replaced_by_a_rename_is_modified_even_with_size_and_mtime_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("f"), "same").unwrap();
        let before = Snapshot::take(root, &all()).unwrap();
        let mtime = fs::metadata(root.join("f")).unwrap().modified().unwrap();
        fs::write(root.join("tmp"), "same").unwrap();
        fs::File::options()
            .write(true)
            .open(root.join("tmp"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        fs::rename(root.join("tmp"), root.join("f")).unwrap();
        let after = Snapshot::take(root, &all()).unwrap();
        assert_eq!(
            changes(&before.diff(&after)),
            [("f".into(), ChangeKind::Modified)]
        );
    }

    #[test]
    fn ignored_excluded_and_git_paths_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join(".gitignore"), "*.log\nbuild/\n").unwrap();
        fs::write(root.join(".ignore"), "secret.txt\n").unwrap();
        for d in [".git/objects", "build", "target/debug", "src"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            ".git/HEAD",
            ".git/objects/x",
            "build/out.o",
            "target/debug/bin",
            "src/main.rs",
            "src/run.log",
            "secret.txt",
        ] {
            fs::write(root.join(f), "x").unwrap();
        }
        let f = Filter::new(&[], &["target".into()], true, true).unwrap();
        let s = Snapshot::take(root, &f).unwrap();
        let mut held: Vec<String> = s
            .entries
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        held.sort();
        assert_eq!(held, [".gitignore", ".ignore", "src", "src/main.rs"]);

        // Without ignore files, only .git and the excluded tree stay out.
        let f = Filter::new(&[], &["target".into()], true, false).unwrap();
        let s = Snapshot::take(root, &f).unwrap();
        assert!(s.get(Path::new("build/out.o")).is_some());
        assert!(s.get(Path::new("src/run.log")).is_some());
        assert!(s.get(Path::new("secret.txt")).is_some());
        assert!(s.get(Path::new(".git/HEAD")).is_none());
        assert!(s.get(Path::new("target/debug/bin")).is_none());
    }

    #[test]
    fn a_rule_that_does_not_recurse_sees_only_the_top() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("top.txt"), "x").unwrap();
        fs::write(root.join("sub/deep.txt"), "x").unwrap();
        let f = Filter::new(&[], &[], false, true).unwrap();
        let s = Snapshot::take(root, &f).unwrap();
        assert!(s.get(Path::new("top.txt")).is_some());
        assert!(s.get(Path::new("sub/deep.txt")).is_none());
    }

    #[test]
    fn a_refresh_of_the_changed_paths_equals_a_new_walk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("d/e")).unwrap();
        fs::write(root.join("d/e/f"), "1").unwrap();
        fs::write(root.join("keep"), "1").unwrap();
        fs::write(root.join("edit"), "1").unwrap();
        let mut snap = Snapshot::take(root, &all()).unwrap();
        fs::remove_dir_all(root.join("d")).unwrap();
        fs::write(root.join("edit"), "longer").unwrap();
        fs::write(root.join("new"), "1").unwrap();
        let changed: Vec<PathBuf> = ["d", "edit", "new"].iter().map(PathBuf::from).collect();
        snap.refresh(root, &all(), &changed);
        assert_eq!(snap, Snapshot::take(root, &all()).unwrap());
    }

    #[test]
    fn a_missing_root_or_a_file_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Snapshot::take(&dir.path().join("nope"), &all()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        fs::write(dir.path().join("file"), "x").unwrap();
        let err = Snapshot::take(&dir.path().join("file"), &all()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotADirectory);
    }
}
