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
        #[serde(deserialize_with = "checked::call_id")]
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
    #[serde(deserialize_with = "checked::held")]
    pub held: Vec<Held>,
    #[serde(deserialize_with = "checked::sent")]
    pub sent: Vec<Sent>,
}

/// A copy held: its name, the node that runs it, the copy's number, its size in bytes.
pub type Held = (WorkerName, String, u64, usize);
/// A copy sent: its name, its number, the replicas that acknowledged it.
pub type Sent = (WorkerName, u64, Vec<String>);

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
    #[serde(deserialize_with = "checked::nodes")]
    pub holders: Vec<String>,
    /// The line of the instance the copy is of ([`origin::Base`](super::origin::Base)).
    /// It travels after the whole request ([`encode`]), where a node before it leaves it
    /// unread, and is `None` from such a node.
    #[serde(skip)]
    pub line: Option<u64>,
    /// How far the copied state went: the height of the state its instance started
    /// from and the changes it copied since ([`Origin::height`]). It travels after the
    /// line, and is `None` from a node before it.
    #[serde(skip)]
    pub height: Option<u64>,
    /// What the copied state holds all of besides its own line: it travels after the
    /// height, and is `None` from a node before it. A replica holding copies of two
    /// instances of a name tells by it whether one holds all of the other.
    #[serde(skip)]
    pub holds: Option<Holds>,
}

/// What an instance's state holds all of besides its own line
/// ([`origin::Base`](super::origin::Base)): the ids of the states and lines in its
/// `holds`, and the copy of a line it started from, changed since or not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holds {
    pub ids: Vec<u64>,
    pub copy: Option<(u64, u64)>,
}

impl Holds {
    /// Whether the state holds all of copy `seq` of the instance of line `line`: it
    /// holds all of that line, or started from that copy or a later one of it.
    pub fn holds_copy(&self, copy: (u64, u64)) -> bool {
        holds_copy(&self.ids, self.copy, copy)
    }
}

/// Whether a state that holds all of the states and lines `ids`, and of the copies
/// `copies` (each a line and a copy's number), holds all of copy `seq` of the instance
/// of line `line`: it holds all of that line, or of that copy or a later one of it.
pub fn holds_copy(ids: &[u64], copies: impl IntoIterator<Item = (u64, u64)>, (line, seq): (u64, u64)) -> bool {
    ids.contains(&line) || copies.into_iter().any(|(l, s)| l == line && s >= seq)
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    Started(#[serde(deserialize_with = "checked::node")] String),
    StartFailed(StartError),
    Reply(Vec<u8>),
    CallFailed(CallError),
    Done,
    List(#[serde(deserialize_with = "checked::worker_names")] Vec<String>),
    /// The name runs on this node now: send the call there (it was not handled here).
    Moved(#[serde(deserialize_with = "checked::node")] String),
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
    /// The sender no longer runs this name. `went`: the node its instance's state went
    /// to (it yielded to the instance there), so that a receiver that does not hear
    /// that node knows the name runs on beyond the sender (`Table::unregistered`). Last,
    /// and read as `None` when absent, so that nodes before it and after it read each
    /// other's.
    Unregistered {
        name: WorkerName,
        #[serde(deserialize_with = "checked::node_trailing")]
        went: Option<String>,
    },
    /// The sender has told the receiver every name it runs.
    Synced,
    /// Run this name here, from the state its previous instance handed over, and merge
    /// into it the states in `merges` (other instances' that stopped in its favour).
    /// With `yielding`, the sender's instance stopped in favour of the receiver's: its
    /// state merges into the instance running there. Answered with
    /// [`Msg::HandoffAck`]; until then the sender keeps every state it sent.
    Handoff {
        name: WorkerName,
        args: Vec<u8>,
        lineage: Lineage,
        state: Option<Vec<u8>>,
        #[serde(deserialize_with = "checked::node_keyed")]
        merges: Vec<(String, Vec<u8>)>,
        yielding: bool,
        /// Which state `state` is ([`Origin`]). Read as `None` when absent, so that
        /// nodes before it and after it read each other's handoffs.
        #[serde(deserialize_with = "checked::origin")]
        origin: Option<Origin>,
        /// Which state each of `merges` is, in the same order, where the sender knows
        /// (the instance that merges them then holds all of them, and one handed to it
        /// again adds nothing). Last, and read as empty when absent (a node before it).
        #[serde(deserialize_with = "checked::origins")]
        merge_origins: Vec<Option<Origin>>,
    },
    /// The answer to a handoff: where the name runs now, or `None` when the receiver
    /// could not take it (leaving, or its start failed).
    HandoffAck {
        name: WorkerName,
        #[serde(deserialize_with = "checked::node_opt")]
        at: Option<String>,
    },
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
    /// The sender runs workers of these kinds and no others: names of a kind are placed
    /// among the members that run it. Sent first on each connection. Appended last, so
    /// a node that predates it fails to read only this message (and places every name
    /// among all members, as before it).
    Kinds {
        #[serde(deserialize_with = "checked::kinds")]
        kinds: Vec<String>,
    },
    /// The sender would take this lost durable name over from the copy it holds: which
    /// copies of it does the receiver hold? Answered with [`Msg::CopyHeld`] (see
    /// `latest.rs`). Appended last, so a node that predates it fails to read only this
    /// message, and the sender stops waiting for its answer after a while.
    CopyAsk { name: WorkerName },
    /// The copies of this durable name the sender holds (none: empty), in answer to
    /// [`Msg::CopyAsk`].
    CopyHeld {
        name: WorkerName,
        #[serde(deserialize_with = "checked::copies")]
        copies: Vec<CopyAt>,
    },
    /// `node` runs this name, an instance of this lineage, which stays over the one the
    /// receiver announced (`placement::stays`): told by a node that hears `node`, to one
    /// that may not (it was paused or cut off while the name was taken over there). See
    /// `Table::runs_on`. Appended last, so a node that predates it fails to read only
    /// this message.
    RunsOn {
        name: WorkerName,
        #[serde(deserialize_with = "checked::node")]
        node: String,
        lineage: Lineage,
    },
}

/// Which copy of a durable instance's state a node holds: its instance's line, its
/// number and its height ([`Replicate`]'s fields of the same names), and whether the
/// node that sent it is still connected to the holder on the connection it came on
/// (`live`): told to a node about to take the name over ([`Msg::CopyHeld`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyAt {
    pub line: Option<u64>,
    pub seq: u64,
    pub height: Option<u64>,
    pub live: bool,
}

/// Which state a handoff carries. A handoff that goes unanswered goes to the next node
/// when its target is declared down; a target that was only paused (or cut off) may
/// still read the first one when it wakes, and start a second instance from the same
/// state. When the two meet, a state that one of them started from and left as it was
/// adds nothing to the other: it is not merged, so a worker whose merge appends (an
/// order's items) does not hold it twice, and one without a merge keeps the state that
/// went on rather than the one that stood still.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The handed state's id: random, and the same to every node the state goes to.
    pub state: u64,
    /// The ids of the states this one holds all of, `state` first: those its instance
    /// started from or merged, and theirs, and the lines of their instances (the latest
    /// [`Origin::HOLDS`]).
    pub holds: Vec<u64>,
    /// When the state is a replica's copy of an instance's state, left as it was by the
    /// instance started from it (a failover that has not changed it): that instance's
    /// line and the copy's number. A state holding all of that line holds all of it, and
    /// so does a later copy of the line. Last, and read as `None` when absent (a node
    /// before it).
    #[serde(default, deserialize_with = "checked::trailing")]
    pub copy_of: Option<(u64, u64)>,
    /// How far the state went: the copies its instances sent, along its history
    /// ([`Base::height`](super::origin::Base::height)). Of two instances that went on
    /// from a shared state, the one that went further is the one merged into, and the
    /// one a worker without a merge keeps. Last, and read as `None` when absent (a node
    /// before it).
    #[serde(default, deserialize_with = "checked::trailing")]
    pub height: Option<u64>,
    /// The copy of a line this state holds all of, left as it was or not: the one its
    /// instance started from (a failover), handed on along its history. Unlike
    /// `copy_of`, it stays when the instance changes the state: a copy of the same line
    /// up to that number adds nothing to it, and one of another line (another instance
    /// with the same lineage) may. Last, and read as `None` when absent (a node before
    /// it).
    #[serde(default, deserialize_with = "checked::trailing")]
    pub from_copy: Option<(u64, u64)>,
}

impl Origin {
    /// How many ids [`Origin::holds`] keeps: two instances of one state meet within
    /// seconds of the handoff that made them, a few moves later at most.
    pub const HOLDS: usize = 32;

    /// Whether this state holds all of copy `seq` of the instance of line `line`: it
    /// holds all of that line, or is, or started from, that copy or a later one of it.
    pub fn holds_copy(&self, copy: (u64, u64)) -> bool {
        holds_copy(&self.holds, [self.copy_of, self.from_copy].into_iter().flatten(), copy)
    }

    /// Whether this state holds all of the state `o`: by its id, or, for a copy left as
    /// it was, by its line and number ([`Origin::holds_copy`]).
    pub fn holds_all_of(&self, o: &Origin) -> bool {
        self.holds.contains(&o.state) || o.copy_of.is_some_and(|c| self.holds_copy(c))
    }

    /// This state's origin, saying that it holds all of the state `o` too (it goes on in
    /// that one's place): whoever holds it then holds `o`'s state, should that come again.
    pub fn holding(mut self, o: &Origin) -> Origin {
        let more: Vec<u64> = o.holds.iter().filter(|h| !self.holds.contains(h)).copied().collect();
        self.holds.extend(more);
        self.holds.truncate(Origin::HOLDS);
        self
    }
}

/// How many kinds a member may say it runs ([`Msg::Kinds`]).
pub const MAX_KINDS: usize = 4096;

/// How many copies of one name a member may say it holds ([`Msg::CopyHeld`]): one per
/// node that copies the name there, which two instances of it make two.
pub const MAX_COPIES: usize = 64;

/// postcard's variant indexes of [`Rpc::Call`] and [`Rpc::Cast`] (a body's first byte),
/// read by the connection's fast path with their fields borrowed.
pub const RPC_CALL: u8 = 1;
pub const RPC_CAST: u8 = 2;
/// `Rpc::Call`'s fields, borrowed: kind, key, message, timeout, call id.
pub type CallFields<'a> = (&'a str, &'a str, &'a [u8], u64, Option<&'a str>);
/// `Rpc::Cast`'s fields, borrowed: kind, key, message.
pub type CastFields<'a> = (&'a str, &'a str, &'a [u8]);

/// Deserializers for the fields that carry node names, worker names as text and call
/// ids: a message that holds one no node could have sent (one that would break a log
/// line, say) is not decoded, and so nothing logs it. (Worker names as [`WorkerName`]
/// are checked by their own type.)
pub(super) mod checked {
    use serde::de::{Deserializer, Error};
    use serde::Deserialize;

    use super::{Held, Sent};
    use crate::name::NodeName;
    use crate::registry::WorkerName;

    fn node_name<E: Error>(s: String) -> Result<String, E> {
        NodeName::parse(&s).map(|_| s).map_err(E::custom)
    }

    pub fn node<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        node_name(String::deserialize(d)?)
    }

    pub fn node_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Option::<String>::deserialize(d)?.map(node_name).transpose()
    }

    /// [`trailing`] for a node name: absent reads as `None`; present, it is checked.
    pub fn node_trailing<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        trailing::<D, String>(d)?.map(node_name).transpose()
    }

    pub fn nodes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Vec::<String>::deserialize(d)?.into_iter().map(node_name).collect()
    }

    pub fn node_keyed<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, Vec<u8>)>, D::Error> {
        Vec::<(String, Vec<u8>)>::deserialize(d)?.into_iter().map(|(n, v)| Ok((node_name(n)?, v))).collect()
    }

    pub fn held<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Held>, D::Error> {
        Vec::<Held>::deserialize(d)?.into_iter().map(|(w, n, seq, len)| Ok((w, node_name(n)?, seq, len))).collect()
    }

    pub fn sent<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Sent>, D::Error> {
        Vec::<Sent>::deserialize(d)?.into_iter().map(|(w, seq, acked)| Ok((w, seq, acked.into_iter().map(node_name).collect::<Result<_, _>>()?))).collect()
    }

    pub fn kind<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let kind = String::deserialize(d)?;
        crate::registry::check_kind(&kind).map_err(D::Error::custom)?;
        Ok(kind)
    }

    /// A member's kinds ([`Msg::Kinds`]): each one a valid kind, at most [`MAX_KINDS`](super::MAX_KINDS).
    pub fn kinds<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let kinds = Vec::<String>::deserialize(d)?;
        if kinds.len() > super::MAX_KINDS {
            return Err(D::Error::custom(format!("{} kinds, over {}", kinds.len(), super::MAX_KINDS)));
        }
        for k in &kinds {
            crate::registry::check_kind(k).map_err(D::Error::custom)?;
        }
        Ok(kinds)
    }

    /// The copies a member holds of one name ([`Msg::CopyHeld`]): at most
    /// [`MAX_COPIES`](super::MAX_COPIES).
    pub fn copies<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<super::CopyAt>, D::Error> {
        let copies = Vec::<super::CopyAt>::deserialize(d)?;
        if copies.len() > super::MAX_COPIES {
            return Err(D::Error::custom(format!("{} copies of one name, over {}", copies.len(), super::MAX_COPIES)));
        }
        Ok(copies)
    }

    pub fn worker_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        for n in &names {
            n.parse::<WorkerName>().map_err(D::Error::custom)?;
        }
        Ok(names)
    }

    /// A field added last to a message: `None` when the message ends before it (a
    /// node that predates the field sent it) or holds no valid one.
    pub fn trailing<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
        Ok(Option::<T>::deserialize(d).unwrap_or(None))
    }

    /// [`trailing`] for an [`Origin`](super::Origin), its list held to its length.
    pub fn origin<'de, D: Deserializer<'de>>(d: D) -> Result<Option<super::Origin>, D::Error> {
        Ok(trailing::<D, super::Origin>(d)?.map(|mut o| {
            o.holds.truncate(super::Origin::HOLDS);
            o
        }))
    }

    /// A list of origins added last to a message: empty when the message ends before it
    /// or holds no valid one; each origin's list held to its length.
    pub fn origins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<super::Origin>>, D::Error> {
        let mut all = Vec::<Option<super::Origin>>::deserialize(d).unwrap_or_default();
        for o in all.iter_mut().flatten() {
            o.holds.truncate(super::Origin::HOLDS);
        }
        Ok(all)
    }

    pub fn call_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let id = Option::<String>::deserialize(d)?;
        if let Some(id) = &id {
            crate::registry::calls::check_id(id).map_err(D::Error::custom)?;
        }
        Ok(id)
    }
}

/// A request body: the request in postcard; a copy's line, height and holds follow it
/// ([`Replicate::line`], [`Replicate::height`], [`Replicate::holds`]).
pub fn encode(rpc: &Rpc) -> Bytes {
    let mut body = postcard::to_stdvec(rpc).expect("registry requests serialize");
    if let Rpc::Replicate(c) | Rpc::ReplicateThenReply { copy: c, .. } = rpc {
        body.extend(postcard::to_stdvec(&(c.line, c.height, &c.holds)).expect("a line serializes"));
    }
    Bytes::from(body)
}

/// A request from its body (bytes after the request are left unread, but for a copy's
/// line).
pub fn decode(body: &[u8]) -> Result<Rpc, postcard::Error> {
    let (mut rpc, rest) = postcard::take_from_bytes::<Rpc>(body)?;
    if let Rpc::Replicate(c) | Rpc::ReplicateThenReply { copy: c, .. } = &mut rpc {
        let (line, rest) = postcard::take_from_bytes::<Option<u64>>(rest).unwrap_or((None, &[]));
        c.line = line;
        let (height, rest) = postcard::take_from_bytes::<Option<u64>>(rest).unwrap_or((None, &[]));
        c.height = height;
        c.holds = postcard::from_bytes::<Option<Holds>>(rest).unwrap_or(None).map(|mut h| {
            h.ids.truncate(Origin::HOLDS);
            h
        });
    }
    Ok(rpc)
}

/// A reply's body. One too large for a message between nodes (a worker's reply, a
/// listing) is answered as a failure that says so, and the connection carries on.
pub fn encode_reply(reply: &RpcReply) -> Bytes {
    let body = postcard::to_stdvec(reply).expect("registry replies serialize");
    if body.len() > crate::dist::MAX_BODY {
        return encode_reply(&RpcReply::CallFailed(CallError::Failed(crate::dist::too_large("the reply", body.len()))));
    }
    Bytes::from(body)
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

    /// A reply too large for one message between nodes is answered as a failure that
    /// says so; the largest that fits goes as it is.
    #[test]
    fn a_reply_too_large_to_send_is_a_failure_that_says_so() {
        // A `Reply`'s encoding is its bytes, their varint length and the variant.
        let fits = vec![7u8; crate::dist::MAX_BODY - 5];
        let body = encode_reply(&RpcReply::Reply(fits.clone()));
        assert!(body.len() <= crate::dist::MAX_BODY);
        assert!(matches!(postcard::from_bytes::<RpcReply>(&body).unwrap(), RpcReply::Reply(r) if r == fits));
        let over = crate::dist::MAX_BODY - 3;
        let body = encode_reply(&RpcReply::Reply(vec![7u8; over]));
        assert!(body.len() < 200, "{}", body.len());
        match postcard::from_bytes::<RpcReply>(&body).unwrap() {
            RpcReply::CallFailed(CallError::Failed(why)) => {
                assert_eq!(why, format!("the reply is {} bytes, over the 64 MiB one message between nodes may carry", over + 5));
            }
            other => panic!("{other:?}"),
        }
    }

    /// A node from before [`Origin`] sends handoffs without it and reads ours as its
    /// own: the field, and `merge_origins` after it, are a handoff's last bytes, which
    /// postcard leaves unread.
    #[test]
    fn handoffs_read_across_the_origin_field() {
        let m = |origin| Msg::Handoff {
            name: WorkerName::new("order", "John"),
            args: vec![1],
            lineage: Lineage::default(),
            state: Some(vec![7]),
            merges: vec![],
            yielding: false,
            origin,
            merge_origins: vec![],
        };
        let without = encode(&Rpc::Tell(m(None))).to_vec();
        // `None` and the empty `merge_origins` are the last bytes: without them, the
        // handoff as an older node sends it.
        let older = &without[..without.len() - 2];
        assert!(matches!(decode(older).unwrap(), Rpc::Tell(back) if back == m(None)));
        let with = encode(&Rpc::Tell(m(Some(Origin { state: 1 << 60, holds: vec![1 << 60, 5], copy_of: None, height: None, from_copy: None })))).to_vec();
        // As a node before `merge_origins` sends it.
        let with = &with[..with.len() - 1];
        assert!(with.starts_with(older), "an older node reads the fields it knows first");
        assert_eq!(postcard::from_bytes::<(u8, u8)>(&[3, 4, 9, 9]).unwrap(), (3, 4), "postcard leaves what follows unread");
        // An origin from a node before `from_copy`, or before `height` or `copy_of` too
        // (their last bytes, `None`, cut off) reads as one without them; one with them
        // reads back whole.
        for cut in [1, 2, 3] {
            assert!(
                matches!(decode(&with[..with.len() - cut]).unwrap(), Rpc::Tell(back) if back == m(Some(Origin { state: 1 << 60, holds: vec![1 << 60, 5], copy_of: None, height: None, from_copy: None })))
            );
        }
        let copy = m(Some(Origin { state: 3, holds: vec![3], copy_of: Some((1 << 62, 9)), height: Some(1 << 40), from_copy: Some((1 << 62, 9)) }));
        let body = encode(&Rpc::Tell(copy.clone()));
        assert!(matches!(decode(&body).unwrap(), Rpc::Tell(back) if back == copy));
        // A node before `height` reads the rest and leaves it; so does one before
        // `from_copy`.
        let before = m(Some(Origin { state: 3, holds: vec![3], copy_of: Some((1 << 62, 9)), height: None, from_copy: None }));
        let older = encode(&Rpc::Tell(before.clone()));
        assert!(body.starts_with(&older[..older.len() - 3]));
        let Msg::Handoff { origin: Some(o), .. } = &copy else { unreachable!() };
        let sent = postcard::to_stdvec(&(o.state, &o.holds, o.copy_of, o.height, o.from_copy)).unwrap();
        // An origin as a node before `from_copy` reads it.
        type Before = (u64, Vec<u64>, Option<(u64, u64)>, Option<u64>);
        let read: Before = postcard::from_bytes(&sent).unwrap();
        assert_eq!(read, (3, vec![3], Some((1 << 62, 9)), Some(1 << 40)));
    }

    /// A node before `merge_origins` sends handoffs without them, and reads ours as its
    /// own; ours read back whole.
    #[test]
    fn handoffs_read_across_merge_origins() {
        let origin = Origin { state: 5, holds: vec![5, 4], copy_of: None, height: Some(2), from_copy: None };
        let m = |merge_origins: Vec<Option<Origin>>| Msg::Handoff {
            name: WorkerName::new("order", "John"),
            args: vec![],
            lineage: Lineage::default(),
            state: Some(vec![7]),
            merges: vec![("b@h".into(), vec![1]), ("c@h".into(), vec![2])],
            yielding: true,
            origin: Some(origin.clone()),
            merge_origins,
        };
        let without = encode(&Rpc::Tell(m(vec![]))).to_vec();
        let older = &without[..without.len() - 1];
        assert!(matches!(decode(older).unwrap(), Rpc::Tell(back) if back == m(vec![])));
        let full = m(vec![Some(origin.clone()), None]);
        let with = encode(&Rpc::Tell(full.clone())).to_vec();
        assert!(with.starts_with(older), "an older node reads the fields it knows first");
        assert!(matches!(decode(&with).unwrap(), Rpc::Tell(back) if back == full));
    }

    /// A node before `went` sends `Unregistered` without it, and reads ours as its own.
    #[test]
    fn unregistered_reads_across_where_it_went() {
        let m = |went: Option<&str>| Msg::Unregistered { name: WorkerName::new("counter", "k30"), went: went.map(String::from) };
        let without = encode(&Rpc::Tell(m(None))).to_vec();
        let older = &without[..without.len() - 1];
        assert!(matches!(decode(older).unwrap(), Rpc::Tell(back) if back == m(None)));
        let with = encode(&Rpc::Tell(m(Some("c@h")))).to_vec();
        assert!(with.starts_with(older), "an older node reads the name and leaves the rest");
        assert!(matches!(decode(&with).unwrap(), Rpc::Tell(back) if back == m(Some("c@h"))));
        // A name no node could have sent is no message at all.
        let forged = encode(&Rpc::Tell(m(Some("c@h\nINFO forged")))).to_vec();
        assert!(decode(&forged).is_err());
    }

    /// A copy's line follows the whole request: a node before it reads the copy and
    /// leaves the line, and a copy from such a node reads with no line.
    #[test]
    fn copies_read_across_the_line() {
        let copy = Replicate {
            name: WorkerName::new("counter", "c1"),
            args: vec![],
            lineage: Lineage::default(),
            seq: 3,
            update: Update::Full(vec![5]),
            holders: vec!["b@h".into()],
            line: Some(1 << 61),
            height: Some(300),
            holds: Some(Holds { ids: vec![1 << 60, 5], copy: Some((1 << 59, 4)) }),
        };
        for rpc in [Rpc::Replicate(Box::new(copy.clone())), Rpc::ReplicateThenReply { copy: Box::new(copy.clone()), id: 4, reply: vec![1] }] {
            let body = encode(&rpc);
            let Ok(Rpc::Replicate(back) | Rpc::ReplicateThenReply { copy: back, .. }) = decode(&body) else { panic!("{rpc:?}") };
            assert_eq!((back.line, back.height), (Some(1 << 61), Some(300)));
            assert_eq!(back.holds, copy.holds);
            // As a node with the line and the height and before the holds sends it.
            let mut high = postcard::to_stdvec(&rpc).unwrap();
            high.extend(postcard::to_stdvec(&(copy.line, copy.height)).unwrap());
            assert!(body.starts_with(&high));
            let Ok(Rpc::Replicate(back) | Rpc::ReplicateThenReply { copy: back, .. }) = decode(&high) else { panic!("{rpc:?}") };
            assert_eq!(*back, Replicate { holds: None, ..copy.clone() });
            // As a node with the line and before the height sends it.
            let mut lined = postcard::to_stdvec(&rpc).unwrap();
            lined.extend(postcard::to_stdvec(&copy.line).unwrap());
            let Ok(Rpc::Replicate(back) | Rpc::ReplicateThenReply { copy: back, .. }) = decode(&lined) else { panic!("{rpc:?}") };
            assert_eq!(*back, Replicate { height: None, holds: None, ..copy.clone() });
            // As a node before the line sends it, and reads it.
            let older = postcard::to_stdvec(&rpc).unwrap();
            assert!(body.starts_with(&older));
            let Ok(Rpc::Replicate(back) | Rpc::ReplicateThenReply { copy: back, .. }) = decode(&older) else { panic!("{rpc:?}") };
            assert_eq!(*back, Replicate { line: None, height: None, holds: None, ..copy.clone() });
            assert!(matches!(postcard::from_bytes::<Rpc>(&body).unwrap(), Rpc::Replicate(_) | Rpc::ReplicateThenReply { .. }));
        }
    }

    #[test]
    fn every_message_round_trips() {
        let name = WorkerName::new("order", "John");
        let msgs = [
            Msg::Registered { name: name.clone(), args: vec![1], lineage: Lineage { restarts: 2, moves: 3, from_copy: 7 } },
            Msg::Unregistered { name: name.clone(), went: None },
            Msg::Unregistered { name: name.clone(), went: Some("c@h".into()) },
            Msg::Synced,
            Msg::Handoff {
                name: name.clone(),
                args: vec![],
                lineage: Lineage::default(),
                state: Some(vec![7; 3]),
                merges: vec![("c@h".into(), vec![1])],
                yielding: true,
                origin: Some(Origin { state: 7, holds: vec![7, 3], copy_of: Some((4, 2)), height: None, from_copy: None }),
                merge_origins: vec![],
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
            line: Some(77),
            height: Some(12),
            holds: Some(Holds { ids: vec![3, 4], copy: None }),
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

    /// What a peer could send, one of every request and reply, with good names.
    fn samples() -> Vec<Vec<u8>> {
        let name = WorkerName::new("order", "John/1");
        let copy = Replicate {
            name: name.clone(),
            args: vec![1],
            lineage: Lineage::default(),
            seq: 9,
            update: Update::Delta { base: 8, len: 3, runs: vec![(1, vec![2])] },
            holders: vec!["b@h".into(), "c@[::1]:4371".into()],
            line: Some(77),
            height: Some(12),
            holds: Some(Holds { ids: vec![3, 4], copy: None }),
        };
        let msgs = [
            Msg::Registered { name: name.clone(), args: vec![1], lineage: Lineage::default() },
            Msg::Handoff {
                name: name.clone(),
                args: vec![],
                lineage: Lineage::default(),
                state: Some(vec![7]),
                merges: vec![("c@h".into(), vec![1])],
                yielding: true,
                origin: Some(Origin { state: 7, holds: vec![7, 3], copy_of: Some((4, 2)), height: None, from_copy: None }),
                merge_origins: vec![],
            },
            Msg::HandoffAck { name: name.clone(), at: Some("b@h".into()) },
            Msg::NoCopy { name: name.clone() },
            Msg::Kinds { kinds: vec!["order".into(), "counter".into()] },
            Msg::CopyAsk { name: name.clone() },
            Msg::CopyHeld { name: name.clone(), copies: vec![CopyAt { line: Some(3), seq: 9, height: None, live: true }] },
            Msg::RunsOn { name: name.clone(), node: "b@h".into(), lineage: Lineage { restarts: 0, moves: 2, from_copy: 5 } },
        ];
        let mut out: Vec<Vec<u8>> = msgs.into_iter().map(|m| encode(&Rpc::Tell(m)).to_vec()).collect();
        for rpc in [
            Rpc::Start { name: name.clone(), args: vec![3] },
            Rpc::Call { name: name.clone(), msg: b"m".to_vec(), timeout_ms: 5, call_id: Some("id-1".into()) },
            Rpc::Cast { name: name.clone(), msg: vec![] },
            Rpc::Replicate(Box::new(copy.clone())),
            Rpc::ReplicateThenReply { copy: Box::new(copy), id: 3, reply: vec![2, 1] },
        ] {
            out.push(encode(&rpc).to_vec());
        }
        let report = DurableReport { held: vec![(name.clone(), "a@h".into(), 1, 2)], sent: vec![(name, 3, vec!["b@h".into()])] };
        for reply in [
            RpcReply::Started("a@h".into()),
            RpcReply::StartFailed(StartError::AlreadyStarted("a@h".into())),
            RpcReply::StartFailed(StartError::UnknownKind("order".into())),
            RpcReply::List(vec!["order/John".into()]),
            RpcReply::Moved("b@h:4371".into()),
            RpcReply::Durable(report),
        ] {
            out.push(encode_reply(&reply).to_vec());
        }
        out
    }

    /// Every name and call id in a decoded request or reply is one a node could send.
    fn all_checked(rpc: Option<&Rpc>, reply: Option<&RpcReply>) -> Result<(), String> {
        let (mut workers, mut nodes, mut ids): (Vec<&WorkerName>, Vec<&str>, Vec<&str>) = Default::default();
        let mut owned = Vec::new();
        match rpc {
            Some(Rpc::Start { name, .. } | Rpc::Cast { name, .. }) => workers.push(name),
            Some(Rpc::Call { name, call_id, .. }) => {
                workers.push(name);
                ids.extend(call_id.as_deref());
            }
            Some(Rpc::Replicate(c) | Rpc::ReplicateThenReply { copy: c, .. }) => owned.push((c.name.clone(), c.holders.clone())),
            Some(Rpc::Tell(m)) => match m {
                Msg::Registered { name, .. } | Msg::Orphan { name, .. } | Msg::ReplicaDropped { name } | Msg::NoCopy { name } | Msg::CopyAsk { name } => {
                    workers.push(name)
                }
                Msg::CopyHeld { name, copies } => {
                    workers.push(name);
                    if copies.len() > MAX_COPIES {
                        return Err(format!("{} copies", copies.len()));
                    }
                }
                Msg::Handoff { name, merges, .. } => {
                    workers.push(name);
                    nodes.extend(merges.iter().map(|(n, _)| n.as_str()));
                }
                Msg::HandoffAck { name, at } | Msg::Unregistered { name, went: at } => {
                    workers.push(name);
                    nodes.extend(at.as_deref());
                }
                Msg::RunsOn { name, node, .. } => {
                    workers.push(name);
                    nodes.push(node);
                }
                Msg::Synced => {}
                Msg::Kinds { kinds } => {
                    if kinds.len() > MAX_KINDS {
                        return Err(format!("{} kinds", kinds.len()));
                    }
                    for k in kinds {
                        crate::registry::check_kind(k).map_err(|e| e.to_string())?;
                    }
                }
            },
            Some(Rpc::List | Rpc::Durable) | None => {}
        }
        for (name, holders) in &owned {
            workers.push(name);
            nodes.extend(holders.iter().map(String::as_str));
        }
        let listed: Vec<WorkerName>;
        match reply {
            Some(RpcReply::Started(n) | RpcReply::Moved(n) | RpcReply::StartFailed(StartError::AlreadyStarted(n))) => nodes.push(n),
            Some(RpcReply::StartFailed(StartError::UnknownKind(k))) => crate::registry::check_kind(k).map_err(|e| e.to_string())?,
            Some(RpcReply::List(names)) => {
                listed = names.iter().map(|n| n.parse::<WorkerName>()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
                workers.extend(&listed);
            }
            Some(RpcReply::Durable(r)) => {
                for (name, node, ..) in &r.held {
                    workers.push(name);
                    nodes.push(node);
                }
                for (name, _, acked) in &r.sent {
                    workers.push(name);
                    nodes.extend(acked.iter().map(String::as_str));
                }
            }
            _ => {}
        }
        for w in workers {
            WorkerName::check(&w.kind, &w.key).map_err(|e| e.to_string())?;
        }
        for n in nodes {
            crate::name::NodeName::parse(n).map_err(|e| e.to_string())?;
        }
        for id in ids {
            super::super::calls::check_id(id)?;
        }
        Ok(())
    }

    /// What a replica or a handoff's receiver does with the bytes a decoded message
    /// carries, short of running a worker: a copy applied to the copy it names (held here
    /// at 100 bytes), and every state split into the worker's part and a call log, which
    /// then records an outcome and merges another. None of it may panic, and a copy
    /// grows a state by the bytes it carries at most (a delta claiming a terabyte must not
    /// be allocated).
    fn take_in(rpc: &Rpc) -> Result<(), proptest::test_runner::TestCaseError> {
        let mut states = Vec::new();
        match rpc {
            Rpc::Replicate(c) | Rpc::ReplicateThenReply { copy: c, .. } => {
                let old = vec![0u8; 100];
                let base = match &c.update {
                    Update::Delta { base, .. } => *base,
                    Update::Full(_) => 0,
                };
                if let Some(state) = c.update.clone().apply(Some((base, &old))) {
                    let most = old.len() + c.update.payload_len();
                    proptest::prop_assert!(state.len() <= most, "a copy of {} bytes made a state of {}", c.update.payload_len(), state.len());
                    states.push(state);
                }
            }
            Rpc::Tell(Msg::Handoff { state, merges, .. }) => {
                states.extend(state.iter().cloned());
                states.extend(merges.iter().map(|(_, s)| s.clone()));
            }
            _ => {}
        }
        for state in states {
            let (_, mut log) = crate::registry::calls::CallLog::split(Some(&state));
            let other = log.clone();
            log.record("after".into(), Ok(vec![]), 1);
            log.merge(other);
        }
        Ok(())
    }

    /// Whatever a peer sends, decoding it does not panic, and what decodes holds only
    /// names and ids that could not break a log line, and encodes back to itself.
    fn check_decoding(body: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
        if let Ok(rpc) = decode(body) {
            proptest::prop_assert!(all_checked(Some(&rpc), None).is_ok(), "{rpc:?}: {:?}", all_checked(Some(&rpc), None));
            take_in(&rpc)?;
            let again = encode(&rpc);
            proptest::prop_assert_eq!(encode(&decode(&again).unwrap()), again);
        }
        if let Ok(reply) = postcard::from_bytes::<RpcReply>(body) {
            proptest::prop_assert!(all_checked(None, Some(&reply)).is_ok(), "{reply:?}: {:?}", all_checked(None, Some(&reply)));
        }
        if body.first() == Some(&RPC_CALL) {
            // The fast path reads a call only where the ordered path would.
            if let Ok((kind, key, _, _, id)) = postcard::from_bytes::<CallFields<'_>>(&body[1..]) {
                let fast_takes = id.is_none_or(|id| super::super::calls::check_id(id).is_ok());
                let ordered_takes = decode(body).is_ok();
                proptest::prop_assert!(!fast_takes || ordered_takes || WorkerName::check(kind, key).is_err(), "fast path took what the ordered path refuses");
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2048, ..Default::default() })]

        #[test]
        fn arbitrary_bytes_from_a_peer_decode_to_checked_names_or_not_at_all(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            check_decoding(&body)?;
        }

        /// Good messages with bytes changed or put in: names grow control characters,
        /// lengths go wrong.
        #[test]
        fn altered_messages_decode_to_checked_names_or_not_at_all(
            pick in 0usize..64,
            edits in proptest::collection::vec((0usize..512, proptest::prelude::any::<u8>(), proptest::prelude::any::<bool>()), 1..4),
        ) {
            let samples = samples();
            let mut body = samples[pick % samples.len()].clone();
            for (at, byte, insert) in edits {
                let at = at % (body.len() + 1);
                if insert || at == body.len() { body.insert(at, byte) } else { body[at] = byte }
            }
            check_decoding(&body)?;
        }
    }

    #[test]
    fn a_peer_message_with_a_name_that_would_break_a_log_line_is_not_decoded() {
        for good in samples() {
            check_decoding(&good).unwrap();
            assert!(decode(&good).is_ok() || postcard::from_bytes::<RpcReply>(&good).is_ok());
        }
        let bad = "b@h\n2026-12-04T00:00:00Z  INFO forged";
        let name = WorkerName::new("order", "John");
        for rpc in [
            Rpc::Tell(Msg::HandoffAck { name: name.clone(), at: Some(bad.into()) }),
            Rpc::Tell(Msg::Handoff {
                name: name.clone(),
                args: vec![],
                lineage: Lineage::default(),
                state: None,
                merges: vec![(bad.into(), vec![])],
                yielding: false,
                origin: None,
                merge_origins: vec![],
            }),
            Rpc::Call { name: name.clone(), msg: vec![], timeout_ms: 1, call_id: Some("id\nforged".into()) },
            Rpc::Cast { name: WorkerName::new("order", "x\rforged"), msg: vec![] },
        ] {
            assert!(decode(&encode(&rpc)).is_err(), "{rpc:?}");
        }
        for reply in [RpcReply::Moved(bad.into()), RpcReply::Started(bad.into()), RpcReply::List(vec!["order/a\nb".into()])] {
            assert!(postcard::from_bytes::<RpcReply>(&encode_reply(&reply)).is_err(), "{reply:?}");
        }
    }
}
