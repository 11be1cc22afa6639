"""The generator's upsampling layer in three equivalent forms, one LiteRT thread, float32 and int8.

    python benchmarks/upsampling_forms.py [--runs 300]

For each upsampling layer of the default 64 px width-32 generator (input side, input channels → filters), with
the same random weights in every form:
- ``transposed``: Keras ``Conv2DTranspose(filters, 4, strides=2, padding="same")`` (TRANSPOSE_CONV), as trained;
- ``3x3 sub-pixel``: ``networks.SubpixelConv2DTranspose``, one 3 × 3 convolution into 4 × filters, then
  depth-to-space (CONV_2D + DEPTH_TO_SPACE; 5 of 9 taps are zeros), what the bundles hold;
- ``4-phase``: one 2 × 2 convolution per output phase on the padded input (4 CONV_2D, no zero taps), concatenated,
  then depth-to-space (defined here only).
Printed: the largest difference from the transposed form's output, and the median latency (ms) of the layer
alone converted to TFLite float32 and to full int8 (random calibration data). Timings on a shared machine:
compare rows of one run of this script.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from ganspection_tf import console  # noqa: E402
from ganspection_tf.models.networks import SubpixelConv2DTranspose  # noqa: E402

LAYERS = ((4, 256, 128), (8, 128, 64), (16, 64, 32), (32, 32, 32))  # gen_up3 .. gen_up0 at 64 px, width 32


class FourPhaseConv2DTranspose(keras.layers.Conv2DTranspose):
    """Conv2DTranspose(filters, 4, 2, "same") as four 2 × 2 convolutions, output phase (a, b) reading the input
    padded by one pixel from offset (a, b), with kernel rows 3 − a, 1 − a and columns 3 − b, 1 − b."""

    def call(self, inputs):
        padded = ops.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
        phases = []
        for a in range(2):
            for b in range(2):
                kernel = ops.take(ops.take(self.kernel, [3 - a, 1 - a], axis=0), [3 - b, 1 - b], axis=1)
                window = padded[:, a : (None if a else -1), b : (None if b else -1), :]
                phases.append(ops.conv(window, ops.transpose(kernel, (0, 1, 3, 2)), padding="valid"))
        return tf.nn.depth_to_space(ops.concatenate(phases, axis=-1) + ops.tile(self.bias, [4]), 2)


def tflite(model, int8, shape):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(0)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.normal(size=(1, *shape)).astype("float32")]
                                                    for _ in range(20))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with console.native_output_captured():
        return converter.convert()


def latency_ms(content, runs):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    timings = []
    for run in range(runs + 20):
        started = time.perf_counter()
        interpreter.invoke()
        if run >= 20:
            timings.append((time.perf_counter() - started) * 1000.0)
    return float(np.median(timings))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    forms = {"transposed": lambda f: keras.layers.Conv2DTranspose(f, 4, strides=2, padding="same"),
             "3x3 sub-pixel": SubpixelConv2DTranspose,
             "4-phase": lambda f: FourPhaseConv2DTranspose(f, 4, strides=2, padding="same")}
    print("| layer (side, channels → filters) | form | max |Δ| | float32 ms | int8 ms |")
    print("|---|---|---|---|---|")
    totals = {name: [0.0, 0.0] for name in forms}
    for side, channels, filters in LAYERS:
        shape = (side, side, channels)
        images = np.random.default_rng(1).normal(size=(2, *shape)).astype("float32")
        inputs, weights, reference = keras.Input(shape), None, None
        for name, form in forms.items():
            layer = form(filters)
            model = keras.Model(inputs, layer(inputs))
            if weights is None:
                weights = [np.random.default_rng(2).normal(0, 0.05, w.shape).astype("float32")
                           for w in layer.get_weights()]
            layer.set_weights(weights)
            outputs = np.asarray(model(images))
            reference = outputs if reference is None else reference
            float_ms, int8_ms = (latency_ms(tflite(model, int8, shape), args.runs) for int8 in (False, True))
            totals[name][0] += float_ms
            totals[name][1] += int8_ms
            print(f"| {side}×{side}×{channels} → {filters} | {name} | {np.abs(outputs - reference).max():.1e} | "
                  f"{float_ms:.3f} | {int8_ms:.3f} |")
    for name, (float_ms, int8_ms) in totals.items():
        print(f"| all four | {name} | | {float_ms:.3f} | {int8_ms:.3f} |")


if __name__ == "__main__":
    main()
