"""What a new user sees: every command run as a separate process, as from a shell.

One tiny run on a 2:1 synthetic category trained with ``--resize pad``, evaluated, exported, scored on the
workstation and on the camera runtime. Asserted: stderr holds no TensorFlow / LiteRT start-up line and no Python
warning, the resize mode is stored once and used everywhere (the camera's scores equal the workstation's), and
the README's model-loading lines run as written in a fresh Python.
"""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from conftest import REPO

# Lines TensorFlow, absl and LiteRT print at start-up (glog/absl prefix "I0000 00:00:…", oneDNN, CUDA probing).
NATIVE_LINE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN|cuda|cuInit|XNNPACK|cpu_feature_guard", re.I)
PYTHON_WARNING = re.compile(r"\b\w*Warning: ")
TINY = ["--image-size", "32", "--width", "8", "--latent-dim", "8", "--critic-steps", "1", "--batch-size", "8",
        "--steps", "4", "--log-every", "2", "--checkpoint-every", "2", "--sample-every", "2"]


def fresh_environment():
    """The user's environment: this checkout's package, no TF_CPP_MIN_LOG_LEVEL (conftest sets one for pytest)."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def ganspection(*args, cwd):
    """`ganspection-tf ARGS` in a new process (the console script's own entry point, main())."""
    command = [sys.executable, "-c", "import sys; from ganspection_tf.cli import main; sys.exit(main())", *args]
    return subprocess.run(command, cwd=cwd, env=fresh_environment(), capture_output=True, text=True, timeout=600)


def wide_category(square_category, out):
    """The synthetic category stretched to 2:1 (128 × 64), as parts on a conveyor are photographed; masks too."""
    for source in square_category.rglob("*.png"):
        target = out / source.relative_to(square_category)
        target.parent.mkdir(parents=True, exist_ok=True)
        picture = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
        nearest = source.stem.endswith("_mask")
        cv2.imwrite(str(target), cv2.resize(picture, (128, 64), interpolation=cv2.INTER_NEAREST if nearest
                                             else cv2.INTER_AREA))
    return out


@pytest.fixture(scope="module")
def session(synthetic_category, tmp_path_factory):
    """Every command once, in order; {name: CompletedProcess} plus the folders."""
    work = tmp_path_factory.mktemp("console")
    data = wide_category(synthetic_category, work / "widget")
    test_folders = sorted(str(folder) for folder in (data / "test").iterdir())
    steps = {
        "help": ["--help"],
        "train": ["train", "--data", str(data), "--out", "runs/bottle", "--resize", "pad", *TINY],
        "evaluate": ["evaluate", "runs/bottle"],
        "export": ["export", "runs/bottle", "--tflite", "--quantize", "none", "--out", "bundle"],
        "score": ["score", "runs/bottle", *test_folders, "--output", "scores.csv"],
        "camera": ["camera", "bundle", "--source", str(data / "test" / "good"), "--out", "camera.jsonl"],
    }
    done = {}
    for name, args in steps.items():
        done[name] = ganspection(*args, cwd=work)
        assert done[name].returncode == 0, (name, done[name].stderr[-3000:])
    return {"work": work, "data": data, **done}


@pytest.mark.parametrize("command", ["help", "train", "evaluate", "export", "score", "camera"])
def test_commands_print_no_start_up_lines_and_no_warnings(session, command):
    err = session[command].stderr
    assert not [line for line in err.splitlines() if NATIVE_LINE.search(line)], err
    assert not PYTHON_WARNING.search(err), err
    if command == "help":
        assert err == "" and "train" in session[command].stdout


def test_the_resize_mode_is_chosen_once_and_used_everywhere(session):
    work = session["work"]
    assert json.loads((work / "runs/bottle/config.json").read_text())["train"]["resize"] == "pad"
    assert json.loads((work / "bundle/metadata.json").read_text())["preprocessing"]["aspect"] == "pad"
    # The camera (LiteRT, float32) and the workstation (Keras) score the same good images alike only when both
    # letterbox them as training did.
    with open(work / "scores.csv", encoding="utf-8") as handle:
        workstation = {Path(row["path"]).name: float(row["score"]) for row in csv.DictReader(handle)
                       if Path(row["path"]).parent.name == "good"}
    camera = {row["source"]: row["score"] for row in map(json.loads, (work / "camera.jsonl").read_text().splitlines())}
    assert sorted(camera) == sorted(workstation) and len(camera) == 8
    for name, score in camera.items():
        assert score == pytest.approx(workstation[name], abs=1e-3), name


def test_the_parity_line_carries_the_bundles_latency(session):
    parity = [line for line in session["export"].stderr.splitlines() if line.startswith("parity on")]
    assert len(parity) == 1 and re.search(r"; model [\d.]+ ms per image \(this CPU, 1 thread\)$", parity[0])


def test_the_readme_model_loading_lines_run_as_written(session):
    """The README's Python block, extracted and run in a fresh interpreter next to a run at runs/bottle."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### A trained model in Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "ganspection_tf.load_model(" in code
    result = subprocess.run([sys.executable, "-c", code], cwd=session["work"], env=fresh_environment(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["32", "3", "8"]  # image size, channels, latent dimension of the run


def test_importing_the_package_does_not_import_tensorflow():
    code = "import sys, ganspection_tf; print(any(m.split('.')[0] == 'tensorflow' for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], env=fresh_environment(), capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
