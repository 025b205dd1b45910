//! `watch add`, `ls`, `get`, `rm`, `pause` and `resume`: the rules that make
//! quernd submit a job when files under a directory change and settle.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use quern_proto::v1::{
    AddWatchRequest, GetWatchRequest, Job, ListWatchesRequest, PauseWatchRequest,
    RemoveWatchRequest, ResumeWatchRequest, Watch, WatchSpec, WatchState,
};

use crate::cli::WatchAddArgs;
use crate::client::{WatchClient, rpc_error};
use crate::output;

/// The label the daemon puts on a rule's jobs to say why it made them:
/// `change`, `catch-up` or `rescan`.
const REASON_LABEL: &str = "quern.watch.reason";

/// Builds the rule for `watch add`. As for `submit`, only what the daemon
/// cannot check is checked here: the directory is made absolute because
/// only quernctl knows the cwd it is relative to, while whether it exists,
/// the globs and the durations' bounds are left to the daemon.
pub fn add_spec(args: WatchAddArgs) -> Result<WatchSpec> {
    Ok(WatchSpec {
        root: root(&args.dir)?,
        // Unset is the daemon's default, recursive; only the opt-out is sent.
        recursive: args.no_recursive.then_some(false),
        include: args.include,
        exclude: args.exclude,
        no_ignore_files: args.no_ignore_files,
        debounce: proto_duration(args.debounce, "--debounce")?,
        max_wait: proto_duration(args.max_wait, "--max-wait")?,
        on_busy: args.on_busy.unwrap_or_default(),
        job: Some(super::submit::spec(args.job.0)?),
    })
}

/// The directory made absolute against quernctl's cwd. Symlinks are left
/// alone: the daemon resolves them, and stores the rule with the result.
fn root(dir: &Path) -> Result<String> {
    let abs = std::path::absolute(dir).with_context(|| {
        format!(
            "cannot make the directory {:?} absolute; pass an absolute DIR",
            dir.display()
        )
    })?;
    super::submit::utf8_path(&abs, "directory", "DIR")
}

fn proto_duration(duration: Option<Duration>, flag: &str) -> Result<Option<prost_types::Duration>> {
    duration
        .map(|d| {
            prost_types::Duration::try_from(d).map_err(|_| {
                anyhow!(
                    "{flag} {} is too long; give a shorter duration",
                    humantime::format_duration(d)
                )
            })
        })
        .transpose()
}

/// Adds the rule and prints its id, or the rule as JSON.
pub async fn add(client: &mut WatchClient, spec: WatchSpec, json: bool) -> Result<()> {
    let response = client
        .add(AddWatchRequest { spec: Some(spec) })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let watch = returned_watch(response.watch, "Add")?;
    if json {
        output::json_line(&output::watch_json(&watch))
    } else {
        // Only the id, so that `id=$(quernctl watch add ...)` works.
        output::line(watch.id)
    }?;
    Ok(())
}

/// Prints every rule of the caller.
pub async fn ls(client: &mut WatchClient, json: bool) -> Result<()> {
    let watches = client
        .list(ListWatchesRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner()
        .watches;
    if json {
        let values: Vec<_> = watches.iter().map(output::watch_json).collect();
        output::json_line(&values.into())?;
    } else if !watches.is_empty() {
        output::line(table(&watches, SystemTime::now()))?;
    }
    Ok(())
}

/// Prints one rule and its recent jobs.
pub async fn get(client: &mut WatchClient, id: u64, json: bool) -> Result<()> {
    let response = client
        .get(GetWatchRequest { id })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let watch = returned_watch(response.watch, "Get")?;
    if json {
        let mut value = output::watch_json(&watch);
        value["recent_jobs"] = response
            .recent_jobs
            .iter()
            .map(output::job_json)
            .collect::<Vec<_>>()
            .into();
        output::json_line(&value)?;
    } else {
        output::line(details(&watch, &response.recent_jobs, SystemTime::now()))?;
    }
    Ok(())
}

/// The changes `rm`, `pause` and `resume` make to a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `watch rm`
    Remove,
    /// `watch pause`
    Pause,
    /// `watch resume`
    Resume,
}

/// Removes, pauses or resumes a rule, and prints a line saying so, or the
/// rule as JSON.
pub async fn change(client: &mut WatchClient, change: Change, id: u64, json: bool) -> Result<()> {
    let (watch, rpc) = match change {
        Change::Remove => (
            client
                .remove(RemoveWatchRequest { id })
                .await
                .map_err(rpc_error)?
                .into_inner()
                .watch,
            "Remove",
        ),
        Change::Pause => (
            client
                .pause(PauseWatchRequest { id })
                .await
                .map_err(rpc_error)?
                .into_inner()
                .watch,
            "Pause",
        ),
        Change::Resume => (
            client
                .resume(ResumeWatchRequest { id })
                .await
                .map_err(rpc_error)?
                .into_inner()
                .watch,
            "Resume",
        ),
    };
    let watch = returned_watch(watch, rpc)?;
    if json {
        output::json_line(&output::watch_json(&watch))
    } else {
        output::line(confirmation(change, &watch))
    }?;
    Ok(())
}

/// The line `rm`, `pause` and `resume` print: "watch 3 paused". A rule
/// resumed into trouble (its root is gone, or kernel watches ran out) says
/// so, since it will not trigger as the user expects.
fn confirmation(change: Change, watch: &Watch) -> String {
    let verb = match change {
        Change::Remove => "removed",
        Change::Pause => "paused",
        Change::Resume => "resumed",
    };
    let mut line = format!("watch {} {verb}", watch.id);
    let troubled = matches!(
        WatchState::try_from(watch.state),
        Ok(WatchState::Degraded | WatchState::Error)
    );
    if change == Change::Resume && troubled {
        line.push_str(&format!(
            ", but is {}",
            output::watch_state_name(watch.state)
        ));
        if !watch.state_reason.is_empty() {
            line.push_str(&format!(": {}", watch.state_reason));
        }
    }
    line
}

/// The rule in a response, which the daemon always sets; its absence means
/// a daemon that does not speak this version of the API.
fn returned_watch(watch: Option<Watch>, rpc: &str) -> Result<Watch> {
    watch.ok_or_else(|| {
        anyhow!(
            "quernd answered Watches.{rpc} without a rule; check that quernd and quernctl are the same version"
        )
    })
}

/// One row per rule. The root comes last because it is the longest and the
/// one a narrow terminal can best wrap.
fn table(watches: &[Watch], now: SystemTime) -> String {
    let mut table = output::table();
    table.set_header(["ID", "STATE", "JOBS", "LAST TRIGGER", "ROOT"]);
    for watch in watches {
        table.add_row([
            watch.id.to_string(),
            output::watch_state_name(watch.state).to_owned(),
            watch.jobs_made.to_string(),
            last_trigger(watch, |time| output::relative(time, now)),
            watch
                .spec
                .as_ref()
                .map(|s| s.root.clone())
                .unwrap_or_default(),
        ]);
    }
    output::render(table)
}

/// A rule's last trigger: its time, shown by `time`, then what it did. Empty
/// for a rule that has not triggered.
fn last_trigger(watch: &Watch, time: impl Fn(SystemTime) -> String) -> String {
    let Some(trigger) = &watch.last_trigger else {
        return String::new();
    };
    let words = output::trigger_words(trigger);
    match trigger.time.and_then(output::system_time) {
        Some(at) => format!("{}: {words}", time(at)),
        None => words,
    }
}

/// A rule as two aligned columns, then its recent jobs as a table.
fn details(watch: &Watch, recent_jobs: &[Job], now: SystemTime) -> String {
    let spec = watch.spec.clone().unwrap_or_default();
    let mut rows: Vec<(String, String)> = vec![
        ("id".into(), watch.id.to_string()),
        ("root".into(), spec.root.clone()),
        (
            "state".into(),
            output::watch_state_name(watch.state).to_owned(),
        ),
    ];
    if !watch.state_reason.is_empty() {
        rows.push(("reason".into(), watch.state_reason.clone()));
    }
    let recursive = spec.recursive.unwrap_or(true);
    rows.push(("recursive".into(), yes_no(recursive).into()));
    // One row per glob, as `get` shows headers: globs may hold blanks.
    if spec.include.is_empty() {
        rows.push(("include".into(), "every path".into()));
    }
    for glob in &spec.include {
        rows.push(("include".into(), glob.clone()));
    }
    for glob in &spec.exclude {
        rows.push(("exclude".into(), glob.clone()));
    }
    rows.push((
        "ignore files".into(),
        if spec.no_ignore_files {
            "not read"
        } else {
            "read"
        }
        .into(),
    ));
    // Unset means the daemon's default; it fills them in, so these rows
    // show only when talking to one that does not.
    if let Some(d) = spec.debounce {
        rows.push(("debounce".into(), output::human_duration(d)));
    }
    if let Some(d) = spec.max_wait {
        rows.push(("max wait".into(), output::human_duration(d)));
    }
    rows.push((
        "on busy".into(),
        output::on_busy_name(&spec.on_busy).to_owned(),
    ));
    rows.extend(template_rows(&spec.job.unwrap_or_default()));
    rows.push(("owner".into(), super::get::owner(watch.owner_uid)));
    if let Some(at) = watch.created_at.and_then(output::system_time) {
        rows.push(("created".into(), output::relative_and_exact(at, now)));
    }
    rows.push(("jobs made".into(), watch.jobs_made.to_string()));
    if watch.last_trigger.is_some() {
        rows.push((
            "last trigger".into(),
            last_trigger(watch, |at| output::relative_and_exact(at, now)),
        ));
    }
    rows.push(("kernel watches".into(), watch.kernel_watches.to_string()));
    rows.push(("snapshot paths".into(), watch.snapshot_paths.to_string()));
    rows.push(("pending paths".into(), watch.pending_paths.to_string()));
    let mut text = output::rows_table(
        rows.iter()
            .map(|(name, value)| (name.as_str(), value.clone()))
            .collect(),
    );

    if !recent_jobs.is_empty() {
        let mut jobs = output::table();
        jobs.set_header(["ID", "STATE", "REASON", "QUEUED"]);
        for job in recent_jobs {
            let reason = job
                .spec
                .as_ref()
                .and_then(|spec| spec.labels.get(REASON_LABEL))
                .cloned()
                .unwrap_or_default();
            jobs.add_row([
                job.id.to_string(),
                output::state_name(job.state).to_owned(),
                reason,
                job.queued_at
                    .and_then(output::system_time)
                    .map(|at| output::relative(at, now))
                    .unwrap_or_default(),
            ]);
        }
        text.push_str("\n\n");
        text.push_str(&output::render(jobs));
    }
    text
}

/// The job template as rows named "job ...": the command, then what `get`
/// shows of a job's spec, then the common flags that were given.
fn template_rows(job: &quern_proto::v1::JobSpec) -> Vec<(String, String)> {
    let mut rows = vec![("job".to_owned(), output::spec_command(job))];
    for (name, value) in super::get::spec_rows(job) {
        rows.push((format!("job {name}"), value));
    }
    // The template keeps the priority as given: a name, or a number.
    let priority = if job.priority_name.is_empty() {
        job.priority.to_string()
    } else {
        job.priority_name.clone()
    };
    rows.push(("job priority".into(), priority));
    if let Some(timeout) = job.timeout {
        rows.push(("job timeout".into(), output::human_duration(timeout)));
    }
    if job.max_attempts > 1 {
        rows.push(("job attempts".into(), job.max_attempts.to_string()));
    }
    if !job.idempotency_key.is_empty() {
        rows.push(("job key".into(), job.idempotency_key.clone()));
    }
    if let Some(at) = job.run_at.and_then(output::system_time) {
        rows.push((
            "job run at".into(),
            humantime::format_rfc3339_seconds(at).to_string(),
        ));
    }
    rows
}

fn yes_no(yes: bool) -> &'static str {
    if yes { "yes" } else { "no" }
}

#[cfg(test)]
mod tests;
