//! How a watch rule is encoded on disk (since schema 4): a protobuf
//! message like a job's, under the same rule for changing it (see
//! `record.rs`). Its job template is a [`SpecRec`], as a job's spec is.
//! The rule's snapshot is not here: it has a table of its own and an
//! encoding of its own (`Snapshot::encode`), as it can be megabytes and
//! is rewritten only when the rule triggers.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use prost::Message;

use super::{SpecRec, Whose, bad, spec_from_rec, spec_rec, stored_micros};
use crate::store::{Result, db_err};
use crate::watch::follow::Reason;
use crate::watch::rule::{OnBusy, Rule, RuleSpec, TriggerRecord};

/// A watch rule: what it is, and what it has done.
#[derive(Clone, PartialEq, Message)]
pub(in crate::store) struct RuleRec {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint32, tag = "2")]
    pub owner_uid: u32,
    #[prost(message, optional, tag = "3")]
    pub spec: Option<RuleSpecRec>,
    #[prost(uint64, tag = "4")]
    pub created_at: u64,
    #[prost(bool, tag = "5")]
    pub paused: bool,
    #[prost(uint64, tag = "6")]
    pub jobs_made: u64,
    #[prost(message, optional, tag = "7")]
    pub last_trigger: Option<TriggerRec>,
    /// Newest first.
    #[prost(uint64, repeated, tag = "8")]
    pub recent_jobs: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub(in crate::store) struct RuleSpecRec {
    /// The root's bytes: a path need not be UTF-8.
    #[prost(bytes = "vec", tag = "1")]
    pub root: Vec<u8>,
    #[prost(bool, tag = "2")]
    pub recursive: bool,
    #[prost(string, repeated, tag = "3")]
    pub include: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub exclude: Vec<String>,
    #[prost(bool, tag = "5")]
    pub no_ignore_files: bool,
    #[prost(uint64, tag = "6")]
    pub debounce_micros: u64,
    #[prost(uint64, tag = "7")]
    pub max_wait_micros: u64,
    /// 0 coalesce, 1 queue, 2 restart, 3 skip.
    #[prost(uint32, tag = "8")]
    pub on_busy: u32,
    #[prost(message, optional, tag = "9")]
    pub job: Option<SpecRec>,
}

#[derive(Clone, PartialEq, Message)]
pub(in crate::store) struct TriggerRec {
    #[prost(uint64, tag = "1")]
    pub at: u64,
    /// 0 change, 1 catch-up, 2 rescan.
    #[prost(uint32, tag = "2")]
    pub reason: u32,
    #[prost(uint64, tag = "3")]
    pub paths: u64,
    #[prost(uint64, optional, tag = "4")]
    pub job_id: Option<u64>,
}

/// Encodes `rule` into `buf`, replacing what it held.
pub(in crate::store) fn encode_rule(buf: &mut Vec<u8>, rule: &Rule) -> Result<()> {
    buf.clear();
    rule_rec(rule)
        .encode(buf)
        .map_err(db_err("encode watch rule record"))
}

fn rule_rec(rule: &Rule) -> RuleRec {
    let s = &rule.spec;
    RuleRec {
        id: rule.id,
        owner_uid: rule.owner_uid,
        spec: Some(RuleSpecRec {
            root: s.root.as_os_str().as_bytes().to_vec(),
            recursive: s.recursive,
            include: s.include.clone(),
            exclude: s.exclude.clone(),
            no_ignore_files: s.no_ignore_files,
            debounce_micros: stored_micros(s.debounce),
            max_wait_micros: stored_micros(s.max_wait),
            on_busy: match s.on_busy {
                OnBusy::Coalesce => 0,
                OnBusy::Queue => 1,
                OnBusy::Restart => 2,
                OnBusy::Skip => 3,
            },
            job: Some(spec_rec(&s.job)),
        }),
        created_at: rule.created_at,
        paused: rule.paused,
        jobs_made: rule.jobs_made,
        last_trigger: rule.last_trigger.map(|t| TriggerRec {
            at: t.at,
            reason: match t.reason {
                Reason::Change => 0,
                Reason::CatchUp => 1,
                Reason::Rescan => 2,
            },
            paths: t.paths,
            job_id: t.job_id,
        }),
        recent_jobs: rule.recent_jobs.clone(),
    }
}

/// Decodes a stored watch rule. A damaged one is an error naming the
/// rule where it can, never a panic.
pub(in crate::store) fn decode_rule(bytes: &[u8]) -> Result<Rule> {
    let rec = RuleRec::decode(bytes).map_err(db_err("decode watch rule record"))?;
    let id = rec.id;
    let spec = rec
        .spec
        .ok_or_else(|| bad(format!("watch rule {id} has no spec")))?;
    let on_busy = match spec.on_busy {
        0 => OnBusy::Coalesce,
        1 => OnBusy::Queue,
        2 => OnBusy::Restart,
        3 => OnBusy::Skip,
        other => return Err(bad(format!("watch rule {id} has unknown on_busy {other}"))),
    };
    let job = spec
        .job
        .ok_or_else(|| bad(format!("watch rule {id} has no job template")))?;
    let last_trigger = match rec.last_trigger {
        Some(t) => Some(TriggerRecord {
            at: t.at,
            reason: match t.reason {
                0 => Reason::Change,
                1 => Reason::CatchUp,
                2 => Reason::Rescan,
                other => {
                    return Err(bad(format!(
                        "watch rule {id} has unknown trigger reason {other}"
                    )));
                }
            },
            paths: t.paths,
            job_id: t.job_id,
        }),
        None => None,
    };
    Ok(Rule {
        id,
        owner_uid: rec.owner_uid,
        spec: RuleSpec {
            root: PathBuf::from(OsStr::from_bytes(&spec.root)),
            recursive: spec.recursive,
            include: spec.include,
            exclude: spec.exclude,
            no_ignore_files: spec.no_ignore_files,
            debounce: Duration::from_micros(spec.debounce_micros),
            max_wait: Duration::from_micros(spec.max_wait_micros),
            on_busy,
            job: spec_from_rec(Whose::Rule(id), job)?,
        },
        created_at: rec.created_at,
        paused: rec.paused,
        jobs_made: rec.jobs_made,
        last_trigger,
        recent_jobs: rec.recent_jobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{FetchSpec, HttpMethod, JobKind, JobSpec, Overwrite};

    fn rule() -> Rule {
        let mut job = JobSpec::exec_for_tests(&["make", "-C", "/src", "all"]);
        job.priority = 10;
        job.labels.insert("team".into(), "web".into());
        job.timeout = Some(Duration::from_secs(600));
        job.max_attempts = 3;
        if let JobKind::Exec(e) = &mut job.kind {
            e.cwd = Some("/src".into());
            e.env.insert("CI".into(), "1".into());
        }
        Rule {
            id: 42,
            owner_uid: 1000,
            spec: RuleSpec {
                root: PathBuf::from(OsStr::from_bytes(b"/home/u/caf\xe9")),
                recursive: false,
                include: vec!["**/*.rs".into(), "Cargo.toml".into()],
                exclude: vec!["target".into()],
                no_ignore_files: true,
                debounce: Duration::from_millis(250),
                max_wait: Duration::from_secs(30),
                on_busy: OnBusy::Restart,
                job,
            },
            created_at: 1_700_000_000_000_000,
            paused: true,
            jobs_made: 17,
            last_trigger: Some(TriggerRecord {
                at: 1_700_000_100_000_000,
                reason: Reason::CatchUp,
                paths: 3,
                job_id: Some(99),
            }),
            recent_jobs: vec![99, 98, 90],
        }
    }

    #[test]
    fn rules_round_trip_in_every_field_and_mode() {
        let mut buf = Vec::new();
        let r = rule();
        encode_rule(&mut buf, &r).unwrap();
        assert_eq!(decode_rule(&buf).unwrap(), r);
        let reasons = [Reason::Change, Reason::CatchUp, Reason::Rescan];
        let modes = [
            OnBusy::Coalesce,
            OnBusy::Queue,
            OnBusy::Restart,
            OnBusy::Skip,
        ];
        for (n, on_busy) in modes.into_iter().enumerate() {
            let mut r = rule();
            r.spec.on_busy = on_busy;
            r.last_trigger = Some(TriggerRecord {
                reason: reasons[n % reasons.len()],
                job_id: None,
                ..r.last_trigger.unwrap()
            });
            encode_rule(&mut buf, &r).unwrap();
            assert_eq!(decode_rule(&buf).unwrap(), r);
        }
        // A new rule: nothing done yet; and a fetch template.
        let mut r = rule();
        r.paused = false;
        r.jobs_made = 0;
        r.last_trigger = None;
        r.recent_jobs.clear();
        r.spec.job.kind = JobKind::Fetch(FetchSpec {
            url: "https://example.org/hook".into(),
            dest: None,
            sha256: None,
            headers: vec![("X-A".into(), "1".into())],
            max_bytes: None,
            overwrite: Overwrite::Skip,
            method: HttpMethod::Post,
            body_file: Some("/tmp/body".into()),
            retry_unsafe: false,
        });
        encode_rule(&mut buf, &r).unwrap();
        assert_eq!(decode_rule(&buf).unwrap(), r);
    }

    #[test]
    fn a_debounce_under_a_microsecond_is_not_stored_as_zero() {
        let mut r = rule();
        r.spec.debounce = Duration::from_nanos(1);
        let mut buf = Vec::new();
        encode_rule(&mut buf, &r).unwrap();
        let back = decode_rule(&buf).unwrap();
        assert_eq!(back.spec.debounce, Duration::from_micros(1));
    }

    #[test]
    fn damaged_rules_are_errors_naming_the_rule_not_panics() {
        let mut rec = rule_rec(&rule());
        if let Some(s) = rec.spec.as_mut() {
            s.on_busy = 9;
        }
        let err = decode_rule(&rec.encode_to_vec()).unwrap_err();
        assert!(
            err.to_string()
                .contains("watch rule 42 has unknown on_busy 9"),
            "{err}"
        );

        let mut rec = rule_rec(&rule());
        if let Some(t) = rec.last_trigger.as_mut() {
            t.reason = 7;
        }
        let err = decode_rule(&rec.encode_to_vec()).unwrap_err();
        assert!(
            err.to_string().contains("unknown trigger reason 7"),
            "{err}"
        );

        let mut rec = rule_rec(&rule());
        if let Some(s) = rec.spec.as_mut() {
            s.job = None;
        }
        let err = decode_rule(&rec.encode_to_vec()).unwrap_err();
        assert!(err.to_string().contains("has no job template"), "{err}");

        let mut rec = rule_rec(&rule());
        if let Some(j) = rec.spec.as_mut().and_then(|s| s.job.as_mut()) {
            j.kind = None;
        }
        let err = decode_rule(&rec.encode_to_vec()).unwrap_err();
        assert!(
            err.to_string()
                .contains("the job template of watch rule 42 has no kind"),
            "{err}"
        );

        // Every truncation of a good record, and garbage, decode to an
        // error or to less than was written, never a panic.
        let mut buf = Vec::new();
        encode_rule(&mut buf, &rule()).unwrap();
        for cut in 0..buf.len() {
            if let Ok(r) = decode_rule(&buf[..cut]) {
                assert_ne!(r, rule(), "cut at {cut}");
            }
        }
        assert!(decode_rule(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode_rule(&[0x1a, 0x05, 0x0a]).is_err());
    }
}
