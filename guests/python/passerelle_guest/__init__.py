"""Write Passerelle transforms in Python.

A transform is a WebAssembly component that turns one broker message into
the actions the host performs (HTTP calls to declared operations, or
publishes). This package holds the helpers every transform needs (decode the
JSON body, read the route's configuration, build calls, log) and
``as_transform``, which turns a function into the component's export::

    from dataclasses import dataclass
    from passerelle_guest import CodeTable, as_transform, call

    @dataclass
    class Account:
        Id: str
        Status__c: str

    def map_account(msg):
        account = msg.json(Account)  # bad body: a reject naming the field
        statuses = CodeTable.from_config("status_codes", {"CLIENT_ACTIVE": 70})
        status = statuses.code("Status__c", account.Status__c)
        return [call("shop", "upsertBusiness", {"crmId": account.Id, "status": status})]

    WitWorld = as_transform(map_account)

``raise reject(reason)`` for a message that can never succeed as it is (it is
dead-lettered with the reason), ``raise retry(reason)`` for a temporary
problem, and ``return []`` when there is nothing to do. Any other exception
crashes the transform: its last traceback line and place are logged at error
level, and the host puts them in the dead-letter reason.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

from componentize_py_types import Err as _Err
from wit_world.imports import host as _host
from wit_world.imports import types as _types

from . import log
from .core import Action, Call, Failure, Publish, call, decode_json, map_of, publish, reject, retry
from .core import CodeTable as _PureCodeTable
from .crash import last_words

__all__ = [
    "Action",
    "Call",
    "CodeTable",
    "Failure",
    "Message",
    "Publish",
    "as_transform",
    "call",
    "config",
    "config_json",
    "decode_json",
    "last_words",
    "log",
    "map_of",
    "publish",
    "reject",
    "retry",
]


def config(key: str) -> str | None:
    """This route's configuration value for ``key``, as configured; None when absent."""
    return _host.config(key)


def config_json(key: str, default: Any = None, schema: Any = "any") -> Any:
    """This route's configuration value for ``key``, decoded from JSON (and
    checked against ``schema``, see decode_json); ``default`` when absent. A
    value that is not JSON or does not fit is a reject naming the key."""
    text = config(key)
    return default if text is None else decode_json(f"config `{key}`", text, schema)


class CodeTable(_PureCodeTable):
    """Name <-> code tables from the route's configuration (see core.CodeTable)."""

    @classmethod
    def from_config(cls, key: str, defaults: Mapping[str, int] | None = None) -> "CodeTable":
        """Reads the table at configuration ``key``: a JSON object of names to
        integers. When the key is absent the table is ``defaults``; a configured
        table replaces the defaults whole."""
        return cls.parse(key, config(key), defaults or {})


class Message:
    """One message taken from the broker, as the transform sees it."""

    def __init__(self, raw: _types.Message):
        self.body: bytes = bytes(raw.body)
        self.content_type: str | None = raw.content_type
        self.routing_key: str = raw.routing_key
        self.headers: list[tuple[str, str]] = [(h.name, h.value) for h in raw.headers]
        self.message_id: str | None = raw.message_id
        #: 1 on first delivery; grows with every retry of the whole message.
        self.attempt: int = raw.attempt

    def json(self, schema: Any = "any") -> Any:
        """The body decoded as JSON and checked against ``schema`` (a dataclass,
        or see decode_json); a bad body is a reject whose reason names the field
        path and the problem."""
        return decode_json("body", self.body, schema)

    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def header(self, name: str) -> str | None:
        """The value of the first header with this name (names compare as given)."""
        return next((value for n, value in self.headers if n == name), None)


def as_transform(function: Callable[[Message], list]) -> type:
    """The component's export, made of ``function(msg)`` which returns a list of
    actions or raises a failure. componentize-py looks for a class named
    ``WitWorld`` in the app module::

        WitWorld = as_transform(map_account)
    """

    class WitWorld:
        def transform(self, msg: _types.Message) -> list:
            return _run(function, msg)

    WitWorld.__qualname__ = WitWorld.__name__ = "WitWorld"
    WitWorld.__doc__ = f"The transform export, running {getattr(function, '__name__', function)!s}."
    return WitWorld


def _run(function: Callable[[Message], list], raw: _types.Message) -> list:
    with _PrintToLog():
        try:
            result = function(Message(raw))
        except Failure as failure:
            raise _Err(_wit_failure(failure)) from None
        except BaseException as error:
            _crash(error)
            raise
        if isinstance(result, Failure):
            raise _Err(_wit_failure(result))
        try:
            return _wit_actions(result)
        except TypeError as error:
            _crash(error)
            raise


def _wit_failure(failure: Failure) -> Any:
    if failure.kind == "retry":
        return _types.Failure_Retry(failure.reason)
    return _types.Failure_Reject(failure.reason)


def _wit_actions(result: Any) -> list:
    if not isinstance(result, (list, tuple)):
        raise TypeError(
            f'the transform returned {_describe(result)}, not a list of actions (return [] for "nothing to do")'
        )
    actions = []
    for i, action in enumerate(result):
        if isinstance(action, Call):
            actions.append(_types.Action_Call(_types.Call(action.endpoint, action.operation, action.args)))
        elif isinstance(action, Publish):
            headers = [_types.Header(name, value) for name, value in action.headers]
            publish_ = _types.Publish(action.exchange, action.routing_key, action.body, headers)
            actions.append(_types.Action_Publish(publish_))
        elif isinstance(action, (_types.Action_Call, _types.Action_Publish)):
            actions.append(action)
        else:
            raise TypeError(f"action {i} is {_describe(action)}: build actions with call() or publish()")
    return actions


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _crash(error: BaseException) -> None:
    """The contract's last words (wit/transform.wit): log why at error level.
    The caller then lets the exception escape the export, which is what traps
    a componentize-py component (only ``Err`` is the ``failure`` variant); the
    host reports "the transform failed: crashed (...): <this line>"."""
    try:
        words = last_words(error)
    except Exception:  # describing must never hide the crash
        words = f"{type(error).__name__} (its description failed)"
    _host.log(_host.Level.ERROR, words)


class _PrintToLog:
    """``print`` writes to the host's log at info level while a message runs:
    the host keeps no stdout, so it would otherwise be lost."""

    def __enter__(self) -> None:
        self._stdout = sys.stdout
        self._pending = ""
        sys.stdout = self

    def __exit__(self, *exc: object) -> None:
        self.flush()
        sys.stdout = self._stdout

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            log.info(line)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            log.info(self._pending)
            self._pending = ""
