//! `quern-bench`: measures quernd against the speed targets of issues 3 and 14 and
//! prints a table, or JSON with `--json`.
//!
//! Each scenario run starts its own `quernd` on a fresh socket and state
//! directory, so runs never see each other's jobs or warm caches of the daemon.
//! Progress goes to stderr; results go to stdout.

mod args;
mod daemon;
mod environment;
mod report;
mod scenarios;
mod stats;

use anyhow::Result;

use crate::environment::Environment;
use crate::report::ScenarioResult;

#[tokio::main]
async fn main() -> Result<()> {
    let Some(options) = args::parse(std::env::args_os().skip(1))? else {
        // `--help` was printed; nothing to run.
        return Ok(());
    };
    options.check_binaries()?;

    // The environment is measured once: every scenario in this invocation
    // shares the machine, the kernel and the filesystem of the state dirs.
    let environment = Environment::measure(&options.dir, &options.quernd)?;
    if !options.json {
        print!("{}", report::render_environment(&environment));
    }

    let mut results = Vec::new();
    for &scenario in &options.scenarios {
        let jobs = options.jobs.unwrap_or(scenario.default_jobs());
        let mut runs = Vec::with_capacity(options.runs);
        for run in 1..=options.runs {
            eprintln!(
                "{} run {run}/{} ({jobs} jobs): {}",
                scenario.id(),
                options.runs,
                scenario.title()
            );
            let ctx = scenarios::Ctx {
                options: &options,
                environment: &environment,
            };
            runs.push(scenario.run(&ctx, jobs).await?);
        }
        let result = ScenarioResult::new(scenario, jobs, runs);
        if !options.json {
            // Printed as each scenario finishes, so a long `all` run shows
            // its figures as it goes.
            print!("{}", report::render_table(&result));
        }
        results.push(result);
    }

    if options.json {
        let json = report::to_json(&environment, &results);
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}
