//! `submit exec`, `submit fetch` and `submit git`: build a `JobSpec` from the flags and
//! submit it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use quern_proto::v1::{
    ExecSpec, FetchOverwrite, FetchSpec, GitAnalysis, GitSpec, HttpHeader, JobSpec, SubmitRequest,
    job_spec,
};

use crate::cli::{CommonArgs, ExecArgs, FetchArgs, GitArgs, SubmitKind};
use crate::client::{Client, rpc_error};
use crate::output;
use crate::parse::{self, Priority};

/// Builds the spec for the words after `submit`: the one place they become
/// a `JobSpec`, for `submit` and for the job template of `watch add`.
pub fn spec(kind: SubmitKind) -> Result<JobSpec> {
    match kind {
        SubmitKind::Exec(args) => exec_spec(args),
        SubmitKind::Fetch(args) => fetch_spec(args),
        SubmitKind::Git(args) => git_spec(args),
    }
}

/// Builds the spec for `submit exec`. Only what the daemon cannot check is
/// checked here; limits and the like are left to it, so there is one
/// authority on them.
fn exec_spec(args: ExecArgs) -> Result<JobSpec> {
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
    let cwd = utf8_path(&cwd, "working directory", "--cwd")?;

    Ok(JobSpec {
        kind: Some(job_spec::Kind::Exec(ExecSpec {
            argv: args.argv,
            cwd,
            env: parse::into_map("--env", args.env).map_err(|msg| anyhow!(msg))?,
        })),
        ..common_spec(args.common)?
    })
}

/// Builds the spec for `submit fetch`. Relative paths are made absolute
/// here, because only quernctl knows the cwd they are relative to; a URL
/// scheme and the header syntax were checked while parsing, for an early
/// message, and the daemon checks everything again.
fn fetch_spec(args: FetchArgs) -> Result<JobSpec> {
    let method = args
        .method
        .map(|m| m.to_ascii_uppercase())
        .filter(|m| !m.is_empty());
    let is_get = method.as_deref().is_none_or(|m| m == "GET");
    let dest = match args.dest {
        Some(dest) => absolute(&dest, "--dest")?,
        None if is_get => {
            let name = dest_name(&args.url).map_err(|why| {
                anyhow!(
                    "cannot name the file to save {} to: {why}; pass --dest PATH",
                    args.url
                )
            })?;
            absolute(Path::new(&name), "--dest")?
        }
        // Without a dest, the daemon discards the body of an upload or a
        // webhook's answer, which is what such a request usually wants.
        None => String::new(),
    };
    let body_file = args
        .body_file
        .map(|file| absolute(&file, "--body-file"))
        .transpose()?
        .unwrap_or_default();
    Ok(JobSpec {
        kind: Some(job_spec::Kind::Fetch(FetchSpec {
            url: args.url,
            dest,
            sha256: args.sha256.unwrap_or_default(),
            headers: args
                .headers
                .into_iter()
                .map(|(name, value)| HttpHeader { name, value })
                .collect(),
            max_bytes: args.max_bytes,
            overwrite: args.overwrite.unwrap_or(FetchOverwrite::Unspecified) as i32,
            method: method.unwrap_or_default(),
            body_file,
            retry_unsafe: args.retry_unsafe,
        })),
        ..common_spec(args.common)?
    })
}

/// The analyses that read per-file numbers, and so take `--renames`.
const RENAMES_ANALYSES: [&str; 3] = ["churn", "hotspots", "ownership"];

/// Builds the spec for `submit git`. A local REPO is made absolute here,
/// because only quernctl knows the cwd it is relative to; it is not
/// resolved further (symlinks stay), as the user named it. The daemon
/// checks the rest (that the path is a repository, the revisions, the
/// regex, the commit id) and is the authority on them.
fn git_spec(args: GitArgs) -> Result<JobSpec> {
    let repo = if is_git_url(&args.repo) {
        args.repo
    } else {
        absolute(Path::new(&args.repo), "REPO")?
    };

    // Each named analysis once, in the order given, then search and
    // contains; with none of them, summary, as the daemon would run.
    let mut names: Vec<String> = Vec::new();
    for name in args.analyses {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() && args.search.is_none() && args.contains.is_none() {
        names.push("summary".to_owned());
    }
    // Options that no chosen analysis takes would be silently ignored;
    // saying so now is kinder than a result that lacks what was asked.
    if args.top.is_some() && !names.iter().any(|n| n == "hotspots") {
        bail!("--top sets how many hotspots to keep; add --analysis hotspots, or leave --top out");
    }
    if args.renames && !names.iter().any(|n| RENAMES_ANALYSES.contains(&n.as_str())) {
        bail!(
            "--renames applies to the churn, hotspots and ownership analyses; add one with --analysis, or leave --renames out"
        );
    }
    let mut analyses: Vec<GitAnalysis> = names
        .into_iter()
        .map(|name| GitAnalysis {
            renames: args.renames && RENAMES_ANALYSES.contains(&name.as_str()),
            top: if name == "hotspots" {
                args.top.unwrap_or(0)
            } else {
                0
            },
            name,
            ..GitAnalysis::default()
        })
        .collect();
    if let Some(regex) = args.search {
        analyses.push(GitAnalysis {
            name: "search".to_owned(),
            regex,
            ..GitAnalysis::default()
        });
    }
    if let Some(commit) = args.contains {
        analyses.push(GitAnalysis {
            name: "contains".to_owned(),
            commit,
            ..GitAnalysis::default()
        });
    }

    Ok(JobSpec {
        kind: Some(job_spec::Kind::Git(GitSpec {
            repo,
            revs: args.revs,
            all: args.all,
            since: args.since.map(Into::into),
            until: args.until.map(Into::into),
            analyses,
        })),
        ..common_spec(args.common)?
    })
}

/// Whether a `submit git` REPO is a URL, to be sent as given, rather than a
/// local path: it has a scheme (`https://`, `file://`), or it is scp-like,
/// `user@host:path`, where an `@` comes before the first `:` and no `/`
/// does (so `./a@b:c` and `/srv/x:y` stay paths).
pub fn is_git_url(repo: &str) -> bool {
    if repo.contains("://") {
        return true;
    }
    match repo.split_once(':') {
        Some((before, _)) => before.contains('@') && !before.contains('/'),
        None => false,
    }
}

/// The file name a GET saves to without `--dest`: the URL's last path
/// segment, percent-decoded, as wget and `curl -O` take it. The query and
/// fragment play no part. A name that is not a plain file name (empty, as
/// for `https://host/dir/`, `.`, `..`, or with a `/` once decoded) is
/// refused rather than guessed at; the error says why.
pub fn dest_name(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|err| format!("the URL does not parse ({err})"))?;
    let segment = parsed
        .path_segments()
        .and_then(|mut segments| segments.next_back())
        .unwrap_or_default();
    let name = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| format!("its last path segment {segment:?} is not UTF-8 once decoded"))?;
    match name.as_ref() {
        "" => Err("the URL's path ends without a file name".to_owned()),
        "." | ".." => Err(format!("its last path segment is {name:?}")),
        n if n.contains('/') => Err(format!(
            "its last path segment {segment:?} decodes to {n:?}, which has a '/'"
        )),
        n if n.contains('\0') => Err(format!(
            "its last path segment {segment:?} decodes to a name with a NUL"
        )),
        n => Ok(n.to_owned()),
    }
}

/// `path` made absolute against the current directory, as a UTF-8 string.
fn absolute(path: &Path, flag: &str) -> Result<String> {
    let abs = std::path::absolute(path)
        .with_context(|| format!("cannot make {flag} {} absolute", path.display()))?;
    utf8_path(&abs, flag, flag)
}

/// The flags every kind takes, as a spec with no kind yet.
fn common_spec(args: CommonArgs) -> Result<JobSpec> {
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
        kind: None,
        priority,
        priority_name,
        labels: parse::into_map("--label", args.labels).map_err(|msg| anyhow!(msg))?,
        run_at,
        timeout,
        max_attempts: args.max_attempts.unwrap_or(0),
        idempotency_key: args.key.unwrap_or_default(),
    })
}

/// `path` as a string for the API, or an error naming `what` it is and the
/// `flag` to give it with.
pub fn utf8_path(path: &Path, what: &str, flag: &str) -> Result<String> {
    match path.to_str() {
        Some(text) => Ok(text.to_owned()),
        None => bail!(
            "{what} {} is not valid UTF-8, which the API cannot carry; pass {flag} with a UTF-8 path",
            PathBuf::from(path).display()
        ),
    }
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

    fn fetch_spec_of(flags: &[&str]) -> Result<JobSpec> {
        let line = ["quernctl", "submit", "fetch"].iter().chain(flags);
        let cli = Cli::try_parse_from(line).map_err(|err| anyhow!("{err}"))?;
        let Command::Submit {
            kind: SubmitKind::Fetch(args),
        } = cli.command
        else {
            panic!("not submit fetch");
        };
        fetch_spec(args)
    }

    fn fetch(spec: &JobSpec) -> &FetchSpec {
        match &spec.kind {
            Some(job_spec::Kind::Fetch(fetch)) => fetch,
            _ => panic!("not a fetch spec"),
        }
    }

    #[test]
    fn dest_names_are_the_decoded_last_segment() {
        let cases = [
            ("https://example.org/a/b/file.tar.gz", "file.tar.gz"),
            ("https://example.org/file.iso?token=abc&x=/y", "file.iso"),
            ("https://example.org/dl/report#page=2", "report"),
            ("http://127.0.0.1:8080/my%20file.txt", "my file.txt"),
            ("https://example.org/caf%C3%A9.txt", "caf\u{e9}.txt"),
            ("https://example.org/a/../b.txt", "b.txt"),
            ("https://example.org/%2E%2E.txt", "...txt"),
        ];
        for (url, want) in cases {
            assert_eq!(dest_name(url).as_deref(), Ok(want), "{url}");
        }
    }

    #[test]
    fn dest_names_that_are_not_plain_file_names_are_refused() {
        let cases = [
            ("https://example.org", "ends without a file name"),
            ("https://example.org/", "ends without a file name"),
            ("https://example.org/dir/", "ends without a file name"),
            (
                "https://example.org/dir/?name=x.txt",
                "ends without a file name",
            ),
            (
                "https://example.org/a%2Fb",
                "decodes to \"a/b\", which has a '/'",
            ),
            ("https://example.org/x/%2e", "ends without a file name"),
            ("https://example.org/x%00", "NUL"),
            ("https://example.org/%FF", "not UTF-8"),
        ];
        for (url, want) in cases {
            let err = dest_name(url).expect_err(url);
            assert!(err.contains(want), "{url}: {err}");
        }
    }

    #[test]
    fn a_get_without_dest_saves_to_the_url_name_in_the_current_directory() {
        let spec = fetch_spec_of(&["https://example.org/pub/data%201.csv?v=2"]).expect("spec");
        let want = std::env::current_dir().expect("cwd").join("data 1.csv");
        assert_eq!(Path::new(&fetch(&spec).dest), want);
        assert_eq!(fetch(&spec).method, "");
        assert_eq!(fetch(&spec).overwrite, FetchOverwrite::Unspecified as i32);
        assert_eq!(fetch(&spec).max_bytes, None);
    }

    #[test]
    fn a_get_without_a_usable_name_asks_for_dest() {
        let err = fetch_spec_of(&["https://example.org/dir/"]).expect_err("no name");
        assert_eq!(
            err.to_string(),
            "cannot name the file to save https://example.org/dir/ to: the URL's path ends without a file name; pass --dest PATH"
        );
        // With --dest, the same URL is fine.
        let spec = fetch_spec_of(&["--dest", "/tmp/index.html", "https://example.org/dir/"])
            .expect("spec");
        assert_eq!(fetch(&spec).dest, "/tmp/index.html");
    }

    #[test]
    fn another_method_without_dest_discards_the_body() {
        let spec = fetch_spec_of(&[
            "-X",
            "post",
            "--body-file",
            "payload.json",
            "https://example.org/hook/",
        ])
        .expect("spec");
        assert_eq!(fetch(&spec).method, "POST");
        assert_eq!(fetch(&spec).dest, "");
        let want = std::env::current_dir().expect("cwd").join("payload.json");
        assert_eq!(Path::new(&fetch(&spec).body_file), want);
    }

    #[test]
    fn relative_paths_are_made_absolute_against_the_current_directory() {
        let spec = fetch_spec_of(&["--dest", "out/f.bin", "https://example.org/f"]).expect("spec");
        let want = std::env::current_dir().expect("cwd").join("out/f.bin");
        assert_eq!(Path::new(&fetch(&spec).dest), want);
        assert!(Path::new(&fetch(&spec).dest).is_absolute());
    }

    #[test]
    fn fetch_flags_fill_the_spec() {
        let spec = fetch_spec_of(&[
            "--dest",
            "/srv/x.iso",
            "--sha256",
            "AB12",
            "--header",
            "Accept: application/json",
            "-H",
            "X-Token:  secret ",
            "--header",
            "Accept: text/plain",
            "--max-bytes",
            "10MiB",
            "--overwrite",
            "skip",
            "--retry-unsafe",
            "--priority",
            "high",
            "--label",
            "batch=7",
            "--max-attempts",
            "5",
            "--timeout",
            "10m",
            "--in",
            "1h",
            "--key",
            "iso",
            "https://example.org/x.iso",
        ])
        .expect("spec");
        let f = fetch(&spec);
        assert_eq!(f.url, "https://example.org/x.iso");
        assert_eq!(f.dest, "/srv/x.iso");
        // The daemon is the authority on the digest's form; it is sent as given.
        assert_eq!(f.sha256, "AB12");
        let headers: Vec<_> = f
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(
            headers,
            [
                ("Accept", "application/json"),
                ("X-Token", "secret"),
                ("Accept", "text/plain")
            ]
        );
        assert_eq!(f.max_bytes, Some(10 * 1024 * 1024));
        assert_eq!(f.overwrite, FetchOverwrite::Skip as i32);
        assert!(f.retry_unsafe);
        assert_eq!(spec.priority_name, "high");
        assert_eq!(spec.labels["batch"], "7");
        assert_eq!(spec.max_attempts, 5);
        assert_eq!(spec.timeout.map(|t| t.seconds), Some(600));
        assert!(spec.run_at.is_some());
        assert_eq!(spec.idempotency_key, "iso");
    }

    #[test]
    fn bad_fetch_flags_are_refused_naming_the_flag() {
        let cases = [
            (&["--max-bytes", "0", "https://e.org/f"][..], "--max-bytes"),
            (
                &["--max-bytes", "0", "https://e.org/f"][..],
                "limit of 0 bytes",
            ),
            (&["--header", "nocolon", "https://e.org/f"][..], "--header"),
            (
                &["--overwrite", "keep", "https://e.org/f"][..],
                "--overwrite",
            ),
            (&["ftp://e.org/f"][..], "scheme \"ftp\" is not supported"),
        ];
        for (flags, want) in cases {
            let err = fetch_spec_of(flags).expect_err("refused");
            assert!(err.to_string().contains(want), "{flags:?}: {err}");
        }
    }

    fn git_spec_of(flags: &[&str]) -> Result<JobSpec> {
        let line = ["quernctl", "submit", "git"].iter().chain(flags);
        let cli = Cli::try_parse_from(line).map_err(|err| anyhow!("{err}"))?;
        let Command::Submit {
            kind: SubmitKind::Git(args),
        } = cli.command
        else {
            panic!("not submit git");
        };
        git_spec(args)
    }

    fn git(spec: &JobSpec) -> &GitSpec {
        match &spec.kind {
            Some(job_spec::Kind::Git(git)) => git,
            _ => panic!("not a git spec"),
        }
    }

    fn names(spec: &JobSpec) -> Vec<&str> {
        git(spec).analyses.iter().map(|a| a.name.as_str()).collect()
    }

    #[test]
    fn a_git_repo_alone_runs_summary_on_head() {
        let spec = git_spec_of(&["/srv/repo.git"]).expect("spec");
        let g = git(&spec);
        assert_eq!(g.repo, "/srv/repo.git");
        assert!(g.revs.is_empty());
        assert!(!g.all);
        assert_eq!((g.since, g.until), (None, None));
        assert_eq!(
            g.analyses,
            [GitAnalysis {
                name: "summary".into(),
                ..GitAnalysis::default()
            }]
        );
        assert_eq!(spec.priority, 0);
        assert_eq!(spec.run_at, None);
    }

    #[test]
    fn a_relative_git_repo_is_made_absolute_but_not_resolved() {
        let cwd = std::env::current_dir().expect("cwd");
        for (repo, want) in [
            ("src/quern", cwd.join("src/quern")),
            (".", cwd.join(".")),
            ("../x/../y", cwd.join("../x/../y")),
            // A colon with no '@' before it is a path, as is an '@' after a
            // '/'.
            ("a:b", cwd.join("a:b")),
            ("./me@host:repo", cwd.join("./me@host:repo")),
        ] {
            let spec = git_spec_of(&[repo]).expect("spec");
            assert_eq!(Path::new(&git(&spec).repo), want, "{repo}");
            assert!(Path::new(&git(&spec).repo).is_absolute(), "{repo}");
        }
    }

    #[test]
    fn a_git_url_is_sent_as_given() {
        for url in [
            "https://github.com/rust-lang/log.git",
            "ssh://git@host:2222/srv/x.git",
            "git://host/x",
            "file:///srv/x.git",
            "git@github.com:rust-lang/log.git",
            "me@host:relative/path",
        ] {
            let spec = git_spec_of(&[url]).expect("spec");
            assert_eq!(git(&spec).repo, url);
        }
    }

    #[test]
    fn git_flags_fill_the_spec() {
        let spec = git_spec_of(&[
            "--rev",
            "main",
            "--rev",
            "v1.0",
            "--all",
            "--since",
            "2026-01-31",
            "--until",
            "2026-03-01T12:00:00Z",
            "--analysis",
            "hotspots,churn",
            "--analysis",
            "ownership",
            "--analysis",
            "coupling",
            "--analysis",
            "churn",
            "--top",
            "7",
            "--renames",
            "--priority",
            "low",
            "--label",
            "repo=quern",
            "--timeout",
            "5m",
            "--max-attempts",
            "2",
            "--at",
            "2030-01-01T00:00:00Z",
            "--key",
            "nightly-git",
            "/srv/r",
        ])
        .expect("spec");
        let g = git(&spec);
        assert_eq!(g.revs, ["main", "v1.0"]);
        assert!(g.all);
        assert_eq!(g.since.map(|t| t.seconds), Some(1_769_817_600));
        assert_eq!(g.until.map(|t| t.seconds), Some(1_772_366_400));
        let analysis = |name: &str, renames: bool, top: u32| GitAnalysis {
            name: name.into(),
            renames,
            top,
            ..GitAnalysis::default()
        };
        // In the order given, each once; renames only where it applies,
        // top only on hotspots.
        assert_eq!(
            g.analyses,
            [
                analysis("hotspots", true, 7),
                analysis("churn", true, 0),
                analysis("ownership", true, 0),
                analysis("coupling", false, 0),
            ]
        );
        assert_eq!(spec.priority_name, "low");
        assert_eq!(spec.labels["repo"], "quern");
        assert_eq!(spec.timeout.map(|t| t.seconds), Some(300));
        assert_eq!(spec.max_attempts, 2);
        assert_eq!(spec.run_at.map(|t| t.seconds), Some(1_893_456_000));
        assert_eq!(spec.idempotency_key, "nightly-git");
    }

    #[test]
    fn search_and_contains_add_their_analyses_instead_of_summary() {
        let spec = git_spec_of(&["--search", r"CVE-\d+|Fixes:", "/r"]).expect("spec");
        assert_eq!(names(&spec), ["search"]);
        assert_eq!(git(&spec).analyses[0].regex, r"CVE-\d+|Fixes:");

        let spec = git_spec_of(&["--contains", "1a2b3c4d", "/r"]).expect("spec");
        assert_eq!(names(&spec), ["contains"]);
        assert_eq!(git(&spec).analyses[0].commit, "1a2b3c4d");

        let spec = git_spec_of(&[
            "--analysis",
            "summary",
            "--contains",
            "1a2b",
            "--search",
            "x",
            "/r",
        ])
        .expect("spec");
        assert_eq!(names(&spec), ["summary", "search", "contains"]);
    }

    #[test]
    fn an_age_since_is_that_long_before_now() {
        let before = SystemTime::now();
        let spec = git_spec_of(&["--since", "2w", "/r"]).expect("spec");
        let since = SystemTime::try_from(git(&spec).since.expect("since")).expect("in range");
        let ago = before.duration_since(since).expect("in the past");
        let two_weeks = std::time::Duration::from_secs(14 * 86_400);
        assert!(
            ago >= two_weeks - std::time::Duration::from_secs(60),
            "{ago:?}"
        );
        assert!(ago <= two_weeks, "{ago:?}");
    }

    #[test]
    fn bad_git_flags_are_refused_naming_the_flag() {
        let cases = [
            (&["--since", "last tuesday", "/r"][..], "--since <DATE>"),
            (&["--until", "2026-02-30", "/r"][..], "--until <DATE>"),
            (&["--since", "soon", "/r"][..], "a date such as 2026-01-31"),
            (&["--analysis", "blame", "/r"][..], "--analysis <NAME>"),
            (
                &["--analysis", "search", "/r"][..],
                "possible values: summary",
            ),
            (&["--top", "5", "/r"][..], "--top sets how many hotspots"),
            (
                &["--renames", "--analysis", "coupling", "/r"][..],
                "--renames applies to the churn, hotspots and ownership",
            ),
            (
                &["--top", "many", "--analysis", "hotspots", "/r"][..],
                "--top <N>",
            ),
            (&[][..], "<REPO>"),
        ];
        for (flags, want) in cases {
            let err = git_spec_of(flags).expect_err("refused");
            assert!(err.to_string().contains(want), "{flags:?}: {err}");
        }
    }
}
