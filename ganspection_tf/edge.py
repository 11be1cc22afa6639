"""The camera-side scorer: an edge bundle (``model.tflite`` + ``metadata.json``) run with LiteRT, no TensorFlow.

This module owns the bundle format; ``export.py`` (TensorFlow side) writes it, :class:`EdgeScorer` reads it.
It imports numpy, OpenCV, Pillow, ``ai_edge_litert`` and the TF-free package modules only, so it runs on the
base install (a test checks that ``tensorflow`` never appears in ``sys.modules``).

:class:`EdgeScorer` is the LiteRT implementation of the scorer contract (``scorer.Scorer``; the workstation's is
``scoring.KerasScorer``), so a frame is scored like the workstation scores a file, by the same code except step 3:

1. ``images.frame_to_rgb`` (BGR(A) from OpenCV or RGB(A), 1/3/4 channels, to the bundle's channel count),
2. ``images.resize_image`` (the bundle's numeric preprocessing: cv2.INTER_AREA to the model size with the run's
   ``aspect`` — stretch, pad or crop — the training resize rule),
3. the TFLite model (uint8 in; it scales to [-1, 1] itself) computes the raw outputs (score terms, the code,
   the error map); a run inspected by tiles (``tiles.py``) has the tiling in this model, so the camera resizes
   to the inspected size (the preprocessing's ``image_size``; ``tile_size`` in the metadata's details) and gets
   per-image outputs like the workstation,
4. ``Scorer.postprocess``: ``Calibration.term_matrix`` makes the terms from them (normalized_map_max from the
   error map, latent_mahalanobis from the code) and ``Calibration.combine`` the score, in numpy;
   ``score > threshold`` decides.

Step 4 runs in float64 numpy on purpose: a full-integer model would clip its output at the range seen on the
representative images, so every strongly anomalous frame would get the same capped score.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from ganspection_tf import bundle_metadata, console
from ganspection_tf.artifacts import read_json
from ganspection_tf.calibration import Calibration
from ganspection_tf.errors import GanspectionError
from ganspection_tf.scorer import ScoreResult, Scorer
from ganspection_tf.terms import BY_NAME, SCORES, TERMS, outputs_needed

BUNDLE_FORMAT, FORMAT_VERSION = bundle_metadata.FORMAT, bundle_metadata.FORMAT_VERSION
MODEL_FILE, METADATA_FILE, PARITY_FILE = "model.tflite", "metadata.json", "parity.json"
INPUT_NAME = "image"
QUANTIZATIONS = bundle_metadata.QUANTIZATIONS
_FIX = "re-export it with 'ganspection-tf export RUN_DIR --tflite --out BUNDLE_DIR'"


EdgeResult = ScoreResult  # the camera's name for the one result type (``scorer.py``)


class EdgeScorer(Scorer):
    """The LiteRT implementation of the scorer contract (``scorer.Scorer``): loads and checks a bundle, then
    scores uint8 frames of any size with 1, 3 or 4 channels."""

    def __init__(self, bundle_dir, threads: int | None = None):
        self.bundle_dir = Path(bundle_dir)
        self.metadata = read_metadata(self.bundle_dir)
        self.calibration = Calibration.from_dict(self.metadata.calibration, source=str(self._metadata_path),
                                                 fix=_FIX)
        self.preprocessing = self.metadata.preprocessing
        self.image_size, self.channels = self.preprocessing.image_size, self.preprocessing.channels
        self.resize = self.preprocessing.aspect  # the run's --resize
        self.exposure_level = self.preprocessing.exposure_level  # the run's --exposure-level
        self.terms = list(self.metadata.terms)
        self.threshold = float(self.calibration.threshold)
        self.has_heatmap = self.keeps_error_map = self.metadata.heatmap
        self.maps_on_demand = True  # a frame's heatmap only when asked for (camera: anomalous frames it saves)
        self._runner = self._load_model(threads)

    @property
    def _metadata_path(self) -> Path:
        return self.bundle_dir / METADATA_FILE

    def forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Step 3: raw model outputs of a uint8 (N, S, S, C) batch; the TFLite model takes one image at a time."""
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        single = [self._runner(**{INPUT_NAME: batch[i : i + 1]}) for i in range(len(batch))]
        return {name: np.concatenate([outputs[name] for outputs in single]) for name in single[0]} if single else {}

    def run_model(self, image_uint8: np.ndarray) -> dict[str, np.ndarray]:
        """Step 3 alone for one preprocessed image: raw model outputs (terms (1,), code (1, d), error map (1, S, S))."""
        return self.forward(np.asarray(image_uint8)[np.newaxis])

    def _check_heatmap_request(self, heatmap: bool) -> None:
        if heatmap and not self.has_heatmap:
            raise GanspectionError(
                f"{self._metadata_path}: this bundle was exported with --score {self.metadata.score}, which has "
                "no reconstruction to draw a heatmap from; export with --score combined for heatmaps"
            )

    # ------------------------------------------------------------------------------------------------ loading

    def _load_model(self, threads):
        path = self.bundle_dir / MODEL_FILE
        data = _read_model_bytes(path)
        if hashlib.sha256(data).hexdigest() != self.metadata.model_sha256:
            raise GanspectionError(f"{path}: does not match the checksum in {METADATA_FILE} (corrupted or "
                                   f"replaced); {_FIX}")
        if threads is not None and (int(threads) != threads or threads < 1):
            raise GanspectionError(f"--threads {threads}: must be a positive integer")
        try:
            # LiteRT announces its XNNPACK delegate on stderr when it first allocates: do that here, quietly.
            with console.native_output_captured():
                interpreter = Interpreter(model_content=data, num_threads=threads)
                interpreter.allocate_tensors()
                runner = interpreter.get_signature_runner()
        except (ValueError, RuntimeError) as error:
            raise GanspectionError(f"{path}: LiteRT cannot load it ({first_line(error)}); {_FIX}") from None
        self._check_signature(runner, path)
        self._interpreter = interpreter  # the runner needs the interpreter alive
        return runner

    def _check_signature(self, runner, path):
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        expected_shape = [1, self.image_size, self.image_size, self.channels]
        details = inputs.get(INPUT_NAME)
        if details is None or list(details["shape"]) != expected_shape or details["dtype"] != np.uint8:
            raise GanspectionError(
                f"{path}: input does not match {METADATA_FILE} (expected uint8 {expected_shape}, "
                f"got {_describe(details)}); {_FIX}"
            )
        missing = [name for name in self.metadata.outputs if name not in outputs]
        if missing:
            raise GanspectionError(f"{path}: lacks the outputs {missing} listed in {METADATA_FILE}; {_FIX}")
        quantized = [name for name in self.metadata.outputs if outputs[name]["dtype"] != np.float32]
        if quantized:  # every quantisation keeps float32 outputs: the score arithmetic must not see raw integers
            raise GanspectionError(f"{path}: the outputs {quantized} are not float32; {_FIX}")
        self._check_calibration_shapes(outputs)

    def _check_calibration_shapes(self, outputs):
        """The terms' fitted parameters (e.g. the per-pixel and code Gaussians) must fit the model's outputs
        (``Term.shaped_like``), or no frame could be scored."""
        parameters = self.calibration.parameters
        pairs = [(key, output, False) for term in BY_NAME.values() for key, output in term.shaped_like]
        pairs += [(key, output, True) for term in BY_NAME.values() for key, output in term.rows_like]
        for key, output, rows_only in pairs:
            values = parameters.get(key)
            if values is None or output not in outputs:
                continue
            have, want = list(np.shape(values)), [int(n) for n in list(outputs[output]["shape"])[1:]]
            if rows_only:
                have, want = have[-1:], want[-1:]
            if have != want:
                raise GanspectionError(f"{self._metadata_path}: invalid bundle metadata (calibration '{key}' has "
                                       f"shape {have}, the model's {output} output {want}); {_FIX}")


def read_metadata(bundle_dir) -> bundle_metadata.BundleMetadata:
    """``metadata.json`` of a bundle, checked for format, version, keys, types and terms (one-line errors)."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise GanspectionError(f"{bundle_dir}: no such bundle folder; {_FIX}")
    path = bundle_dir / METADATA_FILE
    metadata = bundle_metadata.BundleMetadata.from_dict(read_json(path, what="bundle metadata"), source=str(path))
    problem = _terms_problem(metadata)
    if problem:
        raise GanspectionError(f"{path}: invalid bundle metadata ({problem}); {_FIX}")
    return metadata


def _terms_problem(metadata) -> str | None:
    """What the metadata says about scores and terms that this release's scorer cannot follow, or None."""
    if metadata.score not in SCORES or metadata.quantization not in QUANTIZATIONS:
        return f"unknown score {metadata.score!r} or quantization {metadata.quantization!r}"
    terms = metadata.terms
    if not terms or any(term not in TERMS for term in terms):
        return f"'terms' {terms} must be names from {list(TERMS)}"
    if metadata.calibration.get("terms") != terms:
        return "'terms' differs from the calibration's terms"
    if metadata.calibration.get("threshold") != metadata.threshold:
        return "'threshold' differs from the calibration's threshold"
    try:
        calibration = Calibration.from_dict(metadata.calibration)
    except GanspectionError as error:
        return str(error)
    # The error map is shipped only when the heatmap is drawn from it; earlier bundles shipped it always.
    required = outputs_needed(terms, with_error_map=metadata.heatmap and calibration.heatmap_needs_error_map())
    allowed = outputs_needed(terms, with_error_map=metadata.heatmap)
    if not set(required) <= set(metadata.outputs) <= set(allowed):
        return f"'outputs' {metadata.outputs} must be {required}"
    return None


def _read_model_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise GanspectionError(f"{path}: missing from the bundle; {_FIX}") from None
    except OSError as error:
        raise GanspectionError(f"{path}: cannot read it ({error.strerror}); check the file permissions") from None


def _describe(details) -> str:
    if details is None:
        return f"no input named '{INPUT_NAME}'"
    return f"{np.dtype(details['dtype']).name} {list(details['shape'])}"


def first_line(error) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]
