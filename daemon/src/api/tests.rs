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
    ));
    let service = JobsService::new(
        jobs,
        ctx.logs.clone(),
        retention,
        Arc::new(config),
        CancellationToken::new(),
    );
    Rig {
        _dir: dir,
        ctx,
        service,
    }
}

async fn events(rig: &Rig, progress: bool) -> BoxStream<pb::EventsResponse> {
    let req = pb::EventsRequest {
        after_seq: None,
        job_id: 0,
        progress,
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
