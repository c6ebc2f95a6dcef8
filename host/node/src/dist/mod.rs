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
//! - Size: a node never sends a message its peer would refuse. A request or reply body
//!   over [`MAX_BODY`] is not sent (the layers above turn it into an error for whoever
//!   made it, [`too_large`]), so one oversized reply or state costs no connection.
//!
//! Connection ups, downs (with their [`DownReason`]) and the frames the layer above
//! cares about go out on one ordered channel of [`DistEvent`]s; `membership` consumes it.
//!
//! One layer per file: `listener` (accept loop, admission, the acceptor's handshake),
//! `dialer` (resolve, connect, the dialer's handshake), `wire` (the bytes a handshake
//! travels and the record layer that follows it), `peer` (the handle senders use),
//! `reader` and `writer` (a connection's two tasks). This file holds the endpoint, the
//! table of connections, and what every layer shares.

mod dialer;
mod listener;
mod peer;
mod reader;
mod silence;
#[cfg(test)]
mod tests;
mod wire;
mod writer;

pub use listener::listen;
pub use peer::{FastRequests, Peer};
use peer::{Out, PeerInner};
use reader::read_loop;
use wire::{Open, Seal};
use writer::write_loop;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use wasmnode_proto::frame::{DEFAULT_MAX_FRAME, MAX_MESSAGE};
use wasmnode_proto::handshake::{Identity, Refusal};
use wasmnode_proto::{Error as ProtoError, Frame};

use crate::refusals::RefusalLog;
use crate::tls::Tls;

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
    /// The peer did not read what was sent to it.
    NotReading(Unread),
}

/// How a peer showed it does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    /// More than this many bytes of answers (replies, pongs) waited to be sent to it.
    Answers(usize),
    /// A write to it did not go out within this long (the heartbeat timeout).
    Stalled(Duration),
}

impl fmt::Display for Unread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unread::Answers(limit) => write!(f, "more than {limit} bytes of answers to its requests waited to be sent to it"),
            Unread::Stalled(t) => write!(f, "a write to it did not go out within {} ms", t.as_millis()),
        }
    }
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
            DownReason::NotReading(why) => write!(f, "not reading: {why}"),
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
    #[error(transparent)]
    Certificate(#[from] crate::tls::TlsError),
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
            DialError::Handshake(ProtoError::Refused { code: Refusal::VersionMismatch | Refusal::Downgraded, .. }) => "version",
            DialError::Handshake(ProtoError::Refused { code: Refusal::ModeMismatch | Refusal::Certificate, .. })
            | DialError::Tls(_)
            | DialError::Certificate(_) => "tls",
            DialError::Handshake(ProtoError::Refused { .. }) => "refused",
            DialError::Handshake(ProtoError::VersionMismatch { .. } | ProtoError::Downgraded { .. }) => "version",
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
    /// Bytes of answers (replies, pongs) that may wait to be sent to one peer; past it
    /// the peer is disconnected as not reading. Senders of replies wait for room first,
    /// as OTP's senders wait at `dist_buf_busy_limit` (see [`Peer::send_answer`]).
    pub max_backlog: usize,
    /// Mutual TLS under the handshake (`[node.tls]`); without it, Noise alone.
    pub tls: Option<Arc<Tls>>,
}

/// The largest body of a request, reply or ping a node sends: one message between
/// nodes carries at most [`MAX_MESSAGE`] bytes, and this leaves room for the frame's
/// own fields (tag, id, trace context).
pub const MAX_BODY: usize = MAX_MESSAGE - 64;

/// Why a body of `len` bytes cannot go to another node, for the error its sender gets.
pub fn too_large(what: &str, len: usize) -> String {
    format!("{what} is {len} bytes, over the {} MiB one message between nodes may carry", MAX_MESSAGE >> 20)
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

struct State {
    peers: HashMap<String, Peer>,
    dialing: HashSet<String>,
    /// Set by `announce_leaving`: each new connection hears it first thing.
    leaving: bool,
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
            state: Mutex::new(State { peers: HashMap::new(), dialing: HashSet::new(), leaving: false, closing: false }),
            refusals: Mutex::new(RefusalLog::default()),
            next_conn: AtomicU64::new(1),
            live: watch::Sender::new(0),
            fast_requests: std::sync::OnceLock::new(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.0.cfg.name
    }

    /// How often this node sends heartbeats.
    pub fn heartbeat_interval(&self) -> Duration {
        self.0.cfg.heartbeat_interval
    }

    fn identity(&self) -> Identity {
        let hidden = if self.0.cfg.hidden { wasmnode_proto::handshake::FLAG_HIDDEN } else { 0 };
        let flags = hidden | wasmnode_proto::seal::cipher_flags() | wasmnode_proto::handshake::version_flags();
        Identity { name: self.0.cfg.name.clone(), flags, creation: self.0.creation }
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
            answers: AtomicUsize::new(0),
            max_backlog: self.0.cfg.max_backlog,
            drained: Default::default(),
            overflowed: Default::default(),
            direct: Mutex::new(None),
            sealer,
            last_write: AtomicU64::new(0),
            last_read: AtomicU64::new(0),
            heard_by_others: AtomicU64::new(0),
            heard_by: Mutex::new(String::new()),
            kept: AtomicBool::new(false),
            born: Instant::now(),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            ended: OnceLock::new(),
        }));
        if st.leaving {
            // Queued before anything else: the writer sends it first.
            peer.send(Frame::Leaving);
        }
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
            let mut writer = tokio::spawn(write_loop(peer.clone(), wr, rx, dist.0.cfg.heartbeat_interval, dist.0.cfg.heartbeat_timeout));
            let reason = {
                let read = read_loop(&dist, &peer, rd, raw, plain, opener);
                tokio::pin!(read);
                tokio::select! {
                    r = &mut read => r,
                    w = &mut writer => match w.unwrap_or(DownReason::ConnectionClosed) {
                        DownReason::LocalShutdown => {
                            // This side closed (its last bytes and a FIN are out): read until the
                            // peer closes too, briefly, so that the socket ends without a reset,
                            // which could cut off what this side wrote last.
                            let _ = tokio::time::timeout(dist.0.cfg.heartbeat_interval, &mut read).await;
                            DownReason::LocalShutdown
                        }
                        other => other,
                    },
                }
            };
            writer.abort();
            let reason = if peer.0.overflowed.load(Ordering::Acquire) { DownReason::NotReading(Unread::Answers(peer.0.max_backlog)) } else { reason };
            let _ = peer.0.ended.set(reason.clone());
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

    /// Tells every peer this node is leaving, and every peer that connects from now on
    /// as it connects; keeps the connections (for handing work over) until `leave`
    /// closes them. A member cut off when this node began to leave can still connect
    /// and take what this node holds for it.
    pub fn announce_leaving(&self) {
        let peers: Vec<Peer> = {
            let mut st = self.0.state.lock().unwrap();
            st.leaving = true;
            st.peers.values().cloned().collect()
        };
        for peer in peers {
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
