import keras
import numpy as np
import pytest

from ganspection_tf.models import networks


@pytest.mark.parametrize("size", networks.SUPPORTED_SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_for_every_supported_size(size, channels):
    shape = dict(image_size=size, channels=channels, latent_dim=16, width=4)
    encoder = networks.build_encoder(**shape)
    generator = networks.build_generator(**shape)
    critic = networks.build_critic(**shape, feature_dim=32)
    images = np.random.default_rng(0).uniform(-1, 1, (2, size, size, channels)).astype("float32")

    z = encoder(images)
    generated = generator(z)
    value, features = critic([generated, z])

    assert z.shape == (2, 16)
    assert generated.shape == (2, size, size, channels)
    assert float(np.abs(generated).max()) <= 1.0  # tanh output
    assert value.shape == (2, 1)
    assert features.shape == (2, 32)


def test_unsupported_size_is_refused():
    with pytest.raises(ValueError, match="48"):
        networks.build_encoder(image_size=48)


def test_critic_has_no_batch_norm_and_optional_spectral_norm():
    critic = networks.build_critic(image_size=32, width=4, norm="spectral", feature_dim=16)
    kinds = {type(layer).__name__ for layer in critic.layers}
    assert "BatchNormalization" not in kinds
    assert "SpectralNormalization" in kinds


def test_minibatch_stddev_feature_depends_on_the_batch():
    layer = networks.MinibatchStddev()
    same = np.ones((4, 2, 2, 3), "float32")
    varied = np.random.default_rng(1).normal(size=(4, 2, 2, 3)).astype("float32")
    assert layer(same).shape == (4, 2, 2, 4)
    assert float(np.asarray(layer(same))[..., -1].max()) < 1e-3
    assert float(np.asarray(layer(varied))[..., -1].min()) > 0.1


@pytest.mark.parametrize("in_channels, filters, side", [(8, 4, 4), (3, 5, 8)])
def test_subpixel_upsampling_takes_the_transposed_convolutions_weights_and_gives_its_outputs(in_channels, filters,
                                                                                             side):
    rng = np.random.default_rng(2)
    images = rng.normal(size=(2, side, side, in_channels)).astype("float32")
    plain = keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same")
    subpixel = networks.SubpixelConv2DTranspose(filters)
    for layer in (plain, subpixel):
        layer(images)  # builds its weights
    weights = [rng.normal(size=weight.shape).astype("float32") for weight in plain.get_weights()]
    plain.set_weights(weights)
    subpixel.set_weights(weights)
    expected = np.asarray(plain(images))
    assert expected.shape == (2, 2 * side, 2 * side, filters)
    np.testing.assert_allclose(np.asarray(subpixel(images)), expected, rtol=1e-5, atol=1e-5)


def test_the_generator_in_its_subpixel_form_loads_the_trained_weights_and_generates_the_same_images():
    shape = dict(image_size=32, channels=3, latent_dim=8, width=4)
    trained, subpixel = networks.build_generator(**shape), networks.build_generator(**shape, subpixel=True)
    subpixel.set_weights(trained.get_weights())
    codes = np.random.default_rng(3).normal(size=(2, 8)).astype("float32")
    assert any(isinstance(layer, networks.SubpixelConv2DTranspose) for layer in subpixel.layers)
    np.testing.assert_allclose(np.asarray(subpixel(codes)), np.asarray(trained(codes)), atol=1e-5)
