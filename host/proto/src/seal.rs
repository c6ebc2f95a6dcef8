//! Sealed records: every byte of a connection after its handshake.
//!
//! A record is a 2-byte big-endian length, then that many bytes of AES-256-GCM
//! ciphertext with its 16-byte tag (Noise's transport messages, keyed by the handshake).
//! Each direction has its own key and counts its records from 0; the count is the nonce
//! and never crosses the wire, so a record altered, replayed, dropped, reordered or
//! injected fails to open and the connection ends. Frames ([`crate::frame`]) are the
//! plaintext, as a byte stream: one record may hold many small frames, and a large
//! frame spans records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};

use crate::Error;

/// Bytes before each record: its length.
pub const RECORD_HEADER: usize = 2;
/// The authentication tag at the end of each record.
pub const TAG_LEN: usize = 16;
/// The most plaintext one record holds (Noise's 65,535-byte message, less the tag).
pub const MAX_RECORD_PLAIN: usize = 65_535 - TAG_LEN;

/// Both directions of one connection's keys, from a finished handshake.
pub struct Session {
    pub sealer: Sealer,
    pub opener: Opener,
}

impl Session {
    pub(crate) fn new(keys: snow::StatelessTransportState) -> Session {
        let keys = Arc::new(keys);
        Session { sealer: Sealer { keys: keys.clone(), next: AtomicU64::new(0) }, opener: Opener { keys, next: 0 } }
    }
}

/// Seals what this side sends. Shared by a connection's writers: whoever writes next
/// seals next (the caller keeps records on the wire in the order they were sealed).
pub struct Sealer {
    keys: Arc<snow::StatelessTransportState>,
    next: AtomicU64,
}

impl Sealer {
    /// Appends `plain` to `out` as sealed records, one per [`MAX_RECORD_PLAIN`] bytes.
    pub fn seal(&self, plain: &[u8], out: &mut BytesMut) {
        out.reserve(plain.len() + plain.len().div_ceil(MAX_RECORD_PLAIN).max(1) * (RECORD_HEADER + TAG_LEN));
        for chunk in plain.chunks(MAX_RECORD_PLAIN) {
            self.seal_one(chunk, out);
        }
    }

    fn seal_one(&self, chunk: &[u8], out: &mut BytesMut) {
        let nonce = self.next.fetch_add(1, Ordering::Relaxed);
        let start = out.len();
        out.put_u16((chunk.len() + TAG_LEN) as u16);
        out.resize(start + RECORD_HEADER + chunk.len() + TAG_LEN, 0);
        self.keys.write_message(nonce, chunk, &mut out[start + RECORD_HEADER..]).expect("a record within Noise's limit");
    }

    /// One record's ciphertext, without its length (the handshake's `Proof` and `Accept`).
    pub fn seal_vec(&self, plain: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        self.seal_one(plain, &mut out);
        out[RECORD_HEADER..].to_vec()
    }
}

/// Opens what the peer sent, in order.
pub struct Opener {
    keys: Arc<snow::StatelessTransportState>,
    next: u64,
}

impl Opener {
    /// Opens every whole record at the start of `raw`, consuming it, and appends the
    /// plaintext to `plain`; a partial record stays in `raw`. A record that does not
    /// open is [`Error::Decrypt`]: the connection must close.
    pub fn open(&mut self, raw: &mut BytesMut, plain: &mut BytesMut) -> Result<(), Error> {
        while raw.len() >= RECORD_HEADER {
            let len = u16::from_be_bytes([raw[0], raw[1]]) as usize;
            if len < TAG_LEN {
                return Err(Error::Malformed { what: "record", why: "shorter than its tag" });
            }
            if raw.len() < RECORD_HEADER + len {
                break;
            }
            // Room for the whole ciphertext: the AEAD opens it in place there (with room
            // only for the plaintext, snow would copy it to a new buffer first).
            let start = plain.len();
            plain.resize(start + len, 0);
            match self.keys.read_message(self.next, &raw[RECORD_HEADER..RECORD_HEADER + len], &mut plain[start..]) {
                Ok(n) => plain.truncate(start + n),
                Err(_) => {
                    plain.truncate(start);
                    return Err(Error::Decrypt);
                }
            }
            self.next += 1;
            raw.advance(RECORD_HEADER + len);
        }
        Ok(())
    }

    /// Opens one record's ciphertext given without its length (see [`Sealer::seal_vec`]).
    pub fn open_vec(&mut self, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        if sealed.len() < TAG_LEN || sealed.len() > 65_535 {
            return Err(Error::Decrypt);
        }
        let mut out = vec![0u8; sealed.len()];
        let n = self.keys.read_message(self.next, sealed, &mut out).map_err(|_| Error::Decrypt)?;
        out.truncate(n);
        self.next += 1;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{Acceptor, Dialer, Identity};

    fn pair() -> (Session, Session) {
        let cookie = b"0123456789abcdef";
        let me = Identity { name: "a@h".into(), flags: 0, creation: 1 };
        let you = Identity { name: "b@h".into(), flags: 0, creation: 2 };
        let (d, hello) = Dialer::start(&me, "b@h", cookie).unwrap();
        let (a, ch) = Acceptor::on_hello(&you, cookie, hello).unwrap();
        let (d, proof) = d.on_challenge(ch).unwrap();
        let (_, mut acceptor) = a.on_proof(proof).unwrap();
        let accept = acceptor.accept();
        let (_, dialer) = d.on_accept(accept).unwrap();
        (dialer, acceptor)
    }

    /// Records arrive in any split (a byte at a time, many at once) and large
    /// plaintexts span records.
    #[test]
    fn records_round_trip_however_the_bytes_arrive() {
        let (d, mut a) = pair();
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut wire = BytesMut::new();
        d.sealer.seal(b"small", &mut wire);
        d.sealer.seal(&big, &mut wire);
        d.sealer.seal(b"", &mut wire);
        let mut raw = BytesMut::new();
        let mut plain = BytesMut::new();
        for piece in wire.chunks(777) {
            raw.extend_from_slice(piece);
            a.opener.open(&mut raw, &mut plain).unwrap();
        }
        assert!(raw.is_empty());
        assert_eq!(&plain[..5], b"small");
        assert_eq!(&plain[5..], &big[..]);
    }

    /// A relay on the path can forward records but not change, replay, drop or
    /// reorder one, nor inject its own.
    #[test]
    fn an_altered_replayed_reordered_or_injected_record_does_not_open() {
        // Two records from a fresh connection's dialer, in order.
        let records = || {
            let (d, a) = pair();
            let (mut one, mut two) = (BytesMut::new(), BytesMut::new());
            d.sealer.seal(b"one", &mut one);
            d.sealer.seal(b"two", &mut two);
            (a, one, two)
        };
        let open = |a: &mut Session, bytes: &BytesMut| a.opener.open(&mut bytes.clone(), &mut BytesMut::new());

        // In order, they open.
        let (mut a, one, two) = records();
        assert_eq!(open(&mut a, &one), Ok(()));
        assert_eq!(open(&mut a, &two), Ok(()));
        // Altered: one flipped bit.
        let (mut a, mut one, _) = records();
        one[4] ^= 1;
        assert_eq!(open(&mut a, &one), Err(Error::Decrypt));
        // Reordered (or the first dropped): the second record first.
        let (mut a, _, two) = records();
        assert_eq!(open(&mut a, &two), Err(Error::Decrypt));
        // Replayed: the first record twice.
        let (mut a, one, _) = records();
        assert_eq!(open(&mut a, &one), Ok(()));
        assert_eq!(open(&mut a, &one), Err(Error::Decrypt));
        // From another connection: other keys.
        let (mut a, _, _) = records();
        let (_, other, _) = records();
        assert_eq!(open(&mut a, &other), Err(Error::Decrypt));
        // Injected: a record made without the keys.
        let (mut a, _, _) = records();
        let mut forged = BytesMut::new();
        forged.put_u16(3 + TAG_LEN as u16);
        forged.extend_from_slice(&[0u8; 3 + TAG_LEN]);
        assert_eq!(open(&mut a, &forged), Err(Error::Decrypt));
    }

    #[test]
    fn a_record_shorter_than_its_tag_is_malformed() {
        let (_, mut a) = pair();
        let mut raw = BytesMut::from(&[0u8, 3, 1, 2, 3][..]);
        assert!(matches!(a.opener.open(&mut raw, &mut BytesMut::new()), Err(Error::Malformed { .. })));
    }
}
