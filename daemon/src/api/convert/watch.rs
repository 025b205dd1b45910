//! Watch rules between the wire and the domain: every check of an
//! `AddWatch` request's fields that needs no disk is here; the rule's own
//! checks (the root on disk, the globs, the timings) are
//! [`RuleSpec::check`]'s, called by the watch service.

use std::path::PathBuf;

use quern_proto::v1 as pb;

use super::{SpecPath, duration, micros_to_ts, spec_from_proto, spec_to_proto};
use crate::error::Error;
use crate::job::Micros;
use crate::watch::rule::{
    DEFAULT_DEBOUNCE, DEFAULT_MAX_WAIT, OnBusy, RuleId, RuleSpec, TriggerRecord,
};
use crate::watch::rules::{RuleEvent, RuleState, RuleView};

/// Most globs in `include` and in `exclude`, each.
const MAX_GLOBS: usize = 256;

/// A rule id from the wire, or an error naming `id`.
pub fn rule_id(id: u64) -> Result<RuleId, Error> {
    if id == 0 {
        return Err(Error::invalid(
            "id",
            "must be a rule id (1 or more); quernctl watch ls lists them",
        ));
    }
    Ok(id)
}

/// The rule of an `Add`, with defaults filled in. `now` bounds the job
/// template's `run_at`, as Submit's.
pub fn add_from_proto(r: pb::AddWatchRequest, now: Micros) -> Result<RuleSpec, Error> {
    let Some(w) = r.spec else {
        return Err(Error::invalid(
            "spec",
            "missing; give the directory to watch and the job to submit",
        ));
    };
    if w.root.is_empty() {
        return Err(Error::invalid(
            "spec.root",
            "missing; give the absolute path of the directory to watch",
        ));
    }
    if w.root.contains('\0') {
        return Err(Error::invalid(
            "spec.root",
            "contains a NUL byte; remove it",
        ));
    }
    for (field, globs) in [("spec.include", &w.include), ("spec.exclude", &w.exclude)] {
        if globs.len() > MAX_GLOBS {
            return Err(Error::invalid(
                field,
                format!(
                    "has {} globs, over the limit of {MAX_GLOBS}; merge them with {{a,b}} alternatives",
                    globs.len()
                ),
            ));
        }
    }
    let on_busy = if w.on_busy.is_empty() {
        OnBusy::default()
    } else {
        OnBusy::parse(&w.on_busy).map_err(|e| Error::invalid("spec.on_busy", e))?
    };
    let debounce = match &w.debounce {
        Some(d) => duration("spec.debounce", d)?,
        None => DEFAULT_DEBOUNCE,
    };
    let max_wait = match &w.max_wait {
        Some(d) => duration("spec.max_wait", d)?,
        None => DEFAULT_MAX_WAIT.max(debounce),
    };
    let Some(job) = w.job else {
        return Err(Error::invalid(
            "spec.job",
            "missing; give the job to submit when files settle, as for Submit",
        ));
    };
    let job = spec_from_proto(job, SpecPath(None), now).map_err(|e| match e {
        Error::InvalidArgument { field, reason } => Error::InvalidArgument {
            field: field.replacen("spec", "spec.job", 1),
            reason,
        },
        other => other,
    })?;
    Ok(RuleSpec {
        root: PathBuf::from(w.root),
        recursive: w.recursive.unwrap_or(true),
        include: w.include,
        exclude: w.exclude,
        no_ignore_files: w.no_ignore_files,
        debounce,
        max_wait,
        on_busy,
        job,
    })
}

fn on_busy_name(o: OnBusy) -> &'static str {
    match o {
        OnBusy::Coalesce => "coalesce",
        OnBusy::Queue => "queue",
        OnBusy::Restart => "restart",
        OnBusy::Skip => "skip",
    }
}

fn std_to_proto(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The proto form of a rule's spec.
pub fn rule_spec_to_proto(s: &RuleSpec) -> pb::WatchSpec {
    pb::WatchSpec {
        root: s.root.to_string_lossy().into_owned(),
        recursive: Some(s.recursive),
        include: s.include.clone(),
        exclude: s.exclude.clone(),
        no_ignore_files: s.no_ignore_files,
        debounce: Some(std_to_proto(s.debounce)),
        max_wait: Some(std_to_proto(s.max_wait)),
        on_busy: on_busy_name(s.on_busy).to_string(),
        job: Some(spec_to_proto(&s.job)),
    }
}

/// The proto form of a trigger.
pub fn trigger_to_proto(t: &TriggerRecord) -> pb::WatchTrigger {
    pb::WatchTrigger {
        time: Some(micros_to_ts(t.at)),
        reason: t.reason.as_str().to_string(),
        paths: t.paths,
        job_id: t.job_id.unwrap_or(0),
    }
}

/// The proto form of a rule as shown.
pub fn watch_to_proto(v: &RuleView) -> pb::Watch {
    let r = &v.rule;
    pb::Watch {
        id: r.id,
        spec: Some(rule_spec_to_proto(&r.spec)),
        state: match v.state {
            RuleState::Active => pb::WatchState::Active,
            RuleState::Paused => pb::WatchState::Paused,
            RuleState::Degraded(_) => pb::WatchState::Degraded,
            RuleState::Error(_) => pb::WatchState::Error,
        } as i32,
        state_reason: v.state.reason().to_string(),
        created_at: Some(micros_to_ts(r.created_at)),
        owner_uid: r.owner_uid,
        jobs_made: r.jobs_made,
        last_trigger: r.last_trigger.as_ref().map(trigger_to_proto),
        kernel_watches: v.kernel_watches,
        snapshot_paths: v.snapshot_paths,
        pending_paths: v.pending_paths,
        recent_job_ids: r.recent_jobs.clone(),
    }
}

/// A rule's change for an Events stream, sent at `now`.
pub fn watch_event_to_proto(e: &RuleEvent, now: Micros) -> pb::EventsResponse {
    pb::EventsResponse {
        time: Some(micros_to_ts(now)),
        job_id: e.trigger.and_then(|t| t.job_id).unwrap_or(0),
        watch: Some(pb::WatchEvent {
            change: e.change.to_string(),
            watch: Some(watch_to_proto(&e.view)),
            trigger: e.trigger.as_ref().map(trigger_to_proto),
        }),
        ..Default::default()
    }
}
