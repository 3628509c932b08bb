"""Would a head of its own for queries lift held-out alignment? (issue 9)

The default's alignment head is one linear map shared by every reading it serves: queries
(alone and with the instruction) and generative documents (the answer text with the
document prompt), solved by ridge over all three readings at once. Held-out alignment is
scored on one of them, the query with the instruction, so a head solved for queries alone
could fit that reading better, at the price of an asymmetric encoder (queries and
documents through different heads). Solved here on the same seeded 4,000 examples as the
other refit experiments (the packaged encoder's soft prompts, cached by
``refit_head_capacity.py``) and scored on the 300 held-out queries:

- the shared head over the three readings (the default's solve);
- a query head over the query readings only (alone and with the instruction);
- a query head over the instruction reading only (the reading scored).

    python benchmarks/experiments/refit_query_head.py OUT.json [--examples 4000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from refit_head_capacity import fit_and_score, soft_prompt_features

from l2vg_retrieval import L2VGEncoder


def main(out: str, n_examples: int) -> None:
    encoder = L2VGEncoder.from_pretrained()
    f = soft_prompt_features(encoder, n_examples)
    x, y = f["train"].mean(1), f["train_targets"]  # three readings, view after view
    x_held, y_held = f["heldout"].mean(1), f["heldout_targets"]
    n = x.shape[0] // 3
    heads = {
        "shared head: query, query + instruction, answer + document prompt": (x, y, 3),
        "query head: query, query + instruction": (x[: 2 * n], y[: 2 * n], 2),
        "query head: query + instruction": (x[n : 2 * n], y[n : 2 * n], 1),
    }
    report = {
        "command": f"python benchmarks/experiments/refit_query_head.py {out} --examples {n_examples}",
        "examples": n_examples,
        "heldout_queries": int(x_held.shape[0]),
        "heads": {
            name: fit_and_score(hx, hy, x_held, y_held, views) for name, (hx, hy, views) in heads.items()
        },
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1) + "\n")
    for name, scores in report["heads"].items():
        print(name, {k: v for k, v in scores.items() if k != "validation_mse_by_ridge"}, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--examples", type=int, default=4000)
    args = parser.parse_args()
    main(args.out, args.examples)
