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

use gix::ObjectId;
use gix::bstr::{BStr, BString, ByteSlice};

use super::{CacheFile, Dec, Enc, len, repo_dir, slack};
use crate::git::repo::{GitError, read_object};

const TAG: &[u8; 4] = b"grph";

/// The format of the file's body; another version is not read (the
/// commits are read again). Version 1 named parents by id; 2 numbers
/// them.
const VERSION: u32 = 2;

/// No node: a root's first parent.
const NONE: u32 = u32::MAX;

/// Lookups of an id by scanning the graph's ids before an index of them
/// is built: a re-run after a few new commits looks up a few ids, for
/// which a scan costs less than indexing every commit.
const SCANS: u32 = 32;

/// One commit of the graph, found by its number (its place in the graph,
/// which the saved file keeps); a walk reaches parents by number, not by
/// looking their ids up.
#[derive(Clone, Copy, Debug)]
pub struct Node {
    pub tree: ObjectId,
    /// Its author's raw identity, an index for [`Graph::identity`].
    pub identity: u32,
    /// The author date, seconds since the epoch, and the author's offset
    /// from UTC in seconds (east positive).
    pub author_time: i64,
    pub author_offset: i32,
    /// The committer date, seconds since the epoch.
    pub committer_time: i64,
    /// Its first parent's number ([`NONE`] for a root): a walk finds it
    /// with the node instead of in the parents' table.
    first_parent: u32,
    /// A merge's parents, as a range of the parents' table.
    parents_at: u32,
    parents_len: u32,
    /// The last walk that reached it (see [`Graph::reach`]); not saved.
    walked: u32,
    /// Read from the repository; a node that is not is a commit named as
    /// a parent (or a tip) and not read yet.
    read: bool,
}

impl Node {
    /// A commit read: fields `f`, first parent `first_parent`, and, for a
    /// merge, its parents at `parents_at` in the parents' table.
    fn of(f: Fields, first_parent: u32, parents_at: u32, parents_len: u32, walked: u32) -> Node {
        Node {
            tree: f.tree,
            identity: f.identity,
            author_time: f.author_time,
            author_offset: f.author_offset,
            committer_time: f.committer_time,
            first_parent,
            parents_at,
            parents_len,
            walked,
            read: true,
        }
    }

    /// A commit known only by its id.
    fn unread(hash: gix::hash::Kind) -> Node {
        Node {
            tree: ObjectId::null(hash),
            identity: 0,
            author_time: 0,
            author_offset: 0,
            committer_time: 0,
            first_parent: NONE,
            parents_at: 0,
            parents_len: 0,
            walked: 0,
            read: false,
        }
    }
}

/// What a node holds of a commit, its parents given apart.
#[derive(Clone, Copy, Debug)]
struct Fields {
    tree: ObjectId,
    identity: u32,
    author_time: i64,
    author_offset: i32,
    committer_time: i64,
}

/// The commits of one repository that walks have read.
pub struct Graph {
    /// Where it is saved; `None` for a graph kept only in memory.
    file: Option<CacheFile>,
    /// Each node's commit id, by number.
    ids: Vec<ObjectId>,
    nodes: Vec<Node>,
    /// Merges' parents, by number.
    parents: Vec<u32>,
    /// Numbers by id, built at the [`SCANS`]th lookup.
    index: Option<gix::hashtable::HashMap<ObjectId, u32>>,
    scans: u32,
    /// Walks begun on this graph (see [`Graph::reach`]).
    walks: u32,
    /// The commits the last walk reached, in order: a rewrite numbers them
    /// so, and the next walk reads the nodes in the order they lie.
    order: Vec<u32>,
    /// Raw (trimmed) author names and emails.
    identities: Identities,
    /// Nodes loaded from the file: those past it are saved as new.
    loaded: u32,
    /// Loaded nodes that were not read then and have been since.
    filled: Vec<u32>,
    /// Commits read, and read since loading.
    commits_read: usize,
    added: usize,
    /// Parent ids of the commit being read, kept between reads.
    scratch: Vec<ObjectId>,
}

impl Graph {
    /// An empty graph that is never saved.
    pub fn in_memory() -> Graph {
        Graph {
            file: None,
            ids: Vec::new(),
            nodes: Vec::new(),
            parents: Vec::new(),
            index: None,
            scans: 0,
            walks: 0,
            order: Vec::new(),
            identities: Identities::default(),
            loaded: 0,
            filled: Vec::new(),
            commits_read: 0,
            added: 0,
            scratch: Vec::new(),
        }
    }

    /// The graph of repository `key` under `dir`; empty when there is none
    /// or it does not read. Marks the repository as used now.
    pub fn load(dir: &Path, key: &str) -> Graph {
        let path = repo_dir(dir, key).join("graph.bin");
        let mut graph = Graph::in_memory();
        let file = CacheFile::load(path, TAG, VERSION, |body| graph.decode(body));
        graph.file = Some(file);
        graph.loaded = graph.nodes.len() as u32;
        graph
    }

    /// How many commits it holds (read, not only named).
    pub fn len(&self) -> usize {
        self.commits_read
    }

    pub fn is_empty(&self) -> bool {
        self.commits_read == 0
    }

    /// How many commits walks read into it since it was loaded.
    pub fn added(&self) -> usize {
        self.added
    }

    /// Commit `id`, if read before (walks go by number).
    #[cfg(test)]
    pub fn get(&mut self, id: &ObjectId) -> Option<Node> {
        let i = self.find(id)?;
        let node = self.nodes[i as usize];
        node.read.then_some(node)
    }

    /// `node`'s parents' ids, in the commit's order.
    #[cfg(test)]
    pub fn parent_ids(&self, node: &Node) -> Vec<ObjectId> {
        self.parents(node).iter().map(|p| self.id(*p)).collect()
    }

    /// The number of commit `id`, if the graph has it (read or not).
    fn find(&mut self, id: &ObjectId) -> Option<u32> {
        if self.index.is_none() {
            if self.scans < SCANS {
                self.scans += 1;
                return self.ids.iter().position(|x| x == id).map(|i| i as u32);
            }
            self.build_index();
        }
        self.index.as_ref().and_then(|m| m.get(id).copied())
    }

    fn build_index(&mut self) {
        let mut index = gix::hashtable::HashMap::default();
        index.reserve(self.ids.len());
        for (i, id) in self.ids.iter().enumerate() {
            index.insert(*id, i as u32);
        }
        self.index = Some(index);
    }

    /// The number of commit `id`, added (not read) if new.
    pub fn number(&mut self, id: ObjectId) -> u32 {
        if let Some(i) = self.find(&id) {
            return i;
        }
        let i = self.nodes.len() as u32;
        self.ids.push(id);
        self.nodes.push(Node::unread(id.kind()));
        if let Some(index) = &mut self.index {
            index.insert(id, i);
        }
        i
    }

    /// The id of commit number `i`.
    pub fn id(&self, i: u32) -> ObjectId {
        self.ids[i as usize]
    }

    /// Begins a walk: a number for [`Graph::reach`] that no earlier walk
    /// of this graph used.
    pub fn begin_walk(&mut self) -> u32 {
        self.walks += 1;
        self.order.clear();
        self.walks
    }

    /// Marks commit number `i` reached by walk `walk`; false if it was
    /// already.
    pub fn reach(&mut self, i: u32, walk: u32) -> bool {
        let node = &mut self.nodes[i as usize];
        let first = node.walked != walk;
        node.walked = walk;
        if first {
            self.order.push(i);
        }
        first
    }

    /// `node`'s parents' numbers, in the commit's order.
    pub fn parents<'a>(&'a self, node: &'a Node) -> &'a [u32] {
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

    /// Reads commit `id` from `repo` (into `buf`) if the graph has not,
    /// and returns its number.
    pub fn read(
        &mut self,
        repo: &gix::Repository,
        id: ObjectId,
        buf: &mut Vec<u8>,
    ) -> Result<u32, GitError> {
        let i = self.number(id);
        self.node(repo, i, buf)?;
        Ok(i)
    }

    /// Commit number `i`, read from `repo` (into `buf`) first if the graph
    /// has not.
    pub fn node(
        &mut self,
        repo: &gix::Repository,
        i: u32,
        buf: &mut Vec<u8>,
    ) -> Result<Node, GitError> {
        let node = self.nodes[i as usize];
        if node.read {
            return Ok(node);
        }
        let id = self.id(i);
        let data = read_object(repo, &id, "commit", buf)?;
        let mut parents = std::mem::take(&mut self.scratch);
        parents.clear();
        let p = Parsed::new(id, data.data, repo.object_hash(), &mut parents)?;
        let fields = p.fields(self.identities.intern(p.name, p.email));
        self.fill(i, fields, &parents);
        self.scratch = parents;
        Ok(self.nodes[i as usize])
    }

    /// Records what was read of commit number `i`: its fields and its
    /// parents (numbered, added if new).
    fn fill(&mut self, i: u32, f: Fields, parent_ids: &[ObjectId]) {
        let first_parent = match parent_ids.first() {
            Some(p) => self.number(*p),
            None => NONE,
        };
        let parents_at = self.parents.len() as u32;
        if parent_ids.len() > 1 {
            self.parents.push(first_parent);
            for p in &parent_ids[1..] {
                let n = self.number(*p);
                self.parents.push(n);
            }
        }
        let walked = self.nodes[i as usize].walked;
        self.nodes[i as usize] =
            Node::of(f, first_parent, parents_at, parent_ids.len() as u32, walked);
        self.commits_read += 1;
        self.added += 1;
        if i < self.loaded {
            self.filled.push(i);
        }
    }

    /// Saves the commits read since loading, if the graph is kept on
    /// disk: appended as a segment, or with all the others in a rewrite
    /// when the file cannot take one.
    pub fn save(&self) -> io::Result<()> {
        match &self.file {
            Some(file) if self.added > 0 => file.save(
                || {
                    let fills = self.filled.iter().map(|i| (*i, true));
                    let new = (self.loaded..self.nodes.len() as u32).map(|i| (i, false));
                    self.encode(self.loaded, fills.chain(new), None)
                },
                || {
                    let (sequence, renumber) = self.walk_order();
                    self.encode(0, sequence.iter().map(|i| (*i, false)), Some(&renumber))
                },
            ),
            _ => Ok(()),
        }
    }

    /// Every node, those the last walk reached first in the order it
    /// reached them, the rest in their order; and each node's place in
    /// that sequence, by its number.
    fn walk_order(&self) -> (Vec<u32>, Vec<u32>) {
        let last = self.walks;
        let mut sequence = Vec::with_capacity(self.nodes.len());
        sequence.extend_from_slice(&self.order);
        sequence.extend(
            (0..self.nodes.len() as u32)
                .filter(|i| last == 0 || self.nodes[*i as usize].walked != last),
        );
        let mut renumber = vec![0; self.nodes.len()];
        for (place, i) in sequence.iter().enumerate() {
            renumber[*i as usize] = place as u32;
        }
        (sequence, renumber)
    }

    /// A segment's body: the hash length, the number of nodes before it,
    /// the identities its commits use, then its records, each a commit
    /// known by id only, a commit read, or a read of an earlier node
    /// known by id only (`(number, true)` in `records`). With `renumber`,
    /// numbers (of fills and parents) are written as it maps them.
    fn encode(
        &self,
        base: u32,
        records: impl Iterator<Item = (u32, bool)> + Clone,
        renumber: Option<&[u32]>,
    ) -> io::Result<Vec<u8>> {
        let number = |i: u32| renumber.map_or(i, |r| r[i as usize]);
        // Identities renumbered for the segment, so each segment stands
        // alone.
        let mut local: rustc_hash::FxHashMap<u32, u32> = Default::default();
        let mut used = Vec::new();
        for (i, _) in records.clone() {
            let node = &self.nodes[i as usize];
            if node.read {
                local.entry(node.identity).or_insert_with(|| {
                    used.push(node.identity);
                    (used.len() - 1) as u32
                });
            }
        }
        let mut e = Enc::default();
        let count = records.clone().count();
        e.0.reserve(count * 80);
        e.u8(self.ids.first().map_or(20, |id| id.as_bytes().len()) as u8);
        e.u32(base);
        e.u32(len(used.len())?);
        for global in &used {
            let (name, email) = self.identity(*global);
            e.bytes(name);
            e.bytes(email);
        }
        e.u32(len(count)?);
        for (i, fill) in records {
            let node = &self.nodes[i as usize];
            match (node.read, fill) {
                (false, _) => e.u8(RECORD_UNREAD),
                (true, false) => e.u8(RECORD_READ),
                (true, true) => {
                    e.u8(RECORD_FILL);
                    e.u32(number(i));
                }
            }
            e.id(&self.ids[i as usize]);
            if !node.read {
                continue;
            }
            e.id(&node.tree);
            e.u32(local[&node.identity]);
            e.i64(node.author_time);
            e.i32(node.author_offset);
            e.i64(node.committer_time);
            let parents = self.parents(node);
            e.u32(len(parents.len())?);
            for p in parents {
                e.u32(number(*p));
            }
        }
        Ok(e.0)
    }

    /// Adds a segment's commits; `None`, adding nothing, if it does not
    /// parse or does not follow the nodes before it (two jobs that
    /// appended at once: the second's numbers are not the graph's).
    fn decode(&mut self, body: &[u8]) -> Option<()> {
        let (ids, nodes, parents) = (self.ids.len(), self.nodes.len(), self.parents.len());
        let (read, index) = (self.commits_read, self.index.take());
        let fills = self.decode_records(body);
        match fills {
            Some(fills) => {
                for (i, node) in fills {
                    self.nodes[i as usize] = node;
                }
                self.index = index.filter(|_| ids == self.ids.len());
                Some(())
            }
            None => {
                self.ids.truncate(ids);
                self.nodes.truncate(nodes);
                self.parents.truncate(parents);
                self.commits_read = read;
                self.index = index;
                None
            }
        }
    }

    /// [`Graph::decode`]'s reading: adds the segment's new nodes and
    /// returns its reads of earlier ones, each checked to refer only to
    /// nodes the graph then has.
    fn decode_records(&mut self, body: &[u8]) -> Option<Vec<(u32, Node)>> {
        let mut d = Dec::new(body);
        let hash_len = usize::from(d.u8()?);
        if d.u32()? as usize != self.nodes.len() {
            return None;
        }
        let n_identities = d.u32()? as usize;
        let mut global = Vec::with_capacity(n_identities.min(body.len() / 8));
        for _ in 0..n_identities {
            let name = d.bytes()?.as_bstr();
            let email = d.bytes()?.as_bstr();
            global.push(self.identities.intern(name, email));
        }
        let n_records = d.u32()? as usize;
        // Bounded by what the body could hold: a damaged count cannot ask
        // for a huge allocation.
        let fits = n_records.min(body.len() / (hash_len + 1).max(1));
        let first_new = self.nodes.len();
        let first_parent_entry = self.parents.len();
        // With room for the next segments' few commits: growing a vector
        // of every commit copies it.
        self.ids.reserve(slack(fits));
        self.nodes.reserve(slack(fits));
        let mut fills = Vec::new();
        for _ in 0..n_records {
            let kind = d.u8()?;
            let filled = match kind {
                RECORD_UNREAD | RECORD_READ => None,
                RECORD_FILL => Some(d.u32()?),
                _ => return None,
            };
            let id = d.id(hash_len)?;
            if kind == RECORD_UNREAD {
                self.ids.push(id);
                self.nodes.push(Node::unread(id.kind()));
                continue;
            }
            let fields = Fields {
                tree: d.id(hash_len)?,
                identity: *global.get(d.u32()? as usize)?,
                author_time: d.i64()?,
                author_offset: d.i32()?,
                committer_time: d.i64()?,
            };
            let n_parents = d.u32()?;
            let parents_at = u32::try_from(self.parents.len()).ok()?;
            let mut first_parent = NONE;
            for k in 0..n_parents {
                let p = d.u32()?;
                if k == 0 {
                    first_parent = p;
                }
                if n_parents > 1 {
                    self.parents.push(p);
                }
            }
            let node = Node::of(fields, first_parent, parents_at, n_parents, 0);
            self.commits_read += 1;
            match filled {
                // A read of a node before this segment, known then by
                // this id only.
                Some(i) => {
                    let earlier = self.nodes.get(..first_new)?.get(i as usize)?;
                    if earlier.read || self.ids[i as usize] != id {
                        return None;
                    }
                    fills.push((i, node));
                }
                None => {
                    self.ids.push(id);
                    self.nodes.push(node);
                }
            }
        }
        if !d.is_empty() {
            return None;
        }
        // Every parent a node the graph has.
        let count = self.nodes.len() as u32;
        let in_graph = |n: &Node| n.first_parent == NONE || n.first_parent < count;
        let new_ok = self.nodes[first_new..].iter().all(in_graph);
        let fills_ok = fills.iter().all(|(_, n)| in_graph(n));
        let table_ok = self.parents[first_parent_entry..]
            .iter()
            .all(|p| *p < count);
        (new_ok && fills_ok && table_ok).then_some(fills)
    }
}

/// A segment's records (see [`Graph::encode`]).
const RECORD_UNREAD: u8 = 0;
const RECORD_READ: u8 = 1;
const RECORD_FILL: u8 = 2;

/// What the graph keeps of a commit, parsed from its object.
struct Parsed<'a> {
    tree: ObjectId,
    /// Where its parents start and end in the parser's output list.
    parents: std::ops::Range<usize>,
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
            parents: start..parents.len(),
            name: raw.name,
            email: raw.email,
            author_time: author_date.seconds,
            author_offset: author_date.offset,
            committer_time: committer.seconds(),
        })
    }

    /// The commit's fields, of author `identity`.
    fn fields(&self, identity: u32) -> Fields {
        Fields {
            tree: self.tree,
            identity,
            author_time: self.author_time,
            author_offset: self.author_offset,
            committer_time: self.committer_time,
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

mod prefetch;
#[cfg(test)]
mod tests;
