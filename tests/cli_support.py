"""Running the CLI in-process and checking its one-line errors, shared by the tests that drive `main`."""

from ganspection_tf.cli import main


def run_cli(capfd, *args):
    """(exit status, stdout, stderr) of `ganspection-tf ARGS…` run in this process."""
    code = main([str(arg) for arg in args])
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *names):
    """Exit status 2, no traceback, exactly one `error: …` line naming every one of `names`; returns that line."""
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]
