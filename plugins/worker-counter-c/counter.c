// worker-counter-c: seed 002's Counter in C, built with clang for wasm32-wasi against
// the C bindings wit-bindgen generates from wit/worker@0.1.0 (world durable-worker), then wrapped into a
// component with the WASI preview1 reactor adapter (see build.sh).
//
//   value      -> the value, as decimal text
//   increment  -> the new value (also as a cast)
//
// Ownership, as wit-bindgen's C bindings define it: arguments passed to an export are
// the export's to free; lists and strings it returns must come from malloc (the
// bindings free them after the host has copied them).

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "durable_worker.h"

static uint64_t value = 0;

static bool parse_u64(const uint8_t *p, size_t n, uint64_t *out) {
    uint64_t v = 0;
    if (n == 0 || n > 19) return false;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return false;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *out = v;
    return true;
}

static void put_number(durable_worker_list_u8_t *out, uint64_t v) {
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    out->ptr = malloc((size_t)n);
    memcpy(out->ptr, buf, (size_t)n);
    out->len = (size_t)n;
}

static bool is(const durable_worker_list_u8_t *m, const char *word) {
    size_t n = strlen(word);
    return m->len == n && memcmp(m->ptr, word, n) == 0;
}

bool exports_wasmnode_worker_handler_init(durable_worker_list_u8_t *args, durable_worker_list_u8_t *handoff, durable_worker_string_t *err) {
    bool ok = true;
    value = 0;
    if (handoff != NULL) {
        ok = parse_u64(handoff->ptr, handoff->len, &value);
        durable_worker_list_u8_free(handoff);
    } else if (args->len > 0) {
        ok = parse_u64(args->ptr, args->len, &value);
    }
    durable_worker_list_u8_free(args);
    if (!ok) durable_worker_string_dup(err, "the start value is not a decimal number");
    return ok;
}

bool exports_wasmnode_worker_handler_handle_call(durable_worker_list_u8_t *msg, durable_worker_list_u8_t *ret, durable_worker_string_t *err) {
    bool ok = true;
    if (is(msg, "value")) {
        put_number(ret, value);
    } else if (is(msg, "increment")) {
        put_number(ret, ++value);
    } else {
        durable_worker_string_dup(err, "unknown message: send `value` or `increment`");
        ok = false;
    }
    durable_worker_list_u8_free(msg);
    return ok;
}

void exports_wasmnode_worker_handler_handle_cast(durable_worker_list_u8_t *msg) {
    if (is(msg, "increment")) value++;
    durable_worker_list_u8_free(msg);
}

void exports_wasmnode_worker_handler_handle_info(exports_wasmnode_worker_handler_info_t *event) {
    exports_wasmnode_worker_handler_info_free(event);
}

bool exports_wasmnode_worker_handler_terminate(durable_worker_string_t *reason, durable_worker_list_u8_t *ret) {
    durable_worker_string_free(reason);
    put_number(ret, value);
    return true;
}

// Durable kinds: the state copied to replicas after each message, as `terminate` gives it.
void exports_wasmnode_worker_snapshot_snapshot(durable_worker_list_u8_t *ret) {
    put_number(ret, value);
}
