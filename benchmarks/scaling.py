"""Training throughput per replica count: default strategy, MirroredStrategy over N devices, N local workers.

Weak scaling: the per-replica batch is fixed, so the global batch grows with the replicas, as with
``ganspection-tf train --batch-size B`` on more devices. Every configuration runs in fresh processes (logical
devices must be configured before TensorFlow starts).

    python benchmarks/scaling.py                                 # default ×1, mirrored ×1 and ×2 (logical CPUs)
    python benchmarks/scaling.py --replicas 1 2 --multiworker    # plus 2 worker processes on 127.0.0.1
    python benchmarks/scaling.py --devices gpu                   # mirrored over the real GPUs (0..N-1)

On a CPU, "mirrored ×2" splits the same cores into two logical devices: it measures the strategy's overhead,
not a speed-up. GPU scaling needs a machine with several GPUs.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def measure(strategy, replicas, devices, size, width, batch, critic_steps, jit, steps, warmup, data):
    """Runs in a child process; returns one row as a dict (None on a non-chief worker)."""
    from ganspection_tf import distribute

    if strategy == "mirrored" and devices == "cpu":
        distribute.split_cpu_into_logical_devices(replicas)
    chosen, _ = distribute.make_strategy(
        strategy, [f"/{devices}:{i}" for i in range(replicas)] if strategy == "mirrored" else None
    )
    from ganspection_tf.data import mvtec, pipeline
    from ganspection_tf.training import TrainConfig, build_model

    paths = mvtec.scan_category(data).train
    images, _ = pipeline.load_images(paths, size, 3)
    global_batch = batch * chosen.num_replicas_in_sync
    dataset = pipeline.make_train_dataset(images, global_batch)
    config = TrainConfig.from_flat(
        data=data, image_size=size, width=width, batch_size=batch, critic_steps=critic_steps,
        jit_compile=jit and distribute.xla_allowed(strategy), channels=3,
    )
    with chosen.scope():
        model = build_model(config)
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=warmup, epochs=1, verbose=0)
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    step_seconds = (time.perf_counter() - started) / steps
    if not distribute.is_chief(chosen):
        return None
    return {
        "strategy": strategy, "replicas": chosen.num_replicas_in_sync, "size": size, "width": width,
        "batch": batch, "global_batch": global_batch, "critic_steps": critic_steps, "xla": jit,
        "step_ms": 1000 * step_seconds, "img_s": global_batch / step_seconds, "warmup_s": warmup_seconds,
    }


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run_children(args, strategy, replicas):
    """One child (default, mirrored) or `replicas` worker children on loopback (multiworker); the chief's row."""
    settings = dict(strategy=strategy, replicas=replicas, devices=args.devices, size=args.size, width=args.width,
                    batch=args.batch, critic_steps=args.critic_steps, jit=args.xla, steps=args.steps,
                    warmup=args.warmup, data=args.data)
    command = [sys.executable, __file__, "--child", json.dumps(settings)]
    environments = [dict(os.environ)]
    if strategy == "multiworker":
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(replicas)]}
        environments = [
            dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
            for index in range(replicas)
        ]
    children = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for env in environments]
    try:
        outputs = [child.communicate(timeout=args.timeout) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    chief_out, chief_err = outputs[0]
    if children[0].returncode:
        return {"strategy": strategy, "replicas": replicas, "error": (chief_err.strip().splitlines() or ["?"])[-1][:90]}
    return json.loads(chief_out.strip().splitlines()[-1])


HEADER = "| strategy | replicas | per-replica batch | global batch | step ms | images/s | vs 1 replica | warm-up s |"


def format_row(row, baseline):
    if "error" in row:
        return f"| {row['strategy']} | {row['replicas']} | | | | error: {row['error']} | | |"
    ratio = row["img_s"] / baseline if baseline else float("nan")
    return (f"| {row['strategy']} | {row['replicas']} | {row['batch']} | {row['global_batch']} | {row['step_ms']:.0f} "
            f"| {row['img_s']:.1f} | {ratio:.2f}× | {row['warmup_s']:.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--devices", choices=["cpu", "gpu"], default="cpu",
                        help="mirrored over logical CPUs (split) or the real GPUs")
    parser.add_argument("--multiworker", action="store_true", help="also N worker processes on 127.0.0.1")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16, help="per replica")
    parser.add_argument("--critic-steps", type=int, default=5)
    parser.add_argument("--xla", action="store_true",
                        help="XLA-compile the step (default strategy only, as in training; off by default)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (tracing)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument("--data", default=None, help="category folder (default: synthetic)")
    args = parser.parse_args()
    if args.child:
        row = measure(**json.loads(args.child))
        print(json.dumps(row))
        return
    if args.data is None:
        from ganspection_tf.data import synthetic

        args.data = str(synthetic.write_synthetic_category(tempfile.mkdtemp(), image_size=128, n_train=64))

    plan = [("default", 1)] + [("mirrored", n) for n in args.replicas]
    plan += [("multiworker", n) for n in args.replicas if args.multiworker and n > 1]
    print(f"# {os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}; {args.size} px, "
          f"width {args.width}, critic steps {args.critic_steps}, XLA {'on' if args.xla else 'off'}", flush=True)
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1), flush=True)
    baseline = None
    for strategy, replicas in plan:
        row = run_children(args, strategy, replicas)
        if baseline is None and "error" not in row:
            baseline = row["img_s"]
        print(format_row(row, baseline), flush=True)
    print(f"# load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
