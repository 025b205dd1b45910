//! Runs the built `quernctl` binary for what it must do without a daemon:
//! report a daemon that is not running, and refuse bad input before
//! connecting. Naming the binary here also makes `cargo test --workspace`
//! build it, which the end-to-end suites in `tests/` rely on.

use std::path::Path;
use std::process::{Command, Output};

/// Runs quernctl with `args`, pointed at `socket`, with QUERN_SOCKET unset so
/// that the caller's environment cannot change the outcome.
fn quernctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quernctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("QUERN_SOCKET")
        .output()
        .expect("run quernctl")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_daemon_that_is_not_running_is_reported_with_the_socket_tried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("quernd.sock");
    let output = quernctl(&socket, &["stats"]);
    assert!(!output.status.success(), "exit status {}", output.status);
    let err = stderr(&output);
    assert!(
        err.starts_with("quernctl: cannot reach quernd at "),
        "{err}"
    );
    assert!(err.contains(&socket.display().to_string()), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(output.stdout.is_empty());
}

#[test]
fn the_socket_can_come_from_quern_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("from-env.sock");
    let output = Command::new(env!("CARGO_BIN_EXE_quernctl"))
        .arg("stats")
        .env("QUERN_SOCKET", &socket)
        .output()
        .expect("run quernctl");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(&socket.display().to_string()),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_input_is_refused_naming_the_flag_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("quernd.sock");
    // (arguments, a part of the message that names what is wrong)
    let cases: &[(&[&str], &str)] = &[
        (
            &["submit", "exec", "--priority", "bogus", "--", "true"],
            "--priority",
        ),
        (
            &["submit", "exec", "--label", "nokey", "--", "true"],
            "--label",
        ),
        (&["submit", "exec", "--env", "=x", "--", "true"], "--env"),
        (
            &["submit", "exec", "--timeout", "soon", "--", "true"],
            "--timeout",
        ),
        (
            &["submit", "exec", "--at", "tomorrow", "--", "true"],
            "--at",
        ),
        (
            &[
                "submit", "exec", "--label", "a=1", "--label", "a=2", "--", "true",
            ],
            "--label a is given twice",
        ),
        (&["submit", "exec"], "<ARGV>"),
        (&["submit", "exec", "--"], "<ARGV>"),
        (&["list", "--state", "done"], "--state"),
        (
            &["list", "--label", "a=1", "--label", "a=2"],
            "--label a is given twice",
        ),
        (&["get", "seven"], "<ID>"),
        (&["wait"], "<ID>"),
        (&["result"], "<ID>"),
        (&["follow", "x"], "<ID>"),
        (&["submit", "fetch"], "<URL>"),
        (&["submit", "git"], "<REPO>"),
        (
            &["submit", "git", "--since", "last week", "."],
            "--since <DATE>",
        ),
        (
            &["submit", "git", "--analysis", "blame", "."],
            "--analysis <NAME>",
        ),
        (
            &["submit", "git", "--top", "5", "."],
            "--top sets how many hotspots to keep",
        ),
        (&["result", "1", "--top", "some"], "--top <N>"),
        (
            &["submit", "fetch", "ftp://example.org/f"],
            "scheme \"ftp\" is not supported; use an http or https URL",
        ),
        (
            &[
                "submit",
                "fetch",
                "--max-bytes",
                "0",
                "https://example.org/f",
            ],
            "--max-bytes",
        ),
        (
            &[
                "submit",
                "fetch",
                "--max-bytes",
                "ten",
                "https://example.org/f",
            ],
            "--max-bytes",
        ),
        (
            &[
                "submit",
                "fetch",
                "--header",
                "X-A",
                "https://example.org/f",
            ],
            "--header",
        ),
        (
            &[
                "submit",
                "fetch",
                "--overwrite",
                "keep",
                "https://example.org/f",
            ],
            "--overwrite",
        ),
        (
            &["submit", "fetch", "https://example.org/dir/"],
            "pass --dest PATH",
        ),
        (
            &[
                "watch",
                "add",
                "d",
                "--on-busy",
                "later",
                "--",
                "exec",
                "true",
            ],
            "--on-busy",
        ),
        (
            &[
                "watch",
                "add",
                "d",
                "--debounce",
                "soon",
                "--",
                "exec",
                "true",
            ],
            "--debounce",
        ),
        (
            &[
                "watch",
                "add",
                "d",
                "--",
                "exec",
                "--priority",
                "x",
                "--",
                "true",
            ],
            "--priority",
        ),
        (
            &[
                "watch", "add", "d", "--", "exec", "--label", "a=1", "--label", "a=2", "--", "true",
            ],
            "--label a is given twice",
        ),
        (&["watch", "add", "d"], "<SUBMIT ARGS>"),
        (&["watch", "rm", "x"], "<ID>"),
    ];
    for (args, names) in cases {
        let output = quernctl(&socket, args);
        let err = stderr(&output);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(err.starts_with("quernctl: "), "{args:?}: {err}");
        assert!(err.contains(names), "{args:?}: {err}");
        // Refused locally: the missing daemon was never reached.
        assert!(!err.contains("cannot reach quernd"), "{args:?}: {err}");
    }
}
