"""Multiply-accumulates of one invocation of a converted (TFLite) model, counted op by op from its graph.

Counted: CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV and FULLY_CONNECTED, where nearly all the arithmetic of the
encoder, generator and critic is, at the tensor shapes the interpreter allocates (a bundle takes one image per
invocation: one frame). Not counted: elementwise ops (normalisation, activations, the score's differences and
sums) and any other op type. A transposed convolution is counted densely, every input pixel times the whole
kernel, as it is computed, the products that 'same' padding then crops included. A convolution is counted
densely too: the generator's sub-pixel convolutions (``networks.SubpixelConv2DTranspose``) hold zeros in 5 of
every 9 kernel taps, and LiteRT multiplies them all the same.
"""

from __future__ import annotations

import math

from ganspection_tf import console

COUNTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED")


def count_macs(model_content: bytes) -> dict[str, int]:
    """MACs of one invocation by counted op type (only the types the graph has)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with console.native_output_captured():
        # Without the default delegate: its DELEGATE node would stand beside the nodes it replaces.
        interpreter = Interpreter(model_content=model_content,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
    totals: dict[str, int] = {}
    for op in interpreter._get_ops_details():  # the only per-node view LiteRT's Python API gives
        name = op["op_name"]
        if name not in COUNTED_OPS:
            continue
        shapes = [_shape(interpreter, index) for index in op["inputs"]]
        output = _shape(interpreter, op["outputs"][0])
        totals[name] = totals.get(name, 0) + _op_macs(name, shapes, output)
    return totals


def _shape(interpreter, index):
    return [int(d) for d in interpreter._get_tensor_details(index, 0)["shape"]] if index >= 0 else None


def _op_macs(name, inputs, output):
    """MACs of one node; filters are [out_channels, kh, kw, in_channels] (depthwise: [1, kh, kw, channels])."""
    if name == "CONV_2D":  # each output value: kh × kw × in_channels products
        return math.prod(output) * math.prod(inputs[1][1:])
    if name == "DEPTHWISE_CONV_2D":  # each output value: kh × kw products
        return math.prod(output) * math.prod(inputs[1][1:3])
    if name == "TRANSPOSE_CONV":  # inputs: output shape, filter, input; each input value: the whole kernel
        return math.prod(inputs[2]) * math.prod(inputs[1][:3])
    # FULLY_CONNECTED: weights [units, inputs]; each output value: one product per input
    return math.prod(output) * inputs[1][-1]
