"""Image grids a person looks at: samples, reconstructions, heatmaps. numpy only."""

import numpy as np

GAP = 2  # pixels of background between tiles


def to_uint8(images):
    """[-1, 1] floats → uint8 (rounded, clipped)."""
    return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images, columns=8, background=255):
    """Tiles a batch (N, H, W, C) of uint8 images into one RGB image, row by row."""
    images = np.asarray(images)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    count, height, width, channels = images.shape
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    canvas = np.full(
        (rows * height + (rows + 1) * GAP, columns * width + (columns + 1) * GAP, channels), background, np.uint8
    )
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = GAP + row * (height + GAP), GAP + column * (width + GAP)
        canvas[top : top + height, left : left + width] = image
    return canvas


def pairs_grid(originals, reconstructions, columns=8):
    """Inputs on one row and their reconstructions on the row below, `columns` pairs per band."""
    originals, reconstructions = np.asarray(originals), np.asarray(reconstructions)
    bands = []
    for start in range(0, len(originals), columns):
        bands.append(originals[start : start + columns])
        bands.append(reconstructions[start : start + columns])
    return grid(np.concatenate(bands), columns=min(columns, len(originals)))
