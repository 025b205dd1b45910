//! Proto <-> domain conversion, with the validation of everything a client
//! sends. Every refusal names the field and says how to fix it.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use quern_proto::v1 as pb;

use crate::admission::{BreakerState, HostStatus};
use crate::error::Error;
use crate::job::{
    Event, ExecSpec, FetchSpec, HttpMethod, Job, JobId, JobKind, JobResult, JobSpec, JobState,
    KindTag, Micros, Overwrite, PRIORITY_NAMES, Progress, RunRecord, StateTag, priority_from_name,
};
use crate::logs::{PAGE_MAX, Stream as LogStreamKind};
use crate::store::{Counters, ListQuery};

/// Limits on what one spec may hold. They keep a single request from
/// exhausting memory or the disk, and sit well above real use.
pub mod limits {
    /// Encoded size of one spec.
    pub const SPEC_BYTES: usize = 1 << 20;
    /// argv entries.
    pub const ARGV_ENTRIES: usize = 4096;
    /// Bytes in one argv entry.
    pub const ARG_BYTES: usize = 128 * 1024;
    /// env entries.
    pub const ENV_ENTRIES: usize = 1024;
    /// Labels per job.
    pub const LABELS: usize = 64;
    /// Bytes in a label key.
    pub const LABEL_KEY_BYTES: usize = 128;
    /// Bytes in a label value.
    pub const LABEL_VALUE_BYTES: usize = 1024;
    /// Bytes in an idempotency key.
    pub const KEY_BYTES: usize = 256;
    /// Attempts per job.
    pub const MAX_ATTEMPTS: u32 = crate::job::MAX_ATTEMPTS;
    /// How far ahead run_at may be, in microseconds (10 years).
    pub const RUN_AT_HORIZON_MICROS: u64 = 10 * 366 * 24 * 3600 * 1_000_000;
    /// Specs per SubmitBatch.
    pub const BATCH: usize = 100_000;
    /// The longest grace period a Cancel may ask for: a Cancel call waits
    /// it out, holding its job's stop in the daemon all that time.
    pub const GRACE: std::time::Duration = std::time::Duration::from_secs(3600);
}

fn ts_to_micros(field: &str, ts: &prost_types::Timestamp) -> Result<Micros, Error> {
    if ts.seconds < 0 || !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(Error::invalid(
            field,
            "must be a valid time after 1970 (seconds >= 0, 0 <= nanos < 1e9)",
        ));
    }
    Ok((ts.seconds as u64)
        .saturating_mul(1_000_000)
        .saturating_add(ts.nanos as u64 / 1000))
}

/// A proto Timestamp for a domain time.
pub fn micros_to_ts(m: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (m / 1_000_000) as i64,
        nanos: ((m % 1_000_000) * 1000) as i32,
    }
}

/// A positive duration from the wire, or an error naming `field`.
pub fn duration(field: &str, d: &prost_types::Duration) -> Result<Duration, Error> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn no_nul(field: impl FnOnce() -> String, s: &str) -> Result<(), Error> {
    if s.contains('\0') {
        return Err(Error::invalid(field(), "must not contain a NUL byte"));
    }
    Ok(())
}

/// Where a spec sits in its request: `spec`, or `specs[i]` in a batch.
/// Field names are built only when an error needs one, since a batch
/// validates up to 100,000 specs.
#[derive(Clone, Copy)]
pub struct SpecPath(pub Option<usize>);

impl SpecPath {
    /// The path of a field of the spec, e.g. `specs[3].exec.argv`.
    pub fn field(self, suffix: &str) -> String {
        match self.0 {
            None => format!("spec{suffix}"),
            Some(i) => format!("specs[{i}]{suffix}"),
        }
    }
}

/// A job id from the wire, or an error naming `field`.
pub fn job_id(id: u64, field: &str) -> Result<JobId, Error> {
    if id == 0 {
        return Err(Error::invalid(field, "must be a job id (ids start at 1)"));
    }
    Ok(id)
}

/// The spec of a Submit. `now` bounds `run_at`.
pub fn submit_from_proto(r: pb::SubmitRequest, now: Micros) -> Result<JobSpec, Error> {
    let spec = r
        .spec
        .ok_or_else(|| Error::invalid("spec", "missing; give the job to run"))?;
    spec_from_proto(spec, SpecPath(None), now)
}

/// The specs of a SubmitBatch, all valid or none. `now` bounds `run_at`.
pub fn submit_batch_from_proto(
    r: pb::SubmitBatchRequest,
    now: Micros,
) -> Result<Vec<JobSpec>, Error> {
    let specs = r.specs;
    if specs.is_empty() {
        return Err(Error::invalid("specs", "must hold at least one job"));
    }
    if specs.len() > limits::BATCH {
        return Err(Error::invalid(
            "specs",
            format!(
                "has {} jobs; at most {} per call, split the batch",
                specs.len(),
                limits::BATCH
            ),
        ));
    }
    specs
        .into_iter()
        .enumerate()
        .map(|(i, s)| spec_from_proto(s, SpecPath(Some(i)), now))
        .collect()
}

/// The query of a List.
pub fn list_from_proto(r: pb::ListRequest) -> Result<ListQuery, Error> {
    let mut states = Vec::new();
    for (i, s) in r.states.iter().enumerate() {
        if let Some(t) = state_from_proto(&format!("states[{i}]"), *s)? {
            states.push(t);
        }
    }
    let kind = match r.kind.as_str() {
        "" => None,
        name => Some(KindTag::from_name(name).ok_or_else(|| {
            Error::invalid(
                "kind",
                format!("unknown kind {name:?}; known kinds: {}", KindTag::names()),
            )
        })?),
    };
    let limit = match r.page_size {
        0 => 100,
        n @ 1..=1000 => n as usize,
        n => {
            return Err(Error::invalid(
                "page_size",
                format!("is {n}; at most 1000, page through the rest with page_token"),
            ));
        }
    };
    let after = if r.page_token.is_empty() {
        None
    } else {
        Some(r.page_token.parse::<u64>().map_err(|_| {
            Error::invalid(
                "page_token",
                "is not a token from a previous ListResponse; pass next_page_token unchanged",
            )
        })?)
    };
    Ok(ListQuery {
        states,
        kind,
        labels: r.labels.into_iter().collect(),
        limit,
        after,
        oldest_first: r.oldest_first,
    })
}

/// The page token that continues after `next`; empty on the last page.
pub fn page_token(next: Option<JobId>) -> String {
    next.map(|n| n.to_string()).unwrap_or_default()
}

/// The job and grace period of a Cancel; `default_grace` when none is
/// given.
pub fn cancel_from_proto(
    r: pb::CancelRequest,
    default_grace: Duration,
) -> Result<(JobId, Duration), Error> {
    let id = job_id(r.id, "id")?;
    let grace = match &r.grace {
        Some(g) => duration("grace", g)?,
        None => default_grace,
    };
    if grace > limits::GRACE {
        return Err(Error::invalid(
            "grace",
            format!(
                "is {}, over the limit of 1h; pass a shorter grace period",
                humantime::format_duration(grace)
            ),
        ));
    }
    Ok((id, grace))
}

/// The limits of a Prune: each one the request leaves out is the
/// configured one.
pub fn prune_from_proto(
    r: &pb::PruneRequest,
    configured: crate::config::Retention,
) -> Result<crate::config::Retention, Error> {
    Ok(crate::config::Retention {
        max_age: match &r.older_than {
            Some(d) => Some(duration("older_than", d)?),
            None => configured.max_age,
        },
        max_finished: r.keep.or(configured.max_finished),
        events_max_age: configured.events_max_age,
    })
}

/// What an Events stream asks for.
pub struct EventsQuery {
    /// Replay stored events after this seq first.
    pub after_seq: Option<u64>,
    /// Only this job's events.
    pub job: Option<JobId>,
    /// Progress updates too.
    pub progress: bool,
    /// Hosts' breaker changes too.
    pub hosts: bool,
    /// Watch rules' changes and triggers too.
    pub watches: bool,
}

/// The query of an Events stream. Host changes belong to no job, so they
/// cannot be asked for with `job_id`.
pub fn events_from_proto(r: pb::EventsRequest) -> Result<EventsQuery, Error> {
    if r.watches && r.job_id != 0 {
        return Err(Error::invalid(
            "watches",
            "cannot be set with job_id: rule changes belong to no job; \
             open a second Events stream with watches and no job_id",
        ));
    }
    if r.hosts && r.job_id != 0 {
        return Err(Error::invalid(
            "hosts",
            "cannot be set with job_id: host changes belong to no job; \
             open a second Events stream with hosts and no job_id",
        ));
    }
    Ok(EventsQuery {
        after_seq: r.after_seq,
        job: (r.job_id != 0).then_some(r.job_id),
        progress: r.progress,
        hosts: r.hosts,
        watches: r.watches,
    })
}

/// The proto form of a host's state.
pub fn host_to_proto(h: &HostStatus) -> pb::HostStats {
    pb::HostStats {
        host: h.host.clone(),
        breaker: match h.breaker {
            BreakerState::Closed => pb::HostBreaker::Closed,
            BreakerState::Open => pb::HostBreaker::Open,
            BreakerState::HalfOpen => pb::HostBreaker::HalfOpen,
        } as i32,
        failures: h.failures,
        open_until: h.open_until.map(micros_to_ts),
        running: h.running,
    }
}

/// A host's change for an Events stream.
pub fn host_event_to_proto(h: &HostStatus, now: Micros) -> pb::EventsResponse {
    pb::EventsResponse {
        time: Some(micros_to_ts(now)),
        host: Some(host_to_proto(h)),
        ..Default::default()
    }
}

/// What a Logs stream asks for.
pub struct LogsQuery {
    /// The job.
    pub job: JobId,
    /// Which streams.
    pub streams: Vec<LogStreamKind>,
    /// Follow until the job finishes.
    pub follow: bool,
    /// Without follow: where to start (the oldest kept byte if `None`).
    pub offset: Option<u64>,
    /// Without follow: the most bytes of each stream to send.
    pub limit: usize,
}

/// The query of a Logs stream.
pub fn logs_from_proto(r: pb::LogsRequest) -> Result<LogsQuery, Error> {
    let job = job_id(r.job_id, "job_id")?;
    let streams = match pb::LogStream::try_from(r.stream) {
        Ok(pb::LogStream::Stdout) => vec![LogStreamKind::Stdout],
        Ok(pb::LogStream::Stderr) => vec![LogStreamKind::Stderr],
        Ok(pb::LogStream::Unspecified) => vec![LogStreamKind::Stdout, LogStreamKind::Stderr],
        Err(_) => {
            return Err(Error::invalid(
                "stream",
                format!("{} is not a log stream", r.stream),
            ));
        }
    };
    if r.follow && r.offset.is_some() {
        return Err(Error::invalid(
            "offset",
            "pages are for a Logs call without follow; drop offset, or follow",
        ));
    }
    if r.follow && r.limit != 0 {
        return Err(Error::invalid(
            "limit",
            "pages are for a Logs call without follow; drop limit, or follow",
        ));
    }
    if r.offset.is_some() && streams.len() != 1 {
        return Err(Error::invalid(
            "offset",
            "a position belongs to one stream; set stream to STDOUT or STDERR",
        ));
    }
    let limit = match usize::try_from(r.limit) {
        Ok(0) | Err(_) => PAGE_MAX,
        Ok(n) => n.min(PAGE_MAX),
    };
    Ok(LogsQuery {
        job,
        streams,
        follow: r.follow,
        offset: r.offset,
        limit,
    })
}

/// The proto form of a log stream.
pub fn stream_to_proto(s: LogStreamKind) -> pb::LogStream {
    match s {
        LogStreamKind::Stdout => pb::LogStream::Stdout,
        LogStreamKind::Stderr => pb::LogStream::Stderr,
    }
}

/// The answer to Stats.
pub fn stats_to_proto(c: &Counters, concurrency: usize) -> pb::StatsResponse {
    use StateTag as T;
    pb::StatsResponse {
        queued: c.count(T::Queued),
        scheduled: c.count(T::Scheduled),
        running: c.count(T::Running),
        succeeded: c.count(T::Succeeded),
        failed: c.count(T::Failed),
        cancelled: c.count(T::Cancelled),
        queue_depth: c.count(T::Queued) + c.count(T::Scheduled),
        concurrency: concurrency as u32,
        last_event_seq: c.last_seq(),
        fetch_concurrency: 0,
        hosts: Vec::new(),
    }
}

/// The proto form of progress.
pub fn progress_to_proto(p: &Progress) -> pb::Progress {
    pb::Progress {
        phase: p.phase.clone(),
        done: p.done,
        total: p.total,
        unit: p.unit.clone(),
        rate: p.rate,
    }
}

/// A progress update of job `job` for an Events stream, sent at `now`.
pub fn progress_event_to_proto(job: JobId, p: &Progress, now: Micros) -> pb::EventsResponse {
    pb::EventsResponse {
        seq: 0,
        job_id: job,
        state: pb::JobState::Running as i32,
        time: Some(micros_to_ts(now)),
        attempt: 0,
        exit_code: None,
        error: String::new(),
        progress: Some(progress_to_proto(p)),
        host: None,
        watch: None,
    }
}

/// Validates a spec from the wire. `path` says where the spec sits in the
/// request (`spec` or `specs[3]`), for error messages. `now` bounds `run_at`.
pub fn spec_from_proto(p: pb::JobSpec, path: SpecPath, now: Micros) -> Result<JobSpec, Error> {
    let size = p.encoded_len();
    if size > limits::SPEC_BYTES {
        return Err(Error::invalid(
            path.field(""),
            format!(
                "is {size} bytes, over the 1 MiB limit; pass large inputs through a file instead"
            ),
        ));
    }
    let kind = match p.kind {
        Some(pb::job_spec::Kind::Exec(e)) => JobKind::Exec(exec_from_proto(e, path)?),
        Some(pb::job_spec::Kind::Fetch(f)) => JobKind::Fetch(fetch_from_proto(f, path)?),
        Some(pb::job_spec::Kind::Git(g)) => JobKind::Git(git::git_from_proto(g, path)?),
        None => {
            return Err(Error::invalid(
                path.field(".kind"),
                "missing; set exactly one job kind: exec, fetch or git",
            ));
        }
    };
    let priority = if p.priority_name.is_empty() {
        p.priority
    } else {
        priority_from_name(&p.priority_name).ok_or_else(|| {
            let names: Vec<&str> = PRIORITY_NAMES.iter().map(|(n, _)| *n).collect();
            Error::invalid(
                path.field(".priority_name"),
                format!(
                    "unknown priority {:?}; use one of {} or a number in priority",
                    p.priority_name,
                    names.join(", ")
                ),
            )
        })?
    };
    if p.labels.len() > limits::LABELS {
        return Err(Error::invalid(
            path.field(".labels"),
            format!(
                "has {} labels; at most {} are allowed",
                p.labels.len(),
                limits::LABELS
            ),
        ));
    }
    for (k, v) in &p.labels {
        let field = || path.field(&format!(".labels[{k:?}]"));
        if k.is_empty() || k.len() > limits::LABEL_KEY_BYTES {
            return Err(Error::invalid(field(), "key must be 1 to 128 bytes"));
        }
        if v.len() > limits::LABEL_VALUE_BYTES {
            return Err(Error::invalid(field(), "value must be at most 1024 bytes"));
        }
        no_nul(field, k)?;
        no_nul(field, v)?;
    }
    let run_at = match &p.run_at {
        Some(ts) => {
            let field = path.field(".run_at");
            let at = ts_to_micros(&field, ts)?;
            if at > now.saturating_add(limits::RUN_AT_HORIZON_MICROS) {
                return Err(Error::invalid(
                    field,
                    "is more than 10 years ahead; give a nearer start time",
                ));
            }
            Some(at)
        }
        None => None,
    };
    let timeout = match &p.timeout {
        Some(d) => {
            let field = path.field(".timeout");
            let t = duration(&field, d)?;
            if t.is_zero() {
                return Err(Error::invalid(
                    field,
                    "must be positive; leave it unset for no timeout",
                ));
            }
            Some(t)
        }
        None => None,
    };
    if p.max_attempts > limits::MAX_ATTEMPTS {
        return Err(Error::invalid(
            path.field(".max_attempts"),
            format!(
                "is {}; at most {} are allowed",
                p.max_attempts,
                limits::MAX_ATTEMPTS
            ),
        ));
    }
    let idempotency_key = if p.idempotency_key.is_empty() {
        None
    } else {
        let field = path.field(".idempotency_key");
        if p.idempotency_key.len() > limits::KEY_BYTES {
            return Err(Error::invalid(field, "must be at most 256 bytes"));
        }
        no_nul(|| field.clone(), &p.idempotency_key)?;
        Some(p.idempotency_key)
    };
    Ok(JobSpec {
        kind,
        priority,
        labels: p.labels.into_iter().collect(),
        run_at,
        timeout,
        max_attempts: p.max_attempts.max(1),
        idempotency_key,
    })
}

fn exec_from_proto(e: pb::ExecSpec, path: SpecPath) -> Result<ExecSpec, Error> {
    let argv_field = || path.field(".exec.argv");
    if e.argv.is_empty() {
        return Err(Error::invalid(
            argv_field(),
            "must not be empty; give the program to run as argv[0]",
        ));
    }
    if e.argv[0].is_empty() {
        return Err(Error::invalid(
            path.field(".exec.argv[0]"),
            "must name a program",
        ));
    }
    if e.argv.len() > limits::ARGV_ENTRIES {
        return Err(Error::invalid(
            argv_field(),
            format!(
                "has {} entries; at most {} are allowed",
                e.argv.len(),
                limits::ARGV_ENTRIES
            ),
        ));
    }
    for (i, a) in e.argv.iter().enumerate() {
        let field = || path.field(&format!(".exec.argv[{i}]"));
        if a.len() > limits::ARG_BYTES {
            return Err(Error::invalid(
                field(),
                format!("is {} bytes; at most 128 KiB are allowed", a.len()),
            ));
        }
        no_nul(field, a)?;
    }
    let cwd = if e.cwd.is_empty() {
        None
    } else {
        let field = path.field(".exec.cwd");
        no_nul(|| field.clone(), &e.cwd)?;
        if !e.cwd.starts_with('/') {
            return Err(Error::invalid(
                field,
                format!("{:?} is relative; give an absolute path", e.cwd),
            ));
        }
        Some(e.cwd)
    };
    if e.env.len() > limits::ENV_ENTRIES {
        return Err(Error::invalid(
            path.field(".exec.env"),
            format!(
                "has {} entries; at most {} are allowed",
                e.env.len(),
                limits::ENV_ENTRIES
            ),
        ));
    }
    for (k, v) in &e.env {
        let field = || path.field(&format!(".exec.env[{k:?}]"));
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(Error::invalid(
                field(),
                "name must be non-empty and contain no '=' or NUL",
            ));
        }
        no_nul(field, v)?;
    }
    Ok(ExecSpec {
        argv: e.argv,
        cwd,
        env: e.env.into_iter().collect::<BTreeMap<_, _>>(),
    })
}

/// The domain form of a fetch spec. The rules of the spec itself are
/// `FetchSpec::check`'s, which `jobs` applies to every spec; this only
/// converts, and refuses what the domain type cannot hold.
fn fetch_from_proto(f: pb::FetchSpec, path: SpecPath) -> Result<FetchSpec, Error> {
    let opt = |field: &str, s: String| -> Result<Option<String>, Error> {
        if s.is_empty() {
            return Ok(None);
        }
        let field = path.field(field);
        no_nul(|| field.clone(), &s)?;
        Ok(Some(s))
    };
    no_nul(|| path.field(".fetch.url"), &f.url)?;
    if f.url.is_empty() {
        return Err(Error::invalid(
            path.field(".fetch.url"),
            "missing; give the http or https URL to fetch",
        ));
    }
    let method = if f.method.is_empty() {
        HttpMethod::Get
    } else {
        HttpMethod::from_name(&f.method).ok_or_else(|| {
            Error::invalid(
                path.field(".fetch.method"),
                format!(
                    "{:?} is not supported; use one of {}",
                    f.method,
                    HttpMethod::names()
                ),
            )
        })?
    };
    let overwrite = match pb::FetchOverwrite::try_from(f.overwrite) {
        Ok(pb::FetchOverwrite::Unspecified | pb::FetchOverwrite::Replace) => Overwrite::Replace,
        Ok(pb::FetchOverwrite::Skip) => Overwrite::Skip,
        Ok(pb::FetchOverwrite::Error) => Overwrite::Error,
        Err(_) => {
            return Err(Error::invalid(
                path.field(".fetch.overwrite"),
                format!(
                    "{} is not an overwrite mode; use replace, skip or error",
                    f.overwrite
                ),
            ));
        }
    };
    if f.headers.len() > limits::ENV_ENTRIES {
        return Err(Error::invalid(
            path.field(".fetch.headers"),
            format!(
                "has {} headers; at most {} are allowed",
                f.headers.len(),
                limits::ENV_ENTRIES
            ),
        ));
    }
    Ok(FetchSpec {
        url: f.url,
        dest: opt(".fetch.dest", f.dest)?,
        sha256: opt(".fetch.sha256", f.sha256)?.map(|s| s.to_ascii_lowercase()),
        headers: f.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        max_bytes: f.max_bytes,
        overwrite,
        method,
        body_file: opt(".fetch.body_file", f.body_file)?,
        retry_unsafe: f.retry_unsafe,
    })
}

/// The proto form of a spec.
pub(super) fn spec_to_proto(s: &JobSpec) -> pb::JobSpec {
    let kind = match &s.kind {
        JobKind::Exec(e) => pb::job_spec::Kind::Exec(pb::ExecSpec {
            argv: e.argv.clone(),
            cwd: e.cwd.clone().unwrap_or_default(),
            env: e.env.clone().into_iter().collect(),
        }),
        JobKind::Fetch(f) => pb::job_spec::Kind::Fetch(pb::FetchSpec {
            url: f.url.clone(),
            dest: f.dest.clone().unwrap_or_default(),
            sha256: f.sha256.clone().unwrap_or_default(),
            headers: f
                .headers
                .iter()
                .map(|(name, value)| pb::HttpHeader {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            max_bytes: f.max_bytes,
            overwrite: match f.overwrite {
                Overwrite::Replace => pb::FetchOverwrite::Replace,
                Overwrite::Skip => pb::FetchOverwrite::Skip,
                Overwrite::Error => pb::FetchOverwrite::Error,
            } as i32,
            method: f.method.name().to_string(),
            body_file: f.body_file.clone().unwrap_or_default(),
            retry_unsafe: f.retry_unsafe,
        }),
        JobKind::Git(g) => pb::job_spec::Kind::Git(git::git_to_proto(g)),
    };
    pb::JobSpec {
        kind: Some(kind),
        priority: s.priority,
        labels: s.labels.clone().into_iter().collect(),
        run_at: s.run_at.map(micros_to_ts),
        timeout: s.timeout.map(|t| prost_types::Duration {
            seconds: t.as_secs() as i64,
            nanos: t.subsec_nanos() as i32,
        }),
        max_attempts: s.max_attempts,
        idempotency_key: s.idempotency_key.clone().unwrap_or_default(),
        priority_name: String::new(),
    }
}

/// The proto enum value for a state.
pub fn state_to_proto(t: StateTag) -> pb::JobState {
    match t {
        StateTag::Queued => pb::JobState::Queued,
        StateTag::Scheduled => pb::JobState::Scheduled,
        StateTag::Running => pb::JobState::Running,
        StateTag::Succeeded => pb::JobState::Succeeded,
        StateTag::Failed => pb::JobState::Failed,
        StateTag::Cancelled => pb::JobState::Cancelled,
    }
}

/// The domain state for a proto enum number; `None` for unspecified.
pub fn state_from_proto(field: &str, v: i32) -> Result<Option<StateTag>, Error> {
    if v == 0 {
        return Ok(None);
    }
    u8::try_from(v)
        .ok()
        .and_then(StateTag::from_u8)
        .map(Some)
        .ok_or_else(|| Error::invalid(field, format!("{v} is not a job state")))
}

/// The proto form of a job, with its live progress if it has any.
pub fn job_to_proto(j: &Job, progress: Option<&Progress>) -> pb::Job {
    let (run_at, pid) = match &j.state {
        JobState::Scheduled { run_at } => (Some(micros_to_ts(*run_at)), 0),
        JobState::Running {
            run: RunRecord::Exec(r),
        } => (None, r.pid),
        _ => (None, 0),
    };
    pb::Job {
        id: j.id,
        state: state_to_proto(j.state.tag()) as i32,
        spec: Some(spec_to_proto(&j.spec)),
        queued_at: Some(micros_to_ts(j.queued_at)),
        started_at: j.started_at.map(micros_to_ts),
        finished_at: j.finished_at().map(micros_to_ts),
        run_at,
        attempts: j.attempts,
        exit_code: j.exit_code,
        error: j.error.clone(),
        pid,
        priority: j.spec.priority,
        owner_uid: j.owner_uid,
        progress: progress.map(progress_to_proto),
        result: j.result.as_ref().map(result_to_proto),
        wait_reason: j.wait_reason.clone(),
    }
}

/// The proto form of a job's result.
fn result_to_proto(r: &JobResult) -> pb::JobResult {
    let kind = match r {
        JobResult::Fetch(f) => pb::job_result::Kind::Fetch(pb::FetchResult {
            final_url: f.final_url.clone(),
            status: f.status,
            bytes: f.bytes,
            sha256: f.sha256.clone(),
            unchanged: f.unchanged,
            transfer_time: Some(micros_to_duration(f.transfer_micros)),
            resumed_bytes: f.resumed_bytes,
        }),
        JobResult::Git(g) => pb::job_result::Kind::Git(git::git_result_to_proto(g)),
    };
    pb::JobResult { kind: Some(kind) }
}

/// A duration in microseconds as a proto Duration.
fn micros_to_duration(m: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(m / 1_000_000).unwrap_or(i64::MAX),
        nanos: ((m % 1_000_000) * 1000) as i32,
    }
}

/// The proto form of an event.
pub fn event_to_proto(e: &Event) -> pb::EventsResponse {
    pb::EventsResponse {
        seq: e.seq,
        job_id: e.job_id,
        state: state_to_proto(e.state) as i32,
        time: Some(micros_to_ts(e.at)),
        attempt: e.attempt,
        exit_code: e.exit_code,
        error: e.error.clone(),
        progress: None,
        host: None,
        watch: None,
    }
}

pub mod git;
pub mod watch;

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests;
