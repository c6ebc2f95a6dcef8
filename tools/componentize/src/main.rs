//! `componentize`: what a C worker's build needs beyond clang, without installing
//! wit-bindgen's and wasm-tools' command lines.
//!
//! ```text
//! componentize bindgen-c WIT_DIR WORLD OUT_DIR   # worker.h, worker.c, worker_component_type.o
//! componentize new CORE.wasm OUT.wasm            # core module (+ WASI preview1 reactor adapter) → component
//! ```
//! The adapter is the one wasmtime 48 ships (crate wasi-preview1-component-adapter-provider),
//! so the component imports exactly the WASI 0.2 interfaces the host provides. It is
//! added only when the module imports WASI preview1: a module built without WASI (a
//! Rust worker for wasm32-unknown-unknown) becomes a component that imports only the
//! worker world's own interfaces.

use std::path::Path;

use anyhow::{bail, Context, Result};
use wit_bindgen_core::wit_parser::Resolve;
use wit_bindgen_core::Files;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["bindgen-c", wit, world, out] => bindgen_c(Path::new(wit), world, Path::new(out)),
        ["new", core, out] => new_component(Path::new(core), Path::new(out)),
        _ => bail!("usage: componentize bindgen-c WIT_DIR WORLD OUT_DIR | componentize new CORE.wasm OUT.wasm"),
    }
}

fn bindgen_c(wit: &Path, world: &str, out: &Path) -> Result<()> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_dir(wit).with_context(|| format!("reading {}", wit.display()))?;
    let world = resolve.select_world(&[pkg], Some(world))?;
    let mut files = Files::default();
    wit_bindgen_c::Opts::default().build().generate(&mut resolve, world, &mut files)?;
    std::fs::create_dir_all(out)?;
    for (name, contents) in files.iter() {
        std::fs::write(out.join(name), contents).with_context(|| format!("writing {name}"))?;
    }
    Ok(())
}

fn new_component(core: &Path, out: &Path) -> Result<()> {
    let module = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)?
        .adapter(
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .encode()?;
    std::fs::write(out, component).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
