"""The embedded default dataset: a synthetic MVTec-style category drawn from scratch (no download, no TensorFlow).

The "product" is a round machined flange seen from above: a bright rim, a brushed face with fine turning
rings and radial brush streaks, four bolt holes and a dark centre bore, on a darker background. Every good
image varies a little like real photos do (position +-3 % of the size, rotation +-8 degrees, brightness and
contrast +-10 %, sensor noise), so a model has to learn the product rather than memorise one picture.

Defects are drawn onto a freshly generated good image and are local and clearly visible:

* ``scratch`` - a thin (1-2 px) bright or dark line, 20-40 % of the image size long;
* ``hole``    - a dark filled circle, 4-8 % of the size across;
* ``stain``   - a blotchy brownish (darker, in gray) patch, 8-15 % of the size across.

The mask returned with each defect covers exactly the pixels the defect may have changed, so every pixel
outside the mask is identical to the good image it was drawn on.

Two harder modes (``mode=``) draw categories where a per-pixel comparison with the good images at the same
place cannot work, so that accuracy must come from the model:

* ``unaligned`` - an elongated, asymmetric link plate (two bolt holes, one small off-axis hole, turning marks)
  at a random position, any rotation and a scale of 0.8-1.15, like MVTec screw; defects lie on the plate;
* ``texture``   - a stochastic surface (band-pass grain under a woven pattern with a random phase), no object
  at all, like MVTec carpet or leather; defects lie anywhere but the outer 15 % of the image and are subtle
  (``apply_defect``): about within the surface's own grey levels.

Everything is seeded per image (``[seed, split, index]``, plus a mode key for the new modes), so a category is
byte-identical on every run and one split does not change when another split's image count does. The default
``aligned`` mode is the one the demo and most tests use; its images do not depend on the new modes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

from ganspection_tf.defects import random_site
from ganspection_tf.errors import GanspectionError

DEFECT_TYPES = ("scratch", "hole", "stain")
MODES = ("aligned", "unaligned", "texture")
_MODE_KEYS = {"unaligned": 1, "texture": 2}  # appended to the seed of the new modes (aligned keeps its seeds)
# Written into every generated category: overwrite=True only ever deletes folders carrying it.
_MARKER = ".ganspection-synthetic"
_METAL_TINT = np.array([1.0, 0.97, 0.92], dtype=np.float32)  # warm steel, RGB
_BACKGROUND_TINT = np.array([0.92, 1.0, 1.12], dtype=np.float32)  # cool dark conveyor
_STAIN_TINT = np.array([0.80, 0.62, 0.45], dtype=np.float32)  # rust / oil, RGB
_TEXTURE_TINT = np.array([1.0, 0.93, 0.82], dtype=np.float32)  # beige fabric / leather, RGB
_TEXTURE_MARGIN = 0.15  # texture defects are centred this fraction of the size away from the border
_SPLIT_TRAIN, _SPLIT_TEST_GOOD, _SPLIT_FIRST_DEFECT = 0, 1, 2


def write_synthetic_category(
    out_dir: Path | str,
    name: str = "widget",
    image_size: int = 128,
    n_train: int = 60,
    n_test_good: int = 12,
    n_test_per_defect: int = 8,
    defects: tuple[str, ...] = DEFECT_TYPES,
    channels: int = 3,
    seed: int = 0,
    overwrite: bool = False,
    mode: str = "aligned",
) -> Path:
    """Write ``<out_dir>/<name>`` in MVTec-AD layout and return that category folder.

    Files: ``train/good/000.png ...``, ``test/good/...``, ``test/<defect>/...`` and
    ``ground_truth/<defect>/<NNN>_mask.png`` (8-bit gray, 0 or 255). An existing non-empty folder is refused
    unless ``overwrite`` is set and the folder was written by this function (it carries a marker file), so
    user data is never deleted. ``mode`` is one of MODES (module docstring).
    """
    _check_arguments(image_size, n_train, defects, channels, seed)
    _check_mode(mode)
    category = Path(out_dir) / name
    _prepare_folder(category, overwrite)
    for i in range(n_train):
        good = generate_good(_rng(seed, _SPLIT_TRAIN, i, mode), image_size, channels, mode)
        _write_png(category / "train" / "good" / f"{i:03d}.png", good)
    for i in range(n_test_good):
        good = generate_good(_rng(seed, _SPLIT_TEST_GOOD, i, mode), image_size, channels, mode)
        _write_png(category / "test" / "good" / f"{i:03d}.png", good)
    for kind in defects:
        split = _SPLIT_FIRST_DEFECT + DEFECT_TYPES.index(kind)  # keyed by kind, not by position in `defects`
        for i in range(n_test_per_defect):
            rng = _rng(seed, split, i, mode)
            good, defect_sites = good_and_defect_sites(rng, image_size, channels, mode)
            img, mask = apply_defect(good, kind, rng, sites=defect_sites, subtle=mode == "texture")
            _write_png(category / "test" / kind / f"{i:03d}.png", img)
            _write_png(category / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
    (category / _MARKER).write_text("written by ganspection_tf.data.synthetic.write_synthetic_category\n")
    return category


def generate_good(rng: np.random.Generator, size: int = 128, channels: int = 3, mode: str = "aligned") -> np.ndarray:
    """One defect-free product image of `mode` (MODES), ``uint8 (size, size, channels)``, RGB or gray."""
    return good_and_defect_sites(rng, size, channels, mode)[0]


def apply_defect(img: np.ndarray, kind: str, rng: np.random.Generator, sites: np.ndarray | None = None,
                 subtle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Draw a ``kind`` defect on a copy of ``img``; return it and its mask (``uint8 (H, W)``, 0 or 255).

    The defect is centred on a random True pixel of `sites` (bool (H, W)), or, without it, on the face of the
    aligned flange. `subtle` (the texture mode) keeps the defect about within the surface's own range of grey
    levels, so that it differs from the surface more by its structure than by being darker or brighter than the
    good pixels: a scratch 30-45 levels off the local surface (about the texture's peaks), a hole where the
    texture is missing (a smooth spot at the local mean), a stain 70 % as strong. Only pixels inside the mask are changed.
    """
    if kind not in DEFECT_TYPES:
        raise GanspectionError(f"unknown defect type {kind!r}; use one of {', '.join(DEFECT_TYPES)}")
    height, width = img.shape[:2]
    size = min(height, width)
    centre = _point_on_face(rng, width, height, size) if sites is None else random_site(rng, sites)
    mask = np.zeros((height, width), dtype=np.uint8)
    out = img.astype(np.float32)
    drawer = {"scratch": _draw_scratch, "hole": _draw_hole, "stain": _draw_stain}[kind]
    region = drawer(out, mask, centre, size, rng, subtle)
    defective = img.copy()
    defective[region] = _to_uint8(out[region])
    return defective, mask


# --- drawing ---------------------------------------------------------------------------------------------


def good_and_defect_sites(rng, size=128, channels=3, mode="aligned") -> tuple[np.ndarray, np.ndarray | None]:
    """A good image of `mode` and where :func:`apply_defect` may centre a defect on it: bool (size, size), or
    None for the aligned flange (its face, found from the nominal pose)."""
    _check_mode(mode)
    if mode == "aligned":
        luminance, coverage = _draw_part(rng, size)
        sites, tints = None, (_METAL_TINT, _BACKGROUND_TINT)
    elif mode == "unaligned":
        luminance, coverage, sites = _draw_link_plate(rng, size)
        tints = (_METAL_TINT, _BACKGROUND_TINT)
    else:
        luminance, coverage = _draw_texture(rng, size), np.ones((size, size), np.float32)
        sites = np.zeros((size, size), bool)
        margin = int(round(_TEXTURE_MARGIN * size))
        sites[margin : size - margin, margin : size - margin] = True
        tints = (_TEXTURE_TINT, _TEXTURE_TINT)
    return _photograph(rng, luminance, coverage, channels, *tints), sites


def _photograph(rng, luminance, coverage, channels, part_tint, background_tint) -> np.ndarray:
    """Exposure jitter (contrast, brightness +-10 %), colour and sensor noise: gray levels -> uint8 image."""
    contrast, brightness = rng.uniform(0.9, 1.1, size=2)
    luminance = (luminance - 100.0) * contrast + 100.0 * brightness
    if channels == 1:
        pixels = luminance[..., np.newaxis]
    else:
        cover = coverage[..., np.newaxis]
        pixels = luminance[..., np.newaxis] * (part_tint * cover + background_tint * (1.0 - cover))
    pixels = pixels + rng.normal(0.0, 2.0, size=pixels.shape)  # sensor noise, independent per channel
    return _to_uint8(pixels)


def _draw_part(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Gray-level picture of the flange (float32) and its anti-aliased coverage (1 on the part, 0 off it)."""
    cx, cy = size / 2.0 + rng.uniform(-0.03, 0.03, size=2) * size
    angle = np.deg2rad(rng.uniform(-8.0, 8.0))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = np.hypot(xx - cx, yy - cy)
    theta = np.arctan2(yy - cy, xx - cx) - angle

    background = 42.0 + 12.0 * yy / size  # uneven lighting
    rim = 195.0 + 8.0 * np.cos(theta + np.pi / 4)  # lit from the upper left
    face = 150.0 + 4.0 * np.sin(2 * np.pi * radius / (0.035 * size)) + 3.0 * _brush_streaks(rng, theta)

    part = _disk(radius, 0.38 * size)
    picture = _paint(background, rim, part)
    picture = _paint(picture, face, _disk(radius, 0.33 * size))
    for k in range(4):
        bolt_angle = angle + np.pi / 4 + k * np.pi / 2
        bx, by = cx + 0.235 * size * np.cos(bolt_angle), cy + 0.235 * size * np.sin(bolt_angle)
        picture = _paint(picture, 35.0, _disk(np.hypot(xx - bx, yy - by), 0.028 * size))
    picture = _paint(picture, 18.0, _disk(radius, 0.09 * size))  # centre bore
    return picture, part


def _draw_link_plate(rng, size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An elongated plate (a stadium) at a random position, rotation and scale, wholly inside the image.

    Returns the gray-level picture, the plate's anti-aliased coverage and the defect sites (the plate's face,
    away from its edge). The off-axis small hole makes every rotation distinguishable, including 180 degrees.
    """
    scale = rng.uniform(0.8, 1.15)
    angle = rng.uniform(0.0, 2 * np.pi)
    half_length, half_width = 0.26 * size * scale, 0.09 * size * scale
    reach = half_length + half_width + 2.0
    cx, cy = rng.uniform(reach, size - reach, size=2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)  # the plate's own axes
    across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    from_axis = np.hypot(np.maximum(np.abs(along) - half_length, 0.0), across)  # distance from the centre segment

    background = 40.0 + 14.0 * xx / size  # uneven lighting
    rim = 200.0 + 10.0 * np.cos(angle - np.pi / 4)  # the bevel catches the light by orientation
    face = 155.0 + 5.0 * np.sin(2 * np.pi * along / (0.03 * size * scale))  # turning marks across the plate
    coverage = _disk(from_axis, half_width)
    picture = _paint(background, rim, coverage)
    picture = _paint(picture, face, _disk(from_axis, 0.75 * half_width))
    holes = ((-0.17, 0.0, 0.035), (0.17, 0.0, 0.035), (0.04, 0.045, 0.018))  # (along, across, radius) / size
    for u, v, radius in holes:
        distance = np.hypot(along - u * size * scale, across - v * size * scale)
        picture = _paint(picture, 30.0, _disk(distance, radius * size * scale))
    sites = _disk(from_axis, 0.6 * half_width) >= 1.0
    return picture, coverage, sites


def _draw_texture(rng, size) -> np.ndarray:
    """A stationary stochastic surface: band-pass grain plus a woven pattern at a random phase (gray levels)."""
    noise = rng.normal(0.0, 1.0, size=(size, size)).astype(np.float32)
    fine = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(0.5, 0.012 * size), borderType=cv2.BORDER_REFLECT)
    coarse = cv2.GaussianBlur(noise, (0, 0), sigmaX=0.06 * size, borderType=cv2.BORDER_REFLECT)
    grain = fine - coarse
    grain /= float(grain.std()) + 1e-6
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    tilt = np.deg2rad(rng.uniform(-3.0, 3.0))
    u, v = xx * np.cos(tilt) + yy * np.sin(tilt), -xx * np.sin(tilt) + yy * np.cos(tilt)
    period = 0.06 * size
    phase_u, phase_v = rng.uniform(0.0, 2 * np.pi, size=2)
    weave = np.sin(2 * np.pi * u / period + phase_u) * np.sin(2 * np.pi * v / period + phase_v)
    return 125.0 + 12.0 * grain + 10.0 * weave


def _brush_streaks(rng: np.random.Generator, theta: np.ndarray) -> np.ndarray:
    """Radial streaks: unit-variance noise that depends only on the angle, so it rotates with the part."""
    bins = 720
    streaks = rng.normal(0.0, 1.0, size=bins).astype(np.float32)
    index = ((theta / (2 * np.pi)) % 1.0 * bins).astype(np.int64) % bins
    return streaks[index]


def _disk(distance: np.ndarray, radius: float) -> np.ndarray:
    """Anti-aliased coverage of a disk: 1 inside, 0 outside, a 1-px ramp on the edge."""
    return np.clip(radius - distance + 0.5, 0.0, 1.0)


def _paint(below: np.ndarray, colour, coverage: np.ndarray) -> np.ndarray:
    return below * (1.0 - coverage) + colour * coverage


def _point_on_face(rng: np.random.Generator, width: int, height: int, size: int) -> tuple[int, int]:
    """A point on the flange face: between the bore and the rim, allowing for the part's position jitter."""
    distance = rng.uniform(0.14, 0.27) * size
    direction = rng.uniform(0.0, 2 * np.pi)
    return int(round(width / 2 + distance * np.cos(direction))), int(round(height / 2 + distance * np.sin(direction)))


def _draw_scratch(out, mask, centre, size, rng, subtle=False) -> np.ndarray:
    half = rng.uniform(0.2, 0.4) * size / 2
    direction = rng.uniform(0.0, np.pi)
    dx, dy = half * np.cos(direction), half * np.sin(direction)
    start = (int(round(centre[0] - dx)), int(round(centre[1] - dy)))
    end = (int(round(centre[0] + dx)), int(round(centre[1] + dy)))
    cv2.line(mask, start, end, 255, thickness=int(rng.integers(1, 3)), lineType=cv2.LINE_8)
    region = mask > 0
    level = 235.0 if rng.random() < 0.5 else 25.0  # polished-bright or dirt-dark
    if subtle:
        level = float(out[region].mean()) + (1 if level > 128 else -1) * rng.uniform(30.0, 45.0)
    out[region] = level + rng.normal(0.0, 6.0, size=(int(region.sum()), 1))
    return region


def _draw_hole(out, mask, centre, size, rng, subtle=False) -> np.ndarray:
    radius = max(2, int(round(rng.uniform(0.02, 0.04) * size)))
    cv2.circle(mask, centre, radius, 255, thickness=-1, lineType=cv2.LINE_8)
    region = mask > 0
    level = rng.uniform(8.0, 22.0)
    if subtle:  # the surface's structure is gone, its mean level stays
        level = cv2.GaussianBlur(out, (0, 0), sigmaX=0.08 * size).reshape(out.shape)[region]
    out[region] = level + rng.normal(0.0, 3.0, size=(int(region.sum()), 1))
    return region


def _draw_stain(out, mask, centre, size, rng, subtle=False) -> np.ndarray:
    radius = rng.uniform(0.04, 0.075) * size
    for _ in range(4):  # overlapping blobs make an irregular outline
        offset = rng.uniform(-0.6, 0.6, size=2) * radius
        blob_centre = (int(round(centre[0] + offset[0])), int(round(centre[1] + offset[1])))
        cv2.circle(mask, blob_centre, max(2, int(round(radius * rng.uniform(0.5, 0.9)))), 255, thickness=-1)
    region = mask > 0
    # Smooth low-frequency variation makes the patch blotchy rather than flat.
    coarse = rng.normal(0.0, 1.0, size=(6, 6)).astype(np.float32)
    blotches = cv2.resize(coarse, mask.shape[::-1], interpolation=cv2.INTER_CUBIC)
    strength = np.clip(0.9 + 0.12 * blotches[region], 0.7, 1.1)[:, np.newaxis] * (0.7 if subtle else 1.0)
    tint = _STAIN_TINT if out.shape[2] == 3 else _STAIN_TINT.mean(keepdims=True)
    out[region] = out[region] * (1.0 - strength * (1.0 - tint))
    return region


# --- files -----------------------------------------------------------------------------------------------


def _rng(seed: int, split: int, index: int, mode: str = "aligned") -> np.random.Generator:
    key = [seed, split, index] if mode == "aligned" else [seed, split, index, _MODE_KEYS[mode]]
    return np.random.default_rng(key)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise GanspectionError(f"{path}: could not encode the PNG; check free disk space")
    encoded.tofile(path)  # tofile, unlike cv2.imwrite, copes with non-ASCII paths


def _prepare_folder(category: Path, overwrite: bool) -> None:
    if not category.exists() or not any(category.iterdir()):
        return
    if not overwrite:
        raise GanspectionError(
            f"{category}: already exists and is not empty; delete it or choose another output folder"
        )
    if not (category / _MARKER).is_file():
        raise GanspectionError(
            f"{category}: was not written by the synthetic generator, so it is not deleted; "
            "choose another output folder"
        )
    shutil.rmtree(category)


def _check_mode(mode) -> None:
    if mode not in MODES:
        raise GanspectionError(f"unknown synthetic mode {mode!r}; use one of {', '.join(MODES)}")


def _check_arguments(image_size, n_train, defects, channels, seed) -> None:
    if channels not in (1, 3):
        raise GanspectionError(f"channels must be 1 or 3, got {channels!r}")
    if int(image_size) != image_size or image_size < 32:
        raise GanspectionError(f"synthetic image size must be an integer >= 32, got {image_size!r}")
    if n_train < 1:
        raise GanspectionError(f"the synthetic category needs at least 1 training image, got n_train={n_train}")
    unknown = [d for d in defects if d not in DEFECT_TYPES]
    if unknown:
        raise GanspectionError(f"unknown defect type(s) {', '.join(map(repr, unknown))}; use {', '.join(DEFECT_TYPES)}")
    if int(seed) != seed or seed < 0:
        raise GanspectionError(f"seed must be a non-negative integer, got {seed!r}")
