//! quernd as a library: a durable priority queue of background jobs, served
//! over gRPC on a Unix socket. The `quernd` binary is a thin wrapper around
//! [`run`]; tests and tools can run the daemon in-process the same way.

pub mod admission;
pub mod api;
pub mod clock;
pub mod config;
pub mod error;
pub mod git;
pub mod job;
pub mod jobs;
pub mod logs;
pub mod platform;
pub mod progress;
#[cfg(test)]
mod props;
pub mod retention;
pub mod runner;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod watch;

pub use config::Config;
pub use server::{DaemonError, bind, run};
