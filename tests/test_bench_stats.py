"""Confidence intervals of the benchmarks' headline numbers (bench/stats.py)."""

from __future__ import annotations

import numpy as np
import pytest

from l2vg_retrieval.bench.harmful_loco import _summary
from l2vg_retrieval.bench.stats import (
    mean_ci,
    mean_rate_over_groups_ci,
    paired_rate_difference_ci,
    ratio_of_means_ci,
)


def test_mean_interval_matches_the_normal_approximation_and_narrows_with_more_items() -> None:
    rng = np.random.default_rng(1)
    values = rng.random(400)
    low, high = mean_ci(values)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * half, rel=0.15)
    small = mean_ci(values[:40])
    assert small[1] - small[0] > 2 * (high - low)
    assert mean_ci([0.5, 0.5, 0.5]) == [0.5, 0.5] and mean_ci([0.3]) is None


def test_ratio_interval_is_paired() -> None:
    """Both systems' scores of one query move together: a system that is exactly twice
    another on every query has ratio 2 in every resample, however the queries vary."""
    rng = np.random.default_rng(2)
    base = rng.random(100)
    assert ratio_of_means_ci(2 * base, base) == pytest.approx([2.0, 2.0])
    noisy = ratio_of_means_ci(2 * base + rng.normal(0, 0.2, 100), base)
    assert noisy[0] < 2.0 < noisy[1] and noisy[1] - noisy[0] > 0.01
    assert ratio_of_means_ci(base, np.zeros(100)) is None
    with pytest.raises(ValueError, match="paired"):
        ratio_of_means_ci(base, base[:50])


def test_mean_rate_over_groups_resamples_items_within_groups_and_groups_apart() -> None:
    counts = {"a": (18, 20), "b": (10, 20), "c": (20, 20)}
    ci = mean_rate_over_groups_ci(counts)
    mean = np.mean([0.9, 0.5, 1.0])
    assert ci["items"][0] < mean < ci["items"][1]
    assert ci["groups"][0] < mean < ci["groups"][1]
    # Ten times the texts per category: the items interval narrows, the groups one cannot
    # (three categories are three categories).
    bigger = mean_rate_over_groups_ci({g: (10 * k, 10 * n) for g, (k, n) in counts.items()})
    assert bigger["items"][1] - bigger["items"][0] < 0.5 * (ci["items"][1] - ci["items"][0])
    assert bigger["groups"][1] - bigger["groups"][0] > 2 * (bigger["items"][1] - bigger["items"][0])
    # A category recalled in full has no spread of its own (percentile intervals cope).
    assert mean_rate_over_groups_ci({"a": (5, 5), "b": (7, 7)})["items"] == [1.0, 1.0]
    assert mean_rate_over_groups_ci({"a": (5, 5), "empty": (0, 0)}) == {"items": None, "groups": None}


def test_leave_one_category_out_summary_carries_the_intervals() -> None:
    per = {
        "x": {"recall": 0.9, "n_harmful": 20},
        "y": {"recall": 0.6, "n_harmful": 10},
        "cse": {"recall": None, "n_harmful": 0},
    }
    summary = _summary(per)
    assert summary["mean"] == pytest.approx(0.75) and summary["n_categories"] == 2
    assert summary["ci95"] == mean_rate_over_groups_ci({"x": (18, 20), "y": (6, 10)})


def test_paired_difference_cancels_what_both_variants_share() -> None:
    rng = np.random.default_rng(3)
    base = {g: "".join(rng.choice(["0", "1"], size=20)) for g in "abcdef"}
    same = paired_rate_difference_ci(base, base)
    assert same["mean_difference"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["groups"] == 6
    # One more item caught per group: +5 points, an interval that excludes zero, and far
    # narrower than either mean's own interval.
    better = {g: "1" + s[1:] if s[0] == "0" else s.replace("0", "1", 1) for g, s in base.items()}
    result = paired_rate_difference_ci(better, base)
    assert result["mean_difference"] == pytest.approx(0.05)
    assert 0 < result["ci95"][0] <= 0.05 <= result["ci95"][1]
    counts = {g: (s.count("1"), len(s)) for g, s in base.items()}
    own = mean_rate_over_groups_ci(counts)["items"]
    assert result["ci95"][1] - result["ci95"][0] < 0.5 * (own[1] - own[0])
    with pytest.raises(ValueError, match="different items"):
        paired_rate_difference_ci({"a": "101"}, {"a": "10"})
