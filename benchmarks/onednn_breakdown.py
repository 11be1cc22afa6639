"""Where a training step's time goes on this CPU, float32 against mixed bfloat16: oneDNN's own account.

TensorFlow runs convolutions, matrix products and some element-wise work through oneDNN, which reports every
primitive it executes, with the kernel it picked and its time, when ONEDNN_VERBOSE=1. This script runs one
training configuration per precision in a child process of `train_throughput.py` with that switched on and
prints, per precision, the step time, the time inside oneDNN per step by primitive kind and kernel, and the
share of the step left to TensorFlow's own kernels (layer norm, the penalty's element-wise arithmetic, casts,
optimizer updates, the graph executor). It answers "why is bfloat16 on AMX not faster?".

    python benchmarks/onednn_breakdown.py                      # 64 px, width 32, 5 critic updates
    python benchmarks/onednn_breakdown.py --size 64 --width 32 --steps 5

Each precision runs twice, with `--steps` and with 2 x `--steps` timed steps: the difference between the two
traces is the oneDNN time of `--steps` steady steps, without the first steps' one-off costs. The verbose trace
itself slows the step; compare shares, not absolute step times, with train_throughput.py.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

THROUGHPUT = Path(__file__).with_name("train_throughput.py")


def run(size, width, precision, steps, warmup):
    settings = dict(size=size, width=width, batch=16, critic_steps=5, gp_every=1, jit=False, precision=precision,
                    data=None, steps=steps, warmup=warmup)
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, str(THROUGHPUT), "--child", json.dumps(settings)],
                            capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"{precision}: the child failed: {result.stderr.strip().splitlines()[-1]}")
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]), primitive_times(lines[:-1])


def steady_breakdown(size, width, precision, steps):
    """(step ms, {(kind, kernel, type): ms per step}) over `steps` steady steps (two runs, differenced)."""
    _, short = run(size, width, precision, steps, warmup=1)
    row, long = run(size, width, precision, 2 * steps, warmup=1)
    per_step = {key: (long[key] - short.get(key, 0.0)) / steps for key in long}
    return row["step_ms"], per_step


def primitive_times(lines):
    """{(primitive kind, kernel, data type): total ms} over the exec lines of a oneDNN verbose trace."""
    totals = collections.Counter()
    for line in lines:
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or "exec" not in fields or "cpu" not in fields:
            continue
        at = fields.index("cpu")
        kind, kernel = fields[at + 1], fields[at + 2]
        data_type = next((f.split(":")[1] for f in fields if f.startswith("src") and f.count(":") >= 2), "")
        try:
            totals[(kind, kernel, data_type)] += float(fields[-1])
        except ValueError:
            continue
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="steady steps measured")
    parser.add_argument("--top", type=int, default=8, help="kernels listed per precision")
    args = parser.parse_args()
    print(f"{args.size} px, width {args.width}, batch 16, 5 critic updates, penalty on each; ONEDNN_VERBOSE=1\n")
    print("| precision | step ms | oneDNN ms per step | oneDNN share | primitive | kernel | src type | ms per step |")
    print("|---|---|---|---|---|---|---|---|")
    for precision in ("float32", "mixed_bfloat16"):
        step_ms, per_step = steady_breakdown(args.size, args.width, precision, args.steps)
        inside = sum(per_step.values())
        first = f"| {precision} | {step_ms:.0f} | {inside:.0f} | {100 * inside / step_ms:.0f} % "
        for (kind, kernel, data_type), ms in sorted(per_step.items(), key=lambda item: -item[1])[:args.top]:
            print(f"{first}| {kind} | {kernel} | {data_type} | {ms:.1f} |")
            first = "| | | | "


if __name__ == "__main__":
    main()
