//! Runs every `quern-bench` scenario at a tiny size against the debug
//! `quernd`, to prove the harness works end to end and its counts add up.
//!
//! Nothing here asserts a timing: debug builds on a shared machine say nothing
//! about speed. The full-size runs are for people (see docs/benchmarks.md).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tokio::process::Command;

/// Small enough that each scenario takes seconds on a debug build, large
/// enough that P4 pages and P1a splits jobs unevenly over 64 clients.
const JOBS: u64 = 100;

/// A tiny run finishes in seconds; this only catches a hang.
const TIMEOUT: Duration = Duration::from_secs(180);

/// Runs one scenario with `--json` and checks the report it prints.
async fn smoke(id: &str) -> Result<()> {
    let mut bench = Command::new(env!("CARGO_BIN_EXE_quern-bench"));
    bench
        .arg(id)
        .args(["--jobs", &JOBS.to_string(), "--runs", "1", "--json"])
        .arg("--quernd")
        .arg(quern_tests::quernd_bin())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // Only P1c runs quernctl; the others must not need it built.
    if id == "p1c" {
        bench.arg("--quernctl").arg(quern_tests::quernctl_bin());
    }
    let output = tokio::time::timeout(TIMEOUT, bench.output())
        .await
        .with_context(|| format!("quern-bench {id} did not finish within {TIMEOUT:?}"))?
        .context("cannot run quern-bench")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "quern-bench {id} failed ({}):\n{stderr}",
        output.status
    );

    let report: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("quern-bench {id} printed invalid JSON; stderr:\n{stderr}"))?;
    ensure!(
        report["environment"]["cores"]
            .as_u64()
            .is_some_and(|c| c >= 1),
        "the report has no environment: {report}"
    );
    let [scenario] = report["scenarios"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    else {
        bail!("expected exactly one scenario in the report: {report}");
    };
    ensure!(
        scenario["id"]
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case(id)),
        "the report is for {} instead of {id}",
        scenario["id"]
    );
    ensure!(
        scenario["jobs"] == JOBS,
        "{id} ran {} jobs, not {JOBS}",
        scenario["jobs"]
    );
    ensure!(
        scenario["runs"] == 1,
        "{id} made {} runs, not 1",
        scenario["runs"]
    );

    let metrics = scenario["metrics"].as_array().context("no metrics")?;
    ensure!(!metrics.is_empty(), "{id} reported no figures");
    for m in metrics {
        ensure!(
            m["median"]
                .as_f64()
                .is_some_and(|v| v.is_finite() && v >= 0.0),
            "{id} reported a figure that is not a non-negative number: {m}"
        );
    }
    // The bench fails a run whose counts differ, but the report is the
    // boundary: check it says so too.
    let counts = scenario["counts"].as_array().context("no counts")?;
    ensure!(!counts.is_empty(), "{id} checked no counts");
    for c in counts {
        ensure!(
            c["expected"] == c["observed"],
            "{id}: a count does not add up: {c}"
        );
    }
    Ok(())
}

macro_rules! scenarios {
    ($($test:ident => $id:literal,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $test() -> Result<()> {
                smoke($id).await
            }
        )*
    };
}

scenarios! {
    p1a_submit_concurrent => "p1a",
    p1b_submit_batch => "p1b",
    p1c_quernctl_submit => "p1c",
    p2_submit_to_started => "p2",
    p3_end_to_end_vs_raw_spawn => "p3",
    p4_list_filtered => "p4",
    p5_peak_rss => "p5",
    p6_restart_after_sigterm => "p6",
    p6b_restart_after_kill_9 => "p6b",
    p7a_fetch_against_curl => "p7a",
    p7b_fetch_host_rate => "p7b",
    p7c_fetch_many_hosts => "p7c",
    p8a_git_walk => "p8a",
    p8b_git_churn_and_rerun => "p8b",
    p9a_watch_write_to_start => "p9a",
    p9b_watch_burst => "p9b",
    p9c_watch_idle_tree => "p9c",
    p10_disk_use_with_retention => "p10",
    p13_output_capture => "p13",
}
