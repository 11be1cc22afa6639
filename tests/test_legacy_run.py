"""A run folder written by the release before ModelConfig and the model's own step counter (a pinned commit of
this repository, checked out into a temporary folder) still loads, gives the same outputs, and resumes."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import previous_release_environment

from ganspection_tf import training
from ganspection_tf.cli import main

TINY_FLAGS = ["--image-size", "32", "--width", "8", "--latent-dim", "8", "--critic-steps", "1", "--batch-size", "8",
              "--steps", "2", "--log-every", "2", "--checkpoint-every", "2", "--sample-every", "2", "--no-jit",
              "--rec-weight", "1.5"]


@pytest.fixture(scope="module")
def legacy_run(synthetic_category, previous_release, tmp_path_factory):
    """A tiny run trained through the previous release's CLI, and its model's outputs on fixed inputs."""
    root = tmp_path_factory.mktemp("legacy")
    run_dir = root / "run"
    script = textwrap.dedent(f"""
        import numpy as np
        from ganspection_tf.cli import main
        from ganspection_tf import training
        assert main({["train", "--data", str(synthetic_category), "--out", str(run_dir), *TINY_FLAGS]!r}) == 0
        model = training.load_model({str(run_dir)!r})
        images = np.random.default_rng(5).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
        np.savez({str(root / "outputs.npz")!r}, images=images, reconstruction=np.asarray(model(images)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            env=previous_release_environment(previous_release), cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir, np.load(root / "outputs.npz")


pytestmark = pytest.mark.slow


def test_the_flat_config_of_the_release_reads_as_the_nested_one(legacy_run):
    run_dir, _ = legacy_run
    assert "model" not in json.loads((run_dir / "config.json").read_text())["train"]  # really the old layout
    config = training.read_train_config(run_dir)
    assert config.model.rec_weight == 1.5 and config.model.width == 8 and config.model.channels == 3
    assert config.steps == 2 and config.batch_size == 8


def test_the_release_model_loads_with_its_step_and_gives_the_same_outputs(legacy_run):
    run_dir, outputs = legacy_run
    model = training.load_model(run_dir)
    assert int(model.step) == 2
    assert model.config.rec_weight == 1.5
    np.testing.assert_array_equal(np.asarray(model(outputs["images"])), outputs["reconstruction"])


def test_the_release_run_resumes_without_data_and_counts_on(legacy_run, tmp_path, capfd):
    run_dir = shutil.copytree(legacy_run[0], tmp_path / "run")
    code = main(["train", "--out", str(run_dir), "--resume", "--steps", "4"])
    assert code == 0, capfd.readouterr().err
    model = training.load_model(run_dir)
    assert int(model.step) == 4 and int(model.step_counter) == 4
    assert int(model.g_optimizer.iterations) == 4  # the release's optimizer state was restored, not restarted
    assert json.loads((run_dir / "config.json").read_text())["train"]["model"]["rec_weight"] == 1.5
