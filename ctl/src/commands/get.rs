//! `get ID`: one job, as a key/value table or JSON.

use std::time::SystemTime;

use anyhow::Result;
use quern_proto::v1::{GetRequest, Job, JobSpec, JobState, job_spec};

use crate::client::{Client, rpc_error};
use crate::output;

/// Prints one job.
pub async fn run(client: &mut Client, id: u64, json: bool) -> Result<()> {
    let response = client
        .get(GetRequest { id })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let job = super::returned_job(response.job, "Get")?;
    if json {
        output::json_line(&output::job_json(&job))?;
    } else {
        output::line(details(&job, SystemTime::now()))?;
    }
    Ok(())
}

/// A job as two aligned columns, leaving out what does not apply to it.
fn details(job: &Job, now: SystemTime) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("id", job.id.to_string()),
        ("state", output::state_name(job.state).to_owned()),
        ("command", output::command(job)),
        ("owner", owner(job.owner_uid)),
    ];
    let spec = job.spec.clone().unwrap_or_default();
    rows.extend(spec_rows(&spec));
    rows.push(("priority", job.priority.to_string()));
    if !spec.idempotency_key.is_empty() {
        rows.push(("key", spec.idempotency_key.clone()));
    }
    if let Some(timeout) = spec.timeout {
        rows.push(("timeout", output::human_duration(timeout)));
    }
    // max_attempts 0 means 1.
    let max_attempts = spec.max_attempts.max(1);
    rows.push(("attempts", format!("{} of {max_attempts}", job.attempts)));
    let times = [
        ("queued", job.queued_at),
        ("run at", job.run_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
    ];
    for (name, time) in times {
        if let Some(time) = time.and_then(output::system_time) {
            rows.push((name, output::relative_and_exact(time, now)));
        }
    }
    if job.state == JobState::Running as i32 && job.pid != 0 {
        rows.push(("pid", job.pid.to_string()));
    }
    if !job.wait_reason.is_empty() {
        rows.push(("waiting", job.wait_reason.clone()));
    }
    if let Some(p) = &job.progress {
        rows.push(("progress", output::progress(p)));
    }
    if let Some(code) = job.exit_code {
        rows.push(("exit code", code.to_string()));
    }
    if !job.error.is_empty() {
        rows.push(("error", job.error.clone()));
    }
    if let Some(result) = &job.result {
        rows.extend(output::result_rows(result));
    }
    output::rows_table(rows)
}

/// The rows of a spec that the command line does not show: the kind's
/// settings where they are not the default, and the labels. `get` shows
/// them for a job, `watch get` for a rule's job template.
pub(super) fn spec_rows(spec: &JobSpec) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    match &spec.kind {
        Some(job_spec::Kind::Exec(exec)) => {
            if !exec.cwd.is_empty() {
                rows.push(("cwd", exec.cwd.clone()));
            }
            if !exec.env.is_empty() {
                rows.push(("env", output::pairs(&exec.env)));
            }
        }
        Some(job_spec::Kind::Git(git)) => {
            // The command line names the repository and the analyses;
            // these rows add what it leaves out: the window of history and
            // each analysis's options.
            rows.push(("repo", git.repo.clone()));
            let revs = if git.revs.is_empty() {
                "HEAD".to_owned()
            } else {
                git.revs.join(" ")
            };
            rows.push(("revs", revs));
            if git.all {
                rows.push(("all", "every branch and tag".into()));
            }
            let dates = [("since", git.since), ("until", git.until)];
            for (name, time) in dates {
                if let Some(time) = time.and_then(output::system_time) {
                    rows.push((name, humantime::format_rfc3339_seconds(time).to_string()));
                }
            }
            for analysis in &git.analyses {
                rows.push(("analysis", output::git::analysis_words(analysis)));
            }
        }
        Some(job_spec::Kind::Fetch(fetch)) => {
            // The command line shows method, URL and dest; the rest of the
            // spec, where it is not the default, gets rows of its own.
            for h in &fetch.headers {
                rows.push(("header", format!("{}: {}", h.name, h.value)));
            }
            if !fetch.body_file.is_empty() {
                rows.push(("body file", fetch.body_file.clone()));
            }
            if !fetch.sha256.is_empty() {
                rows.push(("expect sha256", fetch.sha256.clone()));
            }
            if let Some(max) = fetch.max_bytes {
                rows.push(("max bytes", output::bytes_exact(max)));
            }
            rows.push((
                "overwrite",
                output::overwrite_name(fetch.overwrite).to_owned(),
            ));
            if fetch.retry_unsafe {
                rows.push(("retry unsafe", "yes".to_owned()));
            }
        }
        None => {}
    }
    if !spec.labels.is_empty() {
        rows.push(("labels", output::pairs(&spec.labels)));
    }
    rows
}

/// A uid, with its user name where this machine knows it: "1000 (alice)".
pub(super) fn owner(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{uid} ({})", user.name),
        _ => uid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use quern_proto::v1::ExecSpec;

    use super::*;

    #[test]
    fn details_show_what_applies() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_010);
        let job = Job {
            id: 9,
            state: JobState::Failed as i32,
            spec: Some(JobSpec {
                kind: Some(job_spec::Kind::Exec(ExecSpec {
                    argv: vec!["false".into()],
                    cwd: "/tmp".into(),
                    ..ExecSpec::default()
                })),
                ..JobSpec::default()
            }),
            queued_at: Some((now - Duration::from_secs(10)).into()),
            started_at: Some((now - Duration::from_secs(9)).into()),
            finished_at: Some((now - Duration::from_secs(8)).into()),
            attempts: 1,
            exit_code: Some(1),
            error: "exited with code 1".into(),
            // No user has this uid, so the line does not depend on the
            // machine's users.
            owner_uid: 4_000_000_001,
            ..Job::default()
        };
        let text = details(&job, now);
        let want = "\
id         9
state      failed
command    false
owner      4000000001
cwd        /tmp
priority   0
attempts   1 of 1
queued     10s ago (2023-11-14T22:13:20Z)
started    9s ago (2023-11-14T22:13:21Z)
finished   8s ago (2023-11-14T22:13:22Z)
exit code  1
error      exited with code 1";
        assert_eq!(text, want);
    }

    #[test]
    fn details_of_a_fetch_show_its_spec_wait_reason_and_result() {
        use quern_proto::v1::{
            FetchOverwrite, FetchResult, FetchSpec, HttpHeader, JobResult, job_result,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_010);
        let mut job = Job {
            id: 12,
            state: JobState::Scheduled as i32,
            spec: Some(JobSpec {
                kind: Some(job_spec::Kind::Fetch(FetchSpec {
                    url: "https://example.org/f".into(),
                    dest: "/srv/f".into(),
                    headers: vec![HttpHeader {
                        name: "Accept".into(),
                        value: "*/*".into(),
                    }],
                    max_bytes: Some(10_000_000),
                    overwrite: FetchOverwrite::Error as i32,
                    ..FetchSpec::default()
                })),
                ..JobSpec::default()
            }),
            queued_at: Some((now - Duration::from_secs(10)).into()),
            run_at: Some((now + Duration::from_secs(30)).into()),
            attempts: 1,
            wait_reason: "retry-after from example.org".into(),
            owner_uid: 4_000_000_001,
            ..Job::default()
        };
        let want = "\
id         12
state      scheduled
command    GET https://example.org/f -> /srv/f
owner      4000000001
header     Accept: */*
max bytes  10.0 MB (10000000 bytes)
overwrite  error
priority   0
attempts   1 of 1
queued     10s ago (2023-11-14T22:13:20Z)
run at     in 30s (2023-11-14T22:14:00Z)
waiting    retry-after from example.org";
        assert_eq!(details(&job, now), want);

        job.state = JobState::Succeeded as i32;
        job.run_at = None;
        job.wait_reason.clear();
        job.result = Some(JobResult {
            kind: Some(job_result::Kind::Fetch(FetchResult {
                final_url: "https://example.org/f".into(),
                status: 200,
                bytes: 5,
                unchanged: false,
                ..FetchResult::default()
            })),
        });
        let text = details(&job, now);
        assert!(
            text.ends_with(
                "final url  https://example.org/f\nstatus     200\nbytes      5 B\nunchanged  no"
            ),
            "{text}"
        );
        assert!(!text.contains("waiting"), "{text}");
    }

    #[test]
    fn details_of_a_git_job_show_its_window_and_each_analysis() {
        use quern_proto::v1::{GitAnalysis, GitResult, GitSpec, JobResult, job_result};
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_010);
        let job = Job {
            id: 3,
            state: JobState::Succeeded as i32,
            spec: Some(JobSpec {
                kind: Some(job_spec::Kind::Git(GitSpec {
                    repo: "/srv/quern".into(),
                    revs: vec!["main".into(), "v1".into()],
                    all: true,
                    since: Some(
                        (SystemTime::UNIX_EPOCH + Duration::from_secs(1_769_817_600)).into(),
                    ),
                    until: None,
                    analyses: vec![
                        GitAnalysis {
                            name: "hotspots".into(),
                            top: 5,
                            renames: true,
                            ..GitAnalysis::default()
                        },
                        GitAnalysis {
                            name: "contains".into(),
                            commit: "1a2b3c".into(),
                            ..GitAnalysis::default()
                        },
                    ],
                })),
                ..JobSpec::default()
            }),
            attempts: 1,
            owner_uid: 4_000_000_001,
            result: Some(JobResult {
                kind: Some(job_result::Kind::Git(GitResult {
                    commits: 120,
                    reused: 100,
                    computed: 20,
                    analyses: vec!["hotspots".into(), "contains".into()],
                    ..GitResult::default()
                })),
            }),
            ..Job::default()
        };
        let want = "\
id                3
state             succeeded
command           git /srv/quern [hotspots, contains]
owner             4000000001
repo              /srv/quern
revs              main v1
all               every branch and tag
since             2026-01-31T00:00:00Z
analysis          hotspots (top 5, renames)
analysis          contains 1a2b3c
priority          0
attempts          1 of 1
commits walked    120
per-file numbers  100 reused from the cache, 20 computed
analyses          hotspots, contains";
        assert_eq!(details(&job, now), want);
    }
}
