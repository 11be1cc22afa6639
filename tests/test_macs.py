"""MACs per invocation counted from a converted graph, against a hand count of a tiny model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ganspection_tf.macs import count_macs

# By hand, on an 8×8×2 input (batch 1):
HAND_COUNT = {
    "CONV_2D": 8 * 8 * 4 * (3 * 3 * 2),  # 4 filters 3×3, 'same': 8×8×4 outputs × 18 products
    "DEPTHWISE_CONV_2D": 6 * 6 * 4 * (3 * 3),  # 3×3 'valid': 6×6×4 outputs × 9 products
    "TRANSPOSE_CONV": 6 * 6 * 4 * (4 * 4 * 3),  # 144 input values × the 4×4 kernel into 3 channels
    "FULLY_CONNECTED": 5 * (12 * 12 * 3),  # 5 units × 432 inputs
}


def tiny_model():
    inputs = keras.Input((8, 8, 2), batch_size=1)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="valid")(x)
    x = keras.layers.Conv2DTranspose(3, 4, strides=2, padding="same")(x)  # 6×6 → 12×12
    outputs = keras.layers.Dense(5)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def converted(model, int8):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        images = np.random.default_rng(0).uniform(0, 1, (4, 1, 8, 8, 2)).astype("float32")
        converter.representative_dataset = lambda: ([image] for image in images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


@pytest.mark.parametrize("int8", [False, True], ids=["float32", "int8"])
def test_macs_of_a_tiny_model_match_the_hand_count(int8):
    assert count_macs(converted(tiny_model(), int8)) == HAND_COUNT
