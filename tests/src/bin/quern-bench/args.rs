//! Command-line options, parsed by hand so the bench needs no argument
//! parsing dependency.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::scenarios::Scenario;

const USAGE: &str = "\
usage: quern-bench <scenario|all>... [options]

scenarios: p1a p1b p1c p2 p3 p4 p5 p6 p6b p7a p7b p7c p8a p8b p9a p9b p9c p10 p13, or all

options:
  --jobs N         jobs per scenario, MiB of output for p13, MiB of the download for p7a
                   (default: the issue's full size, see docs/benchmarks.md)
  --clients LIST   concurrent clients for p1a, comma separated (default: 1,8,64)
  --runs N         runs per scenario; figures are medians over runs (default: 3)
  --json           print JSON instead of tables
  --quernd PATH    the daemon binary (default: quernd next to this executable)
  --quernctl PATH  the client binary for p1c (default: quernctl next to this executable)
  --dir DIR        where to create the temporary state dirs and p7's downloads (default:
                   $TMPDIR or /tmp); the filesystem of this dir is the one being measured
  -h, --help       print this help
";

/// Everything the command line can set, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Options {
    /// The scenarios to run, in order, without duplicates.
    pub scenarios: Vec<Scenario>,
    /// Overrides every scenario's default size.
    pub jobs: Option<u64>,
    /// The client counts P1a steps through.
    pub clients: Vec<usize>,
    /// How many times each scenario runs; figures are medians.
    pub runs: usize,
    /// Print JSON instead of tables.
    pub json: bool,
    /// The `quernd` binary to start.
    pub quernd: PathBuf,
    /// The `quernctl` binary for P1c.
    pub quernctl: PathBuf,
    /// The parent of the temporary state dirs.
    pub dir: PathBuf,
}

impl Options {
    /// Fails with a message naming the build command when a binary the
    /// selected scenarios need is missing, before any daemon starts.
    pub fn check_binaries(&self) -> Result<()> {
        check_binary(&self.quernd, "quernd", "quern-daemon")?;
        if self.scenarios.contains(&Scenario::P1c) {
            check_binary(&self.quernctl, "quernctl", "quern-ctl")?;
        }
        Ok(())
    }
}

fn check_binary(path: &Path, name: &str, package: &str) -> Result<()> {
    if path.is_file() {
        return Ok(());
    }
    // Suggest the build that puts the binary where it was looked for.
    let release = if path.components().any(|c| c.as_os_str() == "debug") {
        ""
    } else {
        "--release "
    };
    bail!(
        "{name} not found at {}; build it with `cargo build {release}-p {package}` or pass --{name} PATH",
        path.display()
    )
}

/// Parses the arguments after the program name. Returns `None` when help was
/// asked for and printed.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Option<Options>> {
    let mut scenarios = Vec::new();
    let mut jobs = None;
    let mut clients = vec![1, 8, 64];
    let mut runs = 3;
    let mut json = false;
    let mut quernd = None;
    let mut quernctl = None;
    let mut dir = None;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| anyhow::anyhow!("argument {a:?} is not valid UTF-8"))?;
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .with_context(|| format!("{name} needs a value\n\n{USAGE}")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "--json" => json = true,
            "--jobs" => jobs = Some(positive(&value("--jobs")?, "--jobs")?),
            "--runs" => runs = usize::try_from(positive(&value("--runs")?, "--runs")?)?,
            "--clients" => {
                clients = value("--clients")?
                    .split(',')
                    .map(|c| Ok(usize::try_from(positive(c.trim(), "--clients")?)?))
                    .collect::<Result<_>>()?;
            }
            "--quernd" => quernd = Some(PathBuf::from(value("--quernd")?)),
            "--quernctl" => quernctl = Some(PathBuf::from(value("--quernctl")?)),
            "--dir" => dir = Some(PathBuf::from(value("--dir")?)),
            f if f.starts_with('-') => bail!("unknown option {f}\n\n{USAGE}"),
            "all" => scenarios.extend(Scenario::ALL),
            name => match Scenario::parse(name) {
                Some(s) => scenarios.push(s),
                None => bail!(
                    "unknown scenario {name:?}; expected one of p1a p1b p1c p2 p3 p4 p5 p6 p6b p7a p7b p7c p8a p8b p9a p9b p9c p10 p13 all"
                ),
            },
        }
    }
    if scenarios.is_empty() {
        bail!("no scenario given\n\n{USAGE}");
    }
    // `all p2` should not run p2 twice.
    let mut seen = Vec::new();
    scenarios.retain(|s| {
        let new = !seen.contains(s);
        seen.push(*s);
        new
    });

    let exe_dir = exe_dir()?;
    Ok(Some(Options {
        scenarios,
        jobs,
        clients,
        runs,
        json,
        quernd: quernd.unwrap_or_else(|| exe_dir.join("quernd")),
        quernctl: quernctl.unwrap_or_else(|| exe_dir.join("quernctl")),
        dir: dir.unwrap_or_else(std::env::temp_dir),
    }))
}

/// The directory of this executable: `cargo run --release` puts the bench in
/// `target/release/`, next to the `quernd` and `quernctl` it should measure.
fn exe_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the bench's own executable")?;
    exe.parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("executable {} has no parent directory", exe.display()))
}

fn positive(text: &str, flag: &str) -> Result<u64> {
    match text.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{flag} must be a positive integer, got {text:?}"),
    }
}
