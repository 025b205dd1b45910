//! Watch rules inside one write transaction: adding, removing and pausing
//! a rule, and recording a trigger together with the jobs it submits.
//!
//! A trigger's jobs go through [`Tx::submit_all`], the path of every
//! Submit, and the rule's record and snapshot are written in the same
//! transaction: after a crash, a rule never claims a job that was not
//! stored, and a job is never stored without its rule's snapshot moving
//! past the changes it was made for (which catch-up would otherwise
//! submit again).

use redb::{ReadableTable, Table, WriteTransaction};

use super::record::{decode_rule, encode_rule};
use super::schema::{WATCH_RULES, WATCH_SNAPSHOTS};
use super::tx::Tx;
use super::{Result, StoreError, Submitted, db_err};
use crate::job::{JobId, JobSpec, Micros};
use crate::watch::follow::Reason;
use crate::watch::rule::{RECENT_JOBS, Rule, RuleId, RuleSpec, TriggerRecord};

/// The watch tables of one transaction. Opened by the first op on a rule
/// rather than with the others: most batches are jobs' writes alone, and
/// they need not pay for two more table lookups.
pub(super) struct WatchTables<'t> {
    rules: Table<'t, u64, &'static [u8]>,
    snapshots: Table<'t, u64, &'static [u8]>,
}

/// What a trigger records on its rule, besides its jobs and snapshot.
pub(super) struct Triggered {
    pub(super) id: RuleId,
    pub(super) owner_uid: u32,
    pub(super) reason: Reason,
    pub(super) paths: u64,
    pub(super) at: Micros,
}

/// The watch tables in `slot`, opened from `txn` if this is the first
/// use. A free function, so that the caller can borrow its scratch
/// buffer alongside.
fn tables<'a, 't>(
    slot: &'a mut Option<WatchTables<'t>>,
    txn: &'t WriteTransaction,
) -> Result<&'a mut WatchTables<'t>> {
    let t = match slot.take() {
        Some(t) => t,
        None => {
            let open = db_err("open table");
            WatchTables {
                rules: txn.open_table(WATCH_RULES).map_err(&open)?,
                snapshots: txn.open_table(WATCH_SNAPSHOTS).map_err(&open)?,
            }
        }
    };
    Ok(slot.insert(t))
}

impl Tx<'_> {
    /// Stores a new rule, with the next id, and its first snapshot. The
    /// outer `Err` is a storage failure; the inner one a refusal that
    /// writes nothing.
    pub(super) fn add_rule(
        &mut self,
        spec: RuleSpec,
        owner_uid: u32,
        snapshot: &[u8],
        at: Micros,
    ) -> Result<Result<Rule>> {
        let id = self.counters.next_watch_id;
        let Some(next) = id.checked_add(1) else {
            return Ok(Err(StoreError::Db {
                op: "add a watch rule",
                detail: format!(
                    "next_watch_id {id} in meta leaves no id to give; the file is damaged"
                ),
            }));
        };
        self.counters.next_watch_id = next;
        let rule = Rule {
            id,
            owner_uid,
            spec,
            created_at: at,
            paused: false,
            jobs_made: 0,
            last_trigger: None,
            recent_jobs: Vec::new(),
        };
        self.save_rule(&rule)?;
        self.save_snapshot(id, snapshot)?;
        Ok(Ok(rule))
    }

    /// Deletes rule `id` and its snapshot; returns the rule, or `None` if
    /// there was none.
    pub(super) fn remove_rule(&mut self, id: RuleId) -> Result<Option<Rule>> {
        let Some(rule) = self.load_rule(id)? else {
            return Ok(None);
        };
        let t = tables(&mut self.watch, self.txn)?;
        let write = db_err("remove a watch rule");
        t.rules.remove(id).map_err(&write)?;
        t.snapshots.remove(id).map_err(&write)?;
        Ok(Some(rule))
    }

    /// Pauses or resumes rule `id`; returns it as it now is, or `None`.
    pub(super) fn set_rule_paused(&mut self, id: RuleId, paused: bool) -> Result<Option<Rule>> {
        let Some(mut rule) = self.load_rule(id)? else {
            return Ok(None);
        };
        if rule.paused != paused {
            rule.paused = paused;
            self.save_rule(&rule)?;
        }
        Ok(Some(rule))
    }

    /// Records a trigger of rule `t.id`: submits `specs`, replaces the
    /// snapshot if one is given, and updates the rule's count, last
    /// trigger and recent jobs. `None`, with nothing written, if the rule
    /// is gone: a trigger racing the rule's removal makes no job.
    pub(super) fn trigger_rule(
        &mut self,
        t: Triggered,
        specs: Vec<JobSpec>,
        snapshot: Option<&[u8]>,
    ) -> Result<Option<(Rule, Vec<Submitted>)>> {
        let Some(mut rule) = self.load_rule(t.id)? else {
            return Ok(None);
        };
        // Only a trigger that makes jobs is new work, which must leave
        // room for the progress of the work already accepted.
        let out = if specs.is_empty() {
            Vec::new()
        } else {
            self.submit_all(specs, t.owner_uid, t.at)?
        };
        // A spec whose key an unfinished job holds made no job.
        let made: Vec<JobId> = out
            .iter()
            .filter(|s| !s.deduplicated)
            .map(|s| s.job.id)
            .collect();
        rule.jobs_made = rule.jobs_made.saturating_add(made.len() as u64);
        rule.last_trigger = Some(TriggerRecord {
            at: t.at,
            reason: t.reason,
            paths: t.paths,
            job_id: made.first().copied(),
        });
        let mut recent: Vec<JobId> = made.iter().rev().copied().collect();
        recent.extend_from_slice(&rule.recent_jobs);
        recent.truncate(RECENT_JOBS);
        rule.recent_jobs = recent;
        if let Some(snapshot) = snapshot {
            self.save_snapshot(t.id, snapshot)?;
        }
        self.save_rule(&rule)?;
        Ok(Some((rule, out)))
    }

    fn load_rule(&mut self, id: RuleId) -> Result<Option<Rule>> {
        let t = tables(&mut self.watch, self.txn)?;
        match t.rules.get(id).map_err(db_err("read watch rule"))? {
            Some(v) => Ok(Some(decode_rule(v.value())?)),
            None => Ok(None),
        }
    }

    fn save_rule(&mut self, rule: &Rule) -> Result<()> {
        encode_rule(&mut self.scratch, rule)?;
        self.written += self.scratch.len();
        let t = tables(&mut self.watch, self.txn)?;
        t.rules
            .insert(rule.id, self.scratch.as_slice())
            .map_err(db_err("write watch rule"))?;
        Ok(())
    }

    fn save_snapshot(&mut self, id: RuleId, snapshot: &[u8]) -> Result<()> {
        self.written += snapshot.len();
        let t = tables(&mut self.watch, self.txn)?;
        t.snapshots
            .insert(id, snapshot)
            .map_err(db_err("write watch snapshot"))?;
        Ok(())
    }
}
