//! Worker names: a kind and a key (`order/John`), as a type rather than a string that
//! every layer splits again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::name::NameError;

/// The name of a worker instance: one live instance per name, cluster-wide.
///
/// # Example
/// ```
/// use wasmnode::registry::WorkerName;
/// let n: WorkerName = "order/John".parse().unwrap();
/// assert_eq!((n.kind.as_str(), n.key.as_str()), ("order", "John"));
/// assert_eq!(n.to_string(), "order/John");
/// assert!("no-slash".parse::<WorkerName>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerName {
    pub kind: String,
    pub key: String,
}

impl WorkerName {
    pub fn new(kind: impl Into<String>, key: impl Into<String>) -> WorkerName {
        WorkerName { kind: kind.into(), key: key.into() }
    }
}

impl fmt::Display for WorkerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.key)
    }
}

impl FromStr for WorkerName {
    type Err = NameError;

    /// `kind/key`; the key may itself contain `/`.
    fn from_str(s: &str) -> Result<WorkerName, NameError> {
        match s.split_once('/') {
            Some((kind, key)) if !kind.is_empty() => Ok(WorkerName::new(kind, key)),
            _ => Err(NameError::NotAWorkerName(s.to_string())),
        }
    }
}
