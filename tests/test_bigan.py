"""The train_step: every weight group moves, losses are finite, the latent loss falls, the lazy gradient penalty
comes on the right critic updates with the right weight, save/load round-trips."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from ganspection_tf.config import ModelConfig
from ganspection_tf.models.bigan import WassersteinBiGAN


def tiny_model(**overrides):
    settings = dict(image_size=32, channels=3, latent_dim=8, width=8, critic_steps=2, seed=3)
    settings.update(overrides)
    model = WassersteinBiGAN(ModelConfig(**settings))
    model.compile(keras.optimizers.Adam(2e-4, 0.5, 0.9), keras.optimizers.Adam(2e-4, 0.5, 0.9))
    return model


def batches(seed=0, count=64):
    images = np.random.default_rng(seed).uniform(-1, 1, (count, 32, 32, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices(images).repeat().batch(8, drop_remainder=True)


def weight_snapshot(model):
    groups = {
        "encoder": model.encoder.trainable_variables,
        "generator": model.generator.trainable_variables,
        "critic": model.critic.trainable_variables,
        "ema": model.ema_weights,
    }
    return {name: [v.numpy() for v in variables] for name, variables in groups.items()}


def test_one_step_moves_every_weight_group_with_finite_losses():
    model = tiny_model(rec_weight=1.0, fm_weight=1.0)
    before = weight_snapshot(model)
    history = model.fit(batches(), steps_per_epoch=1, epochs=1, verbose=0).history
    after = weight_snapshot(model)

    for name in before:
        unchanged = [i for i, (a, b) in enumerate(zip(before[name], after[name])) if np.array_equal(a, b)]
        assert not unchanged, f"{name}: variables {unchanged} did not change"
    expected = {"critic_loss", "wasserstein", "gradient_penalty", "generator_loss", "latent_loss", "rec_loss"}
    assert expected <= set(history)
    assert all(np.isfinite(values[-1]) for values in history.values())
    assert int(model.step) == 1
    assert int(model.d_optimizer.iterations) == 2  # critic_steps updates per step


def test_latent_loss_decreases_over_a_short_run():
    model = tiny_model(latent_weight=5.0)
    history = model.fit(batches(), steps_per_epoch=10, epochs=4, verbose=0).history
    latent = history["latent_loss"]
    assert latent[-1] < 0.8 * latent[0], latent


def test_noise_differs_between_draws_and_steps_but_is_reproducible():
    model = tiny_model()
    first = model._replica_noise(tf.constant(0), 0, 4, [8])
    assert not np.allclose(first, model._replica_noise(tf.constant(0), 1, 4, [8]))
    assert not np.allclose(first, model._replica_noise(tf.constant(1), 0, 4, [8]))
    np.testing.assert_array_equal(first, model._replica_noise(tf.constant(0), 0, 4, [8]))


def test_gradient_penalty_is_finite_when_the_gradient_vanishes():
    model = tiny_model()
    for variable in model.critic.trainable_variables:
        variable.assign(tf.zeros_like(variable))  # a constant critic: gradient norm exactly 0
    real = tf.zeros((4, 32, 32, 3))
    z = tf.zeros((4, 8))
    with tf.GradientTape() as tape:
        penalty = model._gradient_penalty(real, z, real, z, tf.constant(0), 1, 4)
    grads = tape.gradient(penalty, model.critic.trainable_variables)
    assert float(penalty) == pytest.approx(1.0, abs=1e-4)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads if g is not None)


def penalty_recording_model(total_updates, **overrides):
    """A tiny model that counts, per critic update of the run (its index: the critic optimizer's iterations
    before it applies), how often the gradient penalty was computed."""
    computed = tf.Variable(tf.zeros([total_updates], tf.int32))

    class PenaltyRecorder(WassersteinBiGAN):
        def _gradient_penalty(self, *args):
            update = ops.cast(self.d_optimizer.iterations, "int64")
            computed.scatter_nd_add(tf.reshape(update, [1, 1]), [1])
            return super()._gradient_penalty(*args)

    settings = dict(image_size=32, channels=3, latent_dim=8, width=8, seed=3, **overrides)
    model = PenaltyRecorder(ModelConfig(**settings))
    model.compile(keras.optimizers.Adam(2e-4, 0.5, 0.9), keras.optimizers.Adam(2e-4, 0.5, 0.9))
    return model, computed


# 3 updates per step, every 2nd: the count runs on across steps (updates 0, 2 | 4 | 6, 8 | 10), not per step.
@pytest.mark.parametrize("critic_steps, gp_every", [(3, 2), (2, 1)], ids=["3-updates-every-2nd", "every-update"])
def test_gradient_penalty_is_computed_once_on_every_kth_critic_update_of_the_run(critic_steps, gp_every):
    steps = 4
    model, computed = penalty_recording_model(steps * critic_steps, critic_steps=critic_steps, gp_every=gp_every)
    model.fit(batches(), steps_per_epoch=steps, epochs=1, verbose=0)
    expected = [int(update % gp_every == 0) for update in range(steps * critic_steps)]
    assert computed.numpy().tolist() == expected
    assert int(model.d_optimizer.iterations) == steps * critic_steps  # every update still updates the critic


@pytest.mark.parametrize("gp_every", [1, 3])
def test_lazy_gradient_penalty_weighs_k_times_and_is_logged_only_where_computed(gp_every):
    # One critic update per step, one step per epoch: epoch i's logs are critic update i's.
    model = tiny_model(critic_steps=1, gp_every=gp_every, drift_weight=0.0)
    history = model.fit(batches(), steps_per_epoch=1, epochs=2 * gp_every, verbose=0).history
    for update, (loss, wasserstein, penalty) in enumerate(
            zip(history["critic_loss"], history["wasserstein"], history["gradient_penalty"])):
        if update % gp_every == 0:
            assert penalty > 0
            assert loss + wasserstein == pytest.approx(10.0 * gp_every * penalty, rel=1e-4)  # λ_gp 10, k times
        else:
            assert penalty == 0 and loss + wasserstein == pytest.approx(0.0, abs=1e-6)


def test_config_records_the_values_not_the_defaults():
    model = tiny_model(latent_weight=2.5, critic_steps=3, gp_every=2)
    config = model.get_config()
    assert config["latent_weight"] == 2.5 and config["critic_steps"] == 3 and config["width"] == 8
    assert config["gp_every"] == 2
    assert WassersteinBiGAN.from_config(config).get_config() == config


@pytest.mark.slow
def test_save_and_load_in_a_fresh_process_gives_identical_outputs(tmp_path):
    model = tiny_model(rec_weight=1.0)
    model.fit(batches(), steps_per_epoch=2, epochs=1, verbose=0)
    images = tf.constant(np.random.default_rng(9).uniform(-1, 1, (3, 32, 32, 3)).astype("float32"))
    encoder, generator, critic = model.scoring_networks()
    expected = {
        "reconstruction": np.asarray(model(images)),
        "ema_reconstruction": np.asarray(generator(encoder(images))),
        "critic": np.asarray(critic([images, encoder(images)])[0]),
    }
    np.savez(tmp_path / "inputs.npz", images=images, **expected)
    model.save(tmp_path / "model.keras")

    script = textwrap.dedent(
        f"""
        import numpy as np, keras, tensorflow as tf
        import ganspection_tf.models.bigan  # registers the class, as the CLI does
        data = np.load(r"{tmp_path / 'inputs.npz'}")
        model = keras.models.load_model(r"{tmp_path / 'model.keras'}", safe_mode=True)
        encoder, generator, critic = model.scoring_networks()
        images = tf.constant(data["images"])
        got = {{
            "reconstruction": np.asarray(model(images)),
            "ema_reconstruction": np.asarray(generator(encoder(images))),
            "critic": np.asarray(critic([images, encoder(images)])[0]),
        }}
        for name, value in got.items():
            assert np.array_equal(value, data[name]), name
        assert int(model.step) == 2, int(model.step)
        assert model.d_optimizer is not None and int(model.d_optimizer.iterations) == 4
        print("IDENTICAL")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "IDENTICAL" in result.stdout, result.stderr[-2000:]
