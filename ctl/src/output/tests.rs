//! Tests of how quernctl shows jobs, events, results and stats, as text
//! and as JSON.

use std::collections::HashMap;

use quern_proto::v1::ExecSpec;
use quern_proto::v1::{WatchEvent, WatchSpec, WatchState, WatchTrigger};

use super::*;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn relative_times() {
    let now = at(1_000_000);
    let cases = [
        (at(1_000_000), "just now"),
        (now - Duration::from_millis(400), "just now"),
        (now + Duration::from_millis(400), "just now"),
        (at(999_997), "3s ago"),
        (at(1_000_300), "in 5m"),
        (at(1_000_330), "in 5m30s"),
        (at(1_000_000 - 5_400), "1h30m ago"),
        (at(1_000_000 - 3_605), "1h ago"),
        (at(1_000_000 + 2 * 86_400 + 4 * 3_600 + 59), "in 2d4h"),
        (at(1_000_000 - 86_400 - 5), "1d ago"),
    ];
    for (time, want) in cases {
        assert_eq!(relative(time, now), want);
    }
}

#[test]
fn state_names_are_lowercase_and_total() {
    let cases = [
        (JobState::Queued, "queued"),
        (JobState::Scheduled, "scheduled"),
        (JobState::Running, "running"),
        (JobState::Succeeded, "succeeded"),
        (JobState::Failed, "failed"),
        (JobState::Cancelled, "cancelled"),
        (JobState::Unspecified, "unknown"),
    ];
    for (state, want) in cases {
        assert_eq!(state_name(state as i32), want);
    }
    assert_eq!(state_name(99), "unknown");
}

#[test]
fn terminal_states() {
    let terminal: Vec<_> = STATE_NAMES
        .iter()
        .filter(|(_, state)| is_terminal(*state as i32))
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(terminal, ["succeeded", "failed", "cancelled"]);
}

fn sample_job() -> Job {
    Job {
        id: 42,
        state: JobState::Failed as i32,
        spec: Some(JobSpec {
            kind: Some(job_spec::Kind::Exec(ExecSpec {
                argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
                cwd: "/tmp".into(),
                env: HashMap::from([("A".into(), "1".into())]),
            })),
            priority: 10,
            labels: HashMap::from([("team".into(), "infra".into())]),
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            max_attempts: 3,
            ..JobSpec::default()
        }),
        queued_at: Some(at(1_700_000_000).into()),
        started_at: Some(at(1_700_000_001).into()),
        finished_at: Some(at(1_700_000_002).into()),
        run_at: None,
        attempts: 3,
        exit_code: Some(3),
        error: "exited with code 3".into(),
        owner_uid: 1000,
        progress: None,
        result: None,
        wait_reason: String::new(),
        pid: 0,
        priority: 10,
    }
}

#[test]
fn job_json_has_id_state_and_snake_case_fields() {
    let value = job_json(&sample_job());
    assert_eq!(value["id"], 42);
    assert_eq!(value["state"], "failed");
    assert_eq!(value["exit_code"], 3);
    assert_eq!(value["error"], "exited with code 3");
    assert_eq!(value["queued_at"], "2023-11-14T22:13:20Z");
    assert_eq!(value["finished_at"], "2023-11-14T22:13:22Z");
    assert_eq!(value["run_at"], Value::Null);
    assert_eq!(value["spec"]["exec"]["argv"], json!(["sh", "-c", "exit 3"]));
    assert_eq!(value["spec"]["labels"]["team"], "infra");
    assert_eq!(value["spec"]["timeout"], "1.500s");
    assert_eq!(value["spec"]["max_attempts"], 3);
    // Every key, at every level, is snake_case.
    fn check_keys(value: &Value) {
        if let Value::Object(map) = value {
            for (key, child) in map {
                // Labels and env carry the user's keys; only ours are checked.
                if key != "labels" && key != "env" {
                    check_keys(child);
                }
                assert!(
                    key.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "key {key:?} is not snake_case"
                );
            }
        }
    }
    check_keys(&value);
}

fn fetch_result() -> JobResult {
    JobResult {
        kind: Some(job_result::Kind::Fetch(FetchResult {
            final_url: "https://mirror.example.org/f.iso".into(),
            status: 200,
            bytes: 17_900_000,
            sha256: "ab".repeat(32),
            unchanged: false,
            transfer_time: Some(prost_types::Duration {
                seconds: 3,
                nanos: 250_000_000,
            }),
            resumed_bytes: 900_000,
        })),
    }
}

#[test]
fn result_json_is_keyed_by_kind_with_the_protos_field_names() {
    let value = result_json(&fetch_result());
    assert_eq!(
        value,
        json!({
            "fetch": {
                "final_url": "https://mirror.example.org/f.iso",
                "status": 200,
                "bytes": 17_900_000,
                "sha256": "ab".repeat(32),
                "unchanged": false,
                "transfer_time": "3.250s",
                "resumed_bytes": 900_000,
            }
        })
    );
    assert_eq!(result_json(&JobResult { kind: None }), json!({}));
}

#[test]
fn result_rows_read_for_people() {
    let text = rows_table(result_rows(&fetch_result()));
    let want = format!(
        "\
final url      https://mirror.example.org/f.iso
status         200
bytes          17.9 MB (17900000 bytes)
sha256         {}
unchanged      no
transfer time  3s 250ms
resumed        900.0 kB (900000 bytes)",
        "ab".repeat(32)
    );
    assert_eq!(text, want);

    // A skip that found the file: no request, nothing resumed, no digest.
    let skipped = JobResult {
        kind: Some(job_result::Kind::Fetch(FetchResult {
            final_url: "https://example.org/f".into(),
            bytes: 12,
            unchanged: true,
            ..FetchResult::default()
        })),
    };
    let text = rows_table(result_rows(&skipped));
    assert_eq!(
        text,
        "\
final url  https://example.org/f
status     none (no request was made)
bytes      12 B
unchanged  yes"
    );
}

#[test]
fn job_json_carries_the_fetch_spec_result_and_wait_reason() {
    let job = Job {
        id: 5,
        state: JobState::Succeeded as i32,
        spec: Some(JobSpec {
            kind: Some(job_spec::Kind::Fetch(quern_proto::v1::FetchSpec {
                url: "https://example.org/f.iso".into(),
                dest: "/srv/f.iso".into(),
                headers: vec![quern_proto::v1::HttpHeader {
                    name: "Accept".into(),
                    value: "*/*".into(),
                }],
                max_bytes: Some(1000),
                overwrite: FetchOverwrite::Skip as i32,
                ..quern_proto::v1::FetchSpec::default()
            })),
            ..JobSpec::default()
        }),
        result: Some(fetch_result()),
        wait_reason: String::new(),
        progress: Some(Progress {
            phase: "download".into(),
            done: 1,
            total: 2,
            unit: "bytes".into(),
            rate: 3,
        }),
        ..Job::default()
    };
    let value = job_json(&job);
    let fetch = &value["spec"]["fetch"];
    assert_eq!(fetch["url"], "https://example.org/f.iso");
    assert_eq!(fetch["dest"], "/srv/f.iso");
    assert_eq!(
        fetch["headers"],
        json!([{ "name": "Accept", "value": "*/*" }])
    );
    assert_eq!(fetch["max_bytes"], 1000);
    assert_eq!(fetch["overwrite"], "skip");
    assert_eq!(fetch["method"], "");
    assert_eq!(fetch["body_file"], "");
    assert_eq!(fetch["retry_unsafe"], false);
    assert_eq!(value["spec"]["exec"], Value::Null);
    assert_eq!(value["result"], result_json(&fetch_result()));
    assert_eq!(value["wait_reason"], "");
    assert_eq!(value["progress"]["rate"], 3);

    // Unset max_bytes is null, not 0 (which would be a limit).
    let mut job = job;
    if let Some(job_spec::Kind::Fetch(f)) = job.spec.as_mut().and_then(|s| s.kind.as_mut()) {
        f.max_bytes = None;
        f.overwrite = FetchOverwrite::Unspecified as i32;
    }
    job.result = None;
    let value = job_json(&job);
    assert_eq!(value["spec"]["fetch"]["max_bytes"], Value::Null);
    assert_eq!(value["spec"]["fetch"]["overwrite"], "replace");
    assert_eq!(value["result"], Value::Null);
}

#[test]
fn progress_shows_the_rate_when_known() {
    let p = |unit: &str, rate| Progress {
        phase: "download".into(),
        done: 512,
        total: 1024,
        unit: unit.into(),
        rate,
    };
    assert_eq!(progress(&p("bytes", 0)), "download 512/1024 bytes");
    assert_eq!(
        progress(&p("bytes", 2_500_000)),
        "download 512/1024 bytes at 2.5 MB/s"
    );
    assert_eq!(
        progress(&p("files", 7)),
        "download 512/1024 files at 7 files/s"
    );
    assert_eq!(progress(&p("", 7)), "download 512/1024 at 7/s");
}

#[test]
fn fetch_commands_show_method_url_and_dest() {
    let job = |method: &str, dest: &str| Job {
        spec: Some(JobSpec {
            kind: Some(job_spec::Kind::Fetch(quern_proto::v1::FetchSpec {
                url: "https://example.org/x".into(),
                dest: dest.into(),
                method: method.into(),
                ..quern_proto::v1::FetchSpec::default()
            })),
            ..JobSpec::default()
        }),
        ..Job::default()
    };
    assert_eq!(
        command(&job("", "/t/x")),
        "GET https://example.org/x -> /t/x"
    );
    assert_eq!(command(&job("POST", "")), "POST https://example.org/x");
}

#[test]
fn event_json_has_lowercase_state() {
    let event = EventsResponse {
        seq: 7,
        job_id: 42,
        state: JobState::Running as i32,
        time: Some(at(1_700_000_000).into()),
        attempt: 1,
        exit_code: None,
        error: String::new(),
        progress: None,
        host: None,
        watch: None,
    };
    let value = event_json(&event);
    assert_eq!(value["seq"], 7);
    assert_eq!(value["job_id"], 42);
    assert_eq!(value["state"], "running");
    assert_eq!(value["exit_code"], Value::Null);
}

#[test]
fn proto_durations() {
    let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
    assert_eq!(proto_duration(d(10, 0)), "10s");
    assert_eq!(proto_duration(d(1, 500_000_000)), "1.500s");
    assert_eq!(proto_duration(d(0, 1_000)), "0.000001s");
    assert_eq!(proto_duration(d(0, 1)), "0.000000001s");
    assert_eq!(proto_duration(d(-2, 0)), "-2s");
}

#[test]
fn shell_join_round_trips_through_a_shell() {
    let argv: Vec<String> = ["sh", "-c", "echo 'hi' $HOME", "", "a b", "x=1"]
        .map(String::from)
        .to_vec();
    assert_eq!(
        shell_join(&argv),
        r#"sh -c 'echo '\''hi'\'' $HOME' '' 'a b' x=1"#
    );
}

#[test]
fn tables_have_no_borders_or_trailing_blanks() {
    let mut t = table();
    t.set_header(["ID", "STATE"]);
    t.add_row(["7", "running"]);
    t.add_row(["12", "ok"]);
    assert_eq!(render(t), "ID  STATE\n7   running\n12  ok");
}

fn sample_watch() -> Watch {
    Watch {
        id: 3,
        spec: Some(WatchSpec {
            root: "/srv/src".into(),
            recursive: Some(true),
            include: vec!["**/*.rs".into()],
            exclude: vec!["target/**".into()],
            no_ignore_files: true,
            debounce: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
            max_wait: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            on_busy: String::new(),
            job: sample_job().spec,
        }),
        state: WatchState::Degraded as i32,
        state_reason: "out of inotify watches".into(),
        created_at: Some(at(1_700_000_000).into()),
        owner_uid: 1000,
        jobs_made: 2,
        last_trigger: Some(WatchTrigger {
            time: Some(at(1_700_000_005).into()),
            reason: "rescan".into(),
            paths: 4,
            job_id: 12,
        }),
        kernel_watches: 7,
        snapshot_paths: 120,
        pending_paths: 1,
        recent_job_ids: vec![12, 9],
    }
}

#[test]
fn watch_state_names_are_lowercase_and_total() {
    let cases = [
        (WatchState::Active, "active"),
        (WatchState::Paused, "paused"),
        (WatchState::Degraded, "degraded"),
        (WatchState::Error, "error"),
        (WatchState::Unspecified, "unknown"),
    ];
    for (state, want) in cases {
        assert_eq!(watch_state_name(state as i32), want);
    }
    assert_eq!(watch_state_name(99), "unknown");
}

#[test]
fn watch_json_is_in_the_style_of_job_json() {
    let value = watch_json(&sample_watch());
    assert_eq!(
        value,
        json!({
            "id": 3,
            "state": "degraded",
            "state_reason": "out of inotify watches",
            "created_at": "2023-11-14T22:13:20Z",
            "owner_uid": 1000,
            "jobs_made": 2,
            "last_trigger": {
                "time": "2023-11-14T22:13:25Z",
                "reason": "rescan",
                "paths": 4,
                "job_id": 12,
            },
            "kernel_watches": 7,
            "snapshot_paths": 120,
            "pending_paths": 1,
            "recent_job_ids": [12, 9],
            "spec": {
                "root": "/srv/src",
                "recursive": true,
                "include": ["**/*.rs"],
                "exclude": ["target/**"],
                "no_ignore_files": true,
                "debounce": "0.100s",
                "max_wait": "10s",
                // Empty is the daemon's default, shown as what it does.
                "on_busy": "coalesce",
                // The template reads as a job's spec does.
                "job": job_json(&sample_job())["spec"],
            },
        })
    );
    assert_eq!(
        value["spec"]["job"]["exec"]["argv"],
        json!(["sh", "-c", "exit 3"])
    );

    // What the proto leaves unset is null.
    let bare = watch_json(&Watch::default());
    assert_eq!(bare["spec"], Value::Null);
    assert_eq!(bare["last_trigger"], Value::Null);
    assert_eq!(bare["created_at"], Value::Null);
    assert_eq!(bare["state"], "unknown");
}

#[test]
fn watch_events_read_as_words_and_json() {
    let event = WatchEvent {
        change: "triggered".into(),
        watch: Some(sample_watch()),
        trigger: sample_watch().last_trigger,
    };
    assert_eq!(
        watch_event_line(&event),
        "3 triggered /srv/src degraded (out of inotify watches): rescan of 4 paths, job 12"
    );
    let mut paused = sample_watch();
    paused.state = WatchState::Paused as i32;
    paused.state_reason.clear();
    let event = WatchEvent {
        change: "paused".into(),
        watch: Some(paused),
        trigger: None,
    };
    assert_eq!(watch_event_line(&event), "3 paused /srv/src paused");

    let response = EventsResponse {
        watch: Some(event),
        ..EventsResponse::default()
    };
    let value = event_json(&response);
    assert_eq!(value["watch"]["change"], "paused");
    assert_eq!(value["watch"]["watch"]["state"], "paused");
    assert_eq!(value["watch"]["trigger"], Value::Null);
    assert_eq!(value["host"], Value::Null);
    // A job's event has no watch.
    assert_eq!(event_json(&EventsResponse::default())["watch"], Value::Null);
}

#[test]
fn trigger_words_count_paths_and_say_when_no_job_was_made() {
    let trigger = |paths, job_id| WatchTrigger {
        time: None,
        reason: "change".into(),
        paths,
        job_id,
    };
    assert_eq!(trigger_words(&trigger(1, 7)), "change of 1 path, job 7");
    assert_eq!(trigger_words(&trigger(3, 0)), "change of 3 paths, no job");
}
