"""Confidence intervals for the benchmarks' headline numbers (scipy's bootstrap).

A benchmark mean is an estimate from a sample of queries or passages; the intervals here
say how far another sample of the same kind could move it, so a difference smaller than
the interval is not reported as a gain. They cover the test sample only: thresholds and
probes fitted on calibration data are held fixed, so the variation of the fit itself is
not in them. Percentile intervals throughout: BCa fails on a sample with no spread (a
category recalled at 100%), which the safety benchmark has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 4000
SEED = 0


def _bootstrap(
    samples: tuple[np.ndarray, ...], statistic: Any, *, level: float, seed: int, paired: bool = False
) -> list[float]:
    """scipy's percentile bootstrap of a vectorised statistic, as ``[low, high]``."""
    result = stats.bootstrap(
        samples,
        statistic,
        paired=paired,
        n_resamples=RESAMPLES,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
        vectorized=True,
    )
    low, high = result.confidence_interval
    return [float(low), float(high)]


def mean_ci(values: Sequence[float], *, level: float = LEVEL, seed: int = SEED) -> list[float] | None:
    """Interval of the mean over items (queries), resampling the items."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) < 2:
        return None
    if np.ptp(data) == 0:
        return [float(data[0]), float(data[0])]
    return _bootstrap((data,), np.mean, level=level, seed=seed)


def ratio_of_means_ci(
    numerator: Sequence[float], denominator: Sequence[float], *, level: float = LEVEL, seed: int = SEED
) -> list[float] | None:
    """Interval of ``mean(numerator) / mean(denominator)`` over the same items (paired: both
    systems' scores of one query are resampled together)."""
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}")
    if len(a) < 2 or not b.any():
        return None

    def ratio(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.mean(x, axis=axis) / np.mean(y, axis=axis)

    interval = _bootstrap((a, b), ratio, level=level, seed=seed, paired=True)
    # A resample whose denominator is all zeros has no ratio: with a denominator that is
    # almost always zero there is no interval to give.
    return None if any(np.isnan(interval)) or any(np.isinf(interval)) else interval


def mean_rate_over_groups_ci(
    counts: Mapping[str, tuple[int, int]], *, level: float = LEVEL, seed: int = SEED
) -> dict[str, list[float] | None]:
    """Intervals of the mean over groups (harm categories) of each group's rate, from
    ``{group: (hits, n)}``.

    ``items``: the groups are fixed and their items resampled, each group on its own
    (stratified): how far another sample of texts from the *same* categories could move
    the mean. ``groups``: the groups' rates resampled as a sample of groups: how far the
    mean could move for another set of categories like these, the uncertainty of "harm
    nobody anticipated" (wide with 15 categories; it leaves out the items' own sampling).
    """
    usable = {g: (int(k), int(n)) for g, (k, n) in counts.items() if n > 0}
    if len(usable) < 2:
        return {"items": None, "groups": None}
    samples = tuple(np.r_[np.ones(k), np.zeros(n - k)] for k, n in usable.values())

    def mean_of_rates(*groups: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean([np.mean(g, axis=axis) for g in groups], axis=0)

    if all(np.ptp(s) == 0 for s in samples):
        point = float(mean_of_rates(*samples))
        items: list[float] | None = [point, point]
    else:
        items = _bootstrap(samples, mean_of_rates, level=level, seed=seed)
    rates = [k / n for k, n in usable.values()]
    return {"items": items, "groups": mean_ci(rates, level=level, seed=seed)}


def paired_rate_difference_ci(
    first: Mapping[str, str], second: Mapping[str, str], *, level: float = LEVEL, seed: int = SEED
) -> dict[str, Any]:
    """The difference between two variants' mean-over-groups rates, measured on the same
    items: ``{group: "1011..."}`` per variant (each item's outcome in the same order, as
    the leave-one-category-out results' ``caught`` strings give it). Items are resampled
    within each group and *together* for both variants, so what the two share cancels:
    the interval of a difference is far narrower than those of the two means. (Written
    out rather than through scipy: its paired resampling needs samples of one length, and
    the groups differ in size.)"""
    groups = [g for g in first if g in second and first[g]]
    for g in groups:
        if len(first[g]) != len(second[g]):
            raise ValueError(f"group {g!r}: the variants were measured on different items")
    if not groups:
        return {"mean_difference": None, "ci95": None, "groups": 0}
    rng = np.random.default_rng(seed)
    diffs = []
    per_group = np.zeros(RESAMPLES)
    for g in groups:
        a = np.frombuffer(first[g].encode(), dtype=np.uint8) - ord("0")
        b = np.frombuffer(second[g].encode(), dtype=np.uint8) - ord("0")
        diff = a.astype(np.float64) - b
        diffs.append(diff.mean())
        picks = rng.integers(0, len(diff), size=(RESAMPLES, len(diff)))
        per_group += diff[picks].mean(axis=1)
    resampled = per_group / len(groups)
    tail = (1 - level) / 2
    return {
        "mean_difference": float(np.mean(diffs)),
        "ci95": [float(np.quantile(resampled, tail)), float(np.quantile(resampled, 1 - tail))],
        "groups": len(groups),
    }
