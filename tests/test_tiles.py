"""Inspecting at a larger size than the network's: the grid of tiles, cutting and stitching, merging per image."""

import numpy as np
import pytest

from ganspection_tf import tiles
from ganspection_tf.config import ModelConfig
from ganspection_tf.errors import GanspectionError


def test_cut_gives_the_tiles_row_by_row_and_stitch_puts_them_back_exactly():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 6, 6, 3), dtype=np.uint8)
    cut = tiles.cut(images, 3)
    assert cut.shape == (18, 2, 2, 3)
    for index, tile in enumerate(cut):
        image, row, column = index // 9, index % 9 // 3, index % 3
        np.testing.assert_array_equal(tile, images[image, 2 * row : 2 * row + 2, 2 * column : 2 * column + 2])
    np.testing.assert_array_equal(tiles.stitch(cut, 3), images)
    np.testing.assert_array_equal(tiles.stitch(cut[..., 1], 3), images[..., 1])  # maps: no channel axis


def test_merge_takes_the_largest_scalar_places_codes_side_by_side_and_stitches_maps():
    scalars = np.array([1.0, 5.0, 2.0, 3.0, 0.0, -1.0, 4.0, 2.0])  # 2 images × 4 tiles
    np.testing.assert_array_equal(tiles.merge(scalars, 2), [5.0, 4.0])
    codes = np.arange(16.0).reshape(8, 2)
    np.testing.assert_array_equal(tiles.merge(codes, 2), np.arange(16.0).reshape(2, 8))
    maps = np.random.default_rng(1).random((2, 4, 4))
    np.testing.assert_array_equal(tiles.merge(tiles.cut(maps[..., None], 2)[..., 0], 2), maps)
    features = np.random.default_rng(2).random((2, 4, 4, 3))  # the critic's patch features: stitched by place
    np.testing.assert_array_equal(tiles.merge(tiles.cut(features, 2), 2), features)
    for values in (scalars, codes, maps):  # one tile: the outputs as they are
        assert tiles.merge(values, 1) is values


def test_the_grid_takes_whole_tiles_and_anything_else_is_a_one_line_error():
    grid = tiles.tile_grid(64, 256)
    assert (grid.tile, grid.per_side, grid.count, grid.image) == (64, 4, 16, 256)
    assert tiles.tile_grid(64, None).count == 1
    with pytest.raises(GanspectionError, match=r"^--inspect-size 32: .*64 px tiles.*use 64 or a multiple") as error:
        tiles.tile_grid(64, 32)
    assert "\n" not in str(error.value)
    with pytest.raises(GanspectionError, match="'model.inspect_size' 32"):
        ModelConfig.from_dict({"image_size": 64, "inspect_size": 32}, "config.json", "model.")
