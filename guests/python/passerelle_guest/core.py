"""The pure part of the SDK (no host calls, so it runs and is tested anywhere):
failures, decoding JSON against a schema, code tables, building actions.

Reasons are worded like the Rust SDK's (serde's), so that one fixtures file
fits the transforms of every language:

    body: missing field `Name`
    body: Status__c: invalid type: integer `3`, expected a string
    unknown Status__c "CLIENT_GONE": not in status_codes
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union


class Failure(Exception):
    """A message that cannot succeed as it is (``reject``) or may later (``retry``).

    Raise it (``raise reject("...")``); the SDK's own helpers raise it too,
    like ``?`` in the Rust SDK.
    """

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = str(reason)

    def __repr__(self) -> str:
        return f"{self.kind}({self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Failure) and (self.kind, self.reason) == (other.kind, other.reason)

    def __hash__(self) -> int:
        return hash((self.kind, self.reason))


def reject(reason: str) -> Failure:
    """A permanent failure: the message is dead-lettered with this reason."""
    return Failure("reject", reason)


def retry(reason: str) -> Failure:
    """A temporary failure: the whole message is tried again later."""
    return Failure("retry", reason)


# --- decoding ----------------------------------------------------------------
#
# A schema is one of:
#   "string" "number" "integer" "boolean" "object" "array" "any"   (as in the JS SDK)
#   str int float bool dict list object                              (the Python types)
#   any of those with a trailing "?", or Optional[...]: may be absent or null
#   {"field": schema, ...}   an object with at least these fields (others are kept)
#   [schema]                 an array whose items match schema
#   map_of(schema)           an object of any keys whose values match schema
#   a dataclass              an object with its fields (a field with a default may
#                            be absent); decoded into an instance of it


@dataclass(frozen=True)
class _MapOf:
    values: Any


def map_of(schema: Any) -> _MapOf:
    """A schema for an object of any keys whose values all match ``schema``."""
    return _MapOf(schema)


_EXPECTED = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean",
    "object": "a map",
    "array": "a sequence",
}
_PYTHON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


class _Mismatch(Exception):
    def __init__(self, path: list, problem: str):
        super().__init__(problem)
        self.path = path
        self.problem = problem


def decode_json(what: str, data: bytes | str, schema: Any = "any") -> Any:
    """Parses ``data`` as JSON and checks it against ``schema`` (none: any JSON).

    A problem raises a reject whose reason starts with ``what``.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as error:
            raise reject(f"{what} is not JSON: invalid UTF-8 at byte {error.start}") from None
    try:
        value = json.loads(data)
    except json.JSONDecodeError as error:
        raise reject(f"{what} is not JSON: {error}") from None
    try:
        return _convert(value, schema, [])
    except _Mismatch as mismatch:
        where = f"{_format_path(mismatch.path)}: " if mismatch.path else ""
        raise reject(f"{what}: {where}{mismatch.problem}") from None


def _format_path(path: list) -> str:
    """serde_path_to_error's way: ``owner.id``, ``items[0].id``."""
    out = ""
    for i, part in enumerate(path):
        out += f"[{part}]" if isinstance(part, int) else (part if i == 0 else f".{part}")
    return out


def _optional(schema: Any) -> tuple[bool, Any]:
    """Whether ``schema`` allows absent or null, and the schema of a present value."""
    if isinstance(schema, str) and schema.endswith("?"):
        return True, schema[:-1]
    origin = typing.get_origin(schema)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = [a for a in typing.get_args(schema) if a is not type(None)]
        if len(args) < len(typing.get_args(schema)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]
    return False, schema


def _convert(value: Any, schema: Any, path: list) -> Any:
    optional, schema = _optional(schema)
    if optional and value is None:
        return None
    if schema is Any or schema is object:
        schema = "any"
    if isinstance(schema, type) and schema in _PYTHON_TYPES:
        schema = _PYTHON_TYPES[schema]
    if isinstance(schema, str):
        if schema == "any":
            return value
        if schema not in _EXPECTED:
            raise TypeError(f"unknown schema type {schema!r}")
        if not _fits(value, schema):
            raise _Mismatch(path, _invalid_type(value, _EXPECTED[schema]))
        return value
    if isinstance(schema, list) or typing.get_origin(schema) in (list, Sequence):
        items = schema[0] if isinstance(schema, list) else (typing.get_args(schema) or ("any",))[0]
        if not isinstance(value, list):
            raise _Mismatch(path, _invalid_type(value, "a sequence"))
        return [_convert(v, items, [*path, i]) for i, v in enumerate(value)]
    if isinstance(schema, _MapOf) or typing.get_origin(schema) in (dict, Mapping):
        values = schema.values if isinstance(schema, _MapOf) else (typing.get_args(schema) or (str, "any"))[1]
        if not isinstance(value, dict):
            raise _Mismatch(path, _invalid_type(value, "a map"))
        return {k: _convert(v, values, [*path, k]) for k, v in value.items()}
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise _Mismatch(path, _invalid_type(value, "a map"))
        out = dict(value)
        for name, field_schema in schema.items():
            if name not in value:
                if not _optional(field_schema)[0]:
                    raise _Mismatch(path, f"missing field `{name}`")
                continue
            out[name] = _convert(value[name], field_schema, [*path, name])
        return out
    if dataclasses.is_dataclass(schema) and isinstance(schema, type):
        if not isinstance(value, dict):
            raise _Mismatch(path, _invalid_type(value, f"struct {schema.__name__}"))
        hints = typing.get_type_hints(schema)
        kwargs = {}
        for f in dataclasses.fields(schema):
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if f.name not in value:
                if has_default:
                    continue
                if _optional(hints[f.name])[0]:
                    kwargs[f.name] = None
                    continue
                raise _Mismatch(path, f"missing field `{f.name}`")
            kwargs[f.name] = _convert(value[f.name], hints[f.name], [*path, f.name])
        return schema(**kwargs)
    raise TypeError(f"not a schema: {schema!r}")


def _fits(value: Any, schema: str) -> bool:
    if schema == "string":
        return isinstance(value, str)
    if schema == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if schema == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if schema == "boolean":
        return isinstance(value, bool)
    if schema == "object":
        return isinstance(value, dict)
    if schema == "array":
        return isinstance(value, list)
    return False


def _invalid_type(value: Any, expected: str) -> str:
    """serde's wording: "invalid type: integer `3`, expected a string"."""
    return f"invalid type: {_unexpected(value)}, expected {expected}"


def _unexpected(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value!r}`"
    if isinstance(value, str):
        return f"string {_quoted(value)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


def _quoted(text: str) -> str:
    """A string quoted as the JS SDK (JSON.stringify) and, for plain text, Rust's {:?} quote it."""
    return json.dumps(text, ensure_ascii=False)


# --- code tables ---------------------------------------------------------------


class CodeTable:
    """Name <-> code tables read from a route's configuration, e.g. the shop's
    status codes (``{"CLIENT_ACTIVE": 70}``): mappings look names up one way,
    the reverse mappings the other way, and both reject what is not there."""

    def __init__(self, key: str, codes: Mapping[str, int]):
        """A table of names to integer codes, as if read from configuration
        ``key`` (the key is named in every reject reason)."""
        self.key = key
        self.codes = dict(codes)

    @classmethod
    def parse(cls, key: str, text: str | None, defaults: Mapping[str, int]) -> "CodeTable":
        """The table in configuration value ``text`` (a JSON object of names to
        integers); ``defaults`` when there is no such value. A configured table
        replaces the defaults whole (it is not merged with them)."""
        if text is None:
            return cls(key, defaults)
        return cls(key, decode_json(f"config `{key}`", text, map_of("integer")))

    def code(self, field: str, name: str) -> int:
        """The code of ``name``, read from message field ``field``; an unknown
        name is a reject like ``unknown Status__c "CLIENT_GONE": not in status_codes``."""
        if name not in self.codes:
            raise reject(f"unknown {field} {_quoted(name)}: not in {self.key}")
        return self.codes[name]

    def name(self, field: str, code: int) -> str:
        """The one name of ``code``, read from message field ``field``; an unknown
        code is a reject like ``unknown status 71: not in status_codes``, and so
        is a code that several names share (the reverse is ambiguous)."""
        names = sorted(n for n, c in self.codes.items() if c == code)
        if len(names) == 1:
            return names[0]
        if not names:
            raise reject(f"unknown {field} {code}: not in {self.key}")
        raise reject(f"ambiguous {field} {code}: {self.key} maps {_quoted_list(names)} to it")

    def __repr__(self) -> str:
        return f"CodeTable({self.key!r}, {self.codes!r})"


def _quoted_list(names: list[str]) -> str:
    """``"A", "B" and "C"``."""
    quoted = [_quoted(n) for n in names]
    return f"{', '.join(quoted[:-1])} and {quoted[-1]}" if len(quoted) > 1 else quoted[0]


# --- actions -------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A call to an operation declared in the host's configuration; ``args`` is a JSON object."""

    endpoint: str
    operation: str
    args: str


@dataclass(frozen=True)
class Publish:
    """A message to publish on the broker."""

    exchange: str
    routing_key: str
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


Action = Union[Call, Publish]


def call(endpoint: str, operation: str, args: Mapping[str, Any]) -> Call:
    """A call to ``operation`` of ``endpoint`` (both declared in the host's
    configuration). ``args`` must be a dict, one key per declared parameter;
    anything else is a reject."""
    what = f"call {endpoint}.{operation}"
    try:
        text = json.dumps(args, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise reject(f"{what}: {error}") from None
    if not isinstance(args, Mapping):
        raise reject(f"{what}: args must be a JSON object, not {text}")
    return Call(str(endpoint), str(operation), text)


def publish(
    exchange: str,
    routing_key: str,
    body: bytes | str | Any,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
) -> Publish:
    """A message to publish on ``exchange`` with ``routing_key``. ``body`` is
    bytes, text (sent as UTF-8) or any other value (sent as JSON). ``headers``
    is a dict of names to values, or a list of (name, value)."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        data = bytes(body)
    elif isinstance(body, str):
        data = body.encode("utf-8")
    else:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return Publish(str(exchange), str(routing_key), data, [(str(n), str(v)) for n, v in pairs])
