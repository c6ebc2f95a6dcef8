//! `wasmnode-bench against`: the connection's figures of this tree against another
//! build's, in alternated rounds, with the ratio each figure keeps and, for one-way
//! throughput on one core, the ceiling the record layer puts on that ratio.
//!
//! Each round measures every figure in both placements with both builds, one right
//! after the other (the order swapped every round, so neither always runs on a warmer
//! machine), each in a child process of its own bench binary (`measure FIGURE
//! PLACEMENT`, which every bench since the first has). A round's two runs of a figure
//! are seconds apart, so the summary is the median of the rounds' own ratios (on a VM
//! whose neighbours come and go, a ratio of the two builds' medians mixes rounds
//! measured at different speeds), with their range beside it: a range that straddles 1
//! is noise. `./dev bench-against REV` builds REV's binaries and runs this;
//! docs/benchmarks.md has the method and the arithmetic of the ceiling.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::*;

/// The figures a comparison can take: those of the connection, which every build has.
pub const FIGURES: [&str; 3] = ["rtt", "throughput", "connect"];

/// Where a figure's two ends run: on both vCPUs, or both on CPU 0.
pub const PLACEMENTS: [&str; 2] = ["free", "pinned"];

/// Those of `all` that `only` names (all of them when it names none): the figures or
/// placements a comparison takes from `--only` and `--placement`.
pub fn chosen<const N: usize>(all: [&'static str; N], only: Option<&str>) -> Vec<&'static str> {
    all.into_iter().filter(|x| only.is_none_or(|o| o == *x)).collect()
}

/// One build: its bench binary and the `wasmnode` its nodes run.
pub struct Build {
    pub label: String,
    pub bench: PathBuf,
    pub bin: PathBuf,
}

/// Every round's figures, by placement and key, for the build before and after.
#[derive(Default)]
pub struct Rounds {
    /// (placement, key) → the value in each round, before and after.
    values: BTreeMap<(String, String), (Vec<f64>, Vec<f64>)>,
}

impl Rounds {
    /// Adds one child's figures (a JSON object of numbers) for `placement`.
    pub fn add(&mut self, placement: &str, after: bool, figures: &Value) {
        for (key, v) in figures.as_object().into_iter().flatten() {
            // A count of samples is not a figure.
            let (Some(v), false) = (v.as_f64(), key.ends_with("_samples")) else { continue };
            let slot = self.values.entry((placement.to_string(), key.clone())).or_default();
            if after { &mut slot.1 } else { &mut slot.0 }.push(v);
        }
    }

    fn median_of(&self, placement: &str, key: &str, after: bool) -> Option<f64> {
        let (b, a) = self.values.get(&(placement.to_string(), key.to_string()))?;
        median(if after { a } else { b })
    }

    /// One row per figure both builds measured, in key order within each placement.
    pub fn summary(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for ((placement, key), (before, after)) in &self.values {
            let (Some(b), Some(a)) = (median(before), median(after)) else { continue };
            // A latency or a share compares as the difference, anything else as the ratio.
            let additive = is_additive(key);
            let change = |b: f64, a: f64| if additive { a - b } else { a / b };
            let paired: Vec<f64> = before.iter().zip(after).map(|(&b, &a)| change(b, a)).collect();
            let low = paired.iter().copied().fold(f64::INFINITY, f64::min);
            let high = paired.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let change = median(&paired).unwrap_or(f64::NAN);
            rows.push(Row {
                placement: placement.clone(),
                key: key.clone(),
                before: b,
                after: a,
                change,
                range: (low, high),
                cap: self.cap(placement, key, b),
                target: target(placement, key, change, a),
            });
        }
        rows
    }

    /// On one core (`pinned`), the ratio a one-way figure keeps if the code around the
    /// cipher costs what the build before's does: that core spends 1/P a byte for the
    /// build before (P its GB/s), and the build after adds sealing and opening each byte
    /// at the rates its record layer alone reaches on that core (s, o):
    /// 1 / (1 + P (1/s + 1/o)). Free, the two ends run on two cores and no such sum
    /// holds: none.
    fn cap(&self, placement: &str, key: &str, plain: f64) -> Option<f64> {
        if placement != "pinned" || !(key.starts_with("oneway_") && key.ends_with("_gb_per_s")) {
            return None;
        }
        let seal = self.median_of(placement, "seal_64kib_gb_per_s", true)?;
        let open = self.median_of(placement, "open_64kib_gb_per_s", true)?;
        Some(record_layer_cap(plain, seal, open))
    }
}

/// The cap of [`Rounds::cap`]: plaintext at `plain` GB/s on one core, against sealing
/// at `seal` and opening at `open` GB/s on that core.
pub fn record_layer_cap(plain: f64, seal: f64, open: f64) -> f64 {
    1.0 / (1.0 + plain * (1.0 / seal + 1.0 / open))
}

/// The figure of merit of one key in one placement over the rounds.
pub struct Row {
    pub placement: String,
    pub key: String,
    pub before: f64,
    pub after: f64,
    /// The median of the rounds' after ÷ before, or after − before for a latency (µs).
    pub change: f64,
    /// The least and greatest change of any one round.
    pub range: (f64, f64),
    /// For one-way throughput pinned: the record layer's ceiling on `change`.
    pub cap: Option<f64>,
    /// Issue 15's target for this figure, and whether it holds.
    pub target: Option<(&'static str, bool)>,
}

/// The targets the encrypted connection was given against plaintext: one-way 1 KiB and
/// 64 KiB at 90 % of it, the round trip at most 3 µs more at the median pinned, and a
/// connect with its handshake within 1 ms. Judged on the row's `change` (as the table
/// shows it) and, for the connect, the build after's median.
fn target(placement: &str, key: &str, change: f64, after: f64) -> Option<(&'static str, bool)> {
    match key {
        "oneway_1kib_gb_per_s" | "oneway_64kib_gb_per_s" => Some(("≥ 0.90", change >= 0.9)),
        "rtt_16b_median_us" if placement == "pinned" => Some(("≤ +3 µs", change <= 3.0)),
        "connect_handshake_median_us" => Some(("≤ 1000 µs", after <= 1000.0)),
        _ => None,
    }
}

/// Whether a figure compares as after − before (a latency in µs, a share in percent)
/// rather than after ÷ before.
fn is_additive(key: &str) -> bool {
    key.ends_with("_us") || key.ends_with("_pct")
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 })
}

/// What a comparison measures: which figures, in which placements, how many rounds, and
/// whether with fewer samples (`--quick`).
pub struct Plan<'a> {
    pub figures: &'a [&'a str],
    pub placements: &'a [&'a str],
    pub rounds: usize,
    pub quick: bool,
}

/// Runs the plan's rounds of its figures in its placements with `before` and `after`,
/// printing a line as each measurement ends (a round of all three figures takes about
/// two minutes), then the table; writes every value and the summary to `json`.
pub fn run(before: &Build, after: &Build, plugins: &Path, plan: &Plan<'_>, json_path: &Path) {
    let &Plan { figures, placements, rounds, quick } = plan;
    let mut all = Rounds::default();
    let mut log = Vec::new();
    for round in 0..rounds {
        for figure in figures {
            for &placement in placements {
                let order = if round % 2 == 0 { [before, after] } else { [after, before] };
                for build in order {
                    let t = Instant::now();
                    let v = measure_in_child(&build.bench, &build.bin, plugins, figure, placement, quick);
                    let steal = v.get("hypervisor_steal_pct").and_then(Value::as_f64).map(|p| format!(", {p:.1} % stolen")).unwrap_or_default();
                    eprintln!("round {}/{rounds}: {figure} {placement} {} ({:.0} s{steal})", round + 1, build.label, t.elapsed().as_secs_f64());
                    all.add(placement, std::ptr::eq(build, after), &v);
                    log.push(json!({ "round": round, "figure": figure, "placement": placement, "build": build.label, "values": v }));
                }
            }
        }
    }
    let rows = all.summary();
    print_table(before, after, rounds, &rows);
    let summary: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({ "placement": r.placement, "key": r.key, "before": r.before, "after": r.after, "change": r.change,
                    "range": [r.range.0, r.range.1], "cap": r.cap, "target": r.target.map(|t| t.0), "holds": r.target.map(|t| t.1) })
        })
        .collect();
    let doc = json!({
        "machine": machine(),
        "before": { "bench": before.bench, "bin": before.bin },
        "after": { "bench": after.bench, "bin": after.bin },
        "rounds": rounds,
        "summary": summary,
        "measurements": log,
    });
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(json_path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("\nwrote {}", json_path.display());
}

fn print_table(before: &Build, after: &Build, rounds: usize, rows: &[Row]) {
    let (b, a) = (&before.label, &after.label);
    println!("\n{b} = {}\n{a} = {}", before.bin.display(), after.bin.display());
    println!("{rounds} rounds: each build's median, and the median of the rounds' own {a} ÷ {b} (a latency or a share: {a} − {b}) with their range");
    println!("\n| figure | placement | {b} | {a} | change (rounds) | cap | of cap | target |\n|---|---|---|---|---|---|---|---|");
    for r in rows {
        let change = if r.key.ends_with("_us") {
            format!("{:+.1} µs ({:+.1} … {:+.1})", r.change, r.range.0, r.range.1)
        } else if r.key.ends_with("_pct") {
            format!("{:+.1} points ({:+.1} … {:+.1})", r.change, r.range.0, r.range.1)
        } else {
            format!("{:.2} ({:.2} … {:.2})", r.change, r.range.0, r.range.1)
        };
        let (cap, of_cap) = match r.cap {
            Some(c) => (format!("{c:.2}"), format!("{:.2}", r.change / c)),
            None => (String::new(), String::new()),
        };
        let target = r.target.map(|(t, ok)| format!("{t} {}", if ok { "✔" } else { "✘" })).unwrap_or_default();
        println!("| {} | {} | {} | {} | {change} | {cap} | {of_cap} | {target} |", r.key, r.placement, value(&r.key, r.before), value(&r.key, r.after));
    }
}

/// A figure with its unit, as the bench's table prints it; a bare number (a ratio) to
/// two decimals.
fn value(key: &str, v: f64) -> String {
    let s = fmt_value(key, &json!(v));
    if s.parse::<f64>().is_ok() {
        format!("{v:.2}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(pairs: &[(&str, &str, f64, f64)]) -> Rounds {
        let mut r = Rounds::default();
        for &(placement, key, b, a) in pairs {
            r.add(placement, false, &json!({ key: b }));
            r.add(placement, true, &json!({ key: a }));
        }
        r
    }

    #[test]
    fn the_cap_is_what_one_core_has_left_after_sealing_and_opening() {
        // Plaintext at 3 GB/s; sealing and opening at 30 GB/s each add 0.2 of its cost.
        assert!((record_layer_cap(3.0, 30.0, 30.0) - 1.0 / 1.2).abs() < 1e-12);
        // A record layer infinitely fast costs nothing.
        assert_eq!(record_layer_cap(3.0, f64::INFINITY, f64::INFINITY), 1.0);
    }

    #[test]
    fn throughput_compares_as_a_ratio_with_its_cap_pinned_only() {
        let mut r = rounds(&[
            ("pinned", "oneway_64kib_gb_per_s", 3.0, 2.4),
            ("pinned", "oneway_64kib_gb_per_s", 3.2, 2.8),
            ("pinned", "oneway_64kib_gb_per_s", 2.8, 2.5),
            ("free", "oneway_64kib_gb_per_s", 5.0, 3.0),
        ]);
        r.add("pinned", true, &json!({ "seal_64kib_gb_per_s": 30.0, "open_64kib_gb_per_s": 30.0 }));
        let rows = r.summary();
        let pinned = rows.iter().find(|r| r.placement == "pinned" && r.key == "oneway_64kib_gb_per_s").unwrap();
        assert_eq!((pinned.before, pinned.after), (3.0, 2.5));
        // The median of the rounds' ratios (0.8, 0.875, 0.893), not the ratio of medians (0.833).
        assert!((pinned.change - 2.8 / 3.2).abs() < 1e-12);
        assert!((pinned.range.0 - 0.8).abs() < 1e-12 && (pinned.range.1 - 2.5 / 2.8).abs() < 1e-12);
        assert!((pinned.cap.unwrap() - 1.0 / 1.2).abs() < 1e-12);
        assert_eq!(pinned.target, Some(("≥ 0.90", false)));
        // Judged on the change the table shows, the rounds' own ratios (0.95, 0.80, 0.95
        // → 0.95), though the ratio of the medians (2.4 ÷ 3.0 = 0.80) would fail it.
        let judged =
            rounds(&[("free", "oneway_1kib_gb_per_s", 2.0, 1.9), ("free", "oneway_1kib_gb_per_s", 3.0, 2.4), ("free", "oneway_1kib_gb_per_s", 4.0, 3.8)])
                .summary();
        assert_eq!(judged[0].target, Some(("≥ 0.90", true)));
        // The first rounds again, where the record layer's rates were given.
        let free = rows.iter().find(|r| r.placement == "free").unwrap();
        assert_eq!(free.cap, None, "two cores: no sum of costs caps the ratio");
        // The record layer's own rates were measured by one build only: no row.
        assert!(rows.iter().all(|r| !r.key.starts_with("seal_")));
    }

    #[test]
    fn latency_compares_as_a_difference_against_its_target() {
        let rows = rounds(&[
            ("pinned", "rtt_16b_median_us", 8.0, 9.5),
            ("pinned", "rtt_16b_median_us", 8.4, 12.0),
            ("free", "connect_handshake_median_us", 300.0, 1200.0),
        ])
        .summary();
        let rtt = rows.iter().find(|r| r.key == "rtt_16b_median_us").unwrap();
        assert!((rtt.before - 8.2).abs() < 1e-9 && (rtt.after - 10.75).abs() < 1e-9, "the median of two is their mean");
        assert!((rtt.change - 2.55).abs() < 1e-9);
        assert!((rtt.range.0 - 1.5).abs() < 1e-9 && (rtt.range.1 - 3.6).abs() < 1e-9);
        assert_eq!(rtt.target, Some(("≤ +3 µs", true)));
        let connect = rows.iter().find(|r| r.key == "connect_handshake_median_us").unwrap();
        assert_eq!(connect.target, Some(("≤ 1000 µs", false)));
    }

    #[test]
    fn the_hypervisors_steal_compares_as_a_difference_with_no_target() {
        let rows = rounds(&[("pinned", "hypervisor_steal_pct", 1.0, 4.0), ("pinned", "hypervisor_steal_pct", 2.0, 2.5)]).summary();
        let steal = &rows[0];
        assert!((steal.change - 1.75).abs() < 1e-9, "the median of +3.0 and +0.5 points, not a ratio");
        assert_eq!((steal.range, steal.cap, steal.target), ((0.5, 3.0), None, None));
    }

    #[test]
    fn only_what_the_options_name_is_chosen() {
        assert_eq!(chosen(PLACEMENTS, Some("pinned")), ["pinned"]);
        assert_eq!(chosen(FIGURES, Some("rtt")), ["rtt"]);
        assert_eq!(chosen(PLACEMENTS, None), PLACEMENTS);
    }

    #[test]
    fn a_placement_given_is_the_only_one_measured() {
        use std::os::unix::fs::PermissionsExt;
        // Two stand-ins for a build's bench: each prints, for the placement it is asked
        // for, a figure that says which build and placement measured it.
        let dir = TempDir::new("against-placement");
        let bench = |name: &str, us: u32| {
            let path = dir.0.join(name);
            let script = format!("#!/bin/sh\n[ \"$1\" = measure ] || exit 1\ncase \"$3\" in pinned) echo '{{\"rtt_16b_median_us\": {us}}}' ;; *) echo '{{\"rtt_16b_median_us\": 1000}}' ;; esac\n");
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            Build { label: name.into(), bench: path, bin: PathBuf::from("/bin/true") }
        };
        let (before, after) = (bench("before", 20), bench("after", 22));
        let json_path = dir.0.join("against.json");
        run(&before, &after, &dir.0, &Plan { figures: &["rtt"], placements: &["pinned"], rounds: 3, quick: true }, &json_path);
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        let measured = doc["measurements"].as_array().unwrap();
        assert_eq!(measured.len(), 6, "3 rounds × 2 builds, pinned only: {measured:?}");
        assert!(measured.iter().all(|m| m["placement"] == "pinned"), "{measured:?}");
        let rows: Vec<&Value> = doc["summary"].as_array().unwrap().iter().filter(|r| r["key"] == "rtt_16b_median_us").collect();
        assert_eq!(rows.len(), 1, "one row, the pinned one: {rows:?}");
        assert_eq!((rows[0]["placement"].as_str(), rows[0]["change"].as_f64(), rows[0]["holds"].as_bool()), (Some("pinned"), Some(2.0), Some(true)));
    }
}
