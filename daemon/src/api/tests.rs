//! The service's tests, in process: the handlers over a real store.

use tokio_stream::StreamExt;

use super::*;
use crate::admission::Admission;
use crate::clock::Clock;
use crate::job::Progress;
use crate::runner::{Kinds, RunnerCtx};
use crate::scheduler::Scheduler;

struct Rig {
    _dir: tempfile::TempDir,
    ctx: Arc<crate::runner::RunnerCtx>,
    service: JobsService,
    shutdown: CancellationToken,
}

/// The service over a real store, and a scheduler that never runs: these
/// tests only look at what the service sends.
fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_dir(dir.path());
    let ctx = RunnerCtx::for_tests(dir.path(), config.clone(), Kinds::builtin(), Clock::System);
    let (_scheduler, handle) = Scheduler::here(ctx.clone(), Admission::new(1));
    let jobs = Jobs::new(
        ctx.store.clone(),
        handle,
        ctx.progress.clone(),
        ctx.env.clock,
    );
    let retention = Arc::new(crate::retention::Retention::new(
        ctx.store.clone(),
        ctx.logs.clone(),
        config.retention,
        ctx.env.clock,
        &config.state_dir,
    ));
    let shutdown = CancellationToken::new();
    let service = JobsService::new(
        jobs,
        ctx.logs.clone(),
        retention,
        Arc::new(config),
        shutdown.clone(),
    );
    Rig {
        _dir: dir,
        ctx,
        service,
        shutdown,
    }
}

async fn events(rig: &Rig, progress: bool) -> BoxStream<pb::EventsResponse> {
    let req = pb::EventsRequest {
        after_seq: None,
        job_id: 0,
        progress,
        hosts: false,
        watches: false,
    };
    rig.service
        .events(Request::new(req))
        .await
        .unwrap()
        .into_inner()
}

/// Submits a `true` job through the service.
async fn submit(rig: &Rig) -> pb::Job {
    let req = pb::SubmitRequest {
        spec: Some(pb::JobSpec {
            kind: Some(pb::job_spec::Kind::Exec(pb::ExecSpec {
                argv: vec!["true".into()],
                ..Default::default()
            })),
            ..Default::default()
        }),
    };
    let resp = rig.service.submit(Request::new(req)).await.unwrap();
    resp.into_inner().job.unwrap()
}

/// A stream that asks for progress gets each update, with seq 0, in
/// between the state changes; one that does not ask gets none. Get shows
/// a running job's latest progress.
#[tokio::test]
async fn progress_reaches_the_streams_that_ask_and_get() {
    let rig = rig();
    let mut with = events(&rig, true).await;
    let mut without = events(&rig, false).await;

    let job = submit(&rig).await;
    let report = Progress {
        phase: "download".into(),
        done: 512,
        total: 1024,
        unit: "bytes".into(),
        rate: 0,
    };
    rig.ctx.progress.sink(job.id).report(report);
    // A second job's submit, after the progress: what the stream without
    // progress gets next, if it got no progress.
    let second = submit(&rig).await;

    // Progress and state changes come from two feeds, so their order
    // between each other is not given; the state changes keep theirs.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(with.next().await.unwrap().unwrap());
    }
    let (updates, changes): (Vec<_>, Vec<_>) = got.into_iter().partition(|e| e.seq == 0);
    let changed: Vec<u64> = changes.iter().map(|e| e.job_id).collect();
    assert_eq!(changed, [job.id, second.id]);
    assert!(changes.iter().all(|e| e.progress.is_none()));
    let [update] = &updates[..] else {
        panic!("{updates:?}");
    };
    assert_eq!(update.job_id, job.id);
    assert_eq!(update.state, pb::JobState::Running as i32);
    let p = update.progress.as_ref().unwrap();
    assert_eq!(
        (p.phase.as_str(), p.done, p.total, p.unit.as_str()),
        ("download", 512, 1024, "bytes")
    );

    for want in [job.id, second.id] {
        let ev = without.next().await.unwrap().unwrap();
        assert_eq!((ev.job_id, ev.progress), (want, None));
    }

    // Get shows the progress of a running job; the scheduler of this rig
    // never runs, so the test marks the job running as the runner would.
    let get = |id| {
        let req = Request::new(pb::GetRequest { id });
        async {
            rig.service
                .get(req)
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap()
        }
    };
    let queued = get(job.id).await;
    assert_eq!(
        queued.progress, None,
        "a job that is not running has progress"
    );
    let run = crate::job::RunRecord::InProcess;
    rig.ctx.store.mark_running(job.id, 1, run, 2).await.unwrap();
    let running = get(job.id).await;
    assert_eq!(running.progress.map(|p| p.done), Some(512));
    assert_eq!(running.owner_uid, nix::unistd::getuid().as_raw());
}

/// Gives job `id` a live log whose stdout is `data`, written to the end.
async fn output(rig: &Rig, id: u64, data: &[u8]) -> Arc<crate::logs::LiveLog> {
    use std::io::Write as _;
    let live = rig.ctx.logs.start(id);
    let (r, w): (std::os::fd::OwnedFd, std::os::fd::OwnedFd) = nix::unistd::pipe().unwrap();
    let pump = tokio::spawn(live.clone().pump(crate::logs::Stream::Stdout, r));
    let data = data.to_vec();
    tokio::task::spawn_blocking(move || std::fs::File::from(w).write_all(&data).unwrap())
        .await
        .unwrap();
    pump.await.unwrap();
    live
}

async fn logs(rig: &Rig, req: pb::LogsRequest) -> Vec<Result<pb::LogsResponse, Status>> {
    let stream = rig
        .service
        .logs(Request::new(req))
        .await
        .unwrap()
        .into_inner();
    stream.collect().await
}

/// A failed read of output ends the stream with an error, followed or
/// not: a clean end would claim the output was complete.
#[tokio::test]
async fn a_failed_read_ends_logs_with_an_error() {
    let rig = rig();
    let job = submit(&rig).await;
    output(&rig, job.id, b"some output\n").await;
    rig.ctx.logs.fail_reads();
    for follow in [true, false] {
        let got = logs(
            &rig,
            pb::LogsRequest {
                job_id: job.id,
                follow,
                ..Default::default()
            },
        )
        .await;
        let last = got.last().expect("the stream sent nothing");
        let err = last.as_ref().expect_err("the stream ended cleanly");
        assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
        assert!(err.message().contains("incomplete"), "{err:?}");
    }
}

/// A followed stream cut by shutdown says so rather than ending cleanly.
#[tokio::test]
async fn shutdown_ends_a_followed_stream_with_unavailable() {
    let rig = rig();
    let job = submit(&rig).await;
    // Live, with nothing written yet: the follower waits.
    let _live = rig.ctx.logs.start(job.id);
    let mut stream = rig
        .service
        .logs(Request::new(pb::LogsRequest {
            job_id: job.id,
            follow: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    rig.shutdown.cancel();
    let err = stream.next().await.unwrap().expect_err("a clean message");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(stream.next().await.is_none());
}

/// Without follow, a response holds at most `limit` bytes of a stream,
/// its last message says where the next page starts, and the pages add
/// up to the output.
#[tokio::test]
async fn logs_come_in_pages() {
    let rig = rig();
    let job = submit(&rig).await;
    let data: Vec<u8> = (0..10_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    output(&rig, job.id, &data).await;
    let mut got = Vec::new();
    let mut offset = None;
    let mut pages = 0;
    loop {
        let msgs = logs(
            &rig,
            pb::LogsRequest {
                job_id: job.id,
                stream: pb::LogStream::Stdout as i32,
                offset,
                limit: 10_000,
                ..Default::default()
            },
        )
        .await;
        pages += 1;
        let mut next = None;
        let mut len = 0;
        for m in msgs {
            let m = m.unwrap();
            assert_eq!(m.offset, got.len() as u64);
            len += m.data.len();
            got.extend(m.data);
            next = m.next_offset;
        }
        assert!(len <= 10_000, "a page of {len} bytes");
        match next {
            Some(n) => offset = Some(n),
            None => break,
        }
    }
    assert_eq!(got, data);
    assert_eq!(pages, data.len().div_ceil(10_000));
}

/// Paging fields that cannot mean anything are refused, naming the field.
#[tokio::test]
async fn paging_fields_are_checked() {
    let rig = rig();
    let job = submit(&rig).await;
    for (req, field) in [
        (
            pb::LogsRequest {
                job_id: job.id,
                follow: true,
                offset: Some(0),
                stream: pb::LogStream::Stdout as i32,
                ..Default::default()
            },
            "offset",
        ),
        (
            pb::LogsRequest {
                job_id: job.id,
                follow: true,
                limit: 10,
                ..Default::default()
            },
            "limit",
        ),
        (
            pb::LogsRequest {
                job_id: job.id,
                offset: Some(0),
                ..Default::default()
            },
            "offset",
        ),
    ] {
        let Err(err) = rig.service.logs(Request::new(req)).await else {
            panic!("accepted a request with a bad {field}");
        };
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{err:?}");
    }
}

#[tokio::test]
async fn host_changes_cannot_be_asked_for_one_job() {
    let rig = rig();
    let req = pb::EventsRequest {
        after_seq: None,
        job_id: 1,
        progress: false,
        hosts: true,
        watches: false,
    };
    let Err(err) = rig.service.events(Request::new(req)).await else {
        panic!("accepted hosts with a job_id");
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("hosts"), "{err:?}");
    assert!(err.message().contains("no job_id"), "{err:?}");
}
