"""Synthetic defects drawn onto COPIES of good images, to choose a score from good images only.

Real defects are rare and unforeseen, and the test split must never steer a choice; what a run has is good
images. Drawing plausible defects onto copies of the good validation images gives labelled "defective"
examples whose only difference from a good image is the defect, so candidate scores can be compared by how
well they separate them (``score_choice.py``). They are a proxy for real defects, not a replacement: a score
that misses all of them would miss real ones too, one that finds them all may still miss a kind not drawn.

Kinds (each a local change; the mask covers every pixel it changed and nothing outside it is touched):

* ``patch``   - a rectangle cut from another good image at one place and pasted at another (CutPaste):
                 in-distribution pixels in the wrong place, the defect a per-pixel or global score finds hardest;
* ``scratch`` - a thin straight line (1 px at up to 256 px for the small size) darker or brighter than the
                 surface around it;
* ``blob``    - an irregular spot (a few overlapping disks), darkened or lightened, tinted in colour images;
* ``blur``    - a disk where the image is blurred (lost texture or focus, a smeared surface);
* ``shift``   - a disk whose brightness (and, in colour images, colour) is shifted.

Sizes scale with the image side, so the same seed draws the same defect at 64 or 256 px: the extent (a
disk's diameter, a patch's side, a third of a scratch's length) is a fraction drawn from SIZES.
Everything is deterministic given the seed. numpy and OpenCV only: no TensorFlow.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from ganspection_tf.errors import GanspectionError

KINDS = ("patch", "scratch", "blob", "blur", "shift")
# Extent of a defect as a fraction of the image side (uniform in the range).
SIZES = {"small": (0.03, 0.06), "medium": (0.08, 0.14), "large": (0.16, 0.25)}
SCRATCH_LENGTH = 3.0  # a scratch is this many extents long
SITE_MARGIN = 0.1  # defects are centred at least this fraction of the side away from the border
_FOREGROUND_RANGE = (0.02, 0.9)  # a foreground covering less or more than this is not believed (see foreground_sites)


@dataclass
class DefectiveCopies:
    """Copies of good images with one synthetic defect each: images (M, H, W, C) uint8, masks (M, H, W) bool,
    and per copy the index of the good image it was drawn on, its kind and its size name."""

    images: np.ndarray
    masks: np.ndarray
    sources: list[int]
    kinds: list[str]
    sizes: list[str]


def draw_defect(image, kind, rng, size="medium", donor=None, sites=None) -> tuple[np.ndarray, np.ndarray]:
    """A copy of `image` (uint8 (H, W) or (H, W, C)) with one `kind` defect, and its mask (bool (H, W)).

    `donor` is the good image a ``patch`` is cut from (default: `image` itself); `sites` (bool (H, W)) where
    the defect may be centred (default: :func:`foreground_sites`). The input is never modified.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise GanspectionError(f"expected a uint8 image (H, W) or (H, W, C), got {image.dtype} {image.shape}")
    if kind not in KINDS:
        raise GanspectionError(f"unknown synthetic defect {kind!r}; use one of {', '.join(KINDS)}")
    if size not in SIZES:
        raise GanspectionError(f"unknown defect size {size!r}; use one of {', '.join(SIZES)}")
    pixels = image[..., np.newaxis] if image.ndim == 2 else image
    side = min(pixels.shape[:2])
    extent = max(2.0, rng.uniform(*SIZES[size]) * side)
    sites = foreground_sites(pixels) if sites is None else np.asarray(sites, bool)
    centre = random_site(rng, sites)
    donor = pixels if donor is None else (np.asarray(donor)[..., np.newaxis] if np.ndim(donor) == 2 else donor)
    drawn, mask = _DRAWERS[kind](pixels.astype(np.float32), centre, extent, rng, donor)
    defective = np.where(mask[..., np.newaxis], np.clip(np.rint(drawn), 0, 255), pixels).astype(np.uint8)
    return (defective[..., 0] if image.ndim == 2 else defective), mask


def defective_copies(images, seed=0, copies_per_image=2, kinds=KINDS, sizes=tuple(SIZES),
                     sites=None) -> DefectiveCopies:
    """`copies_per_image` defective copies of every good image (uint8 (N, H, W, C)), deterministic in `seed`.

    The (kind, size) combinations are dealt in turn over all copies, so every combination occurs as soon as
    there are at least as many copies as combinations. A ``patch`` is cut from another of the images.
    `sites` (bool (H, W), optional) is where defects may be centred on every image; default per image:
    :func:`foreground_sites`.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or not len(images):
        raise GanspectionError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
    combinations = list(itertools.product(kinds, sizes))
    out, masks, sources, kind_names, size_names = [], [], [], [], []
    for index in range(len(images)):
        for copy in range(copies_per_image):
            kind, size = combinations[(index * copies_per_image + copy) % len(combinations)]
            rng = np.random.default_rng([seed, index, copy])
            donor = images[(index + 1 + int(rng.integers(len(images) - 1))) % len(images)] if len(images) > 1 else None
            defective, mask = draw_defect(images[index], kind, rng, size, donor=donor, sites=sites)
            out.append(defective)
            masks.append(mask)
            sources.append(index)
            kind_names.append(kind)
            size_names.append(size)
    return DefectiveCopies(np.stack(out), np.stack(masks), sources, kind_names, size_names)


def foreground_sites(image, margin=SITE_MARGIN) -> np.ndarray:
    """Where to centre a defect: the pixels that differ from the border's colour (the part), inside a margin.

    Inspection photos show a part on a plain background (bottle, screw) or a surface filling the frame
    (textures). When the pixels unlike the border cover 2-90 % of the image they are taken as the part;
    otherwise (a surface, or a part filling the frame) every pixel inside the margin is a site.
    """
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels[..., np.newaxis] if pixels.ndim == 2 else pixels
    height, width = pixels.shape[:2]
    inner = np.zeros((height, width), bool)
    rows, cols = int(round(margin * height)), int(round(margin * width))
    inner[rows : height - rows, cols : width - cols] = True
    border = np.concatenate([pixels[:2].reshape(-1, pixels.shape[2]), pixels[-2:].reshape(-1, pixels.shape[2]),
                             pixels[:, :2].reshape(-1, pixels.shape[2]), pixels[:, -2:].reshape(-1, pixels.shape[2])])
    typical = np.median(border, axis=0)
    spread = np.median(np.abs(border - typical), axis=0).max()
    smoothed = cv2.GaussianBlur(pixels, (0, 0), sigmaX=max(1.0, 0.01 * min(height, width)))
    smoothed = smoothed[..., np.newaxis] if smoothed.ndim == 2 else smoothed
    unlike_border = np.abs(smoothed - typical).max(axis=2) > max(25.0, 4.0 * spread)
    part = unlike_border & inner
    if _FOREGROUND_RANGE[0] <= part.mean() / max(inner.mean(), 1e-9) <= _FOREGROUND_RANGE[1]:
        return part
    return inner


# --- drawing: each returns the float32 drawn image (H, W, C) and the bool mask of the region it changed -------


def _patch(pixels, centre, extent, rng, donor):
    height, width = pixels.shape[:2]
    side = int(round(extent))
    half = side // 2
    top, left = _clamped_corner(centre, half, side, height, width)
    # The source is somewhere else, at least one patch side away, so the pasted pixels are out of place.
    for _ in range(20):
        src_top, src_left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        if max(abs(src_top - top), abs(src_left - left)) >= side:
            break
    drawn = pixels.copy()
    source = np.asarray(donor, np.float32)[src_top : src_top + side, src_left : src_left + side]
    drawn[top : top + side, left : left + side] = source
    mask = np.zeros((height, width), bool)
    mask[top : top + side, left : left + side] = True
    return drawn, mask


def _scratch(pixels, centre, extent, rng, donor):
    height, width = pixels.shape[:2]
    half_length = SCRATCH_LENGTH * extent / 2
    direction = rng.uniform(0.0, np.pi)
    dx, dy = half_length * np.cos(direction), half_length * np.sin(direction)
    mask_u8 = np.zeros((height, width), np.uint8)
    thickness = max(1, int(extent / 16))  # 1 px for small and most medium scratches even at 256 px
    cv2.line(mask_u8, (int(round(centre[0] - dx)), int(round(centre[1] - dy))),
             (int(round(centre[0] + dx)), int(round(centre[1] + dy))), 255, thickness=thickness, lineType=cv2.LINE_8)
    mask = mask_u8 > 0
    surface = pixels[mask].mean()
    contrast = rng.uniform(60.0, 110.0)
    level = surface - contrast if surface > 128 else surface + contrast  # a scratch shows against its surface
    drawn = pixels.copy()
    drawn[mask] = level + rng.normal(0.0, 5.0, size=(int(mask.sum()), 1))
    return drawn, mask


def _blob(pixels, centre, extent, rng, donor):
    height, width = pixels.shape[:2]
    mask_u8 = np.zeros((height, width), np.uint8)
    radius = extent / 2
    for _ in range(int(rng.integers(3, 6))):  # overlapping disks make an irregular outline
        offset = rng.uniform(-0.5, 0.5, size=2) * radius
        blob_centre = (int(round(centre[0] + offset[0])), int(round(centre[1] + offset[1])))
        cv2.circle(mask_u8, blob_centre, max(1, int(round(radius * rng.uniform(0.5, 0.9)))), 255, thickness=-1)
    mask = mask_u8 > 0
    factor = rng.uniform(0.35, 0.6) if rng.random() < 0.5 else rng.uniform(1.4, 1.8)
    tint = rng.uniform(0.75, 1.0, size=pixels.shape[2]) if pixels.shape[2] > 1 else np.ones(1)
    drawn = pixels.copy()
    drawn[mask] = pixels[mask] * factor * tint + (40.0 if factor > 1 else 0.0)  # lightening also lifts black
    return drawn, mask


def _blur(pixels, centre, extent, rng, donor):
    mask = _disk_mask(pixels.shape[:2], centre, extent / 2)
    blurred = cv2.GaussianBlur(pixels, (0, 0), sigmaX=max(1.0, extent / 4), borderType=cv2.BORDER_REFLECT)
    drawn = pixels.copy()
    drawn[mask] = blurred.reshape(pixels.shape)[mask]
    return drawn, mask


def _shift(pixels, centre, extent, rng, donor):
    mask = _disk_mask(pixels.shape[:2], centre, extent / 2)
    offset = rng.uniform(30.0, 55.0) * (1 if rng.random() < 0.5 else -1)
    colour = rng.uniform(-20.0, 20.0, size=pixels.shape[2]) if pixels.shape[2] > 1 else np.zeros(1)
    drawn = pixels.copy()
    drawn[mask] = pixels[mask] + offset + colour
    return drawn, mask


_DRAWERS = {"patch": _patch, "scratch": _scratch, "blob": _blob, "blur": _blur, "shift": _shift}


def _disk_mask(shape, centre, radius) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, (int(centre[0]), int(centre[1])), max(1, int(round(radius))), 255, thickness=-1)
    return mask > 0


def _clamped_corner(centre, half, side, height, width) -> tuple[int, int]:
    top = min(max(int(centre[1]) - half, 0), height - side)
    left = min(max(int(centre[0]) - half, 0), width - side)
    return top, left


def random_site(rng, sites) -> tuple[int, int]:
    """A random (x, y) among the True pixels of `sites` (bool (H, W))."""
    candidates = np.flatnonzero(sites)
    if not len(candidates):
        raise GanspectionError("no place to draw a synthetic defect: the defect sites are empty")
    y, x = divmod(int(candidates[rng.integers(len(candidates))]), sites.shape[1])
    return x, y
