//! Directory watching (issue 15), built up in steps. So far: a rule and
//! its checks ([`rule`]), which paths a rule covers ([`filter`]), the stat snapshot of a rule's tree, with the
//! comparison that turns two snapshots into changed paths and the compact
//! form the store keeps it in ([`snapshot`]),
//! whether one event's path is ignored by the tree's ignore files
//! ([`ignores`]), when a rule's changes have settled ([`settle`]), and the
//! inotify watch of a rule's tree, a watch per directory, that turns
//! events into changed paths or a call for a rescan ([`tree`]); and one
//! rule's loop, which settles those into triggers with their reason and
//! snapshot ([`follow`]). The snapshot is what catch-up after a restart, the
//! rescan after a kernel queue overflow, and the polling fallback when
//! inotify runs out of watches all compare against.

pub mod filter;
pub mod follow;
pub mod ignores;
pub mod rule;
pub mod rules;
pub mod settle;
pub mod snapshot;
pub mod tree;
