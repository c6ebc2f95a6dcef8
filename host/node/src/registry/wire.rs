//! What registries say to each other: requests that want a reply ([`Rpc`], answered by
//! [`RpcReply`]) and the one-way messages of the state machine ([`Msg`]), in postcard,
//! as the body of requests for [`Service::Registry`](wasmnode_proto::Service).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::durable::Update;
use super::placement::Lineage;
use super::{CallError, StartError, WorkerName};

/// A request from one registry to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    /// Start the name on the receiving node (the sender found it the owner).
    Start {
        name: WorkerName,
        args: Vec<u8>,
    },
    Call {
        name: WorkerName,
        msg: Vec<u8>,
        timeout_ms: u64,
        /// The call's id: applied once by the name, whatever the retries.
        call_id: Option<String>,
    },
    Cast {
        name: WorkerName,
        msg: Vec<u8>,
    },
    /// The names running on the receiving node.
    List,
    /// One-way (request id 0): a message for the receiver's state machine.
    Tell(Msg),
    /// Hold this copy of a durable instance's state (the sender runs it): answered
    /// [`RpcReply::Done`] once held, [`RpcReply::NeedFull`] for a delta from a copy the
    /// receiver does not hold.
    Replicate(Box<Replicate>),
    /// What the receiver knows of durable names ([`DurableReport`]).
    Durable,
    /// [`Rpc::Replicate`] for a call that the receiver made: once the copy is held, the
    /// receiver answers it and then hands `reply` (an encoded [`RpcReply`]) to its own
    /// request `id` on this connection, as if it had come as that request's reply. The
    /// caller has its answer one hop after the copy is held, not two.
    ReplicateThenReply {
        copy: Box<Replicate>,
        id: u64,
        reply: Vec<u8>,
    },
}

/// What one node knows of durable names: the copies it holds (name, the node that runs
/// it, copy number, size in bytes) and, for the durable instances it runs, the last
/// copy's number and the replicas that acknowledged it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DurableReport {
    pub held: Vec<(WorkerName, String, u64, usize)>,
    pub sent: Vec<(WorkerName, u64, Vec<String>)>,
}

/// A copy of a durable instance's state, from the node that runs it to a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicate {
    pub name: WorkerName,
    pub args: Vec<u8>,
    pub lineage: Lineage,
    /// The copy's number (deltas name the copy they apply to).
    pub seq: u64,
    pub update: Update,
    /// Every node this copy goes to, in the name's ranking order.
    pub holders: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    Started(String),
    StartFailed(StartError),
    Reply(Vec<u8>),
    CallFailed(CallError),
    Done,
    List(Vec<String>),
    /// The name runs on this node now: send the call there (it was not handled here).
    Moved(String),
    /// A delta for a copy this replica does not hold: send the whole state.
    NeedFull,
    Durable(DurableReport),
}

/// A one-way message between two registries' state machines
/// ([`Table`](super::table::Table)). Every one is idempotent or carries what makes it so:
/// a connection can close with any of them in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// The sender runs this name now (a start, a restart or a handoff), an instance of
    /// this lineage (which decides between two instances: see `placement::stays`).
    Registered { name: WorkerName, args: Vec<u8>, lineage: Lineage },
    /// The sender no longer runs this name.
    Unregistered { name: WorkerName },
    /// The sender has told the receiver every name it runs.
    Synced,
    /// Run this name here, from the state its previous instance handed over, and merge
    /// into it the states in `merges` (other instances' that stopped in its favour).
    /// With `yielding`, the sender's instance stopped in favour of the receiver's: its
    /// state merges into the instance running there. Answered with
    /// [`Msg::HandoffAck`]; until then the sender keeps every state it sent.
    Handoff { name: WorkerName, args: Vec<u8>, lineage: Lineage, state: Option<Vec<u8>>, merges: Vec<(String, Vec<u8>)>, yielding: bool },
    /// The answer to a handoff: where the name runs now, or `None` when the receiver
    /// could not take it (leaving, or its start failed).
    HandoffAck { name: WorkerName, at: Option<String> },
    /// This name runs nowhere since its node went down: the receiver owns it now.
    Orphan { name: WorkerName, args: Vec<u8>, lineage: Lineage },
    /// Drop the copy of this durable name's state the sender replicated here: the
    /// receiver is no longer one of its replicas (or the name stopped or moved).
    ReplicaDropped { name: WorkerName },
    /// The sender owns this lost durable name and holds no copy of its state (it came
    /// up after the last copy went out), though the copy may list it among its holders:
    /// a node that holds one starts it. Appended last, so a node that predates it fails
    /// to read only this message.
    NoCopy { name: WorkerName },
}

/// postcard's variant indexes of [`Rpc::Call`] and [`Rpc::Cast`] (a body's first byte),
/// read by the connection's fast path with their fields borrowed.
pub const RPC_CALL: u8 = 1;
pub const RPC_CAST: u8 = 2;
/// `Rpc::Call`'s fields, borrowed: kind, key, message, timeout, call id.
pub type CallFields<'a> = (&'a str, &'a str, &'a [u8], u64, Option<&'a str>);
/// `Rpc::Cast`'s fields, borrowed: kind, key, message.
pub type CastFields<'a> = (&'a str, &'a str, &'a [u8]);

/// A request body: the request in postcard.
pub fn encode(rpc: &Rpc) -> Bytes {
    Bytes::from(postcard::to_stdvec(rpc).expect("registry requests serialize"))
}

/// A request from its body.
pub fn decode(body: &[u8]) -> Result<Rpc, postcard::Error> {
    postcard::from_bytes(body)
}

pub fn encode_reply(reply: &RpcReply) -> Bytes {
    Bytes::from(postcard::to_stdvec(reply).expect("registry replies serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reader's fast path reads calls and casts by postcard's variant index and
    /// borrowed fields: they must stay what `Rpc` encodes.
    #[test]
    fn the_fast_path_reads_calls_and_casts_as_rpc_writes_them() {
        let name = WorkerName::new("order", "John");
        let call = encode(&Rpc::Call { name: name.clone(), msg: b"contents".to_vec(), timeout_ms: 1234, call_id: None });
        assert_eq!(call[0], RPC_CALL);
        assert_eq!(postcard::from_bytes::<CallFields<'_>>(&call[1..]).unwrap(), ("order", "John", &b"contents"[..], 1234, None));
        let once = encode(&Rpc::Call { name: name.clone(), msg: b"x".to_vec(), timeout_ms: 1, call_id: Some("id-1".into()) });
        assert_eq!(postcard::from_bytes::<CallFields<'_>>(&once[1..]).unwrap(), ("order", "John", &b"x"[..], 1, Some("id-1")));
        let cast = encode(&Rpc::Cast { name: WorkerName::new("counter", "c1"), msg: b"increment".to_vec() });
        assert_eq!(cast[0], RPC_CAST);
        assert_eq!(postcard::from_bytes::<CastFields<'_>>(&cast[1..]).unwrap(), ("counter", "c1", &b"increment"[..]));
        // Nothing else looks like either.
        let start = encode(&Rpc::Start { name, args: vec![] });
        assert!(![RPC_CALL, RPC_CAST].contains(&start[0]));
        let tell = encode(&Rpc::Tell(Msg::Synced));
        assert!(![RPC_CALL, RPC_CAST].contains(&tell[0]));
    }

    #[test]
    fn every_message_round_trips() {
        let name = WorkerName::new("order", "John");
        let msgs = [
            Msg::Registered { name: name.clone(), args: vec![1], lineage: Lineage { restarts: 2, moves: 3, from_copy: 7 } },
            Msg::Unregistered { name: name.clone() },
            Msg::Synced,
            Msg::Handoff {
                name: name.clone(),
                args: vec![],
                lineage: Lineage::default(),
                state: Some(vec![7; 3]),
                merges: vec![("c@h".into(), vec![1])],
                yielding: true,
            },
            Msg::HandoffAck { name: name.clone(), at: Some("b@h".into()) },
            Msg::Orphan { name: name.clone(), args: vec![], lineage: Lineage::default() },
            Msg::ReplicaDropped { name: name.clone() },
        ];
        for m in msgs {
            match decode(&encode(&Rpc::Tell(m.clone()))).unwrap() {
                Rpc::Tell(back) => assert_eq!(back, m),
                other => panic!("{m:?} came back as {other:?}"),
            }
        }
        let copy = Replicate {
            name,
            args: vec![1],
            lineage: Lineage::default(),
            seq: 9,
            update: Update::Delta { base: 8, len: 3, runs: vec![(1, vec![2])] },
            holders: vec!["b@h".into()],
        };
        assert!(matches!(decode(&encode(&Rpc::Replicate(Box::new(copy.clone())))).unwrap(), Rpc::Replicate(back) if *back == copy));
        let with_reply = Rpc::ReplicateThenReply { copy: Box::new(copy.clone()), id: 9, reply: encode_reply(&RpcReply::Reply(b"7".to_vec())).to_vec() };
        match decode(&encode(&with_reply)).unwrap() {
            Rpc::ReplicateThenReply { copy: back, id: 9, reply } => {
                assert_eq!(*back, copy);
                assert!(matches!(postcard::from_bytes(&reply).unwrap(), RpcReply::Reply(r) if r == b"7"));
            }
            other => panic!("{other:?}"),
        }
        assert!(decode(&[0xff]).is_err(), "an unknown request is an error, not a guess");
    }
}
