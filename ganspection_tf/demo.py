"""The demo's recipe, written once: the embedded synthetic category and what `ganspection-tf demo` trains on it
within a few minutes on 2 cores. The CLI runs it on seed 0; ``benchmarks/demo_seeds.py`` measures
it, and any change to it, on other seeds."""

from __future__ import annotations

from pathlib import Path

from ganspection_tf.config import TrainConfig
from ganspection_tf.data import synthetic

STEPS = 350
IMAGE_SIZES = (32, 64)
CATEGORY_NAME = "widget"
TRAIN_IMAGES = 200
# 100 test images: the AUROC a newcomer reads has a standard error of about 0.025 (36 images: 0.04)
TEST_SPLIT = {"n_test_good": 40, "n_test_per_defect": 20}
SEED = 0


def write_category(out: Path, seed: int = SEED, train_images: int | None = None) -> Path:
    """The demo's synthetic category (aligned mode, 128 px) under ``out``; TRAIN_IMAGES unless `train_images`."""
    return synthetic.write_synthetic_category(out, name=CATEGORY_NAME, image_size=128, seed=seed, overwrite=True,
                                              n_train=train_images or TRAIN_IMAGES, **TEST_SPLIT)


def test_images() -> int:
    return TEST_SPLIT["n_test_good"] + TEST_SPLIT["n_test_per_defect"] * len(synthetic.DEFECT_TYPES)


def config(data: Path, image_size: int = IMAGE_SIZES[0], steps: int = STEPS, **overrides) -> TrainConfig:
    """The product's defaults (width, latent size, λ_rec, everything) at the demo's small image size and length."""
    return TrainConfig.from_flat(**{"data": str(data), "image_size": image_size, "steps": steps, **overrides})
