//! The runner's tests, with kinds of their own that run in quernd: what
//! every kind gets (progress, checkpoint, cancellation, the CPU pool), and
//! what the runner does with any kind (timeouts, stops, retries).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::testing::scripted;
use super::*;
use crate::clock::Clock;
use crate::job::{JobState, Progress, StateTag};

struct Rig {
    _dir: tempfile::TempDir,
    ctx: Arc<RunnerCtx>,
}

impl Rig {
    fn new(kinds: Kinds, clock: Clock) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            default_grace: Duration::from_secs(10),
            ..Config::for_dir(dir.path())
        };
        let ctx = RunnerCtx::for_tests(dir.path(), config, kinds, clock);
        Rig { _dir: dir, ctx }
    }

    /// Stores a job that may run `attempts` times, with `timeout`.
    async fn job(&self, attempts: u32, timeout: Option<Duration>) -> Job {
        let spec = JobSpec {
            timeout,
            max_attempts: attempts,
            ..JobSpec::exec_for_tests(&["unused"])
        };
        let now = self.ctx.env.clock.now_micros();
        let mut subs = self.ctx.store.submit(vec![spec], 1000, now).await.unwrap();
        subs.pop().unwrap().job
    }

    /// Runs the job's next attempt to the end, with `stop` as the stop
    /// channel.
    async fn run(&self, job: Job, stop: oneshot::Receiver<Stop>) -> Job {
        let released = AtomicBool::new(false);
        let job = run_attempt(self.ctx.clone(), job, stop, || {
            released.store(true, Ordering::Relaxed)
        })
        .await
        .unwrap();
        assert!(
            released.load(Ordering::Relaxed),
            "the slot was never released"
        );
        job
    }
}

fn never_stopped() -> oneshot::Receiver<Stop> {
    let (tx, rx) = oneshot::channel();
    // Kept open: a dropped sender means shutdown.
    std::mem::forget(tx);
    rx
}

fn progress(done: u64) -> Progress {
    Progress {
        phase: "walk".into(),
        done,
        total: 10,
        unit: "commits".into(),
        rate: 0,
    }
}

/// An attempt reports progress that Get can read while it runs, saves a
/// checkpoint, and fails; the retry is handed the checkpoint and succeeds;
/// once the job has finished, its checkpoint and progress are gone.
#[tokio::test]
async fn a_checkpoint_reaches_the_next_attempt_and_progress_is_live() {
    let seen: Arc<Mutex<Vec<Option<Vec<u8>>>>> = Arc::default();
    let (go_tx, go_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let go_rx = Arc::new(tokio::sync::Mutex::new(go_rx));
    let (at_tx, mut at_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let kinds = {
        let seen = seen.clone();
        scripted(move |ctx| {
            let seen = seen.clone();
            let go = go_rx.clone();
            let at = at_tx.clone();
            Box::pin(async move {
                let saved = ctx.checkpoint.load().await.unwrap();
                seen.lock().unwrap().push(saved.clone());
                ctx.progress.report(progress(ctx.attempt as u64));
                // Hold here until the test has looked at the progress.
                at.send(ctx.attempt).unwrap();
                go.lock().await.recv().await;
                if saved.is_none() {
                    ctx.checkpoint.save(b"half way".to_vec()).await.unwrap();
                    Ended::Failed {
                        exit_code: None,
                        error: "network went away".into(),
                        retry: true,
                    }
                } else {
                    Ended::Succeeded {
                        exit_code: None,
                        result: None,
                    }
                }
            })
        })
    };
    let rig = Rig::new(kinds, Clock::System);
    let job = rig.job(2, None).await;
    let id = job.id;

    let first = tokio::spawn({
        let rig_ctx = rig.ctx.clone();
        async move {
            let stop = never_stopped();
            run_attempt(rig_ctx, job, stop, || {}).await.unwrap()
        }
    });
    assert_eq!(at_rx.recv().await, Some(1));
    assert_eq!(rig.ctx.progress.get(id), Some(progress(1)));
    go_tx.send(()).unwrap();
    let after_first = first.await.unwrap();
    assert!(
        matches!(after_first.state, JobState::Scheduled { .. }),
        "{after_first:?}"
    );
    assert_eq!(after_first.error, "network went away");
    assert_eq!(
        rig.ctx.progress.get(id),
        None,
        "progress outlived its attempt"
    );
    assert_eq!(
        rig.ctx.store.checkpoint(id).await.unwrap().as_deref(),
        Some(&b"half way"[..])
    );

    // The store would promote it when due; the test does it at once.
    let queued = rig.ctx.store.promote_due(u64::MAX).await.unwrap();
    assert_eq!(queued, None);
    let job = rig.ctx.store.get(id).await.unwrap();
    go_tx.send(()).unwrap();
    let done = rig.run(job, never_stopped()).await;
    assert_eq!(at_rx.recv().await, Some(2));
    assert_eq!(done.state.tag(), StateTag::Succeeded, "{done:?}");
    assert_eq!(done.attempts, 2);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![None, Some(b"half way".to_vec())]
    );
    assert_eq!(rig.ctx.store.checkpoint(id).await.unwrap(), None);
}

/// A kind may say a failure would only repeat: the job fails at once,
/// attempts left or not.
#[tokio::test]
async fn a_failure_the_kind_calls_final_is_not_retried() {
    let kinds = scripted(|_ctx| {
        Box::pin(async {
            Ended::Failed {
                exit_code: None,
                error: "checksum mismatch".into(),
                retry: false,
            }
        })
    });
    let rig = Rig::new(kinds, Clock::System);
    let job = rig.job(5, None).await;
    let done = rig.run(job, never_stopped()).await;
    assert_eq!(done.state.tag(), StateTag::Failed, "{done:?}");
    assert_eq!(
        (done.attempts, done.error.as_str()),
        (1, "checksum mismatch")
    );
}

/// The longest retry delays a config can give (humantime reads up to
/// u64::MAX seconds) schedule the retry at the end of time: they neither
/// panic nor wrap around to a retry at once.
#[tokio::test]
async fn the_longest_retry_delay_schedules_the_retry_at_the_end_of_time() {
    let kinds = scripted(|_ctx| {
        Box::pin(async {
            Ended::Failed {
                exit_code: None,
                error: "try again".into(),
                retry: true,
            }
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        retry_base_delay: Duration::MAX,
        retry_max_delay: Duration::MAX,
        ..Config::for_dir(dir.path())
    };
    let rig = Rig {
        ctx: RunnerCtx::for_tests(dir.path(), config, kinds, Clock::System),
        _dir: dir,
    };
    let job = rig.job(2, None).await;
    let done = rig.run(job, never_stopped()).await;
    assert_eq!(
        done.state,
        JobState::Scheduled { run_at: u64::MAX },
        "{done:?}"
    );
}

/// A checkpoint over the limit is refused and saves nothing.
#[tokio::test]
async fn a_checkpoint_over_the_limit_is_refused() {
    let kinds = scripted(|ctx| {
        Box::pin(async move {
            let big = vec![0u8; CHECKPOINT_MAX_BYTES + 1];
            match ctx.checkpoint.save(big).await {
                Err(e) => Ended::Failed {
                    exit_code: None,
                    error: e.to_string(),
                    retry: false,
                },
                Ok(()) => Ended::Succeeded {
                    exit_code: None,
                    result: None,
                },
            }
        })
    });
    let rig = Rig::new(kinds, Clock::System);
    let job = rig.job(1, None).await;
    let id = job.id;
    let done = rig.run(job, never_stopped()).await;
    assert!(done.error.contains("checkpoint is 65537 bytes"), "{done:?}");
    assert_eq!(rig.ctx.store.checkpoint(id).await.unwrap(), None);
}

/// A Cancel reaches an in-process attempt through its token, and the job
/// ends cancelled as soon as the work has noticed, grace or not.
#[tokio::test(start_paused = true)]
async fn a_cancel_stops_an_in_process_attempt_through_its_token() {
    let noticed = Arc::new(AtomicBool::new(false));
    let kinds = {
        let noticed = noticed.clone();
        scripted(move |ctx| {
            let noticed = noticed.clone();
            Box::pin(async move {
                ctx.cancel.cancelled().await;
                noticed.store(true, Ordering::Relaxed);
                Ended::Succeeded {
                    exit_code: None,
                    result: None,
                }
            })
        })
    };
    let rig = Rig::new(kinds, Clock::tokio());
    let job = rig.job(3, None).await;
    let (stop_tx, stop_rx) = oneshot::channel();
    let run = tokio::spawn({
        let ctx = rig.ctx.clone();
        async move { run_attempt(ctx, job, stop_rx, || {}).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = tokio::time::Instant::now();
    stop_tx
        .send(Stop::Cancel {
            grace: Duration::from_secs(30),
        })
        .unwrap();
    let done = run.await.unwrap();
    assert_eq!(done.state.tag(), StateTag::Cancelled, "{done:?}");
    assert!(
        noticed.load(Ordering::Relaxed),
        "the work never saw its token fire"
    );
    assert_eq!(
        before.elapsed(),
        Duration::ZERO,
        "the stop waited out the grace period"
    );
}

/// A kind that ignores its token is aborted when the grace period ends:
/// a timeout of 1 s and a grace of 10 s end the job at 11 s exactly, as
/// the clock the test controls reads it.
#[tokio::test(start_paused = true)]
async fn a_timeout_aborts_work_that_ignores_its_token_after_the_grace() {
    let dropped = Arc::new(AtomicBool::new(false));
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let kinds = {
        let dropped = dropped.clone();
        scripted(move |_ctx| {
            let flag = Flag(dropped.clone());
            Box::pin(async move {
                let _flag = flag;
                std::future::pending::<()>().await;
                Ended::Succeeded {
                    exit_code: None,
                    result: None,
                }
            })
        })
    };
    let clock = Clock::tokio();
    let rig = Rig::new(kinds, clock);
    let job = rig.job(1, Some(Duration::from_secs(1))).await;
    let start = clock.now_micros();
    let done = rig.run(job, never_stopped()).await;
    assert_eq!(done.state.tag(), StateTag::Failed, "{done:?}");
    assert_eq!(done.error, "timed out after 1s");
    assert_eq!(done.finished_at().unwrap() - start, 11_000_000);
    assert!(dropped.load(Ordering::Relaxed), "the work was not aborted");
}

/// CPU-heavy work runs on the pool, at most one piece per pool thread,
/// and the job thread stays free meanwhile: here, while both pieces of
/// the first job wait on the pool's only thread, a second job runs to
/// the end on the same single-threaded runtime.
#[tokio::test]
async fn cpu_work_runs_on_the_bounded_pool_and_leaves_the_job_thread_free() {
    let release = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let busy = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let kinds = {
        let (release, busy, most) = (release.clone(), busy.clone(), most.clone());
        scripted(move |ctx| {
            let (release, busy, most) = (release.clone(), busy.clone(), most.clone());
            Box::pin(async move {
                if ctx.attempt > 1 || ctx.job % 2 == 0 {
                    // The second job: no CPU work at all.
                    return Ended::Succeeded {
                        exit_code: None,
                        result: None,
                    };
                }
                let piece = |release: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
                             busy: Arc<AtomicUsize>,
                             most: Arc<AtomicUsize>| {
                    move || {
                        let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        let (lock, cv) = &*release;
                        let mut go = lock.lock().unwrap();
                        while !*go {
                            go = cv.wait(go).unwrap();
                        }
                        busy.fetch_sub(1, Ordering::SeqCst);
                    }
                };
                let cpu = &ctx.env.cpu;
                let a = cpu.run(piece(release.clone(), busy.clone(), most.clone()));
                let b = cpu.run(piece(release.clone(), busy.clone(), most.clone()));
                let (a, b) = tokio::join!(a, b);
                a.unwrap();
                b.unwrap();
                Ended::Succeeded {
                    exit_code: None,
                    result: None,
                }
            })
        })
    };
    let rig = Rig::new(kinds, Clock::System);
    assert_eq!(rig.ctx.env.cpu.threads(), 1);
    let heavy = rig.job(1, None).await;
    let light = rig.job(1, None).await;
    assert_eq!((heavy.id % 2, light.id % 2), (1, 0));
    let heavy_run = tokio::spawn({
        let ctx = rig.ctx.clone();
        async move {
            run_attempt(ctx, heavy, never_stopped(), || {})
                .await
                .unwrap()
        }
    });
    // The runtime is single-threaded: this completes only if nothing
    // blocks it while the heavy job's work waits on the pool.
    let light_done = rig.run(light, never_stopped()).await;
    assert_eq!(light_done.state.tag(), StateTag::Succeeded);
    assert!(!heavy_run.is_finished());
    {
        let (lock, cv) = &*release;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
    let heavy_done = heavy_run.await.unwrap();
    assert_eq!(heavy_done.state.tag(), StateTag::Succeeded);
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "the pool ran more than its size"
    );
}
