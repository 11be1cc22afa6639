"""`ganspection-tf train`: from a folder of good images to a run folder a person can inspect.

The run folder's files (config.json, splits.json, model.keras, checkpoints/, samples/, logs/, history.csv,
status.json, the ownership marker and lock) are described and named in ``run.py``.

One Keras "epoch" is one log interval of `log_every` steps, so ``--resume`` restarts ``fit`` at a whole epoch.
"""

import collections
import contextlib
import hashlib
import json
import math
import platform
import signal
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import ganspection_tf
from ganspection_tf import artifacts, distribute, interrupts, ownership
from ganspection_tf.callbacks import (
    CheckpointWriter,
    DivergenceGuard,
    LostSignalCheck,
    ProgressLine,
    SampleWriter,
    SyntheticDefectValidation,
    WallClockBudget,
)
from ganspection_tf.config import TrainConfig, data_chosen_fields, resolved
from ganspection_tf.data import choices, mvtec, pipeline
from ganspection_tf.errors import GanspectionError, first_line
from ganspection_tf.models.bigan import WassersteinBiGAN
from ganspection_tf.run import (
    CHECKPOINTS_FOLDER,
    CONFIG_FILE,
    HISTORY_FILE,
    LOGS_FOLDER,
    MODEL_FILE,
    SPLITS_FILE,
    RunFolder,
    load_model,
)

SAMPLE_COUNT = 16


def config_hash(config_dict) -> str:
    return hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------------- entry point


# What --resume may change; everything else belongs to the run and must match what it was trained with.
RESUMABLE_FIELDS = ("steps", "learning_rate", "critic_learning_rate", "strategy", "devices", "keep_checkpoints",
                    "log_every", "checkpoint_every", "sample_every", "jit_compile", "max_minutes", "validate_every")


def train(config: TrainConfig, out, resume=False, verbose=1, log=print, overrides=None, extra_callbacks=None,
          overwrite=False) -> Path:
    """Trains (or resumes) a run in folder `out` and returns it.

    On --resume the stored config wins; `overrides` (field → value, default: steps, strategy and devices of
    `config`) names what the user asked to change, which must be in RESUMABLE_FIELDS. `extra_callbacks` (Keras
    callbacks) run after the built-in ones, e.g. a wall-clock budget that sets ``model.stop_training``.
    `verbose`: 0 silent, 1 the progress line redrawn live (a terminal), 2 one progress line per log interval.
    `overwrite` starts a new run in a folder holding an earlier run (its artifacts are deleted) or files of the
    user (kept untouched). The chief holds the run folder's lock from start to end: one writer per run.
    """
    run_dir = Path(out)
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything, and only the chief may
    # refuse a used run folder (the other workers would see the config.json the chief has just written).
    strategy, strategy_name = distribute.make_strategy(config.strategy, config.devices)
    if overrides is None:
        overrides = {name: getattr(config, name) for name in ("steps", "strategy", "devices")}
    chief = distribute.is_chief(strategy)
    with _run_folder_claimed(run_dir, resume, overwrite, chief, log):
        config = _reconcile_with_existing_run(config, run_dir, resume, overrides, chief=chief)
        _set_precision(config.precision)
        keras.utils.set_random_seed(config.model.seed)

        folder = distribute.writing_folder(run_dir, strategy)
        try:
            return _train_into(folder, run_dir, config, strategy, strategy_name, resume, verbose, log,
                               extra_callbacks)
        finally:
            distribute.discard_worker_folder(folder, run_dir)


@contextlib.contextmanager
def _run_folder_claimed(run_dir, resume, overwrite, chief, log):
    """The chief: refuse a folder holding foreign files, take the one-writer lock, mark the folder as a run."""
    if not chief:  # the other workers write into throw-away folders; only the chief owns the run folder
        yield
        return
    ownership.refuse_foreign(run_dir, "run", overwrite)  # before the lock file is created in someone's folder
    with ownership.exclusive_writer(run_dir):
        _correct_stale_status(run_dir, log)
        continuing = resume and (run_dir / CONFIG_FILE).exists()
        ownership.claim_folder(run_dir, "run", overwrite=overwrite and not continuing, reuse=continuing,
                               existing_hint="pass --resume to continue it, or --overwrite to start it again")
        yield


def _train_into(folder, run_dir, config, strategy, strategy_name, resume, verbose, log, extra_callbacks=None):
    """The body of `train`: this process writes into `folder` (the run folder on the chief)."""
    artifacts.ensure_writable_folder(folder)
    config, data_choices, images, splits = _load_training_images(config, run_dir, resume, log)

    jit_compile = config.jit_compile and distribute.xla_allowed(strategy_name)
    if config.jit_compile and not jit_compile:
        log(f"XLA is off under the {strategy_name} strategy: TensorFlow cannot compile the distributed step")
    with strategy.scope():
        model = build_model(config.replace(jit_compile=jit_compile))
    checkpoints = _checkpoint_manager(model, folder, config.keep_checkpoints)
    start_step = _restore(checkpoints, run_dir, resume, log)
    # A checkpoint restores the old rates; --resume may change them.
    model.d_optimizer.learning_rate, model.g_optimizer.learning_rate = config.critic_rate, config.learning_rate
    distribute.check_workers_agree(
        strategy, restored_step=start_step, training_images=distribute.images_checksum(images)
    )
    if start_step >= config.steps:
        if distribute.is_chief(strategy):
            _restore_missing_model(model, run_dir, log)
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
    run_record = _describe_run(config, strategy_name, strategy.num_replicas_in_sync, images, splits, data_choices)
    if resume and start_step > 0:
        _check_same_data(run_dir, splits, run_record)
    if distribute.is_chief(strategy):
        RunFolder(run_dir).write_config(run_record)
        RunFolder(run_dir).write_splits(splits)
        _write_status(run_dir, "running", start_step)

    dataset = pipeline.make_train_dataset(
        images, global_batch, augment=pipeline.Augment.from_flags(config.augment), seed=config.model.seed,
        crop_size=config.model.image_size,
    )
    guard = DivergenceGuard()
    budget = _wall_clock_budget(config, strategy_name)
    callbacks = [
        guard,
        LostSignalCheck(),
        *([budget] if budget else []),
        CheckpointWriter(checkpoints, folder / MODEL_FILE, config.checkpoint_every, config.steps, guard),
        SampleWriter(folder, _sample_inputs(images, config), config.sample_every, config.steps),
        keras.callbacks.CSVLogger(str(folder / HISTORY_FILE), append=start_step > 0),
        keras.callbacks.TensorBoard(log_dir=str(folder / LOGS_FOLDER), write_graph=False, update_freq="epoch"),
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
    with _status_on_exit(run_dir, model, distribute.is_chief(strategy)):
        with distribute.explain_lost_workers(strategy, run_dir / CHECKPOINTS_FOLDER):
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
        raise GanspectionError(f"{run_dir}: training diverged at step {guard.step} ({guard.reason}); "
                               + _after_divergence(run_dir, last_good))
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
    aligned = bool(choices.parts_aligned(splits["train"], config.resize))  # as the calibration's choice sees it
    augment = pipeline.Augment.from_flags(config.augment)
    return [SyntheticDefectValidation(config.validate_every, config.steps, splits["validation"], images,
                                      config.resize, aligned=aligned, augment=augment,
                                      exposure_level=config.exposure_level)]


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
        d_optimizer=_optimizer(config, config.critic_rate), g_optimizer=_optimizer(config, config.learning_rate),
        jit_compile=bool(config.jit_compile),
    )
    return model


def _optimizer(config, learning_rate):
    kwargs = dict(learning_rate=learning_rate, beta_1=config.beta_1, beta_2=config.beta_2)
    if config.weight_decay:
        optimizer = keras.optimizers.AdamW(weight_decay=config.weight_decay, **kwargs)
    else:
        optimizer = keras.optimizers.Adam(**kwargs)
    # float16 gradients underflow: scale the loss up (train_step calls scale_loss) and the gradients back down.
    return keras.optimizers.LossScaleOptimizer(optimizer) if config.precision == "mixed_float16" else optimizer


def _restore_missing_model(model, run_dir, log):
    """A finished run whose model.keras is missing or unloadable gets it back from the restored checkpoint."""
    path = Path(run_dir) / MODEL_FILE
    try:
        load_model(run_dir)
        return
    except GanspectionError:
        pass
    if path.exists():
        ownership.refuse_replacing(path, "run")
    with artifacts.atomic_path(path) as temporary:
        model.save(temporary)
    log(f"{path}: rewritten from the checkpoint at step {int(model.step.numpy())}")


def _after_divergence(run_dir, last_good):
    """What is kept and what to run next, true to what is on disk."""
    model_kept = (Path(run_dir) / MODEL_FILE).is_file()
    if last_good is None:
        kept = "no checkpoint was written before it, " + ("model.keras is kept" if model_kept else "no model.keras")
        return f"{kept}. Start again in another --out with a lower --learning-rate (or default weights)"
    kept = f"the last good checkpoint ({last_good})" + (" and model.keras are kept" if model_kept else " is kept")
    return f"{kept}. Run the same command with --resume and a lower --learning-rate (e.g. 10x lower)"


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
    _check_resumable(run_dir)
    previous = RunFolder(run_dir).read_train_config()
    changes = {}
    for name, value in overrides.items():
        if value is None and name in data_chosen_fields():
            continue  # not given: the run keeps what it was started with
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


def _check_resumable(run_dir):
    """--resume without a checkpoint would train from step 0 and replace a trained model.keras: refused."""
    if _checkpoints_newest_first(run_dir / CHECKPOINTS_FOLDER) or not (run_dir / MODEL_FILE).exists():
        return  # a checkpoint to continue from, or nothing trained yet (a restarted job before its first save)
    raise GanspectionError(
        f"{run_dir / 'checkpoints'}: no checkpoint to resume from (deleted?), so --resume would start again from "
        "step 0 and replace the trained model.keras; to train this folder again from step 0 run the same command "
        "with --overwrite instead of --resume, or train into another --out")


def _set_precision(precision):
    keras.mixed_precision.set_global_policy(precision)


def _load_training_images(config, run_dir, resume, log):
    """(config with the data-dependent settings set, their choices, the decoded training images, the splits)."""
    category = mvtec.scan_category(config.data, config.category)
    train_paths, val_paths = mvtec.split_validation(category.train, config.val_fraction, config.model.seed)
    config, data_choices = _data_choices(config, train_paths, run_dir, resume)
    for line in choices.describe(data_choices):
        log(line)
    channels, size = config.model.channels, config.model.inspected_size  # inspected whole; trained on crops
    log(f"decoding {len(train_paths)} training images from {category.root} at {size} px …")
    images, skipped = pipeline.load_images(train_paths, size, channels, skip_unreadable=True, resize=config.resize,
                                           exposure_level=config.exposure_level)
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
    return config, data_choices, images, splits


def _data_choices(config, train_paths, run_dir, resume):
    """A new run chooses its data-dependent settings from its training images; a resumed one keeps its own."""
    run = RunFolder(run_dir)
    if resume and run.config_path.exists():
        return config, choices.kept_on_resume(run.read_data_choices(), run.read_train_config(), config)
    return choices.choose(config, train_paths)


def _describe_run(config, strategy_name, replicas, images, splits, data_choices):
    train_dict = config.to_dict()
    return {
        "train": train_dict,
        "config_hash": config_hash(train_dict),
        "data_choices": {name: choice.to_dict() for name, choice in data_choices.items()},
        "data": {
            "category": splits["category"],
            "root": splits["root"],
            "train_images": len(splits["train"]),
            "validation_images": len(splits["validation"]),
            "image_shape": list(images.shape[1:]),
            "images_checksum": distribute.images_checksum(images),
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
    return tf.train.CheckpointManager(checkpoint, str(folder / CHECKPOINTS_FOLDER), max_to_keep=max(1, keep))


def _restore(checkpoints, run_dir, resume, log):
    """Restores the newest intact checkpoint; a damaged newer one is skipped with a warning naming both.

    Every worker restores the chief's checkpoint (in the run folder); the other workers only write theirs into
    throw-away folders.
    """
    if not resume:
        return 0
    candidates = _checkpoints_newest_first(Path(run_dir) / CHECKPOINTS_FOLDER)
    if not candidates:
        return 0
    damaged = []
    for path in candidates:
        try:
            _restore_one(checkpoints.checkpoint, path)
        except Exception as error:  # noqa: BLE001 - TensorFlow raises OpError, IndexError, ValueError… for damage
            damaged.append(f"{path} ({first_line(error)[:120]})")
            continue
        step = int(checkpoints.checkpoint.model.step.numpy())
        if damaged:
            log(f"warning: damaged checkpoint {'; '.join(damaged)}; falling back to {path}")
        log(f"resumed from {path} at step {step}")
        return step
    raise GanspectionError(
        f"{Path(run_dir) / 'checkpoints'}: every checkpoint is damaged ({'; '.join(damaged)}); train again from "
        "step 0 with the same command and --overwrite instead of --resume")


def _checkpoints_newest_first(folder):
    state = tf.train.get_checkpoint_state(str(folder))
    if state is None:
        return []
    listed = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    if state.model_checkpoint_path and state.model_checkpoint_path not in listed:
        listed.append(state.model_checkpoint_path)
    paths = [path if Path(path).is_absolute() else str(Path(folder) / path) for path in listed]
    return sorted(set(paths), key=_checkpoint_number, reverse=True)


def _checkpoint_number(path):
    try:
        return int(str(path).rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _restore_one(checkpoint, path):
    model = checkpoint.model
    status = checkpoint.restore(path)
    if _has_step_counter(path):
        status.assert_existing_objects_matched()
    else:  # written before the model counted its own steps: the step was the generator optimizer's iterations
        status.expect_partial()
        model.step_counter.assign(model.g_optimizer.iterations)


def _has_step_counter(checkpoint_path):
    return any(name.startswith("model/step_counter/") for name, _ in tf.train.list_variables(checkpoint_path))


def _write_status(run_dir, state, step, **details):
    RunFolder(run_dir).write_status(state, step, **details)


def _correct_stale_status(run_dir, log):
    """Under the run lock no other process is training: a `running` status is a dead process's."""
    status_path = RunFolder(run_dir).status_path
    try:
        status = artifacts.read_json(status_path) if status_path.is_file() else None
    except GanspectionError:
        return
    if isinstance(status, dict) and status.get("state") == "running":
        _write_status(run_dir, "killed", status.get("step", 0), reason="the training process ended without "
                      "a word (kill -9 or a crash)")
        log(f"the previous training process of {run_dir} was killed at step {status.get('step', 0)} or later")


@contextlib.contextmanager
def _status_on_exit(run_dir, model, chief):
    """status.json tells how training ended: interrupted (Ctrl-C), killed (SIGTERM) or failed (an error)."""
    try:
        yield
    except BaseException as error:
        if chief:
            step = int(model.step.numpy())
            signum = interrupts.signal_behind(error)
            if signum == signal.SIGTERM:
                _write_status(run_dir, "killed", step, reason="SIGTERM")
            elif signum == signal.SIGINT:
                _write_status(run_dir, "interrupted", step, reason="Ctrl-C (SIGINT)")
            else:
                _write_status(run_dir, "failed", step, reason=first_line(error))
        raise


def _check_same_data(run_dir, splits, run_record):
    """--resume trains on what the run began with: the same split files, decoding to the same pixels."""
    stored_path = Path(run_dir) / SPLITS_FILE
    if not stored_path.is_file():
        return
    stored = artifacts.read_json(stored_path, what="split list")
    if not isinstance(stored, dict):
        raise GanspectionError(f"{stored_path}: split list is not a JSON object; it was edited by hand")
    def names(split, parts=("train", "validation")):
        return collections.Counter(Path(p).name for part in parts for p in split.get(part) or [])

    removed, added = names(stored) - names(splits), names(splits) - names(stored)
    moved = [f"{name} removed" for name in sorted(removed.elements())]
    moved += [f"{name} added" for name in sorted(added.elements())]
    if not moved and names(stored, ["train"]) != names(splits, ["train"]):
        moved.append("the same files fell into other train/validation splits")
    stored_checksum = _stored_images_checksum(run_dir)
    if not moved and stored_checksum not in (None, run_record["data"]["images_checksum"]):
        moved.append("the same files decode to different pixels (edited images)")
    if moved:
        listed = ", ".join(moved[:6]) + (f" and {len(moved) - 6} more" if len(moved) > 6 else "")
        raise GanspectionError(
            f"{splits['root']}: the training data changed since this run began ({listed}); restore the files to "
            f"resume, or train a new run on the new data in another --out")


def _stored_images_checksum(run_dir):
    try:
        return artifacts.read_json(Path(run_dir) / CONFIG_FILE)["data"]["images_checksum"]
    except (GanspectionError, KeyError, TypeError):
        return None


def _sample_inputs(images, config):
    """Fixed inputs for the sample grids: 8 training images (their central crop of the model's size, when they
    are inspected at a larger one) and 16 latent codes, the same at every step."""
    rng = np.random.default_rng(config.model.seed)
    picks = rng.choice(len(images), size=min(8, len(images)), replace=False)
    size = config.model.image_size
    corner = (images.shape[1] - size) // 2
    real = images[np.sort(picks), corner : corner + size, corner : corner + size].astype(np.float32) / 127.5 - 1.0
    z = rng.standard_normal((SAMPLE_COUNT, config.model.latent_dim)).astype(np.float32)
    return real, z
