//! The `kubernetes` capability: EndpointSlices of a Service and pods by label selector,
//! read through the kube client (in-cluster service account, or KUBECONFIG).
//!
//! The client is created on first use and kept for the topology's life. API errors go
//! back to the plugin as WIT errors; a 403 names the RBAC rule the operator must add.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use tokio::sync::OnceCell;
use wasmtime::component::{HasSelf, Linker};

use super::discovery::bindings::wasmnode::discovery::kubernetes::{self as wit, ApiError, Endpoint, Pod as WitPod};
use super::PluginState;

/// A topology's (lazily created) API client and the deadline of one request.
#[derive(Clone)]
pub struct KubeCtx {
    client: Arc<OnceCell<Result<kube::Client, String>>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl KubeCtx {
    /// Must run inside the node's tokio runtime (or its blocking pool).
    pub fn new(timeout: Duration) -> KubeCtx {
        KubeCtx { client: Arc::new(OnceCell::new()), runtime: tokio::runtime::Handle::current(), timeout }
    }

    fn run<T>(&self, fut: impl std::future::Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
        match self.runtime.block_on(tokio::time::timeout(self.timeout, fut)) {
            Ok(r) => r,
            Err(_) => Err(ApiError::Unavailable(format!("no answer from the API server within {} ms", self.timeout.as_millis()))),
        }
    }
}

async fn client(cell: &OnceCell<Result<kube::Client, String>>) -> Result<kube::Client, ApiError> {
    cell.get_or_init(|| async {
        kube::Client::try_default().await.map_err(|e| format!("no Kubernetes client: not in a cluster and no usable KUBECONFIG ({e})"))
    })
    .await
    .clone()
    .map_err(ApiError::Other)
}

/// Maps a kube error; `group`/`resource` name what was listed, for the RBAC hint.
fn api_error(e: kube::Error, group: &str, resource: &str, namespace: &str) -> ApiError {
    match e {
        kube::Error::Api(status) => {
            let msg = if status.message.is_empty() { status.reason.clone() } else { status.message.clone() };
            match status.code {
                403 => ApiError::Forbidden(format!(
                    "{msg}; add to the Role bound to this pod's ServiceAccount in namespace {namespace} the rule \
                     {{apiGroups: [\"{group}\"], resources: [\"{resource}\"], verbs: [\"list\"]}}"
                )),
                401 => ApiError::Unauthorized(msg),
                404 => ApiError::NotFound(msg),
                500..=599 => ApiError::Unavailable(format!("{} {msg}", status.code)),
                code => ApiError::Other(format!("{code} {msg}")),
            }
        }
        other => ApiError::Unavailable(other.to_string()),
    }
}

impl wit::Host for KubeCtx {
    fn list_endpoints(&mut self, namespace: String, service: String) -> Result<Vec<Endpoint>, ApiError> {
        let cell = self.client.clone();
        self.run(async move {
            let api: Api<EndpointSlice> = Api::namespaced(client(&cell).await?, &namespace);
            let params = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
            let slices = api.list(&params).await.map_err(|e| api_error(e, "discovery.k8s.io", "endpointslices", &namespace))?;
            Ok(slices
                .items
                .into_iter()
                .flat_map(|s| s.endpoints)
                .map(|e| {
                    let c = e.conditions.unwrap_or_default();
                    // Kubernetes: an unset `ready` means ready; unset `serving` means as `ready`.
                    let ready = c.ready.unwrap_or(true);
                    Endpoint {
                        addresses: e.addresses,
                        ready,
                        serving: c.serving.unwrap_or(ready),
                        terminating: c.terminating.unwrap_or(false),
                        pod_name: e.target_ref.filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| r.name),
                        hostname: e.hostname,
                    }
                })
                .collect())
        })
    }

    fn list_pods(&mut self, namespace: String, label_selector: String) -> Result<Vec<WitPod>, ApiError> {
        let cell = self.client.clone();
        self.run(async move {
            let api: Api<Pod> = Api::namespaced(client(&cell).await?, &namespace);
            let pods = api.list(&ListParams::default().labels(&label_selector)).await.map_err(|e| api_error(e, "", "pods", &namespace))?;
            Ok(pods
                .items
                .into_iter()
                .map(|p| {
                    let status = p.status.unwrap_or_default();
                    let spec = p.spec.unwrap_or_default();
                    let ready = status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
                    WitPod {
                        name: p.metadata.name.unwrap_or_default(),
                        phase: status.phase.unwrap_or_default(),
                        pod_ip: status.pod_ip,
                        ready,
                        terminating: p.metadata.deletion_timestamp.is_some(),
                        hostname: spec.hostname,
                        subdomain: spec.subdomain,
                    }
                })
                .collect())
        })
    }
}

pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<PluginState, HasSelf<KubeCtx>>(linker, |s| &mut s.kubernetes)
}
