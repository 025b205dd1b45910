//! `list`: jobs matching filters, newest first, as a table or a JSON array.

use std::time::SystemTime;

use anyhow::{Result, anyhow};
use quern_proto::v1::{Job, JobState, ListRequest};

use crate::cli::ListArgs;
use crate::client::{Client, rpc_error};
use crate::output;
use crate::parse;

/// The largest page the daemon serves.
const MAX_PAGE: u32 = 1000;

/// The first page's request for the filters in `args`.
pub fn request(args: &ListArgs) -> Result<ListRequest> {
    Ok(ListRequest {
        states: args.state.iter().map(|state| *state as i32).collect(),
        kind: args.kind.clone().unwrap_or_default(),
        labels: parse::into_map("--label", args.labels.clone()).map_err(|msg| anyhow!(msg))?,
        page_size: 0,
        page_token: String::new(),
        oldest_first: false,
    })
}

/// Prints up to `limit` jobs matching `request`, fetching as many pages as
/// that takes.
pub async fn run(client: &mut Client, request: ListRequest, limit: u32, json: bool) -> Result<()> {
    let mut jobs: Vec<Job> = Vec::new();
    let mut page_token = String::new();
    while jobs.len() < limit as usize {
        let left = limit - jobs.len() as u32;
        let response = client
            .list(ListRequest {
                page_size: left.min(MAX_PAGE),
                page_token,
                ..request.clone()
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        jobs.extend(response.jobs);
        if response.next_page_token.is_empty() {
            break;
        }
        page_token = response.next_page_token;
    }
    // A daemon may return a fuller page than asked; the limit is the user's.
    jobs.truncate(limit as usize);

    if json {
        let values: Vec<_> = jobs.iter().map(output::job_json).collect();
        output::json_line(&values.into())?;
    } else if !jobs.is_empty() {
        output::line(table(&jobs, SystemTime::now()))?;
    }
    Ok(())
}

/// One row per job. WHEN reads with STATE: "queued 3s ago",
/// "scheduled in 5m", "running 2s ago", "failed 1m ago".
fn table(jobs: &[Job], now: SystemTime) -> String {
    let mut table = output::table();
    table.set_header([
        "ID", "STATE", "PRIORITY", "WHEN", "ATTEMPTS", "RESULT", "COMMAND",
    ]);
    for job in jobs {
        table.add_row([
            job.id.to_string(),
            output::state_name(job.state).to_owned(),
            job.priority.to_string(),
            when(job)
                .and_then(output::system_time)
                .map(|time| output::relative(time, now))
                .unwrap_or_default(),
            job.attempts.to_string(),
            result(job),
            output::command(job),
        ]);
    }
    output::render(table)
}

/// The time the job entered its state, or will leave it when scheduled.
fn when(job: &Job) -> Option<prost_types::Timestamp> {
    match JobState::try_from(job.state) {
        Ok(JobState::Scheduled) => job.run_at,
        Ok(JobState::Running) => job.started_at,
        Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled) => job.finished_at,
        _ => job.queued_at,
    }
}

/// How the job ended, or the pid it runs as.
fn result(job: &Job) -> String {
    if job.state == JobState::Running as i32 && job.pid != 0 {
        format!("pid {}", job.pid)
    } else if !job.error.is_empty() {
        job.error.clone()
    } else if let Some(code) = job.exit_code {
        format!("exit {code}")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use quern_proto::v1::{ExecSpec, JobSpec, job_spec};

    use super::*;

    fn job(id: u64, state: JobState, argv: &[&str]) -> Job {
        Job {
            id,
            state: state as i32,
            spec: Some(JobSpec {
                kind: Some(job_spec::Kind::Exec(ExecSpec {
                    argv: argv.iter().map(|s| s.to_string()).collect(),
                    ..ExecSpec::default()
                })),
                ..JobSpec::default()
            }),
            ..Job::default()
        }
    }

    #[test]
    fn table_rows_read_as_sentences() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut running = job(12, JobState::Running, &["sleep", "100"]);
        running.started_at = Some((now - Duration::from_secs(3)).into());
        running.pid = 4242;
        running.attempts = 1;
        let mut scheduled = job(11, JobState::Scheduled, &["sh", "-c", "exit 1"]);
        scheduled.run_at = Some((now + Duration::from_secs(300)).into());
        scheduled.priority = -20;
        scheduled.attempts = 1;
        scheduled.error = "exited with code 1".into();
        let mut done = job(3, JobState::Succeeded, &["true"]);
        done.finished_at = Some((now - Duration::from_secs(90)).into());
        done.exit_code = Some(0);
        done.attempts = 1;

        let text = table(&[running, scheduled, done], now);
        let want = "\
ID  STATE      PRIORITY  WHEN       ATTEMPTS  RESULT              COMMAND
12  running    0         3s ago     1         pid 4242            sleep 100
11  scheduled  -20       in 5m      1         exited with code 1  sh -c 'exit 1'
3   succeeded  0         1m30s ago  1         exit 0              true";
        assert_eq!(text, want);
    }
}
