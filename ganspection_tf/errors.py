"""The one error type a user should ever see: a one-line message naming the file or option and the fix."""


class GanspectionError(Exception):
    """An expected failure (bad input, bad option, missing dependency).

    The CLI prints ``error: <message>`` and exits with status 2; anything else is a bug and keeps its traceback.
    """


class MissingTrainExtra(GanspectionError):
    """A train-side command was run on the camera-side (base) install."""

    def __init__(self, what: str = "this command"):
        super().__init__(
            f"{what} needs TensorFlow, which the base (camera-side) install leaves out; "
            "install it with: pip install 'ganspection-tf[train]'"
        )
