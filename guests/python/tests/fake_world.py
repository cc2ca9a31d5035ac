"""Stand-ins for the modules componentize-py generates from wit/transform.wit
(wit_world, componentize_py_types), so that the SDK runs natively in tests.
Same names and shapes as the generated ones (`componentize-py bindings`)."""

import sys
import types as pytypes
from dataclasses import dataclass
from enum import Enum
from typing import List, Optional, Union


@dataclass
class Header:
    name: str
    value: str


@dataclass
class Message:
    body: bytes
    content_type: Optional[str]
    routing_key: str
    headers: List[Header]
    message_id: Optional[str]
    attempt: int


@dataclass
class Call:
    endpoint: str
    operation: str
    args: str


@dataclass
class Publish:
    exchange: str
    routing_key: str
    body: bytes
    headers: List[Header]


@dataclass
class Action_Call:
    value: Call


@dataclass
class Action_Publish:
    value: Publish


@dataclass
class Failure_Reject:
    value: str


@dataclass
class Failure_Retry:
    value: str


class Level(Enum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


@dataclass(frozen=True)
class Err(Exception):
    value: object


class Host:
    """What the fake host saw: log lines, and the config it serves."""

    def __init__(self):
        self.lines = []
        self.values = {}
        # The levels this host keeps: the tests change it (info and up by default).
        self.kept = {Level.INFO, Level.WARN, Level.ERROR}

    def log(self, level, message):
        self.lines.append((level.name.lower(), message))

    def log_enabled(self, level):
        return level in self.kept

    def config(self, key):
        return self.values.get(key)


HOST = Host()


def install():
    """Registers the fake modules (once) and returns the fake host."""
    if "wit_world" in sys.modules:
        return HOST
    types = pytypes.ModuleType("wit_world.imports.types")
    for cls in (Header, Message, Call, Publish, Action_Call, Action_Publish, Failure_Reject, Failure_Retry):
        setattr(types, cls.__name__, cls)
    types.Action = Union[Action_Call, Action_Publish]
    types.Failure = Union[Failure_Reject, Failure_Retry]
    host = pytypes.ModuleType("wit_world.imports.host")
    host.Level = Level
    host.log = lambda level, message: HOST.log(level, message)
    host.log_enabled = lambda level: HOST.log_enabled(level)
    host.config = lambda key: HOST.config(key)
    imports = pytypes.ModuleType("wit_world.imports")
    imports.types, imports.host = types, host
    world = pytypes.ModuleType("wit_world")
    world.imports = imports
    runtime_types = pytypes.ModuleType("componentize_py_types")
    runtime_types.Err = Err
    sys.modules.update(
        {
            "wit_world": world,
            "wit_world.imports": imports,
            "wit_world.imports.types": types,
            "wit_world.imports.host": host,
            "componentize_py_types": runtime_types,
        }
    )
    return HOST
