//! `stats`: job counts by state.

use anyhow::Result;
use quern_proto::v1::{StatsRequest, StatsResponse};

use crate::client::{Client, rpc_error};
use crate::output;

/// Prints the counts.
pub async fn run(client: &mut Client, json: bool) -> Result<()> {
    let stats = client
        .stats(StatsRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner();
    if json {
        output::json_line(&output::stats_json(&stats))?;
    } else {
        output::line(table(&stats))?;
    }
    Ok(())
}

fn table(stats: &StatsResponse) -> String {
    let rows = [
        ("queued", stats.queued),
        ("scheduled", stats.scheduled),
        ("running", stats.running),
        ("succeeded", stats.succeeded),
        ("failed", stats.failed),
        ("cancelled", stats.cancelled),
        ("queue depth", stats.queue_depth),
        ("concurrency", u64::from(stats.concurrency)),
        ("last event", stats.last_event_seq),
    ];
    let mut table = output::table();
    for (name, count) in rows {
        table.add_row([name.to_owned(), count.to_string()]);
    }
    // Numbers line up on the right, as in any column of counts.
    if let Some(column) = table.column_mut(1) {
        column.set_cell_alignment(comfy_table::CellAlignment::Right);
    }
    output::render(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_right_aligned() {
        let stats = StatsResponse {
            queued: 3,
            running: 2,
            succeeded: 1250,
            queue_depth: 3,
            concurrency: 4,
            last_event_seq: 99,
            ..StatsResponse::default()
        };
        let want = "\
queued          3
scheduled       0
running         2
succeeded    1250
failed          0
cancelled       0
queue depth     3
concurrency     4
last event     99";
        assert_eq!(table(&stats), want);
    }
}
