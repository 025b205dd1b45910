//! Operating-system specifics: starting job processes, process identity and
//! process groups, and service-manager readiness.

pub mod process;
pub mod spawn;

/// Makes a write past the file size limit (`RLIMIT_FSIZE`) fail with
/// EFBIG instead of killing the daemon with SIGXFSZ: a job's output file
/// reaching the limit must cost that job the rest of its output, not every
/// running job its daemon. Job processes start with every signal at its
/// default again (see `spawn`), so they keep the usual behaviour.
pub fn ignore_file_size_signal() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: installs SIG_IGN, which runs no code of ours.
    if let Err(e) = unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) } {
        tracing::warn!(error = %e, "cannot ignore SIGXFSZ; a log file reaching the file size limit will stop the daemon");
    }
}

/// Tells the service manager (systemd, or a test harness speaking the same
/// protocol through `NOTIFY_SOCKET`) that the daemon is ready.
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not send READY=1 to NOTIFY_SOCKET");
    }
}

/// Tells the service manager that the daemon is stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// The message a panic was raised with, if it was a string.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}
