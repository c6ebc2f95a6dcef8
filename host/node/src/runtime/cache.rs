//! The compiled-code cache: a component is compiled by Cranelift once per content and
//! engine configuration, then loaded from disk (`Component::deserialize_file`), so a
//! restart — or twenty nodes starting on one machine — does not recompile.
//!
//! The cache lives in `$WASMNODE_CACHE_DIR`, else `$XDG_CACHE_HOME/wasmnode`, else
//! `$HOME/.cache/wasmnode`; with none of these there is no cache. An entry's name is
//! the SHA-256 of the component's bytes plus wasmtime's compatibility hash of the
//! engine, so a changed plugin or a new wasmtime never loads stale code. Entries are
//! written to a temporary name and renamed, so concurrent starts never see half a file.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::debug;
use wasmtime::component::Component;
use wasmtime::Engine;

/// The cache folder, if the environment names one.
pub fn dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("WASMNODE_CACHE_DIR").or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("wasmnode"))).or_else(|| env("HOME").map(|d| d.join(".cache/wasmnode")))
}

/// Loads the component at `path`, from the cache when it holds it, compiling (and
/// filling the cache) otherwise.
pub fn load(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    let bytes = std::fs::read(path).map_err(|e| wasmtime::Error::msg(format!("cannot read: {e}")))?;
    let Some(dir) = dir() else { return Component::new(engine, &bytes) };
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut engine_hash);
    let key = format!("{:x}-{:016x}.cwasm", Sha256::digest(&bytes), engine_hash.finish());
    let entry = dir.join(key);
    if entry.is_file() {
        // SAFETY: the file was written by `Component::serialize` of this same wasmtime
        // build and engine configuration (both are in its name), into the user's own
        // cache folder; wasmtime checks the header again before using it.
        match unsafe { Component::deserialize_file(engine, &entry) } {
            Ok(c) => {
                debug!("loaded {} from the compiled-code cache {}", path.display(), entry.display());
                return Ok(c);
            }
            Err(e) => debug!("cache entry {} unusable ({e}); compiling", entry.display()),
        }
    }
    let component = Component::new(engine, &bytes)?;
    if let Err(e) = store(&dir, &entry, &component) {
        debug!("cannot write the compiled-code cache {}: {e}", entry.display());
    }
    Ok(component)
}

fn store(dir: &Path, entry: &Path, component: &Component) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let code = component.serialize().map_err(std::io::Error::other)?;
    let tmp = entry.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, code)?;
    std::fs::rename(&tmp, entry)
}
