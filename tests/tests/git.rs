//! End-to-end tests of the git kind against the real daemon: analyses of a
//! fixture repository cross-checked against git itself, mirrors of a
//! `file://` URL, cancel in the middle of a long walk, and bad input.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use quern_proto::v1::{
    CancelRequest, GitAnalysis, GitResult, GitSpec, JobSpec, JobState, SubmitRequest, job_result,
    job_spec,
};
use quern_tests::{TestDaemon, expect_code, submit, wait_for_running, wait_for_terminal};

/// Runs git in `dir` with no user config and a fixed identity and date;
/// returns stdout.
fn git(dir: &Path, args: &[&str], who: (&str, &str), when: i64) -> Result<String> {
    let date = format!("@{when} +0000");
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", who.0)
        .env("GIT_AUTHOR_EMAIL", who.1)
        .env("GIT_COMMITTER_NAME", who.0)
        .env("GIT_COMMITTER_EMAIL", who.1)
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .output()
        .context("running git")?;
    ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

const ALICE: (&str, &str) = ("Alice", "alice@example.org");
const BOB: (&str, &str) = ("Bob", "bob@example.org");

/// A repository with two authors, a binary file, a rename, a branch and a
/// merge.
fn fixture(dir: &Path) -> Result<()> {
    let t = 1_700_000_000;
    git(dir, &["init", "-q", "-b", "main"], ALICE, t)?;
    let write = |p: &str, text: &[u8]| std::fs::write(dir.join(p), text);
    let commit = |who, when, msg: &str| -> Result<()> {
        git(dir, &["add", "-A"], who, when)?;
        git(dir, &["commit", "-q", "-m", msg], who, when)?;
        Ok(())
    };
    write("a.txt", b"one\ntwo\nthree\n")?;
    write("b.txt", b"x\n")?;
    commit(ALICE, t, "first")?;
    write("a.txt", b"one\n2\nthree\nfour\n")?;
    write("img.bin", b"\0\x01\x02")?;
    commit(BOB, t + 3600, "second")?;
    git(dir, &["checkout", "-q", "-b", "side"], BOB, t)?;
    write("side.txt", b"s\n")?;
    write("b.txt", b"x\ny\n")?;
    commit(BOB, t + 7200, "side work")?;
    git(dir, &["checkout", "-q", "main"], ALICE, t)?;
    std::fs::rename(dir.join("b.txt"), dir.join("c.txt"))?;
    write("a.txt", b"one\n2\nthree\nfour\nfive\n")?;
    commit(ALICE, t + 10_800, "rename b")?;
    git(
        dir,
        &["merge", "-q", "--no-edit", "-X", "theirs", "side"],
        ALICE,
        t + 14_400,
    )
    .or_else(|_| -> Result<String> {
        // The rename and the edit of b.txt conflict: keep both sides' files.
        git(dir, &["add", "-A"], ALICE, t + 14_400)?;
        git(dir, &["commit", "-q", "--no-edit"], ALICE, t + 14_400)
    })?;
    write("a.txt", b"one\n2\n")?;
    commit(BOB, t + 18_000, "trim a")?;
    Ok(())
}

fn git_spec(repo: &str, analyses: &[&str]) -> JobSpec {
    JobSpec {
        kind: Some(job_spec::Kind::Git(GitSpec {
            repo: repo.to_string(),
            analyses: analyses
                .iter()
                .map(|a| GitAnalysis {
                    name: a.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn result_of(job: &quern_proto::v1::Job) -> Result<GitResult> {
    ensure!(
        job.state == JobState::Succeeded as i32,
        "job {} ended {:?}: {}",
        job.id,
        job.state(),
        job.error
    );
    match job.result.as_ref().and_then(|r| r.kind.clone()) {
        Some(job_result::Kind::Git(g)) => Ok(g),
        other => bail!("job {} has no git result: {other:?}", job.id),
    }
}

/// `git log --numstat --no-renames`, per path: (revisions, added, removed).
fn git_numstat(dir: &Path) -> Result<BTreeMap<String, (u64, u64, u64)>> {
    let text = git(
        dir,
        &["log", "--numstat", "--no-renames", "--format=", "HEAD"],
        ALICE,
        0,
    )?;
    let mut out: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut f = line.split('\t');
        let (a, r, p) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let e = out.entry(p.to_string()).or_default();
        e.0 += 1;
        e.1 += a.parse::<u64>().unwrap_or(0);
        e.2 += r.parse::<u64>().unwrap_or(0);
    }
    Ok(out)
}

#[tokio::test]
async fn analyses_of_a_local_repository_agree_with_git() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let dir = daemon.dir().join("repo");
    std::fs::create_dir(&dir)?;
    fixture(&dir)?;
    let job = submit(
        &mut client,
        git_spec(
            dir.to_str().unwrap(),
            &["summary", "churn", "hotspots", "ownership", "coupling"],
        ),
    )
    .await?;
    let r = result_of(&wait_for_terminal(&mut client, job.id).await?)?;

    let count: u64 = git(&dir, &["rev-list", "--count", "HEAD"], ALICE, 0)?
        .trim()
        .parse()?;
    ensure!(r.commits == count, "walked {} of {count}", r.commits);
    let summary = r.summary.context("no summary")?;
    ensure!(summary.commits == count);
    let shortlog = git(&dir, &["shortlog", "-sne", "HEAD"], ALICE, 0)?;
    let mut authors: BTreeMap<String, u64> = BTreeMap::new();
    for line in shortlog.lines() {
        let (n, who) = line.trim().split_once('\t').context("shortlog line")?;
        authors.insert(who.to_string(), n.parse()?);
    }
    let ours: BTreeMap<String, u64> = summary
        .authors
        .iter()
        .map(|a| {
            let au = a.author.clone().unwrap_or_default();
            (format!("{} <{}>", au.name, au.email), a.commits)
        })
        .collect();
    ensure!(ours == authors, "{ours:?} != git's {authors:?}");
    ensure!(summary.by_weekday.iter().sum::<u64>() == count);

    let churn = r.churn.context("no churn")?;
    let ours: BTreeMap<String, (u64, u64, u64)> = churn
        .files
        .iter()
        .map(|f| (f.path.clone(), (f.revisions, f.added, f.removed)))
        .collect();
    let theirs = git_numstat(&dir)?;
    ensure!(ours == theirs, "churn {ours:?} != git's {theirs:?}");

    // a.txt has two lines now and the most revisions.
    let top = r.hotspots.first().context("no hotspots")?;
    ensure!(top.path == "a.txt" && top.lines == 2, "{:?}", r.hotspots);
    ensure!(top.score == top.revisions * top.lines);
    ensure!(
        r.ownership.is_some() && r.analyses.len() == 5,
        "{:?}",
        r.analyses
    );
    Ok(())
}

#[tokio::test]
async fn a_mirror_is_cloned_then_fetched_incrementally() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let origin = daemon.dir().join("origin");
    std::fs::create_dir(&origin)?;
    fixture(&origin)?;
    let url = format!("file://{}", origin.display());
    let first = submit(&mut client, git_spec(&url, &["summary"])).await?;
    let r1 = result_of(&wait_for_terminal(&mut client, first.id).await?)?;

    std::fs::write(origin.join("new.txt"), "n\n")?;
    git(&origin, &["add", "-A"], BOB, 1_700_100_000)?;
    git(
        &origin,
        &["commit", "-q", "-m", "later"],
        BOB,
        1_700_100_000,
    )?;
    let second = submit(&mut client, git_spec(&url, &["summary"])).await?;
    let r2 = result_of(&wait_for_terminal(&mut client, second.id).await?)?;
    ensure!(
        r2.commits == r1.commits + 1,
        "{} then {}",
        r1.commits,
        r2.commits
    );
    let mirrors: Vec<PathBuf> = std::fs::read_dir(daemon.state_dir().join("git/mirrors"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    let repos: Vec<&PathBuf> = mirrors.iter().filter(|p| p.is_dir()).collect();
    ensure!(repos.len() == 1, "one mirror for one URL: {mirrors:?}");
    Ok(())
}

#[tokio::test]
async fn a_failed_clone_leaves_nothing_behind() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let url = format!("file://{}", daemon.dir().join("missing").display());
    let job = submit(&mut client, git_spec(&url, &["summary"])).await?;
    let job = wait_for_terminal(&mut client, job.id).await?;
    ensure!(job.state == JobState::Failed as i32, "{job:?}");
    let dir = daemon.state_dir().join("git/mirrors");
    if dir.exists() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            ensure!(!p.is_dir(), "a failed clone left {}", p.display());
        }
    }
    Ok(())
}

/// Cancels job `id` and checks that the Cancel call came back, with the
/// job cancelled, within `limit`.
async fn cancel_within(
    client: &mut quern_proto::v1::jobs_client::JobsClient<tonic::transport::Channel>,
    id: u64,
    limit: Duration,
) -> Result<()> {
    let asked = Instant::now();
    let cancelled = client
        .cancel(CancelRequest {
            id,
            ..Default::default()
        })
        .await?
        .into_inner()
        .job
        .context("no job")?;
    let took = asked.elapsed();
    ensure!(
        cancelled.state == JobState::Cancelled as i32,
        "{cancelled:?}"
    );
    ensure!(took < limit, "cancel took {took:?}");
    Ok(())
}

#[tokio::test]
async fn cancel_stops_a_long_walk_within_a_second() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let dir = daemon.dir().join("big");
    std::fs::create_dir(&dir)?;
    git(&dir, &["init", "-q", "-b", "main"], ALICE, 0)?;
    // 20k commits, each editing one of 50 files, through fast-import.
    let mut stream = String::new();
    for i in 0..20_000u64 {
        let body = format!("line {i}\n{}\n", "x".repeat((i % 7) as usize));
        stream.push_str(&format!(
            // Each commit continues the branch fast-import is writing.
            "commit refs/heads/main\ncommitter A <a@example.org> {} +0000\ndata 1\nc\nM 100644 inline f{}.txt\ndata {}\n{}\n",
            1_700_000_000 + i,
            i % 50,
            body.len(),
            body
        ));
    }
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(stream.as_bytes())?;
    ensure!(child.wait()?.success(), "fast-import failed");

    let job = submit(&mut client, git_spec(dir.to_str().unwrap(), &["churn"])).await?;
    wait_for_running(&mut client, job.id).await?;
    cancel_within(&mut client, job.id, Duration::from_secs(1)).await
}

#[tokio::test]
async fn cancel_stops_a_clone_from_a_silent_server_within_a_second() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    // A loopback server that takes the clone's request and never answers,
    // holding the connection until the test ends.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/silent.git", listener.local_addr()?);
    let (connected, heard) = std::sync::mpsc::channel();
    let (_test_over, over) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            let _ = connected.send(());
            let _ = over.recv();
            drop(stream);
        }
    });
    let job = submit(&mut client, git_spec(&url, &["summary"])).await?;
    tokio::task::spawn_blocking(move || heard.recv_timeout(Duration::from_secs(30)))
        .await?
        .context("quernd never connected to the server")?;
    // The blocked read waits for the HTTP client's timeout; the job must not.
    cancel_within(&mut client, job.id, Duration::from_secs(2)).await
}

#[tokio::test]
async fn bad_git_specs_are_refused_naming_the_field() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let dir = daemon.dir().join("repo");
    std::fs::create_dir(&dir)?;
    fixture(&dir)?;
    let repo = dir.to_str().unwrap().to_string();
    let not_repo = daemon.dir().to_str().unwrap().to_string();
    let with = |f: &dyn Fn(&mut GitSpec)| {
        let mut s = git_spec(&repo, &["summary"]);
        if let Some(job_spec::Kind::Git(g)) = s.kind.as_mut() {
            f(g);
        }
        s
    };
    let analysis = |name: &str, f: &dyn Fn(&mut GitAnalysis)| {
        let mut a = GitAnalysis {
            name: name.into(),
            ..Default::default()
        };
        f(&mut a);
        a
    };
    let cases: Vec<(JobSpec, &str, &str)> = vec![
        (
            with(&|g| g.repo = "rel/path".into()),
            "spec.git.repo",
            "relative",
        ),
        (
            with(&|g| g.repo = not_repo.clone()),
            "spec.git.repo",
            "repository",
        ),
        (
            with(&|g| g.repo = "ftp://example.org/r".into()),
            "spec.git.repo",
            "scheme",
        ),
        (
            with(&|g| g.analyses = vec![analysis("blame", &|_| {})]),
            "spec.git.analyses[0].name",
            "unknown analysis",
        ),
        (
            with(&|g| g.analyses = vec![analysis("search", &|a| a.regex = "(".into())]),
            "spec.git.analyses.regex",
            "regular expression",
        ),
        (
            with(&|g| g.analyses = vec![analysis("contains", &|a| a.commit = "xyz".into())]),
            "spec.git.analyses.commit",
            "hex",
        ),
        (
            with(&|g| {
                g.since = Some(prost_types::Timestamp {
                    seconds: 2_000_000_000,
                    nanos: 0,
                });
                g.until = Some(prost_types::Timestamp {
                    seconds: 1_000_000_000,
                    nanos: 0,
                });
            }),
            "spec.git.since",
            "after until",
        ),
        (
            with(&|g| g.revs = vec!["no-such-branch".into()]),
            "spec.git.revs",
            "no-such-branch",
        ),
    ];
    for (spec, field, words) in cases {
        let st = expect_code(
            client.submit(SubmitRequest { spec: Some(spec) }).await,
            tonic::Code::InvalidArgument,
        )
        .with_context(|| field.to_string())?;
        ensure!(
            st.message().starts_with(&format!("{field}:")) && st.message().contains(words),
            "{field}: {}",
            st.message()
        );
    }
    Ok(())
}

/// Runs quernctl against `daemon`, from its directory; its stdout, or an
/// error with its stderr.
fn quernctl(daemon: &TestDaemon, args: &[&str]) -> Result<String> {
    let out = Command::new(quern_tests::quernctl_bin())
        .arg("--socket")
        .arg(daemon.socket())
        .args(args)
        .current_dir(daemon.dir())
        .env_remove("QUERN_SOCKET")
        .output()?;
    ensure!(
        out.status.success(),
        "quernctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The churn of `quernctl result --json`'s output, per path: (revisions,
/// added, removed), as [`git_numstat`] gives git's.
fn churn_of_json(result: &serde_json::Value) -> Result<BTreeMap<String, (u64, u64, u64)>> {
    let files = result
        .pointer("/git/churn/files")
        .and_then(|f| f.as_array())
        .with_context(|| format!("no churn in {result}"))?;
    Ok(files
        .iter()
        .map(|f| {
            let n = |k: &str| f[k].as_u64().unwrap_or(0);
            (
                f["path"].as_str().unwrap_or_default().to_string(),
                (n("revisions"), n("added"), n("removed")),
            )
        })
        .collect())
}

/// quernctl submits a git job for a relative path (resolved against its
/// cwd) and prints its churn with `result --json`, equal to git's.
#[tokio::test]
async fn quernctl_submits_a_git_job_and_prints_its_result() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let dir = daemon.dir().join("repo");
    std::fs::create_dir(&dir)?;
    fixture(&dir)?;
    let ctl = |args: &[&str]| quernctl(&daemon, args);
    let id = ctl(&["submit", "git", "repo", "--analysis", "churn"])?;
    let id = id.trim();
    ctl(&["wait", id])?;
    let result: serde_json::Value = serde_json::from_str(&ctl(&["result", id, "--json"])?)?;
    let ours = churn_of_json(&result)?;
    ensure!(ours == git_numstat(&dir)?, "{ours:?}");
    let text = ctl(&["result", id])?;
    ensure!(text.contains("a.txt"), "{text}");
    Ok(())
}

/// A re-analysis after new commits diffs only those, reuses the rest from
/// the cache, and still agrees with git.
#[tokio::test]
async fn a_rerun_after_three_commits_computes_three() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let dir = daemon.dir().join("repo");
    std::fs::create_dir(&dir)?;
    fixture(&dir)?;
    let path = dir.to_str().unwrap();
    let first = submit(&mut client, git_spec(path, &["churn", "summary"])).await?;
    let r1 = result_of(&wait_for_terminal(&mut client, first.id).await?)?;
    ensure!(r1.computed == r1.commits && r1.reused == 0, "{r1:?}");

    for n in 0..3 {
        std::fs::write(dir.join("later.txt"), "l\n".repeat(n + 1))?;
        git(&dir, &["add", "-A"], BOB, 1_700_200_000 + n as i64)?;
        git(
            &dir,
            &["commit", "-q", "-m", "later"],
            BOB,
            1_700_200_000 + n as i64,
        )?;
    }
    let second = submit(&mut client, git_spec(path, &["churn", "summary"])).await?;
    let r2 = result_of(&wait_for_terminal(&mut client, second.id).await?)?;
    ensure!(
        r2.commits == r1.commits + 3,
        "{} then {}",
        r1.commits,
        r2.commits
    );
    ensure!(
        r2.computed == 3 && r2.reused == r1.commits,
        "computed {}, reused {}",
        r2.computed,
        r2.reused
    );
    let churn = r2.churn.context("no churn")?;
    let ours: BTreeMap<String, (u64, u64, u64)> = churn
        .files
        .iter()
        .map(|f| (f.path.clone(), (f.revisions, f.added, f.removed)))
        .collect();
    ensure!(ours == git_numstat(&dir)?, "{ours:?}");
    // The old part is as the first run found it.
    let old = r1.churn.context("no churn")?;
    for f in &old.files {
        ensure!(
            churn.files.iter().any(|g| g == f),
            "{f:?} changed, though no new commit touched it"
        );
    }
    Ok(())
}

/// A result over `[git] max_result_bytes` goes to an owner-only file: the
/// job records its path and size and no sections, and `quernctl result`
/// reads the file as if the result were inline.
#[tokio::test]
async fn a_result_over_the_limit_goes_to_a_file_that_quernctl_reads() -> Result<()> {
    let daemon = TestDaemon::builder()
        .config("[git]")
        .config("max_result_bytes = 300")
        .start()
        .await?;
    let mut client = daemon.client();
    let dir = daemon.dir().join("repo");
    std::fs::create_dir(&dir)?;
    fixture(&dir)?;
    let job = submit(
        &mut client,
        git_spec(dir.to_str().unwrap(), &["summary", "churn"]),
    )
    .await?;
    let r = result_of(&wait_for_terminal(&mut client, job.id).await?)?;
    ensure!(!r.file.is_empty(), "no file: {r:?}");
    ensure!(
        r.summary.is_none() && r.churn.is_none() && r.commits > 0,
        "{r:?}"
    );
    let meta = std::fs::metadata(&r.file).with_context(|| r.file.clone())?;
    ensure!(r.file_bytes == meta.len() && r.file_bytes > 300, "{r:?}");
    use std::os::unix::fs::PermissionsExt as _;
    ensure!(
        meta.permissions().mode() & 0o777 == 0o600,
        "mode {:o}",
        meta.permissions().mode()
    );

    let json = quernctl(&daemon, &["result", &job.id.to_string(), "--json"])?;
    let result: serde_json::Value = serde_json::from_str(&json)?;
    let ours = churn_of_json(&result)?;
    ensure!(ours == git_numstat(&dir)?, "{ours:?}");
    ensure!(
        result
            .pointer("/git/summary/commits")
            .and_then(|c| c.as_u64())
            == Some(r.commits),
        "{result}"
    );
    ensure!(
        result.pointer("/git/file").and_then(|f| f.as_str()) == Some(r.file.as_str()),
        "{result}"
    );
    Ok(())
}
