//! Traces: OpenTelemetry spans of worker calls, exported over OTLP/HTTP (protobuf).
//!
//! Off unless an endpoint is configured the standard way, `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (`/v1/traces` is appended) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is); then
//! every call from the HTTP gateway, the CLI or a worker is a trace that follows it
//! through every node it crosses:
//!
//! - `POST /v1/workers/{kind}/{key}/call` (server) on the node the gateway request came
//!   to, the parent taken from the request's `traceparent` header when it has one; `call`
//!   (server) for the CLI's call, under the CLI's `TRACEPARENT` when set;
//! - `call KIND` (client) on the calling node, for each node the call is sent to: its
//!   context rides in the request frame ([`TraceContext`]);
//! - `handle_call KIND` on the node that runs the instance (server when the call came
//!   from another node), for the time the worker handled it; a call the worker makes
//!   meanwhile (`cluster.call`) is its child, and so is each outbound HTTP request it
//!   makes (a client span named after the method), which carries a `traceparent`
//!   header to the server unless the worker set one.
//!
//! With tracing off nothing is created and requests carry no context: the frames are
//! byte for byte what they were. `OTEL_SERVICE_NAME` names the service (default
//! `wasmnode`); each node is `service.instance.id` = its node name.
//!
//! The exporter sends through the node's own hyper client on the node's runtime (the
//! SDK's batch processor runs on a thread of its own and waits for the answer), over
//! plain HTTP or HTTPS trusting the machine's CA bundle, as workers' outbound requests do.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;
use tracing::{info, warn};

pub use wasmnode_proto::TraceContext;

/// How long one export may take (connect to the last byte of the answer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A failing collector is logged at most once per this many seconds.
const FAILURE_LOG_EVERY_S: u64 = 60;

struct Tracing {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();

/// Where traces go, from the environment: the traces endpoint, or `None` when tracing
/// is off (no endpoint, or `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`).
pub fn endpoint_from_env() -> Option<String> {
    endpoint(|k| std::env::var(k).ok())
}

fn endpoint(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let var = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none") {
        return None;
    }
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|e| format!("{}/v1/traces", e.trim_end_matches('/'))))
}

/// Turns tracing on for node `node` when the environment names an endpoint; spans are
/// sent from `runtime`. Call [`shutdown`] before the runtime ends, to send the last ones.
pub fn init(node: &str, runtime: tokio::runtime::Handle) -> anyhow::Result<()> {
    let Some(endpoint) = endpoint_from_env() else { return Ok(()) };
    let uri: http::Uri = endpoint.parse().map_err(|e| anyhow::anyhow!("OTLP traces endpoint {endpoint:?}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        anyhow::bail!("OTLP traces endpoint {endpoint:?}: not an http:// or https:// URL");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(OnRuntime { runtime })
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP exporter: {e}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "wasmnode".into());
    let resource = Resource::builder().with_service_name(service.clone()).with_attribute(KeyValue::new("service.instance.id", node.to_string())).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("wasmnode");
    let _ = TRACING.set(Tracing { provider, tracer });
    info!("traces go to {endpoint} (OTLP/HTTP, service {service})");
    Ok(())
}

/// Sends the spans not yet sent and stops the exporter; waits on a blocking thread, as
/// the export itself runs on this runtime.
pub async fn shutdown() {
    if let Some(t) = TRACING.get() {
        let provider = t.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// What a span is, in OpenTelemetry's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The node took a request (the gateway's, the CLI's, another node's).
    Server,
    /// The node sends a request to another node.
    Client,
    /// Work inside the node.
    Internal,
}

/// A span under way; it ends when dropped.
pub struct Span(opentelemetry_sdk::trace::Span);

impl Span {
    /// The context its children carry.
    pub fn context(&self) -> TraceContext {
        let c = self.0.span_context();
        TraceContext { trace_id: c.trace_id().to_bytes(), span_id: c.span_id().to_bytes(), flags: c.trace_flags().to_u8() }
    }

    /// Marks the span failed, with why.
    pub fn fail(&mut self, why: impl Into<Cow<'static, str>>) {
        self.0.set_status(Status::error(why));
    }

    /// Adds an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.0.set_attribute(KeyValue::new(key, value));
    }
}

/// A span named `name` under `parent` (a new trace without one), with `worker` and
/// `peer` (another node) as attributes when given; `None` when tracing is off.
pub fn span(name: impl Into<Cow<'static, str>>, kind: Kind, parent: Option<TraceContext>, worker: Option<&str>, peer: Option<&str>) -> Option<Span> {
    TRACING.get()?;
    let mut attributes = vec![KeyValue::new("rpc.system", "wasmnode")];
    if let Some(w) = worker {
        attributes.push(KeyValue::new("wasmnode.worker", w.to_string()));
    }
    if let Some(p) = peer {
        attributes.push(KeyValue::new("wasmnode.peer", p.to_string()));
    }
    start(name.into(), kind, parent, attributes)
}

/// A worker's outbound HTTP request (a client span named after the method, with the
/// semantic conventions' attributes), under the span of the message it handles.
pub fn http_span(method: &str, url: &str, host: &str, port: u16, parent: TraceContext, worker: &str) -> Option<Span> {
    TRACING.get()?;
    let attributes = vec![
        KeyValue::new("http.request.method", method.to_string()),
        KeyValue::new("url.full", url.to_string()),
        KeyValue::new("server.address", host.to_string()),
        KeyValue::new("server.port", i64::from(port)),
        KeyValue::new("wasmnode.worker", worker.to_string()),
    ];
    start(method.to_string().into(), Kind::Client, Some(parent), attributes)
}

fn start(name: Cow<'static, str>, kind: Kind, parent: Option<TraceContext>, attributes: Vec<KeyValue>) -> Option<Span> {
    let t = TRACING.get()?;
    let cx = match parent {
        Some(p) => Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(p.trace_id),
            SpanId::from_bytes(p.span_id),
            TraceFlags::new(p.flags),
            true,
            TraceState::NONE,
        )),
        None => Context::new(),
    };
    let kind = match kind {
        Kind::Server => SpanKind::Server,
        Kind::Client => SpanKind::Client,
        Kind::Internal => SpanKind::Internal,
    };
    Some(Span(t.tracer.span_builder(name).with_kind(kind).with_attributes(attributes).start_with_context(&t.tracer, &cx)))
}

/// The exporter's HTTP client: one request per export on a connection of its own, run
/// on the node's runtime (the batch processor's thread has none).
#[derive(Debug)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let uri = request.uri().to_string();
        let sent = self.runtime.spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, send(request)).await }).await;
        let why = match sent {
            Ok(Ok(Ok(response))) if response.status().is_success() => return Ok(response),
            Ok(Ok(Ok(response))) => format!("answered {}", response.status()),
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(_)) => format!("no answer in {} s", EXPORT_TIMEOUT.as_secs()),
            Err(e) => e.to_string(),
        };
        log_failure(&uri, &why);
        Err(why.into())
    }
}

/// Logs a failed export, once per [`FAILURE_LOG_EVERY_S`] with a count of the others.
fn log_failure(uri: &str, why: &str) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static SKIPPED: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + FAILURE_LOG_EVERY_S && LAST.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        let skipped = SKIPPED.swap(0, Ordering::Relaxed);
        warn!(reason = %why, "sending traces to {uri} failed: {why}; those spans are dropped ({skipped} more failures since the last line)");
    } else {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
    }
}

async fn send(request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let uri = request.uri().clone();
    let host = uri.host().ok_or("no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let (mut parts, body) = request.into_parts();
    if !parts.headers.contains_key(http::header::HOST) {
        let authority = uri.authority().map(|a| a.as_str().to_string()).unwrap_or(host.clone());
        parts.headers.insert(http::header::HOST, authority.parse()?);
    }
    // HTTP/1.1 wants the path in the request line, not the whole URL.
    parts.uri = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").parse()?;
    let request = hyper::Request::from_parts(parts, Full::new(body));
    let response = if https {
        let tls = tokio_rustls::TlsConnector::from(crate::runtime::egress::tls_config()?);
        let name = rustls::pki_types::ServerName::try_from(host)?;
        let stream = tls.connect(name, tcp).await?;
        round_trip(hyper_util::rt::TokioIo::new(stream), request).await?
    } else {
        round_trip(hyper_util::rt::TokioIo::new(tcp), request).await?
    };
    Ok(response)
}

async fn round_trip<T>(io: T, request: hyper::Request<Full<Bytes>>) -> Result<Response<Bytes>, HttpError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    // A collector answers with a small protobuf; anything larger is not read whole.
    let body = http_body_util::Limited::new(body, 1 << 20).collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint_with(vars: &[(&str, &str)]) -> Option<String> {
        endpoint(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn the_endpoint_comes_from_the_standard_variables_and_tracing_is_off_without_one() {
        assert_eq!(endpoint_with(&[]), None);
        assert_eq!(endpoint_with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), None, "empty is unset");
        assert_eq!(endpoint_with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]).as_deref(), Some("http://c:4318/v1/traces"));
        // The traces-only variable is used as it is, and wins.
        let both = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://t:443/in")];
        assert_eq!(endpoint_with(&both).as_deref(), Some("https://t:443/in"));
        for off in [("OTEL_SDK_DISABLED", "TRUE"), ("OTEL_TRACES_EXPORTER", "none")] {
            assert_eq!(endpoint_with(&[both[0], off]), None, "{off:?}");
        }
        assert!(endpoint_with(&[both[0], ("OTEL_SDK_DISABLED", "false")]).is_some());
    }
}
