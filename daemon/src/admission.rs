//! Admission: the one place that decides whether ready jobs may start,
//! given what is running. The scheduler asks it before it reads a single
//! ready job.
//!
//! Two pools: exec jobs share the daemon's `concurrency`; fetch jobs share
//! `fetch.concurrency`, and each host's own limits ([`hosts`]: its slots,
//! its rate, a server's pause and its circuit breaker). **The cost of a
//! dispatch grows with the number of running jobs and of limit keys, never
//! with the length of the queue**: with no room in a pool, nothing of it
//! is read; a host that may not start a job is passed over without reading
//! its jobs (the store keeps queued fetch jobs by host, `host_ready`), so
//! a host at its limit holds up no other host's jobs, and a job waiting
//! for its host holds no slot.

pub mod hosts;

use std::sync::Arc;

use crate::config::FetchConfig;
pub use hosts::{Admit, BreakerState, HostStatus, Hosts};

/// What may start.
#[derive(Clone)]
pub struct Admission {
    /// Exec jobs that may run at once.
    concurrency: usize,
    /// Per-host politeness for fetch jobs, and their pool's size.
    hosts: Arc<Hosts>,
}

impl Admission {
    /// A policy of at most `concurrency` exec jobs at once (at least one),
    /// and the default fetch limits.
    pub fn new(concurrency: usize) -> Admission {
        Admission::with_fetch(
            concurrency,
            FetchConfig::default(),
            crate::clock::Clock::System,
        )
    }

    /// A policy of at most `concurrency` exec jobs, and fetch jobs within
    /// `fetch`.
    pub fn with_fetch(
        concurrency: usize,
        fetch: FetchConfig,
        clock: crate::clock::Clock,
    ) -> Admission {
        Admission {
            concurrency: concurrency.max(1),
            hosts: Arc::new(Hosts::new(fetch, clock)),
        }
    }

    /// The exec limit.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// How many more exec jobs may start while `running` hold a slot. Zero
    /// means no ready job needs to be read at all.
    pub fn room(&self, running: usize) -> usize {
        self.concurrency.saturating_sub(running)
    }

    /// How many more fetch jobs may start while `running` transfer.
    pub fn fetch_room(&self, running: usize) -> usize {
        self.hosts.config().concurrency.saturating_sub(running)
    }

    /// The per-host policy, which fetch attempts also report to.
    pub fn hosts(&self) -> &Arc<Hosts> {
        &self.hosts
    }
}

#[cfg(test)]
mod tests;
