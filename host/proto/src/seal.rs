//! Sealed records: every byte of a connection after its handshake.
//!
//! A record is a 4-byte big-endian length, then that many bytes of AEGIS-128X4 (or X2,
//! below) ciphertext with its 16-byte tag. This is Noise's transport phase with AEGIS-128
//! as its cipher function, and records longer than Noise's 65,535-byte messages (AEGIS
//! takes messages up to 2^61 bytes under one nonce): each direction has its own key from
//! the handshake's `Split()` (fresh per connection, derivable only by its two ends) and
//! counts its records from 0; the count is the nonce and never crosses the wire, so a
//! record altered, replayed, dropped, reordered or injected fails to open and the
//! connection ends. AEGIS-128X4 is the CFRG's AEGIS family (draft-irtf-cfrg-aegis-aead),
//! through the `aegis` crate's libaegis: an AES-round construction that seals several
//! times faster than AES-GCM on CPUs with AES instructions; the X4 variant runs four AES
//! lanes at once (AVX-512 VAES where the CPU has it, AVX2 or AES-NI otherwise); where
//! either end's CPU lacks 512-bit AES instructions the two ends agree on AEGIS-128X2,
//! which runs twice as fast there ([`Width`], chosen from the flags in the handshake's
//! identities). Frames ([`crate::frame`]) are the plaintext, as a byte stream: one record
//! may hold many frames, and a frame may span records. Each byte is read once, where it
//! lies, and written once, encrypted: a large payload is sealed from its own buffer
//! ([`Plain`]), and a record is opened in place, where it arrived, its frames then taken
//! from there without a copy. Small frames a writer batches are encoded straight into
//! the buffer it writes from and sealed there in one call ([`Sealer::gather`]). A record
//! of at most 16 KiB sealed from elsewhere (a round trip's, a request's of a few KiB) is
//! copied together and sealed in one call, which costs less than sealing it piece by
//! piece. A writer seals each batch of frames as one record (up to [`MAX_RECORD_PLAIN`]),
//! so a frame rarely spans two records; one that does is copied together. With a node
//! of wire version 3 (from before AEGIS, during a rolling update) the records are
//! Noise's own AES-256-GCM transport messages behind a 2-byte length, opened into a
//! separate buffer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aegis::aegis128x2::Aegis128X2;
use aegis::aegis128x4::{Aegis128X4, Key, Nonce};
use bytes::{Buf, Bytes, BytesMut};
use zeroize::Zeroize;

use crate::handshake::{FLAG_CIPHER_CHOICE, FLAG_WIDE_AES};
use crate::{Error, Frame};

/// Bytes before each record: its length.
pub const RECORD_HEADER: usize = 4;
/// The authentication tag at the end of each record.
pub const TAG_LEN: usize = 16;
/// The most plaintext one record holds: a writer's whole batch (256 KiB sealed ahead,
/// and the frame that passed that mark) fits in one. A receiver holds at most this much
/// of a record before it can open it.
pub const MAX_RECORD_PLAIN: usize = 512 * 1024;
/// The largest record sealed in one call, its plaintext first copied together where its
/// ciphertext goes; a larger one is sealed piece by piece from where its pieces lie.
/// Up to here the copy and the plaintext it is read from stay within a 32 KiB L1 data
/// cache, and copying costs less than the streaming encryptor's fixed cost and its
/// slower pass (on an Intel Xeon with AVX-512: 4 KiB sealed at 28 GB/s copied, 16
/// through the encryptor; 16 KiB at 40 against 35); beyond it, where the two no longer
/// fit, copying costs more (64 KiB: 24 against 41).
const ONE_CALL_MAX: usize = 16 * 1024;
/// Wire 3's records: a 2-byte length, and Noise's 65,535-byte message at most.
const RECORD_HEADER_V3: usize = 2;
const MAX_RECORD_PLAIN_V3: usize = 65_535 - TAG_LEN;

/// Which AEGIS-128 variant seals a connection's records. Both take the same key and
/// nonce and are as strong; they differ in how many AES lanes run at once. AEGIS-128X4
/// wants 512-bit vector registers: where the CPU has only 256-bit ones (AVX2 with VAES:
/// AMD Zen 2 and 3, Intel's client cores, many cloud VMs that hide AVX-512), its state
/// no longer fits in registers and AEGIS-128X2 seals twice as fast (on a Zen 3 VM,
/// 20–28 GB/s against 10–14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    X2,
    X4,
}

/// This node's cipher flags, for its handshake [`crate::handshake::Identity`]: that it
/// chooses the records' variant by [`Width::between`], and whether its CPU runs
/// AEGIS-128X4 at full speed (AVX-512 with VAES, as libaegis dispatches it).
pub fn cipher_flags() -> u32 {
    FLAG_CIPHER_CHOICE | if wide_aes() { FLAG_WIDE_AES } else { 0 }
}

fn wide_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("vaes")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Width {
    /// The variant for a connection between nodes with handshake flags `a` and `b`
    /// (either order): AEGIS-128X4 when both run it at full speed, or when either is from
    /// before the choice (it seals with AEGIS-128X4 only); AEGIS-128X2 otherwise.
    pub fn between(a: u32, b: u32) -> Width {
        let both = a & b;
        if both & FLAG_CIPHER_CHOICE == 0 || both & FLAG_WIDE_AES != 0 {
            Width::X4
        } else {
            Width::X2
        }
    }
}

/// A record being sealed, in either variant. One at a time, on the stack of the seal: a
/// box would cost an allocation per record.
#[allow(clippy::large_enum_variant)]
enum Encryptor {
    X2(aegis::aegis128x2::Encryptor<TAG_LEN>),
    X4(aegis::aegis128x4::Encryptor<TAG_LEN>),
}

impl Encryptor {
    fn new(width: Width, key: &Key, nonce: &Nonce) -> Encryptor {
        match width {
            Width::X2 => Encryptor::X2(Aegis128X2::<TAG_LEN>::new(key, nonce).encryptor(&[])),
            Width::X4 => Encryptor::X4(Aegis128X4::<TAG_LEN>::new(key, nonce).encryptor(&[])),
        }
    }

    fn update(&mut self, plain: &[u8], out: &mut [u8]) {
        match self {
            Encryptor::X2(e) => e.update(plain, out),
            Encryptor::X4(e) => e.update(plain, out),
        }
    }

    fn finalize(self) -> [u8; TAG_LEN] {
        match self {
            Encryptor::X2(e) => e.finalize(),
            Encryptor::X4(e) => e.finalize(),
        }
    }
}

/// Seals one record's plaintext in place in one call, returning its tag.
fn seal_in_place(width: Width, key: &Key, nonce: &Nonce, body: &mut [u8]) -> [u8; TAG_LEN] {
    match width {
        Width::X2 => Aegis128X2::<TAG_LEN>::new(key, nonce).encrypt_in_place(body, &[]),
        Width::X4 => Aegis128X4::<TAG_LEN>::new(key, nonce).encrypt_in_place(body, &[]),
    }
}

/// Opens one record's ciphertext in place, checking its tag.
fn open_in_place(width: Width, key: &Key, nonce: &Nonce, body: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), Error> {
    let opened = match width {
        Width::X2 => Aegis128X2::<TAG_LEN>::new(key, nonce).decrypt_in_place(body, tag, &[]),
        Width::X4 => Aegis128X4::<TAG_LEN>::new(key, nonce).decrypt_in_place(body, tag, &[]),
    };
    opened.map_err(|_| Error::Decrypt)
}

/// Record `n`'s nonce: the count, big-endian, in the nonce's last 8 bytes (as Noise
/// places it). A connection would need 2^64 records to run out.
fn nonce(n: u64) -> Nonce {
    assert!(n != u64::MAX, "a connection's records ran out of nonces");
    let mut nonce = Nonce::default();
    let at = nonce.len() - 8;
    nonce[at..].copy_from_slice(&n.to_be_bytes());
    nonce
}

/// Both directions of one connection's keys, from a finished handshake.
pub struct Session {
    pub sealer: Sealer,
    pub opener: Opener,
}

impl Session {
    /// The keys of a finished handshake of wire `version`: Noise's `Split()`, the
    /// initiator sending with the first. Version 3 (a node from before AEGIS, spoken
    /// with for rolling updates) seals with Noise's own AES-256-GCM transport; later
    /// versions with AEGIS-128 of the `width` the two sides' flags chose.
    pub(crate) fn new(mut hs: snow::HandshakeState, version: u16, width: Width) -> Result<Session, Error> {
        if !hs.is_handshake_finished() {
            return Err(Error::PeerMisbehaved("handshake not finished"));
        }
        if version == 3 {
            let keys = Arc::new(hs.into_stateless_transport_mode().map_err(|_| Error::PeerMisbehaved("handshake not finished"))?);
            let (send, recv) = (Keys::AesGcm(keys.clone()), Keys::AesGcm(keys));
            return Ok(Session { sealer: Sealer { keys: send, next: AtomicU64::new(0) }, opener: Opener { keys: recv, next: 0 } });
        }
        let (mut first, mut second) = hs.dangerously_get_raw_split();
        // AEGIS-128 takes 128-bit keys: the first half of each 256-bit key.
        let key = |k: &[u8; 32]| Keys::Aegis(k[..16].try_into().expect("16 of 32 bytes"), width);
        let (send, recv) = if hs.is_initiator() { (key(&first), key(&second)) } else { (key(&second), key(&first)) };
        first.zeroize();
        second.zeroize();
        Ok(Session { sealer: Sealer { keys: send, next: AtomicU64::new(0) }, opener: Opener { keys: recv, next: 0 } })
    }
}

/// One direction's key: AEGIS-128X2 or X4 (wire 5), or Noise's AES-256-GCM transport (wire 3).
enum Keys {
    Aegis(Key, Width),
    AesGcm(Arc<snow::StatelessTransportState>),
}

impl Keys {
    /// The records' framing under these keys: the length's bytes, and the most
    /// plaintext a record holds.
    fn framing(&self) -> (usize, usize) {
        match self {
            Keys::Aegis(..) => (RECORD_HEADER, MAX_RECORD_PLAIN),
            Keys::AesGcm(_) => (RECORD_HEADER_V3, MAX_RECORD_PLAIN_V3),
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        if let Keys::Aegis(key, _) = self {
            key.zeroize();
        }
    }
}

/// Seals what this side sends. Shared by a connection's writers: whoever writes next
/// seals next (the caller keeps records on the wire in the order they were sealed).
pub struct Sealer {
    keys: Keys,
    next: AtomicU64,
}

impl Sealer {
    /// Appends `plain` to `out` as sealed records, one per [`MAX_RECORD_PLAIN`] bytes.
    pub fn seal(&self, plain: &[u8], out: &mut BytesMut) {
        let at = out.len();
        out.resize(at + self.sealed_len(plain.len()), 0);
        self.seal_into(std::iter::once(plain), plain.len(), &mut out[at..]);
    }

    /// Appends `plain`'s frames to `out` as sealed records, reading each large payload
    /// from its own buffer. An empty `plain` adds nothing: no empty record, which would
    /// land in the middle of a record a sender began writing itself (the writer seals
    /// what it holds before the rest of such a record).
    pub fn seal_plain(&self, plain: &Plain, out: &mut Sealed) {
        if plain.is_empty() {
            return;
        }
        assert!(out.record.is_none(), "a gathered record is sealed before what follows it");
        let room = out.extend(self.sealed_len(plain.len()));
        self.seal_into(plain.pieces(), plain.len(), room);
    }

    /// Whether [`Sealer::gather`] can take frames: under AEGIS (wire 5), not wire 3.
    pub fn gathers(&self) -> bool {
        matches!(self.keys, Keys::Aegis(..))
    }

    /// Encodes `frame` at the end of `out`, into the record being gathered there (begun
    /// here if none is), to be sealed where it lies by [`Sealer::seal_gathered`]: a small
    /// frame is then written once, where its ciphertext goes, rather than encoded into a
    /// [`Plain`] and copied from there. A record that would pass [`MAX_RECORD_PLAIN`]
    /// with this frame is sealed first and the frame begins the next. Only where
    /// [`Sealer::gathers`].
    pub fn gather(&self, frame: &Frame, out: &mut Sealed) {
        assert!(self.gathers(), "gathering is AEGIS's");
        let len = crate::frame::HEADER_LEN + frame.body_len();
        if out.gathered() + len > MAX_RECORD_PLAIN {
            self.seal_gathered(out);
        }
        if out.record.is_none() {
            // Read after `extend`, which places an empty buffer's first record.
            out.extend(RECORD_HEADER);
            out.record = Some(out.end - RECORD_HEADER);
        }
        let mut room = out.extend(len);
        frame.encode(&mut room);
        assert!(room.is_empty(), "a frame encodes to its length");
    }

    /// Seals the record [`Sealer::gather`] began in `out`, where its frames lie, in one
    /// call; nothing if none is open.
    pub fn seal_gathered(&self, out: &mut Sealed) {
        if out.record.is_none() {
            return;
        }
        let Keys::Aegis(key, width) = &self.keys else { unreachable!("only AEGIS gathers") };
        let len = out.gathered();
        // Room for the tag first: where the buffer moves, the record moves with it.
        out.extend(TAG_LEN);
        let at = out.record.take().expect("a record is open");
        debug_assert_eq!(out.end - at, RECORD_HEADER + len + TAG_LEN);
        self.seal_record(key, *width, &mut out.buf[at..out.end]);
    }

    /// Seals one record in place, in one call: `record` is its length's bytes, its
    /// plaintext, and room for its tag.
    fn seal_record(&self, key: &Key, width: Width, record: &mut [u8]) {
        let (length, rest) = record.split_at_mut(RECORD_HEADER);
        let nonce = self.next_record(rest.len() - TAG_LEN, length);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        tag.copy_from_slice(&seal_in_place(width, key, &nonce, body));
    }

    /// Bytes on the wire for `len` bytes of plaintext: the records' lengths and tags added.
    pub fn sealed_len(&self, len: usize) -> usize {
        let (header, max) = self.keys.framing();
        len + len.div_ceil(max).max(1) * (header + TAG_LEN)
    }

    /// Seals `len` bytes given in pieces as one stream into `out`, which is exactly
    /// [`Sealer::sealed_len`]`(len)` long: records of up to [`MAX_RECORD_PLAIN`] bytes,
    /// whatever the pieces' bounds (an empty stream is one empty record).
    fn seal_into<'p>(&self, pieces: impl Iterator<Item = &'p [u8]>, len: usize, out: &mut [u8]) {
        assert_eq!(out.len(), self.sealed_len(len), "room for the records");
        let (key, width) = match &self.keys {
            Keys::Aegis(key, width) => (key, *width),
            Keys::AesGcm(keys) => return self.seal_v3(keys, &pieces.collect::<Vec<_>>().concat(), out),
        };
        if len <= ONE_CALL_MAX {
            // A small record (a round trip's, a request's of a few KiB, a short batch):
            // its pieces copied together where its ciphertext goes, and sealed there in
            // one call, as a record is opened. Through the streaming encryptor, most of a
            // tiny record's seal would be that encryptor's fixed cost: it wipes its state
            // when dropped, a byte at a time (832 bytes for X4); and up to 16 KiB its
            // pass runs slower than the copy and the one call together. The one call,
            // like an open, leaves its state on the stack unwiped; the key that state
            // derives from stays in this sealer for the connection's life either way.
            let mut at = RECORD_HEADER;
            for piece in pieces {
                out[at..at + piece.len()].copy_from_slice(piece);
                at += piece.len();
            }
            assert_eq!(at, RECORD_HEADER + len, "the pieces add up to the length given");
            self.seal_record(key, width, out);
            return;
        }
        let (mut at, mut left) = (0, len);
        // The record being sealed, and the plaintext it still takes.
        let mut open = None;
        for mut piece in pieces {
            while !piece.is_empty() {
                let (record, room) = open.get_or_insert_with(|| {
                    let n = left.min(MAX_RECORD_PLAIN);
                    at += RECORD_HEADER;
                    (self.begin(key, width, n, &mut out[at - RECORD_HEADER..at]), n)
                });
                let n = piece.len().min(*room);
                record.update(&piece[..n], &mut out[at..at + n]);
                (at, left, *room, piece) = (at + n, left - n, *room - n, &piece[n..]);
                if *room == 0 {
                    let (record, _) = open.take().expect("a record is open");
                    out[at..at + TAG_LEN].copy_from_slice(&record.finalize());
                    at += TAG_LEN;
                }
            }
        }
        assert!(left == 0 && open.is_none(), "the pieces add up to the length given");
    }

    /// Writes the length of a record of `n` plaintext bytes and starts sealing it.
    fn begin(&self, key: &Key, width: Width, n: usize, length: &mut [u8]) -> Encryptor {
        Encryptor::new(width, key, &self.next_record(n, length))
    }

    /// Writes the length of a record of `n` plaintext bytes and returns its nonce.
    fn next_record(&self, n: usize, length: &mut [u8]) -> Nonce {
        length.copy_from_slice(&((n + TAG_LEN) as u32).to_be_bytes());
        nonce(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Wire 3's records: Noise's transport messages, sealed from one contiguous plaintext.
    fn seal_v3(&self, keys: &snow::StatelessTransportState, plain: &[u8], out: &mut [u8]) {
        let mut at = 0;
        for chunk in plain.chunks(MAX_RECORD_PLAIN_V3).chain(plain.is_empty().then_some(&[][..])) {
            let end = at + RECORD_HEADER_V3 + chunk.len() + TAG_LEN;
            out[at..at + RECORD_HEADER_V3].copy_from_slice(&((chunk.len() + TAG_LEN) as u16).to_be_bytes());
            let nonce = self.next.fetch_add(1, Ordering::Relaxed);
            keys.write_message(nonce, chunk, &mut out[at + RECORD_HEADER_V3..end]).expect("a record within Noise's limit");
            at = end;
        }
    }

    /// The AEGIS variant this seals with (None under wire 3).
    #[cfg(test)]
    pub(crate) fn width(&self) -> Option<Width> {
        match self.keys {
            Keys::Aegis(_, width) => Some(width),
            Keys::AesGcm(_) => None,
        }
    }

    /// The wire version whose records this seals.
    #[cfg(test)]
    pub(crate) fn version(&self) -> u16 {
        match self.keys {
            Keys::Aegis(..) => 5,
            Keys::AesGcm(_) => 3,
        }
    }

    /// One record's ciphertext, without its length (the handshake's `Proof` and `Accept`).
    pub fn seal_vec(&self, plain: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        self.seal(plain, &mut out);
        out[self.keys.framing().0..].to_vec()
    }
}

/// A cache line: where [`Sealed`] puts a record's sealed bytes.
const ALIGN: usize = 64;

/// Sealed bytes waiting to be written. Its memory stays initialized from one batch to the
/// next, so records are sealed straight into it, with no zeroing first.
#[derive(Default)]
pub struct Sealed {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Where the record [`Sealer::gather`] is filling begins, until it is sealed.
    record: Option<usize>,
}

impl Sealed {
    /// What is still to be written. Not while a gathered record is open: its bytes are
    /// still plaintext.
    pub fn bytes(&self) -> &[u8] {
        assert!(self.record.is_none(), "a gathered record is sealed before it is written");
        &self.buf[self.start..self.end]
    }

    /// Plaintext bytes in the record being gathered (0 if none is open).
    pub fn gathered(&self) -> usize {
        self.record.map_or(0, |at| self.end - at - RECORD_HEADER)
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// `n` bytes were written.
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.end - self.start, "advanced past the end");
        self.start += n;
    }

    /// Appends bytes sealed already. Not while a gathered record is open.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        assert!(self.record.is_none(), "a gathered record is sealed before what follows it");
        self.extend(bytes.len()).copy_from_slice(bytes);
    }

    /// `n` more bytes at the end, to be filled (zeroed only where the buffer grows).
    /// Into an empty buffer they go where a record's first sealed byte, after its
    /// length, starts a cache line: the cipher then stores each 64-byte block of the
    /// record whole into one line (on an Intel Xeon with AVX-512, the bench's record
    /// layer sealed 16 % faster than with blocks straddling two lines). Where the
    /// buffer grows and moves (a record [`Sealer::gather`] fills grows a frame at a
    /// time), its bytes are moved back to where they were within a cache line.
    fn extend(&mut self, n: usize) -> &mut [u8] {
        if self.start == self.end {
            if self.buf.len() < n + ALIGN {
                self.buf.resize(n + ALIGN, 0);
            }
            let lead = (ALIGN - (self.buf.as_ptr() as usize + RECORD_HEADER) % ALIGN) % ALIGN;
            (self.start, self.end) = (lead, lead);
        }
        if self.buf.len() < self.end + n {
            let was = self.buf.as_ptr() as usize;
            self.buf.resize(self.end + n + ALIGN, 0);
            let shift = (was % ALIGN + ALIGN - self.buf.as_ptr() as usize % ALIGN) % ALIGN;
            if shift != 0 {
                self.buf.copy_within(self.start..self.end, self.start + shift);
                self.start += shift;
                self.end += shift;
                self.record = self.record.map(|at| at + shift);
            }
        }
        let (at, end) = (self.end, self.end + n);
        self.end = end;
        &mut self.buf[at..end]
    }
}

impl std::io::Write for Sealed {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens what the peer sent, in order.
pub struct Opener {
    keys: Keys,
    next: u64,
}

impl Opener {
    /// Opens the next whole record at the start of `raw`, consuming it, and adds its
    /// plaintext to `plain`; true if it opened one (call again once the frames are taken
    /// from `plain`), false if `raw` holds no whole record. A record is opened in place,
    /// where it arrived, and handed over without a copy when `plain` is empty (its frames
    /// then share `raw`'s memory). A record that does not open is [`Error::Decrypt`]: the
    /// connection must close. Wire 3's records are all opened at once, into `plain`.
    pub fn open(&mut self, raw: &mut BytesMut, plain: &mut BytesMut) -> Result<bool, Error> {
        let (key, width) = match &self.keys {
            Keys::Aegis(key, width) => (key, *width),
            Keys::AesGcm(_) => return self.open_v3(raw, plain),
        };
        let Some(len) = self.record_len(raw)? else { return Ok(false) };
        if raw.len() < RECORD_HEADER + len {
            return Ok(false);
        }
        let (body, tag) = raw[RECORD_HEADER..RECORD_HEADER + len].split_at_mut(len - TAG_LEN);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().expect("a tag's length");
        open_in_place(width, key, &nonce(self.next), body, tag)?;
        self.next += 1;
        raw.advance(RECORD_HEADER);
        let record = raw.split_to(len - TAG_LEN);
        raw.advance(TAG_LEN);
        // Without a copy when `plain` is empty; a frame that spans records is copied.
        plain.unsplit(record);
        Ok(true)
    }

    /// How many more bytes `raw` needs before the record at its start is whole (0 when
    /// that is not known yet, or it is whole): the room a read should make.
    pub fn missing(&self, raw: &[u8]) -> usize {
        match (&self.keys, self.record_len(raw)) {
            (Keys::Aegis(..), Ok(Some(len))) => (RECORD_HEADER + len).saturating_sub(raw.len()),
            _ => 0,
        }
    }

    /// The length after the header of the record at the start of `raw`, once its header
    /// has arrived.
    fn record_len(&self, raw: &[u8]) -> Result<Option<usize>, Error> {
        let Some(header) = raw.first_chunk::<RECORD_HEADER>() else { return Ok(None) };
        let len = u32::from_be_bytes(*header) as usize;
        if len < TAG_LEN {
            return Err(Error::Malformed { what: "record", why: "shorter than its tag" });
        }
        if len > MAX_RECORD_PLAIN + TAG_LEN {
            return Err(Error::Malformed { what: "record", why: "longer than the largest record" });
        }
        Ok(Some(len))
    }

    /// Opens every whole wire-3 record at the start of `raw` into `plain`.
    fn open_v3(&mut self, raw: &mut BytesMut, plain: &mut BytesMut) -> Result<bool, Error> {
        let mut opened = false;
        while raw.len() >= RECORD_HEADER_V3 {
            let len = u16::from_be_bytes([raw[0], raw[1]]) as usize;
            if len < TAG_LEN {
                return Err(Error::Malformed { what: "record", why: "shorter than its tag" });
            }
            if raw.len() < RECORD_HEADER_V3 + len {
                break;
            }
            let start = plain.len();
            plain.resize(start + len - TAG_LEN, 0);
            if self.open_into(&raw[RECORD_HEADER_V3..RECORD_HEADER_V3 + len], &mut plain[start..]).is_err() {
                plain.truncate(start);
                return Err(Error::Decrypt);
            }
            self.next += 1;
            raw.advance(RECORD_HEADER_V3 + len);
            opened = true;
        }
        Ok(opened)
    }

    /// Opens the next record's ciphertext and tag into `out` (as long as its plaintext).
    fn open_into(&self, sealed: &[u8], out: &mut [u8]) -> Result<(), Error> {
        let (key, width) = match &self.keys {
            Keys::Aegis(key, width) => (key, *width),
            Keys::AesGcm(keys) => return keys.read_message(self.next, sealed, out).map(drop).map_err(|_| Error::Decrypt),
        };
        let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        out.copy_from_slice(ciphertext);
        open_in_place(width, key, &nonce(self.next), out, tag.try_into().expect("a tag's length"))
    }

    /// Opens one record's ciphertext given without its length (see [`Sealer::seal_vec`]).
    pub fn open_vec(&mut self, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        if sealed.len() < TAG_LEN || sealed.len() > MAX_RECORD_PLAIN + TAG_LEN {
            return Err(Error::Decrypt);
        }
        let mut out = vec![0u8; sealed.len() - TAG_LEN];
        self.open_into(sealed, &mut out)?;
        self.next += 1;
        Ok(out)
    }
}

/// Payloads at least this large are sealed from their own buffer rather than copied
/// in with the frames around them.
pub const BY_REFERENCE: usize = 2048;

/// Frames waiting to be sealed: their small parts copied together, large payloads held
/// by reference, so that each byte is read once, when it is sealed.
#[derive(Default)]
pub struct Plain {
    bytes: BytesMut,
    /// Large payloads, each with where it goes: after `bytes[..at]`.
    big: Vec<(usize, Bytes)>,
    len: usize,
}

impl Plain {
    pub fn with_capacity(n: usize) -> Plain {
        Plain { bytes: BytesMut::with_capacity(n), big: Vec::new(), len: 0 }
    }

    /// Appends a frame, length prefix and all.
    pub fn push(&mut self, frame: &Frame) {
        let before = self.bytes.len();
        if frame.payload_len() >= BY_REFERENCE {
            if let Some(payload) = frame.encode_head(&mut self.bytes) {
                self.len += self.bytes.len() - before + payload.len();
                self.big.push((self.bytes.len(), payload));
                return;
            }
        }
        frame.encode(&mut self.bytes);
        self.len += self.bytes.len() - before;
    }

    /// Bytes in all.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.big.clear();
        self.len = 0;
    }

    /// The bytes in order, in pieces.
    pub fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = 0;
        let last = self.big.last().map_or(0, |(end, _)| *end);
        self.big
            .iter()
            .flat_map(move |(end, payload)| {
                let small = &self.bytes[at..*end];
                at = *end;
                [small, &payload[..]]
            })
            .chain(std::iter::once(&self.bytes[last..]))
            .filter(|piece| !piece.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{Acceptor, Dialer, Identity};
    use bytes::BufMut;

    fn pair() -> (Session, Session) {
        pair_with(0, 0)
    }

    /// The sessions of a handshake between identities with these flags: the dialer's,
    /// then the acceptor's.
    fn pair_with(mine: u32, yours: u32) -> (Session, Session) {
        let cookie = b"0123456789abcdef";
        let me = Identity { name: "a@h".into(), flags: mine, creation: 1 };
        let you = Identity { name: "b@h".into(), flags: yours, creation: 2 };
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
        // Three records: the largest record twice, and some.
        let big: Vec<u8> = (0..1_200_000u32).map(|i| i as u8).collect();
        let mut wire = BytesMut::new();
        d.sealer.seal(b"small", &mut wire);
        d.sealer.seal(&big, &mut wire);
        d.sealer.seal(b"", &mut wire);
        let mut raw = BytesMut::new();
        let mut plain = BytesMut::new();
        for piece in wire.chunks(7_777) {
            raw.extend_from_slice(piece);
            while a.opener.open(&mut raw, &mut plain).unwrap() {}
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
        assert_eq!(open(&mut a, &one), Ok(true));
        assert_eq!(open(&mut a, &two), Ok(true));
        // Altered: one flipped bit.
        let (mut a, mut one, _) = records();
        one[4] ^= 1;
        assert_eq!(open(&mut a, &one), Err(Error::Decrypt));
        // Reordered (or the first dropped): the second record first.
        let (mut a, _, two) = records();
        assert_eq!(open(&mut a, &two), Err(Error::Decrypt));
        // Replayed: the first record twice.
        let (mut a, one, _) = records();
        assert_eq!(open(&mut a, &one), Ok(true));
        assert_eq!(open(&mut a, &one), Err(Error::Decrypt));
        // From another connection: other keys.
        let (mut a, _, _) = records();
        let (_, other, _) = records();
        assert_eq!(open(&mut a, &other), Err(Error::Decrypt));
        // Injected: a record made without the keys.
        let (mut a, _, _) = records();
        let mut forged = BytesMut::new();
        forged.put_u32(3 + TAG_LEN as u32);
        forged.extend_from_slice(&[0u8; 3 + TAG_LEN]);
        assert_eq!(open(&mut a, &forged), Err(Error::Decrypt));
    }

    /// Frames gathered in a [`Plain`] (large payloads by reference, one crossing a record's
    /// end) come out as the same byte stream as the frames encoded one after another.
    #[test]
    fn gathered_frames_seal_as_the_stream_they_encode() {
        let (d, mut a) = pair();
        let frames = [
            Frame::Heartbeat,
            Frame::Send(Bytes::from(vec![1u8; 100])),
            Frame::Send(Bytes::from(vec![2u8; 60_000])),
            Frame::Send(Bytes::from(vec![3u8; 5])),
            Frame::Send(Bytes::from(vec![4u8; 9_000])),
            Frame::Send(Bytes::from(vec![5u8; 2_048])),
            Frame::Send(Bytes::from(vec![6u8; 600_000])),
            Frame::Heartbeat,
        ];
        let mut plain = Plain::default();
        let mut expected = BytesMut::new();
        for f in &frames {
            plain.push(f);
            f.encode(&mut expected);
        }
        assert_eq!(plain.big.len(), 4, "the four large payloads are held by reference");
        assert_eq!(plain.len(), expected.len());
        assert_eq!(plain.pieces().collect::<Vec<_>>().concat(), expected);
        // Twice into the same buffer, written out in between: the second batch's records
        // overwrite the first's bytes.
        let mut sealed = Sealed::default();
        for _ in 0..2 {
            d.sealer.seal_plain(&plain, &mut sealed);
            let mut wire = BytesMut::from(sealed.bytes());
            sealed.advance(wire.len());
            assert!(sealed.is_empty());
            let mut opened = BytesMut::new();
            let mut records = 0;
            while a.opener.open(&mut wire, &mut opened).unwrap() {
                records += 1;
            }
            assert_eq!(records, 2, "the largest record, then the rest");
            assert!(wire.is_empty());
            assert_eq!(opened, expected);
        }
    }

    /// Each record is one AEGIS-128X4 (or X2) message, under the direction's key with the
    /// record's count as its nonce and no associated data, however its plaintext was gathered.
    #[test]
    fn a_record_is_one_aegis_128_message_of_its_width() {
        for width in [Width::X4, Width::X2] {
            let key = [9u8; 16];
            let sealer = Sealer { keys: Keys::Aegis(key, width), next: AtomicU64::new(0) };
            let open = |n: u64, ciphertext: &[u8], tag: &[u8; TAG_LEN]| match width {
                Width::X4 => Aegis128X4::<TAG_LEN>::new(&key, &nonce(n)).decrypt(ciphertext, tag, &[]).unwrap(),
                Width::X2 => Aegis128X2::<TAG_LEN>::new(&key, &nonce(n)).decrypt(ciphertext, tag, &[]).unwrap(),
            };
            // Records sealed in one call (up to ONE_CALL_MAX bytes, the empty one too)
            // and piece by piece (a large payload read from its own buffer).
            let mut records = Vec::new();
            for plain in [&b"first"[..], &[], &[7u8; ONE_CALL_MAX], &[8u8; ONE_CALL_MAX + 1]] {
                let mut record = BytesMut::new();
                sealer.seal(plain, &mut record);
                records.push((record.to_vec(), plain.to_vec()));
            }
            // A 3,000-byte payload is held by reference and copied in for the one call;
            // one larger than ONE_CALL_MAX is sealed from its own buffer.
            for (size, heartbeats) in [(1_000, 2), (3_000, 1), (ONE_CALL_MAX + 1_000, 1)] {
                let mut plain = Plain::default();
                plain.push(&Frame::Send(Bytes::from(vec![6u8; size])));
                for _ in 0..heartbeats {
                    plain.push(&Frame::Heartbeat);
                }
                let mut record = Sealed::default();
                sealer.seal_plain(&plain, &mut record);
                records.push((record.bytes().to_vec(), plain.pieces().collect::<Vec<_>>().concat()));
            }
            for (n, (record, expected)) in records.iter().enumerate() {
                let len = u32::from_be_bytes(record[..4].try_into().unwrap()) as usize;
                assert_eq!(len + RECORD_HEADER, record.len(), "{width:?}");
                let (ciphertext, tag) = record[RECORD_HEADER..].split_at(len - TAG_LEN);
                assert_eq!(&open(n as u64, ciphertext, tag.try_into().unwrap()), expected, "{width:?}, record {n}");
            }
        }
    }

    /// Two nodes that both choose take AEGIS-128X2 unless both CPUs run X4 at full
    /// speed; a node from before the choice (no flag) gets X4, as it always did.
    #[test]
    fn the_variant_is_x2_unless_both_run_x4_at_full_speed_or_one_predates_the_choice() {
        let (choose, wide, hidden) = (FLAG_CIPHER_CHOICE, FLAG_WIDE_AES, crate::handshake::FLAG_HIDDEN);
        for (a, b, width) in [
            (choose, choose, Width::X2),
            (choose | wide, choose, Width::X2),
            (choose | wide, choose | wide | hidden, Width::X4),
            (0, choose, Width::X4),
            (wide, choose | wide, Width::X4),
            (hidden, hidden, Width::X4),
        ] {
            assert_eq!(Width::between(a, b), width, "{a:#b} and {b:#b}");
            assert_eq!(Width::between(b, a), width, "{b:#b} and {a:#b}");
        }
    }

    /// The handshake gives both ends the same variant from the flags of both identities,
    /// and records of one variant do not open as the other's.
    #[test]
    fn both_ends_of_a_handshake_seal_with_the_variant_their_flags_chose() {
        let wide = FLAG_CIPHER_CHOICE | FLAG_WIDE_AES;
        for (mine, yours, width) in [(FLAG_CIPHER_CHOICE, wide, Width::X2), (wide, wide, Width::X4), (FLAG_CIPHER_CHOICE, 0, Width::X4)] {
            let (mut d, mut a) = pair_with(mine, yours);
            assert_eq!((d.sealer.width(), a.sealer.width()), (Some(width), Some(width)), "{mine:#b} and {yours:#b}");
            let mut wire = BytesMut::new();
            d.sealer.seal(b"to the acceptor", &mut wire);
            let mut plain = BytesMut::new();
            assert!(a.opener.open(&mut wire, &mut plain).unwrap());
            assert_eq!(&plain[..], b"to the acceptor");
            a.sealer.seal(b"to the dialer", &mut wire);
            let mut plain = BytesMut::new();
            assert!(d.opener.open(&mut wire, &mut plain).unwrap());
            assert_eq!(&plain[..], b"to the dialer");
        }
        let key = [3u8; 16];
        let sealer = Sealer { keys: Keys::Aegis(key, Width::X2), next: AtomicU64::new(0) };
        let mut opener = Opener { keys: Keys::Aegis(key, Width::X4), next: 0 };
        let mut wire = BytesMut::new();
        sealer.seal(b"x2", &mut wire);
        assert_eq!(opener.open(&mut wire, &mut BytesMut::new()), Err(Error::Decrypt));
    }

    #[test]
    fn a_record_shorter_than_its_tag_is_malformed() {
        let (_, mut a) = pair();
        let mut raw = BytesMut::from(&[0u8, 0, 0, 3, 1, 2, 3][..]);
        assert!(matches!(a.opener.open(&mut raw, &mut BytesMut::new()), Err(Error::Malformed { .. })));
    }

    /// A record announced longer than the largest is refused from its header alone,
    /// before its bytes are waited for: a peer cannot make the reader hold more.
    #[test]
    fn a_record_longer_than_the_largest_is_refused_from_its_header() {
        let (_, mut a) = pair();
        let mut raw = BytesMut::new();
        raw.put_u32((MAX_RECORD_PLAIN + TAG_LEN + 1) as u32);
        assert_eq!(a.opener.open(&mut raw, &mut BytesMut::new()), Err(Error::Malformed { what: "record", why: "longer than the largest record" }));
        // The largest itself is waited for, and the reader is told how much to make room for.
        let mut raw = BytesMut::new();
        raw.put_u32((MAX_RECORD_PLAIN + TAG_LEN) as u32);
        assert_eq!(a.opener.open(&mut raw, &mut BytesMut::new()), Ok(false));
        assert_eq!(a.opener.missing(&raw), MAX_RECORD_PLAIN + TAG_LEN);
    }

    /// A batch sealed into an empty [`Sealed`] puts its record's ciphertext at the start
    /// of a cache line, however the buffer grew; one sealed behind bytes still unwritten
    /// follows them, and every record opens.
    #[test]
    fn a_batch_is_sealed_from_a_cache_line() {
        let (d, mut a) = pair();
        let mut sealed = Sealed::default();
        let mut wire = BytesMut::new();
        for size in [5usize, 70_000, 300, 120_000, 2_048] {
            let mut plain = Plain::default();
            plain.push(&Frame::Send(Bytes::from(vec![size as u8; size])));
            d.sealer.seal_plain(&plain, &mut sealed);
            assert_eq!((sealed.bytes().as_ptr() as usize + RECORD_HEADER) % ALIGN, 0, "a {size}-byte batch");
            // Written in two parts: the second batch is sealed behind the first's rest.
            let half = sealed.bytes().len() / 2;
            wire.extend_from_slice(&sealed.bytes()[..half]);
            sealed.advance(half);
            d.sealer.seal_plain(&plain, &mut sealed);
            wire.extend_from_slice(sealed.bytes());
            sealed.advance(sealed.bytes().len());
            assert!(sealed.is_empty());
        }
        let mut plain = BytesMut::new();
        while a.opener.open(&mut wire, &mut plain).unwrap() {}
        assert!(wire.is_empty());
        let mut frames = Vec::new();
        while let Some((frame, used)) = crate::frame::decode(&plain, crate::frame::DEFAULT_MAX_FRAME).unwrap() {
            frames.push(frame.payload_len());
            plain.advance(used);
        }
        assert!(plain.is_empty());
        assert_eq!(frames, [5, 5, 70_000, 70_000, 300, 300, 120_000, 120_000, 2_048, 2_048]);
        d.sealer.seal_plain(&Plain::default(), &mut sealed);
        assert!(sealed.is_empty(), "nothing to seal adds nothing");
    }

    /// Small frames encoded straight into [`Sealed`] and sealed there open as the frames
    /// they were, in order with records sealed before and after them; a record that
    /// would pass [`MAX_RECORD_PLAIN`] is sealed first, the frame beginning the next.
    #[test]
    fn gathered_frames_are_sealed_in_place_before_what_follows_them() {
        let (d, mut a) = pair();
        assert!(d.sealer.gathers());
        let send = |size: usize| Frame::Send(Bytes::from(vec![size as u8; size]));
        let mut sealed = Sealed::default();
        let mut wire = BytesMut::new();
        let mut sent = Vec::new();
        for size in [0usize, 16, 1_000] {
            d.sealer.gather(&send(size), &mut sealed);
            sent.push(size);
        }
        assert_eq!(sealed.gathered(), 3 * 5 + 16 + 1_000);
        d.sealer.seal_gathered(&mut sealed);
        assert_eq!(sealed.gathered(), 0);
        assert_eq!(sealed.bytes().len(), d.sealer.sealed_len(3 * 5 + 16 + 1_000));
        assert_eq!((sealed.bytes().as_ptr() as usize + RECORD_HEADER) % ALIGN, 0, "the first record's body starts a cache line");
        let mut plain = Plain::default();
        plain.push(&send(70_000));
        d.sealer.seal_plain(&plain, &mut sealed);
        sent.push(70_000);
        // Written in part: what is gathered next follows the rest.
        let half = sealed.bytes().len() / 2;
        wire.extend_from_slice(&sealed.bytes()[..half]);
        sealed.advance(half);
        let before = sealed.bytes().len();
        // 600 frames of 1,000 bytes pass one record's cap: two records.
        for _ in 0..600 {
            d.sealer.gather(&send(1_000), &mut sealed);
            assert!(sealed.gathered() <= MAX_RECORD_PLAIN);
            sent.push(1_000);
        }
        d.sealer.seal_gathered(&mut sealed);
        d.sealer.seal_gathered(&mut sealed);
        assert_eq!(sealed.bytes().len() - before, 600 * 1_005 + 2 * (RECORD_HEADER + TAG_LEN), "two records, and nothing more for a second seal");
        wire.extend_from_slice(sealed.bytes());
        sealed.advance(sealed.bytes().len());
        assert_eq!(open_sends(&mut a, wire), sent);
    }

    /// Opens every record in `wire` and returns the lengths of the `Send` frames they
    /// hold, each payload checked to be its length's byte repeated.
    fn open_sends(a: &mut Session, mut wire: BytesMut) -> Vec<usize> {
        let mut opened = BytesMut::new();
        while a.opener.open(&mut wire, &mut opened).unwrap() {}
        assert!(wire.is_empty(), "every record whole and opened");
        let mut sizes = Vec::new();
        while let Some((frame, used)) = crate::frame::decode(&opened, crate::frame::DEFAULT_MAX_FRAME).unwrap() {
            let Frame::Send(p) = &frame else { panic!("a send frame") };
            assert!(p.iter().all(|&b| b == p.len() as u8), "a {}-byte payload intact", p.len());
            sizes.push(p.len());
            opened.advance(used);
        }
        assert!(opened.is_empty(), "no frame cut short");
        sizes
    }

    /// A record gathered into a fresh buffer, which grows (and may move) with each frame
    /// and again for the tag, opens intact whatever its size.
    #[test]
    fn a_gathered_record_opens_wherever_its_buffer_grew() {
        let (d, mut a) = pair();
        let mut wire = BytesMut::new();
        let mut sent = Vec::new();
        for size in 0..600usize {
            let mut sealed = Sealed::default();
            for _ in 0..1 + size % 3 {
                d.sealer.gather(&Frame::Send(Bytes::from(vec![size as u8; size])), &mut sealed);
                sent.push(size);
            }
            d.sealer.seal_gathered(&mut sealed);
            wire.extend_from_slice(sealed.bytes());
        }
        assert_eq!(open_sends(&mut a, wire), sent);
    }

    /// A gathered record's bytes are plaintext until it is sealed: they cannot be taken
    /// to be written.
    #[test]
    #[should_panic(expected = "a gathered record is sealed before it is written")]
    fn an_open_gathered_record_is_not_written() {
        let (d, _) = pair();
        let mut sealed = Sealed::default();
        d.sealer.gather(&Frame::Heartbeat, &mut sealed);
        let _ = sealed.bytes();
    }

    /// A record is opened where it arrived: its plaintext is handed over in `raw`'s own
    /// memory, not copied; a second record joins the first's frames by a copy.
    #[test]
    fn a_record_is_opened_in_place() {
        let (d, mut a) = pair();
        let mut raw = BytesMut::new();
        d.sealer.seal(&[1u8; 40_000], &mut raw);
        d.sealer.seal(&[2u8; 3], &mut raw);
        let at = raw.as_ptr();
        let mut plain = BytesMut::new();
        assert_eq!(a.opener.open(&mut raw, &mut plain), Ok(true));
        assert_eq!(plain.as_ptr(), at.wrapping_add(RECORD_HEADER), "the plaintext is where the ciphertext was");
        assert_eq!(&plain[..], &[1u8; 40_000][..]);
        assert_eq!(a.opener.open(&mut raw, &mut plain), Ok(true));
        assert_eq!(plain.len(), 40_003);
        assert_eq!(&plain[40_000..], &[2u8; 3]);
        assert_eq!(a.opener.open(&mut raw, &mut plain), Ok(false));
        assert!(raw.is_empty());
    }
}
