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

/// The version byte that starts an encoded snapshot.
const ENCODING_V1: u8 = 1;

impl Snapshot {
    /// The snapshot as the store keeps it: [`ENCODING_V1`], the number of
    /// entries, then each entry in path order as
    ///
    /// - `shared << 1 | dir`: how many leading bytes its path shares with
    ///   the previous entry's, with the directory flag in the low bit;
    /// - the length of the rest of the path, then those bytes;
    /// - size, mtime (zigzag, as it is signed) and inode.
    ///
    /// All numbers are varints. The format is hand-written rather than a
    /// protobuf message per entry, which would repeat every path in full:
    /// in a tree, neighbours in path order share most of their path, so a
    /// 100k-file tree is a few megabytes here instead of tens.
    pub fn encode(&self) -> Vec<u8> {
        use prost::encoding::encode_varint;
        let mut out = Vec::with_capacity(16 + self.entries.len() * 24);
        out.push(ENCODING_V1);
        encode_varint(self.entries.len() as u64, &mut out);
        let mut prev: &[u8] = &[];
        for (path, stat) in &self.entries {
            let shared = prev
                .iter()
                .zip(path.iter())
                .take_while(|(a, b)| a == b)
                .count();
            encode_varint(((shared as u64) << 1) | u64::from(stat.dir), &mut out);
            let rest = &path[shared..];
            encode_varint(rest.len() as u64, &mut out);
            out.extend_from_slice(rest);
            encode_varint(stat.size, &mut out);
            encode_varint(zigzag(stat.mtime), &mut out);
            encode_varint(stat.ino, &mut out);
            prev = path;
        }
        out
    }

    /// Reads what [`Snapshot::encode`] wrote. Damaged bytes (truncated, an
    /// unknown version, a prefix longer than the previous path, paths out
    /// of order, bytes left over) are an error saying where, never a
    /// panic.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
        let mut buf = bytes;
        let at = |buf: &[u8]| bytes.len() - buf.len();
        let Some((&version, rest)) = buf.split_first() else {
            return Err("the snapshot is empty; it has no version byte".into());
        };
        if version != ENCODING_V1 {
            return Err(format!(
                "the snapshot has encoding version {version}; this quernd reads version {ENCODING_V1}"
            ));
        }
        buf = rest;
        let count = varint(&mut buf, bytes.len())?;
        let mut entries = BTreeMap::new();
        let mut prev: Vec<u8> = Vec::new();
        for n in 0..count {
            let start = at(buf);
            let head = varint(&mut buf, bytes.len())?;
            let (shared, dir) = (head >> 1, head & 1 == 1);
            let len = varint(&mut buf, bytes.len())?;
            let shared = usize::try_from(shared)
                .ok()
                .filter(|&s| s <= prev.len())
                .ok_or_else(|| {
                    format!(
                        "entry {n} at byte {start} shares {shared} bytes with a path of {}",
                        prev.len()
                    )
                })?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= buf.len())
                .ok_or_else(|| {
                    format!(
                        "entry {n} at byte {start} has a path of {len} more bytes, past the end"
                    )
                })?;
            let (suffix, rest) = buf.split_at(len);
            buf = rest;
            let mut path = Vec::with_capacity(shared + len);
            path.extend_from_slice(&prev[..shared]);
            path.extend_from_slice(suffix);
            if path <= prev {
                return Err(format!(
                    "entry {n} at byte {start} is empty or out of order"
                ));
            }
            let stat = Stat {
                size: varint(&mut buf, bytes.len())?,
                mtime: unzigzag(varint(&mut buf, bytes.len())?),
                ino: varint(&mut buf, bytes.len())?,
                dir,
            };
            entries.insert(path.clone().into_boxed_slice(), stat);
            prev = path;
        }
        if !buf.is_empty() {
            return Err(format!(
                "the snapshot has {} bytes left over after its {count} entries",
                buf.len()
            ));
        }
        Ok(Snapshot { entries })
    }

    /// Adds or replaces one path's entry: for tests that need a snapshot
    /// of a tree that is not on disk.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, rel: &Path, stat: Stat) {
        self.entries.insert(rel.as_os_str().as_bytes().into(), stat);
    }
}

/// One varint of an encoded snapshot of `total` bytes, or where it broke.
fn varint(buf: &mut &[u8], total: usize) -> Result<u64, String> {
    let at = total - buf.len();
    prost::encoding::decode_varint(buf)
        .map_err(|e| format!("the snapshot is damaged at byte {at}: {e}"))
}

/// A signed number as an unsigned one, small when it is near zero either
/// way.
fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
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

    fn stat(n: u64, dir: bool) -> Stat {
        Stat {
            size: n * 1000,
            mtime: 1_700_000_000_000_000_000 + n as i64 * 7,
            ino: 100 + n,
            dir,
        }
    }

    #[test]
    fn snapshots_round_trip_through_their_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/c.txt"), "1").unwrap();
        fs::write(root.join("a/bb.txt"), "22").unwrap();
        fs::write(root.join("z"), "").unwrap();
        let walked = Snapshot::take(root, &all()).unwrap();
        assert_eq!(Snapshot::decode(&walked.encode()).unwrap(), walked);

        // Edge values: a negative mtime (before 1970), the extremes, a
        // path that is not UTF-8, and a path that is a prefix of the next.
        let mut s = Snapshot::default();
        s.insert(Path::new("a"), stat(0, true));
        s.insert(Path::new("a/"), stat(1, false));
        s.insert(Path::new(OsStr::from_bytes(b"a/\xff\xfe")), stat(2, false));
        s.insert(
            Path::new("b"),
            Stat {
                size: u64::MAX,
                mtime: i64::MIN,
                ino: u64::MAX,
                dir: false,
            },
        );
        s.insert(
            Path::new("c"),
            Stat {
                size: 0,
                mtime: -1,
                ino: 0,
                dir: true,
            },
        );
        s.insert(
            Path::new("d"),
            Stat {
                size: 0,
                mtime: i64::MAX,
                ino: 0,
                dir: false,
            },
        );
        assert_eq!(Snapshot::decode(&s.encode()).unwrap(), s);
        let empty = Snapshot::default();
        assert_eq!(Snapshot::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn damaged_snapshots_are_errors_not_panics() {
        let mut s = Snapshot::default();
        for n in 0..20 {
            s.insert(
                Path::new(&format!("dir/sub/file-{n:02}")),
                stat(n, n % 5 == 0),
            );
        }
        let bytes = s.encode();
        // Every truncation: the count says more entries than are left, or
        // a field is cut short.
        for cut in 0..bytes.len() {
            assert!(Snapshot::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let e = Snapshot::decode(&longer).unwrap_err();
        assert!(e.contains("1 bytes left over"), "{e}");
        let mut version = bytes.clone();
        version[0] = 9;
        let e = Snapshot::decode(&version).unwrap_err();
        assert!(e.contains("encoding version 9"), "{e}");
        // The first entry claims to share bytes with the empty path before
        // it.
        let mut shared = bytes.clone();
        shared[2] = 0x7e;
        let e = Snapshot::decode(&shared).unwrap_err();
        assert!(
            e.contains("entry 0") && e.contains("shares 63 bytes"),
            "{e}"
        );
        // Noise of every byte value, and some longer garbage.
        for b in 0..=255u8 {
            let _ = Snapshot::decode(&[1, b, b, b, b, b, b]);
            let _ = Snapshot::decode(&[b; 40]);
        }
        let e = Snapshot::decode(&[1, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(e.contains("damaged at byte 1"), "{e}");
    }

    #[test]
    fn entries_out_of_order_are_refused() {
        let mut s = Snapshot::default();
        s.insert(Path::new("b"), stat(1, false));
        let mut bytes = s.encode();
        // A second entry, "a", after "b": the count goes to 2 and the
        // entry is appended by hand.
        bytes[1] = 2;
        bytes.extend_from_slice(&[0, 1, b'a', 0, 0, 0]);
        let e = Snapshot::decode(&bytes).unwrap_err();
        assert!(e.contains("entry 1") && e.contains("out of order"), "{e}");
    }

    /// 10k files deep in one tree: each entry costs a few bytes of path
    /// and its numbers, not its full path again.
    #[test]
    fn a_large_tree_encodes_to_far_less_than_its_paths() {
        let mut s = Snapshot::default();
        let mut raw = 0;
        for n in 0..10_000u64 {
            let path = format!(
                "services/billing/src/main/java/org/example/billing/ledger/entry_{n:05}.java"
            );
            raw += path.len();
            s.insert(Path::new(&path), stat(n, false));
        }
        let bytes = s.encode();
        assert!(
            bytes.len() * 3 < raw,
            "{} bytes encoded for {raw} bytes of paths",
            bytes.len()
        );
        assert_eq!(Snapshot::decode(&bytes).unwrap(), s);
    }

    mod props {
        use proptest::prelude::*;

        use super::*;
        use crate::props::{byte_edits, config, damage};

        /// Any snapshot: paths of a few components from a small alphabet,
        /// so that neighbours share prefixes as in a real tree, and any
        /// numbers.
        fn snapshot() -> impl Strategy<Value = Snapshot> {
            let stat = (any::<u64>(), any::<i64>(), any::<u64>(), any::<bool>()).prop_map(
                |(size, mtime, ino, dir)| Stat {
                    size,
                    mtime,
                    ino,
                    dir,
                },
            );
            prop::collection::btree_map("[ab/\\xff]{1,12}", stat, 0..40).prop_map(|m| {
                let mut s = Snapshot::default();
                for (p, st) in m {
                    s.insert(Path::new(&p), st);
                }
                s
            })
        }

        proptest! {
            #![proptest_config(config())]

            /// Every snapshot round-trips; damaged bytes decode to some
            /// snapshot (which then round-trips too) or to an error,
            /// never a panic.
            #[test]
            fn snapshots_round_trip_and_damage_is_an_error(
                s in snapshot(),
                edits in byte_edits(),
            ) {
                let bytes = s.encode();
                prop_assert_eq!(&Snapshot::decode(&bytes).unwrap(), &s);
                if let Ok(d) = Snapshot::decode(&damage(bytes, &edits)) {
                    prop_assert_eq!(Snapshot::decode(&d.encode()).unwrap(), d);
                }
            }
        }
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

    /// The snapshot's memory per path, measured (run with `--ignored
    /// --nocapture`; docs/benchmarks.md has the figure): 100k paths shaped
    /// like P9c's tree (`dNN/eNNNN/N.txt`), the process's RSS before and
    /// after. Ignored by default: RSS is the whole test process's.
    #[test]
    #[ignore = "a measurement; run it alone"]
    fn memory_per_path() {
        fn rss_kib() -> u64 {
            let status = fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        }
        let before = rss_kib();
        let mut snap = Snapshot::default();
        let stat = Stat {
            size: 1,
            mtime: 1_700_000_000_000_000_000,
            ino: 1,
            dir: false,
        };
        for d in 0..1000u64 {
            for f in 0..100u64 {
                let p = format!("d{:02}/e{d:04}/{f}.txt", d % 10);
                snap.insert(Path::new(&p), stat);
            }
        }
        let per_path = (rss_kib() - before) as f64 * 1024.0 / snap.len() as f64;
        println!(
            "snapshot: {} paths, {per_path:.0} bytes of RSS each",
            snap.len()
        );
        assert!(per_path < 200.0, "{per_path} bytes a path");
    }
}
