"""Messages: how a path or a string read from a results root is shown to a person.

The lowest layer: every stage that prints or raises about a file uses these, so none of them has
to import the file layer (``store.py``) or a stage above it for one message.
"""

from __future__ import annotations

from pathlib import Path


def short_path(path: str | Path, limit: int = 160) -> str:
    """A path for an error message: whole when short, its two ends when absurdly long."""
    text = str(path)
    return (
        text
        if len(text) <= limit
        else f"{text[: limit // 2]}...{text[-limit // 2 :]} ({len(text)} characters)"
    )


def inert(text: object) -> str:
    """``text`` safe to print on a terminal: control characters (escape sequences, carriage
    returns, newlines), bidi overrides and zero-width characters shown as ``\\x1b``-style escapes.
    Every string read from a results root (file names, hosts, log lines, errors) is printed so: it
    cannot clear the screen, move the cursor or forge lines."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the file (shortened) and the system's reason."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{short_path(exc.filename)}: {reason}" if exc.filename else reason


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` for a message about a bad value, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
