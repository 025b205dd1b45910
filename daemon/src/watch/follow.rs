//! One rule's loop: its tree's events, settled into triggers. It starts
//! from the snapshot the rule last acted on, if there is one, and
//! triggers once with the reason `catch-up` for what changed meanwhile;
//! then every settle is a trigger with the reason `change`, or `rescan`
//! when events were lost and the snapshot comparison found the changes.
//! After each trigger the snapshot is brought up to date for the paths it
//! carried, which is what the caller persists.
//!
//! It sleeps on the tree's events and on one timer, set to when the
//! pending changes settle: nothing polls.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::filter::Filter;
use super::settle::Settle;
use super::snapshot::Snapshot;
use super::tree::{Seen, Tree};

/// Why a rule triggered: the label its job gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Change,
    CatchUp,
    Rescan,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Change => "change",
            Reason::CatchUp => "catch-up",
            Reason::Rescan => "rescan",
        }
    }
}

/// A rule's trigger: the changed paths, relative to the root, and the
/// snapshot that includes them, to persist once the job is submitted.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub reason: Reason,
    pub paths: BTreeSet<PathBuf>,
    pub snapshot: Snapshot,
}

/// What a running follower shows of itself, for `watch get`.
#[derive(Debug, Default)]
pub struct FollowStats {
    /// Kernel watches held (0 when polling).
    pub watches: AtomicU64,
    /// Paths in the snapshot.
    pub snapshot_paths: AtomicU64,
    /// Changed paths not yet settled.
    pub pending: AtomicU64,
}

/// Most events taken from the channel in one batch, so that a flood
/// still lets the timers run.
const MAX_BATCH: usize = 4096;

/// How long events rest in the channel after a batch of more than one,
/// so that a burst is taken in batches, not an event at a time. Taking
/// each event as it came woke the rule's task once per event: creating
/// 100k files in 1,000 new directories cost quernd about 50 µs of CPU an
/// event, most of it in context switches (perf: 37% in
/// `finish_task_switch`), and slowed the burst fourfold. A lone change
/// (one event, or one batch) is taken at once, so it settles no later;
/// in a burst a change is recorded at most this late.
const BATCH_REST: Duration = Duration::from_millis(2);

/// How notify's thread is paced in a burst. That thread reads the kernel's
/// queue and calls our handler for each event read; woken for every few
/// events, as a burst of file creations wakes it, it spent more time
/// going to sleep and waking than handling events (perf, 100k files in
/// 1,000 new directories: 27% of quernd's samples were its wake-ups).
/// So in a burst, the first event of a wake-up that follows the previous
/// one closely (within [`Pace::BUSY`]) rests the thread for
/// [`Pace::REST`] first: meanwhile the kernel queues the burst's next
/// events (far below its limit: a burst makes tens of events a
/// millisecond), and the next read takes them all. A burst is more than
/// [`Pace::BURST`] events with no quiet spell between them; a lone write
/// (its create, modify and close-write come in separate wake-ups) is not
/// delayed, which cost P9a's latency a millisecond or two when every
/// close wake-up rested.
#[derive(Default)]
struct Pace {
    last: Option<std::time::Instant>,
    /// Events since the last quiet spell.
    run: u32,
}

impl Pace {
    /// Events of one read come microseconds apart; a longer gap means a
    /// new wake-up.
    const SAME_READ: Duration = Duration::from_micros(50);
    /// A wake-up this soon after the previous event is part of a burst.
    const BUSY: Duration = Duration::from_millis(5);
    const REST: Duration = Duration::from_millis(1);
    /// Events in a row before pacing starts: a few writes' worth.
    const BURST: u32 = 64;

    fn before_event(&mut self) {
        let now = std::time::Instant::now();
        let gap = self.last.map(|last| now.duration_since(last));
        if gap.is_none_or(|g| g >= Pace::BUSY) {
            self.run = 0;
        }
        self.run = self.run.saturating_add(1);
        if let Some(gap) = gap
            && gap > Pace::SAME_READ
            && gap < Pace::BUSY
            && self.run > Pace::BURST
        {
            std::thread::sleep(Pace::REST);
        }
        self.last = Some(std::time::Instant::now());
    }
}

/// The test hooks' file names (see [`crate::config::WatchConfig::test_hooks`]).
pub const HOOK_DEAF: &str = ".quern-test-deaf";
/// See [`HOOK_DEAF`].
pub const HOOK_RESCAN: &str = ".quern-test-rescan";

/// Where changes come from: the kernel's events, or a comparison of the
/// tree with the snapshot every so often when the kernel has no watch
/// left for the rule.
enum Source {
    Tree {
        // Boxed: the tree is ten times the size of the other variant.
        tree: Box<Tree>,
        events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    },
    Poll {
        every: Duration,
        /// The tree as the last comparison found it.
        seen: Snapshot,
    },
}

/// A rule whose tree is watched, ready to [`Follower::run`].
pub struct Follower {
    root: PathBuf,
    filter: Filter,
    source: Source,
    snap: Snapshot,
    settle: Settle,
    catch_up: Option<Trigger>,
    stats: Arc<FollowStats>,
    hooks: bool,
}

/// How a rule's timing and extras are set.
#[derive(Debug, Clone, Default)]
pub struct FollowOptions {
    pub debounce: Duration,
    pub max_wait: Duration,
    /// Where the follower shows its counts.
    pub stats: Arc<FollowStats>,
    /// Honour the test hooks' files.
    pub hooks: bool,
}

impl Follower {
    /// Watches `root`: every change from when this returns is seen. `last`
    /// is the snapshot of the rule's last trigger, if it has one; what
    /// changed since is the first trigger, with the reason `catch-up`.
    /// Fails when the tree cannot be watched or walked (the root vanished,
    /// no watches left: see [`super::tree::is_watch_limit`]), for the
    /// caller to report.
    pub fn start(
        root: &Path,
        filter: Filter,
        opts: FollowOptions,
        last: Option<Snapshot>,
    ) -> io::Result<Follower> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut pace = Pace::default();
        let (tree, snap, early) = Tree::start(root, filter.clone(), move |e| {
            pace.before_event();
            let _ = tx.send(e);
        })?;
        let mut f = Follower::new(
            root,
            filter,
            Source::Tree {
                tree: Box::new(tree),
                events,
            },
            snap,
            opts,
            last,
        );
        let now = Instant::now();
        for s in early {
            if let Seen::Changed(p) = s {
                f.record(p, now);
            }
        }
        Ok(f)
    }

    /// Like [`Follower::start`], for a rule the kernel cannot watch: the
    /// tree is compared with the snapshot `every` so often instead, and
    /// the changes found settle as events' would.
    pub fn polling(
        root: &Path,
        filter: Filter,
        opts: FollowOptions,
        every: Duration,
        last: Option<Snapshot>,
    ) -> io::Result<Follower> {
        let snap = Snapshot::take(root, &filter)?;
        let seen = snap.clone();
        Ok(Follower::new(
            root,
            filter,
            Source::Poll { every, seen },
            snap,
            opts,
            last,
        ))
    }

    fn new(
        root: &Path,
        filter: Filter,
        source: Source,
        snap: Snapshot,
        opts: FollowOptions,
        last: Option<Snapshot>,
    ) -> Follower {
        let hooks = opts.hooks;
        let catch_up = last.and_then(|last| {
            let paths: BTreeSet<PathBuf> = last
                .diff(&snap)
                .into_iter()
                .map(|c| c.path)
                .filter(|p| !(hooks && is_hook(p)))
                .collect();
            (!paths.is_empty()).then(|| Trigger {
                reason: Reason::CatchUp,
                paths,
                snapshot: snap.clone(),
            })
        });
        let f = Follower {
            root: root.to_path_buf(),
            filter,
            source,
            snap,
            settle: Settle::new(opts.debounce, opts.max_wait),
            catch_up,
            stats: opts.stats,
            hooks,
        };
        f.show();
        f
    }

    /// The snapshot the follower started from.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    fn record(&mut self, path: PathBuf, now: Instant) {
        if !(self.hooks && is_hook(&path)) {
            self.settle.record(path, now);
        }
    }

    fn show(&self) {
        let watches = match &self.source {
            Source::Tree { tree, .. } => tree.watches() as u64,
            Source::Poll { .. } => 0,
        };
        self.stats.watches.store(watches, Ordering::Relaxed);
        self.stats
            .snapshot_paths
            .store(self.snap.len() as u64, Ordering::Relaxed);
        self.stats
            .pending
            .store(self.settle.pending() as u64, Ordering::Relaxed);
    }

    /// The tree as it is now, walked on a blocking thread.
    async fn walk(&self) -> io::Result<Snapshot> {
        let (root, filter) = (self.root.clone(), self.filter.clone());
        tokio::task::spawn_blocking(move || Snapshot::take(&root, &filter))
            .await
            .map_err(io::Error::other)?
    }

    /// Sends a [`Trigger`] for each settle until `stop`, or until `out` is
    /// dropped. Fails when the tree can no longer be walked (its root
    /// vanished), or when the kernel ran out of watches for a new
    /// directory ([`super::tree::is_watch_limit`]): the caller then starts
    /// over from the last persisted snapshot, which loses nothing.
    pub async fn run(
        mut self,
        out: mpsc::Sender<Trigger>,
        stop: CancellationToken,
    ) -> io::Result<()> {
        if let Some(t) = self.catch_up.take()
            && out.send(t).await.is_err()
        {
            return Ok(());
        }
        let mut rescanned = false;
        let mut deaf = false;
        let every = match &self.source {
            Source::Poll { every, .. } => Some(*every),
            Source::Tree { .. } => None,
        };
        let mut next_poll = every.map(|e| Instant::now() + e);
        // After a batch of more than one event, events wait BATCH_REST in
        // the channel before the next batch is taken.
        let mut resting: Option<Instant> = None;
        loop {
            self.show();
            let due = self.settle.due();
            tokio::select! {
                // Biased, in this order: events already queued are taken
                // before a timer fires, so a task that fell behind in a
                // burst does not settle early with the burst's rest
                // still in the channel.
                biased;
                () = stop.cancelled() => return Ok(()),
                ev = next_event(&mut self.source), if resting.is_none() => {
                    let Some(ev) = ev else { return Ok(()) };
                    let now = Instant::now();
                    let Source::Tree { tree, events } = &mut self.source else { continue };
                    // Everything queued is taken in one go; see BATCH_REST.
                    let mut seen = tree.handle(ev);
                    let mut taken = 1;
                    while taken < MAX_BATCH {
                        let Ok(ev) = events.try_recv() else { break };
                        seen.extend(tree.handle(ev));
                        taken += 1;
                    }
                    if let Some(e) = tree.exhausted() {
                        return Err(e);
                    }
                    if taken > 1 {
                        resting = Some(now + BATCH_REST);
                    }
                    let mut rescan = false;
                    for s in seen {
                        match s {
                            Seen::Changed(p) if self.hooks && p == Path::new(HOOK_DEAF) => {
                                deaf = true;
                            }
                            Seen::Changed(p) if self.hooks && p == Path::new(HOOK_RESCAN) => {
                                deaf = false;
                                rescan = true;
                            }
                            Seen::Changed(_) if deaf => {}
                            Seen::Changed(p) => self.record(p, now),
                            Seen::Rescan => rescan = true,
                        }
                    }
                    if rescan {
                        let fresh = self.walk().await?;
                        for c in self.snap.diff(&fresh) {
                            self.record(c.path, now);
                        }
                        rescanned = true;
                    }
                }
                () = sleep_until_opt(resting) => resting = None,
                () = sleep_until_opt(next_poll) => {
                    let fresh = self.walk().await?;
                    let now = Instant::now();
                    next_poll = every.map(|e| now + e);
                    let Source::Poll { seen, .. } = &mut self.source else { continue };
                    let changes = seen.diff(&fresh);
                    *seen = fresh;
                    for c in changes {
                        self.record(c.path, now);
                    }
                    rescanned = true;
                }
                () = sleep_until_opt(due) => {
                    // Events that arrived while resting are part of the
                    // burst: they are taken first, and push the settle on
                    // (but not past max_wait).
                    if queued(&self.source) && !self.settle.max_wait_reached(Instant::now()) {
                        resting = None;
                        continue;
                    }
                    if let Some(paths) = self.settle.take_due(Instant::now()) {
                        self.snap.refresh(&self.root, &self.filter, &paths);
                        let reason = if std::mem::take(&mut rescanned) {
                            Reason::Rescan
                        } else {
                            Reason::Change
                        };
                        let t = Trigger { reason, paths, snapshot: self.snap.clone() };
                        // Shown before the trigger goes: whoever reads
                        // the counts after it sees them settled.
                        self.show();
                        if out.send(t).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// Whether `p` is one of the test hooks' files.
fn is_hook(p: &Path) -> bool {
    p == Path::new(HOOK_DEAF) || p == Path::new(HOOK_RESCAN)
}

/// The tree's next event; never, when polling.
async fn next_event(source: &mut Source) -> Option<notify::Result<notify::Event>> {
    match source {
        Source::Tree { events, .. } => events.recv().await,
        Source::Poll { .. } => std::future::pending().await,
    }
}

/// Whether events wait in the channel, not yet taken.
fn queued(source: &Source) -> bool {
    match source {
        Source::Tree { events, .. } => !events.is_empty(),
        Source::Poll { .. } => false,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn all() -> Filter {
        Filter::new(&[], &[], true, true).unwrap()
    }

    async fn next(rx: &mut mpsc::Receiver<Trigger>) -> Trigger {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("no trigger in time")
            .expect("the rule stopped")
    }

    fn start(
        root: &Path,
        last: Option<Snapshot>,
    ) -> (
        mpsc::Receiver<Trigger>,
        CancellationToken,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        // Started here, before the test touches the tree: from now on
        // every change is seen.
        let opts = FollowOptions {
            debounce: Duration::from_millis(50),
            max_wait: Duration::from_secs(5),
            ..Default::default()
        };
        let f = Follower::start(root, all(), opts, last).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let task = tokio::spawn(f.run(tx, stop.clone()));
        (rx, stop, task)
    }

    #[tokio::test]
    async fn a_write_triggers_once_after_it_settles() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (mut rx, stop, task) = start(&root, None);
        fs::write(root.join("a.txt"), "1").unwrap();
        fs::write(root.join("b.txt"), "1").unwrap();
        let mut paths = BTreeSet::new();
        while paths.len() < 2 {
            let t = next(&mut rx).await;
            assert_eq!(t.reason, Reason::Change);
            paths.extend(t.paths);
        }
        assert_eq!(
            paths,
            BTreeSet::from([PathBuf::from("a.txt"), PathBuf::from("b.txt")])
        );
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn changes_while_not_followed_trigger_one_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        fs::write(root.join("kept"), "1").unwrap();
        fs::write(root.join("edited"), "1").unwrap();
        fs::write(root.join("removed"), "1").unwrap();
        let last = Snapshot::take(&root, &all()).unwrap();
        fs::write(root.join("edited"), "longer").unwrap();
        fs::remove_file(root.join("removed")).unwrap();
        fs::write(root.join("made"), "1").unwrap();
        let (mut rx, stop, task) = start(&root, Some(last));
        let t = next(&mut rx).await;
        assert_eq!(t.reason, Reason::CatchUp);
        assert_eq!(
            t.paths,
            ["edited", "made", "removed"]
                .iter()
                .map(PathBuf::from)
                .collect()
        );
        assert_eq!(t.snapshot, Snapshot::take(&root, &all()).unwrap());
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn no_change_while_not_followed_means_no_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        fs::write(root.join("kept"), "1").unwrap();
        let last = Snapshot::take(&root, &all()).unwrap();
        let (mut rx, stop, task) = start(&root, Some(last));
        // The first trigger is this write's, not a catch-up.
        fs::write(root.join("sentinel"), "1").unwrap();
        let t = next(&mut rx).await;
        assert_eq!(t.reason, Reason::Change);
        assert!(t.paths.contains(Path::new("sentinel")), "{:?}", t.paths);
        assert!(!t.paths.contains(Path::new("kept")));
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
