"""Writing an edge bundle: its metadata, a hidden staging folder, and the atomic rename into place.

``model.tflite`` + ``metadata.json`` (+ ``parity.json``) are written into a staging folder beside ``--out`` and
renamed into place only after the parity gate passed: never a half-written bundle. ``edge.py`` owns the format
and reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import tensorflow as tf

import ganspection_tf
from ganspection_tf import artifacts, ownership, scoring
from ganspection_tf.bundle_metadata import BundleMetadata, Preprocessing
from ganspection_tf.run import as_run
from ganspection_tf.terms import ERROR_MAP_OUTPUT


def bundle_metadata(
    run, model, scorer, calibration, score, quantize, tflite_model, scorer_weights, **details
) -> BundleMetadata:
    """The bundle's metadata; `scorer_weights` (``convert.weights_needed``) and `details` (figures for people, not
    read by the scorer) are recorded as given."""
    run = as_run(run)
    outputs = list(scorer.output)
    return BundleMetadata(
        preprocessing=Preprocessing(image_size=int(model.inspected_size), channels=int(model.channels),
                                    aspect=run.resize, exposure_level=run.exposure_level),
        score=score,
        terms=list(calibration.terms),
        outputs=outputs,
        heatmap=ERROR_MAP_OUTPUT in outputs or not calibration.heatmap_needs_error_map(),
        # The validation scores go beside the calibration, where earlier camera releases ignore them.
        calibration={key: value for key, value in calibration.to_dict().items() if key != "validation_scores"},
        threshold=calibration.threshold,
        validation_scores=calibration.validation_scores,
        quantization=quantize,
        package_version=ganspection_tf.__version__,
        config_hash=run.config_hash,
        model_sha256=hashlib.sha256(tflite_model).hexdigest(),
        details=dict(
            tensorflow_version=tf.__version__,
            model_step=scoring.model_step(model),
            run_dir=str(run.path.resolve()),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            model_bytes=len(tflite_model),
            scorer_weights=scorer_weights,
            tile_size=int(model.image_size),  # the TFLite model cuts image_size into these itself
            **details,
        ),
    )


@contextlib.contextmanager
def staging_folder(out: Path):
    artifacts.ensure_writable_folder(out.parent if str(out.parent) else Path("."))
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the published bundle is an ordinary folder
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, out: Path):
    """Rename the finished bundle into place; an earlier bundle at `out` is swapped out, then deleted.

    A folder that also holds foreign files (allowed by --overwrite, checked before) keeps them: only the
    bundle's own files are replaced there, one atomic rename each.
    """
    if ownership.foreign_entries(out, "bundle"):
        ownership.refuse_foreign(out, "bundle", overwrite=True)  # still no clash with a file the user owns
        for item in staging.iterdir():
            os.replace(item, out / item.name)
        return
    retired = None
    if out.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, retired / out.name)
    try:
        os.replace(staging, out)
    except OSError:
        if retired is not None:
            os.replace(retired / out.name, out)
        raise
    finally:
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
