"""The configuration of a run, declared once: each field with its default, its allowed values and its help.

`ModelConfig` is what the network needs (the model is built from it and `model.keras` stores it);
`TrainConfig` nests it and adds the data, the optimisation and the bookkeeping. The `train` command's options
are generated from these fields, and a `config.json` read back is checked against the same ranges, so a
default or a range is written here and nowhere else. No TensorFlow here: the CLI imports it at start-up.

Fields marked ``from_data`` (channels, image size, augmentation, training length) default to None: ``train``
chooses them from the training images (``data/choices.py``) and records each value with its reason in
config.json; a value the user gives wins. Until a rule is measured, the choice is the recipe value below.
"""

import dataclasses
import math
from pathlib import Path
from typing import Any

from ganspection_tf.errors import GanspectionError
from ganspection_tf.tiles import tile_grid

SUPPORTED_SIZES = (32, 64, 128, 256)
NORMS = ("none", "layer", "instance", "spectral")
AUGMENTATIONS = ("hflip", "vflip", "rot90", "exposure")
# The exposure augmentation multiplies each training image by a gain drawn from 1 ± this: lighting that drifts by
# that much between photos does not make a part defective.
EXPOSURE_GAIN_SPREAD = 0.1
# Exposure levelling (train --exposure-level) brings each image's mean grey level to the run's level with one gain
# per image, kept within these bounds: a frame nearly black or white is not amplified into noise or saturation.
EXPOSURE_LEVEL_GAINS = (0.5, 2.0)
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
MAX_CRITIC_STEPS = 15  # the model draws 2 noise tensors per critic update and 1 per generator update, 32 per step
MAX_GP_EVERY = 64  # the penalty at least once per 64 critic updates
MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which keras.utils.set_random_seed uses, takes 32 bits
MAX_STEPS = 10**9
# What `train` chooses for the `from_data` fields until a measured rule replaces it (benchmarks/RESULTS.md):
# the recipe the categories benchmark measures.
RECIPE_IMAGE_SIZE, RECIPE_STEPS, RECIPE_AUGMENT = 64, 2000, "exposure"
_FROM_DATA = "default: chosen from the training images, config.json says why"
# How a picture becomes the model's square input (training, scoring and the camera alike).
INTERPOLATIONS = ("area",)  # cv2.INTER_AREA: averages when shrinking, no aliasing
# How images become the model's square (train --resize, images.resize_image); runs and bundles from before the
# choice were stretched. The bundle's preprocessing calls it "aspect".
RESIZE_MODES = ("stretch", "pad", "crop")
DEFAULT_RESIZE = RESIZE_MODES[0]
ASPECTS = RESIZE_MODES


@dataclasses.dataclass(frozen=True)
class Check:
    """What a field accepts: a type (int, float, str, bool, or list of device names), bounds or choices."""

    kind: type
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    comma_list: bool = False  # a comma-separated subset of `choices` (or "none")
    optional: bool = False  # None allowed (meaning "decide from the data")
    from_data: bool = False  # None (the default) is chosen from the training images by `train` (data/choices.py)
    switch: str | None = None  # a boolean's --NAME/--no-NAME when it differs from the field name

    def problem(self, value) -> str | None:
        """Why `value` is not accepted, or None."""
        if value is None:
            return None if self.optional else "must be set"
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) and v.startswith("/") for v in value):
                return "must be device names such as /gpu:0,/gpu:1"
            return None
        if self.kind is str:
            return self._string_problem(value)
        return self._number_problem(value)

    def _string_problem(self, value):
        if not isinstance(value, str):
            return "must be text"
        if self.comma_list:
            names = [name.strip().lower() for name in value.split(",") if name.strip()]
            unknown = [name for name in names if name not in self.choices] if names != ["none"] else []
            if unknown:
                return f"{unknown[0]!r} is unknown; use a comma list of {', '.join(self.choices)}, or none"
            return None
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}"
        return None

    def _number_problem(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.kind is int and not isinstance(value, int)):
            return "must be a whole number" if self.kind is int else "must be a number"
        if not math.isfinite(value):
            return "must be a finite number"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self.describe_range()}" if too_low or too_high else None

    def describe_range(self) -> str:
        low = None if self.low is None else f"{'>' if self.low_open else '≥'} {_number(self.low)}"
        high = None if self.high is None else f"{'<' if self.high_open else '≤'} {_number(self.high)}"
        return " and ".join(part for part in (low, high) if part)

    def parse(self, text: str):
        """A command-line string as this field's type (the range is checked separately)."""
        if self.optional and text.lower() in ("", "auto") + (() if self.comma_list else ("none",)):
            return None  # a comma list's "none" is a value: no item
        if self.kind is list:
            return [device.strip() for device in text.split(",") if device.strip()]
        if self.kind is int:
            return int(text)  # ValueError for "1.5" or "ten"
        if self.kind is float:
            return float(text)  # accepts "nan" and "inf", which problem() then refuses as non-finite
        return text


def setting(default, kind, help="", **check) -> Any:
    """A dataclass field with its default and its `Check`."""
    spec = Check(kind, help=help, **check)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"check": spec})
    return dataclasses.field(default=default, metadata={"check": spec})


def _weight(default, help, positive=False):
    return setting(default, float, help, low=0.0, low_open=positive)


@dataclasses.dataclass
class ModelConfig:
    """The networks and the losses of the Wasserstein BiGAN (`model.keras` stores exactly these)."""

    image_size: int | None = setting(None, int, f"Side of the square images the model sees (pixels); {_FROM_DATA} "
                                     f"({RECIPE_IMAGE_SIZE} so far).", choices=SUPPORTED_SIZES, optional=True,
                                     from_data=True)
    inspect_size: int | None = setting(None, int, "Side of the square the whole image is inspected at (pixels): "
                                       "a multiple of --image-size, scored as a grid of image-size tiles and "
                                       "trained on random image-size crops of it; "
                                       f"{_FROM_DATA} (the image size so far: no tiles).", choices=SUPPORTED_SIZES,
                                       optional=True, from_data=True)
    channels: int | None = setting(None, int, f"Gray (1) or RGB (3); {_FROM_DATA} (1 when every training image is "
                                   "gray).", choices=(1, 3), optional=True, from_data=True)
    latent_dim: int = setting(64, int, "Size of the latent code z.", low=2, high=1024)
    width: int = setting(32, int, "Filters of the first convolution (doubling per stage, capped at 8×).",
                         low=4, high=256)
    norm: str = setting("layer", str, "Normalisation in the encoder and generator.", choices=NORMS[:3])
    critic_norm: str = setting("layer", str, "Normalisation in the critic.", choices=NORMS)
    minibatch_stats: bool = setting(False, bool, "Minibatch-stddev feature in the critic (Salimans et al. 2016).")
    critic_steps: int = setting(5, int, "Critic updates per step.", low=1, high=MAX_CRITIC_STEPS)
    gp_weight: float = _weight(10.0, "λ_gp of the WGAN-GP gradient penalty.", positive=True)
    gp_every: int = setting(1, int, "Lazy regularisation: the gradient penalty on every k-th critic update only "
                            "(counted over the run), weighted k·λ_gp; 1 = on every update.", low=1,
                            high=MAX_GP_EVERY)
    latent_weight: float = _weight(1.0, "λ_latent of the latent L2 loss ‖z − E(G(z))‖²/d (0 turns it off).")
    rec_weight: float = _weight(300.0, "λ_rec of ‖x − G(E(x))‖₁ (mean over pixels, so it needs to be large).")
    fm_weight: float = _weight(0.0, "Critic feature matching weight.")
    drift_weight: float = _weight(1e-3, "Keeps the critic's values near 0 (Karras et al. 2018).")
    ema_decay: float = setting(0.999, float, "Weight averaging of E and G (0 turns it off).", low=0.0, high=1.0,
                               high_open=True)
    seed: int = setting(0, int, "Seeds the split, the weights and the noise.", low=0, high=MAX_SEED)

    @property
    def inspected_size(self) -> int | None:
        """The side the whole image is inspected at: inspect_size, or image_size where it is unset (runs from
        before the setting)."""
        return self.image_size if self.inspect_size is None else self.inspect_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="model config", prefix=""):
        config = build_checked(cls, values, source, prefix)
        if config.image_size is not None and config.inspect_size is not None:
            tile_grid(config.image_size, config.inspect_size, f"{source}: '{prefix}inspect_size'")
        return config


@dataclasses.dataclass
class TrainConfig:
    """Everything `train` needs: the data, the model, the optimisation and what it writes when."""

    data: str | None = setting(None, str, "MVTec category folder, a dataset root (with --category), or a folder "
                               "of good images (default with --resume: the run's own).", optional=True)
    category: str | None = setting(None, str, "Category name under a dataset root (e.g. bottle).", optional=True)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    batch_size: int = setting(16, int, "Images per step and replica.", low=1, high=4096)
    steps: int | None = setting(None, int, f"Training steps in total (with --resume: the new total); {_FROM_DATA} "
                                f"({RECIPE_STEPS} so far).", low=1, high=MAX_STEPS, optional=True, from_data=True)
    max_minutes: float | None = setting(None, float, "Wall-clock budget of this train command in minutes: stop (and "
                                        "save) after the first log interval after which one more would pass it; "
                                        "--steps still bounds the run.", low=0.0, low_open=True, optional=True)
    learning_rate: float = setting(1e-4, float, "Adam's learning rate.", low=0.0, low_open=True)
    critic_learning_rate: float | None = setting(None, float, "The critic's own learning rate (two time-scale "
                                                 "update rule, Heusel et al. 2017; with fewer --critic-steps); "
                                                 "default: --learning-rate.", low=0.0, low_open=True, optional=True)
    beta_1: float = setting(0.5, float, "Adam's β1.", low=0.0, high=1.0, high_open=True)
    beta_2: float = setting(0.9, float, "Adam's β2.", low=0.0, high=1.0, high_open=True)
    weight_decay: float = setting(0.0, float, "> 0 uses AdamW.", low=0.0, high=1.0)
    augment: str | None = setting(None, str, f"Comma-separated: hflip, vflip, rot90, exposure (or none); {_FROM_DATA} "
                                  f"({RECIPE_AUGMENT} so far).", choices=AUGMENTATIONS, comma_list=True,
                                  optional=True, from_data=True)
    resize: str = setting(DEFAULT_RESIZE, str, "How images become the model's square: stretch (aspect ratio not "
                          "kept), pad (whole image, black bands) or crop (central square). Stored with the run; "
                          "evaluate, score, export and the camera use it.", choices=RESIZE_MODES)
    exposure_level: float | None = setting(None, float, "Each image, once resized, is scaled by one gain so that its "
                                           "mean grey level is this (0-255; 0 = off): photos lit brighter or darker "
                                           "look alike to the networks. Stored with the run; evaluate, score, export "
                                           f"and the camera use it; {_FROM_DATA} (off so far; the reason gives the "
                                           "training images' level).",
                                           low=0.0, high=255.0, optional=True, from_data=True)
    val_fraction: float = setting(0.15, float, "Good training images held out for score calibration.", low=0.0,
                                  high=0.5)
    log_every: int = setting(50, int, "Steps per logged row (and per Keras epoch).", low=1, high=MAX_STEPS)
    checkpoint_every: int = setting(100, int, "Steps between checkpoints.", low=1, high=MAX_STEPS)
    sample_every: int = setting(100, int, "Steps between sample grids.", low=1, high=MAX_STEPS)
    validate_every: int | None = setting(None, int, "Every N steps, print the AUROC of the score the calibration "
                                         "would choose, on synthetic defects drawn on the good validation images: "
                                         "when it stops rising the model is good enough to stop.", low=1,
                                         high=MAX_STEPS, optional=True)
    keep_checkpoints: int = setting(3, int, "Checkpoints kept on disk.", low=1, high=1000)
    jit_compile: bool = setting(False, bool, "XLA-compile the step (slower on the CPUs measured; try it on GPUs).",
                                switch="jit")
    precision: str = setting("float32", str, "Compute precision.", choices=PRECISIONS)
    strategy: str = setting("auto", str, "tf.distribute strategy.", choices=STRATEGIES)
    devices: list[str] | None = setting(None, list, "Comma-separated devices for --strategy mirrored.", optional=True)

    @property
    def critic_rate(self) -> float:
        """The critic's learning rate: critic_learning_rate, or learning_rate where it is unset."""
        return self.learning_rate if self.critic_learning_rate is None else self.critic_learning_rate

    def flat(self) -> dict:
        """Every setting by its (unique) name, the model's included: what the command line shows."""
        values = {name: getattr(self, name) for name in _names(TrainConfig) if name != "model"}
        return {**values, **self.model.to_dict()}

    def replace(self, **values) -> "TrainConfig":
        """A copy with settings changed by their flat names (model fields included)."""
        model_names = set(_names(ModelConfig))
        model = dataclasses.replace(self.model, **{k: v for k, v in values.items() if k in model_names})
        return dataclasses.replace(self, model=model, **{k: v for k, v in values.items() if k not in model_names})

    @classmethod
    def from_flat(cls, **values) -> "TrainConfig":
        """TrainConfig(data=…, width=8, steps=4, …): settings by their flat names, the rest at their defaults."""
        unknown = set(values) - set(option_fields())
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        return cls().replace(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="config.json", prefix="train."):
        """Reads a stored config, checking every value; also the flat layout of releases before ModelConfig."""
        if not isinstance(values, dict):
            raise GanspectionError(f"{source}: '{prefix.rstrip('.')}' must be an object of settings; {_FIX}")
        values = dict(values)
        if "model" not in values:  # the flat layout: model settings beside the others
            model_names = set(_names(ModelConfig))
            values["model"] = {key: values.pop(key) for key in list(values) if key in model_names}
        values["model"] = ModelConfig.from_dict(values["model"], source, prefix + "model.")
        return build_checked(cls, values, source, prefix)


_FIX = "fix it or start a new run in another --out"


def _names(cls):
    return [field.name for field in dataclasses.fields(cls)]


def data_chosen_fields() -> list[str]:
    """The flat names of the fields `train` chooses from the training images when the user leaves them unset."""
    return [name for name, field in option_fields().items() if field.metadata["check"].from_data]


def option_fields() -> dict[str, dataclasses.Field]:
    """The fields behind `train`'s options, by flat name, in the order they are shown."""
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name != "model"]
    return {f.name: f for f in fields[:2] + list(dataclasses.fields(ModelConfig)) + fields[2:] if f.name != "model"}


def build_checked(cls, values, source, prefix, fix=_FIX):
    """A dataclass of `setting` fields from a stored dict, refusing unknown keys and values out of range in one
    line naming `source` and the key (missing keys take their defaults: fields added later)."""
    if not isinstance(values, dict):
        raise GanspectionError(f"{source}: '{prefix.rstrip('.')}' must be an object of settings; {fix}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    values = dict(values)
    unknown = [key for key in values if key not in fields]
    if unknown:
        raise GanspectionError(f"{source}: unknown key '{prefix}{unknown[0]}'; {fix}")
    for key, value in values.items():
        check = fields[key].metadata.get("check")
        problem = check.problem(value) if check else None
        if problem:
            raise GanspectionError(f"{source}: '{prefix}{key}' is {_shown(value)}: it {problem}; {fix}")
        if check and check.kind is float and value is not None:
            values[key] = float(value)  # a hand-written 10 for 10.0
    return cls(**values)


def _number(value):
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _shown(value):
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "…"


def train_config_from_record(record, source) -> TrainConfig:
    """The `train` section of a run's config.json (already parsed), checked key by key."""
    if not isinstance(record, dict) or "train" not in record:
        raise GanspectionError(f"{source}: no 'train' section of settings; {_FIX}")
    return TrainConfig.from_dict(record["train"], source=str(source))


def resolved(path) -> Path:
    """A data path as an absolute one, so that a relative and an absolute spelling compare equal."""
    return Path(path).expanduser().resolve()
