//! The per-commit numstat cache: a re-analysis after new commits diffs
//! only the new ones. One file per repository and set of options that
//! change a numstat (`ChurnOptions`), under `<state>/git/cache/<repo key>/`,
//! holding every commit's files with lines added and removed.
//!
//! A file, not the store: a kind never touches the store (see `runner`),
//! and the cache is only ever a shortcut: a missing or damaged file means
//! the commits are diffed again. It is written whole, to a temp file
//! renamed over the old one, so a crash leaves the old or the new.
//!
//! Retention: a repository's directory is touched each time a job uses
//! it, and [`prune`] removes those no job has used for the retention age.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use gix::ObjectId;
use sha2::{Digest, Sha256};

use super::numstat::FileStat;
use crate::job::git::ChurnOptions;

/// The cache's format, in its file's name: a new format starts afresh.
const FORMAT: u32 = 1;

/// One stored commit: its id and files (path, added, removed, binary).
type Stored = (String, Vec<(String, u64, u64, bool)>);

/// [`Stored`] as it is written, borrowing the paths.
type StoredRef<'a> = (String, Vec<(&'a str, u64, u64, bool)>);

/// The numstats of one repository under one set of options.
pub struct NumstatCache {
    path: PathBuf,
    map: HashMap<ObjectId, Vec<FileStat>>,
    added: usize,
}

/// The key of a repository's cache: its mirror's key, or for a local
/// path a hash of the path.
pub fn repo_key(repo: &str, mirror_key: Option<&str>) -> String {
    match mirror_key {
        Some(k) => k.to_string(),
        None => {
            let digest = Sha256::digest(repo.as_bytes());
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("local-{hex}")
        }
    }
}

impl NumstatCache {
    /// The cache of `key` under `dir` for `opts`; empty when there is none
    /// or it does not read. Marks the repository as used now.
    pub fn load(dir: &Path, key: &str, opts: ChurnOptions) -> NumstatCache {
        let repo_dir = dir.join(key);
        let _ = std::fs::create_dir_all(&repo_dir);
        // Touched: used now, for `prune`.
        let _ = std::fs::File::open(&repo_dir).and_then(|f| f.set_modified(SystemTime::now()));
        let path = repo_dir.join(format!(
            "numstat-v{FORMAT}-renames-{}.json",
            u8::from(opts.renames)
        ));
        let map = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Vec<Stored>>(&bytes).ok())
            .map(|stored| {
                stored
                    .into_iter()
                    .filter_map(|(id, files)| {
                        let id = ObjectId::from_hex(id.as_bytes()).ok()?;
                        let files = files
                            .into_iter()
                            .map(|(path, added, removed, binary)| FileStat {
                                path,
                                added,
                                removed,
                                binary,
                            })
                            .collect();
                        Some((id, files))
                    })
                    .collect()
            })
            .unwrap_or_default();
        NumstatCache {
            path,
            map,
            added: 0,
        }
    }

    /// Commit `id`'s files, if cached.
    pub fn get(&self, id: &ObjectId) -> Option<&Vec<FileStat>> {
        self.map.get(id)
    }

    /// Commit `id`'s files, taken out of the cache (after [`save`]).
    ///
    /// [`save`]: NumstatCache::save
    pub fn take(&mut self, id: &ObjectId) -> Option<Vec<FileStat>> {
        self.map.remove(id)
    }

    /// Adds commit `id`'s files.
    pub fn insert(&mut self, id: ObjectId, files: Vec<FileStat>) {
        if self.map.insert(id, files).is_none() {
            self.added += 1;
        }
    }

    /// Writes the cache if anything was added: whole, to a temp file
    /// renamed over the old one.
    pub fn save(&self) -> io::Result<()> {
        if self.added == 0 {
            return Ok(());
        }
        let stored: Vec<StoredRef<'_>> = self
            .map
            .iter()
            .map(|(id, files)| {
                (
                    id.to_hex().to_string(),
                    files
                        .iter()
                        .map(|f| (f.path.as_str(), f.added, f.removed, f.binary))
                        .collect(),
                )
            })
            .collect();
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&stored).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// Removes the caches of repositories no job has used for `max_age`.
/// Returns how many it removed.
pub fn prune(dir: &Path, max_age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > max_age);
        if old && std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(path: &str, added: u64) -> FileStat {
        FileStat {
            path: path.into(),
            added,
            removed: 1,
            binary: false,
        }
    }

    #[test]
    fn what_is_saved_loads_again_per_options() {
        let dir = tempfile::tempdir().unwrap();
        let id = ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").unwrap();
        let mut c = NumstatCache::load(dir.path(), "k", ChurnOptions::default());
        assert!(c.get(&id).is_none());
        c.insert(id, vec![stat("a", 3)]);
        c.save().unwrap();
        let mut again = NumstatCache::load(dir.path(), "k", ChurnOptions::default());
        assert_eq!(again.get(&id), Some(&vec![stat("a", 3)]));
        // Taken out for the analyses: gone from memory, not from the file.
        assert_eq!(again.take(&id), Some(vec![stat("a", 3)]));
        assert!(again.get(&id).is_none());
        let third = NumstatCache::load(dir.path(), "k", ChurnOptions::default());
        assert_eq!(third.get(&id), Some(&vec![stat("a", 3)]));
        // Other options are another cache.
        let renames = NumstatCache::load(dir.path(), "k", ChurnOptions { renames: true });
        assert!(renames.get(&id).is_none());
    }

    #[test]
    fn a_damaged_file_is_an_empty_cache_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let c = NumstatCache::load(dir.path(), "k", ChurnOptions::default());
        std::fs::write(&c.path, b"{not json").unwrap();
        let c = NumstatCache::load(dir.path(), "k", ChurnOptions::default());
        assert!(c.map.is_empty());
        NumstatCache::load(dir.path(), "old", ChurnOptions::default());
        let old = std::fs::File::open(dir.path().join("old")).unwrap();
        old.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        assert_eq!(prune(dir.path(), Duration::from_secs(60)), 1);
        assert!(!dir.path().join("old").exists());
        assert!(dir.path().join("k").exists());
    }

    #[test]
    fn local_keys_differ_by_path_and_mirrors_keep_theirs() {
        assert_ne!(repo_key("/a", None), repo_key("/b", None));
        assert_eq!(repo_key("https://x/y", Some("x-y-abc")), "x-y-abc");
    }
}
