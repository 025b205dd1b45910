//! The git kind's work (issue 16), transport-free and store-free: opening
//! a repository or its mirror, walking history, per-commit numstats, and
//! the analyses that fill a [`crate::job::git::GitResult`]. The kind
//! (`runner/git.rs`) calls these on the CPU pool, with a cancellation flag
//! they check often.

pub mod analyses;
pub mod attributes;
pub mod cache;
pub mod contains;
#[cfg(test)]
pub mod fixture;
mod lines;
pub mod mirror;
pub mod numstat;
mod objects;
pub mod repo;
pub mod search;
pub mod synthetic;
pub mod walk;

pub use repo::{GitError, open_local};
