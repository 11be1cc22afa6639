"""The three BiGAN networks as functional Keras models: encoder E(x)→z, generator G(z)→x, critic D(x, z).

All three are DCGAN-style pyramids sized by the image: the image side halves the resolution with stride-2
convolutions until it is 4×4, doubling the filters (capped at 8× `width`). Functional models keep every layer
serializable (``model.keras`` loads with ``safe_mode=True``) and let the exporter wire them into one scorer.

The critic never uses batch norm: the WGAN-GP penalty is defined per sample, and batch norm couples the samples
of a batch. Layer norm or spectral norm are options; the minibatch-statistics feature (Salimans et al. 2016) is
one too, off by default because it makes a single image's score depend on the other images of its batch.
"""

import math

import keras
from keras import layers, ops

from ganspection_tf.config import SUPPORTED_SIZES

LEAK = 0.2
MAX_WIDTH_MULTIPLIER = 8
PATCH_STAGE = 1  # the critic stage whose activations are its patch features: stride 4, a receptive field of 10 px


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


def build_generator(image_size=64, channels=3, latent_dim=64, width=32, norm="layer", name="generator"):
    """G: latent code → image in [-1, 1] (tanh), mirroring the encoder pyramid."""
    depth = pyramid_depth(image_size)
    z = keras.Input((latent_dim,), name="z")
    top = stage_filters(width, depth - 1)
    x = layers.Dense(4 * 4 * top, name="gen_project")(z)
    x = layers.Reshape((4, 4, top), name="gen_reshape")(x)
    for stage in reversed(range(depth)):
        filters = stage_filters(width, max(stage - 1, 0))
        x = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", name=f"gen_up{stage}")(x)
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


def with_patch_features(critic):
    """The critic with a third output, its image path at stage PATCH_STAGE: (B, S/4, S/4, F) patch features.

    The same layers (and weights) as `critic`, seen as a new functional model, so a scorer that uses this view
    instead of the critic holds every layer once (Keras saves shared layers once). Each position describes a
    small neighbourhood of the image as the critic sees it, independent of z and of where it is."""
    patches = critic.get_layer(f"crit_act{PATCH_STAGE}").output
    return keras.Model(critic.inputs, [*critic.outputs, patches], name=critic.name)
