//! `result ID`: what a finished job produced, such as a download's final
//! URL, size and digest, or a git job's analyses; an error, saying why, for
//! a job with none.

use anyhow::{Result, bail};
use quern_proto::v1::{Job, JobState, job_result, job_spec};

use crate::client::Client;
use crate::output;

/// Prints the job's result, or fails saying why it has none. A git result
/// shows at most `top` rows per table.
pub async fn run(client: &mut Client, id: u64, top: usize, json: bool) -> Result<()> {
    let job = super::get_job(client, id).await?;
    let Some(result) = &job.result else {
        bail!("{}", no_result(&job));
    };
    if let Some(job_result::Kind::Git(git)) = &result.kind {
        // A result over the daemon's size limit is in a file it names; it
        // is read here, so that the person sees the result, not a path.
        let git = if git.file.is_empty() {
            git.clone()
        } else {
            output::git::read_result_file(git)?
        };
        if json {
            output::json_line(&serde_json::json!({ "git": output::git::result_json(&git) }))?;
        } else {
            output::line(output::git::result_text(&git, top))?;
        }
        return Ok(());
    }
    if json {
        output::json_line(&output::result_json(result))?;
    } else {
        output::line(output::rows_table(output::result_rows(result)))?;
    }
    Ok(())
}

/// Why `job` has no result, and where to look instead.
fn no_result(job: &Job) -> String {
    let id = job.id;
    let state = output::state_name(job.state);
    let kind = job.spec.as_ref().and_then(|spec| spec.kind.as_ref());
    if let Some(job_spec::Kind::Exec(_)) = kind {
        return format!(
            "job {id} is an exec job, which reports no result; see its exit code with 'quernctl get {id}' and its output with 'quernctl logs {id}'"
        );
    }
    match JobState::try_from(job.state) {
        Ok(JobState::Queued | JobState::Scheduled | JobState::Running) => format!(
            "job {id} has no result yet: it is {state}; wait for it with 'quernctl follow {id}'"
        ),
        Ok(JobState::Failed | JobState::Cancelled) if !job.error.is_empty() => format!(
            "job {id} has no result: it {state} ({}); a job has one only once it succeeded",
            job.error
        ),
        _ => format!("job {id} has no result: it is {state}; a job has one only once it succeeded"),
    }
}

#[cfg(test)]
mod tests {
    use quern_proto::v1::{ExecSpec, FetchSpec, JobSpec};

    use super::*;

    fn job(state: JobState, kind: job_spec::Kind, error: &str) -> Job {
        Job {
            id: 7,
            state: state as i32,
            spec: Some(JobSpec {
                kind: Some(kind),
                ..JobSpec::default()
            }),
            error: error.into(),
            ..Job::default()
        }
    }

    #[test]
    fn missing_results_say_why() {
        let fetch = || job_spec::Kind::Fetch(FetchSpec::default());
        let cases = [
            (
                job(JobState::Running, fetch(), ""),
                "job 7 has no result yet: it is running; wait for it with 'quernctl follow 7'",
            ),
            (
                job(JobState::Scheduled, fetch(), ""),
                "job 7 has no result yet: it is scheduled; wait for it with 'quernctl follow 7'",
            ),
            (
                job(JobState::Failed, fetch(), "HTTP 404 Not Found"),
                "job 7 has no result: it failed (HTTP 404 Not Found); a job has one only once it succeeded",
            ),
            (
                job(
                    JobState::Succeeded,
                    job_spec::Kind::Exec(ExecSpec::default()),
                    "",
                ),
                "job 7 is an exec job, which reports no result; see its exit code with 'quernctl get 7' and its output with 'quernctl logs 7'",
            ),
        ];
        for (job, want) in cases {
            assert_eq!(no_result(&job), want);
        }
    }
}
