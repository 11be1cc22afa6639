"""`export_bundle` / `ganspection-tf export`: every quantisation, the parity gate, int8 without a score cap."""

import json
import os
import re
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from edge_support import edge_category, exported_bundle, quiet, trained_run  # noqa: E402

from ganspection_tf import (convert, edge, export, int8_acceptance, parity, representative, scoring,  # noqa: E402
                            synthetic_validation)
from ganspection_tf.calibration import Calibration, fit_calibration, fit_calibration_from_outputs  # noqa: E402
from ganspection_tf.run import RunFolder  # noqa: E402
from ganspection_tf.terms import MODEL_TERMS, outputs_needed  # noqa: E402
from ganspection_tf.cli import main  # noqa: E402
from ganspection_tf.errors import GanspectionError  # noqa: E402

# Spearman ρ of TFLite vs Keras combined scores on the 50 synthetic test images that each mode must reach
# (measured on this 40-step, width-8, 32 px model: none 1.0, float16 1.0, dynamic 0.9997, int8 0.9976; int8 with
# training seeds 1-3: 0.9963, 0.9975, 0.9954).
MIN_SPEARMAN = {"none": 0.999, "float16": 0.995, "dynamic": 0.98, "int8": 0.98, "int16x8": 0.98}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory)


def bundle(tmp_path_factory, quantize="int8", score="combined"):
    return exported_bundle(tmp_path_factory, quantize, score)


# ------------------------------------------------------------------------------------------------ modes


# int16x8 converts, but the converter quantises the layer norms' SQUARED_DIFFERENCE to int16 and LiteRT has no
# int16 kernel for it: export must refuse with a one-line error (convert.check_runs), not a traceback. Strict:
# when the toolchain runs it, this XPASS fails and the marker must go (then the mode passes the gate here).
INT16X8_UNSUPPORTED = pytest.mark.xfail(raises=GanspectionError, strict=True,
                                        reason="LiteRT lacks an int16 SQUARED_DIFFERENCE kernel (layer norms)")


@pytest.mark.parametrize("quantize", [pytest.param(q, marks=INT16X8_UNSUPPORTED) if q == "int16x8" else q
                                      for q in edge.QUANTIZATIONS])
def test_every_quantisation_exports_and_passes_the_parity_gate(quantize, tmp_path_factory):
    out, report = bundle(tmp_path_factory, quantize)
    assert sorted(p.name for p in out.iterdir()) == [".ganspection-tf.json", "metadata.json", "model.tflite",
                                                     "parity.json"]
    assert report["passed"] == (report["auroc_drop"] <= parity.AUROC_TOLERANCE)
    assert report["forced"] == (not report["passed"])
    # int8's verdict on this 40-step toy model depends on the CPU's int8 kernels (benchmarks/RESULTS.md, "The toy
    # model's int8 gate"): its ranking is asserted below; real runs' int8 parity is in RESULTS.md, "Edge latency".
    assert report["passed"] or quantize == "int8"
    assert report["evaluation"] == "test" and report["images"] == 50 and report["skipped"] == []
    assert report["spearman"] >= MIN_SPEARMAN[quantize], report
    assert json.loads((out / "parity.json").read_text()) == json.loads(json.dumps(report))
    metadata = edge.read_metadata(out)
    assert metadata.quantization == quantize and metadata.score == "combined" and metadata.heatmap
    if quantize == "none":  # same float arithmetic, different kernels: only rounding noise may differ
        assert report["max_abs_diff"] < 1e-3
    assert report["latency_ms"] > 0  # the bundle's own model, measured on this CPU with one thread
    assert ("latency_ms_float32" in report) == (quantize == "dynamic")  # dynamic is compared with float32


def test_converted_models_hold_their_weights(run_dir, tmp_path_factory):
    # A bare tf.Module around Keras 3 layers converts to a weightless graph; the size check must refuse that.
    sizes = {}
    for quantize in ("none", "int8"):
        out, _ = bundle(tmp_path_factory, quantize)
        metadata = edge.read_metadata(out)
        sizes[quantize] = (out / "model.tflite").stat().st_size
        assert sizes[quantize] >= convert.BYTES_PER_WEIGHT[quantize] * metadata.details["scorer_weights"]
    # The default scorer (normalized_map_max) keeps the encoder in float (it outputs the error map), so
    # the int8 saving comes from the generator: its upsampling kernels shrink from 4 bytes a weight to 1.
    generator = RunFolder(run_dir).load_model().scoring_networks()[1]
    upsampling_weights = sum(layer.count_params() for layer in generator.layers if layer.name.startswith("gen_up"))
    assert upsampling_weights > 5000
    assert sizes["int8"] < sizes["none"] - 2 * upsampling_weights
    with pytest.raises(GanspectionError, match="weights were lost"):
        convert.check_weights_present(b"\0" * 5000, weight_count=100_000, quantize="none")


def test_int8_score_is_not_capped_at_the_calibration_range(run_dir, tmp_path_factory):
    """Images far from the training data score above every good validation image, each with its own score.

    Plain full-integer conversion clips every tensor at the range of the representative images, so all such
    images came out with one and the same capped critic term; the float islands must prevent that.
    """
    out, _ = bundle(tmp_path_factory, "int8")
    scorer = edge.EdgeScorer(out)
    size = scorer.image_size
    rng = np.random.default_rng(0)
    far_off = [
        rng.integers(0, 256, (size, size, 3), dtype=np.uint8),  # noise
        np.tile(np.array([255, 0, 0], np.uint8), (size, size, 1)),  # saturated red (a blown-out grey frame is
        # levelled to a plain grey by a run with --exposure-level, like this one)
        np.repeat(np.kron([[0, 255], [255, 0]], np.ones((size // 2, size // 2)))[..., None], 3, 2).astype(np.uint8),
    ]
    validation = [scorer.score_file(p).score for p in RunFolder(run_dir).validation_images()]
    keras_terms = scoring.compute_terms(scoring.build_term_model(RunFolder(run_dir).load_model()),
                                        scorer.preprocess(far_off, color_order="rgb"))  # levelled like the camera's
    keras_scores = scorer.calibration.combine(scorer.calibration.term_matrix(keras_terms))
    assert min(keras_scores) > max(validation)  # the premise: Keras sees them as far off
    lite_scores = np.array([scorer.score(image, color_order="rgb").score for image in far_off])
    assert min(lite_scores) > max(validation)
    assert len(set(np.round(lite_scores, 6))) == len(far_off)
    np.testing.assert_allclose(lite_scores, keras_scores, rtol=0.25)  # no cap: they follow the float scores


def test_int8_keeps_the_score_arithmetic_in_float(tmp_path_factory):
    from ai_edge_litert.interpreter import Interpreter

    out, _ = bundle(tmp_path_factory, "int8")
    interpreter = Interpreter(model_path=str(out / "model.tflite"))
    dtypes = {d["index"]: d["dtype"] for d in interpreter.get_tensor_details()}
    producers = {o: op for op in interpreter._get_ops_details() for o in op["outputs"]}
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    convs = {names[op["outputs"][0]]: dtypes[op["outputs"][0]] for op in interpreter._get_ops_details()
             if op["op_name"] in ("CONV_2D", "TRANSPOSE_CONV")}
    integer = [name for name, dtype in convs.items() if dtype == np.int8]
    generator = [name for name in convs if "gen_" in name.split(";")[-1]]
    # the generator upsamples with sub-pixel convolutions (networks.SubpixelConv2DTranspose), LiteRT's faster form
    assert "TRANSPOSE_CONV" not in {op["op_name"] for op in interpreter._get_ops_details()}
    assert len(generator) >= 4 and set(generator) - set(integer) == {n for n in generator if "gen_image" in n}
    # The generator is integer but for its image; float: the encoder (the default normalized_map_max divides the
    # error map by small per-pixel spreads, which amplifies int8 noise of the code the reconstruction comes from).
    assert all(("enc_" in name or "smoothed_error_map" in name or "gen_image" in name)
               for name in convs if name not in integer)
    assert any("enc_conv" in name for name in convs)
    for output in interpreter.get_output_details():
        producer = producers[output["index"]]
        assert producer["op_name"] != "DEQUANTIZE", names[output["index"]]  # computed in float, not clipped int8
        assert not any(dtypes.get(i) == np.int8 for i in producer["inputs"])  # float (or int32 axes) in
    assert {"enc_latent", "gen_image"} <= set(edge.read_metadata(out).details["int8_float_layers"])
    # and what those output layers read is float too: no int8 rounding between the last normalisation and them
    for op in interpreter._get_ops_details():
        output_layer = re.search(r"/(gen_image|enc_latent)(_\d+)?/", names[op["outputs"][0]].split(";")[-1])
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED") and output_layer:
            reads = op["inputs"][0]
            assert dtypes[reads] == np.float32 and producers[reads]["op_name"] != "DEQUANTIZE", names[reads]


def test_int8_keeps_in_float_only_the_layers_its_check_needs(run_dir, tmp_path, tmp_path_factory, monkeypatch):
    """The candidates go from fewest float layers up; the first that scores the validation images and their
    synthetic-defect copies like float is kept, else the whole encoder stays float (the tiny run: none passes)."""
    fallback, _ = bundle(tmp_path_factory, "int8")
    tried = edge.read_metadata(fallback).details["int8_candidates"]
    assert tried[0]["float_layers"] == [] and len(tried) == convert.MAX_EXTRA_FLOAT_LAYERS + 1
    assert [len(t["float_layers"]) for t in tried] == list(range(len(tried)))  # one more layer each time
    assert not any(t["accepted"] for t in tried)
    assert {"enc_conv0", "enc_conv1"} <= set(edge.read_metadata(fallback).details["int8_float_layers"])
    monkeypatch.setattr(int8_acceptance, "MIN_SPEARMAN", 0.5)
    monkeypatch.setattr(int8_acceptance, "MAX_AUROC_DROP", 1.0)
    out = tmp_path / "looser"
    export.export_bundle(run_dir, out, quantize="int8", force=True, log=quiet)
    details = edge.read_metadata(out).details
    assert len(details["int8_candidates"]) == 1 and details["int8_candidates"][0]["accepted"]
    assert not {"enc_conv0", "enc_conv1"} & set(details["int8_float_layers"])  # the encoder is int8 now
    assert details["model_bytes"] < edge.read_metadata(fallback).details["model_bytes"]  # int8 weights are smaller
    assert edge.read_metadata(out).quantization == "int8"  # the reconstruction scorer: int8 is worth shipping


def test_int8_that_hardly_shrinks_the_bundle_is_exported_as_float32(run_dir, tmp_path, monkeypatch):
    """A run scored by fine_patch_distance needs one convolution beside its bank of good patches: int8 saves under
    MIN_INT8_SAVING of the bundle (nothing at all when its check keeps the convolution in float), so the bundle is
    float32 and scores exactly like Keras; with a lower bar the int8 convolution ships."""
    run = RunFolder(shutil.copytree(run_dir, tmp_path / "run"))
    scoring.ensure_calibration(run, weights={"fine_patch_distance": 1.0}, log=quiet)
    calls = []

    def accepts_the_second_candidate(self, tflite_model):
        calls.append(len(tflite_model))
        return {"spearman": 1.0, "auroc": None, "auroc_float": None, "accepted": len(calls) == 2}

    monkeypatch.setattr(int8_acceptance.Int8Acceptance, "__call__", accepts_the_second_candidate)
    out = tmp_path / "bundle"
    report = export.export_bundle(run.path, out, quantize="int8", log=quiet)
    metadata = edge.read_metadata(out)
    assert len(calls) == 2 and metadata.details["int8_float_layers"] == []  # the float32 model's: none
    assert [t["float_layers"] for t in metadata.details["int8_candidates"]] == [[], ["crit_conv0"]]
    assert metadata.quantization == "none" and metadata.details["requested_quantization"] == "int8"
    assert report["quantization"] == "none" and report["max_abs_diff"] < 1e-4
    monkeypatch.setattr(int8_acceptance.Int8Acceptance, "__call__", lambda self, model: {
        "spearman": 1.0, "auroc": None, "auroc_float": None, "accepted": True})
    export.export_bundle(run.path, tmp_path / "int8", quantize="int8", force=True, log=quiet)
    assert edge.read_metadata(tmp_path / "int8").quantization == "none"  # its int8 convolution saves a few KiB
    monkeypatch.setattr(export, "MIN_INT8_SAVING", 0.0)
    export.export_bundle(run.path, tmp_path / "int8", quantize="int8", force=True, log=quiet)
    shipped = edge.read_metadata(tmp_path / "int8")
    assert shipped.quantization == "int8" and shipped.details["model_bytes"] < metadata.details["model_bytes"]


def test_the_int8_check_scores_good_training_and_validation_images_and_copies_never_a_test_image(run_dir, monkeypatch):
    """int8 against float on the same images: every good image of the run (validation and training), each with
    its synthetic-defect copies; the test split is not read."""
    run = RunFolder(run_dir)
    read, load_images = [], int8_acceptance.pipeline.load_images

    def recording_load_images(paths, *args, **kwargs):
        read.extend(paths)
        return load_images(paths, *args, **kwargs)

    monkeypatch.setattr(int8_acceptance.pipeline, "load_images", recording_load_images)
    model = run.load_model()
    term_model = scoring.build_term_model(model)
    calibration = export.score_calibration(run, model, term_model, "combined", quiet)
    scorer = convert.build_scorer(term_model, calibration.terms)
    check = int8_acceptance.Int8Acceptance.for_run(run, scorer, calibration)
    good = set(run.validation_images()) | set(run.training_images())
    assert len(good) > len(run.validation_images()) and set(read) == good
    copies = synthetic_validation.COPIES_PER_IMAGE
    assert np.sum(check.labels == 0) == len(good) and np.sum(check.labels == 1) == copies * len(good)


def test_int8_representative_set_is_augmented_to_one_hundred(run_dir, tmp_path, tmp_path_factory):
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted((edge_category(tmp_path_factory) / "train" / "good").glob("*.png"))[:7]:
        (few / path.name).write_bytes(path.read_bytes())
    images = representative.representative_images(run_dir, 32, 3, calibration_dir=few, log=quiet)
    assert images.shape == (representative.MIN_REPRESENTATIVE, 32, 32, 3) and images.dtype == np.uint8
    assert len({image.tobytes() for image in images}) == representative.MIN_REPRESENTATIVE  # copies differ
    from_run = representative.representative_images(run_dir, 32, 3, log=quiet)
    assert len(from_run) == representative.MIN_REPRESENTATIVE  # 32 training images, augmented
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GanspectionError, match="--calibration"):
        representative.representative_images(run_dir, 32, 3, calibration_dir=empty, log=quiet)


# ------------------------------------------------------------------------------------------------ scores


def test_latent_score_exports_the_encoder_alone(run_dir, tmp_path_factory):
    out, report = bundle(tmp_path_factory, "int8", "latent")
    combined, _ = bundle(tmp_path_factory, "int8", "combined")
    metadata = edge.read_metadata(out)
    # --score latent is latent_mahalanobis: the model outputs the code, the camera computes the distance.
    assert metadata.terms == ["latent_mahalanobis"] and metadata.outputs == ["code"] and not metadata.heatmap
    assert metadata.calibration["terms"] == ["latent_mahalanobis"] and metadata.calibration["weights"] == [1.0]
    assert len(metadata.calibration["code_mean"]) == 8
    encoder = RunFolder(run_dir).load_model().scoring_networks()[0]
    assert metadata.details["scorer_weights"] == encoder.count_params()  # no G, no D
    assert metadata.details["scorer_weights"] < 0.5 * edge.read_metadata(combined).details["scorer_weights"]
    assert report["spearman"] > 0.9


def test_critic_score_exports_encoder_and_critic(run_dir, tmp_path):
    out = tmp_path / "critic"
    report = export.export_bundle(run_dir, out, quantize="none", score="critic", log=quiet)
    metadata = edge.read_metadata(out)
    assert metadata.terms == ["critic"] and not metadata.heatmap and report["max_abs_diff"] < 1e-3
    encoder, _, critic = RunFolder(run_dir).load_model().scoring_networks()
    assert metadata.details["scorer_weights"] == encoder.count_params() + critic.count_params()  # no generator


def test_a_patch_distance_scorer_needs_only_the_critics_first_stages(run_dir):
    model = RunFolder(run_dir).load_model()
    scorer = convert.build_scorer(scoring.build_term_model(model), ["patch_distance"], with_error_map=False)
    critic = model.scoring_networks()[2]
    stages = ("crit_conv0", "crit_conv1", "crit_norm1")  # up to the patch features (stride 4); no z path, no head
    assert convert.weights_needed(scorer) == sum(critic.get_layer(name).count_params() for name in stages)
    assert convert.weights_needed(scorer) < 0.2 * scorer.count_params()  # count_params: the whole critic


def test_a_run_scored_by_patch_distance_ships_no_reconstruction_and_still_draws_heatmaps(run_dir, tmp_path):
    """Its heatmap is the patch map (Calibration.map_term): the bundle holds the critic's first stages only, no
    encoder, no generator, no error map, and the camera's heatmaps are the workstation's."""
    run = RunFolder(shutil.copytree(run_dir, tmp_path / "run"))
    calibration = scoring.ensure_calibration(run, weights={"patch_distance": 1.0}, log=quiet)
    out = tmp_path / "bundle"
    export.export_bundle(run.path, out, quantize="none", log=quiet)
    metadata = edge.read_metadata(out)
    assert metadata.outputs == ["critic_patches"] and metadata.heatmap
    critic = run.load_model().scoring_networks()[2]
    stages = ("crit_conv0", "crit_conv1", "crit_norm1")
    assert metadata.details["scorer_weights"] == sum(critic.get_layer(name).count_params() for name in stages)
    camera = edge.EdgeScorer(out)
    workstation = scoring.KerasScorer.for_run(run, scoring.build_term_model(run.load_model()), calibration)
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    on_camera, on_workstation = camera.score(image, heatmap=True), workstation.score(image, heatmap=True)
    assert on_camera.heatmap.shape == (40, 48) and on_camera.heatmap.max() > 0
    np.testing.assert_allclose(on_camera.heatmap, on_workstation.heatmap, atol=1e-3)


def test_combined_bundle_scores_like_the_runs_calibration(run_dir, tmp_path_factory):
    out, _ = bundle(tmp_path_factory, "int8")
    metadata = edge.read_metadata(out)
    stored = Calibration.from_dict(json.loads(RunFolder(run_dir).calibration_path.read_text()))
    shipped = Calibration.from_dict(metadata.calibration)
    # Only the terms with a non-zero weight are computed on the camera; the scores are exactly the same.
    assert shipped.terms == [t for t, w in zip(stored.terms, stored.weights) if w]
    assert sorted(metadata.outputs) == sorted(outputs_needed(shipped.terms, with_error_map=True))
    # The Gaussians ship only with the terms that use them (the score is chosen per run: score_choice.py).
    uses_map, uses_code = "normalized_map_max" in shipped.terms, "latent_mahalanobis" in shipped.terms
    assert ("map_mean" in shipped.parameters) == uses_map and ("code_mean" in shipped.parameters) == uses_code
    assert all(shipped.parameters[k] == stored.parameters[k] for k in shipped.parameters)
    assert "code_mean" in stored.parameters and "map_mean" in stored.parameters
    terms = np.random.default_rng(0).normal(1.0, 0.5, (50, len(stored.terms)))
    kept = [stored.terms.index(t) for t in shipped.terms]
    np.testing.assert_array_equal(shipped.combine(terms[:, kept]), stored.combine(terms))
    assert metadata.threshold == stored.threshold and metadata.config_hash == stored.config_hash
    preprocessing = metadata.preprocessing
    assert (preprocessing.image_size, preprocessing.channels, preprocessing.color_order) == (32, 3, "rgb")
    assert (preprocessing.interpolation, preprocessing.aspect) == ("area", "stretch")


def test_terms_that_count_keeps_every_term_for_mahalanobis():
    matrix = np.random.default_rng(1).normal(size=(30, 5))
    five = ["latent", "cycle", "reconstruction", "critic_feature", "critic"]
    mahalanobis = fit_calibration(matrix, five, weights=[1.0] * 5, method="mahalanobis")
    assert export.terms_that_count(mahalanobis) == mahalanobis
    weighted = fit_calibration(matrix, five, weights={"latent": 1.0, "critic": 0.5})
    assert export.terms_that_count(weighted).terms == ["latent", "critic"]


def test_terms_that_count_keeps_each_gaussian_only_for_its_term():
    rng = np.random.default_rng(2)
    outputs = {term: rng.normal(size=30) for term in MODEL_TERMS}
    outputs["code"] = rng.normal(size=(30, 4))
    outputs["error_map"] = np.abs(rng.normal(size=(30, 8, 8)))
    outputs["critic_patches"] = rng.normal(size=(30, 2, 2, 3))
    outputs["critic_fine_patches"] = rng.normal(size=(30, 4, 4, 2))
    default = export.terms_that_count(fit_calibration_from_outputs(outputs))
    assert default.terms == ["normalized_map_max"] and np.asarray(default.parameters["map_mean"]).shape == (8, 8)
    assert set(default.parameters) == {"map_mean", "map_std"}
    assert default.to_dict()["code_mean"] is None and default.to_dict()["code_whitening"] is None
    assert outputs_needed(default.terms) == ["error_map"]
    code_only = export.terms_that_count(fit_calibration_from_outputs(outputs, weights={"latent_mahalanobis": 1.0}))
    assert code_only.terms == ["latent_mahalanobis"] and len(code_only.parameters["code_mean"]) == 4
    assert set(code_only.parameters) == {"code_mean", "code_whitening"}
    without = export.terms_that_count(fit_calibration_from_outputs(outputs, weights={"map_max": 1.0}))
    assert without.terms == ["map_max"] and without.parameters == {}
    patches = export.terms_that_count(fit_calibration_from_outputs(outputs, weights={"patch_distance": 1.0}))
    assert patches.terms == ["patch_distance"] and set(patches.parameters) == {"patch_bank", "patch_score_count"}
    assert outputs_needed(patches.terms) == ["critic_patches"]
    fine = export.terms_that_count(fit_calibration_from_outputs(outputs, weights={"fine_patch_distance": 1.0}))
    assert fine.terms == ["fine_patch_distance"]
    assert set(fine.parameters) == {"fine_patch_bank", "fine_patch_score_count"}
    assert outputs_needed(fine.terms) == ["critic_fine_patches"]


# ------------------------------------------------------------------------------------------------ the gate


def test_a_failed_gate_leaves_no_bundle_and_force_writes_one(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(parity, "AUROC_TOLERANCE", -1.0)  # no export can pass this
    out = tmp_path / "bundle"
    with pytest.raises(GanspectionError, match="parity gate failed.*no bundle written"):
        export.export_bundle(run_dir, out, quantize="none", score="latent", log=quiet)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a staging folder
    report = export.export_bundle(run_dir, out, quantize="none", score="latent", force=True, log=quiet)
    assert report["forced"] and not report["passed"]
    assert json.loads((out / "parity.json").read_text())["forced"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_export_replaces_an_old_bundle_but_never_files_it_did_not_write(run_dir, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(GanspectionError, match="did not write .notes.txt"):
        export.export_bundle(run_dir, out, quantize="none", score="latent", log=quiet)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()
    export.export_bundle(run_dir, out, quantize="none", score="latent", log=quiet)
    export.export_bundle(run_dir, out, quantize="dynamic", score="latent", log=quiet)  # our own bundle: replaced
    assert edge.read_metadata(out).quantization == "dynamic"
    (out / "extra.txt").write_text("the user's")
    with pytest.raises(GanspectionError, match="extra.txt"):
        export.export_bundle(run_dir, out, quantize="none", score="latent", log=quiet)
    export.export_bundle(run_dir, out, quantize="none", score="latent", log=quiet, overwrite=True)
    assert edge.read_metadata(out).quantization == "none" and (out / "extra.txt").read_text() == "the user's"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_unknown_options_are_refused(run_dir, tmp_path):
    with pytest.raises(GanspectionError, match="--quantize int4"):
        export.export_bundle(run_dir, tmp_path / "b", quantize="int4")
    with pytest.raises(GanspectionError, match="--score"):
        export.export_bundle(run_dir, tmp_path / "b", score="pixels")


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_export_prints_the_parity_figures(run_dir, tmp_path, capsys):
    out = tmp_path / "bundle"
    code = main(["export", str(run_dir), "--tflite", "--quantize", "dynamic", "--score", "latent", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert printed["bundle"] == str(out) and printed["passed"] is True and printed["images"] == 50
    assert {"max_abs_diff", "spearman", "auroc_keras", "auroc_tflite"} <= set(printed)
    parity_line = next(line for line in captured.err.splitlines() if line.startswith("parity on 50 test images"))
    assert f"; model {printed['latency_ms']:.3g} ms per image (this CPU, 1 thread)" in parity_line
    # dynamic is measured against the float32 conversion of the same model; slower than 2× must warn, with both
    report = json.loads((out / "parity.json").read_text())
    slow = report["latency_ms"] > export.SLOW_FACTOR * report["latency_ms_float32"]
    warning = [line for line in captured.err.splitlines() if line.startswith("warning: --quantize dynamic runs")]
    assert len(warning) == int(slow), captured.err
    if slow:
        assert f"{report['latency_ms']:.3g} ms per image" in warning[0]
        assert f"({report['latency_ms_float32']:.3g} ms;" in warning[0]


def test_cli_export_requires_the_tflite_flag(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--out", str(tmp_path / "b")]) == 2
    assert "export needs --tflite" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
