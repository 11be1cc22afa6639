"""Settings chosen from the training images: the ``from_data`` fields of ``config.py`` the user left unset.

``train`` calls :func:`choose` once per new run, on its training split, before decoding it: every such field
gets a value and a one-line reason, which config.json keeps under ``"data_choices"`` and ``train`` prints. A
value the user gave wins and its reason says so; a resumed run keeps what it was started with
(:func:`kept_on_resume`).

Until another rule is measured the values are the recipe the accuracy benchmark measures (``config.RECIPE_*``,
benchmarks/RESULTS.md). The tests are computed anyway and their findings go into the reasons, marked
NOT_ENABLED where they would suggest another value, or NOT_BETTER where a run measured that value without gain:

* channels: 1 when every training image is gray in its file, else 3 (the rule since the first release).
  Finding: colour files whose three channels are equal in the decoded sample hold gray content;
* image_size: the images' own size and how much smaller the model sees them; larger model sizes would keep
  finer defects when the images are that large;
* inspect_size: for parts at any pose and surfaces (pose spread ≥ ALIGNED_BELOW) the largest supported size
  the images have, by tiles of the image size: they are scored patch by patch, and their small defects (a
  scratch of 1–2 px, lost grain) vanish in the whole image at 64 px (AT_ANY_POSE_AT_256). For aligned parts the
  image size (the whole image in one tile): scored pixel by pixel against their place, they kept their image
  score and lost their maps at 128 px (TILES_NOT_BETTER);
* augment: the pose spread of the training images (:func:`pose_spread`). Aligned parts (below ALIGNED_BELOW)
  would look unlike every good image after a flip or a quarter turn; parts at any pose, or a texture, would
  stay good, which would make such augmentation useful (on screw it did not help the image AUROC: NOT_BETTER).
  The exposure augmentation suits every kind of part and is on: without it a model of parts photographed under
  one lamp fails good parts when the light changes by 5 % (EXPOSURE_ENABLED);
* steps: how many passes over the training images the recipe's length is;
* exposure_level: the training images' mean grey level, to which every image would be brought before the networks
  (``images.levelled``), so that a photo lit brighter or darker than the training photos is seen as they were;
  measured on the four benchmark categories, it did not hold on bottle and the synthetic unaligned parts
  (LEVELLING_NOT_ENABLED).

No TensorFlow: headers and a small sample of images are read with ``images.py``.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any

import numpy as np

from ganspection_tf.config import (
    EXPOSURE_GAIN_SPREAD,
    RECIPE_AUGMENT,
    RECIPE_IMAGE_SIZE,
    RECIPE_STEPS,
    SUPPORTED_SIZES,
    data_chosen_fields,
)
from ganspection_tf.images import UnreadableImage, convert_channels, image_header, read_image, resize_image
from ganspection_tf.tiles import tile_grid

USER = "set by the user"
NOT_ENABLED = "not enabled until measured (benchmarks/RESULTS.md)"
NOT_BETTER = "not enabled: measured on screw, no better image AUROC (benchmarks/RESULTS.md)"
TILES_NOT_BETTER = ("not enabled for aligned parts (pose spread < 0.35), compared pixel by pixel with their place: "
                    "measured at 128 px on bottle, the same image AUROC and blurred maps (benchmarks/RESULTS.md)")
EXPOSURE_ENABLED = (f"exposure: each training image at a random gain of 1 ± {EXPOSURE_GAIN_SPREAD:g}, so that a "
                    "change of light within that range is not a defect (without it the categories benchmark's bottle "
                    "model fails every good photo at 5 % less light; benchmarks/RESULTS.md, \"Exposure augmentation, "
                    "the default\")")
AT_ANY_POSE_AT_256 = ("measured at 64 → 256 px: the synthetic texture 0.62 → 0.91, the synthetic unaligned parts "
                      "0.85 → 0.97, screw 0.815 → 0.810 (benchmarks/RESULTS.md, \"Parts at any pose and surfaces "
                      "inspected at 256 px\")")
LEVELLING_NOT_ENABLED = ("not enabled: measured on four categories, it removes the lighting shift of screw's test "
                         "photos but lowers bottle's and the synthetic unaligned parts' validation AUROC "
                         "(benchmarks/RESULTS.md, \"Exposure levelling\")")
# Written for runs resumed from a config.json of a release that did not record choices.
UNRECORDED = "as the run was started (its release did not record why)"
SAMPLE_SIZE = 64  # training images decoded for the tests, evenly spaced over the sorted split
POSE_SIDE = 32  # px: coarse, so that a fixture's small jitter does not count, fine enough for a part's outline
# Pose spread below which parts count as aligned; set from training images only (benchmarks/RESULTS.md, "Pose
# spread"), between the aligned categories (≤ 0.15) and the unaligned ones and textures (≥ 0.65).
ALIGNED_BELOW = 0.35
EQUAL_CHANNELS_LEVELS = 4  # largest channel difference (grey levels, at POSE_SIDE) of gray content stored as RGB


@dataclasses.dataclass(frozen=True)
class Choice:
    """A data-dependent setting's value and why it has it."""

    value: Any
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record) -> Choice | None:
        """A stored choice, or None when `record` is not one (a hand-edited config.json)."""
        if isinstance(record, dict) and set(record) == {"value", "reason"} and isinstance(record["reason"], str):
            return cls(record["value"], record["reason"])
        return None


def choose(config, paths) -> tuple[Any, dict[str, Choice]]:
    """(`config` with every from_data field set, {field: Choice}) for a new run training on `paths`."""
    evidence = TrainingImages(paths, config.resize)
    rules = {"channels": _channels, "image_size": _image_size, "inspect_size": _inspect_size, "augment": _augment,
             "steps": _steps, "exposure_level": _exposure_level}
    choices = {}
    for name in data_chosen_fields():  # in order: a rule sees the values chosen before it (inspect_size: image_size)
        given = config.flat()[name]
        choices[name] = Choice(given, USER) if given is not None else rules[name](evidence, config)
        config = config.replace(**{name: choices[name].value})
    tile_grid(config.model.image_size, config.model.inspect_size)  # a given size that is no multiple: one line
    return config, choices


def kept_on_resume(stored: dict, previous, config) -> dict[str, Choice]:
    """The choices of a resumed run: as its config.json recorded them (`stored`, from ``"data_choices"``), except
    a field this command changed (`previous` → `config`), which the user set."""
    before, now = previous.flat(), config.flat()
    kept = {}
    for name in data_chosen_fields():
        recorded = Choice.from_record(stored.get(name))
        if now[name] != before[name]:
            kept[name] = Choice(now[name], USER)
        else:
            kept[name] = recorded if recorded is not None and recorded.value == now[name] else Choice(now[name],
                                                                                                       UNRECORDED)
    return kept


def describe(choices: dict[str, Choice]) -> list[str]:
    """The lines `train` prints: a header, then one line per field."""
    return ["data-dependent settings (chosen from the training images unless given; config.json \"data_choices\"):",
            *(f"  {name} {choice.value}: {choice.reason}" for name, choice in choices.items())]


def gray_rule(channel_counts) -> int:
    """1 when every image (its file's channel count) is gray, else 3."""
    counts = list(channel_counts)
    return 1 if counts and all(count == 1 for count in counts) else 3


def pose_spread(gray_images) -> float:
    """How differently good images fill the same place, from 0 (every image the same picture) to 1 (no place
    consistent: parts at any position and angle, or a texture).

    Each image (N, S, S) is standardised to mean 0 and variance 1 (brightness and contrast of the photo do not
    count), then the variance across images is averaged over the pixels: 1 − the mean square of their mean
    image, i.e. the share of an image's variance the mean good image does not explain.
    """
    images = np.asarray(gray_images, dtype=np.float64)
    flat = images.reshape(len(images), -1)
    flat = (flat - flat.mean(axis=1, keepdims=True)) / np.maximum(flat.std(axis=1, keepdims=True), 1e-6)
    return float(flat.var(axis=0).mean())


def parts_aligned(paths, resize) -> bool | None:
    """Whether the good images show their parts in one place (pose spread below ALIGNED_BELOW); None when fewer
    than 2 of them can be read. The score choice offers place-free terms only where parts move."""
    spread = TrainingImages(paths, resize).pose_spread
    return None if spread is None else spread < ALIGNED_BELOW


class TrainingImages:
    """What the rules look at, read once and only when a rule needs it: file headers, and a sample of images."""

    def __init__(self, paths, resize):
        self.paths = sorted(paths)
        self.resize = resize

    @cached_property
    def headers(self) -> list[tuple[int, int, int]]:
        """(width, height, channels) of every readable image (unreadable ones: ``load_images`` reports them)."""
        return [header for header in map(_header_or_none, self.paths) if header is not None]

    @cached_property
    def sample(self) -> list[np.ndarray]:
        """Up to SAMPLE_SIZE images, evenly spaced, as decoded (gray or RGB), resized to POSE_SIDE."""
        picks = np.unique(np.linspace(0, len(self.paths) - 1, min(SAMPLE_SIZE, len(self.paths))).astype(int))
        decoded = []
        for index in picks:
            try:
                decoded.append(resize_image(read_image(self.paths[index]), POSE_SIDE, self.resize))
            except UnreadableImage:
                continue
        return decoded

    @cached_property
    def pose_spread(self) -> float | None:
        """:func:`pose_spread` of the sample in gray, or None with fewer than 2 readable images."""
        gray = [convert_channels(image, 1)[..., 0] for image in self.sample]
        return pose_spread(gray) if len(gray) >= 2 else None


def _header_or_none(path):
    try:
        return image_header(path)
    except UnreadableImage:
        return None


# --- the rules: (training images, config) → Choice --------------------------------------------------------


def _channels(images, config):
    counts = [channels for _, _, channels in images.headers]
    if gray_rule(counts) == 1:
        return Choice(1, f"gray: all {len(counts)} training images are gray")
    colour = sum(count == 3 for count in counts)
    reason = f"RGB: {'all' if colour == len(counts) else f'{colour} of'} {len(counts)} training images are in colour"
    in_colour = [image.astype(np.int16) for image in images.sample if image.shape[-1] == 3]
    if in_colour and all(np.abs(np.diff(image, axis=-1)).max() <= EQUAL_CHANNELS_LEVELS for image in in_colour):
        reason += (f"; but their three channels are equal in the {len(in_colour)} sampled (gray content): 1 would "
                   f"do, {NOT_ENABLED}")
    return Choice(3, reason)


def _image_size(images, config):
    size = RECIPE_IMAGE_SIZE
    if not images.headers:
        return Choice(size, "the recipe's size (no training image readable)")
    shorter = [min(width, height) for width, height, _ in images.headers]
    shapes = sorted({(width, height) for width, height, _ in images.headers})
    shown = f"{shapes[0][0]}×{shapes[0][1]}" if len(shapes) == 1 else f"{min(shorter)}–{max(shorter)} px on the " \
                                                                       "shorter side"
    factor = min(shorter) / size
    seen = "at their own size" if factor == 1 else f"{factor:.3g}× {'smaller' if factor > 1 else 'larger'}"
    reason = f"the recipe's size: the training images are {shown}, seen {seen}"
    if any(width != height for width, height, _ in images.headers):
        reason += f" and made square by --resize {config.resize}"
    larger = [side for side in SUPPORTED_SIZES if size < side <= min(shorter)]
    if larger:
        reason += f"; {' or '.join(map(str, larger))} px would keep finer defects, {NOT_ENABLED}"
    return Choice(size, reason)


def _inspect_size(images, config):
    size = config.model.image_size
    shorter = [min(width, height) for width, height, _ in images.headers]
    larger = [side for side in SUPPORTED_SIZES if shorter and size < side <= min(shorter)]
    spread = images.pose_spread
    if larger and spread is not None and spread >= ALIGNED_BELOW:
        return Choice(larger[-1], f"{larger[-1]} px by {size} px tiles: pose spread {spread:.2f} ≥ {ALIGNED_BELOW}, "
                                  "parts at any pose or a surface, compared patch by patch with good patches from any "
                                  f"place, where a defect of 1–2 px (a scratch, lost grain) is finer than the whole "
                                  f"image at {size} px keeps; {AT_ANY_POSE_AT_256}")
    reason = f"the image size: each image is inspected whole at {size} px, no tiles"
    if larger:
        reason += (f"; {' or '.join(map(str, larger))} px by {size} px tiles would keep finer defects, "
                   f"{TILES_NOT_BETTER}")
    return Choice(size, reason)


def _augment(images, config):
    return Choice(RECIPE_AUGMENT, f"{EXPOSURE_ENABLED}; {_pose_finding(images)}")


def _pose_finding(images) -> str:
    spread, count = images.pose_spread, len(images.sample)
    if spread is None:
        return "fewer than 2 readable training images: pose spread not measured"
    if spread < ALIGNED_BELOW:
        return (f"pose spread {spread:.2f} < {ALIGNED_BELOW} over {count} training images: aligned parts, which a "
                "flip or a quarter turn would show in a pose no good image has")
    return (f"pose spread {spread:.2f} ≥ {ALIGNED_BELOW} over {count} training images: parts at any pose (or a "
            f"texture), which flips and quarter turns would keep good; {NOT_BETTER}")


def _exposure_level(images, config):
    means = [float(convert_channels(image, config.model.channels).mean()) for image in images.sample]
    if not means:
        return Choice(0.0, "off: no training image readable to measure a level from")
    level = round(float(np.mean(means)), 1)
    return Choice(0.0, f"off: the mean grey level of {len(means)} training images is {level:g} ({min(means):.0f}–"
                       f"{max(means):.0f} per image); --exposure-level {level:g} would bring every photo to it by one "
                       f"gain before the networks, {LEVELLING_NOT_ENABLED}")


def _steps(images, config):
    count = len(images.paths)
    passes = RECIPE_STEPS * config.batch_size / max(count, 1)
    reason = f"the recipe's length: {passes:.0f} passes over the {count} training images at batch {config.batch_size}"
    if config.max_minutes is not None:
        reason += f"; --max-minutes {config.max_minutes:g} may end it sooner"
    return Choice(RECIPE_STEPS, reason)
