"""BRIGHT-format loading and scoring, on hand-made folders with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from l2vg_retrieval.bench.bright import (
    K_VALUES,
    BrightFormatError,
    instruction_for,
    load_local,
    load_source,
    run_bright,
    run_domain,
)
from l2vg_retrieval.bench.lineup import BM25Retriever, bm25_tokenize, build_retrievers
from l2vg_retrieval.bench.metrics import evaluate_run
from l2vg_retrieval.encoder import L2VGEncoder


def _write(folder: Path, domain: str, examples: list[dict], documents: list[dict]) -> None:
    for kind, rows in (("examples", examples), ("documents", documents)):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        (folder / kind / f"{domain}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


DOCS = [{"id": f"d{i}", "content": f"document number {i}"} for i in range(5)]
EXAMPLES = [
    {"id": "q0", "query": "first", "gold_ids": ["d1"], "excluded_ids": ["d0"]},
    {"id": "q1", "query": "second", "gold_ids": ["d3", "d4"], "excluded_ids": ["N/A"]},
]


class TableRetriever:
    """Scores from a fixed table: the right metric values are worked out by hand."""

    key = "table"

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def score(
        self, queries: list[str], documents: list[str], *, instruction: str | None = None
    ) -> np.ndarray:
        return np.array([self.table[q] for q in queries])


def test_scores_like_bright_with_exclusion(tmp_path: Path) -> None:
    _write(tmp_path, "toy", EXAMPLES, DOCS)
    (domain,) = load_local(tmp_path)
    retriever = TableRetriever(
        {
            # q0: the excluded d0 scores highest; once dropped the gold d1 is first.
            "first": [0.9, 0.8, 0.1, 0.0, 0.0],
            # q1: golds d3 and d4 at ranks 2 and 4 → DCG = 1/log2(3) + 1/log2(5).
            "second": [0.0, 0.9, 0.1, 0.8, 0.05],
        }
    )
    out = run_domain(domain, retriever, instruction=None)
    ideal = 1 + 1 / np.log2(3)
    ndcg_q1 = (1 / np.log2(3) + 1 / np.log2(5)) / ideal
    assert out["ndcg@10"] == pytest.approx((1.0 + ndcg_q1) / 2)
    assert out["mrr"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["recall@1"] == pytest.approx((1.0 + 0.0) / 2)


def test_top_k_cut_happens_after_exclusion(tmp_path: Path) -> None:
    _write(tmp_path, "toy", EXAMPLES[:1], DOCS)
    (domain,) = load_local(tmp_path)
    out = run_domain(domain, TableRetriever({"first": [0.9, 0.8, 0.1, 0.0, 0.0]}), instruction=None, top_k=1)
    assert out["ndcg@1"] == 1.0  # the one kept slot goes to d1, not the excluded d0


def test_format_errors_are_clear(tmp_path: Path) -> None:
    _write(tmp_path / "a", "toy", [{**EXAMPLES[0], "gold_ids": ["missing"]}], DOCS)
    with pytest.raises(BrightFormatError, match="not in the corpus"):
        load_local(tmp_path / "a")
    _write(tmp_path / "b", "toy", [{"id": "q", "query": "x", "excluded_ids": []}], DOCS)
    with pytest.raises(BrightFormatError, match="lacks 'gold_ids'"):
        load_local(tmp_path / "b")
    _write(tmp_path / "c", "toy", [{**EXAMPLES[0], "excluded_ids": ["d1"]}], DOCS)
    with pytest.raises(BrightFormatError, match="excludes its gold"):
        load_local(tmp_path / "c")
    with pytest.raises(BrightFormatError, match="no 'examples'"):
        load_local(tmp_path / "nowhere")
    with pytest.raises(BrightFormatError, match="domain 'other'"):
        load_local(tmp_path / "a", ["other"])
    with pytest.raises(BrightFormatError, match="not 'offline'"):
        load_source(str(tmp_path / "nowhere"))


def test_reads_hub_snapshot_parquet(tmp_path: Path) -> None:
    import pyarrow as pa  # comes with mteb (the bench extra)
    import pyarrow.parquet as pq

    for kind, rows in (("examples", EXAMPLES), ("documents", DOCS)):
        (tmp_path / kind).mkdir()
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / kind / "toy-00000-of-00001.parquet")
    (domain,) = load_local(tmp_path)
    assert domain.name == "toy" and domain.examples[1]["gold_ids"] == ["d3", "d4"]


def test_offline_set_is_valid_and_not_solved_by_word_overlap() -> None:
    domains = load_source("offline")
    assert [d.name for d in domains] == ["biology", "economics", "physics", "programming"]
    assert sum(len(d.examples) for d in domains) == 64
    result = run_bright(domains, {"bm25": BM25Retriever()})
    ndcg = result["mean"]["bm25"]["ndcg@10"]
    # Above a random ranking (~0.07 with 65 documents), far from solved.
    assert 0.1 < ndcg < 0.35


def test_offline_set_oracle_is_perfect() -> None:
    # A retriever that knows the gold ids must score 1.0: the harness loses nothing.
    domains = load_source("offline")
    gold = {e["query"]: e["gold_ids"][0] for d in domains for e in d.examples}
    ids = [doc["id"] for doc in domains[0].documents]

    class Oracle:
        key = "oracle"

        def score(
            self, queries: list[str], documents: list[str], *, instruction: str | None = None
        ) -> np.ndarray:
            return np.array([[float(i == gold[q]) for i in ids] for q in queries])

    assert run_bright(domains, {"oracle": Oracle()})["mean"]["oracle"]["ndcg@10"] == 1.0


def test_bm25_tokenizer() -> None:
    assert bm25_tokenize("The Posts, and the CLASS of 2024!") == ["post", "class", "2024"]


def test_lineup_end_to_end_on_tiny_encoder(tiny_encoder: L2VGEncoder) -> None:
    domains = load_source("offline", ["physics", "economics"])
    retrievers = build_retrievers(
        tiny_encoder,
        ["bm25", "teacher", "input-centric", "generate-then-encode", "l2vg-gen-docs", "l2vg-teacher-docs"],
        gte_max_new_tokens=3,
    )
    result = run_bright(domains, retrievers, max_queries=3, subset_queries=1)
    assert set(result["mean"]) == set(retrievers) - {"generate-then-encode"}
    assert set(result["subset_mean"]) == set(retrievers)
    # Each dense model's reported metrics are exactly BRIGHT's metrics on its own cosine
    # scores, computed here from the encoders directly (same batches, so same floats).
    teacher = tiny_encoder.teacher

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    for domain in domains:
        examples = domain.examples[:3]
        queries, docs = [e["query"] for e in examples], [d["content"] for d in domain.documents]
        l2vg_q = tiny_encoder.encode_query(queries, instruction=instruction_for(domain.name), batch_size=16)
        sides = {
            "teacher": (teacher.encode(queries, batch_size=16), teacher.encode(docs, batch_size=16)),
            "l2vg-teacher-docs": (l2vg_q, teacher.encode(docs, batch_size=16)),
            "l2vg-gen-docs": (l2vg_q, tiny_encoder.encode_document(docs, batch_size=16)),
        }
        doc_ids = [d["id"] for d in domain.documents]
        qrels = {e["id"]: {g: 1 for g in e["gold_ids"]} for e in examples}
        excluded = {e["id"]: e["excluded_ids"] for e in examples}
        for key, (q, d) in sides.items():
            scores = unit(q) @ unit(d).T
            run = {
                e["id"]: dict(zip(doc_ids, map(float, row), strict=True))
                for e, row in zip(examples, scores, strict=True)
            }
            expected = evaluate_run(run, qrels, excluded, k_values=K_VALUES)
            assert result["domains"][domain.name][key] == pytest.approx(expected), (domain.name, key)
    for key, row in result["mean"].items():
        per_domain = [result["domains"][d.name][key]["ndcg@10"] for d in domains]
        assert row["ndcg@10"] == pytest.approx(np.mean(per_domain))
    # The two L2VG variants share the query side; only documents differ.
    gen, tea = retrievers["l2vg-gen-docs"], retrievers["l2vg-teacher-docs"]
    assert gen.query_cache is tea.query_cache
    doc = domains[0].documents[0]["content"]
    assert not np.allclose(gen.embed_documents([doc]), tea.embed_documents([doc]))
    np.testing.assert_allclose(
        tea.embed_documents([doc])[0], tiny_encoder.teacher.encode(doc), rtol=1e-5, atol=1e-6
    )
