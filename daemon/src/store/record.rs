//! How jobs and events are encoded on disk: protobuf messages private to
//! the store, derived with prost. They are not the API's messages, and the
//! domain types never see them.
//!
//! **The rule for changing a record** (see `docs/ARCHITECTURE.md`): a field
//! is only ever added, with a new tag, and is optional or has a default
//! that means "as before", so every record already on disk still decodes
//! without being rewritten. Tags are never reused, renumbered or retyped.
//! Every change still bumps `SCHEMA_VERSION` (with a migration that may do
//! nothing but record the new version), because an older quernd would
//! drop the fields it does not know when it rewrites a record: it must
//! refuse the newer store instead.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;

use super::{Result, StoreError, db_err};
use crate::job::{
    Event, ExecRun, ExecSpec, FetchResult, FetchSpec, HttpMethod, Job, JobKind, JobResult, JobSpec,
    JobState, Overwrite, RunRecord, StateTag,
};

/// A job: its spec, where it is, and its latest attempt.
#[derive(Clone, PartialEq, Message)]
pub(super) struct JobRec {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, optional, tag = "2")]
    pub spec: Option<SpecRec>,
    /// A [`StateTag`] number.
    #[prost(uint32, tag = "3")]
    pub state: u32,
    /// `run_at` when scheduled, `finished_at` when finished, else 0.
    #[prost(uint64, tag = "4")]
    pub state_at: u64,
    /// Set only when running.
    #[prost(message, optional, tag = "5")]
    pub run: Option<RunRec>,
    #[prost(uint64, tag = "6")]
    pub queued_at: u64,
    #[prost(uint32, tag = "7")]
    pub attempts: u32,
    #[prost(uint64, optional, tag = "8")]
    pub started_at: Option<u64>,
    #[prost(int32, optional, tag = "9")]
    pub exit_code: Option<i32>,
    #[prost(string, tag = "10")]
    pub error: String,
    #[prost(uint32, tag = "11")]
    pub owner_uid: u32,
    /// Since schema 3.
    #[prost(message, optional, tag = "12")]
    pub result: Option<ResultRec>,
    /// Since schema 3.
    #[prost(string, tag = "13")]
    pub wait_reason: String,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct SpecRec {
    #[prost(oneof = "KindRec", tags = "1, 2, 3")]
    pub kind: Option<KindRec>,
    #[prost(int32, tag = "10")]
    pub priority: i32,
    #[prost(btree_map = "string, string", tag = "11")]
    pub labels: BTreeMap<String, String>,
    #[prost(uint64, optional, tag = "12")]
    pub run_at: Option<u64>,
    #[prost(uint64, optional, tag = "13")]
    pub timeout_micros: Option<u64>,
    #[prost(uint32, tag = "14")]
    pub max_attempts: u32,
    #[prost(string, optional, tag = "15")]
    pub idempotency_key: Option<String>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(super) enum KindRec {
    #[prost(message, tag = "1")]
    Exec(ExecRec),
    /// Since schema 3.
    #[prost(message, tag = "2")]
    Fetch(FetchRec),
    /// Since schema 5.
    #[prost(message, tag = "3")]
    Git(JsonRec),
}

/// The git kind's spec or result, as JSON of its domain type
/// (`job/git.rs`): dozens of nested fields, which a protobuf record would
/// repeat field by field for no gain; every struct there reads a missing
/// field as its default, which keeps the rule above (since schema 5).
#[derive(Clone, PartialEq, Message)]
pub(super) struct JsonRec {
    #[prost(string, tag = "1")]
    pub json: String,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct FetchRec {
    #[prost(string, tag = "1")]
    pub url: String,
    #[prost(string, optional, tag = "2")]
    pub dest: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub sha256: Option<String>,
    #[prost(message, repeated, tag = "4")]
    pub headers: Vec<HeaderRec>,
    #[prost(uint64, optional, tag = "5")]
    pub max_bytes: Option<u64>,
    /// 0 replace, 1 skip, 2 error.
    #[prost(uint32, tag = "6")]
    pub overwrite: u32,
    /// The method's name; empty means GET.
    #[prost(string, tag = "7")]
    pub method: String,
    #[prost(string, optional, tag = "8")]
    pub body_file: Option<String>,
    #[prost(bool, tag = "9")]
    pub retry_unsafe: bool,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct HeaderRec {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// What a job produced.
#[derive(Clone, PartialEq, Message)]
pub(super) struct ResultRec {
    #[prost(oneof = "ResultKindRec", tags = "1, 2")]
    pub kind: Option<ResultKindRec>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(super) enum ResultKindRec {
    #[prost(message, tag = "1")]
    Fetch(FetchResultRec),
    /// Since schema 5.
    #[prost(message, tag = "2")]
    Git(JsonRec),
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct FetchResultRec {
    #[prost(string, tag = "1")]
    pub final_url: String,
    #[prost(uint32, tag = "2")]
    pub status: u32,
    #[prost(uint64, tag = "3")]
    pub bytes: u64,
    #[prost(string, tag = "4")]
    pub sha256: String,
    #[prost(bool, tag = "5")]
    pub unchanged: bool,
    #[prost(uint64, tag = "6")]
    pub transfer_micros: u64,
    #[prost(uint64, tag = "7")]
    pub resumed_bytes: u64,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct ExecRec {
    #[prost(string, repeated, tag = "1")]
    pub argv: Vec<String>,
    #[prost(string, optional, tag = "2")]
    pub cwd: Option<String>,
    #[prost(btree_map = "string, string", tag = "3")]
    pub env: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct RunRec {
    #[prost(oneof = "RunKindRec", tags = "1, 2")]
    pub kind: Option<RunKindRec>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(super) enum RunKindRec {
    #[prost(message, tag = "1")]
    Exec(ExecRunRec),
    #[prost(message, tag = "2")]
    InProcess(InProcessRunRec),
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct ExecRunRec {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(uint64, tag = "2")]
    pub pid_start: u64,
    #[prost(string, tag = "3")]
    pub boot_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub(super) struct InProcessRunRec {}

/// One state change.
#[derive(Clone, PartialEq, Message)]
pub(super) struct EventRec {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(uint64, tag = "2")]
    pub job_id: u64,
    #[prost(uint32, tag = "3")]
    pub state: u32,
    #[prost(uint64, tag = "4")]
    pub at: u64,
    #[prost(uint32, tag = "5")]
    pub attempt: u32,
    #[prost(int32, optional, tag = "6")]
    pub exit_code: Option<i32>,
    #[prost(string, tag = "7")]
    pub error: String,
}

pub(super) fn bad(what: String) -> StoreError {
    StoreError::Db {
        op: "decode record",
        detail: what,
    }
}

/// Encodes `job` into `buf`, replacing what it held, keeping its capacity.
pub(super) fn encode_job(buf: &mut Vec<u8>, job: &Job) -> Result<()> {
    buf.clear();
    job_rec(job)
        .encode(buf)
        .map_err(db_err("encode job record"))
}

/// Encodes `ev` into `buf`, replacing what it held.
pub(super) fn encode_event(buf: &mut Vec<u8>, ev: &Event) -> Result<()> {
    buf.clear();
    EventRec {
        seq: ev.seq,
        job_id: ev.job_id,
        state: ev.state as u32,
        at: ev.at,
        attempt: ev.attempt,
        exit_code: ev.exit_code,
        error: ev.error.clone(),
    }
    .encode(buf)
    .map_err(db_err("encode event record"))
}

pub(super) fn job_rec(job: &Job) -> JobRec {
    let (state_at, run) = match &job.state {
        JobState::Queued => (0, None),
        JobState::Scheduled { run_at } => (*run_at, None),
        JobState::Running { run } => (0, Some(run_rec(run))),
        JobState::Succeeded { finished_at }
        | JobState::Failed { finished_at }
        | JobState::Cancelled { finished_at } => (*finished_at, None),
    };
    JobRec {
        id: job.id,
        spec: Some(spec_rec(&job.spec)),
        state: job.state.tag() as u32,
        state_at,
        run,
        queued_at: job.queued_at,
        attempts: job.attempts,
        started_at: job.started_at,
        exit_code: job.exit_code,
        error: job.error.clone(),
        owner_uid: job.owner_uid,
        result: job.result.as_ref().map(|r| ResultRec {
            kind: Some(match r {
                JobResult::Fetch(f) => ResultKindRec::Fetch(FetchResultRec {
                    final_url: f.final_url.clone(),
                    status: f.status,
                    bytes: f.bytes,
                    sha256: f.sha256.clone(),
                    unchanged: f.unchanged,
                    transfer_micros: f.transfer_micros,
                    resumed_bytes: f.resumed_bytes,
                }),
                JobResult::Git(g) => ResultKindRec::Git(JsonRec {
                    json: serde_json::to_string(g).unwrap_or_default(),
                }),
            }),
        }),
        wait_reason: job.wait_reason.clone(),
    }
}

/// A job's spec, as a job's record and a watch rule's job template keep
/// it.
pub(super) fn spec_rec(s: &JobSpec) -> SpecRec {
    let kind = match &s.kind {
        JobKind::Exec(e) => KindRec::Exec(ExecRec {
            argv: e.argv.clone(),
            cwd: e.cwd.clone(),
            env: e.env.clone(),
        }),
        JobKind::Git(g) => KindRec::Git(JsonRec {
            json: serde_json::to_string(g).unwrap_or_default(),
        }),
        JobKind::Fetch(f) => KindRec::Fetch(FetchRec {
            url: f.url.clone(),
            dest: f.dest.clone(),
            sha256: f.sha256.clone(),
            headers: f
                .headers
                .iter()
                .map(|(name, value)| HeaderRec {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            max_bytes: f.max_bytes,
            overwrite: match f.overwrite {
                Overwrite::Replace => 0,
                Overwrite::Skip => 1,
                Overwrite::Error => 2,
            },
            method: match f.method {
                HttpMethod::Get => String::new(),
                m => m.name().to_string(),
            },
            body_file: f.body_file.clone(),
            retry_unsafe: f.retry_unsafe,
        }),
    };
    SpecRec {
        kind: Some(kind),
        priority: s.priority,
        labels: s.labels.clone(),
        run_at: s.run_at,
        timeout_micros: s.timeout.map(stored_micros),
        max_attempts: s.max_attempts,
        idempotency_key: s.idempotency_key.clone(),
    }
}

/// A timeout (or a watch rule's debounce or longest wait) in the whole
/// microseconds it is stored in. Rounded up, so that one under a
/// microsecond is not stored as zero, which `check` refuses and which
/// reads as "no time at all"; and capped at the largest that fits
/// (585,000 years), where a cast would wrap a longer one to a few
/// microseconds and kill the job at once.
pub(super) fn stored_micros(t: Duration) -> u64 {
    u64::try_from(t.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX)
}

fn run_rec(run: &RunRecord) -> RunRec {
    let kind = match run {
        RunRecord::Exec(e) => RunKindRec::Exec(ExecRunRec {
            pid: e.pid,
            pid_start: e.pid_start,
            boot_id: e.boot_id.clone(),
        }),
        RunRecord::InProcess => RunKindRec::InProcess(InProcessRunRec {}),
    };
    RunRec { kind: Some(kind) }
}

/// Decodes a stored job.
pub(super) fn decode_job(bytes: &[u8]) -> Result<Job> {
    let rec = JobRec::decode(bytes).map_err(db_err("decode job record"))?;
    job_from_rec(rec)
}

/// Whose spec is decoded, for the errors: a job's, or a watch rule's job
/// template. Formatted only when an error needs it.
#[derive(Clone, Copy)]
pub(super) enum Whose {
    Job(u64),
    Rule(u64),
}

impl std::fmt::Display for Whose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Whose::Job(id) => write!(f, "job {id}"),
            Whose::Rule(id) => write!(f, "the job template of watch rule {id}"),
        }
    }
}

/// A stored spec, as [`spec_rec`] wrote it.
pub(super) fn spec_from_rec(whose: Whose, spec: SpecRec) -> Result<JobSpec> {
    let kind = match spec.kind {
        Some(KindRec::Exec(e)) => JobKind::Exec(ExecSpec {
            argv: e.argv,
            cwd: e.cwd,
            env: e.env,
        }),
        Some(KindRec::Fetch(f)) => JobKind::Fetch(fetch_from_rec(whose, f)?),
        Some(KindRec::Git(g)) => JobKind::Git(
            serde_json::from_str(&g.json)
                .map_err(|e| bad(format!("{whose} has a git spec that does not read: {e}")))?,
        ),
        None => return Err(bad(format!("{whose} has no kind this quernd knows"))),
    };
    Ok(JobSpec {
        kind,
        priority: spec.priority,
        labels: spec.labels,
        run_at: spec.run_at,
        timeout: spec.timeout_micros.map(Duration::from_micros),
        max_attempts: spec.max_attempts,
        idempotency_key: spec.idempotency_key,
    })
}

fn job_from_rec(rec: JobRec) -> Result<Job> {
    let id = rec.id;
    let spec = rec
        .spec
        .ok_or_else(|| bad(format!("job {id} has no spec")))?;
    let spec = spec_from_rec(Whose::Job(id), spec)?;
    let state = match StateTag::from_u8(rec.state.try_into().unwrap_or(0)) {
        Some(StateTag::Queued) => JobState::Queued,
        Some(StateTag::Scheduled) => JobState::Scheduled {
            run_at: rec.state_at,
        },
        Some(StateTag::Running) => JobState::Running {
            run: match rec.run.and_then(|r| r.kind) {
                Some(RunKindRec::Exec(e)) => RunRecord::Exec(ExecRun {
                    pid: e.pid,
                    pid_start: e.pid_start,
                    boot_id: e.boot_id,
                }),
                Some(RunKindRec::InProcess(_)) => RunRecord::InProcess,
                None => return Err(bad(format!("running job {id} has no run record"))),
            },
        },
        Some(StateTag::Succeeded) => JobState::Succeeded {
            finished_at: rec.state_at,
        },
        Some(StateTag::Failed) => JobState::Failed {
            finished_at: rec.state_at,
        },
        Some(StateTag::Cancelled) => JobState::Cancelled {
            finished_at: rec.state_at,
        },
        None => return Err(bad(format!("job {id} has unknown state {}", rec.state))),
    };
    Ok(Job {
        id,
        spec,
        state,
        queued_at: rec.queued_at,
        attempts: rec.attempts,
        started_at: rec.started_at,
        exit_code: rec.exit_code,
        error: rec.error,
        owner_uid: rec.owner_uid,
        // A result of a kind this quernd does not know is dropped: the job
        // itself still reads.
        result: rec.result.and_then(|r| r.kind).and_then(|k| match k {
            // A result that does not read is dropped like an unknown one.
            ResultKindRec::Git(g) => serde_json::from_str(&g.json)
                .ok()
                .map(|r| JobResult::Git(Box::new(r))),
            ResultKindRec::Fetch(f) => Some(JobResult::Fetch(FetchResult {
                final_url: f.final_url,
                status: f.status,
                bytes: f.bytes,
                sha256: f.sha256,
                unchanged: f.unchanged,
                transfer_micros: f.transfer_micros,
                resumed_bytes: f.resumed_bytes,
            })),
        }),
        wait_reason: rec.wait_reason,
    })
}

fn fetch_from_rec(whose: Whose, f: FetchRec) -> Result<FetchSpec> {
    let overwrite = match f.overwrite {
        0 => Overwrite::Replace,
        1 => Overwrite::Skip,
        2 => Overwrite::Error,
        other => return Err(bad(format!("{whose} has unknown overwrite mode {other}"))),
    };
    let method = if f.method.is_empty() {
        HttpMethod::Get
    } else {
        HttpMethod::from_name(&f.method)
            .ok_or_else(|| bad(format!("{whose} has unknown method {:?}", f.method)))?
    };
    Ok(FetchSpec {
        url: f.url,
        dest: f.dest,
        sha256: f.sha256,
        headers: f.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        max_bytes: f.max_bytes,
        overwrite,
        method,
        body_file: f.body_file,
        retry_unsafe: f.retry_unsafe,
    })
}

/// Decodes a stored event.
pub(super) fn decode_event(bytes: &[u8]) -> Result<Event> {
    let rec = EventRec::decode(bytes).map_err(db_err("decode event record"))?;
    let state = StateTag::from_u8(rec.state.try_into().unwrap_or(0))
        .ok_or_else(|| bad(format!("event {} has unknown state {}", rec.seq, rec.state)))?;
    Ok(Event {
        seq: rec.seq,
        job_id: rec.job_id,
        state,
        at: rec.at,
        attempt: rec.attempt,
        exit_code: rec.exit_code,
        error: rec.error,
    })
}

mod watch;

pub(super) use watch::{decode_rule, encode_rule};

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: JobState) -> Job {
        Job {
            id: 7,
            spec: JobSpec {
                kind: JobKind::Exec(ExecSpec {
                    argv: vec!["sh".into(), "-c".into(), "exit 0".into()],
                    cwd: Some("/tmp".into()),
                    env: [("A".to_string(), "1".to_string())].into(),
                }),
                priority: -10,
                labels: [("team".to_string(), "infra".to_string())].into(),
                run_at: Some(123),
                timeout: Some(Duration::from_millis(1500)),
                max_attempts: 4,
                idempotency_key: Some("key".into()),
            },
            state,
            queued_at: 100,
            attempts: 2,
            started_at: Some(110),
            exit_code: Some(-1),
            error: "exited with code 255".into(),
            owner_uid: 1000,
            result: None,
            wait_reason: String::new(),
        }
    }

    /// A fetch job in every field, with every method and overwrite mode,
    /// finished with a result and waiting with a reason.
    #[test]
    fn fetch_jobs_and_their_results_round_trip() {
        let mut buf = Vec::new();
        for (method, overwrite) in HttpMethod::ALL
            .into_iter()
            .zip(Overwrite::ALL.into_iter().cycle())
        {
            let mut j = job(JobState::Succeeded { finished_at: 9 });
            j.spec.kind = JobKind::Fetch(FetchSpec {
                url: "https://example.org/a?b=c".into(),
                dest: Some("/tmp/a".into()),
                sha256: Some("ab".repeat(32)),
                headers: vec![("X-A".into(), "1".into()), ("X-A".into(), "2".into())],
                max_bytes: Some(1 << 40),
                overwrite,
                method,
                body_file: Some("/tmp/body".into()),
                retry_unsafe: true,
            });
            j.result = Some(JobResult::Fetch(FetchResult {
                final_url: "https://cdn.example.org/a".into(),
                status: 206,
                bytes: 12345,
                sha256: "cd".repeat(32),
                unchanged: method == HttpMethod::Put,
                transfer_micros: 1_500_000,
                resumed_bytes: 100,
            }));
            j.wait_reason = "Retry-After from example.org".into();
            encode_job(&mut buf, &j).unwrap();
            assert_eq!(decode_job(&buf).unwrap(), j);
        }
    }

    #[test]
    fn jobs_in_every_state_round_trip() {
        let states = [
            JobState::Queued,
            JobState::Scheduled { run_at: 5 },
            JobState::Running {
                run: RunRecord::Exec(ExecRun {
                    pid: 4242,
                    pid_start: 99,
                    boot_id: "b".into(),
                }),
            },
            JobState::Running {
                run: RunRecord::InProcess,
            },
            JobState::Succeeded { finished_at: 6 },
            JobState::Failed { finished_at: 7 },
            JobState::Cancelled { finished_at: 8 },
        ];
        let mut buf = Vec::new();
        for state in states {
            let j = job(state);
            encode_job(&mut buf, &j).unwrap();
            assert_eq!(decode_job(&buf).unwrap(), j);
        }
        let ev = Event {
            seq: 3,
            job_id: 7,
            state: StateTag::Failed,
            at: 9,
            attempt: 2,
            exit_code: Some(1),
            error: "x".into(),
        };
        encode_event(&mut buf, &ev).unwrap();
        assert_eq!(decode_event(&buf).unwrap(), ev);
    }

    /// A record written before a field existed decodes with the field's
    /// default: here, one without an owner, as a newer field will be
    /// missing from every record written before it.
    #[test]
    fn a_record_without_a_later_field_decodes_with_its_default() {
        let mut rec = job_rec(&job(JobState::Queued));
        rec.owner_uid = 0;
        let mut bytes = rec.encode_to_vec();
        // Fields from a newer build are skipped, not an error.
        prost::encoding::string::encode(99, &"from the future".to_string(), &mut bytes);
        let back = decode_job(&bytes).unwrap();
        assert_eq!(back.owner_uid, 0);
        assert_eq!(back.spec, job(JobState::Queued).spec);
    }

    /// Found by the property tests: a timeout under a microsecond was
    /// stored as zero, and one of more than u64::MAX microseconds (a
    /// client may send up to i64::MAX seconds) wrapped to a short one.
    #[test]
    fn timeouts_are_stored_rounded_up_and_capped() {
        let most = Duration::from_micros(u64::MAX);
        for (timeout, stored) in [
            (Duration::from_nanos(1), Duration::from_micros(1)),
            (Duration::from_nanos(1_001), Duration::from_micros(2)),
            (Duration::from_secs(18_446_744_073_709_552), most),
            (Duration::MAX, most),
        ] {
            let mut j = job(JobState::Queued);
            j.spec.timeout = Some(timeout);
            let mut buf = Vec::new();
            encode_job(&mut buf, &j).unwrap();
            let back = decode_job(&buf).unwrap();
            assert_eq!(back.spec.timeout, Some(stored), "{timeout:?}");
        }
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_the_job() {
        let mut rec = job_rec(&job(JobState::Queued));
        rec.state = 42;
        let err = decode_job(&rec.encode_to_vec()).unwrap_err();
        assert!(
            err.to_string().contains("job 7 has unknown state 42"),
            "{err}"
        );
        assert!(decode_job(&[0xff, 0xff, 0xff]).is_err());
    }
}
