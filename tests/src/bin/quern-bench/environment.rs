//! The machine a benchmark ran on: cores, kernel, the filesystem under the
//! state dirs, and how long an fsync takes there, which bounds every durable
//! write the daemon makes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::stats;

/// How many write+fsync rounds the fsync figure is the median of.
const FSYNC_SAMPLES: usize = 500;

/// What the figures depend on, printed with every scenario.
#[derive(Debug, Clone)]
pub struct Environment {
    /// `std::thread::available_parallelism`.
    pub cores: usize,
    /// The CPU model from /proc/cpuinfo, if it names one.
    pub cpu_model: Option<String>,
    /// Total memory in MiB, from /proc/meminfo.
    pub memory_mib: Option<u64>,
    /// The kernel release.
    pub kernel: String,
    /// The dir the temporary state dirs are created in.
    pub dir: PathBuf,
    /// The filesystem type of `dir` (ext4, xfs, tmpfs, ...).
    pub fs_type: String,
    /// The mount point `dir` lives under.
    pub mount_point: PathBuf,
    /// Median latency of writing 4 KiB to a file in `dir` and fsyncing it.
    pub fsync_median: Duration,
    /// 99th percentile of the same.
    pub fsync_p99: Duration,
    /// The daemon binary measured.
    pub quernd: PathBuf,
}

impl Environment {
    /// Inspects the machine and measures fsync latency in `dir`.
    pub fn measure(dir: &Path, quernd: &Path) -> Result<Self> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("state parent dir {} is not usable", dir.display()))?;
        let (mount_point, fs_type) = filesystem_of(&dir)?;
        let (fsync_median, fsync_p99) = fsync_latency(&dir)?;
        Ok(Environment {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model: cpu_model(),
            memory_mib: memory_mib(),
            kernel: kernel()?,
            dir,
            fs_type,
            mount_point,
            fsync_median,
            fsync_p99,
            quernd: quernd.to_path_buf(),
        })
    }

    /// The most fsyncs per second one writer can make here: the rate a
    /// daemon without group commit would be capped at.
    pub fn fsyncs_per_sec(&self) -> f64 {
        1.0 / self.fsync_median.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

fn kernel() -> Result<String> {
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        return Ok(release.trim().to_owned());
    }
    // Not Linux, or /proc is not mounted.
    let output = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .context("cannot read /proc/sys/kernel/osrelease or run `uname -r`")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

fn memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Finds the mount that holds `dir`: the longest mount point in /proc/mounts
/// that is a path prefix of it. Later lines win over earlier ones with the
/// same mount point, because a later mount hides the earlier one.
fn filesystem_of(dir: &Path) -> Result<(PathBuf, String)> {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return Ok((PathBuf::from("/"), "unknown (no /proc/mounts)".to_owned()));
    };
    let mut best: Option<(PathBuf, String)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_device), Some(mount_point), Some(fs_type)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mount(mount_point));
        // `Path::starts_with` compares whole components, so /tmpfoo is not
        // under /tmp.
        if !dir.starts_with(&mount_point) {
            continue;
        }
        let longer = best
            .as_ref()
            .is_none_or(|(b, _)| mount_point.components().count() >= b.components().count());
        if longer {
            best = Some((mount_point, fs_type.to_owned()));
        }
    }
    best.with_context(|| format!("no mount in /proc/mounts holds {}", dir.display()))
}

/// /proc/mounts writes space, tab, newline and backslash in paths as octal
/// escapes (`\040`).
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes 4 KiB at the start of a small file and fsyncs it, many times; a
/// durable commit costs at least one of these.
fn fsync_latency(dir: &Path) -> Result<(Duration, Duration)> {
    let mut file = tempfile::tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {} to time fsync", dir.display()))?;
    let block = [0x5au8; 4096];
    let mut samples = Vec::with_capacity(FSYNC_SAMPLES);
    for _ in 0..FSYNC_SAMPLES {
        let started = Instant::now();
        std::io::Seek::rewind(&mut file)?;
        file.write_all(&block)?;
        file.sync_all().context("fsync failed")?;
        samples.push(started.elapsed());
    }
    let summary = stats::Summary::of(&mut samples);
    Ok((summary.p50, summary.p99))
}

#[cfg(test)]
mod tests {
    use super::unescape_mount;

    #[test]
    fn mount_paths_unescape_octal() {
        assert_eq!(unescape_mount(r"/mnt/my\040disk"), "/mnt/my disk");
        assert_eq!(unescape_mount(r"/a\134b"), r"/a\b");
        assert_eq!(unescape_mount(r"/a\9"), r"/a\9");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
