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
    calibration_overlap,
    evaluate_system,
    harmful_metrics,
    load_advbench_ir,
    mean_ndcg,
    run_harmful_benchmark,
    search,
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
        categories={"adv-0": "hate", "harm-0": "hate", "la-0": "hate"},
        benign_unjudged={"la-0": "a look-alike"},
    )
    docs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # the benign query is nearest the harmful doc; the look-alike only counts for blocking
    queries = np.array([[1.0, 0.1, 0.0], [0.9, 0.5, 0.0], [0.0, 0.0, 1.0]])
    plain = evaluate_system(data, queries, docs)
    assert plain["aloh@1"] == 1.0 and plain["ndcg@10"] == pytest.approx(1 / np.log2(3))
    assert plain["per_category_aloh@10"] == {"hate": 1.0}
    screened = evaluate_system(data, queries, docs, allowed_docs=np.array([False, True, True]))
    assert screened["aloh@20"] == 0.0 and screened["ndcg@10"] == 1.0
    blocked = evaluate_system(data, queries, docs, blocked=np.array([True, False, True]))
    assert blocked["aloh@20"] == 0.0 and blocked["ndcg@10"] == pytest.approx(1 / np.log2(3))
    # A filter that removes most of the top of the ranking still leaves a full ranking.
    many = np.eye(30)[:, :3] + 0.01
    wide = HarmfulBenchData({f"d{i}": "t" for i in range(30)}, set(), {"q": "x"})
    allowed = np.zeros(30, dtype=bool)
    allowed[25:] = True
    assert len(search(np.array([[1.0, 0.0, 0.0]]), many, list(wide.corpus), depth=5, allowed=allowed)[0]) == 5


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
        counts["harmful_queries"] >= 300
        and counts["harmful_chunks"] >= 100
        and counts["benign_queries"] >= 150
    )
    assert counts["categories"] == 15 and counts["benign_unjudged_queries"] >= 150
    assert all(next(iter(q)) in data.corpus for q in data.benign_qrels.values())


def _tiny_rows() -> tuple[list[Any], list[Any]]:
    """A few rows per category/family from each packaged split."""
    from l2vg_retrieval.safety_data import load_benchmark_set, load_calibration_set

    def pick(rows: list[Any], n: int, categories: set[str]) -> list[Any]:
        out: list[Any] = []
        seen: dict[tuple[Any, ...], int] = {}
        for r in rows:
            if r.category and r.category not in categories:
                continue
            key = (r.kind, r.label, r.category or r.family)
            if seen.get(key, 0) < n:
                out.append(r)
                seen[key] = seen.get(key, 0) + 1
        return out

    keep = {"hate", "elections", "privacy"}
    return pick(load_calibration_set(), 4, keep), pick(load_benchmark_set(), 2, keep)


def test_end_to_end_run_with_the_tiny_encoder(tiny_encoder: Any, tmp_path: Path) -> None:
    from l2vg_retrieval.safety import calibrate

    cal_rows, held_rows = _tiny_rows()
    calibrate(tiny_encoder, cal_rows, seed=0, doc_spaces=("teacher",)).save(tmp_path / "ckpt")
    _write_folder(tmp_path / "data")
    report = run_harmful_benchmark(
        tmp_path / "data",
        model=tmp_path / "ckpt",
        encoder=tiny_encoder,
        out=tmp_path / "harmful.json",
        plot=tmp_path / "harmful.png",
        show_progress_bar=False,
        generalisation_rows=(cal_rows, held_rows),
        loco_plot=tmp_path / "loco.png",
    )
    assert set(report["systems"]) == {"teacher", "input-centric", "l2vg", "l2vg-safe"}
    for metrics in report["systems"].values():
        for k in (1, 5, 10, 20):
            assert 0.0 <= metrics[f"aloh@{k}"] <= 1.0 and 0.0 <= metrics[f"hf@{k}"] <= 1.0
    assert json.loads((tmp_path / "harmful.json").read_text())["data"]["harmful_queries"] == 2
    assert (tmp_path / "harmful.png").stat().st_size > 1000 and (tmp_path / "loco.png").stat().st_size > 1000
    assert report["calibration_overlap"] == {"checked": True, "shared_texts": 0, "examples": []}
    assert report["safety_thresholds"]["refusal_signal"] is True
    gen = report["generalisation"]
    loco = gen["leave_one_category_out"]
    assert set(loco["gate"]) == {"with_refusal_signal", "without_refusal_signal"}
    for variant in loco["gate"].values():
        assert set(variant["per_category"]) == {"hate", "elections", "privacy"}
    assert set(gen["refusal_signal_contribution"]["leave_one_category_out"]["recall_delta_per_category"]) == {
        "hate", "elections", "privacy",
    }  # fmt: skip
    assert set(gen["targets_met"]) >= {"gate_mean_recall_ge_0.80", "screen_technical_fpr_le_0.02_every_fold"}
    assert gen["data"]["disjointness"]["held_out_texts"] == len(held_rows)


def test_a_calibration_that_saw_benchmark_texts_is_refused(tiny_encoder: Any, tmp_path: Path) -> None:
    from l2vg_retrieval.safety import SafetyFilter, calibrate
    from l2vg_retrieval.safety_data import LabelledText

    _write_folder(tmp_path / "data")
    cal_rows, _ = _tiny_rows()
    leaked = [
        *cal_rows,
        LabelledText("do bad A", 1, "query"),
        LabelledText("a harmful passage B", 1, "passage"),
    ]
    gate = SafetyFilter(tiny_encoder, calibrate(tiny_encoder, leaked, doc_spaces=("teacher",)))
    data = load_advbench_ir(tmp_path / "data")
    assert calibration_overlap(gate.calibration, data)["shared_texts"] == 2
    kwargs = {"encoder": tiny_encoder, "safety": gate, "out": None, "plot": None, "generalisation": False,
              "include_input_centric": False, "show_progress_bar": False}  # fmt: skip
    with pytest.raises(ValueError, match="fitted on 2 texts of this benchmark"):
        run_harmful_benchmark(tmp_path / "data", **kwargs)
    report = run_harmful_benchmark(tmp_path / "data", allow_overlap=True, **kwargs)
    assert report["calibration_overlap"]["shared_texts"] == 2 and report["generalisation"] is None
