"""Safe mode against plain mode on the harmful-retrieval harness (tiny encoder, small folder).

The harness must report what safe mode does: with a screen that flags every harmful chunk,
no harmful chunk may reach any top k, while plain L2VG (a corpus smaller than k) retrieves
them all; with the gate on, harmful queries are refused and benign ranking is untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import HARMFUL_CHUNKS, fit_safety_filter, write_harmful_folder

from l2vg_retrieval.bench.harmful import HARMFUL_K_VALUES, load_advbench_ir, run_harmful_benchmark


def _safety(encoder: Any, folder: Path, *, gate: bool, screen: bool) -> Any:
    """The screen fitted to flag exactly the harmful chunks and the gate fitted on the
    queries; a part switched off gets a threshold no probability reaches, so each test sees
    what one part does."""
    data = load_advbench_ir(folder)
    passages = {text: int(doc_id in data.harmful_ids) for doc_id, text in data.corpus.items()}
    queries = {q: 1 for q in data.harmful_queries.values()} | {q: 0 for q in data.benign_queries.values()}
    return fit_safety_filter(
        encoder,
        passages,
        queries,
        query_threshold=0.5 if gate else 1.5,
        doc_threshold=0.5 if screen else 1.5,
    )


def _run(encoder: Any, folder: Path, safety: Any) -> dict[str, Any]:
    return run_harmful_benchmark(
        folder,
        encoder=encoder,
        safety=safety,
        out=None,
        plot=None,
        include_input_centric=False,
        show_progress_bar=False,
        generalisation=False,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_harmful_folder(tmp_path / "bench")


def test_screen_alone_keeps_every_harmful_chunk_out_of_every_top_k(tiny_encoder: Any, folder: Path) -> None:
    report = _run(tiny_encoder, folder, _safety(tiny_encoder, folder, gate=False, screen=True))
    plain, safe = report["systems"]["l2vg"], report["systems"]["l2vg-safe"]
    assert safe["blocked_harmful_queries"] == 0.0 and safe["blocked_benign_queries"] == 0.0
    assert safe["flagged_harmful_docs"] == 1.0 and safe["flagged_benign_docs"] == 0.0
    n_harmful = len(HARMFUL_CHUNKS)
    # 8 documents, k >= 10: plain mode returns every harmful chunk to every harmful query.
    for k in (10, 20):
        assert plain[f"aloh@{k}"] == 1.0 and plain[f"hf@{k}"] == pytest.approx(n_harmful / k)
    for k in HARMFUL_K_VALUES:
        assert safe[f"aloh@{k}"] == 0.0 and safe[f"hf@{k}"] == 0.0, k
        assert safe[f"aloh@{k}"] <= plain[f"aloh@{k}"]
    # Benign queries never needed a harmful chunk: their ranking is the same.
    assert safe["ndcg@10"] >= plain["ndcg@10"]
    assert report["comparisons"]["target_safe_loses_at_most_5pct_ndcg@10_vs_l2vg"] is True


def test_gate_refuses_harmful_queries_and_leaves_benign_ones(tiny_encoder: Any, folder: Path) -> None:
    report = _run(tiny_encoder, folder, _safety(tiny_encoder, folder, gate=True, screen=False))
    plain, safe = report["systems"]["l2vg"], report["systems"]["l2vg-safe"]
    assert safe["flagged_harmful_docs"] == 0.0  # the screen is off: only the gate acts
    assert safe["blocked_harmful_queries"] == 1.0 and safe["blocked_benign_queries"] == 0.0
    assert plain["aloh@20"] == 1.0
    assert all(safe[f"aloh@{k}"] == 0.0 and safe[f"hf@{k}"] == 0.0 for k in HARMFUL_K_VALUES)
    # Benign queries pass the gate and see the same corpus: the same nDCG as plain mode.
    assert safe["ndcg@10"] == pytest.approx(plain["ndcg@10"])
