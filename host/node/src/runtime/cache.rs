//! The compiled-code cache: a component is compiled by Cranelift once per content and
//! engine configuration, then loaded from disk (`Component::deserialize_file`), so a
//! restart — or twenty nodes starting on one machine — does not recompile.
//!
//! The cache lives in `$WASMNODE_CACHE_DIR`, else `$XDG_CACHE_HOME/wasmnode`, else
//! `$HOME/.cache/wasmnode`; with none of these there is no cache. An entry's name is
//! the SHA-256 of the component's bytes plus wasmtime's compatibility hash of the
//! engine, so a changed plugin or a new wasmtime never loads stale code. Each entry ends
//! with the SHA-256 of its code and its name: an entry that is not what its name says
//! (corrupted, or another component's entry swapped in under this name) is compiled
//! again, never run. Entries are written to a temporary name and renamed, so concurrent
//! starts never see half a file.
//!
//! The folder is bounded: `$WASMNODE_CACHE_MAX_MB` (default [`DEFAULT_MAX_MB`]). An
//! entry's modification time is its last use (a load touches it); after each new entry,
//! the least recently used entries are removed until the folder fits.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tracing::{debug, warn};
use wasmtime::component::Component;
use wasmtime::Engine;

/// The cache folder, if the environment names one.
pub fn dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("WASMNODE_CACHE_DIR").or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("wasmnode"))).or_else(|| env("HOME").map(|d| d.join(".cache/wasmnode")))
}

/// The cache's bound when `$WASMNODE_CACHE_MAX_MB` does not set one.
pub const DEFAULT_MAX_MB: u64 = 512;

/// The cache's bound in bytes.
pub fn max_bytes() -> Result<u64, String> {
    match std::env::var("WASMNODE_CACHE_MAX_MB") {
        Err(_) => Ok(DEFAULT_MAX_MB << 20),
        Ok(v) => v.trim().parse::<u64>().map(|mb| mb << 20).map_err(|_| format!("WASMNODE_CACHE_MAX_MB={v} is not a whole number of MiB")),
    }
}

/// What `wasmnode check` says of the cache: where it is, what it holds, its bound.
pub fn describe() -> String {
    let Some(dir) = dir() else { return "compiled-code cache: none (set WASMNODE_CACHE_DIR, XDG_CACHE_HOME or HOME)".into() };
    let entries = entries(&dir);
    let used: u64 = entries.iter().map(|e| e.1).sum();
    let max = match max_bytes() {
        Ok(m) => format!("{} MiB", m >> 20),
        Err(e) => e,
    };
    format!("compiled-code cache: {} ({} entries, {:.1} MiB, at most {max})", dir.display(), entries.len(), used as f64 / (1 << 20) as f64)
}

/// The entries in `dir`: name, size, last use.
fn entries(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let Ok(read) = std::fs::read_dir(dir) else { return Vec::new() };
    read.filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
        })
        .collect()
}

/// Which of `entries` (name, size, last use) go so that the rest fit in `max` bytes:
/// the least recently used first, never `keep` (the entry just written).
fn evictions(mut entries: Vec<(PathBuf, u64, SystemTime)>, max: u64, keep: &Path) -> Vec<PathBuf> {
    let mut total: u64 = entries.iter().map(|e| e.1).sum();
    entries.sort_by_key(|e| e.2);
    let mut out = Vec::new();
    for (path, size, _) in entries {
        if total <= max {
            break;
        }
        if path != keep {
            total -= size;
            out.push(path);
        }
    }
    out
}

/// Removes the least recently used entries until the cache fits its bound.
fn trim(dir: &Path, keep: &Path) {
    let Ok(max) = max_bytes() else { return };
    for path in evictions(entries(dir), max, keep) {
        match std::fs::remove_file(&path) {
            Ok(()) => debug!("removed {} from the compiled-code cache (least recently used; bound {} MiB)", path.display(), max >> 20),
            Err(e) => debug!("cannot remove {} from the compiled-code cache: {e}", path.display()),
        }
    }
}

/// Loads the component at `path`, from the cache when it holds it, compiling (and
/// filling the cache) otherwise.
pub fn load(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    let bytes = crate::files::read_limited(path, MAX_COMPONENT).map_err(|e| wasmtime::Error::msg(format!("{} {e}", path.display())))?;
    let Some(dir) = dir() else { return Component::new(engine, &bytes) };
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut engine_hash);
    let key = format!("{:x}-{:016x}.cwasm", Sha256::digest(&bytes), engine_hash.finish());
    let entry = dir.join(&key);
    if let Ok(stored) = std::fs::read(&entry) {
        match verified(&stored, &key) {
            Some(code) => {
                // SAFETY: `code` is what `Component::serialize` wrote for this very
                // component and engine configuration: its SHA-256 with this entry's name
                // (the component's hash and the engine's) matched, so it is neither
                // corrupted nor another component's entry; wasmtime checks its header too.
                match unsafe { Component::deserialize(engine, code) } {
                    Ok(c) => {
                        // Its last use, for the bound's eviction.
                        let _ = std::fs::File::options().append(true).open(&entry).and_then(|f| f.set_modified(SystemTime::now()));
                        debug!("loaded {} from the compiled-code cache {}", path.display(), entry.display());
                        return Ok(c);
                    }
                    Err(e) => debug!("cache entry {} unusable ({e}); compiling", entry.display()),
                }
            }
            None => warn!(
                "compiled-code cache entry {} is not the code compiled from {} (corrupted, or another entry put in its place): compiling it again",
                entry.display(),
                path.display()
            ),
        }
    }
    let component = Component::new(engine, &bytes)?;
    match store(&dir, &entry, &key, &component) {
        Ok(()) => trim(&dir, &entry),
        Err(e) => debug!("cannot write the compiled-code cache {}: {e}", entry.display()),
    }
    Ok(component)
}

/// The largest component file read.
pub const MAX_COMPONENT: u64 = 256 << 20;

/// The seal at the end of an entry: SHA-256 of its code followed by its name.
fn seal(code: &[u8], key: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(code);
    h.update(key.as_bytes());
    h.finalize().into()
}

/// The code of a stored entry, if its seal matches the name it is read under.
fn verified<'a>(stored: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let (code, tag) = stored.split_at_checked(stored.len().checked_sub(32)?)?;
    (seal(code, key) == tag).then_some(code)
}

fn store(dir: &Path, entry: &Path, key: &str, component: &Component) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut code = component.serialize().map_err(std::io::Error::other)?;
    let tag = seal(&code, key);
    code.extend_from_slice(&tag);
    let tmp = entry.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, code)?;
    std::fs::rename(&tmp, entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_entries_go_first_and_never_the_new_one() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let e = |n: &str, size: u64, used: u64| (PathBuf::from(n), size, at(used));
        let all = vec![e("new", 40, 1), e("old", 30, 2), e("recent", 30, 9), e("older", 20, 3)];
        assert!(evictions(all.clone(), 120, Path::new("new")).is_empty(), "it fits");
        // 120 bytes in a 70-byte bound: `old` and `older` go (the oldest), `new` stays
        // though its time is the oldest of all.
        assert_eq!(evictions(all.clone(), 70, Path::new("new")), vec![PathBuf::from("old"), PathBuf::from("older")]);
        // A bound smaller than the new entry: everything else goes, the new one stays.
        assert_eq!(evictions(all, 10, Path::new("new")).len(), 3);
    }

    #[test]
    fn an_entry_read_under_another_name_or_changed_is_refused() {
        let code = b"compiled code of component A".to_vec();
        let mut stored = code.clone();
        stored.extend_from_slice(&seal(&code, "a-1.cwasm"));
        assert_eq!(verified(&stored, "a-1.cwasm"), Some(&code[..]));
        assert_eq!(verified(&stored, "b-1.cwasm"), None, "swapped in under B's name");
        let mut flipped = stored.clone();
        flipped[3] ^= 1;
        assert_eq!(verified(&flipped, "a-1.cwasm"), None, "corrupted");
        assert_eq!(verified(&stored[..10], "a-1.cwasm"), None, "truncated");
    }
}
