//! `wasmnode-sim`: runs the deterministic cluster simulation (`wasmnode::sim`) over many
//! seeds, or replays one with its trace. `./dev sim` builds and runs it.

use std::time::Instant;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Runs the registry's deterministic simulation: seeds in, invariants checked")]
struct Args {
    /// How many seeds to run (from --first).
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Replay this one seed (with --trace, print every event).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the replayed run's events.
    #[arg(long)]
    trace: bool,
}

fn main() {
    let args = Args::parse();
    if let Some(seed) = args.seed {
        let o = wasmnode::sim::run(seed, args.trace);
        for line in &o.trace {
            println!("{line}");
        }
        if o.violations.is_empty() {
            println!("seed {seed}: {} nodes, {} events, {} calls ({} acknowledged): every invariant holds", o.nodes, o.events, o.calls, o.acked);
            return;
        }
        print!("{}", wasmnode::sim::report(&o));
        std::process::exit(1);
    }
    let started = Instant::now();
    let (mut failing, mut events) = (0u64, 0u64);
    let step = 10_000.min(args.seeds.max(1));
    let mut done = 0;
    while done < args.seeds {
        let n = step.min(args.seeds - done);
        let (bad, ev) = wasmnode::sim::run_many(args.first + done, n);
        events += ev;
        for o in &bad {
            eprint!("{}", wasmnode::sim::report(o));
        }
        failing += bad.len() as u64;
        done += n;
        if args.seeds > step {
            eprintln!("  {done} of {} seeds, {failing} failing, {:.0} s", args.seeds, started.elapsed().as_secs_f64());
        }
    }
    println!(
        "sim: {} seeds ({}..{}), {} events in {:.1} s: {} passed, {} failed",
        args.seeds,
        args.first,
        args.first + args.seeds,
        events,
        started.elapsed().as_secs_f64(),
        args.seeds - failing,
        failing
    );
    if failing > 0 {
        std::process::exit(1);
    }
}
