//! A worker's reach outside the cluster: outbound HTTP (`wasi:http`) only to the hosts
//! its kind is granted, each request bounded in time and the kind's requests in flight
//! capped; and its stdout and stderr, into the node's log under its name.
//!
//! A request to a host that is not granted is refused before anything is dialled: the
//! guest gets `HTTP-request-denied` from the response future, and the log a line naming
//! the worker and the host. HTTPS trusts the host's CA bundle (`$SSL_CERT_FILE`, which
//! the image sets, else the system's), so an operator's private CA works as it does for
//! every other program on the machine.
//!
//! Each kind keeps its connections alive between requests ([`Pool`], hyper's pooled
//! client): a worker that calls one API again and again pays the connection (and the TLS
//! handshake) once, not per request. A kind never uses another kind's connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::outbound::Grants;
use crate::telemetry::{self, TraceContext};

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

/// What one kind may do outside: shared by its instances on this node.
#[derive(Clone)]
pub struct Reach {
    /// The kind's kept-alive connections.
    pub pool: Pool,
    pub grants: Arc<Grants>,
    /// Requests in flight, all instances of the kind together.
    pub in_flight: Arc<Semaphore>,
    /// From the request to the last byte of the response.
    pub timeout: Duration,
    /// Denied requests, logged once per worker and host per window with a count.
    pub denied: Arc<Mutex<crate::refusals::RefusalLog<String>>>,
}

/// One instance's outbound HTTP: its name and its kind's [`Reach`].
pub struct Egress {
    pub worker: Arc<str>,
    pub reach: Reach,
    /// The span of the message being handled, when it is traced: each request is a
    /// client span under it, and tells the server with a `traceparent` header.
    pub trace: Option<TraceContext>,
    /// Ends its requests when this node, leaving, runs short of time to hand the
    /// instance over ([`crate::registry::Hurry`]).
    pub hurry: crate::registry::Hurry,
}

/// The error of a request cut short by [`Egress::hurry`], logged once with the worker.
fn given_up(worker: &str, uri: &http::Uri) -> HttpError {
    info!(worker = %worker, host = %uri, "{worker}'s outbound request to {uri} given up: this node is leaving and {worker} must hand its state over");
    HttpError::InternalError(Some(format!("this node is leaving: the request was given up so that {worker} can hand its state over")))
}

impl WasiHttpHooks for Egress {
    // The errors of a request, logged with the worker's name (the defaults log them
    // without it).
    fn p2_error_from_tls(&mut self, err: &std::io::Error) -> ErrorCode {
        warn!(worker = %self.worker, reason = %err, "outbound TLS of {} failed: {err}", self.worker);
        ErrorCode::TlsProtocolError
    }

    fn p2_error_from_connect(&mut self, err: &std::io::Error) -> ErrorCode {
        info!(worker = %self.worker, reason = %err, "outbound connection of {} failed: {err}", self.worker);
        ErrorCode::ConnectionRefused
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _io: IoFuture,
    ) -> Box<dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>> + Send> {
        let uri = request.uri().clone();
        let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
        let host = uri.host().unwrap_or("").to_string();
        let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        if !self.reach.grants.allows(&scheme, &host, port) {
            let to = format!("{scheme}://{host}:{port}");
            let logged = self.reach.denied.lock().unwrap().refused(format!("{} {to}", self.worker), std::time::Instant::now());
            if let Some(n) = logged {
                let more = match n {
                    0 => String::new(),
                    n => format!(" ({n} more since the last line, not logged)"),
                };
                warn!(worker = %self.worker, host = %to, "worker {} may not reach {to}: refused (not in its kind's allowed_outbound_hosts){more}", self.worker);
            }
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        // The guest may not set the Host header: it is the URI's authority.
        if !request.headers().contains_key(http::header::HOST) {
            if let Some(v) = uri.authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()) {
                request.headers_mut().insert(http::header::HOST, v);
            }
        }
        let mut span = self.trace.and_then(|parent| telemetry::http_span(request.method().as_str(), &uri.to_string(), &host, port, parent, &self.worker));
        if let Some(span) = &span {
            if !request.headers().contains_key("traceparent") {
                if let Ok(v) = http::HeaderValue::from_str(&span.context().to_traceparent()) {
                    request.headers_mut().insert("traceparent", v);
                }
            }
        }
        let Reach { in_flight, timeout, pool, .. } = self.reach.clone();
        let cap = |t: Option<Duration>| Some(t.map_or(timeout, |t| t.min(timeout)));
        let o = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: cap(o.connect_timeout),
            first_byte_timeout: cap(o.first_byte_timeout),
            between_bytes_timeout: cap(o.between_bytes_timeout),
        };
        let (worker, hurry) = (self.worker.clone(), self.hurry.clone());
        Box::new(async move {
            let began = tokio::time::Instant::now();
            let deadline = began + timeout;
            let sent = tokio::time::timeout_at(deadline, async {
                // One more than the cap waits for a slot, within the same deadline.
                let permit = in_flight.acquire_owned().await.map_err(|_| HttpError::ConnectionLimitReached)?;
                // Connecting (when no kept connection is free) and the first byte of the
                // answer, each within its own timeout: their sum bounds the wait.
                let head = options.connect_timeout.unwrap_or(timeout) + options.first_byte_timeout.unwrap_or(timeout);
                let response = tokio::time::timeout(head, pool.send(scheme == "https", request)).await.map_err(|_| HttpError::ConnectionReadTimeout)??;
                Ok::<_, HttpError>((permit, response))
            });
            let sent = hurry.race(async { Some(sent.await) }, || None).await;
            // The request's span ends with the response's head (or its failure).
            let sent = match sent {
                None => {
                    if let Some(span) = span.as_mut() {
                        span.fail("given up: the node is leaving");
                    }
                    return Err(given_up(&worker, &uri));
                }
                Some(sent) => sent,
            };
            let (permit, response) = match sent {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    if let Some(span) = span.as_mut() {
                        span.fail(e.to_string());
                    }
                    return Err(e);
                }
                Err(_) => {
                    if let Some(span) = span.as_mut() {
                        span.fail("timed out");
                    }
                    info!(worker = %worker, host = %uri, "outbound request of {worker} to {uri} timed out after {} ms", timeout.as_millis());
                    return Err(HttpError::ConnectionTimeout);
                }
            };
            if let Some(span) = span.as_mut() {
                span.set("http.response.status_code", i64::from(response.status().as_u16()));
            }
            drop(span);
            // The slot is held until the body is read or dropped, and at most until the
            // deadline: the returned future (which wasmtime runs while the response
            // lives) frees it then, even from a guest that never reads the body. The
            // pool drives the connection.
            let between = options.between_bytes_timeout.unwrap_or(timeout).max(Duration::from_nanos(1));
            let slot = Arc::new(Mutex::new(Some(permit)));
            let cut = Box::pin(async move {
                hurry.now().await;
                given_up(&worker, &uri)
            });
            let response = response.map(|body| Held::new(body, slot.clone(), deadline, between, cut).boxed_unsync());
            let io: IoFuture = Box::new(async move {
                tokio::time::sleep_until(deadline).await;
                slot.lock().unwrap().take();
                Ok(())
            });
            Ok((response, io))
        })
    }
}

/// What outbound HTTPS trusts: the certificates of the bundle at `$SSL_CERT_FILE`, else
/// `/etc/ssl/certs/ca-certificates.crt`; read once, on the first HTTPS request.
pub(crate) fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::CertificateDer;
            let path = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from).unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
            let pem = crate::files::read_limited(&path, 16 << 20).map_err(|e| format!("the CA bundle {} {e}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("the CA bundle {}: {e}", path.display()))?;
                // A bundle may carry certificates rustls cannot use; the rest still count.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(format!("the CA bundle {} holds no certificate", path.display()));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

type Pooled<C> = hyper_util::client::legacy::Client<C, WasiBody>;

/// A kind's connections, kept alive between requests: plain HTTP, and HTTPS trusting
/// [`tls_config`] (made on the first HTTPS request, when the CA bundle is first read).
#[derive(Clone)]
pub struct Pool {
    http: Pooled<HttpConnector>,
    https: Arc<OnceLock<Result<Pooled<HttpsConnector<HttpConnector>>, String>>>,
    connect_timeout: Duration,
}

/// How long an unused connection stays open, and how many a kind keeps per host.
const IDLE: Duration = Duration::from_secs(30);
const IDLE_PER_HOST: usize = 32;

impl Pool {
    /// A pool whose connections are made within `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Pool {
        Pool { http: pooled(connector(connect_timeout)), https: Arc::default(), connect_timeout }
    }

    fn https(&self) -> Result<&Pooled<HttpsConnector<HttpConnector>>, HttpError> {
        let client = self.https.get_or_init(|| {
            let config = tls_config()?;
            let mut http = connector(self.connect_timeout);
            http.enforce_http(false);
            let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*config).clone()).https_only().enable_http1().wrap_connector(http);
            Ok(pooled(https))
        });
        client.as_ref().map_err(|e| {
            warn!("outbound HTTPS: {e}");
            HttpError::Tls(std::io::Error::other(e.clone()))
        })
    }

    /// Sends `request` (absolute URI, `Host` set) on a kept connection or a new one.
    async fn send(&self, https: bool, request: http::Request<WasiBody>) -> Result<http::Response<hyper::body::Incoming>, HttpError> {
        let sent = if https { self.https()?.request(request).await } else { self.http.request(request).await };
        sent.map_err(classify)
    }
}

fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(connect_timeout));
    c
}

fn pooled<C>(connector: C) -> Pooled<C>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE)
        .pool_max_idle_per_host(IDLE_PER_HOST)
        .build(connector)
}

/// The pooled client's error as `wasi:http`'s: TLS (a rustls error anywhere in its
/// chain), connecting, or the connection ending before the answer.
fn classify(e: hyper_util::client::legacy::Error) -> HttpError {
    let mut chain = Vec::new();
    let mut tls = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        tls |= is_rustls(s);
        chain.push(s.to_string());
        source = s.source();
    }
    chain.dedup();
    let why = std::io::Error::other(chain.join(": "));
    if tls {
        HttpError::Tls(why)
    } else if e.is_connect() {
        HttpError::Connect(why)
    } else {
        info!(reason = %why, "outbound request failed: {why}");
        HttpError::ConnectionTerminated
    }
}

/// Whether `e` is a rustls error, itself or inside io::Errors (whose `source` skips the
/// error they wrap; the TLS connector wraps rustls' error in two).
fn is_rustls(mut e: &(dyn std::error::Error + 'static)) -> bool {
    loop {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => e = inner,
            None => return false,
        }
    }
}

/// A pooled response's body: holds the kind's in-flight slot until it ends (or is
/// dropped, or the deadline frees it), and fails once the kind's deadline passes or the
/// server is silent longer than the between-bytes timeout.
struct Held {
    body: hyper::body::Incoming,
    slot: Slot,
    deadline: Pin<Box<tokio::time::Sleep>>,
    between: tokio::time::Interval,
    /// Resolves, with the error to give, once the node cuts its instances' waits short
    /// (and is none after).
    cut: Option<Pin<Box<dyn Future<Output = HttpError> + Send>>>,
}

/// A kind's in-flight slot, shared by a response's body and the timer that frees it at
/// the deadline: whichever comes first frees it.
type Slot = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

impl Held {
    fn new(
        body: hyper::body::Incoming,
        slot: Slot,
        deadline: tokio::time::Instant,
        between: Duration,
        cut: Pin<Box<dyn Future<Output = HttpError> + Send>>,
    ) -> Held {
        let mut between = tokio::time::interval(between);
        between.reset();
        Held { body, slot, deadline: Box::pin(tokio::time::sleep_until(deadline)), between, cut: Some(cut) }
    }

    fn free(&self) {
        self.slot.lock().unwrap().take();
    }
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.free();
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => {
                this.between.reset();
                Poll::Ready(Some(frame.map_err(HttpError::from)))
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() || this.between.poll_tick(cx).is_ready() {
                    this.free();
                    return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
                }
                let Some(cut) = this.cut.as_mut() else { return Poll::Ready(Some(Err(HttpError::ConnectionTerminated))) };
                if let Poll::Ready(e) = cut.as_mut().poll(cx) {
                    this.cut = None;
                    this.free();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A guest's stdout or stderr: each line becomes one log line with the worker's name, or
/// a strategy's label (stdout at INFO, stderr at WARN; a line over 16 KiB is cut there).
/// Written through the node's log, a guest's line breaks and control characters never
/// start a line of their own.
#[derive(Clone)]
pub struct LineLog(Arc<Lines>);

struct Lines {
    stderr: bool,
    buf: Mutex<Vec<u8>>,
    /// The instance's label (a worker's name, or a strategy's `topology NAME (path)`)
    /// and its lines a second, shared with its other stream and its `log`.
    gate: Arc<super::log::Gate>,
}

/// The longest line kept before it is logged in pieces (and the longest `log` message).
pub(crate) const MAX_LINE: usize = 16 * 1024;

impl Lines {
    fn emit(&self, line: &[u8]) {
        if !self.gate.pass() {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        let label = &*self.gate.label;
        match (self.gate.plugin, self.stderr) {
            (false, true) => warn!(worker = label, stream = "stderr", "[{label}] {text}"),
            (false, false) => info!(worker = label, stream = "stdout", "[{label}] {text}"),
            // (A strategy's output is its stderr only: see `LineLog::plugin`.)
            (true, _) => warn!(plugin = label, stream = "stderr", "[{label}] {text}"),
        }
    }

    fn push(&self, bytes: &[u8]) {
        cut_lines(&mut self.buf.lock().unwrap(), bytes, |line| self.emit(line));
    }
}

/// Cuts a guest's output into lines: `held` (the unfinished line of earlier writes, at
/// most [`MAX_LINE`] bytes) and then `bytes`; each whole line, and each [`MAX_LINE`]
/// bytes of a longer one, goes to `emit`, and what is left unfinished stays in `held`.
/// Every byte is looked at and copied once, however the writes are cut: a guest that
/// writes 16 MiB of line breaks at once costs as much as one that writes them apart (the
/// stream's `check_write` is advisory, so one write can be of any size).
fn cut_lines(held: &mut Vec<u8>, bytes: &[u8], mut emit: impl FnMut(&[u8])) {
    for piece in bytes.split_inclusive(|&c| c == b'\n') {
        let (mut text, ends) = match piece.split_last() {
            Some((b'\n', text)) => (text, true),
            _ => (piece, false),
        };
        loop {
            let room = MAX_LINE - held.len();
            if text.len() <= room {
                held.extend_from_slice(text);
                break;
            }
            held.extend_from_slice(&text[..room]);
            emit(held);
            held.clear();
            text = &text[room..];
        }
        if ends {
            emit(held);
            held.clear();
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let rest = std::mem::take(self.buf.get_mut().unwrap());
        if !rest.is_empty() {
            self.emit(&rest);
        }
    }
}

impl LineLog {
    /// A worker's stdout or stderr, its lines tagged with the worker's name (its gate's).
    pub fn new(stderr: bool, gate: Arc<super::log::Gate>) -> LineLog {
        LineLog(Arc::new(Lines { stderr, buf: Mutex::default(), gate }))
    }

    /// A strategy's stderr, its lines tagged with its label (`topology NAME (path)`, its
    /// gate's).
    pub fn plugin(gate: Arc<super::log::Gate>) -> LineLog {
        LineLog(Arc::new(Lines { stderr: true, buf: Mutex::default(), gate }))
    }
}

impl IsTerminal for LineLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LineLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineLog {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LineLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LineLog {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.push(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(writes: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let (mut out, mut held) = (Vec::new(), Vec::new());
        for w in writes {
            cut_lines(&mut held, w, |l| out.push(l.to_vec()));
        }
        (out, held)
    }

    #[test]
    fn output_is_cut_into_lines_across_writes_and_long_lines_into_pieces() {
        assert_eq!(lines(&[b"a\nb", b"c\n\nd"]), (vec![b"a".to_vec(), b"bc".to_vec(), vec![]], b"d".to_vec()));
        // A line longer than MAX_LINE goes out in pieces of MAX_LINE, however it was written.
        let long = vec![b'x'; 2 * MAX_LINE + 5];
        let (out, held) = lines(&[&long[..10], &long[10..], b"\n"]);
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), vec![MAX_LINE, MAX_LINE, 5]);
        assert!(held.is_empty());
        let (out, held) = lines(&[&long]);
        assert_eq!((out.len(), held.len()), (2, 5), "the unfinished rest is held, never more than MAX_LINE");
    }

    #[test]
    fn a_huge_write_of_line_breaks_costs_one_pass() {
        // 16 MiB of line breaks in one write: 16 Mi empty lines. Cut by moving the rest of
        // the buffer after each line (as before), this was 128 TiB of byte moves.
        let breaks = vec![b'\n'; 16 << 20];
        let mut count = 0usize;
        let mut held = b"start".to_vec();
        cut_lines(&mut held, &breaks, |l| {
            assert!(l.is_empty() || l == b"start");
            count += 1;
        });
        assert_eq!((count, held.len()), (16 << 20, 0));
    }
}
