"""`ganspection-tf score` and `ganspection-tf evaluate` from the command line."""

import contextlib
import csv
import io
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ganspection_tf import scoring  # noqa: E402
from ganspection_tf.cli import SCORE_FIELDS, main  # noqa: E402
from ganspection_tf.data.synthetic import write_synthetic_category  # noqa: E402
from ganspection_tf.images import read_image  # noqa: E402
from ganspection_tf.training import TrainConfig, train  # noqa: E402

IMAGE_SIZE = 48  # the files are larger than the model's 32 px, so heatmaps must be upsampled to 48


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    return write_synthetic_category(root / "data", image_size=IMAGE_SIZE, n_train=20, n_test_good=3,
                                    n_test_per_defect=2, defects=("hole", "stain"))


@pytest.fixture(scope="module")
def evaluation(category, tmp_path_factory):
    """(run, exit status, standard output): a briefly trained run (matching rows, not accuracy, is tested here)
    evaluated once through the CLI, whichever test asks first."""
    config = TrainConfig.from_flat(data=str(category), image_size=32, width=8, latent_dim=8, critic_steps=1,
                                   batch_size=8, steps=4, log_every=4, checkpoint_every=4, sample_every=4,
                                   jit_compile=False)
    run = train(config, tmp_path_factory.mktemp("run") / "run", verbose=0, log=lambda *a: None)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["evaluate", str(run)])
    return run, code, out.getvalue()


@pytest.fixture(scope="module")
def evaluated_run(evaluation):
    return evaluation[0]


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def evaluate_scores(run):
    with open(run / "eval" / "scores.csv", newline="") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


def test_evaluate_command_prints_the_auroc_and_the_report(evaluation):
    evaluated_run, code, out = evaluation
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("image AUROC ") and "7 test images" in lines[0]
    assert lines[1] == f"report: {evaluated_run / 'eval' / 'report.html'}"
    assert (evaluated_run / "eval" / "report.html").is_file()


def test_score_rows_match_evaluate_scores(evaluated_run, category, capsys):
    one_file = category / "test" / "hole" / "000.png"
    code, out, err = run_cli(capsys, "score", evaluated_run, category / "test" / "good", one_file,
                             category / "test" / "stain", "--batch-size", 2)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == list(SCORE_FIELDS)
    expected_order = [*sorted((category / "test" / "good").glob("*.png")), one_file,
                      *sorted((category / "test" / "stain").glob("*.png"))]
    assert [row["path"] for row in rows] == [str(p) for p in expected_order]
    reference = evaluate_scores(evaluated_run)
    threshold = json.loads((evaluated_run / "calibration.json").read_text())["threshold"]
    for row in rows:
        expected = reference[row["path"]]
        for field in ("score", *scoring.TERMS):
            assert float(row[field]) == pytest.approx(float(expected[field]), rel=1e-4, abs=1e-4), field
        assert row["anomalous"] == ("yes" if float(row["score"]) > threshold else "no") == expected["anomalous"]


def test_score_writes_jsonl_and_heatmaps_to_files(evaluated_run, category, tmp_path, capsys):
    output, heatmaps = tmp_path / "scores.jsonl", tmp_path / "maps"
    code, out, err = run_cli(capsys, "score", evaluated_run, category / "test" / "hole", "--format", "jsonl",
                             "--output", output, "--heatmaps", heatmaps)
    assert code == 0, err
    assert out == "" and "scoring" in err  # rows go to the file, the progress bar to stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["000.png", "001.png"]
    assert set(rows[0]) == set(SCORE_FIELDS) and isinstance(rows[0]["anomalous"], bool)
    for name in ("000_heatmap.png", "001_heatmap.png"):
        assert read_image(heatmaps / name).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_score_never_replaces_an_earlier_output(evaluated_run, category, tmp_path, capsys):
    output, heatmaps = tmp_path / "mine.csv", tmp_path / "maps"
    output.write_text("the user's own table\n")
    code, _, err = run_cli(capsys, "score", evaluated_run, category / "test" / "hole", "--output", output)
    assert code == 2 and err.count("\n") == 1 and str(output) in err and "already exists" in err
    assert output.read_text() == "the user's own table\n"
    for _ in range(2):
        code, _, err = run_cli(capsys, "score", evaluated_run, category / "test" / "hole", "--heatmaps", heatmaps)
        assert code == 0, err
    first, second = (heatmaps / "000_heatmap.png").read_bytes(), (heatmaps / "000_heatmap-2.png").read_bytes()
    assert first == second  # the same image scored twice: the second run wrote a new file beside the first
    assert sorted(p.name for p in heatmaps.iterdir()) == [
        "000_heatmap-2.png", "000_heatmap.png", "001_heatmap-2.png", "001_heatmap.png"]


def test_unreadable_files_are_reported_and_the_rest_is_scored(evaluated_run, category, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    good = category / "test" / "good" / "000.png"
    output = tmp_path / "rows.csv"
    code, _, err = run_cli(capsys, "score", evaluated_run, good, broken, good, "--output", output)
    assert code == 2
    assert f"error: {broken}: cannot read image" in err
    assert err.strip().splitlines()[-1].startswith(f"error: {broken}: unreadable, 1 of 3 images have no row")
    assert [row["path"] for row in csv.DictReader(output.open())] == [str(good), str(good)]


def test_missing_paths_are_refused_in_one_line(evaluated_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "score", evaluated_run, tmp_path / "nope.png")
    assert code == 2 and out == ""
    assert err == f"error: {tmp_path / 'nope.png'}: no such file or folder; check the path\n"


def test_score_files_streams_one_batch_at_a_time(evaluated_run, category, monkeypatch):
    """Decoding runs at most one batch ahead of the rows handed out: memory stays flat for long lists."""
    from ganspection_tf.run import RunFolder

    model = RunFolder(evaluated_run).load_model()
    term_model = scoring.build_term_model(model)
    calibration = scoring.ensure_calibration(evaluated_run, model, term_model=term_model, log=lambda *a: None)
    decoded = []
    original = scoring.read_image
    monkeypatch.setattr(scoring, "read_image", lambda path, *a: decoded.append(path) or original(path, *a))
    paths = sorted((category / "train" / "good").glob("*.png"))
    results = scoring.score_files(paths, scoring.KerasScorer.for_run(RunFolder(evaluated_run), term_model, calibration,
                                                                      batch_size=3))
    first = next(results)
    assert first.path == paths[0] and len(decoded) == 3
    rest = list(results)
    assert len(rest) == len(paths) - 1 and len(decoded) == len(paths)
    assert all(r.original is None for r in rest)  # images are not kept unless heatmaps need them


def test_score_refuses_a_run_without_a_model(tmp_path, category, capsys):
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    code, _, err = run_cli(capsys, "score", empty_run, category / "test" / "good")
    assert code == 2 and "no trained model here" in err and len(err.strip().splitlines()) == 1


def test_score_rows_do_not_depend_on_the_batch_size(evaluated_run, category, capsys):
    folder = category / "test" / "stain"
    _, one, _ = run_cli(capsys, "score", evaluated_run, folder, "--batch-size", 1, "--format", "jsonl")
    _, many, _ = run_cli(capsys, "score", evaluated_run, folder, "--batch-size", 64, "--format", "jsonl")
    scores_one = [json.loads(line)["score"] for line in one.splitlines()]
    scores_many = [json.loads(line)["score"] for line in many.splitlines()]
    # Scores are in validation standard deviations: float32 noise of the terms stays far below 1e-4 of one.
    np.testing.assert_allclose(scores_one, scores_many, rtol=1e-4, atol=1e-4)
    assert len(scores_one) == 2

