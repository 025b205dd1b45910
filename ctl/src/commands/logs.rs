//! `logs ID`: a job's captured output, stdout to stdout and stderr to
//! stderr, byte for byte.

use std::io::{self, Write};

use anyhow::Result;
use quern_proto::v1::{LogStream, LogsRequest};

use crate::client::{Client, rpc_error};

/// Copies the job's output; with `follow`, until the job finishes.
pub async fn run(client: &mut Client, id: u64, follow: bool) -> Result<()> {
    let mut chunks = client
        .logs(LogsRequest {
            job_id: id,
            follow,
            stream: LogStream::Unspecified as i32,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    while let Some(chunk) = chunks.message().await.map_err(rpc_error)? {
        // Each chunk is flushed at once so that, when both streams go to one
        // terminal, they interleave in the order the daemon sent them, and
        // so that --follow shows output as it arrives.
        if chunk.stream == LogStream::Stderr as i32 {
            let mut stderr = io::stderr().lock();
            stderr.write_all(&chunk.data)?;
            stderr.flush()?;
        } else {
            let mut stdout = io::stdout().lock();
            stdout.write_all(&chunk.data)?;
            stdout.flush()?;
        }
    }
    Ok(())
}
