"""Does the screen generalise better if it cannot see *topic*? (issue 13)

Every harm category comes with benign look-alikes on its topic, so part of what a screen
fitted on 14 categories learns is "these topics are harmful", which is worth nothing on a
category it never saw. Here each fold first finds the directions along which its training
categories differ in topic (the mean of every row of a category, harmful and look-alike,
passages and requests, centred over categories; their top ``k`` principal directions) and
removes them from every feature vector, for fitting and for scoring alike. What is left
to separate harmful from benign is what differs *within* a topic: enabling against
explaining. Nothing of the held-out category enters the projection.

Same protocol as ``safety_screen_requests.py`` (shipped LDA screen on the probe features,
requests as extra rows), from its cached features:

    python benchmarks/experiments/safety_screen_topic_nullspace.py OUT.json
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from safety_screen_requests import evaluate, loco_inputs, write_screen_report

from l2vg_retrieval.bench.harmful_loco import ComponentScores, GeneralisationEvaluator
from l2vg_retrieval.safety import fit_screen


def topic_directions(rows: np.ndarray, categories: np.ndarray, k: int | None) -> np.ndarray:
    """Orthonormal ``[d, k]`` directions of the between-category spread of ``rows``."""
    names = sorted(c for c in set(categories.tolist()) if c)
    means = np.stack([rows[categories == c].mean(axis=0) for c in names])
    means -= means.mean(axis=0)
    _, _, vt = np.linalg.svd(means, full_matrices=False)
    keep = len(names) - 1 if k is None else min(k, len(names) - 1)
    return vt[:keep].T


def topic_free(k: int | None) -> type[GeneralisationEvaluator]:
    class TopicFree(GeneralisationEvaluator):
        """Each fold removes its training categories' topic directions before the screen."""

        projection: np.ndarray | None = None

        def _screen(self, rows: np.ndarray, query_rows: np.ndarray) -> Any:
            f, s = self.features, self.settings
            docs, reqs = f.doc_embeddings["probe"], f.request_doc_embeddings["probe"]
            stacked = np.concatenate([docs[rows], reqs[query_rows]])
            cats = np.concatenate([self.d_cat[rows], self.q_cat[query_rows]])
            v = topic_directions(stacked, cats, k)
            self.projection = v

            def strip(x: np.ndarray) -> np.ndarray:
                return x - (x @ v) @ v.T

            projected = replace(
                f, doc_embeddings={"probe": strip(docs)}, request_doc_embeddings={"probe": strip(reqs)}
            )
            space, probe, threshold, _ = fit_screen(
                projected, rows, request_index=query_rows, doc_spaces=s.doc_spaces, seed=s.seed,
                max_fpr=s.max_fpr_doc, val_fraction=s.val_fraction, min_family_size=s.min_family_size,
                probe_kind=s.screen_probe,
            )  # fmt: skip
            return space, probe, threshold

        def _screen_scores(self, space: Any, probe: Any, threshold: float) -> Any:
            x = self.features.doc_embeddings[space]
            v = self.projection
            assert v is not None
            return ComponentScores(probe.score(x - (x @ v) @ v.T), threshold)

    return TopicFree


def main(out: str, cache: str) -> None:
    x = loco_inputs(Path(cache))
    inputs = (x.passages, x.requests, x.doc, x.req, x.split_of, x.categories)
    results = {"passages + requests (shipped)": evaluate(*inputs)}
    for k in (2, 4, 8, None):
        results[f"topic directions removed: {'all' if k is None else k}"] = evaluate(*inputs, topic_free(k))
    write_screen_report(out, f"python benchmarks/experiments/safety_screen_topic_nullspace.py {out}", results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--cache", default="runs/exp/screen_requests.npz")
    args = parser.parse_args()
    main(args.out, args.cache)
