#!/usr/bin/env bash
# Builds the C counter into a component: OUT=path/to/worker_counter_c.wasm ./build.sh
# Needs clang (wasm32-wasi), wasi-libc and the project's `componentize` tool (./dev builds it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
work="${WORK:-$(mktemp -d)}"
componentize="${COMPONENTIZE:-componentize}"
"$componentize" bindgen-c "$root/wit/worker@0.1.0" durable-worker "$work"
clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Werror -I "$work" \
  -o "$work/counter.core.wasm" "$here/counter.c" "$work/durable_worker.c" "$work/durable_worker_component_type.o"
"$componentize" new "$work/counter.core.wasm" "${OUT:-$here/worker_counter_c.wasm}"
