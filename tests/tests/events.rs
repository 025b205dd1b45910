//! End-to-end tests of the Events stream: resuming with after_seq yields
//! exactly the missed events, and a resume from before the retention window
//! is OUT_OF_RANGE.

use std::time::{Duration, SystemTime};

use anyhow::{Result, ensure};
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{EventsRequest, JobSpec, JobState, SubmitBatchRequest};
use quern_tests::{
    EventStream, TestDaemon, exec_spec, expect_stream_code, stats, submit, timestamp,
};
use tonic::Code;
use tonic::transport::Channel;

/// A job that stays scheduled for the whole test, so each Submit adds
/// exactly one event and nothing happens afterwards.
fn far_future_job() -> JobSpec {
    let mut spec = exec_spec(["true"]);
    spec.run_at = Some(timestamp(SystemTime::now() + Duration::from_secs(3600)));
    spec
}

/// Reads `events` until it has yielded the event with seq `last`.
async fn read_through(events: &mut EventStream, last: u64) -> Result<()> {
    if events.seen().last().is_some_and(|e| e.seq >= last) {
        return Ok(());
    }
    events.wait_for(|e| e.seq >= last).await?;
    Ok(())
}

/// A second stream resumed from the middle of a first one yields the same
/// events after that point, with no gap and no duplicate, across the switch
/// from stored to live events while jobs are still being submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_seq_yields_exactly_the_missed_events() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let mut all = EventStream::from_now(&mut client, 0).await?;

    // Real jobs first, so the history has several states per job.
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(submit(&mut client, exec_spec(["true"])).await?.id);
    }
    all.wait_all_terminal(&ids).await?;
    let seen = all.seen();
    ensure!(
        seen.len() >= 15,
        "5 finished jobs gave only {} events: {seen:?}",
        seen.len()
    );
    ensure!(
        seen.windows(2).all(|w| w[0].seq < w[1].seq),
        "seqs are not strictly increasing: {seen:?}"
    );
    let middle = seen[seen.len() / 2].seq;

    // Keep submitting while the resumed stream opens, so its switch from
    // replay to live happens under load: that is where a gap or a
    // duplicate would come from.
    let submitter = {
        let mut client: JobsClient<Channel> = daemon.client();
        tokio::spawn(async move {
            for _ in 0..200 {
                submit(&mut client, far_future_job()).await?;
            }
            anyhow::Ok(())
        })
    };
    let mut resumed = EventStream::after(&mut client, Some(middle), 0).await?;
    submitter.await??;
    let last = stats(&mut client).await?.last_event_seq;

    read_through(&mut all, last).await?;
    read_through(&mut resumed, last).await?;
    let expected: Vec<_> = all
        .seen()
        .iter()
        .filter(|e| e.seq > middle && e.seq <= last)
        .collect();
    let got: Vec<_> = resumed.seen().iter().filter(|e| e.seq <= last).collect();
    ensure!(
        got.len() == expected.len(),
        "resumed stream has {} events up to seq {last}, expected {}",
        got.len(),
        expected.len()
    );
    for (g, e) in got.iter().zip(&expected) {
        ensure!(
            g == e,
            "resumed stream gave {g:?} where the first gave {e:?}"
        );
    }
    ensure!(
        resumed.seen().len() == got.len(),
        "events past the last seq appeared: {:?}",
        &resumed.seen()[got.len()..]
    );

    // Both continue with the same live events.
    let job = submit(&mut client, far_future_job()).await?;
    let a = all.next().await?;
    let b = resumed.next().await?;
    ensure!(a == b, "live event differs between streams: {a:?} vs {b:?}");
    ensure!(
        a.job_id == job.id && a.state == JobState::Scheduled as i32 && a.seq > last,
        "unexpected live event {a:?}"
    );
    Ok(())
}

/// A stream filtered by job id sees only that job, with the same events as
/// the unfiltered stream.
#[tokio::test]
async fn events_filtered_by_job_see_only_that_job() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let start = stats(&mut client).await?.last_event_seq;
    let first = submit(&mut client, exec_spec(["true"])).await?;
    let second = submit(&mut client, exec_spec(["true"])).await?;
    let mut all = EventStream::after(&mut client, Some(start), 0).await?;
    all.wait_all_terminal(&[first.id, second.id]).await?;

    let mut only = EventStream::after(&mut client, Some(start), second.id).await?;
    only.wait_all_terminal(&[second.id]).await?;
    let expected: Vec<_> = all
        .seen()
        .iter()
        .filter(|e| e.job_id == second.id)
        .collect();
    let got: Vec<_> = only.seen().iter().collect();
    ensure!(
        got == expected,
        "filtered stream gave {got:?}, expected {expected:?}"
    );
    Ok(())
}

/// With a retention of 10 events, resuming from seq 1 after hundreds of
/// events is OUT_OF_RANGE, while resuming inside the window works.
#[tokio::test]
async fn resume_from_before_the_retention_window_is_out_of_range() -> Result<()> {
    let daemon = TestDaemon::builder()
        .config("event_retention = 10")
        .start()
        .await?;
    let mut client = daemon.client();
    client
        .submit_batch(SubmitBatchRequest {
            specs: (0..200).map(|_| far_future_job()).collect(),
        })
        .await?;
    for _ in 0..20 {
        submit(&mut client, far_future_job()).await?;
    }
    let last = stats(&mut client).await?.last_event_seq;
    ensure!(last >= 220, "220 jobs produced only {last} events");

    let status = expect_stream_code(
        client
            .events(EventsRequest {
                after_seq: Some(1),
                job_id: 0,
                progress: false,
                hosts: false,
                watches: false,
            })
            .await,
        Code::OutOfRange,
    )
    .await?;
    ensure!(
        !status.message().is_empty(),
        "OUT_OF_RANGE without a message"
    );

    // The window itself is still served, so the refusal above is about the
    // window and not a blanket failure.
    let mut recent = EventStream::after(&mut client, Some(last - 5), 0).await?;
    read_through(&mut recent, last).await?;
    let seqs: Vec<u64> = recent.seen().iter().map(|e| e.seq).collect();
    ensure!(
        seqs.windows(2).all(|w| w[0] < w[1])
            && seqs.first().is_some_and(|s| *s > last - 5)
            && seqs.last() == Some(&last),
        "resume inside the window gave seqs {seqs:?}, expected those after {} up to {last}",
        last - 5
    );
    Ok(())
}
