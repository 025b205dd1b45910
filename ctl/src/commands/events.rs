//! `events`: job state changes, one per line, until interrupted.

use anyhow::{Result, bail};
use quern_proto::v1::{EventsRequest, EventsResponse};

use crate::client::{Client, rpc_error};
use crate::output;

/// The request for the flags of `events`.
pub fn request(
    job: Option<u64>,
    after: Option<u64>,
    progress: bool,
    hosts: bool,
    watches: bool,
) -> EventsRequest {
    EventsRequest {
        after_seq: after,
        job_id: job.unwrap_or(0),
        progress,
        hosts,
        watches,
    }
}

/// Prints events as they arrive, after replaying stored ones past
/// `request.after_seq`.
pub async fn run(client: &mut Client, request: EventsRequest, json: bool) -> Result<()> {
    let mut events = client
        .events(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    while let Some(event) = events.message().await.map_err(rpc_error)? {
        if json {
            output::json_line(&output::event_json(&event))?;
        } else {
            output::line(describe(&event))?;
        }
    }
    // The stream has no natural end; the daemon closes it only when it stops.
    bail!("quernd closed the event stream; it may be shutting down")
}

/// One event as a line: "17 2030-01-01T00:00:03.000Z job 4 failed attempt 1:
/// exited with code 1", or for progress "- 2030-01-01T00:00:03.000Z job 4
/// progress download 512/1024 bytes", or for a host "- 2030-01-01T00:00:03.000Z
/// host a.example:443 open, 5 failures in a row, a probe at …, 0 running",
/// or for a watch rule "- 2030-01-01T00:00:03.000Z watch 3 triggered /src
/// active: change, 4 paths, job 12".
fn describe(event: &EventsResponse) -> String {
    let time = event
        .time
        .and_then(output::system_time)
        // Milliseconds tell apart changes that follow each other quickly,
        // such as queued and running.
        .map_or_else(
            || "-".to_owned(),
            |time| humantime::format_rfc3339_millis(time).to_string(),
        );
    if let Some(h) = &event.host {
        return format!("- {time} host {}", output::host_line(h));
    }
    if let Some(w) = &event.watch {
        return format!("- {time} watch {}", output::watch_event_line(w));
    }
    if let Some(p) = &event.progress {
        return format!(
            "- {time} job {} progress {}",
            event.job_id,
            output::progress(p)
        );
    }
    let mut line = format!(
        "{} {time} job {} {}",
        event.seq,
        event.job_id,
        output::state_name(event.state)
    );
    if event.attempt > 0 {
        line.push_str(&format!(" attempt {}", event.attempt));
    }
    if !event.error.is_empty() {
        line.push_str(&format!(": {}", event.error));
    } else if let Some(code) = event.exit_code {
        line.push_str(&format!(": exit {code}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use quern_proto::v1::JobState;

    use super::*;

    #[test]
    fn events_read_as_lines() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_003);
        let event = |state: JobState, attempt, exit_code, error: &str| EventsResponse {
            seq: 17,
            job_id: 4,
            state: state as i32,
            time: Some(time.into()),
            attempt,
            exit_code,
            error: error.into(),
            progress: None,
            host: None,
            watch: None,
        };
        let cases = [
            (
                event(JobState::Queued, 0, None, ""),
                "17 2030-01-01T00:00:03.000Z job 4 queued",
            ),
            (
                event(JobState::Failed, 1, Some(1), "exited with code 1"),
                "17 2030-01-01T00:00:03.000Z job 4 failed attempt 1: exited with code 1",
            ),
            (
                event(JobState::Succeeded, 2, Some(0), ""),
                "17 2030-01-01T00:00:03.000Z job 4 succeeded attempt 2: exit 0",
            ),
        ];
        for (event, want) in cases {
            assert_eq!(describe(&event), want);
        }
        let update = EventsResponse {
            seq: 0,
            progress: Some(quern_proto::v1::Progress {
                phase: "download".into(),
                done: 512,
                total: 1024,
                unit: "bytes".into(),
                rate: 0,
            }),
            ..event(JobState::Running, 0, None, "")
        };
        assert_eq!(
            describe(&update),
            "- 2030-01-01T00:00:03.000Z job 4 progress download 512/1024 bytes"
        );
        let host = EventsResponse {
            seq: 0,
            job_id: 0,
            state: 0,
            host: Some(quern_proto::v1::HostStats {
                host: "a.example:443".into(),
                breaker: quern_proto::v1::HostBreaker::Open as i32,
                failures: 5,
                open_until: Some(prost_types::Timestamp {
                    seconds: 1_893_456_060,
                    nanos: 0,
                }),
                running: 0,
            }),
            ..event(JobState::Unspecified, 0, None, "")
        };
        assert_eq!(
            describe(&host),
            "- 2030-01-01T00:00:03.000Z host a.example:443 open, 5 failures in a row, \
             a probe at 2030-01-01T00:01:00Z, 0 running"
        );
        assert_eq!(output::event_json(&host)["host"]["breaker"], "open");
    }

    #[test]
    fn watch_events_read_as_lines() {
        use quern_proto::v1::{Watch, WatchEvent, WatchSpec, WatchState, WatchTrigger};
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_003);
        let event = EventsResponse {
            seq: 0,
            job_id: 12,
            time: Some(time.into()),
            watch: Some(WatchEvent {
                change: "triggered".into(),
                watch: Some(Watch {
                    id: 3,
                    spec: Some(WatchSpec {
                        root: "/src".into(),
                        ..WatchSpec::default()
                    }),
                    state: WatchState::Active as i32,
                    ..Watch::default()
                }),
                trigger: Some(WatchTrigger {
                    time: Some(time.into()),
                    reason: "change".into(),
                    paths: 4,
                    job_id: 12,
                }),
            }),
            ..EventsResponse::default()
        };
        assert_eq!(
            describe(&event),
            "- 2030-01-01T00:00:03.000Z watch 3 triggered /src active: change of 4 paths, job 12"
        );
    }

    #[test]
    fn watches_are_asked_for_only_with_the_flag() {
        assert!(request(None, None, false, false, true).watches);
        assert!(!request(None, Some(5), true, true, false).watches);
        assert_eq!(request(Some(4), Some(5), false, false, false).job_id, 4);
    }
}
