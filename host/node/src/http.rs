//! The node's HTTP port, served by hyper (HTTP/1.1, keep-alive, chunked and
//! `Content-Length` bodies) with limits that keep one client from taking it: headers
//! within 16 KiB and 10 s, bodies within 16 MiB and 30 s and at most 64 MiB of them held
//! at once (past that the body that has waited longest on its client is closed, and only
//! when all are being answered is a body refused: 503 with `Retry-After`), answers over
//! 64 KiB within 256 MiB held at once while they are sent (past that the answer that has
//! waited longest on its client is dropped with its connection), no write left
//! waiting more than 10 s on a client that reads nothing of its answers (it is closed),
//! at most 1,024 connections per port (one past that closes the connection that has
//! waited longest on its client; only when all are being answered is it answered 503 and
//! closed; accepting never stops). It serves `GET /healthz` (the process answers), `GET /readyz` (200 once the
//! node has found its cluster — config loaded, listening, first discovery poll done and
//! its peers connected or tried — and 503 before, and while leaving) and `GET /metrics`
//! (Prometheus text, see [`crate::metrics`]). With `[http] gateway = true` it also lets
//! anything that speaks HTTP reach workers:
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/workers/{kind}/{key}/call[?timeout_ms=N]`, body = message, optional `Idempotency-Key` | 200 with the reply as body; 404 `not_found`, 504 `timeout` (after `timeout_ms`, 5 s without one), 500 `failed`, 503 `unavailable` (JSON; with `Retry-After: 1`, as every 503 of the gateway's: nothing was done), 502 `in_doubt` (the worker's node went down while the call was under way: it may have been applied); 400 for a bad worker name (see [`WorkerName::check`]), `Idempotency-Key` or `timeout_ms` (not whole milliseconds) |
//! | `POST /v1/workers/{kind}/{key}`, body = args | 201 `{"node"}`; 409 `{"error":"already_started","node"}`; 400 `unknown_kind` or a bad worker name; 413 `args too large` (over [`crate::registry::MAX_ARGS`], 1 MiB); 500 `failed` |
//! | `GET /v1/workers` | 200 `{"nodes": [{"node", "workers"}]}` |
//!
//! The call is answered by the instance wherever it runs in the cluster. A call with an
//! `Idempotency-Key` header is applied once by the worker however often it is retried
//! with that key (the key is the call id of `wasmnode call --id`). Path segments
//! are percent-decoded (`/v1/workers/order/a%2Fb/call` calls `order/a/b`); a known path
//! with the wrong method is 405 with `Allow`. With a token configured, gateway requests
//! must carry `Authorization: Bearer TOKEN` (401 otherwise); probes and metrics never
//! need it. `gateway_listen` puts the gateway on a port of its own, so that probes and
//! metrics answer whatever the gateway's clients do.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::admission::{longest_waiting, ANSWERING, CLOSING};
use crate::control::{call_error_json, start_error_json};
use crate::refusals::{left_out, RefusalLog};
use crate::registry::{CallError, Registry, StartError, WorkerName};
use crate::telemetry::{self, TraceContext};

/// How much of a port's resources one client may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's line and headers, in bytes (larger: 431).
    pub max_header: usize,
    /// A request's body, in bytes (larger: 413).
    pub max_body: usize,
    /// The time a connection may take to send a request's headers, idle time before
    /// them included: a connection that sends nothing is closed after it.
    pub header_timeout: Duration,
    /// The time a request's body may take to arrive (longer: 408).
    pub body_timeout: Duration,
    /// Connections open at once on the port.
    pub max_connections: usize,
    /// The time an answer may wait on a client that reads none of it (its receive
    /// window shut): the connection is closed after it, as nginx's `send_timeout` does.
    pub send_timeout: Duration,
    /// Bytes of request bodies over 64 KiB held at once on the port, from their
    /// `Content-Length` (or first byte) until their requests are answered (past it, the
    /// body that has waited longest on its client is answered 503 and closed).
    pub max_bodies_held: usize,
    /// Bytes of answers over 64 KiB held at once on the port, from when they are made
    /// until the socket has taken them all (past it, the connection whose answer has
    /// waited longest on its client is closed, its answer dropped).
    pub max_answers_held: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_header: 16 << 10,
            max_body: 16 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
            send_timeout: Duration::from_secs(10),
            max_bodies_held: 64 << 20,
            max_answers_held: 256 << 20,
        }
    }
}

/// Request bodies up to this size are not counted in a port's budget, so never closed to
/// make room nor refused for it: a call with a small body is served however many clients
/// stall large ones (they are bounded by `max_connections` instead, 64 MiB at the
/// default 1,024). Counted from the first byte past it.
const SMALL_BODY: usize = 64 << 10;

/// Answers up to this size are not counted in a port's budget of answers held (they are
/// bounded by `max_connections` instead, 64 MiB at the default 1,024).
const SMALL_ANSWER: usize = 64 << 10;

/// How long a connection closed to make room while its body arrived may wait on its
/// client to take its 503, before it is closed.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// After refusing a request whose body it did not read, how long the node goes on reading
/// (and discarding) what the client sends, at most, and how long it waits for each part.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// How many connections refused because every one the port holds is being answered may
/// linger at once, beyond `max_connections` (each for [`LINGER_TIME`] at most); past it,
/// one is closed at once.
const REFUSED_LINGERING: usize = 64;
/// The answer to a connection refused because every one the port holds is being answered.
const ALL_ANSWERING: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n";

/// What a port serves: probes and metrics, the worker gateway, or both.
#[derive(Clone)]
pub struct Routes {
    pub probes: bool,
    pub gateway: bool,
    /// The bearer token gateway requests must carry.
    pub token: Option<Arc<str>>,
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

    fn enter(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.in_flight.clone())
    }
}

/// A request counted in flight until its answer's body has been handed to the socket
/// (the guard rides in the body, dropped once hyper has written it).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A whole answer body that keeps its request in flight while it exists.
pub struct Answer {
    /// Its bytes, until hyper takes them (none when empty).
    data: Option<Bytes>,
    _in_flight: Option<InFlight>,
}

impl Answer {
    fn new(data: Bytes) -> Answer {
        Answer { data: (!data.is_empty()).then_some(data), _in_flight: None }
    }

    fn len(&self) -> usize {
        self.data.as_ref().map_or(0, Bytes::len)
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len() as u64)
    }
}

type Response = hyper::Response<Answer>;

fn response(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut r = hyper::Response::new(Answer::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A JSON answer. A 503 from the gateway says when to try again: `Retry-After: 1`, which
/// a client's retry policy or a proxy reads; nothing was done. A call whose node went
/// down while it was under way may have been applied: 502 `in_doubt`, without it, since
/// only an `Idempotency-Key` makes its retry safe. (`/readyz`'s 503 is a probe's answer,
/// in text, without it.)
fn json_response(status: u16, v: Value) -> Response {
    let mut r = response(status, "application/json", v.to_string());
    if status == 503 {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn text(status: u16, body: &'static str) -> Response {
    response(status, "text/plain; charset=utf-8", body)
}

/// The port's open connections. At the cap a new one closes the one that has waited
/// longest on its client (see [`longest_waiting`]), as nginx reuses its idle keep-alive
/// connections when it runs out: a client that keeps many connections open, idle or
/// trickling, gets its own closed as others arrive. Only when every connection is being
/// answered is the newcomer refused.
struct Open {
    cap: usize,
    epoch: Instant,
    next: u64,
    conns: HashMap<u64, Arc<Slot>>,
    /// How many are open, for `wasmnode_http_connections`.
    gauge: Gauge,
}

/// What [`Open::admit`] or [`hold_more`] made room with: the connection in `slot`, which
/// had waited `waited` on its client; [`Closed::close`] (once the port's lock is let go)
/// closes it.
struct Closed {
    slot: Arc<Slot>,
    waited: Duration,
}

impl Open {
    fn new(cap: usize, gauge: Gauge) -> Open {
        gauge.set(0);
        Open { cap, epoch: Instant::now(), next: 0, conns: HashMap::new(), gauge }
    }

    /// Forgets connection `id` (closed to make room, or ended).
    fn remove(&mut self, id: u64) -> Option<Arc<Slot>> {
        let slot = self.conns.remove(&id);
        self.gauge.set(self.conns.len() as i64);
        slot
    }

    /// A place for a connection from `peer`, closing another when the port is full; `None`
    /// when every open connection is being answered.
    fn admit(&mut self, peer: SocketAddr) -> Option<(u64, Arc<Slot>, Option<Closed>)> {
        let mut closed = None;
        if self.conns.len() >= self.cap {
            closed = Some(self.close_longest_waiting(|_| true)?);
        }
        let id = self.next;
        self.next += 1;
        let slot = Arc::new(Slot {
            state: AtomicU64::new(0),
            body: AtomicUsize::new(0),
            answer: AtomicUsize::new(0),
            in_body: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            linger: AtomicBool::new(false),
            task: OnceLock::new(),
            epoch: self.epoch,
            peer,
        });
        // It waits on its client from now: for its first request.
        slot.waiting();
        self.conns.insert(id, slot.clone());
        self.gauge.set(self.conns.len() as i64);
        Some((id, slot, closed))
    }

    /// Marks the connection that has waited longest on its client, of those `eligible`,
    /// as closing and forgets it; `None` when each is being answered.
    fn close_longest_waiting(&mut self, eligible: impl Fn(&Slot) -> bool) -> Option<Closed> {
        loop {
            let waiting = self.conns.iter().filter(|(_, slot)| eligible(slot)).map(|(id, slot)| (*id, slot.state.load(Ordering::SeqCst)));
            let (id, since) = longest_waiting(waiting)?;
            let slot = &self.conns[&id];
            // Unless it began being answered meanwhile: then look again.
            if slot.state.compare_exchange(since, CLOSING, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                let waited = slot.since_epoch().saturating_sub(Duration::from_nanos(since));
                let slot = self.remove(id).expect("chosen from the map");
                return Some(Closed { slot, waited });
            }
        }
    }
}

impl Closed {
    /// Closes the connection. One whose request's body is arriving is answered 503 with
    /// `Retry-After` by its body's reader, which drops the body at once and ends the
    /// connection (a client that reads nothing of the answer has [`CLOSE_GRACE`] before
    /// it is closed, not the send timeout: see [`SendDeadline`]); any other has its task
    /// aborted, which drops its socket. Either way what its request held is given back.
    fn close(&self) {
        let slot = &self.slot;
        if slot.in_body.load(Ordering::SeqCst) {
            // (Its state is CLOSING already: the reader sees it once woken.)
            slot.reader.wake();
        } else if let Some(task) = slot.task.get() {
            task.abort();
        }
    }
}

/// One connection's place on the port: whether the node is answering it or waits on its
/// client, and since when.
struct Slot {
    /// [`ANSWERING`], [`CLOSING`], or when the node began waiting on the client (in
    /// nanoseconds since `epoch`).
    state: AtomicU64,
    /// Bytes of its request's body counted in the port's budget of bodies.
    body: AtomicUsize,
    /// Bytes of its answer counted in the port's budget of answers, until sent.
    answer: AtomicUsize,
    /// Whether its request's body is being read: then [`Closed::close`] wakes the reader
    /// (through `reader`) to answer 503, rather than drop the socket.
    in_body: AtomicBool,
    reader: AtomicWaker,
    /// Whether the latest request was answered before its body was read whole (refused
    /// by its headers, or while its body arrived): the connection then ends with a
    /// [`linger`].
    linger: AtomicBool,
    /// The connection's task, aborted (which drops its socket) to close it.
    task: OnceLock<tokio::task::AbortHandle>,
    epoch: Instant,
    peer: SocketAddr,
}

impl Slot {
    fn since_epoch(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// The node starts on an answer that takes time (a call to a worker): the connection
    /// is not closed to make room until it is answered. `false` when it was chosen to be
    /// closed before: then nothing is to be done.
    fn answering(&self) -> bool {
        self.state.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| (s != CLOSING).then_some(ANSWERING)).is_ok()
    }

    /// Whether it was chosen to be closed to make room.
    fn closing(&self) -> bool {
        self.state.load(Ordering::SeqCst) == CLOSING
    }

    /// The node waits on the client (for its next request, or more of a body), from now.
    fn waiting(&self) {
        let now = self.now();
        let _ = self.state.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| (s != CLOSING).then_some(now));
    }

    /// The client took some of its answer: while the node waits on it, it waits from
    /// now (a client that reads its answer is not the one that has waited longest). A
    /// connection being answered or closing stays so.
    fn progressed(&self) {
        let now = self.now();
        let _ = self.state.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| (s < CLOSING).then_some(now));
    }

    fn now(&self) -> u64 {
        (self.since_epoch().as_nanos() as u64).min(CLOSING - 1)
    }
}

/// Serves HTTP on `listener` until the node stops.
pub async fn serve(listener: TcpListener, registry: Registry, routes: Routes, drain: Drain, limits: Limits) {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let gauge = crate::metrics::global().http_connections(&addr);
    let port = Arc::new(Port {
        registry,
        routes,
        drain,
        limits,
        addr,
        open: Mutex::new(Open::new(limits.max_connections, gauge)),
        bodies: Budget::new(limits.max_bodies_held),
        answers: Arc::new(Budget::new(limits.max_answers_held)),
        logs: Mutex::default(),
        refused: Arc::new(tokio::sync::Semaphore::new(REFUSED_LINGERING)),
    });
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most often: wait a little rather than spin.
                warn!(port = %port.addr, "HTTP port {}: cannot accept: {e}", port.addr);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = port.open.lock().unwrap().admit(addr);
        let Some((id, slot, closed)) = admitted else {
            // Every connection is being answered: this one is told so and closed.
            port.refuse(stream);
            if let Some(n) = port.shed("all_answering", addr.ip()) {
                let p = &port.addr;
                warn!(port = %p, peer = %addr, reason = "all_answering", "HTTP port {p}: {} connections open, all being answered, refusing {addr}{}", limits.max_connections, left_out(n));
            }
            continue;
        };
        if let Some(closed) = closed {
            closed.close();
            // (What its request's body held is given back now, not once its task ends.)
            port.bodies.release(&closed.slot.body);
            let peer = closed.slot.peer;
            if let Some(n) = port.shed("port_full", peer.ip()) {
                let (p, more) = (&port.addr, crate::refusals::left_out_as(n, "closed"));
                warn!(
                    port = %p,
                    %peer,
                    reason = "port_full",
                    "HTTP port {p}: {} connections open: closed the one from {peer}, which had waited {:.1} s on its client, to admit {addr}{more}",
                    limits.max_connections,
                    closed.waited.as_secs_f64()
                );
            }
        }
        let (port, conn_slot, ended) = (port.clone(), slot.clone(), slot.clone());
        let task = tokio::spawn(async move {
            // Leaves the port's open connections however the task ends, aborted included.
            let _leave = Leave(port.clone(), id);
            let _ = stream.set_nodelay(true);
            let stream = SendDeadline::new(stream, limits.send_timeout, ended.clone());
            let service = service_fn(|req| {
                let (port, slot) = (port.clone(), conn_slot.clone());
                async move { Ok::<_, Infallible>(handle(req, &port, &slot).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header.max(8192))
                .max_headers(100)
                .keep_alive(true)
                .serve_connection(stream, service)
                .without_shutdown();
            match conn.await {
                Ok(parts) if ended.linger.load(Ordering::SeqCst) => linger(parts.io.into_inner().io).await,
                Err(e) if stalled(&e) && !ended.closing() => {
                    if let Some(n) = port.shed("not_reading", addr.ip()) {
                        let (p, more) = (&port.addr, crate::refusals::left_out_as(n, "closed"));
                        warn!(
                            port = %p,
                            peer = %addr,
                            reason = "not_reading",
                            "HTTP port {p}: closed the connection from {addr}: it read none of its answers for {:.1} s{more}",
                            limits.send_timeout.as_secs_f64()
                        );
                    }
                }
                Err(e) => debug!(peer = %addr, "HTTP connection from {addr}: {e}"),
                // (Dropping the socket closes it.)
                Ok(_) => {}
            }
        });
        // (Set before the loop can admit another, so before this one can be chosen.)
        let _ = slot.task.set(task.abort_handle());
    }
}

/// A connection's task's place among the port's open connections, given up on drop.
struct Leave(Arc<Port>, u64);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.open.lock().unwrap().remove(self.1);
    }
}

/// Ends a connection whose request was refused before its body was read, as nginx's
/// lingering close does: closed at once with the client's bytes unread, the socket would
/// be reset, and the client, still sending its body, could lose the answer (Python's
/// urllib reported a 413 as "Broken pipe"). So the node sends the end of its answers, then
/// reads and discards what the client still sends until it stops (a second without a
/// byte) or for [`LINGER_TIME`] at most, and only then closes.
async fn linger(mut io: TcpStream) {
    let _ = io.shutdown().await;
    let until = tokio::time::Instant::now() + LINGER_TIME;
    let mut discard = vec![0u8; 16 << 10];
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left.min(LINGER_TIMEOUT), io.read(&mut discard)).await {
            Ok(Ok(n)) if n > 0 && !left.is_zero() => continue,
            _ => return,
        }
    }
}

/// A connection whose writes must make progress. hyper's own timer covers reading a
/// request's headers only: a client that pipelines requests and reads none of the
/// answers would keep its connection (and a slot of the port's cap) for as long as it
/// likes. Here a write the socket takes nothing of for `timeout` fails, which closes
/// the connection. The timer is armed only while a write waits, so an answer the socket
/// takes at once costs nothing.
struct SendDeadline {
    io: TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The connection's place on the port: once it is chosen to be closed (and told so
    /// with a 503), a write waits [`CLOSE_GRACE`] at most.
    slot: Arc<Slot>,
}

/// The error a stalled write ends its connection with.
#[derive(Debug)]
struct Stalled;

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client read none of its answers for the send timeout")
    }
}

impl std::error::Error for Stalled {}

/// Whether hyper ended a connection because of [`Stalled`].
fn stalled(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        // (An `io::Error`'s own `source` skips the error it wraps: look inside.)
        if s.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).is_some_and(|inner| inner.is::<Stalled>()) {
            return true;
        }
        source = s.source();
    }
    false
}

impl SendDeadline {
    fn new(io: TcpStream, timeout: Duration, slot: Arc<Slot>) -> TokioIo<SendDeadline> {
        TokioIo::new(SendDeadline { io, timeout, stalled: None, slot })
    }

    /// The socket took some of an answer: the client is reading.
    fn wrote(&self, polled: &Poll<std::io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.slot.progressed();
        }
    }

    /// What a write that the socket took or refused comes to: progress disarms the
    /// timer; waiting arms it, and fails once it has run out.
    fn progress<T>(&mut self, cx: &mut Context<'_>, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = if self.slot.closing() { self.timeout.min(CLOSE_GRACE) } else { self.timeout };
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, Stalled))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncRead for SendDeadline {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SendDeadline {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(&polled);
        this.progress(cx, polled)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(&polled);
        this.progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.progress(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.progress(cx, polled)
    }
}

async fn handle(req: Request<Incoming>, port: &Port, slot: &Arc<Slot>) -> Response {
    // Until [`read_body`] has all of it, the request's body is unread: any answer given
    // before then (a 401, a 400 for a bad header, a 503 while leaving) ends the
    // connection with a linger, or the client could lose it to a reset.
    slot.linger.store(!req.body().is_end_stream(), Ordering::SeqCst);
    let drain = &port.drain;
    let in_flight = drain.enter();
    let mut r = if drain.closing.load(Ordering::SeqCst) {
        let mut r = json_response(503, json!({ "error": "leaving", "reason": "this node is leaving the cluster; nothing was done" }));
        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        r
    } else {
        route(req, port, slot).await
    };
    if slot.closing() {
        // Closed to make room: it ends at once, not with a linger.
        slot.linger.store(false, Ordering::SeqCst);
    }
    slot.waiting();
    hold_answer(port, slot, r.body_mut());
    r.body_mut()._in_flight = Some(in_flight);
    r
}

/// The percent-decoded segments of `path`; `None` when one is not UTF-8.
fn segments(path: &str) -> Option<Vec<String>> {
    path.trim_matches('/').split('/').map(|s| percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned())).collect()
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = json_response(405, json!({ "error": "method not allowed", "allow": allow }));
    r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// Whether `req` carries the bearer `token` (compared in constant time).
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The answer to a request whose connection was closed to make room (the port's
/// connections or request bodies were full, and it had waited longest on its client):
/// nothing was done, and a retry may well be served.
fn made_room() -> Response {
    let reason = "this port needed room and this connection had waited longest on its client; nothing was done, retry";
    let mut r = json_response(503, json!({ "error": "busy", "reason": reason }));
    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The body, whole, with its bytes counted against the port's budget: 413 past the limit,
/// 408 past the timeout, 503 while other requests being answered hold the budget or when
/// its connection was closed to make room. Every refusal closes the connection.
async fn read_body<'a>(mut body: Incoming, port: &'a Port, slot: &'a Slot) -> Result<(Bytes, Held<'a>), Response> {
    let limits = &port.limits;
    let too_large = || {
        let mut r = json_response(413, json!({ "error": "body too large", "max": limits.max_body }));
        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        r
    };
    // The budget cannot take the body: this connection was closed to make room, or
    // requests being answered hold the whole budget.
    let no_room = || {
        if slot.closing() {
            return made_room();
        }
        let (p, peer) = (&port.addr, slot.peer);
        if let Some(n) = port.shed("bodies_answering", peer.ip()) {
            warn!(
                port = %p,
                %peer,
                reason = "bodies_answering",
                "HTTP port {p}: requests being answered hold its {} MiB of request bodies, refusing a body from {peer}{}",
                limits.max_bodies_held >> 20,
                left_out(n)
            );
        }
        let reason = format!("requests being answered hold this port's {} MiB of request bodies; nothing was done, retry", limits.max_bodies_held >> 20);
        let mut r = json_response(503, json!({ "error": "busy", "reason": reason }));
        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        r
    };
    // The client sent the request's headers just now.
    slot.waiting();
    // A `Content-Length` past the limit is refused before any of the body is read, and
    // one the budget cannot hold is refused before it is read too.
    let declared = body.size_hint().lower();
    if declared > limits.max_body as u64 {
        return Err(too_large());
    }
    let mut held = Held { port, slot, bytes: 0 };
    if declared > SMALL_BODY as u64 && !held.grow(declared as usize) {
        return Err(no_room());
    }
    let read = async {
        let mut parts = Vec::new();
        let mut len = 0usize;
        loop {
            // The next part, unless the connection was closed to make room (see
            // `Closed::close`): then it is answered now, and the body dropped.
            let next = std::future::poll_fn(|cx| {
                if slot.closing() {
                    return Poll::Ready(None);
                }
                slot.reader.register(cx.waker());
                if slot.closing() {
                    return Poll::Ready(None);
                }
                Pin::new(&mut body).poll_frame(cx).map(Some)
            });
            let Some(frame) = next.await else { return Err(made_room()) };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| {
                let mut r = json_response(400, json!({ "error": format!("bad request body: {e}") }));
                r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                r
            })?;
            let Ok(data) = frame.into_data() else { continue };
            // The node waits on the client for the rest from now (what makes room in a
            // full budget is the body that has waited longest).
            slot.waiting();
            len += data.len();
            if len > limits.max_body {
                return Err(too_large());
            }
            // (A chunked body declares nothing: it is counted as it comes, once past
            // `SMALL_BODY`, and then whole.)
            if len > SMALL_BODY.max(held.bytes) && !held.grow(len - held.bytes) {
                return Err(no_room());
            }
            parts.push(data);
        }
        Ok(match parts.len() {
            1 => parts.pop().expect("one part"),
            _ => Bytes::from(parts.concat()),
        })
    };
    slot.in_body.store(true, Ordering::SeqCst);
    let read = tokio::time::timeout(limits.body_timeout, read).await;
    slot.in_body.store(false, Ordering::SeqCst);
    match read {
        Err(_) => {
            let mut r = json_response(408, json!({ "error": "the request body did not arrive in time" }));
            r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            Err(r)
        }
        Ok(Err(r)) => Err(r),
        Ok(Ok(bytes)) => {
            slot.linger.store(false, Ordering::SeqCst);
            Ok((bytes, held))
        }
    }
}

/// What a port's handlers share.
struct Port {
    registry: Registry,
    routes: Routes,
    drain: Drain,
    limits: Limits,
    /// The address it listens on, for logs.
    addr: String,
    open: Mutex<Open>,
    bodies: Budget,
    answers: Arc<Budget>,
    /// What it shed or refused, logged once per address and reason per window.
    logs: Mutex<RefusalLog<(IpAddr, &'static str)>>,
    /// Connections refused (all being answered) that may still linger: [`REFUSED_LINGERING`].
    refused: Arc<tokio::sync::Semaphore>,
}

impl Port {
    /// Answers a connection it cannot admit (every one it holds is being answered) 503,
    /// then closes it: after a [`linger`], so that a client that sent its request (and
    /// a body) at once reads the answer rather than a reset, while fewer than
    /// [`REFUSED_LINGERING`] do; at once past that.
    fn refuse(&self, stream: TcpStream) {
        // (A new socket's send buffer takes the whole answer.)
        let _ = stream.try_write(ALL_ANSWERING);
        if let Ok(permit) = self.refused.clone().try_acquire_owned() {
            tokio::spawn(async move {
                linger(stream).await;
                drop(permit);
            });
        }
    }

    /// Counts a connection or request shed for `reason` (one of
    /// [`crate::metrics::HTTP_SHED_REASONS`]) from `from`, and says whether to log it:
    /// see [`Port::logged`].
    fn shed(&self, reason: &'static str, from: IpAddr) -> Option<u64> {
        crate::metrics::global().http_shed(reason);
        self.logged(reason, from)
    }

    /// `Some(n)` when a refusal for `reason` from `from` is to be logged, `n` being how
    /// many were left out since the last logged one: once per address and reason per
    /// window.
    fn logged(&self, reason: &'static str, from: IpAddr) -> Option<u64> {
        self.logs.lock().unwrap().refused((from, reason), Instant::now())
    }
}

/// Bytes a port holds at once of one kind, each connection's share counted in its
/// [`Slot`] (`body` or `answer`): of request bodies over [`SMALL_BODY`], from their first
/// byte (or their `Content-Length`) until their requests are answered, so that many
/// clients sending large bodies slowly cannot grow the node's memory past it (each could
/// hold 16 MiB for 30 s before); of answers over [`SMALL_ANSWER`], from when they are
/// made until the socket has taken them, so that many clients reading large answers
/// slowly cannot either (each could hold 64 MiB for as long as it read a little every
/// 10 s). When one does not fit, the connection whose share has waited longest on its
/// client is closed to make room (see [`hold_more`] and [`hold_answer`]).
struct Budget {
    held: AtomicUsize,
    max: usize,
}

impl Budget {
    fn new(max: usize) -> Budget {
        Budget { held: AtomicUsize::new(0), max }
    }

    /// Counts `more` bytes of a connection's `share`, unless the budget cannot take them.
    fn grow(&self, share: &AtomicUsize, more: usize) -> bool {
        let max = self.max;
        let grown = self.held.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| h.checked_add(more).filter(|t| *t <= max)).is_ok();
        if grown {
            share.fetch_add(more, Ordering::SeqCst);
        }
        grown
    }

    /// Counts `more` bytes of a connection's `share` whether the budget can take them or
    /// not (what is already made and must be sent).
    fn grow_past(&self, share: &AtomicUsize, more: usize) {
        self.held.fetch_add(more, Ordering::SeqCst);
        share.fetch_add(more, Ordering::SeqCst);
    }

    /// Gives back a connection's whole `share`: once, whoever calls it first (its
    /// request's [`Held`] or answer's [`Counted`] when done, or whoever closed the
    /// connection to make room).
    fn release(&self, share: &AtomicUsize) -> usize {
        let bytes = share.swap(0, Ordering::SeqCst);
        if bytes > 0 {
            self.held.fetch_sub(bytes, Ordering::SeqCst);
        }
        bytes
    }

    /// Gives back `bytes` of a connection's `share`, or what is left of it (none, once
    /// the connection was closed to make room).
    fn give_back(&self, share: &AtomicUsize, bytes: usize) {
        let Ok(had) = share.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| (h > 0).then(|| h - h.min(bytes))) else { return };
        self.held.fetch_sub(had.min(bytes), Ordering::SeqCst);
    }
}

/// Counts `more` bytes of `slot`'s body in the port's budget. When they do not fit, the
/// connection whose body has waited longest on its client is closed and its bytes given
/// back, until they do (each closed one is pushed on `closed`, for the caller to abort
/// and log): a client that sends its body as fast as it can is never held up by ones
/// that stall theirs. `false` when the bodies left all belong to requests being answered
/// (calls to workers under way), or `slot` itself was closed to make room.
fn hold_more(open: &Mutex<Open>, bodies: &Budget, slot: &Slot, more: usize, closed: &mut Vec<Closed>) -> bool {
    loop {
        if slot.closing() {
            return false;
        }
        if bodies.grow(&slot.body, more) {
            return true;
        }
        let eligible = |s: &Slot| s.body.load(Ordering::SeqCst) > 0 && !std::ptr::eq(s, slot);
        let Some(c) = open.lock().unwrap().close_longest_waiting(eligible) else { return false };
        bodies.release(&c.slot.body);
        closed.push(c);
    }
}

/// Counts `answer`, over [`SMALL_ANSWER`], in the port's budget of answers until the
/// socket has taken all of it (its bytes then carry the count, given back when hyper
/// drops them). When it does not fit, the connection whose answer has waited longest on
/// its client (since the socket last took some of it) is closed and its answer dropped,
/// until it does: clients that read large answers slowly cannot keep one that reads at
/// once from its own. The answer is sent whatever happens, since the call it answers was
/// made: when no other connection holding an answer is left to close (those held are of
/// connections already closing, which give them back as they end), it is counted over
/// the budget.
fn hold_answer(port: &Port, slot: &Arc<Slot>, answer: &mut Answer) {
    let len = answer.len();
    if len <= SMALL_ANSWER {
        return;
    }
    loop {
        if port.answers.grow(&slot.answer, len) {
            break;
        }
        let eligible = |s: &Slot| s.answer.load(Ordering::SeqCst) > 0 && !std::ptr::eq(s, &**slot);
        let Some(c) = port.open.lock().unwrap().close_longest_waiting(eligible) else {
            port.answers.grow_past(&slot.answer, len);
            break;
        };
        let released = port.answers.release(&c.slot.answer);
        c.close();
        let (p, peer, to) = (&port.addr, c.slot.peer, slot.peer);
        if let Some(n) = port.shed("answers_full", peer.ip()) {
            let more = crate::refusals::left_out_as(n, "closed");
            warn!(
                port = %p,
                %peer,
                reason = "answers_full",
                "HTTP port {p}: answers being sent hold its {} MiB: closed the connection to {peer}, whose answer of {:.1} MiB had waited {:.1} s on its client, to send one of {:.1} MiB to {to}{more}",
                port.limits.max_answers_held >> 20,
                released as f64 / (1 << 20) as f64,
                c.waited.as_secs_f64(),
                len as f64 / (1 << 20) as f64,
            );
        }
    }
    if let Some(data) = answer.data.take() {
        answer.data = Some(Bytes::from_owner(Counted { data, budget: port.answers.clone(), slot: slot.clone(), bytes: len }));
    }
}

/// An answer's bytes counted in the port's budget of answers, given back when hyper
/// drops them: once the socket has taken them all, or with the connection.
struct Counted {
    data: Bytes,
    budget: Arc<Budget>,
    slot: Arc<Slot>,
    bytes: usize,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.budget.give_back(&self.slot.answer, self.bytes);
    }
}

/// One request's body in the port's budget of bodies, given back on drop.
struct Held<'a> {
    port: &'a Port,
    slot: &'a Slot,
    /// Bytes counted so far (as the request's reader sees them).
    bytes: usize,
}

impl Held<'_> {
    /// Counts `more` bytes, closing stalled bodies to make room; `false` when the budget
    /// cannot take them.
    fn grow(&mut self, more: usize) -> bool {
        if more == 0 {
            // (A request without a body touches nothing shared.)
            return true;
        }
        let Held { port, slot, .. } = *self;
        let mut closed = Vec::new();
        let grown = hold_more(&port.open, &port.bodies, slot, more, &mut closed);
        for c in closed {
            c.close();
            let (p, peer, at) = (&port.addr, c.slot.peer, slot.peer);
            if let Some(n) = port.shed("bodies_full", peer.ip()) {
                let more = crate::refusals::left_out_as(n, "closed");
                warn!(
                    port = %p,
                    %peer,
                    reason = "bodies_full",
                    "HTTP port {p}: request bodies hold its {} MiB: closed the connection from {peer}, whose body had waited {:.1} s on its client, to take one from {at}{more}",
                    port.limits.max_bodies_held >> 20,
                    c.waited.as_secs_f64()
                );
            }
        }
        if grown {
            self.bytes += more;
        }
        grown
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.port.bodies.release(&self.slot.body);
        }
    }
}

async fn route(req: Request<Incoming>, port: &Port, slot: &Slot) -> Response {
    let Port { registry, routes, .. } = port;
    let path = req.uri().path().to_string();
    let get = req.method() == Method::GET;
    if routes.probes {
        match path.as_str() {
            "/healthz" | "/readyz" | "/metrics" if !get => return method_not_allowed("GET"),
            "/healthz" => return text(200, "ok\n"),
            "/readyz" if registry.is_ready() => return text(200, "ready\n"),
            "/readyz" => return text(503, "not ready: finding the cluster, or leaving it\n"),
            "/metrics" => {
                let members = registry.membership().members().len();
                let body = crate::metrics::global().render(members, &registry.instances_by_kind());
                return response(200, "application/openmetrics-text; version=1.0.0; charset=utf-8", body);
            }
            _ => {}
        }
    }
    let no_route = || json_response(404, json!({ "error": "no such route", "path": path }));
    if !routes.gateway {
        return no_route();
    }
    let Some(segments) = segments(&path) else {
        return json_response(400, json!({ "error": "a path segment is not UTF-8 once percent-decoded" }));
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let post = req.method() == Method::POST;
    let allow = match segments.as_slice() {
        ["v1", "workers"] => "GET",
        ["v1", "workers", _, _] | ["v1", "workers", _, _, "call"] => "POST",
        _ => return no_route(),
    };
    if (allow == "GET" && !get) || (allow == "POST" && !post) {
        return method_not_allowed(allow);
    }
    if let Some(token) = &routes.token {
        if !authorized(&req, token) {
            crate::metrics::global().gateway_unauthorized();
            let (p, peer) = (&port.addr, slot.peer);
            if let Some(n) = port.logged("unauthorized", peer.ip()) {
                warn!(port = %p, %peer, reason = "unauthorized", "HTTP port {p}: refused a gateway request from {peer} without the right bearer token{}", left_out(n));
            }
            let mut r = json_response(401, json!({ "error": "unauthorized", "reason": "this gateway needs `Authorization: Bearer TOKEN`" }));
            r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    if let ["v1", "workers", kind, key, ..] = segments.as_slice() {
        if let Err(e) = WorkerName::check(kind, key) {
            return json_response(400, json!({ "error": "bad worker name", "reason": e.to_string() }));
        }
    }
    let timeout = match call_timeout(req.uri().query()) {
        Ok(t) => t,
        Err(reason) => return json_response(400, json!({ "error": "bad timeout_ms", "reason": reason })),
    };
    let call_id = match req.headers().get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(id)) => match crate::registry::calls::check_id(id) {
            Ok(()) => Some(id.to_string()),
            Err(why) => return json_response(400, json!({ "error": "bad Idempotency-Key", "reason": why })),
        },
        Some(Err(_)) => return json_response(400, json!({ "error": "bad Idempotency-Key", "reason": "not visible ASCII" })),
    };
    // A caller's W3C `traceparent` makes the call part of its trace (when tracing is on);
    // a malformed one is ignored, as the spec says.
    let traceparent = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceContext::from_traceparent);
    // The body counts against the port's budget until the request is answered.
    // (Refused with its body not read whole, the connection ends as `handle` says.)
    let (body, _held) = match read_body(req.into_body(), port, slot).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let ["v1", "workers", _, _] = segments.as_slice() {
        if body.len() > crate::registry::MAX_ARGS {
            let reason = crate::registry::args_too_large(body.len());
            return json_response(413, json!({ "error": "args too large", "reason": reason, "max": crate::registry::MAX_ARGS }));
        }
    }
    if !slot.answering() {
        // Closed to make room while its request arrived: nothing is started.
        return made_room();
    }
    match segments.as_slice() {
        ["v1", "workers", kind, key, "call"] => {
            let mut span = telemetry::span(
                "POST /v1/workers/{kind}/{key}/call",
                telemetry::Kind::Server,
                traceparent,
                Some(&WorkerName::new(*kind, *key).to_string()),
                None,
            );
            let result = registry.call_traced(kind, key, body.to_vec(), call_id.as_deref(), span.as_ref().map(telemetry::Span::context), timeout).await;
            if let (Some(span), Err(e)) = (span.as_mut(), &result) {
                span.fail(e.to_string());
            }
            drop(span);
            match result {
                Ok(reply) => response(200, "application/octet-stream", reply),
                Err(e) => {
                    let status = match e {
                        CallError::NotFound => 404,
                        CallError::Timeout => 504,
                        // Sent, and its node went down before it answered: it may have
                        // been applied, as a proxy says of an upstream that failed mid-request.
                        CallError::Unavailable(_) if e.in_doubt() => 502,
                        CallError::Unavailable(_) => 503,
                        CallError::Failed(_) => 500,
                    };
                    json_response(status, call_error_json(&e, &WorkerName::new(*kind, *key).to_string()))
                }
            }
        }
        ["v1", "workers", kind, key] => match registry.start_worker(kind, key, body.to_vec()).await {
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
        _ => {
            let nodes: Vec<Value> = registry.list_all().await.into_iter().map(|(node, workers)| json!({ "node": node, "workers": workers })).collect();
            json_response(200, json!({ "nodes": nodes }))
        }
    }
}

/// A call's timeout from the query: `timeout_ms=N` (the first, if given twice), or 5 s
/// without one. A value that is not a whole number of milliseconds is refused rather
/// than quietly replaced by the default, as Kubernetes refuses a bad `timeoutSeconds`.
fn call_timeout(query: Option<&str>) -> Result<Duration, String> {
    match query.unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("timeout_ms=")) {
        None => Ok(Duration::from_secs(5)),
        Some(v) => v.parse::<u64>().map(Duration::from_millis).map_err(|e| {
            // The value is echoed back, but no more of it than a person needs to see it.
            let shown: String = v.chars().take(32).collect();
            let more = if shown.len() < v.len() { "…" } else { "" };
            format!("`{shown}{more}`: {e}; give whole milliseconds, e.g. timeout_ms=2000")
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's place, waiting on its client since `since` ns (or [`ANSWERING`]).
    fn conn(open: &mut Open, since: u64) -> Arc<Slot> {
        let (_, slot, _) = open.admit("127.0.0.1:1".parse().unwrap()).expect("room");
        slot.state.store(since, Ordering::SeqCst);
        slot
    }

    #[test]
    fn bodies_count_until_answered_and_the_longest_waiting_body_makes_room() {
        let open = Mutex::new(Open::new(100, Gauge::default()));
        let bodies = Budget::new(100);
        let (a, b, c, d) = {
            let mut o = open.lock().unwrap();
            (conn(&mut o, 10), conn(&mut o, 30), conn(&mut o, ANSWERING), conn(&mut o, 50))
        };
        let mut closed = Vec::new();
        assert!(
            hold_more(&open, &bodies, &a, 30, &mut closed) && hold_more(&open, &bodies, &b, 30, &mut closed) && hold_more(&open, &bodies, &c, 30, &mut closed)
        );
        assert_eq!(bodies.held.load(Ordering::SeqCst), 90);
        // d's 20 do not fit: a's body has waited longest (since 10) and is closed; b's
        // (since 30) is kept.
        assert!(hold_more(&open, &bodies, &d, 20, &mut closed));
        assert_eq!(closed.len(), 1);
        assert!(Arc::ptr_eq(&closed[0].slot, &a));
        assert_eq!(a.state.load(Ordering::SeqCst), CLOSING);
        assert_eq!((a.body.load(Ordering::SeqCst), bodies.held.load(Ordering::SeqCst)), (0, 80), "a's 30 given back");
        assert!(!hold_more(&open, &bodies, &a, 1, &mut closed), "a closed connection takes no more");
        // 60 more for d: b goes too; then c's body, being answered, is all that is left.
        assert!(!hold_more(&open, &bodies, &d, 60, &mut closed));
        assert_eq!(closed.len(), 2);
        assert!(Arc::ptr_eq(&closed[1].slot, &b));
        assert_eq!(c.state.load(Ordering::SeqCst), ANSWERING, "a request being answered keeps its body");
        assert_eq!(bodies.held.load(Ordering::SeqCst), 50);
        // Given back once, whoever gives it back first.
        assert_eq!(bodies.release(&c.body), 30);
        assert_eq!(bodies.release(&c.body), 0);
        assert_eq!(bodies.release(&a.body), 0);
        assert_eq!(bodies.release(&d.body), 20);
        assert_eq!(bodies.held.load(Ordering::SeqCst), 0);
        assert_eq!(open.lock().unwrap().conns.len(), 2, "a and b left the port");
    }

    #[test]
    fn an_answer_is_given_back_once_by_its_bytes_or_by_whoever_closed_its_connection() {
        let answers = Budget::new(100);
        let (a, b) = (AtomicUsize::new(0), AtomicUsize::new(0));
        assert!(answers.grow(&a, 60) && !answers.grow(&b, 50), "60 + 50 do not fit in 100");
        assert!(answers.grow(&b, 40));
        // a's connection is closed to make room: its share is given back then, and its
        // bytes, dropped later with the connection, give back nothing more.
        assert_eq!(answers.release(&a), 60);
        answers.give_back(&a, 60);
        assert_eq!(answers.held.load(Ordering::SeqCst), 40);
        // b's bytes are sent: given back by their own count.
        answers.give_back(&b, 40);
        assert_eq!((b.load(Ordering::SeqCst), answers.held.load(Ordering::SeqCst)), (0, 0));
    }

    #[test]
    fn a_client_that_reads_waits_from_then_and_one_being_answered_or_closing_stays_so() {
        let mut open = Open::new(10, Gauge::default());
        let (waiting, answering, closing) = (conn(&mut open, 10), conn(&mut open, ANSWERING), conn(&mut open, CLOSING));
        for slot in [&waiting, &answering, &closing] {
            slot.progressed();
        }
        let since = waiting.state.load(Ordering::SeqCst);
        assert!(since > 10 && since < CLOSING, "{since}");
        assert_eq!(answering.state.load(Ordering::SeqCst), ANSWERING);
        assert_eq!(closing.state.load(Ordering::SeqCst), CLOSING);
    }

    #[test]
    fn the_gauge_counts_what_is_open_as_connections_come_are_closed_for_room_and_end() {
        let gauge = Gauge::default();
        let mut open = Open::new(2, gauge.clone());
        let a = conn(&mut open, 10);
        let _b = conn(&mut open, 20);
        assert_eq!(gauge.get(), 2);
        // Full: the newcomer closes `a`, the longest waiting, and takes its place.
        let (_, _c, closed) = open.admit("127.0.0.1:2".parse().unwrap()).expect("room made");
        assert!(std::ptr::eq(&*closed.expect("one closed").slot, &*a));
        assert_eq!(gauge.get(), 2);
        let last = open.next - 1;
        assert!(open.remove(last).is_some());
        assert_eq!(gauge.get(), 1);
        // (A connection already closed for room leaves nothing more when its task ends.)
        assert!(open.remove(0).is_none());
        assert_eq!(gauge.get(), 1);
    }

    #[test]
    fn a_call_timeout_is_whole_milliseconds_or_the_default_and_anything_else_is_refused() {
        assert_eq!(call_timeout(None), Ok(Duration::from_secs(5)));
        assert_eq!(call_timeout(Some("")), Ok(Duration::from_secs(5)));
        assert_eq!(call_timeout(Some("x=1&y")), Ok(Duration::from_secs(5)));
        assert_eq!(call_timeout(Some("timeout_ms=300")), Ok(Duration::from_millis(300)));
        assert_eq!(call_timeout(Some("a=b&timeout_ms=0&timeout_ms=9")), Ok(Duration::ZERO));
        assert_eq!(call_timeout(Some("timeout_ms=18446744073709551615")), Ok(Duration::from_millis(u64::MAX)));
        for bad in ["timeout_ms=", "timeout_ms=abc", "timeout_ms=1.5", "timeout_ms=-1", "timeout_ms=2s", "timeout_ms=18446744073709551616"] {
            let why = call_timeout(Some(bad)).expect_err(bad);
            assert!(why.contains("whole milliseconds"), "{bad}: {why}");
        }
        let why = call_timeout(Some(&format!("timeout_ms={}", "9".repeat(10_000)))).unwrap_err();
        assert!(why.len() < 200 && why.contains("…`"), "{why}");
    }
}
