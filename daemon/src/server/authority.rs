//! A thin layer on each accepted connection that gives h2 a request
//! `:authority` it accepts, for gRPC clients that send the socket path.
//!
//! Recent grpcio (C-core 1.57 and later), grpc-java, grpc-swift and
//! grpcurl send the path of a Unix socket, or its percent-encoding, as the
//! HTTP/2 `:authority` of every call. h2 0.4 (under hyper and tonic) parses
//! `:authority` with `http::uri::Authority` and resets the stream when that
//! fails (PROTOCOL_ERROR), with no option to relax it (hyperium/h2#487 is
//! still open). On a Unix socket the authority names nothing, so quernd
//! replaces an unparsable one with `localhost` before h2 sees it.
//!
//! The layer sits between the accepted stream and h2 and reads the
//! client's HTTP/2 frames as they go by:
//! - the server-to-client direction is not touched at all;
//! - every frame but HEADERS and CONTINUATION passes through as it came,
//!   and when a read holds none of those (the bulk of DATA), h2's own
//!   buffer is read into directly and nothing is copied;
//! - the connection's first header block (HEADERS plus its CONTINUATIONs)
//!   is held until complete and decoded with an HPACK decoder that follows
//!   the client's dynamic table. If its `:authority` parses (or it has
//!   none), the frames go on byte for byte and the layer steps aside for
//!   the rest of the connection: a client sends the same authority on
//!   every call of a channel, and tonic's own clients (quernctl, the
//!   benchmarks) then pay nothing per request.
//! - Otherwise that block, and every later one of the connection, is
//!   decoded and re-encoded with any unparsable authority replaced, every
//!   field a literal *without indexing*: h2's dynamic table is never added
//!   to again, so it cannot drift from what the client's encoder assumes
//!   (the client's references into its table are resolved here).
//! - Anything this layer does not understand (no preface, a frame
//!   sequence h2 will refuse, a block that does not decode, one over
//!   [`MAX_BLOCK`]) turns it off for the rest of the connection: the bytes
//!   go on untouched and h2 judges them as it would without the layer.
//!   The one exception is a block that does not decode once blocks are
//!   being rewritten: h2 would read it against a table that no longer
//!   matches the client's, so the connection ends with an error instead.
//!
//! Patching h2 is ruled out (no vendored dependencies), and nothing in
//! tonic or hyper runs before h2 checks the authority, so the byte stream
//! is the one place left.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

#[cfg(test)]
mod tests;

/// What every HTTP/2 client sends first.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The length of a frame header.
const HEAD_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The most of one header block (its frames, headers included) held
/// before the layer gives up and passes it on. h2 closes the connection
/// long before (hyper's limit on a header list is 16 KiB), so this only
/// bounds memory.
const MAX_BLOCK: usize = 1 << 20;
/// The largest frame a rewritten block is cut into: the smallest
/// SETTINGS_MAX_FRAME_SIZE a peer may set, so any server accepts it.
const OUT_FRAME: usize = 16_384;
/// The HPACK dynamic table size h2 advertises (the protocol's default;
/// quernd does not change it). A client's size update above it is an
/// error to h2, and so to this decoder, which keeps its table as small.
const HEADER_TABLE_SIZE: usize = 4096;
/// What an unparsable authority becomes.
const LOCALHOST: &[u8] = b"localhost";
/// How much is read at once when the bytes cannot go to h2's buffer.
const READ_CHUNK: usize = 8 * 1024;

/// An accepted connection whose request authorities h2 can parse; see the
/// module docs. Reads are filtered, writes pass straight through.
pub(crate) struct AuthorityFilter<T> {
    io: T,
    scan: Scanner,
    /// Bytes for h2 that go before anything else: a finished header block,
    /// as received or rewritten.
    ready: BytesMut,
    /// Bytes read from the client and not scanned yet.
    unscanned: BytesMut,
    /// The client closed its side.
    eof: bool,
}

impl<T> AuthorityFilter<T> {
    /// Wraps an accepted connection. Allocates nothing until the client
    /// sends a header block.
    pub(crate) fn new(io: T) -> Self {
        AuthorityFilter {
            io,
            scan: Scanner::new(),
            ready: BytesMut::new(),
            unscanned: BytesMut::new(),
            eof: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFilter<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // A finished block goes first: it came before what is unscanned.
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.scan.state == State::Broken {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a client header block does not decode after its :authority was rewritten; closing the connection",
                )));
            }
            if !this.unscanned.is_empty() {
                if let Some(n) = this.scan.passing(&this.unscanned, buf.remaining()) {
                    buf.put_slice(&this.unscanned[..n]);
                    this.unscanned.advance(n);
                    return Poll::Ready(Ok(()));
                }
                if let Some(n) = this.scan.take(&this.unscanned, &mut this.ready) {
                    this.unscanned.advance(n);
                    continue;
                }
                // A frame header cut short: read the rest.
            }
            if this.eof {
                // The client stopped mid-frame or mid-block: hand over what
                // is held as it came, and let h2 judge it.
                this.scan.flush(&mut this.ready);
                this.ready.extend_from_slice(&this.unscanned);
                this.unscanned.clear();
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if this.unscanned.is_empty() && this.scan.at_passing_point() {
                // The fast path: read into h2's buffer, and keep there every
                // whole frame that passes; only from the first header frame
                // (or a frame header cut by the read) on are bytes copied out.
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                let filled = buf.filled().len();
                if filled == before {
                    this.eof = true;
                    continue;
                }
                let mut pos = before;
                while pos < filled {
                    match this.scan.passing(&buf.filled()[pos..], usize::MAX) {
                        Some(n) => pos += n,
                        None => break,
                    }
                }
                if pos < filled {
                    this.unscanned.extend_from_slice(&buf.filled()[pos..]);
                    buf.set_filled(pos);
                }
                if pos > before {
                    return Poll::Ready(Ok(()));
                }
            } else {
                this.unscanned.reserve(READ_CHUNK);
                let n = ready!(tokio_util::io::poll_read_buf(
                    Pin::new(&mut this.io),
                    cx,
                    &mut this.unscanned
                ))?;
                if n == 0 {
                    this.eof = true;
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFilter<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The API reads the caller's uid from the connection's info
/// (`UdsConnectInfo`), so the filter reports the wrapped stream's.
impl<T: Connected> Connected for AuthorityFilter<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Where the scanner is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the connection preface; this many of its bytes were seen.
    Preface(usize),
    /// At the start of a frame.
    FrameHead,
    /// In a frame that passes: this many of its bytes (header included)
    /// are still to go.
    Pass(usize),
    /// In a held header frame: this many payload bytes are still to come.
    Hold(usize),
    /// Everything passes as it is, for the rest of the connection.
    Off,
    /// A block did not decode after h2's table stopped following the
    /// client's: nothing more can be passed on safely (h2 would read the
    /// client's references into its own table), so the connection ends.
    Broken,
}

/// The client-to-server half of the layer, free of I/O: finds frame
/// boundaries, holds header blocks, and decides what h2 gets.
struct Scanner {
    state: State,
    /// The frames of the header block being held, as received.
    block: Vec<u8>,
    /// A HEADERS frame without END_HEADERS was held: CONTINUATION frames
    /// of `block_stream` must follow.
    in_block: bool,
    block_stream: u32,
    /// The flags of the frame being held.
    frame_flags: u8,
    /// Follows the client's HPACK encoder. loona-hpack is the maintained
    /// line of the original `hpack` crate (forked in 2023 to pass h2spec;
    /// last release November 2024, which stopped a panic on a malformed
    /// integer); it decodes Huffman strings and dynamic table size
    /// updates, and bounds the table with a maximum. `hpack` itself was
    /// last released in 2016 and panics on malformed input;
    /// `httlib-hpack` was last released in 2021. h2's own HPACK is
    /// private. Its one weakness here is speed (it builds its Huffman
    /// table anew for each coded string), which is one more reason the
    /// layer steps aside after a first block it has no need to change.
    decoder: loona_hpack::Decoder<'static>,
    /// A block was re-encoded: h2's dynamic table no longer matches the
    /// client's, so every later block is re-encoded too. (Before the first
    /// block is done, this is false; after it, the scanner either rewrites
    /// or is off.)
    rewriting: bool,
    /// The last `:authority` found valid, so that a connection that sends
    /// the same one each time parses it once.
    last_valid: Vec<u8>,
    /// Scratch space for a block's HPACK fragment and its re-encoding.
    fragment: Vec<u8>,
    encoded: Vec<u8>,
}

impl Scanner {
    fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Scanner {
            state: State::Preface(0),
            block: Vec::new(),
            in_block: false,
            block_stream: 0,
            frame_flags: 0,
            decoder,
            rewriting: false,
            last_valid: Vec::new(),
            fragment: Vec::new(),
            encoded: Vec::new(),
        }
    }

    /// Whether the next bytes read may go to h2's buffer directly: nothing
    /// is held, and the scanner is not inside a held frame.
    fn at_passing_point(&self) -> bool {
        !self.in_block && !matches!(self.state, State::Hold(_))
    }

    /// How many leading bytes of `input` (at most `max`, at least 1) pass
    /// to h2 as they are; the scanner moves past them. `None` when the
    /// next bytes are not for passing (a header frame, a frame header cut
    /// short, or no input): then [`Scanner::take`] deals with them.
    fn passing(&mut self, input: &[u8], max: usize) -> Option<usize> {
        if input.is_empty() || max == 0 {
            return None;
        }
        let limit = input.len().min(max);
        match self.state {
            State::Off => Some(limit),
            State::Preface(seen) => {
                let n = (PREFACE.len() - seen).min(limit);
                if input[..n] != PREFACE[seen..seen + n] {
                    tracing::debug!(
                        "connection does not start with the HTTP/2 preface; passing it through"
                    );
                    self.state = State::Off;
                } else if seen + n == PREFACE.len() {
                    self.state = State::FrameHead;
                } else {
                    self.state = State::Preface(seen + n);
                }
                Some(n)
            }
            State::Pass(left) => {
                let n = left.min(limit);
                self.state = if n == left {
                    State::FrameHead
                } else {
                    State::Pass(left - n)
                };
                Some(n)
            }
            State::Hold(_) | State::Broken => None,
            State::FrameHead => {
                if self.in_block {
                    return None;
                }
                let head = input.first_chunk::<HEAD_LEN>()?;
                let (len, kind, _, _) = parse_head(head);
                if kind == HEADERS {
                    return None;
                }
                self.state = if kind == CONTINUATION {
                    // Out of a block: h2 will close the connection.
                    State::Off
                } else {
                    State::Pass(HEAD_LEN + len)
                };
                self.passing(input, max)
            }
        }
    }

    /// Takes the next bytes of `input` into the held block, when they
    /// belong to a header frame, and appends a finished block to `out`.
    /// Returns how many bytes it took (0 when it just gave up holding, so
    /// the same bytes now pass), or `None` when a frame header is cut
    /// short and more input is needed.
    fn take(&mut self, input: &[u8], out: &mut BytesMut) -> Option<usize> {
        match self.state {
            State::Hold(left) => {
                let n = left.min(input.len());
                self.block.extend_from_slice(&input[..n]);
                if n == left {
                    self.frame_held(out);
                } else {
                    self.state = State::Hold(left - n);
                }
                Some(n)
            }
            State::FrameHead => {
                let head = input.first_chunk::<HEAD_LEN>()?;
                let (len, kind, flags, stream) = parse_head(head);
                let continues = kind == CONTINUATION && stream == self.block_stream;
                if self.in_block != continues || (!self.in_block && kind != HEADERS) {
                    // Not the CONTINUATION h2 must get next (h2 answers with
                    // a connection error), or nothing to hold.
                    self.give_up(out);
                    return Some(0);
                }
                if self.block.len() + HEAD_LEN + len > MAX_BLOCK {
                    self.give_up(out);
                    return Some(0);
                }
                if !self.in_block {
                    self.block.clear();
                    self.block_stream = stream;
                    self.in_block = true;
                }
                self.block.extend_from_slice(head);
                self.frame_flags = flags;
                self.state = State::Hold(len);
                if len == 0 {
                    self.frame_held(out);
                }
                Some(HEAD_LEN)
            }
            // Only called where `passing` said no, which these never do.
            State::Preface(_) | State::Pass(_) | State::Off => Some(0),
            State::Broken => None,
        }
    }

    /// Hands over whatever is held, as received, and passes everything
    /// from now on. The decoder's table and the buffers are let go: they
    /// are not needed again.
    fn give_up(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&self.block);
        self.in_block = false;
        self.state = State::Off;
        self.release();
    }

    fn release(&mut self) {
        self.block = Vec::new();
        self.fragment = Vec::new();
        self.encoded = Vec::new();
        self.last_valid = Vec::new();
        self.decoder = loona_hpack::Decoder::new();
    }

    /// At the end of the client's bytes: whatever is held goes to h2.
    fn flush(&mut self, out: &mut BytesMut) {
        if !self.block.is_empty() {
            self.give_up(out);
        }
    }

    /// A held frame is complete.
    fn frame_held(&mut self, out: &mut BytesMut) {
        self.state = State::FrameHead;
        if self.frame_flags & END_HEADERS != 0 {
            self.in_block = false;
            self.finish_block(out);
        }
    }

    /// A whole header block is held: decode it, and append to `out` either
    /// its frames as received or a re-encoding.
    fn finish_block(&mut self, out: &mut BytesMut) {
        let Some(first) = self.collect_fragment() else {
            tracing::debug!("malformed HEADERS frame padding or priority; passing it through");
            self.give_up(out);
            return;
        };
        self.encoded.clear();
        let encoded = &mut self.encoded;
        let last_valid = &mut self.last_valid;
        let mut replaced: Option<Vec<u8>> = None;
        let decoded = self.decoder.decode_with_cb(&self.fragment, |name, value| {
            let mut value: &[u8] = &value;
            // (An empty authority is never valid, nor the empty default
            // of `last_valid`.)
            if &*name == b":authority" && (value.is_empty() || value != last_valid.as_slice()) {
                // The check h2 makes.
                if http::uri::Authority::try_from(value).is_ok() {
                    last_valid.clear();
                    last_valid.extend_from_slice(value);
                } else {
                    replaced.get_or_insert_with(|| value.to_vec());
                    value = LOCALHOST;
                }
            }
            put_literal(encoded, &name, value);
        });
        if let Err(e) = decoded {
            // The table may now differ from the client's: stop decoding.
            if self.rewriting {
                tracing::debug!(error = %e, "client header block does not decode; closing the connection");
                self.state = State::Broken;
                self.release();
            } else {
                // Untouched so far: h2 can judge the block itself.
                tracing::debug!(error = %e, "client header block does not decode; passing the connection through");
                self.give_up(out);
            }
            return;
        }
        if replaced.is_none() && !self.rewriting {
            // A client sends one authority on every call of a channel, so
            // the first block decides for the connection: this one's is
            // fine, and the layer steps aside for good (tonic's own
            // clients, quernctl and the benchmarks, cost it nothing more).
            self.give_up(out);
            return;
        }
        if let (Some(authority), false) = (&replaced, self.rewriting) {
            tracing::debug!(
                authority = %String::from_utf8_lossy(authority),
                "request :authority is not a valid authority; h2 gets localhost"
            );
        }
        self.rewriting = true;
        // Dynamic table size updates lead a block; they go on as they
        // came, so h2's table keeps the size the client set.
        let updates = size_updates_len(&self.fragment);
        self.fragment.truncate(updates);
        self.fragment.extend_from_slice(&self.encoded);
        self.put_frames(first, out);
        self.block.clear();
    }

    /// Gathers the HPACK fragment of the held block into `fragment`, and
    /// returns the HEADERS frame's stream, flags and priority fields.
    /// `None` when its padding or priority fields do not fit.
    fn collect_fragment(&mut self) -> Option<FirstFrame> {
        self.fragment.clear();
        let mut rest = self.block.as_slice();
        let mut first = None;
        while let Some(head) = rest.first_chunk::<HEAD_LEN>() {
            let (len, _, flags, stream) = parse_head(head);
            let payload = rest.get(HEAD_LEN..HEAD_LEN + len)?;
            rest = &rest[HEAD_LEN + len..];
            if first.is_some() {
                self.fragment.extend_from_slice(payload);
                continue;
            }
            let mut payload = payload;
            if flags & PADDED != 0 {
                let (&pad, body) = payload.split_first()?;
                payload = body.get(..body.len().checked_sub(usize::from(pad))?)?;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let (fields, body) = payload.split_first_chunk::<5>()?;
                priority = Some(*fields);
                payload = body;
            }
            self.fragment.extend_from_slice(payload);
            first = Some(FirstFrame {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
            });
        }
        first
    }

    /// Frames `fragment` as one HEADERS frame and as many CONTINUATION
    /// frames as it needs.
    fn put_frames(&self, first: FirstFrame, out: &mut BytesMut) {
        let prio_len = if first.priority.is_some() { 5 } else { 0 };
        let first_len = self.fragment.len().min(OUT_FRAME - prio_len);
        let (head, mut rest) = self.fragment.split_at(first_len);
        let mut flags = if first.end_stream { END_STREAM } else { 0 };
        if first.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        put_head(out, prio_len + head.len(), HEADERS, flags, first.stream);
        if let Some(fields) = first.priority {
            out.extend_from_slice(&fields);
        }
        out.extend_from_slice(head);
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(rest.len().min(OUT_FRAME));
            rest = after;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            put_head(out, chunk.len(), CONTINUATION, flags, first.stream);
            out.extend_from_slice(chunk);
        }
    }
}

/// What a rewritten block keeps of its HEADERS frame. Padding is dropped:
/// it means nothing.
#[derive(Debug, Clone, Copy)]
struct FirstFrame {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
}

/// Length, type, flags and stream of a frame header.
fn parse_head(head: &[u8; HEAD_LEN]) -> (usize, u8, u8, u32) {
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    (len, head[3], head[4], stream)
}

fn put_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    // `len` is at most OUT_FRAME, so it fits the 24-bit field.
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// Appends a "literal header field without indexing, new name"
/// (RFC 7541, 6.2.2), with plain (not Huffman-coded) strings.
fn put_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    put_int(out, name.len(), 7, 0x00);
    out.extend_from_slice(name);
    put_int(out, value.len(), 7, 0x00);
    out.extend_from_slice(value);
}

/// Appends an HPACK integer with a `prefix`-bit prefix (RFC 7541, 5.1);
/// `flags` fills the first byte's other bits.
fn put_int(out: &mut Vec<u8>, value: usize, prefix: u8, flags: u8) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// The length of the dynamic table size updates (RFC 7541, 6.3) that lead
/// an HPACK block.
fn size_updates_len(block: &[u8]) -> usize {
    let mut at = 0;
    while let Some(&first) = block.get(at) {
        if first & 0xe0 != 0x20 {
            break;
        }
        match int_len(&block[at..], 5) {
            Some(n) => at += n,
            None => break,
        }
    }
    at
}

/// The encoded length of the HPACK integer that starts `bytes`.
fn int_len(bytes: &[u8], prefix: u8) -> Option<usize> {
    let max = (1u8 << prefix) - 1;
    if bytes.first()? & max < max {
        return Some(1);
    }
    let more = bytes[1..].iter().position(|b| b & 0x80 == 0)?;
    Some(more + 2)
}
