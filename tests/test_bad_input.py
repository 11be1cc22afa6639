"""The bad-input corpus driven through the CLI: exit status 2, one line naming the file or option, no traceback,
and nothing already in the run folder lost. Odd-but-valid images are converted, unreadable ones skipped with
one warning when training.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_support import assert_one_line_error, run_cli
from corpus import (
    bomb_png,
    gray_png,
    one_pixel_png,
    palette_png,
    random_rgb,
    rgba_png,
    sixteen_bit_png,
    text_named_png,
    truncated_png,
    zero_byte,
)

from ganspection_tf import training
from ganspection_tf.errors import GanspectionError
from ganspection_tf.ownership import LOCK_FILE
from ganspection_tf.run import RunFolder

TINY_FLAGS = [
    "--image-size", "32", "--width", "8", "--latent-dim", "8", "--critic-steps", "1", "--batch-size", "4",
    "--steps", "2", "--log-every", "2", "--checkpoint-every", "2", "--sample-every", "2", "--no-jit",
]


def snapshot(folder):
    """Every file's bytes, except the writer lock: a verb that takes it writes its own pid there by design (which
    pid was there before depends on the test worker that built the run)."""
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*")
            if path.is_file() and path.name != LOCK_FILE}


@pytest.fixture
def messy_category(synthetic_category, tmp_path):
    """A copy of the synthetic category whose train/good holds every kind of awkward file."""
    category = tmp_path / "messy"
    shutil.copytree(synthetic_category, category)
    good = category / "train" / "good"
    like = random_rgb((48, 48, 3), seed=4)
    unreadable = [zero_byte(good / "empty.png"), truncated_png(good / "cut.png"), text_named_png(good / "text.png"),
                  bomb_png(good / "bomb.png")]
    odd = [sixteen_bit_png(good / "deep.png", like), rgba_png(good / "alpha.png", like),
           palette_png(good / "palette.png", like), gray_png(good / "gray.png", like), one_pixel_png(good / "dot.png")]
    return category, unreadable, odd


def test_training_skips_unreadable_files_with_one_warning_and_converts_odd_ones(messy_category, tmp_path, capfd):
    category, unreadable, odd = messy_category
    code, out, err = run_cli(capfd, "train", "--data", category, "--out", tmp_path / "run", "--val-fraction", "0",
                             *TINY_FLAGS)
    assert code == 0, err
    warnings = [line for line in (out + err).splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 1
    assert "skipped 4 unreadable" in warnings[0]
    for path in unreadable:
        assert path.name in warnings[0]
    splits = training.artifacts.read_json(tmp_path / "run" / "splits.json")
    used = {name.rsplit("/", 1)[-1] for name in splits["train"]}
    assert {path.name for path in odd} <= used  # converted, not rejected
    assert RunFolder(tmp_path / "run").read_train_config().model.channels == 3  # gray image in an RGB category


def test_training_stops_when_no_image_is_readable(tmp_path, capfd):
    good = tmp_path / "broken" / "train" / "good"
    good.mkdir(parents=True)
    zero_byte(good / "a.png")
    text_named_png(good / "b.png")
    code, _, err = run_cli(capfd, "train", "--data", tmp_path / "broken", "--out", tmp_path / "run", *TINY_FLAGS)
    assert_one_line_error(code, err, "good")


@pytest.mark.parametrize(
    "case",
    ["missing_folder", "missing_category", "empty_train", "not_mvtec", "unwritable_out", "conflicting_options",
     "batch_larger_than_data"],
)
def test_bad_data_and_options_fail_in_one_line(case, synthetic_category, tmp_path, capfd):
    data, extra, names = synthetic_category, [], []
    out = tmp_path / "run"
    if case == "missing_folder":
        data = tmp_path / "nowhere"
        names = [data]
    elif case == "missing_category":
        data, extra, names = synthetic_category.parent, ["--category", "gearbox"], ["gearbox"]
    elif case == "empty_train":
        data = tmp_path / "empty"
        (data / "train" / "good").mkdir(parents=True)
        names = ["train"]
    elif case == "not_mvtec":
        data = tmp_path / "documents"
        data.mkdir()
        (data / "readme.txt").write_text("hello")
        names = [data]
    elif case == "unwritable_out":
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        out = blocker / "run"
        names = ["--out", blocker]
    elif case == "conflicting_options":
        extra, names = ["--strategy", "default", "--devices", "/cpu:0"], ["--devices"]
    elif case == "batch_larger_than_data":
        extra, names = ["--batch-size", "64"], ["--batch-size"]  # bigger than the 32 training images
    code, _, err = run_cli(capfd, "train", "--data", data, "--out", out, *TINY_FLAGS, *extra)
    assert_one_line_error(code, err, *names)


def test_unknown_option_is_a_one_line_usage_error(synthetic_category, tmp_path, capfd):
    code, _, err = run_cli(capfd, "train", "--data", synthetic_category, "--out", tmp_path, "--colour", "3")
    assert code == 2
    assert "Traceback" not in err and "--colour" in err


def test_training_into_a_used_folder_keeps_everything(synthetic_category, tiny_run_copy, capfd):
    run = tiny_run_copy
    before = snapshot(run)
    code, _, err = run_cli(capfd, "train", "--data", synthetic_category, "--out", run, *TINY_FLAGS)
    assert_one_line_error(code, err, run, "--resume")
    assert snapshot(run) == before

    changed_architecture = [flag if flag != "8" else "16" for flag in TINY_FLAGS]  # --width 16, --latent-dim 16
    code, _, err = run_cli(capfd, "train", "--data", synthetic_category, "--out", run, "--resume",
                           *changed_architecture)
    assert_one_line_error(code, err, "conflicts", run)
    assert snapshot(run) == before


def test_truncated_model_is_refused_in_one_line(tiny_run_copy):
    run = tiny_run_copy
    model_file = run / "model.keras"
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 3])
    with pytest.raises(GanspectionError, match="model.keras") as caught:
        RunFolder(run).load_model()
    assert "\n" not in str(caught.value)


def test_debug_flag_shows_the_traceback(tmp_path, capfd):
    code, _, err = run_cli(capfd, "--debug", "train", "--data", tmp_path / "nowhere", "--out", tmp_path / "r",
                           *TINY_FLAGS)
    assert code == 2 and "Traceback" in err and "error: " in err


def test_images_written_by_the_corpus_really_are_odd(tmp_path):
    # Guards the corpus itself: the odd-but-valid files must keep their odd layout on disk.
    from PIL import Image

    like = random_rgb((8, 8, 3))
    assert sixteen_bit_png(tmp_path / "a.png", like).read_bytes()[24] == 16  # IHDR bit depth
    assert Image.open(rgba_png(tmp_path / "b.png", like)).mode == "RGBA"
    assert Image.open(palette_png(tmp_path / "c.png", like)).mode == "P"
    assert Image.open(gray_png(tmp_path / "d.png", like)).mode == "L"
    assert np.asarray(Image.open(one_pixel_png(tmp_path / "e.png"))).shape == (1, 1, 3)


# ------------------------------------------------------------------------------------ evaluate, score, export, camera


@pytest.fixture(scope="module")
def run_and_bundle(synthetic_category, tiny_run, tmp_path_factory):
    """A copy of the session's tiny run beside a private copy of its category, and a float bundle of it."""
    from ganspection_tf.export import export_bundle

    root = tmp_path_factory.mktemp("bad-eval")
    category = Path(shutil.copytree(synthetic_category, root / "widget"))
    run = Path(shutil.copytree(tiny_run, root / "run"))
    bundle = root / "bundle"
    export_bundle(run, bundle, quantize="none", force=True, log=lambda *_: None)
    return category, run, bundle


def test_evaluation_refuses_a_defect_image_without_its_mask(run_and_bundle, tmp_path, capfd):
    category, run, _ = run_and_bundle
    data = Path(shutil.copytree(category, tmp_path / "widget"))
    mask = sorted((data / "ground_truth" / "hole").iterdir())[0]
    mask.unlink()
    before = snapshot(run)
    code, _, err = run_cli(capfd, "evaluate", run, "--data", data)
    assert_one_line_error(code, err, mask.name.replace("_mask", ""))
    assert all(snapshot(run).get(name) == content for name, content in before.items())  # nothing lost


def test_evaluation_refuses_an_unreadable_test_image(run_and_bundle, tmp_path, capfd):
    category, run, _ = run_and_bundle
    data = Path(shutil.copytree(category, tmp_path / "widget"))
    broken = sorted((data / "test" / "good").iterdir())[0]
    truncated_png(broken)
    code, _, err = run_cli(capfd, "evaluate", run, "--data", data)
    assert_one_line_error(code, err, broken.name)


def test_a_mask_without_its_image_is_only_a_warning(run_and_bundle, tmp_path, capfd):
    category, run, _ = run_and_bundle
    data = Path(shutil.copytree(category, tmp_path / "widget"))
    orphan = sorted((data / "test" / "stain").iterdir())[0]
    orphan.unlink()
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    code, out, err = run_cli(capfd, "evaluate", copy, "--data", data)
    assert code == 0, err
    warnings = [line for line in (out + err).splitlines() if line.startswith("warning: ") and "mask" in line]
    assert len(warnings) == 1 and f"stain/{orphan.stem}_mask.png" in warnings[0]
    assert "Traceback" not in err


def test_truncated_model_is_refused_by_score_and_export(run_and_bundle, tmp_path, capfd):
    _, run, _ = run_and_bundle
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    model_file = copy / "model.keras"
    model_file.write_bytes(model_file.read_bytes()[:4096])
    (tmp_path / "img").mkdir()
    image = one_pixel_png(tmp_path / "img" / "a.png")
    code, _, err = run_cli(capfd, "score", copy, image)
    assert_one_line_error(code, err, "model.keras")
    code, _, err = run_cli(capfd, "export", copy, "--tflite", "--out", tmp_path / "bundle")
    assert_one_line_error(code, err, "model.keras")
    assert not (tmp_path / "bundle").exists()


def test_export_into_an_unwritable_folder(run_and_bundle, tmp_path, capfd):
    _, run, _ = run_and_bundle
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(capfd, "export", run, "--tflite", "--quantize", "none", "--out", blocker / "bundle")
    assert_one_line_error(code, err, blocker)


@pytest.mark.parametrize("damage", ["other_version", "foreign", "truncated_json", "truncated_model"])
def test_camera_refuses_a_damaged_bundle(damage, run_and_bundle, tmp_path, capfd):
    _, _, bundle = run_and_bundle
    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    metadata_file = copy / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    culprit = "metadata.json"
    if damage == "other_version":
        metadata["format_version"] = 99
        metadata_file.write_text(json.dumps(metadata))
    elif damage == "foreign":
        metadata_file.write_text(json.dumps({"name": "somebody else's model"}))
    elif damage == "truncated_json":
        metadata_file.write_text(metadata_file.read_text()[:50])
    else:
        model_file = copy / "model.tflite"
        model_file.write_bytes(model_file.read_bytes()[:1000])
        culprit = "model.tflite"
    frames = tmp_path / "frames"
    frames.mkdir()
    one_pixel_png(frames / "a.png")
    code, _, err = run_cli(capfd, "camera", copy, "--source", frames)
    assert_one_line_error(code, err, culprit)
