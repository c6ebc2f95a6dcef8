//! DNS resolvers without caches, for discovery lookups and (when `[node] nameserver`
//! is set) for resolving peers' host names.
//!
//! /etc/resolv.conf, or one given server; when resolv.conf is missing (a FROM-scratch
//! image), Docker's embedded DNS (127.0.0.11) and then 127.0.0.1. Nothing is cached,
//! positive or negative: each lookup asks the server, so a scale change shows at once
//! and a record that did not exist a moment ago is never hidden by a cached NXDOMAIN.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tracing::warn;

/// A resolver asking `nameserver` (or the system's), with `timeout` per query.
pub fn resolver(nameserver: Option<SocketAddr>, timeout: Duration) -> Result<TokioResolver, ResolverError> {
    let (config, mut opts) = match nameserver {
        Some(addr) => (ResolverConfig::from_name_servers(vec![server(addr)]), ResolverOpts::default()),
        None => match hickory_resolver::system_conf::read_system_conf() {
            Ok(conf) => conf,
            Err(e) => {
                warn!("cannot read /etc/resolv.conf ({e}); asking 127.0.0.11 (Docker's DNS) and 127.0.0.1");
                let fallback = [IpAddr::from([127, 0, 0, 11]), IpAddr::V4(Ipv4Addr::LOCALHOST)];
                let servers = fallback.into_iter().map(|ip| server(SocketAddr::new(ip, 53))).collect();
                (ResolverConfig::from_name_servers(servers), ResolverOpts::default())
            }
        },
    };
    opts.cache_size = 0;
    opts.positive_max_ttl = Some(Duration::ZERO);
    opts.negative_max_ttl = Some(Duration::ZERO);
    opts.timeout = timeout;
    opts.attempts = 1;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default()).with_options(opts).build().map_err(|e| ResolverError(e.to_string()))
}

/// The host could not build a resolver (its own fault, or its machine's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot build a DNS resolver: {0}")]
pub struct ResolverError(String);

fn server(addr: SocketAddr) -> NameServerConfig {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    for c in &mut ns.connections {
        c.port = addr.port();
    }
    ns
}
