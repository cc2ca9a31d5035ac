"""Logging through the host: lines go to the host's log, tagged with the
route and the transform's version. The host decides which levels it keeps;
a line it would drop is not sent, and a callable given instead of a message
is not even called:

    from passerelle_guest import log
    log.debug(f"account {account.Id} is tier {tier}")
    log.debug(lambda: f"account {json.dumps(account)}")  # formatted only when kept
"""

from wit_world.imports import host as _host


def enabled(level) -> bool:
    """Whether the host keeps lines at `level` (a `host.Level`; always true for ERROR)."""
    return _host.log_enabled(level)


def _emit(level, message) -> None:
    if _host.log_enabled(level):
        _host.log(level, str(message() if callable(message) else message))


def trace(message) -> None:
    """Logs at trace level."""
    _emit(_host.Level.TRACE, message)


def debug(message) -> None:
    """Logs at debug level."""
    _emit(_host.Level.DEBUG, message)


def info(message) -> None:
    """Logs at info level."""
    _emit(_host.Level.INFO, message)


def warn(message) -> None:
    """Logs at warn level."""
    _emit(_host.Level.WARN, message)


def error(message) -> None:
    """Logs at error level (a crash's last words go here too, see wit/transform.wit)."""
    _emit(_host.Level.ERROR, message)
