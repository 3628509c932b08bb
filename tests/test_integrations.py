"""The integrations/ scripts, run end to end with the real frameworks and the tiny encoder."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import build_tiny_encoder

from l2vg_retrieval.sources import sample_passages

INTEGRATIONS = Path(__file__).resolve().parents[1] / "integrations"
TOPICS = {p["id"]: p["metadata"]["topic"] for p in sample_passages()}


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"integration_{name}", INTEGRATIONS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def encoder() -> Any:
    return build_tiny_encoder()


def test_langchain_qdrant(encoder: Any) -> None:
    out = load("langchain_example").main(encoder, verbose=False)
    assert len(out["plain"]) == 3
    scores = [s for _, s in out["plain"]]
    assert scores == sorted(scores, reverse=True)
    assert out["filtered"] and all(d.metadata["topic"] == "gardening" for d in out["filtered"])
    assert len(out["retrieved"]) == 2 and all(d.page_content for d in out["retrieved"])


def test_llama_index_qdrant(encoder: Any) -> None:
    out = load("llama_index_example").main(encoder, verbose=False)
    assert len(out["nodes"]) == 3 and all(n.node.get_content() for n in out["nodes"])
    assert out["filtered"] and all(n.metadata["topic"] == "programming" for n in out["filtered"])


def test_mteb_evaluate(encoder: Any) -> None:
    from l2vg_retrieval.bench.metrics import evaluate_run
    from l2vg_retrieval.sources import sample_queries

    out = load("mteb_example").main(encoder, verbose=False)
    assert out["task"] == "L2VGSampleCorpusRetrieval" and out["main_score"] == out["ndcg_at_10"]
    # The example reports the encoder's own ranking quality, computed here directly.
    passages, queries = sample_passages(), sample_queries()
    sims = (
        encoder.encode_query([q["text"] for q in queries])
        @ encoder.encode_document([p["text"] for p in passages]).T
    )
    run = {
        q["id"]: {p["id"]: float(x) for p, x in zip(passages, row, strict=True)}
        for q, row in zip(queries, sims, strict=True)
    }
    qrels = {q["id"]: dict.fromkeys(q["relevant"], 1) for q in queries}
    expected = evaluate_run(run, qrels, k_values=(5, 10))
    assert out["ndcg_at_10"] == pytest.approx(expected["ndcg@10"], abs=1e-4)
    assert out["recall_at_5"] == pytest.approx(expected["recall@5"], abs=1e-4)


@pytest.mark.slow
def test_mteb_default_encoder_beats_chance() -> None:
    """The default encoder on the sample task: must clearly beat the tiny random encoder's level."""
    out = load("mteb_example").main(verbose=False)
    assert out["ndcg_at_10"] > 0.5


def test_server_path_is_documented() -> None:
    readme = (INTEGRATIONS / "README.md").read_text()
    compose = (INTEGRATIONS / "qdrant-server" / "docker-compose.yml").read_text()
    assert "url=" in readme and "qdrant/qdrant:" in compose and "6333" in compose


def test_demo_indexes_the_sample_corpus_and_answers(encoder: Any, tmp_path: Path) -> None:
    from l2vg_retrieval.demo import run_demo

    first = run_demo(encoder=encoder, path=tmp_path, n_queries=2, k=3, decode=False)
    assert first["indexed"] == len(TOPICS) and len(first["answers"]) == 2
    assert all(len(a["hits"]) == 3 and set(a["hits"]) <= set(TOPICS) for a in first["answers"])
    second = run_demo(encoder=encoder, path=tmp_path, n_queries=1, decode=False)
    assert second["indexed"] == 0  # resumed: everything was already there
    # Another encoder: the demo rebuilds its own collection instead of failing.
    rebuilt = run_demo(encoder=build_tiny_encoder(seed=1), path=tmp_path, n_queries=1, decode=False)
    assert rebuilt["indexed"] == len(TOPICS)
