//! Mirrors of remote repositories, for git jobs whose repo is a URL: a
//! bare repository per normalised URL under `<state>/git/mirrors/`, with
//! every ref of the remote (`+refs/*:refs/*`), cloned on first use and
//! fetched incrementally afterwards.
//!
//! **A failed or cancelled first clone leaves no mirror behind**: it is
//! made in a temp dir beside the target and renamed into place only when
//! complete. **Jobs on one mirror are serialised** by an exclusive file
//! lock on `<key>.lock`, which also holds across processes; [`sync`]
//! returns it inside [`MirrorSync`], so the caller keeps it for the whole
//! sync-and-analyse and a fetch never moves refs under a running walk.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use gix::bstr::{BString, ByteSlice};
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

/// The schemes a mirror may be made from.
const SCHEMES: [&str; 5] = ["https", "http", "ssh", "git", "file"];

/// Why a mirror could not be made or brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("repository URL {url:?} {message}")]
    BadUrl { url: String, message: String },
    #[error("{op} {path} failed: {source}; check that the state dir is writable")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "locking mirror {path} failed: {errno}; check that the state dir is on a local file system"
    )]
    Lock { path: PathBuf, errno: Errno },
    #[error("fetching {url} failed: {message}; check the URL, the network and the credentials")]
    Fetch { url: String, message: String },
    #[error("mirror sync was cancelled")]
    Cancelled,
    #[error("{what} failed: {message}; remove the mirror {path} to have it cloned again")]
    Gix {
        what: String,
        path: PathBuf,
        message: String,
    },
}

/// Normalises a repository URL so that spellings of one remote share a
/// mirror: scheme and host lowercased, trailing `/` and `.git` removed.
/// Supported are https, http, ssh, git and file URLs, and scp-like
/// `user@host:path`; anything else names its scheme and the supported ones.
pub fn normalize_url(url: &str) -> Result<String, String> {
    normalize(url).map_err(|e| e.to_string())
}

fn normalize(url: &str) -> Result<String, MirrorError> {
    let bad = |message: String| MirrorError::BadUrl {
        url: url.to_string(),
        message,
    };
    let supported = "use https, http, ssh, git or file URLs, or user@host:path";
    let trimmed = url.trim();
    let strip_path = |path: &str| -> String {
        let p = path.trim_end_matches('/');
        let p = p.strip_suffix(".git").unwrap_or(p);
        p.trim_end_matches('/').to_string()
    };
    if let Some((scheme, rest)) = trimmed.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        if !SCHEMES.contains(&scheme.as_str()) {
            return Err(bad(format!(
                "has unsupported scheme {scheme:?}; {supported}"
            )));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        // The user part keeps its case; the host (and port) do not matter.
        let authority = match authority.rsplit_once('@') {
            Some((user, host)) => format!("{user}@{}", host.to_ascii_lowercase()),
            None => authority.to_ascii_lowercase(),
        };
        if authority.is_empty() && scheme != "file" {
            return Err(bad(format!("has no host; {supported}")));
        }
        let path = strip_path(path);
        if path.is_empty() {
            return Err(bad(
                "has no repository path; name the repository after the host".into(),
            ));
        }
        return Ok(format!("{scheme}://{authority}{path}"));
    }
    // scp-like: a host before the first ':', and no '/' before it.
    if let Some((host, path)) = trimmed.split_once(':')
        && !host.is_empty()
        && !host.contains('/')
        && !path.is_empty()
    {
        let host = match host.rsplit_once('@') {
            Some((user, h)) => format!("{user}@{}", h.to_ascii_lowercase()),
            None => host.to_ascii_lowercase(),
        };
        let path = strip_path(path);
        if path.is_empty() {
            return Err(bad(
                "has no repository path; name the repository after the host".into(),
            ));
        }
        return Ok(format!("{host}:{path}"));
    }
    Err(bad(format!("is not a URL; {supported}")))
}

/// A file-system-safe name for a normalised URL's mirror: a readable part
/// (host and path, other characters as `_`, at most 64 of them) and 24
/// hex digits of its sha256, which keeps URLs that read alike apart.
pub fn mirror_key(normalized: &str) -> String {
    let readable: String = normalized
        .split_once("://")
        .map_or(normalized, |(_, rest)| rest)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let digest = Sha256::digest(normalized.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", readable.trim_start_matches('.'))
}

/// The exclusive lock of one mirror; released when dropped. It is a
/// `flock`, so it holds between processes and between threads that open
/// the lock file separately.
#[derive(Debug)]
pub struct MirrorLock {
    _lock: Flock<File>,
}

impl MirrorLock {
    fn open(dir: &Path, key: &str) -> Result<(File, PathBuf), MirrorError> {
        std::fs::create_dir_all(dir).map_err(|source| MirrorError::Io {
            op: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(format!("{key}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| MirrorError::Io {
                op: "opening",
                path: path.clone(),
                source,
            })?;
        Ok((file, path))
    }

    /// Waits for the lock of mirror `key` under `dir`. The wait cannot be
    /// cancelled; it lasts as long as the holder's job, which can.
    pub fn acquire(dir: &Path, key: &str) -> Result<MirrorLock, MirrorError> {
        let (mut file, path) = MirrorLock::open(dir, key)?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(lock) => return Ok(MirrorLock { _lock: lock }),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, errno)) => return Err(MirrorError::Lock { path, errno }),
            }
        }
    }

    /// The lock if no one holds it, else `None`.
    pub fn try_acquire(dir: &Path, key: &str) -> Result<Option<MirrorLock>, MirrorError> {
        let (file, path) = MirrorLock::open(dir, key)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(MirrorLock { _lock: lock })),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(MirrorError::Lock { path, errno }),
        }
    }
}

/// A mirror brought up to date, and its lock: keep this until the
/// analysis of [`MirrorSync::path`] is done.
#[derive(Debug)]
pub struct MirrorSync {
    /// The bare repository.
    pub path: PathBuf,
    /// Whether this sync made the mirror (a first clone).
    pub cloned: bool,
    /// Objects received: all of them on a clone, the new ones after.
    pub objects: u64,
    /// Refs created, moved or deleted.
    pub refs: u64,
    /// Held for as long as the caller holds this.
    pub lock: MirrorLock,
}

/// Removes a first clone's temp dir unless it was renamed into place.
struct TempClone(Option<PathBuf>);

impl Drop for TempClone {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // Best effort: a leftover is removed by the next sync of the
            // same mirror, under its lock.
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Brings the mirror of `url` under `dir` up to date: a bare clone of all
/// its refs on first use, an incremental fetch afterwards (refs the remote
/// no longer has are deleted, and `HEAD` follows the remote's). Waits for
/// the mirror's lock first and returns it held.
///
/// The first clone and later fetches share one path, an init plus a fetch
/// with the mirror refspec, rather than gix's clone, so both count objects
/// and refs, prune and set `HEAD` the same way.
pub fn sync(dir: &Path, url: &str, cancel: &AtomicBool) -> Result<MirrorSync, MirrorError> {
    let normalized = normalize(url)?;
    let key = mirror_key(&normalized);
    let lock = MirrorLock::acquire(dir, &key)?;
    if cancel.load(Ordering::Relaxed) {
        return Err(MirrorError::Cancelled);
    }
    let target = dir.join(format!("{key}.git"));
    remove_stale_temps(dir, &key)?;

    if target.exists() {
        let repo = open(&target)?;
        let (objects, refs) = fetch(&repo, &target, url.trim(), cancel)?;
        return Ok(MirrorSync {
            path: target,
            cloned: false,
            objects,
            refs,
            lock,
        });
    }

    let temp = dir.join(format!(
        "{key}.git.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut guard = TempClone(Some(temp.clone()));
    let repo = gix::init_bare(&temp).map_err(|e| MirrorError::Gix {
        what: format!("creating a bare repository at {}", temp.display()),
        path: temp.clone(),
        message: format!("{e:#}"),
    })?;
    let (objects, refs) = fetch(&repo, &temp, url.trim(), cancel)?;
    drop(repo);
    std::fs::rename(&temp, &target).map_err(|source| MirrorError::Io {
        op: "renaming the new mirror into",
        path: target.clone(),
        source,
    })?;
    // In place: nothing left to remove.
    guard.0 = None;
    Ok(MirrorSync {
        path: target,
        cloned: true,
        objects,
        refs,
        lock,
    })
}

/// Temp dirs of first clones that a crash left; only called with the
/// mirror's lock held, so none of them is in use.
fn remove_stale_temps(dir: &Path, key: &str) -> Result<(), MirrorError> {
    let prefix = format!("{key}.git.tmp-");
    let entries = std::fs::read_dir(dir).map_err(|source| MirrorError::Io {
        op: "listing",
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

fn open(path: &Path) -> Result<gix::Repository, MirrorError> {
    gix::open(path).map_err(|e| MirrorError::Gix {
        what: format!("opening mirror {}", path.display()),
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    })
}

/// Fetches every ref of `url` into `repo` (`+refs/*:refs/*`), deletes the
/// refs the remote no longer has, and points `HEAD` where the remote's
/// does. Returns the objects received and the refs changed.
fn fetch(
    repo: &gix::Repository,
    path: &Path,
    url: &str,
    cancel: &AtomicBool,
) -> Result<(u64, u64), MirrorError> {
    use gix::remote::{Direction, fetch::Status, fetch::Tags, ref_map};
    let failed = |e: gix::Error| {
        if cancel.load(Ordering::Relaxed) {
            MirrorError::Cancelled
        } else {
            MirrorError::Fetch {
                url: url.to_string(),
                message: format!("{e:#}"),
            }
        }
    };
    if cancel.load(Ordering::Relaxed) {
        return Err(MirrorError::Cancelled);
    }
    let remote = repo
        .remote_at(url)
        .map_err(failed)?
        // Tags come with refs/*; the implicit tag refspec would repeat them.
        .with_fetch_tags(Tags::None)
        .with_refspecs(Some("+refs/*:refs/*"), Direction::Fetch)
        .map_err(failed)?;
    let outcome = remote
        .connect(Direction::Fetch)
        .map_err(failed)?
        .prepare_fetch(
            gix::progress::Discard,
            // Unfiltered, so the remote also lists HEAD and every ref,
            // which pruning and HEAD need.
            ref_map::Options {
                prefix_from_spec_as_filter_on_remote: false,
                ..Default::default()
            },
        )
        .map_err(failed)?
        .receive(gix::progress::Discard, cancel)
        .map_err(failed)?;

    let (objects, update_refs) = match &outcome.status {
        Status::Change {
            write_pack_bundle,
            update_refs,
            ..
        } => (u64::from(write_pack_bundle.index.num_objects), update_refs),
        Status::NoPackReceived { update_refs, .. } => (0, update_refs),
    };
    use gix::remote::fetch::refs::update::Mode;
    let mut refs = update_refs
        .updates
        .iter()
        .filter(|u| matches!(u.mode, Mode::FastForward | Mode::Forced | Mode::New))
        .count() as u64;

    let gix_failed = |what: &str| {
        let what = what.to_string();
        move |e: gix::Error| MirrorError::Gix {
            what,
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        }
    };
    let mut remote_names = std::collections::HashSet::<BString>::new();
    let mut head = None;
    for r in &outcome.ref_map.remote_refs {
        use gix::protocol::handshake::Ref;
        let (name, target) = match r {
            Ref::Peeled { full_ref_name, .. } | Ref::Direct { full_ref_name, .. } => {
                (full_ref_name, None)
            }
            Ref::Symbolic {
                full_ref_name,
                target,
                ..
            }
            | Ref::Unborn {
                full_ref_name,
                target,
            } => (full_ref_name, Some(target)),
        };
        if name == "HEAD" {
            head = target.cloned();
        } else {
            remote_names.insert(name.clone());
        }
    }
    let mut edits = Vec::new();
    let local = repo
        .references()
        .map_err(gix_failed("listing the mirror's refs"))?;
    for r in local
        .all()
        .map_err(gix_failed("listing the mirror's refs"))?
    {
        let r = r.map_err(gix_failed("reading the mirror's refs"))?;
        let name = r.name().as_bstr();
        if name.starts_with_str("refs/") && !remote_names.contains(name) {
            edits.push(RefEdit {
                change: Change::Delete {
                    expected: PreviousValue::Any,
                    log: RefLog::AndReference,
                },
                name: r.name().to_owned(),
                deref: false,
            });
        }
    }
    refs += edits.len() as u64;
    if let Some(target) = head
        && let Ok(target) = gix::refs::FullName::try_from(target)
    {
        let head_name = gix::refs::FullName::try_from("HEAD").map_err(|e| MirrorError::Gix {
            what: "naming HEAD".into(),
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        edits.push(RefEdit {
            change: Change::Update {
                log: LogChange::default(),
                expected: PreviousValue::Any,
                new: gix::refs::Target::Symbolic(target),
            },
            name: head_name,
            deref: false,
        });
    }
    if !edits.is_empty() {
        repo.edit_references(edits)
            .map_err(gix_failed("pruning the mirror's refs"))?;
    }
    Ok((objects, refs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::fixture::Fixture;
    use std::sync::{Arc, Mutex, mpsc};
    use std::time::Duration;

    const ANN: (&str, &str) = ("Ann", "ann@example.org");

    #[test]
    fn urls_normalise_to_one_spelling() {
        let same = [
            "https://GitHub.com/owner/repo.git",
            "https://github.com/owner/repo/",
            "HTTPS://github.com/owner/repo.git/",
        ];
        for u in same {
            assert_eq!(
                normalize_url(u).unwrap(),
                "https://github.com/owner/repo",
                "{u}"
            );
        }
        assert_eq!(
            normalize_url("ssh://Git@Example.ORG:2222/srv/r.git").unwrap(),
            "ssh://Git@example.org:2222/srv/r"
        );
        assert_eq!(
            normalize_url("git@GitHub.com:owner/repo.git").unwrap(),
            "git@github.com:owner/repo"
        );
        assert_eq!(
            normalize_url("file:///srv/git/r.git").unwrap(),
            "file:///srv/git/r"
        );
        assert_eq!(normalize_url("git://host/r").unwrap(), "git://host/r");
    }

    #[test]
    fn bad_urls_name_the_problem() {
        assert_eq!(
            normalize_url("ftp://host/r").unwrap_err(),
            "repository URL \"ftp://host/r\" has unsupported scheme \"ftp\"; use https, http, ssh, git or file URLs, or user@host:path"
        );
        assert_eq!(
            normalize_url("/srv/r").unwrap_err(),
            "repository URL \"/srv/r\" is not a URL; use https, http, ssh, git or file URLs, or user@host:path"
        );
        assert_eq!(
            normalize_url("https:///r").unwrap_err(),
            "repository URL \"https:///r\" has no host; use https, http, ssh, git or file URLs, or user@host:path"
        );
        assert_eq!(
            normalize_url("https://host/.git").unwrap_err(),
            "repository URL \"https://host/.git\" has no repository path; name the repository after the host"
        );
    }

    #[test]
    fn keys_are_safe_readable_and_distinct() {
        let a = mirror_key("https://github.com/owner/repo");
        assert_eq!(a.len(), "github.com_owner_repo-".len() + 24);
        assert!(a.starts_with("github.com_owner_repo-"), "{a}");
        // Reads the same once unsafe characters become '_', yet differs.
        let b = mirror_key("https://github.com/owner_repo");
        assert!(b.starts_with("github.com_owner_repo-"), "{b}");
        assert_ne!(a, b);
        let odd = mirror_key("ssh://u@h/../../etc/passwd");
        assert!(!odd.contains('/') && !odd.starts_with('.'), "{odd}");
    }

    fn url_of(f: &Fixture) -> String {
        format!("file://{}", f.path().display())
    }

    fn refs_of(repo: &Path) -> String {
        let out = std::process::Command::new("git")
            .args(["for-each-ref", "--format=%(refname) %(objectname)"])
            .current_dir(repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn a_mirror_is_cloned_then_fetched_incrementally() {
        let origin = Fixture::new();
        origin.commit(1_000, ANN, "one\n", &[("a", Some(b"1\n"))]);
        origin.commit(2_000, ANN, "two\n", &[("b", Some(b"2\n"))]);
        origin.git(&["tag", "-a", "-m", "t", "v1"]);
        origin.git(&["branch", "side"]);
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("git/mirrors");
        let cancel = AtomicBool::new(false);

        // Two commits, two trees, two blobs and a tag object; main, side
        // and v1.
        let first = sync(&dir, &url_of(&origin), &cancel).unwrap();
        assert!(first.cloned);
        assert_eq!((first.objects, first.refs), (7, 3));
        assert_eq!(refs_of(&first.path), refs_of(origin.path()));
        let head = std::fs::read_to_string(first.path.join("HEAD")).unwrap();
        assert_eq!(head.trim(), "ref: refs/heads/main");
        let path = first.path.clone();
        drop(first);

        // One new commit (commit, tree, blob), a deleted branch: the
        // fetch receives only what is new.
        let three = origin.commit(3_000, ANN, "three\n", &[("c", Some(b"3\n"))]);
        origin.git(&["branch", "-D", "side"]);
        let second = sync(&dir, &url_of(&origin), &cancel).unwrap();
        assert!(!second.cloned);
        assert_eq!(second.path, path);
        assert_eq!((second.objects, second.refs), (3, 2));
        assert_eq!(refs_of(&second.path), refs_of(origin.path()));
        let repo = gix::open(&second.path).unwrap();
        assert_eq!(repo.rev_parse_single("main").unwrap().to_string(), three);
        drop(second);

        let third = sync(&dir, &url_of(&origin), &cancel).unwrap();
        assert_eq!((third.cloned, third.objects, third.refs), (false, 0, 0));
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_failed_or_cancelled_clone_leaves_no_mirror() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("mirrors");
        let missing = state.path().join("no-such-repo");
        let url = format!("file://{}", missing.display());
        let err = sync(&dir, &url, &AtomicBool::new(false)).unwrap_err();
        assert!(matches!(err, MirrorError::Fetch { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("fetching {url} failed: ")),
            "{err}"
        );
        // Only the lock file stays: it must outlive holders to be a lock.
        let key = mirror_key(&normalize_url(&url).unwrap());
        assert_eq!(listing(&dir), vec![format!("{key}.lock")]);

        let origin = Fixture::new();
        origin.commit(1_000, ANN, "one\n", &[("a", Some(b"1\n"))]);
        let err = sync(&dir, &url_of(&origin), &AtomicBool::new(true)).unwrap_err();
        assert!(matches!(err, MirrorError::Cancelled), "{err}");
        let key2 = mirror_key(&normalize_url(&url_of(&origin)).unwrap());
        let mut want = vec![format!("{key}.lock"), format!("{key2}.lock")];
        want.sort();
        assert_eq!(listing(&dir), want);
    }

    /// A loopback smart-HTTP server that advertises one branch, answers
    /// the fetch with a NAK and then only with progress messages, one
    /// every 20 ms for at most 10 s, as a server slow to pack would.
    /// `fetching` hears when the pack is asked for.
    fn slow_server(fetching: mpsc::Sender<()>) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/slow.git", listener.local_addr().unwrap());
        let pkt = |s: &str| format!("{:04x}{s}", s.len() + 4);
        std::thread::spawn(move || {
            // Each response closes its connection, so each request comes
            // on a connection of its own: the advertisement, then the fetch.
            for stream in listener.incoming().take(2) {
                let mut stream = stream.unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let id = "1".repeat(40);
                if head.starts_with(b"GET") {
                    let body = [
                        pkt("# service=git-upload-pack\n"),
                        "0000".into(),
                        pkt(&format!("{id} HEAD\0multi_ack_detailed side-band-64k ofs-delta symref=HEAD:refs/heads/main\n")),
                        pkt(&format!("{id} refs/heads/main\n")),
                        "0000".into(),
                    ]
                    .concat();
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\nCache-Control: no-cache\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    continue;
                }
                let _ = fetching.send(());
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-result\r\nConnection: close\r\n\r\n{}",
                    pkt("NAK\n")
                );
                for n in 0..500 {
                    let progress = pkt(&format!("\x02Counting objects: {n}\r"));
                    if stream.write_all(progress.as_bytes()).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        url
    }

    #[test]
    fn a_cancel_in_the_middle_of_a_clone_stops_it_and_leaves_no_mirror() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("mirrors");
        let (fetching, asked) = mpsc::channel();
        let url = slow_server(fetching);
        let cancel = Arc::new(AtomicBool::new(false));
        let (ended, end) = mpsc::channel();
        std::thread::spawn({
            let (dir, url, cancel) = (dir.clone(), url.clone(), cancel.clone());
            move || {
                let _ = ended.send(sync(&dir, &url, &cancel).map(|m| m.path));
            }
        });
        if asked.recv_timeout(Duration::from_secs(10)).is_err() {
            panic!("the clone did not ask for the pack: {:?}", end.try_recv());
        }
        // Receiving now, into its temp dir.
        let key = mirror_key(&normalize_url(&url).unwrap());
        assert!(
            listing(&dir)
                .iter()
                .any(|n| n.starts_with(&format!("{key}.git.tmp-"))),
            "{:?}",
            listing(&dir)
        );
        cancel.store(true, Ordering::Relaxed);
        let result = end
            .recv_timeout(Duration::from_secs(2))
            .expect("the clone stops within 2 s of the cancel");
        assert!(matches!(result, Err(MirrorError::Cancelled)), "{result:?}");
        assert_eq!(listing(&dir), vec![format!("{key}.lock")]);
    }

    #[test]
    fn the_lock_serialises_its_holders() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().to_path_buf();
        let log = Arc::new(Mutex::new(Vec::new()));
        let first = MirrorLock::acquire(&dir, "k").unwrap();
        let (tried, waiting) = mpsc::channel();
        let second = std::thread::spawn({
            let (dir, log) = (dir.clone(), log.clone());
            move || {
                // Held elsewhere: the non-blocking attempt fails...
                let busy = MirrorLock::try_acquire(&dir, "k").unwrap().is_none();
                log.lock()
                    .unwrap()
                    .push(format!("second sees busy: {busy}"));
                tried.send(()).unwrap();
                // ...and the blocking one returns only after the release.
                let _held = MirrorLock::acquire(&dir, "k").unwrap();
                log.lock().unwrap().push("second holds".to_string());
            }
        });
        waiting.recv().unwrap();
        log.lock().unwrap().push("first releases".to_string());
        drop(first);
        second.join().unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            vec!["second sees busy: true", "first releases", "second holds"]
        );
        // Another key is another lock.
        assert!(MirrorLock::try_acquire(&dir, "other").unwrap().is_some());
    }
}
