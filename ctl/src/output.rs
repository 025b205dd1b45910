//! How jobs, events and counts are shown: JSON built by hand from the proto
//! types (which have no serde), aligned tables, relative times and
//! shell-quoted commands.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use comfy_table::{ContentArrangement, Table, presets};
use quern_proto::json::timestamp_json;
use quern_proto::v1::{
    EventsResponse, FetchOverwrite, FetchResult, HostBreaker, HostStats, Job, JobResult, JobSpec,
    JobState, Progress, StatsResponse, Watch, WatchEvent, WatchSpec, WatchState, WatchTrigger,
    job_result, job_spec,
};
use serde_json::{Value, json};

use crate::parse::STATE_NAMES;

pub mod git;

/// Writes one line to stdout. Unlike `println!`, a closed pipe (as in
/// `quernctl list | head -1`) is an error to return, not a panic.
pub fn line(text: impl std::fmt::Display) -> io::Result<()> {
    // stdout is line-buffered, so each line reaches a pipe as it is written,
    // which `events` and `wait` rely on.
    writeln!(io::stdout().lock(), "{text}")
}

/// Writes a JSON value to stdout as one line.
pub fn json_line(value: &Value) -> io::Result<()> {
    line(value)
}

/// The lowercase name of a proto `JobState` value. A value this build does
/// not know (from a newer daemon) shows as "unknown" rather than failing.
pub fn state_name(state: i32) -> &'static str {
    let Ok(state) = JobState::try_from(state) else {
        return "unknown";
    };
    STATE_NAMES
        .iter()
        .find(|(_, known)| *known == state)
        .map_or("unknown", |(name, _)| name)
}

/// Whether a job in `state` will never change again.
pub fn is_terminal(state: i32) -> bool {
    matches!(
        JobState::try_from(state),
        Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    )
}

/// A job as a JSON object. Field names are the proto's (snake_case), every
/// field is present, and fields the proto leaves unset are `null`.
pub fn job_json(job: &Job) -> Value {
    json!({
        "id": job.id,
        "state": state_name(job.state),
        "priority": job.priority,
        "attempts": job.attempts,
        "exit_code": job.exit_code,
        "error": job.error,
        "pid": job.pid,
        "owner_uid": job.owner_uid,
        "progress": job.progress.as_ref().map(progress_json),
        "result": job.result.as_ref().map_or(Value::Null, result_json),
        "wait_reason": job.wait_reason,
        "queued_at": timestamp_json(job.queued_at),
        "started_at": timestamp_json(job.started_at),
        "finished_at": timestamp_json(job.finished_at),
        "run_at": timestamp_json(job.run_at),
        "spec": job.spec.as_ref().map_or(Value::Null, spec_json),
    })
}

/// A job spec as a JSON object, as it appears under `spec` in a job's JSON.
pub fn spec_json(spec: &JobSpec) -> Value {
    let mut value = json!({
        "priority": spec.priority,
        "priority_name": spec.priority_name,
        "labels": spec.labels,
        "run_at": timestamp_json(spec.run_at),
        "timeout": spec.timeout.map_or(Value::Null, |d| Value::String(proto_duration(d))),
        "max_attempts": spec.max_attempts,
        "idempotency_key": spec.idempotency_key,
    });
    // The kind is a oneof: exactly one key named after it, as in the proto's
    // own JSON mapping.
    match &spec.kind {
        Some(job_spec::Kind::Exec(exec)) => {
            value["exec"] = json!({
                "argv": exec.argv,
                "cwd": exec.cwd,
                "env": exec.env,
            });
        }
        Some(job_spec::Kind::Fetch(fetch)) => {
            let headers: Vec<Value> = fetch
                .headers
                .iter()
                .map(|h| json!({ "name": h.name, "value": h.value }))
                .collect();
            value["fetch"] = json!({
                "url": fetch.url,
                "dest": fetch.dest,
                "sha256": fetch.sha256,
                "headers": headers,
                "max_bytes": fetch.max_bytes,
                "overwrite": overwrite_name(fetch.overwrite),
                "method": fetch.method,
                "body_file": fetch.body_file,
                "retry_unsafe": fetch.retry_unsafe,
            });
        }
        Some(job_spec::Kind::Git(git)) => {
            let analyses: Vec<Value> = git.analyses.iter().map(git::analysis_json).collect();
            value["git"] = json!({
                "repo": git.repo,
                "revs": git.revs,
                "all": git.all,
                "since": timestamp_json(git.since),
                "until": timestamp_json(git.until),
                "analyses": analyses,
            });
        }
        None => {}
    }
    value
}

/// The lowercase name of a proto `FetchOverwrite` value, as `--overwrite`
/// takes it. Unspecified is the daemon's default, replace, and is shown as
/// what it does; a value this build does not know shows as "unknown".
pub fn overwrite_name(mode: i32) -> &'static str {
    match FetchOverwrite::try_from(mode) {
        Ok(FetchOverwrite::Unspecified | FetchOverwrite::Replace) => "replace",
        Ok(FetchOverwrite::Skip) => "skip",
        Ok(FetchOverwrite::Error) => "error",
        Err(_) => "unknown",
    }
}

/// A job's result as a JSON object: like the spec's kind, one key named
/// after the kind, as in the proto's own JSON mapping, holding the proto's
/// field names. A result of a kind this build does not know is `{}`.
pub fn result_json(result: &JobResult) -> Value {
    match &result.kind {
        Some(job_result::Kind::Fetch(fetch)) => json!({ "fetch": fetch_result_json(fetch) }),
        Some(job_result::Kind::Git(r)) => json!({ "git": git::result_json(r) }),
        None => json!({}),
    }
}

fn fetch_result_json(r: &FetchResult) -> Value {
    json!({
        "final_url": r.final_url,
        "status": r.status,
        "bytes": r.bytes,
        "sha256": r.sha256,
        "unchanged": r.unchanged,
        "transfer_time": r.transfer_time.map_or(Value::Null, |d| Value::String(proto_duration(d))),
        "resumed_bytes": r.resumed_bytes,
    })
}

/// A job's result as rows for a two-column view, named for people. Empty
/// for a result of a kind this build does not know.
pub fn result_rows(result: &JobResult) -> Vec<(&'static str, String)> {
    let r = match &result.kind {
        Some(job_result::Kind::Fetch(r)) => r,
        Some(job_result::Kind::Git(r)) => return git::result_rows(r),
        None => return Vec::new(),
    };
    let mut rows = vec![("final url", r.final_url.clone())];
    // Status 0 means no request was made (overwrite skip found the file).
    rows.push((
        "status",
        if r.status == 0 {
            "none (no request was made)".to_owned()
        } else {
            r.status.to_string()
        },
    ));
    rows.push(("bytes", bytes_exact(r.bytes)));
    if !r.sha256.is_empty() {
        rows.push(("sha256", r.sha256.clone()));
    }
    rows.push((
        "unchanged",
        if r.unchanged { "yes" } else { "no" }.to_owned(),
    ));
    if let Some(d) = r.transfer_time {
        rows.push(("transfer time", human_duration(d)));
    }
    if r.resumed_bytes > 0 {
        rows.push(("resumed", bytes_exact(r.resumed_bytes)));
    }
    rows
}

/// A byte count readable and exact: "17.9 MB (17900000 bytes)", or "512 B"
/// where the readable form is already exact.
pub fn bytes_exact(n: u64) -> String {
    if n < 1000 {
        human_bytes(n)
    } else {
        format!("{} ({n} bytes)", human_bytes(n))
    }
}

/// Rows as two aligned columns.
pub fn rows_table(rows: Vec<(&str, String)>) -> String {
    let mut table = table();
    for (name, value) in rows {
        table.add_row([name.to_owned(), value]);
    }
    render(table)
}

/// An event as a JSON object, with the proto's field names.
pub fn event_json(event: &EventsResponse) -> Value {
    json!({
        "seq": event.seq,
        "job_id": event.job_id,
        "state": state_name(event.state),
        "time": timestamp_json(event.time),
        "attempt": event.attempt,
        "exit_code": event.exit_code,
        "error": event.error,
        "progress": event.progress.as_ref().map(progress_json),
        "host": event.host.as_ref().map(host_json),
        "watch": event.watch.as_ref().map(watch_event_json),
    })
}

/// Progress as a JSON object, with the proto's field names.
pub fn progress_json(p: &Progress) -> Value {
    json!({
        "phase": p.phase,
        "done": p.done,
        "total": p.total,
        "unit": p.unit,
        "rate": p.rate,
    })
}

/// Progress as words: "download 512/1024 bytes", or "walk 300 commits"
/// while the total is not known.
pub fn progress(p: &Progress) -> String {
    let count = if p.total > 0 {
        format!("{}/{}", p.done, p.total)
    } else {
        p.done.to_string()
    };
    let unit = if p.unit.is_empty() {
        String::new()
    } else {
        format!(" {}", p.unit)
    };
    // The speed, when the kind knows it: "at 1.2 MB/s" for bytes.
    let rate = match (p.rate, p.unit.as_str()) {
        (0, _) => String::new(),
        (rate, "bytes") => format!(" at {}/s", human_bytes(rate)),
        (rate, "") => format!(" at {rate}/s"),
        (rate, unit) => format!(" at {rate} {unit}/s"),
    };
    format!("{} {count}{unit}{rate}", p.phase)
        .trim_start()
        .to_string()
}

/// A byte count for people, in decimal units: `512 B`, `17.9 MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 999.95 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The counts as a JSON object, with the proto's field names.
pub fn stats_json(stats: &StatsResponse) -> Value {
    json!({
        "queued": stats.queued,
        "scheduled": stats.scheduled,
        "running": stats.running,
        "succeeded": stats.succeeded,
        "failed": stats.failed,
        "cancelled": stats.cancelled,
        "queue_depth": stats.queue_depth,
        "concurrency": stats.concurrency,
        "fetch_concurrency": stats.fetch_concurrency,
        "last_event_seq": stats.last_event_seq,
        "hosts": stats.hosts.iter().map(host_json).collect::<Vec<_>>(),
    })
}

/// A host's breaker in words: `closed`, `open`, `half-open`.
pub fn breaker_name(breaker: i32) -> &'static str {
    match HostBreaker::try_from(breaker) {
        Ok(HostBreaker::Closed) => "closed",
        Ok(HostBreaker::Open) => "open",
        Ok(HostBreaker::HalfOpen) => "half-open",
        _ => "unknown",
    }
}

/// One host of `Stats` or of a host event, as JSON.
pub fn host_json(host: &HostStats) -> Value {
    json!({
        "host": host.host,
        "breaker": breaker_name(host.breaker),
        "failures": host.failures,
        "running": host.running,
        "open_until": timestamp_json(host.open_until),
    })
}

/// One host in words: "127.0.0.1:8080 open after 5 failures, a probe at
/// 2030-01-01T00:01:00Z, 0 running".
pub fn host_line(host: &HostStats) -> String {
    let mut line = format!("{} {}", host.host, breaker_name(host.breaker));
    if host.failures > 0 {
        line.push_str(&format!(", {} failures in a row", host.failures));
    }
    if let Some(t) = host.open_until.and_then(system_time) {
        line.push_str(&format!(
            ", a probe at {}",
            humantime::format_rfc3339_seconds(t)
        ));
    }
    line.push_str(&format!(", {} running", host.running));
    line
}

/// The lowercase name of a proto `WatchState` value: `active`, `paused`,
/// `degraded` or `error`. A value this build does not know shows as
/// "unknown" rather than failing.
pub fn watch_state_name(state: i32) -> &'static str {
    match WatchState::try_from(state) {
        Ok(WatchState::Active) => "active",
        Ok(WatchState::Paused) => "paused",
        Ok(WatchState::Degraded) => "degraded",
        Ok(WatchState::Error) => "error",
        Ok(WatchState::Unspecified) | Err(_) => "unknown",
    }
}

/// A rule's `on_busy`, as `--on-busy` takes it. Empty is the daemon's
/// default, coalesce, and is shown as what it does.
pub fn on_busy_name(on_busy: &str) -> &str {
    if on_busy.is_empty() {
        "coalesce"
    } else {
        on_busy
    }
}

/// A watch rule as a JSON object, in the style of [`job_json`]: the proto's
/// field names, every field present, unset ones `null`, lowercase state
/// names, RFC 3339 times and proto JSON durations.
pub fn watch_json(watch: &Watch) -> Value {
    json!({
        "id": watch.id,
        "state": watch_state_name(watch.state),
        "state_reason": watch.state_reason,
        "created_at": timestamp_json(watch.created_at),
        "owner_uid": watch.owner_uid,
        "jobs_made": watch.jobs_made,
        "last_trigger": watch.last_trigger.as_ref().map(trigger_json),
        "kernel_watches": watch.kernel_watches,
        "snapshot_paths": watch.snapshot_paths,
        "pending_paths": watch.pending_paths,
        "recent_job_ids": watch.recent_job_ids,
        "spec": watch.spec.as_ref().map_or(Value::Null, watch_spec_json),
    })
}

fn watch_spec_json(spec: &WatchSpec) -> Value {
    json!({
        "root": spec.root,
        "recursive": spec.recursive,
        "include": spec.include,
        "exclude": spec.exclude,
        "no_ignore_files": spec.no_ignore_files,
        "debounce": spec.debounce.map_or(Value::Null, |d| Value::String(proto_duration(d))),
        "max_wait": spec.max_wait.map_or(Value::Null, |d| Value::String(proto_duration(d))),
        "on_busy": on_busy_name(&spec.on_busy),
        "job": spec.job.as_ref().map_or(Value::Null, spec_json),
    })
}

/// One trigger of a rule as a JSON object, with the proto's field names.
pub fn trigger_json(trigger: &WatchTrigger) -> Value {
    json!({
        "time": timestamp_json(trigger.time),
        "reason": trigger.reason,
        "paths": trigger.paths,
        "job_id": trigger.job_id,
    })
}

/// A watch event as a JSON object, with the proto's field names.
pub fn watch_event_json(event: &WatchEvent) -> Value {
    json!({
        "change": event.change,
        "watch": event.watch.as_ref().map(watch_json),
        "trigger": event.trigger.as_ref().map(trigger_json),
    })
}

/// What a trigger did, in words: "change of 4 paths, job 12", or "catch-up
/// of 1 path, no job" when it made none (yet).
pub fn trigger_words(trigger: &WatchTrigger) -> String {
    let paths = if trigger.paths == 1 { "path" } else { "paths" };
    let job = if trigger.job_id == 0 {
        "no job".to_owned()
    } else {
        format!("job {}", trigger.job_id)
    };
    format!("{} of {} {paths}, {job}", trigger.reason, trigger.paths)
}

/// A watch event in words, after "watch ": "3 triggered /src active:
/// change of 4 paths, job 12", or "3 state /src degraded (out of inotify
/// watches)".
pub fn watch_event_line(event: &WatchEvent) -> String {
    let watch = event.watch.clone().unwrap_or_default();
    let root = watch.spec.as_ref().map_or("", |spec| spec.root.as_str());
    let mut line = format!(
        "{} {} {root} {}",
        watch.id,
        event.change,
        watch_state_name(watch.state)
    );
    if !watch.state_reason.is_empty() {
        line.push_str(&format!(" ({})", watch.state_reason));
    }
    if let Some(trigger) = &event.trigger {
        line.push_str(&format!(": {}", trigger_words(trigger)));
    }
    line
}

/// Converts a proto timestamp, or `None` if it is out of range.
pub fn system_time(ts: prost_types::Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(ts).ok()
}

/// A proto duration in the proto JSON form: seconds with an `s` suffix and
/// 0, 3, 6 or 9 fractional digits, such as `10s` or `1.500s`.
fn proto_duration(d: prost_types::Duration) -> String {
    let sign = if d.seconds < 0 || d.nanos < 0 {
        "-"
    } else {
        ""
    };
    let seconds = d.seconds.unsigned_abs();
    // Nine digits, less each trailing group of three zeros.
    let mut fraction = format!("{:09}", d.nanos.unsigned_abs());
    while fraction.ends_with("000") {
        fraction.truncate(fraction.len() - 3);
    }
    if fraction.is_empty() {
        format!("{sign}{seconds}s")
    } else {
        format!("{sign}{seconds}.{fraction}s")
    }
}

/// A time relative to `now`: "3s ago", "in 5m", "1h30m ago", or "just now"
/// within a second. Two units at most, because the rest is noise in a table.
pub fn relative(time: SystemTime, now: SystemTime) -> String {
    match time.duration_since(now) {
        // In the future.
        Ok(ahead) if ahead.as_secs() > 0 => format!("in {}", coarse(ahead)),
        Ok(_) => "just now".to_owned(),
        Err(err) => {
            let ago = err.duration();
            if ago.as_secs() == 0 {
                "just now".to_owned()
            } else {
                format!("{} ago", coarse(ago))
            }
        }
    }
}

/// A duration in its two largest whole units: "45s", "5m", "1h30m", "2d4h".
fn coarse(duration: Duration) -> String {
    const UNITS: [(&str, u64); 4] = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let mut left = duration.as_secs();
    let mut parts = Vec::new();
    for (name, size) in UNITS {
        let count = left / size;
        left %= size;
        if count > 0 {
            parts.push(format!("{count}{name}"));
        } else if !parts.is_empty() {
            // A zero between two units ends the shown part: "2d" not "2d0h5m".
            break;
        }
        if parts.len() == 2 {
            break;
        }
    }
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.concat()
    }
}

/// A relative time with the time to the second after it, for single-job
/// views.
pub fn relative_and_exact(time: SystemTime, now: SystemTime) -> String {
    format!(
        "{} ({})",
        relative(time, now),
        humantime::format_rfc3339_seconds(time)
    )
}

/// A human-readable duration, such as "1h 30m".
pub fn human_duration(d: prost_types::Duration) -> String {
    match Duration::try_from(d) {
        Ok(d) => humantime::format_duration(d).to_string(),
        Err(_) => proto_duration(d),
    }
}

/// Joins argv into one line that a POSIX shell would split back into the
/// same words, quoting only the words that need it.
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|word| shell_quote(word))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The command a job runs, for display.
pub fn command(job: &Job) -> String {
    job.spec.as_ref().map(spec_command).unwrap_or_default()
}

/// The command a spec runs, for display: the argv of an exec job, the
/// method, URL and dest of a fetch, the repository and analyses of git.
pub fn spec_command(spec: &JobSpec) -> String {
    match &spec.kind {
        Some(job_spec::Kind::Exec(exec)) => shell_join(&exec.argv),
        Some(job_spec::Kind::Fetch(fetch)) => {
            let method = if fetch.method.is_empty() {
                "GET"
            } else {
                &fetch.method
            };
            if fetch.dest.is_empty() {
                format!("{method} {}", fetch.url)
            } else {
                format!("{method} {} -> {}", fetch.url, fetch.dest)
            }
        }
        Some(job_spec::Kind::Git(git)) => {
            let names: Vec<&str> = git.analyses.iter().map(|a| a.name.as_str()).collect();
            format!("git {} [{}]", git.repo, names.join(", "))
        }
        None => String::new(),
    }
}

/// Sorted `k=v` pairs joined by spaces, so the same map always prints the
/// same way.
pub fn pairs(map: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(" ")
}

/// A borderless table whose columns are separated by two spaces, like `ps`
/// or `kubectl get`.
pub fn table() -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic);
    table
}

/// Renders a table from [`table`] without leading or trailing blanks.
pub fn render(mut table: Table) -> String {
    let columns = table.column_count();
    for (index, column) in table.column_iter_mut().enumerate() {
        let right = if index + 1 == columns { 0 } else { 2 };
        column.set_padding((0, right));
    }
    table.trim_fmt()
}

#[cfg(test)]
mod tests;
