"""Which harmful passages of one category the screen misses when it never saw the category
(issue 13: reading the leave-one-category-out failures, not only counting them).

Refits the shipped screen (probe after 15 layers, shrinkage LDA, 2% benign target) exactly as
the leave-one-category-out fold for CATEGORY does, then prints every harmful passage of that
category with its margin to the threshold. Reads the feature cache of
``safety_screen_layers.py`` (made by it, or here on a first run).

    python benchmarks/experiments/screen_missed_category.py intellectual_property \
        [--cache runs/exp/screen_layers.pkl]
    python benchmarks/experiments/screen_missed_category.py all

``all`` runs every category's fold and prints, per category, how many of its full harmful
passages and of their short leads (the opening sentences, ``source`` ending in ``:lead``)
the fold's screen flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from safety_screen_layers import DEFAULT_CHECKPOINT, held_out_split, load_features

from l2vg_retrieval.bench.harmful_loco import GeneralisationEvaluator, LocoSettings
from l2vg_retrieval.safety_data import categories_in, load_benchmark_set


def fold_margins(features: Any, category: str) -> tuple[np.ndarray, list[int]]:
    """Every passage's margin to the threshold of ``category``'s fold, and the indices of
    that category's harmful passages."""
    evaluator = GeneralisationEvaluator(
        features, held_out_split(load_benchmark_set()), [category], LocoSettings(doc_spaces=("probe",))
    )
    space, probe, threshold = evaluator.fold_screen(category)
    margins = probe.score(features.doc_embeddings[space]) - threshold
    harmful = [i for i, r in enumerate(features.passages) if r.category == category and r.label == 1]
    return margins, harmful


def _counts_line(name: str, counts: dict[str, list[int]]) -> str:
    (full, n_full), (leads, n_leads) = counts["full"], counts["lead"]
    return f"{name:28s} full passages flagged {full}/{n_full}  leads flagged {leads}/{n_leads}"


def main(category: str, cache: Path) -> None:
    features, _ = load_features(DEFAULT_CHECKPOINT, cache)
    if category == "all":
        totals = {"full": [0, 0], "lead": [0, 0]}
        for name in categories_in([r for r in features.passages if r.label == 1]):
            margins, harmful = fold_margins(features, name)
            counts = {"full": [0, 0], "lead": [0, 0]}
            for i in harmful:
                kind = "lead" if features.passages[i].source.endswith(":lead") else "full"
                counts[kind][0] += int(margins[i] >= 0)
                counts[kind][1] += 1
            for kind in totals:
                totals[kind][0] += counts[kind][0]
                totals[kind][1] += counts[kind][1]
            print(_counts_line(name, counts))
        print(_counts_line("all", totals))
        return
    margins, harmful = fold_margins(features, category)
    if not harmful:
        raise SystemExit(f"no harmful passages in category {category!r}")
    for i in sorted(harmful, key=lambda i: margins[i]):
        r = features.passages[i]
        flag = "flagged" if margins[i] >= 0 else "missed "
        print(f"{flag} {margins[i]:+.2f}  {r.source:20s} {r.text[:100]!r}")
    print(f"{sum(margins[i] >= 0 for i in harmful)}/{len(harmful)} flagged")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("category", help="a taxonomy id, or all")
    parser.add_argument("--cache", default="runs/exp/screen_layers.pkl")
    args = parser.parse_args()
    main(args.category, Path(args.cache))
