//! The scheduler's tests: a real store, real job threads, and jobs that run.

use std::collections::HashSet;
use std::time::Duration;

use super::core::STORE_FAILURE_PAUSE;
use super::handle::Submitted;
use super::*;
use crate::clock::Clock;
use crate::config::Config;
use crate::job::{Job, JobId, JobSpec, JobState, Micros, StateTag};
use crate::runner::Kinds;

fn job(state: JobState) -> Job {
    Job {
        state,
        ..Job::submitted(1, JobSpec::exec_for_tests(&["true"]), 0, 0)
    }
}

/// A handle, with the scheduler's ends of what it shares.
fn handle() -> (
    SchedulerHandle,
    mpsc::UnboundedReceiver<Msg>,
    Arc<Mutex<Submitted>>,
) {
    let (handle, rx) = SchedulerHandle::new(Admission::new(1).hosts().clone());
    let submitted = handle.submitted.clone();
    (handle, rx, submitted)
}

/// Where a job was started: the thread given its slot, the OS thread
/// that started it, and the one its task then ran on.
#[derive(Debug)]
pub(super) struct Placed {
    id: JobId,
    thread: usize,
    by: Option<String>,
    ran_on: Option<String>,
}

impl Placed {
    pub(super) fn new(id: JobId, thread: usize) -> Placed {
        Placed {
            id,
            thread,
            by: std::thread::current().name().map(str::to_owned),
            ran_on: None,
        }
    }

    pub(super) fn ran(placed: &Mutex<Vec<Placed>>, id: JobId) {
        let name = std::thread::current().name().map(str::to_owned);
        if let Some(p) = lock(placed).iter_mut().find(|p| p.id == id) {
            p.ran_on = name;
        }
    }
}

/// A scheduler over a real store in a temporary directory, with
/// `threads` job threads, as the daemon runs it.
struct Rig {
    _dir: tempfile::TempDir,
    store: crate::store::Store,
    core: Arc<Core>,
    stop: CancellationToken,
    done: oneshot::Receiver<()>,
}

impl Rig {
    /// Stores `jobs` copies of a `true` job, then starts the
    /// scheduler; `before` runs in between.
    fn start(
        concurrency: usize,
        threads: usize,
        jobs: usize,
        before: impl FnOnce(&crate::store::Store),
    ) -> (
        Rig,
        Vec<JobId>,
        tokio::sync::broadcast::Receiver<crate::job::Event>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            concurrency,
            ..Config::for_dir(dir.path())
        };
        let ctx = RunnerCtx::for_tests(dir.path(), config, Kinds::builtin(), Clock::System);
        let store = ctx.store.clone();
        let (scheduler, _handle) =
            Scheduler::new(ctx.clone(), Admission::new(concurrency), threads).unwrap();
        let core = scheduler.core.clone();
        let events = store.subscribe();
        let spec = job(JobState::Queued).spec;
        let ids = block_on(store.submit(vec![spec; jobs], 0, ctx.env.clock.now_micros()))
            .unwrap()
            .into_iter()
            .map(|s| s.job.id)
            .collect();
        before(&store);

        let stop = CancellationToken::new();
        let done = scheduler.spawn(stop.clone()).unwrap();
        let rig = Rig {
            _dir: dir,
            store,
            core,
            stop,
            done,
        };
        (rig, ids, events)
    }

    /// Stops the scheduler, and returns once it has stopped every job.
    fn stop(self) -> (crate::store::Store, Arc<Core>) {
        self.stop.cancel();
        self.done.blocking_recv().unwrap();
        (self.store, self.core)
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Reads events until each of `ids` has succeeded, failing the test
/// on a failed job or after `within`. Returns every event read.
fn wait_succeeded(
    events: &mut tokio::sync::broadcast::Receiver<crate::job::Event>,
    ids: &[JobId],
    within: Duration,
) -> Vec<crate::job::Event> {
    let mut left: HashSet<JobId> = ids.iter().copied().collect();
    let mut seen = Vec::new();
    block_on(async {
        let deadline = Instant::now() + within;
        while !left.is_empty() {
            let event = tokio::time::timeout_at(deadline, events.recv())
                .await
                .unwrap_or_else(|_| panic!("jobs {left:?} did not finish; saw {seen:#?}"))
                .expect("the store's events ended");
            assert_ne!(event.state, StateTag::Failed, "a job failed: {event:?}");
            if event.state == StateTag::Succeeded {
                left.remove(&event.job_id);
            }
            seen.push(event);
        }
    });
    seen
}

/// With two job threads, jobs run on both, each on the thread its slot
/// was given, and a thread whose job ended starts the next job itself,
/// in its own slot, without handing it to the scheduler's thread.
#[test]
fn a_job_that_ends_starts_the_next_on_its_own_thread() {
    const JOBS: usize = 40;
    let (rig, ids, mut events) = Rig::start(2, 2, JOBS, |_| {});
    wait_succeeded(&mut events, &ids, Duration::from_secs(60));
    let (store, core) = rig.stop();

    for &id in &ids {
        let job = stored(&store, id);
        assert_eq!(job.state.tag(), StateTag::Succeeded, "{job:?}");
    }
    let placed = lock(&core.placed);
    assert_eq!(placed.len(), JOBS, "{placed:#?}");
    for p in placed.iter() {
        let slot = format!("quern-jobs-{}", p.thread);
        assert_eq!(p.ran_on.as_deref(), Some(slot.as_str()), "{p:?}");
    }
    // Only a job's own task starts jobs on the second thread, so each
    // start from there must have stayed there.
    let by_second: Vec<_> = placed
        .iter()
        .filter(|p| p.by.as_deref() == Some("quern-jobs-1"))
        .collect();
    for p in &by_second {
        assert_eq!(p.thread, 1, "a job thread handed its next job away: {p:?}");
    }
    assert!(
        by_second.len() >= JOBS / 4,
        "the second thread started only {} of {JOBS} jobs itself: {placed:#?}",
        by_second.len()
    );
}

/// When the store cannot record a job, no job starts for
/// [`STORE_FAILURE_PAUSE`], and starts resume on their own after it,
/// with nothing else happening to wake the scheduler.
#[test]
fn a_store_failure_pauses_job_starts_until_the_pause_ends() {
    // One slot. The first write once the scheduler runs is the first
    // job's "running" mark, and it fails: that job stays queued, to be
    // started again. The second job took the slot when the first one's
    // process ended, before the failure was seen, and the third may
    // have too, depending on how quickly the failure comes back; but
    // the first job's second try can only come after the pause.
    let (rig, ids, mut events) = Rig::start(1, 1, 3, |store| store.fail_next_commits(1));
    let seen = wait_succeeded(&mut events, &ids, Duration::from_secs(30));
    rig.stop();

    let starts: Vec<(JobId, Micros)> = seen
        .iter()
        .filter(|e| e.state == StateTag::Running)
        .map(|e| (e.job_id, e.at))
        .collect();
    let retried: Vec<Micros> = starts
        .iter()
        .filter(|(id, _)| *id == ids[0])
        .map(|&(_, at)| at)
        .collect();
    assert_eq!(
        retried.len(),
        1,
        "the first job's failed start was recorded: {seen:#?}"
    );
    let before: Vec<Micros> = starts
        .iter()
        .filter(|&&(id, at)| id != ids[0] && at < retried[0])
        .map(|&(_, at)| at)
        .collect();
    assert!(
        !before.is_empty(),
        "the second job did not start first: {seen:#?}"
    );
    // Jobs that started before the failure was seen did so at most
    // moments before it; allow that, and the two clocks (wall for
    // events, monotonic for the pause), 100 ms.
    let pause = STORE_FAILURE_PAUSE.as_micros() as u64 - 100_000;
    for at in before {
        assert!(
            retried[0] >= at + pause,
            "the first job started again {} µs after another job, within the pause: {seen:#?}",
            retried[0] - at
        );
    }
}

fn stored(store: &crate::store::Store, id: JobId) -> Job {
    block_on(store.get(id)).unwrap()
}

/// However many Submits come before the scheduler looks, it gets one
/// wake-up, and sees all of them: ready jobs, and the earliest due.
#[test]
fn submissions_merge_into_one_wake_until_the_scheduler_looks() {
    let (handle, mut rx, submitted) = handle();
    handle.submitted([&job(JobState::Scheduled { run_at: 50 })]);
    handle.submitted([&job(JobState::Queued)]);
    handle.submitted([&job(JobState::Scheduled { run_at: 20 })]);
    // Finished jobs (an idempotent resubmit) need no wake-up at all.
    handle.submitted([&job(JobState::Succeeded { finished_at: 1 })]);
    assert!(matches!(rx.try_recv(), Ok(Msg::Wake)));
    assert!(rx.try_recv().is_err(), "more than one wake-up was sent");

    // What the scheduler does on the wake-up.
    assert_eq!(take_submitted(&submitted), (true, false, Some(20)));

    // Once it has looked, the next Submit wakes it again.
    handle.submitted([&job(JobState::Scheduled { run_at: 70 })]);
    assert!(matches!(rx.try_recv(), Ok(Msg::Wake)));
    assert_eq!(take_submitted(&submitted), (false, false, Some(70)));
}

/// A job due no earlier than the scheduler's own timer needs no
/// wake-up; an earlier one, a ready one, or any while the scheduler
/// rereads the due jobs (no timer published) does.
#[test]
fn jobs_due_after_the_schedulers_timer_do_not_wake_it() {
    let (handle, mut rx, submitted) = handle();
    let mut woken = |handle: &SchedulerHandle, job: Job| {
        handle.submitted([&job]);
        let woke = rx.try_recv().is_ok();
        // The scheduler looks; its published timer stays.
        take_submitted(&submitted);
        woke
    };
    assert!(woken(&handle, job(JobState::Scheduled { run_at: 80 })));
    lock(&submitted).timer = Some(60);
    assert!(!woken(&handle, job(JobState::Scheduled { run_at: 60 })));
    assert!(!woken(&handle, job(JobState::Scheduled { run_at: 80 })));
    assert!(woken(&handle, job(JobState::Scheduled { run_at: 59 })));
    assert!(woken(&handle, job(JobState::Queued)));
    lock(&submitted).timer = None;
    assert!(woken(&handle, job(JobState::Scheduled { run_at: 80 })));
}

/// A scheduler whose jobs all run as `kinds`, on the test's own runtime,
/// and the jobs service over it: under `tokio::time::pause()`, the clock
/// of everything but the store's writer is the test's.
struct Here {
    _dir: tempfile::TempDir,
    ctx: Arc<RunnerCtx>,
    jobs: crate::jobs::Jobs,
    core: Arc<Core>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Here {
    fn start(concurrency: usize, kinds: Kinds, config: impl FnOnce(&mut Config)) -> Here {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config {
            concurrency,
            ..Config::for_dir(dir.path())
        };
        config(&mut c);
        let clock = Clock::tokio();
        let admission = Admission::with_fetch(concurrency, c.fetch.clone(), clock);
        let mut ctx = RunnerCtx::for_tests(dir.path(), c, kinds, clock);
        // Fetch attempts report to the policy the scheduler admits by.
        Arc::get_mut(&mut Arc::get_mut(&mut ctx).expect("a fresh context").env)
            .expect("a fresh env")
            .hosts = admission.hosts().clone();
        let (scheduler, handle) = Scheduler::here(ctx.clone(), admission);
        let core = scheduler.core.clone();
        let jobs = crate::jobs::Jobs::new(ctx.store.clone(), handle, ctx.progress.clone(), clock);
        let stop = CancellationToken::new();
        let done = tokio::spawn(scheduler.run(stop.clone()));
        Here {
            _dir: dir,
            ctx,
            jobs,
            core,
            stop,
            done,
        }
    }

    async fn submit(&self, spec: JobSpec) -> Job {
        self.jobs.submit(spec, 0).await.unwrap().job
    }

    /// Waits, on `events`, for job `id` to enter `state`.
    async fn wait(
        events: &mut tokio::sync::broadcast::Receiver<crate::job::Event>,
        id: JobId,
        state: StateTag,
    ) -> crate::job::Event {
        loop {
            let ev = events.recv().await.expect("the store's events ended");
            if ev.job_id == id && ev.state == state {
                return ev;
            }
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.done.await.unwrap();
    }
}

/// When each attempt started, by the kind's own reading of the clock.
type Starts = Arc<Mutex<Vec<(JobId, u32, Micros)>>>;

/// A kind that notes when each attempt starts, and fails every attempt
/// before attempt `succeed_at`.
fn noting(starts: &Starts, succeed_at: u32) -> Kinds {
    let starts = starts.clone();
    crate::runner::testing::scripted(move |ctx| {
        let starts = starts.clone();
        Box::pin(async move {
            let now = ctx.env.clock.now_micros();
            lock(&starts).push((ctx.job, ctx.attempt, now));
            if ctx.attempt < succeed_at {
                crate::runner::Ended::Failed {
                    exit_code: None,
                    error: "not yet".into(),
                    retry: true,
                }
            } else {
                crate::runner::Ended::Succeeded {
                    exit_code: None,
                    result: None,
                }
            }
        })
    })
}

/// A job delayed by an hour is scheduled until a microsecond before its
/// run_at, and starts at run_at exactly: the test runs on a paused clock,
/// so nothing depends on how fast the machine is.
#[tokio::test(start_paused = true)]
async fn a_delayed_job_starts_at_its_run_at_and_not_a_moment_before() {
    let starts = Starts::default();
    let here = Here::start(1, noting(&starts, 1), |_| {});
    let clock = here.ctx.env.clock;
    let mut events = here.jobs.subscribe();
    let run_at = clock.now_micros() + 3_600_000_000;
    let mut spec = job(JobState::Queued).spec;
    spec.run_at = Some(run_at);
    let submitted = here.submit(spec).await;
    assert_eq!(submitted.state, JobState::Scheduled { run_at });

    tokio::time::sleep_until(clock.instant_at(run_at - 1)).await;
    let waiting = here.jobs.get(submitted.id).await.unwrap();
    assert_eq!(waiting.state, JobState::Scheduled { run_at }, "{waiting:?}");
    assert!(
        lock(&starts).is_empty(),
        "it started early: {:?}",
        lock(&starts)
    );

    Here::wait(&mut events, submitted.id, StateTag::Succeeded).await;
    assert_eq!(*lock(&starts), [(submitted.id, 1, run_at)]);
    here.stop().await;
}

/// A failing job is retried after the configured backoff, growing from
/// one retry to the next, with the jitter within its bounds: the first
/// wait is 300 to 400 ms of a 400 ms base, the second 600 to 800 ms.
#[tokio::test(start_paused = true)]
async fn retries_wait_the_backoff_and_it_grows() {
    let starts = Starts::default();
    let here = Here::start(1, noting(&starts, 3), |c| {
        c.retry_base_delay = Duration::from_millis(400);
        c.retry_max_delay = Duration::from_secs(60);
    });
    let mut events = here.jobs.subscribe();
    let mut spec = job(JobState::Queued).spec;
    spec.max_attempts = 3;
    let id = here.submit(spec).await.id;
    Here::wait(&mut events, id, StateTag::Succeeded).await;

    let at: Vec<Micros> = lock(&starts).iter().map(|s| s.2).collect();
    assert_eq!(at.len(), 3, "{:?}", lock(&starts));
    let (gap1, gap2) = (at[1] - at[0], at[2] - at[1]);
    assert!(
        (300_000..=400_000).contains(&gap1),
        "first retry after {gap1} µs"
    );
    assert!(
        (600_000..=800_000).contains(&gap2),
        "second retry after {gap2} µs"
    );
    here.stop().await;
}

/// A kind whose attempts hold their slot until cancelled.
fn holding() -> Kinds {
    crate::runner::testing::scripted(|ctx| {
        Box::pin(async move {
            ctx.cancel.cancelled().await;
            crate::runner::Ended::Succeeded {
                exit_code: None,
                result: None,
            }
        })
    })
}

/// With its one slot taken, a daemon holding 100,000 queued jobs reads
/// none of them however often it dispatches: a dispatch costs what is
/// running, not what is queued. Once the slot frees, it reads one job.
#[tokio::test]
async fn a_full_limit_holds_a_long_queue_without_reading_it() {
    const QUEUED: usize = 100_000;
    let here = Here::start(1, holding(), |_| {});
    let mut events = here.jobs.subscribe();
    let first = here.submit(job(JobState::Queued).spec).await;
    Here::wait(&mut events, first.id, StateTag::Running).await;
    let reads = || {
        here.core
            .ready_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(reads(), 1);

    for _ in 0..QUEUED / 10_000 {
        let batch = vec![job(JobState::Queued).spec; 10_000];
        here.jobs.submit_batch(batch, 0).await.unwrap();
    }
    // Each of these wakes the scheduler, which dispatches.
    for _ in 0..100 {
        here.submit(job(JobState::Queued).spec).await;
    }
    // Two calls in turn: the second is answered only after the scheduler
    // has dispatched once more since every wake-up above.
    for _ in 0..2 {
        let unknown = here.jobs.cancel(u64::MAX, Duration::ZERO).await;
        assert!(unknown.is_err());
    }
    let queued = here.jobs.counters().await.unwrap().count(StateTag::Queued);
    assert_eq!(queued, QUEUED as u64 + 100);
    assert_eq!(reads(), 1, "a full limit read queued jobs");

    // Subscribed anew: the queue's 100,000 events overran the first.
    let mut events = here.jobs.subscribe();
    here.jobs.cancel(first.id, Duration::ZERO).await.unwrap();
    let next = first.id + 1;
    Here::wait(&mut events, next, StateTag::Running).await;
    assert_eq!(
        reads(),
        2,
        "a freed slot read more than the one job it takes"
    );
    here.stop().await;
}

/// While an in-process job's CPU-heavy work occupies the pool, another
/// job still starts, and a Cancel is still answered: the work runs on the
/// pool's thread, never on the job thread (here, the test's only one).
#[tokio::test]
async fn a_long_analysis_delays_neither_a_start_nor_a_cancel() {
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let kinds = crate::runner::testing::scripted(move |ctx| {
        let release = release_rx.clone();
        Box::pin(async move {
            if ctx.job == 1 {
                // The analysis: blocks its pool thread until released.
                ctx.env
                    .cpu
                    .run(move || lock(&release).recv().unwrap())
                    .await
                    .unwrap();
            } else {
                ctx.cancel.cancelled().await;
            }
            crate::runner::Ended::Succeeded {
                exit_code: None,
                result: None,
            }
        })
    });
    let here = Here::start(2, kinds, |_| {});
    let mut events = here.jobs.subscribe();
    let analysis = here.submit(job(JobState::Queued).spec).await;
    assert_eq!(analysis.id, 1);
    Here::wait(&mut events, 1, StateTag::Running).await;

    let other = here.submit(job(JobState::Queued).spec).await;
    Here::wait(&mut events, other.id, StateTag::Running).await;
    let cancelled = here.jobs.cancel(other.id, Duration::from_secs(30)).await;
    assert_eq!(cancelled.unwrap().state.tag(), StateTag::Cancelled);

    let still = here.jobs.get(1).await.unwrap();
    assert_eq!(still.state.tag(), StateTag::Running, "{still:?}");
    release_tx.send(()).unwrap();
    Here::wait(&mut events, 1, StateTag::Succeeded).await;
    here.stop().await;
}

/// A panic in the runner's own code around a job (here, in a test kind's
/// `start` and `stop`) fails that job with an internal error, gives its
/// slot to the next job, and answers a Cancel that was waiting on it.
#[tokio::test]
async fn a_job_whose_task_panics_fails_frees_its_slot_and_answers_its_cancel() {
    // Without the fix, the slot leaks and the waits below never end.
    let run = async {
        use crate::runner::testing::{PanicAt, panicking};
        for at in [PanicAt::Start, PanicAt::Stop] {
            let here = Here::start(1, panicking(at), |_| {});
            let mut events = here.jobs.subscribe();
            let first = here.submit(job(JobState::Queued).spec).await;
            if at == PanicAt::Stop {
                Here::wait(&mut events, first.id, StateTag::Running).await;
                let answer = tokio::time::timeout(
                    Duration::from_secs(60),
                    here.jobs.cancel(first.id, Duration::ZERO),
                )
                .await
                .expect("the Cancel of a job whose stop panicked was answered");
                // Its answer is the job as the panic left it: failed, so the
                // Cancel stopped nothing.
                let err = answer.unwrap_err().to_string();
                assert!(err.contains("failed"), "{err}");
            }
            let ended = Here::wait(&mut events, first.id, StateTag::Failed).await;
            let want = match at {
                PanicAt::Start => "internal error: boom at start; this is a bug in quernd",
                PanicAt::Stop => "internal error: boom on stop; this is a bug in quernd",
            };
            assert!(ended.error.starts_with(want), "{at:?}: {}", ended.error);
            assert_eq!(here.jobs.get(first.id).await.unwrap().attempts, 1);
            // The one slot is free again: the next job gets it.
            let second = here.submit(job(JobState::Queued).spec).await;
            let next = match at {
                PanicAt::Start => StateTag::Failed,
                PanicAt::Stop => StateTag::Running,
            };
            Here::wait(&mut events, second.id, next).await;
            here.stop().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("every job ended, and the Cancel was answered");
}

/// A failed read of the ready index is retried on its own, with a growing
/// pause: the queued job runs without anything else waking the scheduler.
#[tokio::test]
async fn a_failed_read_of_the_ready_index_is_retried() {
    let here = Here::start(1, holding(), |_| {});
    let mut events = here.jobs.subscribe();
    here.ctx.store.fail_next_ready_reads(3);
    let queued = here.submit(job(JobState::Queued).spec).await;
    tokio::time::timeout(
        Duration::from_secs(60),
        Here::wait(&mut events, queued.id, StateTag::Running),
    )
    .await
    .expect("the job started once the reads succeeded again");
    // All three failures were met on the way.
    assert_eq!(
        here.ctx.store.ready_reads_to_fail(),
        0,
        "the job ran without the reads failing"
    );
    here.stop().await;
}

mod fetch_lane;
