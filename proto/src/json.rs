//! The JSON forms of messages that travel outside gRPC: a git result the
//! daemon wrote to a file because it was over its size limit, which
//! clients read back. The form is proto JSON's: the proto's field names
//! (readers also take the lowerCamelCase names), RFC 3339 times, and
//! 64-bit numbers as numbers (readers also take strings).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::v1::{
    GitAuthor, GitAuthorChurn, GitAuthorCount, GitChurn, GitContains, GitCoupledPair,
    GitEquivalent, GitFileChurn, GitFileOwner, GitHotspot, GitLacking, GitOwnership, GitResult,
    GitSearchHit, GitSummary,
};

/// An RFC 3339 string in UTC, or `null` when unset. A timestamp that
/// cannot be a `SystemTime` (out of range) is also `null`: it carries no
/// usable time.
pub fn timestamp_json(ts: Option<prost_types::Timestamp>) -> Value {
    ts.and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map_or(Value::Null, |t| {
            Value::String(humantime::format_rfc3339(t).to_string())
        })
}

fn author_json(author: Option<&GitAuthor>) -> Value {
    author.map_or(Value::Null, |a| json!({ "name": a.name, "email": a.email }))
}

/// A git result as a JSON object: every field of every section, with the
/// proto's field names; a section not asked for is `null` or `[]`, as the
/// proto leaves it.
pub fn git_result_json(r: &GitResult) -> Value {
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

/// A `GitResult` from the proto JSON form. Field names may be the proto's
/// (`bus_factor`) or proto JSON's lowerCamelCase (`busFactor`), and 64-bit
/// numbers numbers or strings, as the proto JSON mapping allows; a missing
/// field is its default. The error names the field that is wrong.
pub fn git_result_from_json(value: &Value) -> Result<GitResult, String> {
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
