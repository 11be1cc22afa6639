"""The score-term registry: every term is one entry, and everything that lists terms follows it."""

import subprocess
import sys

import numpy as np
import pytest

from ganspection_tf import calibration, terms
from ganspection_tf.errors import GanspectionError


def test_the_registry_runs_without_tensorflow():
    """terms.py (and the calibration built on it) is what the camera imports: no TensorFlow."""
    code = "import sys, ganspection_tf.terms, ganspection_tf.calibration; print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_every_term_is_listed_once_with_an_explanation():
    names = [term.name for term in terms.REGISTRY]
    assert len(names) == len(set(names)) and tuple(names) == terms.TERMS
    assert all(term.explanation and "\n" not in term.explanation for term in terms.REGISTRY)
    assert sum(terms.DEFAULT_WEIGHTS.values()) > 0


def test_derived_terms_declare_their_inputs_and_fitted_parameters():
    for term in terms.REGISTRY:
        assert (term.fit is None) == (not term.parameters)
        assert set(term.model_outputs) <= set(terms.MODEL_OUTPUTS)
    assert terms.BY_NAME["latent_mahalanobis"].model_outputs == (terms.CODE_OUTPUT,)
    assert terms.BY_NAME["normalized_map_max"].model_outputs == (terms.ERROR_MAP_OUTPUT,)


def test_export_scores_ship_one_term_or_the_combination():
    assert terms.export_terms("latent") == ("latent_mahalanobis",)
    assert terms.export_terms("critic") == ("critic",)
    assert terms.export_terms(terms.COMBINED_SCORE) == terms.TERMS
    assert set(terms.SCORES) == {"latent", "critic", "combined"}


def test_unknown_term_names_are_one_line_errors():
    with pytest.raises(GanspectionError, match="unknown score term 'bogus'; choose from latent, cycle"):
        terms.term("bogus")


def test_a_new_term_is_one_entry(monkeypatch):
    """Adding a term to the registry is enough for calibration to fit, store and compute it."""
    doubled = terms.Term("double_reconstruction", "twice the reconstruction error",
                         inputs=("reconstruction",), compute=lambda outputs, _p: 2.0 * np.asarray(
                             outputs["reconstruction"], np.float64))
    registry = (*terms.REGISTRY, doubled)
    by_name = {term.name: term for term in registry}
    monkeypatch.setattr(terms, "BY_NAME", by_name)
    monkeypatch.setattr(calibration, "BY_NAME", by_name)
    monkeypatch.setattr(calibration, "TERMS", tuple(by_name))
    rng = np.random.default_rng(0)
    outputs = {"reconstruction": rng.normal(1.0, 0.1, 20), "critic": rng.normal(0.0, 1.0, 20)}
    fitted = calibration.fit_calibration_from_outputs(outputs, ["critic", "double_reconstruction"],
                                                      weights={"double_reconstruction": 1.0})
    restored = calibration.Calibration.from_dict(fitted.to_dict())
    matrix = restored.term_matrix(outputs)
    np.testing.assert_allclose(matrix[:, 1], 2.0 * outputs["reconstruction"])
    assert restored.combine(matrix)[0] == pytest.approx((2.0 * outputs["reconstruction"][0] - fitted.mean[1])
                                                        / fitted.std[1])


def registered(monkeypatch, *new_terms):
    """The package as if `new_terms` were entries of terms.REGISTRY: the registry and every table derived from
    it (``terms.tables``) are replaced in each loaded package module that holds them."""
    old = {key: getattr(terms, key) for key in ("REGISTRY", *terms.tables(terms.REGISTRY))}
    registry = (*terms.REGISTRY, *new_terms)
    new = {"REGISTRY": registry, **terms.tables(registry)}
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] != "ganspection_tf":
            continue
        for attribute, value in list(vars(module).items()):
            for key, table in old.items():
                if value is table:
                    monkeypatch.setattr(module, attribute, new[key])


def test_a_new_model_output_term_is_one_entry(monkeypatch, tiny_run_copy):
    """A registry entry with a graph becomes a term-model output (no graph line in scoring.py), and a numpy term
    on a tensor the term model did not output yet makes it output that tensor; both are calibrated, stored and
    scored like the built-in terms, and the export's cut keeps what a term needs."""
    from ganspection_tf import convert, scoring
    from ganspection_tf.data import pipeline
    from ganspection_tf.images import to_unit_range
    from ganspection_tf.run import RunFolder

    def mean_abs_features(outputs, _parameters):
        features = np.asarray(outputs["critic_features"], np.float64)
        return np.abs(features).reshape(len(features), -1).mean(axis=1)

    registered(monkeypatch,
               terms.Term("squared_reconstruction", "mean (x − x̂)² over pixels and channels",
                          graph=terms.graph("MeanGap", "image", "reconstruction", squared=True)),
               terms.Term("feature_size", "mean |f(x, z)| over the critic's features",
                          inputs=("critic_features",), compute=mean_abs_features))
    run = RunFolder(tiny_run_copy)
    model = run.load_model()
    term_model = scoring.build_term_model(model)
    assert {"squared_reconstruction", "critic_features"} <= set(term_model.output)

    calibration = scoring.ensure_calibration(run, model, term_model=term_model, log=lambda *_: None,
                                             weights={"squared_reconstruction": 1.0, "feature_size": 1.0})
    assert run.read_calibration().terms == calibration.terms == list(terms.TERMS)
    assert calibration.terms[-2:] == ["squared_reconstruction", "feature_size"]

    images, _ = pipeline.load_images(run.validation_images()[:4], model.image_size, model.channels,
                                     resize=run.resize)
    results = scoring.KerasScorer.for_run(run, term_model, calibration).score_batch(images)
    encoder, generator, critic = model.scoring_networks()
    x = to_unit_range(images)
    code = encoder(x, training=False)
    expected_squared = np.mean(np.square(x - generator(code, training=False).numpy()), axis=(1, 2, 3))
    expected_size = mean_abs_features({"critic_features": critic([x, code.numpy()], training=False)[1].numpy()}, {})
    np.testing.assert_allclose([r.terms["squared_reconstruction"] for r in results], expected_squared, rtol=1e-4)
    np.testing.assert_allclose([r.terms["feature_size"] for r in results], expected_size, rtol=1e-4)
    standardized = (np.stack([expected_squared, expected_size], axis=1) - calibration.mean[-2:]) / calibration.std[-2:]
    np.testing.assert_allclose([r.score for r in results], standardized.sum(axis=1), rtol=1e-3, atol=1e-3)

    shipped = convert.build_scorer(term_model, ["squared_reconstruction", "feature_size"])
    assert sorted(shipped.output) == ["critic_features", "squared_reconstruction"]


def test_only_the_registry_lists_the_terms():
    """No other module of the package spells out the list of terms (one place to add a term)."""
    from pathlib import Path

    package = Path(terms.__file__).parent
    spelled = '"reconstruction", "critic_feature"'
    holders = [path.name for path in package.rglob("*.py") if spelled in path.read_text(encoding="utf-8")]
    assert holders == []
