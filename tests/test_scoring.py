"""Score terms (TF side), the numpy-only calibration, and ensure_calibration's use of validation images only."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.covariance import ledoit_wolf  # noqa: E402

from ganspection_tf import calibration as cal  # noqa: E402
from ganspection_tf import heatmaps, stats  # noqa: E402
from ganspection_tf import terms as registry  # noqa: E402
from ganspection_tf import scoring  # noqa: E402
from ganspection_tf.data import pipeline  # noqa: E402
from ganspection_tf.errors import GanspectionError  # noqa: E402
from ganspection_tf.models.networks import with_patch_features  # noqa: E402
from ganspection_tf.run import RunFolder  # noqa: E402
from ganspection_tf.training import TrainConfig, build_model  # noqa: E402

TINY = dict(image_size=32, width=8, latent_dim=8, critic_steps=1, batch_size=8, jit_compile=False)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(0)
    return build_model(TrainConfig.from_flat(data="unused", channels=3, **TINY))


@pytest.fixture(scope="module")
def term_model(tiny_model):
    return scoring.build_term_model(tiny_model)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def run_copy(tiny_run_copy):
    """A private copy of the session's tiny run (these tests are about files, not about accuracy)."""
    return tiny_run_copy


def validation_matrix(n=40, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 1))
    # Correlated, differently scaled terms, like the real ones (one column per term).
    return np.hstack([base + 0.3 * rng.normal(size=(n, 1)), 5 + 2 * base, rng.normal(size=(n, 3)) * [1, 10, 0.1],
                      0.2 + 0.05 * rng.random((n, 1)), 8 + 3 * base ** 2, 2 + base, 1 + 0.1 * np.abs(base),
                      0.5 + 0.1 * np.abs(base) + 0.01 * rng.random((n, 1))])


def code_gaussian(n=30, d=8, seed=0):
    codes = np.random.default_rng(seed).normal(size=(n, d)) * np.linspace(0.5, 2.0, d)
    mean, whitening = registry.fit_code_gaussian(codes)
    return {"code_mean": mean, "code_whitening": whitening}


def map_gaussian(side=8, seed=0):
    maps = np.abs(np.random.default_rng(seed).normal(0.1, 0.03, size=(20, side, side)))
    mean, std = registry.fit_map_gaussian(maps)
    return {"map_mean": mean, "map_std": std}


def patch_bank(rows=16, width=4, seed=0):
    """Both patch terms' banks and counts (patch_distance, fine_patch_distance)."""
    rng = np.random.default_rng(seed)
    return {"patch_bank": rng.normal(size=(rows, width)), "fine_patch_bank": rng.normal(size=(rows, width // 2)),
            "patch_score_count": registry.PATCH_SCORE_COUNT, "fine_patch_score_count": registry.PATCH_SCORE_COUNT}


def fit(matrix, **options):
    """fit_calibration with every term: the latent_mahalanobis and normalized_map_max Gaussians and the
    patch_distance banks included."""
    return cal.fit_calibration(matrix, **code_gaussian(), **map_gaussian(), **patch_bank(), **options)


# --------------------------------------------------------------------------------------------- term model


def test_term_model_outputs_match_their_definitions(tiny_model, term_model, images):
    encoder, generator, critic = tiny_model.scoring_networks()
    x = images.astype(np.float32) / 127.5 - 1
    numpy = keras.ops.convert_to_numpy
    z = numpy(encoder(x))
    recon = numpy(generator(z))
    value, features = (numpy(t) for t in critic([x, z]))
    _, recon_features = (numpy(t) for t in critic([recon, z]))
    _, _, patches, _ = (numpy(t) for t in with_patch_features(critic, 32)([x, z, x]))
    fine_patches = numpy(keras.Model(critic.inputs, critic.get_layer("crit_act0").output)([x, z]))
    expected = {
        "latent": 0.5 * np.sum(z**2, axis=1),
        "cycle": np.mean((z - numpy(encoder(recon))) ** 2, axis=1),
        "reconstruction": np.mean(np.abs(x - recon), axis=(1, 2, 3)),
        "critic_feature": np.mean(np.abs(features - recon_features), axis=1),
        "critic": -value[:, 0],
        "error_map": np.mean(np.abs(x - recon), axis=3),
        "code": z,
        "critic_fine_patches": fine_patches,
        "critic_patches": patches,
    }
    terms = scoring.compute_terms(term_model, images)
    assert set(terms) == set(registry.MODEL_OUTPUTS) == (set(registry.TERMS) - {
        "latent_mahalanobis", "normalized_map_max", "patch_distance", "fine_patch_distance"}) | {
        "error_map", "code", "critic_patches", "critic_fine_patches"}
    for name, values in expected.items():
        np.testing.assert_allclose(terms[name], values, rtol=1e-4, atol=1e-5, err_msg=name)
    assert terms["error_map"].shape == (5, 32, 32) and terms["code"].shape == (5, 8)
    assert terms["critic_patches"].shape[:3] == (5, 8, 8)  # the critic's stage 2: stride 4
    assert terms["critic_fine_patches"].shape[:3] == (5, 16, 16)  # its stage 1: stride 2


def test_map_max_is_the_maximum_of_the_smoothed_error_map(term_model, images):
    """The in-graph smoothing equals calibration.anomaly_map's (cv2) at model resolution, also at the borders."""
    terms = scoring.compute_terms(term_model, images)
    expected = [heatmaps.anomaly_map(error, (32, 32)).max() for error in terms["error_map"]]
    np.testing.assert_allclose(terms["map_max"], expected, rtol=1e-5, atol=1e-6)
    spikes = np.zeros((2, 32, 32), np.float32)
    spikes[0, 0, 0], spikes[1, 5, 31] = 1.0, 2.0  # corners and edges exercise the reflected border
    for sigma in (1.0, 2.0):
        smoothed = keras.ops.convert_to_numpy(scoring.GaussianSmoothing(sigma)(spikes))
        for spike, result in zip(spikes, smoothed):
            np.testing.assert_allclose(result, heatmaps.anomaly_map(spike, (32, 32), sigma=sigma), atol=1e-6)


@pytest.fixture(scope="module")
def tiled_model(tiny_model):
    """`tiny_model`'s networks inspecting 64 px images by 2 × 2 tiles of its 32 px."""
    model = build_model(TrainConfig.from_flat(data="unused", channels=3, inspect_size=64, **TINY))
    model.set_weights(tiny_model.get_weights())
    return model


def test_a_tiled_term_model_gives_per_image_outputs_merged_from_its_tiles(tiled_model, term_model):
    """Inspected at 64 px by 32 px tiles: the error map is the tiles' maps stitched (then map_max smooths the whole
    map, across the seams), each other term is its largest value over the tiles, the code is the tiles' codes in
    row-major order, and the reconstruction for pictures is stitched the same way."""
    images = np.random.default_rng(2).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    tiled = scoring.compute_terms(scoring.build_term_model(tiled_model), images)
    quarters = [images[:, top : top + 32, left : left + 32] for top in (0, 32) for left in (0, 32)]
    per_tile = [scoring.compute_terms(term_model, quarter) for quarter in quarters]
    stitched = np.concatenate([np.concatenate([per_tile[0]["error_map"], per_tile[1]["error_map"]], axis=2),
                               np.concatenate([per_tile[2]["error_map"], per_tile[3]["error_map"]], axis=2)], axis=1)
    np.testing.assert_allclose(tiled["error_map"], stitched, atol=1e-6)
    for name in ("latent", "cycle", "reconstruction", "critic_feature", "critic"):
        np.testing.assert_allclose(tiled[name], np.max([t[name] for t in per_tile], axis=0), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    np.testing.assert_allclose(tiled["code"], np.concatenate([t["code"] for t in per_tile], axis=1), atol=1e-6)
    # The fine patch features come from the whole image: a 32 px window across the seams has, away from its own
    # border, the features of the same pixels in the tiled image (tile by tile, the seams' would differ).
    across = scoring.compute_terms(term_model, images[:, 16:48, 16:48])["critic_fine_patches"]
    np.testing.assert_allclose(tiled["critic_fine_patches"][:, 9:23, 9:23], across[:, 1:15, 1:15], atol=1e-5)
    expected_max = [heatmaps.anomaly_map(error, (64, 64)).max() for error in stitched]
    np.testing.assert_allclose(tiled["map_max"], expected_max, rtol=1e-5, atol=1e-6)
    whole = scoring.reconstruct(tiled_model, images)
    assert whole.shape == images.shape
    alone = scoring.reconstruct(tiled_model, quarters[2])  # uint8: a batch of another size may round 1 level apart
    np.testing.assert_allclose(whole[:, 32:, :32].astype(int), alone.astype(int), atol=1)


def test_inspecting_at_the_image_size_builds_the_term_model_of_runs_from_before_the_setting(tiny_model, images):
    """inspect_size = image_size (the default's choice) and a model.keras without the setting give one and the same
    graph, layer for layer, so their scores, calibrations and bundles are the ones of the untiled release."""
    explicit = build_model(TrainConfig.from_flat(data="unused", channels=3, inspect_size=32, **TINY))
    explicit.set_weights(tiny_model.get_weights())
    assert tiny_model.config.inspect_size is None and tiny_model.inspected_size == 32
    before, now = scoring.build_term_model(tiny_model), scoring.build_term_model(explicit)
    assert [layer.name for layer in now.layers] == [layer.name for layer in before.layers]
    assert not any(isinstance(layer, scoring.Tiles) for layer in now.layers)
    old, new = scoring.compute_terms(before, images), scoring.compute_terms(now, images)
    for name in old:
        np.testing.assert_array_equal(new[name], old[name], err_msg=name)


def test_ema_weights_are_used_for_scoring(tiny_model, term_model, images):
    """The term model reads the EMA copies, not the raw (trained) encoder weights."""
    ema_encoder = tiny_model.scoring_networks()[0]
    # Nudge the raw encoder: the terms must not move, because scoring uses the averaged copy.
    kernel = tiny_model.encoder.get_layer("enc_latent").kernel
    before = scoring.compute_terms(scoring.build_term_model(tiny_model), images)
    kernel.assign(kernel + 1.0)
    try:
        after = scoring.compute_terms(scoring.build_term_model(tiny_model), images)
    finally:
        kernel.assign(kernel - 1.0)
    np.testing.assert_allclose(after["latent"], before["latent"], rtol=1e-5)
    assert ema_encoder.name == "ema_encoder"


def test_compute_terms_does_not_depend_on_batching(term_model, images):
    whole = scoring.compute_terms(term_model, images, batch_size=32)
    pieces = scoring.compute_terms(term_model, images, batch_size=2)
    for name in whole:
        np.testing.assert_allclose(pieces[name], whole[name], rtol=1e-5, atol=1e-6)


def test_term_model_is_plain_serializable_keras(term_model, images, tmp_path):
    layer_types = {type(layer).__name__ for layer in term_model._flatten_layers()}
    assert "Lambda" not in layer_types
    path = tmp_path / "terms.keras"
    term_model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    original, restored = scoring.compute_terms(term_model, images), scoring.compute_terms(reloaded, images)
    for name in original:
        np.testing.assert_allclose(restored[name], original[name], rtol=1e-6)


def test_compute_terms_refuses_float_input(term_model):
    with pytest.raises(GanspectionError, match="uint8"):
        scoring.compute_terms(term_model, np.zeros((1, 32, 32, 3), np.float32))


# --------------------------------------------------------------------------------------------- calibration


def test_calibration_module_never_imports_tensorflow():
    code = "import sys, ganspection_tf.calibration; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_weighted_combination_is_standardised_weighted_sum():
    val = validation_matrix()
    weights = [1.0, 0.5, 0.0, 2.0, 0.25, 1.0, 0.0, 0.5, 0.75, 0.3]
    fitted = fit(val, weights=weights)
    mean, std = val.mean(axis=0), val.std(axis=0, ddof=1)
    np.testing.assert_allclose(fitted.mean, mean)
    np.testing.assert_allclose(fitted.std, std)
    point = val[:3] + 1.0
    np.testing.assert_allclose(fitted.combine(point), ((point - mean) / std) @ weights)


def test_weights_dict_fills_missing_terms_with_zero():
    fitted = fit(validation_matrix(), weights={"reconstruction": 2.0})
    assert fitted.weights == [2.0 if term == "reconstruction" else 0.0 for term in registry.TERMS]
    assert fit(validation_matrix()).weights == [registry.DEFAULT_WEIGHTS[t] for t in registry.TERMS]
    assert {t for t, w in registry.DEFAULT_WEIGHTS.items() if w} == {"normalized_map_max"}


def test_ledoit_wolf_matches_scikit_learn():
    samples = validation_matrix(25)
    expected, _ = ledoit_wolf(samples)
    np.testing.assert_allclose(stats.ledoit_wolf_covariance(samples), expected, rtol=1e-10, atol=1e-12)


def test_mahalanobis_score_is_the_distance_under_the_shrunk_covariance():
    val = validation_matrix()
    fitted = fit(val, method="mahalanobis")
    standardized = (val - val.mean(axis=0)) / val.std(axis=0, ddof=1)
    inverse = np.linalg.inv(stats.ledoit_wolf_covariance(standardized))
    point = val[:4] * 1.5
    u = fitted.standardize(point)
    expected = np.sqrt(np.einsum("ni,ij,nj->n", u, inverse, u))
    np.testing.assert_allclose(fitted.combine(point), expected, rtol=1e-6)
    assert np.asarray(fitted.whitening).shape == (len(registry.TERMS),) * 2


def test_constant_term_gets_a_floored_std():
    val = validation_matrix()
    val[:, 1] = 3.0
    fitted = fit(val)
    assert fitted.std[1] == pytest.approx(3.0 * cal.STD_FLOOR_RELATIVE)
    assert np.all(np.isfinite(fitted.combine(val)))


def test_threshold_is_the_empirical_quantile_with_enough_images():
    scores = np.random.default_rng(0).normal(size=1000)
    threshold = cal.validation_threshold(scores, max_fpr=0.01)
    assert threshold in scores  # an observed score ("higher" quantile)
    assert np.mean(scores > threshold) <= 0.01
    assert np.mean(scores >= threshold) > 0.01  # the lowest such threshold


def test_threshold_with_few_images_extrapolates_above_the_maximum():
    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    gaussian = scores.mean() + 2.3263478740408408 * scores.std(ddof=1)  # z(0.99)
    assert cal.validation_threshold(scores, max_fpr=0.01) == pytest.approx(gaussian)
    outlier = np.r_[np.zeros(49), 100.0]  # one far outlier: the maximum is above the Gaussian estimate
    assert cal.validation_threshold(outlier, max_fpr=0.01) == 100.0


def test_fitted_threshold_flags_no_validation_image():
    val = validation_matrix(30)
    for method in cal.METHODS:
        fitted = fit(val, method=method, max_fpr=0.01)
        assert not fitted.is_anomalous(fitted.combine(val)).any()


def test_calibration_round_trips_through_json():
    for method in cal.METHODS:
        fitted = fit(validation_matrix(), method=method, config_hash="abc", model_step=7)
        restored = cal.Calibration.from_dict(json.loads(json.dumps(fitted.to_dict())))
        assert restored == fitted
        np.testing.assert_array_equal(restored.parameters["code_mean"], code_gaussian()["code_mean"])
        np.testing.assert_array_equal(restored.parameters["code_whitening"], code_gaussian()["code_whitening"])
        np.testing.assert_array_equal(restored.combine(validation_matrix()), fitted.combine(validation_matrix()))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("threshold"), "missing keys"),
        (lambda d: d.update(extra=1), "unknown keys"),
        (lambda d: d.update(threshold="high"), "'threshold' has type str"),
        (lambda d: d.update(n_validation=True), "'n_validation' has type bool"),
        (lambda d: d.update(mean=d["mean"][:2]), "'mean' must hold 10"),
        (lambda d: d.update(std=[0.0] * 10), "'std' must be positive"),
        (lambda d: d.update(weights=[float("nan")] * 10), "'weights' must hold 10 finite"),
        (lambda d: d.update(method="median"), "'method'"),
        (lambda d: d.update(method="mahalanobis"), "'whitening' must be a 10x10"),
        (lambda d: d.update(terms=["latent"] * 10), "distinct"),
        (lambda d: d.update(terms=[*registry.TERMS[:-1], "bogus"]), "unknown terms"),
        (lambda d: d.pop("code_mean"), "'code_mean'"),
        (lambda d: d.update(code_whitening=d["code_whitening"][:3]), "'code_whitening' must be a 8x8"),
        (lambda d: d.update(max_fpr=1.5), "'max_fpr'"),
        (lambda d: d.pop("map_std"), "'map_std' must be a square matrix"),
        (lambda d: d.update(map_mean=d["map_mean"][:3]), "'map_mean' must be a square matrix"),
        (lambda d: d.update(map_std=[[0.0] * 8] * 8), "'map_std' must be positive"),
        (lambda d: d.pop("patch_bank"), "'patch_bank'"),
        (lambda d: d.update(patch_bank=[[1.0, 2.0], [3.0]]), "'patch_bank' must be a non-empty matrix"),
        (lambda d: d.update(fine_patch_bank=[]), "'fine_patch_bank' must be a non-empty matrix"),
        (lambda d: d.update(patch_score_count=0), "'patch_score_count' must be a whole number of patches"),
        (lambda d: d.update(fine_patch_score_count=2.5), "'fine_patch_score_count' must be a whole number"),
        (lambda d: d.update(outputs_version="2"), "'outputs_version' must be an integer or null"),
    ],
)
def test_corrupt_calibration_dicts_are_refused_naming_the_source(change, message):
    values = fit(validation_matrix()).to_dict()
    change(values)
    with pytest.raises(GanspectionError, match=message) as error:
        cal.Calibration.from_dict(values, source="run/calibration.json")
    assert str(error.value).startswith("run/calibration.json: invalid calibration") and "\n" not in str(error.value)


def test_fit_refuses_a_single_validation_image():
    with pytest.raises(GanspectionError, match="at least 2 good validation images"):
        fit(validation_matrix()[:1])


def test_fit_refuses_latent_mahalanobis_without_the_code_gaussian():
    with pytest.raises(GanspectionError, match="code Gaussian"):
        cal.fit_calibration(validation_matrix(), **map_gaussian(), **patch_bank())


def test_fit_refuses_normalized_map_max_without_the_map_gaussian():
    with pytest.raises(GanspectionError, match="per-pixel Gaussian"):
        cal.fit_calibration(validation_matrix(), **code_gaussian(), **patch_bank())


def model_outputs(n, seed, shift=0.0):
    """Raw term-model outputs of n images, like scoring.compute_terms returns them."""
    rng = np.random.default_rng(seed)
    outputs = {term: rng.normal(1.0, 0.2, n) for term in registry.TERMS if term in registry.MODEL_TERMS}
    outputs["code"] = rng.normal(size=(n, 8)) * np.linspace(0.5, 2.0, 8) + shift
    outputs["error_map"] = np.abs(rng.normal(0.1, 0.02, size=(n, 16, 16))).astype(np.float32)
    outputs["critic_patches"] = rng.normal(size=(n, 4, 4, 6)).astype(np.float32) + shift
    outputs["critic_fine_patches"] = rng.normal(size=(n, 8, 8, 3)).astype(np.float32) + shift
    return outputs


def test_latent_mahalanobis_is_the_squared_distance_under_the_validation_gaussian():
    validation, test = model_outputs(30, 0), model_outputs(6, 1, shift=0.7)
    fitted = cal.fit_calibration_from_outputs(validation)
    covariance, _ = ledoit_wolf(validation["code"])  # scikit-learn, independent of our shrinkage
    centred = test["code"] - validation["code"].mean(axis=0)
    expected = np.einsum("ni,ij,nj->n", centred, np.linalg.inv(covariance), centred)
    matrix = fitted.term_matrix(test)
    np.testing.assert_allclose(matrix[:, registry.TERMS.index("latent_mahalanobis")], expected, rtol=1e-6)
    np.testing.assert_array_equal(matrix[:, registry.TERMS.index("map_max")], test["map_max"])


def test_validation_latent_mahalanobis_is_leave_one_out():
    """Each validation code is measured against the Gaussian of the others: larger than the in-sample values."""
    validation = model_outputs(30, 0)
    codes = validation["code"]
    honest = registry.leave_one_out_mahalanobis(codes)
    mean, whitening = registry.fit_code_gaussian(codes[1:])
    assert honest[0] == pytest.approx(registry.latent_mahalanobis(codes[:1], mean, whitening)[0])
    in_sample = registry.latent_mahalanobis(codes, *registry.fit_code_gaussian(codes))
    assert np.all(honest > in_sample)
    fitted = cal.fit_calibration_from_outputs(validation)
    column = registry.TERMS.index("latent_mahalanobis")
    assert fitted.mean[column] == pytest.approx(honest.mean())


def test_outputs_needed_maps_derived_terms_to_their_model_outputs():
    assert registry.outputs_needed(["map_max", "latent_mahalanobis"]) == ["map_max", "code"]
    assert registry.outputs_needed(["latent", "critic"]) == ["latent", "critic"]
    assert registry.outputs_needed(["normalized_map_max"], with_error_map=True) == ["error_map"]  # no repeat
    assert registry.outputs_needed(["critic"], with_error_map=True) == ["critic", "error_map"]


def test_normalized_map_max_is_the_largest_per_pixel_z_score_of_the_smoothed_map():
    rng = np.random.default_rng(3)
    good = np.abs(rng.normal(0.1, 0.02, size=(40, 16, 16))).astype(np.float32)
    mean, std = registry.fit_map_gaussian(good)
    smoothed = np.stack([cv2.GaussianBlur(m, (0, 0), 0.5, borderType=cv2.BORDER_REFLECT) for m in good])
    np.testing.assert_allclose(mean, smoothed.mean(axis=0), rtol=1e-5)
    floor = registry.MAP_STD_FLOOR * smoothed.std(axis=0, ddof=1).mean()
    np.testing.assert_allclose(std, np.maximum(smoothed.std(axis=0, ddof=1), floor), rtol=1e-4)
    new = good[:2].copy()
    new_smoothed = np.stack([cv2.GaussianBlur(m, (0, 0), 0.5, borderType=cv2.BORDER_REFLECT) for m in new])
    np.testing.assert_allclose(registry.normalized_map_max(new, mean, std),
                               ((new_smoothed - mean) / std).max(axis=(1, 2)), rtol=1e-4)


def test_normalized_map_max_discounts_places_where_good_parts_always_err():
    """The same error flags a part where good parts reconstruct cleanly, not where they always err (a rim)."""
    rng = np.random.default_rng(4)
    good = np.abs(rng.normal(0.05, 0.01, size=(60, 32, 32))).astype(np.float32)
    good[:, :, :4] += np.abs(rng.normal(0.3, 0.1, size=(60, 32, 4)))  # a "rim" that is always reconstructed badly
    mean, std = registry.fit_map_gaussian(good)
    on_rim, in_quiet_place = good[:1].copy(), good[:1].copy()
    on_rim[0, 14:18, 0:4] += 0.25
    in_quiet_place[0, 14:18, 20:24] += 0.25
    plain_max = [float(heatmaps.smooth_error_maps(m).max()) for m in (on_rim, in_quiet_place)]
    normalized = [float(registry.normalized_map_max(m, mean, std)[0]) for m in (on_rim, in_quiet_place)]
    assert plain_max[0] > plain_max[1]  # the plain maximum ranks the rim error higher ...
    assert normalized[1] > 3 * normalized[0]  # ... the per-pixel z-score ranks the quiet-place error far higher


def test_normalized_map_max_uses_training_maps_when_given_else_leave_one_out():
    validation, training_maps = model_outputs(20, 0), model_outputs(50, 5)
    column = registry.TERMS.index("normalized_map_max")
    with_reference = cal.fit_calibration_from_outputs(validation, reference_outputs=training_maps)
    mean, std = registry.fit_map_gaussian(training_maps["error_map"])
    np.testing.assert_allclose(with_reference.parameters["map_mean"], mean)
    values = registry.normalized_map_max(validation["error_map"], mean, std)
    assert with_reference.mean[column] == pytest.approx(values.mean())
    without = cal.fit_calibration_from_outputs(validation)
    honest = registry.leave_one_out_normalized_map_max(validation["error_map"])
    others = registry.fit_map_gaussian(validation["error_map"][1:])
    assert honest[0] == pytest.approx(registry.normalized_map_max(validation["error_map"][:1], *others)[0])
    assert without.mean[column] == pytest.approx(honest.mean())
    in_sample = registry.normalized_map_max(validation["error_map"],
                                            *registry.fit_map_gaussian(validation["error_map"]))
    assert honest.mean() > in_sample.mean()


def test_anomaly_map_smooths_and_upsamples():
    error = np.zeros((32, 32), np.float32)
    error[10, 20] = 1.0
    amap = heatmaps.anomaly_map(error, (90, 120), sigma=1.0)
    assert amap.shape == (90, 120) and amap.dtype == np.float32
    peak_row, peak_col = np.unravel_index(np.argmax(amap), amap.shape)
    assert abs(peak_row - 10.5 * 90 / 32) <= 3 and abs(peak_col - 20.5 * 120 / 32) <= 3
    assert amap.max() < 0.5  # the single-pixel spike is spread out
    np.testing.assert_allclose(heatmaps.anomaly_map(error, (32, 32), sigma=0), error)


def test_default_smoothing_scales_with_the_model_resolution():
    error = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    np.testing.assert_allclose(heatmaps.anomaly_map(error, (64, 64)), heatmaps.anomaly_map(error, (64, 64), sigma=2.0))
    small = error[:32, :32]
    np.testing.assert_allclose(heatmaps.anomaly_map(small, (32, 32)), heatmaps.anomaly_map(small, (32, 32), sigma=1.0))


def test_heatmap_overlay_keeps_the_image_size():
    overlay = heatmaps.heatmap_overlay(np.zeros((40, 50, 1), np.uint8), np.ones((40, 50), np.float32))
    assert overlay.shape == (40, 50, 3) and overlay.dtype == np.uint8


# --------------------------------------------------------------------------------------------- ensure_calibration


def private_category(run_dir, tmp_path):
    """Points the run at a private copy of its data, so a test may damage the data."""
    splits = json.loads((run_dir / "splits.json").read_text())
    category = Path(shutil.copytree(splits["root"], tmp_path / "category"))
    splits["root"] = str(category)
    splits["validation"] = [str(category / "train" / "good" / Path(p).name) for p in splits["validation"]]
    (run_dir / "splits.json").write_text(json.dumps(splits))
    return category, splits


def test_ensure_calibration_reads_only_good_training_images(run_copy, tmp_path, images_read):
    """The validation images (standardisation, threshold) and the training images (the per-pixel Gaussian of
    normalized_map_max): good images from train/good, never a test image."""
    category, splits = private_category(run_copy, tmp_path)
    validation_names = {Path(p).name for p in splits["validation"]}
    training_names = {Path(p).name for p in splits["train"]}
    read = images_read
    test_images = list((category / "test").rglob("*.png"))
    assert test_images
    for test_image in test_images:  # reading any test image would now fail
        test_image.write_bytes(b"not an image")
    fitted = scoring.ensure_calibration(run_copy, log=lambda *a: None)
    assert fitted.n_validation == len(validation_names) >= 2
    assert {p.name for p in read} == validation_names | training_names
    assert all(p.parent == category / "train" / "good" for p in read)
    assert cal.Calibration.from_dict(json.loads((run_copy / "calibration.json").read_text())) == fitted


def test_calibration_without_the_training_images_falls_back_to_the_validation_maps(run_copy, tmp_path):
    category, splits = private_category(run_copy, tmp_path)
    for name in {Path(p).name for p in splits["train"]}:
        (category / "train" / "good" / name).unlink()
    messages = []
    fitted = scoring.ensure_calibration(run_copy, log=messages.append)
    assert any("normalized_map_max falls back" in m for m in messages)
    validation = scoring.validation_terms(run_copy, scoring.build_term_model(RunFolder(run_copy).load_model()))
    np.testing.assert_allclose(fitted.parameters["map_mean"], registry.fit_map_gaussian(validation["error_map"])[0],
                               rtol=1e-6)
    column = fitted.terms.index("normalized_map_max")
    honest = registry.leave_one_out_normalized_map_max(validation["error_map"])
    assert fitted.mean[column] == pytest.approx(honest.mean(), rel=1e-6)


def test_ensure_calibration_reuses_a_matching_file_and_refits_a_stale_one(run_copy, monkeypatch):
    first = scoring.ensure_calibration(run_copy, log=lambda *a: None)

    def no_reading(*args, **kwargs):
        raise AssertionError("images were read although calibration.json matches")

    monkeypatch.setattr(pipeline, "load_images", no_reading)
    assert scoring.ensure_calibration(run_copy, log=lambda *a: None) == first
    monkeypatch.undo()

    stale = first.to_dict() | {"config_hash": "something-else", "threshold": 123.0}
    (run_copy / "calibration.json").write_text(json.dumps(stale))
    assert scoring.ensure_calibration(run_copy, log=lambda *a: None) == first
    refit = scoring.ensure_calibration(run_copy, log=lambda *a: None, method="mahalanobis", max_fpr=0.05)
    assert (refit.method, refit.max_fpr) == ("mahalanobis", 0.05)


def test_ensure_calibration_refits_a_file_from_before_the_new_terms(run_copy):
    """An old calibration.json (five terms, no code Gaussian) of the same model is refitted, not an error."""
    current = scoring.ensure_calibration(run_copy, log=lambda *a: None)
    old = current.to_dict()
    old_terms = ["latent", "cycle", "reconstruction", "critic_feature", "critic"]
    for key in ("mean", "std"):
        old[key] = old[key][:5]
    old.update(terms=old_terms, weights=[0.0, 0.0, 1.0, 0.0, 0.5], threshold=123.0)
    del old["code_mean"], old["code_whitening"]
    (run_copy / "calibration.json").write_text(json.dumps(old))
    messages = []
    assert scoring.ensure_calibration(run_copy, log=messages.append) == current
    assert not any("warning" in m for m in messages)


def test_a_calibration_from_before_validation_scores_keeps_the_runs_score(run_copy, monkeypatch):
    """The previous release's calibration.json (no validation_scores) of the same model is refitted with the
    score it holds, not with a new choice: the run's scores do not change when the package is updated."""
    chosen_by_hand = scoring.ensure_calibration(run_copy, weights={"map_max": 1.0, "critic": 0.5}, log=lambda *a: None)
    old = chosen_by_hand.to_dict()
    del old["validation_scores"]
    (run_copy / "calibration.json").write_text(json.dumps(old))
    monkeypatch.setattr(scoring, "choose_run_score", lambda *a, **k: pytest.fail("the score was chosen anew"))
    refitted = scoring.ensure_calibration(run_copy, log=lambda *a: None)
    assert refitted == chosen_by_hand
    assert refitted.validation_scores is not None  # now kept, so an export ships them for camera --max-fpr


def test_a_calibration_from_before_the_patch_score_count_keeps_scoring_by_the_largest_distance(run_copy, monkeypatch):
    """A calibration.json from the release that scored the patch terms by an image's largest patch distance (no
    patch_score_count, nor outputs_version: this run is not inspected by tiles, so its outputs did not change) is
    still used as it is, and scores as that release did: the run's scores do not change when the package is
    updated."""
    current = scoring.ensure_calibration(run_copy, log=lambda *a: None)
    old = current.to_dict()
    del old["patch_score_count"], old["fine_patch_score_count"], old["outputs_version"]
    (run_copy / "calibration.json").write_text(json.dumps(old))
    monkeypatch.setattr(pipeline, "load_images", lambda *a, **k: pytest.fail("a matching file was fitted again"))
    kept = scoring.ensure_calibration(run_copy, log=lambda *a: None)
    monkeypatch.undo()
    outputs = scoring.validation_terms(run_copy, scoring.build_term_model(RunFolder(run_copy).load_model()))
    for name, output, bank in (("patch_distance", "critic_patches", "patch_bank"),
                               ("fine_patch_distance", "critic_fine_patches", "fine_patch_bank")):
        largest = registry.nearest_patch_distances(outputs[output], kept.parameters[bank]).max(axis=(1, 2))
        np.testing.assert_allclose(kept.term_matrix(outputs)[:, kept.terms.index(name)], largest, rtol=1e-5)
        assert np.all(current.term_matrix(outputs)[:, current.terms.index(name)] < largest)  # a mean of 16


def test_a_tiled_runs_calibration_fitted_tile_by_tile_is_fitted_again_with_its_score(tmp_path_factory, tmp_path,
                                                                                       monkeypatch):
    """A run inspected by tiles whose calibration.json holds fine patch features computed tile by tile (an
    earlier release: no outputs_version) gets its bank and threshold fitted again on the whole image's features,
    with the score it was calibrated with (not chosen anew), and says so."""
    from edge_support import tiled_run

    run = Path(shutil.copytree(tiled_run(tmp_path_factory), tmp_path / "run"))
    current = scoring.ensure_calibration(run, weights={"fine_patch_distance": 1.0, "critic": 0.5},
                                         log=lambda *a: None)
    old = current.to_dict() | {"threshold": 123.0, "fine_patch_bank": [[0.0] * len(current.parameters[
        "fine_patch_bank"][0])]}
    del old["outputs_version"]
    (run / "calibration.json").write_text(json.dumps(old))
    monkeypatch.setattr(scoring, "choose_run_score", lambda *a, **k: pytest.fail("the score was chosen anew"))
    messages = []
    assert scoring.ensure_calibration(run, log=messages.append) == current
    assert any("fitted on the fine patch features of an earlier release" in m for m in messages)


def test_ensure_calibration_recomputes_a_corrupt_file_with_a_warning(run_copy):
    (run_copy / "calibration.json").write_text("{not json")
    messages = []
    fitted = scoring.ensure_calibration(run_copy, log=messages.append)
    assert any("corrupt" in m and "recomputing" in m for m in messages)
    assert cal.Calibration.from_dict(json.loads((run_copy / "calibration.json").read_text())) == fitted


def test_ensure_calibration_finds_validation_images_listed_relative_to_another_folder(run_copy):
    splits = json.loads((run_copy / "splits.json").read_text())
    splits["validation"] = [f"../elsewhere/train/good/{Path(p).name}" for p in splits["validation"]]
    (run_copy / "splits.json").write_text(json.dumps(splits))
    assert scoring.ensure_calibration(run_copy, log=lambda *a: None).n_validation == len(splits["validation"])


def test_ensure_calibration_refuses_a_run_without_validation_images(run_copy):
    splits = json.loads((run_copy / "splits.json").read_text())
    (run_copy / "splits.json").write_text(json.dumps(splits | {"validation": []}))
    with pytest.raises(GanspectionError, match="--val-fraction"):
        scoring.ensure_calibration(run_copy, log=lambda *a: None)


# --------------------------------------------------------------------------------------------- patch_distance


def test_patch_distance_is_the_mean_of_the_largest_nearest_neighbour_distances_at_any_place():
    bank = np.array([[0.0, 0.0], [10.0, 0.0]])
    features = np.zeros((2, 2, 2, 2))
    features[0, 1, 1] = [10.0, 0.0]  # a good patch at another place than in the bank's image: distance 0
    features[1, 0, 1] = [5.0, 3.0]  # a new patch: nearest bank row at distance √34
    features[1, 1, 0] = [0.0, 1.0]  # at 1 from the bank; the image's other two patches are bank rows
    np.testing.assert_allclose(registry.patch_distance(features, bank, count=1), [0.0, np.sqrt(34.0)], atol=1e-5)
    np.testing.assert_allclose(registry.patch_distance(features, bank, count=2), [0.0, (np.sqrt(34.0) + 1) / 2],
                               atol=1e-5)


def test_patch_bank_covers_rare_good_patches_that_a_random_sample_drops():
    rng = np.random.default_rng(0)
    common = rng.normal(0, 0.1, size=(5000, 4))
    rare = np.full((3, 4), 8.0)  # 3 patches in 5003, e.g. a screw's tip
    features = np.concatenate([common, rare]).reshape(1, -1, 1, 4)
    bank = registry.patch_bank(features, size=64)
    assert bank.shape == (64, 4)
    assert registry.patch_distance(rare.reshape(1, 3, 1, 4), bank, count=3)[0] < 1e-6  # a rare good patch is familiar


PATCH_TERMS = pytest.mark.parametrize("name, output, bank", [
    ("patch_distance", "critic_patches", "patch_bank"),
    ("fine_patch_distance", "critic_fine_patches", "fine_patch_bank"),
])


@PATCH_TERMS
def test_patch_distance_fits_its_bank_on_training_images_else_leave_one_out(name, output, bank):
    validation, reference = model_outputs(6, 0), model_outputs(20, 1)
    term = registry.term(name)
    fitted, column = term.fit_on(validation, reference)
    np.testing.assert_allclose(column, registry.patch_distance(validation[output], fitted[bank]))
    _, honest = term.fit_on(validation, None)
    in_sample = registry.patch_distance(validation[output], registry.patch_bank(validation[output]))
    assert np.all(in_sample < 1e-2) and np.all(honest > 0.1)  # in sample every patch is in the bank: 0 (float32)


@PATCH_TERMS
def test_patch_distance_finds_a_patch_no_good_image_has(name, output, bank):
    validation, reference = model_outputs(8, 0), model_outputs(20, 1)
    defective = {key: values.copy() for key, values in model_outputs(8, 2).items()}
    defective[output][:, 2, 1] += 6.0  # one unfamiliar patch per image
    term = registry.term(name)
    fitted, good = term.fit_on(validation, reference)
    assert term.column(defective, fitted).min() > good.max()
    other = "critic_patches" if output == "critic_fine_patches" else "critic_fine_patches"
    unchanged = {**defective, other: model_outputs(8, 2)[other] + 6.0}  # the other stage's patches: not this term's
    np.testing.assert_array_equal(term.column(unchanged, fitted), term.column(defective, fitted))


@PATCH_TERMS
def test_heatmaps_show_the_patch_map_where_patch_distance_carries_the_score(name, output, bank):
    validation, reference = model_outputs(12, 0), model_outputs(20, 1)
    defective = model_outputs(2, 2)
    grid = defective[output].shape[1]  # 4 × 4 patches (stride 4 at 16 px), or 8 × 8 (stride 2)
    defective[output][:, grid - 1, grid // 4] += 6.0  # one unfamiliar patch per image: last row, a quarter across
    by_patches = cal.fit_calibration_from_outputs(validation, reference_outputs=reference, weights={name: 1.0})
    by_error = cal.fit_calibration_from_outputs(validation, reference_outputs=reference,
                                                weights={"normalized_map_max": 1.0})
    maps = by_patches.pixel_maps(defective, side=16)
    assert maps.shape == (2, 16, 16)
    stride = 16 // grid
    for image_map in maps:  # the peak lies in that patch's cell of the image
        row, column = np.unravel_index(np.argmax(image_map), image_map.shape)
        assert 16 - stride <= row < 16 and 4 <= column < 4 + stride
    np.testing.assert_array_equal(by_error.pixel_maps(defective, side=16), defective["error_map"])


def fixed_outputs_scorer(calibration, maps_on_demand=False):
    """A scorer of the contract whose forward gives fixed model outputs: its postprocess is what is tested."""
    from ganspection_tf.scorer import Scorer

    class Fixed(Scorer):
        threshold, image_size, keeps_error_map, resize = 0.0, 16, True, "stretch"

        def forward(self, batch):
            return model_outputs(3, 5)

    scorer = Fixed()
    scorer.calibration, scorer.maps_on_demand = calibration, maps_on_demand
    return scorer


def counted_full_searches(monkeypatch) -> list:
    """The bank shape of every full nearest-patch search made from now on."""
    searches, search = [], registry.nearest_patch_distances
    monkeypatch.setattr(registry, "nearest_patch_distances",
                        lambda features, bank: searches.append(np.shape(bank)) or search(features, bank))
    return searches


def test_score_and_heatmap_share_one_nearest_patch_search(monkeypatch):
    """The workstation's postprocess searches each bank once per batch for the patch terms' scores and the
    heatmap."""
    validation, reference = model_outputs(12, 0), model_outputs(20, 1)
    by_patches = cal.fit_calibration_from_outputs(validation, reference_outputs=reference,
                                                  weights={"patch_distance": 1.0})
    searches = counted_full_searches(monkeypatch)
    results = fixed_outputs_scorer(by_patches).postprocess(model_outputs(3, 5))
    banks = [np.shape(by_patches.parameters[bank]) for bank in ("patch_bank", "fine_patch_bank")]
    assert sorted(searches) == sorted(banks) and len(results) == 3  # each bank once: not again for the map
    expected = registry.patch_distance(model_outputs(3, 5)["critic_patches"], by_patches.parameters["patch_bank"])
    np.testing.assert_allclose([r.terms["patch_distance"] for r in results], expected)
    assert all(r.error_map.shape == (16, 16) for r in results)


def test_a_scorer_with_maps_on_demand_scores_without_the_full_search_and_maps_when_asked(monkeypatch):
    """The camera's postprocess: a patch term's score from the largest-distance search alone; a result's map, when
    first read, is the map the workstation computes with the score."""
    by_patches = cal.fit_calibration_from_outputs(model_outputs(12, 0), reference_outputs=model_outputs(20, 1),
                                                  weights={"fine_patch_distance": 1.0})
    eager = fixed_outputs_scorer(by_patches).postprocess(model_outputs(3, 5))
    searches = counted_full_searches(monkeypatch)
    deferred = fixed_outputs_scorer(by_patches, maps_on_demand=True).postprocess(model_outputs(3, 5))
    assert searches == [] and all(result.error_map is None for result in deferred)
    np.testing.assert_allclose([r.score for r in deferred], [r.score for r in eager], rtol=1e-5)
    np.testing.assert_allclose(deferred[1].pixel_map(), eager[1].error_map, rtol=1e-5)
    assert deferred[1].heatmap_at(32, 32).shape == (32, 32) and len(searches) == 1  # the map is kept once computed
