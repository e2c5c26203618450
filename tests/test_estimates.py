"""Canary estimates with 95% intervals, the canaries an interval width needs, and the estimated wrong-label count."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from trakscope.methods.estimates import (
    canaries_for_width,
    estimate_with_interval,
    estimated_wrong_labels,
    pair_weights,
    recall_estimates,
    wilson_interval,
)
from trakscope.methods.metrics import recall_at_fraction


@pytest.mark.parametrize("found,n", [(0, 10), (5, 10), (9, 18), (18, 18), (3, 94)])
def test_wilson_interval_matches_scipy(found, n):
    ci = binomtest(found, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(found, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0  # exact ends


def test_canaries_for_width_is_the_fewest_that_fit():
    for width, recall in [(0.4, 0.5), (0.2, 0.5), (0.2, 0.8), (0.1, 0.5)]:
        n = canaries_for_width(width, recall)
        low, high = wilson_interval(recall * n, n)
        before = wilson_interval(recall * (n - 1), n - 1)
        assert high - low <= width < before[1] - before[0] or n > 64  # past 64 the search steps by 2%
    assert canaries_for_width(0.2) == 94  # about (2 * 1.96 / 0.2)^2 / 4 = 96 by the normal approximation
    assert canaries_for_width(0.2, 0.8) < canaries_for_width(0.2)  # 0.5 is the worst case
    with pytest.raises(ValueError):
        canaries_for_width(0.0)


def test_estimate_is_widened_by_the_spread_between_kinds():
    hits = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1], dtype=bool)
    one = estimate_with_interval(hits)
    assert one["estimate"] == pytest.approx(7 / 12) and one["n"] == 12
    assert (one["low"], one["high"]) == pytest.approx(wilson_interval(7, 12))
    kinds = np.array([0] * 6 + [1] * 6)  # kind 0 finds all 6, kind 1 one of 6
    both = estimate_with_interval(hits, kinds)
    assert both["estimate"] == one["estimate"]
    assert both["high"] == 1.0 and both["low"] == pytest.approx(min(one["low"], 1 / 6))
    assert math.isnan(estimate_with_interval(np.zeros(0, bool))["estimate"])


def test_recall_estimates_are_the_canary_recalls_with_intervals():
    rng = np.random.default_rng(0)
    suspicion, canary = rng.normal(size=300), np.zeros(300, bool)
    canary[rng.permutation(300)[:30]] = True
    suspicion[canary] += 1.5
    est = recall_estimates(suspicion, canary)
    for f, key in [(0.05, "recall@5%"), (0.10, "recall@10%"), (0.20, "recall@20%")]:
        r = recall_at_fraction(suspicion, canary, f)
        assert est[key]["estimate"] == pytest.approx(r) and est[key]["n"] == 30
        assert (est[key]["low"], est[key]["high"]) == pytest.approx(wilson_interval(r * 30, 30))
        assert est[key]["low"] < r < est[key]["high"]


def test_estimated_wrong_labels_counts_planted_flips():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 4, size=800)
    probs = np.full((800, 4), 0.05)
    probs[np.arange(800), true] = 0.85  # a model that knows the true class
    given = true.copy()
    flip = rng.permutation(800)[:80]
    given[flip] = (true[flip] + 1) % 4
    assert estimated_wrong_labels(probs, given) == pytest.approx(80, abs=4)
    assert estimated_wrong_labels(probs, true) == 0


def test_weighted_estimate_uses_the_effective_count():
    hits = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    weights = np.array([3.0, 3.0, 1.0, 1.0, 0.0, 0.0])
    est = estimate_with_interval(hits, weights=weights)
    assert est["estimate"] == pytest.approx(6 / 8) and est["n"] == 6
    assert est["n_effective"] == pytest.approx(64 / 20)  # (sum w)^2 / sum w^2
    assert (est["low"], est["high"]) == pytest.approx(wilson_interval(0.75 * 3.2, 3.2))
    even = estimate_with_interval(hits, weights=np.full(6, 2.0))
    assert even["n_effective"] == pytest.approx(6) and even["estimate"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError):
        estimate_with_interval(hits, weights=-weights)


def test_pair_weights_carry_the_errors_share_over_the_planted_share():
    planted = np.full((3, 3), 1 / 6)
    np.fill_diagonal(planted, 0)
    errors = np.zeros((3, 3))
    errors[0, 1] = 1.0  # every estimated error is a 0 labelled 1
    w = pair_weights(np.array([0, 0, 1, 2]), np.array([1, 2, 0, 0]), planted, errors)
    np.testing.assert_allclose(w, [4, 0, 0, 0])  # mean 1
    errors[1, 0] = 1.0
    planted[1, 0] = 0.5 / 6  # half as many canaries planted there: each counts twice
    w = pair_weights(np.array([0, 1]), np.array([1, 0]), planted, errors)
    assert w[1] == pytest.approx(2 * w[0])
    assert pair_weights(np.array([2]), np.array([1]), planted, errors) is None


def _canaries_metrics(weighted: bool) -> dict:
    from trakscope.stages.canaries import canaries_needed

    est = {"estimate": 0.5, "low": 0.29, "high": 0.71, "n": 18, "n_effective": 9.0 if weighted else 18.0}
    return {"n": 18, "weighted": weighted,
            "estimates": {"aum": {"recall@5%": est, "recall@10%": est, "recall@20%": est}},
            "needed": canaries_needed(600, 18, 0.5, design=2.0 if weighted else 1.0)}


def test_canary_counts_and_the_estimate_in_words():
    from trakscope.report.sections import canary_estimate_html
    from trakscope.report.tables import canary_count_lines, canary_estimate_table, wrong_label_line

    plain, weighted = _canaries_metrics(False), _canaries_metrics(True)
    assert plain["needed"]["recommended"] == 94 and weighted["needed"]["recommended"] == 188  # 2 per effective one
    assert weighted["needed"]["width_now"] > plain["needed"]["width_now"]
    assert plain["needed"]["widths"]["0.2"] == {"at_recall": 94, "worst_case": 94}
    assert "| aum | 0.500 (0.290–0.710) |" in canary_estimate_table(plain)
    lines = canary_count_lines(plain, 600)
    assert "0.2: 94" in lines[0] and "more than 5% of these 600 training labels" in lines[1]
    from trakscope.stages.canaries import canaries_needed

    big = {**plain, "needed": canaries_needed(10000, 18, 0.5)}
    assert "trakscope run --canaries 0.0094" in canary_count_lines(big, 10000)[1]
    assert len(lines) == 2 and "canaries per effective one" in canary_count_lines(weighted, 600)[2]
    page = canary_estimate_html(weighted, 600)
    assert "These recalls are estimates" in page and "0.500 (0.290–0.710)" in page and "weighted by the share" in page
    assert "weighted" not in canary_estimate_html(plain, 600) and canary_estimate_html({}, 600) == ""
    line = wrong_label_line({"estimated": 57, "among": 582, "probabilities": "out-of-sample (k-fold)",
                             "flagged": {"cleanlab": 49}})
    assert "about 57 of 582" in line and "cleanlab flags 49" in line and "an estimate" in line


def test_weighted_canary_estimates_cover_the_unweighted_one():
    from trakscope.stages.canaries import canary_estimates

    rng = np.random.default_rng(3)
    scores = {"loss": rng.normal(size=200)}  # loss: high = suspicious
    canary = np.zeros(200, bool)
    canary[:20] = True
    scores["loss"][:10] += 5  # ten canaries on top, ten among the rest
    weights = np.zeros(200)
    weights[:20] = np.r_[np.full(10, 0.1), np.full(10, 1.9)]  # the weights favour the canaries not found
    out = canary_estimates(scores, canary, "loss", weights)
    est, plain = out["estimates"]["loss"]["recall@10%"], out["unweighted"]["loss"]["recall@10%"]
    assert plain["estimate"] == pytest.approx(0.5) and est["estimate"] == pytest.approx(0.05)
    assert est["low"] <= est["estimate"] and est["high"] >= plain["estimate"] and out["weighted"]
    assert canary_estimates(scores, canary, "loss")["estimates"]["loss"]["recall@10%"] == plain
