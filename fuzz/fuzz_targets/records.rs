//! The record layer between two ends of a real handshake: frames of any sizes added the
//! way a connection's writer adds them (small ones gathered into the record where they
//! are encoded, large payloads sealed from their own buffers), the sealed bytes
//! delivered in arbitrary pieces, perhaps with one byte altered or bytes injected. What
//! opens is always a prefix of what was sealed, never anything else; untouched, all of
//! it opens and decodes to the frames sent, in order, under either wire version.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use wasmnode_proto::frame;
use wasmnode_proto::handshake::{Acceptor, Dialer, Identity, FLAG_CIPHER_CHOICE, FLAG_WIDE_AES};
use wasmnode_proto::seal::{Plain, Sealed, Session, BY_REFERENCE, MAX_RECORD_PLAIN};
use wasmnode_proto::Frame;

const COOKIE: &[u8] = b"the fuzzer's cookie, 32 bytes ok";
/// The most payload one case sends: enough for records of the largest size and more.
const TOTAL: usize = 2 * MAX_RECORD_PLAIN;

#[derive(Arbitrary, Debug)]
struct Case {
    /// Wire 3 (Noise's AES-GCM records) rather than 5 (AEGIS).
    v3: bool,
    /// AEGIS-128X4 rather than X2.
    x4: bool,
    /// Writes: each a batch of frames sealed together.
    writes: Vec<Vec<Piece>>,
    /// Where the bytes are cut as the reader receives them.
    cuts: Vec<u16>,
    /// One byte altered: its position (modulo the length) and what it is XORed with.
    flip: Option<(u32, u8)>,
    /// Bytes a relay injects, and where.
    inject: Option<(u32, Vec<u8>)>,
}

#[derive(Arbitrary, Debug)]
struct Piece {
    /// Payload length, up to a little past a record's most (so records split).
    len: u32,
    fill: u8,
}

fn session_pair(v3: bool, x4: bool) -> (Session, Session) {
    let flags = FLAG_CIPHER_CHOICE | if x4 { FLAG_WIDE_AES } else { 0 };
    let me = Identity { name: "a@127.0.0.1".into(), flags, creation: 1 };
    let you = Identity { name: "b@127.0.0.1".into(), flags, creation: 2 };
    let version = if v3 { 3 } else { wasmnode_proto::PROTOCOL_VERSION };
    let (dialer, hello) = Dialer::start_version(&me, &you.name, COOKIE, &[], version).unwrap();
    let (acceptor, challenge) = Acceptor::on_hello(&you, COOKIE, hello).unwrap();
    let (proven, proof) = dialer.on_challenge(challenge).unwrap();
    let (_, mut accepting) = acceptor.on_proof(proof).unwrap();
    let (_, dialing) = proven.on_accept(accepting.accept()).unwrap();
    (dialing, accepting)
}

fuzz_target!(|case: Case| {
    let (sending, mut receiving) = session_pair(case.v3, case.x4);
    let sealer = &sending.sealer;
    // What the writer does (host/node/src/dist/writer.rs, `add` and `seal`).
    let (mut plain, mut sealed, mut wire) = (Plain::default(), Sealed::default(), Vec::new());
    let (mut sent, mut expected) = (Vec::new(), Vec::new());
    for write in case.writes.iter().take(8) {
        for piece in write.iter().take(64) {
            let len = piece.len as usize % (MAX_RECORD_PLAIN + 4096);
            if expected.len() + len > TOTAL {
                continue;
            }
            let f = Frame::Send(Bytes::from(vec![piece.fill; len]));
            f.encode(&mut expected);
            if plain.is_empty() && f.payload_len() < BY_REFERENCE && sealer.gathers() {
                sealer.gather(&f, &mut sealed);
            } else {
                plain.push(&f);
            }
            sent.push(f);
        }
        sealer.seal_gathered(&mut sealed);
        sealer.seal_plain(&plain, &mut sealed);
        plain.clear();
        wire.extend_from_slice(sealed.bytes());
        sealed.advance(sealed.bytes().len());
    }
    let (mut flipped, mut injected) = (false, false);
    if let Some((at, xor)) = case.flip {
        if !wire.is_empty() && xor != 0 {
            let at = at as usize % wire.len();
            wire[at] ^= xor;
            flipped = true;
        }
    }
    if let Some((at, bytes)) = &case.inject {
        if !bytes.is_empty() {
            let at = *at as usize % (wire.len() + 1);
            wire.splice(at..at, bytes.iter().copied());
            injected = true;
        }
    }
    // The reader: bytes as they arrive, every whole record opened as it completes.
    let (mut raw, mut opened) = (BytesMut::new(), Vec::new());
    let mut cuts = case.cuts.iter().map(|c| 1 + *c as usize);
    let (mut at, mut failed) = (0, false);
    'reading: while at < wire.len() {
        let n = cuts.next().unwrap_or(usize::MAX).min(wire.len() - at);
        raw.extend_from_slice(&wire[at..at + n]);
        at += n;
        loop {
            let mut plain = BytesMut::new();
            match receiving.opener.open(&mut raw, &mut plain) {
                Ok(true) => opened.extend_from_slice(&plain),
                Ok(false) => break,
                Err(_) => {
                    failed = true;
                    break 'reading;
                }
            }
        }
    }
    assert!(expected.starts_with(&opened), "opened {} bytes that were not sealed as they are", opened.len());
    if flipped {
        assert!(failed || opened.len() < expected.len(), "an altered stream opened whole");
    }
    if flipped || injected {
        // Injected after the last record, the bytes sent all open; what follows never does.
        return;
    }
    assert!(!failed, "an untouched stream failed to open");
    assert_eq!(opened.len(), expected.len(), "every sealed byte opened");
    assert!(raw.is_empty(), "{} bytes left over", raw.len());
    // And the frames decode as they were sent.
    let mut rest = &opened[..];
    for f in &sent {
        let (got, used) = frame::decode(rest, usize::MAX).unwrap().expect("a whole frame");
        assert_eq!(&got, f);
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
});
