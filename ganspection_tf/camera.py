"""`ganspection-tf camera`: score a camera, a video, a stream or a folder of images frame by frame (no TensorFlow).

One JSON line per scored frame (``index``, ``time``, ``source``, ``score``, ``decision``, ``latency_ms``) goes to
``--out`` or stdout; anomalous frames can be saved with the heatmap and the score drawn on them; a latency
summary (p50 / p95 ms, frames per second) ends the run on stderr. Nothing of an earlier run is lost: ``--out``
is appended to, and a saved frame whose name is taken gets a new numbered name.

Sources and how their failures are handled:

* ``0``, ``1`` … (a camera index) and ``rtsp://`` / ``http(s)://`` URLs are *live*: a failed read means the camera
  or stream was lost, so it is reopened with exponential backoff (``retries`` attempts), then a one-line error.
  A live source that cannot be opened at all is retried the same way.
* a video file ends at its last frame (a failed read is the end of the stream);
* a folder is scored image by image in sorted name order; unreadable files are counted and skipped.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ganspection_tf import artifacts, images, interrupts
from ganspection_tf.heatmaps import heatmap_overlay
from ganspection_tf.errors import GanspectionError

LIVE_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://")
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 1.0  # first wait; doubled after each failed attempt


@dataclass
class Frame:
    """A frame to score (``pixels`` None when it could not be read) and the label written to its JSON line."""

    pixels: np.ndarray | None
    color_order: str
    label: str
    problem: str | None = None


@dataclass
class CameraSummary:
    scored: int = 0
    unreadable: int = 0
    anomalous: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        if not self.latencies_ms:
            return f"scored 0 frames ({self.unreadable} unreadable skipped)"
        p50, p95 = np.percentile(self.latencies_ms, [50, 95])
        fps = self.scored / self.seconds if self.seconds > 0 else float("inf")
        return (f"scored {self.scored} frames ({self.anomalous} anomalous, {self.unreadable} unreadable skipped): "
                f"latency p50 {p50:.1f} ms, p95 {p95:.1f} ms, {fps:.1f} frames/s")


def run_camera(scorer, source, out=None, save_anomalies=None, max_frames=None, color_order="bgr",
               retries=DEFAULT_RETRIES, backoff_s=DEFAULT_BACKOFF_S, sleep=time.sleep, err=None,
               header=None) -> CameraSummary:
    """Score every frame of `source` with `scorer` (an ``edge.EdgeScorer``), writing JSON lines to `out`.

    `out` is a path (written line by line, flushed after each frame) or None for stdout; `sleep` and
    `backoff_s` are injectable so tests need not wait for the reconnection backoff. `header` (e.g. the threshold
    in use) goes to `err` with the first frame, so a source refused at once stays a one-line error.
    """
    err = err if err is not None else sys.stderr
    if max_frames is not None and max_frames < 1:
        raise GanspectionError(f"--max-frames {max_frames}: must be at least 1")
    if save_anomalies is not None:
        save_anomalies = artifacts.ensure_writable_folder(save_anomalies, option="--save-anomalies")
    frames = open_source(source, color_order, retries, backoff_s, sleep)
    summary = CameraSummary()
    started = time.perf_counter()
    try:
        with _line_sink(out) as sink:
            for frame in frames:
                interrupts.raise_lost()
                if header:
                    print(header, file=err)
                    header = None
                if frame.pixels is None:
                    summary.unreadable += 1
                    print(f"warning: {frame.label}: skipped ({frame.problem})", file=err)
                    continue
                _score_frame(scorer, frame, summary, sink, save_anomalies, err)
                if max_frames is not None and summary.scored >= max_frames:
                    break
    finally:  # also after Ctrl-C or a lost camera: the figures of what was scored are still worth having
        summary.seconds = time.perf_counter() - started
        print(summary.describe(), file=err)
    return summary


def _score_frame(scorer, frame, summary, sink, save_anomalies, err):
    try:
        result = scorer.score(frame.pixels, color_order=frame.color_order)
    except GanspectionError as error:  # e.g. a 16-bit or 2-channel frame: skip it, keep the line running
        summary.unreadable += 1
        print(f"warning: {frame.label}: skipped ({error})", file=err)
        return
    index = summary.scored
    summary.scored += 1
    summary.latencies_ms.append(result.latency_ms)
    summary.anomalous += int(result.anomalous)
    record = {
        "index": index,
        "time": round(time.time(), 3),
        "source": frame.label,
        "score": round(result.score, 6),
        "decision": "anomalous" if result.anomalous else "good",
        "latency_ms": round(result.latency_ms, 3),
    }
    sink.write(json.dumps(record) + "\n")
    sink.flush()
    if result.anomalous and save_anomalies is not None:
        if scorer.has_heatmap:  # from the map the scoring already produced: no second inference
            result.heatmap = result.heatmap_at(*frame.pixels.shape[:2])
        picture = annotated_frame(frame, result, scorer.threshold)
        artifacts.write_png(artifacts.unused_path(save_anomalies, f"{index:06d}_{_safe(frame.label)}", ".png"), picture)


def annotated_frame(frame: Frame, result, threshold: float) -> np.ndarray:
    """RGB picture of an anomalous frame: heatmap overlay (when the bundle has one) and the score in red."""
    rgb = images.frame_to_rgb(frame.pixels, frame.color_order, channels=3)
    picture = heatmap_overlay(rgb, result.heatmap) if result.heatmap is not None else rgb.copy()
    scale = max(0.4, picture.shape[1] / 640.0)
    text = f"score {result.score:.3f} > {threshold:.3f}"
    origin = (int(8 * scale), int(24 * scale))
    cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, (0, 0, 0), int(4 * scale) + 1,
                cv2.LINE_AA)  # dark outline keeps the text readable on any background
    cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, (255, 40, 40), int(2 * scale) + 1,
                cv2.LINE_AA)
    return picture


# ------------------------------------------------------------------------------------------------ sources


def open_source(source, color_order="bgr", retries=DEFAULT_RETRIES, backoff_s=DEFAULT_BACKOFF_S, sleep=time.sleep):
    """An iterator of :class:`Frame` for a camera index, a URL, a video file or a folder of images."""
    text = str(source)
    if text.isdigit():
        return _capture_frames(int(text), f"camera {text}", True, color_order, retries, backoff_s, sleep)
    if text.lower().startswith(LIVE_PREFIXES):
        return _capture_frames(text, text, True, color_order, retries, backoff_s, sleep)
    path = Path(text)
    if path.is_dir():
        return _folder_frames(path)
    if not path.is_file():
        raise GanspectionError(f"--source {text}: no such file, folder or camera; pass a camera index (0), a "
                               "video file, an rtsp:// URL or a folder of images")
    return _capture_frames(text, path.name, False, color_order, retries, backoff_s, sleep)


def _folder_frames(folder: Path):
    paths = images.list_images(folder)
    if not paths:
        raise GanspectionError(f"--source {folder}: no images ({', '.join(images.IMAGE_SUFFIXES)}) in this folder")
    for path in paths:
        try:
            yield Frame(images.read_image(path), "rgb", path.name)
        except images.UnreadableImage as error:
            yield Frame(None, "rgb", path.name, problem=error.reason)


def _capture_frames(target, label, live, color_order, retries, backoff_s, sleep):
    """Frames from cv2.VideoCapture; a live source that stops delivering is reopened with backoff."""
    capture = _open_capture(target, label, live, retries, backoff_s, sleep)
    index, failures = 0, 0
    try:
        while True:
            ok, pixels = capture.read()
            if ok:
                failures = 0
                frame_label = f"{label}#{index}"
                index += 1
                if pixels is None or pixels.size == 0:
                    yield Frame(None, color_order, frame_label, problem="empty frame")
                else:
                    yield Frame(pixels, color_order, frame_label)
                continue
            if not live:
                return  # the end of a video file
            if failures >= retries:
                raise GanspectionError(f"{label} was lost (no frame) and did not come back after {retries} "
                                       "reconnection attempts; check the cable, power or URL, then run again")
            sleep(backoff_s * 2**failures)
            failures += 1
            capture.release()
            capture = cv2.VideoCapture(target)
    finally:
        capture.release()


def _open_capture(target, label, live, retries, backoff_s, sleep):
    """An opened capture; live sources get `retries` more attempts, waiting backoff_s, 2·backoff_s, …"""
    attempts = 1 + (retries if live else 0)
    for attempt in range(attempts):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        capture = cv2.VideoCapture(target)
        if capture.isOpened():
            return capture
        capture.release()
    if not live:
        raise GanspectionError(f"--source {target}: OpenCV cannot open this video (unsupported codec or not a "
                               "video); convert it, e.g. to MJPG .avi or H.264 .mp4")
    raise GanspectionError(f"{label} cannot be opened, even after {retries} retries; check that the camera is "
                           "connected and not used by another program, or that the URL is right")


class _line_sink:
    """stdout, or a JSON-lines file opened for appending (each line is flushed, so a crash loses at most one;
    the lines of earlier runs stay)."""

    def __init__(self, out):
        self.out = Path(out) if out is not None else None
        self.handle = None

    def __enter__(self):
        if self.out is None:
            return sys.stdout
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.out, "a", encoding="utf-8")
        except OSError as error:
            raise GanspectionError(f"--out {self.out}: cannot write it ({error.strerror}); choose a writable path") \
                from None
        return self.handle

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()
        return False


def _safe(label: str) -> str:
    label = Path(label).stem if Path(label).suffix.lower() in images.IMAGE_SUFFIXES else label
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]
