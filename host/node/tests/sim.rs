//! The deterministic simulation over 1,500 seeds: every invariant holds on every one. A
//! failure names the seed; `./dev sim --seed N --trace` replays it. Two seeds in three
//! make the counters durable (1 or 2 replicas): 1,000 of these runs check that no
//! acknowledged increment is lost to kills within the replicas.

#[test]
fn fifteen_hundred_seeded_runs_keep_every_invariant() {
    let (failing, events) = wasmnode::sim::run_many(0, 1500);
    let report: String = failing.iter().map(wasmnode::sim::report).collect();
    assert!(failing.is_empty(), "{} of 1500 seeds failed ({events} events):\n{report}", failing.len());
    assert!(events > 1500 * 500, "the runs did almost nothing: {events} events in 1500 seeds");
}

#[test]
fn a_seed_replays_exactly() {
    let a = wasmnode::sim::run(42, true);
    let b = wasmnode::sim::run(42, true);
    assert!(!a.trace.is_empty());
    assert_eq!(a.trace, b.trace, "the same seed must give the same run");
    let c = wasmnode::sim::run(43, true);
    assert_ne!(a.trace, c.trace, "another seed, another run");
}
