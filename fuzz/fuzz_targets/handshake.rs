//! What a stranger can send before it holds the keys: arbitrary bytes as each
//! handshake message, to the side that expects it. Every parser must answer (never
//! panic), and nothing a party without the cookie sends may get a handshake further:
//! a `Hello`, `Challenge`, `Proof` or `Accept` made of arbitrary bytes is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmnode_proto::handshake::{Acceptor, Dialer, Identity, Message, MAX_HANDSHAKE_FRAME};
use wasmnode_proto::seal::cipher_flags;

const COOKIE: &[u8] = b"the fuzzer's cookie, 32 bytes ok";

fn me() -> Identity {
    Identity { name: "dialer@127.0.0.1".into(), flags: cipher_flags(), creation: 1 }
}

fn you() -> Identity {
    Identity { name: "acceptor@127.0.0.1".into(), flags: cipher_flags(), creation: 2 }
}

fuzz_target!(|data: &[u8]| {
    let Some((&stage, rest)) = data.split_first() else { return };
    match stage % 5 {
        // Bytes as they arrive on an accepted socket: a message, then the acceptor.
        0 => match Message::decode(rest) {
            Ok(Some((msg, used))) => {
                assert!(used <= rest.len() && used <= MAX_HANDSHAKE_FRAME + 4, "decoded past its frame");
                // Re-encoding what was decoded gives a message that decodes the same.
                let mut again = Vec::new();
                msg.encode(&mut again);
                let back = Message::decode(&again).expect("a decoded message re-encodes to a valid one");
                assert_eq!(back, Some((msg.clone(), again.len())), "a decoded message re-encodes to itself");
                assert!(Acceptor::on_hello(&you(), COOKIE, msg).is_err(), "a hello made without the cookie was taken");
            }
            Ok(None) => assert!(rest.len() < MAX_HANDSHAKE_FRAME + 4, "a whole frame's worth still needed more"),
            Err(_) => {}
        },
        // A hello whose Noise part is arbitrary, to the node it names.
        1 => {
            let hello = Message::Hello { version: wasmnode_proto::PROTOCOL_VERSION, to: you().name, noise: rest.to_vec() };
            assert!(Acceptor::on_hello(&you(), COOKIE, hello).is_err(), "a hello made without the cookie was taken");
        }
        // A challenge to a dialer that sent a real hello.
        2 => {
            let (dialer, _) = Dialer::start(&me(), &you().name, COOKIE).unwrap();
            assert!(dialer.on_challenge(Message::Challenge(rest.to_vec())).is_err(), "a challenge made without the keys was taken");
        }
        // A proof to an acceptor that took a real hello.
        3 => {
            let (_, hello) = Dialer::start(&me(), &you().name, COOKIE).unwrap();
            let (acceptor, _) = Acceptor::on_hello(&you(), COOKIE, hello).unwrap();
            assert!(acceptor.on_proof(Message::Proof(rest.to_vec())).is_err(), "a proof made without the keys was taken");
        }
        // An accept to a dialer whose proof went out.
        _ => {
            let (dialer, hello) = Dialer::start(&me(), &you().name, COOKIE).unwrap();
            let (_, challenge) = Acceptor::on_hello(&you(), COOKIE, hello).unwrap();
            let (proven, _) = dialer.on_challenge(challenge).unwrap();
            assert!(proven.on_accept(Message::Accept(rest.to_vec())).is_err(), "an accept made without the keys was taken");
        }
    }
});
