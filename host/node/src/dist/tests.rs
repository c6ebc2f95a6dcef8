//! The distribution layer between endpoints in one process, over real loopback TCP.

use bytes::Bytes;
use tokio::net::TcpListener;
use wasmnode_proto::handshake::Dialer;

use super::wire::{read_message, write_message};
use super::*;
use crate::tls;

/// A listening endpoint on 127.0.0.1 with an OS-chosen port (in its name).
async fn listening(base: &str) -> (Dist, mpsc::UnboundedReceiver<DistEvent>) {
    listening_with(base, |c| c).await
}

async fn listening_with(base: &str, f: impl FnOnce(DistConfig) -> DistConfig) -> (Dist, mpsc::UnboundedReceiver<DistEvent>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let name = format!("{base}@127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (tx, rx) = mpsc::unbounded_channel();
    let dist = Dist::new(f(DistConfig { deliver_sends: true, ..DistConfig::new(name, b"cookie".to_vec()) }), tx);
    tokio::spawn(dist.clone().serve(listener));
    (dist, rx)
}

/// Small frames sent after a large message arrive before it: the writer interleaves
/// them between the large message's fragments (what keeps heartbeats on time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_frames_overtake_a_large_message() {
    let (a, _a_events) = listening("a").await;
    let (b, mut b_events) = listening("b").await;
    let peer = a.connect(b.name()).await.unwrap();
    let big = Bytes::from(vec![7u8; 16 << 20]);
    peer.send(Frame::Send(big.clone()));
    peer.send(Frame::Send(Bytes::from_static(b"small")));
    let mut order = Vec::new();
    while order.len() < 2 {
        if let Some(DistEvent::Frame(_, Frame::Send(p))) = b_events.recv().await {
            order.push(p);
        }
    }
    assert_eq!(order[0], Bytes::from_static(b"small"));
    assert_eq!(order[1], big, "the large message arrives whole");
}

/// A message larger than a peer takes is not sent, and the connection carries on: a
/// request fails at once with the reason, a one-way frame is dropped; what follows
/// arrives, and neither side sees a node-down. (Sent, it would close the connection at
/// the peer: that is what the limit there is for.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_for_the_peer_is_not_sent_and_costs_no_connection() {
    let (a, mut a_events) = listening("a").await;
    let (b, mut b_events) = listening("b").await;
    let peer = a.connect(b.name()).await.unwrap();
    let over = Bytes::from(vec![1u8; MAX_BODY + 1]);
    let t = Instant::now();
    let e = peer.request(wasmnode_proto::Service::Registry, over.clone(), Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains(&format!("is {} bytes, over the 64 MiB", MAX_BODY + 1)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "failed at once, not at the timeout: {:?}", t.elapsed());
    assert!(!peer.send(Frame::Send(over.clone())), "a frame too large is not sent");
    assert_eq!(peer.ping(over).await.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    // The largest that may go, goes.
    let most = Bytes::from(vec![2u8; MAX_BODY]);
    assert!(peer.send(Frame::Send(most.clone())));
    assert!(peer.send(Frame::Send(Bytes::from_static(b"after"))));
    let mut got = Vec::new();
    while got.len() < 2 {
        match b_events.recv().await {
            Some(DistEvent::Frame(_, Frame::Send(p))) => got.push(p),
            Some(DistEvent::Down(..)) => panic!("b saw the connection end"),
            _ => {}
        }
    }
    assert!(got.contains(&most) && got.contains(&Bytes::from_static(b"after")));
    assert_eq!(peer.ping(Bytes::from_static(b"x")).await.unwrap(), Bytes::from_static(b"x"));
    while let Ok(ev) = a_events.try_recv() {
        assert!(!matches!(ev, DistEvent::Down(..)), "a saw the connection end");
    }
}

/// Both sides dial at once, 20 times: each time exactly one connection comes up
/// and neither side sees a node-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_end_with_one_connection() {
    for _ in 0..20 {
        let (a, mut a_events) = listening("a").await;
        let (b, mut b_events) = listening("b").await;
        let (ra, rb) = tokio::join!(a.connect(b.name()), b.connect(a.name()));
        assert!(ra.is_ok() || rb.is_ok(), "{ra:?} {rb:?}");
        let pa = a.peer(b.name()).expect("a is connected to b");
        let pb = b.peer(a.name()).expect("b is connected to a");
        assert_eq!(a.peers().len(), 1);
        assert_eq!(b.peers().len(), 1);
        // Exactly one connection came up on each side and none went down: the
        // losing dial was refused during its handshake, before anyone saw it.
        for events in [&mut a_events, &mut b_events] {
            let (mut ups, mut downs) = (0, 0);
            while let Ok(ev) = events.try_recv() {
                match ev {
                    DistEvent::Up(_) => ups += 1,
                    DistEvent::Down(..) => downs += 1,
                    DistEvent::Frame(..) | DistEvent::Leaving(_) => {}
                }
            }
            assert_eq!((ups, downs), (1, 0));
        }
        // The connection works both ways.
        assert_eq!(pa.ping(Bytes::from_static(b"x")).await.unwrap(), Bytes::from_static(b"x"));
        assert_eq!(pb.ping(Bytes::from_static(b"y")).await.unwrap(), Bytes::from_static(b"y"));
    }
}

/// Under `[node.tls]`: nodes whose certificates name their host connect, and a
/// large message and a round trip go through TLS records; a dialer with a good
/// certificate that claims a name on another host is refused (code 10); a dialer of
/// the other kind is refused in words, both ways (code 9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_tls_a_name_needs_a_certificate_that_names_its_host() {
    let dir = std::env::temp_dir().join(format!("wasmnode-dist-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::certs::write(&dir, &["127.0.0.1".into()]).unwrap();
    let files =
        tls::TlsFiles { cert: dir.join("127.0.0.1.crt"), key: dir.join("127.0.0.1.key"), ca: dir.join("ca.crt"), reload_interval: Duration::from_secs(10) };
    let config = Arc::new(Tls::load(files, "127.0.0.1").unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    let (a, _a_events) = listening_with("a", |c| DistConfig { tls: Some(config.clone()), ..c }).await;
    let (b, mut b_events) = listening_with("b", |c| DistConfig { tls: Some(config.clone()), ..c }).await;
    let peer = a.connect(b.name()).await.unwrap();
    assert_eq!(peer.ping(Bytes::from_static(b"over tls")).await.unwrap(), Bytes::from_static(b"over tls"));
    let big = Bytes::from((0..5_000_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    peer.send(Frame::Send(big.clone()));
    loop {
        if let Some(DistEvent::Frame(_, Frame::Send(p))) = b_events.recv().await {
            assert_eq!(p, big, "the large message arrives whole");
            break;
        }
    }
    // Many small frames, queued, between round trips that their senders write
    // themselves: every one arrives, in order, through one TLS stream.
    for window in 0..20u32 {
        for i in 0..5_000u32 {
            peer.send(Frame::Send(Bytes::from((window * 5_000 + i).to_be_bytes().to_vec())));
        }
        peer.ping(Bytes::from_static(b"window")).await.expect("the connection lives");
    }
    let mut next = 0u32;
    while next < 100_000 {
        match b_events.recv().await {
            Some(DistEvent::Frame(_, Frame::Send(p))) => {
                assert_eq!(p.as_ref(), next.to_be_bytes(), "in order");
                next += 1;
            }
            Some(DistEvent::Down(_, reason)) => panic!("down: {reason}"),
            _ => {}
        }
    }
    // The same certificate, claiming a name on 127.0.0.2.
    let (tx, _rx) = mpsc::unbounded_channel();
    let liar = Dist::new(DistConfig { tls: Some(config.clone()), ..DistConfig::new("m@127.0.0.2:1", b"cookie".to_vec()) }, tx);
    match liar.connect(b.name()).await {
        Err(DialError::Handshake(ProtoError::Refused { code: Refusal::Certificate, .. })) => {}
        other => panic!("{other:?}"),
    }
    // The other kind, both ways.
    let (plain, _p_events) = listening("p").await;
    for r in [plain.connect(b.name()).await, a.connect(plain.name()).await] {
        match r {
            Err(DialError::Handshake(ProtoError::Refused { code: Refusal::ModeMismatch, .. })) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(b.peers().len(), 1, "only a got in");
}

/// A peer that stops sending is declared down after the heartbeat timeout, with
/// that reason (and not before the timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_timeout_is_a_node_down_with_its_reason() {
    let timeout = Duration::from_millis(300);
    let (b, mut b_events) = listening_with("b", |c| DistConfig { heartbeat_interval: Duration::from_millis(100), heartbeat_timeout: timeout, ..c }).await;
    // A raw peer that completes the handshake and then says nothing.
    let mut stream = TcpStream::connect(b.name().split('@').nth(1).unwrap()).await.unwrap();
    let mut buf = BytesMut::new();
    let me = Identity { name: "quiet@127.0.0.1".into(), flags: 0, creation: 1 };
    let (d, hello) = Dialer::start(&me, b.name(), b"cookie").unwrap();
    write_message(&mut stream, &hello).await.unwrap();
    let challenge = read_message(&mut stream, &mut buf).await.unwrap();
    let (d, proof) = d.on_challenge(challenge).unwrap();
    // The connection cannot be up (nor its silence counted) before `b` has the proof.
    let up_at = Instant::now();
    write_message(&mut stream, &proof).await.unwrap();
    let answer = read_message(&mut stream, &mut buf).await.unwrap();
    d.on_accept(answer).unwrap();
    let down = loop {
        match b_events.recv().await.unwrap() {
            DistEvent::Down(p, reason) => break (p.name().to_string(), reason),
            _ => continue,
        }
    };
    assert_eq!(down, ("quiet@127.0.0.1".to_string(), DownReason::HeartbeatTimeout));
    assert!(up_at.elapsed() >= timeout, "declared down after {:?}", up_at.elapsed());
}

/// A leaver's orderly close (its last `Leaving`, then the end of the stream) is a
/// node-down for `Left`, and its connection says it closed in order: a request it left
/// unanswered was not handled. A connection that ends anywhere else, even from a node
/// that said it is leaving, is `ConnectionClosed`: a reply may have been cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_end_right_behind_leaving_is_an_orderly_close() {
    async fn down_of(events: &mut mpsc::UnboundedReceiver<DistEvent>) -> (Peer, DownReason) {
        loop {
            if let DistEvent::Down(p, reason) = events.recv().await.unwrap() {
                return (p, reason);
            }
        }
    }
    let (a, _a_events) = listening("a").await;
    let (b, mut b_events) = listening("b").await;
    a.connect(b.name()).await.unwrap();
    a.leave(Duration::from_secs(5)).await;
    let (peer, reason) = down_of(&mut b_events).await;
    assert_eq!((peer.name(), reason), (a.name(), DownReason::Left));
    assert!(peer.closed_in_order());

    let (c, _c_events) = listening("c").await;
    let to_b = c.connect(b.name()).await.unwrap();
    c.announce_leaving();
    // Something after its `Leaving`, then the end: not the orderly close of a leaver.
    to_b.send(Frame::Send(Bytes::from_static(b"after")));
    to_b.close(DownReason::LocalShutdown);
    let (peer, reason) = down_of(&mut b_events).await;
    assert_eq!((peer.name(), reason), (c.name(), DownReason::ConnectionClosed));
    assert!(!peer.closed_in_order());
}

/// A node of the previous wire version (a rolling update from it) refuses version 5's
/// `Hello` as a version mismatch; the dialer dials it again in version 3, and frames
/// reach it in version 3's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_wire_version_3_is_dialled_again_in_version_3() {
    use bytes::Buf;
    use tokio::io::AsyncReadExt;
    use wasmnode_proto::frame;
    use wasmnode_proto::handshake::{Acceptor, Message, Refusal};

    let (a, _a_events) = listening("a").await;
    // Stands in for a version-3 node: it refuses any other version, as such a node does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let name = format!("old@127.0.0.1:{}", listener.local_addr().unwrap().port());
    let me = Identity { name: name.clone(), flags: 0, creation: 7 };
    let old = tokio::spawn(async move {
        let mut versions = Vec::new();
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let hello = read_message(&mut stream, &mut buf).await.unwrap();
            let Message::Hello { version, .. } = &hello else { panic!("expected a hello, got {hello:?}") };
            versions.push(*version);
            if *version != 3 {
                let refuse = Message::Refuse { code: Refusal::VersionMismatch, reason: "version mismatch".into() };
                write_message(&mut stream, &refuse).await.unwrap();
                continue;
            }
            let (acceptor, challenge) = Acceptor::on_hello(&me, b"cookie", hello).unwrap();
            write_message(&mut stream, &challenge).await.unwrap();
            let proof = read_message(&mut stream, &mut buf).await.unwrap();
            let (_, mut session) = acceptor.on_proof(proof).unwrap();
            write_message(&mut stream, &session.accept()).await.unwrap();
            let mut plain = BytesMut::new();
            loop {
                session.opener.open(&mut buf, &mut plain).unwrap();
                while let Some((frame, used)) = frame::decode(&plain, frame::DEFAULT_MAX_FRAME).unwrap() {
                    plain.advance(used);
                    if let Frame::Send(payload) = frame {
                        return (versions, payload);
                    }
                }
                assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "the dialer closed");
            }
        }
    });
    let peer = a.connect(&name).await.unwrap();
    peer.send(Frame::Send(Bytes::from_static(b"in version 3")));
    let (versions, payload) = tokio::time::timeout(Duration::from_secs(10), old).await.unwrap().unwrap();
    assert_eq!(versions, vec![5, 3], "version 5 first, then version 3");
    assert_eq!(payload, Bytes::from_static(b"in version 3"));
}

/// When the socket takes only part of a record a sender writes itself, the writer task
/// sends the rest right behind it, with nothing sealed in between, and the frames queued
/// after it follow: the peer opens every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_a_record_a_sender_began_follows_it_unbroken() {
    use bytes::Buf;
    use tokio::io::AsyncReadExt;
    use wasmnode_proto::frame;
    use wasmnode_proto::handshake::Acceptor;

    let (a, _a_events) = listening("a").await;
    // Stands in for a node: it takes the handshake, then reads and opens records.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let name = format!("far@127.0.0.1:{}", listener.local_addr().unwrap().port());
    let me = Identity { name: name.clone(), flags: wasmnode_proto::seal::cipher_flags(), creation: 7 };
    let far = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let hello = read_message(&mut stream, &mut buf).await.unwrap();
        let (acceptor, challenge) = Acceptor::on_hello(&me, b"cookie", hello).unwrap();
        write_message(&mut stream, &challenge).await.unwrap();
        let proof = read_message(&mut stream, &mut buf).await.unwrap();
        let (_, mut session) = acceptor.on_proof(proof).unwrap();
        write_message(&mut stream, &session.accept()).await.unwrap();
        let (mut plain, mut replies) = (BytesMut::new(), Vec::new());
        loop {
            while session.opener.open(&mut buf, &mut plain).map_err(|e| format!("record {}: {e}", replies.len()))? {
                while let Some((frame, used)) = frame::decode(&plain, frame::DEFAULT_MAX_FRAME).unwrap() {
                    plain.advance(used);
                    if let Frame::Reply { body, .. } = frame {
                        replies.push(body);
                        if replies.len() == 3 {
                            return Ok(replies);
                        }
                    }
                }
            }
            if stream.read_buf(&mut buf).await.unwrap() == 0 {
                return Err("the connection closed".to_string());
            }
        }
    });
    let peer = a.connect(&name).await.unwrap();
    let reply = |n: u8| Frame::Reply { id: n as u64, body: Bytes::from(vec![n; 1_000]) };
    // What `Peer::send` does when the socket takes only the first 100 bytes of a record:
    // with nothing queued (under the senders' lock), the rest queued for the writer task.
    let deadline = Instant::now() + Duration::from_secs(10);
    let began = || {
        let direct = peer.0.direct.lock().unwrap();
        let Some(wr) = direct.as_ref().filter(|_| peer.0.queued.load(Ordering::Acquire) == 0) else { return false };
        let mut plain = BytesMut::new();
        reply(1).encode(&mut plain);
        let mut record = BytesMut::new();
        peer.0.sealer.seal(&plain, &mut record);
        assert_eq!(wr.try_write(&record[..100]).unwrap(), 100);
        peer.0.queued.fetch_add(1, Ordering::AcqRel);
        peer.0.tx.send(Out::Raw(record.split_off(100).freeze())).unwrap();
        true
    };
    while !began() {
        assert!(Instant::now() < deadline, "a sender may write itself within 10 s");
        tokio::task::yield_now().await;
    }
    // Then more: queued behind the rest while it waits, or written by their sender once
    // the writer task has sent it.
    assert!(peer.send(reply(2)));
    assert!(peer.send(reply(3)));
    let replies = tokio::time::timeout(Duration::from_secs(10), far).await.unwrap().unwrap().unwrap();
    assert_eq!(replies, [1u8, 2, 3].map(|n| Bytes::from(vec![n; 1_000])));
}
