//! End-to-end test of clients that send the socket path as the HTTP/2
//! `:authority` (grpcio, grpc-java, grpc-swift, grpcurl): quernd answers
//! them. The requests are written frame by frame, because Rust's HTTP/2
//! clients refuse such an authority themselves; so the test stays true
//! whatever version of h2 the daemon is built with.

use std::path::Path;

use anyhow::{Context as _, Result, bail, ensure};
use prost::Message as _;
use quern_tests::{TestDaemon, WAIT};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tonic_health::pb::HealthCheckResponse;
use tonic_health::pb::health_check_response::ServingStatus;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frames")
        .to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK "literal header field without indexing, new name", with plain
/// strings shorter than 127 bytes.
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    for s in [name, value] {
        assert!(s.len() < 127, "{s:?} is too long for this encoder");
    }
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// What came back for one gRPC call.
#[derive(Debug, Default)]
struct Answer {
    /// Response headers then trailers, in order.
    fields: Vec<(String, String)>,
    /// The DATA frames' payloads, joined.
    body: Vec<u8>,
}

impl Answer {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Calls `grpc.health.v1.Health/Check` for the server as a whole, on a new
/// connection, with `authority` as the `:authority`, and reads the answer.
async fn health_check(socket: &Path, authority: &str) -> Result<Answer> {
    let mut conn = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/grpc.health.v1.Health/Check"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        literal(&mut block, name, value);
    }
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_HEADERS, 1, &block));
    // One gRPC message: not compressed, 0 bytes long (an empty
    // HealthCheckRequest asks about the server as a whole).
    out.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));
    conn.write_all(&out).await?;
    tokio::time::timeout(WAIT, read_answer(&mut conn, authority))
        .await
        .with_context(|| format!("no answer within {WAIT:?} for :authority {authority:?}"))?
}

/// Reads frames until stream 1 ends, decoding its header blocks.
async fn read_answer(conn: &mut UnixStream, authority: &str) -> Result<Answer> {
    let mut decoder = loona_hpack::Decoder::new();
    let mut answer = Answer::default();
    let mut buf = Vec::new();
    let mut fragment = Vec::new();
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload: Vec<u8> = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    conn.write_all(&frame(SETTINGS, ACK, 0, &[])).await?
                }
                RST_STREAM => bail!(
                    "quernd reset the stream for :authority {authority:?} (HTTP/2 error code {})",
                    payload
                        .first_chunk::<4>()
                        .map_or(0, |code| u32::from_be_bytes(*code))
                ),
                GOAWAY => bail!("quernd closed the connection for :authority {authority:?}"),
                DATA if stream == 1 => answer.body.extend_from_slice(&payload),
                HEADERS | CONTINUATION if stream == 1 => {
                    fragment.extend_from_slice(&payload);
                    if flags & END_HEADERS != 0 {
                        let fields = decoder.decode(&fragment).map_err(|e| {
                            anyhow::anyhow!("quernd's headers do not decode: {e:?}")
                        })?;
                        fragment.clear();
                        answer.fields.extend(fields.into_iter().map(|(n, v)| {
                            (
                                String::from_utf8_lossy(&n).into_owned(),
                                String::from_utf8_lossy(&v).into_owned(),
                            )
                        }));
                    }
                }
                _ => {}
            }
            if stream == 1 && flags & END_STREAM != 0 && kind != SETTINGS {
                return Ok(answer);
            }
        }
        let mut chunk = [0; 4096];
        let n = conn.read(&mut chunk).await?;
        ensure!(n > 0, "quernd closed the connection mid-answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Checks a health answer: HTTP 200, grpc-status 0, one message saying
/// SERVING.
fn assert_serving(answer: &Answer, authority: &str) -> Result<()> {
    ensure!(
        answer.get(":status") == Some("200"),
        "{authority:?}: :status {:?}",
        answer.get(":status")
    );
    ensure!(
        answer.get("grpc-status") == Some("0"),
        "{authority:?}: grpc-status {:?}, grpc-message {:?}",
        answer.get("grpc-status"),
        answer.get("grpc-message")
    );
    let body = &answer.body;
    ensure!(
        body.len() >= 5 && body[0] == 0,
        "{authority:?}: not one uncompressed gRPC message: {body:?}"
    );
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    ensure!(
        body.len() == 5 + len,
        "{authority:?}: message length {len}, body {body:?}"
    );
    let response = HealthCheckResponse::decode(&body[5..])?;
    ensure!(
        response.status() == ServingStatus::Serving,
        "{authority:?}: health says {:?}",
        response.status()
    );
    Ok(())
}

#[tokio::test]
async fn a_socket_path_as_authority_is_answered() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let real = daemon.socket().display().to_string();
    for authority in [
        "/tmp/x.sock",
        "%2Ftmp%2Fx.sock",
        // What grpcio 1.85 sends for unix:/tmp/x.sock.
        "tmp%2Fx.sock",
        // The daemon's own socket path, as grpc-java sends it.
        real.as_str(),
        // And what a well-behaved client sends still works.
        "localhost",
    ] {
        let answer = health_check(daemon.socket(), authority).await?;
        assert_serving(&answer, authority)?;
    }
    Ok(())
}

/// The daemon bounds what one connection can make it hold: its first
/// SETTINGS frame limits concurrent streams to 256.
#[tokio::test]
async fn a_connection_is_limited_to_256_concurrent_streams() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut conn = UnixStream::connect(daemon.socket()).await?;
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    conn.write_all(&hello).await?;
    let read = async {
        let mut head = [0u8; 9];
        conn.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).await?;
        anyhow::Ok((head[3], payload))
    };
    let (kind, payload) = tokio::time::timeout(WAIT, read)
        .await
        .context("no SETTINGS from quernd")??;
    ensure!(
        kind == SETTINGS,
        "the server's first frame is of type {kind}"
    );
    // SETTINGS_MAX_CONCURRENT_STREAMS is parameter 3.
    let limit = payload
        .chunks_exact(6)
        .find(|p| u16::from_be_bytes([p[0], p[1]]) == 3)
        .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
    ensure!(
        limit == Some(256),
        "SETTINGS_MAX_CONCURRENT_STREAMS is {limit:?}"
    );
    Ok(())
}
