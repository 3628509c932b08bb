"""Ranking metrics on hand-made cases whose right value is worked out by hand."""

from __future__ import annotations

import math

import pytest

from l2vg_retrieval.bench.metrics import evaluate_run, mrr_at_k, ndcg_at_k, rank, recall_at_k


def test_rank_orders_by_score_then_id_descending_and_drops_excluded() -> None:
    scores = {"a": 0.5, "b": 0.9, "c": 0.5, "d": 0.1}
    assert rank(scores) == ["b", "c", "a", "d"]
    assert rank(scores, excluded=["b", "N/A"]) == ["c", "a", "d"]


def test_rank_refuses_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        rank({"a": float("nan")})


def test_ndcg_single_relevant_at_rank_three() -> None:
    # One relevant doc at rank 3: DCG = 1/log2(4) = 0.5, ideal = 1.
    assert ndcg_at_k(["x", "y", "g", "z"], {"g": 1}, 10) == pytest.approx(0.5)
    assert ndcg_at_k(["x", "y", "g", "z"], {"g": 1}, 2) == 0.0


def test_ndcg_graded_two_relevant() -> None:
    # grades g1=2, g2=1; ranking g2, x, g1: DCG = 1/log2(2) + 2/log2(4) = 1 + 1 = 2
    # ideal: 2/log2(2) + 1/log2(3) = 2 + 0.6309...
    expected = 2.0 / (2.0 + 1.0 / math.log2(3))
    assert ndcg_at_k(["g2", "x", "g1"], {"g1": 2, "g2": 1, "n": 0}, 10) == pytest.approx(expected)


def test_ndcg_ideal_is_capped_at_k() -> None:
    # Three relevant, k=2, the top two both relevant: perfect at this cut.
    assert ndcg_at_k(["a", "b", "x", "c"], {"a": 1, "b": 1, "c": 1}, 2) == pytest.approx(1.0)


def test_recall_and_mrr() -> None:
    ranking = ["x", "a", "y", "b", "z"]
    qrels = {"a": 1, "b": 1, "c": 1}
    assert recall_at_k(ranking, qrels, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranking, qrels, 10) == pytest.approx(2 / 3)
    assert mrr_at_k(ranking, qrels) == pytest.approx(0.5)
    assert mrr_at_k(ranking, qrels, 1) == 0.0
    assert mrr_at_k(["x"], {"a": 1}) == 0.0


def test_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k(["a"], {"a": 1}, 0)


def test_evaluate_run_excluded_id_moves_gold_up() -> None:
    # Like BRIGHT: the query's own source document "dup" outranks the gold one; once it is
    # excluded the gold doc is first and every metric is perfect.
    run = {"q1": {"dup": 0.99, "gold": 0.8, "other": 0.1}}
    qrels = {"q1": {"gold": 1}}
    before = evaluate_run(run, qrels, k_values=(1, 10))
    after = evaluate_run(run, qrels, excluded={"q1": ["dup"]}, k_values=(1, 10))
    assert before["ndcg@1"] == 0.0
    assert before["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert before["mrr"] == pytest.approx(0.5)
    assert after["ndcg@1"] == after["ndcg@10"] == after["mrr"] == 1.0


def test_evaluate_run_means_over_queries_and_counts_missing_as_zero() -> None:
    run = {"q1": {"a": 1.0, "b": 0.0}}  # q2 was never retrieved
    qrels = {"q1": {"a": 1}, "q2": {"c": 1}}
    out = evaluate_run(run, qrels, k_values=(10,))
    assert out["n_queries"] == 2
    assert out["ndcg@10"] == pytest.approx(0.5)
    assert out["recall@10"] == pytest.approx(0.5)


def test_evaluate_run_rejects_inconsistent_inputs() -> None:
    with pytest.raises(ValueError, match="no relevant"):
        evaluate_run({"q": {"a": 1.0}}, {"q": {"a": 0}})
    with pytest.raises(ValueError, match="excludes its own gold"):
        evaluate_run({"q": {"a": 1.0}}, {"q": {"a": 1}}, excluded={"q": ["a"]})
    with pytest.raises(ValueError, match="empty"):
        evaluate_run({}, {})
