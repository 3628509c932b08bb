"""Held-out evaluation: does a query's embedding land on the backbone's real response?

- alignment: mean cosine between the encoder's query embedding and the teacher's
  embedding of the backbone's response to that query;
- response retrieval: each query must retrieve its own response among all held-out
  responses (Recall@1, nDCG@10; one relevant item per query);
- response-text cosine: the encoder reads the *response itself* with the document prompt
  (the generative path), and its vector is compared with the teacher's vector of the same
  text. That is the easier half of the query's task (no answer to predict, only text to
  map into the teacher's space), so it is a reference for how far the query-side
  alignment can go with this encoder's capacity;
- reconstruction: ``decode`` of a few queries next to the real responses.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..bench.stats import mean_ci

# The trivial predictor the student must beat: the teacher's embedding of the query itself.
TRIVIAL = "teacher(query)"


def retrieval_scores(queries: np.ndarray, responses: np.ndarray) -> dict[str, float]:
    """Row i of ``queries`` is relevant to row i of ``responses`` only (unit vectors)."""
    sims = queries @ responses.T
    own = np.diag(sims)
    # Rank of the own response: 1 + how many others score strictly higher.
    ranks = 1 + (sims > own[:, None]).sum(axis=1)
    ndcg = np.where(ranks <= 10, 1.0 / np.log2(ranks + 1), 0.0)
    return {
        "recall@1": float((ranks == 1).mean()),
        "recall@10": float((ranks <= 10).mean()),
        "ndcg@10": float(ndcg.mean()),
        "mrr": float((1.0 / ranks).mean()),
    }


def evaluate_heldout(
    encoder: Any,
    rows: list[dict[str, Any]],
    *,
    teacher: Any,
    baselines: dict[str, Any] | None = None,
    n_decode: int = 50,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Score the trained encoder (and optional baselines) on held-out (query, response) rows."""
    queries = [r["query"] for r in rows]
    responses = [r["response"].strip() or r["query"] for r in rows]
    response_vecs = teacher.encode(responses, batch_size=64)
    report: dict[str, Any] = {"n_queries": len(rows), "models": {}}
    per_query: dict[str, np.ndarray] = {}

    def score(name: str, model: Any, *, same_space: bool) -> None:
        q = model.encode_query(queries, batch_size=batch_size)
        # A model outside the teacher's space is scored against its own embedding of the
        # responses; L2VG and the teacher share the teacher's space by construction.
        docs = response_vecs if same_space else model.encode_document(responses, batch_size=batch_size)
        entry = retrieval_scores(q, docs)
        if same_space:
            per_query[name] = np.sum(q * response_vecs, axis=1)
            entry["alignment_cosine"] = float(np.mean(per_query[name]))
            entry["alignment_cosine_ci95"] = mean_ci(per_query[name])
        report["models"][name] = entry

    score("l2vg-trained", encoder, same_space=True)
    own = encoder.encode(responses, prompt=encoder.config.document_prompt, batch_size=batch_size)
    report["models"]["l2vg-trained"]["response_text_cosine"] = float(
        np.mean(np.sum(own * response_vecs, axis=1))
    )
    for name, model in (baselines or {}).items():
        score(name, model, same_space=name.startswith(("l2vg", "teacher")))
    if TRIVIAL in per_query:
        report["alignment_vs_trivial"] = alignment_difference(per_query["l2vg-trained"], per_query[TRIVIAL])
    if n_decode:
        report["decoded"], report["decode_teacher_cosine"] = decode_agreement(
            encoder, queries[:n_decode], responses[:n_decode], teacher=teacher
        )
    return report


def alignment_difference(student: np.ndarray, trivial: np.ndarray) -> dict[str, Any]:
    """The student's alignment cosine minus the trivial predictor's, query by query (paired:
    both are scored against the same response), with its 95% interval: whether the student
    beats the teacher's embedding of the query, and by more than the sample could move it."""
    diff = np.asarray(student, dtype=np.float64) - np.asarray(trivial, dtype=np.float64)
    return {
        "mean_difference": float(diff.mean()),
        "ci95": mean_ci(diff),
        "student_better_on": float((diff > 0).mean()),
    }


def curve_evaluator(rows: list[dict[str, Any]], *, teacher: Any, batch_size: int = 64) -> Any:
    """A cheap evaluation for learning curves: held-out alignment cosine and response retrieval.

    The teacher's embeddings of the responses are computed once; each call encodes only
    the held-out queries.
    """
    queries = [r["query"] for r in rows]
    targets = teacher.encode([r["response"].strip() or r["query"] for r in rows], batch_size=batch_size)

    def evaluate(encoder: Any) -> dict[str, float]:
        q = encoder.encode_query(queries, batch_size=batch_size)
        scores = retrieval_scores(q, targets)
        return {
            "alignment_cosine": round(float(np.mean(np.sum(q * targets, axis=1))), 4),
            "recall@1": round(scores["recall@1"], 4),
            "ndcg@10": round(scores["ndcg@10"], 4),
        }

    return evaluate


def decode_agreement(
    encoder: Any, queries: list[str], responses: list[str], *, teacher: Any, max_new_tokens: int = 48
) -> tuple[list[dict[str, str]], float]:
    """Decode the queries' soft prompts; mean teacher cosine between decoded and real responses.

    Says whether the embedding still "means" the answer: 1.0 would be the response itself.
    """
    decoded = encoder.decode(queries, max_new_tokens=max_new_tokens)
    a = teacher.encode([d if d.strip() else "." for d in decoded], batch_size=64)
    b = teacher.encode(responses, batch_size=64)
    rows = [
        {"query": q, "response": r, "decoded": d} for q, r, d in zip(queries, responses, decoded, strict=True)
    ]
    return rows, float(np.mean(np.sum(a * b, axis=1)))


def format_table(report: dict[str, Any]) -> str:
    """A markdown table of the held-out metrics, for the training card."""
    lines = [
        "| model | alignment cos | Recall@1 | Recall@10 | nDCG@10 | MRR |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in report["models"].items():
        cos = m.get("alignment_cosine")
        cos_text = f"{cos:.3f}" if cos is not None and not math.isnan(cos) else "n/a (own space)"
        lines.append(
            f"| {name} | {cos_text} | {m['recall@1']:.3f} | {m['recall@10']:.3f} | "
            f"{m['ndcg@10']:.3f} | {m['mrr']:.3f} |"
        )
    own = report["models"].get("l2vg-trained", {}).get("response_text_cosine")
    if own is not None:
        lines += [
            "",
            f"The trained encoder's own vector of each *response text* (document prompt) has cosine "
            f"{own:.3f} to the teacher's vector of it: the reference for its query-side alignment.",
        ]
    versus = report.get("alignment_vs_trivial")
    if versus is not None and versus["ci95"] is not None:
        low, high = versus["ci95"]
        lines += [
            "",
            f"Alignment against the teacher's embedding of the query itself (the trivial predictor), "
            f"paired over the queries: {versus['mean_difference']:+.3f} (95% interval {low:+.3f} to "
            f"{high:+.3f}); the student is closer on {100 * versus['student_better_on']:.0f}% of them.",
        ]
    return "\n".join(lines)
