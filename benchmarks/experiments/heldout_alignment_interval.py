"""How sure is the gap between the student and the trivial predictor? (issue 9)

The issue's last bar: the student's held-out alignment cosine (its query vector against
the teacher's vector of the backbone's real response) must exceed the trivial predictor's,
the teacher's vector of the query itself. Both are means over the same 300 held-out
queries, so the comparison is paired: this runs the training pipeline's held-out
evaluation on a checkpoint with the teacher as the baseline, and reports each mean with
its 95% bootstrap interval and the interval of the per-query difference.

    python benchmarks/experiments/heldout_alignment_interval.py OUT.json [--model PATH]

About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qa_hybrid import heldout_rows, pool_responses

from l2vg_retrieval import L2VGEncoder
from l2vg_retrieval.training.evaluate import TRIVIAL, evaluate_heldout


def main(out: str, model: str | None) -> None:
    rows = heldout_rows(pool_responses())
    encoder = L2VGEncoder.from_pretrained(model) if model else L2VGEncoder.from_pretrained()
    report = evaluate_heldout(
        encoder, rows, teacher=encoder.teacher, baselines={TRIVIAL: encoder.teacher}, n_decode=0
    )
    record = {
        "command": "python benchmarks/experiments/heldout_alignment_interval.py "
        + out
        + (f" --model {model}" if model else ""),
        "model": model or "l2vg_retrieval/checkpoints/default",
        "fingerprint": encoder.fingerprint,
        **report,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=1) + "\n")
    for name, m in report["models"].items():
        print(f"{name:16s} alignment {m['alignment_cosine']:.4f} {m['alignment_cosine_ci95']}")
    print("student - trivial", report["alignment_vs_trivial"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--model", default=None, help="a checkpoint folder (default: the packaged default)")
    args = parser.parse_args()
    main(args.out, args.model)
