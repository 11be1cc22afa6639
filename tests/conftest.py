"""Shared fixtures: a small deterministic synthetic category, tiny training settings, and one tiny trained run
shared by the whole session.

Everything is generated in temporary folders; nothing binary is committed. Models are tiny (32 px, width 8)
and not XLA-compiled, so a training run takes seconds on a 2-core CI machine. Session fixtures are read-only:
a test that changes a run works on a copy (`tiny_run_copy`), so no test depends on another one's order.
"""

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
MVTEC_BOTTLE = REPO.parent / "shared/data/mvtec_ad/bottle"  # beside the repository, as the README says


def mvtec_bottle():
    """The real MVTec AD bottle category, read in place (never copied), or None where it is absent."""
    return MVTEC_BOTTLE if MVTEC_BOTTLE.is_dir() else None


def tiny_settings(**overrides):
    """TrainConfig keyword arguments for a model that trains in seconds."""
    settings = dict(
        image_size=32,
        width=8,
        latent_dim=8,
        critic_steps=1,
        batch_size=8,
        steps=4,
        log_every=2,
        checkpoint_every=2,
        sample_every=2,
        jit_compile=False,
        val_fraction=0.2,
    )
    settings.update(overrides)
    return settings


@pytest.fixture(scope="session")
def synthetic_category(tmp_path_factory):
    from ganspection_tf.data import synthetic

    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.write_synthetic_category(
        root, name="widget", image_size=64, n_train=40, n_test_good=8, n_test_per_defect=6
    )


TINY_RUN_SETTINGS = tiny_settings(steps=4, rec_weight=1.0)


@pytest.fixture(scope="session")
def tiny_run(synthetic_category, tmp_path_factory):
    """A run trained once per session on `synthetic_category` with TINY_RUN_SETTINGS (checkpoints at steps 2
    and 4). Do not change it: take `tiny_run_copy`."""
    from ganspection_tf import training

    run_dir = tmp_path_factory.mktemp("shared-run") / "tiny"
    config = training.TrainConfig.from_flat(data=str(synthetic_category), **TINY_RUN_SETTINGS)
    training.train(config, run_dir, verbose=0, log=lambda *_: None)
    return run_dir


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path):
    """A private copy of `tiny_run` that the test may change."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


PREVIOUS_RELEASE = "8262d30"  # the last commit before ModelConfig, the step counter, run.py and terms.py


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory):
    """A folder holding the previous release's `ganspection_tf` package (from git history), to run in a
    subprocess with PYTHONPATH pointing at it; skips where the clone has no such history (shallow clones)."""
    folder = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "ganspection_tf"],
                             capture_output=True, timeout=120)
    if archive.returncode != 0:
        pytest.skip(f"git history without {PREVIOUS_RELEASE} (shallow clone?): {archive.stderr.decode()[:200]}")
    (folder / "release.tar").write_bytes(archive.stdout)
    with tarfile.open(folder / "release.tar") as tar:
        tar.extractall(folder, filter="data")
    return folder


def previous_release_environment(package_folder):
    """The environment for a subprocess that imports the previous release (and these tests' helpers)."""
    paths = [str(package_folder), str(Path(__file__).resolve().parent)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture
def images_read(monkeypatch):
    """The paths the data pipeline decodes during a test, in order (the real reader still runs)."""
    from ganspection_tf.data import pipeline

    read = []
    original = pipeline.read_image

    def recording_reader(path, *args, **kwargs):
        read.append(Path(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "read_image", recording_reader)
    return read
