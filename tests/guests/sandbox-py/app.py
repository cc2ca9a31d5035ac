"""Test fixture, not shipped: a transform that tries to reach the machine it
runs on and reports each outcome as the args of one call (fixture.report),
so host tests can assert that nothing was reachable:

    {"file": "error: ...", "env": null, "socket": "error: ...", "clock": 0.0, "random": [..]}

A Python component imports WASI (files, environment, sockets, clocks,
random): what it reaches is what the host's WASI context grants. With
{"only": "<name>"} in the body it tries that one probe alone.
"""

import encodings.idna  # noqa: F401 (socket addresses are IDNA-encoded: keep the codec in the component)
import os
import socket
import time

from passerelle_guest import Message, as_transform, call


def read_file() -> str:
    with open("/etc/passwd", "rb") as f:
        return f"read {len(f.read())} bytes"


def read_env() -> object:
    return os.environ.get("HOME") or os.environ.get("PATH")


def connect() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        s.connect(("127.0.0.1", 5672))
        return "connected"


PROBES = {
    "file": read_file,
    "env": read_env,
    "socket": connect,
    "clock": time.time,
    "random": lambda: list(os.urandom(4)),
}


def attempt(probe) -> object:
    try:
        return probe()
    except Exception as error:
        return f"error: {type(error).__name__}: {error}"


def report(msg: Message) -> list:
    only = msg.json({"only": "string?"}).get("only")
    args = {name: attempt(probe) for name, probe in PROBES.items() if only in (None, name)}
    return [call("fixture", "report", args)]


WitWorld = as_transform(report)
