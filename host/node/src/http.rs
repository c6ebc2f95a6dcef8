//! The node's HTTP port: a small HTTP/1.1 server (keep-alive, `Content-Length` bodies).
//! It always serves `GET /healthz` (the process answers), `GET /readyz` (200 once the
//! node has found its cluster — config loaded, listening, first discovery poll done and
//! its peers connected or tried — and 503 before, and while leaving) and `GET /metrics`
//! (Prometheus text, see [`crate::metrics`]). With `[http] gateway = true` it also lets
//! anything that speaks HTTP reach workers:
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/workers/{kind}/{key}/call[?timeout_ms=N]`, body = message | 200 with the reply as body; 404 `not_found`, 504 `timeout`, 500 `failed`, 503 `unavailable` (JSON) |
//! | `POST /v1/workers/{kind}/{key}`, body = args | 201 `{"node"}`; 409 `{"error":"already_started","node"}`; 400 `unknown_kind`; 500 `failed` |
//! | `GET /v1/workers` | 200 `{"nodes": [{"node", "workers"}]}` |
//!
//! The call is answered by the instance wherever it runs in the cluster.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::control::{call_error_json, start_error_json};
use crate::registry::{CallError, Registry, StartError, WorkerName};

const MAX_HEADER: usize = 16 * 1024;
const MAX_BODY: usize = 16 << 20;

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

fn json_response(status: u16, v: Value) -> Response {
    Response { status, content_type: "application/json", body: v.to_string().into_bytes() }
}

/// Requests being answered, and whether the node is leaving: a leaving node answers
/// new requests 503 and waits for the ones under way before it exits, so that every
/// call a client saw acknowledged happened, and every one it saw fail did not.
#[derive(Clone, Default)]
pub struct Drain {
    in_flight: Arc<AtomicUsize>,
    closing: Arc<AtomicBool>,
}

impl Drain {
    /// Refuses new requests and waits (at most `deadline`) for those under way.
    pub async fn close(&self, deadline: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        let until = tokio::time::Instant::now() + deadline;
        while self.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Serves HTTP on `listener` until the node stops.
pub async fn serve(listener: TcpListener, registry: Registry, gateway: bool, drain: Drain) {
    loop {
        let Ok((stream, addr)) = listener.accept().await else { continue };
        let (registry, drain) = (registry.clone(), drain.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &registry, gateway, &drain).await {
                debug!("HTTP connection from {addr}: {e}");
            }
        });
    }
}

async fn connection(stream: TcpStream, registry: &Registry, gateway: bool, drain: &Drain) -> std::io::Result<()> {
    // Replies are whole when written: nothing is gained by holding them back.
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let (mut length, mut close, mut seen) = (0usize, false, line.len());
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            seen += h.len();
            if seen > MAX_HEADER {
                return Err(std::io::Error::other("headers too large"));
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().map_err(|_| std::io::Error::other("bad content-length"))?;
            } else if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0u8; length.min(MAX_BODY)];
        let response = if length > MAX_BODY {
            close = true;
            json_response(413, json!({ "error": "body too large", "max": MAX_BODY }))
        } else {
            rd.read_exact(&mut body).await?;
            drain.in_flight.fetch_add(1, Ordering::SeqCst);
            let r = if drain.closing.load(Ordering::SeqCst) {
                close = true;
                json_response(503, json!({ "error": "leaving", "reason": "this node is leaving the cluster; nothing was done" }))
            } else {
                route(registry, gateway, &method, &target, body).await
            };
            drain.in_flight.fetch_sub(1, Ordering::SeqCst);
            r
        };
        let reason = match response.status {
            200 => "OK",
            201 => "Created",
            400 => "Bad Request",
            404 => "Not Found",
            409 => "Conflict",
            413 => "Payload Too Large",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Internal Server Error",
        };
        let head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n",
            response.status,
            response.content_type,
            response.body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        // Counted as in flight until written: the acknowledgement must reach the client.
        drain.in_flight.fetch_add(1, Ordering::SeqCst);
        // Head and body in one write: two small writes on a kept-alive connection wait
        // for the client's delayed ACK (Nagle), 40 ms a call.
        let mut out = head.into_bytes();
        out.extend_from_slice(&response.body);
        let written = wr.write_all(&out).await;
        drain.in_flight.fetch_sub(1, Ordering::SeqCst);
        written?;
        if close {
            return Ok(());
        }
    }
}

async fn route(registry: &Registry, gateway: bool, method: &str, target: &str, body: Vec<u8>) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let text = |status, body: &str| Response { status, content_type: "text/plain; charset=utf-8", body: body.as_bytes().to_vec() };
    match (method, path) {
        ("GET", "/healthz") => return text(200, "ok\n"),
        ("GET", "/readyz") if registry.is_ready() => return text(200, "ready\n"),
        ("GET", "/readyz") => return text(503, "not ready: finding the cluster, or leaving it\n"),
        ("GET", "/metrics") => {
            let members = registry.membership().members().len();
            let body = crate::metrics::global().render(members, &registry.instances_by_kind());
            return Response { status: 200, content_type: "text/plain; version=0.0.4", body: body.into_bytes() };
        }
        _ => {}
    }
    if !gateway {
        return json_response(404, json!({ "error": "no such route", "path": path }));
    }
    match (method, segments.as_slice()) {
        ("POST", ["v1", "workers", kind, key, "call"]) => {
            let timeout = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("timeout_ms="))
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis)
                .unwrap_or(Duration::from_secs(5));
            match registry.call(kind, key, body, timeout).await {
                Ok(reply) => Response { status: 200, content_type: "application/octet-stream", body: reply },
                Err(e) => {
                    let status = match e {
                        CallError::NotFound => 404,
                        CallError::Timeout => 504,
                        CallError::Unavailable(_) => 503,
                        CallError::Failed(_) => 500,
                    };
                    json_response(status, call_error_json(&e, &WorkerName::new(*kind, *key).to_string()))
                }
            }
        }
        ("POST", ["v1", "workers", kind, key]) => match registry.start_worker(kind, key, body).await {
            Ok(node) => json_response(201, json!({ "name": WorkerName::new(*kind, *key).to_string(), "node": node })),
            Err(e) => {
                let status = match e {
                    StartError::AlreadyStarted(_) => 409,
                    StartError::UnknownKind(_) => 400,
                    StartError::Failed(_) => 500,
                };
                json_response(status, start_error_json(&e))
            }
        },
        ("GET", ["v1", "workers"]) => {
            let nodes: Vec<Value> = registry.list_all().await.into_iter().map(|(node, workers)| json!({ "node": node, "workers": workers })).collect();
            json_response(200, json!({ "nodes": nodes }))
        }
        _ => json_response(404, json!({ "error": "no such route", "path": path })),
    }
}

/// A plain HTTP/1.1 GET of `url` (`http://host:port/path`): the status and the body as
/// text. The client side of `wasmnode probe`, for images that have no curl.
pub async fn get(url: &str) -> std::io::Result<(u16, String)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("`{url}`: {m}"));
    let rest = url.strip_prefix("http://").ok_or_else(|| bad("only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let addr = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) { authority.to_string() } else { format!("{authority}:80") };
    let mut stream = TcpStream::connect(&addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other("truncated answer"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {}", head.lines().next().unwrap_or(""))))?;
    Ok((status, body.to_string()))
}
