//! For tests of the runner and the scheduler: kinds whose work the test
//! writes, running in quernd, so that its timing is the test's to decide.

use std::sync::Arc;

use super::in_process::InProcess;
use super::{Attempt, AttemptCtx, BoxFuture, Ended, Kind, Kinds};
use crate::job::{JobSpec, RunRecord};

/// A kind whose every attempt runs `script` in quernd.
struct Scripted<F>(F);

impl<F> Kind for Scripted<F>
where
    F: Fn(AttemptCtx) -> BoxFuture<'static, Ended> + Send + Sync,
{
    fn start(&self, _spec: &JobSpec, ctx: AttemptCtx) -> Result<Box<dyn Attempt>, String> {
        Ok(InProcess::start(ctx, &self.0))
    }

    fn recover(&self, _run: &RunRecord) -> Option<String> {
        None
    }
}

/// A registry in which every job runs `script`.
pub(crate) fn scripted<F>(script: F) -> Kinds
where
    F: Fn(AttemptCtx) -> BoxFuture<'static, Ended> + Send + Sync + 'static,
{
    Kinds::every_job_as(Arc::new(Scripted(script)))
}

/// A kind whose every attempt runs `script` with the job's spec.
struct ScriptedSpec<F>(F);

impl<F> Kind for ScriptedSpec<F>
where
    F: Fn(&JobSpec, AttemptCtx) -> BoxFuture<'static, Ended> + Send + Sync,
{
    fn start(&self, spec: &JobSpec, ctx: AttemptCtx) -> Result<Box<dyn Attempt>, String> {
        Ok(InProcess::start(ctx, |ctx| (self.0)(spec, ctx)))
    }

    fn recover(&self, _run: &RunRecord) -> Option<String> {
        None
    }
}

/// A registry in which every job runs `script`, which sees its spec.
pub(crate) fn scripted_with_spec<F>(script: F) -> Kinds
where
    F: Fn(&JobSpec, AttemptCtx) -> BoxFuture<'static, Ended> + Send + Sync + 'static,
{
    Kinds::every_job_as(Arc::new(ScriptedSpec(script)))
}

/// Where [`panicking`] panics: a bug in quernd's own code around a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PanicAt {
    /// In `Kind::start`.
    Start,
    /// In `Attempt::stop`: the attempt runs until stopped.
    Stop,
}

/// A kind that panics at `at`, in the runner's task itself rather than in
/// work of its own (whose panic its task would catch).
pub(crate) fn panicking(at: PanicAt) -> Kinds {
    Kinds::every_job_as(Arc::new(Panicking(at)))
}

struct Panicking(PanicAt);

impl Kind for Panicking {
    fn start(&self, _spec: &JobSpec, _ctx: AttemptCtx) -> Result<Box<dyn Attempt>, String> {
        match self.0 {
            PanicAt::Start => panic!("boom at start"),
            PanicAt::Stop => Ok(Box::new(PanicOnStop)),
        }
    }

    fn recover(&self, _run: &RunRecord) -> Option<String> {
        None
    }
}

struct PanicOnStop;

impl Attempt for PanicOnStop {
    fn record(&self) -> RunRecord {
        RunRecord::InProcess
    }

    fn wait(&mut self) -> BoxFuture<'_, Ended> {
        Box::pin(std::future::pending())
    }

    fn stop(&mut self, _grace: std::time::Duration) -> BoxFuture<'_, ()> {
        panic!("boom on stop")
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
