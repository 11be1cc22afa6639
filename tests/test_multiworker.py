"""Multi-worker training: two worker processes on 127.0.0.1 (free ports, TF_CONFIG), MultiWorkerMirroredStrategy.

Each test starts real processes through the CLI (or tests/distributed_worker.py), bounds every wait with a
timeout and kills whatever is still running in `finally`. Worker 0 is the chief (there is no 'chief' job).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, closing
from pathlib import Path

import pytest

HELPER = Path(__file__).with_name("distributed_worker.py")
WAIT = 240  # seconds any single process may take on a loaded 2-core machine before the test gives up on it

# One cluster at a time (one pytest-xdist group): two at once would put four TensorFlow processes, besides the
# other xdist worker, on the two cores of a CI machine.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("clusters")]


# ------------------------------------------------------------------------------------------------ helpers


def free_ports(count):
    """Ports the OS reports free on the loopback interface (held open together so they differ)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(closing(socket.socket())) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def tf_config(ports, index):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


class Cluster:
    """Two worker processes with their own TF_CONFIG, TMPDIR and log file; all killed on exit."""

    def __init__(self, folder, command, workers=2):
        self.folder, self.processes, self.logs = Path(folder), [], []
        ports = free_ports(workers)
        for index in range(workers):
            tmp = self.folder / f"tmp{index}"
            tmp.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ, TF_CONFIG=tf_config(ports, index), TMPDIR=str(tmp), TF_CPP_MIN_LOG_LEVEL="2")
            log = self.folder / f"worker{index}.log"
            self.logs.append(log)
            with open(log, "w") as out:
                self.processes.append(
                    subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder)
                )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)

    def wait(self, index, timeout=WAIT):
        try:
            return self.processes[index].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {index} still running after {timeout} s; its log:\n{self.log(index)[-3000:]}")

    def wait_all(self):
        return [self.wait(index) for index in range(len(self.processes))]

    def log(self, index):
        return self.logs[index].read_text(errors="replace")


def train_command(data, out, steps, checkpoint_every, jit="--no-jit"):
    """The CLI for a tiny model (32 px, width 8), 4 images per replica; --resume makes restarts safe."""
    return [
        sys.executable, "-m", "ganspection_tf.cli", "train", "--data", str(data), "--out", str(out),
        "--image-size", "32", "--width", "8", "--latent-dim", "8", "--critic-steps", "1", "--batch-size", "4",
        "--steps", str(steps), "--log-every", "2", "--checkpoint-every", str(checkpoint_every),
        "--sample-every", str(checkpoint_every), "--val-fraction", "0.2", jit,
        "--strategy", "multiworker", "--resume",
    ]  # fmt: skip


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.2)


def leftovers(folder):
    """Whatever the workers left in their TMPDIR (their throw-away writing folders)."""
    return sorted(str(path.relative_to(folder)) for path in Path(folder).glob("tmp*/*"))


# ------------------------------------------------------------------------------------------------ tests


def test_each_worker_reads_its_own_share_of_every_global_batch_and_workers_must_agree(tmp_path):
    with Cluster(tmp_path, [sys.executable, str(HELPER), "shard-probe"]) as cluster:
        assert cluster.wait_all() == [0, 0], cluster.log(0)[-3000:] + cluster.log(1)[-3000:]
        results = [json.loads(cluster.log(index).strip().splitlines()[-1]) for index in range(2)]

    assert [result["replicas"] for result in results] == [2, 2]
    per_step = list(zip(results[0]["batches"], results[1]["batches"]))
    assert len(per_step) == 3
    for first, second in per_step:
        assert len(first) == len(second) == 2  # the per-replica batch: global batch 4 over 2 workers
        assert not set(first) & set(second)  # different images on the two workers
    assert len({image for step in per_step for batch in step for image in batch}) > 4  # not the same batch
    for result in results:  # a cluster whose workers restored different steps stops on every worker
        assert "the workers resumed from different checkpoint steps (0, 4)" in result["disagreement"]


def test_a_killed_worker_does_not_lose_the_run_and_only_the_chief_keeps_artifacts(tmp_path, synthetic_category):
    from ganspection_tf.training import load_model

    out, steps = tmp_path / "run", 24
    command = train_command(synthetic_category, out, steps=steps, checkpoint_every=4, jit="--jit")  # turned off

    with Cluster(tmp_path / "first", command) as cluster:
        wait_for(lambda: list((out / "checkpoints").glob("ckpt-*.index")), WAIT, "the first checkpoint")
        cluster.processes[1].send_signal(signal.SIGKILL)
        chief_code = cluster.wait(0)  # the chief notices on its own and stops
    assert chief_code != 0
    assert "restart every worker with the same command and --resume" in cluster.log(0)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "lost contact" in status["reason"]  # the truth, never "running"

    with Cluster(tmp_path / "second", command) as cluster:
        assert cluster.wait_all() == [0, 0], cluster.log(0)[-3000:] + cluster.log(1)[-3000:]
    resumed = re.search(r"resumed from \S+ckpt-(\d+) at step (\d+)", cluster.log(0))
    assert resumed, cluster.log(0)[-3000:]
    resumed_step = int(resumed.group(2))
    assert 0 < resumed_step < steps
    assert f"training {steps - resumed_step} steps from step {resumed_step}" in cluster.log(1)
    status = json.loads((out / "status.json").read_text())
    assert (status["state"], status["step"]) == ("finished", steps)
    assert int(load_model(out).step.numpy()) == steps
    assert json.loads((out / "config.json").read_text())["strategy"] == {"name": "multiworker", "replicas": 2}
    assert sorted(path.name for path in (out / "samples").glob(f"step{steps:06d}_*.png"))
    assert leftovers(tmp_path / "second") == []  # worker 1 wrote into its own temporary folder and deleted it
    assert "multiworker strategy × 2 replicas, global batch 8" in cluster.log(1)
    assert "XLA is off under the multiworker strategy" in cluster.log(0)
    epochs = [int(row.split(",")[0]) for row in (out / "history.csv").read_text().splitlines()[1:]]
    assert epochs.count(0) == 1 and epochs[-1] == steps // 2 - 1  # one row per 2 steps, never restarted at 0
