//! The walked commit graph: what the walk needs of each commit it has read
//! (tree, parents, raw author, dates), so a later walk reads only commits
//! it has not seen and closes over the rest in memory. A commit's id is
//! the hash of its content, so a cached entry can never go stale: after a
//! force-push the walk still starts from the new tips, and commits no
//! longer reachable are simply not visited.
//!
//! Authors are kept raw (trimmed, before `.mailmap`), each identity once:
//! the mailmap may change between runs, and is applied by the walk.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use gix::ObjectId;
use gix::bstr::{BStr, BString, ByteSlice};
use rayon::prelude::*;

use super::{CacheFile, Dec, Enc, len, repo_dir};
use crate::git::repo::{GitError, pack_indices, read_object};

const TAG: &[u8; 4] = b"grph";

/// The format of the file's body; another version is not read (the
/// commits are read again).
const VERSION: u32 = 1;

/// One commit of the graph.
#[derive(Clone, Copy, Debug)]
pub struct Node {
    pub tree: ObjectId,
    /// Its parents, as a range of [`Graph::parents`]'s table.
    parents_at: u32,
    parents_len: u32,
    /// Its author's raw identity, an index for [`Graph::identity`].
    pub identity: u32,
    /// The author date, seconds since the epoch, and the author's offset
    /// from UTC in seconds (east positive).
    pub author_time: i64,
    pub author_offset: i32,
    /// The committer date, seconds since the epoch.
    pub committer_time: i64,
    /// The last walk that visited it (see [`Graph::visit`]); not saved.
    walked: u32,
    /// Its first parent (null for a root), which a walk then finds with
    /// the node instead of in the parents' table; not saved apart.
    first_parent: ObjectId,
}

/// What a walk finds of a commit it reaches (see [`Graph::visit`]).
pub enum Visit {
    /// The commit's first visit in this walk.
    First(Node),
    /// Visited already in this walk.
    Again,
    /// Not in the graph: to be read.
    Unknown,
}

/// The commits of one repository that walks have read.
pub struct Graph {
    /// Where it is saved; `None` for a graph kept only in memory.
    file: Option<CacheFile>,
    nodes: gix::hashtable::HashMap<ObjectId, Node>,
    /// All nodes' parents, one after another.
    parents: Vec<ObjectId>,
    /// Walks begun on this graph (see [`Graph::visit`]).
    walks: u32,
    /// Raw (trimmed) author names and emails.
    identities: Identities,
    /// Commits read since loading, in order.
    added: Vec<ObjectId>,
}

impl Graph {
    /// An empty graph that is never saved.
    pub fn in_memory() -> Graph {
        Graph {
            file: None,
            nodes: Default::default(),
            parents: Vec::new(),
            walks: 0,
            identities: Identities::default(),
            added: Vec::new(),
        }
    }

    /// The graph of repository `key` under `dir`; empty when there is none
    /// or it does not read. Marks the repository as used now.
    pub fn load(dir: &Path, key: &str) -> Graph {
        let path = repo_dir(dir, key).join("graph.bin");
        let mut graph = Graph::in_memory();
        let file = CacheFile::load(path, TAG, VERSION, |body| graph.decode(body));
        graph.file = Some(file);
        graph
    }

    /// How many commits it holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// How many commits walks read into it since it was loaded.
    pub fn added(&self) -> usize {
        self.added.len()
    }

    /// Commit `id`, if read before (walks use [`Graph::visit`]).
    #[cfg(test)]
    pub fn get(&self, id: &ObjectId) -> Option<Node> {
        self.nodes.get(id).copied()
    }

    /// Begins a walk: a number for [`Graph::visit`] that no earlier walk
    /// of this graph used.
    pub fn begin_walk(&mut self) -> u32 {
        self.walks += 1;
        self.walks
    }

    /// Commit `id` as walk `walk` reaches it, marking it visited: one
    /// lookup where a walk would otherwise look the commit up in the graph
    /// and in a set of commits seen (each a cache miss on a big history).
    pub fn visit(&mut self, id: &ObjectId, walk: u32) -> Visit {
        match self.nodes.get_mut(id) {
            None => Visit::Unknown,
            Some(node) if node.walked == walk => Visit::Again,
            Some(node) => {
                node.walked = walk;
                Visit::First(*node)
            }
        }
    }

    /// `node`'s parents, in the commit's order.
    pub fn parents<'a>(&'a self, node: &'a Node) -> &'a [ObjectId] {
        match node.parents_len {
            0 => &[],
            1 => std::slice::from_ref(&node.first_parent),
            n => {
                let at = node.parents_at as usize;
                &self.parents[at..at + n as usize]
            }
        }
    }

    /// The raw name and email of identity `index`.
    pub fn identity(&self, index: u32) -> (&BStr, &BStr) {
        self.identities.get(index)
    }

    /// Reads commit `id` from `repo` (into `buf`), adds it, and returns it.
    pub fn read(
        &mut self,
        repo: &gix::Repository,
        id: ObjectId,
        buf: &mut Vec<u8>,
    ) -> Result<Node, GitError> {
        let data = read_object(repo, &id, "commit", buf)?;
        let p = Parsed::new(id, data.data, repo.object_hash(), &mut self.parents)?;
        let node = p.node(self.identities.intern(p.name, p.email));
        if self.nodes.insert(id, node).is_none() {
            self.added.push(id);
        }
        Ok(node)
    }

    /// Reads into the graph, spread over `pool`, every commit that the
    /// repository's packs store whole and the graph lacks: what a first
    /// walk would read one by one on one thread, since a walk reaches
    /// nearly every commit. Commits stored as deltas, loose or in an
    /// alternate are left for the walk to read, as is anything that does
    /// not decode. Returns how many it added.
    pub fn prefetch(
        &mut self,
        repo: &gix::Repository,
        pool: &rayon::ThreadPool,
        cancel: &AtomicBool,
    ) -> Result<usize, GitError> {
        self.prefetch_in_windows(repo, pool, cancel, PREFETCH_WINDOW)
    }

    fn prefetch_in_windows(
        &mut self,
        repo: &gix::Repository,
        pool: &rayon::ThreadPool,
        cancel: &AtomicBool,
        window_len: usize,
    ) -> Result<usize, GitError> {
        let before = self.nodes.len();
        let hash = repo.object_hash();
        for path in pack_indices(repo) {
            // A pack that does not open is left to the walk's own reads.
            let Ok(bundle) = gix::odb::pack::Bundle::at(&path, hash) else {
                continue;
            };
            // A window of the index at a time: a pack of millions of
            // objects is not listed in memory whole.
            let mut index = bundle.index.iter();
            loop {
                let mut window: Vec<(ObjectId, u64)> = index
                    .by_ref()
                    .take(window_len)
                    .map(|e| (e.oid, e.pack_offset))
                    .collect();
                if window.is_empty() {
                    break;
                }
                window.retain(|(id, _)| !self.nodes.contains_key(id));
                let parts: Vec<Result<Part, GitError>> = pool.install(|| {
                    window
                        .par_chunks(PREFETCH_CHUNK)
                        .map(|chunk| Part::read(&bundle.pack, chunk, hash, cancel))
                        .collect()
                });
                for part in parts {
                    self.merge(part?);
                }
            }
        }
        Ok(self.nodes.len() - before)
    }

    /// Adds the commits of a [`Part`], renumbering its identities.
    fn merge(&mut self, part: Part) {
        let global: Vec<u32> = part
            .identities
            .list
            .iter()
            .map(|(name, email)| self.identities.intern(name.as_bstr(), email.as_bstr()))
            .collect();
        let shift = self.parents.len() as u32;
        self.parents.extend_from_slice(&part.parents);
        self.nodes.reserve(part.nodes.len());
        for (id, mut node) in part.nodes {
            node.parents_at += shift;
            node.identity = global[node.identity as usize];
            if self.nodes.insert(id, node).is_none() {
                self.added.push(id);
            }
        }
    }

    /// Saves the commits read since loading, if the graph is kept on
    /// disk: appended as a segment, or with all the others in a rewrite
    /// when the file cannot take one.
    pub fn save(&self) -> io::Result<()> {
        match &self.file {
            Some(file) if !self.added.is_empty() => file.save(
                || self.encode(&self.added),
                || self.encode(&self.nodes.keys().copied().collect::<Vec<_>>()),
            ),
            _ => Ok(()),
        }
    }

    /// A segment's body holding `ids`: the hash length, the identities
    /// they use, then each commit.
    fn encode(&self, ids: &[ObjectId]) -> io::Result<Vec<u8>> {
        // Identities renumbered for the segment, so each segment stands
        // alone and two jobs' appends cannot clash.
        let mut local: HashMap<u32, u32> = HashMap::new();
        let mut used = Vec::new();
        for id in ids {
            let global = self.nodes[id].identity;
            local.entry(global).or_insert_with(|| {
                used.push(global);
                (used.len() - 1) as u32
            });
        }
        let mut e = Enc::default();
        e.0.reserve(ids.len() * 96);
        e.u8(ids.first().map_or(20, |id| id.as_bytes().len()) as u8);
        e.u32(len(used.len())?);
        for global in &used {
            let (name, email) = self.identity(*global);
            e.bytes(name);
            e.bytes(email);
        }
        e.u32(len(ids.len())?);
        for id in ids {
            let node = &self.nodes[id];
            e.id(id);
            e.id(&node.tree);
            e.u32(local[&node.identity]);
            e.i64(node.author_time);
            e.i32(node.author_offset);
            e.i64(node.committer_time);
            let parents = self.parents(node);
            e.u32(len(parents.len())?);
            for p in parents {
                e.id(p);
            }
        }
        Ok(e.0)
    }

    /// Adds a segment's commits; `None` if it does not parse (the commits
    /// before the fault stay).
    fn decode(&mut self, body: &[u8]) -> Option<()> {
        let mut d = Dec::new(body);
        let hash_len = usize::from(d.u8()?);
        let n_identities = d.u32()? as usize;
        let mut global = Vec::with_capacity(n_identities.min(body.len() / 8));
        for _ in 0..n_identities {
            let name = d.bytes()?.as_bstr();
            let email = d.bytes()?.as_bstr();
            global.push(self.identities.intern(name, email));
        }
        let n_nodes = d.u32()? as usize;
        // Bounded by what the body could hold: a damaged count cannot ask
        // for a huge allocation.
        let fits = body.len() / (2 * hash_len + 28).max(1);
        self.nodes.reserve(n_nodes.min(fits));
        self.parents.reserve(n_nodes.min(fits));
        for _ in 0..n_nodes {
            let id = d.id(hash_len)?;
            let tree = d.id(hash_len)?;
            let identity = *global.get(d.u32()? as usize)?;
            let author_time = d.i64()?;
            let author_offset = d.i32()?;
            let committer_time = d.i64()?;
            let n_parents = d.u32()?;
            let parents_at = u32::try_from(self.parents.len()).ok()?;
            for _ in 0..n_parents {
                self.parents.push(d.id(hash_len)?);
            }
            let first_parent = if n_parents > 0 {
                self.parents[parents_at as usize]
            } else {
                ObjectId::null(tree.kind())
            };
            self.nodes.insert(
                id,
                Node {
                    tree,
                    parents_at,
                    parents_len: n_parents,
                    identity,
                    author_time,
                    author_offset,
                    committer_time,
                    walked: 0,
                    first_parent,
                },
            );
        }
        d.is_empty().then_some(())
    }
}

/// Pack entries per unit of parallel prefetching.
const PREFETCH_CHUNK: usize = 4096;

/// Pack index entries listed at a time (8 MiB of ids and offsets).
const PREFETCH_WINDOW: usize = 1 << 18;

/// What the graph keeps of a commit, parsed from its object.
struct Parsed<'a> {
    tree: ObjectId,
    /// Where its parents start and end in the parser's output list.
    parents: std::ops::Range<usize>,
    /// The first of them (null for a root).
    first_parent: ObjectId,
    name: &'a BStr,
    email: &'a BStr,
    author_time: i64,
    author_offset: i32,
    committer_time: i64,
}

impl<'a> Parsed<'a> {
    /// Parses the commit `id` from `data`, appending its parents to
    /// `parents` (and nothing, if it does not parse); reads up to the
    /// committer and no further (the message and extra headers, a
    /// signature among them, are not needed).
    fn new(
        id: ObjectId,
        data: &'a [u8],
        hash: gix::hash::Kind,
        parents: &mut Vec<ObjectId>,
    ) -> Result<Parsed<'a>, GitError> {
        let start = parents.len();
        let parsed = Parsed::parse(id, data, hash, parents);
        if parsed.is_err() {
            parents.truncate(start);
        }
        parsed
    }

    fn parse(
        id: ObjectId,
        data: &'a [u8],
        hash: gix::hash::Kind,
        parents: &mut Vec<ObjectId>,
    ) -> Result<Parsed<'a>, GitError> {
        use gix::objs::commit::ref_iter::Token;
        let bad = |detail: String| GitError::Object {
            what: "commit",
            id,
            detail,
        };
        let start = parents.len();
        let (mut tree, mut author, mut committer) = (None, None, None);
        for token in gix::objs::CommitRefIter::from_bytes(data, hash) {
            match token.map_err(|e| bad(e.to_string()))? {
                Token::Tree { id } => tree = Some(id),
                Token::Parent { id } => parents.push(id),
                Token::Author { signature } => author = Some(signature),
                Token::Committer { signature } => {
                    committer = Some(signature);
                    break;
                }
                _ => {}
            }
        }
        let missing = |what: &str| bad(format!("it has no {what}"));
        let tree = tree.ok_or_else(|| missing("tree"))?;
        let author = author.ok_or_else(|| missing("author"))?;
        let committer = committer.ok_or_else(|| missing("committer"))?;
        let author_date = author.time().map_err(|e| bad(e.to_string()))?;
        let raw = author.trim();
        Ok(Parsed {
            tree,
            first_parent: parents
                .get(start)
                .copied()
                .unwrap_or_else(|| ObjectId::null(hash)),
            parents: start..parents.len(),
            name: raw.name,
            email: raw.email,
            author_time: author_date.seconds,
            author_offset: author_date.offset,
            committer_time: committer.seconds(),
        })
    }

    /// The commit as a node of author `identity`, its parents where
    /// [`Parsed::new`] put them.
    fn node(&self, identity: u32) -> Node {
        Node {
            tree: self.tree,
            parents_at: self.parents.start as u32,
            parents_len: self.parents.len() as u32,
            identity,
            author_time: self.author_time,
            author_offset: self.author_offset,
            committer_time: self.committer_time,
            walked: 0,
            first_parent: self.first_parent,
        }
    }
}

/// Raw author identities, each once, numbered in the order first seen.
#[derive(Default)]
struct Identities {
    list: Vec<(BString, BString)>,
    /// Keyed by `name\0email`.
    index: HashMap<Vec<u8>, u32>,
    /// The key being looked up, kept to spare an allocation per lookup.
    key: Vec<u8>,
}

impl Identities {
    /// The number of `name` and `email`, added if new.
    fn intern(&mut self, name: &BStr, email: &BStr) -> u32 {
        self.key.clear();
        self.key.extend_from_slice(name);
        self.key.push(0);
        self.key.extend_from_slice(email);
        if let Some(i) = self.index.get(self.key.as_slice()) {
            return *i;
        }
        let i = self.list.len() as u32;
        self.list.push((name.to_owned(), email.to_owned()));
        self.index.insert(self.key.clone(), i);
        i
    }

    fn get(&self, index: u32) -> (&BStr, &BStr) {
        let (name, email) = &self.list[index as usize];
        (name.as_bstr(), email.as_bstr())
    }
}

/// The commits one prefetching thread read from a run of pack entries,
/// with identities and parents numbered within the part.
#[derive(Default)]
struct Part {
    nodes: Vec<(ObjectId, Node)>,
    parents: Vec<ObjectId>,
    identities: Identities,
}

impl Part {
    fn read(
        pack: &gix::odb::pack::data::File,
        entries: &[(ObjectId, u64)],
        hash: gix::hash::Kind,
        cancel: &AtomicBool,
    ) -> Result<Part, GitError> {
        use gix::odb::pack::data::entry::Header;
        let mut part = Part::default();
        let mut inflate = gix::zlib::Inflate::default();
        let mut buf = Vec::new();
        for (n, (id, offset)) in entries.iter().enumerate() {
            if n % 256 == 0 && cancel.load(Ordering::Relaxed) {
                return Err(GitError::Cancelled);
            }
            let Ok(entry) = pack.entry(*offset) else {
                continue;
            };
            // Past 16 MiB it is no commit: left to the walk.
            if !matches!(entry.header, Header::Commit) || entry.decompressed_size >= 1 << 24 {
                continue;
            }
            buf.resize(entry.decompressed_size as usize, 0);
            if pack
                .decompress_entry(&entry, &mut inflate, &mut buf)
                .is_err()
            {
                continue;
            }
            let Ok(p) = Parsed::new(*id, &buf, hash, &mut part.parents) else {
                continue;
            };
            let node = p.node(part.identities.intern(p.name, p.email));
            part.nodes.push((*id, node));
        }
        Ok(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::fixture;
    use crate::git::repo::open_local;

    #[test]
    fn read_commits_are_saved_and_load_the_same() {
        let f = fixture::history();
        let repo = open_local(f.path()).expect("opens");
        let dir = tempfile::tempdir().unwrap();
        let mut g = Graph::load(dir.path(), "k");
        assert!(g.is_empty());
        let mut buf = Vec::new();
        let mut ids = Vec::new();
        for rev in ["main", "main~2", "side"] {
            let id = repo.rev_parse_single(rev).expect("resolves").detach();
            let node = g.read(&repo, id, &mut buf).expect("reads");
            ids.push((id, node));
        }
        g.save().unwrap();
        let again = Graph::load(dir.path(), "k");
        assert_eq!(again.len(), 3);
        for (id, node) in &ids {
            let got = again.get(id).expect("cached");
            let dates = |n: &Node| (n.tree, n.author_time, n.author_offset, n.committer_time);
            assert_eq!(dates(&got), dates(node));
            assert_eq!(again.parents(&got), g.parents(node));
            assert_eq!(again.identity(got.identity), g.identity(node.identity));
        }
        // The merge at main~2 has two parents, in the commit's order.
        let merge = again.get(&ids[1].0).unwrap();
        let commit = repo.find_commit(ids[1].0).unwrap();
        let want: Vec<ObjectId> = commit.parent_ids().map(|p| p.detach()).collect();
        assert_eq!(want.len(), 2);
        assert_eq!(again.parents(&merge), &want[..]);
        // A later read is appended as a segment of its own; the earlier
        // ones stay.
        let mut more = Graph::load(dir.path(), "k");
        let root = repo.rev_parse_single("main~4").expect("resolves").detach();
        more.read(&repo, root, &mut buf).expect("reads");
        more.save().unwrap();
        let path = dir.path().join("k").join("graph.bin");
        assert_eq!(
            crate::git::cache::read_file(&path, TAG, VERSION)
                .segments
                .len(),
            2
        );
        let again = Graph::load(dir.path(), "k");
        assert_eq!(again.len(), 4);
        for (id, node) in &ids {
            let got = again.get(id).expect("cached");
            assert_eq!(again.identity(got.identity), g.identity(node.identity));
        }
        let got = again.get(&root).expect("cached");
        assert_eq!(
            again.identity(got.identity),
            more.identity(more.get(&root).unwrap().identity)
        );
        // Nothing added: nothing written.
        std::fs::remove_file(dir.path().join("k").join("graph.bin")).unwrap();
        again.save().unwrap();
        assert!(!dir.path().join("k").join("graph.bin").exists());
    }

    #[test]
    fn prefetching_in_small_windows_skips_what_is_known_and_reads_the_rest() {
        let f = fixture::history();
        f.git(&["repack", "-adq"]);
        let repo = open_local(f.path()).expect("opens");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let cancel = AtomicBool::new(false);
        let mut g = Graph::in_memory();
        let mut buf = Vec::new();
        for rev in ["main", "side"] {
            let id = repo.rev_parse_single(rev).expect("resolves").detach();
            g.read(&repo, id, &mut buf).expect("reads");
        }
        // Windows of 2 of the pack's ~30 objects: some hold only known
        // or non-commit objects, and the ones after them are still read.
        let added = g
            .prefetch_in_windows(&repo, &pool, &cancel, 2)
            .expect("prefetches");
        assert_eq!((added, g.len()), (6, 8));
        let side = repo.rev_parse_single("side").expect("resolves").detach();
        let fresh = {
            let mut h = Graph::in_memory();
            h.read(&repo, side, &mut buf).expect("reads");
            h
        };
        let (a, b) = (g.get(&side).unwrap(), fresh.get(&side).unwrap());
        assert_eq!(g.parents(&a), fresh.parents(&b));
        assert_eq!(g.identity(a.identity), fresh.identity(b.identity));
    }

    #[test]
    fn a_damaged_or_inconsistent_body_is_an_empty_graph() {
        let mut e = Enc::default();
        e.u8(20);
        e.u32(0);
        e.u32(1);
        let null = ObjectId::null(gix::hash::Kind::Sha1);
        e.id(&null);
        e.id(&null);
        // Identity 0 of none.
        e.u32(0);
        e.i64(0);
        e.i32(0);
        e.i64(0);
        e.u32(0);
        assert!(Graph::in_memory().decode(&e.0).is_none());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("k")).unwrap();
        std::fs::write(dir.path().join("k").join("graph.bin"), b"quern-gcgrph").unwrap();
        assert!(Graph::load(dir.path(), "k").is_empty());
    }
}
