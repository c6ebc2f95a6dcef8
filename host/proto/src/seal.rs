//! Sealed records: every byte of a connection after its handshake.
//!
//! A record is a 2-byte big-endian length, then that many bytes of AES-256-GCM
//! ciphertext with its 16-byte tag (Noise's transport messages, keyed by the handshake).
//! Each direction has its own key and counts its records from 0; the count is the nonce
//! and never crosses the wire, so a record altered, replayed, dropped, reordered or
//! injected fails to open and the connection ends. Frames ([`crate::frame`]) are the
//! plaintext, as a byte stream: one record may hold many small frames, and a large
//! frame spans records.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::buf::UninitSlice;
use bytes::{Buf, BufMut, BytesMut};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

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
    /// The keys of a finished handshake: Noise's `Split()`, the initiator sending with
    /// the first. Records are sealed here with `ring`'s AES-256-GCM under Noise's nonce
    /// (4 zero bytes, then the record's count, big-endian) and empty associated data:
    /// byte for byte what `snow`'s transport mode makes (tested below), but sealed where
    /// the plaintext already lies instead of after a copy into a zeroed buffer.
    pub(crate) fn new(hs: &mut snow::HandshakeState) -> Result<Session, Error> {
        if !hs.is_handshake_finished() {
            return Err(Error::PeerMisbehaved("handshake not finished"));
        }
        let (mut first, mut second) = hs.dangerously_get_raw_split();
        // Boxed: a key with its tables is 500-odd bytes, moved around with its connection.
        let key = |k: &[u8; 32]| Box::new(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("a 32-byte AES-256 key")));
        let (send, recv) = if hs.is_initiator() { (key(&first), key(&second)) } else { (key(&second), key(&first)) };
        first.fill(0);
        second.fill(0);
        Ok(Session { sealer: Sealer { key: send, next: AtomicU64::new(0) }, opener: Opener { key: recv, next: 0 } })
    }
}

/// Noise's AESGCM nonce for record `n`. Noise reserves the last count; a connection
/// would need 2^64 records to reach it.
fn nonce(n: u64) -> Nonce {
    assert!(n != u64::MAX, "a connection's records ran out of nonces");
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Seals what this side sends. Shared by a connection's writers: whoever writes next
/// seals next (the caller keeps records on the wire in the order they were sealed).
pub struct Sealer {
    key: Box<LessSafeKey>,
    next: AtomicU64,
}

impl Sealer {
    /// Appends `plain` to `out` as sealed records, one per [`MAX_RECORD_PLAIN`] bytes.
    pub fn seal(&self, plain: &[u8], out: &mut BytesMut) {
        let mut records = self.records(out);
        records.put_slice(plain);
    }

    fn seal_one(&self, chunk: &[u8], out: &mut BytesMut) {
        let start = out.len();
        out.reserve(RECORD_HEADER + chunk.len() + TAG_LEN);
        out.put_u16(0);
        out.extend_from_slice(chunk);
        self.seal_at(out, start);
    }

    /// Seals the record begun at `start` (its length's place, then its plaintext up to
    /// the end of `out`) where it lies, and appends its tag.
    fn seal_at(&self, out: &mut BytesMut, start: usize) {
        let plain = out.len() - start - RECORD_HEADER;
        debug_assert!(plain <= MAX_RECORD_PLAIN);
        out[start..start + RECORD_HEADER].copy_from_slice(&((plain + TAG_LEN) as u16).to_be_bytes());
        let nonce = nonce(self.next.fetch_add(1, Ordering::Relaxed));
        let tag = self.key.seal_in_place_separate_tag(nonce, Aad::empty(), &mut out[start + RECORD_HEADER..]).expect("a record within AES-GCM's limit");
        out.extend_from_slice(tag.as_ref());
    }

    /// A writer of records onto the end of `out`: what is put into it (frames encode
    /// straight into it) is sealed in place, a record each time one fills and the last
    /// when the writer is closed or dropped. Nothing is copied twice.
    pub fn records<'a>(&'a self, out: &'a mut BytesMut) -> Records<'a> {
        Records { sealer: self, out, open: None }
    }

    /// One record's ciphertext, without its length (the handshake's `Proof` and `Accept`).
    pub fn seal_vec(&self, plain: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        self.seal_one(plain, &mut out);
        out[RECORD_HEADER..].to_vec()
    }
}

/// Records being written (see [`Sealer::records`]): a [`BufMut`] whose bytes go out
/// sealed. Between `put`s, the open record's plaintext lies unsealed at the end of the
/// buffer; [`Records::close`] (or dropping the writer) seals it.
pub struct Records<'a> {
    sealer: &'a Sealer,
    out: &'a mut BytesMut,
    /// Where the open record begins (its length's place), if one is open.
    open: Option<usize>,
}

impl Records<'_> {
    /// Seals the open record, if any, so that what follows starts a new one. A record
    /// opened with nothing put in it is taken back instead.
    pub fn close(&mut self) {
        match self.open.take() {
            Some(start) if self.out.len() == start + RECORD_HEADER => self.out.truncate(start),
            Some(start) => self.sealer.seal_at(self.out, start),
            None => {}
        }
    }

    /// Appends bytes sealed already (the rest of a record a writer began) after closing
    /// the open record.
    pub fn put_sealed(&mut self, sealed: &[u8]) {
        self.close();
        self.out.extend_from_slice(sealed);
    }

    /// The open record's start, opening one if none is.
    fn start(&mut self) -> usize {
        match self.open {
            Some(start) => start,
            None => {
                let start = self.out.len();
                self.out.put_u16(0);
                self.open = Some(start);
                start
            }
        }
    }

    /// Plaintext the open record still has room for.
    fn room(&mut self) -> usize {
        let start = self.start();
        start + RECORD_HEADER + MAX_RECORD_PLAIN - self.out.len()
    }
}

impl Drop for Records<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

// SAFETY: `chunk_mut` hands out the spare capacity of `out` (at most the open record's
// room) and `advance_mut` marks as written only what the caller wrote there, as
// `BytesMut`'s own implementation does.
unsafe impl BufMut for Records<'_> {
    fn remaining_mut(&self) -> usize {
        self.out.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller wrote `cnt` bytes of the chunk `chunk_mut` gave it.
        unsafe { self.out.advance_mut(cnt) };
        if self.room() == 0 {
            self.close();
        }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        let room = self.room();
        if self.out.capacity() == self.out.len() {
            self.out.reserve(64.min(room) + TAG_LEN);
        }
        let spare: &mut [MaybeUninit<u8>] = self.out.spare_capacity_mut();
        let n = spare.len().min(room);
        UninitSlice::uninit(&mut spare[..n])
    }

    fn put_slice(&mut self, mut src: &[u8]) {
        // Room for all of it and for each record's length and tag, at once.
        let records = src.len().div_ceil(MAX_RECORD_PLAIN) + 1;
        self.out.reserve(src.len() + records * (RECORD_HEADER + TAG_LEN));
        while !src.is_empty() {
            let n = self.room().min(src.len());
            self.out.extend_from_slice(&src[..n]);
            src = &src[n..];
            if self.room() == 0 {
                self.close();
            }
        }
    }
}

/// Opens what the peer sent, in order.
pub struct Opener {
    key: Box<LessSafeKey>,
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
            // Opened where it arrived, then its plaintext joins the stream.
            let opened = self.open_in_place(&mut raw[RECORD_HEADER..RECORD_HEADER + len])?;
            plain.extend_from_slice(opened);
            raw.advance(RECORD_HEADER + len);
        }
        Ok(())
    }

    fn open_in_place<'b>(&mut self, sealed: &'b mut [u8]) -> Result<&'b mut [u8], Error> {
        let opened = self.key.open_in_place(nonce(self.next), Aad::empty(), sealed).map_err(|_| Error::Decrypt)?;
        self.next += 1;
        Ok(opened)
    }

    /// Opens one record's ciphertext given without its length (see [`Sealer::seal_vec`]).
    pub fn open_vec(&mut self, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        if sealed.len() < TAG_LEN || sealed.len() > 65_535 {
            return Err(Error::Decrypt);
        }
        let mut out = sealed.to_vec();
        let n = self.open_in_place(&mut out)?.len();
        out.truncate(n);
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

    /// The records are Noise's transport messages byte for byte: what this module seals,
    /// `snow`'s transport mode opens, and the other way round, both directions.
    #[test]
    fn records_are_noises_transport_messages() {
        use crate::handshake::noise;
        let cookie = b"0123456789abcdef";
        // A finished handshake, then each side's keys both ways: ours and snow's.
        let mut i = noise(cookie, "b@h", &[], true);
        let mut r = noise(cookie, "b@h", &[], false);
        let mut msg = [0u8; 1024];
        let mut payload = [0u8; 1024];
        let n = i.write_message(b"", &mut msg).unwrap();
        r.read_message(&msg[..n], &mut payload).unwrap();
        let n = r.write_message(b"", &mut msg).unwrap();
        i.read_message(&msg[..n], &mut payload).unwrap();
        let (ours_i, ours_r) = (Session::new(&mut i).unwrap(), Session::new(&mut r).unwrap());
        let (snow_i, snow_r) = (i.into_stateless_transport_mode().unwrap(), r.into_stateless_transport_mode().unwrap());

        let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        for (ours, theirs) in [(&ours_i, &snow_r), (&ours_r, &snow_i)] {
            // Sealed here, opened by snow: record 0 small, records 1 and 2 one large plaintext.
            let mut wire = BytesMut::new();
            ours.sealer.seal(b"hello", &mut wire);
            ours.sealer.seal(&big, &mut wire);
            let mut opened = Vec::new();
            for nonce in 0.. {
                if wire.is_empty() {
                    break;
                }
                let len = u16::from_be_bytes([wire[0], wire[1]]) as usize;
                let mut out = vec![0u8; len];
                let n = theirs.read_message(nonce, &wire[2..2 + len], &mut out).expect("snow opens our record");
                opened.extend_from_slice(&out[..n]);
                wire.advance(2 + len);
            }
            assert_eq!(&opened[..5], b"hello");
            assert_eq!(&opened[5..], &big[..]);
        }
        let (mut ours_i, mut ours_r) = (ours_i, ours_r);
        for (ours, theirs) in [(&mut ours_r, &snow_i), (&mut ours_i, &snow_r)] {
            // Sealed by snow, opened here.
            let mut wire = BytesMut::new();
            for (nonce, chunk) in big.chunks(MAX_RECORD_PLAIN).enumerate() {
                let mut out = vec![0u8; chunk.len() + TAG_LEN];
                let n = theirs.write_message(nonce as u64, chunk, &mut out).unwrap();
                wire.put_u16(n as u16);
                wire.extend_from_slice(&out[..n]);
            }
            let mut plain = BytesMut::new();
            ours.opener.open(&mut wire, &mut plain).expect("we open snow's records");
            assert!(wire.is_empty());
            assert_eq!(&plain[..], &big[..]);
        }
    }

    /// Frames encode straight into records: a record closes when full and when the
    /// writer is dropped; a record opened with nothing in it is not sent.
    #[test]
    fn frames_encoded_into_records_open_as_the_same_stream() {
        use crate::frame::{self, Frame};
        use bytes::Bytes;
        let (d, mut a) = pair();
        let big = Bytes::from((0..150_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let frames = [Frame::Heartbeat, Frame::Send(big.clone()), Frame::Send(Bytes::from_static(b"after")), Frame::Leaving];
        let mut wire = BytesMut::new();
        {
            let mut records = d.sealer.records(&mut wire);
            for f in &frames[..2] {
                f.encode(&mut records);
            }
            // Bytes sealed elsewhere close the open record first.
            records.close();
            frames[2].encode(&mut records);
        }
        // Three records for the first two frames (150,010 bytes), one for the third.
        let mut count = 0;
        let mut at = 0;
        while at < wire.len() {
            let len = u16::from_be_bytes([wire[at], wire[at + 1]]) as usize;
            assert!(len <= MAX_RECORD_PLAIN + TAG_LEN);
            at += RECORD_HEADER + len;
            count += 1;
        }
        assert_eq!(count, 4);
        // Nothing put: nothing sent.
        let before = wire.len();
        drop(d.sealer.records(&mut wire));
        {
            let mut records = d.sealer.records(&mut wire);
            let _ = records.chunk_mut();
        }
        assert_eq!(wire.len(), before);
        // What `seal` makes of the same bytes follows on the same stream.
        let mut plain = Vec::new();
        frames[3].encode(&mut plain);
        d.sealer.seal(&plain, &mut wire);

        let mut opened = BytesMut::new();
        a.opener.open(&mut wire, &mut opened).unwrap();
        assert!(wire.is_empty());
        for f in &frames {
            let (decoded, used) = frame::decode(&opened, 1 << 20).unwrap().unwrap();
            assert_eq!(&decoded, f);
            opened.advance(used);
        }
        assert!(opened.is_empty());
    }

    #[test]
    fn a_record_shorter_than_its_tag_is_malformed() {
        let (_, mut a) = pair();
        let mut raw = BytesMut::from(&[0u8, 3, 1, 2, 3][..]);
        assert!(matches!(a.opener.open(&mut raw, &mut BytesMut::new()), Err(Error::Malformed { .. })));
    }
}
