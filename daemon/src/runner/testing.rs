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
