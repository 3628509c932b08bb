"""The harmful-retrieval benchmark: metrics on a hand-made case, the AdvBench-IR reader,
and one end-to-end run of the lineup with the tiny encoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from l2vg_retrieval.bench.harmful import (
    HarmfulBenchData,
    evaluate_system,
    harmful_metrics,
    load_advbench_ir,
    mean_ndcg,
    run_harmful_benchmark,
)


def test_metrics_on_a_hand_made_three_query_case() -> None:
    harmful = {"h1", "h2"}
    rankings = {
        "q1": ["h1", "b1", "b2", "b3"],  # harmful at rank 1
        "q2": ["b1", "b2", "b3", "b4", "h2", "h1"],  # harmful at ranks 5 and 6
        "q3": [],  # blocked by the gate: nothing returned
    }
    m = harmful_metrics(rankings, harmful)
    assert m["aloh@1"] == pytest.approx(1 / 3)
    assert m["hf@1"] == pytest.approx(1 / 3)
    assert m["aloh@5"] == pytest.approx(2 / 3)
    assert m["hf@5"] == pytest.approx((1 / 5 + 1 / 5 + 0) / 3)
    assert m["aloh@10"] == pytest.approx(2 / 3)
    assert m["hf@10"] == pytest.approx((1 / 10 + 2 / 10 + 0) / 3)
    assert m["hf@20"] == pytest.approx((1 / 20 + 2 / 20) / 3)
    with pytest.raises(ValueError):
        harmful_metrics({}, harmful)
    with pytest.raises(ValueError):
        harmful_metrics(rankings, harmful, k_values=(0,))
    # nDCG@10: relevant at rank 2 -> 1/log2(3); at rank 1 -> 1; blocked -> 0.
    qrels = {"a": {"d1": 1}, "b": {"d2": 1}, "c": {"d3": 1}}
    ranks = {"a": ["x", "d1"], "b": ["d2"], "c": []}
    assert mean_ndcg(ranks, qrels) == pytest.approx((1 / np.log2(3) + 1 + 0) / 3)


def test_evaluate_system_applies_blocking_and_document_filter() -> None:
    data = HarmfulBenchData(
        corpus={"harm-0": "bad", "nq-0": "good", "nq-1": "other"},
        harmful_ids={"harm-0"},
        harmful_queries={"adv-0": "bad query"},
        benign_queries={"bq-0": "good query"},
        benign_qrels={"bq-0": {"nq-0": 1}},
    )
    docs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    queries = np.array([[1.0, 0.1, 0.0], [0.9, 0.5, 0.0]])  # the benign query is nearest the harmful doc
    plain = evaluate_system(data, queries, docs)
    assert plain["aloh@1"] == 1.0 and plain["ndcg@10"] == pytest.approx(1 / np.log2(3))
    screened = evaluate_system(data, queries, docs, allowed_docs=np.array([False, True, True]))
    assert screened["aloh@20"] == 0.0 and screened["ndcg@10"] == 1.0
    blocked = evaluate_system(data, queries, docs, blocked=np.array([True, False]))
    assert blocked["aloh@20"] == 0.0 and blocked["ndcg@10"] == pytest.approx(1 / np.log2(3))


def _write_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)

    def chunk(n: int, title: str, text: str, query: str, qid: int) -> dict[str, Any]:
        return {"id_": n, "title": title, "response": [text], "original_data_instruction": query,
                "original_data_id_": qid}  # fmt: skip

    chunks = [
        chunk(0, "Guide A", "step one of a bad thing", "do bad A", 0),
        chunk(1, "Guide A", "step two of a bad thing", "do bad A", 0),
        chunk(2, "", "a harmful passage B", "do bad B", 1),
    ]
    (folder / "advbench-ir_chunked.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chunks))
    (folder / "benign_corpus.tsv").write_text(
        "id\ttext\ttitle\n1\tParis is the capital of France.\tParis\n2\tBread needs flour and yeast.\tBread\n"
    )
    (folder / "benign_queries.jsonl").write_text(
        json.dumps({"id": "b0", "text": "capital of France", "relevant": {"1": 1}}) + "\n"
    )


def test_reader_reads_the_advbench_ir_layout(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    data = load_advbench_ir(tmp_path)
    assert data.harmful_queries == {"adv-0": "do bad A", "adv-1": "do bad B"}
    assert data.harmful_ids == {"harm-0", "harm-1", "harm-2"}
    assert data.corpus["harm-0"] == "Guide A\nstep one of a bad thing"
    assert data.corpus["1"] == "Paris is the capital of France."
    assert data.benign_qrels == {"b0": {"1": 1}}
    assert data.queries_with_passages == {"adv-0", "adv-1"}
    # Extra harmful queries without passages replace the list to evaluate.
    (tmp_path / "harmful_queries.jsonl").write_text(
        json.dumps({"id": "x", "text": "do bad A"})
        + "\n"
        + json.dumps({"id": "y", "text": "other bad"})
        + "\n"
    )
    data = load_advbench_ir(tmp_path)
    assert data.harmful_queries == {"adv-0": "do bad A", "y": "other bad"}
    assert data.queries_with_passages == {"adv-0"}
    # Broken folders fail with a message naming the problem.
    (tmp_path / "benign_queries.jsonl").write_text(
        json.dumps({"id": "b", "text": "q", "relevant": {"zz": 1}}) + "\n"
    )
    with pytest.raises(ValueError, match="not in the corpus"):
        load_advbench_ir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"advbench-ir_chunked\.jsonl"):
        load_advbench_ir(tmp_path / "missing")


def test_offline_set_loads() -> None:
    from l2vg_retrieval.bench.harmful import offline_folder

    data = load_advbench_ir(offline_folder())
    counts = data.counts()
    assert (
        counts["harmful_queries"] >= 100 and counts["harmful_chunks"] > 40 and counts["benign_queries"] >= 50
    )
    assert all(next(iter(q)) in data.corpus for q in data.benign_qrels.values())


def test_end_to_end_run_with_the_tiny_encoder(tiny_encoder: Any, tmp_path: Path) -> None:
    from l2vg_retrieval.safety import calibrate
    from l2vg_retrieval.safety_data import load_calibration_set

    rows = load_calibration_set()
    small = []
    for kind in ("query", "passage"):
        for label in (0, 1):
            small += [r for r in rows if r.kind == kind and r.label == label][:10]
    calibrate(tiny_encoder, small, seed=0, doc_spaces=("teacher",)).save(tmp_path / "ckpt")
    _write_folder(tmp_path / "data")
    report = run_harmful_benchmark(
        tmp_path / "data",
        model=tmp_path / "ckpt",
        encoder=tiny_encoder,
        out=tmp_path / "harmful.json",
        plot=tmp_path / "harmful.png",
        show_progress_bar=False,
    )
    assert set(report["systems"]) == {"teacher", "input-centric", "l2vg", "l2vg-safe"}
    for metrics in report["systems"].values():
        for k in (1, 5, 10, 20):
            assert 0.0 <= metrics[f"aloh@{k}"] <= 1.0 and 0.0 <= metrics[f"hf@{k}"] <= 1.0
    assert json.loads((tmp_path / "harmful.json").read_text())["data"]["harmful_queries"] == 2
    assert (tmp_path / "harmful.png").stat().st_size > 1000
