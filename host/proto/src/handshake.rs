//! The cookie handshake: four messages, two HMAC-SHA256 proofs, no cookie on the wire.
//!
//! ```text
//! dialer                                   acceptor
//!   Hello { version, name, flags, creation, challenge_d }  ->
//!   <-  Challenge { version, name, flags, creation, challenge_a }
//!   Proof { HMAC(cookie, "dialer"   || transcript) }        ->
//!   <-  Accept { HMAC(cookie, "acceptor" || transcript) }  |  Refuse { reason }
//! ```
//! `transcript` is the encoded `Hello` body followed by the encoded `Challenge` body, so
//! each proof binds both names, both flags and both random challenges: a proof cannot
//! be replayed on another connection, reflected back to its sender (the role label
//! differs), or moved to another name. The dialer proves first, so a stranger without
//! the cookie learns nothing from the acceptor but its name.
//!
//! The state machines here only compute; the node's `dist` module moves the bytes.
//!
//! # Example
//! ```
//! use wasmnode_proto::handshake::{Acceptor, Dialer, Identity};
//! let cookie = b"secret";
//! let me = Identity { name: "a@127.0.0.1".into(), flags: 0, creation: 1 };
//! let you = Identity { name: "b@127.0.0.2".into(), flags: 0, creation: 2 };
//! let (dialer, hello) = Dialer::start(me, [1; 32]);
//! let (acceptor, challenge) = Acceptor::on_hello(you, [2; 32], hello).unwrap();
//! let (dialer, proof) = dialer.on_challenge(cookie, challenge).unwrap();
//! let (peer_of_acceptor, accept) = acceptor.on_proof(cookie, &proof).unwrap();
//! let peer_of_dialer = dialer.on_accept(cookie, &accept).unwrap();
//! assert_eq!(peer_of_acceptor.name, "a@127.0.0.1");
//! assert_eq!(peer_of_dialer.name, "b@127.0.0.2");
//! ```

use bytes::{BufMut, Bytes};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::frame::{self, get_array, get_str, get_u16, get_u32, get_u64, put_str, HEADER_LEN};
use crate::{Error, PROTOCOL_VERSION};

/// Flag: the node is hidden (a CLI or tool): it is never listed as a member.
pub const FLAG_HIDDEN: u32 = 1;
/// Largest handshake message accepted.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;
/// Longest node name accepted.
pub const MAX_NAME_LEN: usize = 255;

/// Who a side says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `basename@host[:port]`.
    pub name: String,
    /// [`FLAG_HIDDEN`] and future capabilities.
    pub flags: u32,
    /// Random per process start: tells a restarted node from its previous life.
    pub creation: u64,
}

impl Identity {
    /// Whether this is a hidden (tool) node.
    pub fn hidden(&self) -> bool {
        self.flags & FLAG_HIDDEN != 0
    }
}

/// One handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Dialer's opening: who it is and its random challenge.
    Hello { version: u16, who: Identity, challenge: [u8; 32] },
    /// Acceptor's answer: who it is and its random challenge.
    Challenge { version: u16, who: Identity, challenge: [u8; 32] },
    /// Dialer's proof of the cookie.
    Proof([u8; 32]),
    /// Acceptor's proof of the cookie: the connection is up.
    Accept([u8; 32]),
    /// Acceptor's refusal: a code the dialer acts on, and words for its log.
    Refuse { code: Refusal, reason: String },
}

/// Why an acceptor refused a handshake, as a code on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The dialer's proof does not match the acceptor's cookie.
    CookieMismatch,
    /// The dialer speaks another protocol version.
    VersionMismatch,
    /// The dialer's messages broke the protocol.
    ProtocolError,
    /// The acceptor is leaving the cluster.
    Leaving,
    /// The dialer claimed the acceptor's own name.
    OwnName,
    /// A node of that name is connected already.
    NameInUse,
    /// Both nodes dialled each other at once; the acceptor keeps its own dial. Not a
    /// failure: the other connection is coming up.
    SimultaneousConnect,
    /// A code this version does not know (a newer peer's).
    Other(u8),
}

impl Refusal {
    pub fn code(self) -> u8 {
        match self {
            Refusal::CookieMismatch => 1,
            Refusal::VersionMismatch => 2,
            Refusal::ProtocolError => 3,
            Refusal::Leaving => 4,
            Refusal::OwnName => 5,
            Refusal::NameInUse => 6,
            Refusal::SimultaneousConnect => 7,
            Refusal::Other(c) => c,
        }
    }

    pub fn from_code(code: u8) -> Refusal {
        match code {
            1 => Refusal::CookieMismatch,
            2 => Refusal::VersionMismatch,
            3 => Refusal::ProtocolError,
            4 => Refusal::Leaving,
            5 => Refusal::OwnName,
            6 => Refusal::NameInUse,
            7 => Refusal::SimultaneousConnect,
            c => Refusal::Other(c),
        }
    }

    /// The refusal that answers a handshake error of the dialer's.
    pub fn for_error(e: &Error) -> Refusal {
        match e {
            Error::CookieMismatch => Refusal::CookieMismatch,
            Error::VersionMismatch { .. } => Refusal::VersionMismatch,
            _ => Refusal::ProtocolError,
        }
    }
}

impl Message {
    /// Appends the length prefix and body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::with_capacity(64);
        self.encode_body(&mut body);
        out.put_u32(body.len() as u32);
        out.extend_from_slice(&body);
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Message::Hello { version, who, challenge } | Message::Challenge { version, who, challenge } => {
                out.put_u8(if matches!(self, Message::Hello { .. }) { frame::TAG_HELLO } else { frame::TAG_CHALLENGE });
                out.put_u16(*version);
                put_str(out, &who.name);
                out.put_u32(who.flags);
                out.put_u64(who.creation);
                out.put_slice(challenge);
            }
            Message::Proof(d) => {
                out.put_u8(frame::TAG_PROOF);
                out.put_slice(d);
            }
            Message::Accept(d) => {
                out.put_u8(frame::TAG_ACCEPT);
                out.put_slice(d);
            }
            Message::Refuse { code, reason } => {
                out.put_u8(frame::TAG_REFUSE);
                out.put_u8(code.code());
                put_str(out, reason);
            }
        }
    }

    /// Looks for one whole handshake message at the start of `buf`; like
    /// [`frame::decode`], `Ok(None)` means "need more bytes".
    pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, Error> {
        let Some(len) = frame::frame_len(buf, MAX_HANDSHAKE_FRAME)? else { return Ok(None) };
        let body = Bytes::copy_from_slice(&buf[HEADER_LEN..HEADER_LEN + len]);
        Ok(Some((Message::decode_body(body)?, HEADER_LEN + len)))
    }

    fn decode_body(mut b: Bytes) -> Result<Message, Error> {
        let what = "handshake";
        let tag = frame::get_u8(&mut b, what)?;
        let msg = match tag {
            frame::TAG_HELLO | frame::TAG_CHALLENGE => {
                let version = get_u16(&mut b, what)?;
                let name = get_str(&mut b, what)?;
                if name.is_empty() || name.len() > MAX_NAME_LEN || !name.contains('@') {
                    return Err(Error::Malformed { what, why: "node name is not basename@host" });
                }
                // Checked before anything can log it: a newline would forge log lines.
                if !printable(&name) {
                    return Err(Error::Malformed { what, why: "node name has a character that is not printable ASCII" });
                }
                let flags = get_u32(&mut b, what)?;
                let creation = get_u64(&mut b, what)?;
                let challenge = get_array::<32>(&mut b, what)?;
                let who = Identity { name, flags, creation };
                if tag == frame::TAG_HELLO {
                    Message::Hello { version, who, challenge }
                } else {
                    Message::Challenge { version, who, challenge }
                }
            }
            frame::TAG_PROOF => Message::Proof(get_array::<32>(&mut b, what)?),
            frame::TAG_ACCEPT => Message::Accept(get_array::<32>(&mut b, what)?),
            frame::TAG_REFUSE => {
                let code = Refusal::from_code(frame::get_u8(&mut b, what)?);
                Message::Refuse { code, reason: get_str(&mut b, what)? }
            }
            other => return Err(Error::UnknownTag(other)),
        };
        if !b.is_empty() {
            return Err(Error::Malformed { what, why: "trailing bytes" });
        }
        Ok(msg)
    }
}

/// Whether a name a peer sent is safe to log as is: printable ASCII, no spaces or
/// control characters (node names are `basename@host[:port]`).
pub fn printable(name: &str) -> bool {
    name.bytes().all(|c| c.is_ascii_graphic())
}

/// Which side computes a proof; part of the MAC input so proofs cannot be reflected.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    Dialer,
    Acceptor,
}

/// HMAC-SHA256 keyed by the cookie over the role label and the transcript.
pub fn proof(cookie: &[u8], role: Role, transcript: &[u8]) -> [u8; 32] {
    mac(cookie, role, transcript).finalize().into_bytes().into()
}

/// Constant-time check of a peer's proof.
pub fn verify(cookie: &[u8], role: Role, transcript: &[u8], digest: &[u8; 32]) -> Result<(), Error> {
    mac(cookie, role, transcript).verify_slice(digest).map_err(|_| Error::CookieMismatch)
}

fn mac(cookie: &[u8], role: Role, transcript: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(cookie).expect("HMAC takes keys of any length");
    m.update(match role {
        Role::Dialer => b"wasmnode/1 dialer\0",
        Role::Acceptor => b"wasmnode/1 acceptor",
    });
    m.update(transcript);
    m
}

fn transcript(hello: &Message, challenge: &Message) -> Vec<u8> {
    let mut t = Vec::with_capacity(160);
    hello.encode_body(&mut t);
    challenge.encode_body(&mut t);
    t
}

fn check_version(theirs: u16) -> Result<(), Error> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs })
    }
}

/// The dialing side, between sending `Hello` and receiving `Accept`.
pub struct Dialer {
    hello: Message,
    transcript: Vec<u8>,
    peer: Option<Identity>,
}

impl Dialer {
    /// Begins a handshake; send the returned `Hello`.
    pub fn start(me: Identity, challenge: [u8; 32]) -> (Dialer, Message) {
        let hello = Message::Hello { version: PROTOCOL_VERSION, who: me, challenge };
        (Dialer { hello: hello.clone(), transcript: Vec::new(), peer: None }, hello)
    }

    /// Handles the acceptor's `Challenge`; send the returned `Proof`.
    pub fn on_challenge(mut self, cookie: &[u8], msg: Message) -> Result<(Dialer, Message), Error> {
        let (version, who) = match &msg {
            Message::Challenge { version, who, .. } => (*version, who.clone()),
            Message::Refuse { code, reason } => return Err(Error::Refused { code: *code, reason: reason.clone() }),
            _ => return Err(Error::PeerMisbehaved("expected a challenge")),
        };
        check_version(version)?;
        self.transcript = transcript(&self.hello, &msg);
        let digest = proof(cookie, Role::Dialer, &self.transcript);
        self.peer = Some(who);
        Ok((self, Message::Proof(digest)))
    }

    /// Handles the acceptor's answer; on `Accept` with a valid proof, the peer is authenticated.
    pub fn on_accept(self, cookie: &[u8], msg: &Message) -> Result<Identity, Error> {
        match msg {
            Message::Accept(digest) => {
                verify(cookie, Role::Acceptor, &self.transcript, digest)?;
                self.peer.ok_or(Error::PeerMisbehaved("accept before challenge"))
            }
            Message::Refuse { code, reason } => Err(Error::Refused { code: *code, reason: reason.clone() }),
            _ => Err(Error::PeerMisbehaved("expected accept or refuse")),
        }
    }
}

/// The accepting side, between sending `Challenge` and checking the `Proof`.
pub struct Acceptor {
    transcript: Vec<u8>,
    peer: Identity,
}

impl Acceptor {
    /// Handles the dialer's `Hello`; send the returned `Challenge`.
    pub fn on_hello(me: Identity, challenge: [u8; 32], msg: Message) -> Result<(Acceptor, Message), Error> {
        let Message::Hello { version, who, .. } = &msg else {
            return Err(Error::PeerMisbehaved("expected hello"));
        };
        check_version(*version)?;
        let peer = who.clone();
        let reply = Message::Challenge { version: PROTOCOL_VERSION, who: me, challenge };
        Ok((Acceptor { transcript: transcript(&msg, &reply), peer }, reply))
    }

    /// Who the dialer claims to be (not yet proven).
    pub fn claimed(&self) -> &Identity {
        &self.peer
    }

    /// Checks the dialer's `Proof`; on success the peer is authenticated and the
    /// returned `Accept` should be sent — unless the node refuses it for another
    /// reason (name in use, simultaneous connect), in which case send a `Refuse`.
    pub fn on_proof(self, cookie: &[u8], msg: &Message) -> Result<(Identity, Message), Error> {
        let Message::Proof(digest) = msg else {
            return Err(Error::PeerMisbehaved("expected proof"));
        };
        verify(cookie, Role::Dialer, &self.transcript, digest)?;
        Ok((self.peer, Message::Accept(proof(cookie, Role::Acceptor, &self.transcript))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> Identity {
        Identity { name: name.into(), flags: 0, creation: 9 }
    }

    fn wire(m: &Message) -> Vec<u8> {
        let mut v = Vec::new();
        m.encode(&mut v);
        let (back, used) = Message::decode(&v).unwrap().unwrap();
        assert_eq!((&back, used), (m, v.len()), "message round-trips");
        v
    }

    #[test]
    fn full_handshake_and_the_cookie_never_on_the_wire() {
        let cookie = b"the-cookie-nobody-should-see";
        let mut bytes = Vec::new();
        let (d, hello) = Dialer::start(id("a@h"), [1; 32]);
        bytes.extend(wire(&hello));
        let (a, ch) = Acceptor::on_hello(id("b@h"), [2; 32], hello).unwrap();
        bytes.extend(wire(&ch));
        let (d, pr) = d.on_challenge(cookie, ch).unwrap();
        bytes.extend(wire(&pr));
        let (peer, acc) = a.on_proof(cookie, &pr).unwrap();
        bytes.extend(wire(&acc));
        assert_eq!(peer.name, "a@h");
        assert_eq!(d.on_accept(cookie, &acc).unwrap().name, "b@h");
        assert!(!bytes.windows(cookie.len()).any(|w| w == cookie));
    }

    #[test]
    fn wrong_cookie_fails_on_both_sides() {
        let (d, hello) = Dialer::start(id("a@h"), [1; 32]);
        let (a, ch) = Acceptor::on_hello(id("b@h"), [2; 32], hello).unwrap();
        let (_d, pr) = d.on_challenge(b"wrong", ch).unwrap();
        assert_eq!(a.on_proof(b"right", &pr).err(), Some(Error::CookieMismatch));

        // An acceptor with the wrong cookie cannot fake its Accept either.
        let (d, hello) = Dialer::start(id("a@h"), [1; 32]);
        let (_a, ch) = Acceptor::on_hello(id("b@h"), [2; 32], hello).unwrap();
        let (d, _pr) = d.on_challenge(b"right", ch).unwrap();
        let forged = Message::Accept(proof(b"wrong", Role::Acceptor, b""));
        assert_eq!(d.on_accept(b"right", &forged).err(), Some(Error::CookieMismatch));
    }

    #[test]
    fn a_proof_cannot_be_reflected_or_replayed() {
        let cookie = b"c";
        let (d, hello) = Dialer::start(id("a@h"), [1; 32]);
        let (a, ch) = Acceptor::on_hello(id("b@h"), [2; 32], hello.clone()).unwrap();
        let (_d, pr) = d.on_challenge(cookie, ch).unwrap();
        // Reflect the dialer's proof back as an Accept: the role label differs.
        let Message::Proof(digest) = pr else { panic!() };
        let (d2, hello2) = Dialer::start(id("a@h"), [1; 32]);
        let (_a2, ch2) = Acceptor::on_hello(id("b@h"), [3; 32], hello2).unwrap();
        let (d2, _) = d2.on_challenge(cookie, ch2).unwrap();
        assert_eq!(d2.on_accept(cookie, &Message::Accept(digest)).err(), Some(Error::CookieMismatch));
        // Replay the proof against a fresh challenge: refused.
        let (a3, _ch3) = Acceptor::on_hello(id("b@h"), [4; 32], hello).unwrap();
        assert_eq!(a3.on_proof(cookie, &Message::Proof(digest)).err(), Some(Error::CookieMismatch));
        drop(a);
    }

    #[test]
    fn version_mismatch_and_refusal_are_reported() {
        let hello = Message::Hello { version: 99, who: id("a@h"), challenge: [0; 32] };
        assert_eq!(Acceptor::on_hello(id("b@h"), [0; 32], hello).err(), Some(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: 99 }));
        let (d, _) = Dialer::start(id("a@h"), [1; 32]);
        assert_eq!(
            d.on_challenge(b"c", Message::Refuse { code: Refusal::NameInUse, reason: "name in use".into() }).err(),
            Some(Error::Refused { code: Refusal::NameInUse, reason: "name in use".into() })
        );
    }

    /// A claimed name is checked before anything can log it: a newline or a control
    /// character in it would write lines of the attacker's into the acceptor's log.
    #[test]
    fn names_that_are_not_printable_ascii_are_malformed() {
        for name in ["a@h\n2026-11-30T00:00:00Z INFO connected to evil@h", "a@h\r", "a b@h", "a@h\u{1b}[31m", "a@hé"] {
            let m = Message::Hello { version: 1, who: id(name), challenge: [0; 32] };
            let mut v = Vec::new();
            m.encode(&mut v);
            assert!(matches!(Message::decode(&v), Err(Error::Malformed { .. })), "{name:?}");
        }
    }

    #[test]
    fn names_without_at_are_malformed() {
        let m = Message::Hello { version: 1, who: id("nohost"), challenge: [0; 32] };
        let mut v = Vec::new();
        m.encode(&mut v);
        assert!(matches!(Message::decode(&v), Err(Error::Malformed { .. })));
    }

    /// Every refusal reaches the dialer as the code it was sent with; a code this
    /// version does not know is kept as a number, not mistaken for another.
    #[test]
    fn refusal_codes_round_trip() {
        let all = [
            Refusal::CookieMismatch,
            Refusal::VersionMismatch,
            Refusal::ProtocolError,
            Refusal::Leaving,
            Refusal::OwnName,
            Refusal::NameInUse,
            Refusal::SimultaneousConnect,
            Refusal::Other(200),
        ];
        for code in all {
            let m = Message::Refuse { code, reason: format!("{code:?}") };
            let mut v = Vec::new();
            m.encode(&mut v);
            assert_eq!(Message::decode(&v).unwrap().map(|(m, _)| m), Some(m));
        }
        assert_eq!(Refusal::for_error(&Error::CookieMismatch), Refusal::CookieMismatch);
    }
}
