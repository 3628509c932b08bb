"""Step 2 of the safety-gate feature sweep (docs/safety.md, "Choosing the gate's features").

Leave-one-category-out recall of the gate (or the screen) for feature sets and L2 grids,
numpy only, on the pickle step 1 wrote; the fitting, thresholds and metrics are the
library's own (``GeneralisationEvaluator``), only the gate's feature matrix is swapped.

    GRIDS="0.1|1|10|100;100;1000" python benchmarks/experiments/safety_gate_sweep.py features.pkl \\
        gate:none,answer_state,mid6,mid10,mid14,mid18,mid22,mid26,mid14+teacher_q,only+mid14 screen:both

A gate spec joins blocks with "+": "none" (the embedding gate: embedding, refusal
similarity, refusal signal), "answer_state" (the final state), "midK" (the state after K+1
layers), "teacher_q" (the teacher's embedding of the query text), "only" (drop the
embedding and refusal similarity). A screen spec joins "generative", "teacher", "both" and
(after step 1b, ``safety_screen_featurize.py``) "lastK" / "meanK" the same way.
Output: benchmarks/results/safety_gate_sweep.txt.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any

import numpy as np

from l2vg_retrieval import safety
from l2vg_retrieval.bench.harmful_loco import CALIBRATION, HELD_OUT, GeneralisationEvaluator, LocoSettings
from l2vg_retrieval.safety_data import categories_in
from l2vg_retrieval.vectors import unit_rows


def main(path: str, specs: list[str]) -> None:
    with open(path, "rb") as f:
        data = pickle.load(f)
    features = data["features"]
    split = {id(r): s for r, s in zip(features.queries, data["split_q"], strict=True)}
    split.update({id(r): s for r, s in zip(features.passages, data["split_d"], strict=True)})

    def split_of(row: Any) -> str:
        return HELD_OUT if split[id(row)] == "held" else CALIBRATION

    categories = categories_in(features.queries + features.passages)
    base_gate = features.gate_matrix
    extra = {
        "none": None,
        "only": None,
        "teacher_q": unit_rows(data["teacher_q"], np.float64),
        "answer_state": unit_rows(features.answer_states, np.float64),
        **{f"mid{layer}": unit_rows(v, np.float64) for layer, v in data["mid"].items()},
    }
    # Screen blocks: the two passage-vector spaces, and (when step 1b ran) the document
    # pass's state after K+1 layers at the last text position ("lastK") or averaged over the
    # passage's tokens ("meanK").
    doc_blocks = dict(features.doc_embeddings)
    doc_blocks["both"] = np.hstack([doc_blocks["generative"], doc_blocks["teacher"]])
    for (kind, layer), states in data.get("doc_mid", {}).items():
        doc_blocks[f"{kind}{layer}"] = unit_rows(states, np.float64)
    grid_spec = os.environ.get("GRIDS", "0.1|1|10|100;100;1000")
    grids = [tuple(float(x) for x in g.split("|")) for g in grid_spec.split(";")]
    n_emb = features.query_embeddings.shape[1] + 1

    def gate_matrix_for(names: list[str]) -> Any:
        blocks = [extra[n] for n in names if extra[n] is not None]

        def matrix(refusal_signal: bool, index: np.ndarray | None = None) -> np.ndarray:
            base = base_gate(refusal_signal, index)
            if "only" in names:
                base = base[:, n_emb:]
            rows = [b if index is None else b[index] for b in blocks]
            return np.hstack([base, *rows]) if rows else base

        return matrix

    for spec in specs:
        kind, names = spec.split(":")
        for name in names.split(","):
            for grid in grids:
                safety.L2_GRID = grid
                if kind == "gate":
                    features.gate_matrix = gate_matrix_for(name.split("+"))
                    settings = LocoSettings(gate_probe="logistic")
                    evaluator = GeneralisationEvaluator(features, split_of, categories, settings)
                    result = evaluator.leave_one_category_out(refusal_variants=(True,))["gate"]
                    result = next(iter(result.values()))
                else:
                    features.gate_matrix = base_gate
                    features.doc_embeddings[name] = np.hstack([doc_blocks[b] for b in name.split("+")])
                    settings = LocoSettings(doc_spaces=(name,), gate_probe="logistic")
                    evaluator = GeneralisationEvaluator(features, split_of, categories, settings)
                    result = evaluator.leave_one_category_out(refusal_variants=(False,))["screen"]
                recall = result["recall"]
                fpr = {
                    k: round(v["mean"], 3)
                    for k, v in result["benign_fpr"].items()
                    if isinstance(v, dict) and v.get("mean") is not None
                }
                print(kind, name, grid, "recall", round(recall["mean"], 3), "min", round(recall["min"], 3),
                      "fpr", fpr, flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
