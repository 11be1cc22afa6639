"""The run folder: its file names, its JSON files, and where its images are now."""

import json
import os
import shutil

import pytest
from edge_support import edge_category, trained_run

from ganspection_tf.cli import main
from ganspection_tf.errors import GanspectionError
from ganspection_tf.run import RunFolder


def write_splits(run_dir, root, is_mvtec=True, train=("a.png", "b.png"), validation=("c.png",)):
    run_dir.mkdir(parents=True, exist_ok=True)
    # As the training command saw them: relative to ITS working folder, which this command does not share.
    listed = lambda names: [f"../somewhere/train/good/{name}" for name in names]  # noqa: E731
    splits = {"category": "widget", "root": str(root), "is_mvtec": is_mvtec, "train": listed(train),
              "validation": listed(validation), "skipped": []}
    (run_dir / "splits.json").write_text(json.dumps(splits))


def good_images(root, names):
    folder = root / "train" / "good"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"png")
    return folder


def test_images_are_found_by_name_under_the_recorded_root(tmp_path):
    folder = good_images(tmp_path / "data", ["a.png", "b.png", "c.png"])
    write_splits(tmp_path / "run", tmp_path / "data")
    run = RunFolder(tmp_path / "run")
    assert run.training_images() == [folder / "a.png", folder / "b.png"]
    assert run.validation_images() == [folder / "c.png"]


def test_a_plain_folder_of_good_images_is_its_own_training_folder(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "data" / name).write_bytes(b"png")
    write_splits(tmp_path / "run", tmp_path / "data", is_mvtec=False)
    assert RunFolder(tmp_path / "run").validation_images() == [tmp_path / "data" / "c.png"]
    assert RunFolder(tmp_path / "run").test_category() is None


def test_a_moved_dataset_is_found_under_the_data_root_given_now(tmp_path):
    write_splits(tmp_path / "run", tmp_path / "gone")
    moved = good_images(tmp_path / "moved", ["a.png", "c.png"])
    with pytest.raises(GanspectionError, match=r"validation image .*c\.png is not in .*gone.* pass --data"):
        RunFolder(tmp_path / "run").validation_images()
    run = RunFolder(tmp_path / "run", data_root=tmp_path / "moved")
    assert run.validation_images() == [moved / "c.png"]
    assert run.training_images() == [moved / "a.png"]  # b.png is gone: not an error for the training images


def test_training_images_are_thinned_evenly(tmp_path):
    names = [f"{i:03d}.png" for i in range(10)]
    folder = good_images(tmp_path / "data", names)
    write_splits(tmp_path / "run", tmp_path / "data", train=names)
    assert RunFolder(tmp_path / "run").training_images(at_most=4) == [folder / n for n in
                                                                     ("000.png", "003.png", "006.png", "009.png")]


def test_status_and_config_round_trip(tmp_path):
    run = RunFolder(tmp_path)
    assert run.read_status() is None
    run.write_status("finished", 40, seconds=1.5)
    run.write_config({"train": {}, "config_hash": "abc"})
    status = run.read_status()
    assert (status["state"], status["step"], status["seconds"], status["pid"]) == ("finished", 40, 1.5, os.getpid())
    assert run.config_hash == "abc" and (tmp_path / "config.json").is_file()


def test_a_missing_model_is_a_one_line_error(tmp_path):
    with pytest.raises(GanspectionError, match="model.keras: no trained model here; train one"):
        RunFolder(tmp_path).load_model()


@pytest.mark.slow
def test_evaluate_with_data_after_the_dataset_was_moved(tmp_path_factory, tmp_path, capsys):
    """evaluate RUN --data NEWPATH finds the test split AND the run's good images under the new path."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run(tmp_path_factory), run_dir, ignore=shutil.ignore_patterns("eval", "calibration.json"))
    moved = shutil.copytree(edge_category(tmp_path_factory), tmp_path / "moved" / "widget")
    splits = json.loads((run_dir / "splits.json").read_text())
    splits["root"] = str(tmp_path / "old-place" / "widget")  # where it was: gone now
    (run_dir / "splits.json").write_text(json.dumps(splits))

    assert main(["evaluate", str(run_dir)]) == 2
    assert "pass --data" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--data", str(moved)]) == 0
    assert "image AUROC" in capsys.readouterr().out
    assert (run_dir / "eval" / "report.html").is_file()
