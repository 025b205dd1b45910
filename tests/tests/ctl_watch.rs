//! End-to-end tests of the `quernctl watch` verbs and `events --watches`
//! against a real `quernd`: a rule added from the shell makes jobs when its
//! directory changes, and what `ls`, `get`, `pause`, `resume` and `rm`
//! print is checked against the jobs the daemon made.
//!
//! They wait on events and on `quernctl wait`, never on sleeps.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use anyhow::{Context as _, Result, ensure};
use quern_proto::v1::{JobState, job_spec};
use quern_tests::{EventStream, TestDaemon, WAIT, get, quernctl_bin, stats};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{ChildStdout, Command};
use tokio::time::timeout;

/// A `quernctl` command aimed at `daemon`, run from `cwd`, with nothing
/// from the developer's environment redirecting it.
fn command(daemon: &TestDaemon, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(quernctl_bin());
    cmd.arg("--socket")
        .arg(daemon.socket())
        .args(args)
        .current_dir(cwd)
        .env_remove("QUERN_SOCKET")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command, args: &[&str]) -> Result<Output> {
    timeout(WAIT, cmd.output())
        .await
        .with_context(|| format!("quernctl {args:?} still runs after {WAIT:?}"))?
        .with_context(|| format!("running quernctl {args:?}"))
}

/// Runs `quernctl` from `cwd` and requires it to succeed; returns stdout.
async fn ok_in(daemon: &TestDaemon, cwd: &Path, args: &[&str]) -> Result<String> {
    let output = run(command(daemon, cwd, args), args).await?;
    ensure!(
        output.status.success(),
        "quernctl {args:?} exited with {}; stderr: {}",
        output.status,
        text(&output.stderr)
    );
    Ok(text(&output.stdout))
}

async fn ok(daemon: &TestDaemon, args: &[&str]) -> Result<String> {
    ok_in(daemon, daemon.dir(), args).await
}

/// Runs `quernctl` from `cwd` and requires it to fail with `code` and a
/// `quernctl: ` message; returns stderr.
async fn err_in(daemon: &TestDaemon, cwd: &Path, code: i32, args: &[&str]) -> Result<String> {
    let output = run(command(daemon, cwd, args), args).await?;
    ensure!(
        output.status.code() == Some(code),
        "quernctl {args:?} exited with {}, not {code}; stdout: {}; stderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    let stderr = text(&output.stderr);
    ensure!(
        stderr.starts_with("quernctl: "),
        "quernctl {args:?} stderr lacks the prefix: {stderr}"
    );
    Ok(stderr)
}

async fn err(daemon: &TestDaemon, args: &[&str]) -> Result<String> {
    err_in(daemon, daemon.dir(), 1, args).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_of(stdout: &str) -> Result<Value> {
    serde_json::from_str(stdout).with_context(|| format!("not JSON: {stdout:?}"))
}

fn id_of(stdout: &str) -> Result<u64> {
    stdout
        .trim_end()
        .parse()
        .with_context(|| format!("printed {stdout:?}, not an id"))
}

/// A directory to watch, under the daemon's temp dir, with the path the
/// daemon stores for it (symlinks in the temp dir resolved).
fn watched_dir(daemon: &TestDaemon, name: &str) -> Result<(PathBuf, String)> {
    let dir = daemon.dir().join(name);
    std::fs::create_dir_all(&dir)?;
    let stored = dir
        .canonicalize()?
        .to_str()
        .context("temp dir is UTF-8")?
        .to_owned();
    Ok((dir, stored))
}

/// The next job to be queued after `events` was opened: on a daemon where
/// nothing else submits, the job a rule made.
async fn next_queued(events: &mut EventStream) -> Result<u64> {
    let event = events
        .wait_for(|e| e.state == JobState::Queued as i32 && e.watch.is_none())
        .await
        .context("waiting for the rule to make a job")?;
    Ok(event.job_id)
}

/// The labels of job `id`, as `quernctl --json get` shows them.
async fn labels_of(daemon: &TestDaemon, id: u64) -> Result<Value> {
    let job = json_of(&ok(daemon, &["--json", "get", &id.to_string()]).await?)?;
    Ok(job["spec"]["labels"].clone())
}

/// One rule's life from the shell: added, listed, triggered by a write,
/// paused and caught up on resume, shown with its jobs, removed.
#[tokio::test]

async fn a_rule_added_from_the_shell_makes_jobs_until_removed() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let (dir, root) = watched_dir(&daemon, "src")?;

    let script = r#"cat "$QUERN_CHANGED_PATHS_FILE""#;
    let stdout = ok(
        &daemon,
        &[
            "watch",
            "add",
            dir.to_str().context("UTF-8")?,
            "--debounce",
            "50ms",
            "--",
            "exec",
            "--label",
            "team=web",
            "--",
            "sh",
            "-c",
            script,
        ],
    )
    .await?;
    let id = id_of(&stdout)?;

    // ls: one row, active, with its root.
    let table = ok(&daemon, &["watch", "ls"]).await?;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    ensure!(rows.len() == 2, "a header and one rule: {table}");
    ensure!(rows[0][0] == "ID", "{table}");
    ensure!(
        rows[1][0] == id.to_string() && rows[1][1] == "active",
        "{table}"
    );
    ensure!(rows[1].last() == Some(&root.as_str()), "{table}");
    let listed = json_of(&ok(&daemon, &["--json", "watch", "ls"]).await?)?;
    ensure!(listed.as_array().map(Vec::len) == Some(1), "{listed}");
    ensure!(listed[0]["id"] == id, "{listed}");
    ensure!(listed[0]["state"] == "active", "{listed}");
    ensure!(listed[0]["spec"]["root"] == root.as_str(), "{listed}");
    ensure!(listed[0]["spec"]["debounce"] == "0.050s", "{listed}");
    ensure!(listed[0]["last_trigger"] == Value::Null, "{listed}");

    // A write makes a job, labelled with the rule and the reason, that
    // `list` finds by the label and that sees the changed path.
    let mut events = EventStream::from_now(&mut client, 0).await?;
    std::fs::write(dir.join("a.txt"), "one")?;
    let first = next_queued(&mut events).await?;
    let labels = labels_of(&daemon, first).await?;
    ensure!(
        labels["quern.watch"].as_str() == Some(id.to_string().as_str()),
        "{labels}"
    );
    ensure!(labels["quern.watch.reason"] == "change", "{labels}");
    ensure!(
        labels["team"] == "web",
        "the template's labels stay: {labels}"
    );
    ok(&daemon, &["wait", &first.to_string()]).await?;
    let logs = ok(&daemon, &["logs", &first.to_string()]).await?;
    ensure!(logs.lines().any(|l| l == "a.txt"), "{logs:?}");
    let label = format!("quern.watch={id}");
    let list = ok(&daemon, &["list", "--label", &label]).await?;
    let ids: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    ensure!(ids == [first.to_string()], "{list}");

    // Paused, a write makes no job; resumed, it is caught up on once.
    let stdout = ok(&daemon, &["watch", "pause", &id.to_string()]).await?;
    ensure!(stdout == format!("watch {id} paused\n"), "{stdout:?}");
    let shown = json_of(&ok(&daemon, &["--json", "watch", "get", &id.to_string()]).await?)?;
    ensure!(shown["state"] == "paused", "{shown}");
    std::fs::write(dir.join("b.txt"), "two")?;
    let stdout = ok(&daemon, &["watch", "resume", &id.to_string()]).await?;
    ensure!(stdout == format!("watch {id} resumed\n"), "{stdout:?}");
    let second = next_queued(&mut events).await?;
    let labels = labels_of(&daemon, second).await?;
    ensure!(
        labels["quern.watch"].as_str() == Some(id.to_string().as_str()),
        "{labels}"
    );
    ensure!(labels["quern.watch.reason"] == "catch-up", "{labels}");
    ok(&daemon, &["wait", &second.to_string()]).await?;
    // The catch-up job made while paused was the only one: the pause held.
    ensure!(
        get(&mut client, first + 1).await.map(|j| j.id).ok() == Some(second),
        "a job was made between {first} and the catch-up {second}"
    );

    // get: the rule and its recent jobs, newest first.
    let shown = json_of(&ok(&daemon, &["--json", "watch", "get", &id.to_string()]).await?)?;
    ensure!(shown["state"] == "active", "{shown}");
    ensure!(shown["jobs_made"] == 2, "{shown}");
    ensure!(shown["last_trigger"]["reason"] == "catch-up", "{shown}");
    ensure!(shown["last_trigger"]["job_id"] == second, "{shown}");
    ensure!(shown["recent_job_ids"] == json!([second, first]), "{shown}");
    let recent: Vec<(u64, &str)> = shown["recent_jobs"]
        .as_array()
        .context("recent_jobs is an array")?
        .iter()
        .filter_map(|job| Some((job["id"].as_u64()?, job["state"].as_str()?)))
        .collect();
    ensure!(
        recent == [(second, "succeeded"), (first, "succeeded")],
        "{shown}"
    );
    ensure!(
        shown["spec"]["job"]["exec"]["argv"] == json!(["sh", "-c", script]),
        "{shown}"
    );
    let details = ok(&daemon, &["watch", "get", &id.to_string()]).await?;
    ensure!(
        details
            .lines()
            .any(|l| l.split_whitespace().eq(["root", root.as_str()])),
        "{details}"
    );
    ensure!(
        details
            .lines()
            .any(|l| l.split_whitespace().eq(["jobs", "made", "2"])),
        "{details}"
    );
    let job_rows: Vec<Vec<&str>> = details
        .lines()
        .skip_while(|l| !l.starts_with("ID "))
        .skip(1)
        .map(|l| l.split_whitespace().take(3).collect())
        .collect();
    ensure!(
        job_rows
            == [
                vec![second.to_string().as_str(), "succeeded", "catch-up"],
                vec![first.to_string().as_str(), "succeeded", "change"],
            ],
        "{details}"
    );

    // rm: gone from ls; its jobs stay.
    let stdout = ok(&daemon, &["watch", "rm", &id.to_string()]).await?;
    ensure!(stdout == format!("watch {id} removed\n"), "{stdout:?}");
    ensure!(ok(&daemon, &["watch", "ls"]).await?.is_empty());
    ensure!(json_of(&ok(&daemon, &["--json", "watch", "ls"]).await?)? == json!([]));
    ensure!(get(&mut client, first).await.is_ok(), "rm removed a job");
    for verb in ["get", "rm", "pause", "resume"] {
        let stderr = err(&daemon, &["watch", verb, &id.to_string()]).await?;
        ensure!(stderr.contains(&id.to_string()), "{verb}: {stderr}");
    }
    Ok(())
}

/// A relative DIR is taken from quernctl's cwd, as are the job's relative
/// paths; what the daemon refuses exits non-zero naming the field.
#[tokio::test]

async fn watch_add_resolves_relative_paths_and_reports_refusals() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let (_, root) = watched_dir(&daemon, "work/proj")?;
    let cwd = daemon.dir().join("work");

    let args = ["--json", "watch", "add", "proj", "--", "exec", "--", "true"];
    let added = json_of(&ok_in(&daemon, &cwd, &args).await?)?;
    ensure!(added["spec"]["root"] == root.as_str(), "{added}");
    ensure!(added["state"] == "active", "{added}");
    let job_cwd = added["spec"]["job"]["exec"]["cwd"]
        .as_str()
        .context("the template has a cwd")?;
    ensure!(
        Path::new(job_cwd) == cwd,
        "job cwd {job_cwd:?}, not {cwd:?}"
    );

    // A fetch template's relative --dest is resolved as for submit. Nothing
    // is written under proj, so the rule never fetches the dead URL.
    let args = [
        "--json",
        "watch",
        "add",
        "proj",
        "--",
        "fetch",
        "--dest",
        "out.csv",
        "http://127.0.0.1:1/data.csv",
    ];
    let added = json_of(&ok_in(&daemon, &cwd, &args).await?)?;
    let dest = added["spec"]["job"]["fetch"]["dest"]
        .as_str()
        .context("the template has a dest")?;
    ensure!(Path::new(dest) == cwd.join("out.csv"), "{added}");

    let stderr = err_in(
        &daemon,
        &cwd,
        1,
        &["watch", "add", "missing", "--", "exec", "--", "true"],
    )
    .await?;
    ensure!(stderr.contains("root"), "{stderr}");
    let stderr = err_in(
        &daemon,
        &cwd,
        1,
        &[
            "watch",
            "add",
            "proj",
            "--debounce",
            "0s",
            "--",
            "exec",
            "true",
        ],
    )
    .await?;
    ensure!(stderr.contains("debounce"), "{stderr}");
    // Refused before the daemon is asked: a usage error.
    let stderr = err_in(
        &daemon,
        &cwd,
        2,
        &[
            "watch",
            "add",
            "proj",
            "--on-busy",
            "later",
            "--",
            "exec",
            "true",
        ],
    )
    .await?;
    ensure!(stderr.contains("--on-busy"), "{stderr}");

    let stderr = err(&daemon, &["watch", "pause", "999"]).await?;
    ensure!(stderr.contains("999"), "{stderr}");
    Ok(())
}

/// Reads JSON lines from `events --watches` until one matches.
async fn read_until(
    lines: &mut Lines<BufReader<ChildStdout>>,
    seen: &mut Vec<Value>,
    matches: impl Fn(&Value) -> bool,
) -> Result<Value> {
    loop {
        let line = timeout(WAIT, lines.next_line())
            .await
            .with_context(|| format!("no event within {WAIT:?}; seen {seen:?}"))??
            .with_context(|| format!("events ended early; seen {seen:?}"))?;
        let event = json_of(&line)?;
        seen.push(event.clone());
        if matches(&event) {
            return Ok(event);
        }
    }
}

/// `events --watches` prints a rule's changes and triggers as they happen,
/// among job events.
#[tokio::test]

async fn events_watches_prints_a_rules_changes_and_triggers() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let (dir, root) = watched_dir(&daemon, "src")?;

    // Watch events are live only. Replaying from now and waiting for a job
    // submitted after it proves the stream is open before the rule is
    // added, without sleeping.
    let after = stats(&mut client).await?.last_event_seq.to_string();
    let args = ["--json", "events", "--watches", "--after", &after];
    let mut events = command(&daemon, daemon.dir(), &args)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(events.stdout.take().context("piped stdout")?).lines();
    let mut seen = Vec::new();
    let marker = quern_tests::submit(&mut client, quern_tests::exec_spec(["true"])).await?;
    read_until(&mut lines, &mut seen, |e| e["job_id"] == marker.id).await?;

    let stdout = ok(
        &daemon,
        &[
            "watch",
            "add",
            dir.to_str().context("UTF-8")?,
            "--",
            "exec",
            "--",
            "true",
        ],
    )
    .await?;
    let id = id_of(&stdout)?;
    let added = read_until(&mut lines, &mut seen, |e| e["watch"]["change"] == "added").await?;
    ensure!(added["watch"]["watch"]["id"] == id, "{added}");
    ensure!(
        added["watch"]["watch"]["spec"]["root"] == root.as_str(),
        "{added}"
    );
    ensure!(added["watch"]["watch"]["state"] == "active", "{added}");

    std::fs::write(dir.join("a.txt"), "one")?;
    let triggered = read_until(&mut lines, &mut seen, |e| {
        e["watch"]["change"] == "triggered"
    })
    .await?;
    ensure!(
        triggered["watch"]["trigger"]["reason"] == "change",
        "{triggered}"
    );
    let job = triggered["watch"]["trigger"]["job_id"]
        .as_u64()
        .context("job_id")?;
    ensure!(job != 0 && triggered["job_id"] == job, "{triggered}");
    let made = get(&mut client, job).await?;
    let Some(job_spec::Kind::Exec(exec)) = made.spec.and_then(|s| s.kind) else {
        anyhow::bail!("job {job} is not an exec job");
    };
    ensure!(exec.argv == ["true"], "{exec:?}");

    ok(&daemon, &["watch", "pause", &id.to_string()]).await?;
    let paused = read_until(&mut lines, &mut seen, |e| e["watch"]["change"] == "paused").await?;
    ensure!(paused["watch"]["watch"]["state"] == "paused", "{paused}");
    events.kill().await?;
    Ok(())
}
