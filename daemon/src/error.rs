//! The errors a request can meet, independent of the transport. `api`
//! converts them to gRPC status codes in exactly one place.

use crate::job::JobId;
use crate::store::StoreError;

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of the request is wrong; nothing was changed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field, as a path such as `spec.exec.argv`.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// No job has this id.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// No watch rule has this id.
    #[error("watch rule {0} not found; quernctl watch ls lists the rules")]
    RuleNotFound(crate::watch::rule::RuleId),
    /// The job's state does not allow the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// An Events resume point older than the retained window.
    #[error("{0}")]
    OutOfRange(String),
    /// Out of a resource the caller can free, such as disk space.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The daemon is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// Storage or another internal failure.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::NotFound(id) => Error::NotFound(id),
            StoreError::WrongState { .. } => Error::FailedPrecondition(e.to_string()),
            StoreError::NoSpace { .. } => Error::ResourceExhausted(e.to_string()),
            StoreError::Failed { .. } => Error::Unavailable(e.to_string()),
            StoreError::Closed => {
                Error::Unavailable("quernd is shutting down; retry once it is back".into())
            }
            other => Error::Internal(other.to_string()),
        }
    }
}
