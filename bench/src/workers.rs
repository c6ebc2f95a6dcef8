//! Figures of workers: spawning and idling in one process, remote calls, durable calls.

use crate::wire::baseline_rtt;
use crate::*;

/// Spawn, local call and memory of workers of `component` (a counter), on demand or
/// from the pool, in this process, through the node's own registry and worker runtime
/// (no network: a node alone owns every name).
async fn workers_in_process(args: &Args, component: &str, spawns: usize, idle: usize, pooled: bool) -> Value {
    use wasmnode::config::WorkerConfig;
    use wasmnode::membership::Membership;
    use wasmnode::registry::Registry;
    use wasmnode::runtime::worker::WorkerRuntime;
    let counter = args.plugin(component);
    let pool = pooled.then_some(wasmnode::runtime::Pool { instances: idle as u32 + 1000, max_memory: 64 << 20 });
    let engine = wasmnode::runtime::engine_with(pool).unwrap();
    wasmnode::runtime::spawn_epoch_ticker(engine.clone());
    // The node's runtime (`node::runtime_for`): a thread per CPU for networking and workers.
    let threads = std::env::var("BENCH_WORKER_THREADS").ok().and_then(|v| v.parse().ok());
    let threads = threads.unwrap_or_else(wasmnode::node::runtime_threads);
    let worker_threads = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap();
    let kind = WorkerConfig::new("counter", counter);
    let workers = std::sync::Arc::new(WorkerRuntime::load(&engine, &[kind], worker_threads.handle().clone()).expect("load the counter"));
    // Measure from a task on that runtime, where workers call and start each other.
    let out = worker_threads
        .spawn(async move {
            let (tx, rx) = mpsc::unbounded_channel();
            let dist = Dist::new(DistConfig::new("bench@127.0.36.1", COOKIE.as_bytes().to_vec()), tx);
            let registry = Registry::start(Membership::start(dist, rx, false), workers.clone());
            let rss = || {
                let status = std::fs::read_to_string("/proc/self/status").unwrap();
                status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse::<f64>().unwrap() * 1024.0
            };
            // Warm up (first instantiation touches shared code pages), then time each spawn.
            for i in 0..100 {
                registry.start_local("counter", &format!("w{i}"), Vec::new()).await.unwrap();
            }
            let before = rss();
            let mut samples = Vec::with_capacity(spawns);
            for i in 0..spawns {
                let t = Instant::now();
                registry.start_local("counter", &format!("s{i}"), Vec::new()).await.unwrap_or_else(|e| panic!("spawn {i}: {e}"));
                samples.push(t.elapsed());
            }
            let per_worker = (rss() - before) / spawns as f64;
            samples.sort();
            let spawn_median = percentile(&samples, 0.5);
            // Local calls through the mailbox: registry → mailbox → instance task → reply.
            let mut calls = Vec::with_capacity(100_000);
            for i in 0..110_000 {
                let t = Instant::now();
                registry.call("counter", "w0", b"value".to_vec(), Duration::from_secs(5)).await.unwrap();
                if i >= 10_000 {
                    calls.push(t.elapsed());
                }
            }
            calls.sort();
            // Churn: stop an instance, start another; the new one can take the slot (memory,
            // stack) the old one freed. Only the start is timed.
            let mut churn = Vec::with_capacity(spawns);
            for i in 0..spawns + 100 {
                assert!(registry.stop_local("counter", &format!("c{}", i.wrapping_sub(1)), "churn").await || i == 0);
                let t = Instant::now();
                registry.start_local("counter", &format!("c{i}"), Vec::new()).await.unwrap_or_else(|e| panic!("churn spawn {i}: {e}"));
                if i >= 100 {
                    churn.push(t.elapsed());
                }
            }
            churn.sort();
            // The parts of a spawn that are wasmtime's alone, each timed apart, in a slot freed
            // just before (as in the churn): a store with its WASI context, the component's
            // instantiation, and `init`. What a spawn after stop takes beyond their sum is the
            // registry's and the mailbox task's.
            let mut parts: [Vec<Duration>; 3] = Default::default();
            for i in 0..spawns + 100 {
                let p = workers.time_spawn_parts(&registry, "counter").await.unwrap_or_else(|e| panic!("spawn parts {i}: {e}"));
                if i >= 100 {
                    for (v, d) in parts.iter_mut().zip(p) {
                        v.push(d);
                    }
                }
            }
            for v in &mut parts {
                v.sort();
            }
            // Many idle workers: spawn up to `idle` in all, and report the process's RSS.
            let t = Instant::now();
            let mut started = 100 + spawns;
            let mut failure = None;
            while started < idle {
                if let Err(e) = registry.start_local("counter", &format!("i{started}"), Vec::new()).await {
                    failure = Some(e.to_string());
                    break;
                }
                started += 1;
            }
            let idle_secs = t.elapsed().as_secs_f64();
            json!({
                "worker_spawn_median_us": spawn_median,
                "worker_spawn_p99_us": percentile(&samples, 0.99),
                "worker_spawn_after_stop_median_us": percentile(&churn, 0.5),
                "worker_spawn_after_stop_p99_us": percentile(&churn, 0.99),
                "worker_spawn_part_store_median_us": percentile(&parts[0], 0.5),
                "worker_spawn_part_instantiate_median_us": percentile(&parts[1], 0.5),
                "worker_spawn_part_init_median_us": percentile(&parts[2], 0.5),
                "worker_local_call_median_us": percentile(&calls, 0.5),
                "worker_local_call_p99_us": percentile(&calls, 0.99),
                "worker_idle_rss_per_worker_kib": per_worker / 1024.0,
                "workers_idle_started": started,
                "workers_idle_process_rss_mib": rss() / (1 << 20) as f64,
                "workers_idle_spawn_rate_per_s": (started - 100 - spawns) as f64 / idle_secs,
                "workers_idle_failure": failure,
            })
        })
        .await
        .expect("the measuring task");
    worker_threads.shutdown_background();
    out
}

/// Spawn rate and idle memory, on demand or pooled.
pub async fn spawns(args: &Args, figure: &str) -> Value {
    // On demand, a node runs out of mappings near 9,300 instances: time 5,000 there.
    let pooled = figure == "workers-pooled";
    let (spawns, idle) = match (args.quick, pooled) {
        (true, _) => (2_000, 10_000),
        (false, false) => (5_000, 100_000),
        (false, true) => (10_000, 100_000),
    };
    workers_in_process(args, "worker_counter.wasm", spawns, idle, pooled).await
}

/// The pooled figure for a counter without WASI imports.
pub async fn nowasi(args: &Args) -> Value {
    // The same Rust counter built for wasm32-unknown-unknown: no WASI imports.
    // Pooled; its keys are the pooled figure's with `nowasi_` in front.
    let (spawns, idle) = if args.quick { (2_000, 10_000) } else { (10_000, 20_000) };
    let v = workers_in_process(args, "worker_counter_nowasi.wasm", spawns, idle, true).await;
    Value::Object(v.as_object().unwrap().iter().map(|(k, v)| (format!("nowasi_{k}"), v.clone())).collect())
}

/// A call from a worker on one node to a worker on another.
pub async fn remote(args: &Args, pinned: bool) -> Value {
    let names = ["w1@127.0.35.1".to_string(), "w2@127.0.35.2".to_string()];
    let probe = args.plugin("worker_probe.wasm");
    let base = args.static_topology(&names);
    let config_path = args.config("remote", &format!("{base}\n[worker.probe]\ncomponent = \"{}\"\n", probe.display()));
    let (n1, n2) = args.pair(&names, &config_path, pinned);
    let ctl = client("benchctl@127.0.35.9", &names[0]).await;
    let n = if args.quick { 20_000 } else { 100_000 };
    let (median, p99) = remote_call(&ctl, &names, n).await;
    drop((n1, n2));
    // This machine's floor in the same run and placement: a blocking ping-pong
    // between two processes. Targets in µs compare across machines only through it.
    let (base_median, base_p99) = baseline_rtt(pinned, n);
    json!({
        "worker_remote_call_16b_median_us": median,
        "worker_remote_call_16b_p99_us": p99,
        "worker_remote_call_samples": n,
        "remote_call_baseline_rtt_16b_median_us": base_median,
        "remote_call_baseline_rtt_16b_p99_us": base_p99,
        "remote_call_over_baseline": (median / base_median * 100.0).round() / 100.0,
    })
}

/// A durable counter's increment against a plain one's.
pub async fn durable(args: &Args, pinned: bool) -> Value {
    // A durable counter's `increment` against a plain one's, called from a probe
    // on the other node: the durable call also copies the new state to its replica
    // (the caller's node, the only other one) before it answers.
    let names = ["d1@127.0.36.1".to_string(), "d2@127.0.36.2".to_string()];
    let (probe, counter) = (args.plugin("worker_probe.wasm"), args.plugin("worker_counter.wasm"));
    let base = args.static_topology(&names);
    let kinds = format!(
        "{base}\n[worker.probe]\ncomponent = \"{}\"\n[worker.plain]\ncomponent = \"{}\"\n[worker.durable]\ncomponent = \"{}\"\ndurability = \"replicated\"\n",
        probe.display(),
        counter.display(),
        counter.display()
    );
    let config_path = args.config("durable", &kinds);
    let (n1, n2) = args.pair(&names, &config_path, pinned);
    let ctl = client("benchctl@127.0.36.9", &names[0]).await;
    let n = if args.quick { 5_000 } else { 20_000 };
    let mut out = serde_json::Map::new();
    // Alternated, two rounds each.
    for round in 0..2 {
        for kind in ["plain", "durable"] {
            let (median, p99) = call_from_probe(&ctl, &names, kind, "increment", n, 2_000).await;
            out.insert(format!("{kind}_increment_median_us_round{round}"), json!(median));
            out.insert(format!("{kind}_increment_p99_us_round{round}"), json!(p99));
        }
    }
    // Throughput: 1 and 16 probes on the first node calling as fast as they can,
    // each its own counter on the second.
    for callers in [1usize, 16] {
        for kind in ["plain", "durable"] {
            let per = n / callers.max(4);
            let rate = calls_per_second(&ctl, &names, kind, "increment", callers, per).await;
            out.insert(format!("{kind}_increment_{callers}_callers_per_s"), json!(rate));
        }
    }
    drop((n1, n2));
    Value::Object(out)
}

/// Median and p99, in µs, of `n` calls of `msg` from a probe on `names[0]` to a worker
/// of `kind` on `names[1]`, timed in the guest after `warmup` calls.
async fn call_from_probe(ctl: &Peer, names: &[String], kind: &str, msg: &str, n: usize, warmup: usize) -> (f64, f64) {
    let caller = start_on(ctl, "probe", "p", &names[0], 1).await.remove(0);
    let callee = start_on(ctl, kind, "c", &names[1], 1).await.remove(0);
    ask(ctl, json!({"op":"call","kind":"probe","key":caller,"msg":format!("bench {warmup} {kind}/{callee} {msg}"),"timeout_ms":600000})).await;
    let v = ask(ctl, json!({"op":"call","kind":"probe","key":caller,"msg":format!("bench {n} {kind}/{callee} {msg}"),"timeout_ms":600000})).await;
    let reply = v["reply"].as_str().unwrap_or_else(|| panic!("bench call failed: {v}")).to_string();
    let mut it = reply.split_whitespace().map(|x| x.parse::<f64>().unwrap() / 1000.0);
    (it.next().unwrap(), it.next().unwrap())
}

/// Median and p99, in µs, of `n` calls from a probe worker on `names[0]` to one on
/// `names[1]`, timed in the guest (both nodes run the probe kind); `ctl` is connected to
/// `names[0]`.
pub async fn remote_call(ctl: &Peer, names: &[String], n: usize) -> (f64, f64) {
    call_from_probe(ctl, names, "probe", "0123456789abcdef", n, 10_000).await
}

/// Calls per second of `callers` probes on `names[0]`, each making `per` calls of `msg`
/// to its own worker of `kind` on `names[1]`, all at once.
async fn calls_per_second(ctl: &Peer, names: &[String], kind: &str, msg: &str, callers: usize, per: usize) -> f64 {
    let probes = start_on(ctl, "probe", &format!("tp-{kind}-{callers}-"), &names[0], callers).await;
    let callees = start_on(ctl, kind, &format!("tc-{callers}-"), &names[1], callers).await;
    let run = |calls: usize| {
        futures_util::future::join_all(probes.iter().zip(&callees).map(|(p, c)| {
            let v = json!({"op": "call", "kind": "probe", "key": p, "msg": format!("bench {calls} {kind}/{c} {msg}"), "timeout_ms": 600000});
            async move {
                let v = ask(ctl, v).await;
                assert!(v["reply"].is_string(), "bench call failed: {v}");
            }
        }))
    };
    run(per / 10 + 1).await;
    let t = Instant::now();
    run(per).await;
    (callers * per) as f64 / t.elapsed().as_secs_f64()
}
