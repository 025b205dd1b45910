//! `submit exec`: builds a `JobSpec` from the flags and submits it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow};
use quern_proto::v1::{ExecSpec, JobSpec, SubmitRequest, job_spec};

use crate::cli::ExecArgs;
use crate::client::{Client, rpc_error};
use crate::output;
use crate::parse::{self, Priority};

/// Builds the spec for `submit exec`. Only what the daemon cannot check is
/// checked here; limits and the like are left to it, so there is one
/// authority on them.
pub fn exec_spec(args: ExecArgs) -> Result<JobSpec> {
    let cwd = match args.cwd {
        // The daemon requires an absolute cwd; a relative --cwd means
        // relative to where quernctl runs, as it would for any command.
        Some(dir) => std::path::absolute(&dir)
            .with_context(|| format!("cannot make --cwd {} absolute", dir.display()))?,
        // The job runs where the user is, as if they had run the command
        // themselves, not in the daemon's state dir.
        None => {
            std::env::current_dir().context("cannot read the current directory; pass --cwd DIR")?
        }
    };
    let cwd = utf8_path(&cwd)?;

    let run_at = match (args.at, args.delay) {
        (Some(at), _) => Some(at.into()),
        (None, Some(delay)) => {
            let at = SystemTime::now().checked_add(delay).ok_or_else(|| {
                anyhow!(
                    "--in {} is too far ahead; give a shorter delay",
                    humantime::format_duration(delay)
                )
            })?;
            Some(at.into())
        }
        (None, None) => None,
    };

    let timeout = args
        .timeout
        .map(|timeout| {
            prost_types::Duration::try_from(timeout).map_err(|_| {
                anyhow!(
                    "--timeout {} is too long; give a shorter timeout",
                    humantime::format_duration(timeout)
                )
            })
        })
        .transpose()?;

    let (priority, priority_name) = match args.priority {
        Some(Priority::Number(number)) => (number, String::new()),
        Some(Priority::Name(name)) => (0, name.to_owned()),
        None => (0, String::new()),
    };

    Ok(JobSpec {
        kind: Some(job_spec::Kind::Exec(ExecSpec {
            argv: args.argv,
            cwd,
            env: parse::into_map("--env", args.env).map_err(|msg| anyhow!(msg))?,
        })),
        priority,
        priority_name,
        labels: parse::into_map("--label", args.labels).map_err(|msg| anyhow!(msg))?,
        run_at,
        timeout,
        max_attempts: args.max_attempts.unwrap_or(0),
        idempotency_key: args.key.unwrap_or_default(),
    })
}

fn utf8_path(path: &Path) -> Result<String> {
    path.to_str().map(str::to_owned).ok_or_else(|| {
        anyhow!(
            "working directory {} is not valid UTF-8, which the API cannot carry; pass --cwd with a UTF-8 path",
            PathBuf::from(path).display()
        )
    })
}

/// Submits the spec and prints the new job's id, or the job as JSON.
pub async fn run(client: &mut Client, spec: JobSpec, json: bool) -> Result<()> {
    let key = spec.idempotency_key.clone();
    let response = client
        .submit(SubmitRequest { spec: Some(spec) })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let job = super::returned_job(response.job, "Submit")?;
    if json {
        let mut value = output::job_json(&job);
        value["deduplicated"] = response.deduplicated.into();
        output::json_line(&value)?;
    } else {
        // Only the id goes to stdout, so that `id=$(quernctl submit ...)`
        // works; the note about deduplication is for the person.
        if response.deduplicated {
            eprintln!(
                "quernctl: key {key:?} matches unfinished job {}, so no new job was submitted",
                job.id
            );
        }
        output::line(job.id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command, SubmitKind};

    fn spec(flags: &[&str]) -> Result<JobSpec> {
        let line = ["quernctl", "submit", "exec"].iter().chain(flags);
        let cli = Cli::try_parse_from(line).expect("parses");
        let Command::Submit {
            kind: SubmitKind::Exec(args),
        } = cli.command
        else {
            panic!("not submit exec");
        };
        exec_spec(args)
    }

    fn exec(spec: &JobSpec) -> &ExecSpec {
        match &spec.kind {
            Some(job_spec::Kind::Exec(exec)) => exec,
            _ => panic!("not an exec spec"),
        }
    }

    #[test]
    fn defaults_send_the_current_directory_and_nothing_else() {
        let spec = spec(&["--", "echo", "hi"]).expect("spec");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(exec(&spec).argv, ["echo", "hi"]);
        assert_eq!(Path::new(&exec(&spec).cwd), cwd);
        assert!(Path::new(&exec(&spec).cwd).is_absolute());
        assert_eq!(spec.priority, 0);
        assert_eq!(spec.priority_name, "");
        assert_eq!(spec.run_at, None);
        assert_eq!(spec.timeout, None);
        assert_eq!(spec.max_attempts, 0);
        assert_eq!(spec.idempotency_key, "");
    }

    #[test]
    fn a_number_goes_to_priority_and_a_name_to_priority_name() {
        let spec_n = spec(&["--priority", "-7", "--", "true"]).expect("spec");
        assert_eq!((spec_n.priority, spec_n.priority_name.as_str()), (-7, ""));
        let spec_h = spec(&["--priority", "High", "--", "true"]).expect("spec");
        assert_eq!(
            (spec_h.priority, spec_h.priority_name.as_str()),
            (0, "high")
        );
    }

    #[test]
    fn flags_fill_the_spec() {
        let spec = spec(&[
            "--label",
            "team=infra",
            "--label",
            "tier=1",
            "--env",
            "A=1",
            "--timeout",
            "1m30s",
            "--max-attempts",
            "3",
            "--key",
            "nightly",
            "--cwd",
            "/srv",
            "--at",
            "2030-01-01T00:00:00Z",
            "--",
            "make",
            "-j4",
        ])
        .expect("spec");
        assert_eq!(spec.labels.len(), 2);
        assert_eq!(spec.labels["team"], "infra");
        assert_eq!(exec(&spec).env["A"], "1");
        assert_eq!(exec(&spec).cwd, "/srv");
        assert_eq!(
            spec.timeout,
            Some(prost_types::Duration {
                seconds: 90,
                nanos: 0
            })
        );
        assert_eq!(spec.max_attempts, 3);
        assert_eq!(spec.idempotency_key, "nightly");
        assert_eq!(spec.run_at.map(|t| t.seconds), Some(1_893_456_000));
    }

    #[test]
    fn a_relative_cwd_is_made_absolute_against_the_current_directory() {
        let spec = spec(&["--cwd", "sub/dir", "--", "true"]).expect("spec");
        let want = std::env::current_dir().expect("cwd").join("sub/dir");
        assert_eq!(Path::new(&exec(&spec).cwd), want);
    }

    #[test]
    fn in_sets_run_at_that_far_ahead() {
        let before = SystemTime::now();
        let spec = spec(&["--in", "10m", "--", "true"]).expect("spec");
        let run_at = SystemTime::try_from(spec.run_at.expect("run_at")).expect("in range");
        let ahead = run_at.duration_since(before).expect("in the future");
        assert!(ahead >= std::time::Duration::from_secs(600), "{ahead:?}");
        assert!(ahead < std::time::Duration::from_secs(660), "{ahead:?}");
    }

    #[test]
    fn a_label_given_twice_is_refused() {
        let err = spec(&["--label", "a=1", "--label", "a=2", "--", "true"]).expect_err("twice");
        assert_eq!(
            err.to_string(),
            "--label a is given twice; give each key once"
        );
    }
}
