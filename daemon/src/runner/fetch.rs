//! The fetch kind: HTTP downloads and requests. Being built: until the
//! transfer lands, an attempt fails at once, saying so.

use super::{Attempt, AttemptCtx, Kind};
use crate::job::{JobSpec, RunRecord};

/// The fetch kind.
pub struct Fetch;

impl Kind for Fetch {
    fn start(&self, _spec: &JobSpec, _ctx: AttemptCtx) -> Result<Box<dyn Attempt>, String> {
        Err("fetch jobs cannot run in this build of quernd yet".into())
    }

    fn recover(&self, _run: &RunRecord) -> Option<String> {
        None
    }
}
