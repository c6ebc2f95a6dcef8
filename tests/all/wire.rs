//! The wire seen from outside: a raw client speaks the protocol (through
//! `wasmnode-proto`, no node code) to a real node process, to capture bytes and to
//! send what a well-behaved node never would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use wasmnode_proto::frame::{self, DEFAULT_MAX_FRAME};
use wasmnode_proto::handshake::{Dialer, Identity, Message, Refusal, FLAG_HIDDEN};
use wasmnode_proto::seal::Session;
use wasmnode_proto::{Error, Frame};
use wasmnode_testkit::*;

const FORM: Duration = Duration::from_secs(10);

/// A hand-driven connection to a node that records every byte both ways.
struct Raw {
    /// The node's name (`x@ip`, on the default port).
    to: String,
    stream: TcpStream,
    buf: Vec<u8>,
    capture: Vec<u8>,
    /// The connection's keys, once the handshake is done.
    session: Option<Session>,
    /// Frames' bytes opened from the node's records and not yet read.
    plain: BytesMut,
}

impl Raw {
    fn connect(to: &str) -> Raw {
        let addr = format!("{}:4370", to.split('@').nth(1).unwrap());
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw { to: to.into(), stream, buf: Vec::new(), capture: Vec::new(), session: None, plain: BytesMut::new() }
    }

    /// Sends `plain` as the frames' bytes, sealed with the connection's keys.
    fn send_sealed(&mut self, plain: &[u8]) {
        let mut out = BytesMut::new();
        self.session.as_ref().expect("a handshake first").sealer.seal(plain, &mut out);
        self.send(&out);
    }

    fn send(&mut self, bytes: &[u8]) {
        self.capture.extend_from_slice(bytes);
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends `frame` sealed, uncaptured; the error when the write fails (a peer that
    /// closed, or a write that timed out).
    fn try_send_frame(&mut self, frame: &Frame) -> std::io::Result<()> {
        let mut plain = BytesMut::new();
        frame.encode(&mut plain);
        let mut sealed = BytesMut::new();
        self.session.as_ref().expect("a handshake first").sealer.seal(&plain, &mut sealed);
        self.stream.write_all(&sealed)
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        self.capture.extend_from_slice(&chunk[..n]);
        n
    }

    fn message(&mut self) -> Message {
        loop {
            if let Some((m, used)) = Message::decode(&self.buf).unwrap() {
                self.buf.drain(..used);
                return m;
            }
            assert!(self.fill() > 0, "connection closed during the handshake");
        }
    }

    /// The next frame the node sent, opened from its sealed records.
    fn frame(&mut self) -> Option<Frame> {
        loop {
            let mut raw = BytesMut::from(&self.buf[..]);
            while self.session.as_mut().expect("a handshake first").opener.open(&mut raw, &mut self.plain).expect("records open") {}
            self.buf = raw.to_vec();
            if let Some((f, used)) = frame::decode(&self.plain, DEFAULT_MAX_FRAME).unwrap() {
                let _ = self.plain.split_to(used);
                return Some(f);
            }
            if self.fill() == 0 {
                return None;
            }
        }
    }

    /// Runs the dialer's side of the handshake, as `name`, to the node connected to.
    fn handshake(&mut self, name: &str, flags: u32, cookie: &[u8]) -> Result<Identity, Error> {
        let to = self.to.clone();
        let (d, hello) = Dialer::start(&Identity { name: name.into(), flags, creation: 1 }, &to, cookie)?;
        let mut out = Vec::new();
        hello.encode(&mut out);
        self.send(&out);
        let challenge = self.message();
        let (d, proof) = d.on_challenge(challenge)?;
        out.clear();
        proof.encode(&mut out);
        self.send(&out);
        let answer = self.message();
        let (peer, session) = d.on_accept(answer)?;
        self.session = Some(session);
        Ok(peer)
    }

    /// Reads until the node closes the connection; true when it did within the read timeout.
    fn closed_by_peer(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// The cookie never crosses the wire: every byte of a real handshake and the frames
/// after it, both ways, captured and searched.
#[test]
fn the_cookie_never_crosses_the_wire() {
    let (_dir, _a) = lone_node("wire-cookie", "a@127.0.15.1");
    let mut raw = Raw::connect("a@127.0.15.1");
    let peer = raw.handshake("raw@127.0.15.9", 0, COOKIE.as_bytes()).expect("handshake with the right cookie");
    assert_eq!(peer.name, "a@127.0.15.1");
    // The node sends its member list to a new visible peer; it includes us.
    let members = loop {
        match raw.frame().expect("a frame") {
            Frame::Members(m) => break m,
            _ => continue,
        }
    };
    assert!(members.contains(&"raw@127.0.15.9".to_string()), "{members:?}");
    assert!(raw.capture.windows(12).any(|w| w == b"a@127.0.15.1"), "the capture holds the handshake");
    assert!(!raw.capture.windows(COOKIE.len()).any(|w| w == COOKIE.as_bytes()), "the cookie appeared on the wire");
    // Everything but the name dialled is sealed: the dialer's own name, which the
    // node's member list carries too, never appears in the clear.
    assert!(!raw.capture.windows(14).any(|w| w == b"raw@127.0.15.9"), "a name crossed the wire in the clear");
}

/// One node alone, listening (its folder lives as long as the returned `TempDir`).
fn lone_node(tag: &str, name: &str) -> (TempDir, Node) {
    let dir = TempDir::new(tag);
    let config = dir.write("t.toml", &static_topology(&[name], 5000));
    let a = Node::start(name, &config);
    a.wait_log("listening on", FORM);
    (dir, a)
}

/// A wrong cookie is refused with a log line naming the dialer's address.
#[test]
fn a_wrong_cookie_is_refused_and_logged_with_the_address() {
    let (_dir, a) = lone_node("wire-wrong", "a@127.0.19.1");
    let mut raw = Raw::connect("a@127.0.19.1");
    let port = raw.stream.local_addr().unwrap().port();
    assert_eq!(raw.handshake("raw@127.0.19.9", 0, b"not-the-cookie"), Err(Error::Refused { code: Refusal::CookieMismatch, reason: "cookie mismatch".into() }));
    a.wait_log(&format!("handshake refused from 127.0.0.1:{port}: cookie mismatch"), FORM);
    assert_eq!(a.count("connected to raw@"), 0);
}

/// A loop of wrong-cookie handshakes from one address is refused every time and logged
/// once per window, not once per attempt.
#[test]
fn a_loop_of_wrong_cookies_is_logged_once() {
    let (_dir, a) = lone_node("wire-loop", "a@127.0.29.1");
    for i in 0..50 {
        let mut raw = Raw::connect("a@127.0.29.1");
        let refused = raw.handshake(&format!("raw{i}@127.0.29.9"), 0, b"not-the-cookie");
        assert_eq!(refused, Err(Error::Refused { code: Refusal::CookieMismatch, reason: "cookie mismatch".into() }), "attempt {i}");
    }
    a.wait_log("handshake refused from 127.0.0.1", FORM);
    assert_eq!(a.count("handshake refused from"), 1, "{}", a.log());
    assert_eq!(a.count("connected to raw"), 0);
}

/// A claimed name with a newline and a log line after it is refused before anything
/// logs it: the node's log holds no line of the dialer's making.
#[test]
fn a_claimed_name_cannot_forge_log_lines() {
    let (_dir, a) = lone_node("wire-forge", "a@127.0.28.1");
    let forged = "x@127.0.28.9\n2026-11-30T00:00:00.000000Z  INFO connected to forged@127.0.28.9";
    let (_, hello) = Dialer::start(&Identity { name: forged.into(), flags: 0, creation: 1 }, "a@127.0.28.1", COOKIE.as_bytes()).unwrap();
    let mut out = Vec::new();
    hello.encode(&mut out);
    let mut raw = Raw::connect("a@127.0.28.1");
    raw.send(&out);
    assert!(raw.closed_by_peer(), "the node must close the connection");
    a.wait_log("node name has a character that is not printable ASCII", FORM);
    assert!(!a.log().contains("forged@"), "{}", a.log());
    assert_eq!(a.members(), vec!["a@127.0.28.1".to_string()]);
}

/// Garbage, oversized and malformed frames each close that one connection with a
/// logged reason; the node keeps its other peers.
#[test]
fn bad_frames_close_only_their_connection() {
    let dir = TempDir::new("wire-bad");
    let names = ["a@127.0.16.1", "b@127.0.16.2"];
    let config = dir.write("t.toml", &static_topology(&names, 5000));
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    wait_mesh(&[&a, &b], &names, FORM);

    // Sealed with the connection's keys (a peer with the cookie sending garbage), and
    // last, bytes that are not a sealed record at all (injected on the path).
    let cases: [(&str, Vec<u8>, bool, &str); 6] = [
        ("garbage", vec![0, 0, 0, 1, 0xee], true, "unknown frame tag 0xee"),
        ("oversized", (1u32 << 30).to_be_bytes().to_vec(), true, "exceeds the maximum"),
        ("malformed", vec![0, 0, 0, 4, 0x02, 0, 9, 0], true, "malformed members frame"),
        ("unknown service", vec![0, 0, 0, 10, 0x07, 0, 0, 0, 0, 0, 0, 0, 1, 0x99], true, "malformed request frame: unknown service"),
        ("injected", [&[0u8, 0, 0, 21][..], &[0, 0, 0, 1, 0x01], &[0; 16]].concat(), false, "failed authentication"),
        ("a frame in the clear", vec![0, 0, 0, 1, 0x01], false, "malformed record"),
    ];
    for (i, (what, bytes, sealed, reason)) in cases.iter().enumerate() {
        let me = format!("raw{i}@127.0.16.9");
        let mut raw = Raw::connect(names[0]);
        raw.handshake(&me, FLAG_HIDDEN, COOKIE.as_bytes()).expect("handshake");
        if *sealed {
            raw.send_sealed(bytes);
        } else {
            raw.send(bytes);
        }
        assert!(raw.closed_by_peer(), "{what}: the node must close the connection");
        a.wait_log(&format!("closing connection to {me}"), FORM);
        assert!(a.log().lines().any(|l| l.contains(&format!("closing connection to {me}")) && l.contains(reason)), "{what}: {}", a.log());
    }
    assert_eq!(a.members(), vec![names[0].to_string(), names[1].to_string()]);
    assert_eq!(a.count("node down b@"), 0);
}

/// A relay that a node dials by mistake (a stale address, a reused pod IP) and that
/// forwards the dial to another member gets nothing: the member refuses a handshake
/// meant for another name, so the relay neither joins nor keeps a connection.
#[test]
fn a_relay_forwarding_a_dial_to_another_member_is_refused() {
    let dir = TempDir::new("wire-relay");
    let names = ["a@127.0.17.1", "b@127.0.17.2"];
    // `a` also looks for c@127.0.17.3, where the relay listens.
    let config = dir.write("t.toml", &static_topology(&[names[0], names[1], "c@127.0.17.3"], 5000));
    let relay = std::net::TcpListener::bind("127.0.17.3:4370").unwrap();
    let relayed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = relayed.clone();
    std::thread::spawn(move || {
        for inbound in relay.incoming().flatten() {
            let Ok(outbound) = TcpStream::connect("127.0.17.2:4370") else { continue };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            for (mut from, mut to) in [(inbound.try_clone().unwrap(), outbound.try_clone().unwrap()), (outbound, inbound)] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    wait_mesh(&[&a, &b], &names, FORM);
    b.wait_log("dialled c@127.0.17.3 but b@127.0.17.2 answered", FORM);
    assert!(relayed.load(std::sync::atomic::Ordering::SeqCst) > 0, "the relay forwarded a dial");
    assert_eq!(a.count("connected to c@"), 0, "{}", a.log());
    assert_eq!(a.members(), vec![names[0].to_string(), names[1].to_string()]);
    assert_eq!(b.members(), vec![names[0].to_string(), names[1].to_string()]);
}

/// A party on the path answers the first dial's `Hello` with a forged version refusal, to
/// make two nodes speak the older version 3: the dialer falls back, the node dialled
/// refuses the fallback and says why (both say inside the handshake that they speak 5),
/// and the next dial, which the party lets through, connects in version 5.
#[test]
fn a_version_refusal_forged_on_the_path_is_caught() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let dir = TempDir::new("wire-downgrade");
    let names = ["a@127.0.131.1", "b@127.0.131.2"];
    let config = dir.write("t.toml", &static_topology(&names, 200));
    // `b` listens on 4371; its name's address, 4370, is the party on the path.
    let path = std::net::TcpListener::bind("127.0.131.2:4370").unwrap();
    let forged = Arc::new(AtomicUsize::new(0));
    let count = forged.clone();
    std::thread::spawn(move || {
        for mut inbound in path.incoming().flatten() {
            if count.load(Ordering::SeqCst) == 0 {
                // Read the dialer's Hello, then refuse its version in the acceptor's stead.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !matches!(Message::decode(&buf), Ok(Some(_))) {
                    match inbound.read(&mut chunk) {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => break,
                    }
                }
                let Ok(Some((Message::Hello { version: 5, .. }, _))) = Message::decode(&buf) else { continue };
                let mut refuse = Vec::new();
                Message::Refuse { code: Refusal::VersionMismatch, reason: "protocol version 5 is not supported (this node speaks 3)".into() }
                    .encode(&mut refuse);
                let _ = inbound.write_all(&refuse);
                count.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let Ok(outbound) = TcpStream::connect("127.0.131.2:4371") else { continue };
            for (mut from, mut to) in [(inbound.try_clone().unwrap(), outbound.try_clone().unwrap()), (outbound, inbound)] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    // `b` does not list `a`, so only `a` dials, through the path.
    let b_config = dir.write("b.toml", &static_topology(&[names[1]], 200));
    let b = Node::start_with(names[1], &b_config, &["--listen", "127.0.131.2:4371"], &[]);
    // The party forwards the fallback dial to 4371: were `b` not listening yet, that dial
    // would fail on the path, and `a` would dial in version 5 again, never refused.
    b.wait_log("node b@127.0.131.2 listening on 127.0.131.2:4371", FORM);
    let a = Node::start(names[0], &config);
    a.wait_log("b@127.0.131.2 refused wire version 5: dialling it again in version 3", FORM);
    b.wait_log("a@127.0.131.1 dialled in wire version 3, though both nodes speak 5: a party on the path forged the version refusal it fell back on", FORM);
    a.wait_log("cannot connect to b@127.0.131.2: handshake failed: refused by peer: a@127.0.131.1 dialled in wire version 3", FORM);
    wait_mesh(&[&a, &b], &names, FORM);
    assert_eq!(forged.load(Ordering::SeqCst), 1);
    // Once each: the dialer was never answered in version 3.
    assert_eq!(a.count("dialling it again in version 3"), 1, "{}", a.log());
    assert_eq!(a.count("connected to b@127.0.131.2"), 1, "{}", a.log());
}

/// A second node claiming a connected node's name is refused, even with the cookie.
#[test]
fn a_name_already_connected_is_refused() {
    let dir = TempDir::new("wire-dup");
    let names = ["a@127.0.20.1", "b@127.0.20.2"];
    let config = dir.write("t.toml", &static_topology(&names, 5000));
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    wait_mesh(&[&a, &b], &names, FORM);
    let mut raw = Raw::connect(names[0]);
    assert_eq!(
        raw.handshake(names[1], 0, COOKIE.as_bytes()),
        Err(Error::Refused { code: Refusal::NameInUse, reason: "name b@127.0.20.2 is already connected".into() })
    );
    a.wait_log("name b@127.0.20.2 is already connected", FORM);
    assert_eq!(a.members(), vec![names[0].to_string(), names[1].to_string()]);
}

/// A peer that goes silent (no heartbeats) is declared down after the timeout, and
/// its connection is closed.
#[test]
fn a_silent_peer_is_declared_down_after_the_heartbeat_timeout() {
    let (_dir, a) = lone_node("wire-silent", "a@127.0.21.1");
    let mut raw = Raw::connect("a@127.0.21.1");
    raw.handshake("quiet@127.0.21.9", 0, COOKIE.as_bytes()).expect("handshake");
    a.wait_log("connected to quiet@127.0.21.9", FORM);
    // We read the node's heartbeats but never answer.
    let took = a.wait_log("node down quiet@127.0.21.9: heartbeat timeout", Duration::from_secs(3));
    assert!(took >= Duration::from_millis(1000), "down after {took:?}, before the 1500 ms timeout");
    assert!(raw.closed_by_peer());
}

/// 2,000 connections from one address that never finish a handshake, reopened as fast as
/// the node drops them: the accept loop keeps accepting, a member killed and restarted
/// rejoins, and the CLI answers, each within 2 s.
#[test]
fn two_thousand_hostile_connections_keep_neither_a_member_nor_the_cli_out() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    let dir = TempDir::new("wire-flood");
    let names = ["a@127.0.93.1", "b@127.0.93.2"];
    let config = static_topology(&names, 200);
    let a = Node::start(names[0], &dir.write("a.toml", &config));
    let mut b = Node::start(names[1], &dir.write("b.toml", &config));
    wait_mesh(&[&a, &b], &names, FORM);

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (stop, opened) = (stop.clone(), opened.clone());
        std::thread::spawn(move || {
            let dial = || {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
                s.bind(&"127.0.93.66:0".parse::<std::net::SocketAddr>().unwrap().into()).ok()?;
                s.connect(&"127.0.93.1:4370".parse::<std::net::SocketAddr>().unwrap().into()).ok()?;
                let s: TcpStream = s.into();
                // The first bytes of a hello, then nothing.
                let _ = (&s).write_all(&[0, 0, 0]);
                s.set_nonblocking(true).ok()?;
                opened.fetch_add(1, Ordering::Relaxed);
                Some(s)
            };
            let mut conns: Vec<Option<TcpStream>> = (0..2000).map(|_| dial()).collect();
            while !stop.load(Ordering::Relaxed) {
                for c in conns.iter_mut() {
                    let closed = match c {
                        None => true,
                        Some(s) => {
                            let mut buf = [0u8; 64];
                            !matches!((&*s).read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                        }
                    };
                    if closed {
                        *c = dial();
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let overflows = listen_overflows();
    wait_until(
        FORM,
        "the flood to open 2,000 connections",
        || opened.load(Ordering::Relaxed) >= 2000,
        || {
            format!(
                "opened {}; SYNs the kernel dropped meanwhile, its queue of connections to accept being full (TcpExt ListenOverflows, machine-wide): {}\n{}",
                opened.load(Ordering::Relaxed),
                listen_overflows().saturating_sub(overflows),
                a.log()
            )
        },
    );

    // The CLI, through the flooded node.
    let t0 = Instant::now();
    let out = cli(&["nodes", "--node", names[0]], COOKIE);
    let took = t0.elapsed();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(took < Duration::from_secs(2), "the CLI took {took:?} under the flood");

    // A member killed and restarted rejoins.
    let before = b.count("members (2)");
    b.signal(libc::SIGKILL);
    b.restart();
    b.wait_log(&format!("node {} listening on", names[1]), FORM);
    let rejoined = b.wait_log_count("members (2)", before + 1, Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    assert!(opened.load(Ordering::Relaxed) > 2000, "the node dropped none of the flood's connections");
    assert!(a.count("too many handshakes in progress") <= 20, "dropped handshakes are logged once per interval:\n{}", a.log());
    eprintln!("flood: {} connections opened; CLI {took:?}; rejoined {rejoined:?} after listening", opened.load(Ordering::Relaxed));
}

/// The kernel's count of connections dropped because a listener's accept queue was full
/// (`TcpExt ListenOverflows` in /proc/net/netstat), machine-wide.
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .filter(|pair| pair.len() == 2 && pair[0].starts_with("TcpExt:"))
        .find_map(|pair| pair[0].split_whitespace().zip(pair[1].split_whitespace()).find(|(k, _)| *k == "ListenOverflows").and_then(|(_, v)| v.parse().ok()))
        .unwrap_or(0)
}

/// While a node is paused (a stalled VM, a machine out of CPU for a moment), the kernel
/// queues the connections made to it: a burst of 1,000 from one address each completes
/// at once instead of waiting for a dropped SYN's retransmission, and once the node
/// resumes it drops the burst and the CLI answers within 2 s.
#[test]
fn a_paused_node_queues_a_burst_of_connections_and_answers_after_it() {
    use std::time::Instant;
    let name = "a@127.0.97.1";
    let (_dir, a) = lone_node("wire-burst", name);
    let target: std::net::SocketAddr = "127.0.97.1:4370".parse().unwrap();
    a.signal(libc::SIGSTOP);
    let mut burst = Vec::new();
    for i in 0..1000 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&"127.0.97.66:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        let t0 = Instant::now();
        if let Err(e) = s.connect_timeout(&target.into(), Duration::from_millis(500)) {
            let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap_or_default();
            panic!(
                "connect {} of the burst to the paused node failed after {:?}: {e}; the node's listen queue is full \
                 (net.core.somaxconn = {}; `ss -ltn 'sport = :4370'` shows the queue's depth as Send-Q)",
                i + 1,
                t0.elapsed(),
                somaxconn.trim()
            );
        }
        burst.push(s);
    }
    a.signal(libc::SIGCONT);
    let t0 = Instant::now();
    let out = cli(&["nodes", "--node", name], COOKIE);
    let took = t0.elapsed();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(took < Duration::from_secs(2), "the CLI took {took:?} after the burst");
    a.wait_log("too many handshakes in progress", FORM);
    drop(burst);
}

/// A peer with the cookie that sends pings and never reads the pongs: the node queues
/// them up to `max_backlog_mb`, then disconnects it, and its memory stays bounded.
#[test]
fn a_peer_that_does_not_read_is_disconnected_past_its_backlog() {
    let dir = TempDir::new("wire-noread");
    let name = "a@127.0.94.1";
    let config = static_topology(&[name], 5000).replace("[node]\n", "[node]\nmax_backlog_mb = 4\n");
    let a = Node::start(name, &dir.write("t.toml", &config));
    a.wait_log("listening on", FORM);
    let before = a.rss_mib();

    let mut raw = Raw::connect(name);
    raw.handshake("greedy@127.0.94.9", FLAG_HIDDEN, COOKIE.as_bytes()).unwrap();
    let payload = bytes::Bytes::from(vec![7u8; 32 * 1024]);
    let mut sent = 0usize;
    for id in 1..=20_000u64 {
        if raw.try_send_frame(&Frame::Ping { id, payload: payload.clone() }).is_err() {
            break;
        }
        sent += payload.len();
    }
    a.wait_log("disconnecting greedy@127.0.94.9: it does not read", FORM);
    assert!(sent < 600 << 20, "the node kept reading {sent} bytes of pings from a peer that reads nothing");
    let after = a.rss_mib();
    assert!(after < before + 64.0, "RSS grew from {before:.1} MiB to {after:.1} MiB");
    // The node serves everyone else.
    let out = cli(&["nodes", "--node", name], COOKIE);
    assert!(out.status.success(), "{}", output_text(&out));
}

/// Bursts a node makes itself, far over `max_backlog_mb` (4 MiB here), keep the
/// connection and lose nothing: 2 MiB casts from every worker on one node at once, 2 MiB
/// replies to as many callers at once, and a SIGTERM that hands over every worker's
/// state together. Only answers to a peer's requests count against the limit, and the
/// workers that reply wait for room among them; before, each burst disconnected the two
/// nodes as "not reading", and the SIGTERM lost every state handed over.
#[test]
fn bursts_over_the_backlog_limit_keep_the_connection_and_lose_nothing() {
    let dir = TempDir::new("wire-bursts");
    let names = ["a@127.0.132.1", "b@127.0.132.2"];
    let gateway = "127.0.132.1:8080";
    let config = worker_topology(&names, &[("probe", "worker_probe.wasm", "activate_on_call = true\ncall_timeout_ms = 20000")], Some(gateway))
        .replace("[node]\n", "[node]\nmax_backlog_mb = 4\n");
    let a = Node::start(names[0], &dir.write("a.toml", &config));
    let b = Node::start(names[1], &dir.write("b.toml", &config.replace("\n[http]\nlisten = \"127.0.132.1:8080\"\ngateway = true\n", "")));
    wait_mesh(&[&a, &b], &names, FORM);
    let call = |key: &str, msg: &str| http(gateway, "POST", &format!("/v1/workers/probe/{key}/call?timeout_ms=20000"), msg.as_bytes());
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for i in 0..40 {
        let key = format!("k{i}");
        let (status, body) = call(&key, "whoami");
        assert_eq!(status, 200, "{body}");
        if body.ends_with(names[0]) {
            on_a.push(key)
        } else {
            on_b.push(key)
        }
    }
    assert!(on_a.len() >= 8 && on_b.len() >= 8, "placed {} and {}", on_a.len(), on_b.len());
    let all_at_once = |keys: &[String], msg: &str| -> Vec<(u16, String)> {
        std::thread::scope(|s| {
            let calls: Vec<_> = keys.iter().map(|k| s.spawn(move || call(k, msg))).collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        })
    };

    // Casts: every worker on `a` sends 3 of 2 MiB to one on `b` at once.
    let sink = format!("probe/{}", on_b[0]);
    for (status, body) in all_at_once(&on_a, &format!("casts 3 {sink} 2097152")) {
        assert_eq!((status, body.as_str()), (200, "sent 3"), "{}{}", a.log(), b.log());
    }
    // Replies: as many callers at once ask workers on `b` for 2 MiB each.
    for (status, body) in all_at_once(&on_b, "big 2") {
        assert_eq!((status, body.len()), (200, 2 << 20), "{}", &body[..body.len().min(200)]);
    }
    // A SIGTERM hands over every worker of `b` at once, 1 MiB of state each.
    for (status, body) in all_at_once(&on_b, "ballast 1") {
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    for (status, body) in all_at_once(&on_b, "slow-add 0") {
        assert_eq!((status, body.as_str()), (200, "1"));
    }
    assert_eq!(a.count("node down"), 0, "{}", a.log());
    b.signal(libc::SIGTERM);
    a.wait_log(&format!("node left {}", names[1]), FORM);
    for key in &on_b {
        let (status, body) = call(key, "count");
        assert_eq!((status, body.lines().next()), (200, Some("1")), "{key} lost its state\n{}", a.log());
    }
    assert_eq!(a.count("no handoff state"), 0, "{}", a.log());
    for node in [&a, &b] {
        assert_eq!(node.count("does not read"), 0, "{}", node.log());
    }
}

/// A peer that takes none of the bytes sent to it is disconnected after the heartbeat
/// timeout, however few wait for it: here its pongs, under a limit on answers far above
/// them (1 GiB).
#[test]
fn a_peer_that_takes_nothing_is_disconnected_after_the_heartbeat_timeout() {
    let dir = TempDir::new("wire-stall");
    let name = "a@127.0.133.1";
    let config = static_topology(&[name], 5000).replace("[node]\n", "[node]\nmax_backlog_mb = 1024\n");
    let a = Node::start(name, &dir.write("t.toml", &config));
    a.wait_log("listening on", FORM);
    let mut raw = Raw::connect(name);
    raw.handshake("stalled@127.0.133.9", FLAG_HIDDEN, COOKIE.as_bytes()).unwrap();
    raw.stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // 32 MiB of pings: more than the sockets' buffers hold of the pongs.
    let started = std::time::Instant::now();
    let payload = bytes::Bytes::from(vec![7u8; 64 * 1024]);
    for id in 1..=512u64 {
        if raw.try_send_frame(&Frame::Ping { id, payload: payload.clone() }).is_err() {
            break;
        }
    }
    // Heartbeats go on meanwhile: the peer is not silent, it only does not read.
    let needle = "disconnecting stalled@127.0.133.9: it does not read (a write to it did not go out within 1500 ms)";
    wait_until(
        FORM,
        needle,
        || {
            let _ = raw.try_send_frame(&Frame::Heartbeat);
            a.count(needle) > 0
        },
        || a.log(),
    );
    assert!(started.elapsed() >= Duration::from_millis(1500), "disconnected after {:?}", started.elapsed());
    assert_eq!(a.count("heartbeat timeout"), 0, "{}", a.log());
}

/// postcard's unsigned varint, for hand-encoding registry requests the way a peer would.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn postcard_bytes(b: &[u8], out: &mut Vec<u8>) {
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// A registry request `Replicate` of `counter/forged`'s state, copy `seq`: the whole
/// state (`delta` `None`), or a delta from copy `seq - 1` claiming the state's new
/// length and carrying no bytes.
fn replicate(seq: u64, delta: Option<u64>) -> Vec<u8> {
    let mut out = vec![5]; // Rpc::Replicate
    postcard_bytes(b"counter", &mut out);
    postcard_bytes(b"forged", &mut out);
    postcard_bytes(b"", &mut out); // args
    out.extend_from_slice(&[0, 0, 0]); // lineage: restarts, moves, from_copy
    varint(seq, &mut out);
    match delta {
        None => {
            out.push(0); // Update::Full
            postcard_bytes(b"state", &mut out);
        }
        Some(len) => {
            out.push(1); // Update::Delta { base, len, runs }
            varint(seq - 1, &mut out);
            varint(len, &mut out);
            out.push(0);
        }
    }
    out.push(0); // holders
    out
}

/// A peer with the cookie that sends a replica a few bytes of delta claiming a state of
/// a terabyte (or of more than memory can address) is told to send the whole state, as
/// for any delta the replica cannot apply: the node allocates nothing for it, aborts
/// nothing, and serves everyone after.
#[test]
fn a_forged_delta_claiming_a_huge_state_is_refused_without_allocating_it() {
    let name = "a@127.0.117.1";
    let (_dir, a) = lone_node("wire-delta", name);
    let before = a.rss_mib();
    let mut raw = Raw::connect(name);
    raw.handshake("forger@127.0.117.9", FLAG_HIDDEN, COOKIE.as_bytes()).unwrap();
    let mut ask = |id: u64, body: Vec<u8>| -> Vec<u8> {
        let mut plain = BytesMut::new();
        Frame::Request { id, service: wasmnode_proto::frame::Service::Registry, trace: None, body: body.into() }.encode(&mut plain);
        raw.send_sealed(&plain);
        loop {
            match raw.frame() {
                Some(Frame::Reply { id: got, body }) if got == id => return body.to_vec(),
                Some(_) => continue,
                None => panic!("the node closed the connection instead of answering request {id}:\n{}", a.log()),
            }
        }
    };
    // RpcReply::Done is postcard variant 4, RpcReply::NeedFull variant 7.
    assert_eq!(ask(1, replicate(1, None)), vec![4], "the whole state is held");
    assert_eq!(ask(2, replicate(2, Some(1 << 40))), vec![7], "a delta claiming 1 TiB");
    assert_eq!(ask(3, replicate(2, Some(u64::MAX))), vec![7], "a delta claiming 2^64 - 1 bytes");
    // An honest delta after them still applies: the copy held was not disturbed.
    assert_eq!(ask(4, replicate(2, Some(3))), vec![4], "a delta shrinking the state to 3 bytes");
    let after = a.rss_mib();
    assert!(after < before + 64.0, "RSS grew from {before:.1} MiB to {after:.1} MiB");
    let out = cli(&["nodes", "--node", name], COOKIE);
    assert!(out.status.success(), "{}", output_text(&out));
}

/// A state that claims to carry a call log (the host's framing: `log ‖ length ‖ mark`)
/// whose ring is not one the host could have written: 256 slots and the next one at 1000.
fn state_with_forged_call_log(state: &[u8]) -> Vec<u8> {
    let mut log = vec![1]; // (present: true, CallLog { next, slots })
    varint(1000, &mut log);
    varint(256, &mut log);
    for i in 0..256 {
        postcard_bytes(format!("id-{i}").as_bytes(), &mut log);
        log.push(0); // Ok(reply)
        postcard_bytes(b"1", &mut log);
    }
    let len = (log.len() as u32).to_le_bytes();
    [state, &log, &len, b"\xffwncall1"].concat()
}

/// A peer with the cookie that hands a running name a state with a forged call log
/// (see `state_with_forged_call_log`) and a lineage that keeps the running instance: the
/// node takes the state as the worker's own (the log is not one it could have written)
/// and the instance goes on answering, instead of its task dying on an index past the
/// ring and the name answering "stopped" ever after.
#[test]
fn a_forged_call_log_handed_to_a_running_name_does_not_stop_it() {
    let name = "a@127.0.118.1";
    let (_dir, a) = lone_worker("wire-calllog", name, ("counter", "worker_counter.wasm", ""), "c1");
    assert_eq!(call(name, "counter/c1", "increment"), (true, "1".into()));

    let mut raw = Raw::connect(name);
    raw.handshake("forger@127.0.118.9", FLAG_HIDDEN, COOKIE.as_bytes()).unwrap();
    let mut tell = vec![4, 3]; // Rpc::Tell(Msg::Handoff { .. })
    postcard_bytes(b"counter", &mut tell);
    postcard_bytes(b"c1", &mut tell);
    postcard_bytes(b"", &mut tell); // args
    varint(1000, &mut tell); // lineage: restarts, moves, from_copy
    tell.extend_from_slice(&[0, 0]);
    tell.push(1); // state: Some(..)
    postcard_bytes(&state_with_forged_call_log(b"41"), &mut tell);
    tell.push(0); // merges
    tell.push(0); // yielding: false
    let mut plain = BytesMut::new();
    Frame::Request { id: 0, service: wasmnode_proto::frame::Service::Registry, trace: None, body: tell.into() }.encode(&mut plain);
    raw.send_sealed(&plain);
    a.wait_log("counter/c1 runs here: the state forger@127.0.118.9 handed over merges into it", FORM);

    // The instance answers, now and with a call id (which records into its log).
    wait_until(FORM, "counter/c1 answers after the forged handoff", || call(name, "counter/c1", "value").0, || a.log());
    let out = cli(&["call", "--node", name, "--id", "after-the-forgery", "counter/c1", "increment"], COOKIE);
    assert!(out.status.success(), "{}\n{}", output_text(&out), a.log());
    assert!(!a.log().contains("panicked"), "{}", a.log());
}
