//! The `search` analysis: commits whose message or trailers match a regex,
//! and every commit that names a CVE id. Also the trailer parser that
//! `contains` shares (a `Change-Id:` is a trailer).
//!
//! Messages are bytes in git; they are read as UTF-8 with invalid bytes
//! replaced, so a stray Latin-1 byte never hides a commit from the search.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use regex::Regex;

use crate::job::git::{Author, SearchHit};

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search regex {pattern:?} is invalid: {message}; fix the pattern (Rust regex syntax)")]
    Regex { pattern: String, message: String },
    #[error("search was cancelled")]
    Cancelled,
    #[error("{what} failed: {message}; check the repository with `git fsck`")]
    Gix { what: String, message: String },
}

/// The largest compiled regex accepted. A user's pattern runs against
/// every message of a history, so a pattern that blows up in size is
/// refused at submit time rather than eating the CPU pool.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a user's search pattern with the limits a job runs it under.
fn compile(pattern: &str) -> Result<Regex, SearchError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| SearchError::Regex {
            pattern: pattern.to_string(),
            message: e.to_string().replace('\n', " "),
        })
}

/// Checks a search pattern at submit time, so a typo fails the submit
/// instead of a job minutes later. The error names the problem.
pub fn check_regex(s: &str) -> Result<(), String> {
    compile(s).map(|_| ()).map_err(|e| e.to_string())
}

/// `CVE-<year>-<number>`, as MITRE writes them (the number has at least
/// four digits).
fn cve_regex() -> &'static Regex {
    static CVE: OnceLock<Regex> = OnceLock::new();
    CVE.get_or_init(|| Regex::new(r"\bCVE-\d{4}-\d{4,}\b").expect("a constant regex compiles"))
}

/// One trailer of a commit message, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// The key as written ("Reviewed-by").
    pub key: String,
    /// The value, with continuation lines joined by a space.
    pub value: String,
}

impl Trailer {
    /// The trailer as one line, `Key: value`, which is what a search hit
    /// reports and what a pattern is matched against.
    pub fn line(&self) -> String {
        format!("{}: {}", self.key, self.value)
    }
}

/// A line git itself adds to a trailer block (`cherry-pick -x`); it is
/// not `Key: value` but does not stop the block from being trailers.
pub(crate) fn cherry_picked_from(line: &str) -> Option<&str> {
    line.trim()
        .strip_prefix("(cherry picked from commit ")?
        .strip_suffix(')')
        .map(str::trim)
}

/// Splits `Key: value` where the key is a token (letters, digits, `-`),
/// as git's interpret-trailers reads it.
fn trailer_line(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(':')?;
    let key = key.trim_end();
    let token = !key.is_empty()
        && key.starts_with(|c: char| c.is_ascii_alphanumeric())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    token.then(|| (key, value.trim()))
}

/// The trailers of a message: the `Key: value` lines of its last
/// paragraph, when that paragraph is a trailer block and not the subject.
///
/// A paragraph is a trailer block when every line is a trailer, a
/// continuation (leading whitespace) or git's "(cherry picked from ...)"
/// line; or, as git also accepts, when a quarter of its lines are
/// trailers and one is git-generated (`Signed-off-by:` or the cherry-pick
/// line), so a hand-written note among the tags does not hide them.
pub fn trailers(message: &str) -> Vec<Trailer> {
    let lines: Vec<&str> = message.lines().collect();
    let Some(last) = lines.iter().rposition(|l| !l.trim().is_empty()) else {
        return Vec::new();
    };
    let Some(blank) = lines[..last].iter().rposition(|l| l.trim().is_empty()) else {
        // One paragraph only: the subject, which is never trailers.
        return Vec::new();
    };
    if !lines[..blank].iter().any(|l| !l.trim().is_empty()) {
        return Vec::new();
    }
    let block = &lines[blank + 1..=last];

    let mut out: Vec<Trailer> = Vec::new();
    let (mut trailer_lines, mut other, mut generated) = (0usize, 0usize, false);
    for line in block {
        if line.starts_with([' ', '\t']) {
            match out.last_mut() {
                Some(t) => {
                    t.value.push(' ');
                    t.value.push_str(line.trim());
                }
                None => other += 1,
            }
        } else if cherry_picked_from(line).is_some() {
            generated = true;
        } else if let Some((key, value)) = trailer_line(line) {
            trailer_lines += 1;
            generated |= key.eq_ignore_ascii_case("Signed-off-by");
            out.push(Trailer {
                key: key.to_string(),
                value: value.to_string(),
            });
        } else {
            other += 1;
        }
    }
    let all = other == 0 && (trailer_lines > 0 || generated);
    let lenient = generated && trailer_lines * 4 >= block.len();
    if all || lenient { out } else { Vec::new() }
}

/// The subject: the first paragraph, its lines joined by spaces, as
/// `git log --format=%s` shows it.
pub(crate) fn subject(message: &str) -> String {
    message
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Finds, among `commits` (in that order), the commits whose trailers or
/// message match `pattern`, and every CVE id any message names.
///
/// A commit gives one hit per matching trailer (`matched` is the trailer
/// line); if no trailer matches but the message does, one hit with an
/// empty `matched`; and one hit per distinct CVE id it names. An empty
/// pattern searches for CVE ids only, since it would match everything.
/// Authors are named as `.mailmap` maps them.
pub fn search(
    repo: &gix::Repository,
    commits: &[gix::ObjectId],
    pattern: &str,
    cancel: &AtomicBool,
) -> Result<Vec<SearchHit>, SearchError> {
    let regex = if pattern.is_empty() {
        None
    } else {
        Some(compile(pattern)?)
    };
    let mailmap = repo.open_mailmap();
    let mut hits = Vec::new();
    for id in commits {
        if cancel.load(Ordering::Relaxed) {
            return Err(SearchError::Cancelled);
        }
        let commit = repo.find_commit(*id).map_err(|e| SearchError::Gix {
            what: format!("reading commit {id}"),
            message: format!("{e:#}"),
        })?;
        let message = String::from_utf8_lossy(commit.message_raw_sloppy()).into_owned();

        let mut matched: Vec<String> = Vec::new();
        if let Some(regex) = &regex {
            matched.extend(
                trailers(&message)
                    .iter()
                    .map(Trailer::line)
                    .filter(|l| regex.is_match(l)),
            );
            if matched.is_empty() && regex.is_match(&message) {
                matched.push(String::new());
            }
        }
        for cve in cve_regex().find_iter(&message) {
            if !matched.iter().any(|m| m == cve.as_str()) {
                matched.push(cve.as_str().to_string());
            }
        }
        if matched.is_empty() {
            continue;
        }

        let sig = commit.author().map_err(|e| SearchError::Gix {
            what: format!("reading the author of commit {id}"),
            message: format!("{e:#}"),
        })?;
        let mapped = mailmap.resolve_cow(sig.trim());
        let author = Author {
            name: mapped.name.to_string(),
            email: mapped.email.to_string(),
        };
        // Lenient: a malformed date is 0, not a failed search.
        let time = sig.seconds();
        let subject = subject(&message);
        hits.extend(matched.into_iter().map(|matched| SearchHit {
            commit: id.to_string(),
            author: author.clone(),
            time,
            subject: subject.clone(),
            matched,
        }));
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::fixture::Fixture;

    fn t(key: &str, value: &str) -> Trailer {
        Trailer {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn trailers_are_the_last_paragraph_of_key_value_lines() {
        let msg = "Fix the parser\n\nIt read past the end.\n\nFixes: 1234abcd (\"parser: x\")\nChange-Id: I0123\nReviewed-by: A <a@x>\n";
        assert_eq!(
            trailers(msg),
            vec![
                t("Fixes", "1234abcd (\"parser: x\")"),
                t("Change-Id", "I0123"),
                t("Reviewed-by", "A <a@x>"),
            ]
        );
    }

    #[test]
    fn a_subject_or_a_prose_paragraph_is_not_trailers() {
        assert_eq!(trailers("Fixes: not a trailer, the subject\n"), vec![]);
        assert_eq!(
            trailers("Subject\n\nFixes: x\n\nA closing note, not: a trailer block.\n"),
            vec![]
        );
        assert_eq!(trailers(""), vec![]);
    }

    #[test]
    fn continuations_and_the_cherry_pick_line_stay_in_the_block() {
        let msg = "Subject\n\nChange-Id: I1\nLink: https://example.org/a\n  /b\n(cherry picked from commit abc)\n";
        assert_eq!(
            trailers(msg),
            vec![t("Change-Id", "I1"), t("Link", "https://example.org/a /b")]
        );
        assert_eq!(
            cherry_picked_from("(cherry picked from commit abc)"),
            Some("abc")
        );
    }

    #[test]
    fn git_generated_lines_let_a_mixed_block_count() {
        let msg = "Subject\n\nSigned-off-by: A <a@x>\nsome note\nmore note\n";
        assert_eq!(trailers(msg), vec![t("Signed-off-by", "A <a@x>")]);
        let msg = "Subject\n\nReviewed-by: A <a@x>\nsome note\n";
        assert_eq!(trailers(msg), vec![]);
    }

    #[test]
    fn check_regex_names_the_problem() {
        assert_eq!(check_regex("Fixes: [0-9a-f]+"), Ok(()));
        let err = check_regex("Fixes: (").unwrap_err();
        assert!(
            err.starts_with("search regex \"Fixes: (\" is invalid: "),
            "{err}"
        );
        assert!(err.contains("unclosed group"), "{err}");
    }

    const ALICE: (&str, &str) = ("Alice", "alice@example.org");
    const BOB: (&str, &str) = ("Bob", "bob@old.example.org");

    #[test]
    fn search_finds_trailers_messages_and_cve_ids_exactly() {
        let f = Fixture::new();
        f.commit(
            1_700_000_000,
            ("Bob", "bob@new.example.org"),
            "Add mailmap\n",
            &[(
                ".mailmap",
                Some(b"Robert <bob@new.example.org> <bob@old.example.org>\n"),
            )],
        );
        let c1 = f.commit(
            1_700_000_100,
            ALICE,
            "Fix overflow in parser\n\nFixes CVE-2024-12345 and CVE-2023-0001.\n\nFixes: 0123456789ab (\"parser\")\nChange-Id: Iaaaa\n",
            &[("a", Some(b"1\n"))],
        );
        let c2 = f.commit(
            1_700_000_200,
            BOB,
            "Tidy the parser\n\nNo functional change; the overflow fix is elsewhere.\n",
            &[("a", Some(b"2\n"))],
        );
        let c3 = f.commit(
            1_700_000_300,
            ALICE,
            "Backport CVE-2024-12345 fix\n",
            &[("a", Some(b"3\n"))],
        );
        let repo = gix::open(f.path()).unwrap();
        let ids: Vec<gix::ObjectId> = [&c3, &c2, &c1]
            .iter()
            .map(|h| gix::ObjectId::from_hex(h.as_bytes()).unwrap())
            .collect();
        let cancel = AtomicBool::new(false);
        let hit =
            |commit: &str, author: (&str, &str), time, subject: &str, matched: &str| SearchHit {
                commit: commit.into(),
                author: Author {
                    name: author.0.into(),
                    email: author.1.into(),
                },
                time,
                subject: subject.into(),
                matched: matched.into(),
            };

        // A trailer hit, the CVE ids of the body, a message-only hit
        // (with Bob named as the mailmap has him), and a subject's CVE id.
        let hits = search(&repo, &ids, "(?i)overflow|^Fixes:", &cancel).unwrap();
        assert_eq!(
            hits,
            vec![
                hit(
                    &c3,
                    ALICE,
                    1_700_000_300,
                    "Backport CVE-2024-12345 fix",
                    "CVE-2024-12345"
                ),
                hit(
                    &c2,
                    ("Robert", "bob@new.example.org"),
                    1_700_000_200,
                    "Tidy the parser",
                    ""
                ),
                hit(
                    &c1,
                    ALICE,
                    1_700_000_100,
                    "Fix overflow in parser",
                    "Fixes: 0123456789ab (\"parser\")"
                ),
                hit(
                    &c1,
                    ALICE,
                    1_700_000_100,
                    "Fix overflow in parser",
                    "CVE-2024-12345"
                ),
                hit(
                    &c1,
                    ALICE,
                    1_700_000_100,
                    "Fix overflow in parser",
                    "CVE-2023-0001"
                ),
            ]
        );

        // A trailer by key; the empty pattern finds CVE ids only.
        let hits = search(&repo, &ids, "^Change-Id: Iaaaa$", &cancel).unwrap();
        let matched: Vec<_> = hits
            .iter()
            .map(|h| (h.commit.as_str(), h.matched.as_str()))
            .collect();
        assert_eq!(
            matched,
            vec![
                (c3.as_str(), "CVE-2024-12345"),
                (c1.as_str(), "Change-Id: Iaaaa"),
                (c1.as_str(), "CVE-2024-12345"),
                (c1.as_str(), "CVE-2023-0001"),
            ]
        );
        let hits = search(&repo, &ids, "", &cancel).unwrap();
        assert_eq!(hits.len(), 3);
        assert!(hits.iter().all(|h| h.matched.starts_with("CVE-")));

        assert!(matches!(
            search(&repo, &ids, "(", &cancel),
            Err(SearchError::Regex { .. })
        ));
        cancel.store(true, Ordering::Relaxed);
        assert!(matches!(
            search(&repo, &ids, "x", &cancel),
            Err(SearchError::Cancelled)
        ));
    }

    #[test]
    fn an_unknown_commit_is_named() {
        let f = Fixture::new();
        f.commit(1_700_000_000, ALICE, "one\n", &[("a", Some(b"1\n"))]);
        let repo = gix::open(f.path()).unwrap();
        let missing = gix::ObjectId::from_hex(b"1111111111111111111111111111111111111111").unwrap();
        let err = search(&repo, &[missing], "x", &AtomicBool::new(false)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("reading commit 1111111111111111111111111111111111111111 failed: "),
            "{err}"
        );
    }
}
