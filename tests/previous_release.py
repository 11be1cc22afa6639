"""Run by test_previous_release.py under the PREVIOUS release's package (PYTHONPATH = its checkout): writes a
tiny run folder and edge bundle in that release's format, and the scores that release gives them.

    python previous_release.py OUT

Uses only that release's public API, so it must not import anything from the current package.
"""

import json
import sys
from pathlib import Path

from conftest import tiny_settings

from ganspection_tf import edge, export, scoring, training
from ganspection_tf.data import synthetic


def main(out):
    out = Path(out)
    data = synthetic.write_synthetic_category(out / "data", name="widget", image_size=64, n_train=24,
                                              n_test_good=3, n_test_per_defect=1)
    settings = tiny_settings(steps=6, log_every=6, checkpoint_every=6, sample_every=6)
    run = training.train(training.TrainConfig(data=str(data), **settings), out / "run", verbose=0, log=print)
    export.export_bundle(run, out / "bundle", quantize="none", score="combined", log=print)
    images = sorted((data / "test").rglob("*.png"))
    model = training.load_model(run)
    term_model = scoring.build_term_model(model)
    calibration = scoring.ensure_calibration(run, model, log=print, term_model=term_model)
    scorer = edge.EdgeScorer(out / "bundle")
    expected = {
        "images": [str(path.relative_to(data)) for path in images],
        "keras": [result.score for result in scoring.score_files(images, term_model, calibration)],
        "edge": [scorer.score_file(path).score for path in images],
    }
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main(sys.argv[1])
