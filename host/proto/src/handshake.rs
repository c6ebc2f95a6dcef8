//! The handshake: Noise `NNpsk0` keyed by the cookie, then every frame sealed.
//!
//! ```text
//! dialer                                                      acceptor
//!   Hello { version, to, Noise(-> psk, e) [dialer's identity] }      ->
//!   <-  Challenge { Noise(<- e, ee) [acceptor's identity] }           |  Refuse
//!   Proof { sealed record 0 }                                         ->
//!   <-  Accept { sealed record 0 }                                    |  Refuse
//!   … every frame after this in sealed records ([`crate::seal`]) …
//! ```
//! The pattern is `Noise_NNpsk0_25519_AESGCM_SHA256` (the Noise Protocol Framework, via
//! the `snow` crate; the records after it are sealed with AEGIS-128X2 or X4, as the two
//! identities' flags choose, under the keys of its `Split()`, see [`crate::seal`]): both
//! sides make a fresh X25519 key pair per connection, and the pre-shared key is an
//! HMAC-SHA256 of the cookie, so the connection's keys can be derived only by a holder
//! of the cookie who took part in this very handshake.
//! The prologue, which both sides hash into the handshake, is the protocol label and the
//! name the dialer dialled (`to`): the acceptor uses its own name there, so a `Hello`
//! meant for one node cannot be opened by another — a relay that forwards a dial to
//! some other member gets a refusal, and the dialer has proven nothing to anyone but the
//! node it dialled. `Proof` and `Accept` are the first sealed record of each direction:
//! the acceptor counts the dialer as connected only once the dialer has shown it holds
//! this handshake's keys, so a `Hello` recorded and replayed opens nothing.
//!
//! The state machines here only compute; the node's `dist` module moves the bytes.
//!
//! # Example
//! ```
//! use wasmnode_proto::handshake::{Acceptor, Dialer, Identity};
//! let cookie = b"a cookie of sixteen bytes or more";
//! let me = Identity { name: "a@127.0.0.1".into(), flags: 0, creation: 1 };
//! let you = Identity { name: "b@127.0.0.2".into(), flags: 0, creation: 2 };
//! let (dialer, hello) = Dialer::start(&me, "b@127.0.0.2", cookie).unwrap();
//! let (acceptor, challenge) = Acceptor::on_hello(&you, cookie, hello).unwrap();
//! let (dialer, proof) = dialer.on_challenge(challenge).unwrap();
//! let (peer_of_acceptor, mut acceptor_session) = acceptor.on_proof(proof).unwrap();
//! let (peer_of_dialer, mut dialer_session) = dialer.on_accept(acceptor_session.accept()).unwrap();
//! assert_eq!(peer_of_acceptor.name, "a@127.0.0.1");
//! assert_eq!(peer_of_dialer.name, "b@127.0.0.2");
//! // Then frames go sealed, each direction with its own key and counter.
//! let mut wire = bytes::BytesMut::new();
//! dialer_session.sealer.seal(b"hello", &mut wire);
//! let mut plain = bytes::BytesMut::new();
//! acceptor_session.opener.open(&mut wire, &mut plain).unwrap();
//! assert_eq!(&plain[..], b"hello");
//! ```

use bytes::{BufMut, Bytes};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::frame::{self, get_str, get_u16, get_u32, get_u64, put_str, HEADER_LEN};
use crate::seal::{Opener, Sealer, Session, Width};
use crate::{Error, PROTOCOL_VERSION};

/// Flag: the node is hidden (a CLI or tool): it is never listed as a member.
pub const FLAG_HIDDEN: u32 = 1;
/// Flag: the node picks its records' AEGIS-128 variant with its peer's flags
/// ([`crate::seal::Width::between`]). A node without it (wire 5 up to commit 8127e8e)
/// seals with AEGIS-128X4, and so does every connection with it.
pub const FLAG_CIPHER_CHOICE: u32 = 1 << 1;
/// Flag: the node's CPU runs AEGIS-128X4 at full speed (512-bit AES instructions).
pub const FLAG_WIDE_AES: u32 = 1 << 2;
/// Where in the flags the newest wire version a node speaks is (bits 16 to 31; 0 from a
/// node before they said it). They travel inside Noise's messages, which no party on
/// the path can change, so an acceptor dialled in an older version than both sides
/// speak knows the version refusal that sent the dialer there was forged on the way
/// (as TLS 1.3's downgrade sentinel tells a client).
pub const NEWEST_VERSION_SHIFT: u32 = 16;

/// The flags that say this node's newest wire version, for its [`Identity`].
pub fn version_flags() -> u32 {
    u32::from(PROTOCOL_VERSION) << NEWEST_VERSION_SHIFT
}
/// Largest handshake message accepted.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;
/// Longest node name accepted.
pub const MAX_NAME_LEN: usize = 255;
/// The Noise protocol of the handshake, whose `Split()` keys every record after it.
pub const NOISE_PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";

/// Who a side says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `basename@host[:port]`.
    pub name: String,
    /// [`FLAG_HIDDEN`] and capabilities ([`crate::seal::cipher_flags`] for a node's own).
    pub flags: u32,
    /// Random per process start: tells a restarted node from its previous life.
    pub creation: u64,
}

impl Identity {
    /// Whether this is a hidden (tool) node.
    pub fn hidden(&self) -> bool {
        self.flags & FLAG_HIDDEN != 0
    }

    /// The newest wire version the node says it speaks (0: it does not say).
    pub fn newest_version(&self) -> u16 {
        (self.flags >> NEWEST_VERSION_SHIFT) as u16
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.name.len() + 16);
        put_str(&mut out, &self.name);
        out.put_u32(self.flags);
        out.put_u64(self.creation);
        out
    }

    fn decode(b: &[u8]) -> Result<Identity, Error> {
        let what = "handshake";
        let mut b = Bytes::copy_from_slice(b);
        let name = get_str(&mut b, what)?;
        check_name(&name)?;
        let flags = get_u32(&mut b, what)?;
        let creation = get_u64(&mut b, what)?;
        if !b.is_empty() {
            return Err(Error::Malformed { what, why: "trailing bytes" });
        }
        Ok(Identity { name, flags, creation })
    }
}

/// One handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Dialer's opening: the protocol version and the name it dialled in the clear (so
    /// a wrong node or version is refused in words), then Noise's first message, whose
    /// payload is the dialer's [`Identity`]. Another version's `Hello` decodes with
    /// `to` and `noise` empty, for its refusal.
    Hello { version: u16, to: String, noise: Vec<u8> },
    /// Acceptor's answer: Noise's second message, whose payload is its [`Identity`].
    Challenge(Vec<u8>),
    /// Dialer's first sealed record (empty): it completed this handshake.
    Proof(Vec<u8>),
    /// Acceptor's first sealed record (empty): the connection is up.
    Accept(Vec<u8>),
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
    /// The dialer dialled another node's name (a stale address, a mistyped `--node`).
    WrongNode,
    /// One side requires TLS (`[node.tls]`) and the other does not speak it.
    ModeMismatch,
    /// The dialer's TLS certificate does not name the host of the node name it claims.
    Certificate,
    /// The dialer speaks an older version than both sides do: a party on the path forged
    /// the version refusal it fell back on.
    Downgraded,
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
            Refusal::WrongNode => 8,
            Refusal::ModeMismatch => 9,
            Refusal::Certificate => 10,
            Refusal::Downgraded => 11,
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
            8 => Refusal::WrongNode,
            9 => Refusal::ModeMismatch,
            10 => Refusal::Certificate,
            11 => Refusal::Downgraded,
            c => Refusal::Other(c),
        }
    }

    /// The refusal that answers a handshake error of the dialer's.
    pub fn for_error(e: &Error) -> Refusal {
        match e {
            Error::CookieMismatch => Refusal::CookieMismatch,
            Error::VersionMismatch { .. } => Refusal::VersionMismatch,
            Error::WrongNode { .. } => Refusal::WrongNode,
            Error::Downgraded { .. } => Refusal::Downgraded,
            _ => Refusal::ProtocolError,
        }
    }
}

impl Message {
    /// Appends the length prefix and body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::with_capacity(128);
        match self {
            Message::Hello { version, to, noise } => {
                body.put_u8(frame::TAG_HELLO);
                body.put_u16(*version);
                put_str(&mut body, to);
                body.put_slice(noise);
            }
            Message::Challenge(noise) => {
                body.put_u8(frame::TAG_CHALLENGE);
                body.put_slice(noise);
            }
            Message::Proof(sealed) => {
                body.put_u8(frame::TAG_PROOF);
                body.put_slice(sealed);
            }
            Message::Accept(sealed) => {
                body.put_u8(frame::TAG_ACCEPT);
                body.put_slice(sealed);
            }
            Message::Refuse { code, reason } => {
                body.put_u8(frame::TAG_REFUSE);
                body.put_u8(code.code());
                put_str(&mut body, reason);
            }
        }
        out.put_u32(body.len() as u32);
        out.extend_from_slice(&body);
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
            frame::TAG_HELLO => {
                let version = get_u16(&mut b, what)?;
                if check_version(version).is_err() {
                    // Another version's layout: only its number matters, for the refusal.
                    return Ok(Message::Hello { version, to: String::new(), noise: Vec::new() });
                }
                let to = get_str(&mut b, what)?;
                check_name(&to)?;
                Message::Hello { version, to, noise: b.to_vec() }
            }
            frame::TAG_CHALLENGE => Message::Challenge(b.to_vec()),
            frame::TAG_PROOF => Message::Proof(b.to_vec()),
            frame::TAG_ACCEPT => Message::Accept(b.to_vec()),
            frame::TAG_REFUSE => {
                let code = Refusal::from_code(frame::get_u8(&mut b, what)?);
                let reason = get_str(&mut b, what)?;
                if !b.is_empty() {
                    return Err(Error::Malformed { what, why: "trailing bytes" });
                }
                Message::Refuse { code, reason }
            }
            other => return Err(Error::UnknownTag(other)),
        };
        Ok(msg)
    }
}

/// Checked before anything can log a name: a newline would forge log lines.
fn check_name(name: &str) -> Result<(), Error> {
    let what = "handshake";
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.contains('@') {
        return Err(Error::Malformed { what, why: "node name is not basename@host" });
    }
    if !printable(name) {
        return Err(Error::Malformed { what, why: "node name has a character that is not printable ASCII" });
    }
    Ok(())
}

/// Whether a name a peer sent is safe to log as is: printable ASCII, no spaces or
/// control characters (node names are `basename@host[:port]`).
pub fn printable(name: &str) -> bool {
    name.bytes().all(|c| c.is_ascii_graphic())
}

/// The Noise pre-shared key: HMAC-SHA256 keyed by the cookie (any length) over a label.
fn psk(cookie: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(cookie).expect("HMAC takes keys of any length");
    m.update(b"wasmnode/3 noise psk");
    m.finalize().into_bytes().into()
}

/// What both sides hash in first: the protocol, the name of the node dialled and, inside
/// TLS, the channel binding (a value exported from the TLS session, RFC 5705), which
/// ties the cookie's proof to that one TLS connection.
fn prologue(version: u16, to: &str, binding: &[u8]) -> Vec<u8> {
    let mut p = format!("wasmnode/{version}\0").into_bytes();
    p.extend_from_slice(to.as_bytes());
    if !binding.is_empty() {
        p.extend_from_slice(b"\0tls\0");
        p.extend_from_slice(binding);
    }
    p
}

fn noise(version: u16, cookie: &[u8], to: &str, binding: &[u8], initiator: bool) -> snow::HandshakeState {
    let params = NOISE_PATTERN.parse().expect("a pattern snow knows");
    let key = psk(cookie);
    let prologue = prologue(version, to, binding);
    let builder = snow::Builder::new(params).psk(0, &key).and_then(|b| b.prologue(&prologue)).expect("valid Noise settings");
    if initiator { builder.build_initiator() } else { builder.build_responder() }.expect("valid Noise settings")
}

fn check_version(theirs: u16) -> Result<(), Error> {
    if crate::speaks(theirs) {
        Ok(())
    } else {
        Err(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs })
    }
}

/// The dialing side, between sending `Hello` and receiving `Challenge`.
pub struct Dialer {
    hs: snow::HandshakeState,
    to: String,
    version: u16,
    /// This side's flags, which with the peer's choose the records' cipher.
    flags: u32,
}

impl Dialer {
    /// Begins a handshake with the node named `to`; send the returned `Hello`.
    pub fn start(me: &Identity, to: &str, cookie: &[u8]) -> Result<(Dialer, Message), Error> {
        Dialer::start_bound(me, to, cookie, &[])
    }

    /// [`Dialer::start`] inside a TLS connection: `binding` is the value both sides
    /// export from that connection, so the handshake completes only across it.
    pub fn start_bound(me: &Identity, to: &str, cookie: &[u8], binding: &[u8]) -> Result<(Dialer, Message), Error> {
        Dialer::start_version(me, to, cookie, binding, PROTOCOL_VERSION)
    }

    /// [`Dialer::start_bound`] speaking an older wire `version` (at least
    /// [`crate::OLDEST_VERSION`]): for a node that refused this one's as a version mismatch.
    pub fn start_version(me: &Identity, to: &str, cookie: &[u8], binding: &[u8], version: u16) -> Result<(Dialer, Message), Error> {
        check_version(version)?;
        let mut hs = noise(version, cookie, to, binding, true);
        let mut out = vec![0u8; MAX_HANDSHAKE_FRAME];
        let n = hs.write_message(&me.encode(), &mut out).map_err(|_| Error::PeerMisbehaved("own identity too long for a handshake"))?;
        out.truncate(n);
        let hello = Message::Hello { version, to: to.to_string(), noise: out };
        Ok((Dialer { hs, to: to.to_string(), version, flags: me.flags }, hello))
    }

    /// Handles the acceptor's `Challenge`: it must open with this handshake's keys and
    /// come from the node dialled, or nothing more is sent. Send the returned `Proof`.
    pub fn on_challenge(mut self, msg: Message) -> Result<(Proven, Message), Error> {
        let noise = match msg {
            Message::Challenge(noise) => noise,
            Message::Refuse { code, reason } => return Err(Error::Refused { code, reason }),
            _ => return Err(Error::PeerMisbehaved("expected a challenge")),
        };
        let mut payload = vec![0u8; noise.len()];
        let n = self.hs.read_message(&noise, &mut payload).map_err(|_| Error::CookieMismatch)?;
        let peer = Identity::decode(&payload[..n])?;
        if peer.name != self.to {
            return Err(Error::WrongNode { dialled: self.to, answered: peer.name });
        }
        let session = Session::new(self.hs, self.version, Width::between(self.flags, peer.flags))?;
        let proof = Message::Proof(session.sealer.seal_vec(&[]));
        Ok((Proven { peer, session }, proof))
    }
}

/// The dialing side after its `Proof`: the acceptor is authenticated, its answer is due.
pub struct Proven {
    peer: Identity,
    session: Session,
}

impl Proven {
    /// The acceptor's identity (authenticated by the `Challenge`).
    pub fn peer(&self) -> &Identity {
        &self.peer
    }

    /// Handles the acceptor's answer: on an `Accept` sealed with this handshake's keys,
    /// the connection is up.
    pub fn on_accept(mut self, msg: Message) -> Result<(Identity, Session), Error> {
        match msg {
            Message::Accept(sealed) => {
                self.session.opener.open_vec(&sealed)?;
                Ok((self.peer, self.session))
            }
            Message::Refuse { code, reason } => Err(Error::Refused { code, reason }),
            _ => Err(Error::PeerMisbehaved("expected accept or refuse")),
        }
    }
}

/// The accepting side, between sending `Challenge` and checking the `Proof`.
pub struct Acceptor {
    hs: snow::HandshakeState,
    peer: Identity,
    version: u16,
    flags: u32,
}

impl Acceptor {
    /// Handles the dialer's `Hello`: the version, the name dialled (this node's), and
    /// Noise's first message, which opens only with this cookie. Send the returned
    /// `Challenge`.
    pub fn on_hello(me: &Identity, cookie: &[u8], msg: Message) -> Result<(Acceptor, Message), Error> {
        Acceptor::on_hello_bound(me, cookie, msg, &[])
    }

    /// [`Acceptor::on_hello`] inside a TLS connection (see [`Dialer::start_bound`]).
    pub fn on_hello_bound(me: &Identity, cookie: &[u8], msg: Message, binding: &[u8]) -> Result<(Acceptor, Message), Error> {
        let Message::Hello { version, to, noise: first } = msg else {
            return Err(Error::PeerMisbehaved("expected hello"));
        };
        check_version(version)?;
        if to != me.name {
            return Err(Error::WrongNode { dialled: to, answered: me.name.clone() });
        }
        let mut hs = noise(version, cookie, &me.name, binding, false);
        let mut payload = vec![0u8; first.len()];
        let n = hs.read_message(&first, &mut payload).map_err(|_| Error::CookieMismatch)?;
        let peer = Identity::decode(&payload[..n])?;
        // A dialer falls back to an older version only when refused its newest with a
        // version mismatch, which this node, speaking it too, never sends.
        let both = peer.newest_version().min(me.newest_version());
        if version < both {
            return Err(Error::Downgraded { name: peer.name, spoken: version, both });
        }
        let mut out = vec![0u8; MAX_HANDSHAKE_FRAME];
        let n = hs.write_message(&me.encode(), &mut out).map_err(|_| Error::PeerMisbehaved("own identity too long for a handshake"))?;
        out.truncate(n);
        Ok((Acceptor { hs, peer, version, flags: me.flags }, Message::Challenge(out)))
    }

    /// Who the dialer claims to be (it holds the cookie, but has not yet shown it is
    /// live on this connection: a recorded `Hello` replays).
    pub fn claimed(&self) -> &Identity {
        &self.peer
    }

    /// Checks the dialer's `Proof`: the first record sealed with this handshake's keys.
    /// Then send [`Session::accept`] — unless the node refuses the peer for another
    /// reason (name in use, simultaneous connect): then a `Refuse`.
    pub fn on_proof(self, msg: Message) -> Result<(Identity, Session), Error> {
        let Message::Proof(sealed) = msg else {
            return Err(Error::PeerMisbehaved("expected proof"));
        };
        let mut session = Session::new(self.hs, self.version, Width::between(self.flags, self.peer.flags))?;
        session.opener.open_vec(&sealed)?;
        Ok((self.peer, session))
    }
}

impl Session {
    /// The acceptor's `Accept`: its first sealed record.
    pub fn accept(&mut self) -> Message {
        Message::Accept(self.sealer.seal_vec(&[]))
    }

    /// The two halves, for a connection's writer and reader.
    pub fn split(self) -> (Sealer, Opener) {
        (self.sealer, self.opener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    const COOKIE: &[u8] = b"the-cookie-nobody-should-see";

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

    /// One side's view after a handshake: who the other is, and the keys.
    type Side = (Identity, Session);

    /// Runs a whole handshake; the dialer's and the acceptor's sides, and every byte.
    fn handshake(dial_cookie: &[u8], accept_cookie: &[u8]) -> Result<(Side, Side, Vec<u8>), Error> {
        let mut bytes = Vec::new();
        let (d, hello) = Dialer::start(&id("a@h"), "b@h", dial_cookie)?;
        bytes.extend(wire(&hello));
        let (a, ch) = Acceptor::on_hello(&id("b@h"), accept_cookie, hello)?;
        bytes.extend(wire(&ch));
        let (d, pr) = d.on_challenge(ch)?;
        bytes.extend(wire(&pr));
        let (peer, mut acceptor) = a.on_proof(pr)?;
        let acc = acceptor.accept();
        bytes.extend(wire(&acc));
        let dialer = d.on_accept(acc)?;
        Ok((dialer, (peer, acceptor), bytes))
    }

    /// A dialer that says it speaks this node's version but dials in version 3 was sent
    /// there by a version refusal this node never sent: refused, and the refusal says so.
    /// When either side does not say (a node before the flags carried it), version 3 is
    /// answered as before.
    #[test]
    fn a_dialer_sent_to_an_older_version_by_a_forged_refusal_is_refused() {
        let newer = Identity { flags: version_flags(), ..id("a@h") };
        assert_eq!(newer.newest_version(), PROTOCOL_VERSION);
        let acceptor = Identity { flags: version_flags(), ..id("b@h") };
        let (_, hello) = Dialer::start_version(&newer, "b@h", COOKIE, &[], 3).unwrap();
        let e = Acceptor::on_hello(&acceptor, COOKIE, hello).err().unwrap();
        assert_eq!(e, Error::Downgraded { name: "a@h".into(), spoken: 3, both: PROTOCOL_VERSION });
        assert_eq!(Refusal::for_error(&e), Refusal::Downgraded);
        assert_eq!(e.to_string(), "a@h dialled in wire version 3, though both nodes speak 5: a party on the path forged the version refusal it fell back on");
        // In its newest version, the same dialer is answered.
        let (d, hello) = Dialer::start(&newer, "b@h", COOKIE).unwrap();
        let (_, challenge) = Acceptor::on_hello(&acceptor, COOKIE, hello).unwrap();
        let (proven, _) = d.on_challenge(challenge).unwrap();
        assert_eq!(proven.peer().newest_version(), PROTOCOL_VERSION);
        // A dialer that does not say its newest version falls back as before, and so does
        // one dialling an acceptor that does not say its own.
        let (_, hello) = Dialer::start_version(&id("a@h"), "b@h", COOKIE, &[], 3).unwrap();
        assert!(Acceptor::on_hello(&acceptor, COOKIE, hello).is_ok());
        let (_, hello) = Dialer::start_version(&newer, "b@h", COOKIE, &[], 3).unwrap();
        assert!(Acceptor::on_hello(&id("b@h"), COOKIE, hello).is_ok());
        // And one that says a newer version than this node's, in this node's newest, is answered.
        let newest = Identity { flags: u32::from(PROTOCOL_VERSION + 1) << NEWEST_VERSION_SHIFT, ..id("a@h") };
        let (_, hello) = Dialer::start(&newest, "b@h", COOKIE).unwrap();
        assert!(Acceptor::on_hello(&acceptor, COOKIE, hello).is_ok());
    }

    /// A node of wire version 3 (records in AES-256-GCM, before AEGIS) is answered in
    /// version 3: the handshake completes and records go both ways in that version's.
    #[test]
    fn a_version_3_dialer_is_answered_in_version_3() {
        let (d, hello) = Dialer::start_version(&id("a@h"), "b@h", COOKIE, &[], 3).unwrap();
        let hello = Message::decode(&wire(&hello)).unwrap().unwrap().0;
        assert!(matches!(hello, Message::Hello { version: 3, .. }));
        let (a, challenge) = Acceptor::on_hello(&id("b@h"), COOKIE, hello).unwrap();
        let (d, proof) = d.on_challenge(challenge).unwrap();
        let (_, mut acceptor) = a.on_proof(proof).unwrap();
        let (_, dialer) = d.on_accept(acceptor.accept()).unwrap();
        assert_eq!((dialer.sealer.version(), acceptor.sealer.version()), (3, 3));
        let (dialer, acceptor) = (dialer.split(), acceptor.split());
        for (sealer, mut opener) in [(dialer.0, acceptor.1), (acceptor.0, dialer.1)] {
            let (mut records, mut plain) = (BytesMut::new(), BytesMut::new());
            sealer.seal(b"both ways", &mut records);
            opener.open(&mut records, &mut plain).unwrap();
            assert_eq!(&plain[..], b"both ways");
        }
        // A version this node never spoke is refused, and so is version 4 (never released:
        // a node of it refuses this one's version too, and both go on in version 3).
        assert_eq!(Dialer::start_version(&id("a@h"), "b@h", COOKIE, &[], 2).err(), Some(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: 2 }));
        let (_, hello) = Dialer::start_version(&id("a@h"), "b@h", COOKIE, &[], 3).unwrap();
        let Message::Hello { to, noise, .. } = hello else { unreachable!() };
        let mut bytes = Vec::new();
        Message::Hello { version: 4, to, noise }.encode(&mut bytes);
        let v4 = Message::decode(&bytes).unwrap().unwrap().0;
        assert_eq!(Acceptor::on_hello(&id("b@h"), COOKIE, v4).err(), Some(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: 4 }));
    }
    #[test]
    fn full_handshake_and_the_cookie_never_on_the_wire() {
        let ((b, mut dialer), (a, mut acceptor), bytes) = handshake(COOKIE, COOKIE).unwrap();
        assert_eq!((a.name.as_str(), b.name.as_str()), ("a@h", "b@h"));
        assert!(!bytes.windows(COOKIE.len()).any(|w| w == COOKIE));
        assert!(!bytes.windows(32).any(|w| w == psk(COOKIE)), "nor the key made of it");
        // Both directions carry sealed records that only the other side opens.
        let mut wire = BytesMut::new();
        dialer.sealer.seal(b"secret frame bytes", &mut wire);
        assert!(!wire.windows(6).any(|w| w == b"secret"), "sealed, not in the clear");
        let mut plain = BytesMut::new();
        acceptor.opener.open(&mut wire, &mut plain).unwrap();
        assert_eq!(&plain[..], b"secret frame bytes");
        acceptor.sealer.seal(b"reply", &mut wire);
        plain.clear();
        dialer.opener.open(&mut wire, &mut plain).unwrap();
        assert_eq!(&plain[..], b"reply");
    }

    #[test]
    fn a_wrong_cookie_fails_before_anything_is_proven() {
        // The acceptor cannot open the dialer's first message.
        assert_eq!(handshake(b"wrong", COOKIE).err(), Some(Error::CookieMismatch));
        // A dialer cannot open an acceptor's answer made with another cookie.
        let (d, hello) = Dialer::start(&id("a@h"), "b@h", COOKIE).unwrap();
        let (_, hello_other) = Dialer::start(&id("a@h"), "b@h", b"wrong").unwrap();
        let (_, ch) = Acceptor::on_hello(&id("b@h"), b"wrong", hello_other).unwrap();
        let _ = hello;
        assert_eq!(d.on_challenge(ch).err(), Some(Error::CookieMismatch));
    }

    /// A dial that reaches another member (a relay forwarding it, a reused address) is
    /// refused there, and the dialer's `Hello` opens for nobody but the node dialled.
    #[test]
    fn a_hello_opens_only_at_the_node_dialled() {
        let (_, hello) = Dialer::start(&id("a@h"), "b@h", COOKIE).unwrap();
        assert_eq!(Acceptor::on_hello(&id("c@h"), COOKIE, hello.clone()).err(), Some(Error::WrongNode { dialled: "b@h".into(), answered: "c@h".into() }));
        // Even with the name in the clear rewritten, the prologue binds it.
        let Message::Hello { version, noise, .. } = hello else { panic!() };
        let forged = Message::Hello { version, to: "c@h".into(), noise };
        assert_eq!(Acceptor::on_hello(&id("c@h"), COOKIE, forged).err(), Some(Error::CookieMismatch));
    }

    /// Inside TLS, the handshake opens only with the same channel binding: a `Hello`
    /// carried from one TLS connection into another does not open.
    #[test]
    fn a_bound_hello_opens_only_with_its_binding() {
        let (d, hello) = Dialer::start_bound(&id("a@h"), "b@h", COOKIE, b"session one").unwrap();
        assert_eq!(Acceptor::on_hello_bound(&id("b@h"), COOKIE, hello.clone(), b"session two").err(), Some(Error::CookieMismatch));
        assert_eq!(Acceptor::on_hello(&id("b@h"), COOKIE, hello.clone()).err(), Some(Error::CookieMismatch));
        let (a, ch) = Acceptor::on_hello_bound(&id("b@h"), COOKIE, hello, b"session one").unwrap();
        let (_, proof) = d.on_challenge(ch).unwrap();
        assert!(a.on_proof(proof).is_ok());
    }

    /// A recorded `Hello` replayed gets a `Challenge`, but no `Proof` can follow
    /// without the dialer's ephemeral key: the acceptor never counts it connected.
    #[test]
    fn a_replayed_hello_never_connects() {
        let (d, hello) = Dialer::start(&id("a@h"), "b@h", COOKIE).unwrap();
        let (a1, ch1) = Acceptor::on_hello(&id("b@h"), COOKIE, hello.clone()).unwrap();
        let (_, proof1) = d.on_challenge(ch1).unwrap();
        // The replay: a second acceptor answers, and the old proof does not open there.
        let (a2, _ch2) = Acceptor::on_hello(&id("b@h"), COOKIE, hello).unwrap();
        assert_eq!(a2.on_proof(proof1.clone()).err(), Some(Error::Decrypt));
        assert!(a1.on_proof(proof1).is_ok());
    }

    #[test]
    fn version_mismatch_and_refusal_are_reported() {
        let hello = Message::Hello { version: 2, to: String::new(), noise: Vec::new() };
        let mut v = Vec::new();
        hello.encode(&mut v);
        let (decoded, _) = Message::decode(&v).unwrap().unwrap();
        assert_eq!(Acceptor::on_hello(&id("b@h"), COOKIE, decoded).err(), Some(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: 2 }));
        let (d, _) = Dialer::start(&id("a@h"), "b@h", COOKIE).unwrap();
        assert_eq!(
            d.on_challenge(Message::Refuse { code: Refusal::NameInUse, reason: "name in use".into() }).err(),
            Some(Error::Refused { code: Refusal::NameInUse, reason: "name in use".into() })
        );
    }

    /// A claimed name is checked before anything can log it: a newline or a control
    /// character in it would write lines of the attacker's into the acceptor's log.
    #[test]
    fn names_that_are_not_printable_ascii_are_malformed() {
        for name in ["a@h\n2026-11-30T00:00:00Z INFO connected to evil@h", "a@h\r", "a b@h", "a@h\u{1b}[31m", "a@hé"] {
            assert!(matches!(Identity::decode(&id(name).encode()), Err(Error::Malformed { .. })), "{name:?}");
            let m = Message::Hello { version: PROTOCOL_VERSION, to: name.into(), noise: vec![1; 48] };
            let mut v = Vec::new();
            m.encode(&mut v);
            assert!(matches!(Message::decode(&v), Err(Error::Malformed { .. })), "{name:?}");
        }
        // Through a real handshake: the acceptor refuses it as malformed.
        let (_, hello) = Dialer::start(&id("a@h\nforged"), "b@h", COOKIE).unwrap();
        assert!(matches!(Acceptor::on_hello(&id("b@h"), COOKIE, hello), Err(Error::Malformed { .. })));
    }

    #[test]
    fn names_without_at_are_malformed() {
        assert!(matches!(Identity::decode(&id("nohost").encode()), Err(Error::Malformed { .. })));
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
            Refusal::WrongNode,
            Refusal::ModeMismatch,
            Refusal::Certificate,
            Refusal::Downgraded,
            Refusal::Other(200),
        ];
        for code in all {
            let m = Message::Refuse { code, reason: format!("{code:?}") };
            assert_eq!(Message::decode(&wire(&m)).unwrap().map(|(m, _)| m), Some(m));
        }
        assert_eq!(Refusal::for_error(&Error::CookieMismatch), Refusal::CookieMismatch);
    }
}
