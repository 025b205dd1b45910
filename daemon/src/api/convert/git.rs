//! The git kind's spec and result between the wire and the domain.

use quern_proto::v1 as pb;

use super::{SpecPath, micros_to_ts, ts_to_micros};
use crate::error::Error;
use crate::job::git::{
    Analysis, Author, ChurnOptions, CouplingOptions, DEFAULT_TOP, Equivalence, GitResult, GitSpec,
};

/// A git spec from the wire: names are checked here, then the rules every
/// spec meets ([`GitSpec::check`]).
pub fn git_from_proto(g: pb::GitSpec, path: SpecPath) -> Result<GitSpec, Error> {
    let mut analyses = Vec::with_capacity(g.analyses.len());
    for (i, a) in g.analyses.into_iter().enumerate() {
        let field = |f: &str| path.field(&format!(".git.analyses[{i}]{f}"));
        let churn = ChurnOptions { renames: a.renames };
        let d = CouplingOptions::default();
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        analyses.push(match a.name.as_str() {
            "summary" => Analysis::Summary,
            "churn" => Analysis::Churn(churn),
            "hotspots" => Analysis::Hotspots {
                top: or(a.top, DEFAULT_TOP),
                churn,
            },
            "ownership" => Analysis::Ownership(churn),
            "coupling" => Analysis::Coupling(CouplingOptions {
                min_revs: or(a.min_revs, d.min_revs),
                min_shared: or(a.min_shared, d.min_shared),
                min_coupling: or(a.min_coupling, d.min_coupling),
                max_changeset: or(a.max_changeset, d.max_changeset),
            }),
            "search" => Analysis::Search { regex: a.regex },
            "contains" => {
                if a.commit.is_empty() {
                    return Err(Error::invalid(
                        field(".commit"),
                        "missing; give the commit id whose branches to find",
                    ));
                }
                Analysis::Contains { commit: a.commit }
            }
            other => {
                return Err(Error::invalid(
                    field(".name"),
                    format!(
                        "unknown analysis {other:?}; use one of {}",
                        Analysis::NAMES.join(", ")
                    ),
                ));
            }
        });
    }
    if analyses.is_empty() {
        analyses.push(Analysis::Summary);
    }
    let ts = |f: &str, t: Option<prost_types::Timestamp>| {
        t.map(|t| ts_to_micros(&path.field(f), &t)).transpose()
    };
    let spec = GitSpec {
        repo: g.repo,
        revs: g.revs,
        all: g.all,
        since: ts(".git.since", g.since)?,
        until: ts(".git.until", g.until)?,
        analyses,
    };
    // What converts is a spec the domain accepts (a relative path, a bad
    // regex or scheme is refused here, naming the field).
    spec.check()
        .map_err(|(field, reason)| Error::invalid(path.field(field), reason))?;
    Ok(spec)
}

/// The proto form of a git spec.
pub fn git_to_proto(g: &GitSpec) -> pb::GitSpec {
    pb::GitSpec {
        repo: g.repo.clone(),
        revs: g.revs.clone(),
        all: g.all,
        since: g.since.map(micros_to_ts),
        until: g.until.map(micros_to_ts),
        analyses: g.analyses.iter().map(analysis_to_proto).collect(),
    }
}

fn analysis_to_proto(a: &Analysis) -> pb::GitAnalysis {
    let mut p = pb::GitAnalysis {
        name: a.name().to_string(),
        ..Default::default()
    };
    match a {
        Analysis::Summary => {}
        Analysis::Churn(c) | Analysis::Ownership(c) => p.renames = c.renames,
        Analysis::Hotspots { top, churn } => {
            p.top = *top;
            p.renames = churn.renames;
        }
        Analysis::Coupling(c) => {
            p.min_revs = c.min_revs;
            p.min_shared = c.min_shared;
            p.min_coupling = c.min_coupling;
            p.max_changeset = c.max_changeset;
        }
        Analysis::Search { regex } => p.regex = regex.clone(),
        Analysis::Contains { commit } => p.commit = commit.clone(),
    }
    p
}

fn author(a: &Author) -> Option<pb::GitAuthor> {
    Some(pb::GitAuthor {
        name: a.name.clone(),
        email: a.email.clone(),
    })
}

fn seconds(s: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: s,
        nanos: 0,
    }
}

/// The proto form of a git result.
pub fn git_result_to_proto(r: &GitResult) -> pb::GitResult {
    pb::GitResult {
        commits: r.commits,
        reused: r.reused,
        computed: r.computed,
        analyses: r.analyses.clone(),
        file: r.file.clone().unwrap_or_default(),
        file_bytes: r.file_bytes,
        summary: r.summary.as_ref().map(|s| pb::GitSummary {
            commits: s.commits,
            first: s.first.map(seconds),
            last: s.last.map(seconds),
            authors: s
                .authors
                .iter()
                .map(|(a, n)| pb::GitAuthorCount {
                    author: author(a),
                    commits: *n,
                })
                .collect(),
            by_month: s.by_month.clone().into_iter().collect(),
            by_weekday: s.by_weekday.to_vec(),
        }),
        churn: r.churn.as_ref().map(|c| pb::GitChurn {
            files: c
                .files
                .iter()
                .map(|f| pb::GitFileChurn {
                    path: f.path.clone(),
                    revisions: f.revisions,
                    added: f.added,
                    removed: f.removed,
                    authors: f.authors,
                })
                .collect(),
            authors: c
                .authors
                .iter()
                .map(|a| pb::GitAuthorChurn {
                    author: author(&a.author),
                    added: a.added,
                    removed: a.removed,
                })
                .collect(),
        }),
        hotspots: r
            .hotspots
            .iter()
            .flatten()
            .map(|h| pb::GitHotspot {
                path: h.path.clone(),
                revisions: h.revisions,
                lines: h.lines,
                score: h.score,
            })
            .collect(),
        ownership: r.ownership.as_ref().map(|o| pb::GitOwnership {
            files: o
                .files
                .iter()
                .map(|f| pb::GitFileOwner {
                    path: f.path.clone(),
                    author: author(&f.author),
                    share: f.share,
                })
                .collect(),
            bus_factor: o.bus_factor,
        }),
        coupling: r
            .coupling
            .iter()
            .flatten()
            .map(|c| pb::GitCoupledPair {
                a: c.a.clone(),
                b: c.b.clone(),
                shared: c.shared,
                degree: c.degree,
                average_revs: c.average_revs,
            })
            .collect(),
        search: r
            .search
            .iter()
            .flatten()
            .map(|h| pb::GitSearchHit {
                commit: h.commit.clone(),
                author: author(&h.author),
                time: Some(seconds(h.time)),
                subject: h.subject.clone(),
                matched: h.matched.clone(),
            })
            .collect(),
        contains: r.contains.as_ref().map(|c| pb::GitContains {
            commit: c.commit.clone(),
            branches: c.branches.clone(),
            tags: c.tags.clone(),
            lacking: c
                .lacking
                .iter()
                .map(|l| pb::GitLacking {
                    branch: l.branch.clone(),
                    equivalents: l
                        .equivalents
                        .iter()
                        .map(|(commit, rule)| pb::GitEquivalent {
                            commit: commit.clone(),
                            rule: match rule {
                                Equivalence::ChangeId => "change-id",
                                Equivalence::CherryPickedFrom => "cherry-picked-from",
                                Equivalence::PatchId => "patch-id",
                            }
                            .to_string(),
                        })
                        .collect(),
                })
                .collect(),
        }),
    }
}
