//! Figures a scenario produced, their medians over runs, and how they are
//! printed: an aligned table for people, JSON for tools.

use std::fmt::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::environment::Environment;
use crate::scenarios::Scenario;
use crate::stats;

/// What a figure counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Jobs per second.
    JobsPerSec,
    /// Milliseconds.
    Millis,
    /// Mebibytes.
    MiB,
    /// Mebibytes per second.
    MiBPerSec,
    /// Requests per second, to three decimals: for rates held to a
    /// fraction of a request per second.
    RequestsPerSec,
    /// A percentage.
    Percent,
    /// A dimensionless ratio, printed as `0.93x`.
    Ratio,
    /// A plain number of things.
    Count,
    /// An average number of things per operation, to two decimals.
    Mean,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::JobsPerSec => "jobs/s",
            Unit::Millis => "ms",
            Unit::MiB => "MiB",
            Unit::MiBPerSec => "MiB/s",
            Unit::RequestsPerSec => "req/s",
            Unit::Percent => "%",
            Unit::Ratio => "x",
            Unit::Count | Unit::Mean => "",
        }
    }

    /// The figure without its unit, to three significant digits or with
    /// thousands separators.
    fn number(self, value: f64) -> String {
        match self {
            Unit::JobsPerSec | Unit::Count => thousands(value),
            Unit::Millis | Unit::MiBPerSec => significant(value),
            Unit::MiB => format!("{value:.1}"),
            Unit::Percent => format!("{value:.2}"),
            Unit::RequestsPerSec => format!("{value:.3}"),
            Unit::Ratio | Unit::Mean => format!("{value:.2}"),
        }
    }

    /// The figure with its unit.
    fn format(self, value: f64) -> String {
        match self {
            Unit::Count | Unit::Mean => self.number(value),
            Unit::Ratio => format!("{}x", self.number(value)),
            Unit::Percent => format!("{}%", self.number(value)),
            _ => format!("{} {}", self.number(value), self.name()),
        }
    }
}

/// The goal a figure is held to, from issue 3.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The figure must be at least this.
    AtLeast(f64),
    /// The figure must be at most this.
    AtMost(f64),
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Target::AtLeast(t) => value >= t,
            Target::AtMost(t) => value <= t,
        }
    }

    fn parts(self) -> (&'static str, f64) {
        match self {
            Target::AtLeast(t) => (">=", t),
            Target::AtMost(t) => ("<=", t),
        }
    }
}

/// One figure of one run.
#[derive(Debug, Clone)]
pub struct Metric {
    /// A stable snake_case name, for JSON and for matching runs up.
    pub key: String,
    /// What a person reads in the table.
    pub label: String,
    /// The figure, in `unit`.
    pub value: f64,
    /// What the figure counts.
    pub unit: Unit,
    /// The goal, if the issue sets one.
    pub target: Option<Target>,
}

impl Metric {
    /// A throughput: `jobs` done in `elapsed`.
    pub fn rate(
        key: impl Into<String>,
        label: impl Into<String>,
        jobs: u64,
        elapsed: Duration,
    ) -> Self {
        Self::new(
            key,
            label,
            jobs as f64 / elapsed.as_secs_f64().max(1e-9),
            Unit::JobsPerSec,
        )
    }

    /// A duration, reported in milliseconds.
    pub fn millis(key: impl Into<String>, label: impl Into<String>, d: Duration) -> Self {
        Self::new(key, label, d.as_secs_f64() * 1e3, Unit::Millis)
    }

    /// Any figure.
    pub fn new(key: impl Into<String>, label: impl Into<String>, value: f64, unit: Unit) -> Self {
        Metric {
            key: key.into(),
            label: label.into(),
            value,
            unit,
            target: None,
        }
    }

    /// Holds the figure to a target.
    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }
}

/// A count the scenario checked against what it expected.
#[derive(Debug, Clone)]
pub struct Count {
    /// What was counted, e.g. "scheduled jobs in Stats".
    pub name: String,
    /// How many there should be.
    pub expected: u64,
    /// How many there were.
    pub observed: u64,
}

/// Everything one run of a scenario produced.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// The figures, in the order they are printed.
    pub metrics: Vec<Metric>,
    /// The counts that were checked; all of them matched, or the run failed.
    pub counts: Vec<Count>,
}

impl Run {
    /// Adds a figure.
    pub fn push(&mut self, metric: Metric) {
        self.metrics.push(metric);
    }

    /// Records a count and fails the run if it is not what was expected: a
    /// figure over jobs that were lost or never ran would be a lie.
    pub fn check_count(
        &mut self,
        name: impl Into<String>,
        expected: u64,
        observed: u64,
    ) -> Result<()> {
        let name = name.into();
        if expected != observed {
            bail!("{name}: expected {expected}, got {observed}");
        }
        self.counts.push(Count {
            name,
            expected,
            observed,
        });
        Ok(())
    }
}

/// All runs of one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// Which scenario.
    pub scenario: Scenario,
    /// The size it ran at.
    pub jobs: u64,
    /// Every run, in order.
    pub runs: Vec<Run>,
}

/// One figure's median over runs.
struct Summary<'a> {
    first: &'a Metric,
    values: Vec<f64>,
    median: f64,
}

impl ScenarioResult {
    /// Collects the runs of a scenario.
    pub fn new(scenario: Scenario, jobs: u64, runs: Vec<Run>) -> Self {
        ScenarioResult {
            scenario,
            jobs,
            runs,
        }
    }

    /// Each figure of the first run, with its values from every run and
    /// their median. Runs of one scenario produce the same keys.
    fn summaries(&self) -> Vec<Summary<'_>> {
        let Some(first) = self.runs.first() else {
            return Vec::new();
        };
        first
            .metrics
            .iter()
            .map(|m| {
                let values: Vec<f64> = self
                    .runs
                    .iter()
                    .filter_map(|r| r.metrics.iter().find(|o| o.key == m.key))
                    .map(|o| o.value)
                    .collect();
                let median = stats::median(&values);
                Summary {
                    first: m,
                    values,
                    median,
                }
            })
            .collect()
    }
}

/// The environment block printed before the tables.
pub fn render_environment(env: &Environment) -> String {
    let mut out = String::from("environment\n");
    let cpu = env.cpu_model.as_deref().unwrap_or("unknown CPU");
    let _ = writeln!(out, "  cores      {} ({cpu})", env.cores);
    if let Some(mib) = env.memory_mib {
        let _ = writeln!(out, "  memory     {:.1} GiB", mib as f64 / 1024.0);
    }
    let _ = writeln!(out, "  kernel     {}", env.kernel);
    let _ = writeln!(
        out,
        "  state dir  {} on {} (mounted at {})",
        env.dir.display(),
        env.fs_type,
        env.mount_point.display()
    );
    let _ = writeln!(
        out,
        "  fsync      p50 {} us, p99 {} us: at most {} fsyncs/s",
        significant(env.fsync_median.as_secs_f64() * 1e6),
        significant(env.fsync_p99.as_secs_f64() * 1e6),
        thousands(env.fsyncs_per_sec())
    );
    let _ = writeln!(out, "  quernd     {}", env.quernd.display());
    if env.fs_type == "tmpfs" {
        out.push_str(
            "  warning    tmpfs makes fsync free; pass --dir on a disk for meaningful figures\n",
        );
    }
    out.push('\n');
    out
}

/// A scenario's medians as an aligned table, with each target and whether
/// it was met.
pub fn render_table(result: &ScenarioResult) -> String {
    const COLUMNS: usize = 5;
    let rows: Vec<[String; COLUMNS]> = result
        .summaries()
        .iter()
        .map(|s| {
            let unit = s.first.unit;
            let (target, verdict) = match s.first.target {
                Some(t) => {
                    let (op, v) = t.parts();
                    let verdict = if t.met(s.median) { "met" } else { "MISSED" };
                    (format!("{op} {}", unit.format(v)), verdict.to_owned())
                }
                None => (String::new(), String::new()),
            };
            [
                s.first.label.clone(),
                unit.number(s.median),
                unit.name().to_owned(),
                target,
                verdict,
            ]
        })
        .collect();
    let header = ["figure", "median", "", "target", ""].map(String::from);
    let mut widths = [0usize; COLUMNS];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }

    let mut out = String::new();
    let _ = writeln!(out, "{}  {}", result.scenario.id(), result.scenario.title());
    let _ = writeln!(
        out,
        "     {} jobs, {} run{}, medians over runs",
        thousands(result.jobs as f64),
        result.runs.len(),
        if result.runs.len() == 1 { "" } else { "s" }
    );
    for row in std::iter::once(&header).chain(&rows) {
        // Numbers align right so their digits line up; everything else
        // aligns left.
        let line = format!(
            "  {:<w0$}  {:>w1$} {:<w2$}  {:<w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out.push('\n');
    out
}

/// Everything as one JSON document.
pub fn to_json(env: &Environment, results: &[ScenarioResult]) -> Value {
    let scenarios: Vec<Value> = results
        .iter()
        .map(|r| {
            let metrics: Vec<Value> = r
                .summaries()
                .iter()
                .map(|s| {
                    let target = s.first.target.map(|t| {
                        let (op, value) = t.parts();
                        json!({ "op": op, "value": value })
                    });
                    json!({
                        "key": s.first.key,
                        "label": s.first.label,
                        "unit": s.first.unit.name(),
                        "median": s.median,
                        "runs": s.values,
                        "target": target,
                        "met": s.first.target.map(|t| t.met(s.median)),
                    })
                })
                .collect();
            let counts: Vec<Value> = r
                .runs
                .iter()
                .enumerate()
                .flat_map(|(i, run)| {
                    run.counts.iter().map(move |c| {
                        json!({ "run": i + 1, "name": c.name, "expected": c.expected, "observed": c.observed })
                    })
                })
                .collect();
            json!({
                "id": r.scenario.id(),
                "title": r.scenario.title(),
                "jobs": r.jobs,
                "runs": r.runs.len(),
                "metrics": metrics,
                "counts": counts,
            })
        })
        .collect();
    json!({
        "environment": {
            "cores": env.cores,
            "cpu_model": env.cpu_model,
            "memory_mib": env.memory_mib,
            "kernel": env.kernel,
            "state_dir": env.dir,
            "fs_type": env.fs_type,
            "mount_point": env.mount_point,
            "fsync_p50_us": env.fsync_median.as_secs_f64() * 1e6,
            "fsync_p99_us": env.fsync_p99.as_secs_f64() * 1e6,
            "fsyncs_per_sec": env.fsyncs_per_sec(),
            "quernd": env.quernd,
        },
        "scenarios": scenarios,
    })
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Three significant digits, without an exponent: `0.412`, `12.3`, `412`.
fn significant(value: f64) -> String {
    match value.abs() {
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        v if v >= 1.0 => format!("{value:.2}"),
        _ => format!("{value:.3}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(significant(0.41234), "0.412");
        assert_eq!(significant(12.34), "12.3");
        assert_eq!(significant(412.3), "412");
    }

    #[test]
    fn a_count_that_does_not_add_up_fails_the_run() {
        let mut run = Run::default();
        assert!(run.check_count("jobs", 3, 3).is_ok());
        assert!(run.check_count("jobs", 3, 2).is_err());
        assert_eq!(run.counts.len(), 1);
    }
}
