//! [`UnixConn`]: the Unix-socket connection both ends of the API use.

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A connected Unix stream, registered with the tokio runtime for
/// readability only.
///
/// tokio's own `UnixStream` registers for reading and writing at once. The
/// kernel then reports the socket writable again every time the peer reads
/// from it, so each side's runtime thread was woken once per request for
/// nothing: the daemon when the client read its response, the client when
/// the daemon read its request. On a small VM, waking an idle core costs
/// about 0.1 ms of CPU, as much as the rest of a List call (quern-bench p4,
/// see docs/benchmarks.md).
///
/// Here writes go straight to the socket. Only a write that would block
/// registers a duplicate of the descriptor for writability, and only until
/// a write goes through. Written by hand because tokio cannot change the
/// interest of a registration, and no crate offers such a stream.
#[derive(Debug)]
pub struct UnixConn {
    read: AsyncFd<UnixStream>,
    /// Registered for writability while a write waits for buffer space.
    write: Option<AsyncFd<OwnedFd>>,
}

impl UnixConn {
    /// Wraps a connected stream; it is switched to non-blocking mode.
    /// Must be called inside a tokio runtime.
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        // SAFETY: the stream owns its descriptor, and this type never hands
        // out a way to replace or close it while the registration lives.
        let read = unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE)? };
        Ok(Self { read, write: None })
    }

    /// The underlying stream, for socket options such as the peer's
    /// credentials.
    pub fn get_ref(&self) -> &UnixStream {
        self.read.get_ref()
    }

    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&UnixStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        // Most writes fit in the socket buffer: try before registering.
        match retry_interrupted(|| write(self.read.get_ref())) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => {
                self.write = None;
                return Poll::Ready(done);
            }
        }
        if self.write.is_none() {
            let dup = self.read.get_ref().as_fd().try_clone_to_owned()?;
            // SAFETY: `dup` is a fresh descriptor owned by the registration
            // and closed only when it is dropped.
            self.write = Some(unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE)? });
        }
        let Some(waiter) = &self.write else {
            unreachable!("registered just above");
        };
        let done = loop {
            let mut guard = ready!(waiter.poll_write_ready(cx))?;
            // try_io clears the readiness only if the write would still
            // block, so a wake-up between the two cannot be lost.
            let stream = self.read.get_ref();
            if let Ok(done) = guard.try_io(|_| retry_interrupted(|| write(stream))) {
                break done;
            }
        };
        self.write = None;
        Poll::Ready(done)
    }
}

fn retry_interrupted<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            done => return done,
        }
    }
}

impl AsyncRead for UnixConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.read.poll_read_ready(cx))?;
            // Read into the uninitialized part directly: HTTP/2 read
            // buffers are large, and zeroing them first on every read would
            // cost more than the read.
            // SAFETY: nothing reads the slice; read(2) only writes to it.
            let unfilled = unsafe { buf.unfilled_mut() };
            let read = guard.try_io(|stream| {
                retry_interrupted(|| {
                    // SAFETY: the pointer and length describe `unfilled`,
                    // which stays borrowed for the call.
                    let n = unsafe {
                        libc::read(
                            stream.as_raw_fd(),
                            unfilled.as_mut_ptr().cast(),
                            unfilled.len(),
                        )
                    };
                    usize::try_from(n).map_err(|_| io::Error::last_os_error())
                })
            });
            match read {
                Ok(Ok(n)) => {
                    // SAFETY: read(2) initialized the first `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Readiness was stale and is now cleared: wait again.
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for UnixConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut stream| stream.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut stream| stream.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.read.get_ref().shutdown(Shutdown::Write))
    }
}

impl tonic::transport::server::Connected for UnixConn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (UnixConn, UnixConn) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (
            UnixConn::new(a).expect("wrap a"),
            UnixConn::new(b).expect("wrap b"),
        )
    }

    #[tokio::test]
    async fn bytes_arrive_in_order_both_ways() {
        let (mut a, mut b) = pair();
        a.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        b.write_all(b"pong").await.unwrap();
        a.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
    }

    /// A write larger than the socket buffer must wait for the reader and
    /// then finish: this is the path that registers for writability.
    #[tokio::test]
    async fn a_write_that_blocks_finishes_once_the_peer_reads() {
        let (mut a, mut b) = pair();
        let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| i as u8).collect();
        let expected = big.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&big).await.unwrap();
            a.shutdown().await.unwrap();
            a
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let a = writer.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes read differ from those written");
        // The registration for writability lasts only while a write waits.
        assert!(a.write.is_none());
    }

    #[tokio::test]
    async fn a_closed_peer_reads_as_end_of_file() {
        let (a, mut b) = pair();
        drop(a);
        let mut buf = [0u8; 8];
        assert_eq!(b.read(&mut buf).await.unwrap(), 0);
    }
}
