"""`ganspection-tf camera`: video files, image folders, lost cameras, saved anomalies, the latency summary."""

import io
import json
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from edge_support import edge_category, exported_bundle  # noqa: E402

from ganspection_tf import camera, edge  # noqa: E402
from ganspection_tf.cli import main  # noqa: E402
from ganspection_tf.errors import GanspectionError  # noqa: E402

KEYS = {"index", "time", "source", "score", "decision", "latency_ms"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return exported_bundle(tmp_path_factory, "int8", "combined")[0]


@pytest.fixture(scope="module")
def scorer(bundle):
    return edge.EdgeScorer(bundle)


@pytest.fixture(scope="module")
def test_pictures(tmp_path_factory):
    return sorted((edge_category(tmp_path_factory) / "test").glob("*/*.png"))


def write_video(path, pictures, size=(96, 72)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    for picture in pictures:
        writer.write(cv2.resize(cv2.imread(str(picture)), size))
    writer.release()
    return path


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_video_gives_one_json_line_per_frame(scorer, test_pictures, tmp_path):
    video = write_video(tmp_path / "line.avi", test_pictures[:9])
    err = io.StringIO()
    summary = camera.run_camera(scorer, video, out=tmp_path / "results.jsonl", err=err)
    lines = read_lines(tmp_path / "results.jsonl")
    assert len(lines) == 9 == summary.scored and summary.unreadable == 0
    assert [line["index"] for line in lines] == list(range(9)) and set(lines[0]) == KEYS
    assert lines[3]["source"] == "line.avi#3"
    for line in lines:
        assert line["decision"] == ("anomalous" if line["score"] > scorer.threshold else "good")
    assert "scored 9 frames" in err.getvalue() and "p50" in err.getvalue() and "p95" in err.getvalue()
    # The frames the capture decodes are BGR: the line scores equal scoring them directly.
    capture = cv2.VideoCapture(str(video))
    ok, first = capture.read()
    capture.release()
    assert ok and lines[0]["score"] == pytest.approx(scorer.score(first).score, abs=1e-5)


def test_a_folder_is_scored_in_name_order_skipping_unreadable_files(scorer, test_pictures, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, picture in enumerate(test_pictures[:5]):
        shutil.copy(picture, folder / f"{i:03d}.png")
    (folder / "002b.png").write_bytes(b"not a picture")
    err = io.StringIO()
    summary = camera.run_camera(scorer, folder, out=tmp_path / "out" / "results.jsonl", err=err)
    lines = read_lines(tmp_path / "out" / "results.jsonl")
    assert [line["source"] for line in lines] == ["000.png", "001.png", "002.png", "003.png", "004.png"]
    assert summary.unreadable == 1 and "002b.png: skipped" in err.getvalue()
    assert lines[1]["score"] == pytest.approx(scorer.score_file(folder / "001.png").score, abs=1e-6)


def test_max_frames_stops_early(scorer, test_pictures, tmp_path):
    video = write_video(tmp_path / "line.avi", test_pictures[:6])
    summary = camera.run_camera(scorer, video, out=tmp_path / "r.jsonl", max_frames=2, err=io.StringIO())
    assert summary.scored == 2 and len(read_lines(tmp_path / "r.jsonl")) == 2


def test_anomalous_frames_are_saved_with_heatmap_and_score(bundle, test_pictures, tmp_path):
    scorer = edge.EdgeScorer(bundle)
    scorer.threshold = -1e9  # every frame is anomalous
    video = write_video(tmp_path / "line.avi", test_pictures[:3], size=(320, 240))
    saved = tmp_path / "anomalies"
    camera.run_camera(scorer, video, out=tmp_path / "r.jsonl", save_anomalies=saved, err=io.StringIO())
    files = sorted(saved.iterdir())
    assert [f.name for f in files] == ["000000_line.avi_0.png", "000001_line.avi_1.png", "000002_line.avi_2.png"]
    picture = cv2.imread(str(files[0]))
    capture = cv2.VideoCapture(str(video))
    _, raw = capture.read()
    capture.release()
    assert picture.shape == raw.shape == (240, 320, 3)
    changed = np.abs(picture.astype(int) - raw.astype(int)).max(axis=2) > 30
    assert changed.mean() > 0.3  # the heatmap overlay covers the whole frame
    text_box = changed[:30, :250]  # and the score is written in the top-left corner
    assert text_box.any()


def test_a_latent_bundle_saves_anomalies_without_heatmap(tmp_path_factory, test_pictures,
                                                         tmp_path):
    scorer = edge.EdgeScorer(exported_bundle(tmp_path_factory, "int8", "latent")[0])
    scorer.threshold = -1e9
    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(test_pictures[0], folder / "a.png")
    camera.run_camera(scorer, folder, out=tmp_path / "r.jsonl", save_anomalies=tmp_path / "saved", err=io.StringIO())
    assert [p.name for p in (tmp_path / "saved").iterdir()] == ["000000_a.png"]


# ------------------------------------------------------------------------------------------------ failures


class FakeCapture:
    """cv2.VideoCapture stand-in: each opening takes the next script entry, a list of frames (a None frame is a
    failed read), or None for a source that does not open; when the script is used up, nothing opens."""

    openings: list = []  # noqa: RUF012 (a per-test script, reset by the fixture)
    opened_targets: list = []  # noqa: RUF012

    def __init__(self, target):
        FakeCapture.opened_targets.append(target)
        script = FakeCapture.openings.pop(0) if FakeCapture.openings else None
        self.frames = None if script is None else list(script)

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return self.frames is not None

    def read(self):
        if not self.frames:
            return False, None
        frame = self.frames.pop(0)
        return frame is not None, frame

    def release(self):
        pass


@pytest.fixture
def fake_camera(monkeypatch):
    FakeCapture.openings, FakeCapture.opened_targets = [], []
    monkeypatch.setattr(camera.cv2, "VideoCapture", FakeCapture)
    return FakeCapture


FRAME = np.full((48, 64, 3), 120, np.uint8)


def test_a_lost_camera_is_reopened_with_backoff(scorer, fake_camera, tmp_path):
    fake_camera.openings = [[FRAME, FRAME], None, [FRAME]]  # lost after 2 frames; 1st reopen fails, 2nd works
    sleeps = []
    summary = camera.run_camera(scorer, "0", out=tmp_path / "r.jsonl", max_frames=3, backoff_s=0.5,
                                sleep=sleeps.append, err=io.StringIO())
    assert summary.scored == 3 and sleeps == [0.5, 1.0]
    assert fake_camera.opened_targets == [0, 0, 0]  # the index is passed to OpenCV as an int


def test_a_camera_that_stays_lost_ends_with_a_clear_error(scorer, fake_camera, tmp_path):
    fake_camera.openings = [[FRAME, FRAME]]
    sleeps, err = [], io.StringIO()
    with pytest.raises(GanspectionError, match="camera 0 was lost .* after 3 reconnection attempts"):
        camera.run_camera(scorer, "0", out=tmp_path / "r.jsonl", retries=3, backoff_s=1, sleep=sleeps.append,
                          err=err)
    assert sleeps == [1, 2, 4] and "scored 2 frames" in err.getvalue()  # the summary still comes
    assert len(read_lines(tmp_path / "r.jsonl")) == 2  # the frames before the loss were written


def test_a_stream_that_never_opens_is_retried_then_refused(scorer, fake_camera, tmp_path):
    sleeps = []
    with pytest.raises(GanspectionError, match="rtsp://cam/1 cannot be opened, even after 2 retries"):
        camera.run_camera(scorer, "rtsp://cam/1", retries=2, backoff_s=0.1, sleep=sleeps.append, err=io.StringIO())
    assert sleeps == [0.1, 0.2]


def test_the_end_of_a_video_file_is_not_retried(scorer, fake_camera, tmp_path):
    video = tmp_path / "clip.avi"
    video.write_bytes(b"stand-in")
    fake_camera.openings = [[FRAME, None, FRAME]]  # a failed read in a file is its end
    summary = camera.run_camera(scorer, video, out=tmp_path / "r.jsonl", sleep=pytest.fail, err=io.StringIO())
    assert summary.scored == 1


def test_unusable_sources_fail_in_one_line(scorer, tmp_path):
    with pytest.raises(GanspectionError, match="no such file, folder or camera"):
        camera.run_camera(scorer, tmp_path / "missing.mp4", err=io.StringIO())
    not_video = tmp_path / "notes.avi"
    not_video.write_text("hello")
    with pytest.raises(GanspectionError, match="OpenCV cannot open this video"):
        camera.run_camera(scorer, not_video, sleep=pytest.fail, err=io.StringIO())
    (tmp_path / "empty").mkdir()
    with pytest.raises(GanspectionError, match="no images"):
        camera.run_camera(scorer, tmp_path / "empty", err=io.StringIO())


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_camera_writes_json_lines_to_stdout(bundle, test_pictures, tmp_path, capsys):
    video = write_video(tmp_path / "line.avi", test_pictures[:4])
    code = main(["camera", str(bundle), "--source", str(video), "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert len(lines) == 4 and set(lines[0]) == KEYS
    assert "scored 4 frames" in captured.err and "frames/s" in captured.err


def test_cli_camera_errors_are_one_line(bundle, tmp_path, capsys):
    assert main(["camera", str(tmp_path / "nothing"), "--source", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["camera", str(bundle), "--source", str(tmp_path / "missing.avi")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ------------------------------------------------------------------------------------------------ base install


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("GANSPECTION_VENV_TEST") != "1",
                    reason="creates a virtualenv with the base install (~1 min, needs the package index); "
                           "set GANSPECTION_VENV_TEST=1")
def test_camera_runs_on_the_base_install_without_tensorflow(bundle, test_pictures, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(repo)], check=True)
    python, command = str(venv / "bin" / "python"), str(venv / "bin" / "ganspection-tf")
    assert subprocess.run([python, "-c", "import tensorflow"], capture_output=True, check=False).returncode != 0

    video = write_video(tmp_path / "line.avi", test_pictures[:11])
    run = subprocess.run([command, "camera", str(bundle), "--source", str(video), "--out", str(tmp_path / "v.jsonl")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert len(read_lines(tmp_path / "v.jsonl")) == 11
    folder = test_pictures[0].parent
    run = subprocess.run([command, "camera", str(bundle), "--source", str(folder)], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == len(list(folder.glob("*.png")))
    refused = subprocess.run([command, "export", "run", "--tflite", "--out", "b"], capture_output=True, text=True,
                             check=False)
    assert refused.returncode == 2 and "pip install 'ganspection-tf[train]'" in refused.stderr
