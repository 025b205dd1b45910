//! How a git job is shown: its analyses in words and as JSON, its result as
//! JSON with every field and as tables for people, and the reading of a
//! result that the daemon wrote to a file because it was over the size
//! limit.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use comfy_table::CellAlignment;
use quern_proto::v1::{
    GitAnalysis, GitAuthor, GitAuthorChurn, GitAuthorCount, GitChurn, GitContains, GitCoupledPair,
    GitEquivalent, GitFileChurn, GitFileOwner, GitHotspot, GitLacking, GitOwnership, GitResult,
    GitSearchHit, GitSummary,
};
use serde_json::{Map, Value, json};

use super::{render, system_time, table, timestamp_json};

/// One analysis of a spec as a JSON object, every option present, with the
/// proto's field names.
pub fn analysis_json(a: &GitAnalysis) -> Value {
    json!({
        "name": a.name,
        "renames": a.renames,
        "top": a.top,
        "min_revs": a.min_revs,
        "min_shared": a.min_shared,
        "min_coupling": a.min_coupling,
        "max_changeset": a.max_changeset,
        "regex": a.regex,
        "commit": a.commit,
    })
}

/// One analysis in words, with the options that are not the default:
/// "hotspots (top 10, renames)", "search /CVE-\d+/", "contains 1a2b3c".
pub fn analysis_words(a: &GitAnalysis) -> String {
    let mut options = Vec::new();
    if a.top != 0 {
        options.push(format!("top {}", a.top));
    }
    if a.renames {
        options.push("renames".to_owned());
    }
    let limits = [
        ("min revs", a.min_revs),
        ("min shared", a.min_shared),
        ("min coupling", a.min_coupling),
        ("max changeset", a.max_changeset),
    ];
    for (name, value) in limits {
        if value != 0 {
            options.push(format!("{name} {value}"));
        }
    }
    let mut words = a.name.clone();
    if !a.regex.is_empty() {
        words.push_str(&format!(" /{}/", a.regex));
    }
    if !a.commit.is_empty() {
        words.push_str(&format!(" {}", a.commit));
    }
    if !options.is_empty() {
        words.push_str(&format!(" ({})", options.join(", ")));
    }
    words
}

fn author_json(author: Option<&GitAuthor>) -> Value {
    author.map_or(Value::Null, |a| json!({ "name": a.name, "email": a.email }))
}

/// A git result as a JSON object: every field of every section, with the
/// proto's field names; a section not asked for is `null` or `[]`, as the
/// proto leaves it.
pub fn result_json(r: &GitResult) -> Value {
    json!({
        "commits": r.commits,
        "reused": r.reused,
        "computed": r.computed,
        "analyses": r.analyses,
        "file": r.file,
        "file_bytes": r.file_bytes,
        "summary": r.summary.as_ref().map(|s| json!({
            "commits": s.commits,
            "first": timestamp_json(s.first),
            "last": timestamp_json(s.last),
            "authors": s.authors.iter().map(|a| json!({
                "author": author_json(a.author.as_ref()),
                "commits": a.commits,
            })).collect::<Vec<_>>(),
            "by_month": s.by_month,
            "by_weekday": s.by_weekday,
        })),
        "churn": r.churn.as_ref().map(|c| json!({
            "files": c.files.iter().map(|f| json!({
                "path": f.path,
                "revisions": f.revisions,
                "added": f.added,
                "removed": f.removed,
                "authors": f.authors,
            })).collect::<Vec<_>>(),
            "authors": c.authors.iter().map(|a| json!({
                "author": author_json(a.author.as_ref()),
                "added": a.added,
                "removed": a.removed,
            })).collect::<Vec<_>>(),
        })),
        "hotspots": r.hotspots.iter().map(|h| json!({
            "path": h.path,
            "revisions": h.revisions,
            "lines": h.lines,
            "score": h.score,
        })).collect::<Vec<_>>(),
        "ownership": r.ownership.as_ref().map(|o| json!({
            "files": o.files.iter().map(|f| json!({
                "path": f.path,
                "author": author_json(f.author.as_ref()),
                "share": f.share,
            })).collect::<Vec<_>>(),
            "bus_factor": o.bus_factor,
        })),
        "coupling": r.coupling.iter().map(|c| json!({
            "a": c.a,
            "b": c.b,
            "shared": c.shared,
            "degree": c.degree,
            "average_revs": c.average_revs,
        })).collect::<Vec<_>>(),
        "search": r.search.iter().map(|h| json!({
            "commit": h.commit,
            "author": author_json(h.author.as_ref()),
            "time": timestamp_json(h.time),
            "subject": h.subject,
            "matched": h.matched,
        })).collect::<Vec<_>>(),
        "contains": r.contains.as_ref().map(|c| json!({
            "commit": c.commit,
            "branches": c.branches,
            "tags": c.tags,
            "lacking": c.lacking.iter().map(|l| json!({
                "branch": l.branch,
                "equivalents": l.equivalents.iter().map(|e| json!({
                    "commit": e.commit,
                    "rule": e.rule,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })),
    })
}

/// The rows `get` shows of a git result: the counts, and where to see the
/// sections, which are too long for a two-column view.
pub fn result_rows(r: &GitResult) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("commits walked", r.commits.to_string()),
        ("per-file numbers", numstat_words(r)),
    ];
    if !r.file.is_empty() {
        rows.push(("result file", file_words(r)));
    }
    rows.push(("analyses", r.analyses.join(", ")));
    rows
}

fn numstat_words(r: &GitResult) -> String {
    format!(
        "{} reused from the cache, {} computed",
        r.reused, r.computed
    )
}

fn file_words(r: &GitResult) -> String {
    format!("{} ({})", r.file, super::bytes_exact(r.file_bytes))
}

/// A git result for people: the header lines, then a titled table per
/// analysis asked for, each with at most `top` rows and a line saying how
/// many were left out.
pub fn result_text(r: &GitResult, top: usize) -> String {
    let mut blocks = vec![super::rows_table(result_rows(r))];
    // A result from a daemon that does not list its analyses shows the
    // sections that have something in them.
    let asked = |name: &str| r.analyses.iter().any(|a| a == name);
    let listed = !r.analyses.is_empty();
    if asked("summary") || (!listed && r.summary.is_some()) {
        blocks.push(summary_text(
            r.summary.as_ref().unwrap_or(&GitSummary::default()),
            top,
        ));
    }
    if asked("churn") || (!listed && r.churn.is_some()) {
        blocks.push(churn_text(
            r.churn.as_ref().unwrap_or(&GitChurn::default()),
            top,
        ));
    }
    if asked("hotspots") || (!listed && !r.hotspots.is_empty()) {
        blocks.push(hotspots_text(&r.hotspots, top));
    }
    if asked("ownership") || (!listed && r.ownership.is_some()) {
        blocks.push(ownership_text(
            r.ownership.as_ref().unwrap_or(&GitOwnership::default()),
            top,
        ));
    }
    if asked("coupling") || (!listed && !r.coupling.is_empty()) {
        blocks.push(coupling_text(&r.coupling, top));
    }
    if asked("search") || (!listed && !r.search.is_empty()) {
        blocks.push(search_text(&r.search, top));
    }
    if asked("contains") || (!listed && r.contains.is_some()) {
        blocks.push(contains_text(
            r.contains.as_ref().unwrap_or(&GitContains::default()),
            top,
        ));
    }
    blocks.join("\n\n")
}

/// A titled table of the first `top` of `rows`, numbers aligned right, or
/// "title: none" when there are no rows.
fn section<I>(title: &str, header: &[&str], rows: I, top: usize) -> String
where
    I: ExactSizeIterator<Item = Vec<String>>,
{
    let total = rows.len();
    if total == 0 {
        return format!("{title}: none");
    }
    let mut t = table();
    t.set_header(header.iter().map(|h| h.to_string()));
    for row in rows.take(top) {
        t.add_row(row);
    }
    // Columns whose header says they are counts read better aligned right.
    for (index, name) in header.iter().enumerate() {
        if let (true, Some(column)) = (NUMERIC.contains(name), t.column_mut(index)) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut text = format!("{title}\n{}", render(t));
    if total > top {
        text.push_str(&format!(
            "\n({} more; show them with --top {total} or --json)",
            total - top
        ));
    }
    text
}

/// The column headers that hold numbers.
const NUMERIC: [&str; 10] = [
    "commits",
    "revisions",
    "added",
    "removed",
    "authors",
    "lines",
    "score",
    "share",
    "shared",
    "degree",
];

fn person(author: Option<&GitAuthor>) -> String {
    match author {
        Some(a) if a.email.is_empty() => a.name.clone(),
        Some(a) => format!("{} <{}>", a.name, a.email),
        None => String::new(),
    }
}

fn time_words(ts: Option<prost_types::Timestamp>) -> String {
    ts.and_then(system_time).map_or_else(
        || "-".to_owned(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
}

/// The weekday names of `GitSummary.by_weekday`, Monday first.
const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

fn summary_text(s: &GitSummary, top: usize) -> String {
    let head = super::rows_table(vec![
        ("commits", s.commits.to_string()),
        ("first", time_words(s.first)),
        ("last", time_words(s.last)),
    ]);
    let authors = section(
        "authors",
        &["author", "commits"],
        s.authors
            .iter()
            .map(|a: &GitAuthorCount| vec![person(a.author.as_ref()), a.commits.to_string()]),
        top,
    );
    // The most recent months are the ones worth seeing first.
    let mut months: Vec<(&String, &u64)> = s.by_month.iter().collect();
    months.sort();
    months.reverse();
    let months = section(
        "commits by month, newest first",
        &["month", "commits"],
        months
            .into_iter()
            .map(|(m, n)| vec![m.clone(), n.to_string()]),
        top,
    );
    let mut weekdays = table();
    weekdays.set_header(WEEKDAYS);
    weekdays.add_row(s.by_weekday.iter().map(u64::to_string));
    for column in weekdays.column_iter_mut() {
        column.set_cell_alignment(CellAlignment::Right);
    }
    format!(
        "summary\n{head}\n\n{authors}\n\n{months}\n\ncommits by weekday\n{}",
        render(weekdays)
    )
}

fn churn_text(c: &GitChurn, top: usize) -> String {
    // Most revised first, then most lines changed, then by path, whatever
    // order the daemon sent.
    let mut files: Vec<&GitFileChurn> = c.files.iter().collect();
    files.sort_by(|x, y| {
        (y.revisions, y.added + y.removed)
            .cmp(&(x.revisions, x.added + x.removed))
            .then_with(|| x.path.cmp(&y.path))
    });
    let mut authors: Vec<&GitAuthorChurn> = c.authors.iter().collect();
    authors.sort_by_key(|a| std::cmp::Reverse(a.added + a.removed));
    let files = section(
        "churn by file",
        &["path", "revisions", "added", "removed", "authors"],
        files.into_iter().map(|f| {
            vec![
                f.path.clone(),
                f.revisions.to_string(),
                f.added.to_string(),
                f.removed.to_string(),
                f.authors.to_string(),
            ]
        }),
        top,
    );
    let authors = section(
        "churn by author",
        &["author", "added", "removed"],
        authors.into_iter().map(|a| {
            vec![
                person(a.author.as_ref()),
                a.added.to_string(),
                a.removed.to_string(),
            ]
        }),
        top,
    );
    format!("{files}\n\n{authors}")
}

fn hotspots_text(hotspots: &[GitHotspot], top: usize) -> String {
    section(
        "hotspots",
        &["path", "revisions", "lines", "score"],
        hotspots.iter().map(|h| {
            vec![
                h.path.clone(),
                h.revisions.to_string(),
                h.lines.to_string(),
                h.score.to_string(),
            ]
        }),
        top,
    )
}

fn ownership_text(o: &GitOwnership, top: usize) -> String {
    let files = section(
        "ownership",
        &["path", "main author", "share"],
        o.files.iter().map(|f: &GitFileOwner| {
            vec![
                f.path.clone(),
                person(f.author.as_ref()),
                format!("{:.1}%", f.share * 100.0),
            ]
        }),
        top,
    );
    format!(
        "{files}\nbus factor: {} (the fewest authors who are main author of over half of the files)",
        o.bus_factor
    )
}

fn coupling_text(pairs: &[GitCoupledPair], top: usize) -> String {
    section(
        "coupling",
        &["a", "b", "shared", "degree"],
        pairs.iter().map(|c| {
            vec![
                c.a.clone(),
                c.b.clone(),
                c.shared.to_string(),
                format!("{}%", c.degree),
            ]
        }),
        top,
    )
}

/// How many hex digits of a commit id a table shows, as `git log
/// --abbrev=10`: enough to be unique in all but the largest repositories.
const SHORT_ID: usize = 10;

fn short(commit: &str) -> &str {
    commit.get(..SHORT_ID).unwrap_or(commit)
}

fn search_text(hits: &[GitSearchHit], top: usize) -> String {
    section(
        "search",
        &["commit", "date", "author", "subject", "matched"],
        hits.iter().map(|h| {
            let date = time_words(h.time);
            vec![
                short(&h.commit).to_owned(),
                date.get(..10).unwrap_or(&date).to_owned(),
                person(h.author.as_ref()),
                h.subject.clone(),
                h.matched.clone(),
            ]
        }),
        top,
    )
}

fn contains_text(c: &GitContains, top: usize) -> String {
    let list = |names: &[String]| {
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    let head = super::rows_table(vec![
        ("commit", c.commit.clone()),
        ("branches", list(&c.branches)),
        ("tags", list(&c.tags)),
    ]);
    // One row per equivalent found, and one for a branch with none, so
    // that every lacking branch shows.
    let mut rows = Vec::new();
    for l in &c.lacking {
        if l.equivalents.is_empty() {
            rows.push(vec![l.branch.clone(), "none".to_owned(), String::new()]);
        }
        for e in &l.equivalents {
            rows.push(vec![
                l.branch.clone(),
                short(&e.commit).to_owned(),
                e.rule.clone(),
            ]);
        }
    }
    let lacking = section(
        "branches that lack it",
        &["branch", "equivalent", "rule"],
        rows.into_iter(),
        top,
    );
    format!("contains\n{head}\n\n{lacking}")
}

/// Reads the result the daemon wrote to `r.file`, keeping `file` and
/// `file_bytes` as the job reported them.
pub fn read_result_file(r: &GitResult) -> Result<GitResult> {
    let path = Path::new(&r.file);
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read the result file {}, which quernd wrote because the result was over its size limit; run quernctl as the job's owner, on the daemon's machine",
            path.display()
        )
    })?;
    let value: Value = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "the result file {} is not JSON; it may be truncated, so run the job again",
            path.display()
        )
    })?;
    let mut read = from_json(&value).map_err(|why| {
        anyhow::anyhow!(
            "the result file {} is not a git result: {why}; check that quernd and quernctl are the same version",
            path.display()
        )
    })?;
    read.file = r.file.clone();
    read.file_bytes = r.file_bytes;
    Ok(read)
}

/// A `GitResult` from the proto JSON form. Field names may be the proto's
/// (`bus_factor`) or proto JSON's lowerCamelCase (`busFactor`), and 64-bit
/// numbers numbers or strings, as the proto JSON mapping allows; a missing
/// field is its default. The error names the field that is wrong.
pub fn from_json(value: &Value) -> Result<GitResult, String> {
    let r = Obj::of(value, "the result")?;
    Ok(GitResult {
        commits: r.u64("commits")?,
        reused: r.u64("reused")?,
        computed: r.u64("computed")?,
        summary: r.opt("summary", |s| {
            Ok(GitSummary {
                commits: s.u64("commits")?,
                first: s.time("first")?,
                last: s.time("last")?,
                authors: s.list("authors", |a| {
                    Ok(GitAuthorCount {
                        author: a.author("author")?,
                        commits: a.u64("commits")?,
                    })
                })?,
                by_month: s.counts("by_month")?,
                by_weekday: s.list_of("by_weekday", u64_of)?,
            })
        })?,
        churn: r.opt("churn", |c| {
            Ok(GitChurn {
                files: c.list("files", |f| {
                    Ok(GitFileChurn {
                        path: f.str("path")?,
                        revisions: f.u64("revisions")?,
                        added: f.u64("added")?,
                        removed: f.u64("removed")?,
                        authors: f.u64("authors")?,
                    })
                })?,
                authors: c.list("authors", |a| {
                    Ok(GitAuthorChurn {
                        author: a.author("author")?,
                        added: a.u64("added")?,
                        removed: a.u64("removed")?,
                    })
                })?,
            })
        })?,
        hotspots: r.list("hotspots", |h| {
            Ok(GitHotspot {
                path: h.str("path")?,
                revisions: h.u64("revisions")?,
                lines: h.u64("lines")?,
                score: h.u64("score")?,
            })
        })?,
        ownership: r.opt("ownership", |o| {
            Ok(GitOwnership {
                files: o.list("files", |f| {
                    Ok(GitFileOwner {
                        path: f.str("path")?,
                        author: f.author("author")?,
                        share: f.f64("share")?,
                    })
                })?,
                bus_factor: o.u32("bus_factor")?,
            })
        })?,
        coupling: r.list("coupling", |c| {
            Ok(GitCoupledPair {
                a: c.str("a")?,
                b: c.str("b")?,
                shared: c.u64("shared")?,
                degree: c.u32("degree")?,
                average_revs: c.u64("average_revs")?,
            })
        })?,
        search: r.list("search", |h| {
            Ok(GitSearchHit {
                commit: h.str("commit")?,
                author: h.author("author")?,
                time: h.time("time")?,
                subject: h.str("subject")?,
                matched: h.str("matched")?,
            })
        })?,
        contains: r.opt("contains", |c| {
            Ok(GitContains {
                commit: c.str("commit")?,
                branches: c.list_of("branches", str_of)?,
                tags: c.list_of("tags", str_of)?,
                lacking: c.list("lacking", |l| {
                    Ok(GitLacking {
                        branch: l.str("branch")?,
                        equivalents: l.list("equivalents", |e| {
                            Ok(GitEquivalent {
                                commit: e.str("commit")?,
                                rule: e.str("rule")?,
                            })
                        })?,
                    })
                })?,
            })
        })?,
        file: r.str("file")?,
        file_bytes: r.u64("file_bytes")?,
        analyses: r.list_of("analyses", str_of)?,
    })
}

/// A JSON object being read, with the path to it for error messages.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    at: String,
}

impl<'a> Obj<'a> {
    fn of(value: &'a Value, at: &str) -> Result<Self, String> {
        match value {
            Value::Object(map) => Ok(Self {
                map,
                at: at.to_owned(),
            }),
            _ => Err(format!("{at} is not an object")),
        }
    }

    /// The field by its proto name or its lowerCamelCase JSON name; `None`
    /// when absent or null.
    fn get(&self, name: &str) -> Option<&'a Value> {
        let camel = lower_camel(name);
        self.map
            .get(name)
            .or_else(|| self.map.get(&camel))
            .filter(|v| !v.is_null())
    }

    fn path(&self, name: &str) -> String {
        format!("{}.{name}", self.at)
    }

    fn u64(&self, name: &str) -> Result<u64, String> {
        self.get(name)
            .map_or(Ok(0), |v| u64_of(v, &self.path(name)))
    }

    fn u32(&self, name: &str) -> Result<u32, String> {
        let n = self.u64(name)?;
        u32::try_from(n).map_err(|_| format!("{} is {n}, over 32 bits", self.path(name)))
    }

    fn f64(&self, name: &str) -> Result<f64, String> {
        match self.get(name) {
            None => Ok(0.0),
            Some(Value::Number(n)) => n
                .as_f64()
                .ok_or_else(|| format!("{} is not a number", self.path(name))),
            Some(Value::String(s)) => s
                .parse()
                .map_err(|_| format!("{} is not a number", self.path(name))),
            Some(_) => Err(format!("{} is not a number", self.path(name))),
        }
    }

    fn str(&self, name: &str) -> Result<String, String> {
        self.get(name)
            .map_or(Ok(String::new()), |v| str_of(v, &self.path(name)))
    }

    fn time(&self, name: &str) -> Result<Option<prost_types::Timestamp>, String> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let text = str_of(value, &self.path(name))?;
        humantime::parse_rfc3339_weak(&text)
            .map(|t| Some(t.into()))
            .map_err(|err| format!("{} is not an RFC 3339 time ({err})", self.path(name)))
    }

    fn author(&self, name: &str) -> Result<Option<GitAuthor>, String> {
        self.opt(name, |a| {
            Ok(GitAuthor {
                name: a.str("name")?,
                email: a.str("email")?,
            })
        })
    }

    fn counts(&self, name: &str) -> Result<HashMap<String, u64>, String> {
        let Some(value) = self.get(name) else {
            return Ok(HashMap::new());
        };
        let map = Obj::of(value, &self.path(name))?;
        map.map
            .iter()
            .map(|(k, v)| Ok((k.clone(), u64_of(v, &map.path(k))?)))
            .collect()
    }

    fn opt<T>(
        &self,
        name: &str,
        read: impl FnOnce(&Obj<'a>) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        self.get(name)
            .map(|v| read(&Obj::of(v, &self.path(name))?))
            .transpose()
    }

    fn list<T>(
        &self,
        name: &str,
        read: impl Fn(&Obj<'a>) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        self.list_of(name, |v, at| read(&Obj::of(v, at)?))
    }

    fn list_of<T>(
        &self,
        name: &str,
        read: impl Fn(&'a Value, &str) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| read(v, &format!("{}[{i}]", self.path(name))))
                .collect(),
            Some(_) => Err(format!("{} is not a list", self.path(name))),
        }
    }
}

fn u64_of(value: &Value, at: &str) -> Result<u64, String> {
    match value {
        Value::Number(n) => n.as_u64(),
        // Proto JSON writes 64-bit integers as strings.
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{at} is not a whole number"))
}

fn str_of(value: &Value, at: &str) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{at} is not a string"))
}

/// `bus_factor` as proto JSON names it: `busFactor`.
fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
