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

/// Where a stream's bytes are in its file.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// Slots in the ring: the byte at position `p` is at offset `p % ring`.
    ring: u64,
    /// Bytes written, across attempts.
    total: u64,
    /// See [`StreamState::reserved`].
    reserved: u64,
}

impl Layout {
    fn kept(&self) -> std::ops::Range<u64> {
        self.reserved.saturating_sub(self.ring).min(self.total)..self.total
    }
}

/// A stream's files as a job that is not running left them.
enum Stored {
    /// A ring file (or plain file), and where its bytes are.
    File(Option<File>, Layout),
    /// An older quernd's rotated pair, read whole: the newest `cap` bytes.
    Legacy(Vec<u8>),
}

impl Stored {
    fn open(paths: &Paths, cap: u64) -> std::io::Result<Stored> {
        if paths.old.exists() {
            let mut data = read_or_empty(&paths.old)?;
            data.extend(read_or_empty(&paths.cur)?);
            let cap = usize::try_from(cap).unwrap_or(usize::MAX);
            if data.len() > cap {
                data.drain(..data.len() - cap);
            }
            return Ok(Stored::Legacy(data));
        }
        let file = match File::open(&paths.cur) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let empty = Layout {
                    ring: cap,
                    total: 0,
                    reserved: 0,
                };
                return Ok(Stored::File(None, empty));
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let layout = match read_head(&paths.head, meta.ino())? {
            Some(l) => l,
            // A plain file: position p at offset p.
            None => Layout {
                ring: meta.len().max(cap),
                total: meta.len(),
                reserved: meta.len(),
            },
        };
        Ok(Stored::File(Some(file), layout))
    }

    fn kept(&self) -> std::ops::Range<u64> {
        match self {
            Stored::File(_, l) => l.kept(),
            Stored::Legacy(d) => 0..d.len() as u64,
        }
    }

    fn read(&self, from: u64, limit: usize) -> std::io::Result<Piece> {
        match self {
            Stored::File(None, _) => Ok(Piece::default()),
            Stored::File(Some(f), l) => read_ring(f, l.ring, l.kept(), from, limit),
            Stored::Legacy(d) => {
                let start = from.min(d.len() as u64) as usize;
                let end = start.saturating_add(limit).min(d.len());
                Ok(Piece {
                    skipped: 0,
                    offset: start as u64,
                    data: d[start..end].to_vec(),
                })
            }
        }
    }
}

/// Reads the sidecar of the data file with inode `ino`. A sidecar left by
/// a file that was since replaced (its inode differs) is ignored.
fn read_head(path: &Path, ino: u64) -> std::io::Result<Option<Layout>> {
    let raw = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if raw.len() < HEAD_LEN || &raw[..8] != HEAD_MAGIC {
        return Ok(None);
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[8 * i..8 * i + 8]);
        u64::from_le_bytes(b)
    };
    if word(1) != ino || word(2) == 0 {
        return Ok(None);
    }
    Ok(Some(Layout {
        ring: word(2),
        total: word(3),
        reserved: word(4).max(word(3)),
    }))
}

fn head_bytes(ino: u64, l: &Layout) -> [u8; HEAD_LEN] {
    let mut b = [0u8; HEAD_LEN];
    b[..8].copy_from_slice(HEAD_MAGIC);
    for (i, w) in [ino, l.ring, l.total, l.reserved].into_iter().enumerate() {
        b[8 * (i + 1)..8 * (i + 2)].copy_from_slice(&w.to_le_bytes());
    }
    b
}

/// Reads up to `limit` bytes from position `from` of a ring of `ring`
/// slots whose kept bytes are `kept`. Bytes before `kept` are reported as
/// skipped.
fn read_ring(
    file: &File,
    ring: u64,
    kept: std::ops::Range<u64>,
    from: u64,
    limit: usize,
) -> std::io::Result<Piece> {
    let start = from.max(kept.start);
    let skipped = start - from.min(start);
    let end = kept.end.min(start.saturating_add(limit as u64)).max(start);
    let mut data = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
    let mut got = 0;
    while got < data.len() {
        let pos = start + got as u64;
        // One contiguous run of slots at a time: a read never crosses the
        // ring's end.
        let slot = pos % ring;
        let run = (data.len() - got).min(usize::try_from(ring - slot).unwrap_or(usize::MAX));
        let n = file.read_at(&mut data[got..got + run], slot)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    data.truncate(got);
    Ok(Piece {
        skipped,
        offset: start,
        data,
    })
}

fn read_or_empty(p: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(p) {
        Ok(d) => Ok(d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
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

/// What the first read of a pipe found.
enum FirstRead {
    /// The write ends all closed with nothing written.
    Eof,
    /// Some bytes, and the pipe (blocking again) for the rest.
    Data(Vec<u8>, OwnedFd),
}

/// Waits, without a thread, until `src` has bytes or reaches EOF, and reads
/// what is there. On failure the pipe comes back for a blocking copy.
async fn first_read(src: OwnedFd) -> Result<FirstRead, (std::io::Error, OwnedFd)> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;
    let set_nonblocking = |fd: &OwnedFd, on: bool| -> std::io::Result<()> {
        let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
        let flags = if on {
            flags | OFlag::O_NONBLOCK
        } else {
            flags - OFlag::O_NONBLOCK
        };
        fcntl(fd, FcntlArg::F_SETFL(flags))?;
        Ok(())
    };
    if let Err(e) = set_nonblocking(&src, true) {
        return Err((e, src));
    }
    // SAFETY: the AsyncFd owns the descriptor until into_inner gives it
    // back; nothing else closes or replaces it meanwhile.
    let afd = match unsafe { AsyncFd::register_with_interest(src, Interest::READABLE) } {
        Ok(afd) => afd,
        Err(e) => {
            let (src, e) = e.into_parts();
            return Err((e, src));
        }
    };
    // Small: most streams end with nothing, and zeroing a whole buffer for
    // each of them was ~3% of a runtime worker's time in P3. The blocking
    // copy reads the rest in bigger reads.
    let mut buf = vec![0u8; FIRST_CHUNK];
    let read = loop {
        let mut guard = match afd.readable().await {
            Ok(g) => g,
            Err(e) => break Err(e),
        };
        match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(Into::into)) {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(r) => break r,
            Err(_would_block) => continue,
        }
    };
    let src = afd.into_inner();
    match read {
        Ok(0) => Ok(FirstRead::Eof),
        Ok(n) => {
            buf.truncate(n);
            match set_nonblocking(&src, false) {
                Ok(()) => Ok(FirstRead::Data(buf, src)),
                Err(e) => Err((e, src)),
            }
        }
        Err(e) => {
            let _ = set_nonblocking(&src, false);
            Err((e, src))
        }
    }
}

/// Waits until the pipe `src` holds bytes or every writer has closed it,
/// and returns how many bytes it holds (0: closed and empty).
///
/// For a `busy` stream (one that has filled its pipe), a few bytes are
/// given [`BATCH_WAIT`] to become more: a job writing in 4-8 KiB writes
/// woke the pump for each (176,000 splices for 2 GB), and on a small
/// machine every wake-up is CPU the job itself no longer has. A 1 MiB pipe
/// takes far longer than that to fill, so the job never blocks for it.
#[cfg(target_os = "linux")]
fn pipe_bytes(src: &File, busy: bool) -> std::io::Result<usize> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::{AsFd, AsRawFd};
    loop {
        let mut fds = [PollFd::new(src.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let held = || -> std::io::Result<usize> {
            let mut n: nix::libc::c_int = 0;
            // SAFETY: FIONREAD on a pipe writes one c_int through the
            // pointer, which points at a live local of that type.
            let r = unsafe { nix::libc::ioctl(src.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(usize::try_from(n).unwrap_or(0))
        };
        let n = held()?;
        if n > 0 {
            if busy && n < SMALL_READ {
                std::thread::sleep(BATCH_WAIT);
                return held();
            }
            return Ok(n);
        }
        // Readable with nothing in it: the writers are gone.
        let hup = fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
        if hup {
            return Ok(0);
        }
    }
}

/// Asks for a bigger pipe, so a job that writes fast wakes the pump less
/// often; a refusal (over the per-user pipe budget, or a limit below
/// 1 MiB) keeps the pipe as it is.
fn grow_pipe(src: &File) {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{FcntlArg, fcntl};
        let _ = fcntl(src, FcntlArg::F_SETPIPE_SZ(BIG_READ as nix::libc::c_int));
    }
    #[cfg(not(target_os = "linux"))]
    let _ = src;
}

enum Chunk {
    /// Bytes (after a gap, if some were overwritten).
    Data(Piece),
    /// Nothing more will come; the stream ends at this position.
    Done(u64),
    /// Nothing new yet; the next byte will be at this position.
    Wait(u64),
}

/// What the pump holds between writes.
#[derive(Default)]
struct Writer {
    /// The data file, opened on the first byte: most jobs print little or
    /// nothing, and not creating empty files per job saves real time when
    /// jobs are short.
    file: Option<File>,
    /// The data file's inode, for the sidecar.
    ino: u64,
    /// The sidecar, once the ring has wrapped.
    head: Option<File>,
    /// The `reserved` the sidecar holds: writes below it need no sidecar
    /// write before them.
    leased: u64,
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

    /// Writes `first` (bytes already read off the pipe), then everything
    /// else from `src` until EOF. A write that fails truncates the output:
    /// a marker says so where it can, and the rest of the pipe is read and
    /// dropped, so the job neither blocks on a full pipe nor dies of
    /// SIGPIPE for the daemon's disk.
    ///
    /// On Linux the bytes go from the pipe to the file with `splice`, which
    /// copies them once, into the page cache, rather than out to a buffer
    /// and back in.
    fn pump(&self, first: Vec<u8>, src: File) {
        let mut w = Writer::default();
        self.pump_into(&mut w, first, src);
        self.close_head(&mut w);
    }

    fn pump_into(&self, w: &mut Writer, first: Vec<u8>, mut src: File) {
        let mut failed = self.load().err();
        if let Some(e) = &failed {
            tracing::warn!(file = %self.paths.cur.display(), error = %e, "reading earlier output failed; this attempt's output is dropped");
        }
        let fail = |w: &mut Writer, e: std::io::Error, failed: &mut Option<std::io::Error>| {
            tracing::warn!(file = %self.paths.cur.display(), error = %e, "writing job output failed; the rest of this stream is dropped");
            self.mark_truncated(w, &e);
            *failed = Some(e);
        };
        if failed.is_none()
            && !first.is_empty()
            && let Err(e) = self.append(w, &first)
        {
            fail(w, e, &mut failed);
        }
        let mut splicing = cfg!(target_os = "linux");
        let mut buf = Vec::new();
        let mut grown = false;
        loop {
            let n = if failed.is_none() && splicing {
                match self.splice_in(w, &src, grown) {
                    Ok(n) => n,
                    // The file system takes no splice: copy through a
                    // buffer instead.
                    Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                        splicing = false;
                        continue;
                    }
                    Err(e) => {
                        fail(w, e, &mut failed);
                        continue;
                    }
                }
            } else {
                if buf.len() < SMALL_READ || (grown && buf.len() < BIG_READ) {
                    buf.resize(if grown { BIG_READ } else { SMALL_READ }, 0);
                }
                let n = match src.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(file = %self.paths.cur.display(), error = %e, "reading job output failed; the rest of this stream is lost");
                        return;
                    }
                };
                if failed.is_none()
                    && n > 0
                    && let Err(e) = self.append(w, &buf[..n])
                {
                    fail(w, e, &mut failed);
                }
                n
            };
            if n == 0 {
                return;
            }
            // A read this big found the pipe full: the job writes faster
            // than the pump wakes up.
            if n >= SMALL_READ && !grown {
                grow_pipe(&src);
                grown = true;
            }
        }
    }

    /// Opens the data file on the first byte.
    fn open(&self, w: &mut Writer) -> std::io::Result<()> {
        if w.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .mode(0o600)
                .open(&self.paths.cur)?;
            w.ino = f.metadata()?.ino();
            w.file = Some(f);
        }
        Ok(())
    }

    /// Moves what the pipe holds (up to [`BIG_READ`]) into the next slots,
    /// with `splice`. Returns 0 at EOF.
    #[cfg(target_os = "linux")]
    fn splice_in(&self, w: &mut Writer, src: &File, busy: bool) -> std::io::Result<usize> {
        use nix::fcntl::{SpliceFFlags, splice};
        let ring = self.cap;
        // Only the bytes already in the pipe are reserved, and the splice
        // moves exactly those (nothing else reads the pipe): reserving
        // more would tell readers that kept bytes were gone.
        let waiting = pipe_bytes(src, busy)?;
        if waiting == 0 {
            return Ok(0);
        }
        let (start, len, before) = {
            let mut st = lock(&self.state);
            let start = st.total;
            let slot = start % ring;
            let len = usize::try_from(ring - slot)
                .unwrap_or(usize::MAX)
                .min(BIG_READ)
                .min(waiting);
            let before = st.reserved;
            st.reserved = before.max(start + len as u64);
            (start, len, before)
        };
        self.open(w)?;
        let end = start + len as u64;
        let wraps = end > ring;
        if wraps {
            self.lease(w, ring, start, end)?;
        }
        let slot = start % ring;
        let allowed = self.faults.writable(slot + len as u64, len);
        let moved = match &w.file {
            Some(_) if allowed == 0 => Err(std::io::Error::from_raw_os_error(nix::libc::ENOSPC)),
            Some(file) => loop {
                let mut off = i64::try_from(slot).map_err(std::io::Error::other)?;
                match splice(
                    src,
                    None,
                    file,
                    Some(&mut off),
                    allowed,
                    SpliceFFlags::empty(),
                ) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    r => break r.map_err(std::io::Error::from),
                }
            },
            None => Ok(0),
        };
        let n = *moved.as_ref().unwrap_or(&0);
        {
            let mut st = lock(&self.state);
            st.total = start + n as u64;
            st.reserved = before.max(st.total);
        }
        if n > 0 {
            self.changed.send_modify(|v| *v += 1);
        }
        let n = moved?;
        if wraps {
            let leased = w.leased;
            self.write_head(w, ring, start + n as u64, leased)?;
        }
        Ok(n)
    }

    #[cfg(not(target_os = "linux"))]
    fn splice_in(&self, _w: &mut Writer, _src: &File, _busy: bool) -> std::io::Result<usize> {
        Err(std::io::Error::from_raw_os_error(nix::libc::EINVAL))
    }

    /// Writes bytes at their slots.
    fn append(&self, w: &mut Writer, data: &[u8]) -> std::io::Result<()> {
        let (ring, start, data) = {
            let mut st = lock(&self.state);
            let ring = self.cap;
            // Of a read longer than the ring only the last `ring` bytes
            // would survive; the rest is skipped rather than written.
            let skip = data
                .len()
                .saturating_sub(usize::try_from(ring).unwrap_or(usize::MAX));
            let data = &data[skip..];
            st.total += skip as u64;
            let start = st.total;
            st.reserved = st.reserved.max(start + data.len() as u64);
            (ring, start, data)
        };
        let end = start + data.len() as u64;
        self.open(w)?;
        let wraps = end > ring;
        if wraps {
            // Before any slot is reused, say so on disk: a crash in the
            // middle leaves a sidecar whose `reserved` covers the write.
            self.lease(w, ring, start, end)?;
        }
        let mut done = 0;
        let result = loop {
            if done == data.len() {
                break Ok(());
            }
            let pos = start + done as u64;
            let slot = pos % ring;
            let run = (data.len() - done).min(usize::try_from(ring - slot).unwrap_or(usize::MAX));
            match self.write_slots(w, &data[done..done + run], slot) {
                Ok(n) => done += n,
                Err(e) => break Err(e),
            }
        };
        {
            // Whatever landed is output; what did not is no longer
            // reserved, though its slots may hold part of it.
            let mut st = lock(&self.state);
            st.total = start + done as u64;
        }
        if done > 0 {
            self.changed.send_modify(|v| *v += 1);
        }
        result?;
        if wraps {
            let leased = w.leased;
            self.write_head(w, ring, end, leased)?;
        }
        Ok(())
    }

    /// Writes `data` at `slot`, as much as lands before an error.
    fn write_slots(&self, w: &mut Writer, data: &[u8], slot: u64) -> std::io::Result<usize> {
        let Some(file) = w.file.as_ref() else {
            return Ok(0);
        };
        let allowed = self.faults.writable(slot + data.len() as u64, data.len());
        let mut done = 0;
        while done < allowed {
            match file.write_at(&data[done..allowed], slot + done as u64) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if done > 0 => {
                    tracing::debug!(error = %e, "a write of job output stopped part way");
                    return Ok(done);
                }
                Err(e) => return Err(e),
            }
        }
        if allowed < data.len() {
            if done > 0 {
                return Ok(done);
            }
            return Err(std::io::Error::from_raw_os_error(nix::libc::ENOSPC));
        }
        Ok(done)
    }

    /// Before a write ending at `end` that reuses slots: makes sure the
    /// sidecar's `reserved` covers it. It is leased ahead (a 16th of the
    /// ring, at most [`BIG_READ`]), so that a stream of small writes does
    /// not write the sidecar twice each: after a crash, at most the lease
    /// of the oldest kept bytes is given up.
    fn lease(&self, w: &mut Writer, ring: u64, total: u64, end: u64) -> std::io::Result<()> {
        if end <= w.leased {
            return Ok(());
        }
        // Never below what the state reserves: after a crash that is the
        // old sidecar's lease, whose slots may hold bytes of the crashed
        // run until this one writes past them.
        let reserved = lock(&self.state).reserved;
        let leased = (end + (ring / 16).min(BIG_READ as u64)).max(reserved);
        self.write_head(w, ring, total, leased)?;
        w.leased = leased;
        Ok(())
    }

    /// At the end of a stream that wrapped: the sidecar's `reserved` comes
    /// back from its lease, so that every kept byte is read.
    fn close_head(&self, w: &mut Writer) {
        if w.head.is_none() {
            return;
        }
        // The state's `reserved` is `total` unless a crash's lease is still
        // ahead of it: those slots may hold the crashed run's bytes.
        let (total, reserved) = {
            let st = lock(&self.state);
            (st.total, st.reserved)
        };
        if let Err(e) = self.write_head(w, self.cap, total, reserved) {
            tracing::warn!(file = %self.paths.head.display(), error = %e, "recording where job output ends failed; its oldest bytes may not be shown");
        }
        w.leased = reserved;
    }

    fn write_head(
        &self,
        w: &mut Writer,
        ring: u64,
        total: u64,
        reserved: u64,
    ) -> std::io::Result<()> {
        if w.head.is_none() {
            w.head = Some(
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .mode(0o600)
                    .open(&self.paths.head)?,
            );
        }
        let layout = Layout {
            ring,
            total,
            reserved,
        };
        if let Some(h) = &w.head {
            h.write_all_at(&head_bytes(w.ino, &layout), 0)?;
        }
        Ok(())
    }

    /// After a failed write, puts a marker line where the output stops:
    /// appended if the disk takes it, else over the last bytes kept.
    fn mark_truncated(&self, w: &mut Writer, e: &std::io::Error) {
        let total = lock(&self.state).total;
        let mut last = [b'\n'];
        if let Some(f) = &w.file
            && total > 0
        {
            let _ = f.read_at(&mut last, (total - 1) % self.cap);
        }
        let lead = if last[0] == b'\n' { "" } else { "\n" };
        let marker = format!("{lead}[quern: output truncated: {e}]\n");
        if self.append(w, marker.as_bytes()).is_ok() {
            return;
        }
        let (total, kept_start) = {
            let st = lock(&self.state);
            (st.total, st.kept_start(self.cap))
        };
        let len = marker.len() as u64;
        if w.file.is_none() || total < kept_start + len {
            return;
        }
        let at = total - len;
        let slot = at % self.cap;
        if slot + len <= self.cap
            && self
                .write_slots(w, marker.as_bytes(), slot)
                .is_ok_and(|n| n == marker.len())
        {
            self.changed.send_modify(|v| *v += 1);
        }
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
