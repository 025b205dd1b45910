//! The one place where domain errors become gRPC status codes.

use crate::error::Error;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument { .. } => tonic::Status::invalid_argument(msg),
            Error::NotFound(_) | Error::RuleNotFound(_) => tonic::Status::not_found(msg),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            Error::OutOfRange(_) => tonic::Status::out_of_range(msg),
            Error::ResourceExhausted(_) => tonic::Status::resource_exhausted(msg),
            Error::Unavailable(_) => tonic::Status::unavailable(msg),
            Error::Internal(_) => tonic::Status::internal(msg),
        }
    }
}

impl From<crate::store::StoreError> for tonic::Status {
    fn from(e: crate::store::StoreError) -> tonic::Status {
        Error::from(e).into()
    }
}
