"""A quiet console: native libraries' start-up chatter is kept out of what the user sees, unless ``--debug``.

TensorFlow prints its start-up lines (oneDNN, "Could not find cuda drivers", cuInit errors) from C++ straight
to file descriptor 2, before Python's logging exists and regardless of TF_CPP_MIN_LOG_LEVEL (absl writes
everything logged before ``absl::InitializeLog`` to stderr); LiteRT announces its XNNPACK delegate the same way.
Python-level redirection cannot catch them, so the few calls that print them run with the process's stdout
and stderr pointed at a temporary file, which is replayed only when the call fails.

TensorFlow-free: the camera side imports this module too.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

# Set by the CLI's --debug: everything native libraries print is shown as it comes.
_debug = False
REPLAYED_CHARACTERS = 5000


def set_debug(debug: bool) -> None:
    """--debug: show native start-up lines; otherwise keep TensorFlow's C++ log at errors and above.

    Must run before TensorFlow is imported: TF_CPP_MIN_LOG_LEVEL is read once, at import. A value the user set
    in the environment wins.
    """
    global _debug
    _debug = bool(debug)
    if not _debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def native_output_captured():
    """Run a block with fds 1 and 2 pointed at a temporary file; replay its tail to stderr if the block raises.

    Without effect under --debug (``set_debug(True)``).
    """
    if _debug:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode("utf-8", "replace")[-REPLAYED_CHARACTERS:])


def import_tensorflow_quietly():
    """``import tensorflow`` and its device discovery (where the cuInit error is printed), without their lines.

    Raises ImportError when TensorFlow is not installed (the camera-side install).
    """
    with native_output_captured():
        import tensorflow as tf

        tf.config.list_physical_devices()  # probes CUDA now, inside the capture, instead of at the first op
    return tf
