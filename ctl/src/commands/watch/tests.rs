//! Tests of `watch`: how `watch add` reads its command line into a rule,
//! and how rules read in `ls`, `get` and the confirmations.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Parser;
use clap::error::ErrorKind;
use quern_proto::v1::{ExecSpec, FetchSpec, JobSpec, JobState, WatchTrigger, job_spec};

use super::*;
use crate::cli::{Cli, Command, WatchCommand};

/// Parses `quernctl watch add ARGS...`, or returns clap's error.
fn parse(args: &[&str]) -> Result<WatchAddArgs, clap::Error> {
    let line = ["quernctl", "watch", "add"].iter().chain(args);
    let cli = Cli::try_parse_from(line)?;
    let Command::Watch {
        command: WatchCommand::Add(args),
    } = cli.command
    else {
        panic!("not watch add");
    };
    Ok(args)
}

fn spec_of(args: &[&str]) -> WatchSpec {
    add_spec(parse(args).expect("parses")).expect("spec")
}

fn exec(spec: &WatchSpec) -> &ExecSpec {
    match spec.job.as_ref().and_then(|job| job.kind.as_ref()) {
        Some(job_spec::Kind::Exec(exec)) => exec,
        other => panic!("not an exec template: {other:?}"),
    }
}

fn fetch(spec: &WatchSpec) -> &FetchSpec {
    match spec.job.as_ref().and_then(|job| job.kind.as_ref()) {
        Some(job_spec::Kind::Fetch(fetch)) => fetch,
        other => panic!("not a fetch template: {other:?}"),
    }
}

fn cwd() -> PathBuf {
    std::env::current_dir().expect("cwd")
}

#[test]
fn every_flag_fills_the_rule_and_the_words_after_the_dash_dash_the_job() {
    let spec = spec_of(&[
        "/srv/src",
        "--include",
        "**/*.rs",
        "--include",
        "Cargo.toml",
        "--exclude",
        "target/**",
        "--no-ignore-files",
        "--no-recursive",
        "--debounce",
        "250ms",
        "--max-wait",
        "1m",
        "--on-busy",
        "restart",
        "--",
        "exec",
        "--priority",
        "high",
        "--label",
        "team=web",
        "--cwd",
        "/srv/src",
        // The job's own `--`: what follows is argv, flags and all.
        "--",
        "make",
        "test",
        "--include",
    ]);
    assert_eq!(spec.root, "/srv/src");
    assert_eq!(spec.include, ["**/*.rs", "Cargo.toml"]);
    assert_eq!(spec.exclude, ["target/**"]);
    assert!(spec.no_ignore_files);
    assert_eq!(spec.recursive, Some(false));
    assert_eq!(
        spec.debounce,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 250_000_000
        })
    );
    assert_eq!(spec.max_wait.map(|d| d.seconds), Some(60));
    assert_eq!(spec.on_busy, "restart");
    let job = spec.job.as_ref().expect("job");
    assert_eq!(job.priority_name, "high");
    assert_eq!(job.labels["team"], "web");
    assert_eq!(exec(&spec).argv, ["make", "test", "--include"]);
    assert_eq!(exec(&spec).cwd, "/srv/src");
}

#[test]
fn without_flags_the_daemon_picks_the_defaults() {
    let spec = spec_of(&["/srv/src", "--", "exec", "make"]);
    assert!(spec.include.is_empty() && spec.exclude.is_empty());
    assert!(!spec.no_ignore_files);
    // Unset, not Some(true): the daemon's default stands.
    assert_eq!(spec.recursive, None);
    assert_eq!((spec.debounce, spec.max_wait), (None, None));
    assert_eq!(spec.on_busy, "");
    // The job template is what `submit exec make` would send: run from
    // quernctl's cwd.
    assert_eq!(exec(&spec).argv, ["make"]);
    assert_eq!(PathBuf::from(&exec(&spec).cwd), cwd());
}

#[test]
fn a_zero_debounce_is_sent_for_the_daemon_to_refuse() {
    // Zero parses as a duration; the daemon is the authority that refuses
    // it, naming the field, so it must reach the daemon rather than vanish.
    let spec = spec_of(&["/d", "--debounce", "0s", "--", "exec", "true"]);
    assert_eq!(spec.debounce, Some(prost_types::Duration::default()));
}

#[test]
fn a_relative_dir_is_made_absolute_against_the_current_directory() {
    let spec = spec_of(&["src/app", "--", "exec", "true"]);
    assert_eq!(PathBuf::from(&spec.root), cwd().join("src/app"));
    let spec = spec_of(&[".", "--", "exec", "true"]);
    assert!(PathBuf::from(&spec.root).is_absolute(), "{}", spec.root);
    assert!(
        PathBuf::from(&spec.root).starts_with(cwd()),
        "{}",
        spec.root
    );
}

#[test]
fn a_dir_that_is_a_symlink_is_sent_as_given_not_resolved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("target");
    std::fs::create_dir(&target).expect("mkdir");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let spec = spec_of(&[link.to_str().expect("utf-8"), "--", "exec", "true"]);
    assert_eq!(PathBuf::from(&spec.root), link);
}

#[test]
fn relative_paths_of_the_job_are_resolved_as_submit_resolves_them() {
    let spec = spec_of(&["d", "--", "exec", "--cwd", "build", "--", "make"]);
    assert_eq!(PathBuf::from(&exec(&spec).cwd), cwd().join("build"));

    let spec = spec_of(&[
        "d",
        "--",
        "fetch",
        "--dest",
        "out/data.csv",
        "https://example.org/data.csv",
    ]);
    assert_eq!(fetch(&spec).url, "https://example.org/data.csv");
    assert_eq!(
        PathBuf::from(&fetch(&spec).dest),
        cwd().join("out/data.csv")
    );
}

#[test]
fn a_git_job_after_the_dash_dash_is_built_as_submit_git_builds_it() {
    let spec = spec_of(&[
        "src",
        "--",
        "git",
        "--analysis",
        "churn",
        "--since",
        "2026-01-31",
        "--search",
        "Fixes:",
        ".",
    ]);
    let Some(job_spec::Kind::Git(git)) = spec.job.as_ref().and_then(|job| job.kind.as_ref()) else {
        panic!("not a git template: {:?}", spec.job);
    };
    // The repository is resolved against quernctl's cwd, as for submit.
    assert_eq!(PathBuf::from(&git.repo), cwd().join("."));
    assert_eq!(git.since.map(|t| t.seconds), Some(1_769_817_600));
    let names: Vec<&str> = git.analyses.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["churn", "search"]);
    assert_eq!(git.analyses[1].regex, "Fixes:");

    // And its mistakes are usage errors naming the flag.
    let err = parse(&["src", "--", "git", "--since", "someday", "."]).expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    assert!(err.render().to_string().contains("--since <DATE>"), "{err}");
}

#[test]
fn bad_flags_are_usage_errors_naming_the_flag() {
    // (arguments, the error kind, a part of the message)
    let cases: &[(&[&str], ErrorKind, &str)] = &[
        (
            &["d", "--on-busy", "wait", "--", "exec", "true"],
            ErrorKind::InvalidValue,
            "--on-busy",
        ),
        (
            &["d", "--on-busy", "wait", "--", "exec", "true"],
            ErrorKind::InvalidValue,
            "coalesce, queue, restart, skip",
        ),
        (
            &["d", "--debounce", "soon", "--", "exec", "true"],
            ErrorKind::ValueValidation,
            "--debounce",
        ),
        (
            &["d", "--max-wait", "10 parsecs", "--", "exec", "true"],
            ErrorKind::ValueValidation,
            "expected a duration such as 10s",
        ),
        // A mistake in the job is found by submit's own parser.
        (
            &["d", "--", "exec", "--priority", "urgent", "--", "true"],
            ErrorKind::ValueValidation,
            "--priority",
        ),
        (
            &["d", "--", "fetch", "ftp://example.org/f"],
            ErrorKind::ValueValidation,
            "scheme \"ftp\" is not supported",
        ),
        (
            &["d", "--", "exec"],
            ErrorKind::MissingRequiredArgument,
            "<ARGV>",
        ),
        (
            &["d", "--", "rsync", "a", "b"],
            ErrorKind::InvalidSubcommand,
            "rsync",
        ),
        (&["d"], ErrorKind::MissingRequiredArgument, "<SUBMIT ARGS>"),
        // The job must come after `--`, so no word of it is taken for a
        // flag of the rule.
        (&["d", "exec", "true"], ErrorKind::UnknownArgument, "exec"),
    ];
    for (args, kind, want) in cases {
        let err = parse(args).expect_err("refused");
        let text = err.render().to_string();
        assert_eq!(err.kind(), *kind, "{args:?}: {text}");
        assert!(text.contains(want), "{args:?}: {text}");
    }
}

#[test]
fn a_label_given_twice_in_the_job_is_refused_as_submit_refuses_it() {
    let args = parse(&[
        "d", "--", "exec", "--label", "a=1", "--label", "a=2", "--", "true",
    ])
    .expect("parses");
    let err = add_spec(args).expect_err("twice");
    assert_eq!(
        err.to_string(),
        "--label a is given twice; give each key once"
    );
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn sample_watch(now: SystemTime) -> Watch {
    Watch {
        id: 3,
        spec: Some(WatchSpec {
            root: "/srv/src".into(),
            recursive: Some(true),
            include: vec!["**/*.rs".into(), "my file".into()],
            exclude: vec!["target/**".into()],
            no_ignore_files: false,
            debounce: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
            max_wait: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            on_busy: "coalesce".into(),
            job: Some(JobSpec {
                kind: Some(job_spec::Kind::Exec(ExecSpec {
                    argv: vec!["make".into(), "test".into()],
                    cwd: "/srv/src".into(),
                    env: HashMap::new(),
                })),
                priority_name: "high".into(),
                labels: HashMap::from([("team".into(), "web".into())]),
                ..JobSpec::default()
            }),
        }),
        state: WatchState::Active as i32,
        state_reason: String::new(),
        created_at: Some((now - Duration::from_secs(600)).into()),
        // No user has this uid, so the text does not depend on the
        // machine's users.
        owner_uid: 4_000_000_001,
        jobs_made: 2,
        last_trigger: Some(WatchTrigger {
            time: Some((now - Duration::from_secs(5)).into()),
            reason: "change".into(),
            paths: 4,
            job_id: 12,
        }),
        kernel_watches: 7,
        snapshot_paths: 120,
        pending_paths: 0,
        recent_job_ids: vec![12, 9],
    }
}

fn watch_job(id: u64, state: JobState, reason: &str, queued: SystemTime) -> Job {
    Job {
        id,
        state: state as i32,
        spec: Some(JobSpec {
            labels: HashMap::from([
                ("quern.watch".into(), "3".into()),
                (REASON_LABEL.into(), reason.into()),
            ]),
            ..JobSpec::default()
        }),
        queued_at: Some(queued.into()),
        ..Job::default()
    }
}

#[test]
fn ls_shows_state_jobs_and_the_last_trigger() {
    let now = at(1_700_000_000);
    let active = sample_watch(now);
    let mut paused = sample_watch(now);
    paused.id = 4;
    paused.state = WatchState::Paused as i32;
    paused.jobs_made = 0;
    paused.last_trigger = None;
    paused.spec.as_mut().expect("spec").root = "/home/me/notes".into();
    let mut broken = sample_watch(now);
    broken.id = 5;
    broken.state = WatchState::Error as i32;
    broken.state_reason = "root /gone vanished".into();
    broken.last_trigger = Some(WatchTrigger {
        time: Some((now - Duration::from_secs(90)).into()),
        reason: "catch-up".into(),
        paths: 1,
        job_id: 0,
    });
    broken.spec.as_mut().expect("spec").root = "/gone".into();
    let mut degraded = sample_watch(now);
    degraded.id = 6;
    degraded.state = WatchState::Degraded as i32;

    let text = table(&[active, paused, broken, degraded], now);
    let want = "\
ID  STATE     JOBS  LAST TRIGGER                           ROOT
3   active    2     5s ago: change of 4 paths, job 12      /srv/src
4   paused    0                                            /home/me/notes
5   error     2     1m30s ago: catch-up of 1 path, no job  /gone
6   degraded  2     5s ago: change of 4 paths, job 12      /srv/src";
    assert_eq!(text, want);
}

#[test]
fn get_shows_the_rule_its_job_template_and_recent_jobs() {
    let now = at(1_700_000_000);
    let watch = sample_watch(now);
    let jobs = [
        watch_job(
            12,
            JobState::Running,
            "change",
            now - Duration::from_secs(5),
        ),
        watch_job(
            9,
            JobState::Succeeded,
            "catch-up",
            now - Duration::from_secs(300),
        ),
    ];
    let want = "\
id              3
root            /srv/src
state           active
recursive       yes
include         **/*.rs
include         my file
exclude         target/**
ignore files    read
debounce        100ms
max wait        10s
on busy         coalesce
job             make test
job cwd         /srv/src
job labels      team=web
job priority    high
owner           4000000001
created         10m ago (2023-11-14T22:03:20Z)
jobs made       2
last trigger    5s ago (2023-11-14T22:13:15Z): change of 4 paths, job 12
kernel watches  7
snapshot paths  120
pending paths   0

ID  STATE      REASON    QUEUED
12  running    change    5s ago
9   succeeded  catch-up  5m ago";
    assert_eq!(details(&watch, &jobs, now), want);
}

#[test]
fn get_of_a_troubled_rule_says_why_and_leaves_out_what_it_lacks() {
    let now = at(1_700_000_000);
    let mut watch = sample_watch(now);
    watch.state = WatchState::Degraded as i32;
    watch.state_reason = "out of inotify watches; raise fs.inotify.max_user_watches".into();
    watch.last_trigger = None;
    let spec = watch.spec.as_mut().expect("spec");
    spec.include.clear();
    spec.recursive = Some(false);
    spec.no_ignore_files = true;
    spec.on_busy = String::new();
    let text = details(&watch, &[], now);
    for want in [
        "state           degraded\n",
        "reason          out of inotify watches; raise fs.inotify.max_user_watches\n",
        "recursive       no\n",
        "include         every path\n",
        "ignore files    not read\n",
        "on busy         coalesce\n",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    assert!(!text.contains("last trigger"), "{text}");
    // No recent jobs: no table, and nothing after the rows.
    assert!(text.ends_with("pending paths   0"), "{text}");
}

#[test]
fn confirmations_name_the_rule_and_a_resume_into_trouble() {
    let now = at(1_700_000_000);
    let mut watch = sample_watch(now);
    assert_eq!(confirmation(Change::Remove, &watch), "watch 3 removed");
    watch.state = WatchState::Paused as i32;
    assert_eq!(confirmation(Change::Pause, &watch), "watch 3 paused");
    watch.state = WatchState::Active as i32;
    assert_eq!(confirmation(Change::Resume, &watch), "watch 3 resumed");
    watch.state = WatchState::Error as i32;
    watch.state_reason = "root /srv/src vanished".into();
    assert_eq!(
        confirmation(Change::Resume, &watch),
        "watch 3 resumed, but is error: root /srv/src vanished"
    );
}

#[test]
fn a_missing_rule_in_an_answer_asks_for_matching_versions() {
    let err = returned_watch(None, "Pause").expect_err("no rule");
    assert_eq!(
        err.to_string(),
        "quernd answered Watches.Pause without a rule; check that quernd and quernctl are the same version"
    );
}
