//! The `quernd` binary's command line: flags, configuration errors and the
//! socket checks that run before the daemon serves. (Its presence also makes
//! `cargo test --workspace` build `quernd` for the end-to-end suites.)

use std::process::Command;

fn quernd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quernd"))
}

#[test]
fn help_lists_every_flag() {
    let out = quernd().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--socket", "--state-dir", "--config", "--concurrency"] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn a_bad_config_file_stops_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("quernd.toml");
    std::fs::write(&cfg, "concurency = 4\n").unwrap();
    let out = quernd()
        .arg("--config")
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("concurency"), "{err}");
    assert!(err.contains("quernd.toml"), "{err}");
}

#[test]
fn a_path_that_is_not_a_socket_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    std::fs::write(&sock, "precious").unwrap();
    let out = quernd()
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(&sock)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "precious");
}

#[test]
fn zero_concurrency_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = quernd()
        .args(["--concurrency", "0"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("concurrency"));
}
