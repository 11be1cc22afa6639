"""Choosing the tf.distribute strategy, and who writes the run folder.

One code path: the model is built and compiled inside ``strategy.scope()`` and trained by ``model.fit``, whatever
the strategy. ``auto`` picks MultiWorkerMirroredStrategy when ``TF_CONFIG`` describes a cluster, MirroredStrategy
when the machine has more than one GPU, else the default (single-device) strategy.
"""

import json
import os
import tempfile
from pathlib import Path

import tensorflow as tf

from ganspection_tf.errors import GanspectionError

STRATEGIES = ("auto", "default", "mirrored", "multiworker")


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
    """Returns (strategy, resolved name). `devices` (e.g. ["/gpu:0", "/gpu:1"]) applies to mirrored only."""
    name = resolve_strategy_name(name)
    if devices and name != "mirrored":
        raise GanspectionError(f"--devices works with --strategy mirrored, not {name}; drop one of the two")
    if name == "default":
        return tf.distribute.get_strategy(), name
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices or None), name
    if not _cluster_from_tf_config():
        raise GanspectionError("--strategy multiworker needs TF_CONFIG describing the cluster; see README 'Scale out'")
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options), name


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

    Every worker must take part in saving (variables are read collectively), but only the chief's copy is kept.
    """
    if is_chief(strategy):
        return Path(run_dir)
    task_type, task_id = task_of(strategy)
    return Path(tempfile.mkdtemp(prefix=f"ganspection-{task_type}{task_id}-"))
