//! What the registry holds of an instance: its mailbox and what goes in it, and the
//! trait through which the runtime creates instances. The registry knows nothing of
//! WebAssembly.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tokio::sync::oneshot;
use wasmnode_proto::{Frame, TraceContext};

use super::table::Kinds;
use super::wire::{encode_reply, RpcReply};
use super::{CallError, SpawnError, WorkerName};
use crate::dist::Peer;

/// An event delivered to instances' `handle-info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    NodeUp(String),
    NodeDown { node: String, reason: String },
    Timer(Vec<u8>),
}

/// What an instance's mailbox carries; it handles one at a time, in order. Kept to 40
/// bytes (the rare, larger variants boxed): a queue holds its messages inline.
pub enum Envelope {
    Call {
        msg: Vec<u8>,
        reply: ReplyTo,
    },
    /// A call with an id ([`super::calls`]: applied once, its retries answered from
    /// the instance's log) or a trace context, or both.
    CallWith(Box<CallWith>),
    Cast {
        msg: Vec<u8>,
    },
    Info(Box<Info>),
    /// Stop after `terminate(reason)`.
    Stop(Box<Stop>),
    /// The state of another instance of this name that stopped in favour of this one.
    Conflict(Box<Conflict>),
}

impl crate::mailbox::Weigh for Envelope {
    /// Calls and casts count against the mailbox's bounds, by their message; what the
    /// host queues (stops, merges, events, timers) does not.
    fn weight(&self) -> Option<usize> {
        match self {
            Envelope::Call { msg, .. } | Envelope::Cast { msg } => Some(msg.len()),
            Envelope::CallWith(c) => Some(c.msg.len()),
            Envelope::Info(_) | Envelope::Stop(_) | Envelope::Conflict(_) => None,
        }
    }
}

/// A stop: after `terminate(reason)` the returned state goes back on `reply`. `moves`:
/// the name goes on elsewhere, and what is still queued follows it
/// ([`super::Registry::forward_queued`]); else that is answered `stopped`.
pub struct Stop {
    pub reason: String,
    pub reply: oneshot::Sender<Option<Vec<u8>>>,
    pub moves: bool,
}

/// Another instance's state to merge (from that instance's node); `done` is answered
/// once it is merged and, for a durable kind, copied to the replicas (or dropped, when
/// the instance ended first).
pub struct Conflict {
    pub from: String,
    pub state: Vec<u8>,
    pub done: Option<oneshot::Sender<()>>,
}

/// A call that carries an id, a trace context, or both.
pub struct CallWith {
    pub id: Option<String>,
    pub msg: Vec<u8>,
    pub reply: ReplyTo,
    pub trace: Option<Traced>,
}

/// The trace a call belongs to: its parent span's context, and whether that span is on
/// another node (the instance's span is then the server side of the hop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traced {
    pub parent: TraceContext,
    pub remote: bool,
}

/// Where a call's reply goes.
pub enum ReplyTo {
    /// A caller on this node, waiting.
    Local(oneshot::Sender<Result<Vec<u8>, CallError>>),
    /// A caller on another node: the instance writes the reply straight to the
    /// connection the request came on, with no task in between.
    Remote(Box<RemoteReply>),
}

/// The reply owed to a caller on another node. Dropped unsent (the instance trapped or
/// stopped with the call still queued), it answers that the instance stopped, as a
/// local caller's dropped channel does, so the caller does not wait for its timeout.
pub struct RemoteReply {
    pub(super) peer: Peer,
    pub(super) id: u64,
    pub(super) name: WorkerName,
    pub(super) sent: bool,
}

impl RemoteReply {
    fn send(&mut self, reply: Result<Vec<u8>, CallError>) {
        self.send_encoded(Self::encode(reply));
    }

    /// The reply frame's body for `reply`.
    pub(super) fn encode(reply: Result<Vec<u8>, CallError>) -> Bytes {
        encode_reply(&match reply {
            Ok(r) => RpcReply::Reply(r),
            Err(e) => RpcReply::CallFailed(e),
        })
    }

    pub(super) fn send_encoded(&mut self, body: Bytes) {
        self.sent = true;
        self.peer.send(Frame::Reply { id: self.id, body });
    }

    /// [`RemoteReply::send_encoded`] once the answers waiting for its peer leave room
    /// for it (see [`Peer::send_answer`]). Dropped while it waits, it answers as an
    /// unsent reply does.
    pub(super) async fn deliver_encoded(&mut self, body: Bytes) {
        self.peer.send_answer(Frame::Reply { id: self.id, body }).await;
        self.sent = true;
    }

    /// Answers that the name now runs on `to`: the caller sends the call there (it was
    /// not handled here).
    pub(super) async fn moved(mut self, to: String) {
        self.deliver_encoded(encode_reply(&RpcReply::Moved(to))).await;
    }
}

impl Drop for RemoteReply {
    fn drop(&mut self) {
        if !self.sent {
            let stopped = CallError::Failed(format!("{} stopped before replying", self.name));
            self.send(Err(stopped));
        }
    }
}

impl ReplyTo {
    /// Delivers the reply; a caller that gave up meanwhile is not an error.
    pub fn send(self, reply: Result<Vec<u8>, CallError>) {
        match self {
            ReplyTo::Local(tx) => {
                let _ = tx.send(reply);
            }
            ReplyTo::Remote(mut to) => to.send(reply),
        }
    }

    /// [`ReplyTo::send`], by an instance, which waits while the answers already waiting
    /// for a remote caller's node leave no room for this one (its next message waits
    /// with it, as an Erlang process sending to a busy connection is suspended).
    pub async fn deliver(self, reply: Result<Vec<u8>, CallError>) {
        match self {
            ReplyTo::Local(tx) => {
                let _ = tx.send(reply);
            }
            ReplyTo::Remote(mut to) => to.deliver_encoded(RemoteReply::encode(reply)).await,
        }
    }
}

/// A running instance, as the registry knows it.
#[derive(Clone)]
pub struct Mailbox {
    pub tx: crate::mailbox::Sender<Envelope>,
    /// Tells this instance from an earlier or later one of the same name.
    pub id: u64,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mailbox #{}", self.id)
    }
}

/// Other instances' states to merge into one, with the node each came from.
pub type Merges = Vec<(String, Vec<u8>)>;

/// A boxed future, for the object-safe [`Spawner`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How the registry creates instances; implemented by the runtime.
pub trait Spawner: Kinds + 'static {
    /// Starts an instance with mailbox id `id`; resolves when its `init` has returned
    /// and the states in `merges` (other instances', by node) are merged into it.
    /// Instantiation and `init` run on the task that awaits this.
    fn spawn(
        &self,
        registry: super::Registry,
        name: WorkerName,
        args: Vec<u8>,
        handoff: Option<Vec<u8>>,
        merges: Merges,
        id: u64,
    ) -> BoxFuture<Result<Mailbox, SpawnError>>;
}

pub use crate::config::Restart;

/// Runs `start` on a task of its own and waits for it. For starts asked from inside a
/// guest's call (`cluster.start`, a guest's call that activates its target): a start
/// runs the new instance's instantiation and `init` on the task that awaits it, and
/// wasmtime would allow that inside the calling guest's fiber, but a task keeps the two
/// instances' stacks and deadlines apart.
pub async fn start_apart<T: Send + 'static>(start: impl Future<Output = Result<T, super::StartError>> + Send + 'static) -> Result<T, super::StartError> {
    tokio::spawn(start).await.unwrap_or_else(|e| Err(super::StartError::Failed(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_is_small() {
        // Every queued message takes this much; the rare, larger variants are boxed.
        assert!(std::mem::size_of::<Envelope>() <= 40, "Envelope is {} bytes", std::mem::size_of::<Envelope>());
    }
}
