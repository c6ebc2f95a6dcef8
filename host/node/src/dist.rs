//! Distribution: TCP connections between nodes, one per pair.
//!
//! Shaped like mini-redis' server: [`Dist::serve`] accepts connections (a semaphore
//! caps handshakes in progress), each connection runs a reader and a writer task, and
//! [`Dist::leave`] tells every connection to say goodbye and waits for them to end.
//!
//! - Handshake: the state machines of [`wasmnode_proto::handshake`] (Noise `NNpsk0`
//!   keyed by the cookie), driven over the socket with a deadline; every byte after it
//!   travels in sealed records ([`wasmnode_proto::seal`]), so a relay on the path can
//!   neither read, change nor inject a frame. With `[node.tls]`, a TLS 1.3 handshake
//!   with certificates on both sides comes first and the cookie's handshake runs inside
//!   it; frames then travel in TLS records ([`crate::tls`]). An acceptor tells the two
//!   kinds of dialer apart by their first byte and refuses the other kind in words. The acceptor decides, under one lock and
//!   after the peer proved it holds this handshake's keys, whether to keep the
//!   connection: a name already connected is refused, and when two nodes dial each other at once the connection dialled by the
//!   node with the smaller name wins (each side applies the same rule, so exactly one
//!   survives).
//! - Writer: batches whatever is queued into one `write`, sends a heartbeat when the
//!   connection has been quiet for a heartbeat interval, and sends large frames as
//!   fragments, one fragment at a time between small frames. A frame someone waits for
//!   (request, reply, ping, pong) skips the queue when it is empty: its sender writes it
//!   (see [`Peer::send`]), which saves a task wake-up on each side of a round trip.
//! - Reader: decodes frames without copying payloads; any bytes reset the heartbeat
//!   timer; silence longer than the timeout is a node-down ("heartbeat timeout").
//!   Requests are first offered to the [`FastRequests`] hook (a call to a worker running
//!   here goes straight to its mailbox); the rest go up the ordered event channel.
//!   A malformed or oversized frame closes this connection only, with the reason.
//!
//! Connection ups, downs (with their [`DownReason`]) and the frames the layer above
//! cares about go out on one ordered channel of [`DistEvent`]s; `membership` consumes it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};
use wasmnode_proto::frame::{self, Fragmenter, Reassembler, DEFAULT_MAX_FRAME, MAX_MESSAGE};
use wasmnode_proto::handshake::{Acceptor, Dialer, Identity, Message, Refusal};
use wasmnode_proto::seal::{Opener, Sealer, RECORD_HEADER, TAG_LEN};
use wasmnode_proto::{Error as ProtoError, Frame, Service, TraceContext};

use crate::admission::{self, HalfOpen};
use crate::refusals::{self, RefusalLog};
use crate::tls::{self, Tls};

/// Why a connection ended; every node-down carries one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// The socket closed or failed (the peer died, or its host dropped the connection).
    ConnectionClosed,
    /// Nothing arrived for longer than the heartbeat timeout (the peer hangs or is cut off).
    HeartbeatTimeout,
    /// The peer said it is leaving (SIGTERM): not a failure.
    Left,
    /// The peer sent something this node cannot accept; the connection was closed.
    ProtocolError(String),
    /// This node closed the connection (it is leaving, or shutting down).
    LocalShutdown,
    /// The peer did not read: more than this many bytes waited to be sent to it.
    NotReading(usize),
}

impl DownReason {
    /// Short stable name, for JSON and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            DownReason::ConnectionClosed => "connection_closed",
            DownReason::HeartbeatTimeout => "heartbeat_timeout",
            DownReason::Left => "left",
            DownReason::ProtocolError(_) => "protocol_error",
            DownReason::LocalShutdown => "local_shutdown",
            DownReason::NotReading(_) => "not_reading",
        }
    }
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownReason::ConnectionClosed => write!(f, "connection closed"),
            DownReason::HeartbeatTimeout => write!(f, "heartbeat timeout"),
            DownReason::Left => write!(f, "left the cluster"),
            DownReason::ProtocolError(why) => write!(f, "protocol error: {why}"),
            DownReason::LocalShutdown => write!(f, "local shutdown"),
            DownReason::NotReading(limit) => write!(f, "not reading: more than {limit} bytes waited to be sent to it"),
        }
    }
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    #[error(transparent)]
    BadName(#[from] crate::name::NameError),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("handshake failed: {0}")]
    Handshake(ProtoError),
    #[error("handshake failed: {0}")]
    Io(std::io::Error),
    #[error("dialled {dialled} but {answered} answered")]
    WrongNode { dialled: String, answered: String },
    #[error("a dial to this node is already in progress")]
    InProgress,
    #[error("this node is leaving")]
    Leaving,
    #[error("{0}")]
    Tls(String),
}

// Not `#[from]`: that would make the error its own source, and `{:#}` print it twice.
impl From<ProtoError> for DialError {
    fn from(e: ProtoError) -> DialError {
        DialError::Handshake(e)
    }
}

impl From<std::io::Error> for DialError {
    fn from(e: std::io::Error) -> DialError {
        DialError::Io(e)
    }
}

impl DialError {
    /// The failure's cause, for metrics.
    pub fn cause(&self) -> &'static str {
        match self {
            DialError::Handshake(ProtoError::CookieMismatch) => "cookie_mismatch",
            DialError::Handshake(ProtoError::Refused { code: Refusal::CookieMismatch, .. }) => "cookie_mismatch",
            DialError::Handshake(ProtoError::Refused { code: Refusal::VersionMismatch, .. }) => "version",
            DialError::Handshake(ProtoError::Refused { code: Refusal::ModeMismatch | Refusal::Certificate, .. }) | DialError::Tls(_) => "tls",
            DialError::Handshake(ProtoError::Refused { .. }) => "refused",
            DialError::Handshake(ProtoError::VersionMismatch { .. }) => "version",
            DialError::Handshake(_) | DialError::WrongNode { .. } => "protocol",
            DialError::Timeout => "timeout",
            _ => "io",
        }
    }

    /// A refusal that is part of the protocol (simultaneous connect), not a failure.
    pub fn is_tie_break(&self) -> bool {
        matches!(self, DialError::Handshake(ProtoError::Refused { code: Refusal::SimultaneousConnect, .. }))
    }
}

/// What the distribution layer tells the layer above, in order.
#[derive(Debug)]
pub enum DistEvent {
    /// A peer passed the handshake and is connected.
    Up(Peer),
    /// A peer's connection ended.
    Down(Peer, DownReason),
    /// A peer announced it is leaving; its connection stays open while it hands work over.
    Leaving(Peer),
    /// A frame for the layer above (members, requests, one-way messages).
    Frame(Peer, Frame),
}

/// Timing and identity of this node's distribution.
#[derive(Debug, Clone)]
pub struct DistConfig {
    pub name: String,
    pub hidden: bool,
    pub cookie: Vec<u8>,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_frame: usize,
    /// Local address outgoing connections come from: the listen IP when it is a
    /// specific one, so peers see (and log) this node's own address.
    pub source_ip: Option<std::net::IpAddr>,
    /// Whether `Send` frames go out as [`DistEvent::Frame`]s (else they are only counted).
    pub deliver_sends: bool,
    /// DNS server for peers' host names; the system resolver (getaddrinfo) when unset.
    pub nameserver: Option<SocketAddr>,
    /// Bytes that may wait to be sent to one peer; past it the peer is disconnected as
    /// not reading (OTP's `dist_buf_busy_limit`, there a point where senders block).
    pub max_backlog: usize,
    /// Mutual TLS under the handshake (`[node.tls]`); without it, Noise alone.
    pub tls: Option<Arc<Tls>>,
}

/// [`DistConfig::max_backlog`] unless configured: a whole largest message, and then some.
pub const DEFAULT_MAX_BACKLOG: usize = 2 * MAX_MESSAGE;

impl DistConfig {
    /// Defaults matching the config file's defaults.
    pub fn new(name: impl Into<String>, cookie: Vec<u8>) -> DistConfig {
        DistConfig {
            name: name.into(),
            hidden: false,
            cookie,
            heartbeat_interval: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_millis(1500),
            connect_timeout: Duration::from_secs(3),
            max_frame: DEFAULT_MAX_FRAME,
            source_ip: None,
            deliver_sends: false,
            nameserver: None,
            max_backlog: DEFAULT_MAX_BACKLOG,
            tls: None,
        }
    }
}

enum Out {
    Frame(Frame),
    /// The unwritten end of a frame a sender began writing itself (see [`Peer::send`]).
    Raw(Bytes),
    Close(DownReason),
}

/// Who waits for the replies to one request.
enum Waiting {
    /// A request or ping: one reply (a oneshot: no channel block to allocate per call).
    Once(oneshot::Sender<Frame>),
    /// A watch: replies until the connection ends.
    Stream(mpsc::UnboundedSender<Frame>),
}

/// Answers a request on the reader of the connection it came on, when it can answer at
/// once without waiting (true: handled; false: it goes on as a [`DistEvent::Frame`]).
/// Calls to workers running here take this path: the ordered event channel and the
/// task it would spawn are two hops a remote call does not need.
pub type FastRequests = Arc<dyn Fn(&Peer, u64, Option<TraceContext>, &Bytes) -> bool + Send + Sync>;

/// A connected peer: a cheap handle to its connection.
#[derive(Clone)]
pub struct Peer(Arc<PeerInner>);

struct PeerInner {
    name: String,
    addr: SocketAddr,
    hidden: bool,
    since: SystemTime,
    id: u64,
    tx: mpsc::UnboundedSender<Out>,
    /// Frames handed to the writer task and not yet written by it. While there are
    /// any, a new frame queues behind them; when there are none, its sender writes it.
    queued: AtomicUsize,
    /// Payload bytes of the frames handed to the writer task and not yet taken into a
    /// write; past `max_backlog` the connection ends ([`DownReason::NotReading`]).
    backlog: AtomicUsize,
    max_backlog: usize,
    /// Set when the backlog passed its limit: the reason the connection ended.
    overflowed: std::sync::atomic::AtomicBool,
    /// The socket's write half while the connection runs. A sender holds this lock while
    /// it writes a frame itself or queues one, so frames keep the order they were sent in.
    direct: Mutex<Option<Arc<OwnedWriteHalf>>>,
    /// Seals every byte this side sends. Whoever writes seals, at the moment it writes:
    /// a sender under `direct` with nothing queued, else the writer task (records must
    /// reach the wire in the order they were sealed).
    sealer: Seal,
    /// When bytes last went out, in nanoseconds since `born`: heartbeats fill silences.
    last_write: AtomicU64,
    born: Instant,
    /// Callers waiting for `Reply`/`Pong` frames, by request id.
    pending: Mutex<HashMap<u64, Waiting>>,
    next_request: AtomicU64,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Peer({} #{})", self.0.name, self.0.id)
    }
}

impl Peer {
    pub fn name(&self) -> &str {
        &self.0.name
    }
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
    pub fn hidden(&self) -> bool {
        self.0.hidden
    }
    /// When the connection came up.
    pub fn since(&self) -> SystemTime {
        self.0.since
    }
    /// Identifies this connection among all of this node's connections, ever.
    pub fn conn_id(&self) -> u64 {
        self.0.id
    }

    /// Sends a frame; false when the connection is gone.
    ///
    /// A frame someone waits for (a request with an id, a reply, a ping or pong) is
    /// written here, by its sender, with one non-blocking write when nothing is waiting
    /// for the writer task: a reply leaves from the worker that made it and a request from
    /// its caller, without waking another task first (a remote worker call went from 58
    /// to 47 µs pinned with this and `Registry::handle_rpc_fast`; docs/benchmarks.md).
    /// Everything else, and every frame while others are queued (a large message in
    /// fragments, a full socket buffer), queues for the writer, which batches them.
    pub fn send(&self, frame: Frame) -> bool {
        let awaited = match frame {
            Frame::Request { id, .. } => id != 0,
            Frame::Reply { .. } | Frame::Ping { .. } | Frame::Pong { .. } => true,
            _ => false,
        };
        let direct = self.0.direct.lock().unwrap();
        if let Some(wr) = direct.as_ref().filter(|_| awaited) {
            if self.0.queued.load(Ordering::Acquire) == 0 && frame.payload_len() < ZERO_COPY_MIN {
                let mut plain = BytesMut::with_capacity(frame::HEADER_LEN + 32 + frame.payload_len());
                frame.encode(&mut plain);
                let mut buf = BytesMut::with_capacity(plain.len() + RECORD_HEADER + TAG_LEN);
                self.0.sealer.seal(&plain, &mut buf);
                match wr.try_write(&buf) {
                    Ok(n) if n == buf.len() => {
                        self.wrote();
                        return true;
                    }
                    Ok(n) => {
                        // The socket took part of it: the writer sends the rest, before anything else.
                        self.wrote();
                        self.0.queued.fetch_add(1, Ordering::AcqRel);
                        return self.0.tx.send(Out::Raw(buf.split_off(n).freeze())).is_ok();
                    }
                    // Full (or failing: the writer finds out and ends the connection): queue it.
                    Err(_) => {}
                }
            }
        }
        let n = frame.payload_len();
        if self.0.backlog.fetch_add(n, Ordering::AcqRel) + n > self.0.max_backlog {
            self.0.backlog.fetch_sub(n, Ordering::AcqRel);
            self.overflow(direct.as_ref());
            return false;
        }
        self.0.queued.fetch_add(1, Ordering::AcqRel);
        self.0.tx.send(Out::Frame(frame)).is_ok()
    }

    /// Ends a connection whose peer does not read what is sent to it: its socket shuts
    /// down now (the writer may be stuck in a write to it), and the down says why.
    fn overflow(&self, wr: Option<&Arc<OwnedWriteHalf>>) {
        if self.0.overflowed.swap(true, Ordering::AcqRel) {
            return;
        }
        warn!(peer = %self.0.name, "disconnecting {}: it does not read (more than {} bytes waited to be sent to it)", self.0.name, self.0.max_backlog);
        if let Some(wr) = wr {
            // SAFETY: shutdown(2) on the socket's own descriptor, which `wr` keeps open.
            unsafe {
                libc::shutdown(AsRef::<TcpStream>::as_ref(&**wr).as_raw_fd(), libc::SHUT_RDWR);
            }
        }
    }

    fn wrote(&self) {
        self.0.last_write.store(self.0.born.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Time since bytes last went out on this connection.
    fn quiet_for(&self) -> Duration {
        self.0.born.elapsed().saturating_sub(Duration::from_nanos(self.0.last_write.load(Ordering::Relaxed)))
    }

    /// Closes the connection after what is queued; the down event carries `reason`.
    pub fn close(&self, reason: DownReason) {
        // Counted as queued: nothing a sender writes itself may follow the close.
        let _direct = self.0.direct.lock().unwrap();
        self.0.queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.0.tx.send(Out::Close(reason));
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        self.0.tx.closed().await
    }

    /// Sends a request and waits for its reply.
    pub async fn request(&self, service: Service, body: Bytes, timeout: Duration) -> std::io::Result<Bytes> {
        self.request_traced(service, body, None, timeout).await
    }

    /// [`Peer::request`], carrying the caller's trace context when it has one.
    pub async fn request_traced(&self, service: Service, body: Bytes, trace: Option<TraceContext>, timeout: Duration) -> std::io::Result<Bytes> {
        let (id, rx) = self.expect_reply();
        self.send(Frame::Request { id, service, trace, body });
        let got = tokio::time::timeout(timeout, rx).await;
        if got.is_err() {
            self.0.pending.lock().unwrap().remove(&id);
        }
        match got {
            Ok(Ok(Frame::Reply { body, .. })) => Ok(body),
            Ok(_) => Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "connection closed")),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply in time")),
        }
    }

    /// Sends a request whose replies keep coming (a watch); the stream ends with the connection.
    pub fn subscribe(&self, service: Service, body: Bytes) -> mpsc::UnboundedReceiver<Frame> {
        let id = self.0.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.0.pending.lock().unwrap().insert(id, Waiting::Stream(tx));
        self.send(Frame::Request { id, service, trace: None, body });
        rx
    }

    /// Round trip: sends `Ping` and returns the peer's `Pong` payload.
    pub async fn ping(&self, payload: Bytes) -> std::io::Result<Bytes> {
        let (id, rx) = self.expect_reply();
        self.send(Frame::Ping { id, payload });
        match rx.await {
            Ok(Frame::Pong { payload, .. }) => Ok(payload),
            _ => Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "connection closed")),
        }
    }

    fn expect_reply(&self) -> (u64, oneshot::Receiver<Frame>) {
        let id = self.0.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.0.pending.lock().unwrap().insert(id, Waiting::Once(tx));
        (id, rx)
    }

    /// Completes this node's request `id` on this connection with `body`, as if the
    /// peer's reply frame had come: for a reply the peer carried inside another request
    /// (a durable call's reply, riding with the copy of its state). An id nobody waits
    /// for any more is ignored, as a late reply is.
    pub fn deliver_reply(&self, id: u64, body: Bytes) {
        self.route_reply(id, Frame::Reply { id, body });
    }

    fn route_reply(&self, id: u64, frame: Frame) {
        let mut pending = self.0.pending.lock().unwrap();
        match pending.get(&id) {
            Some(Waiting::Stream(tx)) => {
                let _ = tx.send(frame);
            }
            Some(Waiting::Once(_)) => {
                if let Some(Waiting::Once(tx)) = pending.remove(&id) {
                    let _ = tx.send(frame);
                }
            }
            None => {}
        }
    }
}

struct State {
    peers: HashMap<String, Peer>,
    dialing: HashSet<String>,
    /// Set by `leave`: no new connections either way.
    closing: bool,
}

struct Inner {
    cfg: DistConfig,
    creation: u64,
    events: mpsc::UnboundedSender<DistEvent>,
    state: Mutex<State>,
    /// Refused handshakes by address, so that a loop of them logs one line per window.
    refusals: Mutex<RefusalLog>,
    next_conn: AtomicU64,
    /// Number of live connection tasks, so `leave` can wait for them to end.
    live: watch::Sender<usize>,
    /// Tried first for every request (see [`FastRequests`]).
    fast_requests: std::sync::OnceLock<FastRequests>,
}

/// This node's distribution endpoint.
#[derive(Clone)]
pub struct Dist(Arc<Inner>);

impl Dist {
    /// A distribution endpoint; its events go to `events`.
    pub fn new(cfg: DistConfig, events: mpsc::UnboundedSender<DistEvent>) -> Dist {
        Dist(Arc::new(Inner {
            cfg,
            creation: rand::random(),
            events,
            state: Mutex::new(State { peers: HashMap::new(), dialing: HashSet::new(), closing: false }),
            refusals: Mutex::new(RefusalLog::default()),
            next_conn: AtomicU64::new(1),
            live: watch::Sender::new(0),
            fast_requests: std::sync::OnceLock::new(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.0.cfg.name
    }

    fn identity(&self) -> Identity {
        Identity { name: self.0.cfg.name.clone(), flags: if self.0.cfg.hidden { wasmnode_proto::handshake::FLAG_HIDDEN } else { 0 }, creation: self.0.creation }
    }

    /// Sets the handler requests are offered to first, on their connection's reader.
    pub fn set_fast_requests(&self, handler: FastRequests) {
        let _ = self.0.fast_requests.set(handler);
    }

    /// The connected peer with this name, if any.
    pub fn peer(&self, name: &str) -> Option<Peer> {
        self.0.state.lock().unwrap().peers.get(name).cloned()
    }

    /// Every connected peer, hidden ones included.
    pub fn peers(&self) -> Vec<Peer> {
        self.0.state.lock().unwrap().peers.values().cloned().collect()
    }

    /// Whether a dial to `name` is in progress.
    pub fn is_dialing(&self, name: &str) -> bool {
        self.0.state.lock().unwrap().dialing.contains(name)
    }

    /// Accepts connections until the listener fails; spawn it.
    /// It never waits for a handshake slot: a connection past the caps drops the oldest
    /// half-open one of its source, or of all (see [`admission`]).
    pub async fn serve(self, listener: TcpListener) {
        let half_open: Arc<Mutex<HalfOpen<tokio::task::AbortHandle>>> = Arc::new(Mutex::new(HalfOpen::new(admission::PER_SOURCE, admission::TOTAL)));
        let mut dropped_log = RefusalLog::default();
        loop {
            let (stream, addr) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (id, dropped) = half_open.lock().unwrap().admit(addr.ip());
            if !dropped.is_empty() {
                for h in &dropped {
                    h.abort();
                }
                crate::metrics::global().handshake_failed("dropped");
                if let Some(n) = dropped_log.refused(addr.ip(), Instant::now()) {
                    warn!(peer = %addr, "too many handshakes in progress: dropped the oldest unfinished one to admit {addr}{}", refusals::left_out(n));
                }
            }
            let dist = self.clone();
            let slot = half_open.clone();
            let task = tokio::spawn(async move {
                let timeout = dist.0.cfg.connect_timeout;
                let result = tokio::time::timeout(timeout, dist.accept(stream, addr, &slot, id)).await;
                slot.lock().unwrap().finish(id);
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        crate::metrics::global().handshake_failed(e.cause());
                        debug!("handshake from {addr} failed: {e}");
                    }
                    Err(_) => {
                        crate::metrics::global().handshake_failed("timeout");
                        debug!("handshake from {addr} timed out");
                    }
                }
            });
            if let Some(late) = half_open.lock().unwrap().set_handle(id, task.abort_handle()) {
                late.abort();
            }
        }
    }

    /// Runs the accepting side of a handshake; `id` is its place among the half-open
    /// connections, left once the peer has proved the cookie (dropped before: it stops).
    async fn accept(&self, mut stream: TcpStream, addr: SocketAddr, half_open: &Mutex<HalfOpen<tokio::task::AbortHandle>>, id: u64) -> Result<(), DialError> {
        stream.set_nodelay(true)?;
        let mut wire = match self.accept_tls(&mut stream, addr).await? {
            Some(conn) => Wire::tls(conn)?,
            None => Wire::plain(),
        };
        let hello = wire.read(&mut stream).await?;
        let (acceptor, challenge) = match Acceptor::on_hello_bound(&self.identity(), &self.0.cfg.cookie, hello, &wire.binding) {
            Ok(x) => x,
            Err(e) => {
                self.warn_refused(addr, &e);
                wire.write(&mut stream, &Message::Refuse { code: Refusal::for_error(&e), reason: e.to_string() }).await?;
                return Err(e.into());
            }
        };
        wire.write(&mut stream, &challenge).await?;
        let proof = wire.read(&mut stream).await?;
        let claimed = acceptor.claimed().name.clone();
        let (peer_id, mut session) = match acceptor.on_proof(proof) {
            Ok(x) => x,
            Err(e) => {
                self.warn_refused(addr, format_args!("{e} (claimed name {claimed})"));
                let _ = wire.write(&mut stream, &Message::Refuse { code: Refusal::for_error(&e), reason: e.to_string() }).await;
                return Err(e.into());
            }
        };
        // Under TLS, the dialer's certificate must name the host of the name it proved.
        if let Some(link) = &wire.tls {
            let host = crate::name::NodeName::parse(&peer_id.name).map(|n| n.host).unwrap_or_default();
            if let Err(why) = link.check_names(&host) {
                self.warn_refused(addr, format_args!("{} from {addr}: {why}", peer_id.name));
                let _ = wire
                    .write(
                        &mut stream,
                        &Message::Refuse { code: Refusal::Certificate, reason: format!("the certificate {} presented does not name {host}", peer_id.name) },
                    )
                    .await;
                return Err(DialError::Tls(why));
            }
        }
        // It holds the cookie: no longer half-open, never dropped from here on (it may
        // have been dropped just before: then it stops here, before it registers).
        if !half_open.lock().unwrap().finish(id) {
            // Counted and logged where it was dropped.
            return Ok(());
        }
        // Sealed now, as the first record of this side, before anything else can be.
        let accept = session.accept();
        let (sealer, opener) = wire.record_layer(session);
        let me = &self.0.cfg.name;
        let decision = {
            let mut st = self.0.state.lock().unwrap();
            if st.closing {
                Err((Refusal::Leaving, "this node is leaving".to_string()))
            } else if peer_id.name == *me {
                Err((Refusal::OwnName, "that is this node's own name".to_string()))
            } else if st.peers.contains_key(&peer_id.name) {
                Err((Refusal::NameInUse, format!("name {} is already connected", peer_id.name)))
            } else if st.dialing.contains(&peer_id.name) && me.as_str() < peer_id.name.as_str() {
                Err((Refusal::SimultaneousConnect, format!("simultaneous connect: keeping the connection dialled by {me}")))
            } else {
                Ok(self.register(&mut st, &peer_id, addr, sealer))
            }
        };
        match decision {
            Err((code, reason)) => {
                match code {
                    Refusal::SimultaneousConnect => debug!("refused {} from {addr}: {reason}", peer_id.name),
                    _ => {
                        if matches!(code, Refusal::NameInUse | Refusal::OwnName) {
                            crate::metrics::global().handshake_failed("name_in_use");
                        }
                        self.warn_refused(addr, &reason);
                    }
                }
                wire.write(&mut stream, &Message::Refuse { code, reason }).await?;
                Ok(())
            }
            Ok((peer, rx)) => {
                wire.write(&mut stream, &accept).await?;
                let (raw, plain) = wire.leftover();
                self.start(peer, stream, raw, plain, opener, rx);
                Ok(())
            }
        }
    }

    /// Tells a TLS dialer (its first byte opens a TLS record) from one that speaks the
    /// handshake in the clear, refuses the kind this node does not expect, and runs the
    /// TLS handshake with the other: its connection, or `None` in the clear.
    async fn accept_tls(&self, stream: &mut TcpStream, addr: SocketAddr) -> Result<Option<rustls::Connection>, DialError> {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed the connection before its handshake").into());
        }
        let speaks_tls = first[0] == tls::TLS_HANDSHAKE_BYTE;
        match (&self.0.cfg.tls, speaks_tls) {
            (None, false) => Ok(None),
            (Some(config), true) => {
                let mut conn = config.server();
                match tls::handshake(stream, &mut conn).await {
                    Ok(()) => Ok(Some(conn)),
                    Err(e) => {
                        self.warn_refused(addr, &e);
                        Err(DialError::Tls(e.to_string()))
                    }
                }
            }
            (None, true) => {
                self.warn_refused(addr, "it opened with TLS, but this node has no [node.tls] (set it on every node of the cluster, or on none)");
                refuse_other_kind(stream, "this node does not use TLS: [node.tls] is not set on it").await?;
                Err(DialError::Tls("a TLS dialer, and this node has no [node.tls]".into()))
            }
            (Some(_), false) => {
                self.warn_refused(addr, "it speaks without TLS, but this node requires TLS ([node.tls] is set here)");
                refuse_other_kind(stream, "this node requires TLS: set [node.tls] with a certificate from its CA").await?;
                Err(DialError::Tls("a dialer without TLS, and this node requires it".into()))
            }
        }
    }

    /// Logs a refused handshake, at most once per address per window (see [`refusals`]).
    fn warn_refused(&self, addr: SocketAddr, why: impl std::fmt::Display) {
        if let Some(n) = self.0.refusals.lock().unwrap().refused(addr.ip(), Instant::now()) {
            warn!("handshake refused from {addr}: {why}{}", refusals::left_out(n));
        }
    }

    /// Connects to `name` (or returns the live connection), with the configured deadline.
    pub async fn connect(&self, name: &str) -> Result<Peer, DialError> {
        {
            let mut st = self.0.state.lock().unwrap();
            if let Some(p) = st.peers.get(name) {
                return Ok(p.clone());
            }
            if st.closing {
                return Err(DialError::Leaving);
            }
            if !st.dialing.insert(name.to_string()) {
                return Err(DialError::InProgress);
            }
        }
        let result = match tokio::time::timeout(self.0.cfg.connect_timeout, self.dial(name)).await {
            Ok(r) => r,
            Err(_) => Err(DialError::Timeout),
        };
        self.0.state.lock().unwrap().dialing.remove(name);
        result
    }

    async fn dial(&self, name: &str) -> Result<Peer, DialError> {
        let target = crate::name::NodeName::parse(name).map_err(DialError::BadName)?;
        let addr = self.resolve(&target).await?;
        let mut stream = self.open(addr).await.map_err(|e| DialError::Connect(addr, e))?;
        stream.set_nodelay(true)?;
        let mut wire = match &self.0.cfg.tls {
            None => Wire::plain(),
            Some(config) => {
                let mut conn = config.client(&target.host).map_err(DialError::Tls)?;
                tls::handshake(&mut stream, &mut conn).await.map_err(|e| match e {
                    tls::HandshakeError::Refused { code, reason } => DialError::Handshake(ProtoError::Refused { code, reason }),
                    e => DialError::Tls(e.to_string()),
                })?;
                Wire::tls(conn)?
            }
        };
        let (dialer, hello) = Dialer::start_bound(&self.identity(), name, &self.0.cfg.cookie, &wire.binding)?;
        wire.write(&mut stream, &hello).await?;
        let challenge = wire.read(&mut stream).await?;
        // Checked before anything more is sent: the answer opens with this handshake's
        // keys and comes from the node dialled.
        let (proven, proof) = dialer.on_challenge(challenge).map_err(|e| match e {
            ProtoError::WrongNode { dialled, answered } => DialError::WrongNode { dialled, answered },
            e => DialError::Handshake(e),
        })?;
        wire.write(&mut stream, &proof).await?;
        let answer = wire.read(&mut stream).await?;
        let (peer_id, session) = proven.on_accept(answer)?;
        let (sealer, opener) = wire.record_layer(session);
        let registered = {
            let mut st = self.0.state.lock().unwrap();
            match st.peers.get(name) {
                // The peer's own dial won meanwhile; keep that one.
                Some(existing) => Err(existing.clone()),
                None => Ok(self.register(&mut st, &peer_id, addr, sealer)),
            }
        };
        match registered {
            Err(existing) => Ok(existing),
            Ok((peer, rx)) => {
                let (raw, plain) = wire.leftover();
                self.start(peer.clone(), stream, raw, plain, opener, rx);
                Ok(peer)
            }
        }
    }

    async fn resolve(&self, target: &crate::name::NodeName) -> Result<SocketAddr, DialError> {
        let fail = |why: String| DialError::Resolve(target.host.clone(), why);
        if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, target.port));
        }
        match self.0.cfg.nameserver {
            Some(ns) => {
                let resolver = crate::resolve::resolver(Some(ns), self.0.cfg.connect_timeout).map_err(|e| fail(e.to_string()))?;
                let ips = resolver.lookup_ip(target.host.as_str()).await.map_err(|e| fail(e.to_string()))?;
                ips.iter().next().map(|ip| SocketAddr::new(ip, target.port)).ok_or_else(|| fail("no addresses".into()))
            }
            None => tokio::net::lookup_host(target.address()).await.map_err(|e| fail(e.to_string()))?.next().ok_or_else(|| fail("no addresses".into())),
        }
    }

    async fn open(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        match self.0.cfg.source_ip {
            Some(ip) if ip.is_ipv4() == addr.is_ipv4() => {
                let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await
            }
            _ => TcpStream::connect(addr).await,
        }
    }

    fn register(&self, st: &mut State, id: &Identity, addr: SocketAddr, sealer: Seal) -> (Peer, mpsc::UnboundedReceiver<Out>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let peer = Peer(Arc::new(PeerInner {
            name: id.name.clone(),
            addr,
            hidden: id.hidden(),
            since: SystemTime::now(),
            id: self.0.next_conn.fetch_add(1, Ordering::Relaxed),
            tx,
            queued: AtomicUsize::new(0),
            backlog: AtomicUsize::new(0),
            max_backlog: self.0.cfg.max_backlog,
            overflowed: Default::default(),
            direct: Mutex::new(None),
            sealer,
            last_write: AtomicU64::new(0),
            born: Instant::now(),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
        }));
        st.peers.insert(id.name.clone(), peer.clone());
        self.0.live.send_modify(|n| *n += 1);
        if !peer.hidden() {
            crate::metrics::global().connected();
        }
        let _ = self.0.events.send(DistEvent::Up(peer.clone()));
        (peer, rx)
    }

    /// Runs the connection: `raw` holds whatever sealed bytes arrived with the handshake,
    /// `plain` what of them was opened already (under TLS).
    fn start(&self, peer: Peer, stream: TcpStream, raw: BytesMut, plain: BytesMut, opener: Open, rx: mpsc::UnboundedReceiver<Out>) {
        let dist = self.clone();
        tokio::spawn(async move {
            let (rd, wr) = stream.into_split();
            let wr = Arc::new(wr);
            *peer.0.direct.lock().unwrap() = Some(wr.clone());
            let mut writer = tokio::spawn(write_loop(peer.clone(), wr, rx, dist.0.cfg.heartbeat_interval));
            let reason = tokio::select! {
                r = read_loop(&dist, &peer, rd, raw, plain, opener) => r,
                w = &mut writer => w.unwrap_or(DownReason::ConnectionClosed),
            };
            writer.abort();
            let reason = if peer.0.overflowed.load(Ordering::Acquire) { DownReason::NotReading(peer.0.max_backlog) } else { reason };
            // Senders write no more; the socket closes once the writer task has let go.
            *peer.0.direct.lock().unwrap() = None;
            {
                let mut st = dist.0.state.lock().unwrap();
                if st.peers.get(peer.name()).is_some_and(|p| p.conn_id() == peer.conn_id()) {
                    st.peers.remove(peer.name());
                }
            }
            // Wake anyone waiting for a reply on this connection.
            peer.0.pending.lock().unwrap().clear();
            if !peer.hidden() {
                crate::metrics::global().disconnected(reason.code());
            }
            let _ = dist.0.events.send(DistEvent::Down(peer, reason));
            dist.0.live.send_modify(|n| *n -= 1);
        });
    }

    /// Tells every peer this node is leaving and refuses new connections, but keeps the
    /// existing ones (for handing work over); `leave` closes them.
    pub fn announce_leaving(&self) {
        self.0.state.lock().unwrap().closing = true;
        for peer in self.peers() {
            peer.send(Frame::Leaving);
        }
    }

    /// Tells every peer this node is leaving, closes every connection and waits (up to
    /// `deadline`) until all of them have ended.
    pub async fn leave(&self, deadline: Duration) {
        self.0.state.lock().unwrap().closing = true;
        for peer in self.peers() {
            peer.send(Frame::Leaving);
            peer.close(DownReason::LocalShutdown);
        }
        let mut live = self.0.live.subscribe();
        let _ = tokio::time::timeout(deadline, live.wait_for(|n| *n == 0)).await;
    }
}

/// What seals this side's bytes: Noise's records, or under `[node.tls]` TLS's.
enum Seal {
    Noise(Sealer),
    Tls(Arc<tls::Link>),
}

impl Seal {
    fn seal(&self, plain: &[u8], out: &mut BytesMut) {
        match self {
            Seal::Noise(s) => s.seal(plain, out),
            Seal::Tls(link) => link.seal(plain, out),
        }
    }
}

/// What opens the peer's bytes (see [`Seal`]).
enum Open {
    Noise(Opener),
    Tls(Arc<tls::Link>),
}

impl Open {
    fn open(&mut self, raw: &mut BytesMut, plain: &mut BytesMut) -> Result<(), String> {
        match self {
            Open::Noise(o) => o.open(raw, plain).map_err(|e| e.to_string()),
            Open::Tls(link) => link.open(raw, plain).map_err(|e| format!("TLS: {e}")),
        }
    }
}

/// The byte stream a handshake's messages travel: the socket itself, or TLS over it.
struct Wire {
    tls: Option<Arc<tls::Link>>,
    /// Bytes read and not yet used: messages in the clear, or TLS records not yet opened.
    raw: BytesMut,
    /// Under TLS, bytes opened and not yet used.
    plain: BytesMut,
    /// Under TLS, the value the cookie's handshake is bound to; empty without.
    binding: Vec<u8>,
}

impl Wire {
    fn plain() -> Wire {
        Wire { tls: None, raw: BytesMut::with_capacity(512), plain: BytesMut::new(), binding: Vec::new() }
    }

    fn tls(conn: rustls::Connection) -> Result<Wire, DialError> {
        let binding = tls::binding(&conn).map_err(DialError::Tls)?.to_vec();
        Ok(Wire { tls: Some(Arc::new(tls::Link::new(conn))), raw: BytesMut::with_capacity(4096), plain: BytesMut::with_capacity(512), binding })
    }

    async fn read(&mut self, stream: &mut TcpStream) -> Result<Message, DialError> {
        match &mut self.tls {
            None => read_message(stream, &mut self.raw).await,
            Some(link) => loop {
                // First what TLS holds already: the bytes that came with its handshake's
                // last flight are opened there, not left on the socket.
                link.open(&mut self.raw, &mut self.plain).map_err(|e| DialError::Tls(e.to_string()))?;
                if let Some((msg, used)) = Message::decode(&self.plain)? {
                    self.plain.advance(used);
                    return Ok(msg);
                }
                if stream.read_buf(&mut self.raw).await? == 0 {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed the connection during the handshake").into());
                }
            },
        }
    }

    async fn write(&mut self, stream: &mut TcpStream, msg: &Message) -> std::io::Result<()> {
        match &mut self.tls {
            None => write_message(stream, msg).await,
            Some(link) => {
                let mut plain = Vec::with_capacity(128);
                msg.encode(&mut plain);
                let mut out = BytesMut::with_capacity(plain.len() + 64);
                link.seal(&plain, &mut out);
                stream.write_all(&out).await
            }
        }
    }

    /// The record layer the connection goes on with: Noise's keys from the handshake, or
    /// (under TLS, which already seals) the TLS connection. The handshake's last message
    /// (`Accept`, or a refusal) still goes through this `Wire`, in the same records.
    fn record_layer(&self, session: wasmnode_proto::seal::Session) -> (Seal, Open) {
        match &self.tls {
            None => {
                let (sealer, opener) = session.split();
                (Seal::Noise(sealer), Open::Noise(opener))
            }
            Some(link) => (Seal::Tls(link.clone()), Open::Tls(link.clone())),
        }
    }

    /// The bytes that came with the handshake: (still sealed, opened).
    fn leftover(self) -> (BytesMut, BytesMut) {
        (self.raw, self.plain)
    }
}

/// Refuses a dialer of the other kind (TLS or not) in the clear, which both kinds can
/// read. Its first message is read first: a socket closed with unread bytes sends a
/// reset, which can destroy the refusal before the dialer reads it.
async fn refuse_other_kind(stream: &mut TcpStream, reason: &str) -> std::io::Result<()> {
    let mut first = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut first)).await;
    write_message(stream, &Message::Refuse { code: Refusal::ModeMismatch, reason: reason.into() }).await?;
    stream.shutdown().await
}

async fn read_message(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Message, DialError> {
    loop {
        if let Some((msg, used)) = Message::decode(buf)? {
            buf.advance(used);
            return Ok(msg);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed the connection during the handshake").into());
        }
    }
}

async fn write_message(stream: &mut TcpStream, msg: &Message) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(128);
    msg.encode(&mut out);
    stream.write_all(&out).await
}

async fn read_loop(dist: &Dist, peer: &Peer, mut rd: OwnedReadHalf, mut raw: BytesMut, plain: BytesMut, mut opener: Open) -> DownReason {
    let timeout = dist.0.cfg.heartbeat_timeout;
    let max_frame = dist.0.cfg.max_frame;
    let mut reassembler = Reassembler::new(MAX_MESSAGE);
    let mut left = false;
    let mut last_read = Instant::now();
    let silence = tokio::time::sleep(timeout);
    tokio::pin!(silence);
    // Frames' bytes, opened from the sealed records in `raw`.
    let mut buf = BytesMut::with_capacity(64 * 1024);
    buf.extend_from_slice(&plain);
    loop {
        if let Err(e) = opener.open(&mut raw, &mut buf) {
            return protocol_error(peer, e);
        }
        loop {
            let len = match frame::frame_len(&buf, max_frame) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => return protocol_error(peer, e),
            };
            buf.advance(frame::HEADER_LEN);
            let body = buf.split_to(len).freeze();
            let frame = match Frame::decode_body(body) {
                Ok(Frame::Fragment { stream, last, chunk }) => match reassembler.push(stream, last, chunk) {
                    Ok(Some(f)) => f,
                    Ok(None) => continue,
                    Err(e) => return protocol_error(peer, e),
                },
                Ok(f) => f,
                Err(e) => return protocol_error(peer, e),
            };
            match frame {
                Frame::Heartbeat => {}
                Frame::Leaving => {
                    if !left {
                        let _ = dist.0.events.send(DistEvent::Leaving(peer.clone()));
                    }
                    left = true;
                }
                Frame::Ping { id, payload } => {
                    peer.send(Frame::Pong { id, payload });
                }
                Frame::Pong { id, .. } | Frame::Reply { id, .. } => peer.route_reply(id, frame),
                Frame::Request { id, service: Service::Registry, trace, ref body } if dist.0.fast_requests.get().is_some_and(|f| f(peer, id, trace, body)) => {}
                // One-way messages have no consumer yet (workers use requests): dropped,
                // unless a consumer asked for them.
                Frame::Send(_) if !dist.0.cfg.deliver_sends => {}
                other => {
                    let _ = dist.0.events.send(DistEvent::Frame(peer.clone(), other));
                }
            }
        }
        if raw.capacity() - raw.len() < 16 * 1024 {
            raw.reserve(64 * 1024);
        }
        // One timer for the connection's life, moved only when it fires: cheaper than a
        // new timeout around every read.
        loop {
            tokio::select! {
                biased;
                r = rd.read_buf(&mut raw) => match r {
                    Ok(0) | Err(_) => return if left { DownReason::Left } else { DownReason::ConnectionClosed },
                    Ok(_) => {
                        last_read = Instant::now();
                        break;
                    }
                },
                _ = &mut silence => {
                    // Fired long after it was due: this process was paused (SIGSTOP, a VM
                    // steal, a debugger) or starved, and the bytes that arrived meanwhile
                    // may be unread. Read before judging: a live peer's heartbeats are
                    // there, or arrive within an interval.
                    let late = Instant::now().saturating_duration_since(silence.deadline().into_std());
                    if late >= dist.0.cfg.heartbeat_interval {
                        debug!("woke {late:?} late; reading from {} before trusting its silence", peer.name());
                        last_read = Instant::now();
                        silence.as_mut().reset((last_read + dist.0.cfg.heartbeat_interval * 2).into());
                        continue;
                    }
                    if last_read.elapsed() >= timeout {
                        return if left { DownReason::Left } else { DownReason::HeartbeatTimeout };
                    }
                    silence.as_mut().reset((last_read + timeout).into());
                }
            }
        }
    }
}

fn protocol_error(peer: &Peer, e: impl fmt::Display) -> DownReason {
    warn!("closing connection to {} ({}): {e}", peer.name(), peer.addr());
    DownReason::ProtocolError(e.to_string())
}

/// Frames with payloads at least this large go to the writer task, even when nothing is
/// queued (their sender does not seal and write them itself).
const ZERO_COPY_MIN: usize = 2048;

/// The connection's writer task: writes what senders queued (see [`Peer::send`]), large
/// messages one fragment at a time between small frames, and a heartbeat when the
/// connection has been quiet for a heartbeat interval.
///
/// `peer.queued` counts frames the senders handed over and this task has not finished
/// writing; it comes down only when this task is idle, so a sender writes a frame itself
/// only when everything sent before it is on the wire.
async fn write_loop(peer: Peer, wr: Arc<OwnedWriteHalf>, mut rx: mpsc::UnboundedReceiver<Out>, heartbeat: Duration) -> DownReason {
    // The frames of the next write, sealed into `buf` just before it.
    let mut plain = BytesMut::with_capacity(64 * 1024);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut batch = Vec::with_capacity(256);
    let mut bulk: VecDeque<(Fragmenter, usize)> = VecDeque::new();
    let mut next_stream = 0u32;
    // Frames taken from the queue (or heartbeats this task queued itself) and not yet written.
    let mut taken = 0usize;
    // Fires when the connection may have been quiet for a heartbeat interval.
    let quiet = tokio::time::sleep(heartbeat);
    tokio::pin!(quiet);
    loop {
        if bulk.is_empty() {
            if taken > 0 {
                peer.0.queued.fetch_sub(taken, Ordering::AcqRel);
                taken = 0;
            }
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        return DownReason::LocalShutdown;
                    }
                    taken += n;
                }
                _ = &mut quiet => {
                    let silent = peer.quiet_for();
                    if silent >= heartbeat {
                        // Counted as queued, under the senders' lock, so that no sender
                        // writes while this task does.
                        let _direct = peer.0.direct.lock().unwrap();
                        peer.0.queued.fetch_add(1, Ordering::AcqRel);
                        taken += 1;
                        Frame::Heartbeat.encode(&mut plain);
                        quiet.as_mut().reset((Instant::now() + heartbeat).into());
                    } else {
                        quiet.as_mut().reset((Instant::now() + (heartbeat - silent)).into());
                        continue;
                    }
                }
            }
        } else {
            // A large message is in flight: take whatever small frames wait, then one fragment.
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(out) => {
                        batch.push(out);
                        taken += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        let mut close = None;
        for out in batch.drain(..) {
            match out {
                // A large message leaves the backlog once its last fragment is written.
                Out::Frame(f) if Fragmenter::needed(&f) => {
                    next_stream = next_stream.wrapping_add(1);
                    bulk.push_back((Fragmenter::new(next_stream, &f), f.payload_len()));
                }
                Out::Frame(f) => {
                    peer.0.backlog.fetch_sub(f.payload_len(), Ordering::AcqRel);
                    f.encode(&mut plain)
                }
                Out::Raw(rest) => {
                    // Sealed already: the end of a record a sender began writing.
                    peer.0.sealer.seal(&plain, &mut buf);
                    plain.clear();
                    buf.extend_from_slice(&rest);
                }
                Out::Close(reason) => {
                    close = Some(reason);
                    break;
                }
            }
        }
        if close.is_none() {
            if let Some((fragments, len)) = bulk.front_mut() {
                match fragments.next() {
                    Some(piece) => piece.encode(&mut plain),
                    None => {
                        peer.0.backlog.fetch_sub(*len, Ordering::AcqRel);
                        bulk.pop_front();
                    }
                }
            }
        }
        if !plain.is_empty() {
            peer.0.sealer.seal(&plain, &mut buf);
            plain.clear();
        }
        if !buf.is_empty() {
            if write_all(&wr, &mut buf).await.is_err() {
                return DownReason::ConnectionClosed;
            }
            peer.wrote();
        }
        if let Some(reason) = close {
            // SAFETY: shutdown(2) on the socket's own descriptor, which `wr` keeps open.
            unsafe {
                libc::shutdown(AsRef::<TcpStream>::as_ref(&*wr).as_raw_fd(), libc::SHUT_WR);
            }
            return reason;
        }
    }
}

/// Writes all of `buf` (sealed records, in order), leaving it empty for the next batch
/// with its memory kept.
async fn write_all(wr: &OwnedWriteHalf, buf: &mut BytesMut) -> std::io::Result<()> {
    while !buf.is_empty() {
        match wr.try_write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wr.writable().await?,
            Err(e) => return Err(e),
        }
    }
    buf.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listening endpoint on 127.0.0.1 with an OS-chosen port (in its name).
    async fn listening(base: &str) -> (Dist, mpsc::UnboundedReceiver<DistEvent>) {
        listening_with(base, |c| c).await
    }

    async fn listening_with(base: &str, f: impl FnOnce(DistConfig) -> DistConfig) -> (Dist, mpsc::UnboundedReceiver<DistEvent>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let name = format!("{base}@127.0.0.1:{}", listener.local_addr().unwrap().port());
        let (tx, rx) = mpsc::unbounded_channel();
        let dist = Dist::new(f(DistConfig { deliver_sends: true, ..DistConfig::new(name, b"cookie".to_vec()) }), tx);
        tokio::spawn(dist.clone().serve(listener));
        (dist, rx)
    }

    /// Small frames sent after a large message arrive before it: the writer interleaves
    /// them between the large message's fragments (what keeps heartbeats on time).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_frames_overtake_a_large_message() {
        let (a, _a_events) = listening("a").await;
        let (b, mut b_events) = listening("b").await;
        let peer = a.connect(b.name()).await.unwrap();
        let big = Bytes::from(vec![7u8; 16 << 20]);
        peer.send(Frame::Send(big.clone()));
        peer.send(Frame::Send(Bytes::from_static(b"small")));
        let mut order = Vec::new();
        while order.len() < 2 {
            if let Some(DistEvent::Frame(_, Frame::Send(p))) = b_events.recv().await {
                order.push(p);
            }
        }
        assert_eq!(order[0], Bytes::from_static(b"small"));
        assert_eq!(order[1], big, "the large message arrives whole");
    }

    /// Both sides dial at once, 20 times: each time exactly one connection comes up
    /// and neither side sees a node-down.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn simultaneous_dials_end_with_one_connection() {
        for _ in 0..20 {
            let (a, mut a_events) = listening("a").await;
            let (b, mut b_events) = listening("b").await;
            let (ra, rb) = tokio::join!(a.connect(b.name()), b.connect(a.name()));
            assert!(ra.is_ok() || rb.is_ok(), "{ra:?} {rb:?}");
            let pa = a.peer(b.name()).expect("a is connected to b");
            let pb = b.peer(a.name()).expect("b is connected to a");
            assert_eq!(a.peers().len(), 1);
            assert_eq!(b.peers().len(), 1);
            // Exactly one connection came up on each side and none went down: the
            // losing dial was refused during its handshake, before anyone saw it.
            for events in [&mut a_events, &mut b_events] {
                let (mut ups, mut downs) = (0, 0);
                while let Ok(ev) = events.try_recv() {
                    match ev {
                        DistEvent::Up(_) => ups += 1,
                        DistEvent::Down(..) => downs += 1,
                        DistEvent::Frame(..) | DistEvent::Leaving(_) => {}
                    }
                }
                assert_eq!((ups, downs), (1, 0));
            }
            // The connection works both ways.
            assert_eq!(pa.ping(Bytes::from_static(b"x")).await.unwrap(), Bytes::from_static(b"x"));
            assert_eq!(pb.ping(Bytes::from_static(b"y")).await.unwrap(), Bytes::from_static(b"y"));
        }
    }

    /// Under `[node.tls]`: nodes whose certificates name their host connect, and a
    /// large message and a round trip go through TLS records; a dialer with a good
    /// certificate that claims a name on another host is refused (code 10); a dialer of
    /// the other kind is refused in words, both ways (code 9).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_tls_a_name_needs_a_certificate_that_names_its_host() {
        let dir = std::env::temp_dir().join(format!("wasmnode-dist-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::certs::write(&dir, &["127.0.0.1".into()]).unwrap();
        let files =
            tls::TlsFiles { cert: dir.join("127.0.0.1.crt"), key: dir.join("127.0.0.1.key"), ca: dir.join("ca.crt"), reload_interval: Duration::from_secs(10) };
        let config = Arc::new(Tls::load(files, "127.0.0.1").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        let (a, _a_events) = listening_with("a", |c| DistConfig { tls: Some(config.clone()), ..c }).await;
        let (b, mut b_events) = listening_with("b", |c| DistConfig { tls: Some(config.clone()), ..c }).await;
        let peer = a.connect(b.name()).await.unwrap();
        assert_eq!(peer.ping(Bytes::from_static(b"over tls")).await.unwrap(), Bytes::from_static(b"over tls"));
        let big = Bytes::from((0..5_000_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        peer.send(Frame::Send(big.clone()));
        loop {
            if let Some(DistEvent::Frame(_, Frame::Send(p))) = b_events.recv().await {
                assert_eq!(p, big, "the large message arrives whole");
                break;
            }
        }
        // Many small frames, queued, between round trips that their senders write
        // themselves: every one arrives, in order, through one TLS stream.
        for window in 0..20u32 {
            for i in 0..5_000u32 {
                peer.send(Frame::Send(Bytes::from((window * 5_000 + i).to_be_bytes().to_vec())));
            }
            peer.ping(Bytes::from_static(b"window")).await.expect("the connection lives");
        }
        let mut next = 0u32;
        while next < 100_000 {
            match b_events.recv().await {
                Some(DistEvent::Frame(_, Frame::Send(p))) => {
                    assert_eq!(p.as_ref(), next.to_be_bytes(), "in order");
                    next += 1;
                }
                Some(DistEvent::Down(_, reason)) => panic!("down: {reason}"),
                _ => {}
            }
        }
        // The same certificate, claiming a name on 127.0.0.2.
        let (tx, _rx) = mpsc::unbounded_channel();
        let liar = Dist::new(DistConfig { tls: Some(config.clone()), ..DistConfig::new("m@127.0.0.2:1", b"cookie".to_vec()) }, tx);
        match liar.connect(b.name()).await {
            Err(DialError::Handshake(ProtoError::Refused { code: Refusal::Certificate, .. })) => {}
            other => panic!("{other:?}"),
        }
        // The other kind, both ways.
        let (plain, _p_events) = listening("p").await;
        for r in [plain.connect(b.name()).await, a.connect(plain.name()).await] {
            match r {
                Err(DialError::Handshake(ProtoError::Refused { code: Refusal::ModeMismatch, .. })) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(b.peers().len(), 1, "only a got in");
    }

    /// A peer that stops sending is declared down after the heartbeat timeout, with
    /// that reason (and not before the timeout).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heartbeat_timeout_is_a_node_down_with_its_reason() {
        let timeout = Duration::from_millis(300);
        let (b, mut b_events) = listening_with("b", |c| DistConfig { heartbeat_interval: Duration::from_millis(100), heartbeat_timeout: timeout, ..c }).await;
        // A raw peer that completes the handshake and then says nothing.
        let mut stream = TcpStream::connect(b.name().split('@').nth(1).unwrap()).await.unwrap();
        let mut buf = BytesMut::new();
        let me = Identity { name: "quiet@127.0.0.1".into(), flags: 0, creation: 1 };
        let (d, hello) = Dialer::start(&me, b.name(), b"cookie").unwrap();
        write_message(&mut stream, &hello).await.unwrap();
        let challenge = read_message(&mut stream, &mut buf).await.unwrap();
        let (d, proof) = d.on_challenge(challenge).unwrap();
        // The connection cannot be up (nor its silence counted) before `b` has the proof.
        let up_at = Instant::now();
        write_message(&mut stream, &proof).await.unwrap();
        let answer = read_message(&mut stream, &mut buf).await.unwrap();
        d.on_accept(answer).unwrap();
        let down = loop {
            match b_events.recv().await.unwrap() {
                DistEvent::Down(p, reason) => break (p.name().to_string(), reason),
                _ => continue,
            }
        };
        assert_eq!(down, ("quiet@127.0.0.1".to_string(), DownReason::HeartbeatTimeout));
        assert!(up_at.elapsed() >= timeout, "declared down after {:?}", up_at.elapsed());
    }
}
