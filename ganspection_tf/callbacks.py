"""The Keras callbacks of `train`: stop on divergence, write checkpoints and model.keras, draw sample grids,
stop within a wall-clock budget."""

import math
import time
from pathlib import Path

import keras
import tensorflow as tf

from ganspection_tf import artifacts, pictures
from ganspection_tf.errors import GanspectionError, first_line

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
        self.writer = tf.summary.create_file_writer(str(self.folder / "logs" / "images"))

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.step.numpy())
        if step % self.every and step != self.final_step:
            return
        for kind, image in sample_grids(self.model, self.real, self.z).items():
            artifacts.write_png(self.folder / "samples" / f"step{step:06d}_{kind}.png", image)
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
