//! Watching one rule's tree with inotify (through notify), one
//! non-recursive watch per directory. notify's own recursive mode is not
//! used: it would watch ignored and excluded trees too (`.git`, `target`),
//! which costs watches and start time for nothing.
//!
//! **Nothing is missed on the way in.** At start, every directory of a
//! first walk is watched, then the tree is walked again: whatever changed
//! between the walks is reported, and directories that appeared are
//! watched and the walk repeated until none appears. A directory that
//! appears later is watched first and listed after, so a file made in it
//! before its watch existed is still reported.
//!
//! [`Tree::handle`] turns notify's events into changed paths, relative to
//! the root, already filtered: globs, `.git`, and the ignore files.
//! Anything that may mean lost events (a kernel queue overflow, an error
//! from notify, an event for the root itself) comes out as
//! [`Seen::Rescan`], for the caller to compare with its snapshot.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::filter::Filter;
use super::ignores::Ignores;
use super::snapshot::Snapshot;

/// What an event amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// This path (relative to the root) changed: made, written, renamed
    /// or removed.
    Changed(PathBuf),
    /// Events may have been lost: compare the tree with the snapshot.
    Rescan,
}

/// A watched tree.
pub struct Tree {
    root: PathBuf,
    filter: Filter,
    ignores: Ignores,
    watcher: RecommendedWatcher,
    /// Directories watched, relative to the root ("" is the root).
    watched: BTreeSet<PathBuf>,
    /// Why a new directory could not be watched, when the kernel is out
    /// of watches: the rule must fall back to comparing snapshots.
    exhausted: Option<io::Error>,
}

impl Tree {
    /// Watches `root` as `filter` says; notify's events go to `events`,
    /// for [`Tree::handle`]. Returns the tree, its snapshot once every
    /// watch is in place, and the changes seen between the first walk
    /// and that snapshot.
    pub fn start(
        root: &Path,
        filter: Filter,
        events: impl notify::EventHandler,
    ) -> io::Result<(Tree, Snapshot, Vec<Seen>)> {
        let watcher = notify::recommended_watcher(events).map_err(notify_io)?;
        let mut tree = Tree {
            root: root.to_path_buf(),
            ignores: Ignores::new(root, filter.ignore_files),
            filter,
            watcher,
            watched: BTreeSet::new(),
            exhausted: None,
        };
        tree.watch(Path::new(""))?;
        let mut snap = Snapshot::take(root, &tree.filter)?;
        let first = snap.clone();
        loop {
            let mut added = false;
            for dir in snap.dirs() {
                if tree.filter.recursive && !tree.watched.contains(&dir) {
                    tree.watch(&dir)?;
                    added = true;
                }
            }
            if !added {
                break;
            }
            // Walked again with every directory watched: what changed in
            // the meantime is in this walk, and later changes are events.
            snap = Snapshot::take(root, &tree.filter)?;
        }
        let seen = first
            .diff(&snap)
            .into_iter()
            .map(|c| Seen::Changed(c.path))
            .collect();
        Ok((tree, snap, seen))
    }

    /// Directories watched, the root included.
    pub fn watches(&self) -> usize {
        self.watched.len()
    }

    /// Set once a new directory could not be watched for want of kernel
    /// watches (see [`is_watch_limit`]): from then on changes under it
    /// would be missed.
    pub fn exhausted(&mut self) -> Option<io::Error> {
        self.exhausted.take()
    }

    fn watch(&mut self, rel: &Path) -> io::Result<()> {
        self.watcher
            .watch(&self.root.join(rel), RecursiveMode::NonRecursive)
            .map_err(notify_io)?;
        self.watched.insert(rel.to_path_buf());
        Ok(())
    }

    /// What one of notify's events means for the rule.
    pub fn handle(&mut self, event: notify::Result<Event>) -> Vec<Seen> {
        let event = match event {
            Ok(e) => e,
            Err(_) => return vec![Seen::Rescan],
        };
        if event.need_rescan() {
            return vec![Seen::Rescan];
        }
        if matches!(event.kind, EventKind::Access(_)) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for path in &event.paths {
            let Ok(rel) = path.strip_prefix(&self.root) else {
                continue;
            };
            if rel.as_os_str().is_empty() {
                // The root itself was removed, moved or changed.
                out.push(Seen::Rescan);
                continue;
            }
            let rel = rel.to_path_buf();
            self.ignores.changed(&rel);
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => self.adopt(&rel, &mut out),
                Ok(_) => self.report(rel, false, &mut out),
                Err(_) => {
                    // Gone: a watched directory takes its watches with it
                    // (the kernel drops them), and the path is reported.
                    let under: Vec<PathBuf> = self
                        .watched
                        .iter()
                        .filter(|w| w.starts_with(&rel))
                        .cloned()
                        .collect();
                    let was_dir = !under.is_empty();
                    for w in under {
                        self.watched.remove(&w);
                    }
                    self.report(rel, was_dir, &mut out);
                }
            }
        }
        out
    }

    fn report(&mut self, rel: PathBuf, dir: bool, out: &mut Vec<Seen>) {
        let covered = if dir {
            self.filter.enters(&rel)
        } else {
            self.filter.covers(&rel)
        };
        if covered && !self.ignores.ignored(&rel, dir) {
            out.push(Seen::Changed(rel));
        }
    }

    /// A directory event: a new directory (or one moved in) is watched,
    /// then listed, and so on down, reporting what is in it.
    fn adopt(&mut self, rel: &Path, out: &mut Vec<Seen>) {
        if !self.filter.recursive || !self.filter.enters(rel) || self.ignores.ignored(rel, true) {
            return;
        }
        if self.watched.contains(rel) {
            // A change to a watched directory itself (its mtime, its
            // permissions) is no change of a file.
            return;
        }
        if let Err(e) = self.watch(rel) {
            if is_watch_limit(&e) {
                self.exhausted = Some(e);
            }
            out.push(Seen::Rescan);
            return;
        }
        out.push(Seen::Changed(rel.to_path_buf()));
        let Ok(entries) = std::fs::read_dir(self.root.join(rel)) else {
            return;
        };
        for entry in entries.flatten() {
            let child = rel.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => self.adopt(&child, out),
                Ok(_) => self.report(child, false, out),
                Err(_) => {}
            }
        }
    }
}

/// Whether `e` says the kernel has no watch or instance left for us:
/// inotify's ENOSPC (`fs.inotify.max_user_watches`) or EMFILE
/// (`fs.inotify.max_user_instances`, or the process's descriptors).
pub fn is_watch_limit(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EMFILE))
}

fn notify_io(e: notify::Error) -> io::Error {
    match e.kind {
        notify::ErrorKind::Io(io) => io,
        // notify reports inotify_add_watch's ENOSPC as this.
        notify::ErrorKind::MaxFilesWatch => io::Error::from_raw_os_error(libc::ENOSPC),
        notify::ErrorKind::PathNotFound => io::Error::new(io::ErrorKind::NotFound, "not found"),
        other => io::Error::other(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests;
