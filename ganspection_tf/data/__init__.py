"""Datasets: MVTec-AD folder scanning, the embedded synthetic category, and the tf.data input pipeline.

``mvtec`` and ``synthetic`` are TensorFlow-free; only ``pipeline`` imports TensorFlow.
"""
