//! Tests of the commit graph cache: saving and loading, numbering,
//! lookups, prefetching, and what is not believed.

use std::sync::atomic::AtomicBool;

use super::*;
use crate::git::fixture;
use crate::git::repo::open_local;

/// What a node says of its commit, ids for numbers and the identity
/// spelled out: comparable across graphs.
fn seen(g: &mut Graph, id: &ObjectId) -> Option<(ObjectId, i64, i32, i64, Vec<ObjectId>, String)> {
    let n = g.get(id)?;
    let (name, email) = g.identity(n.identity);
    Some((
        n.tree,
        n.author_time,
        n.author_offset,
        n.committer_time,
        g.parent_ids(&n),
        format!("{name} <{email}>"),
    ))
}

/// How many segments the graph file at `path` holds that check.
fn segments(path: &std::path::Path) -> usize {
    crate::git::cache::read_file(path, TAG, VERSION)
        .segments
        .len()
}

#[test]
fn read_commits_are_saved_and_load_the_same() {
    let f = fixture::history();
    let repo = open_local(f.path()).expect("opens");
    let dir = tempfile::tempdir().unwrap();
    let mut g = Graph::load(dir.path(), "k");
    assert!(g.is_empty());
    let mut buf = Vec::new();
    let mut ids = Vec::new();
    for rev in ["main", "main~2", "side"] {
        let id = repo.rev_parse_single(rev).expect("resolves").detach();
        g.read(&repo, id, &mut buf).expect("reads");
        ids.push(id);
    }
    // Three read; their parents are known by id only.
    assert_eq!((g.len(), g.added()), (3, 3));
    g.save().unwrap();
    let mut again = Graph::load(dir.path(), "k");
    assert_eq!(again.len(), 3);
    for id in &ids {
        assert!(seen(&mut g, id).is_some());
        assert_eq!(seen(&mut again, id), seen(&mut g, id));
    }
    // The merge at main~2 has two parents, in the commit's order.
    let commit = repo.find_commit(ids[1]).unwrap();
    let want: Vec<ObjectId> = commit.parent_ids().map(|p| p.detach()).collect();
    assert_eq!(want.len(), 2);
    assert_eq!(seen(&mut again, &ids[1]).unwrap().4, want);
    // Later reads are appended as a segment of their own: a commit
    // known only as a parent (main~1, main's parent), and one new
    // (main~4); the earlier segment stays.
    let mut more = Graph::load(dir.path(), "k");
    let parent = repo.rev_parse_single("main~1").expect("resolves").detach();
    let root = repo.rev_parse_single("main~4").expect("resolves").detach();
    more.read(&repo, parent, &mut buf).expect("reads");
    more.read(&repo, root, &mut buf).expect("reads");
    assert_eq!(more.added(), 2);
    more.save().unwrap();
    let path = dir.path().join("k").join("graph.bin");
    assert_eq!(segments(&path), 2);
    let mut again = Graph::load(dir.path(), "k");
    assert_eq!(again.len(), 5);
    for id in ids.iter().chain([&parent, &root]) {
        assert!(seen(&mut more, id).is_some());
        assert_eq!(seen(&mut again, id), seen(&mut more, id));
    }
    // A graph that must rewrite its file writes the same commits.
    let mut whole = Graph::load(dir.path(), "k");
    whole
        .read(
            &repo,
            repo.rev_parse_single("main~3").unwrap().detach(),
            &mut buf,
        )
        .unwrap();
    whole.file.as_mut().unwrap().appendable = false;
    whole.save().unwrap();
    assert_eq!(segments(&path), 1);
    let mut rewritten = Graph::load(dir.path(), "k");
    assert_eq!(rewritten.len(), 6);
    for id in ids.iter().chain([&parent, &root]) {
        assert_eq!(seen(&mut rewritten, id), seen(&mut more, id));
    }
    // Nothing added: nothing written.
    std::fs::remove_file(&path).unwrap();
    again.save().unwrap();
    assert!(!path.exists());
}

#[test]
fn a_rewrite_numbers_commits_in_the_last_walks_order() {
    let f = fixture::history();
    let repo = open_local(f.path()).expect("opens");
    let dir = tempfile::tempdir().unwrap();
    let mut g = Graph::load(dir.path(), "k");
    let mut buf = Vec::new();
    let mut ids = Vec::new();
    for rev in ["main", "main~2", "side", "main~4"] {
        let id = repo.rev_parse_single(rev).expect("resolves").detach();
        g.read(&repo, id, &mut buf).expect("reads");
        ids.push(id);
    }
    // A walk that reached three of them, the last read first.
    let walk = g.begin_walk();
    let reached: Vec<u32> = [3, 1, 0]
        .iter()
        .map(|k| g.find(&ids[*k]).unwrap())
        .collect();
    for i in &reached {
        assert!(g.reach(*i, walk));
    }
    assert!(!g.reach(reached[0], walk));
    // The file is new: a rewrite.
    g.save().unwrap();
    let mut again = Graph::load(dir.path(), "k");
    assert_eq!(again.nodes.len(), g.nodes.len());
    let first: Vec<ObjectId> = again.ids[..3].to_vec();
    assert_eq!(first, [ids[3], ids[1], ids[0]]);
    for id in &g.ids.clone() {
        assert_eq!(seen(&mut again, id), seen(&mut g, id));
    }
    // Every parent of every node is the same commit as before.
    for i in 0..again.nodes.len() {
        let n = again.nodes[i];
        let id = again.ids[i];
        let j = g.find(&id).unwrap();
        let m = g.nodes[j as usize];
        assert_eq!(again.parent_ids(&n), g.parent_ids(&m));
    }
}

#[test]
fn of_two_jobs_appending_at_once_the_second_is_not_believed() {
    let f = fixture::history();
    let repo = open_local(f.path()).expect("opens");
    let dir = tempfile::tempdir().unwrap();
    let mut buf = Vec::new();
    let id = |rev: &str| repo.rev_parse_single(rev).expect("resolves").detach();
    let mut g = Graph::load(dir.path(), "k");
    g.read(&repo, id("main"), &mut buf).unwrap();
    g.save().unwrap();
    // Both load the same graph and each reads another commit: their
    // new nodes take the same numbers.
    let mut a = Graph::load(dir.path(), "k");
    let mut b = Graph::load(dir.path(), "k");
    a.read(&repo, id("side"), &mut buf).unwrap();
    b.read(&repo, id("main~4"), &mut buf).unwrap();
    a.save().unwrap();
    b.save().unwrap();
    let mut c = Graph::load(dir.path(), "k");
    assert_eq!(seen(&mut c, &id("side")), seen(&mut a, &id("side")));
    assert_eq!(seen(&mut c, &id("main")), seen(&mut a, &id("main")));
    assert!(c.get(&id("main~4")).is_none());
    // The next save rewrites the file whole, with what is believed.
    assert!(!c.file.as_ref().unwrap().appendable);
    c.read(&repo, id("main~4"), &mut buf).unwrap();
    c.save().unwrap();
    let mut d = Graph::load(dir.path(), "k");
    assert_eq!(d.len(), 3);
    assert_eq!(seen(&mut d, &id("main~4")), seen(&mut b, &id("main~4")));
}

#[test]
fn lookups_scan_then_index_and_agree() {
    let f = fixture::history();
    let repo = open_local(f.path()).expect("opens");
    let mut g = Graph::in_memory();
    let mut buf = Vec::new();
    let main = repo.rev_parse_single("main").expect("resolves").detach();
    let i = g.read(&repo, main, &mut buf).unwrap();
    let ids: Vec<ObjectId> = g.ids.clone();
    for round in 0..2 * SCANS {
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(g.find(id), Some(n as u32), "round {round}");
        }
        assert_eq!(g.find(&ObjectId::null(main.kind())), None);
    }
    assert!(g.index.is_some());
    // Added after the index was built: found through it.
    let side = repo.rev_parse_single("side").expect("resolves").detach();
    let j = g.number(side);
    assert_eq!((g.find(&main), g.find(&side)), (Some(i), Some(j)));
    assert_eq!(g.number(side), j);
}

#[test]
fn prefetching_in_small_windows_skips_what_is_known_and_reads_the_rest() {
    let f = fixture::history();
    f.git(&["repack", "-adq"]);
    let repo = open_local(f.path()).expect("opens");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let cancel = AtomicBool::new(false);
    let mut g = Graph::in_memory();
    let mut buf = Vec::new();
    for rev in ["main", "side"] {
        let id = repo.rev_parse_single(rev).expect("resolves").detach();
        g.read(&repo, id, &mut buf).expect("reads");
    }
    // Windows of 2 of the pack's ~30 objects: some hold only known
    // or non-commit objects, and the ones after them are still read.
    let added = g
        .prefetch_in_windows(&repo, &pool, &cancel, 2)
        .expect("prefetches");
    assert_eq!((added, g.len()), (6, 8));
    let side = repo.rev_parse_single("side").expect("resolves").detach();
    let mut fresh = Graph::in_memory();
    fresh.read(&repo, side, &mut buf).expect("reads");
    assert!(seen(&mut g, &side).is_some());
    assert_eq!(seen(&mut g, &side), seen(&mut fresh, &side));
    // Every parent of every read commit is numbered, read or not.
    for i in 0..g.nodes.len() {
        let n = g.nodes[i];
        assert!(g.parents(&n).iter().all(|p| (*p as usize) < g.nodes.len()));
    }
}

#[test]
fn a_damaged_or_inconsistent_body_is_an_empty_graph() {
    let null = ObjectId::null(gix::hash::Kind::Sha1);
    // One read commit: base, identities, then the record, with its
    // identity and first parent given.
    let body = |base: u32, identity: u32, parent: u32| {
        let mut e = Enc::default();
        e.u8(20);
        e.u32(base);
        e.u32(1);
        e.bytes(b"A");
        e.bytes(b"a@example.org");
        e.u32(1);
        e.u8(RECORD_READ);
        e.id(&null);
        e.id(&null);
        e.u32(identity);
        e.i64(0);
        e.i32(0);
        e.i64(0);
        e.u32(1);
        e.u32(parent);
        e.0
    };
    // Its own parent: consistent.
    let mut g = Graph::in_memory();
    assert!(g.decode(&body(0, 0, 0)).is_some());
    assert_eq!(g.len(), 1);
    // Identity 1 of one; a parent past the graph; the wrong base: none
    // is believed, and nothing of it stays.
    for bad in [body(0, 1, 0), body(0, 0, 1), body(1, 0, 0)] {
        let mut g = Graph::in_memory();
        assert!(g.decode(&bad).is_none());
        assert!(g.is_empty() && g.nodes.is_empty() && g.ids.is_empty());
    }
    // A short body, at every cut.
    let whole = body(0, 0, 0);
    for cut in 0..whole.len() {
        assert!(
            Graph::in_memory().decode(&whole[..cut]).is_none(),
            "cut at {cut}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("k")).unwrap();
    std::fs::write(dir.path().join("k").join("graph.bin"), b"quern-gcgrph").unwrap();
    assert!(Graph::load(dir.path(), "k").is_empty());
}
