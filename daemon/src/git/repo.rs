//! Opening a local repository for the analyses, and the one error type of
//! the git kind's library code ([`GitError`]).

use std::path::{Path, PathBuf};

use gix::ObjectId;

/// What went wrong reading a repository. Each message names the thing
/// (path, revision, commit, object) and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(
        "{} is not a git repository ({detail}); pass the path of a work tree's top directory or of a bare repository",
        path.display()
    )]
    NotARepository { path: PathBuf, detail: String },
    #[error("revision {rev} is not in the repository at {} ({detail}); pass a branch, tag or commit id that it has", repo.display())]
    UnknownRevision {
        repo: PathBuf,
        rev: String,
        detail: String,
    },
    #[error("revision {rev} names a {kind}, not a commit; pass a branch, tag or commit id")]
    NotACommit { rev: String, kind: String },
    #[error(
        "the repository at {} has no commits yet (HEAD is unborn); commit something, or pass a revision or --all",
        repo.display()
    )]
    Unborn { repo: PathBuf },
    #[error("could not list the branches and tags of {}: {detail}; check the repository with `git fsck`", repo.display())]
    References { repo: PathBuf, detail: String },
    #[error(
        "could not read {what} {id}: {detail}; the repository may be damaged or shallow, check it with `git fsck`"
    )]
    Object {
        what: &'static str,
        id: ObjectId,
        detail: String,
    },
    #[error(
        "could not read the .gitattributes of {}: {detail}; fix or remove the file it names",
        repo.display()
    )]
    Attributes { repo: PathBuf, detail: String },
    #[error("could not diff commit {commit}: {detail}; check the repository with `git fsck`")]
    Diff { commit: ObjectId, detail: String },
    #[error("cancelled")]
    Cancelled,
}

/// Opens the repository at `path` read-only, in place: `path` must be the
/// top of a work tree (holding `.git`) or a bare repository. Nothing above
/// `path` is searched, because a job names its repository exactly and must
/// not silently analyse an enclosing one. The user's global and system
/// config are not read, so the analyses give the same numbers whoever runs
/// quernd; the repository's own config (its `mailmap.*`) still applies.
pub fn open_local(path: &Path) -> Result<gix::Repository, GitError> {
    let not_repo = |detail: String| GitError::NotARepository {
        path: path.to_path_buf(),
        detail,
    };
    if !path.is_dir() {
        return Err(not_repo("no such directory".into()));
    }
    let mut repo = gix::open_opts(path, gix::open::Options::isolated())
        .map_err(|e| not_repo(e.to_string()))?;
    // A tree or blob is often read twice in a row (a commit's new side is its
    // child's old side), so a small cache pays for itself.
    repo.object_cache_size_if_unset(8 * 1024 * 1024);
    Ok(repo)
}

/// The index files of the repository's packs (`objects/pack/*.idx`), in
/// name order; none when the directory does not read.
pub(crate) fn pack_indices(repo: &gix::Repository) -> Vec<PathBuf> {
    let dir = repo.objects.store_ref().path().join("pack");
    let mut idx: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    idx.sort();
    idx
}

/// Reads object `id`'s data into `buf`, naming it as `what` in the error.
pub(crate) fn read_object<'b>(
    repo: &gix::Repository,
    id: &gix::oid,
    what: &'static str,
    buf: &'b mut Vec<u8>,
) -> Result<gix::objs::Data<'b>, GitError> {
    use gix::objs::Find;
    match repo.objects.try_find(id, buf) {
        Ok(Some(data)) => Ok(data),
        Ok(None) => Err(GitError::Object {
            what,
            id: id.to_owned(),
            detail: "it is missing".into(),
        }),
        Err(e) => Err(GitError::Object {
            what,
            id: id.to_owned(),
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::fixture::Fixture;

    #[test]
    fn opens_a_work_tree_and_a_bare_repository() {
        let f = Fixture::new();
        let id = f.commit(
            1_700_000_000,
            ("A", "a@example.org"),
            "one",
            &[("a", Some(b"x\n"))],
        );
        let repo = open_local(f.path()).expect("work tree opens");
        assert_eq!(repo.head_id().expect("head").to_string(), id);
        let bare = tempfile::tempdir().expect("temp dir");
        let out = std::process::Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(f.path())
            .arg(bare.path().join("b.git"))
            .output()
            .expect("git runs");
        assert!(out.status.success());
        let repo = open_local(&bare.path().join("b.git")).expect("bare opens");
        assert!(repo.workdir().is_none());
        assert_eq!(repo.head_id().expect("head").to_string(), id);
    }

    #[test]
    fn a_directory_inside_a_work_tree_is_not_a_repository() {
        let f = Fixture::new();
        f.commit(
            1_700_000_000,
            ("A", "a@example.org"),
            "one",
            &[("sub/a", Some(b"x\n"))],
        );
        let sub = f.path().join("sub");
        let err = open_local(&sub).expect_err("no upward discovery");
        let msg = err.to_string();
        assert!(matches!(err, GitError::NotARepository { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!("{} is not a git repository", sub.display())),
            "{msg}"
        );
        let missing = f.path().join("nope");
        let msg = open_local(&missing).expect_err("missing dir").to_string();
        assert!(
            msg.starts_with(&format!(
                "{} is not a git repository (no such directory)",
                missing.display()
            )),
            "{msg}"
        );
    }
}
