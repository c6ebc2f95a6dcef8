//! Durable kinds (`durability = "replicated"`) on real node processes: a node killed
//! with SIGKILL — no handoff, no goodbye — loses no acknowledged update; the next
//! replica of each of its names starts it from the state it holds.

use std::collections::BTreeMap;
use std::time::Duration;

use wasmnode_testkit::*;

const SETTLE: Duration = Duration::from_secs(30);
const DURABLE: &str = "durability = \"replicated\"";

/// Where each name runs, as `via` lists the cluster (a name may be listed twice).
fn placement(via: &str) -> BTreeMap<String, Vec<String>> {
    let mut at: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, names) in workers_by_node(via) {
        for n in names {
            at.entry(n).or_default().push(node.clone());
        }
    }
    at
}

/// Waits until every name of `want` runs exactly once and answers `want`'s value.
fn wait_exactly_once_with(via: &str, want: &BTreeMap<String, u64>, what: &str) {
    wait_until(
        SETTLE,
        what,
        || {
            let at = placement(via);
            want.keys().all(|n| at.get(n).is_some_and(|nodes| nodes.len() == 1)) && want.iter().all(|(n, v)| call(via, n, "value") == (true, v.to_string()))
        },
        || {
            let at = placement(via);
            want.iter()
                .filter(|(n, v)| call(via, n, "value") != (true, v.to_string()))
                .map(|(n, v)| format!("{n}: on {:?}, value {:?}, want {v}", at.get(n), call(via, n, "value")))
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
}

/// Increments each counter of `want` through `via` K % 3 + 1 times (each acknowledged).
fn increment_all(via: &str, want: &mut BTreeMap<String, u64>) {
    for (i, (name, value)) in want.iter_mut().enumerate() {
        for _ in 0..i % 3 + 1 {
            let (ok, out) = call(via, name, "increment");
            assert!(ok, "{name} through {via}: {out}");
            *value += 1;
            assert_eq!(out, value.to_string(), "{name} answered another value");
        }
    }
}

/// Three nodes; 24 durable counters of `file` with values. One node at a time is killed
/// with SIGKILL, then started again, three rounds, with increments between: every
/// counter keeps every acknowledged increment, and the names the killed node ran are
/// taken over from their replicas ("took over"), never restarted empty.
fn a_killed_node_loses_no_acknowledged_increment(tag: &str, subnet: u8, file: &str) {
    let kind = [("counter", file, "durability = \"replicated\"\ncall_timeout_ms = 10000")];
    // `check` compiles the kind once into the code cache (the Python one takes seconds),
    // so the three nodes start from it.
    let dir = TempDir::new(&format!("{tag}-check"));
    let config = dir.write("t.toml", &worker_topology(&[&format!("a@127.0.{subnet}.1")], &kind, None));
    let out = cli(&["check", "--config", config.to_str().unwrap()], COOKIE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_dir, names, mut nodes) = three_nodes(tag, subnet, &kind, false);
    let mut want = BTreeMap::new();
    for k in 0..24 {
        let (ok, out) = start_worker(&names[k % 3], "counter", &format!("c{k}"));
        assert!(ok, "{out}");
        want.insert(format!("counter/c{k}"), 0);
    }
    for round in 0..3 {
        let victim = round % 3;
        let via = &names[(victim + 1) % 3];
        increment_all(via, &mut want);
        let on_victim = placement(via).into_iter().filter(|(_, at)| at.contains(&names[victim])).count();
        assert!(on_victim > 0, "round {round}: {} runs no counter", names[victim]);
        let took_over: usize = nodes.iter().map(|n| n.count("took over counter/")).sum();
        let emptied: usize = nodes.iter().map(|n| n.count("restarted counter/")).sum();

        nodes[victim].signal(libc::SIGKILL);
        wait_exactly_once_with(via, &want, &format!("round {round}: every counter once, with every increment, after {} was killed", names[victim]));
        let now: usize = nodes.iter().map(|n| n.count("took over counter/")).sum();
        assert_eq!(now - took_over, on_victim, "round {round}: each of the killed node's counters taken over from its replica once");
        assert_eq!(nodes.iter().map(|n| n.count("restarted counter/")).sum::<usize>(), emptied, "no counter restarted empty");

        nodes[victim].restart();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, SETTLE);
        // The restarted node takes its names back (with their state) and becomes a
        // replica again: the next round's kill finds every state copied.
        wait_exactly_once_with(via, &want, &format!("round {round}: every counter once after {} came back", names[victim]));
    }
}

#[test]
fn rust_counters_survive_kill_9() {
    a_killed_node_loses_no_acknowledged_increment("d-rust", 100, "worker_counter.wasm");
}

#[test]
fn c_counters_survive_kill_9() {
    a_killed_node_loses_no_acknowledged_increment("d-c", 101, "worker_counter_c.wasm");
}

#[test]
fn python_counters_survive_kill_9() {
    a_killed_node_loses_no_acknowledged_increment("d-py", 102, "worker_counter_py.wasm");
}

/// A kind configured durable whose component has no `snapshot` export is refused by
/// `wasmnode check` with the kind and what is missing.
#[test]
fn a_durable_kind_without_snapshot_is_refused_by_check() {
    let dir = TempDir::new("d-check");
    let config = dir.write("t.toml", &worker_topology(&["a@127.0.103.1"], &[("order", "worker_order.wasm", DURABLE)], None));
    let out = std::process::Command::new(bin()).args(["check", "--config"]).arg(&config).output().unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("needs the snapshot export (wasmnode:worker/snapshot), which order lacks"), "{text}");
}
