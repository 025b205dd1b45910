//! Process identity and process-group control: enough to tell our own job
//! process from an unrelated one that reused its pid, and to stop a whole
//! job tree.

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The kernel's boot id, which changes on every boot. Empty where unknown.
/// Read once: it cannot change while we run, and every job start records it.
pub fn boot_id() -> String {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        })
        .clone()
}

/// A process's start time in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), or `None` if there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    use std::io::Read;
    // Read into a fixed buffer until the line's end: the line is well under
    // 1 KiB and comes in one read, where `read_to_string` would stat the
    // file and then read it in growing pieces, six system calls on every
    // job start.
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let mut buf = [0u8; 1024];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if buf[len - 1] == b'\n' {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    parse_start_time(&buf[..len])
}

/// The start time (field 22) in the text of a `/proc/<pid>/stat` file.
pub fn parse_start_time(stat: &[u8]) -> Option<u64> {
    // The command name (field 2) may contain spaces, parentheses and bytes
    // that are not UTF-8, so count fields from after its closing
    // parenthesis: field 3 is index 0 there.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Sends `sig` to process group `pgid`. A group that no longer exists is not
/// an error.
pub fn signal_group(pgid: u32, sig: Signal) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    if raw <= 1 {
        // Never signal group 0 (our own) or 1: a bug must not take down the
        // daemon or the machine.
        return;
    }
    match killpg(Pid::from_raw(raw), sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid, signal = %sig, error = %e, "signalling job process group failed")
        }
    }
}

/// Kills what is left of a job's process group after the daemon died while
/// it ran.
///
/// The group id is the leader's pid. The kernel does not hand out a pid
/// while it is still in use as a process group id, so:
/// - leader alive with the recorded start time: it is ours, kill the group;
/// - no process with that pid: the leader died (the parent-death signal
///   kills it with the daemon), but its children may live on in the group:
///   kill the group;
/// - a process with that pid but another start time: the pid was reused,
///   which means our group was empty; leave it alone.
///
/// After a reboot (another boot id) nothing of the job can remain.
///
/// Returns true when a signal was sent.
pub fn kill_leftover_group(pid: u32, pid_start: u64, recorded_boot_id: &str) -> bool {
    if recorded_boot_id.is_empty() || recorded_boot_id != boot_id() {
        return false;
    }
    match start_time(pid) {
        Some(t) if t != pid_start => false,
        _ => {
            signal_group(pid, Signal::SIGKILL);
            true
        }
    }
}

/// The pids of every process in group `pgid`, from `/proc`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(2)?.parse::<u32>().ok()
                })
                == Some(pgid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let me = std::process::id();
        let a = start_time(me).expect("own stat is readable");
        assert_eq!(start_time(me), Some(a));
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn a_reused_pid_is_left_alone() {
        // Our own pid with a wrong start time looks exactly like a reused
        // pid: it must not be signalled (or this test would die).
        let me = std::process::id();
        let real = start_time(me).unwrap();
        assert!(!kill_leftover_group(me, real + 1, &boot_id()));
        assert!(!kill_leftover_group(me, real, "another-boot"));
    }
}
