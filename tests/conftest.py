"""Shared fixtures: a small deterministic synthetic category, tiny training settings, and one tiny trained run
shared by the whole session.

Everything is generated in temporary folders; nothing binary is committed. Models are tiny (32 px, width 8)
and not XLA-compiled, so a training run takes seconds on a 2-core CI machine. Session fixtures are read-only:
a test that changes a run works on a copy (`tiny_run_copy`), so no test depends on another one's order.

The suite runs on two pytest-xdist workers (setup.cfg). The synthetic category and the tiny run are built once
for both (`built_once`); tests that share a module-scoped fixture are kept on one worker so that it is built once
too (`pytest_collection_modifyitems`).
"""

import fcntl
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


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(items):
    """Tests that use a module-scoped fixture form one xdist group (one worker builds the fixture, once); slow
    tests that share nothing start first, so that no worker is left alone with a long test at the end."""
    for item in items:
        if uses_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=lambda item: not (item.get_closest_marker("slow") and not item.get_closest_marker("xdist_group")))


def uses_a_module_fixture(item):
    definitions = getattr(item, "_fixtureinfo", None)
    if definitions is None:  # not a test function (a doctest, say)
        return False
    return any(definitions.name2fixturedefs[name][-1].scope == "module"
               for name in item.fixturenames if name in definitions.name2fixturedefs)


def built_once(tmp_path_factory, name, build):
    """The folder `name`, built by `build(folder)` once per test run, even across pytest-xdist workers (the
    first worker to come builds it under a file lock; the others wait and then read it). Treat it as read-only."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's temporary folder, common to the workers
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed half-way
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def synthetic_category(tmp_path_factory):
    from ganspection_tf.data import synthetic

    def write(root):
        synthetic.write_synthetic_category(root, name="widget", image_size=64, n_train=40, n_test_good=8,
                                           n_test_per_defect=6)

    return built_once(tmp_path_factory, "synthetic", write) / "widget"


TINY_RUN_SETTINGS = tiny_settings(steps=4, rec_weight=1.0)


@pytest.fixture(scope="session")
def tiny_run(synthetic_category, tmp_path_factory):
    """A run trained once per test run on `synthetic_category` with TINY_RUN_SETTINGS (checkpoints at steps 2
    and 4), copied once per xdist worker. Do not change it: take `tiny_run_copy`."""
    from ganspection_tf import training

    def train(folder):
        config = training.TrainConfig.from_flat(data=str(synthetic_category), **TINY_RUN_SETTINGS)
        training.train(config, folder / "tiny", verbose=0, log=lambda *_: None)

    trained = built_once(tmp_path_factory, "shared-run", train) / "tiny"
    # this worker's own copy: a test that locks or resumes it (test_training does) cannot meet the other worker
    return Path(shutil.copytree(trained, tmp_path_factory.mktemp("shared-run") / "tiny"))


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
