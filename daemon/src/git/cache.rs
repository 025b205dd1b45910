//! The git kind's caches, so a re-analysis after new commits reads and
//! diffs only the new ones: the walked commit graph ([`Graph`]) and each
//! commit's numstat under one set of options ([`NumstatCache`]). Both live
//! under `<state>/git/cache/<repo key>/`, one file each.
//!
//! Files, not the store: a kind never touches the store (see `runner`),
//! and a cache is only ever a shortcut: a missing, damaged or foreign file
//! means the commits are read and diffed again. Each file is binary, with
//! a magic and a format version, then segments each with its own CRC-32.
//! A run that adds entries appends them as one segment, so a re-run after
//! a few new commits writes a few hundred bytes, not the whole cache; a
//! torn or flipped segment is noticed, never believed, and the file is
//! then rewritten whole (to a temp file renamed over it), as it is when it
//! has grown to many segments.
//!
//! Retention: a repository's directory is touched each time a job uses
//! it, and [`prune`] removes those no job has used for the retention age.

mod graph;
mod numstats;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gix::ObjectId;
use sha2::{Digest, Sha256};

pub use graph::Graph;
pub use numstats::NumstatCache;

/// The key of a repository's cache: its mirror's key, or for a local
/// path a hash of the path.
pub fn repo_key(repo: &str, mirror_key: Option<&str>) -> String {
    match mirror_key {
        Some(k) => k.to_string(),
        None => {
            let digest = Sha256::digest(repo.as_bytes());
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("local-{hex}")
        }
    }
}

/// The cache directory of repository `key` under `dir`, made if missing
/// and marked as used now (for [`prune`]).
fn repo_dir(dir: &Path, key: &str) -> PathBuf {
    let repo_dir = dir.join(key);
    let _ = std::fs::create_dir_all(&repo_dir);
    let _ = std::fs::File::open(&repo_dir).and_then(|f| f.set_modified(SystemTime::now()));
    repo_dir
}

/// Removes the caches of repositories no job has used for `max_age`.
/// Returns how many it removed.
pub fn prune(dir: &Path, max_age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > max_age);
        if old && std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Room for `n` things and the few more a re-run adds: an eighth more.
/// Room never used is never touched, so it costs no memory.
pub(crate) fn slack(n: usize) -> usize {
    n + n / 8 + 64
}

/// Every cache file starts with this, then its own 4-byte tag and a
/// format version (u32).
const MAGIC: &[u8; 8] = b"quern-gc";

/// The header's length: magic, tag, version.
const HEADER: usize = MAGIC.len() + 8;

/// A file of more segments than this is rewritten whole, as one, so that
/// loading stays one pass over few pieces.
const MAX_SEGMENTS: usize = 64;

/// A cache file as read: its segments' bodies, and whether the next save
/// may append a segment (it may not when the file was missing, foreign,
/// damaged, or has [`MAX_SEGMENTS`]; then it is rewritten whole).
struct Contents {
    bytes: Bytes,
    segments: Vec<std::ops::Range<usize>>,
    appendable: bool,
}

impl Contents {
    fn bodies(&self) -> impl Iterator<Item = &[u8]> {
        self.segments.iter().map(|r| &self.bytes[r.clone()])
    }
}

/// Reads the cache file at `path`: a header naming `tag` and `version`,
/// then segments, each its body's length (u32), the body, and the body's
/// CRC-32. Reading stops at the first segment that is torn or does not
/// check; the segments before it stand.
fn read_file(path: &Path, tag: &[u8; 4], version: u32) -> Contents {
    let mut contents = Contents {
        bytes: Bytes::map(path),
        segments: Vec::new(),
        appendable: false,
    };
    let bytes = &contents.bytes;
    let mut d = Dec::new(bytes);
    let header_ok =
        d.take(MAGIC.len()) == Some(MAGIC) && d.take(4) == Some(tag) && d.u32() == Some(version);
    if !header_ok {
        return contents;
    }
    let mut at = HEADER;
    while at < bytes.len() {
        let mut d = Dec::new(&bytes[at..]);
        let Some(body) = d.bytes() else {
            return contents;
        };
        if d.array::<4>() != Some(crc32fast::hash(body).to_le_bytes()) {
            return contents;
        }
        contents.segments.push(at + 4..at + 4 + body.len());
        at += body.len() + 8;
    }
    contents.appendable = contents.segments.len() < MAX_SEGMENTS;
    contents
}

/// A cache file's bytes, mapped rather than read: a re-run decodes
/// megabytes of cache, and copying them into fresh heap pages first cost
/// as much as the decoding (each page faulted in and zeroed).
enum Bytes {
    Mapped(memmap2::Mmap),
    /// Missing, unreadable or not mappable: an empty cache.
    Empty,
}

impl Bytes {
    fn map(path: &Path) -> Bytes {
        let Ok(file) = std::fs::File::open(path) else {
            return Bytes::Empty;
        };
        // SAFETY: the mapping is read while the file may change only in
        // ways that leave the mapped bytes as they were: a save appends
        // past the mapped length or renames a new file over the path (this
        // mapping keeps the old file), and prune unlinks. Nothing of quernd
        // truncates a cache file in place. One cut short by hand under a
        // running job could fault the read, as git's own packs could;
        // gix maps those too.
        match unsafe { memmap2::Mmap::map(&file) } {
            Ok(map) => Bytes::Mapped(map),
            Err(_) => Bytes::Empty,
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Empty => &[],
        }
    }
}

/// `body` framed as a segment.
fn segment(out: &mut Vec<u8>, body: &[u8]) -> io::Result<()> {
    out.extend_from_slice(&len(body.len())?.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    Ok(())
}

/// Adds `body` as one segment to the end of the file at `path`, in one
/// `write` to a file opened for appending: two jobs appending at once
/// each land whole, one after the other.
fn append_file(path: &Path, body: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut out = Vec::with_capacity(body.len() + 8);
    segment(&mut out, body)?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(&out)
}

/// Writes the file at `path` whole, as a header and `body` as its one
/// segment: to a temp file, then renamed over the old one, so a crash
/// leaves the old file or the new.
fn rewrite_file(path: &Path, tag: &[u8; 4], version: u32, body: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(HEADER + body.len() + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(tag);
    out.extend_from_slice(&version.to_le_bytes());
    segment(&mut out, body)?;
    // Named for this process and thread: two jobs saving at once must
    // not write into one temp file.
    let tmp = path.with_extension(format!(
        "tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&tmp, out).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    std::fs::rename(&tmp, path)
}

/// A cache's file as the cache holds it: where it is, its tag and
/// version, and whether the next save may append a segment.
struct CacheFile {
    path: PathBuf,
    tag: &'static [u8; 4],
    version: u32,
    appendable: bool,
}

impl CacheFile {
    /// Reads the file at `path`, handing each segment's body to `decode`.
    /// A body that checks but does not decode makes the next save a
    /// rewrite (its entries are read or diffed again).
    fn load(
        path: PathBuf,
        tag: &'static [u8; 4],
        version: u32,
        mut decode: impl FnMut(&[u8]) -> Option<()>,
    ) -> CacheFile {
        let contents = read_file(&path, tag, version);
        let mut appendable = contents.appendable;
        for body in contents.bodies() {
            if decode(body).is_none() {
                appendable = false;
            }
        }
        CacheFile {
            path,
            tag,
            version,
            appendable,
        }
    }

    /// Saves what a run added: `added` (a body of the new entries alone)
    /// appended as a segment, or `all` (a body of every entry) in a
    /// rewrite when the file cannot take one.
    fn save(
        &self,
        added: impl FnOnce() -> io::Result<Vec<u8>>,
        all: impl FnOnce() -> io::Result<Vec<u8>>,
    ) -> io::Result<()> {
        if self.appendable {
            append_file(&self.path, &added()?)
        } else {
            rewrite_file(&self.path, self.tag, self.version, &all()?)
        }
    }
}

/// Little-endian encoding of a cache file's body.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Counts and indices are u32: a cache past 4 billion of anything is
    /// not written (see [`len`]).
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn id(&mut self, id: &gix::oid) {
        self.0.extend_from_slice(id.as_bytes());
    }
}

/// `n` as a u32 count, or an error that keeps the cache unwritten.
fn len(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::other("more than 2^32 entries for the cache file"))
}

/// Checked reading of a body [`Enc`] wrote: every read is `None` past the
/// end, so a short or damaged body is an empty cache, never a panic.
struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// An object id of `len` bytes (the repository's hash length).
    fn id(&mut self, len: usize) -> Option<ObjectId> {
        Some(
            gix::hash::oid::try_from_bytes(self.take(len)?)
                .ok()?
                .to_owned(),
        )
    }
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(c: &Contents) -> Vec<Vec<u8>> {
        c.bodies().map(|b| b.to_vec()).collect()
    }

    #[test]
    fn segments_read_back_until_the_first_that_does_not_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let missing = read_file(&path, b"test", 3);
        assert!(missing.segments.is_empty() && !missing.appendable);
        rewrite_file(&path, b"test", 3, b"one").unwrap();
        append_file(&path, b"two").unwrap();
        append_file(&path, b"").unwrap();
        let c = read_file(&path, b"test", 3);
        assert_eq!(bodies(&c), [&b"one"[..], b"two", b""]);
        assert!(c.appendable);
        // Another tag or version is not this file.
        assert!(read_file(&path, b"tost", 3).segments.is_empty());
        assert!(read_file(&path, b"test", 4).segments.is_empty());
        // A flipped bit in the second segment: the first stands, and the
        // file is rewritten, not appended to, next time.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 11 + 5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let c = read_file(&path, b"test", 3);
        assert_eq!(bodies(&c), [&b"one"[..]]);
        assert!(!c.appendable);
        // A torn end likewise.
        rewrite_file(&path, b"test", 3, b"one").unwrap();
        append_file(&path, b"two").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let c = read_file(&path, b"test", 3);
        assert_eq!(bodies(&c), [&b"one"[..]]);
        assert!(!c.appendable);
        // A rewrite leaves one segment and no temp file.
        rewrite_file(&path, b"test", 3, b"all").unwrap();
        assert_eq!(bodies(&read_file(&path, b"test", 3)), [&b"all"[..]]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_of_many_segments_is_to_be_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        rewrite_file(&path, b"test", 1, b"0").unwrap();
        for _ in 1..MAX_SEGMENTS - 1 {
            append_file(&path, b"n").unwrap();
        }
        assert!(read_file(&path, b"test", 1).appendable);
        append_file(&path, b"n").unwrap();
        let c = read_file(&path, b"test", 1);
        assert_eq!(c.segments.len(), MAX_SEGMENTS);
        assert!(!c.appendable);
    }

    #[test]
    fn a_short_body_reads_as_none_not_a_panic() {
        let mut e = Enc::default();
        e.bytes(b"abc");
        e.u64(7);
        let full = e.0;
        for cut in 0..full.len() {
            let mut d = Dec::new(&full[..cut]);
            let got = d.bytes().and_then(|b| Some((b.to_vec(), d.u64()?)));
            assert_eq!(got, None, "cut at {cut}");
        }
        let mut d = Dec::new(&full);
        assert_eq!(d.bytes(), Some(&b"abc"[..]));
        assert_eq!(d.u64(), Some(7));
        assert!(d.is_empty());
    }

    #[test]
    fn old_caches_are_pruned_and_used_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        repo_dir(dir.path(), "k");
        repo_dir(dir.path(), "old");
        let old = std::fs::File::open(dir.path().join("old")).unwrap();
        old.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        assert_eq!(prune(dir.path(), Duration::from_secs(60)), 1);
        assert!(!dir.path().join("old").exists());
        assert!(dir.path().join("k").exists());
    }

    #[test]
    fn local_keys_differ_by_path_and_mirrors_keep_theirs() {
        assert_ne!(repo_key("/a", None), repo_key("/b", None));
        assert_eq!(repo_key("https://x/y", Some("x-y-abc")), "x-y-abc");
    }
}
