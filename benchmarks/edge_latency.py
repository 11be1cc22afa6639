"""Edge latency: Keras fp32 batch-1 scoring vs the TFLite bundles of every quantisation (``edge.QUANTIZATIONS``).

    python benchmarks/edge_latency.py --run RUN_DIR [--data CATEGORY_DIR] [--threads 1,2] [--quantize int8,int16x8]

Every variant is a scorer of the one scorer contract (``scorer.py``: preprocess → forward → postprocess): Keras
(``scoring.KerasScorer`` on the very sub-graph the bundles hold, ``scoring.term_model_for``) and each bundle
(``edge.EdgeScorer``, numpy's BLAS held to the same thread count), scoring with the calibration the bundles ship
(``export.score_calibration``). This script knows no score term. For every variant: per-image p50 latency of the
model alone (``forward`` of one preprocessed uint8 image), of a whole frame (the decoded full-size image through
all three steps: what the camera pays for a frame that arrives decoded) and of a whole file (``score_file``:
decoding the test image file first, as ``camera --source DIR`` and ``score`` do; ``decode_latency.py`` breaks
decoding down), the model size (Keras: the scorer's fp32 weights), and the image AUROC of the score on the test
split of --data (default: the run's own category). Prints a markdown table, then the targets of each quantised
bundle against the float32 bundle on one thread (≥ 2× faster, ≤ ½ its size, the frame within 20 ms) and against
Keras (AUROC within 0.005 either way: a bundle that ranks the test images better than Keras does not score like it
either; the rank correlation of its per-image scores with Keras' says how alike they are).
Last, the model's multiply-accumulates per frame, counted from the int8 bundle's TFLite graph
(``macs.count_macs``: convolutions, transposed convolutions and fully-connected layers), and how far each int8
row is from this CPU's int8 peak (its assumption printed beside it: ``int8_peak``). Bundles are exported with
--force into a temporary folder (their parity figures are printed), so a failed gate does not stop the benchmark;
a mode that cannot be exported here is skipped with its reason.

Timings are wall-clock on a shared machine: compare variants from the same run of this script only.
"""

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from ganspection_tf import convert, edge, export, macs, parity, scoring  # noqa: E402
from ganspection_tf.data import mvtec  # noqa: E402
from ganspection_tf.errors import GanspectionError  # noqa: E402
from ganspection_tf.images import read_image  # noqa: E402
from ganspection_tf.run import RunFolder  # noqa: E402
from ganspection_tf.terms import COMBINED_SCORE  # noqa: E402

WARMUP = 3
FLOAT32 = "none"  # the unquantised bundle, the quantised ones' baseline
MIN_SPEED_UP, MAX_SIZE_RATIO, MAX_AUROC_DIFFERENCE = 2.0, 0.5, 0.005
MAX_FRAME_MS = 20.0  # issue 13: end to end per frame (decode, resize, model, score), one thread


def main(argv=None):
    args = parse_args(argv)
    run = RunFolder(args.run, data_root=args.data)
    model = run.load_model()
    term_model = scoring.build_term_model(model)
    calibration = export.score_calibration(run, model, term_model, COMBINED_SCORE, log=note)  # what bundles ship
    paths, labels = test_split(run.category_root)
    frames = [read_image(path) for path in paths]
    note(f"{len(paths)} test images of {run.category_root}, model {model.image_size} px, inspected at "
         f"{model.inspected_size} px")

    shipped = scoring.term_model_for(term_model, calibration.terms,
                                     with_error_map=calibration.heatmap_needs_error_map())
    keras = scoring.KerasScorer.for_run(run, shipped, calibration, batch_size=1)
    keras_bytes = 4 * convert.weights_needed(shipped)  # not count_params: patch_distance uses the critic's start
    rows = [scorer_row("Keras fp32 (batch 1)", None, "all", keras, keras_bytes, paths, frames, labels)]
    counted = {}  # quantisation → MACs per frame by op type, from its bundle's graph
    with tempfile.TemporaryDirectory(prefix="edge-latency-") as folder:
        for quantize in args.quantize:
            bundle = Path(folder) / quantize
            try:
                export.export_bundle(args.run, bundle, quantize=quantize, score=COMBINED_SCORE, force=True,
                                     log=note)
            except GanspectionError as error:  # e.g. a mode this LiteRT cannot run: the other rows still count
                note(f"skipped {quantize}: {error}")
                continue
            size = (bundle / edge.MODEL_FILE).stat().st_size
            counted[quantize] = macs.count_macs((bundle / edge.MODEL_FILE).read_bytes())
            for threads in args.threads:
                scorer = edge.EdgeScorer(bundle, threads=threads)
                with threadpool_limits(threads):  # numpy's own matrix products (the nearest-patch search) too
                    rows.append(scorer_row(label(quantize, scorer.metadata.quantization), quantize, threads,
                                           scorer, size, paths, frames, labels))
    print(markdown_table(rows))
    print(targets(rows))
    print(compute_report(rows, counted, *int8_peak()))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="Run folder (work on a copy of a live run).")
    parser.add_argument("--data", type=Path, default=None, help="MVTec category folder with a test split.")
    parser.add_argument("--threads", default="1,2", help="Comma-separated LiteRT thread counts.")
    parser.add_argument("--quantize", default=",".join(edge.QUANTIZATIONS), help="Comma-separated variants.")
    args = parser.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    args.quantize = args.quantize.split(",")
    return args


def note(message):
    print(message, file=sys.stderr, flush=True)


def test_split(category_dir):
    category = mvtec.scan_category(category_dir)
    if not category.test:
        raise SystemExit(f"{category_dir}: no test split (test/good + test/<defect>); pass --data CATEGORY_DIR")
    return [t.path for t in category.test], np.array([t.label for t in category.test])


# ------------------------------------------------------------------------------------------------ timing


def label(quantize, shipped):
    """The row's name; export ships float32 for int8 when int8 would quantise no weighted layer."""
    name = f"TFLite {'float32' if quantize == FLOAT32 else quantize}"
    return name if shipped == quantize else f"{name} (shipped as {'float32' if shipped == FLOAT32 else shipped})"


def scorer_row(variant, quantize, threads, scorer, size_bytes, paths, frames, labels):
    """Latency of `forward` alone (one preprocessed image), of whole frames and of whole files (decoding
    included), and the AUROC of the scores."""
    images = scorer.preprocess(frames, color_order="rgb")
    for image in images[:WARMUP]:
        scorer.forward(image[np.newaxis])
    model_ms = []
    for image in images:
        started = time.perf_counter()
        scorer.forward(image[np.newaxis])
        model_ms.append((time.perf_counter() - started) * 1000)
    results = [scorer.score(frame, color_order="rgb") for frame in frames]
    scores = np.array([r.score for r in results])
    file_ms = []
    for path in paths:
        started = time.perf_counter()
        scorer.score_file(path)
        file_ms.append((time.perf_counter() - started) * 1000)
    return {"variant": variant, "quantize": quantize, "threads": threads, "model_ms": float(np.median(model_ms)),
            "frame_ms": float(np.median([r.latency_ms for r in results])),
            "file_ms": float(np.median(file_ms)), "bytes": size_bytes,
            "auroc": auroc(labels, scores), "scores": scores}


def auroc(labels, scores):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


# ------------------------------------------------------------------------------------------------ report


def markdown_table(rows):
    keras = rows[0]
    header = ("| variant | threads | model p50 ms | frame p50 ms | file p50 ms | speed-up vs Keras | "
              "speed-up vs TFLite float32 | size MB | size vs Keras | image AUROC |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        baseline = float32_row(rows, row["threads"])
        versus_float32 = "–" if baseline is None else f"{baseline['model_ms'] / row['model_ms']:.1f}×"
        lines.append(
            f"| {row['variant']} | {row['threads']} | {row['model_ms']:.2f} | {row['frame_ms']:.2f} | "
            f"{row['file_ms']:.2f} | "
            f"{keras['model_ms'] / row['model_ms']:.1f}× | {versus_float32} | {row['bytes'] / 1e6:.2f} | "
            f"{row['bytes'] / keras['bytes']:.2f} | {row['auroc']:.4f} |"
        )
    return "\n".join(lines)


def float32_row(rows, threads):
    return next((row for row in rows if row["quantize"] == FLOAT32 and row["threads"] == threads), None)


def targets(rows):
    """Each quantised bundle against the float32 bundle on the fewest threads measured, and against Keras."""
    keras, lines = rows[0], [""]
    threads = min((row["threads"] for row in rows[1:]), default=None)
    baseline = float32_row(rows, threads)
    for row in rows[1:]:
        if row["quantize"] == FLOAT32 or row["threads"] != threads:
            continue
        name, difference = row["variant"], row["auroc"] - keras["auroc"]
        if baseline is not None:
            speed, size = baseline["model_ms"] / row["model_ms"], row["bytes"] / baseline["bytes"]
            lines += [f"{name} speed-up {speed:.1f}× over TFLite float32, {threads} thread(s) (target ≥ "
                      f"{MIN_SPEED_UP:g}×): {met(speed >= MIN_SPEED_UP)}",
                      f"{name} size {size:.2f} of TFLite float32 (target ≤ {MAX_SIZE_RATIO:g}): "
                      f"{met(size <= MAX_SIZE_RATIO)}"]
        lines.append(f"{name} per frame p50 {row['frame_ms']:.1f} ms decoded, {row['file_ms']:.1f} ms from the "
                     f"file (target ≤ {MAX_FRAME_MS:g} ms end to end): decoded "
                     f"{met(row['frame_ms'] <= MAX_FRAME_MS)}, from the file {met(row['file_ms'] <= MAX_FRAME_MS)}")
        rho = parity.compare_scores(keras["scores"], row["scores"])["spearman"]  # None when a score is constant
        rho = "–" if rho is None else f"{rho:.4f}"
        lines.append(f"{name} AUROC {row['auroc']:.4f} vs Keras {keras['auroc']:.4f}, difference {difference:+.4f} "
                     f"(target: within {MAX_AUROC_DIFFERENCE:g}): {met(abs(difference) <= MAX_AUROC_DIFFERENCE)}; "
                     f"rank correlation of the per-image scores with Keras' {rho}")
    return "\n".join(lines)


def met(condition):
    return "met" if condition else "NOT met"


# ------------------------------------------------------------------------------------------------ compute

VNNI_MACS = {"avx512_vnni": (64, "AVX-512 VNNI (VPDPBUSD on 512-bit registers)"),
             "avx_vnni": (32, "AVX-VNNI (VPDPBUSD on 256-bit registers)")}  # u8×s8 MACs per instruction
VNNI_PORTS = 2  # assumed: two VNNI instructions issued per cycle (the two 512-bit FMA ports of Xeon server cores)
AMX_MACS_PER_CYCLE = 1024  # AMX-INT8 TDPBSSD: 16×16×64 MACs per 16 cycles


def int8_peak(cpuinfo=Path("/proc/cpuinfo")):
    """(int8 MACs per second of one core, how that figure is derived), or (None, why not), from /proc/cpuinfo."""
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    flags = re.search(r"^flags\s*:(.*)$", text, re.M)
    clock = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
    flags = set(flags.group(1).split()) if flags else set()
    isa = next((flag for flag in VNNI_MACS if flag in flags), None)
    if isa is None or clock is None:
        return None, "no int8 peak: /proc/cpuinfo shows no VNNI flag or no clock"
    per_instruction, name = VNNI_MACS[isa]
    hertz = float(clock.group(1)) * 1e6
    peak = per_instruction * VNNI_PORTS * hertz
    how = (f"{name}: {per_instruction} int8 MACs per instruction × {VNNI_PORTS} per cycle (assumed: two FMA ports) × "
           f"{hertz / 1e9:.2f} GHz ('cpu MHz' of /proc/cpuinfo; no turbo assumed) = {peak / 1e9:.0f} GMAC/s per core")
    if "amx_int8" in flags:
        how += (f"; not counted: the AMX-INT8 tiles of this CPU ({AMX_MACS_PER_CYCLE} MACs per cycle, "
                f"{AMX_MACS_PER_CYCLE * hertz / 1e12:.1f} TMAC/s per core) in case LiteRT's kernels use them")
    return peak, how


def compute_report(rows, counted, peak, how):
    """MACs per frame (from the int8 bundle's graph, else the first counted) and each int8 row against the peak
    of as many cores as it has threads."""
    source = "int8" if "int8" in counted else next(iter(counted), None)
    if source is None:
        return "\nno bundle exported: no MAC count"
    per_op = counted[source]
    total = sum(per_op.values())
    parts = ", ".join(f"{name} {value / 1e6:.1f} M" for name, value in sorted(per_op.items(), key=lambda kv: -kv[1]))
    lines = ["", f"MACs per frame, counted from the TFLite {'float32' if source == FLOAT32 else source} graph "
                 f"(convolutions, transposed convolutions, fully-connected; elementwise ops not counted): "
                 f"{total / 1e6:.1f} M ({parts})", f"int8 peak assumed: {how}"]
    if peak is None:
        return "\n".join(lines)
    for row in rows:
        if row["quantize"] != "int8":
            continue
        at_peak_ms = 1000 * total / (peak * row["threads"])
        lines.append(
            f"{row['variant']}, {row['threads']} thread(s): frame p50 {row['frame_ms']:.2f} ms = "
            f"{row['frame_ms'] / at_peak_ms:.1f}× the {at_peak_ms:.3f} ms its MACs take at the peak of "
            f"{row['threads']} core(s) ({100 * at_peak_ms / row['frame_ms']:.1f} % of peak); model alone "
            f"{row['model_ms']:.2f} ms = {row['model_ms'] / at_peak_ms:.1f}× "
            f"({100 * at_peak_ms / row['model_ms']:.1f} %)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
