//! The history analyses as pure aggregations over walked commits and their
//! numstats: summary, churn, hotspots (which also reads the newest tree),
//! ownership and coupling, each filling its section of
//! [`crate::job::git::GitResult`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use gix::ObjectId;
use rustc_hash::{FxHashMap, FxHashSet};

use super::numstat::{Numstats, count_lines};
use super::objects::is_binary;
use super::repo::{GitError, read_object};
use super::walk::WalkedCommit;
use crate::job::git::{
    Author, AuthorChurn, Churn, CoupledPair, CouplingOptions, FileChurn, FileOwner, Hotspot,
    Ownership, Summary,
};

/// Commit count, first and last author dates, authors as `git shortlog
/// -sne` lists them, and commits by month and weekday in each author's own
/// time zone (a commit made at 23:30 on a Friday in Tokyo counts for
/// Friday, as its author lived it).
pub fn summary(commits: &[WalkedCommit]) -> Summary {
    let mut s = Summary {
        commits: commits.len() as u64,
        ..Summary::default()
    };
    // Counted per shared Author (the walk makes one per raw identity) and
    // per (year, month), so the loop hashes no strings; merged by value
    // after, since two identities may map to one author.
    let mut by_identity: HashMap<*const Author, (&Author, u64)> = HashMap::new();
    let mut by_month: HashMap<(i64, u32), u64> = HashMap::new();
    for c in commits {
        s.first = Some(s.first.map_or(c.author_time, |f| f.min(c.author_time)));
        s.last = Some(s.last.map_or(c.author_time, |l| l.max(c.author_time)));
        by_identity
            .entry(std::sync::Arc::as_ptr(&c.author))
            .or_insert((&*c.author, 0))
            .1 += 1;
        let local = c.author_time + i64::from(c.author_offset);
        let days = local.div_euclid(86_400);
        let (year, month, _) = civil_from_days(days);
        *by_month.entry((year, month)).or_default() += 1;
        // 1970-01-01 was a Thursday, index 3 counting from Monday.
        s.by_weekday[(days + 3).rem_euclid(7) as usize] += 1;
    }
    for ((year, month), n) in by_month {
        *s.by_month
            .entry(format!("{year:04}-{month:02}"))
            .or_default() += n;
    }
    let mut merged: HashMap<&Author, u64> = HashMap::new();
    for (author, n) in by_identity.into_values() {
        *merged.entry(author).or_default() += n;
    }
    let mut authors: Vec<(Author, u64)> = merged.into_iter().map(|(a, n)| (a.clone(), n)).collect();
    authors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    s.authors = authors;
    s
}

/// The proleptic Gregorian (year, month, day) of a day count from
/// 1970-01-01, by counting 400-year eras of 146097 days from 0000-03-01
/// (putting the leap day last in each year makes months regular).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Each commit's author, by id (hashed by the id's own bytes).
fn authors_by_id(commits: &[WalkedCommit]) -> gix::hashtable::HashMap<ObjectId, &Arc<Author>> {
    commits.iter().map(|c| (c.id, &c.author)).collect()
}

/// Per file: commits that changed it, lines added and removed, distinct
/// authors; per author: lines added and removed. A binary file's commits
/// count as revisions with no lines, as git prints `-` for them.
pub fn churn(commits: &[WalkedCommit], stats: &Numstats) -> Churn {
    // The kind lists stats in the commits' order; only otherwise are the
    // authors found by id.
    let aligned = commits.len() == stats.len()
        && commits
            .iter()
            .zip(stats.iter())
            .all(|(c, (id, _))| c.id == *id);
    let by_id = if aligned {
        Default::default()
    } else {
        authors_by_id(commits)
    };
    // Counted per shared Author (the walk makes one per identity), so the
    // per-file loop hashes no names; merged by value after, since two
    // identities may map to one author. FxHash: these maps are hashed
    // once per file of each commit, and SipHash's resistance to chosen
    // keys buys nothing against a repository's own paths.
    let mut index: FxHashMap<&str, usize> = FxHashMap::default();
    let mut by_address: FxHashMap<*const u8, usize> = FxHashMap::default();
    let mut files: Vec<(FileChurn, FxHashSet<*const Author>)> = Vec::new();
    let mut authors: FxHashMap<*const Author, (&Author, u64, u64)> = FxHashMap::default();
    for (n, (id, changed)) in stats.iter().enumerate() {
        let author = if aligned {
            &commits[n].author
        } else {
            match by_id.get(id).copied() {
                Some(a) => a,
                None => continue,
            }
        };
        let ptr = Arc::as_ptr(author);
        let totals = authors.entry(ptr).or_insert((author, 0, 0));
        for f in changed {
            // Most entries share their path's allocation (the cache loads
            // each path once), so the address finds the file without
            // hashing the path; a path first seen at another address is
            // found by its text.
            let at = match by_address.get(&f.path.as_ptr()) {
                Some(at) => *at,
                None => {
                    let at = *index.entry(&f.path).or_insert_with(|| {
                        files.push((
                            FileChurn {
                                path: f.path.to_string(),
                                ..FileChurn::default()
                            },
                            FxHashSet::default(),
                        ));
                        files.len() - 1
                    });
                    by_address.insert(f.path.as_ptr(), at);
                    at
                }
            };
            let (entry, who) = &mut files[at];
            entry.revisions += 1;
            entry.added += f.added;
            entry.removed += f.removed;
            who.insert(ptr);
            totals.1 += f.added;
            totals.2 += f.removed;
        }
    }
    let by_ptr: HashMap<*const Author, &Author> =
        authors.iter().map(|(p, (a, _, _))| (*p, *a)).collect();
    let mut files: Vec<FileChurn> = files
        .into_iter()
        .map(|(mut f, who)| {
            f.authors = if who.len() < 2 {
                who.len() as u64
            } else {
                who.iter().map(|p| by_ptr[p]).collect::<HashSet<_>>().len() as u64
            };
            f
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut merged: BTreeMap<&Author, (u64, u64)> = BTreeMap::new();
    for (author, added, removed) in authors.into_values() {
        let m = merged.entry(author).or_default();
        m.0 += added;
        m.1 += removed;
    }
    let mut authors: Vec<AuthorChurn> = merged
        .into_iter()
        .map(|(a, (added, removed))| AuthorChurn {
            author: a.clone(),
            added,
            removed,
        })
        .collect();
    // BTreeMap order breaks ties by author; the stable sort keeps it.
    authors.sort_by_key(|a| std::cmp::Reverse(a.added + a.removed));
    Churn { files, authors }
}

/// The `top` files by revisions times their line count in `tree` (the
/// newest analysed commit's). Files no longer in the tree, and binary
/// files (which have no lines), are left out; ties go by path.
pub fn hotspots(
    repo: &gix::Repository,
    tree: ObjectId,
    churn: &Churn,
    top: u32,
) -> Result<Vec<Hotspot>, GitError> {
    let root = repo.find_tree(tree).map_err(|e| GitError::Object {
        what: "tree",
        id: tree,
        detail: e.to_string(),
    })?;
    let mut lines = HashMap::new();
    let mut buf = Vec::new();
    for f in &churn.files {
        let entry = root
            .lookup_entry_by_path(&f.path)
            .map_err(|e| GitError::Object {
                what: "tree",
                id: tree,
                detail: format!("looking up {}: {e}", f.path),
            })?;
        let Some(entry) = entry.filter(|e| e.mode().is_blob()) else {
            continue;
        };
        let data = read_object(repo, &entry.object_id(), "blob", &mut buf)?.data;
        if !is_binary(data) {
            lines.insert(f.path.as_str(), count_lines(data));
        }
    }
    Ok(rank_hotspots(churn, &lines, top))
}

/// [`hotspots`]' ranking, given each present text file's line count.
pub fn rank_hotspots(churn: &Churn, lines: &HashMap<&str, u64>, top: u32) -> Vec<Hotspot> {
    let mut spots: Vec<Hotspot> = churn
        .files
        .iter()
        .filter_map(|f| {
            let n = *lines.get(f.path.as_str())?;
            Some(Hotspot {
                path: f.path.clone(),
                revisions: f.revisions,
                lines: n,
                score: f.revisions.saturating_mul(n),
            })
        })
        .collect();
    // churn.files is by path, and the sort is stable.
    spots.sort_by_key(|h| std::cmp::Reverse(h.score));
    spots.truncate(top as usize);
    spots
}

/// Per file, the author who added most of its lines and their share (ties
/// go to the author first by name, then email); files with no added lines
/// (binary, or only ever shrunk) have no owner and are left out. The bus
/// factor is the fewest authors who together own more than half of the
/// owned files.
pub fn ownership(commits: &[WalkedCommit], stats: &Numstats) -> Ownership {
    let by_id = authors_by_id(commits);
    let mut added: BTreeMap<&str, BTreeMap<&Author, u64>> = BTreeMap::new();
    for (id, changed) in stats.iter() {
        let Some(author) = by_id.get(id).copied() else {
            continue;
        };
        for f in changed {
            *added.entry(&f.path).or_default().entry(author).or_default() += f.added;
        }
    }
    let mut files = Vec::new();
    let mut owned: HashMap<&Author, u64> = HashMap::new();
    for (path, by_author) in added {
        let total: u64 = by_author.values().sum();
        if total == 0 {
            continue;
        }
        // max_by_key keeps the last maximum; iterate in reverse so ties go
        // to the first author in order.
        let Some((author, most)) = by_author.iter().rev().max_by_key(|(_, n)| **n) else {
            continue;
        };
        *owned.entry(author).or_default() += 1;
        files.push(FileOwner {
            path: path.to_string(),
            author: (*author).clone(),
            share: *most as f64 / total as f64,
        });
    }
    let mut counts: Vec<u64> = owned.into_values().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let mut bus_factor = 0;
    let mut covered = 0;
    for n in counts {
        if covered * 2 > files.len() as u64 {
            break;
        }
        covered += n;
        bus_factor += 1;
    }
    Ownership { files, bus_factor }
}

/// Pairs of files that change together, by code-maat's `coupling`
/// analysis (code_maat/analysis/logical_coupling.clj), which this follows:
/// commits touching more than `max_changeset` files are dropped; a file's
/// revisions are counted over the remaining commits; for each pair,
/// `average = (revs_a + revs_b) / 2` and `degree = shared / average * 100`;
/// a pair is kept if `average >= min_revs` (code-maat applies min-revs to
/// the average, not to each file), `shared >= min_shared` and
/// `degree >= min_coupling`, with the degree unrounded in the comparisons.
/// Reported, as code-maat does: the degree truncated, the average rounded
/// up; sorted by degree, then average, most first (then by paths).
pub fn coupling(stats: &Numstats, opts: CouplingOptions) -> Vec<CoupledPair> {
    let mut revs: HashMap<&str, u64> = HashMap::new();
    let mut shared: HashMap<(&str, &str), u64> = HashMap::new();
    for (_, changed) in stats.iter() {
        if changed.len() > opts.max_changeset as usize {
            continue;
        }
        // Paths in a numstat are sorted, so each pair comes as (a, b) with
        // a < b; a path listed twice counts once.
        let mut paths: Vec<&str> = changed.iter().map(|f| &*f.path).collect();
        paths.dedup();
        for (i, a) in paths.iter().enumerate() {
            *revs.entry(a).or_default() += 1;
            for b in &paths[i + 1..] {
                *shared.entry((a, b)).or_default() += 1;
            }
        }
    }
    let mut pairs: Vec<CoupledPair> = shared
        .into_iter()
        .filter_map(|((a, b), n)| {
            let sum = revs[a] + revs[b];
            let keep = sum >= 2 * u64::from(opts.min_revs)
                && n >= u64::from(opts.min_shared)
                && n * 200 >= u64::from(opts.min_coupling) * sum;
            keep.then(|| CoupledPair {
                a: a.to_string(),
                b: b.to_string(),
                shared: n,
                degree: (n * 200 / sum) as u32,
                average_revs: sum.div_ceil(2),
            })
        })
        .collect();
    pairs.sort_by(|x, y| {
        y.degree
            .cmp(&x.degree)
            .then(y.average_revs.cmp(&x.average_revs))
            .then_with(|| (&x.a, &x.b).cmp(&(&y.a, &y.b)))
    });
    pairs
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::git::fixture::{self, ALICE, BOB, CAROL, JAN_1_2024};
    use crate::git::numstat::numstats;
    use crate::git::repo::open_local;
    use crate::git::walk::{History, WalkSpec, walk};
    use crate::job::git::ChurnOptions;

    fn author((name, email): (&str, &str)) -> Author {
        Author {
            name: name.into(),
            email: email.into(),
        }
    }

    fn pool() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool")
    }

    /// The history fixture, walked from HEAD, with its numstats.
    fn analysed(renames: bool) -> (fixture::Fixture, gix::Repository, History, Numstats) {
        let f = fixture::history();
        let repo = open_local(f.path()).expect("opens");
        let cancel = AtomicBool::new(false);
        let history = walk(&repo, &WalkSpec::default(), &cancel, &|_| {}).expect("walks");
        let stats = numstats(
            &repo,
            &history.commits,
            ChurnOptions { renames },
            &crate::git::attributes::Attributes::of(&repo).expect("attributes"),
            &pool(),
            &cancel,
            &|_| {},
        )
        .expect("numstats")
        .into_iter()
        .collect();
        (f, repo, history, stats)
    }

    fn file(path: &str, revisions: u64, added: u64, removed: u64, authors: u64) -> FileChurn {
        FileChurn {
            path: path.into(),
            revisions,
            added,
            removed,
            authors,
        }
    }

    #[test]
    fn summary_counts_commits_authors_months_and_local_weekdays() {
        let (_f, _repo, history, _) = analysed(false);
        let s = summary(&history.commits);
        assert_eq!(s.commits, 8);
        assert_eq!(s.first, Some(JAN_1_2024 + 10 * 3600));
        assert_eq!(s.last, Some(JAN_1_2024 + 61 * 86_400 + 9 * 3600));
        // Bob's commit as bob@old.example counts for him, by .mailmap.
        assert_eq!(
            s.authors,
            vec![(author(ALICE), 4), (author(BOB), 3), (author(CAROL), 1)]
        );
        let months: Vec<(&str, u64)> = s.by_month.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(months, vec![("2024-01", 3), ("2024-02", 3), ("2024-03", 2)]);
        // Carol's Wednesday 20:00 UTC is her Thursday 05:00 (+0900).
        assert_eq!(s.by_weekday, [2, 2, 1, 1, 1, 1, 0]);
    }

    #[test]
    fn civil_dates_around_leap_days_and_before_1970() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(19_783), (2024, 3, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn churn_counts_files_and_authors_without_merges_or_binary_lines() {
        let (_f, _repo, history, stats) = analysed(false);
        let c = churn(&history.commits, &stats);
        assert_eq!(
            c.files,
            vec![
                file(".mailmap", 1, 1, 0, 1),
                file("a.txt", 4, 7, 3, 2),
                file("b.txt", 4, 4, 0, 2),
                file("c.txt", 3, 2, 2, 3),
                file("d.txt", 1, 2, 0, 1),
                file("img.bin", 2, 0, 0, 2),
            ]
        );
        let authors: Vec<(Author, u64, u64)> = c
            .authors
            .into_iter()
            .map(|a| (a.author, a.added, a.removed))
            .collect();
        assert_eq!(
            authors,
            vec![
                (author(BOB), 7, 4),
                (author(ALICE), 8, 1),
                (author(CAROL), 1, 0)
            ]
        );
    }

    #[test]
    fn churn_with_renames_counts_a_rename_under_its_new_path() {
        let (_f, _repo, history, stats) = analysed(true);
        let c = churn(&history.commits, &stats);
        let files: Vec<FileChurn> = c
            .files
            .into_iter()
            .filter(|f| f.path.ends_with("c.txt") || f.path == "d.txt")
            .collect();
        assert_eq!(
            files,
            vec![file("c.txt", 2, 2, 0, 2), file("d.txt", 1, 0, 0, 1)]
        );
    }

    #[test]
    fn hotspots_rank_present_text_files_by_revisions_times_lines() {
        let (_f, repo, history, stats) = analysed(false);
        let c = churn(&history.commits, &stats);
        let newest = history.newest().expect("commits").tree;
        let spots = hotspots(&repo, newest, &c, 50).expect("hotspots");
        let got: Vec<(&str, u64, u64, u64)> = spots
            .iter()
            .map(|h| (h.path.as_str(), h.revisions, h.lines, h.score))
            .collect();
        // c.txt is gone and img.bin is binary.
        assert_eq!(
            got,
            vec![
                ("a.txt", 4, 4, 16),
                ("b.txt", 4, 4, 16),
                ("d.txt", 1, 2, 2),
                (".mailmap", 1, 1, 1)
            ]
        );
        assert_eq!(hotspots(&repo, newest, &c, 2).expect("top 2").len(), 2);
    }

    #[test]
    fn ownership_names_main_authors_and_the_bus_factor() {
        let (_f, _repo, history, stats) = analysed(false);
        let o = ownership(&history.commits, &stats);
        let got: Vec<(&str, &str, f64)> = o
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.author.name.as_str(), f.share))
            .collect();
        assert_eq!(
            got,
            vec![
                (".mailmap", "Alice", 1.0),
                ("a.txt", "Alice", 4.0 / 7.0),
                // 2 lines each: the tie goes to the first by name.
                ("b.txt", "Alice", 0.5),
                ("c.txt", "Alice", 0.5),
                ("d.txt", "Bob", 1.0),
            ]
        );
        assert_eq!(o.bus_factor, 1);
    }

    fn stat(path: &str, added: u64) -> crate::git::numstat::FileStat {
        crate::git::numstat::FileStat {
            path: path.into(),
            added,
            removed: 0,
            binary: false,
        }
    }

    fn commit(n: u8, who: (&str, &str)) -> WalkedCommit {
        WalkedCommit {
            id: ObjectId::from_bytes_or_panic(&[n; 20]),
            tree: ObjectId::empty_tree(gix::hash::Kind::Sha1),
            first_parent: None,
            parent_count: 0,
            author: std::sync::Arc::new(author(who)),
            author_time: 0,
            author_offset: 0,
            committer_time: 0,
        }
    }

    #[test]
    fn bus_factor_needs_more_than_half_of_the_files() {
        let commits = [commit(1, ALICE), commit(2, BOB), commit(3, CAROL)];
        // Alice owns 2 of 4 files: exactly half is not enough.
        let stats: Numstats = [
            (commits[0].id, vec![stat("a", 5), stat("b", 5)]),
            (commits[1].id, vec![stat("c", 5)]),
            (commits[2].id, vec![stat("d", 5)]),
        ]
        .into_iter()
        .collect();
        assert_eq!(ownership(&commits, &stats).bus_factor, 2);
        assert_eq!(ownership(&commits, &Numstats::default()).bus_factor, 0);
    }

    #[test]
    fn coupling_follows_code_maat() {
        let (_f, _repo, _history, stats) = analysed(false);
        let opts = CouplingOptions {
            min_revs: 1,
            min_shared: 2,
            min_coupling: 50,
            max_changeset: 30,
        };
        let pair = |a: &str, b: &str, shared, degree, average_revs| CoupledPair {
            a: a.into(),
            b: b.into(),
            shared,
            degree,
            average_revs,
        };
        // a/b: 4 shared of 4 and 4 revisions; c.txt/img.bin: 2 of 3 and 2,
        // 2 / 2.5 = 80%, average 2.5 reported as 3.
        assert_eq!(
            coupling(&stats, opts),
            vec![
                pair("a.txt", "b.txt", 4, 100, 4),
                pair("c.txt", "img.bin", 2, 80, 3)
            ]
        );
        // The first commit touches 3 files: with it dropped, a and b have 3.
        let small = CouplingOptions {
            max_changeset: 2,
            ..opts
        };
        assert_eq!(
            coupling(&stats, small),
            vec![
                pair("a.txt", "b.txt", 3, 100, 3),
                pair("c.txt", "img.bin", 2, 80, 3)
            ]
        );
        // 80% is below 81; min_revs applies to the average (2.5 < 4).
        let strict = CouplingOptions {
            min_coupling: 81,
            ..opts
        };
        assert_eq!(
            coupling(&stats, strict),
            vec![pair("a.txt", "b.txt", 4, 100, 4)]
        );
        let revs = CouplingOptions {
            min_revs: 4,
            ..opts
        };
        assert_eq!(
            coupling(&stats, revs),
            vec![pair("a.txt", "b.txt", 4, 100, 4)]
        );
        let shared = CouplingOptions {
            min_shared: 5,
            ..opts
        };
        assert_eq!(coupling(&stats, shared), vec![]);
    }
}
