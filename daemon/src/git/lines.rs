//! The line diff behind each file's numstat: lines interned by hash into
//! tokens that keep byte ranges, then imara-diff's Myers (with git's
//! preprocessing), so its tables are reused from file to file.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use gix::diff::blob::{Algorithm, Diff, Token};

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
    /// Lines added and removed from `a` to `b`, by Myers with git's
    /// preprocessing, as `git diff --numstat` counts them.
    pub fn count(&mut self, a: &[u8], b: &[u8]) -> (u64, u64) {
        self.table.clear();
        self.tokens.clear();
        self.before.clear();
        self.after.clear();
        let sides = [a, b];
        for (side, data) in sides.iter().enumerate() {
            let mut start = 0usize;
            while start < data.len() {
                let end = data[start..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(data.len(), |i| start + i + 1);
                let line = &data[start..end];
                let h = hash_line(line);
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
                    if &sides[s as usize][from as usize..to as usize] == line {
                        break candidate;
                    }
                    candidate = prev;
                };
                if side == 0 {
                    self.before.push(Token(token));
                } else {
                    self.after.push(Token(token));
                }
                start = end;
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
