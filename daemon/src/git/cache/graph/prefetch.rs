//! The first walk's prefetch: every commit the packs store whole, read
//! into the graph in parallel before the walk, which would otherwise
//! read them one by one.

use std::sync::atomic::{AtomicBool, Ordering};

use gix::ObjectId;
use gix::bstr::ByteSlice;
use rayon::prelude::*;

use super::{Fields, Graph, Identities, Parsed};
use crate::git::repo::{GitError, pack_indices};

/// Pack entries per unit of parallel prefetching.
const PREFETCH_CHUNK: usize = 4096;

/// Pack index entries listed at a time (8 MiB of ids and offsets).
const PREFETCH_WINDOW: usize = 1 << 18;

impl Graph {
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

    pub(super) fn prefetch_in_windows(
        &mut self,
        repo: &gix::Repository,
        pool: &rayon::ThreadPool,
        cancel: &AtomicBool,
        window_len: usize,
    ) -> Result<usize, GitError> {
        let before = self.commits_read;
        let hash = repo.object_hash();
        // Every packed commit is looked up: indexed now.
        if self.index.is_none() {
            self.build_index();
        }
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
                let known = self.index.as_ref();
                window.retain(|(id, _)| {
                    known
                        .and_then(|m| m.get(id))
                        .is_none_or(|i| !self.nodes[*i as usize].read)
                });
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
        Ok(self.commits_read - before)
    }

    /// Adds the commits of a [`Part`], renumbering its identities.
    fn merge(&mut self, part: Part) {
        let global: Vec<u32> = part
            .identities
            .list
            .iter()
            .map(|(name, email)| self.identities.intern(name.as_bstr(), email.as_bstr()))
            .collect();
        self.ids.reserve(part.nodes.len());
        self.nodes.reserve(part.nodes.len());
        for (id, mut fields, parents) in part.nodes {
            let i = self.number(id);
            if self.nodes[i as usize].read {
                continue;
            }
            fields.identity = global[fields.identity as usize];
            self.fill(i, fields, &part.parents[parents]);
        }
    }
}

/// The commits one prefetching thread read from a run of pack entries,
/// with identities and parents numbered within the part.
#[derive(Default)]
struct Part {
    /// Each commit with its parents' range of `parents`.
    nodes: Vec<(ObjectId, Fields, std::ops::Range<usize>)>,
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
            let fields = p.fields(part.identities.intern(p.name, p.email));
            part.nodes.push((*id, fields, p.parents.clone()));
        }
        Ok(part)
    }
}
