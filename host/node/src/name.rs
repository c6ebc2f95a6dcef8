//! Node names: `basename@host[:port]`, Erlang's long names plus an optional port.
//!
//! Every node of a cluster listens on the same distribution port (default 4370), so a
//! name alone says where to dial and no port-mapper daemon is needed; `:port` lets
//! several nodes share one machine.

use std::fmt;

/// Why a text is not a node name (or a worker name): the fault of whoever wrote it (a
/// config, a flag, discovery's answer, a caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("`{0}` is not a node name: expected basename@host")]
    NoHost(String),
    #[error("`{0}`: the basename must be letters, digits, `-`, `_` or `.`")]
    BadBasename(String),
    #[error("`{name}`: `{port}` is not a port")]
    BadPort { name: String, port: String },
    #[error("`{0}`: the host part is empty, too long, or not printable ASCII")]
    BadHost(String),
    #[error("`{0}` is not a worker name: expected kind/key")]
    NotAWorkerName(String),
    #[error("`{0}`: a worker kind is 1 to {max} letters, digits, `-`, `_` or `.`", max = crate::registry::MAX_KIND_BYTES)]
    BadWorkerKind(String),
    #[error("`{0}`: a worker key is 1 to {max} bytes with no control characters or line breaks", max = crate::registry::MAX_KEY_BYTES)]
    BadWorkerKey(String),
}

/// The distribution port every node uses unless its name says otherwise.
pub const DEFAULT_PORT: u16 = 4370;

/// A parsed node name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName {
    pub basename: String,
    pub host: String,
    pub port: u16,
    /// Whether the port was written in the name (and so is printed back).
    pub explicit_port: bool,
    /// Whether the host was written in brackets (an IPv6 address: printed back so).
    pub bracketed: bool,
}

impl NodeName {
    /// Parses `basename@host[:port]`.
    ///
    /// # Example
    /// ```
    /// use wasmnode::name::NodeName;
    /// let n = NodeName::parse("myapp@10.1.0.65").unwrap();
    /// assert_eq!((n.host.as_str(), n.port), ("10.1.0.65", 4370));
    /// assert_eq!(NodeName::parse("b@127.0.0.1:4371").unwrap().port, 4371);
    /// assert!(NodeName::parse("no-host").is_err());
    /// assert!(NodeName::parse("a@h\n2026-11-30 INFO forged").is_err(), "a name is never a log line");
    /// ```
    pub fn parse(s: &str) -> Result<NodeName, NameError> {
        let (basename, rest) = s.split_once('@').ok_or_else(|| NameError::NoHost(s.to_string()))?;
        if basename.is_empty() || !basename.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(NameError::BadBasename(s.to_string()));
        }
        let bad_port = |p: &str| NameError::BadPort { name: s.to_string(), port: p.to_string() };
        let (host, port, explicit_port, bracketed) = if let Some(inner) = rest.strip_prefix('[') {
            // `[v6]` or `[v6]:port`.
            let (h, after) = inner.split_once(']').ok_or_else(|| NameError::BadHost(s.to_string()))?;
            match after {
                "" => (h.to_string(), DEFAULT_PORT, false, true),
                _ => {
                    let p = after.strip_prefix(':').ok_or_else(|| bad_port(after))?;
                    (h.to_string(), p.parse().map_err(|_| bad_port(p))?, true, true)
                }
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_string(), p.parse().map_err(|_| bad_port(p))?, true, false),
                // A bare IPv6 address: no port can follow it unbracketed.
                _ => (rest.to_string(), DEFAULT_PORT, false, false),
            }
        };
        if host.is_empty() || host.len() > 253 || !host.bytes().all(|c| c.is_ascii_graphic() && c != b'[' && c != b']') {
            return Err(NameError::BadHost(s.to_string()));
        }
        Ok(NodeName { basename: basename.to_string(), host, port, explicit_port, bracketed })
    }

    /// Parses a full name, or a bare basename to which the detected host is added.
    pub fn parse_or_detect(s: &str) -> Result<NodeName, NameError> {
        if s.contains('@') {
            NodeName::parse(s)
        } else {
            NodeName::parse(&format!("{s}@{}", detect_host()))
        }
    }

    /// `host:port`, ready for a resolver.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An IPv6 host keeps its brackets, and has them whenever a port follows it.
        if self.bracketed || (self.explicit_port && self.host.contains(':')) {
            write!(f, "{}@[{}]", self.basename, self.host)?;
        } else {
            write!(f, "{}@{}", self.basename, self.host)?;
        }
        if self.explicit_port {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// This machine's address as other nodes would dial it: the first non-loopback
/// address the hostname resolves to (a container's IP in Docker and Kubernetes), else
/// the hostname, else 127.0.0.1.
pub fn detect_host() -> String {
    use std::net::ToSocketAddrs;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if hostname.is_empty() {
        return "127.0.0.1".into();
    }
    match (hostname.as_str(), 0).to_socket_addrs() {
        Ok(addrs) => addrs.map(|a| a.ip()).find(|ip| !ip.is_loopback()).map(|ip| ip.to_string()).unwrap_or(hostname),
        Err(_) => hostname,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for s in ["a@127.0.0.1", "myapp@10-1-0-65.default.pod.cluster.local", "b@127.0.0.2:4371"] {
            assert_eq!(NodeName::parse(s).unwrap().to_string(), s);
        }
        let v6 = NodeName::parse("a@[::1]:5000").unwrap();
        assert_eq!((v6.host.as_str(), v6.port, v6.address()), ("::1", 5000, "[::1]:5000".to_string()));
        // IPv6 names keep their brackets when printed (announced, logged, dialled back).
        for s in ["a@[::1]:5000", "a@[fd00::1]", "a@::1"] {
            assert_eq!(NodeName::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(NodeName::parse("a@[fd00::1]").unwrap().address(), "[fd00::1]:4370");
        assert_eq!(NodeName::parse("a@::1").unwrap().port, 4370);
    }

    #[test]
    fn bad_names_are_refused() {
        for s in ["", "@h", "a@", "a b@h", "a@h:port", "a@[::1", "a@[::1]x", "a@[::1]:p", "a@[]"] {
            assert!(NodeName::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn bare_basename_gets_a_host() {
        let n = NodeName::parse_or_detect("myapp").unwrap();
        assert_eq!(n.basename, "myapp");
        assert!(!n.host.is_empty());
    }
}
