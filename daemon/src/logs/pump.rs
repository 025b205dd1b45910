//! The writing side of a live stream: the pump that moves a job's pipe
//! into its ring file (`splice` on Linux), and the `.head` sidecar it keeps
//! (see the parent module for their invariants).

use super::*;

/// What the first read of a pipe found.
pub(super) enum FirstRead {
    /// The write ends all closed with nothing written.
    Eof,
    /// Some bytes, and the pipe (blocking again) for the rest.
    Data(Vec<u8>, OwnedFd),
}

/// Waits, without a thread, until `src` has bytes or reaches EOF, and reads
/// what is there. On failure the pipe comes back for a blocking copy.
pub(super) async fn first_read(src: OwnedFd) -> Result<FirstRead, (std::io::Error, OwnedFd)> {
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
pub(super) fn pipe_bytes(src: &File, busy: bool) -> std::io::Result<usize> {
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
pub(super) fn grow_pipe(src: &File) {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{FcntlArg, fcntl};
        let _ = fcntl(src, FcntlArg::F_SETPIPE_SZ(BIG_READ as nix::libc::c_int));
    }
    #[cfg(not(target_os = "linux"))]
    let _ = src;
}

/// What the pump holds between writes.
#[derive(Default)]
pub(super) struct Writer {
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
    /// Writes `first` (bytes already read off the pipe), then everything
    /// else from `src` until EOF. A write that fails truncates the output:
    /// a marker says so where it can, and the rest of the pipe is read and
    /// dropped, so the job neither blocks on a full pipe nor dies of
    /// SIGPIPE for the daemon's disk.
    ///
    /// On Linux the bytes go from the pipe to the file with `splice`, which
    /// copies them once, into the page cache, rather than out to a buffer
    /// and back in.
    pub(super) fn pump(&self, first: Vec<u8>, src: File) {
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
    pub(super) fn append(&self, w: &mut Writer, data: &[u8]) -> std::io::Result<()> {
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
    pub(super) fn mark_truncated(&self, w: &mut Writer, e: &std::io::Error) {
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
}
