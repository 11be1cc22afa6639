"""Training throughput: images/s through the critic and per full step, XLA on/off, float32 vs mixed bfloat16,
critic updates per step and the lazy gradient penalty (every k-th critic update).

Each configuration runs in its own process (fresh precision policy, honest peak RSS). The data pipeline is the
real one (decode once, in-memory tf.data); its share of wall time is measured by timing the pipeline alone.

    python benchmarks/train_throughput.py                       # the default grid, synthetic data
    python benchmarks/train_throughput.py --sizes 64 --widths 16 32 --precisions float32 mixed_bfloat16
    python benchmarks/train_throughput.py --data ../shared/data/mvtec_ad/bottle
    python benchmarks/train_throughput.py --sizes 64 --xla off --precisions float32 --critic-steps 5 2 \
        --gp-every 1 2 4 --steps 200 --warmup 5           # what fewer critic updates and a lazy penalty buy

Prints a markdown table; "critic img/s" counts every real image the critic sees (batch × critic_steps per step),
"step img/s" counts each image of the batch once per full step (critic_steps critic updates + one E/G update),
"penalties per step" is critic_steps / gp_every (the gradient penalty's double backward passes, on average).
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def measure(size, width, batch, critic_steps, gp_every, jit, precision, data, steps, warmup):
    """Runs in a child process; returns one row as a dict."""
    import resource

    import keras
    import numpy as np

    from ganspection_tf.data import mvtec, pipeline, synthetic
    from ganspection_tf.training import TrainConfig, build_model

    keras.mixed_precision.set_global_policy(precision)
    if data is None:
        data = synthetic.write_synthetic_category(tempfile.mkdtemp(), image_size=max(128, size), n_train=64)
    load_started = time.perf_counter()
    paths = mvtec.scan_category(data).train
    images, _ = pipeline.load_images(paths, size, 3)
    decode_seconds = time.perf_counter() - load_started

    dataset = pipeline.make_train_dataset(images, batch, augment=pipeline.Augment(True, True, True))
    iterator = iter(dataset)
    next(iterator)
    started = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    data_seconds_per_batch = (time.perf_counter() - started) / steps

    config = TrainConfig.from_flat(
        data=str(data), image_size=size, width=width, batch_size=batch, critic_steps=critic_steps,
        gp_every=gp_every, jit_compile=jit, precision=precision, channels=3,
    )
    model = build_model(config)
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=warmup, epochs=1, verbose=0)
    compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    step_seconds = (time.perf_counter() - started) / steps
    return {
        "size": size, "width": width, "batch": batch, "critic_steps": critic_steps, "gp_every": gp_every, "xla": jit,
        "precision": precision, "step_ms": 1000 * step_seconds, "step_img_s": batch / step_seconds,
        "critic_img_s": batch * critic_steps / step_seconds, "data_share": data_seconds_per_batch / step_seconds,
        "decode_once_s": decode_seconds, "images": len(images), "warmup_s": compile_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
    }


def run_child(args, size, width, critic_steps, gp_every, jit, precision):
    command = [sys.executable, __file__, "--child", json.dumps(dict(
        size=size, width=width, batch=args.batch, critic_steps=critic_steps, gp_every=gp_every, jit=jit,
        precision=precision, data=args.data, steps=args.steps, warmup=args.warmup))]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        return {"size": size, "width": width, "critic_steps": critic_steps, "gp_every": gp_every, "xla": jit,
                "precision": precision, "error": result.stderr.strip().splitlines()[-1][:80]}
    return json.loads(result.stdout.strip().splitlines()[-1])


HEADER = ("| px | width | batch | critic steps | gp every | penalties per step | XLA | precision | step ms "
          "| step img/s | critic img/s | data share | decode once (s) | peak RSS MB |")


def format_row(row):
    if "error" in row:
        return (f"| {row['size']} | {row['width']} | | {row['critic_steps']} | {row['gp_every']} | | {row['xla']} "
                f"| {row['precision']} | error: {row['error']} |")
    return (f"| {row['size']} | {row['width']} | {row['batch']} | {row['critic_steps']} | {row['gp_every']} "
            f"| {row['critic_steps'] / row['gp_every']:.2g} | {'on' if row['xla'] else 'off'} "
            f"| {row['precision']} | {row['step_ms']:.0f} | {row['step_img_s']:.1f} | {row['critic_img_s']:.1f} "
            f"| {100 * row['data_share']:.2f} % | {row['decode_once_s']:.1f} ({row['images']} img) "
            f"| {row['peak_rss_mb']:.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--widths", type=int, nargs="+", default=[32])
    parser.add_argument("--xla", choices=["on", "off", "both"], default="both")
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--critic-steps", type=int, nargs="+", default=[5])
    parser.add_argument("--gp-every", type=int, nargs="+", default=[1], help="the penalty on every k-th critic update")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (tracing, XLA compile)")
    parser.add_argument("--data", default=None, help="category folder (default: synthetic)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))))
        return
    xla = {"on": [True], "off": [False], "both": [True, False]}[args.xla]
    print(f"# load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1), flush=True)
    grid = itertools.product(args.sizes, args.widths, args.critic_steps, args.gp_every, xla, args.precisions)
    for size, width, critic_steps, gp_every, jit, precision in grid:
        print(format_row(run_child(args, size, width, critic_steps, gp_every, jit, precision)), flush=True)
    print(f"# load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
