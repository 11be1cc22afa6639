"""`ganspection-tf`: train | evaluate | score | export | camera | demo.

Every expected failure is a `GanspectionError`: printed as one line ``error: …`` with exit status 2
(``--debug`` shows the traceback). Train-side modules are imported inside the commands, so the camera-side
(base) install runs ``camera`` without TensorFlow and tells what to install for the rest.
"""

import dataclasses
import json
import sys
import tempfile
import traceback
from pathlib import Path

import click

from ganspection_tf import __version__, console, interrupts, ownership, thresholds
from ganspection_tf import demo as demo_recipe  # `demo` is the command below
from ganspection_tf.bundle_metadata import QUANTIZATIONS
from ganspection_tf.config import TrainConfig, option_fields
from ganspection_tf.errors import GanspectionError, MissingTrainExtra
from ganspection_tf.terms import DEFAULT_WEIGHTS, REGISTRY, SCORES, TERMS

EXIT_USER_ERROR = 2


def require_train_extra(command):
    """Imports TensorFlow without its start-up lines (unless --debug), or explains which extra to install."""
    try:
        console.import_tensorflow_quietly()
    except ImportError:
        raise MissingTrainExtra(f"'ganspection-tf {command}'") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ganspection-tf")
@click.option("--debug", is_flag=True,
              help="Show the full traceback of errors and TensorFlow's / LiteRT's own start-up and log lines.")
@click.pass_context
def cli(context, debug):
    """Visual anomaly detection learned from defect-free images (Wasserstein BiGAN + latent L2 loss)."""
    context.obj = {"debug": debug}


# ------------------------------------------------------------------------------------------------ train

class SettingType(click.ParamType):
    """A `train` option read and range-checked by its config field's `Check`: one-line error when out of range."""

    def __init__(self, check):
        self.check = check
        self.name = check.kind.__name__

    def get_metavar(self, param, ctx=None):
        if self.check.choices and not self.check.comma_list:
            return "[" + "|".join(map(str, self.check.choices)) + "]"
        return {"list": "DEVICES", "str": "TEXT"}.get(self.name, self.name.upper())

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value  # a default, valid by construction
        option = param.opts[0]
        try:
            parsed = self.check.parse(value)
        except ValueError:
            whole = "a whole" if self.name == "int" else "a"
            raise GanspectionError(f"{option} {value}: must be {whole} number") from None
        problem = self.check.problem(parsed)
        if problem:
            raise GanspectionError(f"{option} {value}: {problem}")
        return parsed


def _setting_option(name, field):
    check = field.metadata["check"]
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    if check.kind is bool:
        switch = check.switch or name.replace("_", "-")
        return click.option(f"--{switch}/--no-{switch}", name, default=default, show_default=True, help=check.help)
    return click.option(f"--{name.replace('_', '-')}", name, default=default, type=SettingType(check),
                        show_default=default is not None, help=check.help)


def train_options(function):
    """--out, --resume, and one option per TrainConfig / ModelConfig field (its default, range and help come
    from there); also used by benchmarks/accuracy.py."""
    for name, field in reversed(option_fields().items()):
        function = _setting_option(name, field)(function)
    function = click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")(
        function)
    return click.option("--out", "out", required=True, type=click.Path(path_type=Path),
                        help="Run folder to write.")(function)


@cli.command()
@train_options
@click.option("--overwrite", is_flag=True,
              help="Start a new run in an --out holding an earlier run (deleted) or other files (kept untouched).")
@click.pass_context
def train(context, out, resume, overwrite, **options):
    """Train an anomaly model on defect-free images."""
    require_train_extra("train")
    from ganspection_tf.training import train as run_training

    # On --resume only what the user typed counts as a change to the stored run, not the options' defaults.
    typed = {name: value for name, value in options.items()
             if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    if resume and overwrite:
        raise GanspectionError("--resume and --overwrite contradict each other: --resume continues the run in "
                               "--out, --overwrite starts it again; pass one of them")
    run_training(TrainConfig.from_flat(**options), out, resume=resume, verbose=_progress_verbosity(),
                 overrides=typed, overwrite=overwrite)


def _progress_verbosity():
    """The progress line redrawn in place on a terminal; one line per log interval in a log file."""
    return 1 if sys.stdout.isatty() else 2


# ------------------------------------------------------------------------------------------------ demo


@cli.command()
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="Folder for the synthetic data, the run and the bundle (default: a new temporary folder).")
@click.option("--steps", default=demo_recipe.STEPS, show_default=True, type=click.IntRange(1),
              help="Training steps (the default: about 2 minutes on 2 cores; see benchmarks/RESULTS.md, \"The demo\").")
@click.option("--image-size", default=str(demo_recipe.IMAGE_SIZES[0]), show_default=True,
              type=click.Choice([str(size) for size in demo_recipe.IMAGE_SIZES]),
              callback=lambda _c, _p, value: int(value))
@click.option("--overwrite", is_flag=True,
              help="Write into an --out holding other files (they are kept untouched).")
def demo(out, steps, image_size, overwrite):
    """The whole product on embedded synthetic data: train → evaluate → export int8 (float16 if int8 fails the
    parity gate) → score on LiteRT.

    A few minutes on 2 CPU cores; nothing is downloaded.
    """
    require_train_extra("demo")
    from ganspection_tf.evaluate import evaluate_run
    from ganspection_tf.export import export_bundle
    from ganspection_tf.parity import ParityGateFailed
    from ganspection_tf.training import train as run_training

    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="ganspection-demo-"))
    _claim_demo_folder(out, overwrite)
    data = demo_recipe.write_category(out / "data")
    click.echo(f"1/4 synthetic category written to {data}")
    config = demo_recipe.config(data, image_size=image_size, steps=steps)
    click.echo("2/4 training")
    run_dir = run_training(config, out / "run", verbose=_progress_verbosity(), overwrite=True)
    click.echo(f"    samples: {run_dir / 'samples'}")
    click.echo("3/4 evaluating on the synthetic test split")
    metrics = evaluate_run(run_dir, log=_echo_to_stderr)
    click.echo(f"    image AUROC {metrics['image_auroc']:.3f}; report: {metrics['report']}")
    click.echo("4/4 exporting an int8 LiteRT bundle and scoring the test images on the camera runtime")
    bundle = out / "bundle"
    try:
        export_bundle(run_dir, bundle, quantize="int8", score="combined", log=_echo_indented)  # prints the parity
    except ParityGateFailed as failed:  # a newcomer's first look still ends with a bundle, and says which
        _echo_indented(f"{failed.reason}; exporting float16 instead")
        export_bundle(run_dir, bundle, quantize="float16", score="combined", log=_echo_indented)
    _demo_edge_scoring(bundle, data)
    click.echo(f"    bundle: {bundle}")


def _echo_indented(message):
    click.echo(f"    {message}")


def _claim_demo_folder(out, overwrite):
    """The demo replaces its own earlier run and bundle in --out, never anything else there.

    Everything is checked before anything is written: run/ and bundle/ may only hold an earlier demo's run and
    bundle (their markers prove it); the user's files in them, or in --out, stop the demo before it starts.
    """
    ownership.refuse_foreign(out, "demo", overwrite)
    for name, kind in (("run", "run"), ("bundle", "bundle")):
        ownership.refuse_foreign(out / name, kind, overwrite)
    ownership.claim_folder(out, "demo", overwrite=overwrite, reuse=True)


def _demo_edge_scoring(bundle, category):
    import numpy as np

    from ganspection_tf.edge import EdgeScorer
    from ganspection_tf.images import list_images

    scorer = EdgeScorer(bundle, threads=2)
    files = [path for folder in sorted((category / "test").iterdir()) for path in list_images(folder)]
    results = [scorer.score_file(path) for path in files]
    latencies = np.array([result.latency_ms for result in results])
    flagged = sum(result.anomalous for result in results)
    click.echo(f"    LiteRT {scorer.metadata.quantization}: {len(files)} images, "
               f"p50 {np.percentile(latencies, 50):.2f} ms, p95 {np.percentile(latencies, 95):.2f} ms per image; "
               f"{flagged} flagged anomalous")


# ------------------------------------------------------------------------------------------------ evaluate

_DEFAULT_WEIGHTS_TEXT = ",".join(f"{name}={weight:g}" for name, weight in DEFAULT_WEIGHTS.items() if weight)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--data", default=None, type=click.Path(path_type=Path),
              help="Labelled test data in MVTec layout (default: the run's own category).")
@click.option("--category", default=None, help="Category name under a dataset root given with --data.")
@click.option("--max-fpr", default=None, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Target false-positive rate on the good validation images (default 0.01); recalibrates.")
@click.option("--method", default=None, type=click.Choice(["weighted", "mahalanobis"]),
              help="How the terms are combined (default weighted); recalibrates.")
@click.option("--weights", default=None,
              help="α of the weighted sum as TERM=α pairs, e.g. map_max=1,latent_mahalanobis=1 (unnamed terms get 0; "
                   f"default {_DEFAULT_WEIGHTS_TEXT}); terms: {', '.join(TERMS)}; recalibrates.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
def evaluate(run_dir, data, category, max_fpr, method, weights, batch_size):
    """Metrics of a trained run on a labelled test split; writes RUN_DIR/eval/ with report.html."""
    require_train_extra("evaluate")
    from ganspection_tf.evaluate import evaluate_run

    with ownership.sole_writer_of_run(run_dir):
        metrics = evaluate_run(run_dir, data=data, category=category, log=_echo_to_stderr, batch_size=batch_size,
                               method=method, max_fpr=max_fpr, weights=parse_weights(weights))
    click.echo(f"image AUROC {metrics['image_auroc']:.3f} (combined score, {metrics['data']['test_images']} "
               f"test images of {metrics['data']['root']})")
    click.echo(f"report: {metrics['report']}")


def parse_weights(text):
    """"map_max=1,latent_mahalanobis=0.5" → {"map_max": 1.0, "latent_mahalanobis": 0.5}; None stays None.
    Term names are checked when the calibration is fitted (one message listing the known terms)."""
    if text is None:
        return None
    weights = {}
    for pair in text.split(","):
        name, _, value = pair.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise GanspectionError(f"--weights: {pair!r} is not TERM=α; write e.g. "
                                   "--weights map_max=1,latent_mahalanobis=0.5") from None
    return weights


def _echo_to_stderr(message):
    click.echo(message, err=True)


# ------------------------------------------------------------------------------------------------ score

def threshold_options(function):
    """--max-fpr F / --threshold T: decide with another threshold than the calibrated one (``thresholds.py``)."""
    function = click.option("--threshold", default=None, type=SettingType(thresholds.THRESHOLD),
                            help=thresholds.THRESHOLD.help)(function)
    return click.option("--max-fpr", default=None, type=SettingType(thresholds.MAX_FPR),
                        help=thresholds.MAX_FPR.help)(function)


SCORE_FIELDS = ("path", "score", *TERMS, "anomalous")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "output_format", default="csv", show_default=True, type=click.Choice(["csv", "jsonl"]))
@click.option("--output", default=None, type=click.Path(path_type=Path, dir_okay=False),
              help="New file to write the rows to (default: standard output); an existing file is refused.")
@click.option("--heatmaps", default=None, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for heatmap overlay PNGs (<name>_heatmap.png, original image size; a taken name gets -2, -3 …).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@threshold_options
def score(run_dir, paths, output_format, output, heatmaps, batch_size, max_fpr, threshold):
    """Score image files and folders: one row per image with the score, every term and the verdict.

    Unreadable files are reported on stderr as they come and get no row; the other images are still scored,
    and the command then exits with status 2 naming the first one, so a script cannot miss them.
    """
    require_train_extra("score")
    from ganspection_tf import artifacts, scoring
    from ganspection_tf.run import RunFolder

    if output is not None and output.exists():
        raise GanspectionError(f"--output {output}: already exists, and score never replaces a file; choose another "
                               "--output or move that file away")
    files = _image_files(paths)
    run = RunFolder(run_dir)
    model = run.load_model()
    term_model = scoring.build_term_model(model)
    calibration = scoring.ensure_calibration(run, model, log=_echo_to_stderr, term_model=term_model)
    if max_fpr is not None or threshold is not None:
        chosen = thresholds.for_calibration(calibration, threshold, max_fpr)
        calibration = dataclasses.replace(calibration, threshold=chosen.value)
        click.echo(chosen.describe(), err=True)
    if heatmaps is not None:
        artifacts.ensure_writable_folder(heatmaps, option="--heatmaps")
    scorer = scoring.KerasScorer.for_run(run, term_model, calibration, batch_size)
    results = scoring.score_files(files, scorer, keep_originals=heatmaps is not None)
    if output is None:
        failed = _write_rows(results, sys.stdout, output_format, heatmaps)
    else:
        with artifacts.atomic_path(output) as temporary, open(temporary, "w", encoding="utf-8", newline="") as handle:
            with click.progressbar(results, length=len(files), label="scoring", file=sys.stderr) as bar:
                failed = _write_rows(bar, handle, output_format, heatmaps)
    if failed:
        raise GanspectionError(
            f"{failed[0]}: unreadable, {len(failed)} of {len(files)} images have no row (listed above); "
            "fix or remove them and score those again"
        )


def _image_files(paths):
    """Files as given and the images directly inside given folders, in order; missing paths are refused."""
    from ganspection_tf.images import list_images

    files = []
    for path in paths:
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise GanspectionError(f"{path}: folder holds no .png/.jpg/.jpeg/.bmp images; check the path")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise GanspectionError(f"{path}: no such file or folder; check the path")
    return files


def _write_rows(results, handle, output_format, heatmaps):
    """Writes one row per scored image as it comes (flushing per row) and returns the unreadable paths."""
    import csv
    import json

    writer = csv.DictWriter(handle, fieldnames=SCORE_FIELDS, lineterminator="\n") if output_format == "csv" else None
    if writer:
        writer.writeheader()
    failed = []
    for result in results:
        if result.error is not None:
            click.echo(f"error: {result.error}", err=True)
            failed.append(result.path)
            continue
        row = {"path": str(result.path), "score": result.score, **result.terms, "anomalous": result.anomalous}
        if writer:
            writer.writerow({**{k: f"{v:.7g}" for k, v in row.items() if isinstance(v, float)},
                             "path": row["path"], "anomalous": "yes" if result.anomalous else "no"})
        else:
            handle.write(json.dumps(row) + "\n")
        handle.flush()
        if heatmaps is not None:
            _write_heatmap(result, heatmaps)
    return failed


def _write_heatmap(result, folder):
    from ganspection_tf import artifacts
    from ganspection_tf.heatmaps import heatmap_overlay

    # The same file name in two scored folders, or a heatmap an earlier command wrote: a new numbered name.
    path = artifacts.unused_path(folder, f"{result.path.stem}_heatmap", ".png")
    artifacts.write_png(path, heatmap_overlay(result.original, result.heatmap_at(*result.original_hw)))


# ------------------------------------------------------------------------------------------------ export


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--tflite", is_flag=True, help="Export a LiteRT (TFLite) edge bundle (the only format for now).")
@click.option("--quantize", default="int8", show_default=True,
              type=click.Choice(QUANTIZATIONS),
              help="int8: integer networks calibrated on good images (score arithmetic stays float); the "
                   "fastest; float32 when int8 would save under a tenth of the bundle (a patch scorer). int16x8: "
                   "int16 activations and int8 weights, calibrated on the same images (experimental in LiteRT: "
                   "measure it on the camera). dynamic: measured 10-22× slower than none (float32) on x86 CPUs, "
                   "where LiteRT lacks fast kernels for it; export measures it and warns.")
@click.option("--score", "score_name", default="combined", show_default=True, type=click.Choice(SCORES),
              help="; ".join(f"{t.export_score}: {t.name} alone" for t in REGISTRY if t.export_score)
              + "; combined: the calibrated score (the networks its terms need), with heatmaps.")
@click.option("--calibration", "calibration_dir", default=None, type=click.Path(path_type=Path),
              help="Folder of good images for int8 / int16x8 calibration (default: the run's training images).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Bundle folder to write.")
@click.option("--force", is_flag=True, help="Write the bundle even when the parity gate fails.")
@click.option("--overwrite", is_flag=True,
              help="Write into an --out holding other files (they are kept untouched).")
def export(run_dir, tflite, quantize, score_name, calibration_dir, out, force, overwrite):
    """Export a trained run to an edge bundle (model.tflite + metadata.json) and check its parity."""
    if not tflite:
        raise GanspectionError("export needs --tflite (LiteRT is the only export format for now)")
    require_train_extra("export")
    from ganspection_tf.export import export_bundle

    report = export_bundle(run_dir, out, quantize=quantize, score=score_name, calibration_dir=calibration_dir,
                           force=force, log=_echo_to_stderr, overwrite=overwrite)
    figures = {key: report[key] for key in ("max_abs_diff", "spearman", "auroc_keras", "auroc_tflite", "passed",
                                           "latency_ms")}
    click.echo(json.dumps({"bundle": str(out), "images": report["images"], "evaluation": report["evaluation"],
                           **figures}))


# ------------------------------------------------------------------------------------------------ camera


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--source", required=True, help="Camera index (0), video file, rtsp:// URL or folder of images.")
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="JSON-lines file, one line per frame (default: stdout).")
@click.option("--save-anomalies", default=None, type=click.Path(path_type=Path),
              help="Folder for anomalous frames, with the heatmap and the score drawn on them.")
@click.option("--max-frames", default=None, type=click.IntRange(1), help="Stop after this many scored frames.")
@click.option("--threads", default=None, type=click.IntRange(1), help="LiteRT threads (default: LiteRT's choice).")
@click.option("--color-order", default="bgr", show_default=True, type=click.Choice(["bgr", "rgb"]),
              help="Channel order of the frames the capture delivers (OpenCV: bgr).")
@threshold_options
def camera(bundle, source, out, save_anomalies, max_frames, threads, color_order, max_fpr, threshold):
    """Score frames of a camera, video, stream or image folder with an edge bundle (no TensorFlow needed)."""
    from ganspection_tf.camera import run_camera
    from ganspection_tf.edge import METADATA_FILE, EdgeScorer

    scorer = EdgeScorer(bundle, threads=threads)
    chosen = thresholds.for_bundle(scorer.metadata, Path(bundle) / METADATA_FILE, threshold, max_fpr)
    scorer.threshold = chosen.value
    summary = run_camera(scorer, source, out=out, save_anomalies=save_anomalies, max_frames=max_frames,
                         color_order=color_order, header=chosen.describe())
    if summary.scored == 0 and summary.unreadable:
        raise GanspectionError(f"--source {source}: none of its {summary.unreadable} frames could be scored "
                               "(listed above); check the source and the bundle")


# ------------------------------------------------------------------------------------------------ entry


def main(argv=None):
    """Console entry point: one-line errors with exit status 2, tracebacks only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    console.set_debug(debug)  # before anything imports TensorFlow
    try:
        with interrupts.routed_to_exceptions(exit_if_stuck=argv is None):  # None: the console command
            cli.main(args=args, prog_name="ganspection-tf", standalone_mode=False)
            interrupts.raise_lost()  # a signal whose exception Python dropped still ends as an interruption
    except (click.exceptions.Abort, KeyboardInterrupt):
        return _interrupted(interrupts, debug)
    except click.ClickException as error:
        error.show()
        return EXIT_USER_ERROR
    except click.exceptions.Exit as done:
        return done.exit_code
    except GanspectionError as error:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {error}", err=True)
        return EXIT_USER_ERROR
    except Exception as error:
        if interrupts.signal_behind(error) is None:
            raise
        return _interrupted(interrupts, debug)  # a library wrapped the KeyboardInterrupt in another error
    return 0


def _interrupted(interrupts, debug):
    """Ctrl-C or SIGTERM: one line, no traceback, 130 (143 for SIGTERM), after every clean-up has run."""
    if debug:
        traceback.print_exc()
    click.echo("terminated" if interrupts.exit_status() == interrupts.EXIT_TERMINATED else "interrupted", err=True)
    return interrupts.exit_status()


if __name__ == "__main__":
    sys.exit(main())
