//! The fetch kind's files: the `.part` file a body streams into, its
//! atomic rename over `dest`, the validators of past downloads (for
//! conditional GET), and the checks of `dest` and `body_file`.
//!
//! Every write, fsync and hash runs on a blocking thread: the attempt's
//! task runs on a job thread shared with the scheduler and other jobs, and
//! a slow disk or a multi-GB hash there would stall them all.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks in flight between the transfer and the writer: a bound, so that
/// a disk slower than the network slows the transfer (TCP pushes back on
/// the server) rather than filling memory.
const IN_FLIGHT: usize = 16;

/// The `.part` path of `dest`.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// The lowercase hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why `dest` cannot be written, with the fix; `None` when it can. For the
/// submit-time check and again when the attempt runs (the file system may
/// have changed in between).
pub fn check_dest(dest: &Path) -> Option<String> {
    if dest.is_dir() {
        return Some(format!(
            "{} is a directory; give the path of the file to write",
            dest.display()
        ));
    }
    match dest.parent() {
        Some(parent) if parent.is_dir() => None,
        Some(parent) => Some(format!(
            "the directory {} does not exist; create it first",
            parent.display()
        )),
        None => Some(format!(
            "{} has no parent directory; give the path of a file",
            dest.display()
        )),
    }
}

/// Why `body_file` cannot be sent, with the fix; `None` when it can.
pub fn check_body_file(path: &Path) -> Option<String> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => None,
        Ok(_) => Some(format!(
            "{} is not a regular file; give the file whose content is the body",
            path.display()
        )),
        Err(e) => Some(format!(
            "{} cannot be read ({e}); give an existing file",
            path.display()
        )),
    }
}

/// What the writer wrote: the body's length and SHA-256, kept bytes
/// included.
#[derive(Debug)]
pub struct Written {
    pub len: u64,
    pub sha256: String,
}

/// How much a download writes before it has the disk start writing it out.
const WRITEBACK_WINDOW: u64 = 8 << 20;

/// Starts the disk writing `[from, from + len)` of `f` out, without
/// waiting: the file is durable only after the final `fsync`, but the disk
/// then writes while the body still arrives, and the `fsync` finds little
/// left. Waiting here for the window before (which would bound dirty pages
/// to two windows, as `sync_file_range(2)`'s notes suggest) stalled the
/// writer whenever the disk fell behind: P7a went from 0.98-1.02x of
/// `curl -o` to 0.94x (docs/benchmarks.md); the kernel's own dirty limits
/// bound memory anyway. std and nix have no call for it, hence libc. A
/// failure here is only lost speed: the final `fsync` reports any error.
#[cfg(target_os = "linux")]
fn write_behind(f: &File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open, owned by `f` for the whole call, and
    // sync_file_range reads no memory of ours.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn write_behind(_f: &File, _from: u64, _len: u64) {}

/// A blocking thread that appends a body to a file (or only hashes it),
/// fed chunks through a bounded channel.
///
/// tokio's blocking pool rather than the CPU pool: the work is mostly
/// waiting on the disk, one thread per download in progress, and the CPU
/// pool's few threads are for work that keeps a core busy.
pub struct Writer {
    tx: mpsc::Sender<Bytes>,
    task: JoinHandle<io::Result<Written>>,
}

impl Writer {
    /// Starts a writer into `part`, keeping its first `keep` bytes (hashed
    /// first, so the digest covers the whole body) and dropping the rest;
    /// `None` discards the body, hashing it only.
    pub fn start(part: Option<PathBuf>, keep: u64) -> Writer {
        let (tx, mut rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
        let task = tokio::task::spawn_blocking(move || {
            let mut hasher = Sha256::new();
            let mut file = match &part {
                Some(path) => Some(open_part(path, keep, &mut hasher)?),
                None => None,
            };
            let mut len = if file.is_some() { keep } else { 0 };
            let mut flushed = len;
            while let Some(chunk) = rx.blocking_recv() {
                if let Some(f) = &mut file {
                    f.write_all(&chunk)?;
                }
                hasher.update(&chunk);
                len += chunk.len() as u64;
                if let Some(f) = &file
                    && len - flushed >= WRITEBACK_WINDOW
                {
                    write_behind(f, flushed, len - flushed);
                    flushed = len;
                }
            }
            // Durable before it may be renamed over dest; the rename itself
            // is made durable by `finish_part`.
            if let Some(f) = &file {
                f.sync_all()?;
            }
            Ok(Written {
                len,
                sha256: hex(&hasher.finalize()),
            })
        });
        Writer { tx, task }
    }

    /// Hands a chunk to the writer; waits while it is behind. `false` when
    /// the writer has stopped (an I/O error, which [`Writer::finish`]
    /// returns).
    pub async fn write(&self, chunk: Bytes) -> bool {
        self.tx.send(chunk).await.is_ok()
    }

    /// Waits for every chunk to be written and the file synced.
    pub async fn finish(self) -> io::Result<Written> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| io::Error::other(format!("the writer thread failed: {e}")))?
    }
}

/// Opens `path` for appending after its first `keep` bytes, which are
/// hashed into `hasher`; creates or empties it when `keep` is 0.
fn open_part(path: &Path, keep: u64, hasher: &mut Sha256) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(keep == 0)
        .open(path)?;
    if keep > 0 {
        file.set_len(keep)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = keep;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while being resumed", path.display()),
                ));
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        file.seek(SeekFrom::Start(keep))?;
    }
    Ok(file)
}

/// Renames the complete `part` over `dest` and syncs the directory, so
/// that after a crash dest is either the old file or the whole new one.
/// Returns dest's size and mtime, for the validators.
pub fn finish_part(part: &Path, dest: &Path) -> io::Result<(u64, i128)> {
    fs::rename(part, dest)?;
    if let Some(dir) = dest.parent() {
        File::open(dir)?.sync_all()?;
    }
    stamp(dest)
}

/// A file's size and mtime (nanoseconds since the epoch): what tells that
/// dest is the file a past download left.
pub fn stamp(path: &Path) -> io::Result<(u64, i128)> {
    let m = fs::metadata(path)?;
    let mtime = match m.modified()?.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    Ok((m.len(), mtime))
}

/// Removes `path` if it is there.
pub fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The validators of the last successful download of a URL to a dest,
/// and the dest it left: `state_dir/fetch/validators/<sha256(url \0 dest)>`,
/// as JSON with defaults (read by later builds).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub dest: String,
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub last_modified: Option<String>,
    /// dest's size after the download.
    #[serde(default)]
    pub size: u64,
    /// dest's mtime after the download, in nanoseconds since the epoch.
    #[serde(default)]
    pub mtime_nanos: i128,
}

/// Where the validators of `url` to `dest` are kept.
pub fn validators_path(state_dir: &Path, url: &str, dest: &Path) -> PathBuf {
    let mut h = Sha256::new();
    h.update(url.as_bytes());
    h.update([0]);
    h.update(dest.as_os_str().as_encoded_bytes());
    state_dir
        .join("fetch")
        .join("validators")
        .join(hex(&h.finalize()))
}

impl Validators {
    /// The validators saved for `url` to `dest`, if dest is still the file
    /// that download left (same size and mtime): otherwise a conditional
    /// request could keep a file someone changed since.
    pub fn load_current(state_dir: &Path, url: &str, dest: &Path) -> Option<Validators> {
        let bytes = fs::read(validators_path(state_dir, url, dest)).ok()?;
        let v: Validators = serde_json::from_slice(&bytes).ok()?;
        let (size, mtime) = stamp(dest).ok()?;
        let same = v.url == url
            && Path::new(&v.dest) == dest
            && v.size == size
            && v.mtime_nanos == mtime
            && (v.etag.is_some() || v.last_modified.is_some());
        same.then_some(v)
    }

    /// Saves them (or forgets old ones, when the server sent none), by a
    /// rename so that a crash leaves the old or the new file.
    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        let path = validators_path(state_dir, &self.url, Path::new(&self.dest));
        if self.etag.is_none() && self.last_modified.is_none() {
            return remove_if_there(&path);
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec(self).unwrap_or_default())?;
        // Not fsynced: losing it in a power cut costs one full download
        // instead of a 304, never a wrong file.
        fs::rename(&tmp, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_resumed_writer_hashes_the_kept_bytes_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("f.part");
        fs::write(&part, b"hello, garbage").unwrap();
        let w = Writer::start(Some(part.clone()), 7);
        assert!(w.write(Bytes::from_static(b"world")).await);
        let done = w.finish().await.unwrap();
        assert_eq!(fs::read(&part).unwrap(), b"hello, world");
        assert_eq!(done.len, 12);
        assert_eq!(done.sha256, hex(&Sha256::digest(b"hello, world")));
    }

    #[tokio::test]
    async fn a_discarding_writer_only_counts_and_hashes() {
        let w = Writer::start(None, 0);
        assert!(w.write(Bytes::from_static(b"abc")).await);
        let done = w.finish().await.unwrap();
        assert_eq!(done.len, 3);
        assert_eq!(done.sha256, hex(&Sha256::digest(b"abc")));
    }

    #[test]
    fn validators_apply_only_to_the_file_they_left() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d");
        fs::write(&dest, b"v1").unwrap();
        let (size, mtime_nanos) = stamp(&dest).unwrap();
        let v = Validators {
            url: "http://a/x".into(),
            dest: dest.to_string_lossy().into(),
            etag: Some("\"1\"".into()),
            last_modified: None,
            size,
            mtime_nanos,
        };
        v.save(dir.path()).unwrap();
        assert_eq!(
            Validators::load_current(dir.path(), "http://a/x", &dest),
            Some(v)
        );
        assert_eq!(
            Validators::load_current(dir.path(), "http://a/y", &dest),
            None
        );
        fs::write(&dest, b"changed").unwrap();
        assert_eq!(
            Validators::load_current(dir.path(), "http://a/x", &dest),
            None
        );
    }

    #[test]
    fn dest_checks_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_dest(dir.path()).unwrap().contains("is a directory"));
        assert!(
            check_dest(&dir.path().join("no/such"))
                .unwrap()
                .contains("does not exist")
        );
        assert_eq!(check_dest(&dir.path().join("ok")), None);
        assert!(
            check_body_file(&dir.path().join("none"))
                .unwrap()
                .contains("existing file")
        );
    }
}
