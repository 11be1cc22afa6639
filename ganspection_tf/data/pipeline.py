"""tf.data input pipeline: decode every image once into memory, then shuffle, augment and batch from there.

Inspection datasets are small (hundreds of images), so decoding and resizing them once up front is far
cheaper than decoding PNGs in every epoch, and the in-memory array makes the pipeline deterministic.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from ganspection_tf.config import AUGMENTATIONS, EXPOSURE_GAIN_SPREAD
from ganspection_tf.errors import GanspectionError
from ganspection_tf.images import DEFAULT_RESIZE, UnreadableImage, levelled, read_image, reexposed, resize_image



def load_images(
    paths: list[Path], size: int, channels: int, skip_unreadable: bool = True, resize: str = DEFAULT_RESIZE,
    exposure_level: float = 0.0,
) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Decode and resize ``paths`` into one ``uint8 (N, size, size, channels)`` array, in path order.

    ``resize`` is the run's mode (``images.resize_image``: stretch, pad or crop), ``exposure_level`` its level
    (``images.levelled``; 0: none).

    With ``skip_unreadable`` the files that cannot be read are left out and returned as ``(path, reason)``
    pairs so the caller can warn once; if none is readable a GanspectionError names the folder. Without it
    the first unreadable file (in path order) raises.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise GanspectionError("no image files to load; check the dataset folder")
    if channels not in (1, 3):
        raise GanspectionError(f"channels must be 1 or 3, got {channels!r}; pass --channels 1 or --channels 3")
    if int(size) != size or size < 1:
        raise GanspectionError(f"image size must be a positive integer, got {size!r}; pass e.g. --image-size 128")
    images = np.empty((len(paths), size, size, channels), dtype=np.uint8)
    readable = np.zeros(len(paths), dtype=bool)
    skipped: list[tuple[Path, str]] = []
    # Threads, not processes: Pillow's decoders and cv2.resize release the GIL.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(_decode_one, p, size, channels, resize, exposure_level) for p in paths]
        for i, future in enumerate(futures):
            try:
                images[i] = future.result()
                readable[i] = True
            except UnreadableImage as exc:
                if not skip_unreadable:
                    pool.shutdown(cancel_futures=True)
                    raise
                skipped.append((exc.path, exc.reason))
    if not readable.any():
        raise GanspectionError(
            f"{paths[0].parent}: none of the {len(paths)} images could be read (first: {skipped[0][1]}); "
            "check that the files are valid PNG/JPEG/BMP images"
        )
    return (images if readable.all() else images[readable]), skipped  # boolean indexing would copy


def load_run_images(run, paths, size, channels, skip_unreadable=True):
    """:func:`load_images` with a run's preprocessing (``RunFolder.resize`` and ``exposure_level``, or a scorer's
    copy of them): images as the run's model saw them in training."""
    return load_images(paths, size, channels, skip_unreadable=skip_unreadable, resize=run.resize,
                       exposure_level=run.exposure_level)


@dataclass(frozen=True)
class Augment:
    """Random flips and quarter turns applied to training batches (only valid for the part's symmetries), and a
    random exposure (one gain per image, 1 ± ``EXPOSURE_GAIN_SPREAD``)."""

    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    exposure: bool = False

    @classmethod
    def from_flags(cls, flags: str) -> "Augment":
        """Parse ``"hflip,vflip,rot90"`` (any subset, any order) or ``"none"`` / ``""``."""
        names = [n.strip().lower() for n in (flags or "").split(",") if n.strip()]
        if names == ["none"]:
            return cls()
        unknown = [n for n in names if n not in AUGMENTATIONS]
        if unknown:
            raise GanspectionError(
                f"unknown augmentation {unknown[0]!r}; use a comma list of {', '.join(AUGMENTATIONS)}, or none"
            )
        return cls(**{n: True for n in names})

    def as_flags(self) -> str:
        """The inverse of :meth:`from_flags`, for configs and logs."""
        return ",".join(n for n in AUGMENTATIONS if getattr(self, n)) or "none"

    @property
    def enabled(self) -> bool:
        """True when at least one augmentation is switched on."""
        return self.hflip or self.vflip or self.rot90 or self.exposure


def with_trained_exposures(images_uint8: np.ndarray, augment: Augment) -> np.ndarray:
    """Good reference images as the run was trained to see them: with the exposure augmentation, the images
    followed by copies at both ends of its gain range (what is fitted on good images - the patch bank, the
    per-pixel statistics - then counts those exposures as good too); else the images unchanged."""
    if not augment.exposure:
        return images_uint8
    gains = (1.0 - EXPOSURE_GAIN_SPREAD, 1.0 + EXPOSURE_GAIN_SPREAD)
    return np.concatenate([images_uint8, *(reexposed(images_uint8, gain) for gain in gains)])


PARALLEL_BATCHES, PREFETCH_BATCHES = 2, 2  # one per core of a small machine; ample for in-memory images


def make_train_dataset(
    images_uint8: np.ndarray, batch_size: int, augment: Augment = Augment(), seed: int = 0, shuffle: bool = True,
    crop_size: int | None = None,
) -> tf.data.Dataset:
    """Endless batches of ``float32 (batch_size, H, W, C)`` in [-1, 1] from an in-memory uint8 array.

    Shuffled with a buffer as large as the data (a full shuffle, new order each epoch, reproducible via
    ``seed``); batches never come out short, because the data repeats before it is batched. With `crop_size`
    smaller than the images, each image of a batch is a random `crop_size` square of its image (the network's
    tile of an image inspected at a larger size, ``tiles.py``), before the augmentation.
    """
    images = _check_images(images_uint8, batch_size)
    if augment.rot90 and images.shape[1] != images.shape[2]:
        raise GanspectionError(f"rot90 augmentation needs square images, got {images.shape[1]}x{images.shape[2]}")
    dataset = tf.data.Dataset.from_tensor_slices(images)
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat().batch(batch_size, drop_remainder=True)
    # Crop and augment whole batches (one vectorised op per batch instead of per image); the batch index feeds
    # the stateless random ops, so the same seed gives the same crops and augmentations on every run.
    crop = crop_size is not None and crop_size < max(images.shape[1:3])

    def prepare(index, batch):
        batch_seed = tf.stack([tf.cast(seed, tf.int64), index])
        if crop:
            batch = random_crops(batch, crop_size, tf.random.experimental.stateless_fold_in(batch_seed, CROP_STREAM))
        return _to_unit_range(augment_batch(batch, augment, batch_seed))

    dataset = dataset.enumerate().map(prepare, num_parallel_calls=PARALLEL_BATCHES)
    return dataset.prefetch(PREFETCH_BATCHES).with_options(_options())


# Folded into a batch's seed for its crops and its exposures: the flips and turns keep the streams they always had.
CROP_STREAM, EXPOSURE_STREAM = 1, 2


def random_crops(batch: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """A random `size` × `size` square of each image of a ``(B, H, W, C)`` batch, at any position inside it (a
    different one per image; ``seed`` a shape-[2] integer tensor for the stateless random ops)."""
    shape = tf.shape(batch)
    corner_seeds = tf.random.experimental.stateless_split(seed, 2)
    top = tf.random.stateless_uniform([shape[0]], corner_seeds[0], maxval=shape[1] - size + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([shape[0]], corner_seeds[1], maxval=shape[2] - size + 1, dtype=tf.int32)
    offsets = tf.range(size)
    rows = tf.gather(batch, top[:, tf.newaxis] + offsets, axis=1, batch_dims=1)  # (B, size, W, C)
    return tf.gather(rows, left[:, tf.newaxis] + offsets, axis=2, batch_dims=1)  # (B, size, size, C)


def make_eval_dataset(images_uint8: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """One pass over the images in order, ``float32`` in [-1, 1]; the last batch may be short."""
    images = _check_images(images_uint8, batch_size)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    dataset = dataset.map(_to_unit_range, num_parallel_calls=PARALLEL_BATCHES)
    return dataset.prefetch(PREFETCH_BATCHES).with_options(_options())


def augment_batch(batch: tf.Tensor, augment: Augment, seed: tf.Tensor) -> tf.Tensor:
    """Randomly flip / quarter-turn / re-expose each image of a uint8 ``(B, H, W, C)`` batch independently.

    ``seed`` is a shape-[2] integer tensor for the stateless random ops: same seed, same result.
    """
    if not augment.enabled:
        return batch
    hflip_seed, vflip_seed, rot_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    batch_size = tf.shape(batch)[0]
    if augment.hflip:
        batch = _where_per_image(_coin(batch_size, hflip_seed), tf.reverse(batch, axis=[2]), batch)
    if augment.vflip:
        batch = _where_per_image(_coin(batch_size, vflip_seed), tf.reverse(batch, axis=[1]), batch)
    if augment.rot90:
        quarter_turns = tf.random.stateless_uniform([batch_size], rot_seed, minval=0, maxval=4, dtype=tf.int32)
        batch = _rotate_quarter_turns(batch, quarter_turns)
    if augment.exposure:
        batch = _random_exposure(batch, tf.random.experimental.stateless_fold_in(seed, EXPOSURE_STREAM))
    return batch


def _random_exposure(batch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Each image times its own gain from 1 ± EXPOSURE_GAIN_SPREAD, rounded and clipped back to uint8."""
    gains = tf.random.stateless_uniform([tf.shape(batch)[0], 1, 1, 1], seed, minval=1.0 - EXPOSURE_GAIN_SPREAD,
                                        maxval=1.0 + EXPOSURE_GAIN_SPREAD)
    exposed = tf.round(tf.cast(batch, tf.float32) * gains)
    return tf.cast(tf.clip_by_value(exposed, 0.0, 255.0), tf.uint8)


# --- helpers ---------------------------------------------------------------------------------------------


def _decode_one(path: Path, size: int, channels: int, resize: str, exposure_level: float) -> np.ndarray:
    return levelled(resize_image(read_image(path, channels), size, resize), exposure_level)


def _check_images(images_uint8: np.ndarray, batch_size: int) -> np.ndarray:
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise GanspectionError(
            f"expected a non-empty uint8 array of shape (N, H, W, C), got {images.dtype} {images.shape}"
        )
    if int(batch_size) != batch_size or batch_size < 1:
        raise GanspectionError(f"batch size must be a positive integer, got {batch_size!r}; pass e.g. --batch-size 16")
    return images


def _to_unit_range(batch: tf.Tensor) -> tf.Tensor:
    return tf.cast(batch, tf.float32) / 127.5 - 1.0


def _options() -> tf.data.Options:
    options = tf.data.Options()
    # The images live in memory (there are no files to hand out per worker), so shard by data.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # Fixed sizes instead of tf.data's autotuning: a batch is ready in well under a millisecond, so there is
    # nothing to tune, and deleting an autotuned iterator (at the end of every `fit`) sometimes waits for the
    # tuning thread for many seconds (benchmarks/RESULTS.md, "The pause at the end of training").
    options.autotune.enabled = False
    return options


def _coin(batch_size: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return tf.random.stateless_uniform([batch_size], seed) < 0.5


def _where_per_image(choose: tf.Tensor, if_true: tf.Tensor, if_false: tf.Tensor) -> tf.Tensor:
    return tf.where(choose[:, tf.newaxis, tf.newaxis, tf.newaxis], if_true, if_false)


def _rotate_quarter_turns(batch: tf.Tensor, quarter_turns: tf.Tensor) -> tf.Tensor:
    """Rotate image b by ``quarter_turns[b] * 90`` degrees counter-clockwise (like ``np.rot90``), square only.

    ``tf.image.rot90`` takes one k for the whole batch; a per-image k is built from a transpose and two
    flips: k=1 is transpose + flip rows, k=2 is flip rows + flip columns, k=3 is transpose + flip columns.
    """
    transposed = _where_per_image(quarter_turns % 2 == 1, tf.transpose(batch, [0, 2, 1, 3]), batch)
    flip_rows = (quarter_turns == 1) | (quarter_turns == 2)
    flipped_rows = _where_per_image(flip_rows, tf.reverse(transposed, axis=[1]), transposed)
    return _where_per_image(quarter_turns >= 2, tf.reverse(flipped_rows, axis=[2]), flipped_rows)
