"""Nothing already written is lost: the divergence guard, a full disk, signals that land where Python drops them
(kill -9 then --resume: test_nothing_lost.py)."""

import errno
import json
import os
import signal
import subprocess
import sys

import keras
import pytest
from conftest import tiny_settings

from ganspection_tf import artifacts, interrupts, training
from ganspection_tf.run import RunFolder
from ganspection_tf.errors import GanspectionError


def quiet(*_args, **_kwargs):
    pass


def latest_checkpoint_step(run_dir):
    index = run_dir / "checkpoints" / "checkpoint"
    if not index.exists():
        return 0
    first_line = index.read_text().splitlines()[0]  # model_checkpoint_path: "ckpt-N"
    return int(first_line.rsplit("-", 1)[1].rstrip('"'))


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(synthetic_category, tiny_run_copy):
    run_dir = tiny_run_copy  # trained for 4 steps
    good_model = (run_dir / "model.keras").read_bytes()

    # Resume with an absurd learning rate: Adam moves every weight by ~1e10 and the critic runs away at once.
    with pytest.raises(GanspectionError, match="diverged at step 5") as caught:
        training.train(training.TrainConfig.from_flat(data=str(synthetic_category)), run_dir, resume=True, verbose=0,
                       log=quiet, overrides={"steps": 10, "learning_rate": 1e10})

    assert "\n" not in str(caught.value)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "diverged" and status["reason"]
    assert latest_checkpoint_step(run_dir) == 4
    assert (run_dir / "model.keras").read_bytes() == good_model
    assert int(RunFolder(run_dir).load_model().step) == 4


def test_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "metadata.json"
    artifacts.write_json(target, {"version": 1})

    def disk_full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(GanspectionError, match="disk is full"):
        artifacts.write_json(target, {"version": 2})
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metadata.json"]  # no temporary file left behind


def test_a_full_disk_during_training_keeps_the_last_model(synthetic_category, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_replace = os.replace
    saved = []

    def replace_until_disk_fills(source, target):
        if str(target).endswith("model.keras"):
            if saved:
                raise OSError(errno.ENOSPC, "No space left on device")
            saved.append(target)
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_until_disk_fills)
    config = training.TrainConfig.from_flat(data=str(synthetic_category), **tiny_settings(steps=4))
    with pytest.raises(GanspectionError, match="disk is full"):
        training.train(config, run_dir, verbose=0, log=quiet)
    monkeypatch.setattr(os, "replace", real_replace)
    assert int(RunFolder(run_dir).load_model().step) == 2
    assert not list(run_dir.glob(".model.keras.*"))


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    target = artifacts.write_json(tmp_path / "metadata.json", {"a": 1}) or tmp_path / "metadata.json"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


STUCK_CLEAN_UP = """
import sys, time
from ganspection_tf import interrupts
interrupts.CLEANUP_SECONDS = 2
with interrupts.routed_to_exceptions(exit_if_stuck=sys.argv[1] == "console"):
    try:
        print("ready", flush=True)
        time.sleep(60)
    finally:
        def deadlocked_clean_up():
            time.sleep(60)
        deadlocked_clean_up()
"""


@pytest.mark.parametrize("caller", ["console", "in-process"])
def test_a_signal_ends_the_console_command_even_when_its_clean_up_hangs(caller):
    """The console command exits CLEANUP_SECONDS after a signal, printing where it hung; a caller in the same
    process (a notebook) is never ended from under it."""
    worker = subprocess.Popen([sys.executable, "-c", STUCK_CLEAN_UP, caller], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline() == "ready\n"
        worker.send_signal(signal.SIGINT)
        if caller == "console":
            worker.wait(timeout=30)
            stderr = worker.stderr.read()
            assert worker.returncode != 0 and "deadlocked_clean_up" in stderr, stderr
        else:
            with pytest.raises(subprocess.TimeoutExpired):
                worker.wait(timeout=6)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)


class SignalInDestructor:
    """Raises SIGINT from inside __del__, where Python cannot raise the KeyboardInterrupt (TensorFlow frees
    objects in __del__ all through training, so a real Ctrl-C can land there)."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)


class AtStep(keras.callbacks.Callback):
    """Calls `action` at the end of training step `step`."""

    def __init__(self, step, action):
        super().__init__()
        self.step, self.action = step, action

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.step) == self.step:
            self.action()


def ctrl_c_in_a_destructor():
    SignalInDestructor()  # deleted at once


def sigterm_that_numpy_replaces_with_its_own_error():
    """What numpy does when SIGTERM lands in its ``np.array(variable)`` fallback: its own error replaces ours."""
    try:
        signal.raise_signal(signal.SIGTERM)
    except interrupts.Terminated:
        raise TypeError("Variable.__array__() got an unexpected keyword argument 'copy'") from None


def test_a_ctrl_c_that_lands_in_a_destructor_still_stops_training_at_the_next_step(synthetic_category, tmp_path,
                                                                                   capfd):
    run_dir = tmp_path / "run"
    config = training.TrainConfig.from_flat(data=str(synthetic_category), **tiny_settings(steps=40))
    with interrupts.routed_to_exceptions(), pytest.raises(KeyboardInterrupt):
        training.train(config, run_dir, verbose=0, log=quiet, extra_callbacks=[AtStep(3, ctrl_c_in_a_destructor)])
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] <= 4, status
    assert "Exception ignored" not in capfd.readouterr().err  # kept, not printed and dropped


def test_a_sigterm_that_a_library_turned_into_its_own_error_still_reads_killed(synthetic_category, tmp_path):
    run_dir = tmp_path / "run"
    config = training.TrainConfig.from_flat(data=str(synthetic_category), **tiny_settings(steps=6))
    with interrupts.routed_to_exceptions(), pytest.raises(TypeError):
        training.train(config, run_dir, verbose=0, log=quiet,
                       extra_callbacks=[AtStep(3, sigterm_that_numpy_replaces_with_its_own_error)])
    assert json.loads((run_dir / "status.json").read_text())["state"] == "killed"
