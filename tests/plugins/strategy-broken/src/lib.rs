//! Test fixture: a discovery strategy that misbehaves on purpose, to prove the host
//! keeps running and keeps its connections when a plugin fails.
//!
//! `mode` (config): `error` — every poll returns an error; `trap` — every poll traps
//! (panics, which is `unreachable` in wasm); `flaky` — polls alternate between the
//! configured `hosts` and a trap; `init-error` — `init` refuses the config.

use std::cell::Cell;
use std::cell::RefCell;

wit_bindgen::generate!({
    generate_all,
    world: "strategy",
    path: "../../../wit/discovery@0.1.0",
});

use wasmnode::discovery::types::{ConfigEntry, ConfigValue};

thread_local! {
    static MODE: RefCell<String> = const { RefCell::new(String::new()) };
    static HOSTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static POLLS: Cell<u64> = const { Cell::new(0) };
}

struct Broken;

impl exports::wasmnode::discovery::discover::Guest for Broken {
    fn init(config: Vec<ConfigEntry>) -> Result<(), String> {
        for e in config {
            match (e.key.as_str(), e.value) {
                ("mode", ConfigValue::Text(m)) => MODE.with(|x| *x.borrow_mut() = m),
                ("hosts", ConfigValue::TextList(h)) => HOSTS.with(|x| *x.borrow_mut() = h),
                _ => {}
            }
        }
        if MODE.with(|m| m.borrow().as_str() == "init-error") {
            return Err("refusing the config on purpose".into());
        }
        Ok(())
    }

    fn poll() -> Result<Vec<String>, String> {
        let n = POLLS.with(|p| {
            p.set(p.get() + 1);
            p.get()
        });
        match MODE.with(|m| m.borrow().clone()).as_str() {
            "error" => Err(format!("failing on purpose (poll {n})")),
            "trap" => panic!("trapping on purpose (poll {n})"),
            "flaky" if n % 2 == 0 => panic!("trapping on purpose (poll {n})"),
            _ => Ok(HOSTS.with(|h| h.borrow().clone())),
        }
    }
}

export!(Broken);
