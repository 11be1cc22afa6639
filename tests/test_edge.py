"""The camera-side `EdgeScorer`: metadata checks, frame preprocessing parity, scoring, no TensorFlow."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from edge_support import edge_category, exported_bundle  # noqa: E402
from PIL import Image  # noqa: E402

from ganspection_tf import edge  # noqa: E402
from ganspection_tf.calibration import Calibration  # noqa: E402
from ganspection_tf.errors import GanspectionError  # noqa: E402
from ganspection_tf.images import read_image, resize_image  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return exported_bundle(tmp_path_factory, "int8", "combined")[0]


@pytest.fixture(scope="module")
def scorer(bundle):
    return edge.EdgeScorer(bundle)


@pytest.fixture
def bundle_copy(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def edit_metadata(folder, change):
    path = folder / "metadata.json"
    metadata = json.loads(path.read_text())
    change(metadata)
    path.write_text(json.dumps(metadata))


# ------------------------------------------------------------------------------------------------ metadata


def test_metadata_round_trip(bundle, scorer):
    metadata = edge.read_metadata(bundle)
    assert metadata.to_dict() == json.loads((bundle / "metadata.json").read_text())
    assert metadata.format_version == edge.FORMAT_VERSION
    calibration = Calibration.from_dict(metadata.calibration)
    assert Calibration.from_dict(calibration.to_dict()) == calibration == scorer.calibration
    assert (scorer.image_size, scorer.channels, scorer.terms) == (32, 3, list(calibration.terms))
    assert scorer.threshold == metadata.threshold == calibration.threshold
    assert scorer.preprocessing == metadata.preprocessing
    assert metadata.package_version and metadata.config_hash and metadata.details["scorer_weights"] > 0


def as_format_version_1(metadata):
    """metadata.json as the release before the numeric preprocessing spec wrote it (prose, top level)."""
    preprocessing = metadata.pop("preprocessing")
    metadata.update(format_version=1, image_size=preprocessing["image_size"], channels=preprocessing["channels"],
                    color_order="rgb",
                    resize="cv2.INTER_AREA stretch to image_size x image_size (aspect ratio not kept)",
                    normalisation="uint8 RGB/gray input; the model computes x / 127.5 - 1 itself")


def test_a_format_version_1_bundle_loads_and_scores_the_same(bundle, tmp_path):
    # Bundles of that release were neither levelled nor anything but stretched: compare with this bundle so.
    unlevelled = shutil.copytree(bundle, tmp_path / "unlevelled")
    edit_metadata(unlevelled, lambda m: m["preprocessing"].update(exposure_level=0.0))
    scorer = edge.EdgeScorer(unlevelled)
    old = shutil.copytree(bundle, tmp_path / "old")
    edit_metadata(old, as_format_version_1)
    old_scorer = edge.EdgeScorer(old)
    assert old_scorer.preprocessing == scorer.preprocessing and old_scorer.metadata.format_version == 1
    assert old_scorer.resize == "stretch" and old_scorer.exposure_level == 0
    frame = np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert old_scorer.score(frame).score == scorer.score(frame).score


CORRUPTIONS = {
    "truncated json": (lambda f: (f / "metadata.json").write_text('{"format": "ganspection-tf-edge-bu'),
                       "metadata.json: bundle metadata is corrupt"),
    "foreign json": (lambda f: (f / "metadata.json").write_text('{"class_name": "Functional", "config": {}}'),
                     "not a ganspection-tf edge bundle"),
    "json list": (lambda f: (f / "metadata.json").write_text("[1, 2]"), "not a ganspection-tf edge bundle"),
    "missing file": (lambda f: (f / "metadata.json").unlink(), "metadata.json: bundle metadata not found"),
    "newer version": (lambda f: edit_metadata(f, lambda m: m.update(format_version=3)), "format version 3"),
    "missing key": (lambda f: edit_metadata(f, lambda m: m.pop("model_sha256")), "missing keys \\['model_sha256'\\]"),
    "no preprocessing": (lambda f: edit_metadata(f, lambda m: m.pop("preprocessing")), "'preprocessing'"),
    "wrong type": (lambda f: edit_metadata(f, lambda m: m["preprocessing"].update(channels="3")),
                   "'preprocessing.channels' is '3'"),
    "bool for int": (lambda f: edit_metadata(f, lambda m: m["preprocessing"].update(image_size=True)),
                     "'preprocessing.image_size' is True"),
    "unknown resize": (lambda f: edit_metadata(f, lambda m: m["preprocessing"].update(interpolation="cubic")),
                       "'preprocessing.interpolation'"),
    "nan range": (lambda f: edit_metadata(f, lambda m: m["preprocessing"].update(model_max=float("nan"))),
                  "'preprocessing.model_max' is nan: it must be a finite number"),
    "nan threshold": (lambda f: edit_metadata(f, lambda m: m.update(threshold=float("nan"))),
                      "'threshold' is nan, not a finite number"),
    "infinite threshold": (lambda f: edit_metadata(f, lambda m: m.update(threshold=float("inf"))),
                           "'threshold' is inf, not a finite number"),
    "version 1 missing key": (lambda f: edit_metadata(f, lambda m: (as_format_version_1(m), m.pop("resize"))),
                              "missing keys \\['resize'\\]"),
    "terms disagree": (lambda f: edit_metadata(f, lambda m: m.update(terms=["latent"], outputs=["latent"])),
                       "differs from the calibration"),
    "broken calibration": (lambda f: edit_metadata(f, lambda m: m["calibration"].update(std=[0, 0, 0, 0, 0])),
                           "invalid calibration"),
    "unknown aspect": (lambda f: edit_metadata(f, lambda m: m["preprocessing"].update(aspect="squash")),
                       "'preprocessing.aspect' is 'squash'"),
    "model replaced": (lambda f: (f / "model.tflite").write_bytes(b"TFL3" + b"\0" * 64), "checksum"),
    "model missing": (lambda f: (f / "model.tflite").unlink(), "model.tflite: missing from the bundle"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_or_foreign_bundles_are_refused_in_one_line(case, bundle_copy):
    corrupt, message = CORRUPTIONS[case]
    corrupt(bundle_copy)
    with pytest.raises(GanspectionError, match=message) as error:
        edge.EdgeScorer(bundle_copy)
    assert "\n" not in str(error.value)


def test_a_model_that_does_not_match_its_metadata_is_refused(bundle_copy, tmp_path_factory):
    latent_bundle, _ = exported_bundle(tmp_path_factory, "int8", "latent")
    model = (latent_bundle / "model.tflite").read_bytes()  # a valid model, but without the combined outputs
    (bundle_copy / "model.tflite").write_bytes(model)
    edit_metadata(bundle_copy, lambda m: m.update(model_sha256=edge.hashlib.sha256(model).hexdigest()))
    with pytest.raises(GanspectionError, match="lacks the outputs"):
        edge.EdgeScorer(bundle_copy)


def test_a_missing_bundle_folder_is_refused(tmp_path):
    with pytest.raises(GanspectionError, match="no such bundle folder"):
        edge.EdgeScorer(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ preprocessing


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    """The same kind of pictures as PNG (RGB, gray, RGBA) and JPEG, in sizes and aspect ratios unlike 32×32."""
    folder = tmp_path_factory.mktemp("odd_files")
    source = min((edge_category(tmp_path_factory) / "test" / "hole").glob("*.png"))
    picture = Image.open(source).convert("RGB").resize((150, 90))
    picture.save(folder / "rgb.png")
    picture.convert("L").save(folder / "gray.png")
    rgba = picture.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    picture.save(folder / "photo.jpg", quality=90)
    picture.resize((31, 47)).save(folder / "small.png")
    return sorted(folder.iterdir())


def test_edge_preprocessing_matches_the_training_pipeline(odd_files, scorer):
    from ganspection_tf.data.pipeline import load_images

    assert scorer.exposure_level > 0  # the run chose a level from its training images; the bundle carries it
    trained_on, _ = load_images(odd_files, 32, 3, exposure_level=scorer.exposure_level)
    for i, path in enumerate(odd_files):
        from_camera = scorer.preprocess(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), color_order="bgr")
        from_file = scorer.preprocess(read_image(path), color_order="rgb")
        assert from_camera.shape == from_file.shape == (32, 32, 3)
        assert np.abs(from_camera.astype(int) - trained_on[i]).max() <= 1, path.name
        np.testing.assert_array_equal(from_file, trained_on[i])


@pytest.mark.parametrize("resize", ["pad", "crop"])
def test_edge_preprocessing_and_heatmaps_follow_the_bundles_resize_mode(odd_files, bundle_copy, resize):
    from ganspection_tf.data.pipeline import load_images

    edit_metadata(bundle_copy, lambda m: m["preprocessing"].update(aspect=resize))
    scorer = edge.EdgeScorer(bundle_copy)
    trained_on, _ = load_images(odd_files, 32, 3, resize=resize, exposure_level=scorer.exposure_level)
    for i, path in enumerate(odd_files):
        np.testing.assert_array_equal(scorer.preprocess(read_image(path), color_order="rgb"), trained_on[i])
    frame = read_image(odd_files[0])  # 150 × 90: the model saw the central 90 × 90 (crop) or all of it (pad)
    heatmap = scorer.score(frame, color_order="rgb", heatmap=True).heatmap
    assert heatmap.shape == (90, 150) and heatmap[:, 60:90].min() > 0
    unseen = np.concatenate([heatmap[:, :30], heatmap[:, -30:]], axis=1)
    assert (unseen.max() == 0) == (resize == "crop")


def test_a_part_photographed_in_dimmer_light_reaches_the_model_as_in_the_training_light(odd_files, scorer,
                                                                                          bundle_copy):
    photo = read_image(next(path for path in odd_files if path.name == "rgb.png"))
    dimmer = np.rint(photo * 0.85).astype(np.uint8)
    levelled = [scorer.preprocess(frame, color_order="rgb").astype(int) for frame in (photo, dimmer)]
    assert np.abs(levelled[0] - levelled[1]).max() <= 2  # rounding twice, nothing more
    edit_metadata(bundle_copy, lambda m: m["preprocessing"].pop("exposure_level"))  # a bundle from before levelling
    unlevelled = edge.EdgeScorer(bundle_copy)
    assert unlevelled.exposure_level == 0
    np.testing.assert_array_equal(unlevelled.preprocess(dimmer, color_order="rgb"),
                                  resize_image(dimmer, 32))


# ------------------------------------------------------------------------------------------------ scoring


def test_frames_of_any_size_and_channel_count_are_scored(scorer):
    rgb = np.random.default_rng(1).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    bgra = np.concatenate([bgr, np.full((120, 200, 1), 7, np.uint8)], axis=2)
    reference = scorer.score(rgb, color_order="rgb")
    assert scorer.score(bgr).score == reference.score == scorer.score(bgra).score
    assert set(reference.terms) == set(scorer.terms) and reference.latency_ms > 0
    assert reference.anomalous == (reference.score > scorer.threshold)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert scorer.score(gray).score == scorer.score(gray[..., None]).score
    with pytest.raises(GanspectionError, match="8-bit"):
        scorer.score(rgb.astype(np.uint16))


def test_terms_come_from_the_workstations_term_matrix(scorer):
    """The camera turns the raw outputs into terms with Calibration.term_matrix, like the workstation:
    normalized_map_max is the largest per-pixel z-score of the model's smoothed error map under the stored
    per-pixel Gaussian."""
    frame = np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    outputs = scorer.run_model(scorer.preprocess(frame, "rgb"))
    assert set(outputs) == {"error_map"} and outputs["error_map"].shape == (1, 32, 32)
    result = scorer.score(frame, color_order="rgb")
    calibration = scorer.calibration
    smoothed = cv2.GaussianBlur(outputs["error_map"][0].astype(np.float32), (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
    z_scores = (smoothed - np.asarray(calibration.parameters["map_mean"])) / np.asarray(
        calibration.parameters["map_std"])
    assert result.terms["normalized_map_max"] == pytest.approx(float(z_scores.max()), rel=1e-5)
    assert result.score == pytest.approx(float(calibration.combine(calibration.term_matrix(outputs))[0]), rel=1e-12)


def test_heatmap_covers_the_frame(scorer):
    frame = np.random.default_rng(2).integers(0, 256, (90, 150, 3), dtype=np.uint8)
    result = scorer.score(frame, heatmap=True)
    assert result.heatmap.shape == (90, 150) and result.heatmap.dtype == np.float32
    assert np.all(result.heatmap >= 0) and result.heatmap.max() > 0
    assert scorer.score(frame).heatmap is None


def test_heatmap_needs_a_combined_bundle(tmp_path_factory):
    latent = edge.EdgeScorer(exported_bundle(tmp_path_factory, "int8", "latent")[0])
    assert not latent.has_heatmap
    with pytest.raises(GanspectionError, match="--score combined"):
        latent.score(np.zeros((40, 40, 3), np.uint8), heatmap=True)


def test_score_file_equals_scoring_the_decoded_frame(scorer, odd_files):
    path = odd_files[0]
    assert scorer.score_file(path).score == scorer.score(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)).score


def test_threads_option(bundle):
    frame = np.full((64, 64, 3), 90, np.uint8)
    one, two = edge.EdgeScorer(bundle, threads=1), edge.EdgeScorer(bundle, threads=2)
    assert one.score(frame).score == pytest.approx(two.score(frame).score, rel=1e-6)
    with pytest.raises(GanspectionError, match="--threads"):
        edge.EdgeScorer(bundle, threads=0)


# ------------------------------------------------------------------------------------------------ no TensorFlow


def test_scoring_never_imports_tensorflow(bundle, odd_files, tmp_path):
    """The camera side, CLI included, runs with TensorFlow and Keras made unimportable."""
    out = tmp_path / "lines.jsonl"
    script = textwrap.dedent(f"""
        import sys

        class NoTensorFlow:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, NoTensorFlow())
        import numpy as np
        from ganspection_tf.edge import EdgeScorer
        from ganspection_tf.cli import main

        scorer = EdgeScorer({str(bundle)!r})
        scorer.score(np.zeros((48, 64, 3), np.uint8), heatmap=True)
        scorer.score_file({str(odd_files[0])!r})
        code = main(["camera", {str(bundle)!r}, "--source", {str(odd_files[0].parent)!r}, "--out", {str(out)!r}])
        assert code == 0, code
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not loaded, loaded
        print("no tensorflow")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("no tensorflow")
    assert len(out.read_text().splitlines()) == len(odd_files)
