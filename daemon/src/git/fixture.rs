//! Fixture repositories for the git kind's tests: made with the `git`
//! binary, with fixed names, emails, dates and contents, so every number
//! an analysis gives can be written down exactly.

use std::path::Path;
use std::process::Command;

/// A repository in a temp dir.
pub struct Fixture {
    dir: tempfile::TempDir,
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

    /// The repository's work tree.
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
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(self.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", who.0)
            .env("GIT_AUTHOR_EMAIL", who.1)
            .env("GIT_COMMITTER_NAME", who.0)
            .env("GIT_COMMITTER_EMAIL", who.1);
        if let Some(t) = when {
            let date = format!("@{t} +0000");
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
        self.git_at(&["add", "-A"], Some(when), who);
        self.git_at(
            &["commit", "-q", "--allow-empty", "-m", message],
            Some(when),
            who,
        );
        self.git(&["rev-parse", "HEAD"])
    }
}

/// Clippy asks for `Default` beside an argument-free `new`; it is the same
/// empty repository.
impl Default for Fixture {
    fn default() -> Fixture {
        Fixture::new()
    }
}
