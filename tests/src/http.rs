//! A loopback HTTP/1.1 server for the fetch tests: each test starts its own
//! on 127.0.0.1:0 with a handler that decides every answer, and reads back
//! what the server saw (requests, their headers and bodies) and how many
//! body bytes it served.
//!
//! hyper's server rather than a hand-written one: the tests must exercise
//! a real HTTP implementation, with keep-alive and framing done right, so
//! that a failure is the daemon's. The server stops when it is dropped:
//! its accept loop and every connection are tasks of a `JoinSet` it owns.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ::http::{HeaderMap, Request, Response, StatusCode, header};
use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Its index among the server's requests, from 0.
    pub n: usize,
    pub method: String,
    /// The path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the server does with a request.
#[derive(Clone, Debug)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    /// Body bytes per second, if limited.
    throttle: Option<u64>,
    /// Close the connection after this many body bytes.
    drop_after: Option<u64>,
    /// Close the connection without answering at all.
    hang_up: bool,
    /// After `drop_after` bytes, keep the connection open and silent.
    stall: bool,
}

impl Reply {
    /// An answer with `status` and no body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: Bytes::new(),
            throttle: None,
            drop_after: None,
            hang_up: false,
            stall: false,
        }
    }

    /// A 200 with `body`.
    pub fn ok(body: impl Into<Bytes>) -> Reply {
        Reply::status(200).body(body)
    }

    /// Closes the connection without an answer (after reading the request).
    pub fn hang_up() -> Reply {
        Reply {
            hang_up: true,
            ..Reply::status(500)
        }
    }

    /// A redirect to `location`.
    pub fn redirect(status: u16, location: &str) -> Reply {
        Reply::status(status).header("location", location)
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = body.into();
        self
    }

    /// Sends the body at `bytes_per_sec`.
    pub fn throttle(mut self, bytes_per_sec: u64) -> Reply {
        self.throttle = Some(bytes_per_sec.max(1));
        self
    }

    /// Closes the connection after `n` body bytes (the full length still
    /// announced).
    pub fn drop_after(mut self, n: u64) -> Reply {
        self.drop_after = Some(n);
        self
    }

    /// Sends `n` body bytes, then nothing more, keeping the connection
    /// open until the client goes away.
    pub fn stall_after(mut self, n: u64) -> Reply {
        self.drop_after = Some(n);
        self.stall = true;
        self
    }

    /// Sends the body in chunked encoding, with no Content-Length.
    pub fn chunked(self) -> Reply {
        self.header("transfer-encoding", "chunked")
    }
}

/// A file the server serves, with its validators.
#[derive(Clone, Debug)]
pub struct Resource {
    pub body: Bytes,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Resource {
    /// `body`, with a strong ETag made from `tag` and a fixed Last-Modified.
    pub fn new(body: impl Into<Bytes>, tag: &str) -> Resource {
        Resource {
            body: body.into(),
            etag: Some(format!("\"{tag}\"")),
            last_modified: Some(httpdate::fmt_http_date(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            )),
        }
    }

    /// Answers `req` as a server that knows the resource would: 304 to a
    /// matching conditional request; 206 to a Range (`bytes=N-`) whose
    /// If-Range matches, when `ranges`; 416 past the end; else 200.
    pub fn answer(&self, req: &Seen, ranges: bool) -> Reply {
        let mut r = Reply::status(200);
        if let Some(tag) = &self.etag {
            r = r.header("etag", tag);
        }
        if let Some(date) = &self.last_modified {
            r = r.header("last-modified", date);
        }
        let inm = req.header("if-none-match");
        let ims = req.header("if-modified-since");
        let not_modified = match (inm, &self.etag) {
            (Some(inm), Some(tag)) => inm == tag,
            (Some(_), None) => false,
            (None, _) => ims.is_some() && ims == self.last_modified.as_deref(),
        };
        if not_modified {
            r.status = 304;
            return r;
        }
        let len = self.body.len() as u64;
        let range = req
            .header("range")
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.strip_suffix('-'))
            .and_then(|v| v.parse::<u64>().ok());
        let if_range_ok = match req.header("if-range") {
            None => true,
            Some(v) => Some(v) == self.etag.as_deref() || Some(v) == self.last_modified.as_deref(),
        };
        if let (true, Some(from), true) = (ranges, range, if_range_ok) {
            if from >= len {
                r.status = 416;
                return r.header("content-range", &format!("bytes */{len}"));
            }
            r.status = 206;
            return r
                .header("content-range", &format!("bytes {from}-{}/{len}", len - 1))
                .body(self.body.slice(from as usize..));
        }
        r.body(self.body.clone())
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct Shared {
    handler: Handler,
    seen: Mutex<Vec<Seen>>,
    served: AtomicU64,
}

/// A running server; stops when dropped.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _tasks: JoinSet<()>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1 whose answers `handler` decides.
    pub async fn start(
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Result<TestServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            handler: Arc::new(handler),
            seen: Mutex::new(vec![]),
            served: AtomicU64::new(0),
        });
        let mut tasks = JoinSet::new();
        let s = shared.clone();
        tasks.spawn(async move {
            // The connections are owned here, so that they end with the
            // server.
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                // Reap finished connections as they go.
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(TestServer {
            addr,
            shared,
            _tasks: tasks,
        })
    }

    /// The URL of `path` (which starts with `/`) on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `host:port`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests so far.
    pub fn requests(&self) -> usize {
        self.seen().len()
    }

    /// Body bytes handed to connections so far.
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let seen = {
        let mut all = shared.seen.lock().unwrap_or_else(|e| e.into_inner());
        let seen = Seen {
            n: all.len(),
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".into(), ToString::to_string),
            headers: parts.headers,
            body,
        };
        all.push(seen.clone());
        seen
    };
    let reply = (shared.handler)(&seen);
    if reply.hang_up {
        // An error from the service makes hyper close the connection
        // without answering.
        return Err(std::io::Error::other("hanging up, as the test asked"));
    }
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(reply.status).map_err(std::io::Error::other)?);
    let chunked = reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"));
    for (k, v) in &reply.headers {
        resp = resp.header(k, v);
    }
    let len = reply.body.len() as u64;
    let bodiless = seen.method == "HEAD" || matches!(reply.status, 204 | 304);
    if !chunked && !bodiless {
        resp = resp.header(header::CONTENT_LENGTH, len);
    }
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    if !bodiless {
        tokio::spawn(send_body(shared.clone(), reply, tx));
    }
    let body = StreamBody::new(ReceiverStream::new(rx)).boxed();
    resp.body(body).map_err(std::io::Error::other)
}

/// Feeds the body to the connection, throttled and cut as the reply says.
async fn send_body(
    shared: Arc<Shared>,
    reply: Reply,
    tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
) {
    const TICK: Duration = Duration::from_millis(50);
    let body = reply.body;
    let end = reply
        .drop_after
        .map_or(body.len(), |n| (n as usize).min(body.len()));
    let step = match reply.throttle {
        Some(bps) => ((bps / 20) as usize).max(1),
        None => 64 * 1024,
    };
    let mut at = 0;
    while at < end {
        let next = (at + step).min(end);
        if tx
            .send(Ok(Frame::data(body.slice(at..next))))
            .await
            .is_err()
        {
            return;
        }
        shared
            .served
            .fetch_add((next - at) as u64, Ordering::SeqCst);
        at = next;
        if reply.throttle.is_some() && at < end {
            tokio::time::sleep(TICK).await;
        }
    }
    if reply.stall {
        tx.closed().await;
        return;
    }
    if reply.drop_after.is_some() {
        // An error frame makes hyper abort the connection mid-body.
        let _ = tx
            .send(Err(std::io::Error::other("dropping, as the test asked")))
            .await;
    }
}
