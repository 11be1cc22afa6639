"""The Keras callbacks of `train`: stop on divergence or on a signal Python could not raise, write checkpoints
and model.keras, draw sample grids, stop within a wall-clock budget, print a progress line and the validation
AUROC on synthetic defects."""

import math
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from ganspection_tf import artifacts, exposure_tolerance, interrupts, pictures, synthetic_validation
from ganspection_tf.data import pipeline
from ganspection_tf.score_choice import choose_score
from ganspection_tf.errors import GanspectionError, first_line
from ganspection_tf.models.bigan import EMA_ENCODER, EMA_GENERATOR
from ganspection_tf.run import LOGS_FOLDER, SAMPLES_FOLDER

LOST_CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError)
EXPLODING_CRITIC = 1e4  # |Wasserstein estimate| beyond this means the critic has run away


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first NaN/Inf loss or a runaway critic, remembering why."""

    WATCHED = ("critic_loss", "generator_loss", "wasserstein", "latent_loss")

    def __init__(self):
        super().__init__()
        self.reason, self.step = None, None

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        for name in self.WATCHED:
            value = logs.get(name)
            if value is None:
                continue
            value = float(value)
            if not math.isfinite(value):
                self._stop(f"{name} is {value}")
                return
        wasserstein = logs.get("wasserstein")
        if wasserstein is not None and abs(float(wasserstein)) > EXPLODING_CRITIC:
            self._stop(f"the critic exploded (Wasserstein estimate {float(wasserstein):.3g})")

    def _stop(self, reason):
        if self.reason is None:
            self.reason, self.step = reason, int(self.model.step.numpy())
        self.model.stop_training = True


class LostSignalCheck(keras.callbacks.Callback):
    """Ends training after the step during which a Ctrl-C or SIGTERM landed in a ``__del__`` (see interrupts)."""

    def on_train_batch_end(self, batch, logs=None):
        interrupts.raise_lost()


class CheckpointWriter(keras.callbacks.Callback):
    """Every `every` steps (and at the end): a tf.train checkpoint and a fresh model.keras, unless diverged."""

    def __init__(self, manager, model_path, every, final_step, guard):
        super().__init__()
        self.manager, self.model_path, self.every, self.final_step, self.guard = (
            manager,
            model_path,
            every,
            final_step,
            guard,
        )

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.step.numpy())
        stopping_early = self.model.stop_training  # e.g. WallClockBudget: save where training stops
        if self.guard.reason or (step % self.every and step != self.final_step and not stopping_early):
            return
        try:
            self.manager.save(checkpoint_number=step)
        except LOST_CLUSTER_ERRORS:
            raise  # a lost worker, not a full disk: distribute.explain_lost_workers words it
        except (tf.errors.OpError, OSError) as error:
            raise GanspectionError(
                f"{self.manager.directory}: could not write the step-{step} checkpoint "
                f"({first_line(error)}); the previous checkpoint is kept. Free disk space, then --resume"
            ) from None
        with artifacts.atomic_path(self.model_path) as temporary:
            self.model.save(temporary)


class WallClockBudget(keras.callbacks.Callback):
    """Stops training at the end of the first log interval after which one more interval would pass the budget.

    It runs before CheckpointWriter, which then saves the step it stopped at: model.keras is the stopped model
    and --resume continues from it. The time counts from the start of fit (graph tracing included), not the
    image decoding before it; the pace is the mean time per step so far.
    """

    def __init__(self, minutes):
        super().__init__()
        self.seconds = 60.0 * minutes
        self.started = self.first_step = self.last_step = self.stopped_at = None

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()
        self.first_step = self.last_step = int(self.model.step.numpy())

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.step.numpy())
        interval, self.last_step = step - self.last_step, step
        elapsed = time.monotonic() - self.started
        if elapsed + elapsed / max(step - self.first_step, 1) * interval > self.seconds:
            self.stopped_at = step
            self.model.stop_training = True


class SampleWriter(keras.callbacks.Callback):
    """PNG grids (and TensorBoard images) of what the model has learned, every `every` steps."""

    def __init__(self, folder, inputs, every, final_step):
        super().__init__()
        self.folder, self.every, self.final_step = Path(folder), every, final_step
        self.real, self.z = inputs
        self.writer = tf.summary.create_file_writer(str(self.folder / LOGS_FOLDER / "images"))

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.step.numpy())
        if step % self.every and step != self.final_step:
            return
        for kind, image in sample_grids(self.model, self.real, self.z).items():
            artifacts.write_png(self.folder / SAMPLES_FOLDER / f"step{step:06d}_{kind}.png", image)
            with self.writer.as_default(step=step):
                tf.summary.image(kind, image[None], max_outputs=1)
        self.writer.flush()


def sample_grids(model, real, z):
    """Fixed-z samples, reconstructions beside their inputs, and samples with z ×2 and ×3, from EMA weights."""
    encoder, generator, _ = model.scoring_networks()
    reconstruction = generator(encoder(real, training=False), training=False)
    return {
        "fixed_z": pictures.grid(pictures.to_uint8(generator(z, training=False)), columns=8),
        "reconstructions": pictures.pairs_grid(pictures.to_uint8(real), pictures.to_uint8(reconstruction)),
        "z_x2": pictures.grid(pictures.to_uint8(generator(2.0 * z, training=False)), columns=8),
        "z_x3": pictures.grid(pictures.to_uint8(generator(3.0 * z, training=False)), columns=8),
    }


class ProgressLine(keras.callbacks.Callback):
    """One line per log interval: the step, steps/s, images/s through critic updates and per full step, the ETA
    (to --steps, or to the end of a `budget` (WallClockBudget, which runs before it) when that comes first) and
    the interval's mean losses.

    It replaces Keras' progress bar (``fit`` runs with verbose=0): Keras counts "epochs", which here are log
    intervals, and shows neither images/s nor the time to the requested steps. With `live` (a terminal) the line
    is redrawn in place during the interval, at most every `redraw_s` seconds, and ends with a newline at the
    interval's end, so a terminal and a log file both keep one line per interval.

    Rates are wall-clock, checkpoints, sample grids and validations included; the first interval also includes
    tracing the step, so the ETA uses the pace since the end of the first interval once there is one.
    """

    def __init__(self, total_steps, global_batch, critic_steps, budget=None, stream=None, live=False, redraw_s=1.0):
        super().__init__()
        self.total_steps, self.global_batch, self.critic_steps = total_steps, global_batch, critic_steps
        self.budget = budget
        self.stream, self.live, self.redraw_s = stream, live, redraw_s
        self.interval_start = self.interval_step = self.pace_start = self.pace_step = None
        self.last_drawn = 0.0

    def on_train_begin(self, logs=None):
        self.interval_start, self.interval_step = time.monotonic(), int(self.model.step.numpy())

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        if self.live and now - self.last_drawn >= self.redraw_s:
            self.last_drawn = now
            self._write("\r" + self.describe(self.interval_step + batch + 1, now) + "\x1b[K")

    def on_epoch_end(self, epoch, logs=None):
        now, step = time.monotonic(), int(self.model.step.numpy())
        line = self.describe(step, now, logs)
        self._write(("\r" + line + "\x1b[K" if self.live else line) + "\n")
        if self.pace_start is None:  # the first interval traced the step: the ETA's pace starts after it
            self.pace_start, self.pace_step = now, step
        self.interval_start, self.interval_step = now, step

    def describe(self, step, now, logs=None) -> str:
        """'step 150/2000 (8%) | 1.43 steps/s, 114 images/s through critic updates (23 per full step) | ETA 21m34s'
        and the losses."""
        seconds = now - self.interval_start
        rate = (step - self.interval_step) / seconds if seconds > 0 else 0.0
        images = self.global_batch * rate
        parts = [
            f"step {step}/{self.total_steps} ({100 * step / self.total_steps:.0f}%)",
            f"{rate:.3g} steps/s, {_images(images * self.critic_steps)} images/s through critic updates "
            f"({_images(images)} per full step)",
            f"ETA {self._eta(step, now, rate)}",
        ]
        if logs:
            parts.append(" ".join(f"{name} {float(value):.4g}" for name, value in logs.items()))
        return " | ".join(parts)

    def _eta(self, step, now, rate) -> str:
        if self.pace_start is not None and step > self.pace_step:
            rate = (step - self.pace_step) / (now - self.pace_start)
        to_steps = (self.total_steps - step) / rate if rate > 0 else math.inf
        if self.budget is None or self.budget.started is None:
            return duration(to_steps)
        option = f"--max-minutes {self.budget.seconds / 60:g}"
        if self.budget.stopped_at == step:
            return f"0s (stopping for {option})"
        left = max(0.0, self.budget.seconds - (now - self.budget.started))
        if left >= to_steps:
            return duration(to_steps)
        return f"≤{duration(left)} ({option}; step {self.total_steps} would be reached in {duration(to_steps)})"

    def _write(self, text):
        stream = self.stream or sys.stdout
        stream.write(text)
        stream.flush()


class SyntheticDefectValidation(keras.callbacks.Callback):
    """Every `every` steps (at the end of the log interval that reaches it, and at the last step): the score
    chooser of the calibration (``score_choice.py``) run on the good validation images and their
    synthetic-defect copies, printed as one line with the chosen score's AUROC, so that a person sees when the
    model is good enough to stop.

    As in the calibration: the EMA networks, the per-pixel Gaussian of ``normalized_map_max`` from good training
    images (here up to REFERENCE_IMAGES of those in memory), never a test image. The copies are drawn once.
    """

    REFERENCE_IMAGES = 100

    def __init__(self, every, final_step, validation_paths, training_images, resize, stream=None, aligned=False,
                 augment=pipeline.Augment(), exposure_level=0.0):
        super().__init__()
        self.every, self.final_step, self.stream = every, final_step, stream
        self.aligned = aligned  # parts in one place: the choice leaves out place-free terms, as the calibration's
        self.validation_paths, self.resize, self.exposure_level = validation_paths, resize, exposure_level
        spacing = max(1, len(training_images) // self.REFERENCE_IMAGES)
        # as the calibration's reference (scoring.reference_terms): with the exposures the run trains on
        self.reference_images = pipeline.with_trained_exposures(training_images[::spacing][: self.REFERENCE_IMAGES],
                                                                augment)
        self.term_model = self.good = self.copies = self.copy_inputs = self.last_step = None
        self.relit_inputs = self.relit_sources = None

    def on_train_begin(self, logs=None):
        from ganspection_tf import scoring  # scoring imports training, which imports this module

        self.term_model = scoring.build_term_model(self.model)
        _, size, _, channels = self.term_model.input_shape
        self.good, _ = pipeline.load_images(self.validation_paths, size, channels, skip_unreadable=True,
                                            resize=self.resize, exposure_level=self.exposure_level)
        self.copy_inputs, self.copies = synthetic_validation.defective_inputs(self.validation_paths, size, channels,
                                                                              self.resize, self.exposure_level)
        self.relit_inputs, _, self.relit_sources = exposure_tolerance.relit_inputs(
            self.validation_paths, size, channels, self.resize, self.exposure_level)
        self.last_step = int(self.model.step.numpy())

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.step.numpy())
        if step // self.every == self.last_step // self.every and step != self.final_step:
            return
        self.last_step = step
        choice = self.choice()
        stream = self.stream or sys.stdout
        stream.write(f"validation at step {step}: AUROC {choice.auroc[choice.name]:.3f} of the chosen score "
                     f"({choice.name}) on {choice.n_defective} synthetic-defect copies of {choice.n_good} good "
                     "validation images\n")
        stream.flush()

    def choice(self):
        """The score chooser's verdict on the model as it is now."""
        from ganspection_tf.scoring import compute_terms

        self.refresh_averaged_networks()
        good, reference, copies, relit = (compute_terms(self.term_model, images) for images in
                                          (self.good, self.reference_images, self.copy_inputs, self.relit_inputs))
        good_terms, copy_terms, relit_terms = synthetic_validation.term_values(
            good, reference, (copies, self.copies.sources), (relit, self.relit_sources))
        return choose_score(good_terms, copy_terms, aligned=self.aligned, relit_terms=relit_terms)


    def refresh_averaged_networks(self):
        """The term model was built once, with a copy of the averaged weights at the start: bring them up to date."""
        if self.model.config.ema_decay:
            self.model.copy_averages_into(self.term_model.get_layer(EMA_ENCODER),
                                          self.term_model.get_layer(EMA_GENERATOR))


def _images(per_second) -> str:
    """114, or 2.3 where a whole number would hide most of the figure."""
    return f"{per_second:.1f}" if per_second < 10 else f"{per_second:.0f}"


def duration(seconds) -> str:
    """42s, 21m34s, 3h05m; "?" before the first measured step."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
