//! The store's reads. Each takes a read transaction of its own: redb's MVCC
//! lets them run on any thread without waiting for the writer.

use std::collections::{BTreeSet, HashSet};

use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable};

use super::record::{decode_event, decode_job, decode_rule};
use super::schema::{
    BY_KIND, BY_STATE, CHECKPOINTS, Counters, DUE, EVENTS, HOST_READY, JOBS, KIND_RUNS, META,
    READY, WATCH_RULES, WATCH_SNAPSHOTS,
};
use super::{EventsPage, ListQuery, Result, db_err};
use crate::job::{Job, JobId, KindTag, StateTag};
use crate::watch::rule::{Rule, RuleId};

/// One job, if it exists.
pub(super) fn get_job(db: &Database, id: JobId) -> Result<Option<Job>> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let jobs = txn.open_table(JOBS).map_err(db_err("open jobs"))?;
    match jobs.get(id).map_err(db_err("read job"))? {
        Some(v) => Ok(Some(decode_job(v.value())?)),
        None => Ok(None),
    }
}

/// The committed counters.
pub(super) fn counters(db: &Database) -> Result<Counters> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let meta = txn.open_table(META).map_err(db_err("open meta"))?;
    Counters::load(&meta)
}

/// Whether `job` carries every label the query asks for. The kind and the
/// states are answered by the indexes.
fn has_labels(job: &Job, q: &ListQuery) -> bool {
    q.labels
        .iter()
        .all(|(k, v)| job.spec.labels.get(k) == Some(v))
}

/// Whether a page of `q` is bounded: it reads at most `limit + 1` index
/// entries per source and as many jobs (plus, for a kind filter, one
/// lookup per run of the kind it passes, and each run holds at least one
/// job of the kind). Only a label filter can make it walk past jobs that
/// do not match, and a kind filter combined with a state filter walks the
/// state's index past jobs of other kinds (an index lookup each, no job is
/// read).
pub(super) fn list_is_bounded(q: &ListQuery) -> bool {
    q.labels.is_empty() && (q.kind.is_none() || q.states.is_empty())
}

/// Where the run of the kind index that starts at `start` ends: just
/// before the next run, of any kind.
fn run_end(kind_runs: &ReadOnlyTable<u64, u8>, start: JobId) -> Result<JobId> {
    let next = kind_runs
        .range(start.saturating_add(1)..)
        .map_err(db_err("read the kind index"))?
        .next()
        .transpose()
        .map_err(db_err("read the kind index"))?;
    Ok(next.map_or(u64::MAX, |(k, _)| k.value() - 1))
}

/// Whether job `id` is of kind `kind`, by the kind index.
fn is_of_kind(kind_runs: &ReadOnlyTable<u64, u8>, kind: KindTag, id: JobId) -> Result<bool> {
    let run = kind_runs
        .range(..=id)
        .map_err(db_err("read the kind index"))?
        .next_back()
        .transpose()
        .map_err(db_err("read the kind index"))?;
    Ok(run.is_some_and(|(_, k)| k.value() == kind as u8))
}

/// Calls `visit` with each id range to walk for a listing without a state
/// filter, in the listing's direction, clipped to `lo..=hi`: the whole
/// table, or the runs of the kind asked for, one at a time, until `visit`
/// says the page is full.
fn walk_ranges(
    by_kind: &ReadOnlyTable<(u8, u64), ()>,
    kind_runs: &ReadOnlyTable<u64, u8>,
    q: &ListQuery,
    (lo, hi): (JobId, JobId),
    mut visit: impl FnMut(JobId, JobId) -> Result<bool>,
) -> Result<()> {
    let Some(kind) = q.kind else {
        visit(lo, hi)?;
        return Ok(());
    };
    let k = kind as u8;
    let read = db_err("read the kind index");
    // Visits the run that starts at `start`; true once the page is full.
    let mut run = |start: JobId| -> Result<bool> {
        let (a, b) = (start.max(lo), run_end(kind_runs, start)?.min(hi));
        Ok(a <= b && visit(a, b)?)
    };
    if q.oldest_first {
        // The run that holds `lo`, then every later one.
        let holding = by_kind.range((k, 0)..=(k, lo)).map_err(&read)?.next_back();
        if let Some(item) = holding
            && run(item.map_err(&read)?.0.value().1)?
        {
            return Ok(());
        }
        for item in by_kind
            .range((k, lo.saturating_add(1))..=(k, hi))
            .map_err(&read)?
        {
            if run(item.map_err(&read)?.0.value().1)? {
                return Ok(());
            }
        }
    } else {
        for item in by_kind.range((k, 0)..=(k, hi)).map_err(&read)?.rev() {
            let start = item.map_err(&read)?.0.value().1;
            if run(start)? || start <= lo {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A page of jobs; the second value is the cursor for the next page.
pub(super) fn list_jobs(db: &Database, q: &ListQuery) -> Result<(Vec<Job>, Option<JobId>)> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let jobs = txn.open_table(JOBS).map_err(db_err("open jobs"))?;
    let want = q.limit + 1;
    // Ids strictly beyond the cursor, in the listing's direction.
    let (lo, hi) = match (q.after, q.oldest_first) {
        (None, _) => (0, u64::MAX),
        (Some(a), true) => (a.saturating_add(1), u64::MAX),
        (Some(a), false) => (0, a.saturating_sub(1)),
    };
    let mut found: Vec<Job> = Vec::new();
    if lo > hi || (q.after == Some(0) && !q.oldest_first) {
        return Ok((found, None));
    }
    let by_labels = !q.labels.is_empty();
    let kind_runs = txn
        .open_table(KIND_RUNS)
        .map_err(db_err("open kind_runs"))?;
    if q.states.is_empty() {
        // The jobs table itself, over the whole range or the kind's runs,
        // decoding each row as the walk passes it.
        let by_kind = txn.open_table(BY_KIND).map_err(db_err("open by_kind"))?;
        walk_ranges(&by_kind, &kind_runs, q, (lo, hi), |a, b| {
            let range = jobs.range(a..=b).map_err(db_err("read jobs"))?;
            let rows: Box<dyn Iterator<Item = _>> = if q.oldest_first {
                Box::new(range)
            } else {
                Box::new(range.rev())
            };
            for row in rows {
                let (_, v) = row.map_err(db_err("read jobs"))?;
                let job = decode_job(v.value())?;
                if has_labels(&job, q) {
                    found.push(job);
                    if found.len() >= want {
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        })?;
    } else {
        // Each state's index yields ids in order; take `want` from each and
        // merge, which is enough for one page.
        let by_state = txn.open_table(BY_STATE).map_err(db_err("open by_state"))?;
        let states: BTreeSet<StateTag> = q.states.iter().copied().collect();
        let mut merged: Vec<Job> = Vec::new();
        let mut ids: Vec<JobId> = Vec::new();
        for tag in states {
            let t = tag as u8;
            let range = by_state
                .range((t, lo)..=(t, hi))
                .map_err(db_err("read by_state"))?;
            let index = range.map(|item| item.map(|(k, _)| k.value().1));
            let index: Box<dyn Iterator<Item = _>> = if q.oldest_first {
                Box::new(index)
            } else {
                Box::new(index.rev())
            };
            let mut taken = 0;
            for id in index {
                let id = id.map_err(db_err("read by_state"))?;
                if let Some(kind) = q.kind
                    && !is_of_kind(&kind_runs, kind, id)?
                {
                    continue;
                }
                if by_labels {
                    // Only the job itself says whether it matches.
                    let Some(v) = jobs.get(id).map_err(db_err("read job"))? else {
                        continue;
                    };
                    let job = decode_job(v.value())?;
                    if !has_labels(&job, q) {
                        continue;
                    }
                    merged.push(job);
                } else {
                    ids.push(id);
                }
                taken += 1;
                if taken >= want {
                    break;
                }
            }
        }
        if !by_labels {
            ids.sort_unstable();
            if q.oldest_first {
                ids.truncate(want);
            } else {
                ids.drain(..ids.len().saturating_sub(want));
            }
            merged = fetch_jobs(&jobs, &ids)?;
        }
        if q.oldest_first {
            merged.sort_by_key(|j| j.id);
        } else {
            merged.sort_by_key(|j| std::cmp::Reverse(j.id));
        }
        merged.truncate(want);
        found = merged;
    }
    let next = if found.len() > q.limit {
        found.truncate(q.limit);
        found.last().map(|j| j.id)
    } else {
        None
    };
    Ok((found, next))
}

/// Reads the jobs `ids` (ascending, no duplicates), in that order. Ids that
/// lie close together, as a page of one state's index usually does, are
/// read in one walk over the table, which visits each leaf page once; a
/// lookup per id would descend the tree from the root every time, and with
/// a large store most of those pages come from the OS, not redb's cache.
fn fetch_jobs(jobs: &ReadOnlyTable<u64, &[u8]>, ids: &[JobId]) -> Result<Vec<Job>> {
    let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(ids.len());
    // Dense enough that walking past the others costs less than descents.
    if last - first < 8 * ids.len() as u64 {
        let mut wanted = ids.iter().peekable();
        for row in jobs.range(first..=last).map_err(db_err("read jobs"))? {
            let (k, v) = row.map_err(db_err("read jobs"))?;
            let id = k.value();
            while wanted.next_if(|&&w| w < id).is_some() {}
            if wanted.next_if_eq(&&id).is_some() {
                out.push(decode_job(v.value())?);
            }
            if wanted.peek().is_none() {
                break;
            }
        }
    } else {
        for &id in ids {
            if let Some(v) = jobs.get(id).map_err(db_err("read job"))? {
                out.push(decode_job(v.value())?);
            }
        }
    }
    Ok(out)
}

pub(super) fn events_after(
    db: &Database,
    after: u64,
    limit: usize,
    job: Option<JobId>,
) -> Result<EventsPage> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let meta = txn.open_table(META).map_err(db_err("open meta"))?;
    let counters = Counters::load(&meta)?;
    // The window must still hold seq after+1 (unless nothing newer exists).
    if after.saturating_add(1) < counters.first_seq {
        return Ok(EventsPage::Pruned {
            first_retained: counters.first_seq,
        });
    }
    let events = txn.open_table(EVENTS).map_err(db_err("open events"))?;
    let mut out = Vec::new();
    for item in events
        .range(after.saturating_add(1)..)
        .map_err(db_err("read events"))?
    {
        let (_, v) = item.map_err(db_err("read events"))?;
        let ev = decode_event(v.value())?;
        if job.is_none_or(|j| j == ev.job_id) {
            out.push(ev);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(EventsPage::Events(out))
}

pub(super) fn ready_jobs(db: &Database, limit: usize, skip: &HashSet<JobId>) -> Result<Vec<Job>> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let ready = txn.open_table(READY).map_err(db_err("open ready"))?;
    let jobs = txn.open_table(JOBS).map_err(db_err("open jobs"))?;
    let mut out = Vec::with_capacity(limit);
    for item in ready.iter().map_err(db_err("read ready"))? {
        if out.len() >= limit {
            break;
        }
        let (k, _) = item.map_err(db_err("read ready"))?;
        let id = k.value().1;
        if skip.contains(&id) {
            continue;
        }
        if let Some(v) = jobs.get(id).map_err(db_err("read job"))? {
            out.push(decode_job(v.value())?);
        }
    }
    Ok(out)
}

/// The first queued job of every host in `host_ready`, except the hosts in
/// `passed_over` and the jobs in `skip`, in one read transaction: one seek
/// per host, past the previous host's entries, however many jobs each has.
pub(super) fn host_heads(
    db: &Database,
    passed_over: &HashSet<String>,
    skip: &HashSet<JobId>,
) -> Result<Vec<(String, Job)>> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let table = txn
        .open_table(HOST_READY)
        .map_err(db_err("open host_ready"))?;
    let jobs = txn.open_table(JOBS).map_err(db_err("open jobs"))?;
    let mut heads = Vec::new();
    // The host whose entries the next seek starts past.
    let mut after: Option<String> = None;
    loop {
        let mut entries = match &after {
            None => table.range::<(&str, u32, u64)>(..),
            Some(h) => table.range((h.as_str(), u32::MAX, u64::MAX)..),
        }
        .map_err(db_err("read host_ready"))?;
        // The first entry of the next host (the seek key itself, were it
        // ever stored, belongs to the host before).
        let mut first = None;
        for item in entries.by_ref() {
            let (k, _) = item.map_err(db_err("read host_ready"))?;
            if after.as_deref() != Some(k.value().0) {
                first = Some((k.value().0.to_string(), k.value().2));
                break;
            }
        }
        let Some((host, id)) = first else {
            return Ok(heads);
        };
        if !passed_over.contains(&host) {
            let mut id = Some(id);
            while let Some(i) = id {
                if !skip.contains(&i)
                    && let Some(v) = jobs.get(i).map_err(db_err("read job"))?
                {
                    heads.push((host.clone(), decode_job(v.value())?));
                    break;
                }
                id = match entries.next() {
                    Some(item) => {
                        let (k, _) = item.map_err(db_err("read host_ready"))?;
                        (k.value().0 == host).then(|| k.value().2)
                    }
                    None => None,
                };
            }
        }
        after = Some(host);
    }
}

/// Every job recorded as running: after a crash, these were interrupted.
pub(super) fn running_jobs(db: &Database) -> Result<Vec<Job>> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let by_state = txn.open_table(BY_STATE).map_err(db_err("open by_state"))?;
    let jobs = txn.open_table(JOBS).map_err(db_err("open jobs"))?;
    let tag = StateTag::Running as u8;
    let mut out = Vec::new();
    for item in by_state
        .range((tag, 0u64)..=(tag, u64::MAX))
        .map_err(db_err("read by_state"))?
    {
        let (k, _) = item.map_err(db_err("read by_state"))?;
        if let Some(v) = jobs.get(k.value().1).map_err(db_err("read job"))? {
            out.push(decode_job(v.value())?);
        }
    }
    Ok(out)
}

/// When the earliest scheduled job is due.
pub(super) fn next_due(db: &Database) -> Result<Option<u64>> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let due = txn.open_table(DUE).map_err(db_err("open due"))?;
    Ok(due
        .first()
        .map_err(db_err("read due"))?
        .map(|(k, _)| k.value().0))
}

/// A job's checkpoint, if its kind saved one.
pub(super) fn checkpoint(db: &Database, id: JobId) -> Result<Option<Vec<u8>>> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let table = txn
        .open_table(CHECKPOINTS)
        .map_err(db_err("open checkpoints"))?;
    Ok(table
        .get(id)
        .map_err(db_err("read checkpoint"))?
        .map(|v| v.value().to_vec()))
}

/// Every watch rule, in id order.
pub(super) fn rules(db: &Database) -> Result<Vec<Rule>> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let rules = txn
        .open_table(WATCH_RULES)
        .map_err(db_err("open watch_rules"))?;
    let mut out = Vec::new();
    for item in rules.iter().map_err(db_err("read watch rules"))? {
        let (_, v) = item.map_err(db_err("read watch rules"))?;
        out.push(decode_rule(v.value())?);
    }
    Ok(out)
}

/// One watch rule, if it exists.
pub(super) fn rule(db: &Database, id: RuleId) -> Result<Option<Rule>> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let rules = txn
        .open_table(WATCH_RULES)
        .map_err(db_err("open watch_rules"))?;
    match rules.get(id).map_err(db_err("read watch rule"))? {
        Some(v) => Ok(Some(decode_rule(v.value())?)),
        None => Ok(None),
    }
}

/// A watch rule's encoded snapshot, if the rule exists.
pub(super) fn rule_snapshot(db: &Database, id: RuleId) -> Result<Option<Vec<u8>>> {
    let txn = db.begin_read().map_err(db_err("begin read"))?;
    let snapshots = txn
        .open_table(WATCH_SNAPSHOTS)
        .map_err(db_err("open watch_snapshots"))?;
    Ok(snapshots
        .get(id)
        .map_err(db_err("read watch snapshot"))?
        .map(|v| v.value().to_vec()))
}
