"""Atomic writes: every artifact is written to a temporary file in its folder and renamed over the target.

A crash, a kill or a full disk therefore leaves the previous file or none, never half of one. No TensorFlow here
(the camera side uses it too); Keras models are saved through :func:`atomic_path`.
"""

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path

from ganspection_tf.errors import GanspectionError


def _default_file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_DEFAULT_FILE_MODE = _default_file_mode()


@contextlib.contextmanager
def atomic_path(target, suffix=None):
    """Yields a temporary path beside `target`; renames it over `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else target.suffix
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".partial{suffix}", dir=target.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        if temporary.is_file():
            os.chmod(temporary, _DEFAULT_FILE_MODE)  # mkstemp makes files owner-only; artifacts are shared
        os.replace(temporary, target)
    except OSError as error:
        raise _disk_error(target, error) from error
    finally:
        temporary.unlink(missing_ok=True)


def _disk_error(target, error):
    if error.errno == errno.ENOSPC:
        return GanspectionError(f"{target}: the disk is full; the previous file was kept. Free some space and retry")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return GanspectionError(f"{target}: cannot write here ({error.strerror}); choose a writable --out folder")
    return GanspectionError(f"{target}: write failed ({error.strerror or error}); the previous file was kept")


def write_bytes(target, data: bytes):
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_text(target, text: str):
    write_bytes(target, text.encode("utf-8"))


def write_json(target, payload):
    write_text(target, json_text(payload))


def json_text(payload) -> str:
    """`payload` as write_json writes it."""
    return json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"


def read_json(path, what="file"):
    """Reads JSON, turning a missing or corrupt file into a one-line error."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GanspectionError(f"{path}: {what} not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GanspectionError(f"{path}: {what} is corrupt ({error}); re-create it") from None


def write_png(target, image):
    """Writes an RGB or gray uint8 array as PNG."""
    from PIL import Image

    array = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    with atomic_path(target) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")


def ensure_writable_folder(folder, option="--out"):
    """Creates `folder` or explains, in one line, why it cannot be used."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test.", delete=True)
        probe.close()
    except FileExistsError:
        raise GanspectionError(f"{option} {folder}: exists and is not a folder; choose a folder path") from None
    except OSError as error:
        raise GanspectionError(
            f"{option} {folder}: cannot write there ({error.strerror}); choose a writable folder"
        ) from None
    return folder


def unused_path(folder, stem: str, suffix: str) -> Path:
    """folder/stem.suffix, or stem-2, stem-3 … when that name is taken: an earlier output is never replaced."""
    path, count = Path(folder) / f"{stem}{suffix}", 1
    while path.exists():
        count += 1
        path = Path(folder) / f"{stem}-{count}{suffix}"
    return path
