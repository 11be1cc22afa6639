"""How long decoding an image file takes before the camera's frame starts, and the floor under PNG decoding.

    python benchmarks/decode_latency.py FOLDER [FOLDER ...] [--images 40] [--rounds 5]

Issue 13's frame target counts decoding. The camera's frame figures (``edge_latency.py``) start from a decoded
image, as frames from a camera arrive; files from a folder (``camera --source DIR``, ``score``) are decoded first.
Per folder, the median over its first --images files decoded --rounds times (the files in turn), one thread:

* ``package``: ``images.read_image``, what ``camera --source DIR`` and ``score`` call (Pillow for 8-bit files);
* ``cv2.imdecode``: OpenCV's decoder on the bytes already in memory (libpng / libjpeg-turbo);
* ``inflate only`` (PNG): zlib's inflate of the file's IDAT data alone, no unfiltering and no colour handling.
  Every PNG decoder has to do at least this, so it is the floor for any decoder of these files on one thread;
* ``as JPEG q95``: the same pixels encoded as JPEG (quality 95) and decoded with ``cv2.imdecode``.
"""

import argparse
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

from ganspection_tf.images import list_images, read_image


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    print("| folder | image | package ms | cv2.imdecode ms | inflate only ms | as JPEG q95 ms |")
    print("|---|---|---|---|---|---|")
    for folder in args.folders:
        paths = list_images(folder)[: args.images]
        decoders = [file_decoders(path) for path in paths]
        elapsed = {key: np.full((args.rounds, len(paths)), np.nan) for key in decoders[0]}
        for round_index in range(args.rounds):  # files in turn: no decoder decodes the same file twice in a row
            for file_index, decoding in enumerate(decoders):
                for key, decode in decoding.items():
                    if decode is not None:
                        elapsed[key][round_index, file_index] = timed_ms(decode)
        shape = "×".join(map(str, read_image(paths[0]).shape))
        cells = [f"{np.nanmedian(elapsed[key]):.1f}" if np.isfinite(elapsed[key]).any() else "–"
                 for key in ("package", "cv2", "inflate", "jpeg")]
        print(f"| {folder} | {shape} | " + " | ".join(cells) + " |")


def file_decoders(path: Path) -> dict:
    """The four decodings of one file (module docstring); inflate is None for other formats than PNG."""
    data = path.read_bytes()
    encoded = np.frombuffer(data, np.uint8)
    jpeg = cv2.imencode(".jpg", cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
    idat = png_idat(data)
    return {
        "package": lambda: read_image(path),
        "cv2": lambda: cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED),
        "inflate": None if idat is None else (lambda: zlib.decompress(idat)),
        "jpeg": lambda: cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED),
    }


def timed_ms(decode) -> float:
    start = time.perf_counter()
    decode()
    return 1e3 * (time.perf_counter() - start)


def png_idat(data: bytes) -> bytes | None:
    """The concatenated IDAT chunks of a PNG file (its compressed pixel rows), None for other formats."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    chunks, offset = [], 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset: offset + 8])
        if kind == b"IDAT":
            chunks.append(data[offset + 8: offset + 8 + length])
        offset += 12 + length
    return b"".join(chunks)


if __name__ == "__main__":
    main()
