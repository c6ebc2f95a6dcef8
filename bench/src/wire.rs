//! Figures of the connection itself: round trip, one-way throughput, connect and
//! handshake, and the floor a blocking ping-pong between two processes sets.

use crate::*;

/// The baseline's far end: a blocking echo over one TCP connection, as plain as
/// ../shared/BENCHMARKING.md's C ping-pong.
pub fn echo_server(addr: &str) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(addr).expect("bind the echo server");
    let (mut s, _) = listener.accept().unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => s.write_all(&buf[..n]).unwrap(),
        }
    }
}

/// Round trips of 16 bytes over blocking sockets between two processes placed like
/// the node benchmark's: the floor this machine sets for any implementation.
pub fn baseline_rtt(pinned: bool, n: usize) -> (f64, f64) {
    use std::io::{Read, Write};
    let addr = "127.0.30.5:4999";
    let mut server = command(std::env::current_exe().unwrap(), pinned).args(["echo-server", addr]).spawn().unwrap();
    let start = Instant::now();
    let mut s = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(5) => std::thread::yield_now(),
            Err(e) => panic!("baseline echo server: {e}"),
        }
    };
    s.set_nodelay(true).unwrap();
    let mut buf = [0u8; 16];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 10_000 {
        let t = Instant::now();
        s.write_all(&buf).unwrap();
        s.read_exact(&mut buf).unwrap();
        if i >= 10_000 {
            samples.push(t.elapsed());
        }
    }
    drop(s);
    let _ = server.wait();
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

/// Seals `n` messages of `size` bytes into a connection's records and opens them again,
/// in this thread, the way a connection's writer and reader do (the payload sealed from
/// its own buffer into memory kept from one record to the next; each record opened in
/// place), both ends with the cipher flags `flags` (the AEGIS variant they choose): the
/// time all the seals took, and all the opens. Records are sealed `batch` at a time and
/// then opened, so that a small record's seal or open is timed many at once.
fn record_layer_times(flags: u32, size: usize, n: usize, batch: usize) -> (Duration, Duration) {
    use wasmnode_proto::handshake::{Acceptor, Dialer, Identity};
    let cookie = COOKIE.as_bytes();
    let (me, you) = (Identity { name: "a@h".into(), flags, creation: 1 }, Identity { name: "b@h".into(), flags, creation: 2 });
    let (dialer, hello) = Dialer::start(&me, "b@h", cookie).unwrap();
    let (acceptor, challenge) = Acceptor::on_hello(&you, cookie, hello).unwrap();
    let (proven, proof) = dialer.on_challenge(challenge).unwrap();
    let (_, mut receiving) = acceptor.on_proof(proof).unwrap();
    let (_, sending) = proven.on_accept(receiving.accept()).unwrap();
    let mut plain = wasmnode_proto::seal::Plain::default();
    plain.push(&Frame::Send(Bytes::from(vec![0x5au8; size])));
    let mut sealed = wasmnode_proto::seal::Sealed::default();
    let (mut wire, mut opened) = (bytes::BytesMut::new(), bytes::BytesMut::new());
    let (mut sealing, mut opening) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n.div_ceil(batch) {
        let t = Instant::now();
        for _ in 0..batch {
            sending.sealer.seal_plain(&plain, &mut sealed);
        }
        sealing += t.elapsed();
        // What the socket would carry from the writer's buffer to the reader's.
        wire.extend_from_slice(sealed.bytes());
        sealed.advance(sealed.bytes().len());
        let t = Instant::now();
        for _ in 0..batch {
            receiving.opener.open(&mut wire, &mut opened).unwrap();
            // Taken, so that the next record is handed over without a copy too.
            drop(opened.split());
        }
        opening += t.elapsed();
        assert!(wire.is_empty(), "every record opened");
        // Dropped, so that `wire`'s memory, which the opened records shared, is reused.
        opened = bytes::BytesMut::new();
    }
    (sealing, opening)
}

/// Round trips of 16 bytes to a node alone, against the blocking baseline.
pub async fn rtt(args: &Args, pinned: bool, tls: bool) -> Value {
    let (config, client_config) = args.lone("127.0.30.1", tls);
    let node = args.node("rtt@127.0.30.1", &config, pinned);
    node.wait_line("listening on", Duration::from_secs(10));
    let peer = client_tls("bench@127.0.30.9", "rtt@127.0.30.1", client_config).await;
    let payload = Bytes::from_static(b"0123456789abcdef");
    let n = if args.quick { 20_000 } else { 200_000 };
    for _ in 0..10_000 {
        peer.ping(payload.clone()).await.unwrap();
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let back = peer.ping(payload.clone()).await.unwrap();
        samples.push(t.elapsed());
        debug_assert_eq!(back.len(), 16);
    }
    samples.sort();
    let (base_median, base_p99) = baseline_rtt(pinned, n);
    let median = percentile(&samples, 0.5);
    json!({
        "rtt_16b_median_us": median,
        "rtt_16b_p99_us": percentile(&samples, 0.99),
        "baseline_rtt_16b_median_us": base_median,
        "baseline_rtt_16b_p99_us": base_p99,
        "rtt_over_baseline": (median / base_median * 100.0).round() / 100.0,
        "rtt_samples": n,
    })
}

/// One-way messages of 16 B, 1 KiB and 64 KiB streamed to a node alone; without TLS,
/// also the record layer alone on this core.
pub async fn throughput(args: &Args, pinned: bool, tls: bool) -> Value {
    let (config, client_config) = args.lone("127.0.30.2", tls);
    let node = args.node("sink@127.0.30.2", &config, pinned);
    node.wait_line("listening on", Duration::from_secs(10));
    let peer = client_tls("bench@127.0.30.9", "sink@127.0.30.2", client_config).await;
    let mut out = serde_json::Map::new();
    for (label, size, count) in [("16b", 16usize, 3_000_000usize), ("1kib", 1024, 1_000_000), ("64kib", 65536, 40_000)] {
        let count = if args.quick { count / 10 } else { count };
        let payload = Bytes::from(vec![0x5au8; size]);
        // At most 64 MiB in flight: the client's connection, like a node's, ends
        // when more than its backlog limit (128 MiB) waits to be written.
        let window = 50_000.min(count).min((64 << 20) / size);
        // Streams `n` one-way messages in windows, each ended by a ping whose
        // pong returns once the node has read them all.
        let stream = |n: usize| {
            let (peer, payload) = (peer.clone(), payload.clone());
            async move {
                let mut sent = 0;
                while sent < n {
                    let batch = window.min(n - sent);
                    for _ in 0..batch {
                        peer.send(Frame::Send(payload.clone()));
                    }
                    sent += batch;
                    peer.ping(Bytes::new()).await.unwrap();
                }
            }
        };
        // Warm up, then time `count`.
        stream(count / 10).await;
        let t = Instant::now();
        stream(count).await;
        let secs = t.elapsed().as_secs_f64();
        out.insert(format!("oneway_{label}_msgs_per_s"), json!(count as f64 / secs));
        out.insert(format!("oneway_{label}_gb_per_s"), json!(count as f64 * size as f64 / secs / 1e9));
    }
    if !tls {
        // The record layer alone on this core, no socket: the ceiling the encrypted
        // one-way figures sit under (docs/benchmarks.md does the arithmetic).
        use wasmnode_proto::handshake::{FLAG_CIPHER_CHOICE, FLAG_WIDE_AES};
        use wasmnode_proto::seal::{cipher_flags, Width};
        let n = if args.quick { 2_000 } else { 20_000 };
        let gb_per_s = |bytes: usize, t: Duration| bytes as f64 / t.as_secs_f64() / 1e9;
        // The variant two nodes here use (this CPU's cipher flags on both sides).
        let here = Width::between(cipher_flags(), cipher_flags());
        // Each variant, whichever this CPU would choose: whether `Width::between` picks
        // the faster one here, and what a small record costs in each (a round trip
        // seals and opens two).
        for (variant, width, flags) in [("x2", Width::X2, FLAG_CIPHER_CHOICE), ("x4", Width::X4, FLAG_CIPHER_CHOICE | FLAG_WIDE_AES)] {
            let (seal, open) = record_layer_times(flags, 65_536, n, 1);
            if width == here {
                out.insert("seal_64kib_gb_per_s".into(), json!(gb_per_s(65_536 * n, seal)));
                out.insert("open_64kib_gb_per_s".into(), json!(gb_per_s(65_536 * n, open)));
            }
            out.insert(format!("{variant}_seal_64kib_gb_per_s"), json!(gb_per_s(65_536 * n, seal)));
            out.insert(format!("{variant}_open_64kib_gb_per_s"), json!(gb_per_s(65_536 * n, open)));
            // A record of 4 KiB, a request's of a few KiB: its payload held by reference.
            let mid = n * 16;
            let (seal, open) = record_layer_times(flags, 4_096, mid, 4);
            out.insert(format!("{variant}_seal_4kib_gb_per_s"), json!(gb_per_s(4_096 * mid, seal)));
            out.insert(format!("{variant}_open_4kib_gb_per_s"), json!(gb_per_s(4_096 * mid, open)));
            let small = n * 50;
            let (seal, open) = record_layer_times(flags, 16, small, 1_000);
            let ns = |t: Duration| t.as_nanos() as f64 / small as f64;
            out.insert(format!("{variant}_seal_16b_ns"), json!(ns(seal)));
            out.insert(format!("{variant}_open_16b_ns"), json!(ns(open)));
        }
    }
    Value::Object(out)
}

/// A new connection and its handshake, to a node alone.
pub async fn connect(args: &Args, pinned: bool, tls: bool) -> Value {
    let (config, client_config) = args.lone("127.0.30.3", tls);
    let node = args.node("acc@127.0.30.3", &config, pinned);
    node.wait_line("listening on", Duration::from_secs(10));
    let n = if args.quick { 200 } else { 2000 };
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, _rx) = mpsc::unbounded_channel();
        let dist =
            Dist::new(DistConfig { hidden: true, tls: client_config.clone(), ..DistConfig::new(format!("c{i}@127.0.30.9"), COOKIE.as_bytes().to_vec()) }, tx);
        let t = Instant::now();
        let peer = dist.connect("acc@127.0.30.3").await.expect("connect");
        samples.push(t.elapsed());
        peer.close(wasmnode::dist::DownReason::LocalShutdown);
        peer.closed().await;
    }
    samples.sort();
    json!({ "connect_handshake_median_us": percentile(&samples, 0.5), "connect_handshake_p99_us": percentile(&samples, 0.99) })
}
