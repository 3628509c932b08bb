"""Do the gate's look-alike false positives fall if it cannot see *topic*? (issue 13)

The gate's failure held out is look-alikes: benign requests on a harm category's topic,
blocked at 6% (worst fold 9%) against the 2% it is calibrated at. Topic is what a
look-alike shares with harm, so each fold removes the directions along which its own
training categories differ in topic (``safety_screen_topic_nullspace.topic_directions``
over the fold's requests, harmful and look-alike) from the probe state before fitting and
scoring. The screen lost recall this way; the gate trades differently (its benign side
holds look-alikes of every category), so it is measured on its own.

    python benchmarks/experiments/safety_gate_topic_nullspace.py OUT.json

Features come from ``safety_gate_passages.py``'s cache (``runs/exp/gate_passages.pkl``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from safety_gate_passages import PREVIOUS_GATE, load, write_gate_report
from safety_screen_topic_nullspace import topic_directions

from l2vg_retrieval.bench.harmful_loco import (
    CALIBRATION,
    HELD_OUT,
    ComponentScores,
    GeneralisationEvaluator,
    LocoSettings,
)
from l2vg_retrieval.safety import fit_gate
from l2vg_retrieval.safety_data import categories_in


def topic_free_gate(k: int | None) -> type[GeneralisationEvaluator]:
    class TopicFreeGate(GeneralisationEvaluator):
        projected: Any = None

        def _gate(self, rows: np.ndarray, refusal_signal: bool) -> Any:
            f, s = self.features, self.settings
            assert f.probe_states is not None
            v = topic_directions(f.probe_states[rows], self.q_cat[rows], k)
            states = f.probe_states - (f.probe_states @ v) @ v.T
            self.projected = dataclasses.replace(f, probe_states=states)
            probe, threshold, _ = fit_gate(
                self.projected, rows, refusal_signal=refusal_signal, seed=s.seed, max_fpr=s.max_fpr_query,
                val_fraction=s.val_fraction, min_family_size=s.min_family_size, probe_kind=s.gate_probe,
            )  # fmt: skip
            return probe, threshold

        def _gate_scores(self, probe: Any, threshold: float, refusal_signal: bool) -> ComponentScores:
            return ComponentScores(probe.score(self.projected.gate_matrix(refusal_signal)), threshold)

    return TopicFreeGate


def main(out: str, cache: str) -> None:
    base, _, held = load(Path(cache))
    held_ids = {id(r) for r in held}

    def split_of(r: Any) -> str:
        return HELD_OUT if id(r) in held_ids else CALIBRATION

    categories = categories_in(base.queries)
    settings = LocoSettings(doc_spaces=("teacher",), gate_probe=PREVIOUS_GATE)
    variants: dict[str, GeneralisationEvaluator] = {
        "shipped": GeneralisationEvaluator(base, split_of, categories, settings)
    }
    for k in (2, 4, 8, None):
        name = f"topic directions removed: {'all' if k is None else k}"
        variants[name] = topic_free_gate(k)(base, split_of, categories, settings)
    write_gate_report(out, f"python benchmarks/experiments/safety_gate_topic_nullspace.py {out}", variants)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--cache", default="runs/exp/gate_passages.pkl")
    args = parser.parse_args()
    main(args.out, args.cache)
