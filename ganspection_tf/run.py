"""A run folder: the files `train` writes and every other verb reads, and where the run's images are now.

Run folder (written by ``ganspection-tf train``; ``calibration.json`` and ``eval/`` by the verbs that need them)::

    config.json       every hyper-parameter, seed, data summary, package / TensorFlow versions, and why each
                      data-dependent setting has its value ("data_choices")
    splits.json       the good training images, and the validation images held out for calibration
    model.keras       the trained model (loads with safe_mode=True); refreshed at every checkpoint
    checkpoints/      tf.train checkpoints (weights, EMA, both optimizers, step) for --resume
    samples/          PNG grids: fixed-z samples, reconstructions, samples with z ×2 and ×3
    logs/             TensorBoard scalars and image grids
    history.csv       the logged losses, one row per log interval (appended to on --resume)
    status.json       running / finished / diverged / interrupted / killed / failed, with the step, the reason
                      and the pid and host of the training process (:meth:`RunFolder.read_status`)
    .ganspection-tf.json, .ganspection-tf.lock   ownership marker and the one-writer lock (ownership.py)
    calibration.json  the fitted score (``calibration.Calibration``), made from good images only
    score_choice.json how the score was chosen on good and synthetic-defect images (``synthetic_validation.py``)
    eval/             ``ganspection-tf evaluate``'s report

:class:`RunFolder` owns these names, reads and writes the JSON files (atomically, via ``artifacts``), loads the
model, and finds the training, validation and test images. ``splits.json`` records the images as the training
command saw them (relative to ITS working folder) plus the absolute category root; the images are found by file
name in the category's training folder (``<root>/train/good`` for MVTec layouts, the root itself for a plain
folder): first under the recorded root, then under a data root given now (``evaluate RUN --data NEWPATH``
after the dataset was moved). No TensorFlow here except inside :meth:`RunFolder.load_model`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np

from ganspection_tf import artifacts, ownership
from ganspection_tf.calibration import Calibration
from ganspection_tf.config import train_config_from_record
from ganspection_tf.data import mvtec
from ganspection_tf.errors import GanspectionError, first_line

CONFIG_FILE, SPLITS_FILE, STATUS_FILE, MODEL_FILE = "config.json", "splits.json", "status.json", "model.keras"
CALIBRATION_FILE, SCORE_CHOICE_FILE, HISTORY_FILE = "calibration.json", "score_choice.json", "history.csv"
CHECKPOINTS_FOLDER, SAMPLES_FOLDER, LOGS_FOLDER, EVAL_FOLDER = "checkpoints", "samples", "logs", "eval"


class RunFolder:
    """One run folder; `data_root` = where the category's images are now, when not where training found them."""

    def __init__(self, path, data_root=None):
        self.path = Path(path)
        self.data_root = None if data_root is None else Path(data_root)
        self._splits = None

    def __repr__(self):
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------ file names

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def splits_path(self) -> Path:
        return self.path / SPLITS_FILE

    @property
    def status_path(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def calibration_path(self) -> Path:
        return self.path / CALIBRATION_FILE

    @property
    def score_choice_path(self) -> Path:
        return self.path / SCORE_CHOICE_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_FOLDER

    @property
    def eval_folder(self) -> Path:
        return self.path / EVAL_FOLDER

    # ------------------------------------------------------------------------------------------ JSON files

    def read_config(self) -> dict:
        return artifacts.read_json(self.config_path, what="run config")

    def write_config(self, record: dict) -> None:
        artifacts.write_json(self.config_path, record)

    def read_train_config(self):
        """The checked training config (``config.TrainConfig``; one-line errors for a damaged or hand-edited file)."""
        return train_config_from_record(self.read_config(), self.config_path)

    def read_data_choices(self) -> dict:
        """config.json's ``"data_choices"`` (each data-dependent setting's value and reason, ``data/choices.py``);
        {} for a run of a release that did not record them."""
        record = self.read_config()
        recorded = record.get("data_choices") if isinstance(record, dict) else None
        return recorded if isinstance(recorded, dict) else {}

    @property
    def resize(self) -> str:
        """The run's resize mode (``images.resize_image``); runs from before the option existed were stretched
        (the field's default)."""
        return self.read_train_config().resize

    @property
    def exposure_level(self) -> float:
        """The run's exposure level (``images.levelled``); 0 for runs from before the setting (not levelled)."""
        return self.read_train_config().exposure_level or 0.0

    @property
    def config_hash(self) -> str:
        """The hash of the training config the model was trained with ("" for a config without one)."""
        return self.read_config().get("config_hash", "")

    def read_splits(self) -> dict:
        if self._splits is None:
            self._splits = artifacts.read_json(self.splits_path, what="split list")
        return self._splits

    def write_splits(self, splits: dict) -> None:
        artifacts.write_json(self.splits_path, splits)
        self._splits = splits

    def read_status(self) -> dict | None:
        """status.json, where a `running` status whose process is gone (kill -9, a power cut) reads `killed`."""
        path = self.status_path
        if not path.is_file():
            return None
        status = artifacts.read_json(path, what="run status")
        if not isinstance(status, dict):
            raise GanspectionError(f"{path}: run status is not a JSON object; delete it (training rewrites it)")
        if status.get("state") == "running" and status.get("host") == socket.gethostname() \
                and not ownership.process_alive(status.get("pid")):
            status = {**status, "state": "killed", "reason": f"process {status.get('pid')} is gone"}
        return status

    def write_status(self, state: str, step: int, **details) -> None:
        """status.json with this process's pid and host (a `running` status of a dead process reads `killed`)."""
        artifacts.write_json(self.status_path, {"state": state, "step": step, "pid": os.getpid(),
                                                "host": socket.gethostname(), **details})

    def read_calibration(self, log=print) -> Calibration | None:
        """The stored calibration, or None when there is none or it is invalid (with a warning: it is refitted)."""
        if not self.calibration_path.is_file():
            return None
        try:
            return Calibration.from_dict(artifacts.read_json(self.calibration_path, what="calibration"),
                                         source=str(self.calibration_path))
        except GanspectionError as error:
            log(f"warning: {error}; recomputing it")
            return None

    def write_calibration(self, calibration: Calibration) -> None:
        artifacts.write_json(self.calibration_path, calibration.to_dict())

    # ------------------------------------------------------------------------------------------ the model

    def load_model(self):
        """model.keras with safe_mode=True; a missing, broken or foreign file is a one-line error."""
        return load_model(self.model_path)

    # ------------------------------------------------------------------------------------------ images

    @property
    def category_root(self) -> Path:
        """Where the category's images are: the data root given now, else the one recorded at training."""
        return self.data_root if self.data_root is not None else Path(self.read_splits().get("root", ""))

    def training_folders(self) -> list[Path]:
        """The folders the training and validation images are looked up in, by file name, in order."""
        splits = self.read_splits()
        roots = [Path(splits.get("root", ""))] + ([self.data_root] if self.data_root is not None else [])
        return [root / "train" / mvtec.GOOD if splits.get("is_mvtec") else root for root in roots]

    def find_image(self, listed) -> Path | None:
        """A path listed in splits.json as it is now: found by name in a training folder (listed paths are
        relative to the training command's working folder, so they are not used as they are)."""
        for folder in self.training_folders():
            if (folder / Path(listed).name).is_file():
                return folder / Path(listed).name
        return None

    def validation_images(self) -> list[Path]:
        """The good images held out of training; every one must be found (calibration must use exactly them)."""
        listed = self.read_splits().get("validation") or []
        if not listed:
            raise GanspectionError(
                f"{self.splits_path}: no good validation images were held out of training (--val-fraction 0); "
                "calibration needs good images the model never saw: retrain with e.g. --val-fraction 0.15"
            )
        found = []
        for path in map(Path, listed):
            located = self.find_image(path)
            if located is None:
                raise GanspectionError(
                    f"{self.splits_path}: validation image {path} is not in {self.where_images_are()} any more; "
                    "restore the training images there, or pass --data with the category's new location "
                    "(calibration must use the images held out of training)"
                )
            found.append(located)
        return found

    def training_images(self, at_most: int | None = None) -> list[Path]:
        """The good training images still there (at most `at_most`, evenly spaced over the split); may be empty."""
        listed = self.read_splits().get("train") or []
        if at_most is not None and len(listed) > at_most:
            listed = [listed[i] for i in np.linspace(0, len(listed) - 1, at_most).astype(int)]
        return [found for found in map(self.find_image, listed) if found is not None]

    def test_category(self) -> mvtec.Category | None:
        """The category with its labelled test split, or None when the run was trained on a plain folder or the
        category is not there."""
        root = self.category_root
        if not (self.data_root is not None or self.read_splits().get("is_mvtec")) or not root.is_dir():
            return None
        return mvtec.scan_category(root)

    def where_images_are(self) -> str:
        """The training folders in words, for messages about images that are not there."""
        return " or ".join(str(folder) for folder in self.training_folders())


# A model.keras of a mixed_float16 run saved before the model counted its own steps names this optimizer class.
_LEGACY_LOSS_SCALE_OPTIMIZER = "ganspection_tf>StepCountingLossScaleOptimizer"


def load_model(path):
    """The model of a run folder, or of its ``model.keras`` file given as `path`, loaded with safe_mode=True; a
    missing, broken or foreign file is a one-line error with advice that works. Imports TensorFlow (only here)."""
    path = Path(path)
    model_file = path if path.is_file() or path.name == MODEL_FILE else path / MODEL_FILE
    if not model_file.is_file():
        raise GanspectionError(f"{model_file}: no trained model here; train one with "
                               f"'ganspection-tf train --data DATA --out {model_file.parent}'")
    import keras

    import ganspection_tf.models.bigan  # noqa: F401  registers the model's classes for deserialisation

    keras.saving.get_custom_objects()[_LEGACY_LOSS_SCALE_OPTIMIZER] = keras.optimizers.LossScaleOptimizer
    try:
        return keras.models.load_model(model_file, safe_mode=True)
    except Exception as error:  # Keras raises many types for a truncated or foreign archive.
        raise GanspectionError(f"{model_file}: {_why_unloadable(error)}; "
                               f"{_model_repair_advice(model_file.parent)}") from None


def _why_unloadable(error):
    text = " ".join(str(error).split())
    if "safe_mode" in text or "Lambda" in text:
        return ("cannot load the model: it contains code (a Lambda layer) that is not run with safe_mode, so "
                "ganspection-tf did not write it")
    return f"cannot load the model, it is truncated, damaged or from another version ({first_line(error)})"


def _model_repair_advice(run_dir):
    """Advice that works: rebuilding model.keras needs a checkpoint and the run's data."""
    import tensorflow as tf

    run = RunFolder(run_dir)
    if tf.train.latest_checkpoint(str(run.checkpoints)) and run.config_path.is_file():
        try:
            data = run.read_config()["train"]["data"]
        except (GanspectionError, KeyError, TypeError):
            data = "DATA"
        return (f"rebuild it from the last checkpoint with 'ganspection-tf train --data {data} --out {run.path} "
                "--resume'")
    return "train a new model with 'ganspection-tf train --data DATA --out NEW_RUN_DIR'"


def as_run(run) -> RunFolder:
    """A RunFolder from a RunFolder or a path."""
    return run if isinstance(run, RunFolder) else RunFolder(run)
