//! Frames: `[u32 big-endian length][u8 tag][body]`, the length counting tag and body.
//!
//! The decoder is incremental: [`decode`] answers `Ok(None)` ("need more bytes") until
//! a whole frame is buffered, checks the announced length against a maximum before
//! waiting for the body, and never panics on any input (a property test and a fuzz
//! harness in `tests/` hold it to that).
//!
//! Messages larger than [`FRAGMENT_SIZE`] travel as [`Frame::Fragment`]s produced by
//! [`Fragmenter`]; the writer sends one fragment, then anything small that is waiting
//! (heartbeats first), then the next fragment — as OTP 22 does — so a 64 MiB message
//! never delays a heartbeat by more than one fragment. [`Reassembler`] puts them back.

use bytes::{Buf, BufMut, Bytes};

use crate::{Error, TraceContext};

/// Bytes of length prefix in front of every frame.
pub const HEADER_LEN: usize = 4;
/// Largest body (tag + payload) a decoder accepts unless told otherwise.
pub const DEFAULT_MAX_FRAME: usize = 128 * 1024;
/// A payload up to this size travels in one frame; a larger one is split into
/// fragments of this size, so nothing waits behind more than one fragment.
pub const FRAGMENT_SIZE: usize = 64 * 1024;
/// Largest message, after reassembly, a node accepts.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

const TAG_HEARTBEAT: u8 = 0x01;
const TAG_MEMBERS: u8 = 0x02;
const TAG_LEAVING: u8 = 0x03;
const TAG_SEND: u8 = 0x04;
const TAG_PING: u8 = 0x05;
const TAG_PONG: u8 = 0x06;
const TAG_REQUEST: u8 = 0x07;
const TAG_REPLY: u8 = 0x08;
const TAG_FRAGMENT: u8 = 0x09;
/// A request that carries its caller's trace context ([`TraceContext`]).
const TAG_TRACED_REQUEST: u8 = 0x0a;
pub(crate) const TAG_HELLO: u8 = 0x10;
pub(crate) const TAG_CHALLENGE: u8 = 0x11;
pub(crate) const TAG_PROOF: u8 = 0x12;
pub(crate) const TAG_ACCEPT: u8 = 0x13;
pub(crate) const TAG_REFUSE: u8 = 0x14;

/// Which layer of the receiving node a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The control plane: JSON requests of the CLI and the bench.
    Control,
    /// The registry: another node's registry's requests and messages.
    Registry,
}

impl Service {
    fn code(self) -> u8 {
        match self {
            Service::Control => 1,
            Service::Registry => 2,
        }
    }

    fn from_code(code: u8) -> Result<Service, Error> {
        match code {
            1 => Ok(Service::Control),
            2 => Ok(Service::Registry),
            _ => Err(Error::Malformed { what: "request", why: "unknown service" }),
        }
    }
}

/// One frame on a connection, after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// "I am alive"; sent every heartbeat interval on every connection.
    Heartbeat,
    /// The sender's visible members (itself included), sent on connect and on change,
    /// so peers can connect to each other's peers (full mesh).
    Members(Vec<String>),
    /// The sender is shutting down on purpose: log a leave, do not re-dial it.
    Leaving,
    /// A one-way message to the node.
    Send(Bytes),
    /// Echo request: the peer answers `Pong` with the same id and payload, after every
    /// frame it received before it (so a ping also marks the end of a stream).
    Ping { id: u64, payload: Bytes },
    /// Echo answer.
    Pong { id: u64, payload: Bytes },
    /// A request for one of the node's services (the registry's, or the control plane's
    /// of the CLI's `nodes`, `nodes --watch`); id 0 wants no reply. With `trace`, the
    /// caller's trace context travels with it (another tag, 25 bytes more); without,
    /// the frame is what it was before traces.
    Request { id: u64, service: Service, trace: Option<TraceContext>, body: Bytes },
    /// An answer to a request; a watch answers many times with the same id.
    Reply { id: u64, body: Bytes },
    /// A piece of a large frame: the pieces of one `stream` concatenated (in order)
    /// are the encoded body of that frame; `last` marks the final piece.
    Fragment { stream: u32, last: bool, chunk: Bytes },
}

impl Frame {
    /// The frame's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Heartbeat => "heartbeat",
            Frame::Members(_) => "members",
            Frame::Leaving => "leaving",
            Frame::Send(_) => "send",
            Frame::Ping { .. } => "ping",
            Frame::Pong { .. } => "pong",
            Frame::Request { .. } => "request",
            Frame::Reply { .. } => "reply",
            Frame::Fragment { .. } => "fragment",
        }
    }

    /// Length of the body (tag and payload) this frame encodes to.
    pub fn body_len(&self) -> usize {
        1 + match self {
            Frame::Heartbeat | Frame::Leaving => 0,
            Frame::Members(names) => 2 + names.iter().map(|n| 2 + n.len()).sum::<usize>(),
            Frame::Send(p) => p.len(),
            Frame::Ping { payload, .. } | Frame::Pong { payload, .. } => 8 + payload.len(),
            Frame::Request { body, trace, .. } => 9 + trace.map_or(0, |_| TraceContext::LEN) + body.len(),
            Frame::Reply { body, .. } => 8 + body.len(),
            Frame::Fragment { chunk, .. } => 5 + chunk.len(),
        }
    }

    /// Length of the opaque payload at the end of the body (what fragmentation and
    /// zero-copy writes are about); for members, the whole list.
    pub fn payload_len(&self) -> usize {
        match self {
            Frame::Heartbeat | Frame::Leaving => 0,
            Frame::Members(_) => self.body_len() - 1,
            Frame::Send(p) => p.len(),
            Frame::Ping { payload, .. } | Frame::Pong { payload, .. } => payload.len(),
            Frame::Request { body, .. } | Frame::Reply { body, .. } => body.len(),
            Frame::Fragment { chunk, .. } => chunk.len(),
        }
    }

    /// Appends the length prefix and body to `out`.
    pub fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_u32(self.body_len() as u32);
        self.encode_body(out);
    }

    /// Appends the length prefix and everything before the trailing payload, and returns
    /// the payload for the caller to write after it without copying (vectored writes).
    /// Frames without an opaque payload are written whole and return `None`.
    pub fn encode_head<B: BufMut>(&self, out: &mut B) -> Option<Bytes> {
        let payload = match self {
            Frame::Send(p) => p,
            Frame::Ping { payload, .. } | Frame::Pong { payload, .. } => payload,
            Frame::Request { body, .. } | Frame::Reply { body, .. } => body,
            Frame::Fragment { chunk, .. } => chunk,
            Frame::Heartbeat | Frame::Leaving | Frame::Members(_) => {
                self.encode(out);
                return None;
            }
        };
        out.put_u32(self.body_len() as u32);
        match self {
            Frame::Send(_) => out.put_u8(TAG_SEND),
            Frame::Ping { id, .. } | Frame::Pong { id, .. } | Frame::Reply { id, .. } => {
                out.put_u8(match self {
                    Frame::Ping { .. } => TAG_PING,
                    Frame::Pong { .. } => TAG_PONG,
                    _ => TAG_REPLY,
                });
                out.put_u64(*id);
            }
            Frame::Request { id, service, trace, .. } => put_request_head(out, *id, *service, trace),
            Frame::Fragment { stream, last, .. } => {
                out.put_u8(TAG_FRAGMENT);
                out.put_u32(*stream);
                out.put_u8(*last as u8);
            }
            _ => unreachable!(),
        }
        Some(payload.clone())
    }

    /// Appends the body (tag and payload) without the length prefix.
    pub fn encode_body<B: BufMut>(&self, out: &mut B) {
        match self {
            Frame::Heartbeat => out.put_u8(TAG_HEARTBEAT),
            Frame::Leaving => out.put_u8(TAG_LEAVING),
            Frame::Members(names) => {
                out.put_u8(TAG_MEMBERS);
                out.put_u16(names.len() as u16);
                for n in names {
                    put_str(out, n);
                }
            }
            Frame::Send(p) => {
                out.put_u8(TAG_SEND);
                out.put_slice(p);
            }
            Frame::Ping { id, payload } | Frame::Pong { id, payload } => {
                out.put_u8(if matches!(self, Frame::Ping { .. }) { TAG_PING } else { TAG_PONG });
                out.put_u64(*id);
                out.put_slice(payload);
            }
            Frame::Request { id, service, trace, body } => {
                put_request_head(out, *id, *service, trace);
                out.put_slice(body);
            }
            Frame::Reply { id, body } => {
                out.put_u8(TAG_REPLY);
                out.put_u64(*id);
                out.put_slice(body);
            }
            Frame::Fragment { stream, last, chunk } => {
                out.put_u8(TAG_FRAGMENT);
                out.put_u32(*stream);
                out.put_u8(*last as u8);
                out.put_slice(chunk);
            }
        }
    }

    /// Parses a body (tag and payload). Payloads share `body`'s allocation.
    pub fn decode_body(mut body: Bytes) -> Result<Frame, Error> {
        if body.is_empty() {
            return Err(Error::Malformed { what: "empty", why: "no tag" });
        }
        let tag = body.get_u8();
        Ok(match tag {
            TAG_HEARTBEAT => expect_empty(body, "heartbeat", Frame::Heartbeat)?,
            TAG_LEAVING => expect_empty(body, "leaving", Frame::Leaving)?,
            TAG_MEMBERS => {
                let what = "members";
                let count = get_u16(&mut body, what)?;
                let mut names = Vec::with_capacity(count.min(1024) as usize);
                for _ in 0..count {
                    let name = get_str(&mut body, what)?;
                    if !crate::handshake::printable(&name) {
                        return Err(Error::Malformed { what, why: "a member name has a character that is not printable ASCII" });
                    }
                    names.push(name);
                }
                expect_empty(body, what, Frame::Members(names))?
            }
            TAG_SEND => Frame::Send(body),
            TAG_PING | TAG_PONG | TAG_REQUEST | TAG_TRACED_REQUEST | TAG_REPLY => {
                let id = get_u64(&mut body, "request")?;
                match tag {
                    TAG_PING => Frame::Ping { id, payload: body },
                    TAG_PONG => Frame::Pong { id, payload: body },
                    TAG_REQUEST => {
                        let service = Service::from_code(get_u8(&mut body, "request")?)?;
                        Frame::Request { id, service, trace: None, body }
                    }
                    TAG_TRACED_REQUEST => {
                        let service = Service::from_code(get_u8(&mut body, "request")?)?;
                        let Some(raw) = body.get(..TraceContext::LEN) else {
                            return Err(Error::Malformed { what: "request", why: "trace context cut short" });
                        };
                        let trace = TraceContext::from_bytes(raw.try_into().expect("25 bytes"))
                            .ok_or(Error::Malformed { what: "request", why: "invalid trace context" })?;
                        body.advance(TraceContext::LEN);
                        Frame::Request { id, service, trace: Some(trace), body }
                    }
                    _ => Frame::Reply { id, body },
                }
            }
            TAG_FRAGMENT => {
                let stream = get_u32(&mut body, "fragment")?;
                let last = match get_u8(&mut body, "fragment")? {
                    0 => false,
                    1 => true,
                    _ => return Err(Error::Malformed { what: "fragment", why: "last flag is not 0 or 1" }),
                };
                Frame::Fragment { stream, last, chunk: body }
            }
            other => return Err(Error::UnknownTag(other)),
        })
    }
}

fn put_request_head<B: BufMut>(out: &mut B, id: u64, service: Service, trace: &Option<TraceContext>) {
    out.put_u8(if trace.is_some() { TAG_TRACED_REQUEST } else { TAG_REQUEST });
    out.put_u64(id);
    out.put_u8(service.code());
    if let Some(t) = trace {
        out.put_slice(&t.to_bytes());
    }
}

/// Appends a `Send` frame without building a [`Frame`]: the hot path of one-way messages.
pub fn encode_send(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + 1 + payload.len());
    out.put_u32(1 + payload.len() as u32);
    out.put_u8(TAG_SEND);
    out.put_slice(payload);
}

/// Looks for one whole frame at the start of `buf`.
///
/// `Ok(None)`: not enough bytes yet. `Ok(Some((frame, used)))`: a frame and how many
/// bytes of `buf` it took. `Err`: the stream is broken; close the connection.
pub fn decode(buf: &[u8], max_frame: usize) -> Result<Option<(Frame, usize)>, Error> {
    match frame_len(buf, max_frame)? {
        None => Ok(None),
        Some(len) => {
            let body = Bytes::copy_from_slice(&buf[HEADER_LEN..HEADER_LEN + len]);
            Ok(Some((Frame::decode_body(body)?, HEADER_LEN + len)))
        }
    }
}

/// The body length of the frame at the start of `buf`, once all of it is buffered.
///
/// Checks the announced length against `max_frame` as soon as the prefix is in, so a
/// peer cannot make us buffer a huge body. Callers that own a `BytesMut` use this to
/// split the body off without copying.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, Error> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_frame {
        return Err(Error::FrameTooLarge { len, max: max_frame });
    }
    if len == 0 {
        return Err(Error::Malformed { what: "empty", why: "zero-length frame" });
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    Ok(Some(len))
}

/// Splits one large frame into [`Frame::Fragment`]s of at most [`FRAGMENT_SIZE`] bytes.
///
/// # Example
/// ```
/// use bytes::Bytes;
/// use wasmnode_proto::frame::{Fragmenter, Reassembler, FRAGMENT_SIZE, MAX_MESSAGE};
/// use wasmnode_proto::Frame;
/// let big = Frame::Send(Bytes::from(vec![7u8; 3 * FRAGMENT_SIZE]));
/// let mut pieces = Fragmenter::new(42, &big);
/// let mut r = Reassembler::new(MAX_MESSAGE);
/// let mut out = None;
/// while let Some(piece) = pieces.next() {
///     if let Frame::Fragment { stream, last, chunk } = piece {
///         out = r.push(stream, last, chunk).unwrap();
///     }
/// }
/// assert_eq!(out, Some(big));
/// ```
pub struct Fragmenter {
    stream: u32,
    body: Bytes,
}

impl Fragmenter {
    /// Prepares `frame` to go out as fragments of stream `stream`.
    pub fn new(stream: u32, frame: &Frame) -> Fragmenter {
        let mut body = Vec::with_capacity(frame.body_len());
        frame.encode_body(&mut body);
        Fragmenter { stream, body: Bytes::from(body) }
    }

    /// Whether a frame is large enough to be fragmented.
    pub fn needed(frame: &Frame) -> bool {
        frame.payload_len() > FRAGMENT_SIZE
    }
}

impl Iterator for Fragmenter {
    type Item = Frame;
    fn next(&mut self) -> Option<Frame> {
        if self.body.is_empty() {
            return None;
        }
        let n = self.body.len().min(FRAGMENT_SIZE);
        let chunk = self.body.split_to(n);
        Some(Frame::Fragment { stream: self.stream, last: self.body.is_empty(), chunk })
    }
}

/// Streams a connection may have open at once. A node sends one large message at a time
/// (its writer finishes one before it begins the next), so a peer with more is not a node.
pub const MAX_OPEN_STREAMS: usize = 8;

/// Reassembles fragment streams; one stream at a time may be open per stream id. The
/// bytes held for all open streams together stay within one largest message, and at most
/// [`MAX_OPEN_STREAMS`] are open: a peer that opens thousands of streams and finishes
/// none holds no more memory than one that sends one large message.
pub struct Reassembler {
    max_message: usize,
    open: std::collections::HashMap<u32, Vec<u8>>,
    /// Bytes held across every open stream.
    held: usize,
}

impl Reassembler {
    /// A reassembler that refuses messages larger than `max_message` bytes, and more than
    /// `max_message` bytes held across its open streams.
    pub fn new(max_message: usize) -> Reassembler {
        Reassembler { max_message, open: Default::default(), held: 0 }
    }

    /// Bytes held for streams not yet finished.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Adds one piece; returns the whole frame when `last` completes it.
    pub fn push(&mut self, stream: u32, last: bool, chunk: Bytes) -> Result<Option<Frame>, Error> {
        if !self.open.contains_key(&stream) && self.open.len() >= MAX_OPEN_STREAMS {
            return Err(Error::PeerMisbehaved("more fragment streams open at once than a node sends"));
        }
        if self.held + chunk.len() > self.max_message {
            if let Some(buf) = self.open.remove(&stream) {
                self.held -= buf.len();
            }
            return Err(Error::FrameTooLarge { len: usize::MAX, max: self.max_message });
        }
        let buf = self.open.entry(stream).or_default();
        buf.extend_from_slice(&chunk);
        self.held += chunk.len();
        if !last {
            return Ok(None);
        }
        let body = Bytes::from(self.open.remove(&stream).unwrap_or_default());
        self.held -= body.len();
        match Frame::decode_body(body)? {
            Frame::Fragment { .. } => Err(Error::PeerMisbehaved("a fragment inside a fragment")),
            frame => Ok(Some(frame)),
        }
    }
}

fn expect_empty(body: Bytes, what: &'static str, frame: Frame) -> Result<Frame, Error> {
    if body.is_empty() {
        Ok(frame)
    } else {
        Err(Error::Malformed { what, why: "trailing bytes" })
    }
}

pub(crate) fn put_str<B: BufMut>(out: &mut B, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

pub(crate) fn get_u8(b: &mut Bytes, what: &'static str) -> Result<u8, Error> {
    b.try_get_u8().map_err(|_| Error::Malformed { what, why: "truncated" })
}
pub(crate) fn get_u16(b: &mut Bytes, what: &'static str) -> Result<u16, Error> {
    b.try_get_u16().map_err(|_| Error::Malformed { what, why: "truncated" })
}
pub(crate) fn get_u32(b: &mut Bytes, what: &'static str) -> Result<u32, Error> {
    b.try_get_u32().map_err(|_| Error::Malformed { what, why: "truncated" })
}
pub(crate) fn get_u64(b: &mut Bytes, what: &'static str) -> Result<u64, Error> {
    b.try_get_u64().map_err(|_| Error::Malformed { what, why: "truncated" })
}
pub(crate) fn get_str(b: &mut Bytes, what: &'static str) -> Result<String, Error> {
    let len = get_u16(b, what)? as usize;
    if b.len() < len {
        return Err(Error::Malformed { what, why: "truncated string" });
    }
    let raw = b.split_to(len);
    String::from_utf8(raw.to_vec()).map_err(|_| Error::Malformed { what, why: "string is not UTF-8" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_list_with_a_name_that_is_not_printable_is_malformed() {
        let mut v = Vec::new();
        Frame::Members(vec!["a@h".into(), "b@h\nINFO forged".into()]).encode(&mut v);
        assert!(matches!(decode(&v, DEFAULT_MAX_FRAME), Err(Error::Malformed { what: "members", .. })));
    }

    #[test]
    fn a_request_names_its_service_and_an_unknown_service_is_malformed() {
        for service in [Service::Control, Service::Registry] {
            roundtrip(Frame::Request { id: 7, service, trace: None, body: Bytes::from_static(b"x") });
        }
        let mut v = Vec::new();
        Frame::Request { id: 7, service: Service::Registry, trace: None, body: Bytes::new() }.encode(&mut v);
        let last = v.len() - 1;
        v[last] = 0x99;
        assert_eq!(decode(&v, DEFAULT_MAX_FRAME).err(), Some(Error::Malformed { what: "request", why: "unknown service" }));
    }

    const TRACE: TraceContext = TraceContext { trace_id: [7; 16], span_id: [9; 8], flags: 1 };

    #[test]
    fn a_traced_request_carries_its_context_and_a_cut_or_invalid_one_is_malformed() {
        let mut plain = Vec::new();
        Frame::Request { id: 7, service: Service::Registry, trace: None, body: Bytes::from_static(b"x") }.encode(&mut plain);
        let mut traced = Vec::new();
        Frame::Request { id: 7, service: Service::Registry, trace: Some(TRACE), body: Bytes::from_static(b"x") }.encode(&mut traced);
        assert_eq!(traced.len(), plain.len() + TraceContext::LEN, "the context costs its 25 bytes and nothing more");
        // The body cut inside the context: malformed, not a panic.
        let mut cut = traced[..HEADER_LEN + 1 + 8 + 1 + 10].to_vec();
        let len = (cut.len() - HEADER_LEN) as u32;
        cut[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(decode(&cut, DEFAULT_MAX_FRAME).err(), Some(Error::Malformed { what: "request", why: "trace context cut short" }));
        // An all-zero trace id is invalid (W3C).
        let mut zero = traced.clone();
        zero[HEADER_LEN + 10..HEADER_LEN + 26].fill(0);
        assert_eq!(decode(&zero, DEFAULT_MAX_FRAME).err(), Some(Error::Malformed { what: "request", why: "invalid trace context" }));
    }

    fn roundtrip(f: Frame) {
        let mut wire = Vec::new();
        f.encode(&mut wire);
        assert_eq!(wire.len(), HEADER_LEN + f.body_len(), "body_len agrees with encode for {f:?}");
        let (g, used) = decode(&wire, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!((g, used), (f, wire.len()));
    }

    #[test]
    fn every_frame_roundtrips() {
        roundtrip(Frame::Heartbeat);
        roundtrip(Frame::Leaving);
        roundtrip(Frame::Members(vec!["a@127.0.0.1".into(), "b@127.0.0.2:4371".into()]));
        roundtrip(Frame::Members(vec![]));
        roundtrip(Frame::Send(Bytes::from_static(b"0123456789abcdef")));
        roundtrip(Frame::Ping { id: 7, payload: Bytes::from_static(b"x") });
        roundtrip(Frame::Pong { id: u64::MAX, payload: Bytes::new() });
        roundtrip(Frame::Request { id: 1, service: Service::Control, trace: None, body: Bytes::from_static(b"{}") });
        roundtrip(Frame::Request { id: 1, service: Service::Registry, trace: Some(TRACE), body: Bytes::from_static(b"{}") });
        roundtrip(Frame::Reply { id: 2, body: Bytes::from_static(b"[]") });
        roundtrip(Frame::Fragment { stream: 3, last: true, chunk: Bytes::from_static(b"abc") });
    }

    #[test]
    fn head_plus_payload_is_the_whole_frame() {
        for f in [
            Frame::Send(Bytes::from_static(b"abc")),
            Frame::Ping { id: 1, payload: Bytes::from_static(b"p") },
            Frame::Reply { id: 2, body: Bytes::from_static(b"{}") },
            Frame::Request { id: 4, service: Service::Registry, trace: None, body: Bytes::from_static(b"q") },
            Frame::Request { id: 5, service: Service::Registry, trace: Some(TRACE), body: Bytes::from_static(b"q") },
            Frame::Fragment { stream: 3, last: false, chunk: Bytes::from_static(b"xyz") },
            Frame::Members(vec!["a@h".into()]),
            Frame::Heartbeat,
        ] {
            let (mut whole, mut head) = (Vec::new(), Vec::new());
            f.encode(&mut whole);
            if let Some(p) = f.encode_head(&mut head) {
                head.extend_from_slice(&p);
            }
            assert_eq!(head, whole, "{f:?}");
        }
    }

    #[test]
    fn encode_send_matches_frame_encode() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode_send(b"hello", &mut a);
        Frame::Send(Bytes::from_static(b"hello")).encode(&mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn partial_input_asks_for_more() {
        let mut wire = Vec::new();
        Frame::Ping { id: 9, payload: Bytes::from_static(b"payload") }.encode(&mut wire);
        for cut in 0..wire.len() {
            assert_eq!(decode(&wire[..cut], DEFAULT_MAX_FRAME), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let wire = (DEFAULT_MAX_FRAME as u32 + 1).to_be_bytes();
        assert_eq!(decode(&wire, DEFAULT_MAX_FRAME), Err(Error::FrameTooLarge { len: DEFAULT_MAX_FRAME + 1, max: DEFAULT_MAX_FRAME }));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode(&[0, 0, 0, 1, 0xee], 64), Err(Error::UnknownTag(0xee)));
        assert_eq!(decode(&[0, 0, 0, 0], 64), Err(Error::Malformed { what: "empty", why: "zero-length frame" }));
        assert!(matches!(decode(&[0, 0, 0, 2, TAG_HEARTBEAT, 0], 64), Err(Error::Malformed { .. })));
        assert!(matches!(decode(&[0, 0, 0, 4, TAG_MEMBERS, 0, 1, 0], 64), Err(Error::Malformed { .. })));
    }

    #[test]
    fn unfinished_streams_hold_at_most_one_message_and_a_few_streams() {
        // 4,096 streams each left one piece short: refused after MAX_OPEN_STREAMS.
        let mut r = Reassembler::new(MAX_MESSAGE);
        let piece = Bytes::from(vec![0u8; FRAGMENT_SIZE]);
        let mut refused = None;
        for stream in 0..4096u32 {
            if let Err(e) = r.push(stream, false, piece.clone()) {
                refused = Some((stream, e));
                break;
            }
        }
        assert!(matches!(refused, Some((s, Error::PeerMisbehaved(_))) if s as usize == MAX_OPEN_STREAMS), "{refused:?}");
        assert_eq!(r.held(), MAX_OPEN_STREAMS * FRAGMENT_SIZE);
        // The bytes of every open stream together stay within one message.
        let mut r = Reassembler::new(3 * FRAGMENT_SIZE);
        r.push(1, false, piece.clone()).unwrap();
        r.push(2, false, piece.clone()).unwrap();
        r.push(3, false, piece.clone()).unwrap();
        assert!(matches!(r.push(1, false, piece.clone()), Err(Error::FrameTooLarge { .. })));
        assert_eq!(r.held(), 2 * FRAGMENT_SIZE, "the refused stream's bytes are let go");
    }

    #[test]
    fn fragments_reassemble_and_fragment_nesting_is_refused() {
        assert!(!Fragmenter::needed(&Frame::Send(Bytes::from(vec![1u8; FRAGMENT_SIZE]))), "64 KiB goes whole");
        let big = Frame::Send(Bytes::from(vec![1u8; FRAGMENT_SIZE * 2 + 17]));
        assert!(Fragmenter::needed(&big));
        let pieces: Vec<Frame> = Fragmenter::new(1, &big).collect();
        assert_eq!(pieces.len(), 3);
        let mut r = Reassembler::new(MAX_MESSAGE);
        let mut got = None;
        for p in pieces {
            let Frame::Fragment { stream, last, chunk } = p else { panic!() };
            assert!(chunk.len() <= FRAGMENT_SIZE);
            got = r.push(stream, last, chunk).unwrap();
        }
        assert_eq!(got, Some(big));

        let inner = Frame::Fragment { stream: 2, last: true, chunk: Bytes::new() };
        let mut body = Vec::new();
        inner.encode_body(&mut body);
        assert_eq!(r.push(5, true, Bytes::from(body)), Err(Error::PeerMisbehaved("a fragment inside a fragment")));
    }

    #[test]
    fn reassembly_is_capped() {
        let mut r = Reassembler::new(10);
        assert_eq!(r.push(1, false, Bytes::from_static(b"123456")), Ok(None));
        assert!(matches!(r.push(1, false, Bytes::from_static(b"123456")), Err(Error::FrameTooLarge { .. })));
    }
}
