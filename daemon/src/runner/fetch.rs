//! The fetch kind: an HTTP request whose answer is saved to a file (a
//! download) or discarded (a webhook), run inside quernd.
//!
//! An attempt runs as a task on the job's thread ([`InProcess`]), and only
//! waits there: the body's writes, fsyncs and hashing go to a blocking
//! thread through a bounded channel (see [`file::Writer`]).
//!
//! **Invariants.**
//! - **dest is only ever replaced whole**: the body goes to `dest.part`,
//!   which is synced, checked (length, `max_bytes`, sha256) and renamed
//!   over dest, and the directory is synced.
//! - **A `.part` file is resumed only with the validator it was fetched
//!   with**: the checkpoint holds the spec's URL and the `If-Range`
//!   validator, saved as soon as the answer's headers arrive, before any
//!   body byte is written; the `.part` file's length says how far it got.
//!   Any doubt (no checkpoint, another URL, no validator, a 200 to the
//!   Range request, a Content-Range that does not start where asked)
//!   restarts the file from zero.
//! - **A sent request that is not idempotent is not sent again**, unless
//!   the spec says `retry_unsafe`: its failure is final.
//! - Every request's outcome is reported to the host policy
//!   ([`super::HostFeedback`]), and every request after an attempt's first
//!   waits for the host's pace.
//!
//! **The `.part` file's length is where a resume starts.** It is exact
//! after quernd is killed (the kernel keeps what was written), so the
//! checkpoint is saved once per answer, not per chunk, and the `.part`
//! file is not synced along the way: a periodic sync would not make its
//! length trustworthy after a power cut either (a file system may keep a
//! length whose tail never reached the disk; the sha256, when given,
//! catches that), while the sync before the rename is what makes dest
//! safe.
//!
//! On a stop (a Cancel call, a timeout or quernd stopping: the attempt
//! cannot tell which) the `.part` file is kept, for a restart of quernd
//! must resume it; a job cancelled for good leaves it behind, next to
//! dest. A GET that fails for good (a 4xx, a checksum, `max_bytes`)
//! removes it.

mod file;
mod wire;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use tokio::time::Instant;
use url::Url;

pub use file::{check_body_file, check_dest};

use super::in_process::InProcess;
use super::{Attempt, AttemptCtx, Ended, HostOutcome, Kind};
use crate::config::fetch::{FetchConfig, host_key};
use crate::job::fetch::{FetchResult, FetchSpec, HttpMethod, Overwrite};
use crate::job::{JobKind, JobResult, JobSpec, Progress, RunRecord};
use file::{Validators, Writer};
use wire::{ContentRange, Saved, Verdict};

/// The submit-time checks of a fetch spec against the file system (its
/// rules that need no disk are in `job::fetch`): `dest` must be writable
/// as a file, and `body_file` must exist. The attempt checks `dest` again,
/// since the disk may change before it runs.
pub fn check_files(spec: &FetchSpec) -> Result<(), (&'static str, String)> {
    if let Some(dest) = &spec.dest
        && let Some(why) = check_dest(Path::new(dest))
    {
        return Err((".fetch.dest", why));
    }
    if let Some(body) = &spec.body_file
        && let Some(why) = check_body_file(Path::new(body))
    {
        return Err((".fetch.body_file", why));
    }
    Ok(())
}

/// The fetch kind.
pub struct Fetch;

impl Kind for Fetch {
    fn start(&self, spec: &JobSpec, ctx: AttemptCtx) -> Result<Box<dyn Attempt>, String> {
        let JobKind::Fetch(spec) = &spec.kind else {
            return Err("the fetch kind was given another kind's spec".into());
        };
        // Checked at submit; checked again for a spec stored by an older
        // quernd, whose rules may have been looser.
        let url = crate::job::fetch::check_url(&spec.url)?;
        let spec = spec.clone();
        Ok(InProcess::start(ctx, move |ctx| async move {
            Transfer::new(spec, url, ctx).run().await
        }))
    }

    /// Nothing to clean: the attempt was a task in the quernd that died,
    /// and the `.part` file it left is what the next attempt resumes.
    fn recover(&self, _run: &RunRecord) -> Option<String> {
        None
    }
}

thread_local! {
    /// The job thread's HTTP client. One per job thread, not one per
    /// attempt, so that keep-alive connections are reused across jobs to
    /// the same host (a batch of small files then costs one TLS handshake,
    /// not one each); and not one for the daemon, because a connection's
    /// task lives on the runtime that opened it, and each job thread has
    /// its own single-threaded runtime: sharing would make one thread's
    /// downloads depend on another thread being free.
    static CLIENT: RefCell<Option<reqwest::Client>> = const { RefCell::new(None) };
}

/// The job thread's client, built on first use from the `[fetch]`
/// settings, which do not change while quernd runs.
fn client(config: &FetchConfig) -> Result<reqwest::Client, String> {
    CLIENT.with(|c| {
        if let Some(client) = &*c.borrow() {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            // Redirects are followed here, to pace each hop's host, report
            // it, and name a loop's URLs.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("quern/", env!("CARGO_PKG_VERSION")))
            // Bodies are saved as sent: a gzip-encoded file stays gzip, and
            // Content-Length and ranges count the bytes on the wire.
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", describe(&e)))?;
        *c.borrow_mut() = Some(client.clone());
        Ok(client)
    })
}

/// A `.part` file the checkpoint lets this attempt resume.
struct Resume {
    /// Its length: the bytes already there.
    len: u64,
    /// The `If-Range` validator it was fetched with.
    validator: String,
}

/// What one exchange (request and body) came to.
enum Step {
    Done(Ended),
    /// Start the file again from zero, with a fresh request.
    Restart(String),
}

/// One attempt of a fetch.
struct Transfer {
    spec: FetchSpec,
    ctx: AttemptCtx,
    url: Url,
    dest: Option<PathBuf>,
    /// Requests sent by this attempt: the first one's turn was taken by
    /// admission; later ones wait for the host's pace.
    requests: u32,
    /// When the attempt's first request went out.
    began: Option<Instant>,
    /// The validators of the body being downloaded, for the next
    /// conditional GET once it is in place.
    last_etag: Option<String>,
    last_modified: Option<String>,
}

/// What a stopped attempt returns. The runner records the stop, not this;
/// `retry` is true so that the `.part` file is kept for the resume that
/// follows a restart of quernd (see the module doc).
fn cancelled() -> Ended {
    failed("stopped".into(), true)
}

/// A failure; another attempt may help if `retry`.
fn failed(error: String, retry: bool) -> Ended {
    Ended::Failed {
        exit_code: None,
        error,
        retry,
    }
}

impl Transfer {
    fn new(spec: FetchSpec, url: Url, ctx: AttemptCtx) -> Transfer {
        let dest = spec.dest.as_ref().map(PathBuf::from);
        Transfer {
            spec,
            ctx,
            url,
            dest,
            requests: 0,
            began: None,
            last_etag: None,
            last_modified: None,
        }
    }

    fn config(&self) -> &FetchConfig {
        &self.ctx.env.config.fetch
    }

    fn is_get(&self) -> bool {
        self.spec.method == HttpMethod::Get
    }

    async fn run(mut self) -> Ended {
        let ended = self.attempt().await;
        // A GET that failed for good has no use for its .part file. One
        // that may be retried keeps it, even when this was the last
        // attempt: the kind cannot know, and a resubmit resumes it.
        if let Ended::Failed { retry: false, .. } = &ended
            && self.is_get()
        {
            self.clear_part().await;
        }
        ended
    }

    async fn attempt(&mut self) -> Ended {
        let mut resume = None;
        let mut conditional = None;
        if let Some(dest) = self.dest.clone() {
            let checked = dest.clone();
            if let Some(why) = blocking(move || check_dest(&checked)).await.flatten() {
                return failed(why, false);
            }
            let exists = tokio::fs::try_exists(&dest).await.unwrap_or(false);
            match self.spec.overwrite {
                Overwrite::Skip if exists && self.is_get() => return self.skipped(&dest).await,
                Overwrite::Error if exists => {
                    return failed(
                        format!(
                            "{} exists, and overwrite is error; remove it, or submit with overwrite replace or skip",
                            dest.display()
                        ),
                        false,
                    );
                }
                _ => {}
            }
            if self.is_get() {
                resume = self.resumable(&dest).await;
                if resume.is_none() && exists {
                    let state = self.ctx.env.state_dir.clone();
                    let url = self.spec.url.clone();
                    conditional = blocking(move || Validators::load_current(&state, &url, &dest))
                        .await
                        .flatten();
                }
            }
        }
        if let Some(body) = self.spec.body_file.clone()
            && let Some(why) = blocking(move || check_body_file(Path::new(&body)))
                .await
                .flatten()
        {
            return failed(why, false);
        }
        // At most one restart from zero per attempt: a server that keeps
        // answering ranges wrongly fails the attempt instead of looping.
        for _ in 0..2 {
            match self.exchange(resume.take(), conditional.take()).await {
                Step::Done(ended) => return ended,
                Step::Restart(why) => {
                    tracing::info!(
                        job = self.ctx.job,
                        "{why}; restarting the download from zero"
                    );
                }
            }
        }
        failed(
            format!(
                "{} kept answering ranges that do not fit the file; try again later",
                self.url
            ),
            true,
        )
    }

    /// `overwrite: skip` found dest: success, with no request.
    async fn skipped(&self, dest: &Path) -> Ended {
        let bytes = tokio::fs::metadata(dest).await.map_or(0, |m| m.len());
        Ended::Succeeded {
            exit_code: None,
            result: Some(JobResult::Fetch(FetchResult {
                final_url: self.spec.url.clone(),
                status: 0,
                bytes,
                sha256: String::new(),
                unchanged: true,
                transfer_micros: 0,
                resumed_bytes: 0,
            })),
        }
    }

    /// The `.part` file of `dest` an earlier attempt left, if the
    /// checkpoint says how to resume it.
    async fn resumable(&self, dest: &Path) -> Option<Resume> {
        let saved = match self.ctx.checkpoint.load().await {
            Ok(Some(bytes)) => Saved::decode(&bytes)?,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(
                    job = self.ctx.job,
                    "cannot read the checkpoint ({e}); downloading from zero"
                );
                return None;
            }
        };
        if saved.url != self.spec.url {
            return None;
        }
        let len = tokio::fs::metadata(file::part_path(dest)).await.ok()?.len();
        let validator = saved.validator?;
        (len > 0).then_some(Resume { len, validator })
    }

    /// Sends the request (following redirects) and deals with the answer.
    async fn exchange(&mut self, resume: Option<Resume>, conditional: Option<Validators>) -> Step {
        let (mut resp, url) = match self.send(resume.as_ref(), conditional.as_ref()).await {
            Ok(r) => r,
            Err(ended) => return Step::Done(ended),
        };
        let host = host_key(&url);
        let status = resp.status();
        let hosts = self.ctx.env.hosts.clone();
        if status == StatusCode::NOT_MODIFIED && conditional.is_some() {
            hosts.report(&host, HostOutcome::Answered);
            let bytes = match &self.dest {
                Some(d) => tokio::fs::metadata(d).await.map_or(0, |m| m.len()),
                None => 0,
            };
            return Step::Done(self.succeeded(&url, status, bytes, String::new(), true, 0));
        }
        if status == StatusCode::RANGE_NOT_SATISFIABLE
            && let Some(r) = &resume
        {
            hosts.report(&host, HostOutcome::Answered);
            let complete = header_str(resp.headers(), header::CONTENT_RANGE)
                .and_then(wire::content_range)
                .and_then(|c| match c {
                    ContentRange::Unsatisfied { complete } => Some(complete),
                    ContentRange::Bytes { .. } => None,
                });
            // The validator matched (else If-Range would have brought a
            // 200) and the file is exactly as long as the .part: an earlier
            // attempt got every byte and stopped before the rename.
            if complete == Some(r.len) {
                return Step::Done(
                    self.finish(
                        &url,
                        status,
                        Writer::start(self.part(), r.len),
                        r.len,
                        Some(r.len),
                    )
                    .await,
                );
            }
            self.clear_part().await;
            return Step::Restart(format!(
                "{url} cannot serve bytes from {} of the .part file (416)",
                r.len
            ));
        }
        if !status.is_success() {
            let wait = header_str(resp.headers(), header::RETRY_AFTER)
                .and_then(|v| wire::retry_after(v, SystemTime::now()));
            let verdict = wire::verdict(status.as_u16(), wait);
            hosts.report(
                &host,
                match verdict {
                    Verdict::Wait(d) => HostOutcome::RetryAfter(d),
                    _ if status.is_server_error() => HostOutcome::Failed,
                    _ => HostOutcome::Answered,
                },
            );
            return Step::Done(match verdict {
                Verdict::Wait(after) => Ended::Deferred {
                    after,
                    reason: format!(
                        "{host} asked to wait {} ({status}, Retry-After)",
                        humantime::format_duration(after)
                    ),
                },
                Verdict::Retry => failed(
                    format!("{} {url} answered {status}", self.spec.method),
                    wire::may_resend(true, self.spec.method.idempotent(), self.spec.retry_unsafe),
                ),
                Verdict::Fail => failed(
                    format!(
                        "{} {url} answered {status}; another attempt would get the same",
                        self.spec.method
                    ),
                    false,
                ),
            });
        }
        hosts.report(&host, HostOutcome::Answered);
        let partial = status == StatusCode::PARTIAL_CONTENT;
        let keep = match (&resume, partial) {
            (Some(r), true) => {
                match header_str(resp.headers(), header::CONTENT_RANGE)
                    .and_then(wire::content_range)
                {
                    Some(ContentRange::Bytes { first, .. })
                        if first == r.len && self.same_validator(resp.headers(), r) =>
                    {
                        r.len
                    }
                    other => {
                        self.clear_part().await;
                        return Step::Restart(format!(
                            "{url} answered the range from {} with {other:?}",
                            r.len
                        ));
                    }
                }
            }
            (None, true) => {
                return Step::Done(failed(
                    format!(
                        "{url} answered 206 Partial Content to a request for the whole body; the server is broken"
                    ),
                    true,
                ));
            }
            (Some(r), false) => {
                tracing::info!(
                    job = self.ctx.job,
                    "{url} sent the whole body instead of bytes from {} (it ignores ranges, or the file changed); restarting from zero",
                    r.len
                );
                0
            }
            (None, false) => 0,
        };
        let expected = resp.content_length().map(|n| keep + n);
        if let (Some(max), Some(total)) = (self.spec.max_bytes, expected)
            && total > max
        {
            self.clear_part().await;
            return Step::Done(failed(
                format!(
                    "{url} is {total} bytes, over max_bytes {max}; raise max_bytes if it is expected"
                ),
                false,
            ));
        }
        if self.is_get() && self.dest.is_some() {
            if keep == 0 {
                // Emptied before the new validator is saved: were quernd
                // killed in between, a .part of the old body must not be
                // resumed as if it were the new one.
                self.clear_part().await;
            }
            let saved = Saved {
                v: Saved::VERSION,
                url: self.spec.url.clone(),
                validator: wire::range_validator(
                    header_str(resp.headers(), header::ETAG),
                    header_str(resp.headers(), header::LAST_MODIFIED),
                ),
            };
            // Before the first body byte is written: a .part file on disk
            // always has its validator saved.
            if let Err(e) = self.ctx.checkpoint.save(saved.encode()).await {
                return Step::Done(failed(format!("cannot save the checkpoint: {e}"), true));
            }
        }
        self.last_etag = header_str(resp.headers(), header::ETAG).map(str::to_string);
        self.last_modified = header_str(resp.headers(), header::LAST_MODIFIED).map(str::to_string);
        let part = if self.dest.is_some() {
            self.part()
        } else {
            None
        };
        let writer = Writer::start(part, keep);
        Step::Done(self.stream(&mut resp, &url, writer, keep, expected).await)
    }

    /// Whether a 206 answer is of the body the `.part` file holds: its
    /// validator, if it sends one, is the one If-Range named (a server
    /// that honours If-Range always sends the same).
    fn same_validator(&self, headers: &HeaderMap, r: &Resume) -> bool {
        let now = wire::range_validator(
            header_str(headers, header::ETAG),
            header_str(headers, header::LAST_MODIFIED),
        );
        now.is_none_or(|v| v == r.validator)
    }

    /// The `.part` path, for a download to dest.
    fn part(&self) -> Option<PathBuf> {
        self.dest.as_deref().map(file::part_path)
    }

    /// Removes the `.part` file, if any.
    async fn clear_part(&self) {
        if let Some(part) = self.part() {
            let _ = blocking(move || file::remove_if_there(&part)).await;
        }
    }

    /// Streams the body into `writer`, then finishes.
    async fn stream(
        &mut self,
        resp: &mut reqwest::Response,
        url: &Url,
        writer: Writer,
        keep: u64,
        expected: Option<u64>,
    ) -> Ended {
        let status = resp.status();
        let host = host_key(url);
        let config = self.config().clone();
        let mut done = keep;
        let progress = |done: u64, rate: u64| Progress {
            phase: "download".into(),
            done,
            total: expected.unwrap_or(0),
            unit: "bytes".into(),
            rate,
        };
        self.ctx.progress.report(progress(done, 0));
        // The speed rule looks at windows of `speed_time`; the rate shown
        // at the bytes of the last half second or more.
        let mut window = (Instant::now(), done);
        let mut sample = (Instant::now(), done);
        let mut rate = 0;
        loop {
            let chunk = tokio::select! {
                biased;
                _ = self.ctx.cancel.cancelled() => {
                    // The .part file stays for a resume (see the module doc).
                    let _ = writer.finish().await;
                    return cancelled();
                }
                _ = tokio::time::sleep_until(window.0 + config.speed_time), if config.speed_limit > 0 => {
                    let secs = config.speed_time.as_secs_f64();
                    let speed = (done - window.1) as f64 / secs;
                    if speed < config.speed_limit as f64 {
                        self.ctx.env.hosts.report(&host, HostOutcome::Failed);
                        let _ = writer.finish().await;
                        return failed(
                            format!(
                                "{url} sent {speed:.0} B/s over {}, below the speed_limit of {} B/s; the transfer stalled",
                                humantime::format_duration(config.speed_time),
                                config.speed_limit
                            ),
                            true,
                        );
                    }
                    window = (Instant::now(), done);
                    continue;
                }
                c = tokio::time::timeout(config.idle_timeout, resp.chunk()) => c,
            };
            let chunk = match chunk {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    self.ctx.env.hosts.report(&host, HostOutcome::Failed);
                    let _ = writer.finish().await;
                    return failed(
                        format!(
                            "reading the body of {url} after {done} bytes: {}",
                            describe(&e)
                        ),
                        self.may_resend_after_answer(),
                    );
                }
                Err(_) => {
                    self.ctx.env.hosts.report(&host, HostOutcome::Failed);
                    let _ = writer.finish().await;
                    return failed(
                        format!(
                            "{url} sent nothing for {} after {done} bytes (idle_timeout)",
                            humantime::format_duration(config.idle_timeout)
                        ),
                        self.may_resend_after_answer(),
                    );
                }
            };
            done += chunk.len() as u64;
            if let Some(max) = self.spec.max_bytes
                && done > max
            {
                let _ = writer.finish().await;
                self.clear_part().await;
                return failed(
                    format!(
                        "the body of {url} grew past max_bytes {max}; raise max_bytes if it is expected"
                    ),
                    false,
                );
            }
            if !writer.write(chunk).await {
                // The writer stopped on an error, which finish reports.
                break;
            }
            let now = Instant::now();
            if now.duration_since(sample.0) >= Duration::from_millis(500) {
                let secs = now.duration_since(sample.0).as_secs_f64();
                rate = ((done - sample.1) as f64 / secs) as u64;
                sample = (now, done);
            }
            self.ctx.progress.report(progress(done, rate));
        }
        self.finish(url, status, writer, keep, expected).await
    }

    /// Whether a failure after the answer began may be retried.
    fn may_resend_after_answer(&self) -> bool {
        wire::may_resend(true, self.spec.method.idempotent(), self.spec.retry_unsafe)
    }

    /// Checks the complete body and renames it over dest.
    async fn finish(
        &mut self,
        url: &Url,
        status: StatusCode,
        writer: Writer,
        keep: u64,
        expected: Option<u64>,
    ) -> Ended {
        let written = match writer.finish().await {
            Ok(w) => w,
            Err(e) => {
                let what = self
                    .part()
                    .map_or_else(|| "the body".to_string(), |p| p.display().to_string());
                return failed(format!("cannot write {what}: {e}"), true);
            }
        };
        if let Some(total) = expected
            && written.len != total
        {
            return failed(
                format!("{url} ended the body at {} of {total} bytes", written.len),
                self.may_resend_after_answer(),
            );
        }
        if let Some(want) = &self.spec.sha256
            && !want.eq_ignore_ascii_case(&written.sha256)
        {
            self.clear_part().await;
            return failed(
                format!(
                    "sha256 mismatch for {url}: expected {}, got {}; the file was removed (check the checksum, or the source)",
                    want.to_ascii_lowercase(),
                    written.sha256
                ),
                false,
            );
        }
        if let (Some(dest), Some(part)) = (self.dest.clone(), self.part()) {
            // Only a GET's answer describes what a later GET would get.
            let headers = if self.is_get() {
                (self.last_etag.take(), self.last_modified.take())
            } else {
                (None, None)
            };
            let state = self.ctx.env.state_dir.clone();
            let url_s = self.spec.url.clone();
            let renamed = blocking(move || -> std::io::Result<()> {
                let (size, mtime_nanos) = file::finish_part(&part, &dest)?;
                let v = Validators {
                    url: url_s,
                    dest: dest.to_string_lossy().into_owned(),
                    etag: headers.0,
                    last_modified: headers.1,
                    size,
                    mtime_nanos,
                };
                if let Err(e) = v.save(&state) {
                    tracing::warn!("cannot save the validators of {}: {e}; the next fetch of it is not conditional", dest.display());
                }
                Ok(())
            })
            .await;
            match renamed {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    return failed(
                        format!(
                            "cannot move the download into place at {}: {e}",
                            self.dest.as_deref().unwrap_or(Path::new("")).display()
                        ),
                        true,
                    );
                }
                None => return failed("the file thread failed".into(), true),
            }
        }
        self.succeeded(url, status, written.len, written.sha256, false, keep)
    }

    fn succeeded(
        &self,
        url: &Url,
        status: StatusCode,
        bytes: u64,
        sha256: String,
        unchanged: bool,
        resumed_bytes: u64,
    ) -> Ended {
        let transfer_micros = self.began.map_or(0, |b| {
            u64::try_from(b.elapsed().as_micros()).unwrap_or(u64::MAX)
        });
        Ended::Succeeded {
            exit_code: None,
            result: Some(JobResult::Fetch(FetchResult {
                final_url: url.to_string(),
                status: u32::from(status.as_u16()),
                bytes,
                sha256,
                unchanged,
                transfer_micros,
                resumed_bytes,
            })),
        }
    }
}

impl Transfer {
    /// Sends the request, following redirects; the answer that is not a
    /// redirect, and the URL that gave it.
    async fn send(
        &mut self,
        resume: Option<&Resume>,
        conditional: Option<&Validators>,
    ) -> Result<(reqwest::Response, Url), Ended> {
        let client = client(self.config()).map_err(|e| failed(e, true))?;
        let max_redirects = self.config().max_redirects;
        let idle = self.config().idle_timeout;
        let mut url = self.url.clone();
        let mut method = self.spec.method;
        let mut chain = vec![url.clone()];
        loop {
            let host = host_key(&url);
            if self.requests > 0 {
                // The first request's turn was taken by admission.
                tokio::select! {
                    _ = self.ctx.cancel.cancelled() => return Err(cancelled()),
                    () = self.ctx.env.hosts.pace(&host) => {}
                }
            }
            self.requests += 1;
            self.began.get_or_insert_with(Instant::now);
            let mut req = client.request(wire_method(method), url.clone());
            // Credentials the user gave for the first host do not follow a
            // redirect to another one.
            let same_host = host == host_key(&self.url);
            let mut headers = HeaderMap::new();
            for (name, value) in &self.spec.headers {
                let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) else {
                    return Err(failed(
                        format!("header {name:?} is not valid; fix the spec"),
                        false,
                    ));
                };
                if !same_host
                    && [
                        header::AUTHORIZATION,
                        header::COOKIE,
                        header::PROXY_AUTHORIZATION,
                    ]
                    .contains(&name)
                {
                    continue;
                }
                headers.append(name, value);
            }
            if method == HttpMethod::Get {
                if let Some(r) = resume {
                    insert(&mut headers, header::RANGE, &format!("bytes={}-", r.len));
                    insert(&mut headers, header::IF_RANGE, &r.validator);
                } else if let Some(v) = conditional {
                    if let Some(tag) = &v.etag {
                        insert(&mut headers, header::IF_NONE_MATCH, tag);
                    }
                    if let Some(date) = &v.last_modified {
                        insert(&mut headers, header::IF_MODIFIED_SINCE, date);
                    }
                }
            }
            // When the exchange last moved: the upload advances it, so a
            // slow upload is not taken for a silent server.
            let activity = Arc::new(AtomicU64::new(0));
            let began = Instant::now();
            if method != HttpMethod::Get
                && let Some(body) = &self.spec.body_file
            {
                let (body, len) = self
                    .upload(Path::new(body), activity.clone(), began)
                    .await?;
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                req = req.body(body);
            }
            req = req.headers(headers);
            self.ctx.progress.report(Progress {
                phase: "connect".into(),
                done: 0,
                total: 0,
                unit: "bytes".into(),
                rate: 0,
            });
            let sending = req.send();
            tokio::pin!(sending);
            let sent = loop {
                let last = began + Duration::from_micros(activity.load(Ordering::Relaxed));
                tokio::select! {
                    biased;
                    _ = self.ctx.cancel.cancelled() => return Err(cancelled()),
                    r = &mut sending => break r,
                    _ = tokio::time::sleep_until(last + idle + self.config().connect_timeout) => {
                        let moved = began + Duration::from_micros(activity.load(Ordering::Relaxed));
                        if moved == last {
                            self.ctx.env.hosts.report(&host, HostOutcome::Failed);
                            return Err(failed(
                                format!(
                                    "{method} {url} got no answer for {} (idle_timeout)",
                                    humantime::format_duration(idle)
                                ),
                                wire::may_resend(true, method.idempotent(), self.spec.retry_unsafe),
                            ));
                        }
                    }
                }
            };
            let resp = match sent {
                Ok(resp) => resp,
                Err(e) => {
                    self.ctx.env.hosts.report(&host, HostOutcome::Failed);
                    // A connect error sent nothing; anything else may
                    // have reached the server.
                    let sent = !e.is_connect();
                    return Err(failed(
                        format!("{method} {url}: {}", describe(&e)),
                        wire::may_resend(sent, method.idempotent(), self.spec.retry_unsafe),
                    ));
                }
            };
            let status = resp.status();
            let location = header_str(resp.headers(), header::LOCATION);
            let redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            let (true, Some(location)) = (redirect, location) else {
                return Ok((resp, url));
            };
            self.ctx.env.hosts.report(&host, HostOutcome::Answered);
            let next = match url.join(location) {
                Ok(next)
                    if matches!(next.scheme(), "http" | "https") && next.host_str().is_some() =>
                {
                    next
                }
                _ => {
                    return Err(failed(
                        format!(
                            "{url} redirected to {location:?}, which is not an http or https URL"
                        ),
                        false,
                    ));
                }
            };
            let path = |chain: &[Url], next: &Url| {
                chain
                    .iter()
                    .chain(std::iter::once(next))
                    .map(Url::as_str)
                    .collect::<Vec<_>>()
                    .join(" -> ")
            };
            if chain.contains(&next) {
                return Err(failed(
                    format!(
                        "redirect loop: {}; fix the URL or the server",
                        path(&chain, &next)
                    ),
                    false,
                ));
            }
            if chain.len() > max_redirects {
                return Err(failed(
                    format!(
                        "more than {max_redirects} redirects: {}; raise [fetch] max_redirects or fix the URL",
                        path(&chain, &next)
                    ),
                    false,
                ));
            }
            // As browsers do: 303 always, and 301/302 after a POST, turn
            // the request into a GET without a body; 307/308 repeat it.
            if status == StatusCode::SEE_OTHER
                || (method == HttpMethod::Post && matches!(status.as_u16(), 301 | 302))
            {
                method = HttpMethod::Get;
            }
            chain.push(next.clone());
            url = next;
        }
    }

    /// The body of an upload, streamed from `path`, with its length; it
    /// reports upload progress and moves `activity`.
    async fn upload(
        &self,
        path: &Path,
        activity: Arc<AtomicU64>,
        began: Instant,
    ) -> Result<(reqwest::Body, u64), Ended> {
        let file = tokio::fs::File::open(path).await.map_err(|e| {
            failed(
                format!("cannot open body_file {}: {e}", path.display()),
                false,
            )
        })?;
        let len = file
            .metadata()
            .await
            .map_err(|e| {
                failed(
                    format!("cannot read body_file {}: {e}", path.display()),
                    false,
                )
            })?
            .len();
        let sink = self.ctx.progress.clone();
        let mut sent = 0u64;
        let stream = tokio_util::io::ReaderStream::new(file);
        let stream =
            futures_util::StreamExt::inspect(stream, move |chunk: &std::io::Result<Bytes>| {
                if let Ok(chunk) = chunk {
                    sent += chunk.len() as u64;
                    let micros = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                    activity.store(micros, Ordering::Relaxed);
                    sink.report(Progress {
                        phase: "upload".into(),
                        done: sent,
                        total: len,
                        unit: "bytes".into(),
                        rate: 0,
                    });
                }
            });
        Ok((reqwest::Body::wrap_stream(stream), len))
    }
}

/// The method as reqwest takes it.
fn wire_method(m: HttpMethod) -> Method {
    match m {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Delete => Method::DELETE,
    }
}

/// Sets `name` to `value` if it is a valid header value (validators come
/// from servers and were checked when saved; one that is not is skipped).
fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// A header's value as text, if present and text.
fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An error with its causes: reqwest's own message is often only "error
/// sending request", and the cause (refused, reset, certificate) is what
/// the user needs.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Runs file work on a blocking thread (see the module doc); `None` if the
/// thread failed.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}
