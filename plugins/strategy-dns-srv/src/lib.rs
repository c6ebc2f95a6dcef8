//! `strategy-dns-srv`: the SRV records of a StatefulSet's headless Service, as
//! `application_name@pod-0.service.namespace.svc.<cluster domain>` — libcluster's
//! `Cluster.Strategy.Kubernetes.DNSSRV`.
//!
//! Kubernetes answers SRV queries for a headless Service with one record per pod, whose
//! target is the pod's stable DNS name; nodes named that way keep their name across
//! restarts (start each with `name = "myapp@${POD_NAME}.myapp-headless.${NAMESPACE}.svc.cluster.local"`).
//!
//! | option | type | default | meaning |
//! |---|---|---|---|
//! | `service` | string | (required unless `query`) | the headless Service's name |
//! | `namespace` | string | `default` | its namespace |
//! | `cluster_domain` | string | `cluster.local` | the cluster's DNS domain |
//! | `query` | string | `<service>.<namespace>.svc.<cluster_domain>` | the SRV name to ask, in full (overrides the three above) |
//! | `application_name` | string | (required) | the basename of every node |
//!
//! ```toml
//! [topology.statefulset]
//! strategy = "/plugins/strategy_dns_srv.wasm"
//! polling_interval_ms = 5000
//! [topology.statefulset.config]
//! service = "myapp-headless"
//! namespace = "${NAMESPACE}"
//! application_name = "myapp"
//! ```

use discovery_guest::dns::{lookup_srv, DnsError};
use discovery_guest::{basename, ConfigEntry, Guest, Options, State};

#[derive(Clone)]
struct Config {
    query: String,
    basename: String,
}

static CONFIG: State<Config> = State::new();

struct DnsSrv;

impl Guest for DnsSrv {
    fn init(config: Vec<ConfigEntry>) -> Result<(), String> {
        let o = Options::new(config, &["service", "namespace", "cluster_domain", "query", "application_name"])?;
        let query = match o.text("query")? {
            Some(q) => q,
            None => format!(
                "{}.{}.svc.{}",
                o.required("service", "the headless Service's name (or give `query`)")?,
                o.text("namespace")?.unwrap_or_else(|| "default".into()),
                o.text("cluster_domain")?.unwrap_or_else(|| "cluster.local".into()),
            ),
        };
        let basename = basename("application_name", o.required("application_name", "the nodes' basename")?)?;
        CONFIG.set(Config { query, basename });
        Ok(())
    }

    fn poll() -> Result<Vec<String>, String> {
        let c = CONFIG.get()?;
        match lookup_srv(&c.query) {
            Ok(records) => Ok(records.into_iter().map(|r| format!("{}@{}", c.basename, r.target)).collect()),
            Err(DnsError::NotFound(_)) => Ok(Vec::new()),
            Err(DnsError::Timeout(e)) => Err(format!("SRV lookup of {} timed out: {e}", c.query)),
            Err(DnsError::Failed(e)) => Err(format!("SRV lookup of {} failed: {e}", c.query)),
        }
    }
}

discovery_guest::export!(DnsSrv with_types_in discovery_guest);
