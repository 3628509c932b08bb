"""Does the gate carry over better if it also reads the mean over the request's tokens? (issue 13)

The gate read one middle-layer state of the query's encoding pass: the one at the answer
position (after 15 of 30 layers), beside the refusal signal. The screen reads passages
after the same layers at the last position *and* as the mean over the passage's own
tokens, and the mean was what lifted it (docs/safety.md, "Choosing the gate's features").
The same pass already computes every token's state at that layer, so the gate can read the
mean over the request's own tokens (its text and the template's tail, as
``L2VGEncoder.probe_states`` reads them) at no cost. Measured with the shipped protocol
(leave one category out, thresholds at 2% benign false positives on the fold's validation
rows), on the current data (with the benign writing requests), one probe kind at a time:

- logistic (L2 by validation AUC) and shrinkage LDA (shrinkage by held-out categories),
  each on the answer position's state alone and with the mean beside it;
- with the mean, the probe kind chosen per fold by recall on harm categories held out of
  the fold's own training rows (both kinds' hyperparameters chosen that way too), the
  rule that picks the screen's shrinkage and space: the kind is then not chosen by the
  numbers it is judged on.

The per-category AUC (left-out harmful requests against held-out benign ones) is
reported beside recall: it says whether the ranking improved, whatever the threshold.

    python benchmarks/experiments/safety_gate_probe_mean.py OUT.json [--cache runs/exp/gate_probe_mean.pkl]

The encoder runs once over every request of both splits (query pass, ~4 min); cached.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from safety_gate_passages import cached_request_features, gate_variants

from l2vg_retrieval.bench.harmful_loco import CALIBRATION, HELD_OUT, GeneralisationEvaluator, LocoSettings
from l2vg_retrieval.safety import PROBE_KINDS, LogisticProbe, SafetyFeatures, fit_gate
from l2vg_retrieval.safety_data import categories_in, load_benchmark_set, load_calibration_set


class KindChosenByCategories(GeneralisationEvaluator):
    """Each fold fits every probe kind with its hyperparameter chosen by held-out categories
    and keeps the kind whose held-out-category recall (inside the fold's training rows) is
    highest; ``chosen`` records the kind per fold."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chosen: dict[str, str] = {}
        self._current = ""

    def fold_rows(self, category: str) -> tuple[np.ndarray, np.ndarray]:
        self._current = category
        return super().fold_rows(category)

    def _gate(self, rows: np.ndarray, refusal_signal: bool) -> tuple[LogisticProbe, float]:
        s = self.settings
        best: tuple[float, str, LogisticProbe, float] | None = None
        for kind in PROBE_KINDS:
            probe, threshold, report = fit_gate(
                self.features, rows, refusal_signal=refusal_signal, seed=s.seed, max_fpr=s.max_fpr_query,
                val_fraction=s.val_fraction, min_family_size=s.min_family_size, probe_kind=kind,
                select_by="categories",
            )  # fmt: skip
            value = report["l2" if kind == "logistic" else "shrinkage"]
            recall = report["held_out_category_recall"][str(value)]
            if best is None or recall > best[0]:
                best = (recall, kind, probe, threshold)
        assert best is not None
        self.chosen[self._current] = best[1]
        return best[2], best[3]


def state_only(features: SafetyFeatures) -> SafetyFeatures:
    """The same features with the gate reading the answer position's state alone."""
    assert features.probe_states is not None and features.probe_mean
    hidden = features.probe_states.shape[1] // 2
    return dataclasses.replace(features, probe_states=features.probe_states[:, :hidden], probe_mean=False)


def main(out: str, cache: str) -> None:
    cal, held = load_calibration_set(), load_benchmark_set()
    queries = [r for r in [*cal, *held] if r.kind == "query"]
    features = cached_request_features(cache, queries, probe_mean=True)
    held_ids = {id(r) for r in held}

    def split_of(r: Any) -> str:
        return HELD_OUT if id(r) in held_ids else CALIBRATION

    categories = categories_in(features.queries)
    alone = state_only(features)
    variants: dict[str, GeneralisationEvaluator] = {}
    for kind in PROBE_KINDS:
        settings = LocoSettings(doc_spaces=("teacher",), gate_probe=kind)
        variants[f"{kind}, answer-position state"] = GeneralisationEvaluator(
            alone, split_of, categories, settings
        )
        variants[f"{kind}, state + request mean"] = GeneralisationEvaluator(
            features, split_of, categories, settings
        )
    nested = KindChosenByCategories(features, split_of, categories, LocoSettings(doc_spaces=("teacher",)))
    variants["kind chosen by held-out categories, state + request mean"] = nested
    report = {
        "command": f"python benchmarks/experiments/safety_gate_probe_mean.py {out} --cache {cache}",
        "gate_features": {
            "answer-position state": int(alone.gate_matrix(True).shape[1]),
            "state + request mean": int(features.gate_matrix(True).shape[1]),
        },
        "variants": gate_variants(variants, with_auc=True),
    }
    report["kind_chosen_per_fold"] = nested.chosen
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print("probe kind chosen per fold:", nested.chosen)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--cache", default="runs/exp/gate_probe_mean.pkl")
    args = parser.parse_args()
    main(args.out, args.cache)
