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


def first_line(error) -> str:
    """The first line of an exception's message (at most 200 characters), for a one-line error."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]
