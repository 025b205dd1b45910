//! Per-host politeness for fetch jobs: each host's rate (governor), its
//! slots, the pause a server asked for (`Retry-After`), and its circuit
//! breaker. The scheduler asks [`Hosts::admit`] before it starts a host's
//! job; fetch attempts report how each request went through
//! [`HostFeedback`].
//!
//! A host is `host:port` (see `job::fetch::host_key`). Its limits come from
//! `[fetch]` and `[fetch.hosts."NAME"]`.
//!
//! The breaker: closed, a host takes jobs; `breaker_failures` failed
//! requests in a row (connect errors, resets, timeouts, 5xx) open it for
//! `breaker_open`, and its queued jobs are held in scheduled with the
//! reason, using no attempt; then it is half-open: one job at a time is
//! let through as a probe, and two answered probes close it, while a failed
//! one opens it again.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::config::FetchConfig;
use crate::config::fetch::Rate;
use crate::runner::{BoxFuture, HostFeedback, HostOutcome};

/// Probes that must be answered, in a row, to close a half-open breaker.
pub const PROBES_TO_CLOSE: u32 = 2;

/// How often idle hosts are forgotten at most: governor never evicts a
/// key itself, and a crawl over many hosts would otherwise grow without
/// bound.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What [`Hosts::admit`] says about starting a job of a host now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Start it: its slot and its rate's turn are taken.
    Yes,
    /// Not before this (its rate, or a server's pause).
    WaitUntil(Instant),
    /// Not until one of its running jobs ends (its slots, or a probe in
    /// flight).
    Busy,
    /// Its breaker is open until `until` (wall time, microseconds): its
    /// queued jobs should wait in scheduled until then, for `reason`.
    Open {
        /// When the breaker lets a probe through.
        until: u64,
        /// What the jobs' `wait_reason` says.
        reason: String,
    },
}

/// A host's breaker, as shown in Stats and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Taking jobs.
    Closed,
    /// Holding its jobs back until the time given.
    Open,
    /// Letting one probe through at a time.
    HalfOpen,
}

impl BreakerState {
    /// Its name in output.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// One host's state, for Stats and events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostStatus {
    /// `host:port`.
    pub host: String,
    /// Its breaker.
    pub breaker: BreakerState,
    /// Failed requests in a row.
    pub failures: u32,
    /// While open: when a probe is let through (wall time, microseconds).
    pub open_until: Option<u64>,
    /// Its jobs transferring now.
    pub running: u32,
}

#[derive(Debug)]
enum Breaker {
    Closed,
    Open { until: Instant, until_wall: u64 },
    HalfOpen { probing: bool, answered: u32 },
}

#[derive(Debug)]
struct HostState {
    running: usize,
    failures: u32,
    breaker: Breaker,
    paused_until: Option<Instant>,
}

impl HostState {
    fn new() -> HostState {
        HostState {
            running: 0,
            failures: 0,
            breaker: Breaker::Closed,
            paused_until: None,
        }
    }

    fn idle(&self) -> bool {
        self.running == 0
            && self.failures == 0
            && matches!(self.breaker, Breaker::Closed)
            && self.paused_until.is_none_or(|p| p <= Instant::now())
    }
}

/// Rate limiters by host: one keyed limiter per distinct quota (governor's
/// keyed limiter has one quota for all its keys), chosen by the host's
/// table, or the default. `None` is no limit.
struct Limiters {
    default: Option<Pacer>,
    /// By the name of a `[fetch.hosts."NAME"]` table with its own rate.
    own: HashMap<String, Option<Pacer>>,
}

/// Cells a request takes: a request's interval is cut into this many, so
/// that the limiter can forgive a request that comes a little late (by up
/// to one cell, a tenth of the interval) without letting two through at
/// once.
const CELLS: u32 = 10;

/// One rate, as a governor keyed limiter whose every request takes
/// [`CELLS`] cells.
///
/// Why not one cell with no burst: governor then counts the next turn from
/// when a request was let through, and the scheduler's timer always wakes
/// it a little after its turn (about 1.3 ms here: the timer's millisecond
/// and the dispatch), so each late start pushed every later one back, and
/// 20/s came out 2.7% slow (P7b in docs/benchmarks.md). With a request
/// worth [`CELLS`] cells and room for one more, a request up to a cell
/// late takes its turn from the schedule, not from the clock: the long-run
/// rate is the configured one, and no two requests come closer than
/// nine-tenths of the interval.
struct Pacer {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl Pacer {
    fn new(rate: Rate) -> Option<Pacer> {
        let cell = rate.interval() / CELLS;
        let quota = Quota::with_period(cell)?.allow_burst(NonZeroU32::new(CELLS + 1)?);
        Some(Pacer {
            limiter: RateLimiter::keyed(quota),
        })
    }

    fn cells() -> NonZeroU32 {
        NonZeroU32::new(CELLS).unwrap_or(NonZeroU32::MIN)
    }

    /// Takes `host`'s turn if it has come; else says how long until it
    /// comes.
    fn check(&self, host: &str) -> Result<(), Duration> {
        match self.limiter.check_key_n(&host.to_string(), Self::cells()) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            // The quota holds CELLS + 1 cells, so a request always fits.
            Err(_) => Ok(()),
        }
    }

    /// Waits for `host`'s turn, and takes it.
    async fn until_ready(&self, host: &str) {
        let _ = self
            .limiter
            .until_key_n_ready(&host.to_string(), Self::cells())
            .await;
    }
}

fn limiter(rate: Option<Rate>) -> Option<Pacer> {
    Pacer::new(rate?)
}

/// Per-host politeness: see the module doc.
pub struct Hosts {
    config: FetchConfig,
    limiters: Limiters,
    state: Mutex<HashMap<String, HostState>>,
    last_prune: Mutex<Instant>,
    changes: broadcast::Sender<HostStatus>,
    /// Tells the scheduler that a host may take jobs again, or must have
    /// them held back (a breaker or a pause changed).
    wake: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    /// Wall time, for the times shown in Stats and written as `run_at`.
    clock: crate::clock::Clock,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks completes before anything that could
    // panic.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hosts {
    /// The policy of `config`.
    pub fn new(config: FetchConfig, clock: crate::clock::Clock) -> Hosts {
        let limiters = Limiters {
            default: limiter(config.default_rate),
            own: config
                .hosts
                .iter()
                .filter_map(|(name, h)| h.rate.map(|r| (name.clone(), limiter(r))))
                .collect(),
        };
        Hosts {
            config,
            limiters,
            state: Mutex::new(HashMap::new()),
            last_prune: Mutex::new(Instant::now()),
            changes: broadcast::channel(256).0,
            wake: Mutex::new(None),
            clock,
        }
    }

    /// Sets what is called when a host's breaker or pause changes.
    pub fn on_change(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        *lock(&self.wake) = Some(wake);
    }

    /// Breaker changes as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<HostStatus> {
        self.changes.subscribe()
    }

    /// The fetch settings.
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    fn limiter_for(&self, host: &str) -> Option<&Pacer> {
        let bare = host.rsplit_once(':').map_or(host, |(h, _)| h);
        match self
            .limiters
            .own
            .get(host)
            .or_else(|| self.limiters.own.get(bare))
        {
            Some(own) => own.as_ref(),
            None => self.limiters.default.as_ref(),
        }
    }

    /// Whether a job of `host` may start now, and if so takes its slot
    /// and its rate's turn (so call it only for a job that will start on
    /// [`Admit::Yes`]).
    pub fn admit(&self, host: &str) -> Admit {
        self.prune_now_and_then();
        let now = Instant::now();
        let (_, slots) = self.config.limits_for(host);
        let mut states = lock(&self.state);
        let st = states
            .entry(host.to_string())
            .or_insert_with(HostState::new);
        let mut changed = false;
        match st.breaker {
            Breaker::Open { until, until_wall } => {
                if now < until {
                    return Admit::Open {
                        until: until_wall,
                        reason: format!(
                            "host {host} open after {} failures; a probe goes at {}",
                            st.failures.max(self.config.breaker_failures),
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH + Duration::from_micros(until_wall)
                            )
                        ),
                    };
                }
                st.breaker = Breaker::HalfOpen {
                    probing: false,
                    answered: 0,
                };
                changed = true;
            }
            Breaker::HalfOpen { probing: true, .. } => return Admit::Busy,
            Breaker::HalfOpen { .. } | Breaker::Closed => {}
        }
        let status = changed.then(|| status(host, st));
        let answer = if st.running >= slots {
            Admit::Busy
        } else if let Some(p) = st.paused_until.filter(|p| now < *p) {
            Admit::WaitUntil(p)
        } else {
            match self.limiter_for(host).map(|l| l.check(host)) {
                Some(Err(wait)) => Admit::WaitUntil(now + wait),
                Some(Ok(())) | None => {
                    st.running += 1;
                    if let Breaker::HalfOpen { probing, .. } = &mut st.breaker {
                        *probing = true;
                    }
                    Admit::Yes
                }
            }
        };
        drop(states);
        if let Some(s) = status {
            let _ = self.changes.send(s);
        }
        answer
    }

    /// A job of `host` that [`Hosts::admit`] let start has ended: its slot
    /// is free, and if it was a half-open breaker's probe that never
    /// reported (it failed before any request), the next probe may go once
    /// the host has no job running.
    pub fn release(&self, host: &str) {
        let mut states = lock(&self.state);
        if let Some(st) = states.get_mut(host) {
            st.running = st.running.saturating_sub(1);
            // A probe that answered has cleared `probing` itself, and the
            // next may be running already: only when none of the host's
            // jobs is left can the one that ended have been a silent probe.
            if let Breaker::HalfOpen { probing, .. } = &mut st.breaker
                && st.running == 0
            {
                *probing = false;
            }
        }
    }

    /// Every host with something to show: running jobs, failures, an
    /// open breaker.
    pub fn snapshot(&self) -> Vec<HostStatus> {
        let states = lock(&self.state);
        let mut out: Vec<HostStatus> = states
            .iter()
            .filter(|(_, st)| !st.idle())
            .map(|(h, st)| status(h, st))
            .collect();
        out.sort_by(|a, b| a.host.cmp(&b.host));
        out
    }

    fn prune_now_and_then(&self) {
        {
            let mut last = lock(&self.last_prune);
            if last.elapsed() < PRUNE_EVERY {
                return;
            }
            *last = Instant::now();
        }
        lock(&self.state).retain(|_, st| !st.idle());
        for l in self
            .limiters
            .own
            .values()
            .flatten()
            .chain(self.limiters.default.iter())
        {
            l.limiter.retain_recent();
            l.limiter.shrink_to_fit();
        }
    }

    fn changed(&self, s: Option<HostStatus>) {
        let Some(s) = s else {
            return;
        };
        let _ = self.changes.send(s);
        let wake = lock(&self.wake).clone();
        if let Some(w) = wake {
            w();
        }
    }
}

fn status(host: &str, st: &HostState) -> HostStatus {
    let (breaker, open_until) = match st.breaker {
        Breaker::Closed => (BreakerState::Closed, None),
        Breaker::Open { until_wall, .. } => (BreakerState::Open, Some(until_wall)),
        Breaker::HalfOpen { .. } => (BreakerState::HalfOpen, None),
    };
    HostStatus {
        host: host.to_string(),
        breaker,
        failures: st.failures,
        open_until,
        running: u32::try_from(st.running).unwrap_or(u32::MAX),
    }
}

impl HostFeedback for Hosts {
    fn report(&self, host: &str, outcome: HostOutcome) {
        let now = Instant::now();
        let mut states = lock(&self.state);
        let st = states
            .entry(host.to_string())
            .or_insert_with(HostState::new);
        let changed = match outcome {
            HostOutcome::Answered => {
                st.failures = 0;
                match &mut st.breaker {
                    Breaker::HalfOpen { answered, probing } => {
                        *answered += 1;
                        *probing = false;
                        if *answered >= PROBES_TO_CLOSE {
                            st.breaker = Breaker::Closed;
                        }
                        true
                    }
                    _ => false,
                }
            }
            HostOutcome::Failed => {
                st.failures = st.failures.saturating_add(1);
                let open = match st.breaker {
                    Breaker::Closed => st.failures >= self.config.breaker_failures,
                    // A failed probe opens it again at once.
                    Breaker::HalfOpen { .. } => true,
                    Breaker::Open { .. } => false,
                };
                if open {
                    let wall = self.clock.now_micros().saturating_add(
                        u64::try_from(self.config.breaker_open.as_micros()).unwrap_or(u64::MAX),
                    );
                    st.breaker = Breaker::Open {
                        until: now + self.config.breaker_open,
                        until_wall: wall,
                    };
                    tracing::warn!(
                        host,
                        failures = st.failures,
                        for_secs = self.config.breaker_open.as_secs(),
                        "a host failed too often in a row; its fetch jobs wait"
                    );
                }
                open
            }
            HostOutcome::RetryAfter(d) => {
                let until = now + d.min(crate::runner::MAX_DEFER);
                st.paused_until = Some(st.paused_until.map_or(until, |p| p.max(until)));
                true
            }
        };
        let s = changed.then(|| status(host, st));
        drop(states);
        self.changed(s);
    }

    fn pace<'a>(&'a self, host: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(l) = self.limiter_for(host) {
                l.until_ready(host).await;
            }
        })
    }
}

#[cfg(test)]
mod tests;
