"""Logging through the host: lines go to the host's log, tagged with the
route and the transform's version. The host decides which levels it keeps.

    from passerelle_guest import log
    log.debug(f"account {account.Id} is tier {tier}")
"""

from wit_world.imports import host as _host


def trace(message: str) -> None:
    """Logs at trace level."""
    _host.log(_host.Level.TRACE, str(message))


def debug(message: str) -> None:
    """Logs at debug level."""
    _host.log(_host.Level.DEBUG, str(message))


def info(message: str) -> None:
    """Logs at info level."""
    _host.log(_host.Level.INFO, str(message))


def warn(message: str) -> None:
    """Logs at warn level."""
    _host.log(_host.Level.WARN, str(message))


def error(message: str) -> None:
    """Logs at error level (a crash's last words go here too, see wit/transform.wit)."""
    _host.log(_host.Level.ERROR, str(message))
