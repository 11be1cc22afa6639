"""tf.distribute on one machine: strategy choice, who writes where, MirroredStrategy equivalence, mixed precision.

The MirroredStrategy checks run in a subprocess (tests/distributed_worker.py): splitting the CPU into two logical
devices must happen before TensorFlow initialises, and must not change the devices of this test session.
"""

import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from ganspection_tf import distribute
from ganspection_tf.errors import GanspectionError
from ganspection_tf.training import TrainConfig, build_model

HELPER = Path(__file__).with_name("distributed_worker.py")
EQUIVALENCE_TOLERANCE = 1e-5  # relative to each variable's scale; float32 reordering gives < 1e-6 here


def run_helper(*args, timeout=300):
    """Runs tests/distributed_worker.py in a fresh process and returns its JSON result."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, str(HELPER), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ choosing


def test_unknown_strategy_names_the_choices():
    with pytest.raises(GanspectionError, match="--strategy ring: unknown; choose one of auto, default"):
        distribute.resolve_strategy_name("ring")


def test_auto_picks_multiworker_when_tf_config_describes_a_cluster(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {}}))
    assert distribute.resolve_strategy_name("auto") == "multiworker"


def test_auto_without_cluster_or_gpus_is_the_default_strategy(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.resolve_strategy_name("auto") == "default"


def test_multiworker_without_tf_config_says_what_is_missing(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(GanspectionError, match="needs TF_CONFIG"):
        distribute.make_strategy("multiworker")


def test_broken_tf_config_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{cluster: oops")
    with pytest.raises(GanspectionError, match="TF_CONFIG is not valid JSON"):
        distribute.resolve_strategy_name("auto")


def test_devices_only_go_with_mirrored():
    with pytest.raises(GanspectionError, match="--devices works with --strategy mirrored"):
        distribute.make_strategy("default", ["/cpu:0"])


# ------------------------------------------------------------------------------------------------ who writes


def fake_strategy(cluster, task_type, task_id):
    spec = types.SimpleNamespace(as_dict=lambda: cluster)
    resolver = types.SimpleNamespace(cluster_spec=lambda: spec, task_type=task_type, task_id=task_id)
    return types.SimpleNamespace(cluster_resolver=resolver)


@pytest.mark.parametrize(
    "cluster, task_type, task_id, chief",
    [
        ({"worker": ["a", "b"]}, "worker", 0, True),  # no chief job: worker 0 is the chief
        ({"worker": ["a", "b"]}, "worker", 1, False),
        ({"chief": ["c"], "worker": ["a", "b"]}, "chief", 0, True),
        ({"chief": ["c"], "worker": ["a", "b"]}, "worker", 0, False),
    ],
)
def test_the_chief_follows_tensorflows_convention(cluster, task_type, task_id, chief):
    assert distribute.is_chief(fake_strategy(cluster, task_type, task_id)) is chief


def test_the_chief_writes_the_run_folder_and_keeps_it(tmp_path):
    strategy = fake_strategy({"worker": ["a", "b"]}, "worker", 0)
    assert distribute.writing_folder(tmp_path, strategy) == tmp_path
    distribute.discard_worker_folder(tmp_path, tmp_path)
    assert tmp_path.is_dir()


def test_other_workers_write_a_temporary_folder_that_is_deleted(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    folder = distribute.writing_folder(tmp_path / "run", fake_strategy({"worker": ["a", "b"]}, "worker", 1))
    assert folder.parent == tmp_path / "tmp" and folder.name.startswith("ganspection-worker1-")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "ckpt-2.index").write_text("x")
    distribute.discard_worker_folder(folder, tmp_path / "run")
    assert not folder.exists()


def test_single_process_logs_stay_scalars():
    logs = {"critic_loss": np.float32(1.5)}
    assert distribute.reducible_logs(logs) is logs


# ------------------------------------------------------------------------------------------------ MirroredStrategy


@pytest.mark.slow
@pytest.mark.parametrize("gp_every", [1, 3], ids=["penalty-every-update", "lazy-penalty-in-tf-cond"])
def test_a_mirrored_step_equals_a_single_device_step_at_the_same_global_batch(gp_every):
    result = run_helper("equivalence", gp_every)

    assert result["replicas"] == 2 and result["steps"] == [1, 1]
    assert result["same_names"] and result["variables"] > 100  # E, G, D, EMA weights and both Adam states
    assert result["start_gap"] == 0.0
    name, gap = result["largest_gap"]
    assert gap < EQUIVALENCE_TOLERANCE, f"{name} differs by {gap:.2e} (relative)"
    name, moved = result["least_moved"]
    assert moved > 3 * EQUIVALENCE_TOLERANCE, f"the step hardly moved {name} ({moved:.2e}): nothing was compared"
    for key, single in result["single_logs"].items():
        assert result["mirrored_logs"][key] == pytest.approx(single, rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_fit_under_mirrored_strategy_on_two_devices_writes_a_loadable_run(synthetic_category, tmp_path):
    result = run_helper("mirrored-train", synthetic_category, tmp_path / "run")

    assert result["strategy"] == {"name": "mirrored", "replicas": 2}
    assert result["status"]["state"] == "finished" and result["status"]["step"] == 4
    rows = [line.split(",") for line in result["history"][1:]]
    header = result["history"][0].split(",")
    assert len(rows) == 2
    for row in rows:
        for name in ("critic_loss", "generator_loss", "latent_loss", "wasserstein"):
            assert np.isfinite(float(row[header.index(name)])), name
    assert result["loaded_step"] == 4 and result["reconstruction_finite"]
    assert "XLA is off under the mirrored strategy: TensorFlow cannot compile the distributed step" in result["log"]


# ------------------------------------------------------------------------------------------------ mixed precision


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


TINY_MODEL = dict(data="unused", image_size=32, channels=3, width=8, latent_dim=8, critic_steps=1, jit_compile=False)


def batch_of(images=4, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (images, 32, 32, 3)).astype("float32")


def one_step(model, batch):
    import tensorflow as tf

    return model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=1, epochs=1, verbose=0).history


def generator_side(model):
    return np.concatenate([np.ravel(v.numpy()) for v in model.encoder.weights + model.generator.weights])


def test_mixed_float16_gradients_are_unscaled_back_to_the_float32_update(mixed_float16):
    """Plain SGD shows the update size: loss scaling must leave it as in float32 (not scale times smaller)."""
    keras.mixed_precision.set_global_policy("float32")
    reference = build_model(TrainConfig.from_flat(**TINY_MODEL))
    reference.compile(d_optimizer=keras.optimizers.SGD(0.1), g_optimizer=keras.optimizers.SGD(0.1))
    keras.mixed_precision.set_global_policy("mixed_float16")
    mixed = build_model(TrainConfig.from_flat(precision="mixed_float16", **TINY_MODEL))
    mixed.compile(
        d_optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)),
        g_optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)),
    )
    mixed.set_weights(reference.get_weights())
    for optimizer in (mixed.d_optimizer, mixed.g_optimizer):
        optimizer.dynamic_scale.assign(2.0**7)  # low enough not to overflow (the default 2**15 does, once)
    start = generator_side(reference)

    one_step(reference, batch_of())
    history = one_step(mixed, batch_of())
    assert all(np.isfinite(values[-1]) for values in history.values())
    assert int(mixed.step.numpy()) == 1
    expected, got = generator_side(reference) - start, generator_side(mixed) - start
    cosine = expected @ got / (np.linalg.norm(expected) * np.linalg.norm(got))
    assert cosine > 0.98
    assert np.linalg.norm(got) / np.linalg.norm(expected) == pytest.approx(1.0, abs=0.05)


def test_mixed_float16_wraps_both_optimizers_and_a_skipped_step_still_counts(mixed_float16):
    model = build_model(TrainConfig.from_flat(precision="mixed_float16", **TINY_MODEL))
    assert isinstance(model.d_optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.g_optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.generator.get_layer("gen_up0").compute_dtype == "float16"
    for optimizer in (model.d_optimizer, model.g_optimizer):
        optimizer.dynamic_scale.assign(1e30)  # float16 gradients overflow to inf: the update is skipped
    before = generator_side(model)

    one_step(model, batch_of())
    assert int(model.step.numpy()) == 1  # the step counts, so checkpoints and the final save stay on schedule
    assert float(model.g_optimizer.dynamic_scale.numpy()) == pytest.approx(5e29)
    np.testing.assert_array_equal(generator_side(model), before)


def test_a_mixed_float16_model_of_the_previous_release_finds_its_optimizer_class():
    """Releases before the model's own step counter saved their loss-scaling optimizer under this name."""
    from ganspection_tf import training  # noqa: F401 (registers the old name)

    saved = keras.saving.serialize_keras_object(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-4)))
    saved.update(module="ganspection_tf.training", class_name="StepCountingLossScaleOptimizer",
                 registered_name="ganspection_tf>StepCountingLossScaleOptimizer")
    optimizer = keras.saving.deserialize_keras_object(saved)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(optimizer.inner_optimizer.learning_rate.numpy()) == pytest.approx(1e-4)
