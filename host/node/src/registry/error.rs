//! Why a call or a start did not do what was asked (the WIT `call-error` and
//! `start-error`), grouped by what the caller can do about it.

use serde::{Deserialize, Serialize};

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
    /// The node that runs it cannot be reached now.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Why a start started nothing (the WIT `start-error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StartError {
    /// The name runs already, on this node.
    #[error("already started on {0}")]
    AlreadyStarted(String),
    #[error("unknown worker kind {0}")]
    UnknownKind(String),
    /// `init` refused or trapped, or the node could not start it.
    #[error("failed: {0}")]
    Failed(String),
}
