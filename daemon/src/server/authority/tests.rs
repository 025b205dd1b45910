//! Tests of the `:authority` filter: byte streams a client could send, cut
//! into reads every way, and what h2 (or a decoder that sees only what h2
//! sees) gets out of them.

use std::collections::VecDeque;

use loona_hpack::huffman::HuffmanDecoder;
use loona_hpack::{Decoder, Encoder};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

const DATA: u8 = 0x0;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const RST_STREAM: u8 = 0x3;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The preface and the client's first SETTINGS, as every client starts.
fn start() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    // SETTINGS_ENABLE_PUSH = 0, SETTINGS_INITIAL_WINDOW_SIZE = 4 MiB.
    out.extend(frame(
        SETTINGS,
        0,
        0,
        &[0, 2, 0, 0, 0, 0, 0, 4, 0, 0x40, 0, 0],
    ));
    out
}

/// The fields of a gRPC call, with `extra` after the standard ones.
fn call(authority: &str, path: &str, extra: &[(&str, &str)]) -> Fields {
    let mut fields = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];
    fields.extend_from_slice(extra);
    fields
        .into_iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// `fields` with every unparsable `:authority` made `localhost`.
fn fixed(mut fields: Fields) -> Fields {
    for (name, value) in &mut fields {
        if name == b":authority" && http::uri::Authority::try_from(&value[..]).is_err() {
            *value = b"localhost".to_vec();
        }
    }
    fields
}

/// HPACK-encodes `fields` the way loona's encoder does: every new field
/// is added to the dynamic table, and a field seen before is an index.
fn encode(encoder: &mut Encoder<'static>, fields: &Fields) -> Vec<u8> {
    encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
}

/// A gRPC call's HEADERS frame followed by a DATA frame that ends it.
fn request(stream: u32, block: &[u8]) -> Vec<u8> {
    let mut out = frame(HEADERS, END_HEADERS, stream, block);
    out.extend(frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 2, 8, 1]));
    out
}

/// A frame as found in the filter's output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn parse(mut bytes: &[u8]) -> Vec<Frame> {
    bytes = bytes
        .strip_prefix(&PREFACE[..])
        .expect("the output starts with the preface");
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let head = bytes
            .first_chunk::<HEAD_LEN>()
            .expect("a whole frame header");
        let (len, kind, flags, stream) = parse_head(head);
        let payload = bytes[HEAD_LEN..HEAD_LEN + len].to_vec();
        bytes = &bytes[HEAD_LEN + len..];
        frames.push(Frame {
            kind,
            flags,
            stream,
            payload,
        });
    }
    frames
}

/// What h2 makes of the output: every header block decoded by one decoder
/// that sees only the output (as h2's does), and every other frame.
fn as_h2_sees(bytes: &[u8]) -> (Vec<Fields>, Vec<Frame>) {
    let mut decoder = Decoder::new();
    let mut blocks = Vec::new();
    let mut others = Vec::new();
    let mut fragment = Vec::new();
    for f in parse(bytes) {
        match f.kind {
            HEADERS => {
                let mut p = &f.payload[..];
                if f.flags & PADDED != 0 {
                    let pad = usize::from(p[0]);
                    p = &p[1..p.len() - pad];
                }
                if f.flags & PRIORITY != 0 {
                    p = &p[5..];
                }
                fragment = p.to_vec();
            }
            CONTINUATION => fragment.extend_from_slice(&f.payload),
            _ => {
                others.push(f);
                continue;
            }
        }
        if f.flags & END_HEADERS != 0 {
            blocks.push(decoder.decode(&fragment).expect("h2 can decode the block"));
        }
    }
    (blocks, others)
}

/// A client that sends its bytes in the given chunks (and, if `stall`,
/// is not ready once before each), then closes.
struct Client {
    chunks: VecDeque<Vec<u8>>,
    stall: bool,
    stalled: bool,
}

impl Client {
    fn new(chunks: Vec<Vec<u8>>, stall: bool) -> Self {
        Client {
            chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
            stall,
            stalled: false,
        }
    }
}

impl AsyncRead for Client {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stall && !this.stalled {
            this.stalled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.stalled = false;
        if let Some(chunk) = this.chunks.front_mut() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                this.chunks.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Everything h2 would read through the filter, in reads of `read_size`.
async fn through(chunks: Vec<Vec<u8>>, stall: bool, read_size: usize) -> Vec<u8> {
    let mut filter = AuthorityFilter::new(Client::new(chunks, stall));
    let mut out = Vec::new();
    let mut buf = vec![0; read_size];
    loop {
        let n = filter.read(&mut buf).await.expect("reads never fail here");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Runs `input` through the filter cut into reads every way that matters
/// (in one piece, byte by byte, at every split point, with stalls, into
/// small and large buffers), checks that every way gives the same bytes,
/// and returns them.
async fn filtered(input: &[u8]) -> Vec<u8> {
    let whole = through(vec![input.to_vec()], false, 64 * 1024).await;
    let bytewise = through(input.iter().map(|b| vec![*b]).collect(), true, 64 * 1024).await;
    assert_eq!(bytewise, whole, "byte-by-byte reads give other bytes");
    for read_size in [1, 7, 100] {
        let small = through(vec![input.to_vec()], false, read_size).await;
        assert_eq!(small, whole, "reads of {read_size} bytes give other bytes");
    }
    for at in 1..input.len() {
        let split = vec![input[..at].to_vec(), input[at..].to_vec()];
        let got = through(split, false, 4096).await;
        assert_eq!(got, whole, "a read boundary at byte {at} gives other bytes");
    }
    whole
}

/// Asserts that h2 sees `blocks` as the header blocks, and every other
/// frame of `input` exactly as sent.
async fn assert_h2_sees(input: &[u8], blocks: &[Fields]) -> Vec<u8> {
    let out = filtered(input).await;
    let (got, others) = as_h2_sees(&out);
    assert_eq!(got, blocks, "the header blocks h2 decodes");
    let sent: Vec<Frame> = parse(input)
        .into_iter()
        .filter(|f| f.kind != HEADERS && f.kind != CONTINUATION)
        .collect();
    assert_eq!(others, sent, "every other frame passes as sent");
    out
}

#[tokio::test]
async fn a_valid_authority_leaves_the_connection_byte_identical() {
    let mut encoder = Encoder::new();
    let mut input = start();
    input.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0x10, 0, 0]));
    input.extend(frame(PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]));
    input.extend(request(
        1,
        &encode(&mut encoder, &call("localhost:50051", "/a.B/C", &[])),
    ));
    // Once the first block was fine, later ones are not even looked at.
    input.extend(request(
        3,
        &encode(&mut encoder, &call("/tmp/x.sock", "/a.B/C", &[])),
    ));
    input.extend(frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]));
    input.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]));
    assert_eq!(filtered(&input).await, input);
}

#[tokio::test]
async fn a_block_without_an_authority_is_left_alone() {
    let mut encoder = Encoder::new();
    let mut fields = call("x", "/a.B/C", &[]);
    fields.retain(|(n, _)| n != b":authority");
    let mut input = start();
    input.extend(request(1, &encode(&mut encoder, &fields)));
    assert_eq!(filtered(&input).await, input);
}

#[tokio::test]
async fn a_socket_path_or_its_percent_encoding_becomes_localhost() {
    for authority in ["/tmp/x.sock", "%2Ftmp%2Fx.sock", ""] {
        let fields = call(authority, "/grpc.health.v1.Health/Check", &[]);
        let mut input = start();
        input.extend(request(1, &encode(&mut Encoder::new(), &fields)));
        let out = assert_h2_sees(&input, &[fixed(fields.clone())]).await;
        assert_ne!(out, input, "{authority:?} is rewritten");
        assert!(
            fixed(fields)
                .iter()
                .any(|(n, v)| n == b":authority" && v == b"localhost"),
            "{authority:?} is one h2 refuses"
        );
    }
}

#[tokio::test]
async fn the_client_dynamic_table_is_followed_across_requests() {
    // loona's encoder indexes every new field and refers to it after, so
    // requests 2 and 3 are mostly references into the client's table:
    // into entries h2's table lacks once a block was re-encoded.
    let mut encoder = Encoder::new();
    let calls = [
        call("/tmp/x.sock", "/quern.v1.Jobs/Submit", &[("x-a", "1")]),
        call(
            "/tmp/x.sock",
            "/quern.v1.Jobs/Submit",
            &[("x-a", "1"), ("x-b", "2")],
        ),
        // A valid authority, on a connection already rewritten.
        call(
            "localhost",
            "/quern.v1.Jobs/Get",
            &[("x-b", "2"), ("x-a", "1")],
        ),
        call("/tmp/x.sock", "/quern.v1.Jobs/Get", &[("x-a", "3")]),
    ];
    let mut input = start();
    for (i, fields) in calls.iter().enumerate() {
        input.extend(request(2 * i as u32 + 1, &encode(&mut encoder, fields)));
    }
    let want: Vec<Fields> = calls.iter().cloned().map(fixed).collect();
    assert_h2_sees(&input, &want).await;
}

#[tokio::test]
async fn a_block_in_continuation_frames_is_rewritten_whole() {
    let fields = call(
        "/run/user/1000/quern/quernd.sock",
        "/a.B/C",
        &[("x-k", "v")],
    );
    let block = encode(&mut Encoder::new(), &fields);
    // Three frames, cut inside the authority's value.
    let cut = block
        .windows(5)
        .position(|w| w == b"/run/")
        .expect("the authority is in the block")
        + 3;
    let mut input = start();
    input.extend(frame(HEADERS, END_STREAM, 1, &block[..cut]));
    input.extend(frame(CONTINUATION, 0, 1, &block[cut..cut + 4]));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[cut + 4..]));
    let out = assert_h2_sees(&input, &[fixed(fields)]).await;
    let first = &parse(&out)[1];
    assert_eq!(
        (first.kind, first.flags & END_STREAM),
        (HEADERS, END_STREAM),
        "END_STREAM of the HEADERS frame is kept"
    );
}

#[tokio::test]
async fn padding_and_priority_on_headers_are_understood() {
    for authority in ["localhost", "/tmp/x.sock"] {
        let fields = call(authority, "/a.B/C", &[]);
        let block = encode(&mut Encoder::new(), &fields);
        let priority = [0x80, 0, 0, 0, 15];
        let mut payload = vec![6];
        payload.extend_from_slice(&priority);
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0; 6]);
        let mut input = start();
        input.extend(frame(HEADERS, END_HEADERS | PADDED | PRIORITY, 1, &payload));
        let out = assert_h2_sees(&input, &[fixed(fields)]).await;
        if authority == "localhost" {
            assert_eq!(out, input, "a valid block keeps its padding, byte for byte");
        } else {
            let headers = &parse(&out)[1];
            assert_eq!(headers.flags & (PRIORITY | PADDED), PRIORITY);
            assert_eq!(
                headers.payload[..5],
                priority,
                "the priority fields are kept"
            );
        }
    }
}

/// The Huffman code (RFC 7541, Appendix B) of the few characters these
/// tests use.
fn huffman(s: &str) -> Vec<u8> {
    let mut bits: u64 = 0;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.chars() {
        let (code, len) = match c {
            '%' => (0x15, 6),
            '.' => (0x17, 6),
            '/' => (0x18, 6),
            '2' => (0x2, 5),
            'F' => (0x61, 7),
            'c' => (0x4, 5),
            'k' => (0x75, 7),
            'm' => (0x29, 6),
            'o' => (0x7, 5),
            'p' => (0x2b, 6),
            's' => (0x8, 5),
            't' => (0x9, 5),
            'x' => (0x79, 7),
            _ => panic!("no code for {c:?} in this table"),
        };
        bits = bits << len | code;
        n += len;
        while n >= 8 {
            out.push((bits >> (n - 8)) as u8);
            n -= 8;
        }
    }
    if n > 0 {
        // Padded with the most significant bits of EOS: ones.
        out.push((bits << (8 - n)) as u8 | (0xff >> n));
    }
    out
}

#[tokio::test]
async fn huffman_coded_strings_are_decoded() {
    for authority in ["/tmp/x.sock", "%2Ftmp%2Fx.sock"] {
        let coded = huffman(authority);
        // Precondition: the code above is right.
        assert_eq!(
            HuffmanDecoder::new().decode(&coded).unwrap(),
            authority.as_bytes()
        );
        // RFC 7541, C.4.1: GET, http, /, and www.example.com coded; then
        // the authority coded, with an indexed name (:authority); then
        // C.4.3's coded custom-key: custom-value.
        let mut block = vec![
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        block.push(0x01);
        block.push(0x80 | coded.len() as u8);
        block.extend_from_slice(&coded);
        block.extend_from_slice(&[
            0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f, 0x89, 0x25, 0xa8, 0x49,
            0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
        ]);
        let mut input = start();
        input.extend(request(1, &block));
        let fields: Fields = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            (":authority", "localhost"),
            ("custom-key", "custom-value"),
        ]
        .into_iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        assert_h2_sees(&input, &[fields]).await;
    }
}

#[tokio::test]
async fn table_size_updates_and_the_client_header_table_setting_are_followed() {
    let mut encoder = Encoder::new();
    let mut input = start();
    // The client's SETTINGS_HEADER_TABLE_SIZE bounds h2's encoder, not the
    // client's: it passes, and changes nothing here.
    input.extend(frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0, 0]));
    let first = call("/tmp/x.sock", "/a.B/C", &[("x-a", "1")]);
    // The block starts with size updates to 0 (emptying the table) and
    // back to 4096.
    let updates = [0x20, 0x3f, 0xe1, 0x1f];
    let mut block = updates.to_vec();
    block.extend(encode(&mut encoder, &first));
    input.extend(request(1, &block));
    let second = call("/tmp/x.sock", "/a.B/C", &[("x-a", "1")]);
    input.extend(request(3, &encode(&mut encoder, &second)));
    let out = assert_h2_sees(&input, &[fixed(first), fixed(second)]).await;
    let frames = parse(&out);
    assert_eq!(
        frames[1].payload,
        [0, 1, 0, 0, 0, 0],
        "the client's SETTINGS pass"
    );
    assert_eq!(
        frames[2].payload[..4],
        updates,
        "the size updates lead the rewritten block"
    );
}

#[tokio::test]
async fn what_the_filter_cannot_follow_passes_untouched_for_h2_to_judge() {
    let good = |stream| {
        request(
            stream,
            &encode(&mut Encoder::new(), &call("/tmp/x.sock", "/a.B/C", &[])),
        )
    };
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("no preface", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()));
    let mut bytes = start();
    // An index past the end of the table.
    bytes.extend(frame(HEADERS, END_HEADERS, 1, &[0x82, 0x80 | 0x70]));
    bytes.extend(good(3));
    cases.push(("a block that does not decode, then a good one", bytes));
    let mut bytes = start();
    bytes.extend(frame(HEADERS, END_HEADERS, 1, &[0x82, 0x20]));
    cases.push(("a size update at the end of a block", bytes));
    let mut bytes = start();
    bytes.extend(frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x3f, 0x82]));
    cases.push(("a size update over the table's maximum", bytes));
    let mut bytes = start();
    bytes.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x82]));
    bytes.extend(good(3));
    cases.push(("CONTINUATION without HEADERS", bytes));
    let mut bytes = start();
    bytes.extend(frame(HEADERS, 0, 1, &[0x82]));
    bytes.extend(frame(DATA, 0, 1, &[1, 2, 3]));
    cases.push(("HEADERS without END_HEADERS, then DATA", bytes));
    let mut bytes = start();
    bytes.extend(frame(HEADERS, 0, 1, &[0x82]));
    bytes.extend(frame(CONTINUATION, END_HEADERS, 3, &[0x84]));
    cases.push(("CONTINUATION of another stream", bytes));
    let mut bytes = start();
    bytes.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82, 0]));
    cases.push(("padding longer than the frame", bytes));
    let mut bytes = start();
    bytes.extend(frame(HEADERS, END_HEADERS | PRIORITY, 1, &[0, 0, 0]));
    cases.push(("priority fields cut short", bytes));
    let mut bytes = start();
    bytes.extend_from_slice(&[0x20, 0, 0, HEADERS, END_HEADERS, 0, 0, 0, 1]);
    bytes.extend_from_slice(&[0x82; 100]);
    cases.push(("a HEADERS frame over the limit, cut short", bytes));
    let mut bytes = start();
    bytes.extend(frame(HEADERS, END_HEADERS, 1, &[0x82, 0x86])[..10].to_vec());
    cases.push(("the connection ends inside a header frame", bytes));
    let mut bytes = start();
    bytes.extend_from_slice(&[0, 0, 3, HEADERS]);
    cases.push(("the connection ends inside a frame header", bytes));
    for (what, input) in cases {
        let out = filtered(&input).await;
        assert_eq!(out, input, "{what}: passes untouched");
    }
}

#[tokio::test]
async fn a_block_that_does_not_decode_after_a_rewrite_ends_the_connection() {
    let fields = call("/tmp/x.sock", "/a.B/C", &[]);
    let first = request(1, &encode(&mut Encoder::new(), &fields));
    let mut input = start();
    input.extend_from_slice(&first);
    // An index past the end of the client's table.
    input.extend(frame(HEADERS, END_HEADERS, 3, &[0x82, 0x80 | 0x70]));
    input.extend(frame(DATA, END_STREAM, 3, &[0, 0, 0, 0, 0]));
    let mut filter = AuthorityFilter::new(Client::new(vec![input], false));
    let mut out = Vec::new();
    let err = loop {
        let mut buf = [0; 4096];
        match filter.read(&mut buf).await {
            Ok(0) => panic!("the connection ended without an error"),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let (blocks, others) = as_h2_sees(&out);
    assert_eq!(
        blocks,
        [fixed(fields)],
        "the first request got through, rewritten"
    );
    assert!(
        others.iter().all(|f| f.stream != 3),
        "nothing of the broken request reached h2: {others:?}"
    );
}

#[tokio::test]
async fn random_frames_never_panic_or_lose_a_byte_outside_header_blocks() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..300 {
        let mut input = start();
        for _ in 0..rng.random_range(1..6) {
            let kind = [DATA, HEADERS, CONTINUATION, SETTINGS, PING, 0x20][rng.random_range(0..6)];
            let flags = rng.random::<u8>();
            let len = rng.random_range(0..40);
            let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            input.extend(frame(kind, flags, rng.random_range(0..4), &payload));
        }
        input.truncate(input.len() - rng.random_range(0..4));
        let mut chunks = Vec::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let n = rng.random_range(1..=rest.len().min(50));
            chunks.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        let out = through(chunks, rng.random(), rng.random_range(1..64)).await;
        // No block of these decodes to a bad authority, so none is
        // rewritten: everything passes.
        assert_eq!(out, input);
    }
}

#[test]
fn a_rewritten_block_larger_than_a_frame_is_cut_into_continuations() {
    let big = "v".repeat(OUT_FRAME);
    let fields = call("/tmp/x.sock", "/a.B/C", &[("x-big", &big), ("x-more", "1")]);
    let mut input = start();
    input.extend(request(1, &encode(&mut Encoder::new(), &fields)));
    let mut scanner = Scanner::new();
    let mut out = BytesMut::new();
    let mut rest = &input[..];
    while !rest.is_empty() {
        if let Some(n) = scanner.passing(rest, usize::MAX) {
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        } else {
            let n = scanner.take(rest, &mut out).expect("whole frames");
            rest = &rest[n..];
        }
    }
    let frames = parse(&out);
    let kinds: Vec<(u8, u8)> = frames.iter().map(|f| (f.kind, f.flags)).collect();
    assert_eq!(
        kinds,
        [
            (SETTINGS, 0),
            (HEADERS, 0),
            (CONTINUATION, END_HEADERS),
            (DATA, END_STREAM)
        ]
    );
    assert!(frames.iter().all(|f| f.payload.len() <= OUT_FRAME));
    let (blocks, _) = as_h2_sees(&out);
    assert_eq!(blocks, [fixed(fields)]);
}

/// The filter in front of the real h2 server, as tonic runs it: requests
/// whose authority h2 refuses on its own are served, with the client's
/// other fields intact across requests that use its dynamic table.
#[tokio::test]
async fn h2_serves_requests_with_a_socket_path_authority() {
    async fn serve(
        filtered: bool,
        input: Vec<u8>,
    ) -> (Vec<http::Request<h2::RecvStream>>, Vec<u8>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        client_write.write_all(&input).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut bytes = Vec::new();
            let _ = client_read.read_to_end(&mut bytes).await;
            bytes
        });
        let mut got = Vec::new();
        {
            let io: Pin<Box<dyn AsyncReadWrite>> = if filtered {
                Box::pin(AuthorityFilter::new(server))
            } else {
                Box::pin(server)
            };
            let mut conn = h2::server::handshake(io).await.unwrap();
            // Served until the client's GOAWAY ends the connection.
            while let Some(request) = conn.accept().await {
                let (request, mut respond) = request.unwrap();
                respond
                    .send_response(http::Response::new(()), true)
                    .unwrap();
                got.push(request);
            }
        }
        drop(client_write);
        (got, reader.await.unwrap())
    }

    let mut encoder = Encoder::new();
    let mut input = start();
    for stream in [1, 3, 5] {
        let authority = if stream == 5 {
            "%2Ftmp%2Fx.sock"
        } else {
            "/tmp/x.sock"
        };
        let fields = call(
            authority,
            "/a.B/C",
            &[("x-n", &stream.to_string()), ("x-same", "s")],
        );
        input.extend(request(stream, &encode(&mut encoder, &fields)));
    }
    input.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0]));

    // Precondition: h2 alone refuses them (if this fails, h2 accepts such
    // authorities now and the filter may no longer be needed).
    let (alone, answers) = serve(false, input.clone()).await;
    assert!(alone.is_empty(), "h2 alone served {alone:?}");
    assert!(
        parse_server(&answers).iter().any(|f| f.kind == RST_STREAM),
        "h2 alone resets the streams"
    );

    let (served, _) = serve(true, input).await;
    assert_eq!(served.len(), 3, "all three requests are served");
    for (request, n) in served.iter().zip(["1", "3", "5"]) {
        assert_eq!(request.uri().authority().unwrap().as_str(), "localhost");
        assert_eq!(request.uri().path(), "/a.B/C");
        assert_eq!(request.headers()["x-n"], n);
        assert_eq!(request.headers()["x-same"], "s");
        assert_eq!(request.headers()["content-type"], "application/grpc");
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> AsyncReadWrite for T {}

/// The frames a server sent (it sends no preface of its own).
fn parse_server(bytes: &[u8]) -> Vec<Frame> {
    let mut with_preface = PREFACE.to_vec();
    with_preface.extend_from_slice(bytes);
    parse(&with_preface)
}

#[tokio::test]
async fn writes_pass_through_untouched() {
    let (ours, mut theirs) = tokio::io::duplex(1024);
    let mut filter = AuthorityFilter::new(ours);
    filter.write_all(b"server to client").await.unwrap();
    filter.shutdown().await.unwrap();
    let mut got = Vec::new();
    theirs.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"server to client");
}

#[tokio::test]
async fn the_connection_info_is_the_unix_stream_s() {
    let (ours, _theirs) = tokio::net::UnixStream::pair().unwrap();
    let filter = AuthorityFilter::new(ours);
    let cred = filter.connect_info().peer_cred.expect("peer credentials");
    assert_eq!(cred.uid(), nix::unistd::getuid().as_raw());
}
