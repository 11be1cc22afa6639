"""The score chosen per run on good validation images with synthetic defects: the per-pixel score where parts are
aligned, a pose-independent one where they are not, and never a test image read."""

import json
from pathlib import Path

import pytest
from conftest import tiny_settings

from ganspection_tf.calibration import weight_vector
from ganspection_tf.data.synthetic import write_synthetic_category
from ganspection_tf.score_choice import POSE_DEPENDENT_TERMS, default_candidates
from ganspection_tf.scoring import TERMS, ensure_calibration
from ganspection_tf.training import TrainConfig, train

# What each run needs for its check to be clear, measured over seeds 0-2 (100 images, 20 held out): aligned parts
# at 32 px after 400 steps, where normalized_map_max leads every candidate but its own pair with latent_mahalanobis
# (the tie-break prefers one term) by 0.044-0.105; unaligned parts at 64 px after 200 steps, where the best
# pose-independent candidate leads every pose-dependent one by 0.11-0.17 (at 32 px, by 0.012-0.09: patch_distance's
# 8 x 8 grid is coarse). Each run takes about 20 s. After 20-60 steps every candidate is within 0.5-0.6.
SETTINGS = {"aligned": {"image_size": 32, "steps": 400}, "unaligned": {"image_size": 64, "steps": 200}}
MODES = tuple(SETTINGS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("choice")
    trained = {}
    for mode, setting in SETTINGS.items():
        size, steps = setting["image_size"], setting["steps"]
        category = write_synthetic_category(root / "data", name=mode, image_size=size, n_train=100, n_test_good=2,
                                            n_test_per_defect=1, mode=mode)
        settings = tiny_settings(image_size=size, rec_weight=10.0, steps=steps, log_every=steps,
                                 checkpoint_every=steps, sample_every=steps)
        trained[mode] = train(TrainConfig.from_flat(data=str(category), **settings), root / mode, verbose=0,
                              log=lambda *a: None), category
    return trained


@pytest.mark.parametrize("mode", MODES)
def test_the_choice_is_per_pixel_for_aligned_parts_and_pose_independent_otherwise(runs, mode, images_read):
    run, category = runs[mode]
    messages = []
    calibration = ensure_calibration(run, log=messages.append)
    choice = json.loads((Path(run) / "score_choice.json").read_text())
    print(mode, choice["reason"])  # shown with pytest -s -n 0
    if mode == "aligned":
        assert choice["name"] == "normalized_map_max"
    else:
        assert not POSE_DEPENDENT_TERMS & {term for term, weight in choice["weights"].items() if weight}
    assert calibration.weights == weight_vector(choice["weights"], TERMS)  # the calibration uses the choice
    assert set(choice["auroc"]) == {c.name for c in default_candidates(TERMS)}
    assert set(choice["light_shift"]) == set(choice["auroc"])  # every candidate measured on re-exposed good photos
    assert all(0.0 <= shift <= 0.5 for shift in choice["light_shift"].values())
    assert choice["n_defective"] == 5 * choice["n_good"] and any(choice["reason"] in m for m in messages)

    splits = json.loads((Path(run) / "splits.json").read_text())
    validation = {Path(p).name for p in splits["validation"]}
    allowed = validation | {Path(p).name for p in splits["train"]}
    assert images_read and all(p.parent == category / "train" / "good" and p.name in allowed for p in images_read)
    assert {p.name for p in images_read} >= validation  # the defects were drawn on the validation images
