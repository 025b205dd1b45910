//! `prune`: remove finished jobs, their logs and old events now.

use std::time::Duration;

use anyhow::Result;
use quern_proto::v1::{PruneRequest, PruneResponse};
use serde_json::json;

use crate::client::{Client, rpc_error};
use crate::output;

/// The request for the flags given; what is left out is the daemon's
/// configured retention.
pub fn request(older_than: Option<Duration>, keep: Option<u64>, dry_run: bool) -> PruneRequest {
    PruneRequest {
        older_than: older_than.map(|d| prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos() as i32,
        }),
        keep,
        dry_run,
    }
}

/// Runs the prune and prints what it removed.
pub async fn run(client: &mut Client, request: PruneRequest, json: bool) -> Result<()> {
    let dry_run = request.dry_run;
    let pruned = client.prune(request).await.map_err(rpc_error)?.into_inner();
    if json {
        output::json_line(&json!({
            "jobs": pruned.jobs,
            "events": pruned.events,
            "log_bytes": pruned.log_bytes,
            "dry_run": dry_run,
        }))?;
    } else {
        output::line(summary(&pruned, dry_run))?;
    }
    Ok(())
}

fn summary(p: &PruneResponse, dry_run: bool) -> String {
    let verb = if dry_run { "would remove" } else { "removed" };
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "{verb} {}, {} and {} of logs",
        plural(p.jobs, "finished job", "finished jobs"),
        plural(p.events, "event", "events"),
        output::human_bytes(p.log_bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_what_went_and_whether_it_did() {
        let p = PruneResponse {
            jobs: 1,
            events: 2,
            log_bytes: 17_900_000,
        };
        assert_eq!(
            summary(&p, false),
            "removed 1 finished job, 2 events and 17.9 MB of logs"
        );
        assert_eq!(
            summary(&PruneResponse::default(), true),
            "would remove 0 finished jobs, 0 events and 0 B of logs"
        );
    }
}
