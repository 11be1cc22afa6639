"""Accuracy under a wall-clock budget: train for M minutes, evaluate, print the image AUROC of every score.

    python benchmarks/accuracy.py --data ../shared/data/mvtec_ad/bottle --minutes 60 --out runs/acc1 \\
        --image-size 64 --rec-weight 10 --augment hflip,vflip,rot90

Every option of ``ganspection-tf train`` is accepted. ``--steps`` becomes an upper bound (default: no bound);
``--minutes`` is train's ``--max-minutes``: training stops (and saves) at the end of the first log interval
(``--log-every`` steps) after which another interval would overrun the budget. The budget counts from the start
of ``fit`` (including graph / XLA compilation), not the image decoding before it. The table goes to stdout and, with the
command line, to ``OUT/accuracy.json``; the full report to ``OUT/eval/report.html``.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click  # noqa: E402
from click.core import ParameterSource  # noqa: E402

from ganspection_tf import artifacts  # noqa: E402
from ganspection_tf.cli import train_options  # noqa: E402
from ganspection_tf.errors import GanspectionError  # noqa: E402

UNBOUNDED_STEPS = 10**7


@click.command()
@click.option("--minutes", required=True, type=click.FloatRange(0, min_open=True), help="Training wall-clock budget.")
@click.option("--method", default=None, type=click.Choice(["weighted", "mahalanobis"]),
              help="Score fusion to calibrate (default weighted).")
@train_options
@click.pass_context
def accuracy(context, minutes, method, out, resume, **options):
    """Train under a time budget on an MVTec category, evaluate, print AUROC per score term."""
    from ganspection_tf.evaluate import evaluate_run
    from ganspection_tf.run import STATUS_FILE
    from ganspection_tf.training import TrainConfig, train

    if context.get_parameter_source("steps") == ParameterSource.DEFAULT:
        options["steps"] = UNBOUNDED_STEPS
    options["max_minutes"] = minutes
    run_dir = train(TrainConfig.from_flat(**options), out, resume=resume, verbose=2)
    metrics = evaluate_run(run_dir, method=method, log=lambda message: click.echo(message, err=True))
    trained_seconds = artifacts.read_json(Path(run_dir) / STATUS_FILE, what="run status").get("seconds", 0.0)
    summary = _summary(metrics, trained_seconds, minutes)
    artifacts.write_json(Path(run_dir) / "accuracy.json", summary)
    click.echo(_table(summary))


def _summary(metrics, trained_seconds, minutes):
    return {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "budget_minutes": minutes,
        "trained_minutes": round(trained_seconds / 60, 2),
        "model_step": metrics["model_step"],
        "image_auroc": {name: values["auroc"] for name, values in metrics["image"].items()},
        "per_defect_auroc": {name: values["per_defect_auroc"] for name, values in metrics["image"].items()},
        "pixel": metrics["pixel"],
        "threshold": metrics["threshold"],
        "oracle_f1_max": metrics["oracle"]["f1_max"],
        "report": metrics["report"],
    }


def _table(summary):
    defects = sorted(next(iter(summary["per_defect_auroc"].values())))
    width = max(len(name) for name in summary["image_auroc"]) + 2
    trained = (f"trained {summary['model_step']} steps in {summary['trained_minutes']:.1f} min "
               f"(budget {summary['budget_minutes']:g} min)")
    lines = [
        trained,
        f"{'score':{width}s}{'AUROC':>8s}" + "".join(f"{d[:14]:>16s}" for d in defects),
    ]
    for name, auroc in summary["image_auroc"].items():
        per_defect = "".join(f"{summary['per_defect_auroc'][name][d]:16.3f}" for d in defects)
        lines.append(f"{name:{width}s}{auroc:8.3f}{per_defect}")
    pixel = summary["pixel"]
    if pixel:
        lines.append(f"pixel AUROC {pixel['auroc']:.3f}, AU-PRO@{pixel['pro_fpr_limit']} {pixel['au_pro']:.3f}")
    threshold = summary["threshold"]
    lines.append(f"at the calibrated threshold: F1 {threshold['f1']:.3f}, recall {threshold['recall']:.3f}, "
                 f"test FPR {threshold['false_positive_rate']:.3f}; oracle F1-max {summary['oracle_f1_max']:.3f}")
    lines.append(f"report: {summary['report']}")
    return "\n".join(lines)


def main():
    try:
        accuracy.main(standalone_mode=False)
    except GanspectionError as error:
        click.echo(f"error: {error}", err=True)
        return 2
    except click.ClickException as error:
        error.show()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
