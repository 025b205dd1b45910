//! How a git job is shown: its analyses in words and as JSON, its result as
//! JSON with every field and as tables for people, and the reading of a
//! result that the daemon wrote to a file because it was over the size
//! limit.

use std::path::Path;

use anyhow::{Context, Result};
use comfy_table::CellAlignment;
use quern_proto::v1::{
    GitAnalysis, GitAuthor, GitAuthorChurn, GitAuthorCount, GitChurn, GitContains, GitCoupledPair,
    GitFileChurn, GitFileOwner, GitHotspot, GitOwnership, GitResult, GitSearchHit, GitSummary,
};
use serde_json::{Value, json};

pub use quern_proto::json::{git_result_from_json as from_json, git_result_json as result_json};

use super::{render, system_time, table};

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

#[cfg(test)]
mod tests;
