"""Decoding, channel handling, resizing and the file/frame agreement of ganspection_tf.images."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from corpus import PNG_GRAY, PNG_GRAY_ALPHA, PNG_RGB, PNG_RGBA, random_rgb, write_raw_png

from ganspection_tf.errors import GanspectionError
from ganspection_tf.images import (
    MAX_PIXELS,
    RESIZE_MODES,
    frame_to_rgb,
    from_unit_range,
    levelled,
    list_images,
    map_to_image,
    native_channels,
    read_image,
    resize_image,
    resize_mask,
    to_unit_range,
)

# --- decoding --------------------------------------------------------------------------------------------


def test_8bit_rgb_and_gray_png_decode_exactly(tmp_path):
    rgb = random_rgb()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    decoded = read_image(tmp_path / "rgb.png")
    assert decoded.dtype == np.uint8 and decoded.shape == (20, 30, 3)
    np.testing.assert_array_equal(decoded, rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), rgb[..., :1])


SIXTEEN_BIT_VALUES = np.array([[0, 65535, 257 * 7, 257 * 200], [257 * 9 + 128, 257 * 9 + 129, 1, 65534]], np.uint16)
# round(v / 257): 257*9+128 is 9.498 -> 9, 257*9+129 is 9.502 -> 10; truncation (v >> 8) would give 9 for both
EIGHT_BIT_VALUES = np.array([[0, 255, 7, 200], [9, 10, 0, 255]], np.uint8)


def test_16bit_gray_png_scales_by_257_with_rounding(tmp_path):
    path = write_raw_png(tmp_path / "gray16.png", SIXTEEN_BIT_VALUES, PNG_GRAY)
    decoded = read_image(path)
    assert decoded.dtype == np.uint8 and decoded.shape == (2, 4, 1)
    np.testing.assert_array_equal(decoded[..., 0], EIGHT_BIT_VALUES)
    assert native_channels(path) == 1


def test_16bit_rgb_png_scales_each_channel_and_keeps_rgb_order(tmp_path):
    rgb16 = np.stack([SIXTEEN_BIT_VALUES, SIXTEEN_BIT_VALUES[:, ::-1], np.full_like(SIXTEEN_BIT_VALUES, 257 * 3)], -1)
    path = write_raw_png(tmp_path / "rgb16.png", rgb16, PNG_RGB)
    decoded = read_image(path)
    assert decoded.shape == (2, 4, 3)
    np.testing.assert_array_equal(decoded[..., 0], EIGHT_BIT_VALUES)
    np.testing.assert_array_equal(decoded[..., 1], EIGHT_BIT_VALUES[:, ::-1])
    np.testing.assert_array_equal(decoded[..., 2], np.full((2, 4), 3))
    assert native_channels(path) == 3


def test_16bit_png_with_alpha_drops_alpha(tmp_path):
    rgba16 = np.stack([SIXTEEN_BIT_VALUES] * 3 + [np.zeros_like(SIXTEEN_BIT_VALUES)], -1)
    gray_alpha16 = np.stack([SIXTEEN_BIT_VALUES, np.zeros_like(SIXTEEN_BIT_VALUES)], -1)
    rgba = read_image(write_raw_png(tmp_path / "rgba16.png", rgba16, PNG_RGBA))
    gray_path = write_raw_png(tmp_path / "la16.png", gray_alpha16, PNG_GRAY_ALPHA)
    np.testing.assert_array_equal(rgba, np.stack([EIGHT_BIT_VALUES] * 3, -1))
    np.testing.assert_array_equal(read_image(gray_path)[..., 0], EIGHT_BIT_VALUES)
    assert native_channels(gray_path) == 1


def test_rgba_keeps_colour_under_transparent_pixels(tmp_path):
    rgba = np.concatenate([random_rgb(), np.zeros((20, 30, 1), np.uint8)], axis=2)  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])
    assert native_channels(tmp_path / "rgba.png") == 3


def test_gray_alpha_bilevel_and_palette_modes(tmp_path):
    gray = random_rgb((10, 12, 1))[..., 0]
    Image.fromarray(np.stack([gray, gray // 2], -1), "LA").save(tmp_path / "la.png")
    Image.fromarray(gray > 127).save(tmp_path / "bilevel.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "gray_palette.png")  # a gray-only palette
    colour = Image.fromarray(random_rgb((10, 12, 3))).quantize(colors=16)
    colour.save(tmp_path / "palette.png")

    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[..., 0], gray)
    np.testing.assert_array_equal(read_image(tmp_path / "bilevel.png")[..., 0], np.where(gray > 127, 255, 0))
    np.testing.assert_array_equal(read_image(tmp_path / "gray_palette.png")[..., 0], gray)
    np.testing.assert_array_equal(read_image(tmp_path / "palette.png"), np.asarray(colour.convert("RGB")))
    names = ("la.png", "bilevel.png", "gray_palette.png", "palette.png")
    assert [native_channels(tmp_path / n) for n in names] == [1, 1, 1, 3]


def test_channel_conversion_uses_rgb2gray_and_repeats_gray(tmp_path):
    rgb = random_rgb()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 1]).save(tmp_path / "gray.png")
    as_gray = read_image(tmp_path / "rgb.png", channels=1)
    np.testing.assert_array_equal(as_gray[..., 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png", channels=3), np.repeat(rgb[..., 1:2], 3, axis=2))
    with pytest.raises(GanspectionError, match="channels"):
        read_image(tmp_path / "rgb.png", channels=2)


def test_gray_image_stored_as_rgb_stays_three_channels_natively(tmp_path):
    gray = random_rgb((8, 8, 1))
    Image.fromarray(np.repeat(gray, 3, axis=2)).save(tmp_path / "gray_in_rgb.png")
    assert native_channels(tmp_path / "gray_in_rgb.png") == 3
    np.testing.assert_array_equal(read_image(tmp_path / "gray_in_rgb.png", channels=1), gray)


def test_jpeg_and_bmp(tmp_path):
    smooth = np.dstack(list(np.meshgrid(np.linspace(0, 255, 32), np.linspace(40, 200, 24))) + [np.full((24, 32), 90.0)])
    smooth = smooth.astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "a.JPG", quality=95)
    Image.fromarray(smooth).save(tmp_path / "a.bmp")
    jpeg = read_image(tmp_path / "a.JPG")
    assert jpeg.shape == (24, 32, 3)
    assert np.abs(jpeg.astype(int) - smooth).mean() < 3  # lossy, but close
    np.testing.assert_array_equal(read_image(tmp_path / "a.bmp"), smooth)


# --- unreadable files ------------------------------------------------------------------------------------


def _assert_unreadable(path, *fragments):
    with pytest.raises(GanspectionError) as caught:
        read_image(path)
    message = str(caught.value)
    assert path.name in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_zero_byte_file_raises_naming_it(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    _assert_unreadable(tmp_path / "empty.png", "empty")


def test_truncated_png_raises(tmp_path):
    Image.fromarray(random_rgb((64, 64, 3))).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # stops in the middle of the pixel data
    _assert_unreadable(tmp_path / "cut.png", "truncated")


def test_text_file_named_png_and_missing_file_raise(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n")
    _assert_unreadable(tmp_path / "notes.png", "cannot read image")
    _assert_unreadable(tmp_path / "missing.png")
    with pytest.raises(GanspectionError, match="notes.png"):
        native_channels(tmp_path / "notes.png")


def test_decompression_bomb_header_is_rejected_before_decoding(tmp_path):
    bomb = write_raw_png(tmp_path / "bomb.png", np.zeros((1, 1), np.uint8), PNG_GRAY, claimed_size=(20000, 20000))
    assert bomb.stat().st_size < 200
    _assert_unreadable(bomb, "20000x20000")
    with pytest.raises(GanspectionError, match="bomb.png"):
        native_channels(bomb)


def test_image_just_over_our_limit_is_rejected_by_our_guard(tmp_path):
    # 72 Mpx: under Pillow's own bomb limit, over MAX_PIXELS, so only our header check stops it
    width, height = 9000, 8000
    assert MAX_PIXELS < width * height < Image.MAX_IMAGE_PIXELS
    big = write_raw_png(tmp_path / "big.png", np.zeros((1, 1), np.uint8), PNG_GRAY, claimed_size=(width, height))
    _assert_unreadable(big, "9000x8000", str(MAX_PIXELS))


# --- resize, frames, ranges, listing ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(100, 60, 3), (100, 60, 1), (100, 60), (10, 7, 3)])
def test_resize_shapes_keep_a_channel_axis(shape):
    img = np.zeros(shape, np.uint8)
    out = resize_image(img, 32)
    channels = shape[2] if len(shape) == 3 else 1
    assert out.shape == (32, 32, channels) and out.dtype == np.uint8


def test_resize_is_area_averaging_when_shrinking():
    img = np.arange(16, dtype=np.uint8).reshape(4, 4, 1) * 10
    out = resize_image(img, 2)
    block_means = img[..., 0].reshape(2, 2, 2, 2).mean(axis=(1, 3))
    np.testing.assert_array_equal(out[..., 0], np.rint(block_means))


def test_pad_keeps_the_aspect_ratio_with_black_bands():
    img = np.full((50, 100, 3), 200, np.uint8)  # 2:1, like parts on a conveyor
    out = resize_image(img, 32, "pad")
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out[8:24], 200)  # the whole image, 32 × 16, in the middle
    assert out[:8].max() == 0 and out[24:].max() == 0


def test_crop_keeps_the_central_square():
    img = np.zeros((40, 80, 1), np.uint8)
    img[:, 20:60] = 255  # the central 40 × 40 square
    np.testing.assert_array_equal(resize_image(img, 20, "crop"), 255)
    np.testing.assert_array_equal(resize_image(img, 20, "stretch")[:, :5], 0)


def test_square_images_look_the_same_in_every_mode():
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for mode in RESIZE_MODES:
        np.testing.assert_array_equal(resize_image(img, 32, mode), resize_image(img, 32))


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_masks_follow_their_images_and_maps_go_back(mode):
    image = np.zeros((60, 120, 3), np.uint8)
    mask = np.zeros((60, 120), np.uint8)
    image[20:40, 50:90] = 255
    mask[20:40, 50:90] = 255
    square_image, square_mask = resize_image(image, 32, mode), resize_mask(mask, 32, mode)
    assert square_mask.shape == (32, 32) and set(np.unique(square_mask)) == {0, 255}  # still binary
    box = [np.argwhere(square > 127)[:, :2] for square in (square_image, square_mask)]  # the defect's pixels
    np.testing.assert_allclose(box[0].min(axis=0), box[1].min(axis=0), atol=1)  # same place, within a pixel
    np.testing.assert_allclose(box[0].max(axis=0), box[1].max(axis=0), atol=1)
    back = map_to_image(square_mask.astype(np.float32) / 255, (60, 120), mode)
    assert back.shape == (60, 120)
    assert back[30, 70] > 0.5 and back[5, 45] < 0.5 and back[50, 80] < 0.5


def test_resize_rejects_an_unknown_mode():
    with pytest.raises(GanspectionError, match="resize mode 'squash'"):
        resize_image(np.zeros((4, 4, 3), np.uint8), 2, "squash")


def test_resize_rejects_bad_size():
    with pytest.raises(GanspectionError, match="size"):
        resize_image(np.zeros((4, 4, 3), np.uint8), 0)


def test_bgr_frame_matches_the_same_picture_read_from_a_file(tmp_path):
    frame = random_rgb((24, 32, 3), seed=3)  # what the camera hands over: BGR
    cv2.imwrite(str(tmp_path / "frame.png"), frame)
    np.testing.assert_array_equal(frame_to_rgb(frame), read_image(tmp_path / "frame.png"))
    np.testing.assert_array_equal(frame_to_rgb(frame, channels=1), read_image(tmp_path / "frame.png", channels=1))


def test_frame_layouts_and_orders():
    rgb = random_rgb((6, 5, 3), seed=4)
    bgra = np.concatenate([rgb[..., ::-1], np.full((6, 5, 1), 7, np.uint8)], axis=2)
    rgba = np.concatenate([rgb, np.zeros((6, 5, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(frame_to_rgb(bgra), rgb)
    np.testing.assert_array_equal(frame_to_rgb(rgba, color_order="rgb"), rgb)
    np.testing.assert_array_equal(frame_to_rgb(rgb, color_order="RGB"), rgb)
    gray = rgb[..., 0]
    np.testing.assert_array_equal(frame_to_rgb(gray), np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(frame_to_rgb(gray[..., None], channels=1), gray[..., None])
    with pytest.raises(GanspectionError, match="uint8"):
        frame_to_rgb(rgb.astype(np.uint16))
    with pytest.raises(GanspectionError, match="color order"):
        frame_to_rgb(rgb, color_order="hsv")


def test_unit_range_round_trip_and_clipping():
    every_value = np.arange(256, dtype=np.uint8)
    unit = to_unit_range(every_value)
    assert unit.dtype == np.float32 and unit[0] == -1.0 and unit[-1] == 1.0
    np.testing.assert_array_equal(from_unit_range(unit), every_value)
    np.testing.assert_array_equal(from_unit_range(np.array([-3.0, 0.0, 1.7])), [0, 128, 255])


def test_levelling_brings_the_mean_to_the_level_with_one_bounded_gain():
    photo = np.random.default_rng(0).integers(60, 140, (32, 32, 3)).astype(np.uint8)
    brought = levelled(photo, 150.0)
    assert abs(brought.mean() - 150.0) < 0.5
    np.testing.assert_allclose(brought, photo * (150.0 / photo.mean()), atol=0.51)  # one gain for every pixel
    np.testing.assert_array_equal(levelled(photo, 0.0), photo)  # 0: off
    nearly_black = np.full((8, 8, 1), 3, dtype=np.uint8)
    assert levelled(nearly_black, 200.0).max() == 6  # at most twice as bright: noise is not amplified into a part
    assert levelled(np.full((8, 8, 1), 250, dtype=np.uint8), 50.0).max() == 125  # at most half as bright


def test_list_images_is_sorted_case_insensitive_flat_and_skips_hidden(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.JPEG", "d.bmp", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.png").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.JPEG", "d.bmp"]
    with pytest.raises(GanspectionError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_camera_side_modules_do_not_import_tensorflow():
    # images, mvtec and synthetic run next to LiteRT on the camera, where TensorFlow is not installed
    code = (
        "import sys; import ganspection_tf.images, ganspection_tf.data.mvtec, ganspection_tf.data.synthetic; "
        "sys.exit('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert result.returncode == 0
