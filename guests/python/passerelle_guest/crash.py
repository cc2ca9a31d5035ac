"""Last words: one line saying why the transform crashed, for the host's
dead-letter reason (the guest logs it at error level just before it traps, as
wit/transform.wit asks). Like the Rust SDK's "panic: boom (at src/lib.rs:9:5)":

    KeyError: 'Name' (at transforms/t/app.py:12 in pick, transforms/t/app.py:20 in map_account)

The exception line is the last line of Python's own traceback; the places are
the innermost frames of the transform's code (the SDK's frames are the same
for every crash and are left out). componentize-py names a file by the index
of its folder on the Python path (``/0/app.py``); when the build says which
folders those were (scripts/build-transforms adds a ``_passerelle_paths``
module), the file is named from the repository root, else the prefix is
dropped.
"""

from __future__ import annotations

import os
import re
import traceback

#: How many of the transform's own frames the line shows.
FRAMES = 3

_SDK_DIR = os.path.dirname(os.path.abspath(__file__))
_PATH_ENTRY = re.compile(r"^/(\d+)/")

try:  # written by the build: the Python path's folders, in order
    from _passerelle_paths import PATHS as _PATHS
except ImportError:
    _PATHS = []
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(:|$)")


def last_words(error: BaseException) -> str:
    """``ValueError: message (at file:line in function, ...)``, plus its cause when chained."""
    words = _one(error)
    cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    if cause is not None:
        words += f"; while handling {_one(cause)}"
    return words


def _one(error: BaseException) -> str:
    lines = "".join(traceback.format_exception_only(type(error), error)).splitlines()
    # The exception's own line: after a SyntaxError's code lines, before any notes.
    head = next((line for line in lines if _EXCEPTION_LINE.match(line)), lines[-1] if lines else type(error).__name__)
    places = [
        f"{_short(frame.filename)}:{frame.lineno} in {frame.name}"
        for frame in reversed(traceback.extract_tb(error.__traceback__))
        if not _is_sdk(frame.filename)
    ][:FRAMES]
    return f"{head} (at {', '.join(places)})" if places else head


def _is_sdk(filename: str) -> bool:
    return os.path.dirname(os.path.abspath(filename)) == _SDK_DIR


def _short(filename: str) -> str:
    def folder(match: re.Match) -> str:
        index = int(match.group(1))
        return f"{_PATHS[index]}/" if index < len(_PATHS) else ""

    return _PATH_ENTRY.sub(folder, filename)
