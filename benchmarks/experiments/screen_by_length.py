"""The packaged document screen on the held-out split, one-line passages apart from long ones.

    python benchmarks/experiments/screen_by_length.py [CHECKPOINT]

Scores every passage of the taxonomy's held-out split (``benchmark.jsonl``: never
calibrated on) with the checkpoint's calibration and prints recall on harmful passages and
the false-positive rate on benign ones (per family), for passages of at most 30 words (the
leads, ``safety_data.add_leads``, and the one-sentence tips) and for longer ones. About a
minute on 2 CPU cores for the packaged default.
"""

from __future__ import annotations

import sys

import numpy as np

from l2vg_retrieval.encoder import L2VGEncoder
from l2vg_retrieval.safety import SafetyFilter
from l2vg_retrieval.safety_data import load_benchmark_set

SHORT_WORDS = 30
FAMILIES = ("general", "lookalike", "technical")


def main(checkpoint: str | None) -> None:
    rows = [r for r in load_benchmark_set() if r.kind == "passage"]
    encoder = L2VGEncoder.from_pretrained(checkpoint)
    screen = SafetyFilter.from_encoder(encoder)
    flagged = screen.document_scores([r.text for r in rows]) >= screen.calibration.doc_threshold
    labels = np.array([r.label for r in rows])
    short = np.array([len(r.text.split()) <= SHORT_WORDS for r in rows])
    family = np.array([r.family for r in rows])
    for name, scope in (
        (f"<= {SHORT_WORDS} words", short),
        ("longer", ~short),
        ("all", np.ones_like(short)),
    ):
        harm, benign = scope & (labels == 1), scope & (labels == 0)
        per_family = {f: round(float(flagged[benign & (family == f)].mean()), 3) for f in FAMILIES}
        print(
            f"{name:>12}: recall {flagged[harm].mean():.3f} (n={harm.sum()}), "
            f"benign FPR {flagged[benign].mean():.3f} (n={benign.sum()}) {per_family}"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
