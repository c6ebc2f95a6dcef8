//! The handle to one connection that the layers above send on: direct writes for frames
//! someone waits for, the queue to the writer task for the rest, the limit on answers
//! waiting for the peer, and the table of requests waiting for replies.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::warn;
use wasmnode_proto::frame;
use wasmnode_proto::seal::{RECORD_HEADER, TAG_LEN};
use wasmnode_proto::{Frame, Service, TraceContext};

use super::writer::ZERO_COPY_MIN;
use super::{DownReason, Seal, Unread};

pub(super) enum Out {
    Frame(Frame),
    /// The unwritten end of a frame a sender began writing itself (see [`Peer::send`]).
    Raw(Bytes),
    Close(DownReason),
}

/// Whether `frame` answers the peer (a reply or a pong: what it asked for), whose bytes
/// waiting to be sent are limited ([`PeerInner::answers`]).
pub(super) fn is_answer(frame: &Frame) -> bool {
    matches!(frame, Frame::Reply { .. } | Frame::Pong { .. })
}

/// Who waits for the replies to one request.
pub(super) enum Waiting {
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
pub struct Peer(pub(super) Arc<PeerInner>);

pub(super) struct PeerInner {
    pub(super) name: String,
    pub(super) addr: SocketAddr,
    pub(super) hidden: bool,
    pub(super) since: SystemTime,
    pub(super) id: u64,
    pub(super) tx: mpsc::UnboundedSender<Out>,
    /// Frames handed to the writer task and not yet written by it. While there are
    /// any, a new frame queues behind them; when there are none, its sender writes it.
    pub(super) queued: AtomicUsize,
    /// Payload bytes of the answers (replies and pongs: what the peer asked for) handed
    /// to the writer task and not yet taken into a write; past `max_backlog` the
    /// connection ends ([`DownReason::NotReading`]). What this node sends of its own
    /// accord (requests, one-way messages, handoffs, gossip) is not limited here: its
    /// senders hold those bytes whether they wait or not, and a burst of them (every
    /// worker handed over at a SIGTERM) must not look like a peer that does not read.
    /// A peer that does not take what is written to it is found by the writer instead.
    pub(super) answers: AtomicUsize,
    pub(super) max_backlog: usize,
    /// Woken when answers leave the queue, for senders waiting for room ([`Peer::send_answer`]).
    pub(super) drained: Notify,
    /// Set when the answers passed their limit: the reason the connection ended.
    pub(super) overflowed: AtomicBool,
    /// The socket's write half while the connection runs. A sender holds this lock while
    /// it writes a frame itself or queues one, so frames keep the order they were sent in.
    pub(super) direct: Mutex<Option<Arc<OwnedWriteHalf>>>,
    /// Seals every byte this side sends. Whoever writes seals, at the moment it writes:
    /// a sender under `direct` with nothing queued, else the writer task (records must
    /// reach the wire in the order they were sealed).
    pub(super) sealer: Seal,
    /// When bytes last went out, in nanoseconds since `born`: heartbeats fill silences.
    pub(super) last_write: AtomicU64,
    /// When bytes last arrived, in nanoseconds since `born` (other members ask).
    pub(super) last_read: AtomicU64,
    /// The latest time another member is known to have heard this peer, in nanoseconds
    /// since `born` (0: none known), from its answers to this connection's reader.
    pub(super) heard_by_others: AtomicU64,
    /// The member whose answer set `heard_by_others`, for the log.
    pub(super) heard_by: Mutex<String>,
    /// Set while the peer is silent past the heartbeat timeout and kept because other
    /// members hear it ([`super::silence`]): the writer then waits longer too.
    pub(super) kept: AtomicBool,
    pub(super) born: Instant,
    /// Callers waiting for `Reply`/`Pong` frames, by request id.
    pub(super) pending: Mutex<HashMap<u64, Waiting>>,
    /// Why the connection ended, set before the callers still waiting are woken.
    pub(super) ended: OnceLock<DownReason>,
    pub(super) next_request: AtomicU64,
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

    /// Sends a frame; false when the connection is gone, or when the frame is larger
    /// than the peer takes ([`super::MAX_BODY`]): such a frame is logged and dropped,
    /// and the connection stays (the peer would close it on reading the frame, and every
    /// request on it would fail with it). Layers above check sizes first and give their
    /// caller the reason; this is what holds when one does not.
    ///
    /// A frame someone waits for (a request with an id, a reply, a ping or pong) is
    /// written here, by its sender, with one non-blocking write when nothing is waiting
    /// for the writer task: a reply leaves from the worker that made it and a request from
    /// its caller, without waking another task first (a remote worker call went from 58
    /// to 47 µs pinned with this and `Registry::handle_rpc_fast`; docs/benchmarks.md).
    /// Everything else, and every frame while others are queued (a large message in
    /// fragments, a full socket buffer), queues for the writer, which batches them.
    pub fn send(&self, frame: Frame) -> bool {
        self.send_counted(frame, false)
    }

    /// Sends an answer (a reply) the way [`Peer::send`] does, after waiting until the
    /// answers queued for this peer leave room for it (a worker waits, as OTP suspends a
    /// process that sends to a busy connection). So a burst of large replies to a peer
    /// goes at the pace it reads them. The wait ends with the connection: a peer that
    /// does not take a write within the heartbeat timeout is disconnected by the writer.
    pub async fn send_answer(&self, frame: Frame) -> bool {
        let n = frame.payload_len();
        if n <= super::MAX_BODY && self.reserve(n).await {
            self.send_counted(frame, true)
        } else {
            self.send(frame)
        }
    }

    /// Counts `n` bytes of answers as queued once they fit under the limit (at once when
    /// nothing waits: a larger one goes alone); false when the connection ended first.
    async fn reserve(&self, n: usize) -> bool {
        let max = self.0.max_backlog;
        let fits = |a: usize| (a == 0 || a.saturating_add(n) <= max).then_some(a + n);
        if self.0.answers.fetch_update(Ordering::AcqRel, Ordering::Acquire, fits).is_ok() {
            return true;
        }
        loop {
            // Registered before the check, so a release between the two wakes it.
            let drained = self.0.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.0.answers.fetch_update(Ordering::AcqRel, Ordering::Acquire, fits).is_ok() {
                return true;
            }
            tokio::select! {
                _ = &mut drained => {}
                _ = self.closed() => return false,
            }
        }
    }

    /// Answers of `n` bytes left the queue: room for those waiting.
    pub(super) fn release(&self, n: usize) {
        self.0.answers.fetch_sub(n, Ordering::AcqRel);
        self.0.drained.notify_waiters();
    }

    /// [`Peer::send`]; `counted`: an answer whose bytes [`Peer::reserve`] counted already.
    fn send_counted(&self, frame: Frame, counted: bool) -> bool {
        if frame.payload_len() > super::MAX_BODY {
            warn!(peer = %self.0.name, bytes = frame.payload_len(), "not sending a message to {}: {}", self.0.name, super::too_large("it", frame.payload_len()));
            return false;
        }
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
                        if counted {
                            self.release(frame.payload_len());
                        }
                        return true;
                    }
                    Ok(n) => {
                        // The socket took part of it: the writer sends the rest, before anything else.
                        self.wrote();
                        if counted {
                            self.release(frame.payload_len());
                        }
                        self.0.queued.fetch_add(1, Ordering::AcqRel);
                        return self.0.tx.send(Out::Raw(buf.split_off(n).freeze())).is_ok();
                    }
                    // Full (or failing: the writer finds out and ends the connection): queue it.
                    Err(_) => {}
                }
            }
        }
        let n = frame.payload_len();
        if is_answer(&frame) && !counted && self.0.answers.fetch_add(n, Ordering::AcqRel) + n > self.0.max_backlog {
            self.0.answers.fetch_sub(n, Ordering::AcqRel);
            self.overflow(direct.as_ref());
            return false;
        }
        self.0.queued.fetch_add(1, Ordering::AcqRel);
        self.0.tx.send(Out::Frame(frame)).is_ok()
    }

    /// Ends a connection whose peer does not read the answers it asked for: its socket
    /// shuts down now (the writer may be stuck in a write to it), and the down says why.
    pub(super) fn overflow(&self, wr: Option<&Arc<OwnedWriteHalf>>) {
        if self.0.overflowed.swap(true, Ordering::AcqRel) {
            return;
        }
        let why = Unread::Answers(self.0.max_backlog);
        warn!(peer = %self.0.name, reason = "not_reading", "disconnecting {}: it does not read ({why})", self.0.name);
        if let Some(wr) = wr {
            // SAFETY: shutdown(2) on the socket's own descriptor, which `wr` keeps open.
            unsafe {
                libc::shutdown(AsRef::<TcpStream>::as_ref(&**wr).as_raw_fd(), libc::SHUT_RDWR);
            }
        }
    }

    pub(super) fn wrote(&self) {
        self.0.last_write.store(self.0.born.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Time since bytes last went out on this connection.
    pub(super) fn quiet_for(&self) -> Duration {
        self.0.born.elapsed().saturating_sub(Duration::from_nanos(self.0.last_write.load(Ordering::Relaxed)))
    }

    /// Time since bytes last arrived on this connection.
    pub fn silent_for(&self) -> Duration {
        self.0.born.elapsed().saturating_sub(Duration::from_nanos(self.0.last_read.load(Ordering::Relaxed)))
    }

    pub(super) fn read_at(&self, at: Instant) {
        self.0.last_read.store(at.saturating_duration_since(self.0.born).as_nanos() as u64, Ordering::Relaxed);
    }

    /// Another member, `by`, heard this peer at `at`.
    pub(super) fn heard_by_other(&self, by: &str, at: Instant) {
        let at = at.saturating_duration_since(self.0.born).as_nanos().max(1) as u64;
        if self.0.heard_by_others.fetch_max(at, Ordering::AcqRel) < at {
            *self.0.heard_by.lock().unwrap() = by.to_string();
        }
    }

    /// The latest time another member is known to have heard this peer, and who.
    pub(super) fn heard_by_others(&self) -> Option<(Instant, String)> {
        match self.0.heard_by_others.load(Ordering::Acquire) {
            0 => None,
            at => Some((self.0.born + Duration::from_nanos(at), self.0.heard_by.lock().unwrap().clone())),
        }
    }

    /// Whether the connection ended in the peer's orderly close as it left: behind its
    /// last `Leaving`, so after every reply it wrote. A request unanswered then was not
    /// handled there (see `Dist::leave`); after any other end it may have been.
    pub fn closed_in_order(&self) -> bool {
        self.0.ended.get() == Some(&DownReason::Left)
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
    ///
    /// A body over [`super::MAX_BODY`] is not sent: an [`std::io::ErrorKind::InvalidInput`]
    /// error at once says so.
    pub async fn request_traced(&self, service: Service, body: Bytes, trace: Option<TraceContext>, timeout: Duration) -> std::io::Result<Bytes> {
        if body.len() > super::MAX_BODY {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, super::too_large("the message", body.len())));
        }
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

    /// Round trip: sends `Ping` and returns the peer's `Pong` payload (a payload over
    /// [`super::MAX_BODY`] fails at once, as a request's does).
    pub async fn ping(&self, payload: Bytes) -> std::io::Result<Bytes> {
        if payload.len() > super::MAX_BODY {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, super::too_large("the ping", payload.len())));
        }
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

    pub(super) fn route_reply(&self, id: u64, frame: Frame) {
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
