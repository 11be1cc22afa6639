"""A run folder and an edge bundle written by the PREVIOUS release load and score the same with this one.

The previous release is taken from git history (PREVIOUS_RELEASE) and run in a subprocess to train a tiny run,
export it and record its own scores (tests/previous_release.py); this release then reads those files. A
committed fixture would be about 10 MB (model.keras holds the critic and both optimizers), hence generated.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ganspection_tf import scoring
from ganspection_tf.edge import EdgeScorer
from ganspection_tf.run import RunFolder

PREVIOUS_RELEASE = "8262d30"  # the last commit before run.py / terms.py
REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    folder = tmp_path_factory.mktemp("previous")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "ganspection_tf"],
                             capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"git history without {PREVIOUS_RELEASE} (shallow clone?): {archive.stderr.decode()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(TESTS)]),
                   "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = folder / "out"
    written = subprocess.run([sys.executable, str(TESTS / "previous_release.py"), str(out)], env=environment,
                             capture_output=True, text=True)
    assert written.returncode == 0, written.stderr[-2000:]
    return out


@pytest.mark.slow
def test_a_previous_run_folder_and_bundle_score_the_same(previous, tmp_path):
    expected = json.loads((previous / "expected.json").read_text())
    # The dataset moves too: the run folder only knows where it was.
    moved = shutil.copytree(previous / "data" / "widget", tmp_path / "moved" / "widget")
    shutil.rmtree(previous / "data")
    images = [moved / name for name in expected["images"]]
    run = RunFolder(previous / "run", data_root=moved)
    model = run.load_model()
    term_model = scoring.build_term_model(model)
    # The previous release's calibration.json reads as it is (ensure_calibration refits it now, to keep the
    # validation scores that file lacks) and scores with this release exactly as with that one.
    calibration = run.read_calibration(log=pytest.fail)
    assert calibration.model_step == scoring.model_step(model) and calibration.config_hash == run.config_hash
    keras_scores = [result.score for result in scoring.score_files(images, scoring.KerasScorer.for_run(run, term_model,
                                                                                                    calibration))]
    assert keras_scores == pytest.approx(expected["keras"], rel=1e-6, abs=1e-9)

    scorer = EdgeScorer(previous / "bundle")
    assert [scorer.score_file(path).score for path in images] == pytest.approx(expected["edge"], rel=1e-6, abs=1e-9)
