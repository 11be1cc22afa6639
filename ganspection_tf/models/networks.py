"""The three BiGAN networks as functional Keras models: encoder E(x)→z, generator G(z)→x, critic D(x, z).

All three are DCGAN-style pyramids sized by the image: the image side halves the resolution with stride-2
convolutions until it is 4×4, doubling the filters (capped at 8× `width`). Functional models keep every layer
serializable (``model.keras`` loads with ``safe_mode=True``) and let the exporter wire them into one scorer.

The critic never uses batch norm: the WGAN-GP penalty is defined per sample, and batch norm couples the samples
of a batch. Layer norm or spectral norm are options; the minibatch-statistics feature (Salimans et al. 2016) is
one too, off by default because it makes a single image's score depend on the other images of its batch.
"""

import functools
import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from ganspection_tf.config import SUPPORTED_SIZES

LEAK = 0.2
MAX_WIDTH_MULTIPLIER = 8
# The critic's stage whose activations are its patch features (stride 4, a receptive field of 10 px); its first
# stage (stride 2, 4 px) gives the fine patch features (with_patch_features).
PATCH_STAGE = 1


def pyramid_depth(image_size: int) -> int:
    """Number of stride-2 stages between `image_size` and 4×4."""
    if image_size not in SUPPORTED_SIZES:
        raise ValueError(f"image size {image_size} is not supported; use one of {SUPPORTED_SIZES}")
    return int(math.log2(image_size)) - 2


def stage_filters(width: int, stage: int) -> int:
    return width * min(2**stage, MAX_WIDTH_MULTIPLIER)


@keras.saving.register_keras_serializable(package="ganspection_tf")
class MinibatchStddev(layers.Layer):
    """Appends the mean over features of the per-feature standard deviation across the batch as one channel.

    The minibatch-statistics trick (Salimans et al. 2016; this simple form is from Karras et al. 2018): the
    critic sees how varied a batch is, which penalises a generator that collapses to a few modes.
    """

    def call(self, x):
        spread = ops.sqrt(ops.var(x, axis=0) + 1e-8)
        summary = ops.mean(spread)
        feature = ops.ones_like(x[..., :1]) * ops.cast(summary, x.dtype)
        return ops.concatenate([x, feature], axis=-1)


def _subpixel_taps() -> np.ndarray:
    """(3, 3, 4, 4, 4) one-hot: which tap (k, l) of a 4 × 4 stride-2 "same" transposed-convolution kernel the tap
    (t, u) of a 3 × 3 convolution holds for output phase p = 2a + b (the output pixel (2m + a, 2n + b)). Derived
    from the forward convolution the transposed one inverts (padding 1 before, 1 after): output row 2m + a
    reads input row m + t − 1 through kernel row a + 3 − 2t, where that lies in 0..3."""
    taps = np.zeros((3, 3, 4, 4, 4), dtype="float32")
    for t in range(3):
        for u in range(3):
            for a in range(2):
                for b in range(2):
                    k, col = a + 3 - 2 * t, b + 3 - 2 * u
                    if 0 <= k < 4 and 0 <= col < 4:
                        taps[t, u, 2 * a + b, k, col] = 1.0
    return taps


@keras.saving.register_keras_serializable(package="ganspection_tf")
class SubpixelConv2DTranspose(layers.Conv2DTranspose):
    """``Conv2DTranspose(filters, 4, strides=2, padding="same")``: the same weights (a run trained with the plain
    layer loads into it) and the same outputs, computed as one 3 × 3 convolution into 4 × `filters` channels, one
    group per output phase, then depth-to-space. Each output pixel of a phase reads a 2 × 2 neighbourhood of the
    input, so the 3 × 3 kernel is the 4 × 4 one rearranged with zeros (:func:`_subpixel_taps`). Transposed
    convolutions are among the slowest kernels of LiteRT, in float and more so in int8; this form exports as
    CONV_2D + DEPTH_TO_SPACE (benchmarks/RESULTS.md, "Sub-pixel upsampling")."""

    TAPS = _subpixel_taps()

    def __init__(self, filters, **kwargs):
        kwargs = {"kernel_size": 4, "strides": 2, "padding": "same", **kwargs}
        super().__init__(filters, **kwargs)
        if (self.kernel_size, self.strides, self.padding, self.dilation_rate, self.data_format,
                self.output_padding) != ((4, 4), (2, 2), "same", (1, 1), "channels_last", None):
            raise ValueError("SubpixelConv2DTranspose is a 4 × 4, stride-2, 'same', channels-last transposed "
                             "convolution only")

    def call(self, inputs):
        in_channels = self.kernel.shape[-1]
        kernel = ops.einsum("tupkl,klOI->tuIpO", ops.cast(self.TAPS, self.kernel.dtype), self.kernel)
        kernel = ops.reshape(ops.cast(kernel, self.compute_dtype), (3, 3, in_channels, 4 * self.filters))
        phases = ops.conv(inputs, kernel, strides=1, padding="same")
        if self.use_bias:
            phases = phases + ops.tile(ops.cast(self.bias, self.compute_dtype), [4])
        outputs = tf.nn.depth_to_space(phases, 2)
        return self.activation(outputs) if self.activation is not None else outputs

    def get_config(self):
        config = super().get_config()
        for fixed in ("kernel_size", "strides", "padding", "dilation_rate", "data_format", "output_padding"):
            config.pop(fixed, None)
        return config


def _normalization(norm: str, name: str):
    if norm == "layer":
        return layers.LayerNormalization(axis=[1, 2, 3], name=name)
    if norm == "instance":
        return layers.GroupNormalization(groups=-1, name=name)
    return None


def _conv(filters, kernel, strides, norm, name):
    conv = layers.Conv2D(filters, kernel, strides=strides, padding="same", name=name)
    return layers.SpectralNormalization(conv, name=f"{name}_sn") if norm == "spectral" else conv


def _downsampling_stack(x, image_size, width, norm, prefix):
    """Stride-2 convolutions down to 4×4; the first stage is never normalised (DCGAN practice)."""
    for stage in range(pyramid_depth(image_size)):
        x = _conv(stage_filters(width, stage), 4, 2, norm, f"{prefix}_conv{stage}")(x)
        layer_norm = _normalization(norm, f"{prefix}_norm{stage}") if stage > 0 else None
        if layer_norm is not None:
            x = layer_norm(x)
        x = layers.LeakyReLU(LEAK, name=f"{prefix}_act{stage}")(x)
    return x


def build_encoder(image_size=64, channels=3, latent_dim=64, width=32, norm="layer", name="encoder"):
    """E: image in [-1, 1] → latent code (linear, trained to look like N(0, I))."""
    image = keras.Input((image_size, image_size, channels), name="image")
    x = _downsampling_stack(image, image_size, width, "none" if norm == "spectral" else norm, "enc")
    x = layers.Flatten(name="enc_flatten")(x)
    z = layers.Dense(latent_dim, name="enc_latent", dtype="float32")(x)
    return keras.Model(image, z, name=name)


def build_generator(image_size=64, channels=3, latent_dim=64, width=32, norm="layer", name="generator",
                    subpixel=False):
    """G: latent code → image in [-1, 1] (tanh), mirroring the encoder pyramid. `subpixel`: the upsampling
    layers as :class:`SubpixelConv2DTranspose` (the same weights and outputs; faster on LiteRT, slower to train
    with TensorFlow on CPUs, so the export uses it and training does not)."""
    upsampling = SubpixelConv2DTranspose if subpixel else functools.partial(layers.Conv2DTranspose, kernel_size=4,
                                                                            strides=2, padding="same")
    depth = pyramid_depth(image_size)
    z = keras.Input((latent_dim,), name="z")
    top = stage_filters(width, depth - 1)
    x = layers.Dense(4 * 4 * top, name="gen_project")(z)
    x = layers.Reshape((4, 4, top), name="gen_reshape")(x)
    for stage in reversed(range(depth)):
        filters = stage_filters(width, max(stage - 1, 0))
        x = upsampling(filters, name=f"gen_up{stage}")(x)
        layer_norm = _normalization("none" if norm == "spectral" else norm, f"gen_norm{stage}")
        if layer_norm is not None:
            x = layer_norm(x)
        x = layers.LeakyReLU(LEAK, name=f"gen_act{stage}")(x)
    image = layers.Conv2D(channels, 3, padding="same", activation="tanh", name="gen_image", dtype="float32")(x)
    return keras.Model(z, image, name=name)


def build_critic(
    image_size=64,
    channels=3,
    latent_dim=64,
    width=32,
    norm="layer",
    minibatch_stats=False,
    feature_dim=512,
    name="critic",
):
    """D: joint pair (x, z) → (critic value of shape (batch, 1), joint features).

    An image path (convolutions to 4×4), a latent path (two dense layers) and a joint head. The joint hidden
    layer is returned as the critic features used by feature matching and by the critic-feature score.
    """
    image = keras.Input((image_size, image_size, channels), name="image")
    z = keras.Input((latent_dim,), name="z")
    x = _downsampling_stack(image, image_size, width, norm, "crit")
    if minibatch_stats:
        x = MinibatchStddev(name="crit_minibatch_stddev")(x)
    x = layers.Flatten(name="crit_flatten")(x)
    h = z
    for i in range(2):
        h = layers.Dense(feature_dim, name=f"crit_latent{i}")(h)
        h = layers.LeakyReLU(LEAK, name=f"crit_latent_act{i}")(h)
    joint = layers.Concatenate(name="crit_joint")([x, h])
    joint = layers.Dense(feature_dim, name="crit_joint_dense")(joint)
    features = layers.LeakyReLU(LEAK, name="crit_features", dtype="float32")(joint)
    value = layers.Dense(1, name="crit_value", dtype="float32")(features)
    return keras.Model([image, z], [value, features], name=name)


def with_patch_features(critic, inspected_size):
    """The critic with its patch features: (image, z, whole image) → (critic value, joint features, (B, S/4, S/4,
    F1) the image's patch features at PATCH_STAGE, (B, I/2, I/2, F0) the whole image's fine patch features).

    The image is one network-sized tile (S px) of the whole inspected image (I px; the tile itself when it is not
    inspected by tiles). The fine patch features are the critic's first stage (a 4 × 4 convolution, stride 2,
    never normalised) run over the whole image: only the image's border is zero-padded there, whereas tile by tile
    every tile's edge would be, and good patches would differ at the seams only because of where the tiles were
    cut. (The first stage alone can see an image of any size; the next ones normalise over the tile.)

    The same layers (and weights) as `critic`, seen as a new functional model, so a scorer that uses this view
    instead of the critic holds every layer once (Keras saves shared layers once). Each position describes a
    small neighbourhood of the image as the critic sees it, independent of z and of where it is."""
    channels = critic.inputs[0].shape[-1]
    whole = keras.Input((inspected_size, inspected_size, channels), name="whole_image")
    by_name = {layer.name: layer for layer in critic.layers}
    convolution = by_name.get("crit_conv0_sn", by_name.get("crit_conv0"))  # spectral norm wraps the convolution
    fine_patches = by_name["crit_act0"](convolution(whole))
    patches = by_name[f"crit_act{PATCH_STAGE}"].output
    return keras.Model([*critic.inputs, whole], [*critic.outputs, patches, fine_patches], name=critic.name)
