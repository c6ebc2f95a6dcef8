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
#[serde(try_from = "Unchecked")]
pub struct WorkerName {
    pub kind: String,
    pub key: String,
}

/// The longest kind, in bytes.
pub const MAX_KIND_BYTES: usize = 64;
/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

impl WorkerName {
    /// A name from parts already known to be good (see [`WorkerName::check`]).
    pub fn new(kind: impl Into<String>, key: impl Into<String>) -> WorkerName {
        WorkerName { kind: kind.into(), key: key.into() }
    }

    /// Whether `kind/key` may name a worker: the kind is 1 to [`MAX_KIND_BYTES`] letters,
    /// digits, `-`, `_` or `.`; the key is 1 to [`MAX_KEY_BYTES`] bytes of any text
    /// without control characters or line separators. Names are logged, so a name that
    /// could break a log line is refused wherever one comes in: a request, a peer's
    /// message, a config.
    ///
    /// ```
    /// use wasmnode::registry::WorkerName;
    /// assert!(WorkerName::check("order", "John/2026 ünïcode").is_ok());
    /// assert!(WorkerName::check("order", "x\n2026-12-04 INFO forged").is_err(), "a name is never a log line");
    /// assert!(WorkerName::check("a/b", "c").is_err());
    /// ```
    pub fn check(kind: &str, key: &str) -> Result<(), NameError> {
        check_kind(kind)?;
        if key.is_empty() || key.len() > MAX_KEY_BYTES || !fits_a_line(key) {
            return Err(NameError::BadWorkerKey(shown(key)));
        }
        Ok(())
    }

    /// [`WorkerName::check`]ed.
    pub fn checked(kind: &str, key: &str) -> Result<WorkerName, NameError> {
        WorkerName::check(kind, key).map(|()| WorkerName::new(kind, key))
    }
}

/// Whether `kind` may be a worker kind (see [`WorkerName::check`]).
pub fn check_kind(kind: &str) -> Result<(), NameError> {
    if kind.is_empty() || kind.len() > MAX_KIND_BYTES || !kind.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)) {
        return Err(NameError::BadWorkerKind(shown(kind)));
    }
    Ok(())
}

/// Whether `s` holds nothing that breaks a log line ([`breaks_a_line`]): printable ASCII
/// is settled a byte at a time, other text by its characters.
pub(crate) fn fits_a_line(s: &str) -> bool {
    // Every byte looked at, with no early exit, so that the loop runs in vector registers.
    let outside = s.bytes().fold(0u8, |acc, b| acc | u8::from(b.wrapping_sub(0x20) >= 0x5f));
    outside == 0 || !s.chars().any(breaks_a_line)
}

/// Control characters (C0, DEL, C1) and Unicode's line and paragraph separators.
fn breaks_a_line(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// `s` as it may appear in an error: escaped, and cut after 64 characters.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    if s.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

/// A name as it arrives from a peer, checked before it becomes a [`WorkerName`].
#[derive(Deserialize)]
struct Unchecked {
    kind: String,
    key: String,
}

impl TryFrom<Unchecked> for WorkerName {
    type Error = NameError;

    fn try_from(n: Unchecked) -> Result<WorkerName, NameError> {
        WorkerName::check(&n.kind, &n.key).map(|()| WorkerName { kind: n.kind, key: n.key })
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
            Some((kind, key)) => WorkerName::checked(kind, key),
            None => Err(NameError::NotAWorkerName(shown(s))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_could_break_a_log_line_is_refused_from_text_and_from_a_peer() {
        for (kind, key) in [("order", "John"), ("o-1_x.y", "a/b/c"), ("k", "ünïcode and spaces"), ("k", &"k".repeat(MAX_KEY_BYTES))] {
            assert_eq!(WorkerName::checked(kind, key), Ok(WorkerName::new(kind, key)));
            let back: WorkerName = postcard::from_bytes(&postcard::to_stdvec(&WorkerName::new(kind, key)).unwrap()).unwrap();
            assert_eq!(back, WorkerName::new(kind, key));
        }
        let bad_kinds = ["", "a/b", "a b", "a\nb", "ö", &"k".repeat(MAX_KIND_BYTES + 1)];
        for kind in bad_kinds {
            assert!(matches!(WorkerName::check(kind, "x"), Err(NameError::BadWorkerKind(_))), "{kind:?}");
        }
        let bad_keys = ["", "x\n2026-12-04T00:00:00Z  INFO forged", "x\r", "\u{1b}[31m", "a\u{85}b", "a\u{2028}b", "\u{7f}", &"k".repeat(MAX_KEY_BYTES + 1)];
        for key in bad_keys {
            let e = WorkerName::check("order", key).unwrap_err();
            assert!(matches!(e, NameError::BadWorkerKey(_)), "{key:?}");
            let said = e.to_string();
            assert!(!said.chars().any(breaks_a_line) && said.len() < 400, "the error shows the key escaped and cut: {said}");
            // A peer's message that names it does not decode.
            let sent = postcard::to_stdvec(&WorkerName::new("order", key)).unwrap();
            assert!(postcard::from_bytes::<WorkerName>(&sent).is_err(), "{key:?}");
        }
        assert_eq!("order/a/b".parse::<WorkerName>(), Ok(WorkerName::new("order", "a/b")));
        assert!("order/a\nb".parse::<WorkerName>().is_err());
        assert!(matches!("no-slash\n".parse::<WorkerName>(), Err(NameError::NotAWorkerName(s)) if s == "no-slash\\n"));
    }
}
