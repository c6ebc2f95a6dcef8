//! What a peer sends after the handshake, once opened: arbitrary bytes into the frame
//! decoder, at an arbitrary frame limit, and every fragment it yields into a
//! reassembler with a budget. Nothing may panic, a decoded frame re-encodes to one that
//! decodes the same, and the reassembler never holds more than its budget.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmnode_proto::frame::{self, Reassembler};
use wasmnode_proto::Frame;

const BUDGET: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((limit, mut buf)) = data.split_first_chunk::<2>() else { return };
    let max = 1 + u16::from_be_bytes(*limit) as usize * 4;
    let mut reassembler = Reassembler::new(BUDGET);
    loop {
        match frame::decode(buf, max) {
            Ok(Some((f, used))) => {
                assert!(used > 0 && used <= buf.len(), "a frame used {used} of {} bytes", buf.len());
                assert!(used <= max + frame::HEADER_LEN, "a frame of {used} bytes passed the limit of {max}");
                let mut again = Vec::new();
                f.encode(&mut again);
                let back = frame::decode(&again, usize::MAX).expect("a decoded frame re-encodes to a valid one");
                assert_eq!(back, Some((f.clone(), again.len())), "a decoded frame re-encodes to itself");
                if let Frame::Fragment { stream, last, chunk } = f {
                    if reassembler.push(stream, last, chunk).is_err() {
                        // A connection closes on the first error; start another.
                        reassembler = Reassembler::new(BUDGET);
                    }
                    assert!(reassembler.held() <= BUDGET, "{} bytes held past a budget of {BUDGET}", reassembler.held());
                }
                buf = &buf[used..];
            }
            Ok(None) => {
                assert!(buf.len() < max + frame::HEADER_LEN, "{} bytes and still no whole frame", buf.len());
                return;
            }
            Err(_) => return,
        }
    }
});
