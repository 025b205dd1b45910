//! The git kind's spec and result (issue 16): a repository (a local path,
//! or a URL quernd mirrors), the revisions to read, and the analyses to run
//! on their history, each filling its own section of the result.
//!
//! These are plain data with their rules; the work is in `crate::git`
//! (the analyses, over gix) and `runner` (the kind). The store keeps the
//! spec and the result as JSON of these types (see `store/record.rs`):
//! every struct reads a missing field as its default, so fields are only
//! ever added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Micros;

/// What a git job reads and computes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GitSpec {
    /// A local path (bare or with a work tree), or a URL (https, ssh, git,
    /// file) that is mirrored under the state dir.
    pub repo: String,
    /// Revisions to analyse; empty means `HEAD`.
    pub revs: Vec<String>,
    /// Every branch and tag, besides `revs`.
    pub all: bool,
    /// Only commits made at or after this time (the committer's date).
    pub since: Option<Micros>,
    /// Only commits made before this time.
    pub until: Option<Micros>,
    /// The analyses; each fills its own section of [`GitResult`].
    pub analyses: Vec<Analysis>,
}

/// One analysis with its options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Analysis {
    /// Commit count, first and last dates, authors (with `.mailmap`), by
    /// month and weekday.
    Summary,
    /// Per file and per author: revisions, lines added and removed, as
    /// `git log --numstat --no-renames` counts them.
    Churn(ChurnOptions),
    /// Files ranked by revisions times current line count.
    Hotspots { top: u32, churn: ChurnOptions },
    /// Per file, the main author and their share of added lines; the bus
    /// factor.
    Ownership(ChurnOptions),
    /// Pairs of files that change together (code-maat's rules).
    Coupling(CouplingOptions),
    /// Commits whose message matches `regex`, or whose trailers match;
    /// CVE ids anywhere in the message.
    Search { regex: String },
    /// The branches and tags that contain `commit`, and for the branches
    /// that lack it, equivalent commits.
    Contains { commit: String },
}

/// Options that change per-commit numstats (part of the cache key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct ChurnOptions {
    /// Follow renames (git's default for `log` is off with
    /// `--no-renames`, which is what churn matches unless this is set).
    pub renames: bool,
}

/// code-maat's coupling options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CouplingOptions {
    /// A file needs at least this many revisions.
    pub min_revs: u32,
    /// A pair needs at least this many shared revisions.
    pub min_shared: u32,
    /// A pair needs at least this coupling, in percent.
    pub min_coupling: u32,
    /// Commits touching more files than this are ignored.
    pub max_changeset: u32,
}

impl Default for CouplingOptions {
    fn default() -> CouplingOptions {
        CouplingOptions {
            min_revs: 5,
            min_shared: 5,
            min_coupling: 30,
            max_changeset: 30,
        }
    }
}

/// The default number of hotspots kept.
pub const DEFAULT_TOP: u32 = 50;

impl Analysis {
    /// The analyses' names, as the API and quernctl take them.
    pub const NAMES: [&'static str; 7] = [
        "summary",
        "churn",
        "hotspots",
        "ownership",
        "coupling",
        "search",
        "contains",
    ];

    /// The analysis' name.
    pub fn name(&self) -> &'static str {
        match self {
            Analysis::Summary => "summary",
            Analysis::Churn(_) => "churn",
            Analysis::Hotspots { .. } => "hotspots",
            Analysis::Ownership(_) => "ownership",
            Analysis::Coupling(_) => "coupling",
            Analysis::Search { .. } => "search",
            Analysis::Contains { .. } => "contains",
        }
    }
}

/// One author, as `.mailmap` names them.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Author {
    pub name: String,
    pub email: String,
}

/// The `summary` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub commits: u64,
    /// The first and last commit dates (author dates), seconds since the
    /// epoch.
    pub first: Option<i64>,
    pub last: Option<i64>,
    /// Authors by commits, most first, then by name (a shortlog).
    pub authors: Vec<(Author, u64)>,
    /// Commits by month ("2026-11"), in the author's time zone.
    pub by_month: BTreeMap<String, u64>,
    /// Commits by weekday, Monday first, in the author's time zone.
    pub by_weekday: [u64; 7],
}

/// One file's churn.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileChurn {
    pub path: String,
    /// Commits that changed it.
    pub revisions: u64,
    pub added: u64,
    pub removed: u64,
    /// Distinct authors of those commits.
    pub authors: u64,
}

/// One author's churn.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthorChurn {
    pub author: Author,
    pub added: u64,
    pub removed: u64,
}

/// The `churn` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Churn {
    /// By path.
    pub files: Vec<FileChurn>,
    /// By lines added and removed, most first.
    pub authors: Vec<AuthorChurn>,
}

/// One hotspot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hotspot {
    pub path: String,
    pub revisions: u64,
    /// Lines in the file at the newest analysed commit.
    pub lines: u64,
    /// `revisions * lines`.
    pub score: u64,
}

/// One file's main author.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileOwner {
    pub path: String,
    pub author: Author,
    /// Their share of the file's added lines, 0 to 1.
    pub share: f64,
}

/// The `ownership` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ownership {
    /// By path.
    pub files: Vec<FileOwner>,
    /// The fewest authors who together are main author of over half of
    /// the files.
    pub bus_factor: u32,
}

/// Two files that change together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoupledPair {
    pub a: String,
    pub b: String,
    /// Commits that changed both.
    pub shared: u64,
    /// `shared` over the mean of their revisions, in percent (code-maat).
    pub degree: u32,
    /// The mean of their revisions, rounded up (as code-maat reports it).
    pub average_revs: u64,
}

/// One commit found by `search`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchHit {
    /// The full hex id.
    pub commit: String,
    pub author: Author,
    /// The author date, seconds since the epoch.
    pub time: i64,
    pub subject: String,
    /// What matched: a trailer line ("Fixes: ..."), a CVE id, or the
    /// message (empty).
    pub matched: String,
}

/// How a commit on another branch was found equal to the one asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Equivalence {
    ChangeId,
    CherryPickedFrom,
    PatchId,
}

/// A branch without the commit, and its equivalent commits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Lacking {
    pub branch: String,
    pub equivalents: Vec<(String, Equivalence)>,
}

/// The `contains` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Contains {
    /// The full hex id asked about.
    pub commit: String,
    pub branches: Vec<String>,
    pub tags: Vec<String>,
    /// Branches that lack it, with the equivalents found on each.
    pub lacking: Vec<Lacking>,
}

/// What a git job found, a section per analysis asked for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GitResult {
    /// The analyses asked for, by name, so that an empty section is told
    /// from one not asked for.
    pub analyses: Vec<String>,
    /// Commits walked.
    pub commits: u64,
    /// Of the commits whose numstat an analysis needed: read from the
    /// cache, and computed.
    pub reused: u64,
    pub computed: u64,
    pub summary: Option<Summary>,
    pub churn: Option<Churn>,
    pub hotspots: Option<Vec<Hotspot>>,
    pub ownership: Option<Ownership>,
    pub coupling: Option<Vec<CoupledPair>>,
    pub search: Option<Vec<SearchHit>>,
    pub contains: Option<Contains>,
    /// Set when the result was over `[git] max_result_bytes`: the whole
    /// result is in this file (proto JSON, owner-only), and the sections
    /// above are empty.
    pub file: Option<String>,
    /// The file's size in bytes.
    pub file_bytes: u64,
}

// A result holds no NaN (an owner's share is a ratio of counts, and files
// with no added lines have no owner), so equality is an equivalence.
impl Eq for GitResult {}

/// Most revisions a spec may name.
pub const MAX_REVS: usize = 256;

/// Most analyses a spec may ask for.
pub const MAX_ANALYSES: usize = 16;

/// The URL schemes a repository may be given with.
pub const SCHEMES: [&str; 5] = ["https", "http", "ssh", "git", "file"];

/// Whether `repo` is given as a URL (with a scheme, or scp-like
/// `user@host:path`) rather than a local path.
pub fn is_url(repo: &str) -> bool {
    if repo.contains("://") {
        return true;
    }
    // scp-like: a colon before any slash, and not an absolute path.
    !repo.starts_with('/')
        && repo
            .split_once(':')
            .is_some_and(|(host, _)| !host.is_empty() && !host.contains('/'))
}

impl GitSpec {
    /// The rules every git spec meets; the rest (the path is a repository,
    /// the revisions exist) is checked on disk by the kind.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.repo.is_empty() {
            return Err((
                ".git.repo",
                "missing; give an absolute path to a repository, or a URL".into(),
            ));
        }
        if self.repo.contains('\0') {
            return Err((".git.repo", "contains a NUL byte; remove it".into()));
        }
        if is_url(&self.repo) {
            let scheme = self
                .repo
                .split_once("://")
                .map(|(s, _)| s.to_ascii_lowercase());
            if let Some(scheme) = scheme
                && !SCHEMES.contains(&scheme.as_str())
            {
                return Err((
                    ".git.repo",
                    format!(
                        "has the unsupported scheme {scheme:?}; use one of {}, or user@host:path",
                        SCHEMES.join(", ")
                    ),
                ));
            }
        } else if !self.repo.starts_with('/') {
            return Err((
                ".git.repo",
                format!(
                    "{:?} is a relative path; give an absolute one (quernctl resolves it against its cwd)",
                    self.repo
                ),
            ));
        }
        if self.revs.len() > MAX_REVS {
            return Err((
                ".git.revs",
                format!(
                    "has {} revisions, over the limit of {MAX_REVS}",
                    self.revs.len()
                ),
            ));
        }
        if self.revs.iter().any(|r| r.is_empty() || r.contains('\0')) {
            return Err((
                ".git.revs",
                "holds an empty revision or one with a NUL byte; give names git rev-parse takes"
                    .into(),
            ));
        }
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since > until
        {
            return Err((
                ".git.since",
                "is after until; give a since before until".into(),
            ));
        }
        if self.analyses.len() > MAX_ANALYSES {
            return Err((
                ".git.analyses",
                format!(
                    "has {} analyses, over the limit of {MAX_ANALYSES}",
                    self.analyses.len()
                ),
            ));
        }
        for a in &self.analyses {
            match a {
                Analysis::Search { regex } => {
                    if let Err(e) = regex::Regex::new(regex) {
                        return Err((
                            ".git.analyses.regex",
                            format!("{regex:?} is not a valid regular expression: {e}"),
                        ));
                    }
                }
                Analysis::Contains { commit } => {
                    let hex = commit.len() >= 4
                        && commit.len() <= 40
                        && commit.bytes().all(|b| b.is_ascii_hexdigit());
                    if !hex {
                        return Err((
                            ".git.analyses.commit",
                            format!("{commit:?} is not a commit id; give 4 to 40 hex digits"),
                        ));
                    }
                }
                Analysis::Hotspots { top: 0, .. } => {
                    return Err((".git.analyses.top", "must be at least 1".into()));
                }
                _ => {}
            }
        }
        Ok(())
    }
}
