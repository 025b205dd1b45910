//! Fixture repositories for the git kind's tests: made with the `git`
//! binary, with fixed names, emails, dates and contents, so every number
//! an analysis gives can be written down exactly.

use std::path::Path;
use std::process::Command;

/// A repository in a temp dir.
pub struct Fixture {
    dir: tempfile::TempDir,
}

impl Default for Fixture {
    fn default() -> Fixture {
        Fixture::new()
    }
}

impl Fixture {
    /// An empty repository whose first branch is `main`.
    pub fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        f.git(&["init", "-q", "-b", "main"]);
        f
    }

    /// A bare clone of this repository, in a temp dir of its own.
    pub fn bare_clone(&self) -> Fixture {
        let bare = Fixture {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let into = bare.path().to_string_lossy().into_owned();
        let from = self.path().to_string_lossy().into_owned();
        bare.git(&["clone", "-q", "--bare", &from, &into]);
        bare
    }

    /// The repository's work tree (a bare repository's directory).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs git in the repository with no user or system config, and
    /// returns its stdout, trimmed. Panics if git fails.
    pub fn git(&self, args: &[&str]) -> String {
        self.git_at(args, None, ("Fixture", "fixture@example.org"))
    }

    /// [`Fixture::git`] with author and committer `who` at `when` (seconds
    /// since the epoch, UTC).
    pub fn git_at(&self, args: &[&str], when: Option<i64>, who: (&str, &str)) -> String {
        self.git_tz(args, when.map(|t| (t, "+0000")), who)
    }

    /// [`Fixture::git_at`] in time zone `tz` ("+0900").
    pub fn git_tz(&self, args: &[&str], when: Option<(i64, &str)>, who: (&str, &str)) -> String {
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(self.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", who.0)
            .env("GIT_AUTHOR_EMAIL", who.1)
            .env("GIT_COMMITTER_NAME", who.0)
            .env("GIT_COMMITTER_EMAIL", who.1);
        if let Some((t, tz)) = when {
            let date = format!("@{t} {tz}");
            cmd.env("GIT_AUTHOR_DATE", &date)
                .env("GIT_COMMITTER_DATE", &date);
        }
        let out = cmd.output().expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("git prints UTF-8")
            .trim()
            .to_string()
    }

    /// Writes (`Some`) or deletes (`None`) each file, stages everything and
    /// commits as `who` at `when` with `message`. Returns the commit's id.
    pub fn commit(
        &self,
        when: i64,
        who: (&str, &str),
        message: &str,
        files: &[(&str, Option<&[u8]>)],
    ) -> String {
        self.commit_tz(when, "+0000", who, message, files)
    }

    /// [`Fixture::commit`] in time zone `tz` ("+0900").
    pub fn commit_tz(
        &self,
        when: i64,
        tz: &str,
        who: (&str, &str),
        message: &str,
        files: &[(&str, Option<&[u8]>)],
    ) -> String {
        for (path, content) in files {
            let p = self.path().join(path);
            match content {
                Some(bytes) => {
                    if let Some(dir) = p.parent() {
                        std::fs::create_dir_all(dir).expect("mkdir");
                    }
                    std::fs::write(&p, bytes).expect("write");
                }
                None => std::fs::remove_file(&p).expect("remove"),
            }
        }
        self.git_tz(&["add", "-A"], Some((when, tz)), who);
        self.git_tz(
            &["commit", "-q", "--allow-empty", "-m", message],
            Some((when, tz)),
            who,
        );
        self.git(&["rev-parse", "HEAD"])
    }

    /// Feeds `stream` to `git fast-import` and checks out `main`.
    pub fn fast_import(&self, stream: &str) {
        use std::io::Write;
        let mut child = Command::new("git")
            .args(["fast-import", "--quiet"])
            .current_dir(self.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("git fast-import runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stream.as_bytes())
            .expect("stream written");
        assert!(child.wait().expect("fast-import ends").success());
        self.git(&["checkout", "-q", "-f", "main"]);
    }

    /// `git log --numstat` of `args` (e.g. `["--no-renames", "HEAD"]`), as
    /// per path: (revisions, lines added, lines removed), a binary file's
    /// `-` counting a revision and no lines.
    pub fn git_numstat(
        &self,
        args: &[&str],
    ) -> std::collections::BTreeMap<String, (u64, u64, u64)> {
        let mut full = vec!["log", "--numstat", "--format=%x00%H"];
        full.extend_from_slice(args);
        let out = self.git(&full);
        let mut by_path = std::collections::BTreeMap::new();
        for line in out.lines().filter(|l| l.contains('\t')) {
            let mut parts = line.splitn(3, '\t');
            let (a, r, path) = (
                parts.next().expect("added"),
                parts.next().expect("removed"),
                parts.next().expect("path"),
            );
            let e: &mut (u64, u64, u64) = by_path.entry(path.to_string()).or_default();
            e.0 += 1;
            e.1 += a.parse::<u64>().unwrap_or(0);
            e.2 += r.parse::<u64>().unwrap_or(0);
        }
        by_path
    }
}

/// Alice, Bob (who also committed as `bob@old.example`, which `.mailmap`
/// maps to him) and Carol.
pub const ALICE: (&str, &str) = ("Alice", "alice@example.org");
pub const BOB: (&str, &str) = ("Bob", "bob@example.org");
pub const OLD_BOB: (&str, &str) = ("bob", "bob@old.example");
pub const CAROL: (&str, &str) = ("Carol", "carol@example.org");

/// 2024-01-01 00:00:00 UTC, a Monday.
pub const JAN_1_2024: i64 = 1_704_067_200;
const DAY: i64 = 86_400;

/// The shared history fixture, on `main` (each commit's numstat as
/// `git log --numstat --no-renames` prints it):
///
/// 1. Alice, Mon 2024-01-01: adds `.mailmap` (1 0), `a.txt` (3 0),
///    `b.txt` (1 0).
/// 2. old Bob, Tue 2024-01-02: `a.txt` (2 1), `b.txt` (1 0).
/// 3. Carol, Wed 2024-01-03 20:00 UTC in +0900 (Thu 05:00 for her):
///    adds `img.bin` (binary) and `c.txt` (1 0).
/// 4. Bob, Mon 2024-02-05, on branch `side` from 3: `a.txt` (1 1),
///    `b.txt` (1 0).
/// 5. Alice, Tue 2024-02-06, on `main` from 3: `c.txt` (1 0), `img.bin`
///    (binary).
/// 6. Alice, Wed 2024-02-07: merges `side` (no numstat).
/// 7. Bob, Fri 2024-03-01: renames `c.txt` to `d.txt` unchanged: `c.txt`
///    (0 2), `d.txt` (2 0); with renames, `d.txt` (0 0).
/// 8. Alice, Sat 2024-03-02: `a.txt` loses its final newline (1 1),
///    `b.txt` (1 0).
pub fn history() -> Fixture {
    let f = Fixture::new();
    let mailmap: &[u8] = b"Bob <bob@example.org> <bob@old.example>\n";
    let bin1: &[u8] = &[0x89, b'P', b'N', b'G', 0, 1, 2, 3, b'\n', 4];
    let bin2: &[u8] = &[0x89, b'P', b'N', b'G', 0, 9, 9, b'\n'];
    f.commit(
        JAN_1_2024 + 10 * 3600,
        ALICE,
        "start",
        &[
            (".mailmap", Some(mailmap)),
            ("a.txt", Some(b"1\n2\n3\n")),
            ("b.txt", Some(b"x\n")),
        ],
    );
    f.commit(
        JAN_1_2024 + DAY + 11 * 3600,
        OLD_BOB,
        "more",
        &[
            ("a.txt", Some(b"1\n2\nthree\n4\n")),
            ("b.txt", Some(b"x\ny\n")),
        ],
    );
    f.commit_tz(
        JAN_1_2024 + 2 * DAY + 20 * 3600,
        "+0900",
        CAROL,
        "image",
        &[("img.bin", Some(bin1)), ("c.txt", Some(b"c\n"))],
    );
    f.git(&["checkout", "-q", "-b", "side"]);
    f.commit(
        JAN_1_2024 + 35 * DAY + 9 * 3600,
        BOB,
        "side work",
        &[
            ("a.txt", Some(b"one\n2\nthree\n4\n")),
            ("b.txt", Some(b"x\ny\nz\n")),
        ],
    );
    f.git(&["checkout", "-q", "main"]);
    f.commit(
        JAN_1_2024 + 36 * DAY + 9 * 3600,
        ALICE,
        "main work",
        &[("c.txt", Some(b"c\nd\n")), ("img.bin", Some(bin2))],
    );
    f.git_at(
        &["merge", "-q", "--no-ff", "-m", "merge side", "side"],
        Some(JAN_1_2024 + 37 * DAY + 9 * 3600),
        ALICE,
    );
    f.git_at(&["mv", "c.txt", "d.txt"], None, BOB);
    f.commit(JAN_1_2024 + 60 * DAY + 9 * 3600, BOB, "rename", &[]);
    f.commit(
        JAN_1_2024 + 61 * DAY + 9 * 3600,
        ALICE,
        "no newline",
        &[
            ("a.txt", Some(b"one\n2\nthree\n4")),
            ("b.txt", Some(b"x\ny\nz\nw\n")),
        ],
    );
    f
}
