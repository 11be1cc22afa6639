"""The bad-input corpus, generated on demand (no committed binaries).

Each writer makes one awkward file the way a factory share drive produces them: empty, cut off, mislabelled,
16-bit, with alpha or a palette, gray among colour, 1×1, or a header that claims 20 000 × 20 000 pixels.
"""

import struct
import zlib

import numpy as np
from PIL import Image

PNG_GRAY, PNG_RGB, PNG_GRAY_ALPHA, PNG_RGBA = 0, 2, 4, 6


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_raw_png(path, pixels: np.ndarray, colour_type: int, claimed_size=None):
    """A PNG written by hand, so 16-bit and odd layouts do not depend on what an encoder supports."""
    height, width = pixels.shape[:2]
    depth = 16 if pixels.dtype == np.uint16 else 8
    rows = pixels.astype(">u2" if depth == 16 else np.uint8).reshape(height, -1)
    scanlines = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    width, height = claimed_size or (width, height)
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(scanlines)) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def random_rgb(shape=(20, 30, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def zero_byte(path):
    path.write_bytes(b"")
    return path


def truncated_png(path, size=64):
    Image.fromarray(random_rgb((size, size, 3))).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # stops in the middle of the pixel data
    return path


def text_named_png(path):
    path.write_text("this is not an image\n")
    return path


def bomb_png(path):
    """A tiny file whose header claims 20 000 × 20 000 pixels."""
    return write_raw_png(path, np.zeros((1, 1), np.uint8), PNG_GRAY, claimed_size=(20000, 20000))


def sixteen_bit_png(path, like):
    return write_raw_png(path, like.astype(np.uint16) * 257, PNG_RGB)


def rgba_png(path, like):
    alpha = np.full(like.shape[:2] + (1,), 128, np.uint8)
    Image.fromarray(np.concatenate([like, alpha], axis=-1), "RGBA").save(path)
    return path


def palette_png(path, like):
    Image.fromarray(like).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path)
    return path


def gray_png(path, like):
    Image.fromarray(like).convert("L").save(path)
    return path


def one_pixel_png(path):
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(path)
    return path
