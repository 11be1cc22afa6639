"""Datasets: MVTec-AD folder scanning, the embedded synthetic category, the settings chosen from the
training images, and the tf.data input pipeline.

``mvtec``, ``synthetic`` and ``choices`` are TensorFlow-free; only ``pipeline`` imports TensorFlow.
"""
