"""worker-counter-py: seed 002's Counter in Python, built with componentize-py.

    value      -> the value, as decimal text
    increment  -> the new value (also as a cast)

Build: componentize-py -d wit/worker@0.1.0 -w durable-worker componentize -p plugins/worker-counter-py app -o worker_counter_py.wasm
"""

from typing import Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

value = 0


def parse(data: bytes, what: str) -> int:
    try:
        return int(data.decode().strip())
    except ValueError:
        raise Err(f"{what} is not a decimal number")


class Handler(exports.Handler):
    def init(self, args: bytes, handoff_state: Optional[bytes]) -> None:
        global value
        if handoff_state is not None:
            value = parse(handoff_state, "the handed-over state")
        elif args:
            value = parse(args, "the start value")
        else:
            value = 0

    def handle_call(self, msg: bytes) -> bytes:
        global value
        if msg == b"value":
            return str(value).encode()
        if msg == b"increment":
            value += 1
            return str(value).encode()
        raise Err(f"unknown message {msg!r}: send `value` or `increment`")

    def handle_cast(self, msg: bytes) -> None:
        global value
        if msg == b"increment":
            value += 1

    def handle_info(self, event: types.Info) -> None:
        pass

    def terminate(self, reason: str) -> Optional[bytes]:
        return str(value).encode()


class Snapshot(exports.Snapshot):
    def snapshot(self) -> bytes:
        return str(value).encode()
