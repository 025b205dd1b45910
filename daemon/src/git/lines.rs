//! The line diff behind each file's numstat: a file's lines are split and
//! hashed once ([`Lines`], kept with the blob, which is often both a new
//! side and, later, an old side), then interned into tokens that keep
//! byte ranges and diffed by imara-diff's Myers (with git's
//! preprocessing), so its tables are reused from file to file.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use gix::bstr::ByteSlice;
use gix::diff::blob::{Algorithm, Diff, Token};

/// A file's lines: where each ends (past its newline, if it has one) and
/// its hash. Offsets are `u32`: files past git's big-file threshold
/// (512 MiB) are binary and never split.
#[derive(Clone, Debug, Default)]
pub struct Lines {
    ends: Vec<u32>,
    hashes: Vec<u64>,
}

impl Lines {
    /// `data`'s lines, each with its terminator; a last line without a
    /// newline is a line too, as git counts it.
    pub fn of(data: &[u8]) -> Lines {
        let mut lines = Lines::default();
        let mut start = 0usize;
        while start < data.len() {
            let end = data[start..]
                .find_byte(b'\n')
                .map_or(data.len(), |i| start + i + 1);
            lines.ends.push(end as u32);
            lines.hashes.push(hash_line(&data[start..end]));
            start = end;
        }
        lines
    }

    /// How many lines.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes this takes in memory, for the caches that keep it.
    pub fn heap_size(&self) -> usize {
        self.ends.capacity() * 4 + self.hashes.capacity() * 8
    }

    /// Line `i`'s byte range.
    fn range(&self, i: usize) -> (usize, usize) {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        (start, self.ends[i] as usize)
    }
}

/// The line diff, with its own interner: imara-diff's borrows the lines,
/// which would tie it to one pair of buffers; this one keeps byte ranges,
/// so its tables are reused from file to file.
#[derive(Default)]
pub struct LineDiff {
    /// Line hash to the newest token with that hash.
    table: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
    /// Per token: the side (0 old, 1 new) and byte range of its first
    /// line, and the previous token with the same hash (or `u32::MAX`).
    tokens: Vec<(u8, u32, u32, u32)>,
    before: Vec<Token>,
    after: Vec<Token>,
    diff: Diff,
}

impl LineDiff {
    /// Lines added and removed from `a` to `b` (each a file's bytes and its
    /// [`Lines`]), by Myers with git's preprocessing, as `git diff
    /// --numstat` counts them.
    pub fn count(&mut self, a: (&[u8], &Lines), b: (&[u8], &Lines)) -> (u64, u64) {
        self.table.clear();
        self.tokens.clear();
        self.before.clear();
        self.after.clear();
        let sides = [a, b];
        for (side, (data, lines)) in sides.iter().enumerate() {
            for (i, &h) in lines.hashes.iter().enumerate() {
                let (start, end) = lines.range(i);
                let line = &data[start..end];
                let mut candidate = self.table.get(&h).copied().unwrap_or(u32::MAX);
                let token = loop {
                    if candidate == u32::MAX {
                        let t = self.tokens.len() as u32;
                        let prev = self.table.insert(h, t).unwrap_or(u32::MAX);
                        self.tokens
                            .push((side as u8, start as u32, end as u32, prev));
                        break t;
                    }
                    let (s, from, to, prev) = self.tokens[candidate as usize];
                    if &sides[s as usize].0[from as usize..to as usize] == line {
                        break candidate;
                    }
                    candidate = prev;
                };
                if side == 0 {
                    self.before.push(Token(token));
                } else {
                    self.after.push(Token(token));
                }
            }
        }
        self.diff.compute_with(
            Algorithm::Myers,
            &self.before,
            &self.after,
            self.tokens.len() as u32,
        );
        (
            u64::from(self.diff.count_additions()),
            u64::from(self.diff.count_removals()),
        )
    }
}

/// A line's hash: 8 bytes at a time, multiply and rotate. Collisions only
/// cost a byte comparison, so it need not be strong, only quick.
fn hash_line(line: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = line.len() as u64;
    let mut chunks = line.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(31);
    }
    let mut w = [0u8; 8];
    w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K);
    h ^ (h >> 29)
}

/// The table's keys are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
