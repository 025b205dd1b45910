//! Operating-system specifics: starting job processes, process identity and
//! process groups, and service-manager readiness.

pub mod process;
pub mod spawn;

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
