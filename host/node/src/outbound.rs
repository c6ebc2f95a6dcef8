//! What a worker kind may reach outside the cluster: `allowed_outbound_hosts` in its
//! topology section, as URL patterns (`https://api.example.com`, `http://127.0.0.1:8089`,
//! `https://*.example.com`, `http://localhost:*`). Pure: parsing and matching; the
//! worker runtime asks [`Grants::allows`] before any connection is attempted.

use std::fmt;

/// One pattern: scheme, host and port, each exact or a wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: Scheme,
    host: Host,
    port: Port,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// `*`: any host.
    Any,
    /// `*.example.com`: any subdomain of it (not the domain itself).
    Subdomain(String),
    Exact(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Any,
    Exact(u16),
    /// The scheme's own: 80 for http, 443 for https.
    Default,
}

impl HostPattern {
    /// Parses `scheme://host[:port]`; a path, a query or credentials are refused.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let bad = |why: &str| {
            format!("`{text}` is not an outbound host pattern ({why}): give scheme://host[:port], e.g. https://api.example.com or http://127.0.0.1:8089")
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "*" => Scheme::Any,
            _ => return Err(bad("the scheme is http, https or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("a path, query or credentials"));
        }
        let (host, port) = match rest.strip_prefix('[') {
            // [v6]:port
            Some(v6) => {
                let (addr, after) = v6.split_once(']').ok_or_else(|| bad("an unclosed ["))?;
                (addr.to_string(), after.strip_prefix(':'))
            }
            None => match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            },
        };
        let port = match port {
            None => Port::Default,
            Some("*") => Port::Any,
            Some(p) => Port::Exact(p.parse().map_err(|_| bad("the port is a number or *"))?),
        };
        if port == Port::Default && scheme == Scheme::Any {
            return Err(bad("with the scheme *, give the port (or :*)"));
        }
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            Host::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(bad("a wildcard is * or *.domain"));
            }
            Host::Subdomain(domain.to_string())
        } else if host.is_empty() || host.contains('*') {
            return Err(bad("a wildcard is * or *.domain"));
        } else {
            Host::Exact(host)
        };
        Ok(HostPattern { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` matches.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = match self.scheme {
            Scheme::Any => matches!(scheme, "http" | "https"),
            Scheme::Http => scheme == "http",
            Scheme::Https => scheme == "https",
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let host_ok = match &self.host {
            Host::Any => true,
            Host::Exact(h) => *h == host,
            Host::Subdomain(d) => host.len() > d.len() + 1 && host.ends_with(d.as_str()) && host.as_bytes()[host.len() - d.len() - 1] == b'.',
        };
        let port_ok = match self.port {
            Port::Any => true,
            Port::Exact(p) => p == port,
            Port::Default => port == if scheme == "https" { 443 } else { 80 },
        };
        scheme_ok && host_ok && port_ok
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Any => "*",
        };
        let host = match &self.host {
            Host::Any => "*".to_string(),
            Host::Subdomain(d) => format!("*.{d}"),
            Host::Exact(h) if h.contains(':') => format!("[{h}]"),
            Host::Exact(h) => h.clone(),
        };
        match self.port {
            Port::Default => write!(f, "{scheme}://{host}"),
            Port::Any => write!(f, "{scheme}://{host}:*"),
            Port::Exact(p) => write!(f, "{scheme}://{host}:{p}"),
        }
    }
}

/// A kind's grants: nothing unless listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(pub Vec<HostPattern>);

impl Grants {
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.0.iter().any(|p| p.allows(scheme, host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn exact_hosts_take_the_schemes_port_unless_one_is_given() {
        let api = p("https://api.example.com");
        assert!(api.allows("https", "api.example.com", 443));
        assert!(api.allows("https", "API.example.com", 443), "hosts compare without case");
        assert!(!api.allows("https", "api.example.com", 8443));
        assert!(!api.allows("http", "api.example.com", 80), "another scheme");
        assert!(!api.allows("https", "evil.com", 443));
        let local = p("http://127.0.0.1:8089");
        assert!(local.allows("http", "127.0.0.1", 8089));
        assert!(!local.allows("http", "127.0.0.1", 8090));
        assert!(!local.allows("http", "127.0.0.2", 8089));
        assert_eq!(local.to_string(), "http://127.0.0.1:8089");
        let v6 = p("http://[::1]:9000");
        assert!(v6.allows("http", "[::1]", 9000) && v6.allows("http", "::1", 9000));
        assert_eq!(v6.to_string(), "http://[::1]:9000");
    }

    #[test]
    fn wildcards_cover_subdomains_ports_and_hosts_only_as_written() {
        let sub = p("https://*.example.com");
        assert!(sub.allows("https", "a.example.com", 443));
        assert!(sub.allows("https", "a.b.example.com", 443));
        assert!(!sub.allows("https", "example.com", 443), "the domain itself is not a subdomain");
        assert!(!sub.allows("https", "badexample.com", 443));
        let any_port = p("http://localhost:*");
        assert!(any_port.allows("http", "localhost", 1) && any_port.allows("http", "localhost", 65535));
        assert!(!any_port.allows("https", "localhost", 443));
        let anything = p("*://*:*");
        assert!(anything.allows("http", "x", 1) && anything.allows("https", "y", 2));
        assert!(!anything.allows("ftp", "x", 21));
    }

    #[test]
    fn malformed_patterns_are_refused_saying_why() {
        for (bad, why) in [
            ("api.example.com", "no scheme"),
            ("ftp://x", "http, https or *"),
            ("https://api.example.com/v1", "a path"),
            ("https://user@api.example.com", "credentials"),
            ("http://x:port", "a number or *"),
            ("http://a*b.com", "a wildcard"),
            ("*://x", "give the port"),
            ("http://[::1:80", "unclosed"),
        ] {
            let e = HostPattern::parse(bad).unwrap_err();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
        assert!(Grants::default().0.is_empty());
        assert!(!Grants::default().allows("http", "127.0.0.1", 80), "nothing unless granted");
    }
}
