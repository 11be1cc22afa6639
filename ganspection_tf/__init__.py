"""GANspection-TF: visual anomaly detection learned from defect-free images.

The base package (``edge``, ``images``, ``errors``) runs on the camera with LiteRT alone; everything that
trains or exports needs the ``[train]`` extra (TensorFlow).
"""

__version__ = "0.1.0"
