"""A worker that reaches the world: each call POSTs its message to the URL in its kind's
configuration (`webhook`) and replies the status. Built against
wit/worker-outbound@0.1.0, whose world adds wasi:http and wasi:config to the worker's:

    componentize-py -d wit/worker-outbound@0.1.0 -w worker componentize app -o notify_py.wasm
"""

from typing import Optional
from urllib.parse import urlsplit

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import outgoing_handler, store, wasmnode_worker_types
from wit_world.imports.wasi_http_types import (
    Fields, Method_Post, OutgoingBody, OutgoingRequest, Scheme_Http, Scheme_Https,
)


def post(url: str, body: bytes) -> int:
    """POSTs `body` to `url` and returns the answer's status; raises Err on failure."""
    parts = urlsplit(url)
    # With its length, the body goes in one piece rather than chunked.
    request = OutgoingRequest(Fields.from_list([("content-length", str(len(body)).encode())]))
    request.set_method(Method_Post())
    request.set_scheme(Scheme_Https() if parts.scheme == "https" else Scheme_Http())
    request.set_authority(parts.netloc)
    request.set_path_with_query(parts.path or "/")
    out = request.body()
    with out.write() as stream:
        stream.blocking_write_and_flush(body)
    OutgoingBody.finish(out, None)
    future = outgoing_handler.handle(request, None)
    with future.subscribe() as ready:
        ready.block()
    answer = future.get()
    if answer is None or isinstance(answer, Err):
        raise Err("no response")
    # A host the kind is not granted ends here at once, nothing dialled:
    # Err(ErrorCode_HttpRequestDenied()).
    if isinstance(answer.value, Err):
        raise Err(f"{type(answer.value.value).__name__.removeprefix('ErrorCode_')}")
    with answer.value.value as response:
        return response.status()


class Handler(exports.Handler):
    def init(self, args: bytes, handoff_state: Optional[bytes]) -> None:
        pass

    def handle_call(self, msg: bytes) -> bytes:
        webhook = store.get("webhook")            # [worker.KIND.config] webhook = "http://…"
        if not webhook:
            raise Err("no webhook in this kind's config")
        try:
            return str(post(webhook, msg)).encode()
        except Err as e:                           # the caller gets `failed: …`
            raise Err(f"POST {webhook}: {e.value}")

    def handle_cast(self, msg: bytes) -> None:
        pass

    def handle_info(self, event: wasmnode_worker_types.Info) -> None:
        pass

    def terminate(self, reason: str) -> Optional[bytes]:
        return None
