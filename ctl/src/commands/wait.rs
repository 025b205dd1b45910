//! `wait ID...`: blocks until every job is finished, following the event
//! stream rather than polling, and succeeds only if every job succeeded.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, bail};
use quern_proto::v1::{EventsRequest, GetRequest, Job, JobState, StatsRequest};
use tonic::Code;

use crate::client::{Client, rpc_error};
use crate::output;

/// How many times the event stream may be resubscribed after the daemon
/// says the events after our position were pruned (OUT_OF_RANGE). That
/// needs more events between two calls than the daemon retains, so more
/// than a few in a row means something is wrong, not slow.
const MAX_RESYNCS: u32 = 3;

/// Waits for the jobs, prints how each ended, and fails unless all of them
/// succeeded. `timeout` bounds the whole wait.
pub async fn run(
    client: &mut Client,
    ids: &[u64],
    timeout: Option<Duration>,
    json: bool,
) -> Result<()> {
    let mut order: Vec<u64> = Vec::with_capacity(ids.len());
    for id in ids {
        if !order.contains(id) {
            order.push(*id);
        }
    }
    let mut pending: BTreeSet<u64> = order.iter().copied().collect();

    match timeout {
        None => until_finished(client, &mut pending).await?,
        Some(limit) => {
            let waited = tokio::time::timeout(limit, until_finished(client, &mut pending)).await;
            match waited {
                Ok(result) => result?,
                Err(_elapsed) => bail!(
                    "timed out after {} waiting for {} to finish",
                    humantime::format_duration(limit),
                    job_list(&pending)
                ),
            }
        }
    }

    // The final jobs come from Get, not from the events, so that the output
    // is the same full job `get` shows, whichever way the wait ended.
    let mut jobs = Vec::with_capacity(order.len());
    for id in order {
        jobs.push(get(client, id).await?);
    }
    if json {
        let values: Vec<_> = jobs.iter().map(output::job_json).collect();
        output::json_line(&values.into())?;
    } else {
        for job in &jobs {
            output::line(outcome(job))?;
        }
    }

    let unsuccessful: Vec<String> = jobs
        .iter()
        .filter(|job| job.state != JobState::Succeeded as i32)
        .map(|job| format!("job {} {}", job.id, output::state_name(job.state)))
        .collect();
    if !unsuccessful.is_empty() {
        bail!("not every job succeeded: {}", unsuccessful.join(", "));
    }
    Ok(())
}

/// Returns once every job in `pending` is finished, removing each from it
/// as it finishes, so that on timeout the caller knows which were left.
async fn until_finished(client: &mut Client, pending: &mut BTreeSet<u64>) -> Result<()> {
    let mut resyncs = 0;
    loop {
        // The event position is read before the jobs are: a job that
        // finishes after its Get then has its event after `after_seq`, and
        // the subscription below replays it. Read the other way round, a
        // job finishing between the two reads would be missed.
        let after_seq = client
            .stats(StatsRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner()
            .last_event_seq;
        for id in pending.clone() {
            if output::is_terminal(get(client, id).await?.state) {
                pending.remove(&id);
            }
        }
        let Some(&first) = pending.first() else {
            return Ok(());
        };

        // With one job left the daemon can filter; with several, it sends
        // all events and the ones for other jobs are skipped here.
        let job_id = if pending.len() == 1 { first } else { 0 };
        let request = EventsRequest {
            after_seq: Some(after_seq),
            job_id,
            progress: false,
            hosts: false,
            watches: false,
        };
        let mut events = match client.events(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::OutOfRange && resyncs < MAX_RESYNCS => {
                resyncs += 1;
                continue;
            }
            Err(status) => return Err(rpc_error(status)),
        };
        loop {
            match events.message().await {
                // Finished states are final, so a finished event, even one
                // replayed from before the Get, means the job is done.
                Ok(Some(event)) => {
                    if output::is_terminal(event.state) {
                        pending.remove(&event.job_id);
                        if pending.is_empty() {
                            return Ok(());
                        }
                    }
                }
                Ok(None) => bail!(
                    "quernd closed the event stream before {} finished; it may be shutting down",
                    job_list(pending)
                ),
                Err(status) if status.code() == Code::OutOfRange && resyncs < MAX_RESYNCS => {
                    resyncs += 1;
                    break;
                }
                Err(status) => return Err(rpc_error(status)),
            }
        }
    }
}

async fn get(client: &mut Client, id: u64) -> Result<Job> {
    let response = client
        .get(GetRequest { id })
        .await
        .map_err(rpc_error)?
        .into_inner();
    super::returned_job(response.job, "Get")
}

/// "job 3" or "jobs 3, 5".
fn job_list(ids: &BTreeSet<u64>) -> String {
    let list: Vec<String> = ids.iter().map(u64::to_string).collect();
    match list.len() {
        1 => format!("job {}", list[0]),
        _ => format!("jobs {}", list.join(", ")),
    }
}

/// "job 3 succeeded", "job 4 failed: exited with code 1".
fn outcome(job: &Job) -> String {
    let state = output::state_name(job.state);
    if job.error.is_empty() {
        format!("job {} {state}", job.id)
    } else {
        format!("job {} {state}: {}", job.id, job.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_lists_read_naturally() {
        assert_eq!(job_list(&BTreeSet::from([3])), "job 3");
        assert_eq!(job_list(&BTreeSet::from([5, 3])), "jobs 3, 5");
    }

    #[test]
    fn outcomes_carry_the_error() {
        let mut job = Job {
            id: 4,
            state: JobState::Failed as i32,
            error: "exited with code 1".into(),
            ..Job::default()
        };
        assert_eq!(outcome(&job), "job 4 failed: exited with code 1");
        job.state = JobState::Succeeded as i32;
        job.error.clear();
        assert_eq!(outcome(&job), "job 4 succeeded");
    }
}
