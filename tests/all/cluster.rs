//! Clusters of real node processes: mesh, failure detection, leave, rejoin, the CLI.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wasmnode_testkit::*;

const FORM: Duration = Duration::from_secs(10);

/// The quick start's own topology: three processes from config/local.toml form a full
/// mesh; SIGKILL is a node-down at both others within 1 s; SIGSTOP is a node-down
/// within the heartbeat timeout; both come back.
#[test]
fn local_toml_mesh_kill_stop_and_rejoin() {
    let _g = local_toml_cluster();
    let config = repo_root().join("config/local.toml");
    let names = ["a@127.0.0.1", "b@127.0.0.2", "c@127.0.0.3"];
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    let mut c = Node::start(names[2], &config);
    wait_mesh(&[&a, &b, &c], &names, FORM);

    // SIGKILL: the socket closes, so the others see it at once.
    let killed = Instant::now();
    c.signal(libc::SIGKILL);
    for n in [&a, &b] {
        n.wait_log("node down c@127.0.0.3: connection closed", Duration::from_secs(1));
    }
    assert!(killed.elapsed() < Duration::from_secs(1), "node-down took {:?}", killed.elapsed());

    // It rejoins when restarted.
    c.restart();
    wait_mesh(&[&a, &b, &c], &names, FORM);

    // SIGSTOP: the socket stays open; only the heartbeat timeout (1500 ms in
    // local.toml) can tell. The default must be at most 2 s.
    let stopped = Instant::now();
    b.signal(libc::SIGSTOP);
    for n in [&a, &c] {
        n.wait_log("node down b@127.0.0.2: heartbeat timeout", Duration::from_millis(2000));
    }
    let took = stopped.elapsed();
    assert!(took >= Duration::from_millis(1000), "declared down too early ({took:?}): the timeout is 1500 ms");
    b.signal(libc::SIGCONT);
    wait_mesh(&[&a, &b, &c], &names, FORM);
}

/// A node with another cookie never becomes a member anywhere, and the logs say why.
#[test]
fn wrong_cookie_never_joins() {
    let dir = TempDir::new("cookie");
    let names = ["a@127.0.10.1", "b@127.0.10.2", "c@127.0.10.3"];
    let config = dir.write("t.toml", &static_topology(&names, 200));
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    let c = Node::start_with_cookie(names[2], &config, "another-cookie-5e9d");
    // The acceptor names the dialer's address and the cause.
    a.wait_log("handshake refused from 127.0.", FORM);
    a.wait_log("cookie mismatch", FORM);
    c.wait_log("cannot connect to a@127.0.10.1: handshake failed: refused by peer: cookie mismatch", FORM);
    wait_mesh(&[&a, &b], &names[..2], FORM);
    // Let c keep trying through several polls, then look again.
    c.wait_log_count("strategy local", 5, FORM);
    for n in [&a, &b] {
        assert_eq!(n.members(), vec![names[0].to_string(), names[1].to_string()]);
        assert_eq!(n.count("connected to c@127.0.10.3"), 0, "{}", n.log());
    }
    // c's own list has only itself (asked with c's cookie).
    let out = cli(&["nodes", "--node", names[2], "--json"], "another-cookie-5e9d");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["members"].as_array().unwrap().len(), 1, "{v}");
    // And the CLI with the wrong cookie is refused too, saying so once, with the code
    // of a node it cannot reach.
    let out = cli(&["nodes", "--node", names[0]], "another-cookie-5e9d");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("cookie mismatch").count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// The CLI's exit codes follow the table in docs/operations.md, and its names are
/// KIND/KEY everywhere.
#[test]
fn the_cli_exit_codes_say_what_went_wrong() {
    let dir = TempDir::new("exit-codes");
    let names = ["a@127.0.10.11"];
    let kinds = [("counter", "worker_counter.wasm", ""), ("probe", "worker_probe.wasm", "activate_on_call = true")];
    let config = dir.write("t.toml", &worker_topology(&names, &kinds, None));
    let a = Node::start(names[0], &config);
    a.wait_members(&names, FORM);
    let code = |args: &[&str]| {
        let out = cli(args, COOKIE);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (c, e) = code(&["start", "--node", names[0], "counter/x1"]);
    assert_eq!(c, Some(0), "{e}");
    // Usage: the old `start KIND KEY` form, a name that is not KIND/KEY, a missing argument.
    for args in [&["start", "--node", names[0], "counter", "x1"][..], &["call", "--node", names[0], "counter", "value"], &["call"]] {
        let (c, e) = code(args);
        assert_eq!(c, Some(2), "{args:?}: {e}");
    }
    // Refused by the cluster: started already, an unknown kind, no such worker.
    for args in
        [&["start", "--node", names[0], "counter/x1"][..], &["start", "--node", names[0], "nokind/k"], &["call", "--node", names[0], "nokind/k", "value"]]
    {
        let (c, e) = code(args);
        assert_eq!(c, Some(4), "{args:?}: {e}");
    }
    // The worker failed (it traps); timed out (it answers after 3 s, the CLI waits 300 ms).
    let (c, e) = code(&["call", "--node", names[0], "probe/p1", "crash"]);
    assert_eq!(c, Some(5), "{e}");
    let (c, e) = code(&["call", "--node", names[0], "--timeout-ms", "300", "probe/p2", "slow-add 3000"]);
    assert_eq!(c, Some(6), "{e}");
    // Cannot reach the node: nobody listens there.
    let (c, e) = code(&["nodes", "--node", "z@127.0.10.19"]);
    assert_eq!(c, Some(3), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    // Completions for a shell name the subcommands.
    let out = cli(&["completions", "bash"], COOKIE);
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("complete") && script.contains("workers"), "{script}");
}

/// Five nodes, each told about one other, end as a full mesh (transitive connect).
#[test]
fn five_nodes_each_knowing_one_form_a_full_mesh() {
    let dir = TempDir::new("transitive");
    let names: Vec<String> = (1..=5).map(|i| format!("n{i}@127.0.11.{i}")).collect();
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let nodes: Vec<Node> = (0..5)
        .map(|i| {
            // n1 knows n2, n2 knows n3, ..., n5 knows n4: a chain, not a ring.
            let other = if i == 4 { 3 } else { i + 1 };
            let config = dir.write(&format!("n{i}.toml"), &static_topology(&[all[other]], 5000));
            Node::start(all[i], &config)
        })
        .collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_mesh(&refs, &all, FORM);
}

/// With `full_mesh = false` a node keeps only the links discovery gives it: a and c both
/// know only b, and although b tells them about each other, they never connect.
#[test]
fn full_mesh_off_keeps_only_discovered_links() {
    let dir = TempDir::new("nomesh");
    let names = ["a@127.0.24.1", "b@127.0.24.2", "c@127.0.24.3"];
    let config = |hosts: &[&str]| static_topology(hosts, 100).replace("[node]\n", "[node]\nfull_mesh = false\n");
    let a = Node::start(names[0], &dir.write("a.toml", &config(&[names[1]])));
    let b = Node::start(names[1], &dir.write("b.toml", &config(&[])));
    let c = Node::start(names[2], &dir.write("c.toml", &config(&[names[1]])));
    b.wait_members(&names, FORM);
    // b has sent its three-member list to both; give a and c ten polls to (wrongly) act on it.
    for n in [&a, &c] {
        let polls = n.count("strategy local");
        n.wait_log_count("strategy local", polls + 10, FORM);
    }
    a.wait_members(&names[..2], FORM);
    c.wait_members(&names[1..], FORM);
    assert_eq!(a.count("connected to c@"), 0, "{}", a.log());
}

/// SIGTERM: the node says it is leaving; peers log a leave (not a failure) and do not
/// re-dial it although discovery still lists it; when it starts again, it rejoins.
#[test]
fn sigterm_is_a_leave_and_is_not_redialled() {
    let dir = TempDir::new("leave");
    let names = ["a@127.0.12.1", "b@127.0.12.2", "c@127.0.12.3"];
    let config = dir.write("t.toml", &static_topology(&names, 100));
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    let mut c = Node::start(names[2], &config);
    wait_mesh(&[&a, &b, &c], &names, FORM);

    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_exit(Duration::from_secs(5)), Some(0), "a leaving node exits cleanly");
    for n in [&a, &b] {
        n.wait_log("node left c@127.0.12.3", Duration::from_secs(2));
        assert_eq!(n.count("node down c@127.0.12.3"), 0, "a leave is not a failure:\n{}", n.log());
    }
    // Discovery keeps listing c every 100 ms; after ten more polls nobody has dialled it.
    let polls = a.count("strategy local");
    a.wait_log_count("strategy local", polls + 10, FORM);
    for n in [&a, &b] {
        let log = n.log();
        let after_leave = log.split("node left c@127.0.12.3").nth(1).unwrap();
        assert!(!after_leave.contains("cannot connect to c@127.0.12.3"), "re-dialled a node that left:\n{log}");
        assert!(!after_leave.contains("connected to c@127.0.12.3"), "re-dialled a node that left:\n{log}");
    }
    c.restart();
    wait_mesh(&[&a, &b, &c], &names, FORM);
}

/// `nodes --watch` streams node-down with its reason; the CLI, a hidden node, is never
/// listed as a member.
#[test]
fn watch_streams_events_and_the_cli_is_hidden() {
    let dir = TempDir::new("watch");
    let names = ["a@127.0.14.1", "b@127.0.14.2"];
    let config = dir.write("t.toml", &static_topology(&names, 5000));
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    wait_mesh(&[&a, &b], &names, FORM);

    let mut watch = Command::new(bin())
        .args(["nodes", "--node", names[0], "--watch"])
        .env("WASMNODE_COOKIE", COOKIE)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |what: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => continue,
                Err(_) => panic!("watch printed no line with {what:?}"),
            }
        }
    };
    // The snapshot comes first, then events.
    next("2 members of a@127.0.14.1");
    a.wait_log("hidden node wasmnode-cli-", FORM);
    // While the watcher is connected, it is nobody's member.
    assert_eq!(a.members(), vec![names[0].to_string(), names[1].to_string()]);
    assert_eq!(b.members(), vec![names[0].to_string(), names[1].to_string()]);
    b.signal(libc::SIGKILL);
    let line = next("node down b@127.0.14.2");
    assert!(line.ends_with("node down b@127.0.14.2: connection closed"), "{line}");
    let _ = watch.kill();
    let _ = watch.wait();
}

/// Two nodes that dial each other at the same instant end with exactly one TCP
/// connection (the one dialled by the smaller name), several pairs at once.
#[test]
fn simultaneous_dials_leave_one_connection() {
    let dir = TempDir::new("simul");
    let mut pairs = Vec::new();
    for k in 0..4 {
        let x = format!("x@127.0.17.{}", 2 * k + 1);
        let y = format!("y@127.0.17.{}", 2 * k + 2);
        let config = dir.write(&format!("p{k}.toml"), &static_topology(&[&x, &y], 5000));
        // Both started before either listens for long: both dial at once.
        let nx = Node::start(&x, &config);
        let ny = Node::start(&y, &config);
        pairs.push((nx, ny));
    }
    for (nx, ny) in &pairs {
        nx.wait_log(&format!("connected to {}", ny.name), FORM);
        ny.wait_log(&format!("connected to {}", nx.name), FORM);
        let (ix, iy) = (host(&nx.name), host(&ny.name));
        wait_until(
            FORM,
            &format!("one established connection between {ix} and {iy}"),
            || established(&ix, &iy) == 1,
            || format!("{} established\n{}\n{}", established(&ix, &iy), nx.log(), ny.log()),
        );
        for n in [nx, ny] {
            assert_eq!(n.count("connected to "), 1, "{}", n.log());
            assert_eq!(n.count("node down"), 0, "{}", n.log());
        }
    }
}

fn host(name: &str) -> String {
    name.split('@').nth(1).unwrap().to_string()
}

/// Established TCP connections dialled from one of `a`, `b` to the other's port 4370
/// (nodes dial from their own listen IP; /proc/net/tcp writes addresses little-endian).
fn established(a: &str, b: &str) -> usize {
    let ip = |ip: &str| {
        let o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap()).collect();
        format!("{:02X}{:02X}{:02X}{:02X}", o[3], o[2], o[1], o[0])
    };
    let (a, b) = (ip(a), ip(b));
    let port = format!("{:04X}", 4370);
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local_ip, remote) = (&f[1][..8], f[2]);
            f[3] == "01" && (remote == format!("{b}:{port}") && local_ip == a || remote == format!("{a}:{port}") && local_ip == b)
        })
        .count()
}

/// Without --node, the CLI asks the node its --config describes, with that file's cookie
/// source (in a container: `wasmnode nodes --config FILE`, no address to look up).
#[test]
fn the_cli_finds_its_node_and_cookie_in_the_topology() {
    let dir = TempDir::new("cli-config");
    let names = ["a@127.0.14.11", "b@127.0.14.12"];
    let cookie_file = dir.write("cookie", COOKIE);
    let body =
        static_topology(&names, 5000).replacen("[node]\n", &format!("[node]\nname = \"{}\"\ncookie_file = \"{}\"\n", names[0], cookie_file.display()), 1);
    let config = dir.write("t.toml", &body);
    let a = Node::start(names[0], &config);
    let b = Node::start(names[1], &config);
    wait_mesh(&[&a, &b], &names, FORM);

    // No WASMNODE_COOKIE and no --node: both come from the file.
    let out = Command::new(bin()).args(["nodes", "--json", "--config"]).arg(&config).env_remove("WASMNODE_COOKIE").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(member_names(&out), names);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["members"].as_array().unwrap().iter().any(|m| m["name"] == names[0] && m["self"] == true), "{v}");

    // Neither: the CLI says what it needs.
    let out = Command::new(bin()).args(["nodes"]).env_remove("WASMNODE_COOKIE").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --node NAME, or --config FILE"));
}

/// Two nodes named by IPv6 address with ports (`a@[::1]:4391`): each announces and logs
/// its name with the brackets, so the other dials it back by that name and they mesh;
/// the CLI reaches them by it too.
#[test]
fn ipv6_names_keep_their_brackets_and_mesh() {
    let dir = TempDir::new("c-ipv6");
    let names = ["a@[::1]:4391", "b@[::1]:4392"];
    let config = static_topology(&names, 200);
    let a = Node::start(names[0], &dir.write("a.toml", &config));
    let b = Node::start(names[1], &dir.write("b.toml", &config));
    wait_mesh(&[&a, &b], &names, Duration::from_secs(10));
    a.wait_log("node a@[::1]:4391 listening on [::1]:4391", Duration::from_secs(5));
    let out = cli(&["nodes", "--node", names[1], "--json"], COOKIE);
    assert!(out.status.success(), "{}", output_text(&out));
    let listed = member_names(&out);
    assert!(listed.contains(&names[0].to_string()) && listed.contains(&names[1].to_string()), "{listed:?}");
}
