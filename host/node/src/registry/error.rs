//! Why a call or a start did not do what was asked (the WIT `call-error` and
//! `start-error`), grouped by what the caller can do about it; and why an instance did
//! not start, by who is at fault.

use serde::{Deserialize, Serialize};

use super::WorkerName;

/// Why an instance did not start, by who is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// This node has no such kind: the caller's name, or this node's configuration.
    #[error("unknown worker kind {0}")]
    UnknownKind(String),
    /// The worker's `init` answered an error: its own decision.
    #[error("{name} refused to start: {reason}")]
    Refused { name: WorkerName, reason: String },
    /// The worker trapped in `init` (or overran its deadline or memory): its fault.
    #[error("{name} trapped in init: {why}")]
    Trapped { name: WorkerName, why: String },
    /// The host could not instantiate it (pool slots, address space): this node's limits.
    #[error("instantiating {name}: {why}")]
    Instantiate { name: WorkerName, why: String },
}

/// Why a call or cast got no answer (the WIT `call-error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CallError {
    /// No instance of the name runs anywhere, and its kind does not start on call.
    #[error("not found")]
    NotFound,
    /// No reply within the caller's timeout: the call may or may not have been handled.
    #[error("timed out")]
    Timeout,
    /// The instance answered with an error, trapped or stopped before replying.
    #[error("failed: {0}")]
    Failed(String),
    /// The node that runs it cannot be reached now; or it was reached, and went down
    /// before it answered ([`CallError::went_down`]).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// How the reason of [`CallError::went_down`] ends: it travels as text, through the
/// nodes a call went through and to nodes of other versions.
const WENT_DOWN: &str = " went down";

impl CallError {
    /// The call was sent to `node`, and `node` went down (or its connection closed in
    /// any way but in order) before it answered.
    pub fn went_down(node: &str) -> CallError {
        CallError::Unavailable(format!("{node}{WENT_DOWN}"))
    }

    /// Whether the call may have been applied although it failed with no answer: its
    /// node went down while it was under way ([`CallError::went_down`]). A timeout may
    /// have been applied too; every other error says nothing was done.
    pub fn in_doubt(&self) -> bool {
        matches!(self, CallError::Unavailable(r) if r.ends_with(WENT_DOWN))
    }
}

/// Why a start started nothing (the WIT `start-error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StartError {
    /// The name runs already, on this node.
    #[error("already started on {0}")]
    AlreadyStarted(#[serde(deserialize_with = "super::wire::checked::node")] String),
    #[error("unknown worker kind {0}")]
    UnknownKind(#[serde(deserialize_with = "super::wire::checked::kind")] String),
    /// `init` refused or trapped, or the node could not start it.
    #[error("failed: {0}")]
    Failed(String),
}
