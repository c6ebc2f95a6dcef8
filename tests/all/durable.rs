//! Durable kinds (`durability = "replicated"`) on real node processes: a node killed
//! with SIGKILL — no handoff, no goodbye — loses no acknowledged update; the next
//! replica of each of its names starts it from the state it holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmnode_testkit::*;

const SETTLE: Duration = Duration::from_secs(30);
const DURABLE: &str = "durability = \"replicated\"";

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
        wait_exactly_once_with(via, &want, SETTLE, &format!("round {round}: every counter once, with every increment, after {} was killed", names[victim]));
        let now: usize = nodes.iter().map(|n| n.count("took over counter/")).sum();
        assert_eq!(now - took_over, on_victim, "round {round}: each of the killed node's counters taken over from its replica once");
        assert_eq!(nodes.iter().map(|n| n.count("restarted counter/")).sum::<usize>(), emptied, "no counter restarted empty");

        nodes[victim].restart();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, SETTLE);
        // The restarted node takes its names back (with their state) and becomes a
        // replica again: the next round's kill finds every state copied.
        wait_exactly_once_with(via, &want, SETTLE, &format!("round {round}: every counter once after {} came back", names[victim]));
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

/// The replicas `via` lists for each durable name: name, owner, replica nodes.
fn replicas_of(via: &str) -> Vec<(String, String, Vec<String>)> {
    let out = cli(&["workers", "--node", via, "--json"], COOKIE);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    v["durable"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| (text(&d["name"]), text(&d["owner"]), d["replicas"].as_array().into_iter().flatten().map(|r| text(&r["node"])).collect()))
        .collect()
}

/// A durable kind that two of three nodes run (the third runs another kind): names
/// started through the third are placed on those two and copied between them, and a
/// kill -9 of one moves its names, state and all, to the other: the node without the
/// kind never owns, copies or is handed one, and still routes every call.
#[test]
fn a_kind_that_two_of_three_nodes_run_is_placed_copied_and_taken_over_between_those_two() {
    let dir = TempDir::new("d-some");
    let names: Vec<String> = ["a", "b", "c"].iter().enumerate().map(|(i, n)| format!("{n}@127.0.144.{}", i + 1)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let with = dir.write("with.toml", &worker_topology(&refs, &[("counter", "worker_counter.wasm", DURABLE)], None));
    let without = dir.write("without.toml", &worker_topology(&refs, &[("other", "worker_counter.wasm", "")], None));
    let mut nodes = [Node::start(refs[0], &with), Node::start(refs[1], &with), Node::start(refs[2], &without)];
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, SETTLE);
    let (a, b, c) = (&names[0], &names[1], &names[2]);

    let mut want = BTreeMap::new();
    for k in 0..24 {
        let (ok, out) = start_worker(c, "counter", &format!("c{k}"));
        assert!(ok, "counter/c{k} through {c}: {out}");
        assert_ne!(&started_on(&out), c, "{out}");
        want.insert(format!("counter/c{k}"), 0);
    }
    increment_all(c, &mut want);
    let at = placement(c);
    let on_a = at.values().filter(|n| *n == &vec![a.clone()]).count();
    assert!(at.values().all(|n| n == &vec![a.clone()] || n == &vec![b.clone()]), "each once, on a or b: {at:?}");
    assert!(on_a > 0 && on_a < 24, "a and b each own some: {at:?}");
    let names_of: Vec<String> = want.keys().cloned().collect();
    wait_until(SETTLE, "every counter copied", || replicated(c, &names_of, 1).is_ok(), || format!("{:?}", replicated(c, &names_of, 1)));
    for (name, owner, replicas) in replicas_of(c) {
        let other = if &owner == a { b } else { a };
        assert_eq!(replicas, vec![other.clone()], "{name} on {owner}: copied to the other node that runs counter");
    }

    let took_over = nodes[1].count("took over counter/");
    nodes[0].signal(libc::SIGKILL);
    wait_exactly_once_with(c, &want, SETTLE, "every counter once, with every increment, after a was killed");
    assert!(placement(c).values().all(|n| n == &vec![b.clone()]), "{:?}", placement(c));
    assert_eq!(nodes[1].count("took over counter/") - took_over, on_a, "each of a's counters taken over from its copy on b");
    assert_eq!(nodes.iter().map(|n| n.count("restarted counter/")).sum::<usize>(), 0, "none restarted empty");
    increment_all(c, &mut want);

    // a comes back: its names go back to it with their state, and c still owns none.
    nodes[0].restart();
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, SETTLE);
    wait_exactly_once_with(c, &want, SETTLE, "every counter once, with every increment, after a came back");
    wait_until(
        SETTLE,
        "a owns its counters again",
        || placement(c).values().filter(|n| *n == &vec![a.clone()]).count() == on_a,
        || format!("{:?}", placement(c)),
    );
    assert_eq!(nodes[2].count("unknown worker kind"), 0, "{}", nodes[2].log());
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

/// What the clients saw of each counter: increments acknowledged (200 with the new
/// value), and increments in doubt (sent, then no answer: the node went down, or
/// `in_doubt`), which may or may not have been applied.
#[derive(Default)]
struct Tally {
    acked: BTreeMap<String, u64>,
    doubt: BTreeMap<String, u64>,
}

/// A tiny deterministic generator (the tests take no `rand`).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// `clients` threads incrementing random counters through random live gateways as fast
/// as they can, until `stop`; each answer counted in `tally`.
fn clients(
    clients: usize,
    names: Arc<Vec<String>>,
    gateways: Arc<Vec<String>>,
    down: Arc<Mutex<Vec<bool>>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (names, gateways, down, stop, tally) = (names.clone(), gateways.clone(), down.clone(), stop.clone(), tally.clone());
            std::thread::spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    let name = &names[next(&mut seed) as usize % names.len()];
                    let g = next(&mut seed) as usize % gateways.len();
                    if down.lock().unwrap()[g] {
                        continue;
                    }
                    // A connection refused sent nothing: not in doubt.
                    let Ok(conn) = std::net::TcpStream::connect(&gateways[g]) else { continue };
                    let key = name.trim_start_matches("counter/");
                    let answer = increment(conn, &gateways[g], key);
                    let mut t = tally.lock().unwrap();
                    match answer {
                        Some(200) => *t.acked.entry(name.clone()).or_default() += 1,
                        _ => *t.doubt.entry(name.clone()).or_default() += 1,
                    }
                }
            })
        })
        .collect()
}

/// `POST …/call` of `increment` to counter `key` on `conn`; the status, or `None` when
/// the connection failed before an answer.
fn increment(mut conn: std::net::TcpStream, addr: &str, key: &str) -> Option<u16> {
    use std::io::{Read, Write};
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let req = format!("POST /v1/workers/counter/{key}/call HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 9\r\nConnection: close\r\n\r\nincrement");
    conn.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).ok()?;
    String::from_utf8_lossy(&raw).split_whitespace().nth(1)?.parse().ok()
}

/// Whether every one of `names` runs once and has `replicas` replicas that hold its
/// owner's last copy, as `via` sees the cluster.
fn replicated(via: &str, names: &[String], replicas: usize) -> Result<(), String> {
    let out = cli(&["workers", "--node", via, "--json"], COOKIE);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("workers --json through {via}: {e}"))?;
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for d in v["durable"].as_array().into_iter().flatten() {
        let current = d["replicas"].as_array().into_iter().flatten().filter(|r| r["current"] == true).count();
        if current < replicas {
            return Err(format!("{d}"));
        }
        *seen.entry(d["name"].as_str().unwrap_or_default()).or_default() += 1;
    }
    match names.iter().find(|n| seen.get(n.as_str()) != Some(&1)) {
        Some(n) => Err(format!("{n} listed {:?} times", seen.get(n.as_str()))),
        None => Ok(()),
    }
}

/// What the counters hold against what the clients saw: increments acknowledged and
/// in doubt, increments lost (a value below what was acknowledged) and doubled (above
/// what was acknowledged and in doubt), and a line for each counter that is off.
struct Count {
    acked: u64,
    doubt: u64,
    lost: u64,
    doubled: u64,
    report: Vec<String>,
    /// The counters whose value is not what was acknowledged.
    wrong: Vec<String>,
}

/// Reads each of `names` through `via` (every counter must answer) and sets it against
/// `tally`.
fn count_up(via: &str, names: &[String], tally: &Tally) -> Count {
    let mut c = Count { acked: 0, doubt: 0, lost: 0, doubled: 0, report: Vec::new(), wrong: Vec::new() };
    for n in names {
        let (a, d) = (tally.acked.get(n).copied().unwrap_or(0), tally.doubt.get(n).copied().unwrap_or(0));
        let (ok, out) = call(via, n, "value");
        assert!(ok, "{n}: {out}");
        let value: u64 = out.parse().unwrap();
        c.acked += a;
        c.doubt += d;
        if value < a {
            c.lost += a - value;
        } else if value > a + d {
            c.doubled += value - a - d;
        }
        if value < a || value > a + d {
            c.report.push(format!("{n}: value {value}, acknowledged {a}, in doubt {d}"));
            c.wrong.push(n.clone());
        }
    }
    c
}

/// Five nodes, 300 durable counters, clients incrementing through every node as fast
/// as they can; `rounds` times, `kill` random nodes are killed with SIGKILL at the same
/// instant, every name is waited for until replicated again, and the nodes are started
/// again. Then every counter holds every acknowledged increment, and none more than
/// acknowledged plus in doubt: lost = 0, doubled = 0.
fn kill_rounds(tag: &str, subnet: u8, replicas: usize, kill: usize, rounds: usize) {
    let extra = format!("durability = \"replicated\"\nreplicas = {replicas}");
    let hosts: Vec<String> = (1..=5).map(|i| format!("n{i}@127.0.{subnet}.{i}")).collect();
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let gateways: Vec<String> = (1..=5).map(|i| format!("127.0.{subnet}.{i}:8080")).collect();
    let dir = TempDir::new(tag);
    let mut nodes: Vec<Node> = hosts
        .iter()
        .zip(&gateways)
        .enumerate()
        .map(|(i, (h, g))| Node::start(h, &dir.write(&format!("{i}.toml"), &worker_topology(&refs, &[("counter", "worker_counter.wasm", &extra)], Some(g)))))
        .collect();
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, SETTLE);
    let names: Vec<String> = (0..300).map(|k| format!("counter/c{k}")).collect();
    for (k, n) in names.iter().enumerate() {
        let key = n.trim_start_matches("counter/");
        let (status, body) = http(&gateways[k % 5], "POST", &format!("/v1/workers/counter/{key}"), b"");
        assert_eq!(status, 201, "start {n}: {body}");
    }
    wait_until(
        SETTLE,
        "every counter replicated",
        || replicated(&hosts[0], &names, replicas).is_ok(),
        || format!("{:?}", replicated(&hosts[0], &names, replicas)),
    );

    let (names, gw) = (Arc::new(names), Arc::new(gateways));
    let down = Arc::new(Mutex::new(vec![false; 5]));
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Tally::default())));
    let threads = clients(6, names.clone(), gw.clone(), down.clone(), stop.clone(), tally.clone());
    let mut seed = 0x5eed_u64 + subnet as u64;
    let mut took_over = 0;
    for round in 0..rounds {
        // Load before the kill: the clients acknowledge 1,000 more increments.
        let acked = |t: &Mutex<Tally>| t.lock().unwrap().acked.values().sum::<u64>();
        let before = acked(&tally);
        wait_until(SETTLE, &format!("round {round}: 1,000 increments before the kill"), || acked(&tally) >= before + 1000, String::new);
        let mut victims: Vec<usize> = Vec::new();
        while victims.len() < kill {
            let v = next(&mut seed) as usize % 5;
            if !victims.contains(&v) {
                victims.push(v);
            }
        }
        for &v in &victims {
            down.lock().unwrap()[v] = true;
        }
        for &v in &victims {
            nodes[v].signal(libc::SIGKILL);
        }
        let live = (0..5).find(|i| !victims.contains(i)).unwrap();
        let alive: Vec<&str> = (0..5).filter(|i| !victims.contains(i)).map(|i| refs[i]).collect();
        nodes[live].wait_members(&alive, SETTLE);
        wait_until(
            SETTLE,
            &format!("round {round}: every counter replicated again after {victims:?} were killed"),
            || replicated(&hosts[live], &names, replicas).is_ok(),
            || format!("{:?}", replicated(&hosts[live], &names, replicas)),
        );
        for &v in &victims {
            nodes[v].restart();
        }
        wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, SETTLE);
        for &v in &victims {
            down.lock().unwrap()[v] = false;
        }
        took_over = nodes.iter().map(|n| n.count("took over counter/")).sum::<usize>();
    }
    // Load after the last restart too, through every node.
    let before: u64 = tally.lock().unwrap().acked.values().sum();
    wait_until(SETTLE, "500 increments after the last restart", || tally.lock().unwrap().acked.values().sum::<u64>() >= before + 500, String::new);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let c = count_up(&hosts[0], &names, &tally.lock().unwrap());
    let (acked, doubt) = (c.acked, c.doubt);
    assert!(acked > 1000, "the clients made too few calls to tell anything: {acked}");
    assert!(took_over > 0, "no name was taken over from a replica");
    let wrong: Vec<&str> = c.wrong.iter().map(String::as_str).collect();
    let about = || nodes.iter().map(|n| n.about(&wrong)).collect::<Vec<_>>().join("\n");
    assert_eq!((c.lost, c.doubled), (0, 0), "{acked} increments acknowledged, {doubt} in doubt, over {rounds} rounds:\n{}\n{}", c.report.join("\n"), about());
    let restarted: usize = nodes.iter().map(|n| n.count("restarted counter/")).sum();
    assert_eq!(restarted, 0, "a counter restarted empty");
    eprintln!("{tag}: {acked} increments acknowledged, {doubt} in doubt, {took_over} names taken over, lost 0, doubled 0");
}

#[test]
fn five_nodes_300_counters_ten_kills_lose_nothing() {
    kill_rounds("d-kill", 104, 1, 1, 10);
}

#[test]
fn two_replicas_survive_two_nodes_killed_at_once() {
    kill_rounds("d-kill2", 105, 2, 2, 3);
}

/// `POST …/call` of `msg` to `name` through the gateway at `addr`, with an
/// `Idempotency-Key`; (status, body).
fn http_call_once(addr: &str, key: &str, name: &str, msg: &str) -> (u16, String) {
    http_with(addr, "POST", &format!("/v1/workers/{name}/call"), &[("Idempotency-Key", key)], msg.as_bytes())
}

/// A call with an id is applied once, however it is retried: through another node,
/// after the caller's node was killed during the call (applied, its reply lost), after
/// the owner was killed during the call (in doubt: `in_doubt`, then applied by the
/// retry on the new owner), and after a failover (the ids came with the replicated
/// state). Through the CLI (`--id`), the gateway (`Idempotency-Key`) and a worker
/// (`cluster.call-once`).
#[test]
fn a_retried_call_with_an_id_is_applied_once() {
    let kind = [("probe", "worker_probe.wasm", "durability = \"replicated\"\ncall_timeout_ms = 10000")];
    let (_dir, names, mut nodes) = three_nodes("d-once", 106, &kind, true);
    let (ok, out) = start_worker(&names[0], "probe", "x");
    assert!(ok, "{out}");
    let owner = names.iter().position(|n| *n == started_on(&out)).unwrap();
    let (p, q) = ((owner + 1) % 3, (owner + 2) % 3);
    let count = |via: &str| call(via, "probe/x", "count");

    // Retried through another node: the first reply, applied once.
    assert_eq!(call_once(&names[p], "k1", "probe/x", "slow-add 0"), (true, "1".into()));
    assert_eq!(call_once(&names[q], "k1", "probe/x", "slow-add 0"), (true, "1".into()), "k1's retry through {}", names[q]);
    assert_eq!(count(&names[q]), (true, "1".into()));
    assert_eq!(nodes[owner].count("was applied before: answered from the call log"), 1, "{}", nodes[owner].log());
    // Without an id a retry applies again: the id is what makes the difference.
    assert_eq!(call(&names[p], "probe/x", "slow-add 0"), (true, "2".into()));

    // The caller's node killed during the call: applied there, the reply lost with the
    // node; the retry through another node gets it.
    let caller = names[p].clone();
    let during = std::thread::spawn(move || call_once(&caller, "k2", "probe/x", "slow-add 2000"));
    nodes[owner].wait_log("slow-add 3 applied", Duration::from_secs(10));
    nodes[p].signal(libc::SIGKILL);
    let (ok, out) = during.join().unwrap();
    assert!(!ok, "the call through the killed node answered: {out}");
    assert_eq!(call_once(&names[q], "k2", "probe/x", "slow-add 2000"), (true, "3".into()), "k2's retry");
    assert_eq!(count(&names[q]), (true, "3".into()));
    nodes[p].restart();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, SETTLE);
    wait_until(
        SETTLE,
        "probe/x replicated again",
        || replicated(&names[q], &["probe/x".to_string()], 1).is_ok(),
        || format!("{:?}", replicated(&names[q], &["probe/x".to_string()], 1)),
    );

    // The owner killed during the call, made through the gateway: in doubt (502
    // `in_doubt`, not the 503 that says nothing was done); the retry, once the replica
    // has taken over, applies it once — and the ids of earlier calls came with the
    // replicated state.
    let gateway = format!("127.0.106.{}:8080", q + 1);
    let via = gateway.clone();
    let during = std::thread::spawn(move || http_call_once(&via, "k3", "probe/x", "slow-add 2000"));
    nodes[owner].wait_log("slow-add 4 applied", Duration::from_secs(10));
    nodes[owner].signal(libc::SIGKILL);
    let (status, body) = during.join().unwrap();
    assert!(
        status == 502 && body.contains(r#""error":"in_doubt""#) && body.contains("may have been applied"),
        "the call in flight at the kill: {status} {body}"
    );
    let mut retried = (false, String::new());
    let retry = || call_once(&names[q], "k3", "probe/x", "slow-add 0");
    wait_every(
        Duration::from_millis(100),
        SETTLE,
        "k3's retry answers",
        || {
            retried = retry();
            retried.0
        },
        || format!("{:?}", retry()),
    );
    assert_eq!(retried.1, "4", "k3 applied once by its retry");
    assert_eq!(call_once(&names[p], "k1", "probe/x", "slow-add 0"), (true, "1".into()), "k1 after the failover");
    assert_eq!(call_once(&names[p], "k2", "probe/x", "slow-add 0"), (true, "3".into()), "k2 after the failover");
    assert_eq!(count(&names[p]), (true, "4".into()));
    assert!(nodes.iter().any(|n| n.count("took over probe/x") == 1), "probe/x taken over from its replica");

    // The gateway's Idempotency-Key and a worker's cluster.call-once are call ids too.
    assert_eq!(http_call_once(&gateway, "h1", "probe/x", "slow-add 0"), (200, "5".into()));
    assert_eq!(http_call_once(&gateway, "h1", "probe/x", "slow-add 0"), (200, "5".into()), "h1's retry");
    assert_eq!(http_call_once(&gateway, "k1", "probe/x", "slow-add 0"), (200, "1".into()), "the CLI's k1 through the gateway");
    let (status, body) = http_call_once(&gateway, &"x".repeat(257), "probe/x", "slow-add 0");
    assert_eq!(status, 400, "{body}");
    let (ok, out) = start_worker(&names[q], "probe", "caller");
    assert!(ok, "{out}");
    for _ in 0..2 {
        assert_eq!(call(&names[p], "probe/caller", "call-once w1 probe/x slow-add 0"), (true, "6".into()));
    }
    assert_eq!(count(&names[p]), (true, "6".into()));
}

/// A durable kind through a SIGTERM and a healed partition: the leaving node hands each
/// counter over with its state and the new owners copy it to their replicas; when the
/// node comes back the names rebalance, state and replicas with them; during a
/// partition both sides serve, and after the heal one instance of each name is left,
/// copied to its replica, with every acknowledged increment.
#[test]
fn durable_counters_go_through_sigterm_and_a_healed_partition() {
    let kind = [("counter", "worker_counter.wasm", DURABLE)];
    let (_dir, names, mut nodes) = three_nodes("d-term", 107, &kind, false);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut want = BTreeMap::new();
    for k in 0..12 {
        let (ok, out) = start_worker(&names[k % 3], "counter", &format!("c{k}"));
        assert!(ok, "{out}");
        want.insert(format!("counter/c{k}"), 0);
    }
    let all: Vec<String> = want.keys().cloned().collect();
    let copied = |via: &str, what: &str| {
        wait_until(SETTLE, what, || replicated(via, &all, 1).is_ok(), || format!("{:?}", replicated(via, &all, 1)));
    };
    increment_all(&names[0], &mut want);

    // SIGTERM: every counter of c is handed over with its state, and copied again.
    let on_c = placement(&names[0]).values().filter(|at| at.contains(&names[2])).count();
    assert!(on_c > 0, "c runs no counter");
    nodes[2].signal(libc::SIGTERM);
    assert_eq!(nodes[2].wait_exit(SETTLE), Some(0), "{}", nodes[2].log());
    wait_exactly_once_with(&names[0], &want, SETTLE, "every counter once, with every increment, after c left");
    copied(&names[0], "every counter copied to a replica on the two nodes left");
    assert_eq!(nodes.iter().map(|n| n.count("restarted counter/")).sum::<usize>(), 0, "no counter restarted empty");

    // Back: the names it owns move back to it, with their state.
    nodes[2].restart();
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, SETTLE);
    increment_all(&names[1], &mut want);
    wait_exactly_once_with(&names[1], &want, SETTLE, "every counter once after c came back");
    copied(&names[1], "every counter copied after c came back");

    // A partition: c cut off from a and b; both sides serve every counter.
    let cut = Cut::new("127.0.107.3", &["127.0.107.1", "127.0.107.2"]);
    nodes[0].wait_log("node down c@127.0.107.3: heartbeat timeout", SETTLE);
    nodes[2].wait_log("node down a@127.0.107.1: heartbeat timeout", SETTLE);
    wait_until(
        SETTLE,
        "every counter served on both sides",
        || all.iter().all(|n| call(&names[0], n, "value").0 && call(&names[2], n, "value").0),
        String::new,
    );
    drop(cut);
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, SETTLE);
    // One instance of each is left, with every increment acknowledged before the cut
    // (none was made during it), copied to its replica.
    wait_exactly_once_with(&names[0], &want, SETTLE, "every counter once, with every increment, after the heal");
    copied(&names[0], "every counter copied after the heal");
}

/// One message between nodes carries at most 64 MiB, and what is larger is not sent: a
/// reply over it fails its call with the reason, a state over it is neither copied nor
/// handed over (the node says so, and keeps it), and start args over 1 MiB are refused.
/// None of it costs a connection: the peer would close one that carried such a message,
/// and every call on it would fail with it.
#[test]
fn what_is_too_large_for_one_message_costs_no_connection() {
    let kind = [("probe", "worker_probe.wasm", "durability = \"replicated\"\nmemory_limit_mb = 512\ncall_timeout_ms = 30000")];
    let dir = TempDir::new("d-large");
    let names: Vec<String> = (1..=3).map(|i| format!("{}@127.0.110.{i}", ["a", "b", "c"][i - 1])).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let topology = worker_topology(&refs, &kind, Some(&format!("127.0.110.{}:8080", i + 1)));
            // A short handoff deadline: the leave below waits it out.
            let topology = topology.replacen("[node]\n", "[node]\nhandoff_deadline_ms = 3000\n", 1);
            Node::start(&names[i], &dir.write(&format!("{i}.toml"), &topology))
        })
        .collect();
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, SETTLE);
    let (ok, out) = start_worker(&names[0], "probe", "big");
    assert!(ok, "{out}");
    let owner = names.iter().position(|n| *n == started_on(&out)).unwrap();
    let other = (owner + 1) % 3;
    let limit = "over the 64 MiB one message between nodes may carry";

    // A 70 MiB reply, to a caller on another node and to the CLI on the owner itself.
    for via in [other, owner] {
        let (ok, out) = call(&names[via], "probe/big", "big 70");
        assert!(!ok && out.contains("failed") && out.contains(limit), "through {}: {out}", names[via]);
    }
    assert_eq!(call(&names[other], "probe/big", "big 1").1.len(), 1 << 20, "a 1 MiB reply goes");

    // A 70 MiB state: the call is answered, and the copy is not made (said once, not at
    // every call).
    assert_eq!(call(&names[other], "probe/big", "ballast 70"), (true, "ok".into()));
    assert_eq!(call(&names[other], "probe/big", "slow-add 0"), (true, "1".into()));
    nodes[owner].wait_log("cannot copy probe/big's state", SETTLE);
    assert_eq!(nodes[owner].count("cannot copy probe/big's state"), 1, "{}", nodes[owner].log());

    // Start args: 1 MiB is taken, one byte more is refused, through the gateway (413)
    // and the registry alike.
    let gateway = format!("127.0.110.{}:8080", other + 1);
    let (status, body) = http(&gateway, "POST", "/v1/workers/probe/args1", &vec![b'a'; 1 << 20]);
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(&gateway, "POST", "/v1/workers/probe/args2", &vec![b'a'; (1 << 20) + 1]);
    assert!(status == 413 && body.contains("args too large"), "{status} {body}");

    // Nothing of it closed a connection.
    for n in &nodes {
        assert_eq!(n.count("node down"), 0, "{}", n.log());
        n.wait_members(&refs, SETTLE);
    }

    // The owner leaves: each other node is tried, neither can take the state, and the
    // node keeps it until its deadline; the connections close as a leave closes them.
    nodes[owner].signal(libc::SIGTERM);
    assert_eq!(nodes[owner].wait_exit(SETTLE), Some(0), "{}", nodes[owner].log());
    for (i, name) in names.iter().enumerate().filter(|(i, _)| *i != owner) {
        assert!(nodes[owner].count(&format!("cannot hand probe/big to {name}")) >= 1, "{}", nodes[owner].log());
        let log = nodes[i].log();
        assert!(!log.contains("exceeds the maximum") && !log.contains("protocol_error"), "{name}: {log}");
        assert_eq!(nodes[i].count(&format!("node left {}", names[owner])), 1, "{log}");
    }
    let (p, q) = (other, 3 - owner - other);
    nodes[p].wait_members(&[&names[p], &names[q]], SETTLE);
    wait_until(SETTLE, "probe/big runs again once its node left", || call(&names[p], "probe/big", "count").0, || nodes[p].log());
}

/// A call log keeps replies up to 64 KiB for retries: a larger one is remembered as
/// applied without it, so callers that send large-reply calls with fresh ids (through
/// the gateway, anyone with its token) cannot make an instance hold 256 of them. Its
/// retry is still not applied again: it says so.
#[test]
fn a_call_log_keeps_large_replies_out_and_still_applies_their_retries_once() {
    let name = "a@127.0.120.1";
    let (_dir, a) = lone_worker("d-bigreply", name, ("probe", "worker_probe.wasm", "memory_limit_mb = 16"), "b");
    let before = a.rss_mib();
    for i in 0..100 {
        let (ok, out) = call_once(name, &format!("big-{i}"), "probe/b", "big 1");
        assert!(ok && out.len() == 1 << 20, "call {i}: {} bytes: {}", out.len(), &out[..out.len().min(200)]);
    }
    let after = a.rss_mib();
    assert!(after < before + 48.0, "100 replies of 1 MiB with ids took RSS from {before:.1} to {after:.1} MiB");
    let (ok, out) = call_once(name, "big-7", "probe/b", "big 1");
    assert!(!ok && out.contains("call big-7 was applied once already; its reply (1048576 bytes, over the 64 KiB"), "{out}");
    // A small reply is still answered from the log.
    assert_eq!(call_once(name, "small", "probe/b", "count"), (true, "0".into()));
    assert_eq!(call_once(name, "small", "probe/b", "count"), (true, "0".into()));
}

/// Two replicas, and two faults at once: one node leaves (SIGTERM) and, as it begins to
/// hand its counters over, another is killed (SIGKILL). The third node ends with all 24
/// counters and every acknowledged increment, none restarted empty: what the leaver
/// handed to the killed node was copied to the third before it was acknowledged, and
/// the third takes the killed node's counters over from its copies. (Probed with the
/// kill at once and after the leaver's first move, 14 runs: the leaver moved 7 or 12
/// states, the third took 3 to 11 counters over, and every run held.)
#[test]
fn a_node_killed_while_another_hands_its_counters_over_loses_no_increment() {
    let kind = [("counter", "worker_counter.wasm", "durability = \"replicated\"\nreplicas = 2")];
    let (_dir, names, mut nodes) = three_nodes("d-leave-kill", 149, &kind, false);
    let mut want = BTreeMap::new();
    for k in 0..24 {
        let (ok, out) = start_worker(&names[k % 3], "counter", &format!("c{k}"));
        assert!(ok, "{out}");
        want.insert(format!("counter/c{k}"), 0);
    }
    increment_all(&names[2], &mut want);
    replicated(&names[2], &want.keys().cloned().collect::<Vec<_>>(), 2).unwrap_or_else(|e| panic!("{e}"));
    nodes[0].signal(libc::SIGTERM);
    nodes[1].signal(libc::SIGKILL);
    assert_eq!(nodes[0].wait_exit(SETTLE), Some(0), "{}", nodes[0].log());
    assert_eq!(nodes[0].count("state is lost"), 0, "{}", nodes[0].log());
    wait_exactly_once_with(&names[2], &want, SETTLE, "every counter on c, with every increment");
    assert_eq!(nodes[2].count("restarted counter/"), 0, "no counter restarted empty\n{}", nodes[2].log());
}

/// A node paused (SIGSTOP) past the heartbeat timeout while clients increment every
/// counter through another node. Its peers declare it down and take its names over
/// from their copies, and the take-overs go on taking increments. When it wakes, each
/// of its instances meets the take-over of its name; one of the two may hold an
/// increment that no copy took (in flight at the pause, never acknowledged), the other
/// every increment since. A counter has no `resolve-conflict`, so one state is kept:
/// it must be the one that went further, or the acknowledged increments of the
/// take-over are lost. With `leave`, the node was sent SIGTERM too, which it reads as
/// it wakes: it hands its instances over instead, and the same holds.
fn a_paused_node_loses_no_acknowledged_increment(tag: &str, subnet: u8, leave: bool) {
    let kind = [("counter", "worker_counter.wasm", "durability = \"replicated\"\nreplicas = 2")];
    let (_dir, hosts, mut nodes) = three_nodes(tag, subnet, &kind, true);
    let names: Vec<String> = (0..24).map(|k| format!("counter/c{k}")).collect();
    for (k, n) in names.iter().enumerate() {
        let (ok, out) = start_worker(&hosts[k % 3], "counter", n.trim_start_matches("counter/"));
        assert!(ok, "{out}");
    }
    wait_until(SETTLE, "every counter replicated", || replicated(&hosts[2], &names, 2).is_ok(), || format!("{:?}", replicated(&hosts[2], &names, 2)));
    // The clients go through c's gateway only: c never pauses.
    let gateway = Arc::new(vec![format!("127.0.{subnet}.3:8080")]);
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Tally::default())));
    let threads = clients(4, Arc::new(names.clone()), gateway, Arc::new(Mutex::new(vec![false])), stop.clone(), tally.clone());
    let acked = |t: &Mutex<Tally>| t.lock().unwrap().acked.values().sum::<u64>();
    wait_until(SETTLE, "300 increments before the pause", || acked(&tally) >= 300, String::new);

    let paused = std::time::Instant::now();
    nodes[0].signal(libc::SIGSTOP);
    if leave {
        nodes[0].signal(libc::SIGTERM);
    }
    nodes[2].wait_log(&format!("node down {}: heartbeat timeout", hosts[0]), SETTLE);
    let before = acked(&tally);
    wait_until(SETTLE, "100 increments while a is paused", || acked(&tally) >= before + 100, String::new);
    // Twice the heartbeat timeout: both peers have timed it out and moved on.
    nodes[0].wake_after(paused, Duration::from_secs(3));
    if leave {
        assert_eq!(nodes[0].wait_exit(SETTLE), Some(0), "{}", nodes[0].log());
    } else {
        let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, SETTLE);
    }
    let before = acked(&tally);
    wait_until(SETTLE, "300 increments after the wake", || acked(&tally) >= before + 300, String::new);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let replicas = if leave { 1 } else { 2 };
    wait_until(
        SETTLE,
        "every counter once, replicated",
        || replicated(&hosts[2], &names, replicas).is_ok(),
        || format!("{:?}", replicated(&hosts[2], &names, replicas)),
    );
    let c = count_up(&hosts[2], &names, &tally.lock().unwrap());
    // Each node's lines about the counters that came out wrong: the whole logs would
    // push the failure out of what CI prints.
    let wrong: Vec<&str> = c.wrong.iter().map(String::as_str).collect();
    let logs = || nodes.iter().map(|n| n.about(&wrong)).collect::<Vec<_>>().join("\n");
    assert_eq!((c.lost, c.doubled), (0, 0), "{} acknowledged, {} in doubt:\n{}\n{}", c.acked, c.doubt, c.report.join("\n"), logs());
    eprintln!("{tag}: {} increments acknowledged, {} in doubt, lost 0, doubled 0", c.acked, c.doubt);
}

#[test]
fn a_paused_node_that_wakes_loses_no_acknowledged_increment() {
    a_paused_node_loses_no_acknowledged_increment("d-pause", 150, false);
}

#[test]
fn a_paused_node_that_wakes_into_sigterm_loses_no_acknowledged_increment() {
    a_paused_node_loses_no_acknowledged_increment("d-pause-term", 151, true);
}
