//! `cancel ID`: stops a job and reports the state it ended in.

use std::time::Duration;

use anyhow::{Result, anyhow};
use quern_proto::v1::CancelRequest;

use crate::client::{Client, rpc_error};
use crate::output;

/// Cancels a job. The daemon answers once the job has stopped, which can
/// take the grace period.
pub async fn run(client: &mut Client, id: u64, grace: Option<Duration>, json: bool) -> Result<()> {
    let grace = grace
        .map(|grace| {
            prost_types::Duration::try_from(grace).map_err(|_| {
                anyhow!(
                    "--grace {} is too long; give a shorter grace period",
                    humantime::format_duration(grace)
                )
            })
        })
        .transpose()?;
    let response = client
        .cancel(CancelRequest { id, grace })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let job = super::returned_job(response.job, "Cancel")?;
    if json {
        output::json_line(&output::job_json(&job))?;
    } else {
        output::line(format!("job {} {}", job.id, output::state_name(job.state)))?;
    }
    Ok(())
}
