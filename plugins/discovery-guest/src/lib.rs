//! Guest side of `wasmnode:discovery/strategy` for Rust strategies: the one
//! `wit_bindgen::generate!` of the world, and [`Options`] for reading the config table
//! with errors that name the key.
//!
//! A strategy crate is a `cdylib` that implements [`Guest`] and exports it:
//!
//! ```ignore
//! use discovery_guest::{Guest, Options, ConfigEntry};
//! struct Mine;
//! impl Guest for Mine {
//!     fn init(config: Vec<ConfigEntry>) -> Result<(), String> { Options::new(config, &["hosts"])?; Ok(()) }
//!     fn poll() -> Result<Vec<String>, String> { Ok(vec![]) }
//! }
//! discovery_guest::export!(Mine with_types_in discovery_guest);
//! ```

wit_bindgen::generate!({
    world: "strategy",
    path: "../../wit/discovery@0.1.0",
    pub_export_macro: true,
    generate_all,
});

pub use exports::wasmnode::discovery::discover::Guest;
pub use wasmnode::discovery::dns;
pub use wasmnode::discovery::kubernetes;
pub use wasmnode::discovery::log::{log, Level};
pub use wasmnode::discovery::types::{ConfigEntry, ConfigValue};

/// A strategy's config table, checked against the keys it knows.
pub struct Options(Vec<ConfigEntry>);

impl Options {
    /// Takes the table; a key not in `known` is an error naming it and the known ones.
    pub fn new(config: Vec<ConfigEntry>, known: &[&str]) -> Result<Options, String> {
        if let Some(bad) = config.iter().find(|e| !known.contains(&e.key.as_str())) {
            return Err(format!("unknown option `{}` (known: {})", bad.key, known.join(", ")));
        }
        Ok(Options(config))
    }

    fn get(&self, key: &str) -> Option<&ConfigValue> {
        self.0.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    /// A string option, if given.
    pub fn text(&self, key: &str) -> Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(ConfigValue::Text(s)) if s.is_empty() => Err(format!("`{key}` is empty")),
            Some(ConfigValue::Text(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("`{key}` must be a string")),
        }
    }

    /// A string option that must be given.
    pub fn required(&self, key: &str, what: &str) -> Result<String, String> {
        self.text(key)?.ok_or_else(|| format!("missing option `{key}`, {what}"))
    }

    /// A list of strings, if given.
    pub fn list(&self, key: &str) -> Result<Option<Vec<String>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(ConfigValue::TextList(l)) => Ok(Some(l.clone())),
            Some(_) => Err(format!("`{key}` must be a list of strings")),
        }
    }

    /// A boolean option with a default.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(ConfigValue::Boolean(b)) => Ok(*b),
            Some(_) => Err(format!("`{key}` must be true or false")),
        }
    }

    /// One of `choices`, or the first when not given.
    pub fn choice(&self, key: &str, choices: &[&str]) -> Result<String, String> {
        match self.text(key)? {
            None => Ok(choices[0].to_string()),
            Some(v) if choices.contains(&v.as_str()) => Ok(v),
            Some(v) => Err(format!("`{key}` is `{v}`; expected one of {}", choices.join(", "))),
        }
    }
}

/// Checks a node basename the way the host will (letters, digits, `-`, `_`, `.`).
pub fn basename(key: &str, value: String) -> Result<String, String> {
    if value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        Ok(value)
    } else {
        Err(format!("`{key}` = `{value}` is not a node basename (letters, digits, -, _, .)"))
    }
}

/// What `init` stores for `poll` to use (a `Mutex`, which costs nothing on
/// single-threaded wasm, so it can live in a `static`).
pub struct State<T>(std::sync::Mutex<Option<T>>);

impl<T: Clone> State<T> {
    pub const fn new() -> State<T> {
        State(std::sync::Mutex::new(None))
    }
    pub fn set(&self, v: T) {
        *self.0.lock().unwrap() = Some(v);
    }
    /// The value `init` stored; an error if `init` never succeeded.
    pub fn get(&self) -> Result<T, String> {
        self.0.lock().unwrap().clone().ok_or_else(|| "poll before a successful init".to_string())
    }
}
