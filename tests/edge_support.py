"""One tiny trained run and its edge bundles, shared by test_export, test_edge and test_camera.

Session-wide caches (not fixtures): each of the three modules asks for the same run and bundles, and they are
trained / exported once per pytest session whatever the order the modules run in.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from conftest import tiny_settings  # noqa: E402

STEPS = 40
_CACHE = {}


def quiet(*_args):
    pass


def trained_run(tmp_path_factory, synthetic_category):
    """A tiny run on the shared synthetic category (image_size 32, width 8), trained once per session."""
    if "run" not in _CACHE:
        from ganspection_tf import training

        settings = tiny_settings(steps=STEPS, log_every=STEPS, checkpoint_every=STEPS, sample_every=STEPS)
        run_dir = tmp_path_factory.mktemp("edge_run") / "run"
        training.train(training.TrainConfig(data=str(synthetic_category), **settings), run_dir, verbose=0, log=quiet)
        _CACHE["run"] = run_dir
    return _CACHE["run"]


def exported_bundle(tmp_path_factory, synthetic_category, quantize="int8", score="combined"):
    """(bundle folder, parity report) of the shared run, exported once per (quantize, score).

    Exported with force=True so that the edge and camera tests get their bundle whatever the gate says;
    test_export asserts the gate's verdict (report["passed"]) itself.
    """
    key = ("bundle", quantize, score)
    if key not in _CACHE:
        from ganspection_tf.export import export_bundle

        run_dir = trained_run(tmp_path_factory, synthetic_category)
        out = tmp_path_factory.mktemp(f"bundle_{quantize}_{score}") / "bundle"
        _CACHE[key] = out, export_bundle(run_dir, out, quantize=quantize, score=score, force=True, log=quiet)
    return _CACHE[key]
