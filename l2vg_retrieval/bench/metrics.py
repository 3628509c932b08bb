"""Ranking metrics computed the way BRIGHT reports them (nDCG@k, Recall@k, MRR@k).

BRIGHT scores every document, drops each query's ``excluded_ids`` from its ranking, and
hands the rest to pytrec_eval. These functions reproduce that arithmetic without the
dependency:

- gains are the qrel grades (linear gain, as trec_eval), discount ``1 / log2(rank + 1)``;
  the ideal DCG uses the query's relevant documents sorted by grade;
- ties in score are broken by document id, descending, which is trec_eval's order, so two
  runs with equal scores rank identically here and there;
- a query with no retrieved relevant document scores 0; a query that is in the qrels but
  missing from the run also scores 0 (it counts in the mean, as a failure should).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

# BRIGHT writes this in ``excluded_ids`` when nothing is excluded.
NO_EXCLUSION = "N/A"

DEFAULT_K_VALUES: tuple[int, ...] = (1, 5, 10, 100)


def rank(scores: Mapping[str, float], excluded: Iterable[str] = ()) -> list[str]:
    """Document ids by descending score, excluded ids removed, ties by id descending."""
    drop = {d for d in excluded if d != NO_EXCLUSION}
    kept = [(doc_id, float(score)) for doc_id, score in scores.items() if doc_id not in drop]
    for doc_id, score in kept:
        if math.isnan(score):
            raise ValueError(f"score of document {doc_id!r} is NaN; the retriever produced invalid scores")
    # Two stable sorts: first by id descending, then by score descending.
    kept.sort(key=lambda item: item[0], reverse=True)
    kept.sort(key=lambda item: item[1], reverse=True)
    return [doc_id for doc_id, _ in kept]


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _positives(qrels: Mapping[str, int]) -> dict[str, int]:
    return {d: int(g) for d, g in qrels.items() if int(g) > 0}


def dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    _check_k(k)
    relevant = _positives(qrels)
    if not relevant:
        return 0.0
    gains = [relevant.get(doc_id, 0) for doc_id in ranking[:k]]
    ideal = dcg(sorted(relevant.values(), reverse=True)[:k])
    return dcg(gains) / ideal


def recall_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    _check_k(k)
    relevant = _positives(qrels)
    if not relevant:
        return 0.0
    return len(relevant.keys() & set(ranking[:k])) / len(relevant)


def mrr_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int | None = None) -> float:
    """Reciprocal rank of the first relevant document within the top ``k`` (all if None)."""
    if k is not None:
        _check_k(k)
    relevant = _positives(qrels)
    for position, doc_id in enumerate(ranking[:k] if k is not None else ranking, start=1):
        if doc_id in relevant:
            return 1.0 / position
    return 0.0


def evaluate_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    excluded: Mapping[str, Iterable[str]] | None = None,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
) -> dict[str, float]:
    """Mean metrics over the queries of ``qrels``.

    ``run[qid][doc_id]`` is a score (higher is better); ``qrels[qid][doc_id]`` a grade
    (> 0 is relevant). Returns ``ndcg@k``, ``recall@k`` and ``mrr@k`` for each k, plus
    ``mrr`` over the whole ranking and ``n_queries``.
    """
    return mean_metrics(evaluate_queries(run, qrels, excluded, k_values))


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """:func:`evaluate_run`'s means from :func:`evaluate_queries`' rows (any subset of them)."""
    names = next(iter(per_query.values())).keys()
    means = {name: sum(r[name] for r in per_query.values()) / len(per_query) for name in names}
    means["n_queries"] = float(len(per_query))
    return means


def evaluate_queries(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    excluded: Mapping[str, Iterable[str]] | None = None,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
) -> dict[str, dict[str, float]]:
    """:func:`evaluate_run`'s metrics for each query of ``qrels`` (for intervals and paired
    comparisons), in the order of ``qrels``."""
    if not qrels:
        raise ValueError("qrels is empty: there is nothing to evaluate")
    excluded = excluded or {}
    per_query: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        if not _positives(judged):
            raise ValueError(f"query {qid!r} has no relevant document in the qrels")
        skip = {d for d in excluded.get(qid, ()) if d != NO_EXCLUSION}
        both = skip & _positives(judged).keys()
        if both:
            raise ValueError(f"query {qid!r} excludes its own gold documents {sorted(both)}")
        ranking = rank(run.get(qid, {}), skip)
        row = {"mrr": mrr_at_k(ranking, judged)}
        for k in k_values:
            row[f"ndcg@{k}"] = ndcg_at_k(ranking, judged, k)
            row[f"recall@{k}"] = recall_at_k(ranking, judged, k)
            row[f"mrr@{k}"] = mrr_at_k(ranking, judged, k)
        per_query[qid] = row
    return per_query
