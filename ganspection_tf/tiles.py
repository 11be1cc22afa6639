"""Inspecting an image larger than the network's input: a grid of tiles, and their outputs merged per image.

The networks see `tile` × `tile` pixels (``image_size``); the whole image is inspected at ``inspect_size``, a
multiple of it, as a grid of (inspect_size / image_size)² non-overlapping tiles in row-major order. Training
takes random tile-sized crops of the inspect-size images (``data/pipeline.py``); the term model cuts every
image into its tiles, runs them through E, G and D as one batch and merges the tile outputs into per-image
outputs (``scoring.build_term_model``), so that the calibration, the score choice, ``evaluate``, ``score``, the
export and the camera (the TFLite model holds the same graph) all see per-image outputs at inspect size:

* a per-pixel map (N·T, S, S) is stitched back into the image's map (N, I, I), and a map of features
  (N·T, h, w, F), the critic's patch features, into (N, h·per_side, w·per_side, F) (its fine patch features are
  computed over the whole image instead, without seams: ``networks.with_patch_features``);
* a scalar per tile (N·T,) becomes the largest over the image's tiles (every term grows with abnormality);
* a vector per tile (N·T, d), the code, becomes the tiles' codes side by side (N, T·d): a statistic of the
  code (latent_mahalanobis) is then fitted per tile position.

The functions take the array module (numpy, or ``keras.ops`` in the term model's layers), so that the tile order
is written once. numpy only otherwise: the camera may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ganspection_tf.errors import GanspectionError


@dataclass(frozen=True)
class TileGrid:
    """`per_side` × `per_side` tiles of `tile` px covering an image of `tile · per_side` px."""

    tile: int
    per_side: int

    @property
    def count(self) -> int:
        return self.per_side**2

    @property
    def image(self) -> int:
        return self.tile * self.per_side


def tile_grid(image_size: int, inspect_size: int | None, source: str = "--inspect-size") -> TileGrid:
    """The grid of an inspection at `inspect_size` (None: at `image_size`, one tile) with `image_size` tiles; a
    size that is not a multiple is a one-line error naming `source`."""
    inspect_size = image_size if inspect_size is None else inspect_size
    if inspect_size < image_size or inspect_size % image_size:
        raise GanspectionError(f"{source} {inspect_size}: the inspected image must be a whole number of "
                               f"{image_size} px tiles (--image-size); use {image_size} or a multiple of it")
    return TileGrid(image_size, inspect_size // image_size)


def cut(images, per_side: int, ops=np):
    """(N, I, I, C) images → (N·T, S, S, C) tiles, row-major within each image (S = I / per_side)."""
    if per_side == 1:
        return images
    side, channels = images.shape[1], images.shape[3]
    tile = side // per_side
    rows = ops.reshape(images, (-1, tile, per_side, tile * channels))  # (N·per_side, S, per_side, S·C)
    return ops.reshape(ops.transpose(rows, (0, 2, 1, 3)), (-1, tile, tile, channels))


def stitch(tiles, per_side: int, ops=np):
    """(N·T, S, S[, C]) tile maps or images → (N, I, I[, C]): the inverse of :func:`cut`."""
    if per_side == 1:
        return tiles
    tile, extra = tiles.shape[1], tuple(tiles.shape[3:])
    depth = int(np.prod(extra)) if extra else 1
    grid = ops.reshape(tiles, (-1, per_side, tile, tile * depth))  # (N·per_side, per_side, S, S·C)
    rows = ops.transpose(grid, (0, 2, 1, 3))  # (N·per_side, S, per_side, S·C)
    return ops.reshape(rows, (-1, tile * per_side, tile * per_side, *extra))


def merge(values, per_side: int, ops=np):
    """The per-image value of per-tile outputs (module docstring): (N·T,) → max (N,), (N·T, d) → (N, T·d),
    (N·T, S, S[, F]) → stitched (N, I, I[, F])."""
    if per_side == 1:
        return values
    count = per_side**2
    rank = len(values.shape)
    if rank == 1:
        return ops.max(ops.reshape(values, (-1, count)), axis=1)
    if rank == 2:
        return ops.reshape(values, (-1, count * values.shape[1]))
    if rank in (3, 4):
        return stitch(values, per_side, ops)
    raise GanspectionError(f"cannot merge tile outputs of shape {tuple(values.shape)} (rank 1 to 4)")
