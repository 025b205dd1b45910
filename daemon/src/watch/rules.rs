//! The watch service: the rules quernd keeps, a task per rule that follows
//! its tree, and what a trigger does. It knows nothing of gRPC: `api`
//! adapts it, as it adapts [`Jobs`]. The jobs a rule makes go through
//! [`Jobs::trigger_rule`], the same checked, durable path as Submit.
//!
//! **Nothing is lost.** A trigger's job and the rule's new snapshot are
//! stored in one transaction, so a crash leaves either both (the changes
//! were handed to a job) or neither (the next start compares the tree with
//! the older snapshot and triggers a catch-up with those changes). Changes
//! a rule holds back in memory (settling, or held behind a running job by
//! `coalesce`) are in no stored snapshot either, so they come back the
//! same way.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::filter::Filter;
use super::follow::{FollowOptions, FollowStats, Follower, Reason, Trigger};
use super::rule::{
    CHANGED_PATHS_ENV, OnBusy, Rule, RuleId, RuleSpec, TriggerRecord, WATCH_DIR, WATCH_LABEL,
};
use super::snapshot::Snapshot;
use super::tree::is_watch_limit;
use crate::config::WatchConfig;
use crate::error::Error;
use crate::job::{JobId, JobKind, JobSpec};
use crate::jobs::Jobs;
use crate::store::{RuleTrigger, Store};

/// The label with the trigger's reason (beside [`WATCH_LABEL`], which
/// holds the rule's id).
pub const LABEL_REASON: &str = "quern.watch.reason";

/// How long a rule in `error` waits for an event near its root before it
/// tries again anyway: a safety net for causes no event announces (a
/// permission restored on a parent, a mount).
const ERROR_RETRY: Duration = Duration::from_secs(60);

/// How a rule is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleState {
    Active,
    Paused,
    /// Comparing snapshots instead of watching; why.
    Degraded(String),
    /// Not watching at all; why.
    Error(String),
}

impl RuleState {
    /// The name `quernctl` and the API use.
    pub fn name(&self) -> &'static str {
        match self {
            RuleState::Active => "active",
            RuleState::Paused => "paused",
            RuleState::Degraded(_) => "degraded",
            RuleState::Error(_) => "error",
        }
    }

    /// Why it is degraded or in error.
    pub fn reason(&self) -> &str {
        match self {
            RuleState::Degraded(r) | RuleState::Error(r) => r,
            _ => "",
        }
    }
}

/// A rule as shown: its record and how it is doing now.
#[derive(Debug, Clone)]
pub struct RuleView {
    pub rule: Rule,
    pub state: RuleState,
    pub kernel_watches: u64,
    pub snapshot_paths: u64,
    /// Changed paths not settled yet, or held behind a running job.
    pub pending_paths: u64,
}

/// A change to a rule, for Events.
#[derive(Debug, Clone)]
pub struct RuleEvent {
    /// "added", "removed", "paused", "resumed", "state", "triggered" or
    /// "held".
    pub change: &'static str,
    pub view: RuleView,
    /// Set on "triggered".
    pub trigger: Option<TriggerRecord>,
}

/// What a rule's task shows of itself.
#[derive(Default)]
struct Live {
    stats: Arc<FollowStats>,
    state: Mutex<Option<RuleState>>,
    /// Paths held behind a running job.
    held: AtomicU64,
}

struct Entry {
    rule: Rule,
    live: Arc<Live>,
    /// Stops the rule's task; `None` while paused.
    task: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

struct Inner {
    jobs: Jobs,
    store: Store,
    config: WatchConfig,
    /// `<state dir>/watch`: the paths files.
    dir: PathBuf,
    /// The grace of a `restart`'s cancel.
    grace: Duration,
    rules: Mutex<BTreeMap<RuleId, Entry>>,
    /// One rule change at a time (add, remove, pause, resume), so that the
    /// rule count and a rule's task agree with the store.
    changing: tokio::sync::Mutex<()>,
    events: broadcast::Sender<RuleEvent>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

/// The watch service. Cheap to clone.
#[derive(Clone)]
pub struct Watches {
    inner: Arc<Inner>,
}

impl Watches {
    /// Loads the stored rules; [`Watches::begin`] starts following them.
    /// The rules' tasks stop when `stop` fires; [`Watches::closed`] waits
    /// for them.
    pub async fn load(
        jobs: Jobs,
        store: Store,
        config: WatchConfig,
        state_dir: &Path,
        grace: Duration,
        stop: CancellationToken,
    ) -> Result<Watches, Error> {
        let rules = store.rules().await?;
        let inner = Arc::new(Inner {
            jobs,
            store,
            config,
            dir: state_dir.join(WATCH_DIR),
            grace,
            rules: Mutex::new(BTreeMap::new()),
            changing: tokio::sync::Mutex::new(()),
            events: broadcast::channel(1024).0,
            stop,
            tracker: TaskTracker::new(),
        });
        for rule in rules {
            let live = Arc::new(Live::default());
            if rule.paused {
                *lock(&live.state) = Some(RuleState::Paused);
            }
            lock(&inner.rules).insert(
                rule.id,
                Entry {
                    rule,
                    live,
                    task: None,
                },
            );
        }
        Ok(Watches { inner })
    }

    /// Starts following every loaded rule that is not paused: a rule whose
    /// tree changed while quernd was down triggers once, with the reason
    /// `catch-up`.
    pub fn begin(&self) {
        let inner = &self.inner;
        let mut rules = lock(&inner.rules);
        for (id, e) in rules.iter_mut() {
            if !e.rule.paused && e.task.is_none() {
                e.task = Some(inner.spawn(*id, e.live.clone(), None));
            }
        }
    }

    /// Waits until every rule's task has stopped, after the `stop` given
    /// to [`Watches::start`] fired.
    pub async fn closed(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// Checks and stores a new rule of user `owner_uid`, and starts
    /// following it. Returns once it is stored and every later change will
    /// be seen.
    pub async fn add(&self, mut spec: RuleSpec, owner_uid: u32) -> Result<RuleView, Error> {
        let inner = &self.inner;
        let _one = inner.changing.lock().await;
        let count = lock(&inner.rules).len();
        if count >= inner.config.max_rules {
            return Err(Error::invalid(
                "spec",
                format!(
                    "quernd keeps {count} rules, the most watch.max_rules allows; remove one (quernctl watch rm) or raise watch.max_rules"
                ),
            ));
        }
        let filter = spec
            .check()
            .map_err(|(field, reason)| Error::invalid(format!("spec.{field}"), reason))?;
        spec.root = std::fs::canonicalize(&spec.root).map_err(|e| {
            Error::invalid(
                "spec.root",
                format!(
                    "{} cannot be resolved ({e}); fix the path",
                    spec.root.display()
                ),
            )
        })?;
        // A job as the rule will make it must pass Submit's checks, the
        // added labels and variables included.
        let sample = decorate(
            &spec.job,
            0,
            &spec.root,
            Reason::Change,
            Some(Path::new("/")),
        );
        crate::jobs::check(&sample)
            .map_err(|(field, reason)| Error::invalid(format!("spec.job{field}"), reason))?;

        let live = Arc::new(Live::default());
        let (follower, state) = start_follower(
            spec.root.clone(),
            filter,
            &spec,
            &live,
            &inner.config,
            None,
            false,
        )
        .await
        .map_err(|e| {
            Error::invalid(
                "spec.root",
                format!("{} cannot be watched: {e}", spec.root.display()),
            )
        })?;
        let rule = inner
            .store
            .add_rule(spec, owner_uid, follower.snapshot(), inner.jobs.now())
            .await?;
        let id = rule.id;
        *lock(&live.state) = Some(state);
        let task = inner.spawn(id, live.clone(), Some(follower));
        lock(&inner.rules).insert(
            id,
            Entry {
                rule,
                live,
                task: Some(task),
            },
        );
        tracing::info!(rule = id, "watch rule added");
        let view = self.view(id)?;
        inner.emit("added", view.clone(), None);
        Ok(view)
    }

    /// Stops rule `id` and deletes it. Jobs it made are left alone.
    pub async fn remove(&self, id: RuleId) -> Result<RuleView, Error> {
        let inner = &self.inner;
        let _one = inner.changing.lock().await;
        let view = self.view(id)?;
        inner.halt(id).await;
        inner.store.remove_rule(id).await?;
        lock(&inner.rules).remove(&id);
        tracing::info!(rule = id, "watch rule removed");
        inner.emit("removed", view.clone(), None);
        Ok(view)
    }

    /// Pauses rule `id`: its watches stop, and no job is made until it is
    /// resumed.
    pub async fn pause(&self, id: RuleId) -> Result<RuleView, Error> {
        let inner = &self.inner;
        let _one = inner.changing.lock().await;
        self.view(id)?;
        let rule = inner
            .store
            .set_rule_paused(id, true)
            .await?
            .ok_or(Error::RuleNotFound(id))?;
        inner.halt(id).await;
        if let Some(e) = lock(&inner.rules).get_mut(&id) {
            e.rule = rule;
            *lock(&e.live.state) = Some(RuleState::Paused);
            e.live.held.store(0, Ordering::Relaxed);
        }
        let view = self.view(id)?;
        inner.emit("paused", view.clone(), None);
        Ok(view)
    }

    /// Resumes rule `id`; what changed while it was paused triggers it
    /// once, with the reason `catch-up`.
    pub async fn resume(&self, id: RuleId) -> Result<RuleView, Error> {
        let inner = &self.inner;
        let _one = inner.changing.lock().await;
        self.view(id)?;
        let rule = inner
            .store
            .set_rule_paused(id, false)
            .await?
            .ok_or(Error::RuleNotFound(id))?;
        let mut rules = lock(&inner.rules);
        if let Some(e) = rules.get_mut(&id) {
            e.rule = rule;
            if e.task.is_none() {
                *lock(&e.live.state) = None;
                e.task = Some(inner.spawn(id, e.live.clone(), None));
            }
        }
        drop(rules);
        let view = self.view(id)?;
        inner.emit("resumed", view.clone(), None);
        Ok(view)
    }

    /// Every rule, in id order.
    pub fn list(&self) -> Vec<RuleView> {
        let rules = lock(&self.inner.rules);
        rules.values().map(view_of).collect()
    }

    /// One rule.
    pub fn view(&self, id: RuleId) -> Result<RuleView, Error> {
        let rules = lock(&self.inner.rules);
        rules.get(&id).map(view_of).ok_or(Error::RuleNotFound(id))
    }

    /// Rule changes and triggers, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<RuleEvent> {
        self.inner.events.subscribe()
    }
}

fn view_of(e: &Entry) -> RuleView {
    let state = lock(&e.live.state).clone().unwrap_or(if e.rule.paused {
        RuleState::Paused
    } else {
        RuleState::Active
    });
    RuleView {
        rule: e.rule.clone(),
        state,
        kernel_watches: e.live.stats.watches.load(Ordering::Relaxed),
        snapshot_paths: e.live.stats.snapshot_paths.load(Ordering::Relaxed),
        pending_paths: e.live.stats.pending.load(Ordering::Relaxed)
            + e.live.held.load(Ordering::Relaxed),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A job as rule `id` makes it from `template`: its labels, and for exec
/// its variables.
fn decorate(
    template: &JobSpec,
    id: RuleId,
    root: &Path,
    reason: Reason,
    paths_file: Option<&Path>,
) -> JobSpec {
    let mut spec = template.clone();
    spec.labels.insert(WATCH_LABEL.into(), id.to_string());
    spec.labels
        .insert(LABEL_REASON.into(), reason.as_str().to_string());
    if let JobKind::Exec(exec) = &mut spec.kind {
        exec.env.insert("QUERN_WATCH_ID".into(), id.to_string());
        exec.env.insert(
            "QUERN_WATCH_ROOT".into(),
            root.to_string_lossy().into_owned(),
        );
        if let Some(f) = paths_file {
            exec.env
                .insert(CHANGED_PATHS_ENV.into(), f.to_string_lossy().into_owned());
        }
    }
    spec
}

/// Starts following `root` on a blocking thread (the first walk and the
/// watches take a while on a big tree). When the kernel is out of watches,
/// or `poll` says so, the follower compares snapshots instead, and the
/// state says why.
async fn start_follower(
    root: PathBuf,
    filter: Filter,
    spec: &RuleSpec,
    live: &Live,
    config: &WatchConfig,
    last: Option<Snapshot>,
    poll: bool,
) -> std::io::Result<(Follower, RuleState)> {
    let opts = FollowOptions {
        debounce: spec.debounce,
        max_wait: spec.max_wait,
        stats: live.stats.clone(),
        hooks: config.test_hooks,
    };
    let every = config.poll_interval;
    tokio::task::spawn_blocking(move || {
        if !poll {
            match Follower::start(&root, filter.clone(), opts.clone(), last.clone()) {
                Err(e) if is_watch_limit(&e) => {
                    let f = Follower::polling(&root, filter, opts, every, last)?;
                    let why = limit_message(&e, f.snapshot(), every);
                    tracing::warn!(root = %root.display(), "{why}");
                    return Ok((f, RuleState::Degraded(why)));
                }
                started => return started.map(|f| (f, RuleState::Active)),
            }
        }
        let f = Follower::polling(&root, filter, opts, every, last)?;
        Ok((f, RuleState::Degraded(String::new())))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// What a rule out of kernel watches says: the limit, its value, what the
/// rule needs, and what it does meanwhile.
fn limit_message(e: &std::io::Error, snap: &Snapshot, every: Duration) -> String {
    let needed = snap.dirs().len() + 1;
    let every = humantime::format_duration(every);
    if e.raw_os_error() == Some(libc::EMFILE) {
        let max = read_sysctl("max_user_instances");
        return format!(
            "out of inotify instances: fs.inotify.max_user_instances is {max} (or the open-file limit was reached); raise it (sysctl fs.inotify.max_user_instances=N) and resume the rule. Meanwhile the tree is compared every {every}"
        );
    }
    let max = read_sysctl("max_user_watches");
    format!(
        "out of inotify watches: fs.inotify.max_user_watches is {max}, and this rule needs {needed} (one per directory) besides those already in use; raise it (sysctl fs.inotify.max_user_watches=N) and resume the rule. Meanwhile the tree is compared every {every}"
    )
}

fn read_sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A rule's jobs in flight, and the trigger `coalesce` holds behind them.
#[derive(Default)]
struct Busy {
    /// The newest job the rule made, and the paths it was given.
    last: Option<(JobId, BTreeSet<PathBuf>)>,
    /// Changes held until `last` finishes.
    held: Option<Trigger>,
}

impl Inner {
    fn spawn(
        self: &Arc<Self>,
        id: RuleId,
        live: Arc<Live>,
        ready: Option<Follower>,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = self.stop.child_token();
        let task = self
            .tracker
            .spawn(self.clone().follow(id, live, stop.clone(), ready));
        (stop, task)
    }

    /// Stops rule `id`'s task and waits for it.
    async fn halt(&self, id: RuleId) {
        let task = lock(&self.rules).get_mut(&id).and_then(|e| e.task.take());
        if let Some((stop, task)) = task {
            stop.cancel();
            let _ = task.await;
        }
    }

    fn emit(&self, change: &'static str, view: RuleView, trigger: Option<TriggerRecord>) {
        let _ = self.events.send(RuleEvent {
            change,
            view,
            trigger,
        });
    }

    fn emit_view(&self, id: RuleId, change: &'static str, trigger: Option<TriggerRecord>) {
        let view = lock(&self.rules).get(&id).map(view_of);
        if let Some(view) = view {
            self.emit(change, view, trigger);
        }
    }

    /// Sets rule `id`'s state, and says so when it changed.
    fn set_state(&self, id: RuleId, live: &Live, state: RuleState) {
        let changed = {
            let mut s = lock(&live.state);
            let changed = s.as_ref() != Some(&state);
            *s = Some(state.clone());
            changed
        };
        if changed {
            match &state {
                RuleState::Error(why) => tracing::warn!(rule = id, "watch rule in error: {why}"),
                RuleState::Degraded(why) => tracing::warn!(rule = id, "watch rule degraded: {why}"),
                _ => tracing::info!(rule = id, state = state.name(), "watch rule state"),
            }
            self.emit_view(id, "state", None);
        }
    }

    fn rule(&self, id: RuleId) -> Option<Rule> {
        lock(&self.rules).get(&id).map(|e| e.rule.clone())
    }

    /// Rule `id`'s task: follows the tree, restarting the follower after
    /// the root vanished (waiting for it to come back) or the kernel ran
    /// out of watches (comparing snapshots from then on).
    async fn follow(
        self: Arc<Self>,
        id: RuleId,
        live: Arc<Live>,
        stop: CancellationToken,
        mut ready: Option<Follower>,
    ) {
        let mut busy = Busy::default();
        if let Some(rule) = self.rule(id)
            && let Some(&newest) = rule.recent_jobs.first()
            && self.unfinished(newest).await
        {
            busy.last = Some((newest, BTreeSet::new()));
        }
        let mut poll = false;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let Some(rule) = self.rule(id) else { return };
            let follower = match ready.take() {
                Some(f) => f,
                None => match self.restart(&rule, &live, poll).await {
                    Ok(f) => f,
                    Err(e) => {
                        if !self.failed(id, &live, &rule.spec.root, &e, &stop).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let (tx, mut triggers) = mpsc::channel(4);
            let run = follower.run(tx, stop.child_token());
            tokio::pin!(run);
            let ended = loop {
                let waiting = busy.held.is_some();
                let last = busy.last.as_ref().map(|(j, _)| *j);
                tokio::select! {
                    r = &mut run => break r,
                    Some(t) = triggers.recv() => self.on_trigger(&rule, &live, &mut busy, t).await,
                    () = finished(&self.jobs, last), if waiting => self.release(&rule, &live, &mut busy).await,
                }
            };
            while let Ok(t) = triggers.try_recv() {
                self.on_trigger(&rule, &live, &mut busy, t).await;
            }
            match ended {
                Ok(()) => return,
                Err(e) if is_watch_limit(&e) => poll = true,
                Err(e) => {
                    if !self.failed(id, &live, &rule.spec.root, &e, &stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// Puts rule `id` in `error` for `e`, and waits until its root may be
    /// followed again. Returns false if `stop` fired.
    async fn failed(
        &self,
        id: RuleId,
        live: &Live,
        root: &Path,
        e: &std::io::Error,
        stop: &CancellationToken,
    ) -> bool {
        self.set_state(id, live, RuleState::Error(root_error(root, e)));
        live.stats.watches.store(0, Ordering::Relaxed);
        live.stats.pending.store(0, Ordering::Relaxed);
        wait_for_root(root, !root.is_dir(), stop).await
    }

    /// A follower for `rule` from its stored snapshot: what changed since
    /// is its first trigger, a catch-up.
    async fn restart(&self, rule: &Rule, live: &Live, poll: bool) -> std::io::Result<Follower> {
        let filter = Filter::new(
            &rule.spec.include,
            &rule.spec.exclude,
            rule.spec.recursive,
            !rule.spec.no_ignore_files,
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        let last = self
            .store
            .rule_snapshot(rule.id)
            .await
            .map_err(std::io::Error::other)?;
        let (f, mut state) = start_follower(
            rule.spec.root.clone(),
            filter,
            &rule.spec,
            live,
            &self.config,
            last,
            poll,
        )
        .await?;
        if let RuleState::Degraded(why) = &state
            && why.is_empty()
        {
            // Polling because a new directory found no watch left.
            let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
            state = RuleState::Degraded(limit_message(&e, f.snapshot(), self.config.poll_interval));
        }
        self.set_state(rule.id, live, state);
        Ok(f)
    }

    /// Whether job `id` is still queued, scheduled or running.
    async fn unfinished(&self, id: JobId) -> bool {
        self.jobs
            .get(id)
            .await
            .is_ok_and(|j| !j.state.tag().is_terminal())
    }

    /// What a settle does, by the rule's `on_busy`.
    async fn on_trigger(&self, rule: &Rule, live: &Live, busy: &mut Busy, t: Trigger) {
        let prev = match &busy.last {
            Some((job, _)) if self.unfinished(*job).await => Some(*job),
            _ => None,
        };
        let Some(prev) = prev else {
            // Nothing unfinished: what `coalesce` held goes with this one.
            busy.last = None;
            live.held.store(0, Ordering::Relaxed);
            let t = match busy.held.take() {
                Some(h) => merge(h, t),
                None => t,
            };
            return self.submit(rule, busy, t).await;
        };
        match rule.spec.on_busy {
            OnBusy::Queue => self.submit(rule, busy, t).await,
            OnBusy::Skip => {
                tracing::info!(
                    rule = rule.id,
                    job = prev,
                    "trigger skipped: the rule's job is unfinished"
                );
                self.record(rule, t, Vec::new()).await;
            }
            OnBusy::Restart => {
                if let Err(e) = self.jobs.cancel(prev, self.grace).await {
                    tracing::debug!(rule = rule.id, job = prev, error = %e, "restart: the previous job ended first");
                }
                let mut t = t;
                if let Some((_, paths)) = busy.last.take() {
                    t.paths.extend(paths);
                }
                self.submit(rule, busy, t).await;
            }
            OnBusy::Coalesce => {
                let held = match busy.held.take() {
                    Some(h) => merge(h, t),
                    None => t,
                };
                live.held.store(held.paths.len() as u64, Ordering::Relaxed);
                let record = TriggerRecord {
                    at: self.jobs.now(),
                    reason: held.reason,
                    paths: held.paths.len() as u64,
                    job_id: None,
                };
                busy.held = Some(held);
                self.emit_view(rule.id, "held", Some(record));
            }
        }
    }

    /// The previous job finished: submit what `coalesce` held.
    async fn release(&self, rule: &Rule, live: &Live, busy: &mut Busy) {
        busy.last = None;
        live.held.store(0, Ordering::Relaxed);
        if let Some(t) = busy.held.take() {
            self.submit(rule, busy, t).await;
        }
    }

    /// Submits the rule's job for `t`, with its paths file, and stores the
    /// snapshot with it.
    async fn submit(&self, rule: &Rule, busy: &mut Busy, t: Trigger) {
        let paths_file = match &rule.spec.job.kind {
            JobKind::Exec(_) => match self.write_paths(rule.id, &t.paths) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::error!(rule = rule.id, error = %e, "cannot write the changed paths file; the changes will be caught up at the next start");
                    return;
                }
            },
            _ => None,
        };
        let spec = decorate(
            &rule.spec.job,
            rule.id,
            &rule.spec.root,
            t.reason,
            paths_file.as_deref(),
        );
        let paths = t.paths.clone();
        if let Some(job) = self.record(rule, t, vec![spec]).await {
            busy.last = Some((job, paths));
        }
    }

    /// Stores trigger `t` with the jobs made for it, if any; returns the
    /// first job's id.
    async fn record(&self, rule: &Rule, t: Trigger, specs: Vec<JobSpec>) -> Option<JobId> {
        let at = self.jobs.now();
        let stored = self
            .jobs
            .trigger_rule(RuleTrigger {
                id: rule.id,
                specs,
                owner_uid: rule.owner_uid,
                snapshot: Some(t.snapshot),
                reason: t.reason,
                paths: t.paths.len() as u64,
                at,
            })
            .await;
        match stored {
            Ok(Some((stored, subs))) => {
                let job = subs.first().map(|s| s.job.id);
                let record = stored.last_trigger;
                if let Some(e) = lock(&self.rules).get_mut(&rule.id) {
                    e.rule = stored;
                }
                tracing::info!(rule = rule.id, reason = t.reason.as_str(), paths = t.paths.len(), job = ?job, "watch rule triggered");
                self.emit_view(rule.id, "triggered", record);
                job
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(rule = rule.id, error = %e, "cannot store a trigger; its changes will be caught up at the next start");
                None
            }
        }
    }

    /// Writes `paths`, one per line, to a new file under the rule's
    /// directory, durably: the job may run after a crash.
    fn write_paths(&self, id: RuleId, paths: &BTreeSet<PathBuf>) -> std::io::Result<PathBuf> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = self.dir.join(id.to_string());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let name = format!(
            "{}-{}.paths",
            self.jobs.now(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let mut text = Vec::with_capacity(paths.len() * 32);
        for p in paths {
            text.extend_from_slice(p.as_os_str().as_bytes());
            text.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(path)
    }
}

/// Trigger `later` added to the held `held`: the union of the paths, the
/// newer snapshot, and the reason that says the most (a catch-up or a
/// rescan over a plain change).
fn merge(mut held: Trigger, later: Trigger) -> Trigger {
    held.paths.extend(later.paths);
    held.snapshot = later.snapshot;
    if held.reason == Reason::Change {
        held.reason = later.reason;
    }
    held
}

/// Resolves once job `id` has finished (at once for `None`, or a job no
/// longer stored).
async fn finished(jobs: &Jobs, id: Option<JobId>) {
    let Some(id) = id else { return };
    let mut events = jobs.subscribe();
    loop {
        match jobs.get(id).await {
            Ok(j) if !j.state.tag().is_terminal() => {}
            _ => return,
        }
        loop {
            match events.recv().await {
                Ok(e) if e.job_id == id && e.state.is_terminal() => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

/// Why a rule's root cannot be followed.
fn root_error(root: &Path, e: &std::io::Error) -> String {
    match std::fs::metadata(root) {
        Err(m) if m.kind() == std::io::ErrorKind::NotFound => format!(
            "root {} vanished; the rule resumes, with a catch-up, once it is back",
            root.display()
        ),
        Ok(m) if !m.is_dir() => format!(
            "root {} is no longer a directory; the rule resumes once it is one again",
            root.display()
        ),
        _ => format!(
            "root {} cannot be watched: {e}; the rule retries when something changes near it",
            root.display()
        ),
    }
}

/// Waits until `root` may be followed again: for an event in its nearest
/// existing ancestor (the root reappearing, or a change of its entry), or
/// [`ERROR_RETRY`] at most. `gone` says the root was missing: then it
/// being back once the watch is in place is enough. Returns false if
/// `stop` fired.
async fn wait_for_root(root: &Path, gone: bool, stop: &CancellationToken) -> bool {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |e| {
        let _ = tx.send(e);
    })
    .ok();
    let near = root
        .ancestors()
        .skip(1)
        .find(|a| a.is_dir())
        .map(Path::to_path_buf);
    let watched = match (&mut watcher, &near) {
        (Some(w), Some(dir)) => w.watch(dir, notify::RecursiveMode::NonRecursive).is_ok(),
        _ => false,
    };
    if gone && root.is_dir() {
        return true;
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(ERROR_RETRY) => return true,
            ev = rx.recv(), if watched => {
                // Only the root's own entry, or the appearance of a
                // directory on the way to it, is worth a try.
                let relevant = match ev {
                    Some(Ok(ev)) => ev.paths.iter().any(|p| root.starts_with(p)),
                    _ => true,
                };
                if relevant {
                    return true;
                }
            }
        }
    }
}
