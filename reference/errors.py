"""Exceptions that the command line turns into one clear error line, and warnings.

A warning is one ``nanobragg: warning: ...`` line on stderr.  Each topic is
warned about once per run: :func:`reset_warnings` starts a run afresh (the
command line calls it), :func:`warned` says whether a topic already has its
line.
"""

from __future__ import annotations

import sys


class InputError(Exception):
    """Bad user input: a missing or malformed file, a bad number, an impossible request."""


_warned: set = set()


def warn(text: str, topic: str | None = None) -> None:
    """Print ``nanobragg: warning: text`` on stderr, unless ``topic`` already has its line."""
    key = topic if topic is not None else text
    if key in _warned:
        return
    _warned.add(key)
    print(f"nanobragg: warning: {text}", file=sys.stderr)


def warned(topic: str) -> bool:
    """True when a warning on ``topic`` was printed in this run."""
    return topic in _warned


def reset_warnings() -> None:
    """Forget earlier warnings (a new run starts)."""
    _warned.clear()


def warned_about(prefix: str) -> bool:
    """True when a warning on a topic starting with ``prefix`` was printed in this run."""
    return any(topic.startswith(prefix) for topic in _warned)
