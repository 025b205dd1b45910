//! One diffing thread's memory of the trees and blobs it has read, each
//! parsed once: a commit's new trees are its child's old trees, and a
//! file's new blob is the old side of the next commit that changes the
//! file. gix's pack cache keeps only what delta chains resolve to, so
//! without this every old side was found in the pack index and inflated
//! again, and every tree parsed twice.
//!
//! New objects are found in the packs by [`Packs`], which guesses an id's
//! place in an index from its value instead of bisecting the whole index
//! (each step of which was a cache miss: a tenth of a churn job's time).

use std::collections::VecDeque;
use std::sync::Arc;

use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::objs::tree::EntryMode;

use super::lines::Lines;
use super::repo::{GitError, pack_indices, read_object};

/// git looks this far into a file for a NUL byte to call it binary
/// (`FIRST_FEW_BYTES` in git's `xdiff-interface.c`).
const BINARY_PROBE: usize = 8000;

/// git calls a blob larger than this binary without reading it
/// (`core.bigFileThreshold`, 512 MiB by default, in git's `diff.c`).
const BIG_FILE: usize = 512 << 20;

/// Bytes of parsed trees, and of blobs with their lines, each thread keeps.
const TREES: usize = 8 << 20;
const BLOBS: usize = 16 << 20;

/// Bytes of delta bases each thread keeps (here, and in its repository
/// handle for the reads that go through gix): what a delta chain resolves
/// to, which the next version in the chain is a delta on.
pub const PACK_CACHE: usize = 32 << 20;

/// git's rule (`buffer_is_binary`): a NUL byte among the first 8000.
pub fn is_binary(data: &[u8]) -> bool {
    data[..data.len().min(BINARY_PROBE)].contains(&0)
}

/// A tree's bytes and where its entries are.
pub struct Tree {
    data: Vec<u8>,
    entries: Vec<EntryAt>,
}

/// An entry's mode, where it starts, and the byte range of its name; its
/// id follows the name's NUL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryAt {
    mode: EntryMode,
    start: u32,
    name_start: u32,
    name_end: u32,
}

impl EntryAt {
    /// The same entry `by` bytes further on.
    fn shifted(self, by: isize) -> EntryAt {
        let at = |x: u32| (x as isize + by) as u32;
        EntryAt {
            mode: self.mode,
            start: at(self.start),
            name_start: at(self.name_start),
            name_end: at(self.name_end),
        }
    }
}

/// An entry of a [`Tree`].
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    pub mode: EntryMode,
    pub name: &'a [u8],
    pub id: &'a gix::oid,
}

impl Tree {
    /// Parses the raw tree `data` of object `id`, taking from `like` (an
    /// earlier version of it, often) the entries of the runs of bytes the
    /// two share at their start and end: only the entries between are
    /// parsed. The result is what a whole parse gives.
    fn parse_like(data: Vec<u8>, id: &gix::oid, like: Option<&Tree>) -> Result<Tree, GitError> {
        let hash_len = id.kind().len_in_bytes();
        let bad = |at: usize| GitError::Object {
            what: "tree",
            id: id.to_owned(),
            detail: format!("malformed entry at byte {at}"),
        };
        if data.len() > u32::MAX as usize {
            return Err(bad(0));
        }
        let (mut entries, mut at, suffix) = match like {
            Some(like) => {
                let first = like.within_prefix(&data);
                let at = if first == 0 { 0 } else { like.end(first - 1) };
                let suffix = common_suffix(&like.data[at..], &data[at..]);
                (like.entries[..first].to_vec(), at, suffix)
            }
            None => (Vec::new(), 0, 0),
        };
        let shift = data.len() as isize - like.map_or(0, |l| l.data.len() as isize);
        while at < data.len() {
            if let Some(like) = like.filter(|_| data.len() - at <= suffix) {
                // The same bytes from here to the end as `like` has from
                // `at - shift`: if an entry starts there, so do the same
                // entries here.
                let there = (at as isize - shift) as usize;
                let k = like.entries.partition_point(|e| (e.start as usize) < there);
                if like
                    .entries
                    .get(k)
                    .is_some_and(|e| e.start as usize == there)
                {
                    entries.extend(like.entries[k..].iter().map(|e| e.shifted(shift)));
                    break;
                }
            }
            let space = data[at..].find_byte(b' ').ok_or_else(|| bad(at))? + at;
            let mode = EntryMode::from_bytes(&data[at..=space]).ok_or_else(|| bad(at))?;
            let nul = data[space..].find_byte(0).ok_or_else(|| bad(at))? + space;
            if nul + 1 + hash_len > data.len() {
                return Err(bad(at));
            }
            entries.push(EntryAt {
                mode,
                start: at as u32,
                name_start: space as u32 + 1,
                name_end: nul as u32,
            });
            at = nul + 1 + hash_len;
        }
        Ok(Tree { data, entries })
    }

    /// How many of the entries lie wholly in the bytes `self` and `other`
    /// share at their start (and so are entries of `other` too).
    fn within_prefix(&self, other: &[u8]) -> usize {
        let prefix = common_prefix(&self.data, other);
        // All before the last entry starting in the prefix, and that one
        // too when the prefix is all of `self`.
        if prefix == self.data.len() {
            self.len()
        } else {
            self.entries
                .partition_point(|e| e.start as usize <= prefix)
                .saturating_sub(1)
        }
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entry `i`.
    pub fn entry(&self, i: usize) -> Entry<'_> {
        let e = self.entries[i];
        let name_start = e.name_start as usize;
        let id_at = e.name_end as usize + 1;
        let hash_len = self.end(i) - id_at;
        Entry {
            mode: e.mode,
            name: &self.data[name_start..e.name_end as usize],
            id: gix::oid::from_bytes_unchecked(&self.data[id_at..id_at + hash_len]),
        }
    }

    /// Where entry `i` starts and ends in the tree's bytes.
    fn start(&self, i: usize) -> usize {
        self.entries[i].start as usize
    }

    fn end(&self, i: usize) -> usize {
        self.entries
            .get(i + 1)
            .map_or(self.data.len(), |e| e.start as usize)
    }

    fn heap_size(&self) -> usize {
        self.data.capacity() + self.entries.capacity() * std::mem::size_of::<EntryAt>()
    }

    /// The entries of `self` (old) and `new` that may differ: entries
    /// `old_range` and `new_range`, as index ranges. The entries before
    /// are byte for byte the same in both (a common prefix of the raw
    /// trees), and so are those after (a common suffix, at entries that
    /// start at the same distance from each tree's end). A commit
    /// usually changes a few entries of a tree, so this leaves a few to
    /// compare by name.
    pub fn differing(&self, new: &Tree) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (a, b) = (&self.data[..], &new.data[..]);
        let first = self.within_prefix(b).min(new.len());
        let after = if first == 0 { 0 } else { self.end(first - 1) };
        let suffix = common_suffix(&a[after..], &b[after..]);
        let (mut i, mut j) = (self.len(), new.len());
        while i > first && j > first {
            let (sa, sb) = (self.start(i - 1), new.start(j - 1));
            // The same bytes from here to the end, and an entry starting
            // here on both sides.
            if a.len() - sa > suffix || a.len() - sa != b.len() - sb {
                break;
            }
            i -= 1;
            j -= 1;
        }
        (first..i, first..j)
    }
}

/// How many leading bytes `a` and `b` share.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 16 <= n && a[i..i + 16] == b[i..i + 16] {
        i += 16;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// How many trailing bytes `a` and `b` share.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[a.len() - n..], &b[b.len() - n..]);
    let mut i = 0;
    while i + 16 <= n && a[n - i - 16..n - i] == b[n - i - 16..n - i] {
        i += 16;
    }
    while i < n && a[n - i - 1] == b[n - i - 1] {
        i += 1;
    }
    i
}

/// A file's contents as the numstat needs them.
pub struct Blob {
    pub data: Vec<u8>,
    /// By git's test on the bytes (a NUL among the first 8000, or past the
    /// big-file threshold).
    pub binary: bool,
    /// Empty for a binary blob (see [`Blob::lines`]).
    lines: Lines,
}

impl Blob {
    pub fn new(data: Vec<u8>) -> Blob {
        let binary = data.len() > BIG_FILE || is_binary(&data);
        let lines = if binary {
            Lines::default()
        } else {
            Lines::of(&data)
        };
        Blob {
            data,
            binary,
            lines,
        }
    }

    /// The lines, split now when the blob is binary by its bytes but its
    /// attributes say to diff it as text.
    pub fn lines(&self) -> std::borrow::Cow<'_, Lines> {
        if self.binary && !self.data.is_empty() {
            std::borrow::Cow::Owned(Lines::of(&self.data))
        } else {
            std::borrow::Cow::Borrowed(&self.lines)
        }
    }

    fn heap_size(&self) -> usize {
        self.data.capacity() + self.lines.heap_size()
    }
}

/// Objects by id, up to a number of bytes, the oldest dropped first.
struct Memo<T> {
    map: gix::hashtable::HashMap<ObjectId, Arc<T>>,
    order: VecDeque<(ObjectId, usize)>,
    bytes: usize,
    cap: usize,
}

impl<T> Memo<T> {
    fn new(cap: usize) -> Memo<T> {
        Memo {
            map: Default::default(),
            order: VecDeque::new(),
            bytes: 0,
            cap,
        }
    }

    fn get(&self, id: &gix::oid) -> Option<Arc<T>> {
        self.map.get(id).cloned()
    }

    fn put(&mut self, id: ObjectId, value: Arc<T>, size: usize) {
        if size > self.cap / 4 {
            return;
        }
        while self.bytes + size > self.cap {
            let Some((old, n)) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&old);
            self.bytes -= n;
        }
        if self.map.insert(id, value).is_none() {
            self.order.push_back((id, size));
            self.bytes += size;
        }
    }
}

/// The repository's packs, opened once per job and shared by the diffing
/// threads. Packs that do not open, loose objects and objects added since
/// are read through the repository instead.
pub struct Packs {
    bundles: Vec<gix::odb::pack::Bundle>,
}

impl Packs {
    /// Opens the packs of `repo`.
    pub fn open(repo: &gix::Repository) -> Packs {
        let hash = repo.object_hash();
        Packs {
            bundles: pack_indices(repo)
                .iter()
                .filter_map(|idx| gix::odb::pack::Bundle::at(idx, hash).ok())
                .collect(),
        }
    }

    /// Whether the packs store the `newest` commit's tree after the
    /// `oldest`'s, as `git fast-import` writes them (a repacked
    /// repository stores the newest first). In such a pack each version
    /// of a file or tree is a delta on the version before it, and gix's
    /// delta cache keeps only the objects asked for, not the steps of a
    /// chain: diffing newest first would then rebuild each object from the
    /// start of its chain (up to 50 deltas), while oldest first finds the
    /// version before in the cache and applies one delta. git's own cache
    /// keeps the steps, so its order matters less.
    pub fn deltas_run_forward(&self, newest: &gix::oid, oldest: &gix::oid) -> bool {
        self.bundles.iter().find_map(|b| {
            let (new, old) = (find_in(&b.index, newest)?, find_in(&b.index, oldest)?);
            Some(b.index.pack_offset_at_index(new) > b.index.pack_offset_at_index(old))
        }) == Some(true)
    }

    /// Which pack holds `id`, and at which index entry.
    fn locate(&self, id: &gix::oid) -> Option<(usize, u32)> {
        self.bundles
            .iter()
            .enumerate()
            .find_map(|(n, b)| find_in(&b.index, id).map(|i| (n, i)))
    }
}

/// `id`'s entry in `index`, by interpolation: ids are hashes, spread
/// evenly, so the place of an id's leading 8 bytes between the ends of
/// the range searched is a close guess (two or three probes, where
/// bisecting a million ids takes twenty). After a few guesses it leaves
/// the rest to gix's own search.
fn find_in(index: &gix::odb::pack::index::File, id: &gix::oid) -> Option<u32> {
    let key = |o: &gix::oid| {
        let mut k = [0u8; 8];
        let b = o.as_bytes();
        k[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
        u64::from_be_bytes(k)
    };
    let n = index.num_objects();
    if n == 0 {
        return None;
    }
    let target = key(id);
    let (mut lo, mut hi) = (0u32, n - 1);
    for _ in 0..4 {
        let (klo, khi) = (key(index.oid_at_index(lo)), key(index.oid_at_index(hi)));
        if target < klo || target > khi {
            return None;
        }
        let guess = if khi == klo {
            lo
        } else {
            let span = u128::from(hi - lo);
            lo + (u128::from(target - klo) * span / u128::from(khi - klo)) as u32
        };
        match index.oid_at_index(guess).cmp(id) {
            std::cmp::Ordering::Equal => return Some(guess),
            std::cmp::Ordering::Less if guess < hi => lo = guess + 1,
            std::cmp::Ordering::Greater if guess > lo => hi = guess - 1,
            _ => return None,
        }
    }
    index.lookup(id)
}

/// A thread's reader of trees and blobs through its memos.
pub struct Objects {
    packs: Arc<Packs>,
    trees: Memo<Tree>,
    blobs: Memo<Blob>,
    inflate: gix::zlib::Inflate,
    pack_cache: gix::odb::pack::cache::lru::MemoryCappedHashmap,
    scratch: Vec<u8>,
}

impl Objects {
    pub fn new(packs: Arc<Packs>) -> Objects {
        Objects {
            packs,
            trees: Memo::new(TREES),
            blobs: Memo::new(BLOBS),
            inflate: Default::default(),
            pack_cache: gix::odb::pack::cache::lru::MemoryCappedHashmap::new(PACK_CACHE),
            scratch: Vec::new(),
        }
    }

    /// Tree `id`, parsed; `like` is a tree it probably shares much with
    /// (its old side in a diff), whose entries it then takes over.
    pub fn tree(
        &mut self,
        repo: &gix::Repository,
        id: &gix::oid,
        like: Option<&Tree>,
    ) -> Result<Arc<Tree>, GitError> {
        if let Some(t) = self.trees.get(id) {
            return Ok(t);
        }
        let data = self.read(repo, id, "tree")?;
        let tree = Arc::new(Tree::parse_like(data, id, like)?);
        self.trees
            .put(id.to_owned(), tree.clone(), tree.heap_size());
        Ok(tree)
    }

    /// Blob `id`, with its lines.
    pub fn blob(&mut self, repo: &gix::Repository, id: &gix::oid) -> Result<Arc<Blob>, GitError> {
        if let Some(b) = self.blobs.get(id) {
            return Ok(b);
        }
        let blob = Arc::new(Blob::new(self.read(repo, id, "blob")?));
        self.blobs
            .put(id.to_owned(), blob.clone(), blob.heap_size());
        Ok(blob)
    }

    /// Object `id`'s data, from the packs or else the repository, in a
    /// buffer of its own (decoded in `scratch`, which keeps its size
    /// between reads: a fresh buffer would grow step by step as a delta
    /// chain resolves).
    fn read(
        &mut self,
        repo: &gix::Repository,
        id: &gix::oid,
        what: &'static str,
    ) -> Result<Vec<u8>, GitError> {
        if let Some((pack, at)) = self.packs.locate(id) {
            let got = self.packs.bundles[pack].get_object_by_index(
                at,
                &mut self.scratch,
                &mut self.inflate,
                &mut self.pack_cache,
            );
            // On an error, read again through the repository, which names
            // the object in its error.
            if let Ok((data, _)) = got {
                return Ok(data.data.to_vec());
            }
        }
        Ok(read_object(repo, id, what, &mut self.scratch)?
            .data
            .to_vec())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::git::fixture::Fixture;
    use crate::git::repo::open_local;
    use crate::git::synthetic::synthetic_fast_import_stream;

    #[test]
    fn binary_follows_gits_rule() {
        let mut late_nul = vec![b'a'; BINARY_PROBE];
        late_nul.push(0);
        assert!(!is_binary(&late_nul));
        assert!(!Blob::new(late_nul.clone()).binary);
        late_nul[BINARY_PROBE - 1] = 0;
        assert!(is_binary(&late_nul));
        let blob = Blob::new(late_nul);
        assert!(blob.binary);
        // Binary blobs are split only when asked, for a `diff` attribute.
        assert_eq!(blob.lines().len(), 1);
    }

    /// A raw tree of `entries` (name, is a tree, id byte), in git's order.
    fn raw(entries: &BTreeMap<Vec<u8>, (bool, u8)>) -> Vec<u8> {
        let mut sorted: Vec<_> = entries.iter().collect();
        sorted.sort_by(|a, b| name_order(a.0, a.1.0, b.0, b.1.0));
        let mut out = Vec::new();
        for (name, (tree, id)) in sorted {
            out.extend_from_slice(if *tree { b"40000 " } else { b"100644 " });
            out.extend_from_slice(name);
            out.push(0);
            // Ids full of the bytes a parser could trip on.
            out.extend_from_slice(&[*id, b' ', 0, *id, b'/'].repeat(4));
        }
        out
    }

    fn parse(data: Vec<u8>) -> Tree {
        Tree::parse_like(data, &ObjectId::null(gix::hash::Kind::Sha1), None).expect("parses")
    }

    /// The (name, mode, id) of the entries in `range`.
    fn listed(t: &Tree, range: std::ops::Range<usize>) -> Vec<(Vec<u8>, EntryMode, ObjectId)> {
        range
            .map(|i| {
                let e = t.entry(i);
                (e.name.to_vec(), e.mode, e.id.to_owned())
            })
            .collect()
    }

    use gix::objs::tree::name_order;

    /// Against the model: the entries outside the ranges `differing`
    /// returns are equal pairs at the same place from each end, so a diff
    /// of the ranges alone finds every change; and a tree parsed with an
    /// earlier version's help has the entries a whole parse finds.
    #[test]
    fn differing_leaves_out_only_equal_entries() {
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for round in 0..2000 {
            let mut old = BTreeMap::new();
            for _ in 0..next(30) {
                let name = format!("f{}", next(40)).into_bytes();
                old.insert(name, (next(5) == 0, next(4) as u8));
            }
            let mut new = old.clone();
            for _ in 0..next(4) {
                let name = format!("f{}", next(40)).into_bytes();
                match next(3) {
                    0 => {
                        new.remove(&name);
                    }
                    1 => {
                        new.insert(name, (next(5) == 0, next(4) as u8));
                    }
                    _ => {
                        // A name that is a prefix of others, in both roles.
                        let short = name[..name.len() - 1].to_vec();
                        new.insert(short, (next(2) == 0, next(4) as u8));
                    }
                }
            }
            let (a, b) = (parse(raw(&old)), parse(raw(&new)));
            assert_eq!(a.len(), old.len());
            // Parsed with the old tree's help, the new one is the same.
            let id = ObjectId::null(gix::hash::Kind::Sha1);
            let like = Tree::parse_like(raw(&new), &id, Some(&a)).expect("parses");
            assert_eq!(like.entries, b.entries, "round {round}");
            let (ra, rb) = a.differing(&b);
            assert_eq!(ra.start, rb.start, "round {round}");
            assert_eq!(a.len() - ra.end, b.len() - rb.end, "round {round}");
            assert_eq!(listed(&a, 0..ra.start), listed(&b, 0..rb.start));
            assert_eq!(listed(&a, ra.end..a.len()), listed(&b, rb.end..b.len()));
            if old == new {
                assert!(ra.is_empty() && rb.is_empty(), "round {round}");
            }
        }
    }

    #[test]
    fn a_malformed_tree_is_an_error_naming_it() {
        let id = ObjectId::null(gix::hash::Kind::Sha1);
        for bad in [
            &b"100644 a"[..],
            b"100644 a\0short",
            b"10x644 a\0",
            b"nospace",
        ] {
            let err = Tree::parse_like(bad.to_vec(), &id, None)
                .err()
                .expect("an error");
            assert!(err.to_string().contains("malformed entry"), "{err}");
        }
    }

    /// A repository of `commits` synthetic commits over `files` files,
    /// in one pack as `git fast-import` writes it.
    fn synthetic(commits: usize, files: usize, seed: u64) -> (Fixture, gix::Repository) {
        let f = Fixture::new();
        f.fast_import(&synthetic_fast_import_stream(commits, files, seed));
        let repo = open_local(f.path()).expect("opens");
        (f, repo)
    }

    #[test]
    fn interpolation_finds_every_id_of_a_pack_and_no_other() {
        let (_f, repo) = synthetic(300, 20, 5);
        let packs = Packs::open(&repo);
        assert_eq!(packs.bundles.len(), 1);
        let index = &packs.bundles[0].index;
        assert!(index.num_objects() > 500, "{}", index.num_objects());
        for i in 0..index.num_objects() {
            let id = index.oid_at_index(i).to_owned();
            assert_eq!(find_in(index, &id), Some(i));
            assert_eq!(packs.locate(&id), Some((0, i)));
            // The same id with its last byte changed is (almost surely)
            // not in the pack; where it is, it is found.
            let mut other = id;
            other.as_mut_slice()[19] ^= 0x5a;
            assert_eq!(find_in(index, &other), index.lookup(other));
        }
        for edge in [[0u8; 20], [0xff; 20]] {
            let id = ObjectId::from_bytes_or_panic(&edge);
            assert_eq!(find_in(index, &id), None);
        }
    }

    #[test]
    fn objects_read_through_the_packs_equal_gixs_reads() {
        let (_f, repo) = synthetic(200, 10, 9);
        let mut objects = Objects::new(Arc::new(Packs::open(&repo)));
        let head = repo.head_commit().expect("head");
        let tree = head.tree().expect("tree");
        let ours = objects.tree(&repo, &tree.id, None).expect("reads");
        assert_eq!(ours.data, tree.data);
        for entry in tree.iter() {
            let entry = entry.expect("entry");
            if entry.mode().is_blob() {
                let blob = objects.blob(&repo, entry.oid()).expect("reads");
                let theirs = repo.find_object(entry.oid()).expect("found");
                assert_eq!(blob.data, theirs.data);
            }
        }
        // A missing object is an error naming it.
        let missing = ObjectId::from_bytes_or_panic(&[7u8; 20]);
        let err = objects.blob(&repo, &missing).err().expect("missing");
        assert!(err.to_string().contains(&missing.to_string()), "{err}");
    }

    #[test]
    fn import_order_and_repacked_order_are_told_apart() {
        let f = Fixture::new();
        f.fast_import(&synthetic_fast_import_stream(60, 5, 3));
        let tree = |rev: &str| {
            ObjectId::from_hex(f.git(&["rev-parse", &format!("{rev}^{{tree}}")]).as_bytes())
                .expect("an id")
        };
        let (newest, oldest) = (tree("main"), tree("main~59"));
        let repo = open_local(f.path()).expect("opens");
        assert!(Packs::open(&repo).deltas_run_forward(&newest, &oldest));
        // Repacked, newest first, as git gc writes packs.
        f.git(&["repack", "-adfq"]);
        let repo = open_local(f.path()).expect("opens");
        assert!(!Packs::open(&repo).deltas_run_forward(&newest, &oldest));
        // Loose objects: no pack says anything.
        let loose = Fixture::new();
        loose.commit(1_000, ("A", "a@example.org"), "one", &[("a", Some(b"1\n"))]);
        let id = ObjectId::from_hex(loose.git(&["rev-parse", "HEAD^{tree}"]).as_bytes()).unwrap();
        let repo = open_local(loose.path()).expect("opens");
        assert!(!Packs::open(&repo).deltas_run_forward(&id, &id));
    }
}
