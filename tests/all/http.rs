//! The HTTP port as clients and attackers meet it: the gateway's token, percent-decoded
//! paths, 405s, chunked and conflicting bodies, and clients that send too much, too
//! slowly or nothing at all, or read large answers slowly — with probes answering on
//! their own port throughout.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use wasmnode_testkit::*;

const TOKEN: &str = "gateway-token-for-tests";
const FORM: Duration = Duration::from_secs(10);

/// A node on 127.0.`subnet`.1 with the counter and probe kinds, probes and metrics on
/// :8080 and the gateway apart on :8081, which needs [`TOKEN`].
fn node(tag: &str, subnet: u8) -> (TempDir, Node, String, String) {
    node_with(tag, subnet, "")
}

/// [`node`], with `more` lines in its `[http]` section.
fn node_with(tag: &str, subnet: u8, more: &str) -> (TempDir, Node, String, String) {
    let dir = TempDir::new(tag);
    let name = format!("a@127.0.{subnet}.1");
    let (probes, gateway) = (format!("127.0.{subnet}.1:8080"), format!("127.0.{subnet}.1:8081"));
    let kinds = [("counter", "worker_counter.wasm", ""), ("probe", "worker_probe.wasm", "call_timeout_ms = 30000")];
    let mut config = worker_topology(&[&name], &kinds, None);
    config.push_str(&format!("\n[http]\nlisten = \"{probes}\"\ngateway = true\ngateway_listen = \"{gateway}\"\ntoken_env = \"GATEWAY_TOKEN\"\n{more}"));
    let node = Node::start_with(&name, &dir.write("t.toml", &config), &[], &[("GATEWAY_TOKEN", TOKEN)]);
    node.wait_log(&format!("worker gateway on {gateway}"), FORM);
    (dir, node, probes, gateway)
}

/// Sends `bytes` on a new connection and reads until the server closes it (or 15 s).
fn exchange(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(bytes).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).to_string()
}

/// Reads one answer (headers, then a `Content-Length` body) from a kept-alive connection.
fn read_answer(s: &mut TcpStream) -> std::io::Result<String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
            if raw.len() >= end + 4 + len {
                return Ok(String::from_utf8_lossy(&raw).to_string());
            }
        }
        match s.read(&mut buf)? {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            n => raw.extend_from_slice(&buf[..n]),
        }
    }
}

/// The value of the series `series` (name and labels) in the node's `/metrics`.
fn metric(probes: &str, series: &str) -> Option<f64> {
    let answer = exchange(probes, b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    body(&answer).lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn status(answer: &str) -> u16 {
    answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// A request with the gateway's token and `Connection: close`.
fn authed(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        .into_bytes()
}

#[test]
fn the_gateway_takes_well_formed_requests_that_carry_its_token() {
    let (_dir, node, probes, gateway) = node("http-token", 90);

    // Without the token, or with another one: 401, and nothing started.
    let start = "POST /v1/workers/counter/a%2Fb HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let answer = exchange(&gateway, start.as_bytes());
    assert_eq!(status(&answer), 401, "{answer}");
    assert!(answer.to_ascii_lowercase().contains("www-authenticate: bearer"), "{answer}");
    let wrong = start.replace("Host: t\r\n", "Host: t\r\nAuthorization: Bearer gateway-token-for-testz\r\n");
    for _ in 0..3 {
        assert_eq!(status(&exchange(&gateway, wrong.as_bytes())), 401);
    }
    // Each is counted; the log has one line for the address, however many it sends.
    assert_eq!(metric(&probes, "wasmnode_gateway_unauthorized_total"), Some(4.0));
    node.wait_log("without the right bearer token", FORM);
    assert_eq!(node.count("reason=\"unauthorized\""), 1, "{}", node.log());

    // With it: the path is percent-decoded (the key is `a/b`).
    let answer = exchange(&gateway, &authed("POST", "/v1/workers/counter/a%2Fb", ""));
    assert_eq!(status(&answer), 201, "{answer}");
    assert!(body(&answer).contains(r#""name":"counter/a/b""#), "{answer}");

    // A known path with the wrong method: 405 with Allow.
    let answer = exchange(&gateway, &authed("GET", "/v1/workers/counter/a%2Fb/call", ""));
    assert_eq!(status(&answer), 405, "{answer}");
    assert!(answer.to_ascii_lowercase().contains("allow: post"), "{answer}");
    let answer = exchange(&probes, b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(status(&answer), 405, "{answer}");

    // Each port serves its own routes only.
    assert_eq!(status(&exchange(&probes, &authed("GET", "/v1/workers", ""))), 404);
    assert_eq!(status(&exchange(&gateway, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")), 404);
    assert_eq!(status(&exchange(&probes, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")), 200);

    // A chunked body is the body of one request, never further requests.
    let chunked = format!(
        "POST /v1/workers/counter/a%2Fb/call HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n9\r\nincrement\r\n0\r\n\r\n"
    );
    let answer = exchange(&gateway, chunked.as_bytes());
    assert_eq!((status(&answer), body(&answer)), (200, "1"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one request, one answer: {answer}");
    // A request hidden in a chunked body (the old server read it as a second request).
    let hidden = "POST /v1/workers/counter/a%2Fb/call HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\nincrement";
    let smuggle = format!(
        "POST /v1/workers/counter/a%2Fb/call HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
        hidden.len()
    );
    let answer = exchange(&gateway, smuggle.as_bytes());
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    // Two different Content-Lengths: refused, not the last one taken.
    let two = format!("POST /v1/workers/counter/a%2Fb/call HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 9\r\nContent-Length: 5\r\nConnection: close\r\n\r\nincrement");
    assert_eq!(status(&exchange(&gateway, two.as_bytes())), 400);
    // The counter saw exactly one increment.
    let answer = exchange(&gateway, &authed("POST", "/v1/workers/counter/a%2Fb/call", "value"));
    assert_eq!((status(&answer), body(&answer)), (200, "1"), "{answer}");
}

#[test]
fn slow_idle_and_oversized_clients_cost_the_port_nothing() {
    let (_dir, node, probes, gateway) = node("http-slow", 91);
    let before = node.rss_mib();

    // A request line with no end: refused once past the header limit, not buffered.
    let mut s = TcpStream::connect(&gateway).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let line = vec![b'A'; 1 << 20];
    let mut sent = 0;
    for _ in 0..64 {
        match s.write(&line) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let answer = String::from_utf8_lossy(&raw);
    assert!(sent < 8 << 20, "the server read {sent} bytes of one request line before closing it");
    assert!(answer.is_empty() || status(&answer) == 431 || status(&answer) == 400, "{answer}");
    drop(s);

    // 1,100 connections that send nothing: past 1,024, each closes the one that has
    // waited longest (so the first 76 go at once); probes, on their own port, answer
    // meanwhile; and the others are closed once the header timeout (10 s) passes, after
    // which the gateway serves again.
    let t0 = Instant::now();
    let mut idle: Vec<Option<TcpStream>> = (0..1100).map(|_| Some(TcpStream::connect(&gateway).expect("connect"))).collect();
    let probed = Instant::now();
    let answer = exchange(&probes, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(status(&answer), 200, "probes answer while the gateway is flooded: {answer}");
    assert!(probed.elapsed() < Duration::from_secs(2), "probe took {:?}", probed.elapsed());
    for s in idle.iter().flatten() {
        s.set_nonblocking(true).unwrap();
    }
    let mut answered = 0;
    let mut closed_at: Vec<Option<Duration>> = vec![None; idle.len()];
    let open = std::cell::Cell::new(idle.len());
    wait_until(
        Duration::from_secs(25),
        "every idle connection to be closed by the server",
        || {
            for (i, slot) in idle.iter_mut().enumerate() {
                let Some(s) = slot else { continue };
                let mut buf = [0u8; 256];
                match s.read(&mut buf) {
                    Ok(0) => *slot = None,
                    Ok(_) => answered += 1,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => *slot = None,
                }
                if slot.is_none() {
                    closed_at[i] = Some(t0.elapsed());
                }
            }
            open.set(idle.iter().flatten().count());
            open.get() == 0
        },
        || format!("{} still open", open.get()),
    );
    assert_eq!(answered, 0, "idle connections are closed without an answer");
    let first = closed_at[..76].iter().map(|t| t.unwrap()).max().unwrap();
    let rest = closed_at[76..].iter().map(|t| t.unwrap()).min().unwrap();
    assert!(first < Duration::from_secs(8), "the 76 oldest were closed by {first:?}, not at once to admit the newest");
    assert!(rest >= Duration::from_secs(8), "a newer idle connection was closed after {rest:?}, before the header timeout");
    assert!(node.log().contains("reason=\"port_full\""), "{}", node.log());
    assert_eq!(metric(&probes, "wasmnode_http_shed_total{reason=\"port_full\"}"), Some(76.0));
    let answer = exchange(&gateway, &authed("GET", "/v1/workers", ""));
    assert_eq!(status(&answer), 200, "{answer}");

    // A body past the limit is refused by its Content-Length, before it is read.
    let head = format!("POST /v1/workers/counter/big HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n", 64 << 20);
    let answer = exchange(&gateway, head.as_bytes());
    assert_eq!(status(&answer), 413, "{answer}");

    let after = node.rss_mib();
    assert!(after < before + 32.0, "RSS grew from {before:.1} MiB to {after:.1} MiB");
}

/// A client that pipelines requests and reads none of the answers keeps its connection,
/// and a slot of the port's 1,024, only until the send timeout: once the node's writes
/// have stalled for 10 s it closes the connection and says why. Before, hyper's header
/// timer never ran while it waited to write, so such clients held the port for good.
#[test]
fn a_client_that_reads_none_of_its_answers_is_closed_after_the_send_timeout() {
    let (_dir, node, probes, _gateway) = node("http-no-read", 111);
    let scrape = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut clients = Vec::new();
    // Before the first connection, so no write can have stalled earlier.
    let t0 = Instant::now();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        // A small receive window (set before connecting, so it is what the node is offered).
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&probes.parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        let mut s = TcpStream::from(s);
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        // Up to 5,000 scrapes (over 20 MB of answers, more than the buffers on both ends
        // hold), until the node stops reading them.
        let mut sent = 0;
        while sent < 5000 * scrape.len() {
            match s.write(&scrape[sent % scrape.len()..]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        assert!(sent >= 1000 * scrape.len(), "only {sent} bytes of requests went out");
        clients.push(s);
    }
    let answer = exchange(&probes, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(status(&answer), 200, "others are served meanwhile: {answer}");
    node.wait_log("it read none of its answers for 10.0 s", Duration::from_secs(30));
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(8), "closed after {took:?}, before the send timeout");
    assert!(node.log().contains("reason=\"not_reading\""), "{}", node.log());
    // Each of the four is closed for it, and counted (the log says so once per address).
    let shed = std::cell::Cell::new(None);
    wait_until(
        Duration::from_secs(20),
        "the four stalled connections counted as shed",
        || {
            shed.set(metric(&probes, "wasmnode_http_shed_total{reason=\"not_reading\"}"));
            shed.get() == Some(4.0)
        },
        || format!("{:?}", shed.get()),
    );
    // Each connection is closed: reading what is left ends (at its end, or reset, since the
    // node dropped the requests it never read), rather than waiting for more.
    for mut s in clients {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let end = loop {
            match s.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        assert!(matches!(&end, Ok(())) || matches!(&end, Err(e) if e.kind() == ErrorKind::ConnectionReset), "the connection is still open: {end:?}");
    }
    let answer = exchange(&probes, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(status(&answer), 200, "{answer}");
}

/// One client that keeps as many connections open as the port takes, each kept alive
/// after an answered request as any client may, cannot keep others out: past the cap a
/// newcomer closes the connection that has waited longest on its client. A connection
/// whose call is under way is never the one closed, however old. Before, the newcomer
/// was refused (503) for as long as the client renewed its requests within the idle
/// timeout: the kubelet's probes failed while one client liked.
#[test]
fn a_client_holding_every_connection_cannot_keep_others_out() {
    let (_dir, node, probes, gateway) = node("http-hold", 112);
    let answer = exchange(&gateway, &authed("POST", "/v1/workers/probe/slow", ""));
    assert_eq!(status(&answer), 201, "{answer}");
    // The oldest connection: a call that takes 8 s.
    let mut busy = TcpStream::connect(&gateway).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    busy.write_all(&authed("POST", "/v1/workers/probe/slow/call?timeout_ms=20000", "slow-add 8000")).unwrap();
    node.wait_log("slow-add 1 applied", FORM);
    let open = format!("wasmnode_http_connections{{port=\"{gateway}\"}}");
    wait_until(FORM, "the call's connection the only one open", || metric(&probes, &open) == Some(1.0), || format!("{:?}", metric(&probes, &open)));
    let started = Instant::now();

    // 1,023 more, each kept alive after one answered request: the port is full.
    let list = format!("GET /v1/workers HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    let mut held = Vec::new();
    for i in 0..1023 {
        let mut s = TcpStream::connect(&gateway).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(list.as_bytes()).unwrap();
        let answer = read_answer(&mut s).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(status(&answer), 200, "connection {i}: {answer}");
        held.push(s);
    }
    assert!(started.elapsed() < Duration::from_secs(6), "filling the port took {:?}: the call must still be under way", started.elapsed());
    assert_eq!(metric(&probes, &open), Some(1024.0), "the port is full");
    assert_eq!(metric(&probes, "wasmnode_http_shed_total{reason=\"port_full\"}"), Some(0.0), "{}", node.log());

    // A newcomer is served, at once.
    let t = Instant::now();
    let answer = exchange(&gateway, &authed("GET", "/v1/workers", ""));
    assert_eq!(status(&answer), 200, "a newcomer to a full port: {answer}");
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    node.wait_log("which had waited", Duration::from_secs(5));
    assert!(node.log().contains("reason=\"port_full\""), "{}", node.log());
    assert_eq!(metric(&probes, "wasmnode_http_shed_total{reason=\"port_full\"}"), Some(1.0));

    // The one closed was the held connection that had waited longest, and only it.
    let mut buf = [0u8; 64];
    // (Briefly: the idle timeout would close it too, 10 s after its answer.)
    held[0].set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let end = held[0].read(&mut buf);
    assert!(matches!(end, Ok(0)) || matches!(&end, Err(e) if e.kind() == ErrorKind::ConnectionReset), "the longest-waiting connection is open: {end:?}");
    held[1].write_all(list.as_bytes()).unwrap();
    let answer = read_answer(&mut held[1]).expect("the next-oldest is still served");
    assert_eq!(status(&answer), 200, "{answer}");

    // The older connection, whose call was under way, gets its answer.
    let answer = read_answer(&mut busy).expect("the call under way is answered");
    assert_eq!((status(&answer), body(&answer)), (200, "1"), "{answer}");
}

/// Clients that each send a large body and stall before its last byte hold at most the
/// port's budget of request bodies (64 MiB): past it, the body that has waited longest on
/// its client is closed to make room, so a client that sends its body at once is served
/// however many stall theirs. Only bodies of requests being answered (calls under way)
/// keep others out: then a body is answered 503 with `Retry-After`, nothing done. Before
/// the budget, each stalled client held its 16 MiB for the 30 s body timeout (200 grew
/// the node by 3.3 GB); with the budget alone, four of them kept every call with a body
/// out for as long as they liked.
#[test]
fn clients_that_stall_large_bodies_hold_at_most_the_ports_budget() {
    let (_dir, node, probes, gateway) = node("http-bodies", 113);
    for name in ["counter/small", "probe/s0", "probe/s1", "probe/s2", "probe/s3", "probe/m"] {
        let answer = exchange(&gateway, &authed("POST", &format!("/v1/workers/{name}"), ""));
        assert_eq!(status(&answer), 201, "{name}: {answer}");
    }
    let before = node.rss_mib();
    let size = 16 << 20;
    let head = |path: &str| format!("POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {size}\r\n\r\n");
    let part = vec![b'x'; 1 << 20];
    // Whether the node closed `s` to make room (`false`: it still waits on it): it then
    // answers 503 `busy` with `Retry-After`, and closes.
    let closed = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        match read_answer(s) {
            Ok(answer) => {
                assert_eq!(status(&answer), 503, "{answer}");
                assert!(body(&answer).contains("\"busy\"") && body(&answer).contains("needed room"), "{answer}");
                assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
                assert!(matches!(s.read(&mut [0u8; 64]), Ok(0)), "still open after its 503");
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) => panic!("closed without its 503: {e}"),
        }
    };

    // Twelve clients, one after another, each send all of a 16 MiB body but its last byte.
    let mut stalled = Vec::new();
    for i in 0..12 {
        let mut s = TcpStream::connect(&gateway).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(head(&format!("/v1/workers/counter/c{i}/call")).as_bytes()).unwrap();
        for j in 0..16 {
            let n = if j == 15 { part.len() - 1 } else { part.len() };
            s.write_all(&part[..n]).unwrap_or_else(|e| panic!("client {i}'s body was not taken: {e}"));
        }
        stalled.push(s);
    }
    // Each was taken whole: the four latest hold the budget, and each newcomer closed
    // the one that had waited longest, answering it 503.
    let open: Vec<bool> = stalled.iter_mut().map(|s| !closed(s)).collect();
    assert_eq!(open, (0..12).map(|i| i >= 8).collect::<Vec<_>>(), "which stalled clients are still open");
    let held = node.rss_mib();
    assert!(held < before + 150.0, "RSS grew from {before:.1} MiB to {held:.1} MiB with 12 stalled 16 MiB bodies");
    node.wait_log_count("whose body had waited", 1, FORM);
    assert!(node.log().contains("reason=\"bodies_full\""), "{}", node.log());
    assert_eq!(metric(&probes, "wasmnode_http_shed_total{reason=\"bodies_full\"}"), Some(8.0));

    // A call with a small body (up to 64 KiB) is served at once, and closes nothing: small
    // bodies are not counted in the budget.
    let t = Instant::now();
    let answer = exchange(&gateway, &authed("POST", "/v1/workers/counter/small/call", "increment"));
    assert_eq!((status(&answer), body(&answer)), (200, "1"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    assert_eq!(metric(&probes, "wasmnode_http_shed_total{reason=\"bodies_full\"}"), Some(8.0));
    // A call with a 1 MiB body is served at once too: the longest-waiting stalled body makes room.
    let mut message = b"slow-add 0 ".to_vec();
    message.resize(1 << 20, b'x');
    let large = |path: &str| {
        [
            format!("POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", message.len())
                .into_bytes(),
            message.clone(),
        ]
        .concat()
    };
    let t = Instant::now();
    let answer = exchange(&gateway, &large("/v1/workers/probe/m/call"));
    assert_eq!((status(&answer), body(&answer)), (200, "1"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    assert_eq!(metric(&probes, "wasmnode_http_shed_total{reason=\"bodies_full\"}"), Some(9.0));
    assert!(closed(&mut stalled[8]) && !closed(&mut stalled[9]), "the oldest stalled body, and only it, made room");
    drop(stalled);

    // Four calls under way, each with a 16 MiB body, hold the whole budget: those are
    // never closed, and a body is refused until one is answered.
    let mut calls = Vec::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(&gateway).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(head(&format!("/v1/workers/probe/s{i}/call?timeout_ms=20000")).as_bytes()).unwrap();
        let mut message = b"slow-add 6000 ".to_vec();
        message.resize(size, b'x');
        s.write_all(&message).unwrap();
        calls.push(s);
    }
    node.wait_log_count("slow-add 1 applied", 5, FORM);
    let refused = exchange(&gateway, &large("/v1/workers/probe/m/call"));
    assert_eq!(status(&refused), 503, "{refused}");
    assert!(body(&refused).contains("busy") && body(&refused).contains("requests being answered"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");
    assert_eq!(metric(&probes, "wasmnode_http_shed_total{reason=\"bodies_answering\"}"), Some(1.0));
    // (The log line is written before the answer, but read from the node's output apart.)
    node.wait_log("reason=\"bodies_answering\"", FORM);
    // A small body is still served meanwhile.
    let answer = exchange(&gateway, &authed("POST", "/v1/workers/counter/small/call", "increment"));
    assert_eq!((status(&answer), body(&answer)), (200, "2"), "{answer}");
    for (i, s) in calls.iter_mut().enumerate() {
        let answer = read_answer(s).unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!((status(&answer), body(&answer)), (200, "1"), "call {i}: {answer}");
    }
    // Their bodies came back with their answers; the refused call did nothing.
    let answer = exchange(&gateway, &authed("POST", "/v1/workers/probe/m/call", "count"));
    assert_eq!((status(&answer), body(&answer)), (200, "1"), "{answer}");
    let answer = exchange(&gateway, &large("/v1/workers/probe/m/call"));
    assert_eq!((status(&answer), body(&answer)), (200, "2"), "{answer}");
}

/// `[http] max_body_mb` and `bodies_held_mb` are the limits the ports serve with.
#[test]
fn a_ports_body_limits_are_the_configured_ones() {
    let (_dir, _node, probes, gateway) = node_with("http-limits", 114, "max_body_mb = 1\nbodies_held_mb = 1\n");
    let answer = exchange(&gateway, &authed("POST", "/v1/workers/counter/c", ""));
    assert_eq!(status(&answer), 201, "{answer}");
    let head = |len: usize, more: &str| {
        format!("POST /v1/workers/counter/c/call HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {len}\r\n{more}\r\n")
    };
    let answer = exchange(&gateway, head((1 << 20) + 1, "").as_bytes());
    assert_eq!(status(&answer), 413, "{answer}");
    assert!(body(&answer).contains("\"max\":1048576"), "{answer}");

    // A body of 1 MiB fills the budget (the node asks for it once it is counted)…
    let mut stalled = TcpStream::connect(&gateway).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stalled.write_all(head(1 << 20, "Expect: 100-continue\r\n").as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = stalled.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"), "{}", String::from_utf8_lossy(&buf[..n]));
    // …so a call's 100 KiB close it to make room (it is told so: 503, retry).
    let answer = exchange(&gateway, &authed("POST", "/v1/workers/probe/p", ""));
    assert_eq!(status(&answer), 201, "{answer}");
    let message = format!("slow-add 0 {}", "x".repeat(100 << 10));
    let answer = exchange(&gateway, &authed("POST", "/v1/workers/probe/p/call", &message));
    assert_eq!((status(&answer), body(&answer)), (200, "1"), "{answer}");
    let answer = read_answer(&mut stalled).unwrap();
    assert_eq!(status(&answer), 503, "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    assert_eq!(metric(&probes, "wasmnode_http_shed_total{reason=\"bodies_full\"}"), Some(1.0));
}

/// `[http] max_connections`, `header_timeout_ms` and `body_timeout_ms` are the limits the
/// ports serve with (their defaults are 1,024, 10 s and 30 s).
#[test]
fn a_ports_connection_cap_and_timeouts_are_the_configured_ones() {
    let (_dir, node, probes, gateway) = node_with("http-timeouts", 115, "max_connections = 2\nheader_timeout_ms = 2000\nbody_timeout_ms = 1000\n");
    let mut buf = [0u8; 256];

    // Two connections fill the port (they are accepted in order, before the third): the
    // third closes the one that has waited longest, at once.
    let mut first = TcpStream::connect(&gateway).unwrap();
    let _second = TcpStream::connect(&gateway).unwrap();
    let answer = exchange(&gateway, &authed("GET", "/v1/workers", ""));
    assert_eq!(status(&answer), 200, "{answer}");
    first.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let end = first.read(&mut buf);
    assert!(matches!(end, Ok(0)) || matches!(&end, Err(e) if e.kind() == ErrorKind::ConnectionReset), "the oldest connection is still open: {end:?}");
    assert_eq!(metric(&probes, "wasmnode_http_shed_total{reason=\"port_full\"}"), Some(1.0));
    node.wait_log("2 connections open: closed the one from", FORM);

    // A connection that sends nothing is closed once the header timeout passes.
    let started = Instant::now();
    let mut idle = TcpStream::connect(&gateway).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let end = idle.read(&mut buf);
    let waited = started.elapsed();
    assert!(matches!(end, Ok(0)), "an idle connection is still open after {waited:?}: {end:?}");
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6), "closed after {waited:?}, not 2 s");

    // A body that stops arriving is answered 408 once the body timeout passes.
    let mut slow = TcpStream::connect(&gateway).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = Instant::now();
    slow.write_all(format!("POST /v1/workers/counter/c/call HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 9\r\n\r\nincr").as_bytes())
        .unwrap();
    let answer = read_answer(&mut slow).unwrap();
    let waited = started.elapsed();
    assert_eq!(status(&answer), 408, "{answer}");
    assert!(waited >= Duration::from_millis(700) && waited < Duration::from_secs(5), "answered after {waited:?}, not 1 s");
}

/// A request refused before its body is read (413 by its `Content-Length`; 401, 400 or
/// 404 by its headers) reaches a client that sends its body regardless: the node reads
/// and discards what follows before it closes, so the client's writes do not fail on a
/// reset socket before it can read the answer. (Before, only a 413 lingered: a retried
/// call with a bad `Idempotency-Key` now and then came back as "connection reset".)
#[test]
fn a_client_that_sends_a_refused_body_regardless_gets_its_answer() {
    let (_dir, _node, probes, gateway) = node("http-linger", 116);
    let size = 20 << 20;
    let mut s = TcpStream::connect(&gateway).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!("POST /v1/workers/counter/c/call HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {size}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let part = vec![b'x'; 1 << 20];
    for i in 0..20 {
        s.write_all(&part).unwrap_or_else(|e| panic!("the body's MiB {i} could not be sent: {e}"));
    }
    let answer = read_answer(&mut s).unwrap();
    assert_eq!(status(&answer), 413, "{answer}");
    assert!(body(&answer).contains("\"max\":16777216"), "{answer}");
    // The node closes once the client has stopped sending.
    assert!(matches!(s.read(&mut [0u8; 64]), Ok(0)), "still open after its 413");

    // Refused by its headers: the client reads the answer, and only then sends its body
    // (one that does not wait for `100 Continue` can be that late).
    let bad_key = "x".repeat(257);
    let refused = [
        ("Authorization: Bearer wrong", "", 401),
        (&*format!("Authorization: Bearer {TOKEN}"), &*format!("Idempotency-Key: {bad_key}\r\n"), 400),
        (&*format!("Authorization: Bearer {TOKEN}"), "X-Other: 1\r\n", 404),
    ];
    for (i, (auth, extra, want)) in refused.into_iter().enumerate() {
        let path = if want == 404 { "/v1/nothing" } else { "/v1/workers/counter/c/call" };
        let mut s = TcpStream::connect(&gateway).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("POST {path} HTTP/1.1\r\nHost: t\r\n{auth}\r\n{extra}Content-Length: {}\r\n\r\n", part.len()).as_bytes()).unwrap();
        let answer = read_answer(&mut s).unwrap();
        assert_eq!(status(&answer), want, "request {i}: {answer}");
        s.write_all(&part).unwrap_or_else(|e| panic!("request {i}'s body, sent after its {want}, could not be sent: {e}"));
        let end = s.read(&mut [0u8; 64]);
        assert!(matches!(end, Ok(0)), "request {i}: after its {want} and its body, {end:?}, not closed");
    }
    // Nothing was done, and the port goes on serving.
    let answer = exchange(&gateway, &authed("POST", "/v1/workers/counter/c/call", "increment"));
    assert_eq!(status(&answer), 404, "{answer}");
    assert_eq!(metric(&probes, "wasmnode_http_shed_total{reason=\"bodies_full\"}"), Some(0.0));
}

/// When every connection a port holds is being answered, a newcomer is answered 503 with
/// `Retry-After`, nothing done — and gets that answer though it sent its request and a
/// body at once: the node reads and discards what it sends before it closes. (Before, the
/// 503 was written and the socket closed with the request unread, so the kernel reset it
/// and the client could read "connection reset" instead of the answer.)
#[test]
fn a_newcomer_to_a_port_whose_connections_are_all_answered_gets_its_503() {
    let (_dir, node, probes, gateway) = node_with("http-answering", 124, "max_connections = 2\n");
    for name in ["probe/a", "probe/b"] {
        let answer = exchange(&gateway, &authed("POST", &format!("/v1/workers/{name}"), ""));
        assert_eq!(status(&answer), 201, "{name}: {answer}");
    }
    // Both of the port's connections carry a call that takes 10 s.
    let mut busy = Vec::new();
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let mut s = TcpStream::connect(&gateway).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&authed("POST", &format!("/v1/workers/probe/{name}/call?timeout_ms=20000"), "slow-add 10000")).unwrap();
        node.wait_log_count("slow-add 1 applied", i + 1, FORM);
        busy.push(s);
    }
    let open = format!("wasmnode_http_connections{{port=\"{gateway}\"}}");
    wait_until(FORM, "the calls' connections the only two open", || metric(&probes, &open) == Some(2.0), || format!("{:?}", metric(&probes, &open)));

    // The newcomer sends its request and a 256 KiB body before reading anything.
    let part = vec![b'x'; 256 << 10];
    let mut s = TcpStream::connect(&gateway).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!("POST /v1/workers/counter/c/call HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n", part.len());
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&part).unwrap_or_else(|e| panic!("the body could not be sent: {e}\n{}", node.log()));
    let answer = read_answer(&mut s).unwrap_or_else(|e| panic!("the newcomer's answer: {e}\n{}", node.log()));
    assert_eq!(status(&answer), 503, "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"), "a 503 says when to try again: {answer}");
    let end = s.read(&mut [0u8; 64]);
    assert!(matches!(end, Ok(0)), "after its 503, {end:?}, not closed");
    assert_eq!(metric(&probes, "wasmnode_http_shed_total{reason=\"all_answering\"}"), Some(1.0));
    node.wait_log("all being answered, refusing", FORM);

    // Nothing was done; both calls are answered, and then the port serves again.
    for (i, s) in busy.iter_mut().enumerate() {
        let answer = read_answer(s).unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!((status(&answer), body(&answer)), (200, "1"), "call {i}: {answer}");
    }
    let answer = exchange(&gateway, &authed("POST", "/v1/workers/counter/c", ""));
    assert_eq!(status(&answer), 201, "{answer}");
}

/// Answers over 64 KiB count against the port's `answers_held_mb` until the socket has
/// taken them all, so clients that ask for large answers and read them slowly cannot grow
/// the node's memory past it: when one more does not fit, the connection whose answer has
/// waited longest on its client is closed and its answer dropped, and a client that reads
/// its answer gets all of it. (Before, each such client held its whole answer, up to 64
/// MiB, for as long as it read a little every 10 s, on each of 1,024 connections.)
#[test]
fn answers_read_slowly_are_held_within_the_ports_budget() {
    let (_dir, node, probes, gateway) = node_with("http-answers", 126, "answers_held_mb = 64\n");
    for key in ["a", "b", "c"] {
        let answer = exchange(&gateway, &authed("POST", &format!("/v1/workers/probe/{key}"), ""));
        assert_eq!(status(&answer), 201, "{key}: {answer}");
    }
    // Asks worker `key` for 24 MiB and reads only the answer's headers.
    let ask = |key: &str| {
        let mut s = TcpStream::connect(&gateway).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&authed("POST", &format!("/v1/workers/probe/{key}/call"), "big 24")).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap_or_else(|e| panic!("{key}'s answer: {e}\n{}", node.log())), 1, "{key}: {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert_eq!(status(&head), 200, "{head}");
        s
    };
    // Two answers of 24 MiB wait on clients that read none of them: 48 of the 64 MiB.
    let mut a = ask("a");
    let mut b = ask("b");
    // A third does not fit with both: a's, which has waited longest, is dropped, and
    // c, reading its answer at once, gets all of it.
    let mut c = ask("c");
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 24 << 20, "c's answer");
    // a gets what the sockets held of its answer, then the end.
    let mut got = Vec::new();
    let end = a.read_to_end(&mut got);
    assert!(got.len() < 24 << 20, "a read all of its answer ({end:?}), not dropped\n{}", node.log());
    assert_eq!(metric(&probes, "wasmnode_http_shed_total{reason=\"answers_full\"}"), Some(1.0), "{}", node.log());
    node.wait_log("answers being sent hold its 64 MiB: closed the connection to", FORM);
    node.wait_log("reason=\"answers_full\"", FORM);
    // b's fitted beside c's: it is there whole, read late.
    let mut got = Vec::new();
    b.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 24 << 20, "b's answer");
    // What was sent or dropped was given back: two more answers that wait on their
    // clients fit together, closing nothing.
    let (_d, _e) = (ask("a"), ask("b"));
    assert_eq!(metric(&probes, "wasmnode_http_shed_total{reason=\"answers_full\"}"), Some(1.0), "{}", node.log());
}
