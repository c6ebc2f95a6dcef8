//! `strategy-dns-poll`: the A and AAAA records of one name, as `node_basename@ip` —
//! libcluster's `Cluster.Strategy.DNSPoll` and `Kubernetes.DNS`.
//!
//! Serves a Kubernetes headless Service (`myapp-headless.default.svc.cluster.local`
//! answers with one address per ready pod) and Docker Swarm (`tasks.<service>` answers
//! with one address per task). Every node must use the same `node_basename`.
//!
//! | option | type | default | meaning |
//! |---|---|---|---|
//! | `query` | string | (required) | the name to resolve |
//! | `node_basename` | string | (required) | the basename of every node (`myapp` in `myapp@10.1.0.65`) |
//! | `ip_family` | `both`, `ipv4`, `ipv6` | `both` | which records to ask for |
//!
//! ```toml
//! [topology.k8s]
//! strategy = "/plugins/strategy_dns_poll.wasm"
//! polling_interval_ms = 5000
//! # nameserver = "10.96.0.10:53"   # optional; default: /etc/resolv.conf
//! [topology.k8s.config]
//! query = "myapp-headless.default.svc.cluster.local"   # Swarm: "tasks.myapp"
//! node_basename = "myapp"
//! ```

use discovery_guest::dns::{lookup_ip, DnsError, IpFamily};
use discovery_guest::{basename, ConfigEntry, Guest, Options, State};

#[derive(Clone)]
struct Config {
    query: String,
    basename: String,
    family: IpFamily,
}

static CONFIG: State<Config> = State::new();

struct DnsPoll;

impl Guest for DnsPoll {
    fn init(config: Vec<ConfigEntry>) -> Result<(), String> {
        let o = Options::new(config, &["query", "node_basename", "ip_family"])?;
        let family = match o.choice("ip_family", &["both", "ipv4", "ipv6"])?.as_str() {
            "ipv4" => IpFamily::Ipv4,
            "ipv6" => IpFamily::Ipv6,
            _ => IpFamily::Both,
        };
        CONFIG.set(Config {
            query: o.required("query", "the DNS name to resolve")?,
            basename: basename("node_basename", o.required("node_basename", "the nodes' basename")?)?,
            family,
        });
        Ok(())
    }

    fn poll() -> Result<Vec<String>, String> {
        let c = CONFIG.get()?;
        match lookup_ip(&c.query, c.family) {
            Ok(ips) => Ok(ips.into_iter().map(|ip| format!("{}@{ip}", c.basename)).collect()),
            // No records is an answer (nobody is up yet), not a failure.
            Err(DnsError::NotFound(_)) => Ok(Vec::new()),
            Err(DnsError::Timeout(e)) => Err(format!("DNS lookup of {} timed out: {e}", c.query)),
            Err(DnsError::Failed(e)) => Err(format!("DNS lookup of {} failed: {e}", c.query)),
        }
    }
}

discovery_guest::export!(DnsPoll with_types_in discovery_guest);
