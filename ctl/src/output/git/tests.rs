//! Tests of how a git job's result reads: the tables hold the numbers,
//! the JSON every field, and a result file reads back to the same result.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use quern_proto::v1::{GitEquivalent, GitLacking};

use super::*;

fn who(name: &str) -> Option<GitAuthor> {
    Some(GitAuthor {
        name: name.into(),
        email: format!("{}@example.org", name.to_lowercase()),
    })
}

fn ts(secs: u64) -> Option<prost_types::Timestamp> {
    Some((SystemTime::UNIX_EPOCH + Duration::from_secs(secs)).into())
}

/// A result with every section filled, with numbers that appear nowhere
/// else, so that finding one in the text means it was shown.
fn sample() -> GitResult {
    GitResult {
        commits: 4321,
        reused: 4000,
        computed: 321,
        summary: Some(GitSummary {
            commits: 4321,
            first: ts(1_500_000_000),
            last: ts(1_700_000_000),
            authors: vec![
                GitAuthorCount {
                    author: who("Ada"),
                    commits: 3001,
                },
                GitAuthorCount {
                    author: who("Bo"),
                    commits: 1320,
                },
            ],
            by_month: HashMap::from([("2023-10".into(), 17), ("2023-11".into(), 23)]),
            by_weekday: vec![101, 102, 103, 104, 105, 106, 107],
        }),
        churn: Some(GitChurn {
            files: vec![
                GitFileChurn {
                    path: "src/small.rs".into(),
                    revisions: 5,
                    added: 11,
                    removed: 2,
                    authors: 1,
                },
                GitFileChurn {
                    path: "src/big.rs".into(),
                    revisions: 88,
                    added: 9001,
                    removed: 777,
                    authors: 6,
                },
            ],
            authors: vec![GitAuthorChurn {
                author: who("Ada"),
                added: 12345,
                removed: 678,
            }],
        }),
        hotspots: vec![GitHotspot {
            path: "src/big.rs".into(),
            revisions: 88,
            lines: 1500,
            score: 132000,
        }],
        ownership: Some(GitOwnership {
            files: vec![GitFileOwner {
                path: "src/big.rs".into(),
                author: who("Bo"),
                share: 0.625,
            }],
            bus_factor: 3,
        }),
        coupling: vec![GitCoupledPair {
            a: "src/a.rs".into(),
            b: "src/b.rs".into(),
            shared: 41,
            degree: 73,
            average_revs: 56,
        }],
        search: vec![GitSearchHit {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            author: who("Ada"),
            time: ts(1_600_000_000),
            subject: "Fix the overflow".into(),
            matched: "CVE-2024-1234".into(),
        }],
        contains: Some(GitContains {
            commit: "fedcba9876543210fedcba9876543210fedcba98".into(),
            branches: vec!["main".into(), "next".into()],
            tags: vec!["v1.2.0".into()],
            lacking: vec![
                GitLacking {
                    branch: "release-1".into(),
                    equivalents: vec![GitEquivalent {
                        commit: "aaaabbbbccccddddeeeeffff0000111122223333".into(),
                        rule: "cherry-picked-from".into(),
                    }],
                },
                GitLacking {
                    branch: "release-0".into(),
                    equivalents: vec![],
                },
            ],
        }),
        file: String::new(),
        file_bytes: 0,
        analyses: [
            "summary",
            "churn",
            "hotspots",
            "ownership",
            "coupling",
            "search",
            "contains",
        ]
        .map(String::from)
        .to_vec(),
    }
}

#[test]
fn the_text_shows_each_section_with_its_numbers() {
    let text = result_text(&sample(), 20);
    let wants = [
        // The header lines.
        "commits walked    4321",
        "4000 reused from the cache, 321 computed",
        // summary
        "first    2017-07-14T02:40:00Z",
        "last     2023-11-14T22:13:20Z",
        "Ada <ada@example.org>",
        "3001",
        "2023-11       23",
        "Mon  Tue  Wed  Thu  Fri  Sat  Sun",
        "101  102  103  104  105  106  107",
        // churn
        "9001",
        "12345",
        // hotspots
        "132000",
        // ownership
        "62.5%",
        "bus factor: 3",
        // coupling
        "73%",
        // search: a short id, the date, the match
        "0123456789  2020-09-13",
        "CVE-2024-1234",
        // contains
        "branches  main, next",
        "tags      v1.2.0",
        "release-1  aaaabbbbcc  cherry-picked-from",
        "release-0  none",
    ];
    for want in wants {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    // The newest month first, and the most revised file first.
    assert!(text.find("2023-11").unwrap() < text.find("2023-10").unwrap());
    assert!(text.find("src/big.rs").unwrap() < text.find("src/small.rs").unwrap());
    assert!(!text.contains("more; show them"), "{text}");
}

#[test]
fn top_cuts_tables_and_says_how_many_were_left_out() {
    let text = result_text(&sample(), 1);
    assert!(text.contains("Ada <ada@example.org>"), "{text}");
    assert!(!text.contains("Bo <bo@example.org>  1320"), "{text}");
    assert!(
        text.contains("(1 more; show them with --top 2 or --json)"),
        "{text}"
    );
    assert!(!text.contains("src/small.rs"), "{text}");
}

#[test]
fn only_sections_asked_for_show_and_an_empty_one_says_none() {
    let r = GitResult {
        commits: 9,
        analyses: vec!["hotspots".into(), "search".into()],
        ..GitResult::default()
    };
    let text = result_text(&r, 20);
    assert!(text.contains("hotspots: none"), "{text}");
    assert!(text.contains("search: none"), "{text}");
    assert!(!text.contains("summary"), "{text}");
    assert!(!text.contains("coupling"), "{text}");
}

#[test]
fn the_json_has_every_field_of_every_section() {
    let value = result_json(&sample());
    let keys = |v: &Value| {
        let mut keys: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(&value),
        [
            "analyses",
            "churn",
            "commits",
            "computed",
            "contains",
            "coupling",
            "file",
            "file_bytes",
            "hotspots",
            "ownership",
            "reused",
            "search",
            "summary"
        ]
    );
    assert_eq!(
        keys(&value["summary"]),
        [
            "authors",
            "by_month",
            "by_weekday",
            "commits",
            "first",
            "last"
        ]
    );
    assert_eq!(value["summary"]["first"], "2017-07-14T02:40:00Z");
    assert_eq!(value["summary"]["by_month"]["2023-11"], 23);
    assert_eq!(
        value["summary"]["authors"][0]["author"]["email"],
        "ada@example.org"
    );
    assert_eq!(
        keys(&value["churn"]["files"][0]),
        ["added", "authors", "path", "removed", "revisions"]
    );
    assert_eq!(value["churn"]["authors"][0]["added"], 12345);
    assert_eq!(
        keys(&value["hotspots"][0]),
        ["lines", "path", "revisions", "score"]
    );
    assert_eq!(value["ownership"]["bus_factor"], 3);
    assert_eq!(value["ownership"]["files"][0]["share"], 0.625);
    assert_eq!(
        keys(&value["coupling"][0]),
        ["a", "average_revs", "b", "degree", "shared"]
    );
    assert_eq!(value["search"][0]["time"], "2020-09-13T12:26:40Z");
    assert_eq!(value["search"][0]["matched"], "CVE-2024-1234");
    assert_eq!(
        value["contains"]["lacking"][0]["equivalents"][0]["rule"],
        "cherry-picked-from"
    );
    assert_eq!(value["contains"]["lacking"][1]["equivalents"], json!([]));
}

#[test]
fn a_result_file_reads_back_to_the_same_result() {
    let want = sample();
    assert_eq!(from_json(&result_json(&want)), Ok(want.clone()));

    // proto JSON's own form: lowerCamelCase names, 64-bit numbers as
    // strings, absent defaults.
    let camel = json!({
        "commits": "4321",
        "summary": { "byWeekday": ["1", 2, 3, 4, 5, 6, 7], "byMonth": { "2023-11": "23" } },
        "ownership": { "busFactor": 3, "files": [{ "path": "x", "share": 0.5 }] },
        "coupling": [{ "a": "x", "b": "y", "averageRevs": "56" }],
        "fileBytes": "10",
    });
    let r = from_json(&camel).expect("reads");
    assert_eq!(r.commits, 4321);
    let summary = r.summary.expect("summary");
    assert_eq!(summary.by_weekday, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(summary.by_month["2023-11"], 23);
    assert_eq!(r.ownership.expect("ownership").bus_factor, 3);
    assert_eq!(r.coupling[0].average_revs, 56);
    assert_eq!(r.file_bytes, 10);
    assert_eq!(r.reused, 0);
}

#[test]
fn a_malformed_result_file_names_the_field() {
    let cases = [
        (json!([]), "the result is not an object"),
        (
            json!({ "commits": "many" }),
            "the result.commits is not a whole number",
        ),
        (
            json!({ "search": [{ "time": "yesterday" }] }),
            "the result.search[0].time is not an RFC 3339 time",
        ),
        (
            json!({ "ownership": { "busFactor": 5_000_000_000_u64 } }),
            "the result.ownership.bus_factor is 5000000000, over 32 bits",
        ),
        (
            json!({ "hotspots": {} }),
            "the result.hotspots is not a list",
        ),
    ];
    for (value, want) in cases {
        let err = from_json(&value).expect_err("refused");
        assert!(err.contains(want), "{value}: {err}");
    }
}

#[test]
fn read_result_file_reads_the_named_file_and_keeps_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("result.json");
    std::fs::write(&path, result_json(&sample()).to_string()).expect("write");
    let reported = GitResult {
        file: path.to_str().expect("utf-8").into(),
        file_bytes: 999,
        ..GitResult::default()
    };
    let read = read_result_file(&reported).expect("reads");
    assert_eq!(read.commits, 4321);
    assert_eq!(read.file_bytes, 999);
    assert_eq!(read.file, reported.file);

    let missing = GitResult {
        file: dir.path().join("gone.json").to_str().expect("utf-8").into(),
        ..GitResult::default()
    };
    let err = read_result_file(&missing).expect_err("missing");
    assert!(
        format!("{err:#}").contains("cannot read the result file"),
        "{err:#}"
    );
}

#[test]
fn analyses_in_words_show_options_that_are_not_the_default() {
    let cases = [
        (
            GitAnalysis {
                name: "summary".into(),
                ..GitAnalysis::default()
            },
            "summary",
        ),
        (
            GitAnalysis {
                name: "hotspots".into(),
                top: 10,
                renames: true,
                ..GitAnalysis::default()
            },
            "hotspots (top 10, renames)",
        ),
        (
            GitAnalysis {
                name: "coupling".into(),
                min_revs: 3,
                max_changeset: 40,
                ..GitAnalysis::default()
            },
            "coupling (min revs 3, max changeset 40)",
        ),
        (
            GitAnalysis {
                name: "search".into(),
                regex: r"CVE-\d+".into(),
                ..GitAnalysis::default()
            },
            r"search /CVE-\d+/",
        ),
        (
            GitAnalysis {
                name: "contains".into(),
                commit: "1a2b3c".into(),
                ..GitAnalysis::default()
            },
            "contains 1a2b3c",
        ),
    ];
    for (analysis, want) in cases {
        assert_eq!(analysis_words(&analysis), want);
    }
}
