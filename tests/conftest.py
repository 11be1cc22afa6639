"""Shared fixtures: a small deterministic synthetic category and tiny training settings.

Everything is generated in temporary folders; nothing binary is committed. Models are tiny (32 px, width 8)
and not XLA-compiled, so a training run takes seconds on a 2-core CI machine.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
MVTEC_BOTTLE_CANDIDATES = (REPO.parent / "shared/data/mvtec_ad/bottle", Path("/work/shared/data/mvtec_ad/bottle"))


def mvtec_bottle():
    """The real MVTec AD bottle category, read in place (never copied), or None where it is absent."""
    return next((path for path in MVTEC_BOTTLE_CANDIDATES if path.is_dir()), None)


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
