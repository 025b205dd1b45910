//! The connection to quernd, and how its failures read on the command line.

use std::error::Error;
use std::path::Path;

use anyhow::anyhow;
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::watches_client::WatchesClient;
use tonic::transport::Channel;

/// A client of the `quern.v1.Jobs` service.
pub type Client = JobsClient<Channel>;

/// A client of the `quern.v1.Watches` service.
pub type WatchClient = WatchesClient<Channel>;

/// The largest response accepted. tonic's client default is 4 MiB, which a
/// full List page of jobs with long argvs could exceed; the daemon accepts
/// frames up to 64 MiB, so the client matches it.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Connects to the daemon at `socket`. A daemon that is not running is
/// reported here, naming the socket that was tried.
pub async fn connect(socket: &Path) -> anyhow::Result<Client> {
    let channel = channel(socket).await?;
    Ok(JobsClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// Connects to the daemon's watch rules at `socket`, reporting a daemon that
/// is not running as [`connect`] does.
pub async fn connect_watches(socket: &Path) -> anyhow::Result<WatchClient> {
    let channel = channel(socket).await?;
    Ok(WatchesClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}

async fn channel(socket: &Path) -> anyhow::Result<Channel> {
    match quern_proto::connect(socket).await {
        Ok(channel) => Ok(channel),
        Err(err) => Err(anyhow!(
            "cannot reach quernd at {} ({}); start it with 'quernd' or pass --socket",
            socket.display(),
            root_cause(&err)
        )),
    }
}

/// The reason a connection failed, in words: the OS error from dialing the
/// socket when there is one, because "No such file or directory" or
/// "Connection refused" tells the user what to do, while tonic's own
/// "transport error" does not.
fn root_cause(err: &(dyn Error + 'static)) -> String {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.raw_os_error() {
                Some(code) => nix::errno::Errno::from_raw(code).desc().to_owned(),
                None => io.to_string(),
            };
        }
        current = err.source();
    }
    err.to_string()
}

/// Turns a gRPC status from the daemon into an error for the user. The
/// daemon's messages already name the field or the job and say what is
/// wrong, so they are shown as they are.
pub fn rpc_error(status: tonic::Status) -> anyhow::Error {
    // A daemon older than this quernctl does not serve a newer request at
    // all; say so rather than show tonic's bare "unimplemented".
    if status.code() == tonic::Code::Unimplemented {
        return anyhow!(
            "this quernd does not serve the request ({}); upgrade quernd to the version of quernctl",
            if status.message().is_empty() {
                "unimplemented"
            } else {
                status.message()
            }
        );
    }
    if status.message().is_empty() {
        anyhow!(
            "quernd answered {:?} with no message",
            status.code().description().to_lowercase()
        )
    } else {
        anyhow!("{}", status.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_are_shown_as_they_are() {
        let err = rpc_error(tonic::Status::invalid_argument(
            "spec.exec.argv: must not be empty",
        ));
        assert_eq!(err.to_string(), "spec.exec.argv: must not be empty");
    }

    #[test]
    fn an_empty_status_message_still_says_what_happened() {
        let err = rpc_error(tonic::Status::not_found(""));
        assert_eq!(
            err.to_string(),
            "quernd answered \"some requested entity was not found\" with no message"
        );
    }

    #[test]
    fn an_unimplemented_request_asks_for_a_newer_daemon() {
        let err = rpc_error(tonic::Status::unimplemented(""));
        assert_eq!(
            err.to_string(),
            "this quernd does not serve the request (unimplemented); upgrade quernd to the version of quernctl"
        );
    }

    #[test]
    fn root_cause_finds_the_os_error() {
        let io = std::io::Error::from_raw_os_error(nix::libc::ENOENT);
        assert_eq!(root_cause(&io), "No such file or directory");
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("absent.sock");
        let err = connect(&socket).await.expect_err("nothing listens");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach quernd at {} (No such file or directory); start it with 'quernd' or pass --socket",
                socket.display()
            )
        );
    }
}
