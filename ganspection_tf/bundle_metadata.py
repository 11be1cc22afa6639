"""An edge bundle's ``metadata.json`` as a typed object, with the preprocessing as numbers the camera applies.

No numpy and no TensorFlow: the camera reads it before anything else. ``bundle_writer.py`` writes it with
:meth:`BundleMetadata.to_dict`; ``edge.EdgeScorer`` reads it with :meth:`BundleMetadata.from_dict`, which also
reads format version 1 (the preprocessing written as prose: ``image_size``, ``channels``, ``color_order``,
``resize``, ``normalisation`` at the top level).
"""

import dataclasses
import math

from ganspection_tf.config import ASPECTS, INTERPOLATIONS, SUPPORTED_SIZES, build_checked, setting
from ganspection_tf.errors import GanspectionError

FORMAT = "ganspection-tf-edge-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_FIX = "re-export it with 'ganspection-tf export RUN_DIR --tflite --out BUNDLE_DIR'"
_PROSE_KEYS = ("image_size", "channels", "color_order", "resize", "normalisation")  # format version 1
# The model's quantisations (`export --quantize`, the metadata's "quantization"): float32, float16 weights,
# int8 weights with float activations, int8 (with float islands), int16 activations with int8 weights.
QUANTIZATIONS = ("none", "float16", "dynamic", "int8", "int16x8")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """A frame → the model input: channels in `color_order`, resized with `interpolation` and `aspect` to
    `image_size` × `image_size`, re-exposed to `exposure_level`, pixels in [input_min, input_max], which the model
    maps linearly onto [model_min, model_max] itself."""

    image_size: int = setting(None, int, "Side of the square model input.", choices=SUPPORTED_SIZES)
    channels: int = setting(None, int, "1 (gray) or 3.", choices=(1, 3))
    color_order: str = setting("rgb", str, "Channel order of the model input.", choices=("rgb",))
    input_min: int = setting(0, int, "Smallest pixel value (uint8).", choices=(0,))
    input_max: int = setting(255, int, "Largest pixel value (uint8).", choices=(255,))
    model_min: float = setting(-1.0, float, "What the model maps input_min to.")
    model_max: float = setting(1.0, float, "What the model maps input_max to.")
    interpolation: str = setting(INTERPOLATIONS[0], str, "Resize interpolation.", choices=INTERPOLATIONS)
    aspect: str = setting(ASPECTS[0], str, "How a non-square picture becomes square.", choices=ASPECTS)
    exposure_level: float = setting(0.0, float, "The resized picture's mean grey level is brought to this by one "
                                    "gain (images.levelled); 0: not levelled (bundles from before the setting).",
                                    low=0.0, high=255.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source):
        preprocessing = build_checked(cls, values, source, "preprocessing.", fix=_FIX)
        shape = (preprocessing.image_size, preprocessing.channels)
        if None in shape or preprocessing.model_min >= preprocessing.model_max:
            raise GanspectionError(f"{source}: 'preprocessing' needs image_size, channels and model_min < "
                                   f"model_max; {_FIX}")
        return preprocessing

    @classmethod
    def from_prose(cls, values, source):
        """Format version 1: the preprocessing was always the training's (area, stretched, uint8 → [-1, 1])."""
        missing = [key for key in _PROSE_KEYS if key not in values]
        if missing:
            raise GanspectionError(f"{source}: invalid bundle metadata (missing keys {missing}); {_FIX}")
        return cls.from_dict({key: values[key] for key in ("image_size", "channels", "color_order")}, source)


# key → accepted Python type(s); anything else is refused with a one-line error naming the key.
_TYPED_KEYS = {
    "score": str,
    "terms": list,
    "outputs": list,
    "heatmap": bool,
    "calibration": dict,
    "threshold": (int, float),
    "quantization": str,
    "package_version": str,
    "config_hash": str,
    "model_sha256": str,
}
# Optional keys (bundles of earlier releases lack them): the sorted combined scores of the calibration's good
# validation images, from which the camera chooses a threshold for another --max-fpr by the calibration's rule.
_OPTIONAL_KEYS = {"validation_scores": list}


@dataclasses.dataclass(frozen=True)
class BundleMetadata:
    """What the camera needs to score (typed and checked), plus `details`: figures recorded for people
    (TensorFlow version, model step, sizes, …) that scoring does not read."""

    preprocessing: Preprocessing
    score: str
    terms: list
    outputs: list
    heatmap: bool
    calibration: dict
    threshold: float
    quantization: str
    package_version: str
    config_hash: str
    model_sha256: str
    validation_scores: list | None = None
    details: dict = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        """The metadata.json written by this release (always the current format version)."""
        typed = {key: getattr(self, key) for key in _TYPED_KEYS}
        typed.update({key: getattr(self, key) for key in _OPTIONAL_KEYS if getattr(self, key) is not None})
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "preprocessing": self.preprocessing.to_dict(),
                **typed, **self.details}

    @classmethod
    def from_dict(cls, values, source="metadata.json") -> "BundleMetadata":
        if not isinstance(values, dict) or values.get("format") != FORMAT:
            raise GanspectionError(f"{source}: not a ganspection-tf edge bundle (no \"format\": \"{FORMAT}\"); "
                                   f"point at a folder written by 'ganspection-tf export', or {_FIX}")
        version = values.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise GanspectionError(f"{source}: bundle format version {version!r}, this ganspection-tf reads "
                                   f"versions {', '.join(map(str, READABLE_VERSIONS))}; {_FIX} (or install the "
                                   "matching ganspection-tf)")
        if version == 1:
            preprocessing, own_keys = Preprocessing.from_prose(values, source), _PROSE_KEYS
        else:
            preprocessing, own_keys = Preprocessing.from_dict(values.get("preprocessing"), source), ("preprocessing",)
        _check_types(values, source)
        details = {key: value for key, value in values.items()
                   if key not in (*_TYPED_KEYS, *_OPTIONAL_KEYS, *own_keys, "format", "format_version")}
        return cls(preprocessing=preprocessing, details=details, format_version=version,
                   **{key: values[key] for key in _TYPED_KEYS}, **{key: values.get(key) for key in _OPTIONAL_KEYS})


def _check_types(values, source):
    missing = sorted(key for key in _TYPED_KEYS if key not in values)
    if missing:
        raise GanspectionError(f"{source}: invalid bundle metadata (missing keys {missing}); {_FIX}")
    for key, kind in {**_TYPED_KEYS, **{k: v for k, v in _OPTIONAL_KEYS.items() if values.get(k) is not None}}.items():
        value = values[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise GanspectionError(f"{source}: invalid bundle metadata ('{key}' has type {type(value).__name__}); "
                                   f"{_FIX}")
    scores = values.get("validation_scores")
    if scores is not None and not (scores and all(_is_finite_number(score) for score in scores)):
        raise GanspectionError(f"{source}: invalid bundle metadata ('validation_scores' must be a non-empty list of "
                               f"finite numbers); {_FIX}")
    if not math.isfinite(values["threshold"]):
        raise GanspectionError(f"{source}: invalid bundle metadata ('threshold' is {values['threshold']}, not a "
                               f"finite number); {_FIX}")


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
