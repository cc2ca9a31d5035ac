"""Test fixture, not shipped: a transform that raises an exception when the
body is {"boom": true}, two calls deep, and otherwise returns one call
(fixture.echo with the body as args). The SDK logs the exception at error
level and lets it escape, which traps, so the host reports
    the transform failed: crashed (...): ValueError: fixture exception: boom (at app.py:... in explode, ...)
"""

from passerelle_guest import Message, as_transform, call


def explode() -> None:
    raise ValueError("fixture exception: boom")


def check(body: dict) -> None:
    if body.get("boom") is True:
        explode()


def run(msg: Message) -> list:
    body = msg.json({"boom": "boolean?"})
    check(body)
    return [call("fixture", "echo", body)]


WitWorld = as_transform(run)
