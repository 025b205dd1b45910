//! The domain model's tests: transitions, outcomes, rules, without a store.

use super::*;

fn spec(run_at: Option<Micros>) -> JobSpec {
    JobSpec {
        run_at,
        max_attempts: 3,
        ..JobSpec::exec_for_tests(&["true"])
    }
}

fn exec_run() -> RunRecord {
    RunRecord::Exec(ExecRun {
        pid: 42,
        pid_start: 7,
        boot_id: "boot".into(),
    })
}

/// One job in every state, each reached through the transitions.
fn in_every_state() -> Vec<Job> {
    let queued = Job::submitted(1, spec(None), 1000, 10);
    let scheduled = Job::submitted(2, spec(Some(50)), 1000, 10);
    let running = queued.started(1, exec_run(), 20).unwrap();
    let done = |o| running.finished(1, None, o, 30).unwrap();
    vec![
        queued.clone(),
        scheduled,
        running.clone(),
        done(Outcome::Succeeded {
            exit_code: Some(0),
            result: None,
        }),
        done(Outcome::Failed {
            exit_code: Some(1),
            error: "exited with code 1".into(),
            retry_at: None,
        }),
        queued.cancelled(30).unwrap(),
    ]
}

#[test]
fn specs_that_break_a_rule_name_the_field() {
    let ok = JobSpec::exec_for_tests(&["true"]);
    assert_eq!(ok.check(), Ok(()));
    let field = |spec: JobSpec| spec.check().unwrap_err().0;
    assert_eq!(
        field(JobSpec {
            max_attempts: 0,
            ..ok.clone()
        }),
        ".max_attempts"
    );
    assert_eq!(
        field(JobSpec {
            timeout: Some(Duration::ZERO),
            ..ok.clone()
        }),
        ".timeout"
    );
    assert_eq!(field(JobSpec::exec_for_tests(&[])), ".exec.argv");
    let mut relative = ok.clone();
    let JobKind::Exec(e) = &mut relative.kind else {
        unreachable!("exec_for_tests makes an exec spec")
    };
    e.cwd = Some("here".into());
    assert_eq!(field(relative), ".exec.cwd");
}

#[test]
fn a_submitted_job_waits_only_for_a_start_time_still_ahead() {
    let now = Job::submitted(1, spec(Some(10)), 5, 10);
    assert_eq!(now.state, JobState::Queued);
    let later = Job::submitted(2, spec(Some(11)), 5, 10);
    assert_eq!(later.state, JobState::Scheduled { run_at: 11 });
    assert_eq!((later.owner_uid, later.queued_at), (5, 10));
}

/// Each transition is allowed from exactly the states the lifecycle
/// says, and refused from every other with the state it found.
#[test]
fn transitions_are_allowed_from_exactly_their_states() {
    use StateTag::*;
    type Try = fn(&Job) -> Result<Job, Refused>;
    let cases: [(&str, Try, &[StateTag]); 4] = [
        (
            "start",
            |j| j.started(1, RunRecord::InProcess, 1),
            &[Queued],
        ),
        (
            "finish",
            |j| {
                j.finished(
                    1,
                    None,
                    Outcome::Succeeded {
                        exit_code: None,
                        result: None,
                    },
                    1,
                )
            },
            &[Queued, Running],
        ),
        ("cancel", |j| j.cancelled(1), &[Queued, Scheduled]),
        ("promote", |j| j.promoted(), &[Scheduled]),
    ];
    let jobs = in_every_state();
    assert_eq!(
        jobs.iter().map(|j| j.state.tag()).collect::<Vec<_>>(),
        StateTag::ALL
    );
    for (name, attempt, allowed) in cases {
        for job in &jobs {
            let tag = job.state.tag();
            match attempt(job) {
                Ok(_) => assert!(allowed.contains(&tag), "{name} allowed from {tag:?}"),
                Err(r) => {
                    assert!(!allowed.contains(&tag), "{name} refused from {tag:?}");
                    assert_eq!(r.state, tag);
                }
            }
        }
    }
}

#[test]
fn outcomes_become_states() {
    let running = Job::submitted(1, spec(None), 0, 10)
        .started(2, exec_run(), 20)
        .unwrap();
    assert_eq!(running.started_at, Some(20));

    let ok = running
        .finished(
            2,
            None,
            Outcome::Succeeded {
                exit_code: Some(0),
                result: None,
            },
            30,
        )
        .unwrap();
    assert_eq!(ok.state, JobState::Succeeded { finished_at: 30 });
    assert_eq!(
        (ok.exit_code, ok.attempts, ok.started_at),
        (Some(0), 2, Some(20))
    );

    let retry = Outcome::Failed {
        exit_code: Some(3),
        error: "exited with code 3".into(),
        retry_at: Some(99),
    };
    let again = running.finished(2, None, retry, 30).unwrap();
    assert_eq!(again.state, JobState::Scheduled { run_at: 99 });
    assert_eq!(again.error, "exited with code 3");

    let gave_up = Outcome::Failed {
        exit_code: None,
        error: "timed out".into(),
        retry_at: None,
    };
    let failed = running.finished(2, None, gave_up, 30).unwrap();
    assert_eq!(failed.state, JobState::Failed { finished_at: 30 });

    let cancelled = running
        .finished(2, None, Outcome::Cancelled { exit_code: None }, 30)
        .unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled { finished_at: 30 });
    assert_eq!(cancelled.error, CANCELLED_ERROR);

    // A shutdown takes the attempt back.
    let requeued = running.finished(2, None, Outcome::Requeue, 30).unwrap();
    assert_eq!(
        (requeued.state.clone(), requeued.attempts),
        (JobState::Queued, 1)
    );
    assert!(!Outcome::Requeue.ends_attempt());

    // An attempt that never started records when it was tried.
    let queued = Job::submitted(1, spec(None), 0, 10);
    let spawn_failed = Outcome::Failed {
        exit_code: None,
        error: "cannot start".into(),
        retry_at: None,
    };
    let tried = queued.finished(1, Some(15), spawn_failed, 16).unwrap();
    assert_eq!((tried.started_at, tried.attempts), (Some(15), 1));
}

#[test]
fn events_carry_the_result_only_when_an_attempt_ends() {
    let failed = Job::submitted(1, spec(None), 0, 10)
        .started(1, exec_run(), 20)
        .unwrap()
        .finished(
            1,
            None,
            Outcome::Failed {
                exit_code: Some(2),
                error: "exited with code 2".into(),
                retry_at: None,
            },
            30,
        )
        .unwrap();
    let ended = Event::of(9, &failed, 30, true);
    assert_eq!(
        (ended.exit_code, ended.error.as_str()),
        (Some(2), "exited with code 2")
    );
    assert_eq!(
        (ended.seq, ended.state, ended.attempt),
        (9, StateTag::Failed, 1)
    );
    let quiet = Event::of(10, &failed, 30, false);
    assert_eq!((quiet.exit_code, quiet.error.as_str()), (None, ""));
}

#[test]
fn retry_delays_grow_and_cap() {
    let base = Duration::from_millis(200);
    let max = Duration::from_secs(10);
    // Even the worst jitter for attempt n+1 beats the best for attempt n,
    // which is what makes "growing delays" a guarantee, not a tendency.
    for n in 1..5 {
        assert!(retry_delay(n + 1, base, max, 0.75) > retry_delay(n, base, max, 1.0));
    }
    assert_eq!(retry_delay(1, base, max, 1.0), base);
    assert_eq!(retry_delay(50, base, max, 1.0), max);
    assert_eq!(retry_delay(3, base, max, 0.1), Duration::from_millis(600));
}

/// Found by the property tests: the longest delays a config can give
/// made the jitter's float product round past `Duration::MAX`, a panic.
#[test]
fn the_longest_retry_delays_do_not_panic() {
    let max = Duration::MAX;
    let base = Duration::from_secs(4_611_686_018_427_387_648);
    assert_eq!(retry_delay(3, base, max, 1.0), base * 4);
    assert_eq!(retry_delay(1, max, max, 0.75), max);
    // Found by the long run: f64 rounding took the delay 2 ms past its
    // cap.
    let cap = Duration::new(17_592_186_044_416, 72_265_626);
    assert!(retry_delay(0, max, cap, 1.0) <= cap);
}

#[test]
fn priority_names_resolve() {
    assert_eq!(priority_from_name("critical"), Some(20));
    assert_eq!(priority_from_name("Background"), Some(-20));
    assert_eq!(priority_from_name("urgent"), None);
}

#[test]
fn state_and_kind_tags_round_trip() {
    for t in StateTag::ALL {
        assert_eq!(StateTag::from_u8(t as u8), Some(t));
    }
    assert_eq!(StateTag::from_u8(0), None);
    assert!(StateTag::Cancelled.is_terminal() && !StateTag::Running.is_terminal());
    for k in KindTag::ALL {
        assert_eq!(KindTag::from_name(k.name()), Some(k));
    }
    assert_eq!(KindTag::from_name("ftp"), None);
}
