//! The quern gRPC API (`quern.v1`) as generated Rust types, plus
//! [`connect`], which opens a channel to a daemon over its Unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Generated types and clients/servers for package `quern.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("quern.v1");
}

pub mod json;

/// The names `JobSpec.priority_name` accepts, with the priorities they stand
/// for. Part of the API contract, like the proto file.
pub const PRIORITY_NAMES: [(&str, i32); 5] = [
    ("critical", 20),
    ("high", 10),
    ("normal", 0),
    ("low", -10),
    ("background", -20),
];

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quern_descriptor");

/// Opens a gRPC channel to the daemon listening on the Unix socket `socket`.
///
/// The connection is made eagerly, so a daemon that is not running shows up
/// here as an error rather than on the first call.
pub async fn connect(socket: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    let socket: PathBuf = socket.as_ref().to_path_buf();
    // The URI is required by tonic but never used: the connector below
    // ignores it and dials the socket.
    Endpoint::from_static("http://quernd.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// The socket path a client uses when none is given:
/// `$XDG_RUNTIME_DIR/quern/quernd.sock`, or `/tmp/quern-<uid>/quernd.sock`
/// when `XDG_RUNTIME_DIR` is unset. The daemon uses the same default, so the
/// two meet without configuration.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("quern").join("quernd.sock"),
        None => fallback_runtime_dir().join("quernd.sock"),
    }
}

/// The private per-user directory under /tmp used when `XDG_RUNTIME_DIR` is
/// unset. The daemon creates it with mode 0700 and refuses one that another
/// user owns.
pub fn fallback_runtime_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/quern-{}", nix::unistd::getuid().as_raw()))
}
