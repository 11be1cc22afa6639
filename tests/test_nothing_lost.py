"""Nothing a user owns is lost (issue 12), every case through the CLI: output folders proven ours by a marker,
one writer per run, resumes that cannot silently change what was trained, damaged checkpoints, a truthful
status.json, Ctrl-C / SIGTERM, and advice in error messages that works when it is run.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_support import assert_one_line_error as one_line_error
from cli_support import run_cli

from ganspection_tf.run import RunFolder
from ganspection_tf import ownership
from ganspection_tf.cli import main

TINY = ["--image-size", "32", "--width", "8", "--latent-dim", "8", "--critic-steps", "1", "--batch-size", "8",
        "--log-every", "2", "--checkpoint-every", "2", "--sample-every", "2", "--no-jit", "--val-fraction", "0.2"]


def snapshot(folder):
    return {path.relative_to(folder): path.read_bytes() for path in Path(folder).rglob("*") if path.is_file()}


def train_cli(capfd, data, out, steps, *extra):
    return run_cli(capfd, "train", "--data", data, "--out", out, "--steps", steps, *TINY, *extra)


def advice_command(message):
    """The command quoted in an error message ('ganspection-tf …'), as CLI arguments."""
    quoted = message.split("'ganspection-tf ", 1)[1].split("'", 1)[0]
    return quoted.split()


@pytest.fixture
def data(synthetic_category, tmp_path):
    """A private copy of the synthetic category (some tests change it)."""
    return Path(shutil.copytree(synthetic_category, tmp_path / "widget"))


@pytest.fixture(scope="module")
def finished_run(synthetic_category, tmp_path_factory):
    """A tiny run trained to step 4 (checkpoints at 2 and 4); tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("finished")
    data = Path(shutil.copytree(synthetic_category, root / "widget"))
    run = root / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--steps", "4", *TINY]) == 0
    return data, run


def copy_run(finished_run, tmp_path):
    data, run = finished_run
    return data, Path(shutil.copytree(run, tmp_path / "run"))


# ------------------------------------------------------------------------------------------ ownership


def test_train_refuses_a_folder_of_the_users_files_even_with_overwrite(data, tmp_path, capfd):
    out = tmp_path / "mine"
    (out / "samples").mkdir(parents=True)
    (out / "model.keras").write_text("my own model")
    (out / "history.csv").write_text("my,own\n1,2\n")
    (out / "samples" / "x.png").write_bytes(b"my picture")
    before = snapshot(out)
    one_line_error(*train_cli(capfd, data, out, 2)[::2], out, "did not write")
    message = one_line_error(*train_cli(capfd, data, out, 2, "--overwrite")[::2], "model.keras", "not even")
    assert "history.csv" in message
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["history.csv", "model.keras",
                                                                                "samples"]


def test_overwrite_trains_beside_foreign_files_and_never_touches_them(data, tmp_path, capfd):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = train_cli(capfd, data, out, 2, "--overwrite")
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "keep me" and (out / "model.keras").is_file()
    assert ownership.read_marker(out)["kind"] == "run"
    # our own earlier run in that folder: --overwrite replaces it and still keeps notes.txt
    code, _, err = train_cli(capfd, data, out, 4, "--overwrite")
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "keep me" and int(RunFolder(out).load_model().step) == 4


def test_export_force_never_deletes_the_users_files(finished_run, tmp_path, capfd):
    _, run = finished_run
    out = tmp_path / "D"
    (out / "photos").mkdir(parents=True)
    (out / "photos" / "p.jpg").write_bytes(b"holiday")
    (out / "notes.txt").write_text("notes")
    (out / "metadata.json").write_text("{}")  # any content: a well-known name proves nothing
    before = snapshot(out)
    export = ["export", run, "--tflite", "--quantize", "none", "--out", out]
    one_line_error(*run_cli(capfd, *export, "--force")[::2], out)
    one_line_error(*run_cli(capfd, *export, "--force", "--overwrite")[::2], "metadata.json", "not even")
    assert snapshot(out) == before
    (out / "metadata.json").unlink()
    code, _, err = run_cli(capfd, *export, "--force", "--overwrite")
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "notes" and (out / "photos" / "p.jpg").read_bytes() == b"holiday"
    assert (out / "model.tflite").is_file() and ownership.read_marker(out)["kind"] == "bundle"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_demo_never_deletes_the_users_files_in_its_folders(tmp_path, capfd):
    out = tmp_path / "U"
    (out / "run").mkdir(parents=True)
    (out / "bundle").mkdir()
    (out / "run" / "mine.txt").write_text("mine")
    (out / "bundle" / "model.tflite").write_bytes(b"my own model")
    before = snapshot(out)
    one_line_error(*run_cli(capfd, "demo", "--out", out, "--steps", "2")[::2], "did not write")
    one_line_error(*run_cli(capfd, "demo", "--out", out, "--steps", "2", "--overwrite")[::2], "not even")
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["bundle", "run"]


def test_a_run_folder_of_the_release_before_markers_is_still_ours(finished_run, tmp_path, capfd):
    data, run = copy_run(finished_run, tmp_path)
    (run / ownership.MARKER_FILE).unlink()
    (run / ownership.LOCK_FILE).unlink()
    code, _, err = train_cli(capfd, data, run, 6, "--resume")
    assert code == 0, err
    assert int(RunFolder(run).load_model().step) == 6 and ownership.read_marker(run)["kind"] == "run"


# ------------------------------------------------------------------------------------------ resume


def test_resume_without_checkpoints_is_refused_and_the_advice_works(finished_run, tmp_path, capfd):
    data, run = copy_run(finished_run, tmp_path)
    shutil.rmtree(run / "checkpoints")
    trained = (run / "model.keras").read_bytes()
    message = one_line_error(*train_cli(capfd, data, run, 40, "--resume")[::2], "no checkpoint", "step 0",
                             "--overwrite")
    assert (run / "model.keras").read_bytes() == trained
    assert "instead of --resume" in message  # the advice: the same command with --overwrite
    code, _, err = train_cli(capfd, data, run, 6, "--overwrite")
    assert code == 0, err
    assert int(RunFolder(run).load_model().step) == 6


def test_resume_refuses_data_that_changed_since_the_run_began(finished_run, tmp_path, capfd):
    data, run = copy_run(finished_run, tmp_path)
    moved = Path(shutil.copytree(data, tmp_path / "widget-now"))
    gone = sorted((moved / "train" / "good").iterdir())[3]
    gone.unlink()
    shutil.copy(moved / "test" / "good" / "000.png", moved / "train" / "good" / "new.png")
    config = json.loads((run / "config.json").read_text())
    config["train"]["data"] = str(moved)  # the run's data path now points at the changed folder
    (run / "config.json").write_text(json.dumps(config))
    message = one_line_error(*run_cli(capfd, "train", "--data", moved, "--out", run, "--resume", "--steps", 6)[::2],
                             "changed since this run began")
    assert gone.name in message and "new.png" in message
    assert int(RunFolder(run).load_model().step) == 4


@pytest.mark.parametrize("damage", ["truncated_data", "overwritten_index"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(damage, finished_run, tmp_path, capfd):
    data, run = copy_run(finished_run, tmp_path)
    latest = run / "checkpoints" / "ckpt-4"
    if damage == "truncated_data":
        (data_file,) = run.glob("checkpoints/ckpt-4.data-*")
        data_file.write_bytes(data_file.read_bytes()[:100])
    else:
        (run / "checkpoints" / "ckpt-4.index").write_bytes(b"overwritten by something else")
    code, out, err = train_cli(capfd, data, run, 6, "--resume")
    assert code == 0, err
    warnings = [line for line in (out + err).splitlines() if line.startswith("warning: damaged checkpoint")]
    assert len(warnings) == 1 and str(latest) in warnings[0] and str(run / "checkpoints" / "ckpt-2") in warnings[0]
    assert "resumed from" in out + err and "at step 2" in out + err
    assert int(RunFolder(run).load_model().step) == 6


# ------------------------------------------------------------------------------------------ advice


def test_a_damaged_model_of_a_finished_run_is_rebuilt_by_the_advised_command(finished_run, tmp_path, capfd):
    data, run = copy_run(finished_run, tmp_path)
    model_file = run / "model.keras"
    model_file.write_bytes(model_file.read_bytes()[:4096])
    message = one_line_error(*run_cli(capfd, "export", run, "--tflite", "--out", tmp_path / "b")[::2], "model.keras")
    command = advice_command(message)
    assert command[0] == "train" and "--resume" in command
    code, _, err = run_cli(capfd, *command)
    assert code == 0, err
    assert int(RunFolder(run).load_model().step) == 4


def test_a_lambda_layer_model_is_refused_with_a_whole_sentence(finished_run, tmp_path, capfd):
    import keras

    data, run = copy_run(finished_run, tmp_path)
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(run / "model.keras")
    image = data / "test" / "good" / "000.png"
    message = one_line_error(*run_cli(capfd, "score", run, image)[::2], "model.keras", "Lambda")
    assert "truncated" not in message and message.rstrip().endswith("--resume'")
    code, _, err = run_cli(capfd, *advice_command(message))
    assert code == 0, err
    assert int(RunFolder(run).load_model().step) == 4


def test_the_advice_after_divergence_works(finished_run, tmp_path, capfd):
    data, run = copy_run(finished_run, tmp_path)
    message = one_line_error(*train_cli(capfd, data, run, 8, "--resume", "--learning-rate", "1e10")[::2],
                             "diverged", "--resume", "--learning-rate")
    assert "model.keras are kept" in message
    assert json.loads((run / "status.json").read_text())["state"] == "diverged"
    code, _, err = train_cli(capfd, data, run, 8, "--resume", "--learning-rate", "1e-5")
    assert code == 0, err
    assert int(RunFolder(run).load_model().step) == 8
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def test_train_data_given_a_file_says_so(tmp_path, capfd):
    image = tmp_path / "some.png"
    image.write_bytes(b"\x89PNG")
    message = one_line_error(*train_cli(capfd, image, tmp_path / "run", 2)[::2], "some.png")
    assert "does not exist" not in message and "file" in message


# ------------------------------------------------------------------------------------------ processes and signals


def start_training(data, out, steps=100000):
    command = [sys.executable, "-m", "ganspection_tf.cli", "train", "--data", str(data), "--out", str(out),
               "--steps", str(steps), *TINY]
    # faulthandler: SIGABRT makes a hung child print every thread's stack (see wait_or_dump)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})


def wait_or_dump(worker, timeout):
    """Wait for the worker; if it hangs, fail with the stacks of its threads (what it was stuck in)."""
    try:
        worker.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        worker.send_signal(signal.SIGABRT)
        worker.wait(timeout=30)
        stderr = worker.stderr.read()  # its start shows what the signal ran into, its end every thread's stack
        pytest.fail(f"no exit {timeout} s after the signal; its stderr:\n{stderr[:3000]}\n[...]\n{stderr[-6000:]}")


def wait_for_checkpoint(worker, run, step=2, timeout=240):
    deadline = time.time() + timeout
    while not list(run.glob(f"checkpoints/ckpt-{step}.index")) and worker.poll() is None:
        assert time.time() < deadline, "training did not reach its first checkpoint"
        time.sleep(0.05)
    assert worker.poll() is None, worker.stderr.read()[-1000:]


def stop(worker):
    if worker.poll() is None:
        worker.kill()
        worker.wait(timeout=30)


@pytest.mark.parametrize("signum, state, status", [(signal.SIGINT, "interrupted", 130),
                                                   (signal.SIGTERM, "killed", 143)])
def test_a_signal_stops_training_quickly_and_status_says_so(signum, state, status, data, tmp_path, capfd):
    run = tmp_path / "run"
    worker = start_training(data, run)
    try:
        wait_for_checkpoint(worker, run)
        # one writer per run folder: a second train on the same --out is refused at once
        code, _, err = train_cli(capfd, data, run, 10)
        one_line_error(code, err, "another ganspection-tf process", str(worker.pid))
        # nor may evaluate write its calibration and report into the run while it is being trained
        code, _, err = run_cli(capfd, "evaluate", run)
        one_line_error(code, err, "another ganspection-tf process", str(worker.pid))
        sent = time.time()
        worker.send_signal(signum)
        wait_or_dump(worker, 20)
        assert time.time() - sent < 20  # typically 2-5 s; generous for a CI machine shared with other jobs
    finally:
        stop(worker)
    stderr = worker.stderr.read()
    assert worker.returncode == status, stderr[-1000:]
    assert "Traceback" not in stderr
    recorded = json.loads((run / "status.json").read_text())
    assert recorded["state"] == state and recorded["step"] >= 2
    # the lock went with the process
    code, _, err = train_cli(capfd, data, run, recorded["step"] + 2, "--resume")
    assert code == 0, err


def test_ctrl_c_and_sigterm_during_export_leave_nothing_behind(finished_run, tmp_path):
    _, run = finished_run
    for signum, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = tmp_path / f"bundle-{signum}"
        command = [sys.executable, "-m", "ganspection_tf.cli", "export", str(run), "--tflite", "--quantize", "none",
                   "--out", str(out)]
        worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 240
            # the staging folder holds the converted model: the parity check is running
            while not list(tmp_path.glob(f".{out.name}.partial-*/metadata.json")) and worker.poll() is None:
                assert time.time() < deadline
                time.sleep(0.01)
            worker.send_signal(signum)
            worker.wait(timeout=30)
        finally:
            stop(worker)
        stderr = worker.stderr.read()
        assert worker.returncode == status, stderr[-2000:]
        assert "Traceback" not in stderr
        assert not out.exists() and not list(tmp_path.glob(".*"))


# ------------------------------------------------------------------------------------------ fault injection


@pytest.mark.slow
def test_kill_minus_nine_at_two_random_points_then_resume_reaches_the_full_run(data, tmp_path, capfd):
    """SIGKILL at 2 random moments while checkpoints are written at every step; each time --resume.

    After a kill the run's status reads killed (the dead process left "running"); the final model reaches the
    requested step with its optimizer state carried across every kill, at most one checkpoint interval is trained
    twice, and no file outside the run folder changed.
    """
    import random

    rng = random.Random(12)
    run, steps = tmp_path / "run", 24
    outside_before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    command = [sys.executable, "-m", "ganspection_tf.cli", "train", "--data", str(data), "--out", str(run),
               "--steps", str(steps), *TINY, "--checkpoint-every", "1", "--log-every", "1", "--sample-every", "12",
               "--resume"]
    kills = 0
    while kills < 2:
        worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 240
            # wait until this process writes checkpoints, then kill it at a random moment among the writes
            started = {p.name for p in run.glob("checkpoints/ckpt-*.index")}
            while worker.poll() is None and {p.name for p in run.glob("checkpoints/ckpt-*.index")} <= started:
                assert time.time() < deadline
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.6))
            if worker.poll() is not None:
                break  # finished before the kill
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
            kills += 1
        finally:
            stop(worker)
        assert json.loads((run / "status.json").read_text())["state"] == "running"  # what the dead process left
        assert RunFolder(run).read_status()["state"] == "killed"
    assert kills == 2, "training finished too fast to be killed twice"
    last_checkpoint = max(int(p.stem.split("-")[1]) for p in run.glob("checkpoints/ckpt-*.index"))
    code, out, err = run_cli(capfd, *command[3:])
    assert code == 0, err
    assert "was killed" in out + err
    resumed_at = int(re.search(r"resumed from \S+ at step (\d+)", out + err).group(1))
    assert last_checkpoint - 1 <= resumed_at <= last_checkpoint  # a kill mid-write may cost the newest one
    model = RunFolder(run).load_model()
    assert int(model.step) == steps and int(model.d_optimizer.iterations) == steps  # critic_steps 1
    assert RunFolder(run).read_status()["state"] == "finished"
    outside_after = {path: path.read_bytes() for path in tmp_path.rglob("*")
                     if path.is_file() and run not in path.parents}
    assert outside_after == outside_before


# ------------------------------------------------------------------------------------------ edited files, bundles


@pytest.fixture(scope="module")
def bundle(finished_run, tmp_path_factory):
    _, run = finished_run
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    assert main(["export", str(run), "--tflite", "--quantize", "none", "--force", "--out", str(out)]) == 0
    return out


def frames_folder(data, tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for path in sorted((data / "test").glob("*/*.png"))[::4]:
        shutil.copy(path, folder / f"{path.parent.name}_{path.name}")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "zz_noise.png")
    return folder


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_bundle_threshold_that_is_not_finite_is_refused_as_such(value, bundle, finished_run, tmp_path, capfd):
    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    metadata = json.loads((copy / "metadata.json").read_text())
    metadata["threshold"] = metadata["calibration"]["threshold"] = value
    (copy / "metadata.json").write_text(json.dumps(metadata))
    message = one_line_error(*run_cli(capfd, "camera", copy, "--source", finished_run[0] / "test" / "good")[::2],
                             "metadata.json", "threshold")
    assert "finite" in message and "evaluate" not in message and "export" in message


def test_calibration_maps_of_the_wrong_shape_are_refused_when_the_bundle_loads(bundle, finished_run, tmp_path, capfd):
    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    metadata = json.loads((copy / "metadata.json").read_text())
    calibration = metadata["calibration"]
    if calibration.get("map_mean") is not None:  # the per-pixel Gaussian (normalized_map_max)
        key, cut = "map_mean", ("map_mean", "map_std")
    elif calibration.get("patch_bank") is not None:  # the bank of good patches (patch_distance): 2 features short
        key, cut = "patch_bank", ()
        calibration["patch_bank"] = [row[:-2] for row in calibration["patch_bank"]]
    else:  # the code Gaussian (latent_mahalanobis)
        assert calibration.get("code_mean") is not None, calibration["terms"]
        key, cut = "code_mean", ("code_whitening",)
        calibration["code_mean"] = calibration["code_mean"][:-2]
    for name in cut:
        calibration[name] = [row[:-2] for row in calibration[name][:-2]]  # still square, 2 short
    (copy / "metadata.json").write_text(json.dumps(metadata))
    one_line_error(*run_cli(capfd, "camera", copy, "--source", finished_run[0] / "test" / "good")[::2],
                   "metadata.json", key)


def test_a_hand_edited_calibration_json_names_the_file_and_the_key(finished_run, tmp_path, capfd):
    data, run = copy_run(finished_run, tmp_path)
    image = data / "test" / "good" / "000.png"
    assert run_cli(capfd, "score", run, image)[0] == 0  # writes calibration.json
    calibration = json.loads((run / "calibration.json").read_text())
    calibration["std"][0] = float("inf")
    (run / "calibration.json").write_text(json.dumps(calibration))
    code, _, err = run_cli(capfd, "score", run, image)
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert code == 0 and "Traceback" not in err  # recomputed from the run (scoring.ensure_calibration) …
    assert len(warnings) == 1 and "calibration.json" in warnings[0] and "'std'" in warnings[0]  # … and said so


def test_camera_appends_its_lines_and_never_overwrites_a_saved_frame(bundle, finished_run, tmp_path, capfd):
    frames = frames_folder(finished_run[0], tmp_path)
    results, saved = tmp_path / "results.jsonl", tmp_path / "flagged"
    camera = ["camera", bundle, "--source", frames, "--out", results, "--save-anomalies", saved]
    assert run_cli(capfd, *camera)[0] == 0
    lines, pictures = results.read_text().splitlines(), sorted(p.read_bytes() for p in saved.iterdir())
    assert lines and pictures, "nothing flagged: the test needs at least one anomalous frame"
    assert run_cli(capfd, *camera)[0] == 0
    assert results.read_text().splitlines()[: len(lines)] == lines and len(results.read_text().splitlines()) == \
        2 * len(lines)
    assert len(list(saved.iterdir())) == 2 * len(pictures)


def test_a_mask_of_another_aspect_ratio_is_refused(finished_run, tmp_path, capfd):
    import numpy as np
    from PIL import Image

    data, run = copy_run(finished_run, tmp_path)
    data = Path(shutil.copytree(data, tmp_path / "widget"))
    mask = sorted((data / "ground_truth").glob("*/*_mask.png"))[0]
    Image.fromarray(np.zeros((64, 32), dtype=np.uint8)).save(mask)
    one_line_error(*run_cli(capfd, "evaluate", run, "--data", data)[::2], mask.name, "aspect ratio")
