//! Mutual TLS between real node processes (`[node.tls]`): certificates made by
//! `wasmnode certs`, a cluster that forms over them, peers of the other kind or another
//! CA refused in words on both sides, and certificate files re-read without dropping a
//! connection.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use wasmnode_testkit::*;

const FORM: Duration = Duration::from_secs(10);

/// One topology for every node: its name, certificate, key and CA come from the
/// environment (`NODE_HOST`, `NODE_DIR`), as a pod's come from the downward API.
fn topology(dir: &TempDir, hosts: &[&str], tls: bool) -> PathBuf {
    let names: Vec<String> = hosts.iter().map(|h| format!("n@{h}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let tls = if tls {
        "[node.tls]\ncert = \"${NODE_DIR}/tls.crt\"\nkey = \"${NODE_DIR}/tls.key\"\nca = \"${NODE_DIR}/ca.crt\"\nreload_interval_ms = 200\n\n"
    } else {
        ""
    };
    let body = format!(
        "[node]\nname = \"n@${{NODE_HOST}}\"\nheartbeat_interval_ms = 250\nheartbeat_timeout_ms = 1500\n\n{tls}{}",
        static_strategy(&plugin("strategy_static.wasm"), &names, 200)
    );
    dir.write(if tls.is_empty() { "plain.toml" } else { "tls.toml" }, &body)
}

/// `wasmnode certs --dir DIR HOST…`, the command users run; its stdout.
fn certs(dir: &Path, hosts: &[&str]) -> String {
    let out = Command::new(bin()).args(["certs", "--dir"]).arg(dir).args(hosts).output().unwrap();
    assert!(out.status.success(), "wasmnode certs: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A node's directory of `[node.tls]` files: its certificate and key from `certs`, and
/// `ca` as its CA file.
fn node_dir(root: &Path, certs: &Path, host: &str, ca: &[&Path]) -> PathBuf {
    let d = root.join(host);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(certs.join(format!("{host}.crt")), d.join("tls.crt")).unwrap();
    std::fs::copy(certs.join(format!("{host}.key")), d.join("tls.key")).unwrap();
    write_ca(&d, ca);
    d
}

/// Writes `dir/ca.crt` as the CA certificates of these `certs` directories, in one file.
fn write_ca(dir: &Path, cas: &[&Path]) {
    let bundle: String = cas.iter().map(|c| std::fs::read_to_string(c.join("ca.crt")).unwrap()).collect();
    // Written aside and renamed, as the kubelet swaps a Secret's files.
    std::fs::write(dir.join("ca.crt.new"), bundle).unwrap();
    std::fs::rename(dir.join("ca.crt.new"), dir.join("ca.crt")).unwrap();
}

fn start(host: &str, config: &Path, dir: &Path) -> Node {
    Node::start_with(&format!("n@{host}"), config, &[], &[("NODE_HOST", host), ("NODE_DIR", dir.to_str().unwrap())])
}

/// The CLI as it runs beside a node (`kubectl exec`): that node's topology and files.
fn cli_beside(host: &str, config: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("WASMNODE_COOKIE", COOKIE)
        .env("NODE_HOST", host)
        .env("NODE_DIR", dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn members_beside(host: &str, config: &Path, dir: &Path) -> Vec<String> {
    let out = cli_beside(host, config, dir, &["nodes", "--json"]);
    if !out.status.success() {
        return vec![output_text(&out)];
    }
    member_names(&out)
}

/// Three nodes with certificates from one CA form a mesh; the CLI beside one of them
/// answers with that node's certificate; the CLI without one cannot get in.
#[test]
fn nodes_with_certificates_from_one_ca_form_a_mesh_and_the_cli_answers() {
    let tmp = TempDir::new("tls-mesh");
    let hosts = ["127.0.96.1", "127.0.96.2", "127.0.96.3"];
    let made = certs(&tmp.0.join("certs"), &hosts);
    assert!(made.contains("ca.crt") && made.contains("127.0.96.3.key"), "{made}");
    let config = topology(&tmp, &hosts, true);
    let dirs: Vec<PathBuf> = hosts.iter().map(|h| node_dir(&tmp.0, &tmp.0.join("certs"), h, &[&tmp.0.join("certs")])).collect();
    let nodes: Vec<Node> = hosts.iter().zip(&dirs).map(|(h, d)| start(h, &config, d)).collect();
    let want: Vec<String> = hosts.iter().map(|h| format!("n@{h}")).collect();
    for n in &nodes {
        n.wait_log("members (3)", FORM);
    }
    wait_until(
        FORM,
        "the CLI beside n@127.0.96.2 lists all three",
        || members_beside(hosts[1], &config, &dirs[1]) == want,
        || format!("{:?}", members_beside(hosts[1], &config, &dirs[1])),
    );
    // The CLI with the cookie but no certificate is refused, and told why.
    let out = Launch::test().cli(&["nodes", "--node", "n@127.0.96.1"]);
    assert!(!out.status.success());
    assert!(output_text(&out).contains("this node requires TLS"), "{}", output_text(&out));
    nodes[0].wait_log("it speaks without TLS, but this node requires TLS", FORM);
}

/// A node without `[node.tls]` and one with it, with the same cookie: neither becomes a
/// member of the other, and each side's log says which side lacks TLS.
#[test]
fn a_peer_of_the_other_kind_is_refused_in_words_on_both_sides() {
    let tmp = TempDir::new("tls-mode");
    let hosts = ["127.0.96.11", "127.0.96.12"];
    certs(&tmp.0.join("certs"), &hosts[..1]);
    let dir = node_dir(&tmp.0, &tmp.0.join("certs"), hosts[0], &[&tmp.0.join("certs")]);
    let with = start(hosts[0], &topology(&tmp, &hosts, true), &dir);
    let without = start(hosts[1], &topology(&tmp, &hosts, false), &tmp.0);
    // Each dials the other (both list both): four lines, two per side.
    with.wait_log("handshake refused from 127.0.96.12", FORM);
    with.wait_log("it speaks without TLS, but this node requires TLS ([node.tls] is set here)", FORM);
    with.wait_log("cannot connect to n@127.0.96.12: handshake failed: refused by peer: this node does not use TLS", FORM);
    without.wait_log("it opened with TLS, but this node has no [node.tls]", FORM);
    without.wait_log("cannot connect to n@127.0.96.11: handshake failed: refused by peer: this node requires TLS", FORM);
    for n in [&with, &without] {
        assert_eq!(n.count("connected to n@"), 0, "{}", n.log());
    }
}

/// A node whose certificate comes from another CA is refused during the TLS handshake,
/// both sides logging the TLS error. Then the CA file of one member gains that CA: the
/// member re-reads it, lets the newcomer in, and keeps its connection to the other
/// member (no node-down, no second node-up).
#[test]
fn certificate_files_are_reread_and_connections_up_stay_up() {
    let tmp = TempDir::new("tls-reload");
    let hosts = ["127.0.96.21", "127.0.96.22", "127.0.96.23"];
    let (ca1, ca2) = (tmp.0.join("ca1"), tmp.0.join("ca2"));
    certs(&ca1, &hosts[..2]);
    certs(&ca2, &hosts[2..]);
    let config = topology(&tmp, &hosts, true);
    let a_dir = node_dir(&tmp.0, &ca1, hosts[0], &[&ca1]);
    let b_dir = node_dir(&tmp.0, &ca1, hosts[1], &[&ca1]);
    // The newcomer trusts both CAs; the members only their own, for now.
    let c_dir = node_dir(&tmp.0, &ca2, hosts[2], &[&ca1, &ca2]);
    let a = start(hosts[0], &config, &a_dir);
    let b = start(hosts[1], &config, &b_dir);
    let mut c = start(hosts[2], &config, &c_dir);
    a.wait_log("connected to n@127.0.96.22", FORM);
    // A certificate from an unknown CA: refused in the TLS handshake, on both sides.
    a.wait_log("handshake refused from 127.0.96.23", FORM);
    a.wait_log("UnknownIssuer", FORM);
    c.wait_log("cannot connect to n@127.0.96.21", FORM);
    assert_eq!(a.count("connected to n@127.0.96.23"), 0, "{}", a.log());

    // a's CA file gains the second CA, as a rotated Secret would.
    write_ca(&a_dir, &[&ca1, &ca2]);
    a.wait_log("TLS certificate files changed", FORM);
    a.wait_log("connected to n@127.0.96.23", FORM);
    c.wait_log("connected to n@127.0.96.21", FORM);
    // The connection a had to b lived through the reload.
    assert_eq!(a.count("connected to n@127.0.96.22"), 1, "{}", a.log());
    assert_eq!(a.count("node down n@127.0.96.22"), 0, "{}", a.log());
    // b still trusts only its CA: c stays out there.
    assert_eq!(b.count("connected to n@127.0.96.23"), 0, "{}", b.log());

    // A broken file is refused and logged once; the setting loaded before stays in use:
    // c, restarted, gets in again with its certificate from the second CA.
    std::fs::write(a_dir.join("ca.crt"), "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n").unwrap();
    a.wait_log("TLS certificate files changed but are not usable", FORM);
    c.restart();
    a.wait_log_count("connected to n@127.0.96.23", 2, FORM);
    assert_eq!(a.count("are not usable"), 1, "{}", a.log());
}
