//! Test fixture: a discovery strategy that misbehaves on purpose, to prove the host
//! stops it, names it, and keeps its connections and its other topologies.
//!
//! `mode` (config):
//! - `error`: every poll returns an error;
//! - `trap`: every poll traps (a panic is `unreachable` in wasm);
//! - `flaky`: polls alternate between the configured `hosts` and a trap;
//! - `loop`: every poll spins forever (only the host's deadline ends it);
//! - `bomb`: every poll allocates without bound (only the memory cap ends it);
//! - `forge`: every poll writes a line break and a forged log line to stderr, then
//!   returns `hosts`;
//! - `many`: every poll returns 10,001 names (one more than a poll may list);
//! - `alias`: every poll returns 100 names of 1 MiB that are the same bytes in its
//!   memory (100 MiB to copy out of 1 MiB);
//! - `init-error`: `init` refuses the config;
//! - anything else: returns `hosts`.

use std::sync::atomic::{AtomicU64, Ordering};

use discovery_guest::{ConfigEntry, Guest, Options, State};

static MODE: State<(String, Vec<String>)> = State::new();
static POLLS: AtomicU64 = AtomicU64::new(0);

struct Broken;

impl Guest for Broken {
    fn init(config: Vec<ConfigEntry>) -> Result<(), String> {
        let o = Options::new(config, &["mode", "hosts"])?;
        let mode = o.text("mode")?.unwrap_or_default();
        if mode == "init-error" {
            return Err("refusing the config on purpose".into());
        }
        MODE.set((mode, o.list("hosts")?.unwrap_or_default()));
        Ok(())
    }

    fn poll() -> Result<Vec<String>, String> {
        let n = POLLS.fetch_add(1, Ordering::Relaxed) + 1;
        let (mode, hosts) = MODE.get()?;
        match mode.as_str() {
            "error" => Err(format!("failing on purpose (poll {n})")),
            "trap" => panic!("trapping on purpose (poll {n})"),
            "flaky" if n % 2 == 0 => panic!("trapping on purpose (poll {n})"),
            "loop" => {
                let mut x = n;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "forge" => {
                eprintln!("poll {n}\n2026-12-05T00:00:00.000000Z  INFO node forged@127.0.0.1 joined, says a strategy");
                Ok(hosts)
            }
            "alias" => {
                // One buffer, owned a hundred times over: the list handed to the host
                // points at it from each entry. (Undefined behaviour in Rust, on
                // purpose: nothing reads these strings again but the host.)
                let mut buf = std::mem::ManuallyDrop::new(vec![b'a'; 1 << 20]);
                let (ptr, len, cap) = (buf.as_mut_ptr(), buf.len(), buf.capacity());
                Ok((0..100).map(|_| unsafe { String::from_raw_parts(ptr, len, cap) }).collect())
            }
            "many" => Ok((0..=10_000).map(|i| format!("n{i}@127.0.200.1")).collect()),
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            _ => Ok(hosts),
        }
    }
}

discovery_guest::export!(Broken with_types_in discovery_guest);
