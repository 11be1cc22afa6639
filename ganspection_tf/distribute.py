"""Choosing the tf.distribute strategy, who writes the run folder, and what a cluster's workers must agree on.

One code path: the model is built and compiled inside ``strategy.scope()`` and trained by ``model.fit``, whatever
the strategy. ``auto`` picks MultiWorkerMirroredStrategy when ``TF_CONFIG`` describes a cluster, MirroredStrategy
when the machine has more than one GPU, else the default (single-device) strategy.

In a cluster only the chief keeps what it writes (`writing_folder`, `discard_worker_folder`); every worker
restores the chief's checkpoint on --resume (`check_workers_agree` stops a cluster whose workers differ), and a
lost worker ends the survivors with a one-line "restart with --resume" error (`explain_lost_workers`).
"""

import contextlib
import json
import os
import re
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf

from ganspection_tf.config import STRATEGIES
from ganspection_tf.errors import GanspectionError


def split_cpu_into_logical_devices(count: int):
    """Splits the CPU into `count` logical devices (tests and benchmarks of MirroredStrategy without GPUs).

    Must run before TensorFlow initialises its devices, i.e. before the first op.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def resolve_strategy_name(name="auto") -> str:
    if name not in STRATEGIES:
        raise GanspectionError(f"--strategy {name}: unknown; choose one of {', '.join(STRATEGIES)}")
    if name != "auto":
        return name
    if _cluster_from_tf_config():
        return "multiworker"
    return "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"


def make_strategy(name="auto", devices=None):
    """Returns (strategy, resolved name). `devices` (e.g. ["/gpu:0", "/gpu:1"]) applies to mirrored only.

    Call it before any other TensorFlow op: MultiWorkerMirroredStrategy configures the runtime for collectives
    (and waits for every worker of the cluster to start).
    """
    name = resolve_strategy_name(name)
    if devices and name != "mirrored":
        raise GanspectionError(f"--devices works with --strategy mirrored, not {name}; drop one of the two")
    if name == "default":
        return tf.distribute.get_strategy(), name
    if name == "mirrored":
        _check_devices_exist(devices or [])
        return tf.distribute.MirroredStrategy(devices=devices or None), name
    if not _cluster_from_tf_config():
        raise GanspectionError("--strategy multiworker needs TF_CONFIG describing the cluster; see README 'Scale out'")
    # No collective timeout: a dead worker is detected by the coordination service's heartbeats (about 10 s),
    # and TensorFlow documents `timeout_seconds` as a debugging aid that starts a thread per collective.
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options), name


def _check_devices_exist(devices):
    """Refuses a device this machine does not have (TensorFlow would quietly place its replica elsewhere)."""
    present = {(d.device_type, int(d.name.rsplit(":", 1)[1])) for d in tf.config.list_logical_devices()}
    for device in devices:
        try:
            spec = tf.DeviceSpec.from_string(device)
        except ValueError:
            raise GanspectionError(f"--devices {device}: not a device name; write e.g. /gpu:0,/gpu:1") from None
        if spec.job is None and (str(spec.device_type).upper(), spec.device_index or 0) not in present:
            names = ", ".join(sorted(d.name for d in tf.config.list_logical_devices()))
            raise GanspectionError(f"--devices {device}: this machine has no such device (it has {names})")


def xla_allowed(strategy_name) -> bool:
    """Whether fit's step may be XLA-compiled: only on the default strategy.

    Under MirroredStrategy the compiled step fails ("Trying to access resource … located in device CPU:1 from
    device CPU:0", an XLA known issue with variables on several devices); Keras' own jit_compile="auto" turns
    XLA off under every tf.distribute strategy, and so do we.
    """
    return strategy_name == "default"


def _cluster_from_tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise GanspectionError(f"TF_CONFIG is not valid JSON ({error}); fix the environment variable") from None
    return config.get("cluster") or None


def task_of(strategy):
    """(task_type, task_id) of this process, (None, None) outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy) -> bool:
    """The chief is the 'chief' task, or worker 0 when the cluster has no chief (TensorFlow's convention)."""
    task_type, task_id = task_of(strategy)
    if task_type is None:
        return True
    has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)


def writing_folder(run_dir, strategy) -> Path:
    """Where this process writes: the run folder for the chief, a throw-away folder for the other workers.

    Every worker must take part in saving (metric variables are read collectively, and variables created in
    the scope are broadcast from the chief), but only the chief's copy is kept; see `discard_worker_folder`.
    """
    if is_chief(strategy):
        return Path(run_dir)
    task_type, task_id = task_of(strategy)
    return Path(tempfile.mkdtemp(prefix=f"ganspection-{task_type}{task_id}-"))


def discard_worker_folder(folder, run_dir):
    """Deletes a non-chief worker's throw-away folder (TensorFlow's multi-worker saving pattern)."""
    if Path(folder).resolve() != Path(run_dir).resolve():
        shutil.rmtree(folder, ignore_errors=True)


def in_multi_worker_mode(strategy=None) -> bool:
    """True for a MultiWorkerMirroredStrategy with more than one worker (Keras asks the same private question)."""
    strategy = strategy or tf.distribute.get_strategy()
    extended = strategy.extended
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and extended._in_multi_worker_mode()


def reducible_logs(logs: dict) -> dict:
    """`train_step` logs in a shape Keras can reduce across workers.

    Keras 3 reduces fit's logs over a multi-worker cluster with ``strategy.reduce("MEAN", value, axis=0)``, which
    fails on scalars ("Invalid reduction dimension 0", tensorflow/tensorflow#72388). A length-1 axis makes that
    reduction a plain mean over the workers, returned as a scalar. Elsewhere the logs stay scalars.
    """
    if not in_multi_worker_mode():
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


# What the workers of a cluster must agree on before training, and what to fix when they do not.
DISAGREEMENTS = {
    "restored_step": "the workers resumed from different checkpoint steps ({values}); --out must be the same "
    "shared folder on every worker",
    "training_images": "the workers decoded different training images (checksums {values}); every worker needs "
    "the same --data at the same path and the same options",
}


def check_workers_agree(strategy, **facts: int):
    """Stops with a one-line error when the workers differ in any of `facts` (names from DISAGREEMENTS).

    Workers that restored different steps, or read different images, would otherwise train out of step and
    hang in a collective, or silently mix data sets. Outside a cluster this does nothing.
    """
    if not in_multi_worker_mode(strategy):
        return
    local = tf.constant([list(facts.values())], tf.int64)
    gathered = strategy.gather(tf.function(lambda: strategy.run(tf.identity, (local,)))(), axis=0).numpy()
    for column, name in enumerate(facts):
        values = sorted({int(value) for value in gathered[:, column]})
        if len(values) > 1:
            raise GanspectionError(DISAGREEMENTS[name].format(values=", ".join(map(str, values))))


def images_checksum(images) -> int:
    """A cheap fingerprint of the decoded training images (CRC-32 of the array bytes)."""
    return zlib.crc32(memoryview(np.ascontiguousarray(images)).cast("B"))


@contextlib.contextmanager
def explain_lost_workers(strategy, checkpoints):
    """Turns "a worker is gone" during multi-worker training into a one-line error that says how to go on.

    When a worker dies, TensorFlow's coordination service stops receiving its heartbeats (about 10 s) and
    aborts the collectives on the survivors, which then raise UnavailableError; a stalled collective raises
    DeadlineExceededError. Either way this process must end (non-zero) so that the job is restarted.
    """
    if not in_multi_worker_mode(strategy):
        yield
        return
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError) as error:
        reason = re.sub(r"\{\{[^}]*\}\}\s*", "", str(error)).strip().splitlines()[0][:200]
        raise GanspectionError(
            f"lost contact with the cluster ({reason}); restart every worker with the same command and --resume: "
            f"training continues from the last checkpoint in {checkpoints}"
        ) from error
