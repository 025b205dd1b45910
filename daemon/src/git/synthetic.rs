//! Synthetic histories for benchmarks and large tests: a `git fast-import`
//! stream of N commits with seeded, repeatable edits (insertions,
//! deletions and replacements of several lines, files made and removed),
//! so a repository of 20,000 commits takes seconds to make, not minutes.

use std::fmt::Write;

/// The authors the stream cycles through.
const AUTHORS: [(&str, &str); 4] = [
    ("Ada Lovelace", "ada@example.org"),
    ("Brian Kernighan", "bwk@example.org"),
    ("Grace Hopper", "grace@example.org"),
    ("Ken Thompson", "ken@example.org"),
];

/// The first commit's date, 2023-11-14 22:13:20 UTC; each next commit is
/// an hour later.
pub const SYNTHETIC_START: i64 = 1_700_000_000;

/// A small deterministic generator (64-bit LCG with an output mix), so
/// the same seed gives the same history on every platform and version.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let x = self.0;
        (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd) >> 16
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A `git fast-import` stream of `n_commits` commits on `refs/heads/main`
/// over up to `files` files (`dir{k}/file{i}.txt`), from `seed`. Lines are
/// drawn partly from a small vocabulary, so files have many repeated lines
/// — the case where diff algorithms disagree, which is what tests want.
pub fn synthetic_fast_import_stream(n_commits: usize, files: usize, seed: u64) -> String {
    let files = files.max(1);
    let mut rng = Lcg(seed ^ 0x5eed);
    let mut contents: Vec<Option<Vec<String>>> = vec![None; files];
    let mut out = String::new();
    let mut body = String::new();
    for n in 0..n_commits {
        let (name, email) = AUTHORS[rng.below(AUTHORS.len())];
        let when = SYNTHETIC_START + 3600 * n as i64;
        let _ = write!(
            out,
            "commit refs/heads/main\nmark :{}\nauthor {name} <{email}> {when} +0000\ncommitter {name} <{email}> {when} +0000\n",
            n + 1
        );
        let message = format!("change {n}\n");
        let _ = write!(out, "data {}\n{message}", message.len());
        if n > 0 {
            let _ = writeln!(out, "from :{n}");
        }
        let touched = 1 + rng.below(4);
        for _ in 0..touched {
            let i = rng.below(files);
            let path = format!("dir{}/file{i}.txt", i % 7);
            let lines = match contents[i].take() {
                None => {
                    let len = 1 + rng.below(40);
                    Some((0..len).map(|_| line(&mut rng, n)).collect::<Vec<_>>())
                }
                Some(mut lines) => match rng.below(10) {
                    0 => None,
                    1..=3 => {
                        let at = rng.below(lines.len() + 1);
                        let k = 1 + rng.below(6);
                        for j in 0..k {
                            lines.insert(at + j, line(&mut rng, n));
                        }
                        Some(lines)
                    }
                    4..=6 if !lines.is_empty() => {
                        let at = rng.below(lines.len());
                        let k = (1 + rng.below(5)).min(lines.len() - at);
                        lines.drain(at..at + k);
                        Some(lines)
                    }
                    _ if !lines.is_empty() => {
                        let at = rng.below(lines.len());
                        let k = (1 + rng.below(4)).min(lines.len() - at);
                        for l in &mut lines[at..at + k] {
                            *l = line(&mut rng, n);
                        }
                        Some(lines)
                    }
                    _ => Some(vec![line(&mut rng, n)]),
                },
            };
            match &lines {
                None => {
                    let _ = writeln!(out, "D {path}");
                }
                Some(l) => {
                    body.clear();
                    for x in l {
                        body.push_str(x);
                    }
                    // Now and then the last line loses its newline, as
                    // real files do.
                    if rng.below(8) == 0 {
                        body.pop();
                    }
                    let _ = write!(out, "M 100644 inline {path}\ndata {}\n{body}\n", body.len());
                }
            }
            contents[i] = lines;
        }
        out.push('\n');
    }
    out
}

/// A line: usually one of a few dozen common ones (braces, blank lines,
/// repeated statements), sometimes unique to its commit.
fn line(rng: &mut Lcg, commit: usize) -> String {
    match rng.below(10) {
        0 => "\n".to_string(),
        1 => "}\n".to_string(),
        2..=5 => format!("    common({});\n", rng.below(24)),
        _ => format!("    unique({commit}, {});\n", rng.next() % 100_000),
    }
}
