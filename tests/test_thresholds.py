"""Choosing the threshold when scoring starts: `camera --max-fpr F | --threshold T` on an edge bundle (and `score`
on the workstation), from the validation scores the calibration keeps, by the calibration's own rule."""

import csv
import io
import json
import re
import shutil

import pytest
from edge_support import exported_bundle, quiet, trained_run

from ganspection_tf import edge, scoring, thresholds
from ganspection_tf.cli import main

PINNED_WEIGHTS = {"normalized_map_max": 1.0}  # the shared run's calibration (edge_support.trained_run)
VALIDATION_IMAGES = 8  # 40 training images, --val-fraction 0.2


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return exported_bundle(tmp_path_factory, "int8", "combined")[0]


@pytest.fixture(scope="module")
def validation_frames(tmp_path_factory):
    """The shared run's good validation images (held out of training) as a folder of frames."""
    run = trained_run(tmp_path_factory)
    folder = tmp_path_factory.mktemp("validation_frames")
    for path in json.loads((run / "splits.json").read_text())["validation"]:
        shutil.copy(path, folder)
    return folder


def run_camera(bundle, frames, capsys, *options):
    """(decision per frame, the threshold line printed at start-up)."""
    code = main(["camera", str(bundle), "--source", str(frames), "--threads", "1", *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    decisions = [json.loads(line)["decision"] for line in captured.out.splitlines()]
    return decisions, captured.err.splitlines()[0]


def shown_threshold(line):
    return float(re.match(r"threshold (\S+) \(", line).group(1))


def test_max_fpr_gives_the_workstations_threshold_for_that_rate(bundle, validation_frames, tmp_path_factory,
                                                                tmp_path, capsys):
    run = shutil.copytree(trained_run(tmp_path_factory), tmp_path / "run")
    metadata = edge.read_metadata(bundle)
    # 0.3: the empirical quantile of 8 scores; 0.05: fewer than 1/0.05 images, the Gaussian extrapolation
    for max_fpr in (0.3, 0.05):
        workstation = scoring.ensure_calibration(run, weights=PINNED_WEIGHTS, max_fpr=max_fpr, log=quiet).threshold
        assert thresholds.for_bundle(metadata, bundle, max_fpr=max_fpr).value == pytest.approx(workstation, rel=1e-12)
        _, line = run_camera(bundle, validation_frames, capsys, "--max-fpr", str(max_fpr))
        assert f"--max-fpr {max_fpr} on the bundle's {VALIDATION_IMAGES} good validation scores" in line
        assert shown_threshold(line) == pytest.approx(workstation, rel=1e-5)


def test_max_fpr_flags_that_share_of_validation_like_frames(bundle, validation_frames, capsys):
    calibrated, line = run_camera(bundle, validation_frames, capsys)
    assert "(the bundle's calibrated threshold, for max FPR 0.01)" in line
    half, _ = run_camera(bundle, validation_frames, capsys, "--max-fpr", "0.5")
    assert len(calibrated) == len(half) == VALIDATION_IMAGES
    assert calibrated.count("anomalous") <= 1  # max FPR 0.01 of 8 images: above every validation score
    assert abs(half.count("anomalous") - 4) <= 1  # 4 of 8 validation scores lie above; int8 may move one across


def test_threshold_is_used_as_given(bundle, validation_frames, capsys):
    low, line = run_camera(bundle, validation_frames, capsys, "--threshold", "-1e9")
    assert line.startswith("threshold -1e+09 (--threshold; the bundle's calibrated threshold is ")
    high, _ = run_camera(bundle, validation_frames, capsys, "--threshold", "1e9")
    assert set(low) == {"anomalous"} and set(high) == {"good"}


@pytest.mark.parametrize("options, words", [
    (["--max-fpr", "0"], "--max-fpr 0: must be > 0 and < 1"),
    (["--max-fpr", "1"], "--max-fpr 1: must be > 0 and < 1"),
    (["--max-fpr", "-0.1"], "--max-fpr -0.1: must be > 0 and < 1"),
    (["--max-fpr", "nan"], "--max-fpr nan: must be a finite number"),
    (["--max-fpr", "one percent"], "--max-fpr one percent: must be a number"),
    (["--threshold", "inf"], "--threshold inf: must be a finite number"),
    (["--threshold", "high"], "--threshold high: must be a number"),
    (["--threshold", "2", "--max-fpr", "0.1"], "pass only one of them"),
])
def test_bad_threshold_options_are_one_line_errors(bundle, validation_frames, capsys, options, words):
    assert main(["camera", str(bundle), "--source", str(validation_frames), *options]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ") and words in captured.err
    assert captured.out == ""  # nothing scored


def test_a_bundle_without_validation_scores_refuses_max_fpr_but_takes_threshold(bundle, validation_frames, tmp_path,
                                                                               capsys):
    old = shutil.copytree(bundle, tmp_path / "old-bundle")
    metadata = json.loads((old / "metadata.json").read_text())
    del metadata["validation_scores"]  # as exported by the releases before it
    (old / "metadata.json").write_text(json.dumps(metadata))
    assert main(["camera", str(old), "--source", str(validation_frames), "--max-fpr", "0.1"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "ships no validation scores" in captured.err
    assert "re-export it with 'ganspection-tf export" in captured.err and captured.out == ""
    decisions, line = run_camera(old, validation_frames, capsys, "--threshold", "1e9")
    assert set(decisions) == {"good"} and line.startswith("threshold 1e+09 (--threshold;")


def test_score_on_the_workstation_takes_the_same_options(validation_frames, tmp_path_factory, tmp_path, capsys):
    run = shutil.copytree(trained_run(tmp_path_factory), tmp_path / "run")
    assert main(["score", str(run), str(validation_frames), "--max-fpr", "0.5"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert [row["anomalous"] for row in rows].count("yes") == 4  # Keras scores: exactly the 4 above the quantile
    assert "--max-fpr 0.5 on the run's 8 good validation scores" in captured.err
    assert json.loads((run / "calibration.json").read_text())["max_fpr"] == 0.01  # the run's file is unchanged
