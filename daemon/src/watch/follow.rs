//! One rule's loop: its tree's events, settled into triggers. It starts
//! from the snapshot the rule last acted on, if there is one, and
//! triggers once with the reason `catch-up` for what changed meanwhile;
//! then every settle is a trigger with the reason `change`, or `rescan`
//! when events were lost and the snapshot comparison found the changes.
//! After each trigger the snapshot is brought up to date for the paths it
//! carried, which is what the caller persists.
//!
//! It sleeps on the tree's events and on one timer, set to when the
//! pending changes settle: nothing polls.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::filter::Filter;
use super::settle::Settle;
use super::snapshot::Snapshot;
use super::tree::{Seen, Tree};

/// Why a rule triggered: the label its job gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Change,
    CatchUp,
    Rescan,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Change => "change",
            Reason::CatchUp => "catch-up",
            Reason::Rescan => "rescan",
        }
    }
}

/// A rule's trigger: the changed paths, relative to the root, and the
/// snapshot that includes them, to persist once the job is submitted.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub reason: Reason,
    pub paths: BTreeSet<PathBuf>,
    pub snapshot: Snapshot,
}

/// A rule whose tree is watched, ready to [`Follower::run`].
pub struct Follower {
    root: PathBuf,
    filter: Filter,
    tree: Tree,
    snap: Snapshot,
    events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    settle: Settle,
    catch_up: Option<Trigger>,
}

impl Follower {
    /// Watches `root`: every change from when this returns is seen. `last`
    /// is the snapshot of the rule's last trigger, if it has one; what
    /// changed since is the first trigger, with the reason `catch-up`.
    /// Fails when the tree cannot be watched or walked (the root vanished,
    /// no watches left), for the caller to report.
    pub fn start(
        root: &Path,
        filter: Filter,
        debounce: Duration,
        max_wait: Duration,
        last: Option<Snapshot>,
    ) -> io::Result<Follower> {
        let (tx, events) = mpsc::unbounded_channel();
        let (tree, snap, early) = Tree::start(root, filter.clone(), move |e| {
            let _ = tx.send(e);
        })?;
        let catch_up = last.and_then(|last| {
            let paths: BTreeSet<PathBuf> = last.diff(&snap).into_iter().map(|c| c.path).collect();
            (!paths.is_empty()).then(|| Trigger {
                reason: Reason::CatchUp,
                paths,
                snapshot: snap.clone(),
            })
        });
        let mut settle = Settle::new(debounce, max_wait);
        let now = Instant::now();
        for s in early {
            if let Seen::Changed(p) = s {
                settle.record(p, now);
            }
        }
        Ok(Follower {
            root: root.to_path_buf(),
            filter,
            tree,
            snap,
            events,
            settle,
            catch_up,
        })
    }

    /// Sends a [`Trigger`] for each settle until `stop`, or until `out` is
    /// dropped. Fails when a rescan cannot walk the tree.
    pub async fn run(
        mut self,
        out: mpsc::Sender<Trigger>,
        stop: CancellationToken,
    ) -> io::Result<()> {
        if let Some(t) = self.catch_up.take()
            && out.send(t).await.is_err()
        {
            return Ok(());
        }
        let mut rescanned = false;
        loop {
            let due = self.settle.due();
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                ev = self.events.recv() => {
                    let Some(ev) = ev else { return Ok(()) };
                    let now = Instant::now();
                    for s in self.tree.handle(ev) {
                        match s {
                            Seen::Changed(p) => self.settle.record(p, now),
                            Seen::Rescan => {
                                let fresh = Snapshot::take(&self.root, &self.filter)?;
                                for c in self.snap.diff(&fresh) {
                                    self.settle.record(c.path, now);
                                }
                                rescanned = true;
                            }
                        }
                    }
                }
                () = sleep_until_opt(due) => {
                    if let Some(paths) = self.settle.take_due(Instant::now()) {
                        self.snap.refresh(&self.root, &self.filter, &paths);
                        let reason = if std::mem::take(&mut rescanned) {
                            Reason::Rescan
                        } else {
                            Reason::Change
                        };
                        let t = Trigger { reason, paths, snapshot: self.snap.clone() };
                        if out.send(t).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn all() -> Filter {
        Filter::new(&[], &[], true, true).unwrap()
    }

    async fn next(rx: &mut mpsc::Receiver<Trigger>) -> Trigger {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("no trigger in time")
            .expect("the rule stopped")
    }

    fn start(
        root: &Path,
        last: Option<Snapshot>,
    ) -> (
        mpsc::Receiver<Trigger>,
        CancellationToken,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        // Started here, before the test touches the tree: from now on
        // every change is seen.
        let f = Follower::start(
            root,
            all(),
            Duration::from_millis(50),
            Duration::from_secs(5),
            last,
        )
        .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let task = tokio::spawn(f.run(tx, stop.clone()));
        (rx, stop, task)
    }

    #[tokio::test]
    async fn a_write_triggers_once_after_it_settles() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (mut rx, stop, task) = start(&root, None);
        fs::write(root.join("a.txt"), "1").unwrap();
        fs::write(root.join("b.txt"), "1").unwrap();
        let mut paths = BTreeSet::new();
        while paths.len() < 2 {
            let t = next(&mut rx).await;
            assert_eq!(t.reason, Reason::Change);
            paths.extend(t.paths);
        }
        assert_eq!(
            paths,
            BTreeSet::from([PathBuf::from("a.txt"), PathBuf::from("b.txt")])
        );
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn changes_while_not_followed_trigger_one_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        fs::write(root.join("kept"), "1").unwrap();
        fs::write(root.join("edited"), "1").unwrap();
        fs::write(root.join("removed"), "1").unwrap();
        let last = Snapshot::take(&root, &all()).unwrap();
        fs::write(root.join("edited"), "longer").unwrap();
        fs::remove_file(root.join("removed")).unwrap();
        fs::write(root.join("made"), "1").unwrap();
        let (mut rx, stop, task) = start(&root, Some(last));
        let t = next(&mut rx).await;
        assert_eq!(t.reason, Reason::CatchUp);
        assert_eq!(
            t.paths,
            ["edited", "made", "removed"]
                .iter()
                .map(PathBuf::from)
                .collect()
        );
        assert_eq!(t.snapshot, Snapshot::take(&root, &all()).unwrap());
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn no_change_while_not_followed_means_no_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        fs::write(root.join("kept"), "1").unwrap();
        let last = Snapshot::take(&root, &all()).unwrap();
        let (mut rx, stop, task) = start(&root, Some(last));
        // The first trigger is this write's, not a catch-up.
        fs::write(root.join("sentinel"), "1").unwrap();
        let t = next(&mut rx).await;
        assert_eq!(t.reason, Reason::Change);
        assert!(t.paths.contains(Path::new("sentinel")), "{:?}", t.paths);
        assert!(!t.paths.contains(Path::new("kept")));
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
