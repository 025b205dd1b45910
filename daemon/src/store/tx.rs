//! One write transaction's tables, and the operations applied in it: the
//! index upkeep and the event of every change live here, in one place.
//! Which transitions are allowed, and what they do to a job, is decided by
//! `job.rs`; this module only applies them.

use redb::{ReadableTable, Table, WriteTransaction};

use super::record::{decode_job, encode_event, encode_job};
use super::rules::{Triggered, WatchTables};
use super::schema::{
    BY_KIND, BY_STATE, CHECKPOINTS, Counters, DUE, EVENTS, HOST_READY, IDEM, JOBS, KIND_RUNS,
    READY, index_kind, ready_key,
};
use super::writer::{Op, Pending, pending};
use super::{Result, StoreError, Submitted, db_err};
use crate::job::{Event, Job, JobId, JobSpec, JobState, Micros, Refused};

/// The tables of one write transaction, with the index upkeep in one place.
pub(super) struct Tx<'t> {
    /// For the tables opened only when an op needs them (see
    /// [`Tx::watch`]).
    pub(super) txn: &'t WriteTransaction,
    pub(super) jobs: Table<'t, u64, &'static [u8]>,
    pub(super) by_state: Table<'t, (u8, u64), ()>,
    pub(super) kind_runs: Table<'t, u64, u8>,
    pub(super) by_kind: Table<'t, (u8, u64), ()>,
    ready: Table<'t, (u32, u64), ()>,
    host_ready: Table<'t, (&'static str, u32, u64), ()>,
    due: Table<'t, (u64, u64), ()>,
    pub(super) idem: Table<'t, &'static str, u64>,
    pub(super) checkpoints: Table<'t, u64, &'static [u8]>,
    pub(super) events: Table<'t, u64, &'static [u8]>,
    /// Opened by the first op on a watch rule.
    pub(super) watch: Option<WatchTables<'t>>,
    pub(super) counters: &'t mut Counters,
    published: &'t mut Vec<Event>,
    /// Where records are encoded before they are inserted, reused for the
    /// whole batch: a fresh, growing vector per record cost about 5% of the
    /// writer's time in SubmitBatch.
    pub(super) scratch: Vec<u8>,
    /// Bytes of records written so far, for the writer's check that the
    /// disk has room for the commit.
    pub(super) written: usize,
    /// Whether a Submit is among the ops: new work, which must leave room
    /// for the progress of the work already accepted.
    pub(super) submits: bool,
}

impl<'t> Tx<'t> {
    pub(super) fn open(
        txn: &'t WriteTransaction,
        counters: &'t mut Counters,
        published: &'t mut Vec<Event>,
    ) -> Result<Tx<'t>> {
        let open = db_err("open table");
        Ok(Tx {
            txn,
            jobs: txn.open_table(JOBS).map_err(&open)?,
            by_state: txn.open_table(BY_STATE).map_err(&open)?,
            kind_runs: txn.open_table(KIND_RUNS).map_err(&open)?,
            by_kind: txn.open_table(BY_KIND).map_err(&open)?,
            ready: txn.open_table(READY).map_err(&open)?,
            host_ready: txn.open_table(HOST_READY).map_err(&open)?,
            due: txn.open_table(DUE).map_err(&open)?,
            idem: txn.open_table(IDEM).map_err(&open)?,
            checkpoints: txn.open_table(CHECKPOINTS).map_err(&open)?,
            events: txn.open_table(EVENTS).map_err(&open)?,
            watch: None,
            counters,
            published,
            scratch: Vec::new(),
            written: 0,
            submits: false,
        })
    }

    /// Applies one operation. An `Err` is a storage failure that aborts the
    /// whole batch; a logical refusal (not found, wrong state) is returned
    /// inside the reply and writes nothing.
    pub(super) fn apply(&mut self, op: Op) -> Result<Pending> {
        Ok(match op {
            Op::Submit {
                specs,
                owner_uid,
                at,
                reply,
            } => {
                let out = self.submit_all(specs, owner_uid, at)?;
                pending(reply, Ok(out))
            }
            Op::MarkRunning {
                id,
                attempt,
                run,
                at,
                reply,
            } => {
                let change = self.change(id, |old| old.started(attempt, run, at))?;
                match change {
                    Ok((old, job)) => {
                        self.save(Some(&old), &job)?;
                        self.emit(&job, at, false)?;
                        pending(reply, Ok(job))
                    }
                    Err(refused) => pending(reply, Err(refused)),
                }
            }
            Op::Finish {
                id,
                attempt,
                started_at,
                outcome,
                at,
                reply,
                ..
            } => {
                let ended = outcome.ends_attempt();
                let change =
                    self.change(id, |old| old.finished(attempt, started_at, outcome, at))?;
                match change {
                    Ok((old, job)) => {
                        self.save(Some(&old), &job)?;
                        if job.state.tag().is_terminal() {
                            self.release(&job)?;
                        }
                        self.emit(&job, at, ended)?;
                        pending(reply, Ok(job))
                    }
                    Err(refused) => pending(reply, Err(refused)),
                }
            }
            Op::CancelPending { id, at, reply } => {
                match self.change(id, |old| old.cancelled(at))? {
                    Ok((old, job)) => {
                        self.save(Some(&old), &job)?;
                        self.release(&job)?;
                        self.emit(&job, at, true)?;
                        pending(reply, Ok(job))
                    }
                    Err(refused) => pending(reply, Err(refused)),
                }
            }
            Op::SaveCheckpoint { id, bytes, reply } => {
                // Only an unfinished job's next attempt can use it.
                let unfinished = self
                    .load(id)?
                    .map(|j| j.state.tag())
                    .filter(|t| !t.is_terminal());
                match unfinished {
                    Some(_) => {
                        self.checkpoints
                            .insert(id, bytes.as_slice())
                            .map_err(db_err("write checkpoint"))?;
                        pending(reply, Ok(()))
                    }
                    None => pending(reply, Err(StoreError::NotFound(id))),
                }
            }
            Op::Promote { now, reply } => {
                let mut due_ids = Vec::new();
                for item in self
                    .due
                    .range(..=(now, u64::MAX))
                    .map_err(db_err("read due"))?
                {
                    let (k, _) = item.map_err(db_err("read due"))?;
                    due_ids.push(k.value().1);
                }
                for id in due_ids {
                    // A due entry always belongs to a scheduled job; one
                    // that is not would be skipped rather than stop the
                    // promotion of the others.
                    if let Ok((old, job)) = self.change(id, |old| old.promoted())? {
                        self.save(Some(&old), &job)?;
                        self.emit(&job, now, false)?;
                    }
                }
                let next = self
                    .due
                    .first()
                    .map_err(db_err("read due"))?
                    .map(|(k, _)| k.value().0);
                pending(reply, Ok(next))
            }
            Op::DeferHost {
                host,
                run_at,
                reason,
                at,
                limit,
                reply,
            } => {
                let mut ids = Vec::new();
                for item in self
                    .host_ready
                    .range((host.as_str(), 0, 0)..=(host.as_str(), u32::MAX, u64::MAX))
                    .map_err(db_err("read host_ready"))?
                {
                    let (k, _) = item.map_err(db_err("read host_ready"))?;
                    ids.push(k.value().2);
                    if ids.len() >= limit {
                        break;
                    }
                }
                let mut deferred = 0;
                for id in ids {
                    if let Ok((old, job)) =
                        self.change(id, |old| old.deferred(run_at, reason.clone()))?
                    {
                        self.save(Some(&old), &job)?;
                        self.emit(&job, at, true)?;
                        deferred += 1;
                    }
                }
                pending(reply, Ok(deferred))
            }
            Op::Prune { step, reply } => pending(reply, self.prune(step)),
            Op::AddRule {
                spec,
                owner_uid,
                snapshot,
                at,
                reply,
            } => pending(reply, self.add_rule(*spec, owner_uid, &snapshot, at)?),
            Op::RemoveRule { id, reply } => pending(reply, Ok(self.remove_rule(id)?)),
            Op::SetRulePaused { id, paused, reply } => {
                pending(reply, Ok(self.set_rule_paused(id, paused)?))
            }
            Op::TriggerRule {
                id,
                specs,
                owner_uid,
                snapshot,
                reason,
                paths,
                at,
                reply,
            } => {
                let t = Triggered {
                    id,
                    owner_uid,
                    reason,
                    paths,
                    at,
                };
                pending(reply, Ok(self.trigger_rule(t, specs, snapshot.as_deref())?))
            }
            Op::Close { .. } => unreachable!("close is handled by the writer loop"),
        })
    }

    /// Loads job `id` and works out its transition with `to`. The outer
    /// `Err` is a storage failure; the inner one a refusal (unknown id, or
    /// a state that does not allow it) that writes nothing.
    fn change(
        &self,
        id: JobId,
        to: impl FnOnce(&Job) -> Result<Job, Refused>,
    ) -> Result<Result<(Job, Job), StoreError>> {
        Ok(match self.load(id)? {
            Some(old) => match to(&old) {
                Ok(new) => Ok((old, new)),
                Err(r) => Err(StoreError::refused(id, r)),
            },
            None => Err(StoreError::NotFound(id)),
        })
    }

    /// Stores `specs` as new jobs (or finds the unfinished job holding a
    /// spec's idempotency key): the one submit path, for Submit and for
    /// a watch rule's trigger alike.
    pub(super) fn submit_all(
        &mut self,
        specs: Vec<JobSpec>,
        owner_uid: u32,
        at: Micros,
    ) -> Result<Vec<Submitted>> {
        self.submits = true;
        let mut out = Vec::with_capacity(specs.len());
        for spec in specs {
            out.push(self.submit(spec, owner_uid, at)?);
        }
        Ok(out)
    }

    fn submit(&mut self, spec: JobSpec, owner_uid: u32, at: Micros) -> Result<Submitted> {
        if let Some(key) = &spec.idempotency_key {
            let existing = self
                .idem
                .get(key.as_str())
                .map_err(db_err("read idempotency"))?;
            if let Some(id) = existing.map(|v| v.value())
                && let Some(job) = self.load(id)?
                && !job.state.tag().is_terminal()
            {
                return Ok(Submitted {
                    job,
                    deduplicated: true,
                });
            }
        }
        let id = self.counters.next_id;
        self.counters.next_id += 1;
        let job = Job::submitted(id, spec, owner_uid, at);
        self.save(None, &job)?;
        index_kind(
            &mut self.kind_runs,
            &mut self.by_kind,
            &mut self.counters.last_kind,
            job.spec.kind.tag(),
            id,
        )?;
        if let Some(key) = &job.spec.idempotency_key {
            self.idem
                .insert(key.as_str(), id)
                .map_err(db_err("write idempotency"))?;
        }
        self.emit(&job, at, false)?;
        Ok(Submitted {
            job,
            deduplicated: false,
        })
    }

    /// Drops what only an unfinished job needs: its checkpoint, and its
    /// idempotency key, so that a later submit with the same key creates a
    /// new job.
    pub(super) fn release(&mut self, job: &Job) -> Result<()> {
        self.checkpoints
            .remove(job.id)
            .map_err(db_err("write checkpoint"))?;
        if let Some(key) = &job.spec.idempotency_key {
            let holder = self
                .idem
                .get(key.as_str())
                .map_err(db_err("read idempotency"))?
                .map(|v| v.value());
            if holder == Some(job.id) {
                self.idem
                    .remove(key.as_str())
                    .map_err(db_err("write idempotency"))?;
            }
        }
        Ok(())
    }

    pub(super) fn load(&self, id: JobId) -> Result<Option<Job>> {
        match self.jobs.get(id).map_err(db_err("read job"))? {
            Some(v) => Ok(Some(decode_job(v.value())?)),
            None => Ok(None),
        }
    }

    /// Writes `new` and moves its index entries from `old`'s state to its own.
    fn save(&mut self, old: Option<&Job>, new: &Job) -> Result<()> {
        let idx = db_err("write index");
        if let Some(old) = old {
            let tag = old.state.tag();
            self.by_state.remove((tag as u8, old.id)).map_err(&idx)?;
            self.counters.counts[tag as usize] -= 1;
            match old.state {
                JobState::Queued => match old.spec.host_key() {
                    Some(host) => {
                        let (p, id) = ready_key(old.spec.priority, old.id);
                        self.host_ready
                            .remove((host.as_str(), p, id))
                            .map_err(&idx)?;
                    }
                    None => {
                        self.ready
                            .remove(ready_key(old.spec.priority, old.id))
                            .map_err(&idx)?;
                    }
                },
                JobState::Scheduled { run_at } => {
                    self.due.remove((run_at, old.id)).map_err(&idx)?;
                }
                _ => {}
            }
        }
        let tag = new.state.tag();
        self.by_state
            .insert((tag as u8, new.id), ())
            .map_err(&idx)?;
        self.counters.counts[tag as usize] += 1;
        match new.state {
            JobState::Queued => match new.spec.host_key() {
                Some(host) => {
                    let (p, id) = ready_key(new.spec.priority, new.id);
                    self.host_ready
                        .insert((host.as_str(), p, id), ())
                        .map_err(&idx)?;
                }
                None => {
                    self.ready
                        .insert(ready_key(new.spec.priority, new.id), ())
                        .map_err(&idx)?;
                }
            },
            JobState::Scheduled { run_at } => {
                self.due.insert((run_at, new.id), ()).map_err(&idx)?;
            }
            _ => {}
        }
        encode_job(&mut self.scratch, new)?;
        self.written += self.scratch.len();
        self.jobs
            .insert(new.id, self.scratch.as_slice())
            .map_err(db_err("write job"))?;
        Ok(())
    }

    /// Records the job's new state as an event, in the same transaction as
    /// the change itself, so the event log and the jobs never disagree.
    /// `ended` says the change ends an attempt (or the job), so the event
    /// carries the exit code and error; a start or a promotion carries none.
    fn emit(&mut self, job: &Job, at: Micros, ended: bool) -> Result<()> {
        let seq = self.counters.next_seq;
        self.counters.next_seq += 1;
        let ev = Event::of(seq, job, at, ended);
        encode_event(&mut self.scratch, &ev)?;
        self.written += self.scratch.len();
        self.events
            .insert(seq, self.scratch.as_slice())
            .map_err(db_err("write event"))?;
        self.published.push(ev);
        Ok(())
    }

    /// Drops the oldest events beyond the retention window, in one cursor
    /// pass (a per-key remove walked the tree once per event and cost about
    /// 13% of SubmitBatch throughput once the window was full).
    pub(super) fn prune_events(&mut self, retention: u64) -> Result<()> {
        let c = &mut *self.counters;
        let excess = (c.next_seq - c.first_seq).saturating_sub(retention);
        if excess == 0 {
            return Ok(());
        }
        let new_first = c.first_seq + excess;
        self.events
            .retain_in(c.first_seq..new_first, |_, _| false)
            .map_err(db_err("prune events"))?;
        c.first_seq = new_first;
        Ok(())
    }
}
