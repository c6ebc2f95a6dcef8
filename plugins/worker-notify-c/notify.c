// worker-notify-c: a worker that reaches the world. Each call POSTs its message to the
// URL in its kind's configuration (`webhook`, through wasi:config/store) with
// wasi:http's outgoing-handler and replies the answer's status as text. Built with
// clang against the C bindings of wit/worker-outbound@0.1.0 (world `worker`), then
// made a component with the WASI preview1 reactor adapter (see build.sh).
//
// Ownership, as wit-bindgen's C bindings define it: an export's arguments are the
// export's to free, and what it returns must come from malloc; an import's arguments
// stay the caller's, except `own` handles, which the import consumes.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker.h"

// "http://host:port/path" → scheme, authority ("host:port") and path ("/path").
static bool split_url(const char *url, wasi_http_types_scheme_t *scheme, char *authority, size_t cap, const char **path) {
    const char *rest;
    if (strncmp(url, "http://", 7) == 0) { scheme->tag = WASI_HTTP_TYPES_SCHEME_HTTP; rest = url + 7; }
    else if (strncmp(url, "https://", 8) == 0) { scheme->tag = WASI_HTTP_TYPES_SCHEME_HTTPS; rest = url + 8; }
    else return false;
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    if (n == 0 || n >= cap) return false;
    memcpy(authority, rest, n);
    authority[n] = 0;
    *path = slash ? slash : "/";
    return true;
}

// wasi:http's error-code cases, in the WIT's order (the tag is the index).
static const char *const ERROR_CODES[] = {
    "DnsTimeout", "DnsError", "DestinationNotFound", "DestinationUnavailable", "DestinationIpProhibited",
    "DestinationIpUnroutable", "ConnectionRefused", "ConnectionTerminated", "ConnectionTimeout",
    "ConnectionReadTimeout", "ConnectionWriteTimeout", "ConnectionLimitReached", "TlsProtocolError",
    "TlsCertificateError", "TlsAlertReceived", "HttpRequestDenied", "HttpRequestLengthRequired",
    "HttpRequestBodySize", "HttpRequestMethodInvalid", "HttpRequestUriInvalid", "HttpRequestUriTooLong",
    "HttpRequestHeaderSectionSize", "HttpRequestHeaderSize", "HttpRequestTrailerSectionSize",
    "HttpRequestTrailerSize", "HttpResponseIncomplete", "HttpResponseHeaderSectionSize",
    "HttpResponseHeaderSize", "HttpResponseBodySize", "HttpResponseTrailerSectionSize",
    "HttpResponseTrailerSize", "HttpResponseTransferCoding", "HttpResponseContentCoding",
    "HttpResponseTimeout", "HttpUpgradeFailed", "HttpProtocolError", "LoopDetected", "ConfigurationError",
    "InternalError",
};

static void describe(wasi_http_types_error_code_t *error, char *why, size_t why_cap) {
    size_t n = sizeof ERROR_CODES / sizeof ERROR_CODES[0];
    if (error->tag < n) snprintf(why, why_cap, "%s", ERROR_CODES[error->tag]);
    else snprintf(why, why_cap, "error-code %d", error->tag);
    wasi_http_types_error_code_free(error);
}

// POSTs body to url; the status, or false with `why` set.
static bool post(const char *url, uint8_t *body, size_t len, uint16_t *status, char *why, size_t why_cap) {
    wasi_http_types_scheme_t scheme = {0};
    char authority[256];
    const char *path;
    if (!split_url(url, &scheme, authority, sizeof authority, &path)) {
        snprintf(why, why_cap, "not an http(s) URL: %s", url);
        return false;
    }

    // With its length, the body goes in one piece rather than chunked.
    char length[24];
    snprintf(length, sizeof length, "%zu", len);
    wasi_http_types_tuple2_field_name_field_value_t header;
    worker_string_set(&header.f0, "content-length");
    header.f1 = (wasi_http_types_field_value_t){(uint8_t *)length, strlen(length)};
    wasi_http_types_list_tuple2_field_name_field_value_t headers = {&header, 1};
    wasi_http_types_own_fields_t fields;
    wasi_http_types_header_error_t header_error;
    if (!wasi_http_types_static_fields_from_list(&headers, &fields, &header_error)) {
        snprintf(why, why_cap, "bad header");
        return false;
    }

    wasi_http_types_own_outgoing_request_t request = wasi_http_types_constructor_outgoing_request(fields);
    wasi_http_types_borrow_outgoing_request_t req = wasi_http_types_borrow_outgoing_request(request);
    wasi_http_types_method_t method = {.tag = WASI_HTTP_TYPES_METHOD_POST};
    worker_string_t auth, path_s;
    worker_string_set(&auth, authority);
    worker_string_set(&path_s, path);
    wasi_http_types_method_outgoing_request_set_method(req, &method);
    wasi_http_types_method_outgoing_request_set_scheme(req, &scheme);
    wasi_http_types_method_outgoing_request_set_authority(req, &auth);
    wasi_http_types_method_outgoing_request_set_path_with_query(req, &path_s);

    wasi_http_types_own_outgoing_body_t out;
    wasi_http_types_own_output_stream_t stream;
    wasi_http_types_method_outgoing_request_body(req, &out);
    wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(out), &stream);
    worker_list_u8_t contents = {body, len};
    wasi_io_streams_stream_error_t write_error;
    bool written = wasi_io_streams_method_output_stream_blocking_write_and_flush(
        wasi_io_streams_borrow_output_stream(stream), &contents, &write_error);
    wasi_io_streams_output_stream_drop_own(stream);
    wasi_http_types_error_code_t error;
    if (!written || !wasi_http_types_static_outgoing_body_finish(out, NULL, &error)) {
        wasi_http_types_outgoing_request_drop_own(request);
        snprintf(why, why_cap, "writing the body failed");
        return false;
    }

    wasi_http_outgoing_handler_own_future_incoming_response_t future;
    if (!wasi_http_outgoing_handler_handle(request, NULL, &future, &error)) {
        describe(&error, why, why_cap);
        return false;
    }
    wasi_http_types_borrow_future_incoming_response_t f = wasi_http_types_borrow_future_incoming_response(future);
    wasi_io_poll_own_pollable_t ready = wasi_http_types_method_future_incoming_response_subscribe(f);
    wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(ready));
    wasi_io_poll_pollable_drop_own(ready);

    wasi_http_types_result_result_own_incoming_response_error_code_void_t answer;
    bool ok = false;
    if (!wasi_http_types_method_future_incoming_response_get(f, &answer) || answer.is_err) {
        snprintf(why, why_cap, "no response");
    } else if (answer.val.ok.is_err) {
        // A host the kind is not granted ends here at once, nothing dialled: HttpRequestDenied.
        describe(&answer.val.ok.val.err, why, why_cap);
    } else {
        wasi_http_types_own_incoming_response_t response = answer.val.ok.val.ok;
        *status = wasi_http_types_method_incoming_response_status(wasi_http_types_borrow_incoming_response(response));
        wasi_http_types_incoming_response_drop_own(response);
        ok = true;
    }
    wasi_http_types_future_incoming_response_drop_own(future);
    return ok;
}

bool exports_wasmnode_worker_handler_handle_call(worker_list_u8_t *msg, worker_list_u8_t *ret, worker_string_t *err) {
    // [worker.KIND.config] webhook = "http://…"
    worker_string_t key;
    worker_string_set(&key, "webhook");
    worker_option_string_t webhook;
    wasi_config_store_error_t config_error;
    char why[512];
    uint16_t status = 0;
    bool ok = false;
    if (!wasi_config_store_get(&key, &webhook, &config_error)) {
        wasi_config_store_error_free(&config_error);
        snprintf(why, sizeof why, "reading the config failed");
    } else if (!webhook.is_some) {
        snprintf(why, sizeof why, "no webhook in this kind's config");
    } else {
        char url[1024];
        snprintf(url, sizeof url, "%.*s", (int)webhook.val.len, (const char *)webhook.val.ptr);
        worker_option_string_free(&webhook);
        char reason[400] = "";
        ok = post(url, msg->ptr, msg->len, &status, reason, sizeof reason);
        if (!ok) snprintf(why, sizeof why, "POST %s: %s", url, reason);
    }
    worker_list_u8_free(msg);
    if (!ok) {
        worker_string_dup(err, why);                // the caller gets `failed: …`
        return false;
    }
    char text[8];
    int n = snprintf(text, sizeof text, "%u", status);
    ret->ptr = malloc((size_t)n);
    memcpy(ret->ptr, text, (size_t)n);
    ret->len = (size_t)n;
    return true;
}

bool exports_wasmnode_worker_handler_init(worker_list_u8_t *args, worker_list_u8_t *handoff, worker_string_t *err) {
    worker_list_u8_free(args);
    if (handoff != NULL) worker_list_u8_free(handoff);
    return true;
}

void exports_wasmnode_worker_handler_handle_cast(worker_list_u8_t *msg) {
    worker_list_u8_free(msg);
}

void exports_wasmnode_worker_handler_handle_info(exports_wasmnode_worker_handler_info_t *event) {
    exports_wasmnode_worker_handler_info_free(event);
}

bool exports_wasmnode_worker_handler_terminate(worker_string_t *reason, worker_list_u8_t *ret) {
    worker_string_free(reason);
    return false;                                   // no state to hand on
}
