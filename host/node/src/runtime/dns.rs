//! The `dns` capability: A, AAAA and SRV lookups through hickory-resolver.
//!
//! One uncached resolver per topology ([`crate::resolve`]): /etc/resolv.conf or the
//! topology's `nameserver`; every poll asks the server.
//!
//! Lookups run on the node's tokio runtime, called from the plugin's blocking thread,
//! each under a deadline shorter than the plugin call's own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use wasmtime::component::{HasSelf, Linker};

use super::discovery::bindings::wasmnode::discovery::dns::{self as wit, DnsError, IpFamily, SrvRecord};
use super::PluginState;

/// A topology's resolver (built on the first lookup: most strategies never resolve
/// anything) and the deadline of one lookup.
#[derive(Clone)]
pub struct DnsCtx {
    resolver: Arc<std::sync::OnceLock<Result<Arc<TokioResolver>, crate::resolve::ResolverError>>>,
    nameserver: Option<SocketAddr>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl DnsCtx {
    /// Must run inside the node's tokio runtime (or its blocking pool).
    pub fn new(nameserver: Option<SocketAddr>, timeout: Duration) -> DnsCtx {
        DnsCtx { resolver: Arc::default(), nameserver, runtime: tokio::runtime::Handle::current(), timeout }
    }

    fn resolver(&self) -> Result<Arc<TokioResolver>, DnsError> {
        let _runtime = self.runtime.enter();
        self.resolver.get_or_init(|| crate::resolve::resolver(self.nameserver, self.timeout).map(Arc::new)).clone().map_err(|e| DnsError::Failed(e.to_string()))
    }

    fn run<T>(&self, what: &str, fut: impl std::future::Future<Output = Result<T, DnsError>>) -> Result<T, DnsError> {
        match self.runtime.block_on(tokio::time::timeout(self.timeout, fut)) {
            Ok(r) => r,
            Err(_) => Err(DnsError::Timeout(format!("no answer for {what} within {} ms", self.timeout.as_millis()))),
        }
    }
}

fn classify(name: &str, e: NetError) -> DnsError {
    if e.is_nx_domain() || e.is_no_records_found() {
        DnsError::NotFound(format!("{name}: {e}"))
    } else if matches!(e, NetError::Timeout) {
        DnsError::Timeout(format!("{name}: {e}"))
    } else {
        DnsError::Failed(format!("{name}: {e}"))
    }
}

impl wit::Host for DnsCtx {
    fn lookup_ip(&mut self, name: String, family: IpFamily) -> Result<Vec<String>, DnsError> {
        let resolver = self.resolver()?;
        self.run(&name.clone(), async move {
            let mut found = Vec::new();
            let mut worst: Option<DnsError> = None;
            if !matches!(family, IpFamily::Ipv6) {
                match resolver.ipv4_lookup(name.as_str()).await {
                    Ok(l) => found.extend(l.answers().iter().filter_map(|r| match &r.data {
                        RData::A(a) => Some(a.0.to_string()),
                        _ => None,
                    })),
                    Err(e) => worst = Some(classify(&name, e)),
                }
            }
            if !matches!(family, IpFamily::Ipv4) {
                match resolver.ipv6_lookup(name.as_str()).await {
                    Ok(l) => found.extend(l.answers().iter().filter_map(|r| match &r.data {
                        RData::AAAA(a) => Some(a.0.to_string()),
                        _ => None,
                    })),
                    // A failure outranks "not found" from the other family.
                    Err(e) => match (classify(&name, e), &worst) {
                        (DnsError::NotFound(_), Some(_)) => {}
                        (e, _) => worst = Some(e),
                    },
                }
            }
            match (found.is_empty(), worst) {
                (true, Some(e)) => Err(e),
                _ => Ok(found),
            }
        })
    }

    fn lookup_srv(&mut self, name: String) -> Result<Vec<SrvRecord>, DnsError> {
        let resolver = self.resolver()?;
        self.run(&name.clone(), async move {
            let lookup = resolver.srv_lookup(name.as_str()).await.map_err(|e| classify(&name, e))?;
            Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => {
                        Some(SrvRecord { priority: s.priority, weight: s.weight, port: s.port, target: s.target.to_string().trim_end_matches('.').to_string() })
                    }
                    _ => None,
                })
                .collect())
        })
    }
}

pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<PluginState, HasSelf<DnsCtx>>(linker, |s| &mut s.dns)
}
