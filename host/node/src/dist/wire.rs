//! The bytes a handshake travels (the socket itself, or TLS over it) and the record
//! layer the connection goes on with: Noise's sealed records, or TLS's.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmnode_proto::handshake::Message;
use wasmnode_proto::seal::{Opener, Plain, Sealed, Sealer};

use super::DialError;
use crate::tls;

/// What seals this side's bytes: Noise's records, or under `[node.tls]` TLS's.
pub(super) enum Seal {
    Noise(Sealer),
    Tls(Arc<tls::Link>),
}

impl Seal {
    pub(super) fn seal(&self, plain: &[u8], out: &mut BytesMut) {
        match self {
            Seal::Noise(s) => s.seal(plain, out),
            Seal::Tls(link) => link.seal(plain, out),
        }
    }

    /// Whether small frames can be encoded straight into the writer's buffer and sealed
    /// there ([`Sealer::gather`]): Noise's records can, TLS's cannot.
    pub(super) fn gathers(&self) -> bool {
        matches!(self, Seal::Noise(s) if s.gathers())
    }

    /// See [`Sealer::gather`]; only where [`Seal::gathers`].
    pub(super) fn gather(&self, frame: &wasmnode_proto::Frame, out: &mut Sealed) {
        match self {
            Seal::Noise(s) => s.gather(frame, out),
            Seal::Tls(_) => unreachable!("TLS does not gather"),
        }
    }

    /// Seals the record [`Seal::gather`] began, if any.
    pub(super) fn seal_gathered(&self, out: &mut Sealed) {
        if let Seal::Noise(s) = self {
            s.seal_gathered(out);
        }
    }

    /// Seals frames gathered in a [`Plain`], large payloads read where they lie.
    pub(super) fn seal_plain(&self, plain: &Plain, out: &mut Sealed) {
        match self {
            Seal::Noise(s) => s.seal_plain(plain, out),
            Seal::Tls(link) => link.seal_pieces(plain.pieces(), out),
        }
    }
}

/// What opens the peer's bytes (see [`Seal`]).
pub(super) enum Open {
    Noise(Opener),
    Tls(Arc<tls::Link>),
}

impl Open {
    /// Opens what `raw` holds into `plain`: true if it opened anything (call again once
    /// the frames are taken), false if nothing whole is there yet.
    pub(super) fn open(&mut self, raw: &mut BytesMut, plain: &mut BytesMut) -> Result<bool, String> {
        match self {
            Open::Noise(o) => o.open(raw, plain).map_err(|e| e.to_string()),
            Open::Tls(link) => {
                let before = plain.len();
                link.open(raw, plain).map_err(|e| format!("TLS: {e}"))?;
                Ok(plain.len() > before)
            }
        }
    }

    /// Bytes `raw` still needs for the record at its start to be whole (0 if unknown).
    pub(super) fn missing(&self, raw: &[u8]) -> usize {
        match self {
            Open::Noise(o) => o.missing(raw),
            Open::Tls(_) => 0,
        }
    }
}

/// The byte stream a handshake's messages travel: the socket itself, or TLS over it.
pub(super) struct Wire {
    pub(super) tls: Option<Arc<tls::Link>>,
    /// Bytes read and not yet used: messages in the clear, or TLS records not yet opened.
    raw: BytesMut,
    /// Under TLS, bytes opened and not yet used.
    plain: BytesMut,
    /// Under TLS, the value the cookie's handshake is bound to; empty without.
    pub(super) binding: Vec<u8>,
}

impl Wire {
    pub(super) fn plain() -> Wire {
        Wire { tls: None, raw: BytesMut::with_capacity(512), plain: BytesMut::new(), binding: Vec::new() }
    }

    pub(super) fn tls(conn: rustls::Connection) -> Result<Wire, DialError> {
        let binding = tls::binding(&conn)?.to_vec();
        Ok(Wire { tls: Some(Arc::new(tls::Link::new(conn))), raw: BytesMut::with_capacity(4096), plain: BytesMut::with_capacity(512), binding })
    }

    pub(super) async fn read(&mut self, stream: &mut TcpStream) -> Result<Message, DialError> {
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

    pub(super) async fn write(&mut self, stream: &mut TcpStream, msg: &Message) -> std::io::Result<()> {
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
    pub(super) fn record_layer(&self, session: wasmnode_proto::seal::Session) -> (Seal, Open) {
        match &self.tls {
            None => {
                let (sealer, opener) = session.split();
                (Seal::Noise(sealer), Open::Noise(opener))
            }
            Some(link) => (Seal::Tls(link.clone()), Open::Tls(link.clone())),
        }
    }

    /// The bytes that came with the handshake: (still sealed, opened).
    pub(super) fn leftover(self) -> (BytesMut, BytesMut) {
        (self.raw, self.plain)
    }
}

pub(super) async fn read_message(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Message, DialError> {
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

pub(super) async fn write_message(stream: &mut TcpStream, msg: &Message) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(128);
    msg.encode(&mut out);
    stream.write_all(&out).await
}
