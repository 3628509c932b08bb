"""mteb end to end: evaluate the default encoder on a local retrieval task, fully offline.

Run: python integrations/mteb_example.py
"""

from __future__ import annotations

from typing import Any

import mteb

from l2vg_retrieval.mteb import L2VGMtebEncoder, SampleCorpusRetrieval


def main(encoder: Any = None, *, verbose: bool = True) -> dict[str, Any]:
    model = L2VGMtebEncoder(encoder=encoder)
    # cache=None: mteb would otherwise silently reuse scores saved by an earlier run.
    result = mteb.evaluate(model, SampleCorpusRetrieval(), cache=None, show_progress_bar=False)
    task = result.task_results[0]
    scores = task.scores["test"][0]
    summary = {
        "task": task.task_name,
        "model": model.mteb_model_meta.name,
        "ndcg_at_10": scores["ndcg_at_10"],
        "recall_at_5": scores["recall_at_5"],
        "main_score": task.get_score(),
    }
    if verbose:
        print(summary)
    return summary


if __name__ == "__main__":
    main()
