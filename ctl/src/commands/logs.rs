//! `logs ID`: a job's captured output, stdout to stdout and stderr to
//! stderr, byte for byte, with a marker line where the daemon dropped
//! bytes (the stream passed its cap before they were read).

use std::io::{self, Write};

use anyhow::{Context as _, Result};
use quern_proto::v1::{LogStream, LogsRequest, LogsResponse};

use crate::client::{Client, rpc_error};

/// Copies the job's output; with `follow`, until the job finishes.
///
/// Without follow each stream is read in pages, each asked for where the
/// last one ended, until the daemon says there is no more. A stream that
/// ends with an error (the daemon went away, or could not read the output)
/// is an error here too: what was printed is not the whole output.
pub async fn run(client: &mut Client, id: u64, follow: bool) -> Result<()> {
    let mut out = Output::default();
    if follow {
        let req = LogsRequest {
            job_id: id,
            follow,
            stream: LogStream::Unspecified as i32,
            ..LogsRequest::default()
        };
        copy(client, req, &mut out).await?;
        return Ok(());
    }
    for stream in [LogStream::Stdout, LogStream::Stderr] {
        let mut offset = None;
        loop {
            let req = LogsRequest {
                job_id: id,
                stream: stream as i32,
                offset,
                ..LogsRequest::default()
            };
            match copy(client, req, &mut out).await? {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
    }
    Ok(())
}

/// Prints the messages of one Logs call; returns where the next page
/// starts, if the daemon said.
async fn copy(client: &mut Client, req: LogsRequest, out: &mut Output) -> Result<Option<u64>> {
    let id = req.job_id;
    let mut chunks = client.logs(req).await.map_err(rpc_error)?.into_inner();
    let mut next = None;
    loop {
        match chunks.message().await {
            Ok(Some(chunk)) => {
                out.write(&chunk)?;
                next = chunk.next_offset.or(next);
            }
            Ok(None) => return Ok(next),
            Err(status) => {
                return Err(rpc_error(status))
                    .with_context(|| format!("the output of job {id} stopped before its end"));
            }
        }
    }
}

/// Where each stream's output goes, and whether it is at a line's start.
#[derive(Default)]
struct Output {
    /// Per stream (stdout, stderr): the last byte written was not a newline.
    mid_line: [bool; 2],
}

impl Output {
    fn write(&mut self, chunk: &LogsResponse) -> io::Result<()> {
        let err = chunk.stream == LogStream::Stderr as i32;
        let mid_line = &mut self.mid_line[usize::from(err)];
        let mut bytes = Vec::with_capacity(chunk.data.len() + 40);
        if chunk.skipped_bytes > 0 {
            // The marker is a line of its own, whatever came before.
            if *mid_line {
                bytes.push(b'\n');
            }
            bytes.extend(gap_marker(chunk.skipped_bytes).as_bytes());
            bytes.push(b'\n');
            *mid_line = false;
        }
        bytes.extend_from_slice(&chunk.data);
        if let Some(&last) = chunk.data.last() {
            *mid_line = last != b'\n';
        }
        // Each chunk is flushed at once so that, when both streams go to one
        // terminal, they interleave in the order the daemon sent them, and
        // so that --follow shows output as it arrives.
        if err {
            let mut stderr = io::stderr().lock();
            stderr.write_all(&bytes)?;
            stderr.flush()
        } else {
            let mut stdout = io::stdout().lock();
            stdout.write_all(&bytes)?;
            stdout.flush()
        }
    }
}

/// The line that stands for `n` dropped bytes: "[quern: 17.9 MB skipped]".
fn gap_marker(n: u64) -> String {
    let size = match n {
        1 => "1 byte".to_owned(),
        0..1_000 => format!("{n} bytes"),
        _ => crate::output::human_bytes(n),
    };
    format!("[quern: {size} skipped]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_markers_say_how_much_in_decimal_units() {
        assert_eq!(gap_marker(1), "[quern: 1 byte skipped]");
        assert_eq!(gap_marker(999), "[quern: 999 bytes skipped]");
        assert_eq!(gap_marker(2_048), "[quern: 2.0 kB skipped]");
        assert_eq!(gap_marker(17_900_000), "[quern: 17.9 MB skipped]");
        assert_eq!(gap_marker(3_200_000_000), "[quern: 3.2 GB skipped]");
    }
}
