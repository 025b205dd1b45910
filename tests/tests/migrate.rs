//! A store written by an earlier quernd opens in this one: the fixtures of
//! schemas 1 to 3 (tests/fixtures/store-schema-N, each made by the script
//! beside it, with the same jobs) are migrated by the real quernd at start,
//! and every job, event, key and captured output is still there.

use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use quern_proto::v1::{JobState, ListRequest, LogStream};
use quern_tests::{
    EventStream, TestDaemon, exec_spec, get, read_logs, stats, submit, wait_for_terminal,
};

/// Copies the database and logs of fixture `name` into `state_dir`.
fn copy_fixture(name: &str, state_dir: &Path) -> Result<()> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::copy(fixture.join("quern.redb"), state_dir.join("quern.redb"))
        .context("copying the fixture's database")?;
    let logs = state_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    for entry in std::fs::read_dir(fixture.join("logs"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), logs.join(entry.file_name()))?;
    }
    Ok(())
}

#[tokio::test]
async fn a_schema_1_store_is_migrated_by_quernd_with_nothing_lost() -> Result<()> {
    migrated_with_nothing_lost("store-schema-1").await
}

#[tokio::test]
async fn a_schema_2_store_is_migrated_by_quernd_with_nothing_lost() -> Result<()> {
    migrated_with_nothing_lost("store-schema-2").await
}

#[tokio::test]
async fn a_schema_3_store_is_migrated_by_quernd_with_nothing_lost() -> Result<()> {
    migrated_with_nothing_lost("store-schema-3").await
}

/// Schema 4 added watch rules: the fixture's rule comes through, over a
/// root that is gone, so in `error`, and keeps its spec.
#[tokio::test]
async fn a_schema_4_store_is_migrated_by_quernd_with_nothing_lost() -> Result<()> {
    migrated_with_nothing_lost("store-schema-4").await?;
    let prepared = TestDaemon::builder().concurrency(1).prepare()?;
    copy_fixture("store-schema-4", prepared.state_dir())?;
    let daemon = prepared.start().await?;
    let rules = daemon
        .watches()
        .list(quern_proto::v1::ListWatchesRequest {})
        .await?
        .into_inner()
        .watches;
    ensure!(rules.len() == 1, "{rules:?}");
    let spec = rules[0].spec.clone().unwrap_or_default();
    ensure!(spec.include == vec!["*.rs".to_string()], "{spec:?}");
    ensure!(
        spec.job
            .is_some_and(|j| j.labels.get("fixture") == Some(&"yes".into()))
    );
    Ok(())
}

async fn migrated_with_nothing_lost(fixture: &str) -> Result<()> {
    let prepared = TestDaemon::builder().concurrency(1).prepare()?;
    copy_fixture(fixture, prepared.state_dir())?;
    let daemon = prepared.start().await?;
    let mut client = daemon.client();
    let me = nix::unistd::getuid().as_raw();

    // The events written by the old quernd replay from the start, in
    // order; the first is job 1's submit.
    let mut replay = EventStream::after(&mut client, Some(0), 0).await?;
    let first = replay.next().await?;
    ensure!(
        first.seq == 1 && first.job_id == 1 && first.state == JobState::Queued as i32,
        "{first:?}"
    );

    let one = get(&mut client, 1).await?;
    ensure!(one.state == JobState::Succeeded as i32, "{one:?}");
    ensure!(one.owner_uid == me, "owner {} is not {me}", one.owner_uid);
    let spec = one.spec.clone().context("job 1 has no spec")?;
    ensure!(spec.labels.get("team").map(String::as_str) == Some("infra"));
    let out = read_logs(&mut client, 1, LogStream::Unspecified).await?;
    ensure!(
        out.stdout == b"out-1\n" && out.stderr == b"err-1\n",
        "{out:?}"
    );

    let two = get(&mut client, 2).await?;
    ensure!(
        two.state == JobState::Failed as i32 && two.exit_code == Some(3),
        "{two:?}"
    );
    ensure!(read_logs(&mut client, 2, LogStream::Stdout).await?.stdout == b"failing\n");
    ensure!(get(&mut client, 3).await?.state == JobState::Cancelled as i32);
    ensure!(get(&mut client, 4).await?.state == JobState::Scheduled as i32);

    // Job 5 ran when the old daemon was killed: recovery failed it, its
    // one attempt used up, and kept what it printed.
    let five = get(&mut client, 5).await?;
    ensure!(
        five.state == JobState::Failed as i32 && five.error.contains("interrupted"),
        "{five:?}"
    );
    ensure!(read_logs(&mut client, 5, LogStream::Stdout).await?.stdout == b"started-5\n");

    // Job 6 was queued behind it, and runs now.
    let six = wait_for_terminal(&mut client, 6).await?;
    ensure!(six.state == JobState::Succeeded as i32, "{six:?}");
    ensure!(read_logs(&mut client, 6, LogStream::Stdout).await?.stdout == b"six\n");

    // The idempotency key is still held by job 4.
    let mut again = exec_spec(["true"]);
    again.idempotency_key = "fixture-key".into();
    let dedup = client
        .submit(quern_proto::v1::SubmitRequest { spec: Some(again) })
        .await?
        .into_inner();
    ensure!(
        dedup.deduplicated && dedup.job.as_ref().map(|j| j.id) == Some(4),
        "{dedup:?}"
    );
    // New ids continue above the old ones.
    let fresh = submit(&mut client, exec_spec(["true"])).await?;
    ensure!(fresh.id == 7, "new job got id {}", fresh.id);
    ensure!(fresh.owner_uid == me);

    let by_kind = client
        .list(ListRequest {
            kind: "exec".into(),
            page_size: 100,
            ..Default::default()
        })
        .await?
        .into_inner();
    let ids: Vec<u64> = by_kind.jobs.iter().map(|j| j.id).collect();
    ensure!(ids == [7, 6, 5, 4, 3, 2, 1], "List by kind: {ids:?}");
    // The old jobs are all exec jobs; the newer kind's index answers too.
    let fetches = client
        .list(ListRequest {
            kind: "fetch".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(fetches.jobs.is_empty(), "{fetches:?}");
    let five = get(&mut client, 5).await?;
    ensure!(
        five.result.is_none() && five.wait_reason.is_empty(),
        "{five:?}"
    );
    let counts = stats(&mut client).await?;
    ensure!(counts.scheduled == 1 && counts.cancelled == 1, "{counts:?}");
    Ok(())
}
