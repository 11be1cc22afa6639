"""Which output folders are ours: an ownership marker in every folder a verb creates, and one writer per run.

A verb writes only into a folder that is new, empty, or marked by this tool as holding artifacts of the same kind
(a run, a bundle, a demo). Anything else there is the user's: the folder is refused with a one-line error, and
``--overwrite`` replaces this tool's own artifacts while never touching a file it did not write. Ownership is
proven by the marker ``.ganspection-tf.json`` (its ``kind``), not by the presence of a well-known file name.

Folders of the release before markers existed are recognised by content that is ours beyond doubt (a run's
``config.json`` in our format; a bundle whose ``model.tflite`` matches the checksum in its ``metadata.json``) and
adopted: the marker is written the next time a verb writes there. No TensorFlow here (the camera side uses it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from ganspection_tf import __version__
from ganspection_tf.errors import GanspectionError

MARKER_FILE = ".ganspection-tf.json"
LOCK_FILE = ".ganspection-tf.lock"

# Every name a verb may write into a folder of each kind (besides the marker, the lock and temporary files).
ARTIFACTS = {
    "run": ("config.json", "splits.json", "status.json", "model.keras", "checkpoints", "samples", "logs",
            "history.csv", "calibration.json", "score_choice.json", "eval"),
    "bundle": ("model.tflite", "metadata.json", "parity.json"),
    "demo": ("data", "run", "bundle"),
}
KIND_NAMES = {"run": "a training run", "bundle": "an edge bundle", "demo": "a demo"}
# Temporary files of artifacts.atomic_path (".<name>.<random>.partial<suffix>") left by a kill.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[^.]+\.partial")


def read_marker(folder) -> dict | None:
    """The folder's marker, or None when it has none (or an unreadable one: then it is not proven ours)."""
    try:
        marker = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) and marker.get("kind") in ARTIFACTS else None


def write_marker(folder, kind):
    """Marks `folder` as holding this tool's artifacts of `kind` (kept when already there)."""
    from ganspection_tf import artifacts

    folder = Path(folder)
    if (read_marker(folder) or {}).get("kind") == kind:
        return
    artifacts.write_json(folder / MARKER_FILE, {
        "kind": kind, "written_by": "ganspection-tf", "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })


def folder_kind(folder) -> str | None:
    """"run" / "bundle" / "demo" when the folder is provably ours (marker, or a pre-marker release), else None."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is not None:
        return marker["kind"]
    if _is_legacy_run(folder):
        return "run"
    if _is_legacy_bundle(folder):
        return "bundle"
    return None


def foreign_entries(folder, kind) -> list[str]:
    """Names in `folder` that are not this tool's artifacts of `kind` (all of them when the folder is not ours)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    ours = folder_kind(folder) == kind
    own_names = set(ARTIFACTS[kind]) | {MARKER_FILE, LOCK_FILE}
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name == LOCK_FILE and kind == "run":
            continue  # an empty lock file is harmless, and another process may hold it right now
        temporary = _TEMPORARY.match(entry.name)
        name = temporary.group("name") if temporary else entry.name
        if not (ours and (name in own_names or name.startswith(".write-test."))):
            foreign.append(entry.name)
    return foreign


def claim_folder(folder, kind, overwrite=False, option="--out", reuse=False, existing_hint=None) -> Path:
    """Makes `folder` ours for writing artifacts of `kind` and returns it.

    New or empty: created and marked. Ours and of this kind: with `reuse` (e.g. --resume) kept as it is;
    otherwise our earlier artifacts are removed when `overwrite`, else refused. Holding anything else: refused,
    unless `overwrite`, in which case the foreign entries are left untouched — but never when one of them has
    the name of an artifact we are about to write.
    """
    folder = Path(folder)
    refuse_foreign(folder, kind, overwrite, option)
    ours = folder.is_dir() and folder_kind(folder) == kind
    if ours and not reuse:
        if not overwrite and has_artifacts(folder, kind):
            hint = existing_hint or "pass --overwrite to replace it (files ganspection-tf did not write are kept)"
            raise GanspectionError(f"{option} {folder}: already holds {KIND_NAMES[kind]}; {hint}, or choose "
                                   f"another {option}")
        remove_artifacts(folder, kind)
    from ganspection_tf import artifacts

    artifacts.ensure_writable_folder(folder, option=option)
    write_marker(folder, kind)
    return folder


def refuse_foreign(folder, kind, overwrite=False, option="--out"):
    """Raises unless `folder` is absent, empty, or ours of `kind` — or holds foreign files and `overwrite`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise GanspectionError(f"{option} {folder}: exists and is not a folder; choose a folder path")
    foreign = foreign_entries(folder, kind)
    if foreign:
        _refuse_foreign(folder, kind, foreign, overwrite, option)


def refuse_replacing(path, kind):
    """Raises unless the file `path` is an artifact of `kind` in a folder proven ours."""
    path = Path(path)
    if folder_kind(path.parent) != kind or path.name not in ARTIFACTS[kind]:
        raise GanspectionError(f"{path}: was not written by ganspection-tf, so it is not replaced; move it away")


def has_artifacts(folder, kind) -> bool:
    return any((Path(folder) / name).exists() for name in ARTIFACTS[kind])


def remove_artifacts(folder, kind):
    """Deletes this tool's artifacts of `kind` in `folder` (only names it writes; the caller proved ownership)."""
    for name in ARTIFACTS[kind]:
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _refuse_foreign(folder, kind, foreign, overwrite, option):
    listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    other = folder_kind(folder)
    if other is not None and other != kind:
        raise GanspectionError(f"{option} {folder}: holds {KIND_NAMES[other]}, not {KIND_NAMES[kind]}; "
                               f"choose another {option}")
    clashing = [name for name in foreign if name in ARTIFACTS[kind] or name == MARKER_FILE]
    if clashing:
        raise GanspectionError(
            f"{option} {folder}: holds {', '.join(clashing)} that ganspection-tf did not write, so it will not "
            f"replace them (not even with --overwrite); choose another {option} or move them away")
    if not overwrite:
        raise GanspectionError(
            f"{option} {folder}: holds files ganspection-tf did not write ({listed}); choose a new or empty "
            f"{option}, or pass --overwrite to write beside them (they are never touched)")


# ------------------------------------------------------------------------------------- the previous release


def _is_legacy_run(folder: Path) -> bool:
    """A run folder written before markers: config.json in our format (train settings, hash, our version)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (isinstance(config, dict) and isinstance(config.get("train"), dict)
            and isinstance(config.get("config_hash"), str)
            and isinstance(config.get("versions"), dict) and "ganspection_tf" in config["versions"])


def _is_legacy_bundle(folder: Path) -> bool:
    """A bundle written before markers: metadata.json whose model checksum is that of the model.tflite beside it."""
    try:
        metadata = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
        model = (folder / "model.tflite").read_bytes()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(metadata, dict) and metadata.get("model_sha256") == hashlib.sha256(model).hexdigest()


# ------------------------------------------------------------------------------------- one writer per run


@contextlib.contextmanager
def exclusive_writer(folder, option="--out"):
    """Holds an OS lock (flock) on the folder's lock file for the block; a second holder is refused at once.

    The kernel releases the lock when the process exits in any way, kill -9 included, so a stale lock file
    never blocks anyone: only a live process holding it does.
    """
    import fcntl

    from ganspection_tf import artifacts

    folder = artifacts.ensure_writable_folder(folder, option=option)
    path = folder / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise GanspectionError(
                f"{option} {folder}: another ganspection-tf process (pid {holder}) is writing this run; wait for "
                f"it to finish or choose another {option}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


@contextlib.contextmanager
def sole_writer_of_run(run_dir):
    """evaluate writes calibration.json and eval/ into a run: never while another process trains or evaluates it.

    Only a folder proven to be a run is locked: anything else gets no lock file, and the verb's own check says
    what is wrong with it.
    """
    if folder_kind(run_dir) != "run":
        yield
        return
    with exclusive_writer(run_dir, option="run folder"):
        yield


def process_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    except (TypeError, ValueError, OverflowError):
        return False
    return True
