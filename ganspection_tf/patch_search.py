"""The nearest-patch search of the patch terms (numpy only: the camera runs it on every frame).

Two questions are asked of a bank of good patch features (K, F):

* every patch's distance to its nearest bank row (:func:`nearest_patch_distances`): the patch map, for heatmaps
  and pixel metrics;
* the few largest of those distances per image (:func:`largest_nearest_distances`): the image's score, all the
  camera needs for a frame without a heatmap. It gives the same values as the largest of the full search while
  measuring most patches against a few bank rows only.

Both use |p − b|² = |p|² + (|b|² − 2 p·b), the bracket as one matrix product of [p, 1] with the bank augmented
by its squared norms ([−2 bᵀ; |b|²]), NEAREST_BLOCK patches at a time so the (block, K) product stays in cache.
"""

from __future__ import annotations

import numpy as np

from ganspection_tf.errors import GanspectionError

NEAREST_BLOCK = 256  # patches per matrix product of the search
# The bank rows that partition it for the largest-distance search: its first picks, which k-centre spreads
# over all good patches (terms.patch_bank), each with the rows nearest to it as its cell.
SEARCH_CENTRES = 128


def augmented(bank) -> np.ndarray:
    """(F + 1, K) float32 [−2 bᵀ; |b|²] of a bank (K, F): [p, 1] times it is |b|² − 2 p·b for every row b."""
    bank = np.asarray(bank, np.float32)
    return np.vstack([-2.0 * bank.T, np.sum(np.square(bank), axis=1)[np.newaxis]]).astype(np.float32)


def nearest_patch_distances(features, bank) -> np.ndarray:
    """(N, h, w) Euclidean distance of every patch feature of images (N, h, w, F) to its nearest bank row (K, F)."""
    patches = _patches(features, bank)
    squared = _nearest_squared(patches, augmented(bank))
    return np.sqrt(np.maximum(squared, 0.0)).reshape(np.shape(features)[:3])


def largest_nearest_distances(features, bank, count=1) -> np.ndarray:
    """(N, count) float64: the `count` largest nearest-bank-row distances over each image's patches, largest
    first: those of :func:`nearest_patch_distances` (to float rounding), without measuring every patch against
    the whole bank. `count` is at most the patches of an image.

    Every patch is first measured against a few rows only: the cells of the SEARCH_CENTRES first rows nearest to
    it and its neighbours in a block (:func:`_upper_bounds`), an upper bound of its distance. Patches are then
    measured against the whole bank in the order of those bounds, largest first, until the next bound is no larger
    than the `count`-th largest distance found, which no remaining patch can then exceed. On good images the bound
    is usually the distance, so one block of the full search ends it (benchmarks/RESULTS.md)."""
    patches = _patches(features, bank).reshape(np.shape(features)[0], -1, np.shape(bank)[1])
    if not 1 <= count <= patches.shape[1]:
        raise GanspectionError(f"cannot take the {count} largest of {patches.shape[1]} patch distances per image")
    index = _search_index(bank)
    return np.array([_largest_squared(image, count, *index) for image in patches], np.float64).reshape(-1, count) ** 0.5


def _patches(features, bank) -> np.ndarray:
    features = np.asarray(features, np.float32)
    if features.ndim != 4 or np.ndim(bank) != 2 or features.shape[-1] != np.shape(bank)[1]:
        raise GanspectionError(f"expected patch features (N, h, w, {np.shape(bank)[-1]}), got {features.shape}")
    return features.reshape(-1, features.shape[-1])


def _nearest_squared(patches, augmented_bank) -> np.ndarray:
    """(P,) squared distance of each patch (P, F) to its nearest row of the augmented bank."""
    block = np.ones((min(NEAREST_BLOCK, len(patches)), augmented_bank.shape[0]), np.float32)
    products = np.empty((len(block), augmented_bank.shape[1]), np.float32)
    squared = np.empty(len(patches), np.float32)
    for start in range(0, len(patches), NEAREST_BLOCK):
        rows = patches[start:start + NEAREST_BLOCK]
        block[:len(rows), :-1] = rows
        np.matmul(block[:len(rows)], augmented_bank, out=products[:len(rows)])
        squared[start:start + len(rows)] = products[:len(rows)].min(axis=1) + np.einsum("ij,ij->i", rows, rows)
    return squared


_last_index: tuple = (np.empty((0, 0), np.float32), None)  # (the bank last searched, its index)


def _search_index(bank) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(the augmented bank, its first SEARCH_CENTRES rows augmented, each one's cell augmented: the bank rows
    nearest to it, itself included), kept while the same bank is searched again (a camera's, every frame)."""
    global _last_index
    rows = np.asarray(bank, np.float32)
    if not np.array_equal(_last_index[0], rows):
        centres = min(SEARCH_CENTRES, len(rows))
        nearest = np.argmin(_with_ones(rows) @ augmented(rows[:centres]), axis=1)
        nearest[:centres] = np.arange(centres)
        by_centre = np.argsort(nearest, kind="stable")
        members, bounds = augmented(rows[by_centre]), np.searchsorted(nearest[by_centre], np.arange(centres + 1))
        cells = [np.ascontiguousarray(members[:, bounds[c]:bounds[c + 1]]) for c in range(centres)]
        _last_index = (rows.copy(), (augmented(rows), augmented(rows[:centres]), cells))
    return _last_index[1]


def _with_ones(patches) -> np.ndarray:
    """(P, F + 1) patches with a 1 appended: times an augmented bank, |b|² − 2 p·b for every row b."""
    return np.hstack([patches, np.ones((len(patches), 1), np.float32)])


def _upper_bounds(patches, centres, cells) -> np.ndarray:
    """(P,) |b|² − 2 p·b of each patch (P, F + 1) with a 1 appended, for the nearest row b of the cells of its
    block's centres: patches sorted by their nearest centre, NEAREST_BLOCK at a time, each block against the union
    of the cells of the centres nearest to its patches."""
    nearest = np.argmin(patches @ centres, axis=1)
    by_centre = np.argsort(nearest, kind="stable")
    upper = np.empty(len(patches), np.float32)
    for start in range(0, len(patches), NEAREST_BLOCK):
        chosen = by_centre[start:start + NEAREST_BLOCK]
        rows = np.hstack([cells[centre] for centre in np.unique(nearest[chosen])])
        upper[chosen] = (patches[chosen] @ rows).min(axis=1)
    return upper


def _largest_squared(patches, count, full, centres, cells) -> np.ndarray:
    """(count,) the largest squared nearest distances of one image's patches (P, F), largest first (see
    largest_nearest_distances)."""
    norms = np.einsum("ij,ij->i", patches, patches)
    patches = _with_ones(patches)
    upper = _upper_bounds(patches, centres, cells) + norms
    order = np.argsort(-upper)
    largest = np.full(count, -np.inf, np.float32)  # the `count` largest found so far, largest first
    for start in range(0, len(order), NEAREST_BLOCK):
        if upper[order[start]] <= largest[-1]:
            break
        block = order[start:start + NEAREST_BLOCK]
        found = (patches[block] @ full).min(axis=1) + norms[block]
        largest = -np.sort(-np.concatenate([largest, found]))[:count]
    return np.maximum(largest, 0.0)
