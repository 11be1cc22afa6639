"""Runs one distributed check in a fresh Python process and prints its result as JSON on the last line.

The tests in test_distribute.py and test_multiworker.py start this script as a subprocess, because splitting the
CPU into logical devices and joining a multi-worker cluster must both happen before TensorFlow initialises,
which the pytest process has long done. Usage::

    python tests/distributed_worker.py equivalence [GP_EVERY]
    python tests/distributed_worker.py mirrored-train DATA OUT
    python tests/distributed_worker.py shard-probe          (with TF_CONFIG set, once per worker)
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TINY = dict(image_size=32, width=8, latent_dim=8, critic_steps=2, jit_compile=False)


def equivalence(gp_every="1"):
    """One MirroredStrategy step on 2 logical CPUs against one single-device step at the same global batch
    (with gp_every not dividing critic_steps, the penalty sits in a tf.cond)."""
    from ganspection_tf import distribute

    distribute.split_cpu_into_logical_devices(2)
    import keras
    import numpy as np
    import tensorflow as tf

    from ganspection_tf.training import TrainConfig, build_model

    config = TrainConfig.from_flat(data="unused", channels=3, batch_size=8, seed=3, gp_every=int(gp_every), **TINY)
    batch = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype("float32")

    def one_step(strategy):
        keras.utils.set_random_seed(config.model.seed)  # the same initial weights for both models
        with strategy.scope():
            model = build_model(config)
        before = _state(model)
        history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=1, epochs=1, verbose=0)
        return before, _state(model), {name: values[-1] for name, values in history.history.items()}, model

    start, single, single_logs, single_model = one_step(tf.distribute.get_strategy())
    mirrored_start, mirrored, mirrored_logs, mirrored_model = one_step(
        tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    )

    def gaps(a, b):
        """Per variable: the largest difference, relative to the variable's scale (float32 rounding ~1e-7)."""
        return {name: float(np.max(np.abs(a[name] - b[name]) / (1.0 + np.abs(a[name])), initial=0.0)) for name in a}

    model_weights = [name for name in single if name.startswith("model:")]
    return {
        "replicas": mirrored_model.distribute_strategy.num_replicas_in_sync,
        "variables": len(single),
        "same_names": sorted(single) == sorted(mirrored),
        "start_gap": max(gaps(start, mirrored_start).values()),
        "largest_gap": max(gaps(single, mirrored).items(), key=lambda item: item[1]),
        "least_moved": min((gap, name) for name, gap in gaps(start, single).items() if name in model_weights)[::-1],
        "steps": [int(single_model.step.numpy()), int(mirrored_model.step.numpy())],
        "single_logs": single_logs,
        "mirrored_logs": mirrored_logs,
    }


def _state(model):
    """Every weight (E, G, D, EMA) and optimizer variable, keyed by a name free of the model's own name."""
    import numpy as np

    state = {}
    for prefix, variables in (
        ("model", model.weights),
        ("d_optimizer", model.d_optimizer.variables),
        ("g_optimizer", model.g_optimizer.variables),
    ):
        for index, variable in enumerate(variables):
            # Optimizers are named adam, adam_1, …: pair their variables by position and short name.
            path = variable.path.split("/", 1)[-1] if prefix == "model" else f"{index}:{variable.name}"
            state[f"{prefix}:{path}"] = np.asarray(variable.numpy(), dtype=np.float64)
    return state


def mirrored_train(data, out):
    """`training.train(strategy="mirrored")` on 2 logical CPUs, then the run's model.keras loaded back."""
    from ganspection_tf import distribute

    distribute.split_cpu_into_logical_devices(2)
    import numpy as np

    from ganspection_tf import artifacts
    from ganspection_tf.training import TrainConfig, load_model, train

    config = TrainConfig.from_flat(
        data=data, batch_size=4, steps=4, log_every=2, checkpoint_every=2, sample_every=2, strategy="mirrored",
        val_fraction=0.2, **{**TINY, "critic_steps": 1, "jit_compile": True},  # XLA must be turned off for us
    )
    lines = []
    run_dir = train(config, out, verbose=0, log=lines.append)
    model = load_model(run_dir)
    reconstruction = model(np.zeros((2, 32, 32, model.channels), "float32"))
    history = (run_dir / "history.csv").read_text().splitlines()
    return {
        "status": artifacts.read_json(run_dir / "status.json", "status"),
        "strategy": artifacts.read_json(run_dir / "config.json", "run config")["strategy"],
        "history": history,
        "loaded_step": int(model.step.numpy()),
        "reconstruction_finite": bool(np.isfinite(np.asarray(reconstruction)).all()),
        "log": lines,
    }


def shard_probe(steps=3, per_replica=2, count=24):
    """Which training images this worker gets at each step of a multi-worker input pipeline, and whether the
    workers' agreement check catches workers that restored different steps.

    Image i is filled with the value i, so each batch tells which images it holds.
    """
    from ganspection_tf import distribute

    strategy, _ = distribute.make_strategy("multiworker")
    import numpy as np

    from ganspection_tf.data import pipeline
    from ganspection_tf.errors import GanspectionError

    images = np.repeat(np.arange(count, dtype=np.uint8), 4 * 4 * 1).reshape(count, 4, 4, 1)
    global_batch = per_replica * strategy.num_replicas_in_sync
    dataset = strategy.experimental_distribute_dataset(pipeline.make_train_dataset(images, global_batch, seed=0))
    seen = []
    for _, batch in zip(range(steps), dataset):
        local = np.concatenate([np.asarray(part) for part in strategy.experimental_local_results(batch)])
        seen.append([int(round((image[0, 0, 0] + 1.0) * 127.5)) for image in local])
    task_type, task_id = distribute.task_of(strategy)
    distribute.check_workers_agree(strategy, restored_step=8, training_images=distribute.images_checksum(images))
    try:  # as if the workers had restored different checkpoints
        distribute.check_workers_agree(strategy, restored_step=4 * task_id)
        disagreement = None
    except GanspectionError as error:
        disagreement = str(error)
    return {
        "task": f"{task_type}:{task_id}",
        "replicas": strategy.num_replicas_in_sync,
        "batches": seen,
        "disagreement": disagreement,
    }


def main(argv):
    command, args = argv[0], argv[1:]
    result = {"equivalence": equivalence, "mirrored-train": mirrored_train, "shard-probe": shard_probe}[command](*args)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
