//! The DNS strategies against a real DNS server (dnsmasq on loopback) whose records the
//! tests change: scale up, scale down, server down, AAAA, SRV. Every lookup goes to the
//! test's dnsmasq (the topology's `nameserver`), never to the machine's resolver.

use std::time::Duration;

use wasmnode_testkit::*;

const FORM: Duration = Duration::from_secs(10);

fn dns_poll(ns: &str, query: &str, family: &str) -> String {
    format!(
        "[node]\nheartbeat_interval_ms = 250\nheartbeat_timeout_ms = 1500\n\n[topology.dns]\nstrategy = \"{}\"\npolling_interval_ms = 200\ncall_timeout_ms = 1000\nnameserver = \"{ns}\"\n[topology.dns.config]\nquery = \"{query}\"\nnode_basename = \"myapp\"\nip_family = \"{family}\"\n",
        plugin("strategy_dns_poll.wasm").display()
    )
}

/// A headless Service's story: records appear (nodes connected at the next poll),
/// disappear (running nodes stay), and the DNS server dies (nobody disconnected).
#[test]
fn dns_poll_follows_scale_up_and_disconnects_nobody() {
    let dir = TempDir::new("dns-poll");
    let names = ["myapp@127.0.41.1", "myapp@127.0.41.2", "myapp@127.0.41.3"];
    let (ip1, ip2, ip3) = ("127.0.41.1", "127.0.41.2", "127.0.41.3");
    // Three ways a lookup fails, from the same server: names under `gone.test` do not
    // exist (NXDOMAIN); `broken.test` is forwarded to a port where nothing listens, so
    // dnsmasq never answers in time (a timeout); and with an upstream configured, it
    // refuses names it knows nothing of (REFUSED, a server-side failure).
    let options = ["--server=/broken.test/127.0.0.1#9", "--address=/gone.test/"];
    let mut dns = Dnsmasq::start("poll", "127.0.41.53", 5353, &[("myapp.test", ip1), ("myapp.test", ip2)], &options);
    // Beside it, three topologies whose lookups fail in those three ways; none of them
    // disconnects anyone.
    let also = |topology: &str, query: &str| {
        dns_poll(&dns.addr, query, "both")
            .replace("topology.dns", &format!("topology.{topology}"))
            .replace("[node]\nheartbeat_interval_ms = 250\nheartbeat_timeout_ms = 1500\n", "")
    };
    let config = dir.write(
        "dns.toml",
        &format!(
            "{}\n{}\n{}\n{}",
            dns_poll(&dns.addr, "myapp.test", "both"),
            also("nxdomain", "x.gone.test"),
            also("silent", "any.broken.test"),
            also("refused", "nobody.test")
        ),
    );
    // c discovers nobody itself: it can only join by being found in DNS.
    let quiet = dir.write("quiet.toml", "[node]\nheartbeat_interval_ms = 250\n");
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    let c = Node::start(names[2], &quiet);
    wait_mesh(&[&a, &b], &names[..2], FORM);
    assert_eq!(a.last_seen("dns").unwrap(), names[..2].to_vec());
    assert_eq!(c.members(), vec![names[2].to_string()]);
    // The other three poll on beside it: an empty answer, a timeout, a refusal.
    wait_until(FORM, "the nxdomain topology to see nobody", || a.last_seen("nxdomain") == Some(vec![]), || a.log());
    a.wait_log_count("returned an error: DNS lookup of nobody.test failed: nobody.test: DNS error: error response: Query Refused", 2, FORM);
    a.wait_log_count("strategy silent (", 2, FORM);
    assert!(a.log().contains("returned an error: DNS lookup of any.broken.test timed out"), "{}", a.log());

    // Scale up: the new record is seen and dialled within a couple of 200 ms polls.
    dns.set_records(&[("myapp.test", ip1), ("myapp.test", ip2), ("myapp.test", ip3)]);
    a.wait_log("connected to myapp@127.0.41.3", Duration::from_secs(2));
    wait_mesh(&[&a, &b, &c], &names, FORM);

    // Scale down: b's record goes, b keeps running, and stays connected.
    dns.set_records(&[("myapp.test", ip1), ("myapp.test", ip3)]);
    wait_until(FORM, "a's poll to see b gone", || a.last_seen("dns") == Some(vec![names[0].into(), names[2].into()]), || a.log());
    let polls = a.count("strategy dns (");
    a.wait_log_count("strategy dns (", polls + 5, FORM);
    assert_eq!(a.members(), names.to_vec());

    // The DNS server dies: polls fail, connections stay.
    dns.stop();
    a.wait_log_count("returned an error: DNS lookup of myapp.test", 2, FORM);
    wait_mesh(&[&a, &b, &c], &names, FORM);
    for n in [&a, &b, &c] {
        assert_eq!(n.count("node down"), 0, "{}", n.log());
    }

    // A node that left discovery and stops answering is removed by the failure detector.
    b.signal(libc::SIGKILL);
    a.wait_log("node down myapp@127.0.41.2: connection closed", FORM);
}

/// AAAA records: a node found at ::1 through an IPv6-only poll.
#[test]
fn dns_poll_finds_nodes_by_aaaa() {
    let dir = TempDir::new("dns-aaaa");
    let dns = Dnsmasq::start("aaaa", "127.0.42.53", 5353, &[("v6.test", "::1")], &[]);
    let a = Node::start("myapp@127.0.42.1", &dir.write("a.toml", &dns_poll(&dns.addr, "v6.test", "ipv6")));
    let v6 = Node::start("myapp@::1", &dir.write("v6.toml", "[node]\n"));
    a.wait_log("connected to myapp@::1", FORM);
    v6.wait_log("connected to myapp@127.0.42.1", FORM);
    assert_eq!(a.last_seen("dns").unwrap(), vec!["myapp@::1".to_string()]);
}

/// SRV records of a StatefulSet-like headless Service: stable DNS names, resolved for
/// dialling through the node's `nameserver`.
#[test]
fn dns_srv_finds_statefulset_pods_by_name() {
    let dir = TempDir::new("dns-srv");
    let dns = Dnsmasq::start(
        "srv",
        "127.0.43.53",
        5353,
        &[("n0.myapp.test", "127.0.43.1"), ("n1.myapp.test", "127.0.43.2")],
        &["--srv-host=_wasmnode._tcp.myapp.test,n0.myapp.test,4370", "--srv-host=_wasmnode._tcp.myapp.test,n1.myapp.test,4370"],
    );
    let srv = format!(
        "[node]\nnameserver = \"{ns}\"\n\n[topology.srv]\nstrategy = \"{}\"\npolling_interval_ms = 200\nnameserver = \"{ns}\"\n[topology.srv.config]\nquery = \"_wasmnode._tcp.myapp.test\"\napplication_name = \"myapp\"\n",
        plugin("strategy_dns_srv.wasm").display(),
        ns = dns.addr
    );
    let n0 = Node::start_with("myapp@n0.myapp.test", &dir.write("n0.toml", &srv), &["--listen", "127.0.43.1:4370"], &[]);
    let quiet = format!("[node]\nnameserver = \"{}\"\n", dns.addr);
    let n1 = Node::start_with("myapp@n1.myapp.test", &dir.write("n1.toml", &quiet), &["--listen", "127.0.43.2:4370"], &[]);
    n0.wait_log("connected to myapp@n1.myapp.test", FORM);
    n1.wait_log("connected to myapp@n0.myapp.test", FORM);
    assert_eq!(n0.last_seen("srv").unwrap(), vec!["myapp@n0.myapp.test".to_string(), "myapp@n1.myapp.test".to_string()]);
}
