"""Ctrl-C and SIGTERM stop every verb the same way: as an exception, so that `finally` blocks clean up.

SIGINT raises KeyboardInterrupt (Python's default); SIGTERM raises :class:`Terminated`, a KeyboardInterrupt, so
that the status of a run can tell "interrupted" (Ctrl-C) from "killed" (SIGTERM) while every clean-up written
for Ctrl-C also runs for SIGTERM. Some libraries wrap an exception raised inside their callbacks in another type
(the TFLite converter turns it into a TypeError; numpy, a TypeError of its own): :func:`signal_behind` says
which signal such an error stands for, so the CLI and the run's status still report an interruption, not a bug.

Python cannot raise an exception out of a ``__del__`` method or a garbage-collector callback: when a signal
arrives while one runs (TensorFlow frees objects in them all through training), the KeyboardInterrupt goes to
``sys.unraisablehook``, which prints it and carries on. Within :func:`routed_to_exceptions` our hook keeps it
instead, and :func:`raise_lost` raises it at the next safe point (the end of a training step, the next frame,
the end of the command).

A signal always ends the process: clean-up that is still running :data:`CLEANUP_SECONDS` after it (a deadlock
in a library the exception unwound through) prints every thread's stack and exits, so a stopped run is never a
process that lives on (its status then reads "killed" at the next start: ``training._correct_stale_status``).
"""

import contextlib
import faulthandler
import signal
import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
CLEANUP_SECONDS = 30  # a stopped training run writes its status and releases its lock in well under 10 s

_received = []
_lost = []
_exit_if_stuck = [False]


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived."""


def _on_sigint(signum, frame):
    _note(signum)
    raise KeyboardInterrupt


def _on_sigterm(signum, frame):
    _note(signum)
    raise Terminated


def _note(signum):
    _received.append(signum)
    if _exit_if_stuck[0]:
        faulthandler.dump_traceback_later(CLEANUP_SECONDS, exit=True, file=sys.stderr)


def _keep_lost_interrupts(previous_hook):
    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and _received:
            _lost.append(type(unraisable.exc_value))
        else:
            previous_hook(unraisable)
    return hook


@contextlib.contextmanager
def routed_to_exceptions(exit_if_stuck=False):
    """Within the block SIGINT and SIGTERM raise (main thread only); the previous handlers come back after.

    `exit_if_stuck`: the block is the whole process (the console command), so a signal also arms the exit
    :data:`CLEANUP_SECONDS` later, which stays armed through the interpreter's own shutdown; otherwise (a caller
    in the same process, such as a notebook) it is never armed.
    """
    _received.clear()
    _lost.clear()
    _exit_if_stuck[0] = exit_if_stuck
    previous = signal.signal(signal.SIGINT, _on_sigint), signal.signal(signal.SIGTERM, _on_sigterm)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _keep_lost_interrupts(previous_hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
        sys.unraisablehook = previous_hook
        _exit_if_stuck[0] = False


def raise_lost():
    """Raise the KeyboardInterrupt (or Terminated) of a signal that landed where Python could not raise it."""
    if _lost:
        kind = _lost[-1]
        _lost.clear()
        raise kind()


def received():
    """The last signal that arrived (signal.SIGINT / SIGTERM), or None."""
    return _received[-1] if _received else None


def signal_behind(error):
    """SIGINT or SIGTERM if `error` is, or stands for, a signal's exception (a library may have replaced it with
    its own error, as numpy does in ``np.array(variable)``); None for an error of its own."""
    if isinstance(error, Terminated):
        return signal.SIGTERM
    if isinstance(error, KeyboardInterrupt):
        return signal.SIGINT
    return received()


def exit_status():
    return EXIT_TERMINATED if received() == signal.SIGTERM else EXIT_INTERRUPTED
