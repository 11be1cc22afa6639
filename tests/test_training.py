"""`train` end to end on the synthetic category: the run folder, and --resume continuing the run."""

import csv
import json
import re

import keras
import numpy as np
import pytest
from conftest import tiny_settings

from ganspection_tf import training
from ganspection_tf.cli import main
from ganspection_tf.errors import GanspectionError
from ganspection_tf.run import RunFolder

SAMPLE_KINDS = ("fixed_z", "reconstructions", "z_x2", "z_x3")


def quiet(*_args, **_kwargs):
    pass


def test_run_folder_holds_every_artifact(tiny_run):
    for name in ("config.json", "splits.json", "model.keras", "history.csv", "status.json"):
        assert (tiny_run / name).is_file(), name
    assert list((tiny_run / "checkpoints").glob("ckpt-4.index"))
    assert list((tiny_run / "logs").rglob("events.out.tfevents.*"))
    for step in (2, 4):
        for kind in SAMPLE_KINDS:
            assert (tiny_run / "samples" / f"step{step:06d}_{kind}.png").is_file(), (step, kind)


def test_config_records_hyper_parameters_seed_and_versions(tiny_run):
    record = json.loads((tiny_run / "config.json").read_text())
    model = record["train"]["model"]
    assert model["rec_weight"] == 1.0 and model["seed"] == 0
    assert model["channels"] == 3
    assert {"ganspection_tf", "tensorflow", "keras", "python"} <= set(record["versions"])
    assert record["data"]["train_images"] + record["data"]["validation_images"] == 40
    splits = json.loads((tiny_run / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["validation"])
    assert json.loads((tiny_run / "status.json").read_text())["state"] == "finished"


def test_history_has_one_row_per_log_interval(tiny_run):
    rows = list(csv.DictReader((tiny_run / "history.csv").open()))
    assert len(rows) == 2
    assert all(np.isfinite(float(row["latent_loss"])) for row in rows)


def test_saved_model_loads_safely_and_matches_the_checkpoint_step(tiny_run):
    model = RunFolder(tiny_run).load_model()
    assert int(model.step) == 4
    assert model.get_config()["width"] == 8


def test_resume_continues_step_count_and_optimizer_state(synthetic_category, tiny_run_copy):
    run_dir = tiny_run_copy  # trained for 4 steps
    first = RunFolder(run_dir).load_model()
    moments_at_4 = [v.numpy() for v in first.g_optimizer.variables]

    messages = []
    longer = training.TrainConfig.from_flat(data=str(synthetic_category), **tiny_settings(steps=8))
    training.train(longer, run_dir, resume=True, verbose=0, log=messages.append,
                   overrides={"steps": 8, "critic_learning_rate": 3e-4})  # a two time-scale resume
    resumed = RunFolder(run_dir).load_model()

    assert any("resumed from" in message and "step 4" in message for message in messages)
    assert int(resumed.step) == 8
    assert float(resumed.d_optimizer.learning_rate) == pytest.approx(3e-4)
    assert float(resumed.g_optimizer.learning_rate) == pytest.approx(1e-4)  # --learning-rate's default, kept
    assert RunFolder(run_dir).read_train_config().critic_learning_rate == pytest.approx(3e-4)
    assert int(resumed.d_optimizer.iterations) == 8  # 1 critic step per step, counted across both runs
    assert len(list(csv.DictReader((run_dir / "history.csv").open()))) == 4  # appended, not restarted
    assert any(not np.array_equal(a, b.numpy()) for a, b in zip(moments_at_4, resumed.g_optimizer.variables))


@pytest.mark.parametrize("critic_rate, expected", [(None, 2e-4), (8e-4, 8e-4)], ids=["same", "critic-own"])
def test_the_critic_learns_at_its_own_rate_or_at_the_learning_rate(critic_rate, expected):
    config = training.TrainConfig.from_flat(learning_rate=2e-4, critic_learning_rate=critic_rate, channels=3,
                                            **tiny_settings())
    model = training.build_model(config)
    assert float(model.d_optimizer.learning_rate) == pytest.approx(expected)
    assert float(model.g_optimizer.learning_rate) == pytest.approx(2e-4)


def test_a_used_run_folder_is_refused_without_resume(tiny_run, synthetic_category):
    config = training.TrainConfig.from_flat(data=str(synthetic_category), **tiny_settings())
    with pytest.raises(GanspectionError, match="--resume"):
        training.train(config, tiny_run, verbose=0, log=quiet)


def tiny_cli_train(data, out, *options):
    """`ganspection-tf train` of a tiny model (32 px, width 8) with `options`; returns the exit status."""
    return main(["train", "--data", str(data), "--out", str(out), "--image-size", "32", "--width", "8",
                 "--latent-dim", "8", "--batch-size", "8", "--no-jit", *options])


def test_cli_train_writes_a_run_and_one_progress_line_per_log_interval(synthetic_category, tmp_path, capsys):
    out = tmp_path / "cli-run"
    code = tiny_cli_train(synthetic_category, out, "--critic-steps", "2", "--steps", "4", "--log-every", "2",
                          "--checkpoint-every", "2", "--sample-every", "2", "--validate-every", "3")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert isinstance(keras.models.load_model(out / "model.keras", safe_mode=True), keras.Model)
    progress = [parse_progress(line) for line in captured.out.splitlines() if line.startswith("step ")]
    assert [p["step"] for p in progress] == [2, 4]
    for p in progress:
        assert 0 < p["steps_per_s"] < 1000
        # images through critic updates = global batch 8 × 2 critic updates × steps/s; a full step sees 8 × steps/s
        assert p["critic_images"] == pytest.approx(16 * p["steps_per_s"], rel=0.01, abs=1)
        assert p["step_images"] == pytest.approx(8 * p["steps_per_s"], rel=0.01, abs=1)
        assert np.isfinite(p["critic_loss"])
    assert progress[-1]["eta"] == "0s"
    # --validate-every 3: at the end of the interval reaching step 3, and at the last step
    validation = [VALIDATION.match(line) for line in captured.out.splitlines() if line.startswith("validation")]
    assert [int(match["step"]) for match in validation] == [4]
    held_out = len(json.loads((out / "splits.json").read_text())["validation"])
    assert all(0.0 <= float(match["auroc"]) <= 1.0 and int(match["copies"]) == 5 * int(match["good"]) == 5 * held_out
               for match in validation)
    assert "\r" not in captured.out  # not a terminal: no redrawing, a log file stays one line per interval


def test_on_a_terminal_the_progress_line_is_redrawn_in_place(tiny_run_copy, capsys):
    config = RunFolder(tiny_run_copy).read_train_config().replace(steps=8)
    training.train(config, tiny_run_copy, resume=True, verbose=1, log=quiet, overrides={"steps": 8})
    lines = capsys.readouterr().out.split("\n")
    assert lines[-1] == "" and len(lines) == 3  # steps 4 → 8 in two log intervals of 2 steps: two lines
    shown = [line.split("\r")[-1].replace("\x1b[K", "") for line in lines[:2]]  # what the terminal keeps
    assert [parse_progress(line)["step"] for line in shown] == [6, 8]
    assert all(line.startswith("\r") for line in lines[:2])


PROGRESS = re.compile(r"step (?P<step>\d+)/\d+ \(\d+%\) \| (?P<steps_per_s>[\d.e+-]+) steps/s, (?P<critic_images>[\d.]+) "
                      r"images/s through critic updates \((?P<step_images>[\d.]+) per full step\) \| ETA (?P<eta>\S+) "
                      r"\| .*critic_loss (?P<critic_loss>\S+)")


VALIDATION = re.compile(r"validation at step (?P<step>\d+): AUROC (?P<auroc>[\d.]+) of the chosen score \(.+\) on "
                        r"(?P<copies>\d+) synthetic-defect copies of (?P<good>\d+) good validation images$")


def parse_progress(line):
    match = PROGRESS.search(line)
    assert match, line
    values = match.groupdict()
    return {"step": int(values["step"]), "eta": values["eta"], "critic_loss": float(values["critic_loss"]),
            **{key: float(values[key]) for key in ("steps_per_s", "critic_images", "step_images")}}


def test_resume_takes_the_data_from_the_run_and_compares_paths_resolved(tiny_run, synthetic_category, monkeypatch,
                                                                       capfd):
    monkeypatch.chdir(synthetic_category.parent)
    for data in ([], ["--data", synthetic_category.name], ["--data", str(synthetic_category)]):
        code = main(["train", "--out", str(tiny_run), "--resume", "--steps", "4", *data])
        assert code == 0, (data, capfd.readouterr().err)
    code = main(["train", "--out", str(tiny_run), "--resume", "--data", str(synthetic_category.parent)])
    assert code == 2 and "conflicts" in capfd.readouterr().err


def test_max_minutes_stops_at_a_saved_checkpoint(synthetic_category, tmp_path, capsys):
    out = tmp_path / "budget-run"
    code = tiny_cli_train(synthetic_category, out, "--critic-steps", "1", "--steps", "8", "--log-every", "1",
                          "--checkpoint-every", "4", "--sample-every", "4", "--max-minutes", "0.0001")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "ETA 0s (stopping for --max-minutes 0.0001)" in captured.out.splitlines()[-2]  # the last progress line
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 1 and status["stopped_by"] == "--max-minutes 0.0001"
    assert int(RunFolder(out).load_model().step) == 1  # saved where it stopped, not at a --checkpoint-every step
    assert json.loads((out / "config.json").read_text())["train"]["max_minutes"] == 0.0001


def test_validate_every_without_validation_images_is_a_one_line_error(synthetic_category, tmp_path, capsys):
    code = main(["train", "--data", str(synthetic_category), "--out", str(tmp_path / "run"), "--image-size", "32",
                 "--width", "8", "--steps", "2", "--val-fraction", "0", "--validate-every", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--validate-every 2: needs at least 2 good validation images" in err
    assert not (tmp_path / "run" / "config.json").exists()  # refused before the run folder was started


def test_the_validation_during_training_scores_the_averaged_weights_as_they_are_now(tiny_run):
    """The validation's term model is built once; it must follow the averaged weights as training moves them."""
    from ganspection_tf.callbacks import SyntheticDefectValidation
    from ganspection_tf.models.bigan import EMA_ENCODER

    run = RunFolder(tiny_run)
    model = run.load_model()
    validation = SyntheticDefectValidation(1, 4, run.validation_images(), np.zeros((2, 32, 32, 3), np.uint8),
                                           run.resize)
    validation.set_model(model)
    validation.on_train_begin()
    for average in model.ema_weights:  # what further training steps would do to the averages
        average.assign(average + 0.5)
    validation.choice()
    copied = validation.term_model.get_layer(EMA_ENCODER).trainable_variables
    for target, average in zip(copied, model.ema_weights):
        np.testing.assert_array_equal(target.numpy(), average.numpy())
