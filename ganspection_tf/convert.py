"""The edge scorer: cut from the term model, converted to TFLite in one of four quantisations.

**Scorer.** A functional Keras model, uint8 image (1, S, S, C) → ``x / 127.5 − 1`` → the score terms the chosen
score needs (+ the per-pixel error map for ``combined``). It is cut out of ``scoring.build_term_model`` as a
sub-graph, so ``latent`` (latent_mahalanobis: the model outputs the code E(x)) carries the encoder only,
``critic`` the encoder and critic, and ``combined`` the networks its non-zero terms need (default
normalized_map_max: encoder and generator, the error map out). The terms are made from the outputs and combined
with the run's :class:`~ganspection_tf.calibration.Calibration` in numpy on the camera (``edge.py``,
``Calibration.term_matrix``), never in the graph.

**Conversion** with ``tf.lite.TFLiteConverter.from_keras_model`` (never a bare ``tf.Module``: it converts Keras 3
models weightless; :func:`check_weights_present` refuses such a file). ``int8`` is calibrated on good images
(``representative.py``) and keeps a few "float islands": layers left in float32 (see
:func:`float_island_layers` and :func:`_int8_with_float_islands`).

Why float islands in int8: full-integer quantisation clips every tensor at the range it saw on the
representative (good) images. For the score terms — scalars per image — that means every anomaly beyond the
good range gets the same capped value. The score arithmetic, the layers that produce the networks' outputs
(code, image, critic value and features) and the layer norms therefore always stay float. Which other layers
stay float is chosen per export (``int8_acceptance.py``): first none, then one more at a time, up to
MAX_EXTRA_FLOAT_LAYERS, in the order of the QuantizationDebugger's per-layer error (rmse / scale), until the int8
model scores the run's validation images and their synthetic-defect copies like the float scorer. When no
candidate does and the scorer outputs the code (latent_mahalanobis) or the error map (normalized_map_max,
heatmaps), the WHOLE encoder stays float (the earlier rule: the whitening and the per-pixel spreads amplify int8
noise of the code). The measurements behind these choices are in benchmarks/RESULTS.md, "Edge latency, size and
accuracy".
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import sys
import warnings

import keras
import numpy as np
import tensorflow as tf

from ganspection_tf import console, edge
from ganspection_tf.errors import GanspectionError
from ganspection_tf.scoring import term_model_for
from ganspection_tf.terms import FLOAT_ENCODER_OUTPUTS

# Lower bound on the bytes a converted model must hold per weight; a weightless conversion is far below it.
BYTES_PER_WEIGHT = {"none": 4, "float16": 2, "dynamic": 1, "int8": 1, "int16x8": 1}
CALIBRATED = ("int8", "int16x8")  # the quantisations that calibrate activation ranges on representative images
WEIGHT_BYTES_SLACK = 0.9
RESCALE_LAYER = "to_unit_range"


def build_scorer(term_model: keras.Model, terms, with_error_map=False) -> keras.Model:
    """uint8 (B, S, S, C) → the outputs `terms` need ({term: (B,)}, "code" (B, d)) (+ "error_map" (B, S, S)),
    only the layers those outputs need."""
    needed = term_model_for(term_model, terms, with_error_map)
    _, size, _, channels = term_model.input_shape
    image = keras.Input((size, size, channels), dtype="uint8", name=edge.INPUT_NAME)
    unit = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=RESCALE_LAYER)(image)
    return keras.Model(image, needed(unit), name="scorer")


def networks(model: keras.Model) -> list[keras.Model]:
    """The innermost sub-models (encoder, generator, critic) a scorer or term model is made of."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            inner = networks(layer)
            found += inner if inner else [layer]
    return found


def float_island_layers(model: keras.Model) -> tuple[set[str], set[str], set[str]]:
    """(names of all network layers, those int8 always keeps in float, the fallback float set).

    Always float: normalisations, and the layers whose output leaves their network (the encoder's code, the
    generator's image, the critic's value and features). Those outputs are what the score terms are computed
    from, so int8 would cap them at the representative range (the critic value is a scalar per image) and
    round the reconstruction to 256 levels; the layers are small. Normalisations would need an int8 RSQRT.
    Also always float: the weightless layers (activations, reshapes) that feed an output layer, back to the
    nearest normalisation or weighted layer. Between a float normalisation and a float output layer, int8 there
    only adds a rounding step, right before the score, and saves no weight.
    The fallback adds the whole encoder when the model outputs what a term with ``Term.float_encoder`` is
    computed from (the code of latent_mahalanobis, the error map of normalized_map_max and of heatmaps).
    """
    norms = (keras.layers.LayerNormalization, keras.layers.GroupNormalization)
    outputs = model.output if isinstance(model.output, dict) else {}
    float_encoder = any(name in FLOAT_ENCODER_OUTPUTS for name in outputs)
    names, always, fallback = set(), set(), set()
    for network in networks(model):
        float_network = float_encoder and network.name.endswith("encoder")
        for layer in network.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            names.add(layer.name)
            if isinstance(layer, norms):
                always.add(layer.name)
            if any(layer.output is output for output in network.outputs):
                always |= {layer.name} | _weightless_inputs(layer, norms)
            if float_network:
                fallback.add(layer.name)
    return names, always, always | fallback


def _weightless_inputs(layer, stop_at) -> set[str]:
    """Names of the weightless layers that produce `layer`'s input, followed back to a weighted layer, a
    `stop_at` layer or the network's input."""
    names = set()
    for tensor in keras.tree.flatten(layer.input):
        producer = tensor._keras_history.operation
        if not (producer.weights or isinstance(producer, (keras.layers.InputLayer, *stop_at))):
            names |= {producer.name} | _weightless_inputs(producer, stop_at)
    return names


def convert(scorer: keras.Model, quantize: str, representative=None, acceptance=None,
            log=print) -> tuple[bytes, list[str], list[dict]]:
    """TFLite flatbuffer of `scorer`, and (int8 only) the layers kept in float and the candidates tried. The
    CALIBRATED quantisations need `representative` (uint8 images, ``representative.py``); int8 chooses its float
    layers with `acceptance` (``int8_acceptance.Int8Acceptance``; None: the fallback set at once)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(scorer)
    if quantize == "none":
        return _quietly(converter.convert), [], []
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize not in CALIBRATED:
        return _quietly(converter.convert), [], []
    converter.representative_dataset = lambda: ([image[np.newaxis]] for image in representative)
    if quantize == "int16x8":
        return _quietly(lambda: _int16x8(converter)), [], []
    return _int8_with_float_islands(converter, scorer, acceptance, log)


def _int16x8(converter):
    """int16 activations, int8 weights (LiteRT's experimental ops set); ops the converter cannot quantise to
    int16 stay float (TFLITE_BUILTINS). The model's uint8 input and float32 outputs are kept. No float islands:
    the converter's int16 mode has no node denylist (the MLIR quantizer that has one writes int16 zero points
    LiteRT refuses), so the model may hold ops LiteRT has no int16 kernel for: :func:`check_runs`."""
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    return converter.convert()


MAX_EXTRA_FLOAT_LAYERS = 6  # beyond these the fallback (the whole encoder float) is tried; ~8 s per candidate


def _int8_with_float_islands(converter, scorer, acceptance, log):
    """Calibrate once, then quantise everything to int8 but the float islands: the fewest layers (module
    docstring) that `acceptance` accepts, else the fallback set. Returns (model, float layers, candidates tried
    with `acceptance`'s figures)."""
    debugger = _quietly(lambda: tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=converter.representative_dataset))
    layers, always, fallback = float_island_layers(scorer)
    op_outputs = _op_output_names(debugger.calibrated_model)

    def quantized(float_layers):
        denylisted = [name for name in op_outputs if _keep_in_float(name, layers, float_layers)]
        _set_options(debugger, denylisted_nodes=denylisted, fully_quantize=False)
        return _quietly(debugger.get_nondebug_quantized_model)

    tried = []
    if acceptance is not None:
        ranked = _by_quantization_error(debugger, op_outputs, layers, always)
        candidates = [always | set(ranked[:count]) for count in range(min(MAX_EXTRA_FLOAT_LAYERS, len(ranked)) + 1)]
        for float_layers in candidates:
            model = quantized(float_layers)
            verdict = acceptance(model)
            tried.append({"float_layers": sorted(float_layers - always), **verdict})
            log(f"int8 with {_described(float_layers - always)} in float: {acceptance.describe(verdict)}")
            if verdict["accepted"]:
                return model, sorted(float_layers), tried
        log("int8: no candidate scored like float; " + ("the whole encoder stays float, as before choosing"
                                                          if fallback != always else "the first is kept"))
    return quantized(fallback), sorted(fallback), tried


def _by_quantization_error(debugger, op_outputs, layers, always) -> list[str]:
    """The int8 layers, worst first by the debugger's per-layer error: rmse of the quantised op's output
    against float on the same input, in units of its quantisation step (≈ 0.29 is plain rounding)."""
    _set_options(debugger, fully_quantize=False,
                 layer_debug_metrics={"rmse": lambda differences: float(np.sqrt(np.mean(np.square(differences))))},
                 denylisted_nodes=[name for name in op_outputs if _keep_in_float(name, layers, always)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the debugger runs the deprecated tf.lite.Interpreter itself
        _quietly(debugger.run)
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    errors = {}
    for row in csv.DictReader(dump):
        layer = _owning_layer(row["tensor_name"], layers)
        if layer is not None and layer not in always and row["rmse"] and float(row["scale"] or 0) > 0:
            errors[layer] = max(errors.get(layer, 0.0), float(row["rmse"]) / float(row["scale"]))
    return sorted(errors, key=errors.get, reverse=True)


def _set_options(debugger, **options):
    """Setting the debugger's options quantises the model again (and prints its settings): quietly."""
    _quietly(lambda: setattr(debugger, "options", tf.lite.experimental.QuantizationDebugOptions(**options)))


def _described(layers) -> str:
    return ", ".join(sorted(layers)) if layers else "only the normalisations and outputs"


def _op_output_names(tflite_model: bytes) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_model)
    tensors = {detail["index"]: detail["name"] for detail in interpreter.get_tensor_details()}
    return [tensors[index] for op in interpreter._get_ops_details() for index in op["outputs"]]


def _keep_in_float(tensor_name: str, layers, islands) -> bool:
    """Float: ops of the float-island layers and the score arithmetic outside the networks (not the rescale)."""
    layer = _owning_layer(tensor_name, layers)
    if layer is not None:
        return layer in islands
    return RESCALE_LAYER not in tensor_name and not tensor_name.endswith("/Cast")


def _owning_layer(tensor_name: str, layers) -> str | None:
    """The innermost network layer an op belongs to, from its TF name scope ("…/crit_norm1_1/moments/mean").

    Fused ops carry several names joined by ';' — the last one is the op's own; TF appends "_1" to scopes.
    """
    for part in reversed(tensor_name.split(";")[-1].split("/")):
        for candidate in (part, re.sub(r"_\d+$", "", part)):
            if candidate in layers:
                return candidate
    return None


def weights_needed(scorer: keras.Model) -> int:
    """The number of weights the scorer's outputs depend on: what its TFLite file must hold."""
    return sum(int(np.prod(weight.shape)) for weight in weights_read(scorer))


def weights_read(scorer: keras.Model) -> list:
    """The weights (Keras variables) the scorer's outputs depend on.

    ``count_params`` counts every weight of a network the scorer calls, but a scorer may use a part of one
    (patch_distance needs the critic's first two stages only) and the converter drops the rest. So this traces
    the scorer and follows the data edges back from its outputs to the variables they read."""
    spec = tf.TensorSpec([1, *scorer.input_shape[1:]], tf.float32)
    function = tf.function(lambda image: scorer(image)).get_concrete_function(spec)
    nodes = {node.name: node for node in function.graph.as_graph_def().node}
    pending = [tensor.op.name for tensor in tf.nest.flatten(function.outputs)]
    reached = set()
    while pending:
        name = pending.pop()
        if name not in reached:
            reached.add(name)
            # "^name" inputs are control dependencies (tf.function orders every variable read): not data.
            pending += [source.split(":")[0] for source in nodes[name].input if not source.startswith("^")]
    handles = {id(weight.value.handle): weight for weight in scorer.weights}
    read = [handles.get(id(external)) for external, internal in function.graph.captures if internal.op.name in reached]
    return [weight for weight in read if weight is not None]


def check_weights_present(tflite_model: bytes, weight_count: int, quantize: str) -> None:
    """Refuses a converted model too small to hold the scorer's weights (a weightless conversion)."""
    minimum = int(WEIGHT_BYTES_SLACK * BYTES_PER_WEIGHT[quantize] * weight_count)
    if len(tflite_model) < minimum:
        raise GanspectionError(
            f"the converted {quantize} model is {len(tflite_model):,} bytes, but the scorer's {weight_count:,} "
            f"weights need at least {minimum:,}: the weights were lost in conversion; this is a bug, please report it"
        )


def check_runs(tflite_model: bytes, quantize: str) -> None:
    """Refuses a converted model that LiteRT cannot run, e.g. an op the converter quantised but the runtime has
    no kernel for in that type (one invocation on a mid-gray image)."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        with console.native_output_captured():
            runner = Interpreter(model_content=tflite_model).get_signature_runner()
            details = runner.get_input_details()[edge.INPUT_NAME]
            runner(**{edge.INPUT_NAME: np.full(details["shape"], 128, dtype=np.uint8)})
    except (RuntimeError, ValueError) as error:
        raise GanspectionError(
            f"--quantize {quantize}: LiteRT cannot run the converted model ({edge.first_line(error)}); choose "
            "another --quantize (int8, float16 or none)"
        ) from None


def _quietly(function):
    with console.native_output_captured(), contextlib.redirect_stdout(sys.__stdout__):
        return function()
