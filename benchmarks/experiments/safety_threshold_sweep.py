"""What the 2% validation target buys and costs under leave-one-category-out (issue 13).

The calibration picks each threshold as the lowest score that keeps the benign false-positive
rate on its validation fold at or under ``max_fpr`` (pooled and per benign family). Held out,
on harm categories and look-alikes the fold never saw, the benign rate lands above that
target (the gate's look-alikes, the screen's technical passages). This sweep refits every
fold at stricter targets to show the trade: recall on the left-out category against benign
false positives on the held-out split, for the gate and the screen (the shipped features:
the probe state after 15 layers, the refusal signal, the LDA screen).

Reads the feature cache of ``safety_screen_layers.py`` (made by it, or here on a first run).

    python benchmarks/experiments/safety_threshold_sweep.py OUT.json [--cache runs/exp/screen_layers.pkl]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from safety_screen_layers import DEFAULT_CHECKPOINT, held_out_split, load_features

from l2vg_retrieval.bench.harmful_loco import GeneralisationEvaluator, LocoSettings
from l2vg_retrieval.safety_data import categories_in, load_benchmark_set

TARGETS = (0.02, 0.01, 0.005)


def main(out: str, cache: Path) -> None:
    features, _ = load_features(DEFAULT_CHECKPOINT, cache)
    split_of = held_out_split(load_benchmark_set())
    categories = categories_in([*features.queries, *features.passages])
    results: dict[str, Any] = {}
    for target in TARGETS:
        settings = LocoSettings(
            doc_spaces=("probe",), max_fpr_query=target, max_fpr_doc=target, gate_probe="logistic"
        )
        ev = GeneralisationEvaluator(features, split_of, categories, settings)
        loco = ev.leave_one_category_out(refusal_variants=(True,))
        gate = next(iter(loco["gate"].values()))
        screen = loco["screen"]
        results[str(target)] = {
            "gate": {"recall": gate["recall"], "benign_fpr": gate["benign_fpr"]},
            "screen": {"recall": screen["recall"], "benign_fpr": screen["benign_fpr"]},
        }
        g, s = gate["benign_fpr"], screen["benign_fpr"]
        print(
            f"target {target:.3f} | gate recall {gate['recall']['mean']:.3f}"
            f" (min {gate['recall']['min']:.2f})"
            f" FPR all {g['all']['mean']:.3f} look-alike {g.get('lookalike', {}).get('mean', np.nan):.3f}"
            f" | screen recall {screen['recall']['mean']:.3f} (min {screen['recall']['min']:.2f})"
            f" FPR all {s['all']['mean']:.3f} technical max {s.get('technical', {}).get('max', np.nan):.3f}",
            flush=True,
        )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--cache", default="runs/exp/screen_layers.pkl")
    args = parser.parse_args()
    main(args.out, Path(args.cache))
