"""Image files and camera frames -> uint8 arrays, and the one resize rule shared by training and the camera
(with its inverse for anomaly maps and its twin for defect masks).

This module runs on the camera side next to LiteRT, so it must never import TensorFlow: numpy, OpenCV and
Pillow only.

Conventions used everywhere in the package:

* An image is a ``uint8`` array of shape ``(H, W, C)`` with ``C`` 1 (gray) or 3 (RGB, in that order).
* Alpha is dropped, not composited: the part is photographed, so transparency carries no information and
  compositing on an arbitrary background would invent pixel values the camera never sees.
* 16-bit samples are scaled to 8 bits by ``round(v / 257)`` (65535 -> 255, 257*k -> k), not by ``v >> 8``,
  which would bias every value downwards.
* EXIF orientation is ignored: pixels are used as stored, like the raw frames the camera delivers.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# The resize mode and the exposure level are chosen per run; config.json and bundles store them.
from ganspection_tf.config import DEFAULT_RESIZE, EXPOSURE_LEVEL_GAINS, RESIZE_MODES
from ganspection_tf.errors import GanspectionError

# Decoding a 20000x20000 RGB image takes 1.2 GB; no inspection photo needs more than this many pixels.
MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

# Our guard is stricter than Pillow's warning threshold (~89 Mpx), so its DecompressionBombWarning would only
# duplicate the GanspectionError raised below. Pillow's hard DecompressionBombError is still caught.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"}
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
# PNG colour types (IHDR byte 25) that Pillow 13 decodes to 8 bits by dropping the low byte: read those with
# OpenCV instead. 16-bit plain gray (type 0) is fine in Pillow ('I;16').
_PNG_GRAY_TYPES = {0, 4}
_PNG_COLOUR_16BIT_TYPES = {2, 4, 6}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
_READ_FIX = "check that the file opens in an image viewer, or remove it from the folder"


class UnreadableImage(GanspectionError):
    """A file that is not a decodable image; ``path`` and ``reason`` let callers collect and report skips."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: cannot read image ({reason}); {_READ_FIX}")


def read_image(path: Path | str, channels: int | None = None) -> np.ndarray:
    """Decode an image file to ``uint8 (H, W, C)`` RGB or gray.

    ``channels=None`` keeps the file's native count (1 for gray, bilevel and gray-palette files, 3 otherwise);
    1 converts colour to gray with OpenCV's RGB2GRAY weights, 3 repeats gray into RGB.
    Raises :class:`UnreadableImage` (a GanspectionError) for missing, empty, truncated or non-image files and
    for images larger than ``MAX_PIXELS``.
    """
    _check_channels(channels)
    with _open_checked(path) as im:
        png_header = _png_header(path) if im.format == "PNG" else None
        if png_header and png_header[2] == 16 and png_header[3] in _PNG_COLOUR_16BIT_TYPES:
            img = _read_colour16_png(path, gray=png_header[3] in _PNG_GRAY_TYPES)
        else:
            img = _decode_with_pil(path, im)
    # Dropping alpha leaves a strided view; OpenCV and TensorFlow want contiguous memory.
    return np.ascontiguousarray(convert_channels(img, channels))


def native_channels(path: Path | str) -> int:
    """1 or 3: the channel count :func:`read_image` returns for ``channels=None``, from the header only."""
    return image_header(path)[2]


def image_header(path: Path | str) -> tuple[int, int, int]:
    """(width, height, channels) from the header only; channels as :func:`native_channels`."""
    with _open_checked(path) as im:
        png_header = _png_header(path) if im.format == "PNG" else None
        if png_header and png_header[3] in _PNG_GRAY_TYPES:
            return (*im.size, 1)  # Pillow reports 16-bit gray+alpha as 'RGBA'
        return (*im.size, _pil_native_channels(im))


def resize_image(img: np.ndarray, size: int, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """``size x size`` with area interpolation, by the run's ``resize`` mode; keeps the channel axis.

    This is THE resize rule of the package: training, evaluation, scoring and the camera all call it (with the
    mode stored in the run and its bundle) so the model sees the same pixels everywhere. ``cv2.INTER_AREA``
    averages when shrinking (no aliasing) and behaves like bilinear when enlarging. Modes:

    * ``stretch`` (the default, and what runs without a stored mode used): the whole image, aspect ratio not kept;
    * ``pad``: the whole image, aspect ratio kept, the longer side scaled to ``size`` and the shorter one padded
      with black bands on both sides (letterbox);
    * ``crop``: the central square of the image (side = its shorter side), aspect ratio kept; what lies outside
      that square is not seen.
    """
    return _to_square(img, size, resize, cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: int, resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """A ``(H, W)`` defect mask brought to ``size x size`` exactly as :func:`resize_image` brings its image
    (same mode, same geometry), with nearest-neighbour interpolation so that it stays binary."""
    return _to_square(mask, size, resize, cv2.INTER_NEAREST)[..., 0]


def map_to_image(square_map: np.ndarray, image_hw: tuple[int, int], resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """The inverse of :func:`resize_image` for a float map over the model's square input: the same map over the
    original ``(height, width)`` image, bilinear. ``pad`` drops the bands; ``crop`` leaves 0 outside the square
    the model saw."""
    _check_resize(resize)
    square_map = np.asarray(square_map, dtype=np.float32)
    height, width = int(image_hw[0]), int(image_hw[1])
    if resize == "pad":
        top, left, inner_h, inner_w = _pad_geometry(height, width, square_map.shape[0])
        square_map = square_map[top:top + inner_h, left:left + inner_w]
    if resize != "crop":
        return cv2.resize(square_map, (width, height), interpolation=cv2.INTER_LINEAR)
    top, left, side = _crop_geometry(height, width)
    full = np.zeros((height, width), np.float32)
    full[top:top + side, left:left + side] = cv2.resize(square_map, (side, side), interpolation=cv2.INTER_LINEAR)
    return full


def frame_to_rgb(frame: np.ndarray, color_order: str = "bgr", channels: int = 3) -> np.ndarray:
    """Convert an OpenCV camera frame to the layout :func:`read_image` produces.

    Accepts ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` and ``(H, W, 4)`` uint8 frames in BGR(A) (OpenCV's
    default) or RGB(A) order. Alpha is dropped. Gray conversion happens in RGB order with the same call as
    ``read_image(channels=1)``, so a frame and a file of the same picture give identical arrays.
    """
    _check_channels(channels)
    order = color_order.lower()
    if order not in ("bgr", "rgb"):
        raise GanspectionError(f"color order must be 'bgr' or 'rgb', got {color_order!r}")
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise GanspectionError(
            f"camera frames must be 8-bit (uint8), got {frame.dtype}; configure the camera for 8-bit output"
        )
    frame = _with_channel_axis(frame)
    if frame.shape[2] not in (1, 3, 4):
        raise GanspectionError(f"camera frame has {frame.shape[2]} channels; expected 1, 3 or 4")
    if frame.shape[2] >= 3:
        frame = frame[..., :3]
        if order == "bgr":
            frame = frame[..., ::-1]
    return convert_channels(np.ascontiguousarray(frame), channels)


def convert_channels(img: np.ndarray, channels: int | None) -> np.ndarray:
    """Gray <-> RGB for an ``(H, W, 1|3)`` uint8 image; ``None`` returns it unchanged."""
    _check_channels(channels)
    img = _with_channel_axis(img)
    if channels is None or img.shape[2] == channels:
        return img
    if channels == 1:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., np.newaxis]
    return np.repeat(img, 3, axis=2)


def to_unit_range(img_uint8: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1], the range the generator's tanh output lives in."""
    return np.asarray(img_uint8, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def reexposed(img_uint8: np.ndarray, gain: float) -> np.ndarray:
    """The image as if photographed with ``gain`` times the light: scaled, rounded and clipped to uint8 (what the
    exposure augmentation does to training batches, ``pipeline.augment_batch``)."""
    return np.clip(np.rint(img_uint8.astype(np.float32) * gain), 0, 255).astype(np.uint8)


def levelled(img_uint8: np.ndarray, level: float) -> np.ndarray:
    """The image re-exposed so that its mean grey level is ``level`` (0: unchanged), by one gain within
    ``EXPOSURE_LEVEL_GAINS``. Applied after :func:`resize_image` by training, scoring and the camera alike, so a
    part photographed in dimmer or brighter light reaches the networks as the training photos did."""
    if not level:
        return img_uint8
    gain = np.clip(level / max(float(np.mean(img_uint8)), 1.0), *EXPOSURE_LEVEL_GAINS)
    return reexposed(img_uint8, float(gain))


def from_unit_range(x: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8, rounding to nearest and clipping values the generator overshoots."""
    scaled = (np.asarray(x, dtype=np.float32) + 1.0) * 127.5
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def list_images(folder: Path | str) -> list[Path]:
    """Image files directly in ``folder`` (not recursive), sorted by name; hidden files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GanspectionError(f"{folder}: folder does not exist; check the path")
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


# --- helpers ---------------------------------------------------------------------------------------------


def _check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise GanspectionError(f"resize mode {resize!r} is unknown; choose one of {', '.join(RESIZE_MODES)}")


def _to_square(img: np.ndarray, size: int, resize: str, interpolation: int) -> np.ndarray:
    if int(size) != size or size < 1:
        raise GanspectionError(f"image size must be a positive integer, got {size!r}; pass e.g. --image-size 128")
    _check_resize(resize)
    size = int(size)
    img = _with_channel_axis(img)
    height, width = img.shape[:2]
    if resize == "crop":
        top, left, side = _crop_geometry(height, width)
        img = img[top:top + side, left:left + side]
    if resize != "pad":
        return _with_channel_axis(cv2.resize(img, (size, size), interpolation=interpolation))
    top, left, inner_h, inner_w = _pad_geometry(height, width, size)
    square = np.zeros((size, size, img.shape[2]), img.dtype)
    square[top:top + inner_h, left:left + inner_w] = _with_channel_axis(
        cv2.resize(img, (inner_w, inner_h), interpolation=interpolation)  # cv2 drops a trailing axis of length 1
    )
    return square


def _pad_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside the padded ``size x size`` square."""
    scale = size / max(height, width)
    inner_h, inner_w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - inner_h) // 2, (size - inner_w) // 2, inner_h, inner_w


def _crop_geometry(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the central square of a ``height x width`` image."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def _check_channels(channels: int | None) -> None:
    if channels not in (None, 1, 3):
        raise GanspectionError(f"channels must be 1 or 3, got {channels!r}; pass --channels 1 or --channels 3")


def _with_channel_axis(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        return img[..., np.newaxis]
    if img.ndim != 3:
        raise GanspectionError(f"expected an image of shape (H, W) or (H, W, C), got shape {img.shape}")
    return img


def _open_checked(path: Path | str) -> Image.Image:
    """Open lazily (header only) and refuse oversized images before any pixel is decoded."""
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:
        # Pillow refused before handing out the size; for PNG read the claimed size from the header ourselves.
        header = _png_header(path)
        if header is None:
            raise UnreadableImage(path, f"too large to decode safely: {exc}") from None
        raise _too_large(path, header[0], header[1]) from None
    except _DECODE_ERRORS as exc:
        raise UnreadableImage(path, _empty_or(path, exc)) from None
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise _too_large(path, width, height)
    return im


def _too_large(path: Path | str, width: int, height: int) -> UnreadableImage:
    return UnreadableImage(
        path,
        f"header claims {width}x{height} = {width * height} pixels, more than the {MAX_PIXELS} allowed; "
        "possibly a decompression bomb",
    )


def _empty_or(path: Path | str, exc: BaseException) -> str:
    """'file is empty' says more than Pillow's 'cannot identify image file' for a 0-byte file."""
    try:
        if Path(path).stat().st_size == 0:
            return "file is empty (0 bytes)"
    except OSError:
        pass
    return _reason(exc)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _png_header(path: Path | str) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk, which the format puts first."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour_type = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, colour_type


def _decode_with_pil(path: Path | str, im: Image.Image) -> np.ndarray:
    try:
        im.load()  # Pillow decodes lazily; a truncated file only fails here (we never set LOAD_TRUNCATED_IMAGES)
        return _pil_to_array(im)
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(path, f"too large to decode safely: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise UnreadableImage(path, _reason(exc)) from None


def _pil_to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_to_eight(np.asarray(im))[..., np.newaxis]
    if mode == "P" or mode == "PA":
        rgb = np.asarray(im.convert("RGBA"))[..., :3]  # via RGBA so transparency info never warns
        return rgb[..., :1] if _palette_is_gray(im) else rgb
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(im.convert("L"))[..., np.newaxis]  # bilevel becomes 0/255; alpha is dropped
    if mode in ("RGB", "RGBA", "RGBa", "RGBX"):
        return np.asarray(im)[..., :3]
    return np.asarray(im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, F: let Pillow map them to RGB


def _pil_native_channels(im: Image.Image) -> int:
    if im.mode in _GRAY_MODES:
        return 1
    if im.mode in ("P", "PA"):
        return 1 if _palette_is_gray(im) else 3
    return 3


def _palette_is_gray(im: Image.Image) -> bool:
    palette = im.getpalette("RGB")
    if not palette:
        return False
    entries = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return bool(np.all(entries == entries[:, :1]))


def _read_colour16_png(path: Path | str, gray: bool) -> np.ndarray:
    """16-bit RGB(A) / gray+alpha PNGs: Pillow 13 truncates them to 8 bits, OpenCV keeps all 16."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # imdecode, unlike imread, copes with non-ASCII paths
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except (OSError, cv2.error) as exc:
        raise UnreadableImage(path, _reason(exc)) from None
    if decoded is None or decoded.dtype != np.uint16 or decoded.ndim != 3:
        raise UnreadableImage(path, "OpenCV could not decode this 16-bit PNG (truncated or corrupt?)")
    rgb = _sixteen_to_eight(decoded[..., 2::-1])  # BGR(A) -> RGB, alpha dropped
    return rgb[..., :1] if gray else rgb


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    # (v + 128) // 257 is round(v / 257) exactly: 257 is odd, so v / 257 never lands on .5
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide + 128) // 257).astype(np.uint8)
