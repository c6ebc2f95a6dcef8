//! `strategy-kubernetes`: nodes from the Kubernetes API — libcluster's
//! `Cluster.Strategy.Kubernetes`, with EndpointSlices and a configurable cluster domain.
//!
//! Give `kubernetes_selector` to list pods by label (phase Running, with an IP), or
//! `kubernetes_service_name` alone to list the Service's EndpointSlices. Only ready pods
//! and endpoints are returned unless `include_not_ready = true`; terminating ones never
//! are. The pod's service account needs `list` on what is read (`pods`, or
//! `endpointslices` in `discovery.k8s.io`); a 403 is reported with the rule to add.
//!
//! | option | type | default | meaning |
//! |---|---|---|---|
//! | `kubernetes_node_basename` | string | (required) | the basename of every node |
//! | `kubernetes_selector` | string | — | label selector of the pods (`app=myapp`) |
//! | `kubernetes_service_name` | string | — | the Service (endpoints lookup, and the subdomain in `hostname` mode) |
//! | `kubernetes_namespace` | string | `default` | the namespace (`"${NAMESPACE}"` from the downward API) |
//! | `mode` | `ip`, `dns`, `hostname` | `ip` | `myapp@10.1.0.65`, `myapp@10-1-0-65.NS.pod.DOMAIN`, `myapp@HOSTNAME.SERVICE.NS.svc.DOMAIN` |
//! | `cluster_domain` | string | `cluster.local` | the cluster's DNS domain (libcluster hard-codes it) |
//! | `include_not_ready` | bool | `false` | also return pods and endpoints that are not ready |
//!
//! ```toml
//! [topology.k8s]
//! strategy = "/plugins/strategy_kubernetes.wasm"
//! polling_interval_ms = 5000
//! [topology.k8s.config]
//! kubernetes_node_basename = "myapp"
//! kubernetes_selector = "app=myapp"
//! kubernetes_namespace = "${NAMESPACE}"
//! mode = "ip"
//! ```

use discovery_guest::kubernetes::{list_endpoints, list_pods, ApiError};
use discovery_guest::{basename, ConfigEntry, Guest, Options, State};

#[derive(Clone)]
struct Config {
    basename: String,
    selector: Option<String>,
    service: Option<String>,
    namespace: String,
    mode: String,
    domain: String,
    include_not_ready: bool,
}

static CONFIG: State<Config> = State::new();

struct Kubernetes;

impl Guest for Kubernetes {
    fn init(config: Vec<ConfigEntry>) -> Result<(), String> {
        let o = Options::new(
            config,
            &[
                "kubernetes_node_basename",
                "kubernetes_selector",
                "kubernetes_service_name",
                "kubernetes_namespace",
                "mode",
                "cluster_domain",
                "include_not_ready",
            ],
        )?;
        let c = Config {
            basename: basename("kubernetes_node_basename", o.required("kubernetes_node_basename", "the nodes' basename")?)?,
            selector: o.text("kubernetes_selector")?,
            service: o.text("kubernetes_service_name")?,
            namespace: o.text("kubernetes_namespace")?.unwrap_or_else(|| "default".into()),
            mode: o.choice("mode", &["ip", "dns", "hostname"])?,
            domain: o.text("cluster_domain")?.unwrap_or_else(|| "cluster.local".into()),
            include_not_ready: o.flag("include_not_ready", false)?,
        };
        if c.selector.is_none() && c.service.is_none() {
            return Err("give `kubernetes_selector` (pods by label) or `kubernetes_service_name` (its endpoints)".into());
        }
        if c.mode == "hostname" && c.service.is_none() {
            return Err("mode `hostname` needs `kubernetes_service_name`: names are HOSTNAME.SERVICE.NAMESPACE.svc.DOMAIN".into());
        }
        CONFIG.set(c);
        Ok(())
    }

    fn poll() -> Result<Vec<String>, String> {
        let c = CONFIG.get()?;
        // (ip, hostname) of every pod that may be dialled.
        let mut found: Vec<(String, String)> = Vec::new();
        if let Some(selector) = &c.selector {
            for p in list_pods(&c.namespace, selector).map_err(describe)? {
                let Some(ip) = p.pod_ip else { continue };
                if p.terminating || p.phase != "Running" || !(p.ready || c.include_not_ready) {
                    continue;
                }
                found.push((ip, p.hostname.unwrap_or(p.name)));
            }
        } else if let Some(service) = &c.service {
            for e in list_endpoints(&c.namespace, service).map_err(describe)? {
                if e.terminating || !(e.ready || c.include_not_ready) {
                    continue;
                }
                let host = e.hostname.or(e.pod_name);
                for ip in e.addresses {
                    let h = host.clone().unwrap_or_else(|| ip.replace(['.', ':'], "-"));
                    found.push((ip, h));
                }
            }
        }
        Ok(found
            .into_iter()
            .map(|(ip, hostname)| {
                let host = match c.mode.as_str() {
                    "dns" => format!("{}.{}.pod.{}", ip.replace(['.', ':'], "-"), c.namespace, c.domain),
                    "hostname" => format!("{hostname}.{}.{}.svc.{}", c.service.as_deref().unwrap_or_default(), c.namespace, c.domain),
                    _ => ip,
                };
                format!("{}@{host}", c.basename)
            })
            .collect())
    }
}

fn describe(e: ApiError) -> String {
    match e {
        ApiError::Forbidden(m) => format!("kubernetes API refused (403): {m}"),
        ApiError::Unauthorized(m) => format!("kubernetes API: unauthorized (401): {m}"),
        ApiError::NotFound(m) => format!("kubernetes API: not found (404): {m}"),
        ApiError::Unavailable(m) => format!("kubernetes API unavailable: {m}"),
        ApiError::Other(m) => format!("kubernetes API: {m}"),
    }
}

discovery_guest::export!(Kubernetes with_types_in discovery_guest);
