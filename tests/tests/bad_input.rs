//! End-to-end tests of bad input: every invalid spec is INVALID_ARGUMENT
//! with a message naming the field, and changes nothing; unknown ids are
//! NOT_FOUND.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, ensure};
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{
    CancelRequest, GetRequest, JobSpec, LogStream, LogsRequest, SubmitBatchRequest, SubmitRequest,
    job_spec,
};
use quern_tests::{
    TestDaemon, exec_mut, exec_spec, expect_code, expect_stream_code, stats, submit, timestamp,
};
use tonic::Code;
use tonic::transport::Channel;

/// A valid job that stays scheduled for the whole test, so it makes no
/// events that could be mistaken for a change made by a refused request.
fn idle_job() -> JobSpec {
    let mut spec = exec_spec(["true"]);
    spec.run_at = Some(timestamp(SystemTime::now() + Duration::from_secs(3600)));
    spec
}

/// One row of the table: a request that must be refused, and the words the
/// error message must contain.
struct Case {
    name: &'static str,
    spec: Option<JobSpec>,
    message_names: &'static [&'static str],
}

/// A valid spec changed by `f`.
fn with(f: impl FnOnce(&mut JobSpec)) -> Option<JobSpec> {
    let mut spec = exec_spec(["true"]);
    f(&mut spec);
    Some(spec)
}

fn cases() -> Vec<Case> {
    const KIB: usize = 1024;
    let years = |n: u64| SystemTime::now() + Duration::from_secs(n * 366 * 24 * 3600);
    vec![
        Case {
            name: "missing spec",
            spec: None,
            message_names: &["spec"],
        },
        Case {
            name: "missing kind",
            spec: with(|s| s.kind = None),
            message_names: &["kind"],
        },
        Case {
            name: "empty argv",
            spec: with(|s| exec_mut(s).argv.clear()),
            message_names: &["argv"],
        },
        Case {
            name: "unknown priority_name",
            spec: with(|s| s.priority_name = "urgent".into()),
            message_names: &["priority_name"],
        },
        Case {
            name: "zero timeout",
            spec: with(|s| {
                s.timeout = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                })
            }),
            message_names: &["timeout"],
        },
        Case {
            name: "negative timeout",
            spec: with(|s| {
                s.timeout = Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                })
            }),
            message_names: &["timeout"],
        },
        Case {
            name: "4097 argv entries",
            spec: with(|s| exec_mut(s).argv = vec!["x".into(); 4097]),
            message_names: &["argv"],
        },
        Case {
            name: "argv entry over 128 KiB",
            spec: with(|s| exec_mut(s).argv.push("x".repeat(128 * KIB + 1))),
            message_names: &["argv"],
        },
        Case {
            name: "1025 env entries",
            spec: with(|s| {
                exec_mut(s).env = (0..1025).map(|n| (format!("K{n}"), "v".into())).collect();
            }),
            message_names: &["env"],
        },
        Case {
            name: "env key with '='",
            spec: with(|s| {
                exec_mut(s).env.insert("A=B".into(), "v".into());
            }),
            message_names: &["env"],
        },
        Case {
            name: "empty env key",
            spec: with(|s| {
                exec_mut(s).env.insert(String::new(), "v".into());
            }),
            message_names: &["env"],
        },
        Case {
            name: "env key with NUL",
            spec: with(|s| {
                exec_mut(s).env.insert("A\0B".into(), "v".into());
            }),
            message_names: &["env"],
        },
        Case {
            name: "65 labels",
            spec: with(|s| s.labels = (0..65).map(|n| (format!("k{n}"), "v".into())).collect()),
            message_names: &["labels"],
        },
        Case {
            name: "label key over 128 bytes",
            spec: with(|s| {
                s.labels.insert("k".repeat(129), "v".into());
            }),
            message_names: &["labels"],
        },
        Case {
            name: "label value over 1024 bytes",
            spec: with(|s| {
                s.labels.insert("k".into(), "v".repeat(1025));
            }),
            message_names: &["labels"],
        },
        Case {
            name: "run_at 11 years ahead",
            spec: with(|s| s.run_at = Some(timestamp(years(11)))),
            message_names: &["run_at"],
        },
        Case {
            name: "max_attempts 101",
            spec: with(|s| s.max_attempts = 101),
            message_names: &["max_attempts"],
        },
        Case {
            name: "relative cwd",
            spec: with(|s| exec_mut(s).cwd = "relative/dir".into()),
            message_names: &["cwd"],
        },
        Case {
            name: "idempotency_key over 256 bytes",
            spec: with(|s| s.idempotency_key = "k".repeat(257)),
            message_names: &["idempotency_key"],
        },
        Case {
            // Nine entries of 120 KiB: each entry and the count are within
            // their limits, so only the total size is wrong.
            name: "spec over 1 MiB",
            spec: with(|s| exec_mut(s).argv = vec!["x".repeat(120 * KIB); 9]),
            message_names: &["spec", "MiB"],
        },
    ]
}

/// Asserts that `status` is INVALID_ARGUMENT and its message contains every
/// word in `names`.
fn check_invalid(
    case: &str,
    result: std::result::Result<impl std::fmt::Debug, tonic::Status>,
    names: &[&str],
) -> Result<()> {
    let status =
        expect_code(result, Code::InvalidArgument).with_context(|| format!("case {case:?}"))?;
    for name in names {
        ensure!(
            status.message().contains(name),
            "case {case:?}: message {:?} does not name {name:?}",
            status.message()
        );
    }
    Ok(())
}

/// Runs `call` and asserts that the daemon's counts and event seq are the
/// same afterwards: a refused request must change nothing.
async fn unchanged<T>(
    client: &mut JobsClient<Channel>,
    call: impl AsyncFnOnce(&mut JobsClient<Channel>) -> Result<T>,
) -> Result<T> {
    let before = stats(client).await?;
    let out = call(client).await?;
    let after = stats(client).await?;
    ensure!(
        before == after,
        "a refused request changed the stats: {before:?} -> {after:?}"
    );
    Ok(out)
}

/// Every bad spec is refused with INVALID_ARGUMENT naming the field, and
/// stores nothing.
#[tokio::test]
async fn each_bad_spec_is_invalid_argument_naming_the_field() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    // One real job first, so "nothing changed" is checked against a
    // non-empty store. It waits far ahead, so it changes nothing either.
    submit(&mut client, idle_job()).await?;

    let mut failures = Vec::new();
    for case in cases() {
        let outcome = unchanged(&mut client, async |client| {
            let result = client
                .submit(SubmitRequest {
                    spec: case.spec.clone(),
                })
                .await;
            check_invalid(case.name, result, case.message_names)
        })
        .await;
        // Every row runs, so one report lists all the broken cases.
        if let Err(e) = outcome {
            failures.push(format!("{e:#}"));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// A batch with one bad spec among good ones stores none of them, and the
/// error names the bad one's index.
#[tokio::test]
async fn submit_batch_with_one_bad_spec_stores_none() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let mut specs = vec![exec_spec(["true"]); 6];
    exec_mut(&mut specs[3]).argv.clear();
    unchanged(&mut client, async |client| {
        let result = client.submit_batch(SubmitBatchRequest { specs }).await;
        check_invalid("batch", result, &["specs[3]", "argv"])
    })
    .await?;

    // And a batch whose bad spec has no kind at all.
    let mut specs = vec![exec_spec(["true"]); 3];
    specs[1].kind = None::<job_spec::Kind>;
    unchanged(&mut client, async |client| {
        let result = client.submit_batch(SubmitBatchRequest { specs }).await;
        check_invalid("batch without kind", result, &["specs[1]"])
    })
    .await
}

/// Get, Cancel and Logs of an id that was never issued are NOT_FOUND.
#[tokio::test]
async fn unknown_ids_are_not_found() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let known = submit(&mut client, idle_job()).await?;
    let unknown = known.id + 1000;

    unchanged(&mut client, async |client| {
        expect_code(client.get(GetRequest { id: unknown }).await, Code::NotFound).context("Get")?;
        expect_code(
            client
                .cancel(CancelRequest {
                    id: unknown,
                    grace: None,
                })
                .await,
            Code::NotFound,
        )
        .context("Cancel")?;
        for follow in [false, true] {
            let request = LogsRequest {
                job_id: unknown,
                follow,
                stream: LogStream::Unspecified as i32,
                ..LogsRequest::default()
            };
            expect_stream_code(client.logs(request).await, Code::NotFound)
                .await
                .with_context(|| format!("Logs with follow = {follow}"))?;
        }
        Ok(())
    })
    .await
}
