"""`ganspection-tf evaluate`: how well a trained run separates defects from good parts, on a labelled test split.

Writes ``RUN_DIR/eval/`` (every file atomically):

    metrics.json          image AUROC / AUPR (overall and per defect type) for every term and the combined
                          score, F1 at the calibrated threshold, F1-max (labelled "oracle": its threshold is
                          chosen on the test set), pixel AUROC and AU-PRO (FPR ≤ 0.3, normalised), and the
                          good validation photos that score highest (``threshold_setters.py``)
    scores.csv            one row per test image: path, defect type, label, combined score, every term
    roc.png               ROC curves of the combined score and every term
    score_histograms.png  per-class score histograms, one panel per score, with the threshold
    heatmaps.png          image | reconstruction | heatmap | ground truth, worst and best cases
    model_vs_template.png the first good test images and one per defect type: input | the model's reconstruction
                          | the template (mean good training image, ``template.py``) | both error maps
    report.html           all of the above with a metrics table, for a quality engineer

The calibration comes from :func:`scoring.ensure_calibration` (good validation images only) BEFORE any test
image is read. The evaluation refuses unreadable test images and defect images without masks instead of
dropping them: a metric over silently dropped files is a wrong metric. Test images stream through the model
in batches; what is kept per image is its terms and its pixel map at ``PIXEL_EVAL_SIZE``².
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import cv2
import numpy as np
from sklearn import metrics as skm

from ganspection_tf import artifacts, exposure_tolerance, scoring, threshold_setters
from ganspection_tf.calibration import fit_calibration, fitted_columns, weight_vector
from ganspection_tf.data import mvtec
from ganspection_tf.errors import GanspectionError
from ganspection_tf.heatmaps import anomaly_map, map_sigma
from ganspection_tf.images import DEFAULT_RESIZE, from_unit_range, read_image, resize_image, resize_mask
from ganspection_tf.run import RunFolder
from ganspection_tf.template import error_maps as template_error_maps
from ganspection_tf.template import run_template
from ganspection_tf.terms import MODEL_OUTPUTS, REGISTRY, TERMS

COMBINED = "combined"
# Pixel metrics are computed on maps and masks resized to this square size (masks with nearest neighbour):
# MVTec images are up to 1024², and 256² keeps the per-image memory at 320 kB while thin defects survive.
PIXEL_EVAL_SIZE = 256
PRO_FPR_LIMIT = 0.3
CASES_PER_GROUP = 3
DISPLAY_SIZE = 128
# The model-versus-template picture: its file, its rows (the first good test images, then the first image of
# each defect type, at most MAX_DEFECT_ROWS of them) and its columns (the template's only when it can be made).
MODEL_VS_TEMPLATE = "model_vs_template.png"
HIGHEST_VALIDATION = "highest_validation.png"  # the good validation photos that score highest, with their heatmaps
GOOD_ROWS, MAX_DEFECT_ROWS = 2, 8
MODEL_COLUMNS = ("input", "model G(E(x))", "model anomaly map")
TEMPLATE_COLUMNS = ("input", "model G(E(x))", "template", "model anomaly map", "template error map")
# A term whose median over the good test images lies this many validation standard deviations above its validation
# mean says the good test photos differ from the training ones (benchmarks/RESULTS.md, "Exposure": MVTec screw).
GOOD_SHIFT_WARNING = 2.0
# The fusion the default weights replaced, reported for comparison.
PREVIOUS_DEFAULT_WEIGHTS = {"map_max": 1.0, "latent_mahalanobis": 1.0}


def evaluate_run(run_dir, data=None, category=None, log=print, *, batch_size=32, method=None, max_fpr=None,
                 weights=None) -> dict:
    """Evaluates `run_dir` on the test split of its own category (or of `data` / `category`); returns metrics.

    With `data`, the run's training and validation images are also looked up there by file name when they are
    no longer where training found them (the dataset was moved). The returned dict is what
    ``eval/metrics.json`` holds, plus ``"report"``: the path of ``report.html``.
    """
    run_dir = Path(run_dir)
    category_found = _test_category(RunFolder(run_dir), data, category, log)  # lists files: no test image read yet
    run = RunFolder(run_dir, data_root=None if data is None else category_found.root)
    model = run.load_model()
    term_model = scoring.build_term_model(model)
    # Read once: the calibration (if it must be refitted) and the comparison fusions use the same good images.
    good_outputs = scoring.calibration_outputs(run, term_model, log)
    calibration = scoring.ensure_calibration(
        run, model, log=log, term_model=term_model, method=method, max_fpr=max_fpr, weights=weights,
        outputs=good_outputs,
    )
    out = artifacts.ensure_writable_folder(run.eval_folder, option="RUN_DIR")
    scored = _score_test_split(category_found.test, scoring.KerasScorer.for_run(run, term_model, calibration,
                                                                                batch_size))
    # The good validation images' honest term matrix (what the calibration was fitted on), once: the comparison
    # fusions are fitted on it and it names the photos that score highest.
    parameters, validation_matrix = fitted_columns(good_outputs[0], TERMS, good_outputs[1])
    comparisons = _comparison_scores(parameters, validation_matrix, scored, calibration)
    all_scores = {COMBINED: scored["combined"], **scored["terms"], **comparisons}

    metrics = {
        "run": str(run_dir),
        "model_step": scoring.model_step(model),
        "data": _data_summary(category_found),
        "calibration": {k: v for k, v in calibration.to_dict().items()
                        if k not in ("whitening", "code_mean", "code_whitening", "map_mean", "map_std")},
        "image": image_metrics(scored["labels"], scored["defects"], all_scores),
        "threshold": threshold_metrics(scored["labels"], scored["combined"], calibration.threshold),
        "oracle": oracle_f1(scored["labels"], scored["combined"]),
        "pixel": pixel_metrics(scored["masks"], scored["maps"], sigma=map_sigma(model.inspected_size)),
        "score_choice": score_choice_summary(run, calibration),
    }
    in_calibration_order = validation_matrix[:, [TERMS.index(name) for name in calibration.terms]]
    highest = threshold_setters.highest(run.validation_images(), calibration.combine(in_calibration_order))
    metrics["highest_validation"] = highest
    if highest:
        log(threshold_setters.describe(highest, calibration.threshold, calibration.validation_scores))
    metrics["good_shift"] = good_image_shift(scored["labels"], scored["terms"], calibration)
    shifted = shifted_terms(metrics["good_shift"])
    if shifted:
        log(f"warning: {shift_warning(shifted)}")
    lighting = metrics["exposure_tolerance"] = exposure_tolerance.flagged_shares(run, term_model, calibration)
    advice = exposure_tolerance.warning(lighting, exposure_tolerance.trained_with_exposure(run))
    metrics["exposure_advice"] = advice
    log(exposure_tolerance.describe(lighting) + (f"\nwarning: {advice}" if advice else ""))
    if metrics["pixel"] is not None:  # the map the heatmaps show: the error map or the chosen score's own
        metrics["pixel"]["map"] = scored["map_term"] or "error"
    metrics["image_auroc"] = metrics["image"][COMBINED]["auroc"]
    metrics["model_vs_template"] = _write_model_vs_template(out / MODEL_VS_TEMPLATE, scored, category_found, model,
                                                            run)
    _write_report_files(out, metrics, scored, category_found, model)
    metrics["report"] = str(out / "report.html")
    return metrics


# --------------------------------------------------------------------------------------------- metrics


def image_metrics(labels, defects, scores_by_name) -> dict:
    """{name: {"auroc", "aupr", "per_defect_auroc": {defect: AUROC of good vs that defect}}} (scikit-learn)."""
    labels, defects = np.asarray(labels), np.asarray(defects)
    good = labels == 0
    result = {}
    for name, scores in scores_by_name.items():
        scores = np.asarray(scores, dtype=np.float64)
        per_defect = {}
        for defect in sorted(set(defects[labels == 1].tolist())):
            chosen = good | (defects == defect)
            per_defect[defect] = float(skm.roc_auc_score(labels[chosen], scores[chosen]))
        result[name] = {
            "auroc": float(skm.roc_auc_score(labels, scores)),
            "aupr": float(skm.average_precision_score(labels, scores)),
            "per_defect_auroc": per_defect,
        }
    return result


def good_image_shift(labels, terms, calibration) -> dict:
    """{term: how many validation standard deviations the good test images' median lies above the validation
    mean}; {} without good test images. Far above on some term: the good test photos are not like the training
    photos (lighting, camera, fixture), so the test figures measure that change as much as the defects."""
    good = np.asarray(labels) == 0
    if not good.any():
        return {}
    return {name: float((np.median(np.asarray(terms[name])[good]) - mean) / std)
            for name, mean, std in zip(calibration.terms, calibration.mean, calibration.std)}


def shifted_terms(shift) -> dict:
    return {name: z for name, z in shift.items() if z > GOOD_SHIFT_WARNING}


def shift_warning(shifted) -> str:
    listed = ", ".join(f"{name} (+{z:.1f} σ)" for name, z in sorted(shifted.items(), key=lambda item: -item[1]))
    return (f"the good test images look unlike the good validation images on {listed}: the test photos differ from "
            "the training photos (lighting, camera, fixture?), so these figures measure that change too; train on "
            "photos taken like the test ones")


def threshold_metrics(labels, scores, threshold) -> dict:
    """F1, precision, recall and the test false-positive rate when "anomalous" means score > threshold."""
    labels = np.asarray(labels)
    predicted = np.asarray(scores) > threshold
    return {
        "value": float(threshold),
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "precision": float(skm.precision_score(labels, predicted, zero_division=0)),
        "recall": float(skm.recall_score(labels, predicted, zero_division=0)),
        "false_positive_rate": float(np.mean(predicted[labels == 0])) if np.any(labels == 0) else None,
    }


def oracle_f1(labels, scores) -> dict:
    """The best F1 over all thresholds ON THE TEST SET: an upper bound, not a threshold to deploy."""
    precision, recall, thresholds = skm.precision_recall_curve(labels, scores)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(precision), where=total > 0)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0  # the last point has no threshold
    return {
        "label": "oracle",
        "note": "F1-max with the threshold chosen on the test set itself; an upper bound, not deployable",
        "f1_max": float(f1[best]),
        "threshold": float(thresholds[best]) if len(thresholds) else None,
    }


def pixel_metrics(masks, maps, fpr_limit=PRO_FPR_LIMIT, sigma=None) -> dict | None:
    """Pixel AUROC (scikit-learn) and AU-PRO up to `fpr_limit`, or None when no test image has a defect pixel."""
    if masks is None or not np.any(masks):
        return None
    return {
        "auroc": float(skm.roc_auc_score(masks.ravel(), maps.ravel())),
        "au_pro": au_pro(masks, maps, fpr_limit),
        "pro_fpr_limit": fpr_limit,
        "resolution": int(masks.shape[1]),
        "map_sigma_model_pixels": sigma,
    }


def pro_curve(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct threshold, from the highest score down, starting at (0, 0).

    A pixel is predicted defective when its score ≥ the threshold. PRO (per-region overlap, Bergmann et al.
    2021) is the mean over all ground-truth regions — 8-connected components of every mask — of the fraction
    of the region predicted defective; the FPR is over all defect-free pixels of all images. Sorting the pixels
    once gives both curves exactly: each background pixel adds 1/n_background to the FPR, each pixel of region
    k adds 1/(area_k · n_regions) to the PRO.
    """
    masks = np.asarray(masks, dtype=bool)
    scores = np.asarray(maps, dtype=np.float32).ravel()
    region_weight = _region_weights(masks).ravel()
    background = ~masks.ravel()
    if not background.any() or not region_weight.any():
        raise GanspectionError("PRO needs both defect and defect-free pixels in the ground truth masks")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    fpr = np.cumsum(background[order]) / background.sum()
    pro = np.cumsum(region_weight[order])
    del order
    # Pixels with equal scores switch together: keep the curve point after the last of each run of ties.
    last_of_ties = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    return np.r_[0.0, fpr[last_of_ties]], np.r_[0.0, pro[last_of_ties]]


def au_pro(masks, maps, fpr_limit=PRO_FPR_LIMIT) -> float:
    """Area under the PRO curve for FPR in [0, fpr_limit], divided by fpr_limit (1.0 = perfect)."""
    fpr, pro = pro_curve(masks, maps)
    inside = int(np.searchsorted(fpr, fpr_limit, side="right"))  # fpr is non-decreasing
    if inside < len(fpr):  # interpolate the point where the curve crosses the limit
        f0, f1, p0, p1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        crossing = p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0) if f1 > f0 else p1
        fpr, pro = np.r_[fpr[:inside], fpr_limit], np.r_[pro[:inside], crossing]
    return float(skm.auc(fpr, pro) / fpr_limit)


def _region_weights(masks):
    weights = np.zeros(masks.shape, dtype=np.float64)
    regions = []
    for index, mask in enumerate(masks):
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        regions += [(index, labels == region) for region in range(1, count)]
    for index, region in regions:
        weights[index][region] = 1.0 / (region.sum() * len(regions))
    return weights


# --------------------------------------------------------------------------------------------- test split


def _test_category(run, data, category, log):
    """The labelled test split: the run's own category unless `data` is given; refuses incomplete splits."""
    if data is None and not run.category_root.is_dir():
        raise GanspectionError(f"{run.category_root}: the run's category is not there any more; if it was moved, "
                               "pass --data with its new location")
    found = mvtec.scan_category(run.category_root if data is None else data, category)
    if not found.test:
        raise GanspectionError(
            f"{found.root}: no test images to evaluate on; pass --data pointing at an MVTec-style category with "
            "test/good/ and test/<defect>/ folders"
        )
    missing = found.missing_masks()
    if missing:
        raise GanspectionError(
            f"{missing[0]}: defect image without a mask ({len(missing)} such); add "
            f"ground_truth/<defect>/<name>_mask.png or remove the image — evaluation does not drop files silently"
        )
    labels = {t.label for t in found.test}
    if labels != {0, 1}:
        kind = "defect" if 1 not in labels else "good"
        raise GanspectionError(f"{found.root}/test: no {kind} images; AUROC needs both good and defect images")
    orphans = found.orphan_masks()
    if orphans:
        log(f"warning: {len(orphans)} mask(s) under {found.root / 'ground_truth'} belong to no test image "
            f"(first: {orphans[0]}); ignored")
    return found


def _score_test_split(test, scorer):
    """Streams the test images through the run's scorer (``KerasScorer.for_run``); keeps terms, raw model terms
    and codes, scores, PIXEL_EVAL_SIZE² maps and masks. Pixel metrics live in the model's square frame: each mask
    is resized with the run's mode like its image (``scorer.resize``)."""
    calibration, batch_size, resize = scorer.calibration, scorer.batch_size, scorer.resize
    count, side = len(test), PIXEL_EVAL_SIZE
    maps = np.empty((count, side, side), dtype=np.float32)
    masks = np.zeros((count, side, side), dtype=bool)
    outputs = {name: [] for name in MODEL_OUTPUTS}  # error maps too: normalized_map_max needs them
    model_maps = []  # what the heatmaps show, at the inspected size (Calibration.pixel_maps)
    for start in range(0, count, batch_size):
        batch = test[start : start + batch_size]
        images, _ = scorer.load_images([t.path for t in batch], skip_unreadable=False)
        values = scorer.forward(images)
        for name, kept in outputs.items():
            kept.append(values[name])
        model_maps.append(calibration.pixel_maps(values, scorer.image_size))
        for offset, item in enumerate(batch):
            index = start + offset
            maps[index] = anomaly_map(model_maps[-1][offset], (side, side))
            if item.mask is not None:
                masks[index] = read_mask(item.mask, side, resize, image=item.path)
    outputs = {name: np.concatenate(chunks) for name, chunks in outputs.items()}
    scored = scorer.scores(outputs)  # the scorer contract's postprocessing, as `score` and the camera use it
    terms = {name: scored.terms[:, j] for j, name in enumerate(calibration.terms)}
    return {
        "paths": [t.path for t in test],
        "defects": [t.defect for t in test],
        "labels": np.array([t.label for t in test]),
        "terms": terms,
        "combined": scored.combined,
        "anomalous": scored.anomalous,
        "outputs": outputs,
        "maps": maps,
        "model_maps": np.concatenate(model_maps),
        "map_term": calibration.map_term(),
        "masks": masks,
        "threshold": calibration.threshold,
        "scorer": scorer,
    }


def read_mask(path, side, resize=DEFAULT_RESIZE, image=None) -> np.ndarray:
    """A ground-truth mask as a bool (side, side) array, resized like its image (nearest neighbour keeps thin
    defects).

    A mask of another aspect ratio than its `image` is refused: resized, it would mark other pixels than the
    defect's (a mask at another resolution of the same shape is fine).
    """
    mask = read_image(path, channels=1)[..., 0]
    if image is not None:
        _check_same_aspect(path, mask.shape, image)
    return resize_mask(mask, side, resize) > 127


def _check_same_aspect(mask_path, mask_shape, image_path):
    from PIL import Image

    with Image.open(image_path) as opened:
        width, height = opened.size
    mask_height, mask_width = mask_shape
    # cross-multiplied ratios; one pixel of rounding on either side is allowed
    if abs(mask_width * height - mask_height * width) > max(width, height, mask_width, mask_height):
        raise GanspectionError(
            f"{mask_path}: mask is {mask_width}x{mask_height} but its image {Path(image_path).name} is "
            f"{width}x{height}, another aspect ratio; stretched it would mark the wrong pixels — give the mask "
            "the image's proportions")


def _comparison_scores(parameters, validation_matrix, scored, calibration):
    """Test scores of the fusions not chosen, each fitted on the good validation images' term matrix and its terms'
    fitted `parameters` (``fitted_columns``)."""
    candidates = {
        "fusion: weighted, default α": {"method": "weighted"},
        "fusion: weighted, previous default α (map_max + latent_mahalanobis)": {
            "method": "weighted", "weights": PREVIOUS_DEFAULT_WEIGHTS},
        "fusion: weighted, equal α": {"method": "weighted", "weights": [1.0] * len(TERMS)},
        "fusion: mahalanobis": {"method": "mahalanobis"},
    }
    fusions = {}
    for name, options in candidates.items():  # one matrix: only α and method differ
        fitted = fit_calibration(validation_matrix, TERMS, **parameters, max_fpr=calibration.max_fpr, **options)
        fusions[name] = fitted.combine(fitted.term_matrix(scored["outputs"]))
    return fusions


def score_choice_summary(run, calibration) -> dict | None:
    """What ``score_choice.json`` says (chosen score, every candidate's validation AUROC on synthetic defects, why),
    and whether the calibration uses it or --weights / --method overrode it; None when no choice was made."""
    path = run.score_choice_path
    if not path.is_file():
        return None
    choice = artifacts.read_json(path, what="score choice")
    used = calibration.method == "weighted" and calibration.weights == weight_vector(choice["weights"],
                                                                                   calibration.terms)
    return {**choice, "used": used, **({} if used else {"note": "overridden by --weights / --method"})}


def _data_summary(category):
    defects = {}
    for item in category.test:
        defects[item.defect] = defects.get(item.defect, 0) + 1
    return {"root": str(category.root), "category": category.name, "test_images": len(category.test),
            "per_class": defects}


# --------------------------------------------------------------------------------------------- report files


def _write_report_files(out, metrics, scored, category, model):
    artifacts.write_json(out / "metrics.json", metrics)
    artifacts.write_text(out / "scores.csv", _scores_csv(scored))
    _save_figure(out / "roc.png", _roc_figure(scored))
    _save_figure(out / "score_histograms.png", _histogram_figure(scored))
    _save_figure(out / "heatmaps.png", _heatmap_figure(scored, category, model))
    if metrics["highest_validation"]:
        _save_figure(out / HIGHEST_VALIDATION, _highest_validation_figure(scored, metrics["highest_validation"]))
    artifacts.write_text(out / "report.html", _report_html(metrics))


def _scores_csv(scored):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "defect", "label", "score", *scored["terms"], "anomalous"])
    for i, path in enumerate(scored["paths"]):
        terms = [f"{values[i]:.7g}" for values in scored["terms"].values()]
        anomalous = "yes" if scored["anomalous"][i] else "no"
        writer.writerow([str(path), scored["defects"][i], int(scored["labels"][i]), f"{scored['combined'][i]:.7g}",
                         *terms, anomalous])
    return buffer.getvalue()


def _new_figure(width, height):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend (Agg canvas)

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save_figure(target, figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with artifacts.atomic_path(target) as temporary:
        figure.savefig(temporary, format="png")


def _roc_figure(scored):
    figure = _new_figure(6.5, 5.5)
    axes = figure.subplots()
    for name, scores in {COMBINED: scored["combined"], **scored["terms"]}.items():
        fpr, tpr, _ = skm.roc_curve(scored["labels"], scores)
        auroc = skm.roc_auc_score(scored["labels"], scores)
        axes.plot(fpr, tpr, linewidth=2.5 if name == COMBINED else 1.2, label=f"{name} (AUROC {auroc:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false positive rate (good parts flagged)", ylabel="true positive rate (defects found)",
             title="Image-level ROC on the test split", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right", fontsize=8)
    return figure


def _histogram_figure(scored):
    panels = {COMBINED: scored["combined"], **scored["terms"]}
    figure = _new_figure(16, 7)
    defects = np.asarray(scored["defects"])
    classes = ["good"] + sorted(set(defects.tolist()) - {"good"})
    for axes, (name, scores) in zip(figure.subplots(2, (len(panels) + 1) // 2).ravel(), panels.items()):
        bins = np.histogram_bin_edges(scores, bins=30)
        for kind in classes:
            axes.hist(scores[defects == kind], bins=bins, histtype="step", linewidth=1.5, label=kind)
        if name == COMBINED:
            axes.axvline(scored["threshold"], color="black", linestyle="--", linewidth=1, label="threshold")
        axes.set(title=name, xlabel="score", ylabel="images")
    figure.axes[0].legend(fontsize=8)
    return figure


def _chosen_cases(scored):
    """(title, index) rows: worst first (missed defects, false alarms), then the best of each class."""
    order = np.argsort(scored["combined"], kind="stable")
    labels = scored["labels"]
    defects = [i for i in order if labels[i] == 1]
    goods = [i for i in order if labels[i] == 0]
    k = CASES_PER_GROUP
    groups = [("worst: missed defect", defects[:k]), ("worst: false alarm", goods[::-1][:k]),
              ("best: found defect", defects[::-1][:k]), ("best: clean good", goods[:k])]
    return [(title, int(i)) for title, indices in groups for i in indices]


def _heatmap_figure(scored, category, model):
    cases = _chosen_cases(scored)
    scorer = scored["scorer"]
    channels, resize = scorer.channels, scorer.resize
    model_images, _ = scorer.load_images([scored["paths"][index] for _, index in cases], skip_unreadable=False)
    reconstructions = scoring.reconstruct(model, model_images)
    shown_maps = [anomaly_map(scored["model_maps"][index], (DISPLAY_SIZE, DISPLAY_SIZE)) for _, index in cases]
    top = max(float(np.max(shown_maps)), 1e-6)  # one colour scale for the whole grid: rows stay comparable

    figure = _new_figure(8.4, 2.2 * len(cases))
    grid = np.atleast_2d(figure.subplots(len(cases), 4))
    by_path = {t.path: t for t in category.test}
    for row, ((title, index), recon, shown) in enumerate(zip(cases, reconstructions, shown_maps)):
        item = by_path[scored["paths"][index]]
        picture = resize_image(read_image(item.path, channels), DISPLAY_SIZE, resize)
        truth = (read_mask(item.mask, DISPLAY_SIZE, resize) if item.mask is not None
                 else np.zeros((DISPLAY_SIZE,) * 2, bool))
        panels = [(picture, None), (resize_image(recon, DISPLAY_SIZE), None), (shown, "inferno"), (truth, "gray")]
        for column, (image, colour_map) in enumerate(panels):
            _show(grid[row, column], image, colour_map, top)
        grid[row, 0].set_title(f"{title}: {item.defect}/{item.path.name}  score {scored['combined'][index]:.3g}",
                               fontsize=8, loc="left")
    for column, name in enumerate(("image", "reconstruction", "heatmap", "ground truth")):
        grid[-1, column].set_xlabel(name)
    return figure


def _highest_validation_figure(scored, highest):
    """photo | heatmap of the good validation photos that score highest: where each one looks unusual to the
    model, on a colour scale of their own (the test split's defects would leave them dark)."""
    scorer = scored["scorer"]
    images, _ = scorer.load_images([entry["path"] for entry in highest], skip_unreadable=False)
    maps = scorer.calibration.pixel_maps(scorer.forward(images), scorer.image_size)
    heatmaps = [anomaly_map(one, (DISPLAY_SIZE, DISPLAY_SIZE)) for one in maps]
    top = max(*(float(np.max(one)) for one in heatmaps), 1e-6)
    figure = _new_figure(4.4, 2.2 * len(highest))
    grid = np.atleast_2d(figure.subplots(len(highest), 2))
    for row, (entry, heatmap) in enumerate(zip(highest, heatmaps)):
        _show(grid[row, 0], resize_image(read_image(entry["path"], scorer.channels), DISPLAY_SIZE, scorer.resize))
        _show(grid[row, 1], heatmap, "inferno", top)
        grid[row, 0].set_title(f"{Path(entry['path']).name}  score {entry['score']:.3g}", fontsize=8, loc="left")
    grid[-1, 0].set_xlabel("good validation photo")
    grid[-1, 1].set_xlabel("heatmap (own scale)")
    return figure


def _show(axes, image, colour_map=None, top=None, outline=None):
    """One panel: a picture (gray or RGB), or a map on the "inferno" scale 0…`top`; `outline`: a bool mask whose
    contour is drawn over it."""
    image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    kwargs = {"vmin": 0, "vmax": top} if colour_map == "inferno" else {}
    axes.imshow(image, cmap=colour_map or ("gray" if image.ndim == 2 else None), **kwargs)
    if outline is not None and outline.any():
        axes.contour(outline.astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.8)
    axes.set_xticks([])
    axes.set_yticks([])


def comparison_rows(defects) -> list[int]:
    """The test images of the model-versus-template picture, by index in the test listing: the first GOOD_ROWS
    good ones, then the first image of each defect type (at most MAX_DEFECT_ROWS), in listing order."""
    goods = [i for i, defect in enumerate(defects) if defect == mvtec.GOOD][:GOOD_ROWS]
    first_of_each = {}
    for i, defect in enumerate(defects):
        if defect != mvtec.GOOD:
            first_of_each.setdefault(defect, i)
    return goods + list(first_of_each.values())[:MAX_DEFECT_ROWS]


def _write_model_vs_template(target, scored, category, model, run) -> dict:
    """Writes the picture of what the model adds over the learning-free template (one batch through E and G)
    and returns its layout for metrics.json: the columns and, per row, the test image and its class."""
    rows = comparison_rows(scored["defects"])
    scorer = scored["scorer"]
    size, channels, resize = scorer.image_size, scorer.channels, scorer.resize
    inputs, _ = scorer.load_images([scored["paths"][i] for i in rows], skip_unreadable=False)
    reconstructions = [resize_image(r, DISPLAY_SIZE) for r in scoring.reconstruct(model, inputs)]
    display = (DISPLAY_SIZE, DISPLAY_SIZE)
    model_maps = [anomaly_map(scored["model_maps"][i], display) for i in rows]
    template, averaged = run_template(run, size, channels)
    columns = MODEL_COLUMNS if template is None else TEMPLATE_COLUMNS
    if template is not None:
        template_picture = resize_image(from_unit_range(template), DISPLAY_SIZE)
        template_maps = [anomaly_map(m, display) for m in template_error_maps(inputs, template)]
    # One colour scale for both maps where both are error maps (rows and columns comparable); the map of another
    # term (Calibration.map_term) has its own units, so each kind of map then gets its own scale.
    own_units = scored["map_term"] is not None
    top_model = max(float(np.max(model_maps + ([] if template is None or own_units else template_maps))), 1e-6)
    top_template = top_model if template is None or not own_units else max(float(np.max(template_maps)), 1e-6)

    figure = _new_figure(1.9 * len(columns), 1.9 * len(rows))
    grid = np.atleast_2d(figure.subplots(len(rows), len(columns)))
    by_path = {t.path: t for t in category.test}
    for row, index in enumerate(rows):
        item = by_path[scored["paths"][index]]
        truth = read_mask(item.mask, DISPLAY_SIZE, resize) if item.mask is not None else None
        panels = {  # (image, colour map, the mask outlined on it)
            "input": (resize_image(read_image(item.path, channels), DISPLAY_SIZE, resize), None, truth),
            "model G(E(x))": (reconstructions[row], None, None),
            "model anomaly map": (model_maps[row], "inferno", truth),
            **({} if template is None else {"template": (template_picture, None, None),
                                            "template error map": (template_maps[row], "inferno", truth)}),
        }
        for column, name in enumerate(columns):
            image, colour_map, outline = panels[name]
            _show(grid[row, column], image, colour_map, top_template if name == "template error map" else top_model,
                  outline)
        grid[row, 0].set_ylabel(f"{item.defect}/{item.path.name}\nscore {scored['combined'][index]:.3g}",
                                fontsize=8)
    for column, name in enumerate(columns):
        grid[0, column].set_title(name, fontsize=9)
    _save_figure(target, figure)
    return {"picture": Path(target).name, "columns": list(columns), "template_images": averaged,
            "rows": [{"image": str(scored["paths"][i]), "defect": scored["defects"][i]} for i in rows]}


def _report_html(metrics):
    image = metrics["image"]
    defects = sorted(next(iter(image.values()))["per_defect_auroc"])
    header = "".join(f"<th>AUROC {html.escape(d)}</th>" for d in defects)
    rows = []
    for name, values in image.items():
        cells = "".join(f"<td>{values['per_defect_auroc'][d]:.3f}</td>" for d in defects)
        style = ' class="main"' if name == COMBINED else ""
        rows.append(f"<tr{style}><td>{html.escape(name)}</td><td>{values['auroc']:.3f}</td>"
                    f"<td>{values['aupr']:.3f}</td>{cells}</tr>")
    threshold, oracle, pixel = metrics["threshold"], metrics["oracle"], metrics["pixel"]
    pixel_text = (f"pixel AUROC {pixel['auroc']:.3f}, AU-PRO (FPR ≤ {pixel['pro_fpr_limit']}) {pixel['au_pro']:.3f}"
                  f" of the {html.escape(pixel['map'])} map" if pixel
                  else "no ground-truth masks with defect pixels: pixel metrics not computed")
    calibration = metrics["calibration"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>GANspection-TF evaluation</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
tr.main{{font-weight:bold;background:#eef}}</style></head><body>
<h1>Evaluation of {html.escape(metrics['run'])}</h1>
<p>Data: {html.escape(metrics['data']['root'])} — {metrics['data']['test_images']} test images
{html.escape(json.dumps(metrics['data']['per_class']))}; model step {metrics['model_step']}.</p>
<p>Calibration: {html.escape(calibration['method'])} fusion fitted on {calibration['n_validation']} good validation
images held out of training (never on test images); threshold {threshold['value']:.4g} for a target false-positive
rate of {calibration['max_fpr']:g}.{_highest_html(metrics.get("highest_validation"), calibration)}</p>
{_choice_html(metrics.get("score_choice"))}
{_shift_html(metrics.get("good_shift") or {})}
{_exposure_html(metrics.get("exposure_tolerance"), metrics.get("exposure_advice"))}
<h2>Image level</h2>
<p><b>Image AUROC (combined): {metrics['image_auroc']:.3f}</b>. At the calibrated threshold: F1 {threshold['f1']:.3f},
precision {threshold['precision']:.3f}, recall {threshold['recall']:.3f}, false-positive rate on good test images
{_maybe(threshold['false_positive_rate'])}. Oracle F1-max (threshold chosen on the test set, not deployable):
{oracle['f1_max']:.3f}.</p>
<table><tr><th>score</th><th>AUROC</th><th>AUPR</th>{header}</tr>
{chr(10).join(rows)}
</table>
<p>The "fusion" rows are other ways of combining the terms, fitted on the same good validation images and shown
for comparison only: the threshold applies to "combined". The terms (x the image, z = E(x) its code,
x̂ = G(z) its reconstruction, f the critic's features):</p>
<ul>{_term_explanations()}</ul>
<h2>Pixel level</h2><p>{pixel_text}</p>
<h2>Figures</h2>
<p><img src="roc.png" alt="ROC curves"></p>
<p><img src="score_histograms.png" alt="score histograms per class" style="max-width:100%"></p>
<p><img src="heatmaps.png" alt="heatmaps of the worst and best cases" style="max-width:100%"></p>
{_model_vs_template_html(metrics["model_vs_template"])}
<p>Files: <a href="metrics.json">metrics.json</a> · <a href="scores.csv">scores.csv</a> ·
<a href="roc.png">roc.png</a> · <a href="score_histograms.png">score_histograms.png</a> ·
<a href="heatmaps.png">heatmaps.png</a> · <a href="{MODEL_VS_TEMPLATE}">{MODEL_VS_TEMPLATE}</a></p>
</body></html>
"""


def _highest_html(highest, calibration):
    if not highest:
        return ""
    line = threshold_setters.describe(highest, calibration["threshold"], calibration.get("validation_scores"))
    return (f" {html.escape(line[0].upper() + line[1:])}.</p>\n<p><img src=\"{HIGHEST_VALIDATION}\" alt=\"the good "
            "validation photos that score highest, with their heatmaps\">")


def _model_vs_template_html(layout):
    if layout["template_images"]:
        columns = (f"the input, the model's reconstruction G(E(x)), the template (the mean of the "
                   f"{layout['template_images']} good training images, learning-free), the model's anomaly map "
                   "and the template's error map")
    else:
        columns = ("the input, the model's reconstruction G(E(x)) and its anomaly map (the training images are not "
                   "there any more: no template)")
    return f"""<h2>What the model adds</h2>
<p>The first good test images and the first of each defect type; columns: {html.escape(columns)}, maps on one
colour scale, the defect's mask outlined in cyan.</p>
<p><img src="{layout['picture']}" alt="the model's reconstructions next to the template's"
style="max-width:100%"></p>"""


def _term_explanations():
    return "".join(f"<li><b>{html.escape(term.name)}</b>: {html.escape(term.explanation)}</li>" for term in REGISTRY)


def _choice_html(choice):
    if choice is None:
        return ""
    shifts = choice.get("light_shift") or {}  # absent in choices written before session 18
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{auroc:.3f}</td><td>{_maybe(shifts.get(name))}</td></tr>"
                   for name, auroc in sorted(choice["auroc"].items(), key=lambda item: -item[1]))
    status = "used" if choice["used"] else html.escape(choice.get("note", "not used"))
    return f"""<h2>Score choice</h2>
<p>Chosen on the good validation images and {choice['n_defective']} copies of them with synthetic defects (never a
test image): <b>{html.escape(choice['reason'])}</b> ({status}). Light shift: how far the good validation photos,
re-exposed at a few percent less and more light, score from the plain ones on balance (|AUROC − ½|; 0: no net shift);
it breaks ties.</p>
<table><tr><th>candidate</th><th>validation AUROC, synthetic defects</th><th>light shift</th></tr>{rows}</table>"""


def _shift_html(shift):
    shifted = shifted_terms(shift)
    return f"<p><b>Warning:</b> {html.escape(shift_warning(shifted))}.</p>" if shifted else ""


def _exposure_html(shares, advice):
    if not shares:
        return ""
    advice = f" <b>Warning:</b> {html.escape(advice)}." if advice else ""
    return f"<h2>Lighting</h2><p>The {html.escape(exposure_tolerance.describe(shares))}.{advice}</p>"


def _maybe(value):
    return "n/a" if value is None else f"{value:.3f}"
