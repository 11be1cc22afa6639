"""GANspection-TF: visual anomaly detection learned from defect-free images.

The base package (``edge``, ``images``, ``errors``) runs on the camera with LiteRT alone; everything that
trains or exports needs the ``[train]`` extra (TensorFlow).
"""

__version__ = "0.1.0"


def load_model(path):
    """The trained model of a run folder (or of its ``model.keras`` file), loaded with Keras' safe mode.

    Needs the ``[train]`` extra. TensorFlow is imported here, not when the package is, so that the camera-side
    install keeps working without it; importing the model module registers its classes with Keras, which
    ``keras.models.load_model`` alone cannot find ("Could not locate class 'WassersteinBiGAN'").
    """
    from ganspection_tf import training

    return training.load_model(path)
