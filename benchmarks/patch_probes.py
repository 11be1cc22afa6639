"""Which features patch_distance compares, judged on synthetic defects of good validation images only.

    python benchmarks/patch_probes.py --run RUN_DIR [--run RUN_DIR ...] [--reference 100]

For every trained run given: each stage of the encoder's and the critic's image path (and raw 4×4 pixel
patches, stride 2, as the learning-free row) as patch features; a bank from up to --reference good TRAINING
images of the run (all patches, at most 20 000 drawn at random, or ``terms.patch_bank``'s k-centre selection of
`terms.PATCH_BANK_SIZE`); the score of an image is the mean of its `terms.PATCH_SCORE_COUNT` largest
nearest-neighbour distances (``terms.patch_distance``). Printed: the AUROC of good validation images against their
synthetic-defect copies (``synthetic_validation.defective_inputs``: the copies the score chooser draws), one
column per run and the mean. No test image is read.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ganspection_tf import terms  # noqa: E402
from ganspection_tf.data import pipeline  # noqa: E402
from ganspection_tf.images import to_unit_range  # noqa: E402
from ganspection_tf.models.networks import pyramid_depth  # noqa: E402
from ganspection_tf.run import RunFolder  # noqa: E402
from ganspection_tf.score_choice import auroc_of  # noqa: E402
from ganspection_tf.synthetic_validation import defective_inputs  # noqa: E402

RANDOM_BANK = 20_000


def probe_rows(run_dir, reference):
    """{row name: validation AUROC on synthetic defects} for one run."""
    run = RunFolder(run_dir)
    model = run.load_model()
    encoder, _, critic = model.scoring_networks()
    size, channels = model.image_size, model.channels
    train, _ = pipeline.load_run_images(run, run.training_images(at_most=reference), size, channels)
    good, _ = pipeline.load_run_images(run, run.validation_images(), size, channels)
    defective, _ = defective_inputs(run.validation_images(), size, channels, run.resize, run.exposure_level)
    rows = {}
    for network, prefix, image_input in ((encoder, "enc", encoder.input), (critic, "crit", critic.inputs[0])):
        for stage in range(pyramid_depth(size) - 1):
            layer = f"{prefix}_act{stage}"
            features = keras.Model(image_input, network.get_layer(layer).output)
            extract = lambda images: features.predict(to_unit_range(images), verbose=0, batch_size=32)  # noqa: E731
            rows.update(bank_rows(layer, extract(train), extract(good), extract(defective), coreset=layer == "crit_act1"))
    rows.update(bank_rows("pixels 4×4 / 2", pixel_patches(train), pixel_patches(good), pixel_patches(defective)))
    return rows


def bank_rows(name, train, good, defective, coreset=False):
    patches = train.reshape(-1, train.shape[-1])
    chosen = np.random.default_rng(0).choice(len(patches), min(RANDOM_BANK, len(patches)), replace=False)
    banks = {f"{name}, {len(chosen)} random": patches[chosen]}
    if coreset:
        banks[f"{name}, {terms.PATCH_BANK_SIZE} random"] = patches[chosen[: terms.PATCH_BANK_SIZE]]
        banks[f"{name}, {terms.PATCH_BANK_SIZE} k-centre (the product)"] = terms.patch_bank(train)
    return {row: auroc_of(terms.patch_distance(good, bank), terms.patch_distance(defective, bank))
            for row, bank in banks.items()}


def pixel_patches(images):
    return tf.image.extract_patches(to_unit_range(images), [1, 4, 4, 1], [1, 2, 2, 1], [1, 1, 1, 1], "VALID").numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="a trained run folder (repeat for several)")
    parser.add_argument("--reference", type=int, default=100, help="training images the bank is drawn from")
    args = parser.parse_args()
    columns = {RunFolder(run).path.name: probe_rows(run, args.reference) for run in args.run}
    names = list(columns)
    print("| patch features (validation AUROC, synthetic defects) | " + " | ".join(names) + " | mean |")
    print("|---|" + "---|" * (len(names) + 1))
    for row in next(iter(columns.values())):
        values = [columns[name][row] for name in names]
        print(f"| {row} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f} |")


if __name__ == "__main__":
    main()
