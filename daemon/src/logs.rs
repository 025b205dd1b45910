//! Captured job output: one capped ring file per stream, written by a pump
//! per pipe, and read back (or followed live) by `Logs`.
//!
//! Every byte a stream ever received has an absolute position (bytes written
//! since the first attempt). The file `ID.out` holds the byte at position
//! `p` at offset `p % cap`: until a stream has written `cap` bytes that is a
//! plain file, and after that the pump writes over its oldest bytes in
//! place. Overwriting pages already in the page cache costs a copy, where
//! renaming a full file away and growing a new one cost an allocation and a
//! free of every page (2 GB of output: 0.16 s against 2.2 s, measured for
//! P13 in docs/benchmarks.md).
//!
//! Once a file has wrapped, a sidecar `ID.out.head` says where its newest
//! byte is. **On disk the sidecar's `reserved` is never below the end of a
//! write in progress, and its `total` never above what was written**: the
//! pump writes it before a write that reuses slots past its `reserved`
//! (leasing some slots ahead, so most writes need no write before them) and
//! again after, so a crash of the daemon at any point leaves
//! `[reserved - cap, total)` intact, which is what a reader takes. At a
//! clean end `reserved` comes back to `total`.
//!
//! Positions carry on from one attempt to the next. Files an older quernd
//! rotated into `.1` + current, or a ring of another cap, are rewritten as
//! one plain file when the next attempt starts, and positions start again
//! at 0 then.
//!
//! Readers wait on a watch channel for new bytes rather than polling, and a
//! live read is checked against the writer's reservation after it is made,
//! so a slow reader never returns bytes that were overwritten under it: it
//! is told how many it missed instead (a gap).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, watch};

use crate::job::JobId;

mod pump;
mod stored;
use pump::*;
use stored::*;

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn suffix(self) -> &'static str {
        match self {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
        }
    }
}

/// How much a follower takes per chunk. Small enough that what a slow
/// client has not taken yet (a few chunks in channels) stays small.
const FOLLOW_CHUNK: usize = 64 * 1024;

/// How much a pump's first read, in the runtime, takes.
const FIRST_CHUNK: usize = 4 * 1024;

/// A busy pump's first buffer, and what the pipe holds by default.
const SMALL_READ: usize = 64 * 1024;

/// What a pump whose pipe filled up reads at once, and the pipe size it
/// asks for then. 1 MiB is the most an unprivileged process may ask for
/// (`/proc/sys/fs/pipe-max-size`); a refusal keeps the default quietly.
const BIG_READ: usize = 1 << 20;

/// How long a busy pump lets a pipe that holds little fill up before it
/// takes it (see `pipe_bytes`).
#[cfg(target_os = "linux")]
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_micros(200);

/// After a gap, output resumes after the first newline within this many
/// bytes, so that a reader does not see half a line glued to the next.
const LINE_WINDOW: usize = 4096;

/// The most a non-follow `Logs` page holds per stream.
pub const PAGE_MAX: usize = 4 << 20;

/// The sidecar's first bytes; a file without them is not a sidecar.
const HEAD_MAGIC: &[u8; 8] = b"quernlg1";

/// The sidecar: magic, the data file's inode, ring size, total, reserved.
const HEAD_LEN: usize = 40;

/// The log directory and the registry of jobs whose output is being written.
pub struct LogStore {
    dir: PathBuf,
    cap: u64,
    live: Mutex<HashMap<JobId, Arc<LiveLog>>>,
    faults: Arc<Faults>,
}

/// Failures a test can make the log path meet, to prove it reports them.
/// Relaxed loads of two atomics per write or read cost nothing measurable.
#[derive(Debug)]
struct Faults {
    /// Writes fail with ENOSPC once a stream's file would pass this many
    /// bytes (`u64::MAX`: never).
    write_fails_past: AtomicU64,
    /// Reads of output fail with EIO.
    reads_fail: AtomicBool,
    /// Held (for writing) by a test, it holds up every look at the files
    /// earlier attempts left, as a slow disk would.
    #[cfg(test)]
    load_gate: std::sync::RwLock<()>,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            write_fails_past: AtomicU64::new(u64::MAX),
            reads_fail: AtomicBool::new(false),
            #[cfg(test)]
            load_gate: std::sync::RwLock::new(()),
        }
    }
}

impl Faults {
    fn read(&self) -> std::io::Result<()> {
        if self.reads_fail.load(Ordering::Relaxed) {
            return Err(std::io::Error::from_raw_os_error(nix::libc::EIO));
        }
        Ok(())
    }

    /// How many of `len` bytes ending at file offset `end` may be written.
    fn writable(&self, end: u64, len: usize) -> usize {
        let past = self.write_fails_past.load(Ordering::Relaxed);
        if end <= past {
            return len;
        }
        len.saturating_sub(usize::try_from(end - past).unwrap_or(usize::MAX))
    }
}

/// The output of a running job.
pub struct LiveLog {
    streams: [Arc<LiveStream>; 2],
}

/// One part of a stream, as a reader gets it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Piece {
    /// Bytes of the stream dropped just before `data`: overwritten because
    /// the stream passed its cap before they were read.
    pub skipped: u64,
    /// The absolute position of `data`'s first byte.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A page of stored output, for a `Logs` call that does not follow.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// What was read.
    pub piece: Piece,
    /// The position after the stream's newest byte.
    pub end: u64,
}

struct Paths {
    cur: PathBuf,
    /// Where an older quernd rotated the current file to.
    old: PathBuf,
    head: PathBuf,
}

impl Paths {
    fn new(dir: &Path, id: JobId, s: Stream) -> Paths {
        Paths {
            cur: dir.join(format!("{id}.{}", s.suffix())),
            old: dir.join(format!("{id}.{}.1", s.suffix())),
            head: dir.join(format!("{id}.{}.head", s.suffix())),
        }
    }
}

struct LiveStream {
    paths: Paths,
    cap: u64,
    faults: Arc<Faults>,
    state: Mutex<StreamState>,
    /// Held while the files earlier attempts left are looked at, so that
    /// the state lock is never held across file I/O (an async task takes
    /// it to mark a silent stream done).
    loading: Mutex<()>,
    /// Bumped after every write; readers wait on it.
    changed: watch::Sender<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct StreamState {
    /// Whether the fields below have been read off the files earlier
    /// attempts left (see [`LiveStream::load`]).
    loaded: bool,
    /// Where this attempt's output begins.
    attempt_start: u64,
    /// Bytes written so far, across attempts: readers may read up to here.
    total: u64,
    /// The end of the write in progress (>= `total`). Every slot it reaches
    /// has been or is being overwritten, so the oldest byte still kept is
    /// at `reserved - cap`.
    reserved: u64,
    /// The writer has finished.
    done: bool,
}

impl StreamState {
    fn kept_start(&self, ring: u64) -> u64 {
        self.reserved.saturating_sub(ring)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking pump must not take every reader down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LogStore {
    /// Log files live in `dir`; each stream keeps at most `cap` bytes.
    pub fn new(dir: PathBuf, cap: u64) -> std::io::Result<LogStore> {
        // Job output is private to the daemon's user, whatever the umask.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(LogStore {
            dir,
            cap,
            live: Mutex::new(HashMap::new()),
            faults: Arc::new(Faults::default()),
        })
    }

    /// Makes every later write of a stream's file fail with ENOSPC once the
    /// file would pass `bytes`, as a full disk would.
    #[cfg(test)]
    pub fn fail_writes_past(&self, bytes: u64) {
        self.faults.write_fails_past.store(bytes, Ordering::Relaxed);
    }

    /// Makes every later read of output fail with EIO.
    #[cfg(test)]
    pub fn fail_reads(&self) {
        self.faults.reads_fail.store(true, Ordering::Relaxed);
    }

    /// Registers a job's output as live and returns the handle its pumps
    /// write through. Output of earlier attempts is kept and appended to.
    pub fn start(&self, id: JobId) -> Arc<LiveLog> {
        let mk = |s: Stream| {
            let (changed, _) = watch::channel(0);
            Arc::new(LiveStream {
                paths: Paths::new(&self.dir, id, s),
                cap: self.cap,
                faults: self.faults.clone(),
                state: Mutex::new(StreamState::default()),
                loading: Mutex::new(()),
                changed,
            })
        };
        let streams = [mk(Stream::Stdout), mk(Stream::Stderr)];
        let live = Arc::new(LiveLog { streams });
        lock(&self.live).insert(id, live.clone());
        live
    }

    /// Forgets a job's live handle once its final state is stored; later
    /// readers go to the files.
    pub fn finish(&self, id: JobId) {
        lock(&self.live).remove(&id);
    }

    /// The live handle, while the job runs.
    pub fn live(&self, id: JobId) -> Option<Arc<LiveLog>> {
        lock(&self.live).get(&id).cloned()
    }

    /// Reads up to `limit` bytes of a stream from position `from` (its
    /// oldest kept byte if `None` or earlier). Blocks: call it on a blocking
    /// thread.
    pub fn read_page(
        &self,
        id: JobId,
        s: Stream,
        from: Option<u64>,
        limit: usize,
    ) -> std::io::Result<Page> {
        if let Some(live) = self.live(id) {
            return live.stream(s).read_page(from, limit);
        }
        self.faults.read()?;
        let stored = Stored::open(&Paths::new(&self.dir, id, s), self.cap)?;
        let kept = stored.kept();
        let mut piece = stored.read(from.unwrap_or(0), limit)?;
        align_after_gap(&mut piece);
        Ok(Page {
            piece,
            end: kept.end,
        })
    }

    /// The stored output of a job that is not running: the newest `cap`
    /// bytes. Blocks.
    pub fn read_stored(&self, id: JobId, s: Stream) -> std::io::Result<Vec<u8>> {
        let stored = Stored::open(&Paths::new(&self.dir, id, s), self.cap)?;
        let kept = stored.kept();
        let len = usize::try_from(kept.end - kept.start).unwrap_or(usize::MAX);
        Ok(stored.read(kept.start, len)?.data)
    }

    /// Deletes a job's files (not used for running jobs) and returns how
    /// many bytes they held.
    pub fn remove(&self, id: JobId) -> u64 {
        let mut freed = 0;
        for s in [Stream::Stdout, Stream::Stderr] {
            let p = Paths::new(&self.dir, id, s);
            for path in [p.cur, p.old, p.head] {
                let len = std::fs::symlink_metadata(&path).map_or(0, |m| m.len());
                if std::fs::remove_file(&path).is_ok() {
                    freed += len;
                }
            }
        }
        freed
    }

    /// The bytes a job's files hold.
    pub fn size(&self, id: JobId) -> u64 {
        [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .flat_map(|s| {
                let p = Paths::new(&self.dir, id, s);
                [p.cur, p.old, p.head]
            })
            .map(|path| std::fs::symlink_metadata(path).map_or(0, |m| m.len()))
            .sum()
    }

    /// The ids of every job that has files here, from their names.
    pub fn job_ids(&self) -> std::collections::BTreeSet<JobId> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Default::default();
        };
        entries
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.split('.').next()?.parse().ok()
            })
            .collect()
    }
}

/// After a gap, drops the start of `piece` up to and including its first
/// newline, if there is one within [`LINE_WINDOW`] bytes, so that what
/// follows a gap starts a line.
fn align_after_gap(piece: &mut Piece) {
    if piece.skipped == 0 {
        return;
    }
    let window = &piece.data[..piece.data.len().min(LINE_WINDOW)];
    if let Some(nl) = window.iter().position(|&b| b == b'\n') {
        piece.data.drain(..=nl);
        piece.skipped += nl as u64 + 1;
        piece.offset += nl as u64 + 1;
    }
}

impl LiveLog {
    fn stream(&self, s: Stream) -> &Arc<LiveStream> {
        match s {
            Stream::Stdout => &self.streams[0],
            Stream::Stderr => &self.streams[1],
        }
    }

    /// Copies everything from `src` (a pipe's read end) into the stream's
    /// file until EOF.
    ///
    /// The first read waits in the runtime's epoll: most short jobs print
    /// nothing, and their streams end there without a thread. Output that
    /// does come is copied on a blocking thread, because file writes may
    /// block.
    pub async fn pump(self: Arc<Self>, s: Stream, src: OwnedFd) {
        let stream = self.stream(s).clone();
        let (first, src) = match first_read(src).await {
            Ok(FirstRead::Eof) => {
                stream.finish();
                return;
            }
            Ok(FirstRead::Data(first, src)) => (first, src),
            Err((e, src)) => {
                tracing::warn!(file = %stream.paths.cur.display(), error = %e, "waiting for job output failed; copying it on a thread");
                (Vec::new(), src)
            }
        };
        let done = tokio::task::spawn_blocking(move || {
            stream.pump(first, File::from(src));
            stream.finish();
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "job output copier failed");
        }
    }

    /// Streams one output stream from absolute position `from` (this
    /// attempt's first byte if `None`) until the writer is done, sending
    /// pieces to `out`; a piece after bytes that were overwritten before
    /// they could be read says how many. Returns the position reached;
    /// returns early if `out` closes.
    pub async fn follow(
        &self,
        s: Stream,
        from: Option<u64>,
        out: mpsc::Sender<Piece>,
    ) -> std::io::Result<u64> {
        let stream = self.stream(s).clone();
        let mut rx = stream.changed.subscribe();
        let mut pos = from;
        // Bytes skipped and not reported yet.
        let mut gap = 0;
        loop {
            // Mark the current version seen before looking, so a write that
            // lands after the look still wakes us.
            rx.borrow_and_update();
            let st2 = stream.clone();
            let read = tokio::task::spawn_blocking(move || st2.read_at(pos))
                .await
                .map_err(std::io::Error::other)??;
            match read {
                Chunk::Data(mut piece) => {
                    let next = piece.offset + piece.data.len() as u64;
                    pos = Some(next);
                    piece.skipped += std::mem::take(&mut gap);
                    align_after_gap(&mut piece);
                    if piece.data.is_empty() {
                        gap = piece.skipped;
                        if gap == 0 && rx.changed().await.is_err() {
                            return Ok(next);
                        }
                        continue;
                    }
                    if out.send(piece).await.is_err() {
                        return Ok(next);
                    }
                }
                Chunk::Done(end) => return Ok(end),
                Chunk::Wait(at) => {
                    pos = Some(at);
                    if rx.changed().await.is_err() {
                        return Ok(at);
                    }
                }
            }
        }
    }
}

enum Chunk {
    /// Bytes (after a gap, if some were overwritten).
    Data(Piece),
    /// Nothing more will come; the stream ends at this position.
    Done(u64),
    /// Nothing new yet; the next byte will be at this position.
    Wait(u64),
}

impl LiveStream {
    /// Reads, once, where the output earlier attempts left ends. Done on
    /// first use rather than when the job starts: most short jobs print
    /// nothing and nobody follows them, and two `stat`s per stream were ~5%
    /// of a runtime worker's time per job in P3. Blocks; never called on
    /// the runtime.
    ///
    /// The pump calls this before its first write, so the files read here
    /// never include this attempt's output.
    fn load(&self) -> std::io::Result<()> {
        let _loading = lock(&self.loading);
        #[cfg(test)]
        let _gate = self
            .faults
            .load_gate
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if lock(&self.state).loaded {
            return Ok(());
        }
        let layout = self.settle()?;
        let mut st = lock(&self.state);
        st.loaded = true;
        st.attempt_start = layout.total;
        st.total = layout.total;
        st.reserved = layout.reserved;
        Ok(())
    }

    /// The layout earlier attempts left, rewritten as a plain file if it
    /// does not fit this daemon's cap (the cap was changed, or an older
    /// quernd rotated it into two files). Positions start again at 0 then.
    fn settle(&self) -> std::io::Result<Layout> {
        let stored = Stored::open(&self.paths, self.cap)?;
        let fits = match &stored {
            Stored::File(None, l) => return Ok(*l),
            Stored::File(Some(_), l) => l.ring == self.cap,
            Stored::Legacy(_) => false,
        };
        if fits {
            let Stored::File(_, l) = stored else {
                unreachable!("fits only for a file")
            };
            return Ok(l);
        }
        let kept = stored.kept();
        let keep = (kept.end - kept.start).min(self.cap);
        let data = stored
            .read(kept.end - keep, usize::try_from(keep).unwrap_or(usize::MAX))?
            .data;
        // Written aside and renamed over, so a crash leaves the old file or
        // the new one; a sidecar left behind names the old inode and is
        // ignored.
        let tmp = self.paths.cur.with_extension("settle");
        OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
            .write_all(&data)?;
        std::fs::rename(&tmp, &self.paths.cur)?;
        for stale in [&self.paths.head, &self.paths.old] {
            match std::fs::remove_file(stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let len = data.len() as u64;
        Ok(Layout {
            ring: self.cap,
            total: len,
            reserved: len,
        })
    }

    /// Marks the writer done and wakes readers.
    fn finish(&self) {
        // Not `load()`: a stream that ends silent need not read lengths.
        lock(&self.state).done = true;
        self.changed.send_modify(|v| *v += 1);
    }

    /// Reads what is available at absolute position `pos` (this attempt's
    /// first byte if `None`). Blocks.
    fn read_at(&self, pos: Option<u64>) -> std::io::Result<Chunk> {
        self.faults.read()?;
        self.load()?;
        let (pos, total, done) = {
            let st = lock(&self.state);
            (pos.unwrap_or(st.attempt_start), st.total, st.done)
        };
        if pos >= total {
            return Ok(if done {
                Chunk::Done(pos)
            } else {
                Chunk::Wait(pos)
            });
        }
        // A piece that is all gap (everything read was overwritten
        // meanwhile) still comes back: the follower carries the gap on to
        // the next bytes, and lines them up there.
        Ok(Chunk::Data(self.read_checked(pos, FOLLOW_CHUNK)?))
    }

    /// Reads up to `limit` bytes from `pos`, then drops what the writer
    /// reached meanwhile: those slots may hold newer bytes than the ones
    /// asked for.
    fn read_checked(&self, pos: u64, limit: usize) -> std::io::Result<Piece> {
        let layout = {
            let st = lock(&self.state);
            Layout {
                ring: self.cap,
                total: st.total,
                reserved: st.reserved,
            }
        };
        let file = match File::open(&self.paths.cur) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Piece {
                    skipped: 0,
                    offset: pos,
                    data: Vec::new(),
                });
            }
            Err(e) => return Err(e),
        };
        let mut piece = read_ring(&file, layout.ring, layout.kept(), pos, limit)?;
        let valid_from = lock(&self.state).kept_start(self.cap);
        if valid_from > piece.offset {
            let lost = (valid_from - piece.offset).min(piece.data.len() as u64);
            piece.data.drain(..lost as usize);
            piece.offset += lost;
            piece.skipped += lost;
        }
        Ok(piece)
    }

    /// A page of the live stream, for a `Logs` call that does not follow.
    fn read_page(&self, from: Option<u64>, limit: usize) -> std::io::Result<Page> {
        self.faults.read()?;
        self.load()?;
        let pos = from.unwrap_or(0);
        let mut piece = self.read_checked(pos, limit)?;
        align_after_gap(&mut piece);
        let end = lock(&self.state).total;
        Ok(Page { piece, end })
    }
}

#[cfg(test)]
mod tests;
