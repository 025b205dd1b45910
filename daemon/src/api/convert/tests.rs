//! Tests of the proto conversions: what each request becomes, and the
//! field every bad one is refused by.

use super::*;

fn exec(argv: &[&str]) -> pb::JobSpec {
    pb::JobSpec {
        kind: Some(pb::job_spec::Kind::Exec(pb::ExecSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[test]
fn a_cancel_grace_over_an_hour_is_refused_by_name() {
    let req = |seconds| pb::CancelRequest {
        id: 1,
        grace: Some(prost_types::Duration { seconds, nanos: 0 }),
    };
    let ten = Duration::from_secs(10);
    assert_eq!(
        cancel_from_proto(req(3600), ten).unwrap().1,
        Duration::from_secs(3600)
    );
    let err = cancel_from_proto(req(3601), ten).unwrap_err().to_string();
    assert!(
        err.starts_with("grace: is 1h 1s, over the limit of 1h"),
        "{err}"
    );
    let err = cancel_from_proto(req(i64::MAX), ten)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("grace: "), "{err}");
}

#[test]
fn bad_specs_name_their_field() {
    let now = 1_000_000;
    let cases: Vec<(pb::JobSpec, &str)> = vec![
        (pb::JobSpec::default(), "spec.kind"),
        (exec(&[]), "spec.exec.argv"),
        (
            pb::JobSpec {
                priority_name: "urgent".into(),
                ..exec(&["true"])
            },
            "spec.priority_name",
        ),
        (
            pb::JobSpec {
                timeout: Some(prost_types::Duration::default()),
                ..exec(&["true"])
            },
            "spec.timeout",
        ),
        (
            pb::JobSpec {
                timeout: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..exec(&["true"])
            },
            "spec.timeout",
        ),
        (
            pb::JobSpec {
                max_attempts: 101,
                ..exec(&["true"])
            },
            "spec.max_attempts",
        ),
    ];
    for (spec, field) in cases {
        let err = spec_from_proto(spec, SpecPath(None), now).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { field: f, .. } if f == field),
            "{err}"
        );
    }
}

/// The domain keeps its own list of priority names, so that it need
/// not import the API; the two must agree.
#[test]
fn the_priority_names_are_the_apis() {
    assert_eq!(PRIORITY_NAMES, quern_proto::PRIORITY_NAMES);
}

#[test]
fn list_requests_become_queries_or_name_the_bad_field() {
    let q = list_from_proto(pb::ListRequest {
        kind: "exec".into(),
        states: vec![0, pb::JobState::Queued as i32],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(q.kind, Some(KindTag::Exec));
    assert_eq!(q.states, vec![StateTag::Queued]);
    assert_eq!(q.limit, 100);
    let bad = [
        (
            pb::ListRequest {
                kind: "ftp".into(),
                ..Default::default()
            },
            "kind",
        ),
        (
            pb::ListRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListRequest {
                page_token: "x".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListRequest {
                states: vec![9],
                ..Default::default()
            },
            "states[0]",
        ),
    ];
    for (r, field) in bad {
        let err = list_from_proto(r).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { field: f, .. } if f == field),
            "{err}"
        );
    }
}

#[test]
fn a_valid_spec_round_trips() {
    let mut p = exec(&["echo", "hi"]);
    p.priority_name = "high".into();
    p.labels.insert("team".into(), "infra".into());
    p.max_attempts = 0;
    let spec = spec_from_proto(p, SpecPath(None), 0).unwrap();
    assert_eq!(spec.priority, 10);
    assert_eq!(spec.max_attempts, 1);
    let back = spec_to_proto(&spec);
    assert_eq!(back.priority, 10);
    assert_eq!(back.labels.get("team").map(String::as_str), Some("infra"));
}
