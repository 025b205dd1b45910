//! Captured job output: one capped file pair per stream, written by a pump
//! per pipe, and read back (or followed live) by `Logs`.
//!
//! Capping keeps the newest bytes: when the current file reaches the cap it
//! is renamed to `.1` and a new one started, so the newest `cap` bytes are
//! always in `.1` + current. When the job ends the pair is compacted into a
//! single file of at most `cap` bytes.
//!
//! Readers address output by absolute position (bytes written since the
//! first attempt), which stays valid across rotations, and wait on a watch
//! channel for new bytes rather than polling the files.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
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

/// How much a reader takes per chunk.
const CHUNK: usize = 64 * 1024;

/// How much a pump's first read, in the runtime, takes.
const FIRST_CHUNK: usize = 4 * 1024;

/// The log directory and the registry of jobs whose output is being written.
pub struct LogStore {
    dir: PathBuf,
    cap: u64,
    live: Mutex<HashMap<JobId, Arc<LiveLog>>>,
}

/// The output of a running job.
pub struct LiveLog {
    streams: [Arc<LiveStream>; 2],
}

struct LiveStream {
    cur: PathBuf,
    old: PathBuf,
    cap: u64,
    state: Mutex<StreamState>,
    /// Bumped after every write; readers wait on it.
    changed: watch::Sender<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct StreamState {
    /// Whether the fields below have been read off the files earlier
    /// attempts left (see [`LiveStream::state`]).
    known: bool,
    /// Where this attempt's output begins.
    attempt_start: u64,
    /// Bytes written so far, across rotations.
    total: u64,
    /// Absolute position of the current file's first byte.
    cur_start: u64,
    /// Absolute position of the `.1` file's first byte (== cur_start when
    /// there is none).
    old_start: u64,
    /// The writer has finished and compacted.
    done: bool,
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
        })
    }

    fn paths(&self, id: JobId, s: Stream) -> (PathBuf, PathBuf) {
        let cur = self.dir.join(format!("{id}.{}", s.suffix()));
        let old = self.dir.join(format!("{id}.{}.1", s.suffix()));
        (cur, old)
    }

    /// Registers a job's output as live and returns the handle its pumps
    /// write through. Output of earlier attempts is kept and appended to.
    pub fn start(&self, id: JobId) -> Arc<LiveLog> {
        let mk = |s: Stream| {
            let (cur, old) = self.paths(id, s);
            let (changed, _) = watch::channel(0);
            Arc::new(LiveStream {
                cur,
                old,
                cap: self.cap,
                state: Mutex::new(StreamState::default()),
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

    /// The stored output of a job that is not running: the newest `cap`
    /// bytes.
    pub fn read_stored(&self, id: JobId, s: Stream) -> std::io::Result<Vec<u8>> {
        let (cur, old) = self.paths(id, s);
        let mut data = read_or_empty(&old)?;
        data.extend(read_or_empty(&cur)?);
        let cap = self.cap as usize;
        if data.len() > cap {
            data.drain(..data.len() - cap);
        }
        Ok(data)
    }

    /// Deletes a job's files (not used for running jobs). Returns the
    /// bytes they held.
    pub fn remove(&self, id: JobId) -> u64 {
        let mut freed = 0;
        for s in [Stream::Stdout, Stream::Stderr] {
            let (cur, old) = self.paths(id, s);
            for p in [cur, old] {
                let len = std::fs::symlink_metadata(&p).map_or(0, |m| m.len());
                if std::fs::remove_file(&p).is_ok() {
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
                let (cur, old) = self.paths(id, s);
                [cur, old]
            })
            .map(|p| std::fs::symlink_metadata(p).map_or(0, |m| m.len()))
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

fn read_or_empty(p: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(p) {
        Ok(d) => Ok(d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

impl LiveLog {
    /// The absolute position where this attempt's output begins in `s`.
    /// Earlier attempts' output was compacted when they ended, so positions
    /// do not carry over from one attempt to the next.
    pub fn start(&self, s: Stream) -> u64 {
        self.stream(s).state().attempt_start
    }

    fn stream(&self, s: Stream) -> &Arc<LiveStream> {
        match s {
            Stream::Stdout => &self.streams[0],
            Stream::Stderr => &self.streams[1],
        }
    }

    /// Copies everything from `src` (a pipe's read end) into the stream's
    /// files until EOF, then compacts them.
    ///
    /// The first read waits in the runtime's epoll: most short jobs print
    /// nothing, and their streams end there without a thread. Output that
    /// does come is copied on a blocking thread, because file writes (and
    /// rotation) may block.
    pub async fn pump(self: Arc<Self>, s: Stream, src: OwnedFd) {
        let stream = self.stream(s).clone();
        let (first, src) = match first_read(src).await {
            Ok(FirstRead::Eof) => {
                stream.finish();
                return;
            }
            Ok(FirstRead::Data(first, src)) => (first, src),
            Err((e, src)) => {
                tracing::warn!(file = %stream.cur.display(), error = %e, "waiting for job output failed; copying it on a thread");
                (Vec::new(), src)
            }
        };
        let done = tokio::task::spawn_blocking(move || {
            let mut src = File::from(src);
            if let Err(e) = stream.pump(&first, &mut src) {
                tracing::warn!(file = %stream.cur.display(), error = %e, "writing job output failed; the rest of this stream is discarded");
                // Drain the pipe anyway so the job never blocks on a full pipe.
                let _ = std::io::copy(&mut src, &mut std::io::sink());
            }
            if let Err(e) = stream.compact() {
                tracing::warn!(file = %stream.cur.display(), error = %e, "compacting job output failed");
            }
            stream.finish();
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "job output copier failed");
        }
    }

    /// Streams one output stream from absolute position `start` (or its
    /// oldest kept byte, if later) until the writer is done, sending chunks
    /// to `out`. Returns the position reached; returns early if `out`
    /// closes.
    pub async fn follow(
        &self,
        s: Stream,
        start: u64,
        out: mpsc::Sender<Vec<u8>>,
    ) -> std::io::Result<u64> {
        let stream = self.stream(s).clone();
        let mut rx = stream.changed.subscribe();
        let mut pos = start;
        loop {
            // Mark the current version seen before looking, so a write that
            // lands after the look still wakes us.
            rx.borrow_and_update();
            let st2 = stream.clone();
            let read = tokio::task::spawn_blocking(move || st2.read_at(pos))
                .await
                .map_err(std::io::Error::other)??;
            match read {
                Chunk::Data(new_pos, data) => {
                    pos = new_pos;
                    if out.send(data).await.is_err() {
                        return Ok(pos);
                    }
                }
                Chunk::Done => return Ok(pos),
                Chunk::Wait => {
                    if rx.changed().await.is_err() {
                        return Ok(pos);
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
    // Small: most streams end with nothing, and zeroing a whole CHUNK for
    // each of them was ~3% of a runtime worker's time in P3. The blocking
    // copy reads the rest in full chunks.
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

enum Chunk {
    /// Bytes, and the position after them.
    Data(u64, Vec<u8>),
    /// Nothing more will come.
    Done,
    /// Nothing new yet.
    Wait,
}

impl LiveStream {
    /// The stream's state. The lengths of files that earlier attempts left
    /// are read on first use rather than when the job starts: most short
    /// jobs print nothing and nobody follows them, and two `stat`s per
    /// stream were ~5% of a runtime worker's time per job in P3.
    ///
    /// The pump calls this before its first write, so the files read here
    /// never include this attempt's output.
    fn state(&self) -> std::sync::MutexGuard<'_, StreamState> {
        let mut st = lock(&self.state);
        if !st.known {
            let cur_len = std::fs::metadata(&self.cur).map_or(0, |m| m.len());
            let old_len = std::fs::metadata(&self.old).map_or(0, |m| m.len());
            *st = StreamState {
                known: true,
                attempt_start: old_len + cur_len,
                total: old_len + cur_len,
                cur_start: old_len,
                old_start: 0,
                done: st.done,
            };
        }
        st
    }

    /// Appends `first` (bytes already read off the pipe), then everything
    /// else from `src` until EOF.
    fn pump(&self, first: &[u8], src: &mut File) -> std::io::Result<()> {
        // Opened on the first byte: most jobs print little or nothing, and
        // not creating two empty files per job saves real time when jobs are
        // short.
        let mut file: Option<File> = None;
        // Learn where earlier attempts' output ends before adding to it.
        drop(self.state());
        self.append(&mut file, first)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.append(&mut file, &buf[..n])?;
        }
    }

    fn append(&self, file: &mut Option<File>, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let out = match file {
            Some(f) => f,
            None => file.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&self.cur)?,
            ),
        };
        out.write_all(data)?;
        {
            let mut st = self.state();
            st.total += data.len() as u64;
            if st.total - st.cur_start >= self.cap {
                // Rotate under the lock so a reader never sees a state
                // that disagrees with the files on disk.
                std::fs::rename(&self.cur, &self.old)?;
                *file = None;
                st.old_start = st.cur_start;
                st.cur_start = st.total;
            }
        }
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Marks the writer done and wakes readers.
    fn finish(&self) {
        // Not `state()`: a stream that ends silent need not read lengths.
        lock(&self.state).done = true;
        self.changed.send_modify(|v| *v += 1);
    }

    /// Rewrites `.1` + current as a single file of the newest `cap` bytes.
    fn compact(&self) -> std::io::Result<()> {
        let mut st = self.state();
        if st.old_start == st.cur_start {
            return Ok(());
        }
        let cur_len = st.total - st.cur_start;
        let need_old = self.cap.saturating_sub(cur_len);
        let mut data = Vec::with_capacity(self.cap as usize);
        if need_old > 0 {
            let old = read_or_empty(&self.old)?;
            let skip = old.len().saturating_sub(need_old as usize);
            data.extend_from_slice(&old[skip..]);
        }
        data.extend(read_or_empty(&self.cur)?);
        let tmp = self.cur.with_extension("compact");
        OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
            .write_all(&data)?;
        std::fs::rename(&tmp, &self.cur)?;
        std::fs::remove_file(&self.old)?;
        st.cur_start = st.total - data.len() as u64;
        st.old_start = st.cur_start;
        Ok(())
    }

    /// Reads what is available at absolute position `pos`.
    fn read_at(&self, pos: u64) -> std::io::Result<Chunk> {
        // Choose the file and offset under the lock, and open it there: a
        // rotation or compaction renames files, but an open handle keeps
        // reading the bytes the offsets were computed for.
        let (mut file, offset, len, start) = {
            let st = self.state();
            // Bytes before the oldest kept one are gone; skip ahead.
            let pos = pos.max(st.old_start);
            if pos < st.cur_start {
                (
                    File::open(&self.old)?,
                    pos - st.old_start,
                    st.cur_start - pos,
                    pos,
                )
            } else if pos < st.total {
                (
                    File::open(&self.cur)?,
                    pos - st.cur_start,
                    st.total - pos,
                    pos,
                )
            } else if st.done {
                return Ok(Chunk::Done);
            } else {
                return Ok(Chunk::Wait);
            }
        };
        let want = (len as usize).min(CHUNK * 4);
        let mut data = vec![0u8; want];
        file.seek(SeekFrom::Start(offset))?;
        let mut got = 0;
        while got < want {
            match file.read(&mut data[got..])? {
                0 => break,
                n => got += n,
            }
        }
        data.truncate(got);
        if got == 0 {
            return Ok(Chunk::Wait);
        }
        Ok(Chunk::Data(start + got as u64, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn pipe() -> (OwnedFd, File) {
        let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        (r, File::from(w))
    }

    /// A stream that closes without a byte ends in the runtime: the
    /// follower is told it is done, and no file is created.
    #[tokio::test]
    async fn a_silent_stream_ends_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path().to_path_buf(), 1024).unwrap();
        let live = logs.start(3);
        let (r, w) = pipe();
        let pump = tokio::spawn(live.clone().pump(Stream::Stderr, r));
        let (tx, mut rx) = mpsc::channel(16);
        let l2 = live.clone();
        let follower = tokio::spawn(async move { l2.follow(Stream::Stderr, 0, tx).await });
        drop(w);
        pump.await.unwrap();
        assert_eq!(follower.await.unwrap().unwrap(), 0);
        assert!(rx.recv().await.is_none());
        assert!(!dir.path().join("3.err").exists());
        assert!(logs.read_stored(3, Stream::Stderr).unwrap().is_empty());
    }

    /// A second attempt's output is appended to the first's, and its
    /// positions start where the first's ended, though the lengths are
    /// only read once the second attempt writes or is followed.
    #[tokio::test]
    async fn a_later_attempt_appends_and_positions_carry_on() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path().to_path_buf(), 1024).unwrap();
        for (attempt, text) in [(1, "first\n"), (2, "second\n")] {
            let live = logs.start(5);
            let (r, mut w) = pipe();
            let pump = tokio::spawn(live.clone().pump(Stream::Stdout, r));
            w.write_all(text.as_bytes()).unwrap();
            drop(w);
            pump.await.unwrap();
            let begins = live.start(Stream::Stdout);
            assert_eq!(begins, if attempt == 1 { 0 } else { 6 });
            let (tx, mut rx) = mpsc::channel(16);
            let followed = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                live.follow(Stream::Stdout, begins, tx),
            )
            .await
            .expect("the follower never saw the stream end: its length is off")
            .unwrap();
            assert_eq!(followed, begins + text.len() as u64);
            assert_eq!(rx.recv().await.unwrap(), text.as_bytes());
            logs.finish(5);
        }
        assert_eq!(
            logs.read_stored(5, Stream::Stdout).unwrap(),
            b"first\nsecond\n"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cap_keeps_newest_bytes_and_followers_see_everything_kept() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Arc::new(LogStore::new(dir.path().to_path_buf(), 1024).unwrap());
        let live = logs.start(7);
        let (r, mut w) = pipe();
        let l2 = live.clone();
        let pump = tokio::spawn(l2.pump(Stream::Stdout, r));
        let (tx, mut rx) = mpsc::channel(16);
        let l3 = live.clone();
        let follower = tokio::spawn(async move { l3.follow(Stream::Stdout, 0, tx).await });
        let mut expected = Vec::new();
        for i in 0..500 {
            let line = format!("line {i:05}\n");
            expected.extend_from_slice(line.as_bytes());
            w.write_all(line.as_bytes()).unwrap();
        }
        drop(w);
        let mut seen = Vec::new();
        while let Some(chunk) = rx.recv().await {
            seen.extend(chunk);
        }
        follower.await.unwrap().unwrap();
        pump.await.unwrap();
        // The follower may have skipped bytes rotated away, but what it saw
        // is a contiguous suffix-ending run of the output.
        assert!(expected.ends_with(&seen[seen.len() - 1024..]));
        let stored = logs.read_stored(7, Stream::Stdout).unwrap();
        assert_eq!(stored.len(), 1024);
        assert!(expected.ends_with(&stored));
        assert!(!dir.path().join("7.out.1").exists());
    }
}
