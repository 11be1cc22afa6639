"""Ctrl-C and SIGTERM stop every verb the same way: as an exception, so that `finally` blocks clean up.

SIGINT raises KeyboardInterrupt (Python's default); SIGTERM raises :class:`Terminated`, a KeyboardInterrupt, so
that the status of a run can tell "interrupted" (Ctrl-C) from "killed" (SIGTERM) while every clean-up written
for Ctrl-C also runs for SIGTERM. Some libraries wrap an exception raised inside their callbacks in another type
(the TFLite converter turns it into a TypeError): :func:`received` says whether a signal came, so the CLI still
reports an interruption, not a bug.
"""

import contextlib
import signal

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM

_received = []


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived."""


def _on_sigint(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt


def _on_sigterm(signum, frame):
    _received.append(signum)
    raise Terminated


@contextlib.contextmanager
def routed_to_exceptions():
    """Within the block SIGINT and SIGTERM raise (main thread only); the previous handlers come back after."""
    _received.clear()
    previous = signal.signal(signal.SIGINT, _on_sigint), signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def received():
    """The last signal that arrived (signal.SIGINT / SIGTERM), or None."""
    return _received[-1] if _received else None


def exit_status():
    return EXIT_TERMINATED if received() == signal.SIGTERM else EXIT_INTERRUPTED
