//! The instance pool, in process: the node's own registry and worker runtime on a
//! multi-threaded runtime like the node's, no network (a node alone owns every name).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use wasmnode::config::WorkerConfig;
use wasmnode::dist::{Dist, DistConfig};
use wasmnode::membership::Membership;
use wasmnode::registry::Registry;
use wasmnode::runtime::worker::WorkerRuntime;

/// In a full pool, a stop returns only once the instance's slot is back in the pool, so
/// a start right after it finds the slot free, every time. (When the stop answered first
/// and the instance's task freed the slot after, on another thread, such a start could
/// find the pool still full.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_frees_its_pool_slot_before_it_returns() {
    let counter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist/worker_counter.wasm");
    assert!(counter.is_file(), "{} is missing: build the plugins first: ./dev plugins", counter.display());
    let slots = 4;
    let engine = wasmnode::runtime::engine_with(Some(wasmnode::runtime::Pool { instances: slots, max_memory: 16 << 20 })).unwrap();
    wasmnode::runtime::spawn_epoch_ticker(engine.clone());
    let kind = WorkerConfig { memory_limit: 16 << 20, ..WorkerConfig::new("counter", counter) };
    let workers = WorkerRuntime::load(&engine, &[kind], tokio::runtime::Handle::current()).expect("load the counter");
    let (tx, rx) = mpsc::unbounded_channel();
    let dist = Dist::new(DistConfig::new("pool@127.0.0.1", b"cookie".to_vec()), tx);
    let registry = Registry::start(Membership::start(dist, rx, false), Arc::new(workers));

    let mut running = 0;
    let refusal = loop {
        match registry.start_local("counter", &format!("c{running}"), Vec::new()).await {
            Ok(_) => running += 1,
            Err(e) => break e.to_string(),
        }
        assert!(running <= slots, "a pool of {slots} took more");
    };
    assert_eq!(running, slots, "the pool refused early: {refusal}");
    assert!(refusal.contains("limit"), "{refusal}");

    let mut last = String::new();
    for i in 0..1_000 {
        assert!(registry.stop_local("counter", &format!("c{i}"), "test").await, "c{i} was not running");
        last = format!("c{}", i + slots);
        registry.start_local("counter", &last, Vec::new()).await.unwrap_or_else(|e| panic!("start of {last} right after a stop: {e}"));
    }
    let value = registry.call("counter", &last, b"increment".to_vec(), Duration::from_secs(5)).await;
    assert_eq!(value.ok().as_deref(), Some(&b"1"[..]), "the last one started answers from a fresh state");
}
