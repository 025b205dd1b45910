//! Tests of the tree watch against the real inotify: every wait is for an
//! event the kernel owes, bounded, and never a sleep.

use std::collections::BTreeSet;
use std::fs;
use std::sync::mpsc;
use std::time::Duration;

use super::*;

/// How long to wait for an event the kernel owes us: far more than it
/// takes, so only a lost event fails.
const WAIT: Duration = Duration::from_secs(10);

struct Rig {
    _dir: tempfile::TempDir,
    root: PathBuf,
    tree: Tree,
    rx: mpsc::Receiver<notify::Result<Event>>,
}

fn rig(setup: impl FnOnce(&Path), filter: Filter) -> (Rig, Snapshot, Vec<Seen>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    setup(&root);
    let (tx, rx) = mpsc::channel();
    let (tree, snap, seen) = Tree::start(&root, filter, tx).unwrap();
    (
        Rig {
            _dir: dir,
            root,
            tree,
            rx,
        },
        snap,
        seen,
    )
}

fn all() -> Filter {
    Filter::new(&[], &[], true, true).unwrap()
}

impl Rig {
    /// Handles events until `want` has been reported; returns every path
    /// reported on the way. Fails if the kernel goes quiet first.
    fn until(&mut self, want: &str) -> BTreeSet<PathBuf> {
        let mut seen = BTreeSet::new();
        loop {
            let ev = self
                .rx
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no event for {want}; seen {seen:?}"));
            for s in self.tree.handle(ev) {
                match s {
                    Seen::Changed(p) => {
                        seen.insert(p);
                    }
                    Seen::Rescan => panic!("an unexpected rescan"),
                }
            }
            if seen.contains(Path::new(want)) {
                return seen;
            }
        }
    }
}

#[test]
fn a_write_is_reported_relative_to_the_root() {
    let (mut r, snap, seen) = rig(|root| fs::create_dir(root.join("a")).unwrap(), all());
    assert!(seen.is_empty(), "{seen:?}");
    assert!(snap.get(Path::new("a")).is_some());
    assert_eq!(r.tree.watches(), 2, "the root and a");
    fs::write(r.root.join("a/f.txt"), "x").unwrap();
    r.until("a/f.txt");
}

#[test]
fn files_made_in_new_nested_directories_are_all_reported() {
    let (mut r, _, _) = rig(|_| {}, all());
    // Made faster than any watch can be added below the root.
    let mut want = Vec::new();
    for i in 0..5 {
        let d = r.root.join(format!("n{i}/x/y"));
        fs::create_dir_all(&d).unwrap();
        for j in 0..20 {
            fs::write(d.join(format!("f{j}")), "x").unwrap();
            want.push(PathBuf::from(format!("n{i}/x/y/f{j}")));
        }
    }
    fs::write(r.root.join("last"), "x").unwrap();
    let seen = r.until("last");
    let missed: Vec<_> = want.iter().filter(|p| !seen.contains(*p)).collect();
    assert!(missed.is_empty(), "missed {missed:?}");
    assert_eq!(r.tree.watches(), 1 + 5 * 3);
}

#[test]
fn ignored_and_excluded_paths_are_never_reported() {
    let filter = Filter::new(&[], &["target".into()], true, true).unwrap();
    let (mut r, _, _) = rig(
        |root| {
            fs::write(root.join(".gitignore"), "*.log\n").unwrap();
            fs::create_dir_all(root.join("target/debug")).unwrap();
            fs::create_dir_all(root.join(".git/objects")).unwrap();
        },
        filter,
    );
    assert_eq!(r.tree.watches(), 1, "target and .git are not watched");
    fs::write(r.root.join("x.log"), "x").unwrap();
    fs::write(r.root.join("target/debug/bin"), "x").unwrap();
    fs::write(r.root.join(".git/objects/o"), "x").unwrap();
    fs::create_dir(r.root.join("target/new")).unwrap();
    // Events come in order: once the sentinel is in, the rest was handled.
    fs::write(r.root.join("sentinel"), "x").unwrap();
    let seen = r.until("sentinel");
    assert_eq!(seen, BTreeSet::from([PathBuf::from("sentinel")]));
}

#[test]
fn a_rename_and_a_delete_are_changes() {
    let (mut r, _, _) = rig(
        |root| {
            fs::write(root.join("old"), "x").unwrap();
            fs::write(root.join("gone"), "x").unwrap();
        },
        all(),
    );
    fs::rename(r.root.join("old"), r.root.join("new")).unwrap();
    let seen = r.until("new");
    assert!(seen.contains(Path::new("old")), "{seen:?}");
    fs::remove_file(r.root.join("gone")).unwrap();
    r.until("gone");
}

#[test]
fn a_removed_directory_drops_its_watches() {
    let (mut r, _, _) = rig(|root| fs::create_dir_all(root.join("d/e")).unwrap(), all());
    assert_eq!(r.tree.watches(), 3);
    fs::remove_dir_all(r.root.join("d")).unwrap();
    r.until("d");
    assert_eq!(r.tree.watches(), 1, "only the root is left");
}

#[test]
fn lost_events_ask_for_a_rescan() {
    let (mut r, _, _) = rig(|_| {}, all());
    let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
    assert_eq!(r.tree.handle(Ok(overflow)), [Seen::Rescan]);
    let err = notify::Error::generic("the kernel queue overflowed");
    assert_eq!(r.tree.handle(Err(err)), [Seen::Rescan]);
    let root =
        Event::new(EventKind::Remove(notify::event::RemoveKind::Folder)).add_path(r.root.clone());
    assert_eq!(r.tree.handle(Ok(root)), [Seen::Rescan]);
}
