//! Property tests and a bounded fuzz harness over the frame decoder and the handshake
//! parser. Stable Rust has no libFuzzer here, so proptest drives the same targets a
//! cargo-fuzz run would: arbitrary bytes into every parser (which must answer, never
//! panic), and structured frames through encode → split anywhere → decode.
//! `PROPTEST_CASES=100000 cargo test -p wasmnode-proto --release --test fuzz` runs longer.

use bytes::Bytes;
use proptest::prelude::*;
use wasmnode_proto::frame::{self, Fragmenter, Reassembler, DEFAULT_MAX_FRAME, MAX_MESSAGE};
use wasmnode_proto::handshake::{Message, Refusal};
use wasmnode_proto::{Error, Frame, Service, TraceContext, PROTOCOL_VERSION};

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        Just(Frame::Heartbeat),
        Just(Frame::Leaving),
        prop::collection::vec("[a-z]{1,8}@[0-9.]{1,15}", 0..20).prop_map(Frame::Members),
        arb_bytes(300).prop_map(Frame::Send),
        (any::<u64>(), arb_bytes(64)).prop_map(|(id, payload)| Frame::Ping { id, payload }),
        (any::<u64>(), arb_bytes(64)).prop_map(|(id, payload)| Frame::Pong { id, payload }),
        (any::<u64>(), any::<bool>(), any::<Option<([u8; 16], [u8; 8], u8)>>(), arb_bytes(64)).prop_map(|(id, registry, trace, body)| {
            Frame::Request {
                id,
                service: if registry { Service::Registry } else { Service::Control },
                // Only valid contexts encode (a zero id is refused on decode).
                trace: trace
                    .map(|(trace_id, span_id, flags)| TraceContext { trace_id, span_id, flags })
                    .filter(|t| t.span_id != [0; 8] && t.trace_id != [0; 16]),
                body,
            }
        }),
        (any::<u64>(), arb_bytes(64)).prop_map(|(id, body)| Frame::Reply { id, body }),
        (any::<u32>(), any::<bool>(), arb_bytes(64)).prop_map(|(stream, last, chunk)| Frame::Fragment { stream, last, chunk }),
    ]
}

fn arb_handshake() -> impl Strategy<Value = Message> {
    let noise = prop::collection::vec(any::<u8>(), 0..200);
    prop_oneof![
        ("[a-z]{1,8}@[a-z0-9.]{1,20}", noise.clone()).prop_map(|(to, noise)| Message::Hello { version: PROTOCOL_VERSION, to, noise }),
        noise.clone().prop_map(Message::Challenge),
        noise.clone().prop_map(Message::Proof),
        noise.prop_map(Message::Accept),
        (any::<u8>(), "[ -~]{0,40}").prop_map(|(code, reason)| Message::Refuse { code: Refusal::from_code(code), reason }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// Fuzz target 1: arbitrary bytes into the frame decoder.
    #[test]
    fn frame_decoder_never_panics(data in prop::collection::vec(any::<u8>(), 0..512), max in 1usize..1024) {
        if let Ok(Some((_, used))) = frame::decode(&data, max) { prop_assert!(used <= data.len()) }
    }

    /// Fuzz target 2: arbitrary bytes into the handshake parser.
    #[test]
    fn handshake_parser_never_panics(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&data);
    }

    /// Fuzz target 3: arbitrary fragment streams into the reassembler.
    #[test]
    fn reassembler_never_panics(pieces in prop::collection::vec((0u32..4, any::<bool>(), arb_bytes(64)), 0..32)) {
        let mut r = Reassembler::new(256);
        for (stream, last, chunk) in pieces {
            let _ = r.push(stream, last, chunk);
            prop_assert!(r.held() <= 256, "{} bytes held past the budget", r.held());
        }
    }

    /// A stream of frames split at an arbitrary point decodes to the same frames.
    #[test]
    fn frames_survive_any_split(frames in prop::collection::vec(arb_frame(), 1..8), cut in any::<prop::sample::Index>()) {
        let mut wire = Vec::new();
        for f in &frames { f.encode(&mut wire); }
        let cut = cut.index(wire.len() + 1);
        let mut buf: Vec<u8> = wire[..cut].to_vec();
        let mut rest = &wire[cut..];
        let mut out = Vec::new();
        loop {
            while let Some((f, used)) = frame::decode(&buf, DEFAULT_MAX_FRAME).unwrap() {
                out.push(f);
                buf.drain(..used);
            }
            if rest.is_empty() { break; }
            buf.extend_from_slice(rest);
            rest = &[];
        }
        prop_assert_eq!(out, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn handshake_messages_roundtrip(m in arb_handshake()) {
        let mut wire = Vec::new();
        m.encode(&mut wire);
        let (back, used) = Message::decode(&wire).unwrap().unwrap();
        prop_assert_eq!(back, m);
        prop_assert_eq!(used, wire.len());
    }

    /// Any payload size fragments into pieces no larger than the limit and reassembles.
    #[test]
    fn fragmentation_roundtrips(len in 0usize..(3 * frame::FRAGMENT_SIZE), seed in any::<u8>()) {
        let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(seed)).collect();
        let f = Frame::Send(Bytes::from(payload));
        let mut r = Reassembler::new(MAX_MESSAGE);
        let mut got = None;
        for piece in Fragmenter::new(1, &f) {
            let mut wire = Vec::new();
            piece.encode(&mut wire);
            prop_assert!(wire.len() <= DEFAULT_MAX_FRAME);
            let Frame::Fragment { stream, last, chunk } = piece else { unreachable!() };
            got = r.push(stream, last, chunk).unwrap();
        }
        if len > 0 { prop_assert_eq!(got, Some(f)); }
    }

    /// A length prefix above the limit is refused from the prefix alone.
    #[test]
    fn oversized_prefix_refused(len in (DEFAULT_MAX_FRAME as u32 + 1)..u32::MAX) {
        let wire = len.to_be_bytes();
        prop_assert_eq!(frame::decode(&wire, DEFAULT_MAX_FRAME), Err(Error::FrameTooLarge { len: len as usize, max: DEFAULT_MAX_FRAME }));
    }
}
