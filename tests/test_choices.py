"""Data-dependent settings: chosen from the training images with a reason, recorded in config.json and printed by
train, overridden by any option the user gives; the pose spread tells aligned parts from parts at any pose."""

import json

import numpy as np
import pytest
from cli_support import assert_one_line_error, run_cli
from conftest import tiny_settings
from PIL import Image

from ganspection_tf.config import TrainConfig
from ganspection_tf.data import choices, synthetic
from ganspection_tf.images import list_images, read_image
from ganspection_tf.run import RunFolder

# The option values that make a CLI training run tiny; image size and training length are left to the data
# choices where a test needs them chosen.
TINY_FLAGS = ["--width", "8", "--latent-dim", "8", "--critic-steps", "1", "--batch-size", "8", "--log-every", "2",
              "--checkpoint-every", "2", "--sample-every", "2", "--no-jit", "--val-fraction", "0.2"]


@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    """{mode: category folder}: a few training images of each synthetic mode, no test split."""
    root = tmp_path_factory.mktemp("modes")
    return {mode: synthetic.write_synthetic_category(root, name=mode, image_size=64, n_train=12, n_test_good=0,
                                                     n_test_per_defect=0, mode=mode)
            for mode in synthetic.MODES}


def spread_of(category):
    return choices.pose_spread([read_image(path, 1)[..., 0] for path in list_images(category / "train" / "good")])


def test_the_pose_spread_tells_aligned_parts_from_parts_at_any_pose(modes):
    aligned, unaligned, texture = (spread_of(modes[mode]) for mode in ("aligned", "unaligned", "texture"))
    assert aligned < choices.ALIGNED_BELOW < unaligned and choices.ALIGNED_BELOW < texture, (aligned, unaligned)
    same = np.stack([read_image(list_images(modes["aligned"] / "train" / "good")[0], 1)[..., 0]] * 3)
    assert choices.pose_spread(same) == pytest.approx(0.0, abs=1e-9)  # one picture: no spread at all
    assert choices.pose_spread(np.stack([same[0], 255 - same[0]])) == pytest.approx(1.0)  # nothing in common


def test_parts_at_any_pose_and_surfaces_are_inspected_at_256_px_by_tiles_and_aligned_parts_whole(tmp_path):
    for mode, inspected in (("texture", 256), ("unaligned", 256), ("aligned", 64)):
        category = synthetic.write_synthetic_category(tmp_path, name=mode, image_size=256, n_train=4, n_test_good=0,
                                                      n_test_per_defect=0, mode=mode)
        config, chosen = choices.choose(TrainConfig.from_flat(data=str(category)), list_images(category / "train" /
                                                                                               "good"))
        assert (config.model.image_size, config.model.inspect_size) == (64, inspected), chosen["inspect_size"]
        assert ("patch by patch" in chosen["inspect_size"].reason) == (inspected == 256)
    small = synthetic.write_synthetic_category(tmp_path, name="small", image_size=128, n_train=4, n_test_good=0,
                                               n_test_per_defect=0, mode="texture")
    config, chosen = choices.choose(TrainConfig.from_flat(data=str(small)), list_images(small / "train" / "good"))
    assert config.model.inspect_size == 128  # the largest size the images have
    config, chosen = choices.choose(TrainConfig.from_flat(data=str(small), inspect_size=64),
                                    list_images(small / "train" / "good"))
    assert config.model.inspect_size == 64 and chosen["inspect_size"].reason == choices.USER


def test_unset_settings_get_the_recipe_with_the_finding_in_the_reason(modes):
    """This session's constraint: the choices reproduce the recipe the accuracy benchmark measures."""
    for mode, finding in (("aligned", "aligned parts"), ("unaligned", "parts at any pose")):
        paths = list_images(modes[mode] / "train" / "good")
        config, chosen = choices.choose(TrainConfig.from_flat(data=str(modes[mode])), paths)
        recipe = (config.model.image_size, config.model.channels, config.steps, config.augment, config.exposure_level)
        assert recipe == (64, 3, 2000, "exposure", 0.0)
        assert set(chosen) == {"image_size", "inspect_size", "channels", "steps", "augment", "exposure_level"}
        assert config.model.inspect_size == 64 and "no tiles" in chosen["inspect_size"].reason
        assert "all 12 training images are in colour" in chosen["channels"].reason
        assert finding in chosen["augment"].reason and "pose spread" in chosen["augment"].reason
        assert chosen["augment"].reason.startswith(choices.EXPOSURE_ENABLED)  # applied: the augmentation on
        assert (choices.NOT_BETTER in chosen["augment"].reason) == (mode == "unaligned")  # a finding, not applied
        assert "12 training images" in chosen["steps"].reason


def test_the_exposure_level_found_is_the_training_images_mean_grey_level_and_is_off(tmp_path):
    folder = tmp_path / "good"
    folder.mkdir()
    for name, grey in (("dim", 80), ("bright", 120)):
        Image.fromarray(np.full((40, 40), grey, dtype=np.uint8)).save(folder / f"{name}.png")
    config, chosen = choices.choose(TrainConfig.from_flat(data=str(tmp_path)), list_images(folder))
    reason = chosen["exposure_level"].reason
    assert config.exposure_level == 0.0 and "is 100 (80–120 per image)" in reason
    assert "--exposure-level 100 " in reason
    assert choices.LEVELLING_NOT_ENABLED in reason  # a finding, not applied
    given, chosen = choices.choose(TrainConfig.from_flat(data=str(tmp_path), exposure_level=100.0),
                                   list_images(folder))
    assert given.exposure_level == 100.0 and chosen["exposure_level"].reason == choices.USER


def test_gray_training_images_are_chosen_gray_with_their_count(tmp_path):
    category = synthetic.write_synthetic_category(tmp_path, image_size=32, n_train=5, n_test_good=0,
                                                  n_test_per_defect=0, channels=1)
    config, chosen = choices.choose(TrainConfig.from_flat(data=str(category)), list_images(category / "train" / "good"))
    assert config.model.channels == 1 and chosen["channels"].reason == "gray: all 5 training images are gray"


def test_a_value_the_user_gives_wins_and_is_recorded_as_theirs(modes):
    paths = list_images(modes["unaligned"] / "train" / "good")
    given = TrainConfig.from_flat(data="x", image_size=32, inspect_size=64, channels=1, steps=7, augment="rot90",
                                  exposure_level=120.0)
    config, chosen = choices.choose(given, paths)
    assert (config.model.image_size, config.model.inspect_size, config.model.channels, config.steps,
            config.augment, config.exposure_level) == (32, 64, 1, 7, "rot90", 120.0)
    assert {choice.reason for choice in chosen.values()} == {choices.USER}


def test_inspection_is_at_the_image_size_unless_given_and_larger_sizes_are_a_finding(tmp_path):
    category = synthetic.write_synthetic_category(tmp_path, image_size=256, n_train=3, n_test_good=0,
                                                  n_test_per_defect=0)
    paths = list_images(category / "train" / "good")
    config, chosen = choices.choose(TrainConfig.from_flat(data=str(category), image_size=64), paths)
    assert config.model.inspect_size == 64
    assert "128 or 256 px by 64 px tiles would keep finer defects" in chosen["inspect_size"].reason
    assert choices.TILES_NOT_BETTER in chosen["inspect_size"].reason
    config, chosen = choices.choose(TrainConfig.from_flat(data=str(category), inspect_size=256), paths)
    assert (config.model.image_size, config.model.inspect_size) == (64, 256)  # tiles of the chosen image size
    assert chosen["inspect_size"].reason == choices.USER


def test_an_inspect_size_that_is_not_whole_tiles_stops_train_in_one_line(synthetic_category, tmp_path, capfd):
    code, _, err = run_cli(capfd, "train", "--data", synthetic_category, "--out", tmp_path / "run", "--image-size",
                           "64", "--inspect-size", "32", *TINY_FLAGS)
    assert_one_line_error(code, err, "--inspect-size 32", "--image-size")
    assert not (tmp_path / "run" / "config.json").exists()


def test_none_is_an_augmentation_and_auto_leaves_it_to_the_data(tmp_path, capfd, monkeypatch):
    received = []
    monkeypatch.setattr("ganspection_tf.training.train", lambda config, out, **kwargs: received.append(config))
    for value in ("none", "auto"):
        code, _, err = run_cli(capfd, "train", "--data", tmp_path, "--out", tmp_path / "run", "--augment", value)
        assert code == 0, err
    assert [config.augment for config in received] == ["none", None]


def test_train_records_and_prints_the_choices_and_a_resume_keeps_them(synthetic_category, tmp_path, capfd):
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capfd, "train", "--data", synthetic_category, "--out", run_dir, "--steps", "2",
                             "--image-size", "32", *TINY_FLAGS)
    assert code == 0, err
    recorded = RunFolder(run_dir).read_data_choices()
    assert recorded["steps"] == {"value": 2, "reason": choices.USER}
    assert recorded["image_size"] == {"value": 32, "reason": choices.USER}
    assert recorded["channels"]["value"] == 3 and "training images are in colour" in recorded["channels"]["reason"]
    assert recorded["augment"]["value"] == "exposure" and "pose spread" in recorded["augment"]["reason"]
    printed = out + err
    assert printed.count("data-dependent settings") == 1
    for name, choice in recorded.items():
        assert f"{name} {choice['value']}: {choice['reason']}" in printed

    code, _, err = run_cli(capfd, "train", "--out", run_dir, "--resume", "--steps", "4")
    assert code == 0, err
    resumed = RunFolder(run_dir).read_data_choices()
    assert resumed["steps"] == {"value": 4, "reason": choices.USER}
    assert {name: resumed[name] for name in ("image_size", "channels", "augment")} == \
        {name: recorded[name] for name in ("image_size", "channels", "augment")}
    assert RunFolder(run_dir).read_train_config().steps == 4


def test_a_run_without_recorded_choices_still_reads_and_resumes(tiny_run_copy, capfd):
    record = json.loads((tiny_run_copy / "config.json").read_text())
    assert set(record["data_choices"]) == {"image_size", "inspect_size", "channels", "steps", "augment",
                                           "exposure_level"}
    del record["data_choices"]  # a config.json of a release before the choices were recorded
    (tiny_run_copy / "config.json").write_text(json.dumps(record))
    run = RunFolder(tiny_run_copy)
    assert run.read_data_choices() == {} and run.read_train_config().model.image_size == 32
    code, _, err = run_cli(capfd, "train", "--out", tiny_run_copy, "--resume", "--steps", "6")
    assert code == 0, err
    resumed = run.read_data_choices()
    assert resumed["steps"] == {"value": 6, "reason": choices.USER}
    assert resumed["channels"] == {"value": 3, "reason": choices.UNRECORDED}


def test_the_session_run_was_trained_with_its_choices_recorded(tiny_run):
    recorded = RunFolder(tiny_run).read_data_choices()
    settings = tiny_settings()
    assert recorded["image_size"] == {"value": settings["image_size"], "reason": choices.USER}
    assert recorded["steps"]["reason"] == choices.USER
    assert "aligned parts" in recorded["augment"]["reason"]  # the session's category is the aligned flange
