//! `stats`: job counts by state, and the hosts fetch jobs use.

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
        ("fetch concurrency", u64::from(stats.fetch_concurrency)),
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
    let mut text = output::render(table);
    // Hosts with something to show: running jobs, failures, a breaker
    // that is not closed.
    if !stats.hosts.is_empty() {
        let mut hosts = output::table();
        hosts.set_header(["host", "breaker", "failures", "running", "probe at"]);
        for h in &stats.hosts {
            let probe = h
                .open_until
                .and_then(output::system_time)
                .map_or_else(String::new, |t| {
                    humantime::format_rfc3339_seconds(t).to_string()
                });
            hosts.add_row([
                h.host.clone(),
                output::breaker_name(h.breaker).to_owned(),
                h.failures.to_string(),
                h.running.to_string(),
                probe,
            ]);
        }
        text.push_str("\n\n");
        text.push_str(&output::render(hosts));
    }
    text
}

#[cfg(test)]
mod tests {
    use quern_proto::v1::{HostBreaker, HostStats};

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
queued                3
scheduled             0
running               2
succeeded          1250
failed                0
cancelled             0
queue depth           3
concurrency           4
fetch concurrency     0
last event           99";
        assert_eq!(table(&stats), want);
    }

    #[test]
    fn hosts_follow_the_counts_with_their_breakers() {
        let stats = StatsResponse {
            fetch_concurrency: 16,
            hosts: vec![
                HostStats {
                    host: "a.example:443".into(),
                    breaker: HostBreaker::Open as i32,
                    failures: 5,
                    open_until: Some(prost_types::Timestamp {
                        seconds: 1_893_456_060,
                        nanos: 0,
                    }),
                    running: 0,
                },
                HostStats {
                    host: "b.example:80".into(),
                    breaker: HostBreaker::Closed as i32,
                    failures: 0,
                    open_until: None,
                    running: 2,
                },
            ],
            ..StatsResponse::default()
        };
        let text = table(&stats);
        assert!(text.contains("fetch concurrency  16"), "{text}");
        let hosts: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("host"))
            .collect();
        assert_eq!(
            hosts,
            [
                "host           breaker  failures  running  probe at",
                "a.example:443  open     5         0        2030-01-01T00:01:00Z",
                "b.example:80   closed   0         2",
            ],
            "{text}"
        );
        let json = output::stats_json(&stats);
        assert_eq!(json["fetch_concurrency"], 16);
        assert_eq!(json["hosts"][0]["breaker"], "open");
        assert_eq!(json["hosts"][0]["open_until"], "2030-01-01T00:01:00Z");
        assert_eq!(json["hosts"][1]["running"], 2);
    }
}
