#!/usr/bin/env bash
# Builds the C notify worker into a component: OUT=path/to/worker_notify_c.wasm ./build.sh
# Needs clang (wasm32-wasi), wasi-libc and the project's `componentize` tool (./dev builds it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
work="${WORK:-$(mktemp -d)}"
componentize="${COMPONENTIZE:-componentize}"
"$componentize" bindgen-c "$root/wit/worker-outbound@0.1.0" worker "$work"
clang --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Werror -I "$work" \
  -o "$work/notify.core.wasm" "$here/notify.c" "$work/worker.c" "$work/worker_component_type.o"
"$componentize" new "$work/notify.core.wasm" "${OUT:-$here/worker_notify_c.wasm}"
