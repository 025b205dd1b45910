//! The per-commit numstat cache: one file per repository and set of
//! options that change a numstat (`ChurnOptions`), holding every diffed
//! commit's files with lines added and removed. Paths are stored once
//! each, in a table the entries index.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use gix::ObjectId;

use super::{CacheFile, Dec, Enc, len, repo_dir, slack};
use crate::git::numstat::FileStat;
use crate::job::git::ChurnOptions;

const TAG: &[u8; 4] = b"nums";

/// The format of the file's body; another version is not read (the
/// commits are diffed again).
const VERSION: u32 = 2;

/// The numstats of one repository under one set of options.
pub struct NumstatCache {
    file: CacheFile,
    /// Each cached commit's files, as a range of `files`.
    map: gix::hashtable::HashMap<ObjectId, Range<u32>>,
    files: Vec<FileStat>,
    /// Commits added since loading, in order.
    added: Vec<ObjectId>,
}

impl NumstatCache {
    /// The cache of `key` under `dir` for `opts` and the repository's
    /// attributes (by [`Attributes::fingerprint`]); empty when there is
    /// none or it does not read. Marks the repository as used now, and
    /// removes the cache of the same options under other attributes.
    ///
    /// [`Attributes::fingerprint`]: crate::git::attributes::Attributes::fingerprint
    pub fn load(dir: &Path, key: &str, opts: ChurnOptions, attributes: &str) -> NumstatCache {
        let repo_dir = repo_dir(dir, key);
        let renames = u8::from(opts.renames);
        // Format 1 was JSON; a cache of it is only ever diffed again.
        let _ = std::fs::remove_file(repo_dir.join(format!("numstat-v1-renames-{renames}.json")));
        let prefix = format!("numstats-renames-{renames}-attrs-");
        let name = format!("{prefix}{attributes}.bin");
        for e in std::fs::read_dir(&repo_dir).into_iter().flatten().flatten() {
            let other = e.file_name();
            let other = other.to_string_lossy();
            if other.starts_with(&prefix) && other.ends_with(".bin") && other != name {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let (mut map, mut files) = (Default::default(), Vec::new());
        let file = CacheFile::load(repo_dir.join(name), TAG, VERSION, |body| {
            decode(body, &mut map, &mut files)
        });
        NumstatCache {
            file,
            map,
            files,
            added: Vec::new(),
        }
    }

    /// Commit `id`'s files, if cached.
    pub fn get(&self, id: &ObjectId) -> Option<&[FileStat]> {
        self.range(id)
            .map(|r| &self.files[r.start as usize..r.end as usize])
    }

    /// Where commit `id`'s files lie in the cache's list, if cached (see
    /// [`NumstatCache::into_files`]).
    pub fn range(&self, id: &ObjectId) -> Option<Range<u32>> {
        self.map.get(id).cloned()
    }

    /// The files of every commit cached, as [`NumstatCache::range`] finds
    /// them.
    pub fn into_files(self) -> Vec<FileStat> {
        self.files
    }

    /// Adds commit `id`'s files (if it has none yet).
    pub fn insert(&mut self, id: ObjectId, files: Vec<FileStat>) {
        if self.map.contains_key(&id) {
            return;
        }
        let start = self.files.len() as u32;
        self.files.extend(files);
        self.map.insert(id, start..self.files.len() as u32);
        self.added.push(id);
    }

    /// Saves the commits added since loading: appended as a segment, or
    /// with all the others in a rewrite when the file cannot take one.
    pub fn save(&self) -> io::Result<()> {
        if self.added.is_empty() {
            return Ok(());
        }
        let added = || encode(self.added.iter().filter_map(|id| Some((id, self.get(id)?))));
        let all = || {
            // In the list's order, not the map's: the encoding then reads
            // the files front to back instead of all over.
            let mut entries: Vec<(&ObjectId, &Range<u32>)> = self.map.iter().collect();
            entries.sort_unstable_by_key(|(_, r)| r.start);
            encode(
                entries
                    .into_iter()
                    .map(|(id, r)| (id, &self.files[r.start as usize..r.end as usize])),
            )
        };
        self.file.save(added, all)
    }
}

/// A segment's body: the hash length, its path table, then each commit's
/// id and files (path index, added, removed, binary).
fn encode<'a>(
    commits: impl Iterator<Item = (&'a ObjectId, &'a [FileStat])> + Clone,
) -> io::Result<Vec<u8>> {
    let mut index: rustc_hash::FxHashMap<&str, u32> = Default::default();
    let mut paths: Vec<&str> = Vec::new();
    for f in commits.clone().flat_map(|(_, files)| files) {
        if !index.contains_key(&*f.path) {
            index.insert(&f.path, len(paths.len())?);
            paths.push(&f.path);
        }
    }
    let mut e = Enc::default();
    let hash_len = commits
        .clone()
        .next()
        .map_or(20, |(id, _)| id.as_bytes().len());
    e.u8(hash_len as u8);
    e.u32(len(paths.len())?);
    for p in &paths {
        e.bytes(p.as_bytes());
    }
    e.u32(len(commits.clone().count())?);
    for (id, files) in commits {
        e.id(id);
        e.u32(len(files.len())?);
        for f in files {
            e.u32(index[&*f.path]);
            e.u64(f.added);
            e.u64(f.removed);
            e.u8(u8::from(f.binary));
        }
    }
    Ok(e.0)
}

/// Adds a segment's commits to `map` and their files to `files`; `None`
/// if it does not parse (the commits before the fault stay; the files of
/// the commit it stopped in stay in the list, in no commit's range).
fn decode(
    body: &[u8],
    map: &mut gix::hashtable::HashMap<ObjectId, Range<u32>>,
    files: &mut Vec<FileStat>,
) -> Option<()> {
    let mut d = Dec::new(body);
    let hash_len = usize::from(d.u8()?);
    let n_paths = d.u32()? as usize;
    // Capacities are bounded by what the body could hold, so a damaged
    // count cannot ask for a huge allocation.
    let mut paths = Vec::with_capacity(n_paths.min(body.len() / 4));
    for _ in 0..n_paths {
        paths.push(Arc::<str>::from(std::str::from_utf8(d.bytes()?).ok()?));
    }
    let n_commits = d.u32()? as usize;
    // With room for the next segments' few commits: growing a map of
    // every commit rehashes it, and growing the list copies it. A file
    // takes 21 bytes of the body, so the list never outgrows that.
    map.reserve(slack(n_commits.min(body.len() / (hash_len + 4))));
    files.reserve(slack(body.len() / 21));
    for _ in 0..n_commits {
        let id = d.id(hash_len)?;
        let n_files = d.u32()? as usize;
        let start = u32::try_from(files.len()).ok()?;
        for _ in 0..n_files {
            let path = paths.get(d.u32()? as usize)?.clone();
            let added = d.u64()?;
            let removed = d.u64()?;
            let binary = d.u8()? != 0;
            files.push(FileStat {
                path,
                added,
                removed,
                binary,
            });
        }
        let end = u32::try_from(files.len()).ok()?;
        // Twice in the cache (never written so): the later stands.
        map.insert(id, start..end);
    }
    d.is_empty().then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(path: &str, added: u64, binary: bool) -> FileStat {
        FileStat {
            path: path.into(),
            added,
            removed: 1,
            binary,
        }
    }

    #[test]
    fn what_is_saved_loads_again_per_options() {
        let dir = tempfile::tempdir().unwrap();
        let id = ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").unwrap();
        let other = ObjectId::from_hex(b"89abcdef0123456789abcdef0123456789abcdef").unwrap();
        let mut c = NumstatCache::load(dir.path(), "k", ChurnOptions::default(), "none");
        assert!(c.get(&id).is_none());
        let files = vec![stat("a", 3, false), stat("b/ü.png", 0, true)];
        c.insert(id, files.clone());
        c.insert(other, vec![stat("a", 5, false)]);
        c.insert(ObjectId::null(gix::hash::Kind::Sha1), Vec::new());
        c.save().unwrap();
        let mut again = NumstatCache::load(dir.path(), "k", ChurnOptions::default(), "none");
        assert_eq!(again.get(&id), Some(&files[..]));
        assert_eq!(again.get(&other), Some(&[stat("a", 5, false)][..]));
        // A second insert of a commit changes nothing.
        again.insert(id, vec![stat("z", 9, false)]);
        assert_eq!(again.get(&id), Some(&files[..]));
        // Handed to the analyses: the cache's list, found by range.
        let range = again.range(&id).expect("cached");
        let list = again.into_files();
        assert_eq!(list[range.start as usize..range.end as usize], files[..]);
        let third = NumstatCache::load(dir.path(), "k", ChurnOptions::default(), "none");
        assert_eq!(third.get(&id), Some(&files[..]));
        assert_eq!(third.map.len(), 3);
        // A later run's commits are appended, the earlier ones kept.
        let mut fourth = NumstatCache::load(dir.path(), "k", ChurnOptions::default(), "none");
        let new = ObjectId::from_hex(b"fedcba9876543210fedcba9876543210fedcba98").unwrap();
        fourth.insert(new, vec![stat("c", 1, false)]);
        fourth.save().unwrap();
        let fifth = NumstatCache::load(dir.path(), "k", ChurnOptions::default(), "none");
        assert_eq!(fifth.map.len(), 4);
        assert_eq!(fifth.get(&new), Some(&[stat("c", 1, false)][..]));
        assert_eq!(fifth.get(&id), Some(&files[..]));
        let contents = crate::git::cache::read_file(&fifth.file.path, TAG, VERSION);
        assert_eq!(contents.segments.len(), 2);
        // Other options are another cache.
        let renames = NumstatCache::load(dir.path(), "k", ChurnOptions { renames: true }, "none");
        assert!(renames.get(&id).is_none());
    }

    #[test]
    fn a_damaged_file_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = NumstatCache::load(dir.path(), "k", ChurnOptions::default(), "none");
        c.insert(
            ObjectId::null(gix::hash::Kind::Sha1),
            vec![stat("a", 1, false)],
        );
        c.save().unwrap();
        let mut bytes = std::fs::read(&c.file.path).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0x40;
        std::fs::write(&c.file.path, &bytes).unwrap();
        let mut c = NumstatCache::load(dir.path(), "k", ChurnOptions::default(), "none");
        assert!(c.map.is_empty());
        // Saved again whole, not appended after the damage.
        c.insert(
            ObjectId::null(gix::hash::Kind::Sha1),
            vec![stat("b", 1, false)],
        );
        c.save().unwrap();
        let c = NumstatCache::load(dir.path(), "k", ChurnOptions::default(), "none");
        assert_eq!(c.map.len(), 1);
        assert_eq!(
            crate::git::cache::read_file(&c.file.path, TAG, VERSION)
                .segments
                .len(),
            1
        );
        // A body that checks but does not parse (a path index past the
        // table) is empty too.
        let mut e = Enc::default();
        e.u8(20);
        e.u32(0);
        e.u32(1);
        e.id(&ObjectId::null(gix::hash::Kind::Sha1));
        e.u32(1);
        e.u32(9);
        assert_eq!(decode(&e.0, &mut Default::default(), &mut Vec::new()), None);
    }
}
