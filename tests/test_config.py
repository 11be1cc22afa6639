"""The configuration declared once: `train`'s options come from the config fields, every option is range-checked
in one line, and a damaged or hand-edited config.json is refused naming the file and the key."""

import dataclasses
import json

import pytest

from ganspection_tf import cli, ownership
from ganspection_tf.cli import main
from ganspection_tf.config import ModelConfig, TrainConfig, option_fields


def run_cli(capfd, *args):
    code = main([str(arg) for arg in args])
    out, err = capfd.readouterr()
    return code, out, err


def one_error_line(code, err):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_every_default_passes_its_own_range_check():
    defaults = TrainConfig().flat()
    for name, field in option_fields().items():
        assert field.metadata["check"].problem(defaults[name]) is None, name


def test_train_without_options_builds_the_default_config(monkeypatch, tmp_path, capfd):
    received = {}
    monkeypatch.setattr("ganspection_tf.training.train",
                        lambda config, out, **kwargs: received.update(config=config, overrides=kwargs["overrides"]))
    code, _, err = run_cli(capfd, "train", "--data", tmp_path, "--out", tmp_path / "run")
    assert code == 0, err
    assert received["config"] == TrainConfig(data=str(tmp_path))
    assert received["overrides"] == {"data": str(tmp_path)}  # only what was typed counts as a change


def test_every_config_field_is_an_option_and_nothing_else():
    names = {param.name for param in cli.train.params} - {"out", "resume", "overwrite"}  # about the folder
    fields = {f.name for f in dataclasses.fields(TrainConfig) if f.name != "model"}
    assert names == fields | {f.name for f in dataclasses.fields(ModelConfig)}


@pytest.mark.parametrize("option, value, says", [
    ("--seed", "-1", "≥ 0"),
    ("--seed", "100000000000000000000000", "≤ 4294967295"),
    ("--seed", "1.5", "whole number"),
    ("--gp-weight", "-1000", "> 0"),
    ("--gp-weight", "0", "> 0"),
    ("--gp-weight", "nan", "finite"),
    ("--latent-weight", "inf", "finite"),
    ("--learning-rate", "0", "> 0"),
    ("--ema-decay", "1", "< 1"),
    ("--steps", "0", "≥ 1"),
    ("--batch-size", "100000", "≤ 4096"),
    ("--val-fraction", "0.9", "≤ 0.5"),
    ("--image-size", "100", "32, 64, 128, 256"),
    ("--inspect-size", "96", "32, 64, 128, 256"),
    ("--width", "banana", "whole number"),
    ("--critic-steps", "16", "≤ 15"),
    ("--augment", "hflip,sideways", "sideways"),
    ("--precision", "float8", "float32"),
])
def test_an_out_of_range_option_is_one_line_naming_it(option, value, says, tmp_path, capfd):
    code, _, err = run_cli(capfd, "train", "--data", tmp_path, "--out", tmp_path / "run", option, value)
    line = one_error_line(code, err)
    assert option in line and says in line, line
    assert not (tmp_path / "run").exists()


def test_a_device_the_machine_does_not_have_is_refused(tmp_path, capfd):
    code, _, err = run_cli(capfd, "train", "--data", tmp_path, "--out", tmp_path / "run", "--strategy", "mirrored",
                           "--devices", "/gpu:7")
    assert "/gpu:7" in one_error_line(code, err)


def test_train_without_data_and_nothing_to_resume_says_what_is_missing(tmp_path, capfd):
    code, _, err = run_cli(capfd, "train", "--out", tmp_path / "run")
    assert "--data" in one_error_line(code, err)


def stored_record(tmp_path, **train_changes):
    train = TrainConfig.from_flat(data=str(tmp_path), channels=3).to_dict()
    train["model"].update(train_changes)
    return {"train": train}


@pytest.mark.parametrize("content, names", [
    ([1, 2, 3], ["'train'"]),
    ({"hello": "world"}, ["'train'"]),
    ({"train": [1, 2]}, ["'train'"]),
    ("width-banana", ["train.model.width", "banana"]),
    ("gp-nan", ["train.model.gp_weight", "finite"]),
    ("seed-negative", ["train.model.seed", "≥ 0"]),
    ("unknown-key", ["train.model.colour"]),
    ("flat-banana", ["train.model.width"]),
])
def test_a_hand_edited_config_is_refused_naming_the_file_and_the_key(content, names, tmp_path, capfd):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ownership.write_marker(run_dir, "run")  # a run folder this release wrote, then edited by hand
    record = {
        "width-banana": lambda: stored_record(tmp_path, width="banana"),
        "gp-nan": lambda: stored_record(tmp_path, gp_weight=float("nan")),
        "seed-negative": lambda: stored_record(tmp_path, seed=-1),
        "unknown-key": lambda: stored_record(tmp_path, colour=3),
        "flat-banana": lambda: {"train": {**TrainConfig.from_flat(data=str(tmp_path)).flat(), "width": "banana"}},
    }.get(content, lambda: content)() if isinstance(content, str) else content
    (run_dir / "config.json").write_text(json.dumps(record))
    code, _, err = run_cli(capfd, "train", "--out", run_dir, "--resume")
    line = one_error_line(code, err)
    for name in [str(run_dir / "config.json"), *names]:
        assert name in line, (name, line)


def test_a_config_written_with_integers_for_weights_reads_as_floats(tmp_path):
    record = stored_record(tmp_path, gp_weight=10)
    config = TrainConfig.from_dict(record["train"])
    assert isinstance(config.model.gp_weight, float) and config.model.gp_weight == 10.0
