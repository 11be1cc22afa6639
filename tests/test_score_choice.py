"""The score chooser on term values with a known answer: it picks what separates, and breaks ties sensibly."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ganspection_tf.errors import GanspectionError
from ganspection_tf.score_choice import Candidate, auroc_of, choose_score, default_candidates

TERMS = ("latent", "reconstruction", "critic_feature", "map_max", "latent_mahalanobis", "normalized_map_max")


def _values(separating, shift=3.0, n_good=30, n_defective=60, seed=0):
    """Good and defective term values: the `separating` terms move up by `shift` σ on defects, the others don't."""
    rng = np.random.default_rng(seed)
    good = {term: rng.normal(5.0, 2.0, n_good) for term in TERMS}
    defective = {term: rng.normal(5.0, 2.0, n_defective) for term in TERMS}
    for term, term_shift in separating.items():
        defective[term] += term_shift * 2.0
    return good, defective


@pytest.mark.parametrize("term", TERMS)
def test_it_picks_the_one_term_that_separates(term):
    good, defective = _values({term: 3.0})
    choice = choose_score(good, defective)
    assert choice.name == term and choice.weights == {term: 1.0}
    assert choice.auroc[term] > 0.95
    assert all(auroc < 0.75 for name, auroc in choice.auroc.items() if term not in name)
    assert choice.reason.startswith(f"{term}: the highest validation AUROC")
    assert (choice.n_good, choice.n_defective) == (30, 60)


def test_a_tie_goes_to_the_pose_independent_term_and_a_clear_win_to_the_per_pixel_one():
    tie = choose_score(*_values({"normalized_map_max": 8.0, "map_max": 8.0}))
    assert tie.auroc["normalized_map_max"] == tie.auroc["map_max"] == 1.0
    assert tie.name == "map_max" and "pose-independent" in tie.reason
    clear = choose_score(*_values({"normalized_map_max": 8.0, "map_max": 1.0}))
    assert clear.name == "normalized_map_max"


def test_a_tie_between_a_term_and_a_combination_goes_to_the_single_term():
    choice = choose_score(*_values({"map_max": 8.0, "latent_mahalanobis": 8.0}))
    assert choice.auroc["map_max + latent_mahalanobis"] == 1.0
    assert choice.name in ("map_max", "latent_mahalanobis") and "simpler" in choice.reason


def test_two_weak_terms_together_can_win():
    choice = choose_score(*_values({"map_max": 1.2, "latent_mahalanobis": 1.2}, n_good=200, n_defective=400))
    assert choice.name == "map_max + latent_mahalanobis"
    assert choice.auroc[choice.name] > max(choice.auroc["map_max"], choice.auroc["latent_mahalanobis"]) + 0.02


def test_auroc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(1)
    good, defective = rng.integers(0, 5, 40).astype(float), rng.integers(1, 7, 25).astype(float)
    expected = roc_auc_score(np.r_[np.zeros(40), np.ones(25)], np.r_[good, defective])
    assert auroc_of(good, defective) == pytest.approx(expected)


def test_per_kind_auroc_and_non_finite_terms():
    good, defective = _values({"map_max": 3.0})
    defective["map_max"][30:] -= 6.0  # the second kind is not found by map_max
    defective["latent"][:] = np.nan  # a broken term is left out, not chosen
    kinds = ["scratch"] * 30 + ["blur"] * 30
    choice = choose_score(good, defective, defect_kinds=kinds)
    assert "latent" not in choice.auroc
    assert choice.auroc_by_kind["map_max"]["scratch"] > 0.95 > 0.7 > choice.auroc_by_kind["map_max"]["blur"]


def test_candidates_and_bad_input():
    names = [c.name for c in default_candidates(["map_max", "latent_mahalanobis"])]
    assert names == ["map_max", "latent_mahalanobis", "map_max + latent_mahalanobis"]
    assert not Candidate("n", {"normalized_map_max": 1.0}).pose_independent
    assert Candidate("m", {"map_max": 1.0, "normalized_map_max": 0.0}).pose_independent
    with pytest.raises(GanspectionError, match="at least 2 good"):
        choose_score({"map_max": [1.0]}, {"map_max": [2.0]})
    with pytest.raises(GanspectionError, match="differ in length"):
        choose_score({"map_max": [1.0, 2.0], "latent": [1.0]}, {"map_max": [2.0], "latent": [1.0]})


def test_aligned_parts_are_never_given_a_score_that_compares_patches_at_any_place():
    rng = np.random.default_rng(0)
    good = {"patch_distance": rng.normal(0, 1, 30), "normalized_map_max": rng.normal(0, 1, 30)}
    defective = {"patch_distance": rng.normal(3, 1, 60), "normalized_map_max": rng.normal(1, 1, 60)}
    assert choose_score(good, defective).name == "patch_distance"  # clearly better where parts move
    aligned = choose_score(good, defective, aligned=True)
    assert aligned.name == "normalized_map_max" and "patch_distance" in aligned.auroc  # measured, not offered
    assert "aligned parts" in aligned.reason


def _tie_with_light(map_max_shift, patch_shift, n_good=30, seed=0):
    """map_max and patch_distance find the synthetic defects alike (patch_distance a shade better, so that the AUROC
    alone would choose it); re-exposed good photos move each term up by its own shift (in σ of the good values)."""
    rng = np.random.default_rng(seed)
    good_values, defective_values = rng.normal(0, 1, n_good), rng.normal(1.5, 1, 60)
    good = {"map_max": good_values, "patch_distance": good_values}
    defective = {"map_max": defective_values, "patch_distance": defective_values + 0.03}
    relit = {"map_max": rng.normal(map_max_shift, 1, 4 * n_good),
             "patch_distance": rng.normal(patch_shift, 1, 4 * n_good)}
    return good, defective, relit


def test_a_tie_goes_to_the_term_a_change_of_light_shifts_least():
    good, defective, relit = _tie_with_light(map_max_shift=0.1, patch_shift=1.5)
    plain = choose_score(good, defective)
    assert plain.name == "patch_distance"  # tied on synthetic defects (within TIE_TOLERANCE), a shade higher
    assert 0 < plain.auroc["patch_distance"] - plain.auroc["map_max"] < 0.01
    with_light = choose_score(good, defective, relit_terms=relit)
    assert with_light.light_shift["patch_distance"] > 0.3 > 0.1 > with_light.light_shift["map_max"]
    assert with_light.name == "map_max" and "less shifted by light" in with_light.reason
    assert choose_score(good, defective, relit_terms=_tie_with_light(1.5, 0.1)[2]).name == "patch_distance"


def test_the_light_never_outweighs_a_clearly_better_score():
    good, defective, relit = _tie_with_light(map_max_shift=0.0, patch_shift=1.5)
    defective["map_max"] -= 2.0  # map_max now finds far fewer defects: no tie
    choice = choose_score(good, defective, relit_terms=relit)
    assert choice.name == "patch_distance" and "less shifted by light" not in choice.reason
