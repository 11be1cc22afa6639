"""`ganspection-tf train`: from a folder of good images to a run folder a person can inspect.

Run folder::

    config.json       every hyper-parameter, seed, data summary, package / TensorFlow versions
    splits.json       the good training images, and the validation images held out for calibration
    model.keras       the trained model (loads with safe_mode=True); refreshed at every checkpoint
    checkpoints/      tf.train checkpoints (weights, EMA, both optimizers, step) for --resume
    samples/          PNG grids: fixed-z samples, reconstructions, samples with z ×2 and ×3
    logs/             TensorBoard scalars and image grids
    history.csv       the logged losses, one row per log interval
    status.json       running / finished / diverged, with the step and the reason

One Keras "epoch" is one log interval of `log_every` steps, so ``--resume`` restarts ``fit`` at a whole epoch.
"""

import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import ganspection_tf
from ganspection_tf import artifacts, distribute
from ganspection_tf.callbacks import (
    CheckpointWriter,
    DivergenceGuard,
    ProgressLine,
    SampleWriter,
    SyntheticDefectValidation,
    WallClockBudget,
)
from ganspection_tf.config import TrainConfig, resolved, train_config_from_record
from ganspection_tf.data import mvtec, pipeline
from ganspection_tf.errors import GanspectionError, first_line
from ganspection_tf.models.bigan import WassersteinBiGAN

MODEL_FILE, CONFIG_FILE, SPLITS_FILE, STATUS_FILE = "model.keras", "config.json", "splits.json", "status.json"
SAMPLE_COUNT = 16


def config_hash(config_dict) -> str:
    return hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------------- entry point


# What --resume may change; everything else belongs to the run and must match what it was trained with.
RESUMABLE_FIELDS = ("steps", "learning_rate", "strategy", "devices", "keep_checkpoints", "log_every",
                    "checkpoint_every", "sample_every", "jit_compile", "max_minutes", "validate_every")


def train(config: TrainConfig, out, resume=False, verbose=1, log=print, overrides=None, extra_callbacks=None) -> Path:
    """Trains (or resumes) a run in folder `out` and returns it.

    On --resume the stored config wins; `overrides` (field → value, default: steps, strategy and devices of
    `config`) names what the user asked to change, which must be in RESUMABLE_FIELDS. `extra_callbacks` (Keras
    callbacks) run after the built-in ones, e.g. a wall-clock budget that sets ``model.stop_training``.
    `verbose`: 0 silent, 1 the progress line redrawn live (a terminal), 2 one progress line per log interval.
    """
    run_dir = Path(out)
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything, and only the chief may
    # refuse a used run folder (the other workers would see the config.json the chief has just written).
    strategy, strategy_name = distribute.make_strategy(config.strategy, config.devices)
    if overrides is None:
        overrides = {name: getattr(config, name) for name in ("steps", "strategy", "devices")}
    config = _reconcile_with_existing_run(config, run_dir, resume, overrides, chief=distribute.is_chief(strategy))
    _set_precision(config.precision)
    keras.utils.set_random_seed(config.model.seed)

    folder = distribute.writing_folder(run_dir, strategy)
    try:
        return _train_into(folder, run_dir, config, strategy, strategy_name, resume, verbose, log, extra_callbacks)
    finally:
        distribute.discard_worker_folder(folder, run_dir)


def _train_into(folder, run_dir, config, strategy, strategy_name, resume, verbose, log, extra_callbacks=None):
    """The body of `train`: this process writes into `folder` (the run folder on the chief)."""
    artifacts.ensure_writable_folder(folder)
    images, splits = _load_training_images(config, log)
    if config.model.channels is None:
        config = config.replace(channels=int(images.shape[-1]))

    jit_compile = config.jit_compile and distribute.xla_allowed(strategy_name)
    if config.jit_compile and not jit_compile:
        log(f"XLA is off under the {strategy_name} strategy: TensorFlow cannot compile the distributed step")
    with strategy.scope():
        model = build_model(config.replace(jit_compile=jit_compile))
    checkpoints = _checkpoint_manager(model, folder, config.keep_checkpoints)
    start_step = _restore(checkpoints, run_dir, resume, log)
    for optimizer in (model.d_optimizer, model.g_optimizer):
        optimizer.learning_rate = config.learning_rate  # a checkpoint restores the old rate; --resume may change it
    distribute.check_workers_agree(
        strategy, restored_step=start_step, training_images=distribute.images_checksum(images)
    )
    if start_step >= config.steps:
        log(f"{run_dir}: already trained for {start_step} steps (--steps {config.steps}); nothing to do")
        return run_dir

    global_batch = config.batch_size * strategy.num_replicas_in_sync
    if len(images) < global_batch:
        raise GanspectionError(
            f"{config.data}: {len(images)} training images but the global batch is {global_batch}; "
            "lower --batch-size or add images"
        )
    validation = _validation(config, splits, images)  # refused before anything is written
    epoch_steps = math.gcd(config.steps, config.checkpoint_every, config.sample_every, config.log_every, start_step)
    run_record = _describe_run(config, strategy_name, strategy.num_replicas_in_sync, images, splits)
    if distribute.is_chief(strategy):
        artifacts.write_json(run_dir / CONFIG_FILE, run_record)
        artifacts.write_json(run_dir / SPLITS_FILE, splits)
        _write_status(run_dir, "running", start_step)

    dataset = pipeline.make_train_dataset(
        images, global_batch, augment=pipeline.Augment.from_flags(config.augment), seed=config.model.seed
    )
    guard = DivergenceGuard()
    budget = _wall_clock_budget(config, strategy_name)
    callbacks = [
        guard,
        *([budget] if budget else []),
        CheckpointWriter(checkpoints, folder / MODEL_FILE, config.checkpoint_every, config.steps, guard),
        SampleWriter(folder, _sample_inputs(images, config), config.sample_every, config.steps),
        keras.callbacks.CSVLogger(str(folder / "history.csv"), append=start_step > 0),
        keras.callbacks.TensorBoard(log_dir=str(folder / "logs"), write_graph=False, update_freq="epoch"),
        *([ProgressLine(config.steps, global_batch, config.model.critic_steps, budget, live=verbose == 1)]
          if verbose else []),
        *validation,
        *(extra_callbacks or []),
    ]
    log(
        f"training {config.steps - start_step} steps from step {start_step} on {len(images)} images, "
        f"{strategy_name} strategy × {strategy.num_replicas_in_sync} replicas, global batch {global_batch}"
    )
    started = time.time()
    with distribute.explain_lost_workers(strategy, run_dir / "checkpoints"):
        model.fit(
            dataset,
            epochs=config.steps // epoch_steps,
            initial_epoch=start_step // epoch_steps,
            steps_per_epoch=epoch_steps,
            callbacks=callbacks,
            verbose=0,  # ProgressLine instead of Keras' bar
        )
    elapsed = time.time() - started
    step = int(model.step.numpy())
    if guard.reason:
        last_good = checkpoints.latest_checkpoint
        if distribute.is_chief(strategy):
            _write_status(run_dir, "diverged", step, reason=guard.reason, last_good_checkpoint=last_good)
        raise GanspectionError(
            f"{run_dir}: training diverged at step {guard.step} ({guard.reason}); the last good checkpoint "
            f"({last_good or 'none'}) and model.keras are kept. Lower --learning-rate and run again with --resume"
        )
    stopped = {"stopped_by": f"--max-minutes {config.max_minutes:g}"} if budget and budget.stopped_at else {}
    if distribute.is_chief(strategy):
        _write_status(run_dir, "finished", step, seconds=round(elapsed, 1), **stopped)
    log(f"trained to step {step} in {elapsed:.0f} s{' (wall-clock budget)' if stopped else ''}; run folder: {run_dir}")
    return run_dir


def _validation(config, splits, images):
    """[SyntheticDefectValidation] with --validate-every, else []."""
    if config.validate_every is None:
        return []
    if len(splits["validation"]) < 2:
        raise GanspectionError(f"--validate-every {config.validate_every}: needs at least 2 good validation images "
                               f"held out of training, and there are {len(splits['validation'])}; raise "
                               "--val-fraction")
    return [SyntheticDefectValidation(config.validate_every, config.steps, splits["validation"], images,
                                      config.resize)]


def _wall_clock_budget(config, strategy_name):
    if config.max_minutes is None:
        return None
    if strategy_name == "multiworker":  # each worker would time itself and they could stop at different steps
        raise GanspectionError("--max-minutes does not work with --strategy multiworker; bound the run with --steps")
    return WallClockBudget(config.max_minutes)


def build_model(config: TrainConfig) -> WassersteinBiGAN:
    """The model, compiled with its two optimizers (call inside the strategy scope)."""
    model = WassersteinBiGAN(config.model)
    model.compile(
        d_optimizer=_optimizer(config), g_optimizer=_optimizer(config), jit_compile=bool(config.jit_compile)
    )
    return model


def _optimizer(config):
    kwargs = dict(learning_rate=config.learning_rate, beta_1=config.beta_1, beta_2=config.beta_2)
    if config.weight_decay:
        optimizer = keras.optimizers.AdamW(weight_decay=config.weight_decay, **kwargs)
    else:
        optimizer = keras.optimizers.Adam(**kwargs)
    # float16 gradients underflow: scale the loss up (train_step calls scale_loss) and the gradients back down.
    return keras.optimizers.LossScaleOptimizer(optimizer) if config.precision == "mixed_float16" else optimizer


# A model.keras of a mixed_float16 run saved before the model counted its own steps names this optimizer class.
_LEGACY_LOSS_SCALE_OPTIMIZER = "ganspection_tf>StepCountingLossScaleOptimizer"
keras.saving.get_custom_objects()[_LEGACY_LOSS_SCALE_OPTIMIZER] = keras.optimizers.LossScaleOptimizer


def load_model(run_dir) -> WassersteinBiGAN:
    """Loads a run's model.keras (``run_dir`` may also be that file) with safe_mode=True, turning a broken or
    foreign file into a one-line error."""
    path = Path(run_dir) if Path(run_dir).is_file() else Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise GanspectionError(f"{path}: no trained model here; train one with 'ganspection-tf train --out {run_dir}'")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises many types for a truncated or foreign archive.
        raise GanspectionError(
            f"{path}: cannot load the model ({first_line(error)}); it is truncated or from another version — "
            "retrain, or restore it with 'ganspection-tf train --resume'"
        ) from None


def read_run_config(run_dir) -> dict:
    return artifacts.read_json(Path(run_dir) / CONFIG_FILE, what="run config")


def read_train_config(run_dir) -> TrainConfig:
    """The checked training config of a run (one-line errors for a damaged or hand-edited config.json)."""
    return train_config_from_record(read_run_config(run_dir), Path(run_dir) / CONFIG_FILE)


def run_resize(run_dir) -> str:
    """The run's resize mode (``images.resize_image``) from its config.json; runs from before the option existed
    were stretched (the field's default)."""
    return read_train_config(run_dir).resize


# -------------------------------------------------------------------------------------------- set-up helpers


def _reconcile_with_existing_run(config, run_dir, resume, overrides, chief=True):
    """A new run refuses a used folder; --resume takes the stored config plus the allowed `overrides`."""
    stored = run_dir / CONFIG_FILE
    if not resume:
        if stored.exists() and chief:
            raise GanspectionError(
                f"{run_dir}: already holds a run; pass --resume to continue it, or choose another --out"
            )
        return _with_data(config, run_dir)
    if not stored.exists():
        return _with_data(config, run_dir, resume)  # nothing to resume: start fresh (a restarted cluster job)
    previous = train_config_from_record(read_run_config(run_dir), stored)
    changes = {}
    for name, value in overrides.items():
        if name in RESUMABLE_FIELDS:
            changes[name] = value
        elif not _same_setting(name, value, previous.flat()[name]):
            option = "--" + name.replace("_", "-")
            raise GanspectionError(
                f"{option} {value} conflicts with the run in {run_dir} (trained with {previous.flat()[name]}); "
                f"drop {option} when resuming, or start a new run in another --out"
            )
    return previous.replace(**changes)


def _same_setting(name, value, stored):
    if name == "data" and value is not None and stored is not None:
        return resolved(value) == resolved(stored)
    return value == stored


def _with_data(config, run_dir, resume=False):
    if config.data is None:
        nothing = f" ({run_dir} holds no run to resume)" if resume else ""
        raise GanspectionError(f"--data is missing{nothing}: pass the folder of good images to train on")
    return config


def _set_precision(precision):
    keras.mixed_precision.set_global_policy(precision)


def _load_training_images(config, log):
    category = mvtec.scan_category(config.data, config.category)
    train_paths, val_paths = mvtec.split_validation(category.train, config.val_fraction, config.model.seed)
    channels = pipeline.decide_channels(train_paths, config.model.channels)
    size = config.model.image_size
    log(f"decoding {len(train_paths)} training images from {category.root} at {size} px …")
    images, skipped = pipeline.load_images(train_paths, size, channels, skip_unreadable=True, resize=config.resize)
    if skipped:
        listed = "; ".join(f"{path} ({reason})" for path, reason in skipped)
        log(f"warning: skipped {len(skipped)} unreadable training image(s): {listed}")
    skipped_paths = {str(path) for path, _ in skipped}
    splits = {
        "category": category.name,
        "root": str(Path(category.root).resolve()),
        "is_mvtec": category.is_mvtec,
        "train": [str(path) for path in train_paths if str(path) not in skipped_paths],
        "validation": [str(path) for path in val_paths],
        "skipped": sorted(skipped_paths),
    }
    return images, splits


def _describe_run(config, strategy_name, replicas, images, splits):
    train_dict = config.to_dict()
    return {
        "train": train_dict,
        "config_hash": config_hash(train_dict),
        "data": {
            "category": splits["category"],
            "root": splits["root"],
            "train_images": len(splits["train"]),
            "validation_images": len(splits["validation"]),
            "image_shape": list(images.shape[1:]),
        },
        "strategy": {"name": strategy_name, "replicas": replicas},
        "versions": {
            "ganspection_tf": ganspection_tf.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "command": " ".join(sys.argv),
    }


def _checkpoint_manager(model, folder, keep):
    checkpoint = tf.train.Checkpoint(
        model=model, d_optimizer=model.d_optimizer, g_optimizer=model.g_optimizer
    )
    # TensorFlow writes checkpoint data first and updates the 'checkpoint' index atomically last, so a kill at
    # any moment leaves the previous complete checkpoint as the latest one.
    return tf.train.CheckpointManager(checkpoint, str(folder / "checkpoints"), max_to_keep=max(1, keep))


def _restore(checkpoints, run_dir, resume, log):
    # Every worker restores the chief's checkpoint (in the run folder); the other workers only write theirs
    # into throw-away folders.
    latest = tf.train.latest_checkpoint(str(Path(run_dir) / "checkpoints")) if resume else None
    if latest is None:
        return 0
    model = checkpoints.checkpoint.model
    status = checkpoints.checkpoint.restore(latest)
    if _has_step_counter(latest):
        status.assert_existing_objects_matched()
    else:  # written before the model counted its own steps: the step was the generator optimizer's iterations
        status.expect_partial()
        model.step_counter.assign(model.g_optimizer.iterations)
    step = int(model.step.numpy())
    log(f"resumed from {latest} at step {step}")
    return step


def _has_step_counter(checkpoint_path):
    return any(name.startswith("model/step_counter/") for name, _ in tf.train.list_variables(checkpoint_path))


def _write_status(run_dir, state, step, **details):
    artifacts.write_json(Path(run_dir) / STATUS_FILE, {"state": state, "step": step, **details})


def _sample_inputs(images, config):
    """Fixed inputs for the sample grids: 8 training images and 16 latent codes, the same at every step."""
    rng = np.random.default_rng(config.model.seed)
    picks = rng.choice(len(images), size=min(8, len(images)), replace=False)
    real = images[np.sort(picks)].astype(np.float32) / 127.5 - 1.0
    z = rng.standard_normal((SAMPLE_COUNT, config.model.latent_dim)).astype(np.float32)
    return real, z
