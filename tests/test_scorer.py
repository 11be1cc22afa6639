"""The scorer contract: the Keras scorer (workstation) and the LiteRT scorer (camera) give one result type and
the same results for the same images through the same preprocess → forward → postprocess path."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from edge_support import (  # noqa: E402
    edge_category,
    exported_bundle,
    exported_tiled_bundle,
    tiled_run,
    trained_run,
)

from ganspection_tf import edge, scoring  # noqa: E402
from ganspection_tf.images import list_images  # noqa: E402
from ganspection_tf.run import RunFolder  # noqa: E402
from ganspection_tf.scorer import ScoreResult, Scorer  # noqa: E402

# A float ("none") bundle is the Keras graph converted without quantisation: its raw outputs differ from Keras
# by float32 rounding only, so terms and scores must agree far inside the parity gate's AUROC tolerance.
SCORE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def scorers(tmp_path_factory):
    run = RunFolder(trained_run(tmp_path_factory))
    camera = edge.EdgeScorer(exported_bundle(tmp_path_factory, "none", "combined")[0])
    workstation = scoring.KerasScorer.for_run(run, scoring.build_term_model(run.load_model()), camera.calibration)
    return workstation, camera


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
    test = edge_category(tmp_path_factory) / "test"
    return [path for folder in sorted(test.iterdir()) for path in list_images(folder)[:3]]


def test_keras_and_litert_scorers_give_the_same_results(scorers, test_images):
    workstation, camera = scorers
    assert isinstance(workstation, Scorer) and isinstance(camera, Scorer)
    assert (workstation.image_size, workstation.channels, workstation.threshold) == (
        camera.image_size, camera.channels, camera.threshold)
    for path in test_images:
        on_workstation = workstation.score_file(path, heatmap=True)
        on_camera = camera.score_file(path, heatmap=True)
        assert type(on_workstation) is type(on_camera) is ScoreResult
        assert list(on_workstation.terms) == list(on_camera.terms) == list(camera.calibration.terms)
        np.testing.assert_allclose(list(on_camera.terms.values()), list(on_workstation.terms.values()),
                                   rtol=SCORE_TOLERANCE, atol=SCORE_TOLERANCE, err_msg=str(path))
        assert on_camera.score == pytest.approx(on_workstation.score, rel=SCORE_TOLERANCE, abs=SCORE_TOLERANCE)
        if abs(on_workstation.score - camera.threshold) > SCORE_TOLERANCE:
            assert on_camera.anomalous == on_workstation.anomalous
        assert on_camera.heatmap.shape == on_workstation.heatmap.shape == read_shape(path)
        np.testing.assert_allclose(on_camera.error_map, on_workstation.error_map, atol=SCORE_TOLERANCE)


def test_score_files_is_the_keras_scorer_batched(scorers, test_images):
    """`score` streams files through the same contract: batched results equal one-at-a-time results."""
    workstation, _ = scorers
    in_fours = scoring.KerasScorer(workstation.term_model, workstation.calibration, workstation.resize, batch_size=4,
                                   exposure_level=workstation.exposure_level)
    batched = list(scoring.score_files(test_images, in_fours))
    for path, result in zip(test_images, batched):
        single = workstation.score_file(path)
        assert result.path == path and result.original_hw == read_shape(path)
        assert result.score == pytest.approx(single.score, rel=1e-4, abs=1e-4)  # float32 batching noise
        assert result.anomalous == single.anomalous


def read_shape(path):
    from ganspection_tf.images import read_image

    return read_image(path).shape[:2]


def test_a_run_inspected_by_tiles_scores_the_same_on_the_camera(tmp_path_factory, test_images):
    """Inspected at 64 px by 32 px tiles: the camera's bundle holds the same tiling, so its terms (from the stitched
    error map and the tiles' codes), scores and 64 × 64 error maps are the workstation's within float32 rounding,
    and its export passed the parity gate."""
    run = RunFolder(tiled_run(tmp_path_factory))
    bundle, report = exported_tiled_bundle(tmp_path_factory)
    camera = edge.EdgeScorer(bundle)
    workstation = scoring.KerasScorer.for_run(run, scoring.build_term_model(run.load_model()), camera.calibration)
    assert camera.image_size == workstation.image_size == 64 and camera.metadata.details["tile_size"] == 32
    assert camera.calibration.terms == ["latent_mahalanobis", "normalized_map_max"]
    assert np.shape(camera.calibration.parameters["map_mean"]) == (64, 64)
    assert np.shape(camera.calibration.parameters["code_mean"]) == (4 * 8,)  # 4 tiles × latent_dim 8
    assert report["passed"] and report["images"] == 50
    for path in test_images:
        on_workstation, on_camera = workstation.score_file(path, heatmap=True), camera.score_file(path, heatmap=True)
        np.testing.assert_allclose(list(on_camera.terms.values()), list(on_workstation.terms.values()),
                                   rtol=SCORE_TOLERANCE, atol=SCORE_TOLERANCE, err_msg=str(path))
        assert on_camera.score == pytest.approx(on_workstation.score, rel=SCORE_TOLERANCE, abs=SCORE_TOLERANCE)
        assert on_camera.error_map.shape == (64, 64) and on_camera.heatmap.shape == read_shape(path)
        np.testing.assert_allclose(on_camera.error_map, on_workstation.error_map, atol=SCORE_TOLERANCE)
