//! wasmnode's wire format: frames, fragments, the handshake and the cookie digest.
//!
//! This crate knows bytes and the handshake's math and nothing of sockets (the
//! layering of mini-redis' `frame` and hickory's `proto`), so it can be unit-tested
//! and fuzzed alone. The `dist` module of the node crate owns the sockets.
//!
//! Layout:
//! - [`frame`]: length-prefixed frames ([`Frame`]), their encoder and the incremental
//!   decoder [`frame::decode`], plus [`frame::Fragmenter`] / [`frame::Reassembler`]
//!   that split a large message so heartbeats never wait behind it.
//! - [`handshake`]: the messages and state machines of the handshake (Noise `NNpsk0`
//!   keyed by the cookie); the cookie itself never leaves the process.
//! - [`seal`]: the records every frame travels in after the handshake, encrypted and
//!   authenticated with the connection's own keys.
//! - [`trace`]: the W3C trace context a traced request carries.
//! - [`Error`]: what can go wrong, grouped by who is at fault.
//!
//! # Example
//! ```
//! use wasmnode_proto::{frame, Frame};
//! let mut wire = Vec::new();
//! Frame::Heartbeat.encode(&mut wire);
//! let (decoded, used) = frame::decode(&wire, frame::DEFAULT_MAX_FRAME).unwrap().unwrap();
//! assert_eq!(decoded, Frame::Heartbeat);
//! assert_eq!(used, wire.len());
//! ```

pub mod frame;
pub mod handshake;
pub mod seal;
pub mod trace;

pub use frame::{Frame, Service};
pub use handshake::Refusal;
pub use trace::TraceContext;

/// The protocol version both sides must speak; a mismatch refuses the handshake.
/// Version 2: requests name their service; refusals carry a code. Version 3: the
/// handshake is Noise `NNpsk0` keyed by the cookie and every frame after it is sealed.
/// Version 4: records are sealed with AEGIS-128X4 instead of AES-256-GCM. Version 5: a
/// record's length takes 4 bytes and a record up to 512 KiB, so that a writer's batch is
/// one record, opened in place; two nodes that both set [`handshake::FLAG_CIPHER_CHOICE`]
/// seal with AEGIS-128X2 unless both CPUs have 512-bit AES instructions (a flag, not a
/// version: a node without it gets AEGIS-128X4, as before).
pub const PROTOCOL_VERSION: u16 = 5;

/// The oldest version a node still speaks, so that a rolling update from it hands workers
/// over: a node of version 3 is answered in version 3 (its records in AES-256-GCM), and a
/// node that refuses version 5 is dialled again in version 3. Version 4 (on main for one
/// day, never released) is not spoken: a node of it refuses 5, and both go on in 3.
pub const OLDEST_VERSION: u16 = 3;

/// The versions a node speaks: [`PROTOCOL_VERSION`] and [`OLDEST_VERSION`].
pub fn speaks(version: u16) -> bool {
    version == PROTOCOL_VERSION || version == OLDEST_VERSION
}

/// Everything that can go wrong while reading the wire, by who is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // -- the peer sent garbage --
    /// A frame announced a length above the limit; the connection must be closed.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: usize, max: usize },
    /// A frame's tag is not one this version knows.
    #[error("unknown frame tag {0:#04x}")]
    UnknownTag(u8),
    /// A frame's body does not parse as its tag says.
    #[error("malformed {what} frame: {why}")]
    Malformed { what: &'static str, why: &'static str },

    // -- the peer broke the protocol --
    /// A valid frame arrived where the protocol does not allow it.
    #[error("protocol violation: {0}")]
    PeerMisbehaved(&'static str),
    /// The peer speaks another protocol version.
    #[error("protocol version {theirs} is not supported (this node speaks {ours})")]
    VersionMismatch { ours: u16, theirs: u16 },

    // -- authentication failed --
    /// The peer's handshake does not open with our cookie: the cookies differ.
    #[error("cookie mismatch")]
    CookieMismatch,
    /// The node that answered is not the node dialled.
    #[error("dialled {dialled} but {answered} answered")]
    WrongNode { dialled: String, answered: String },
    /// A sealed record did not open: altered, replayed, reordered or injected on the way.
    #[error("a sealed record failed authentication (altered, replayed, reordered or injected)")]
    Decrypt,
    /// The dialer fell back to an older version than both sides speak: the version
    /// refusal it fell back on came from a party on the path, not from this node.
    #[error("{name} dialled in wire version {spoken}, though both nodes speak {both}: a party on the path forged the version refusal it fell back on")]
    Downgraded { name: String, spoken: u16, both: u16 },
    /// The peer refused us: why, as a code and in words.
    #[error("refused by peer: {reason}")]
    Refused { code: Refusal, reason: String },
}
