"""`--dims`: L2VG scored on its first m dimensions from the vectors it already computed.

Prefix retrievers read their base's caches, so these tests count encoder calls, compare
scores with prefixes cut by hand, and run `l2vg bench bright --dims` on the tiny checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from l2vg_retrieval.bench.lineup import (
    DenseRetriever,
    DimsError,
    PrefixRetriever,
    build_retrievers,
    dims_summary,
    model_label,
    ordered_keys,
    parse_dims,
    split_prefix_key,
)
from l2vg_retrieval.bench.report import write_report
from l2vg_retrieval.cli import EXIT_USAGE, app
from l2vg_retrieval.encoder import L2VGEncoder
from l2vg_retrieval.matryoshka import truncate

QUERIES = ["what is the capital of France?", "how do I bake bread at home?", "why is the sky blue?"]
DOCS = [
    "Paris is the capital of France.",
    "Bread needs flour, water, yeast and salt.",
    "Jupiter is the largest planet in the solar system.",
    "Rayleigh scattering makes the sky look blue.",
]
INSTRUCTION = "Given a question, retrieve passages that answer the question:"


class CountingEncoder:
    """The tiny encoder, counting every text it is asked to embed."""

    def __init__(self, inner: L2VGEncoder) -> None:
        self.inner = inner
        self.query_texts = 0
        self.document_texts = 0

    @property
    def dim(self) -> int:
        return self.inner.dim

    def encode_query(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        self.query_texts += len(texts)
        return self.inner.encode_query(list(texts), **kwargs)

    def encode_document(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        self.document_texts += len(texts)
        return self.inner.encode_document(list(texts), **kwargs)


def _hand_prefix(x: np.ndarray, m: int) -> np.ndarray:
    """The documented semantics: the first m dimensions of the raw vector, then unit length."""
    cut = truncate(torch.from_numpy(np.asarray(x, dtype=np.float32)), m)
    return torch.nn.functional.normalize(cut, dim=-1).numpy()


# ---------------------------------------------------------------- the prefix retriever
def test_prefix_at_full_size_scores_like_its_base(tiny_encoder: L2VGEncoder) -> None:
    full = tiny_encoder.dim
    retrievers = build_retrievers(tiny_encoder, ["l2vg-gen-docs"], dims=[full])
    base, prefix = retrievers["l2vg-gen-docs"], retrievers[f"l2vg-gen-docs@{full}"]
    assert isinstance(prefix, PrefixRetriever) and prefix.base is base
    np.testing.assert_allclose(
        prefix.score(QUERIES, DOCS, instruction=INSTRUCTION),
        base.score(QUERIES, DOCS, instruction=INSTRUCTION),
        rtol=1e-6,
        atol=1e-6,
    )


def test_prefix_scores_are_cosines_of_renormalised_prefixes(tiny_encoder: L2VGEncoder) -> None:
    retrievers = build_retrievers(tiny_encoder, ["l2vg-gen-docs", "l2vg-teacher-docs"], dims=[8, 3])
    # Each base is followed by its prefixes, largest first: the base fills the caches.
    assert list(retrievers) == [
        "l2vg-gen-docs",
        "l2vg-gen-docs@8",
        "l2vg-gen-docs@3",
        "l2vg-teacher-docs",
        "l2vg-teacher-docs@8",
        "l2vg-teacher-docs@3",
    ]
    for name in ("l2vg-gen-docs", "l2vg-teacher-docs"):
        base = retrievers[name]
        assert isinstance(base, DenseRetriever)
        q = base.embed_queries(QUERIES, INSTRUCTION)
        d = base.embed_documents(DOCS)
        full_scores = base.score(QUERIES, DOCS, instruction=INSTRUCTION)
        for m in (8, 3):
            expected = _hand_prefix(q, m) @ _hand_prefix(d, m).T
            got = retrievers[f"{name}@{m}"].score(QUERIES, DOCS, instruction=INSTRUCTION)
            assert got.shape == (len(QUERIES), len(DOCS))
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
            # A random tiny model's first 3 of 32 dimensions rank differently: the cut is real.
            if m == 3:
                assert not np.allclose(got, full_scores, atol=1e-3)
            # The vectors a prefix hands out (mteb reads these) are unit length and m wide.
            vectors = retrievers[f"{name}@{m}"].embed_documents(DOCS)
            assert vectors.shape == (len(DOCS), m)
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_prefix_never_encodes_when_its_base_has(tiny_encoder: L2VGEncoder) -> None:
    counting = CountingEncoder(tiny_encoder)
    base = DenseRetriever("l2vg-gen-docs", counting)
    prefixes = [PrefixRetriever(f"l2vg-gen-docs@{m}", base, m) for m in (16, 4)]
    base.score(QUERIES, DOCS, instruction=INSTRUCTION)
    assert (counting.query_texts, counting.document_texts) == (len(QUERIES), len(DOCS))
    for prefix in prefixes:
        prefix.score(QUERIES, DOCS, instruction=INSTRUCTION)
    assert (counting.query_texts, counting.document_texts) == (len(QUERIES), len(DOCS))
    assert len(base.query_cache) == len(QUERIES) and len(base.document_cache) == len(DOCS)


def test_prefix_first_fills_its_bases_caches(tiny_encoder: L2VGEncoder) -> None:
    """Run out of order, a prefix encodes once through its base; the base then only reads."""
    counting = CountingEncoder(tiny_encoder)
    base = DenseRetriever("l2vg-gen-docs", counting)
    prefix = PrefixRetriever("l2vg-gen-docs@4", base, 4)
    first = prefix.score(QUERIES, DOCS, instruction=INSTRUCTION)
    assert (counting.query_texts, counting.document_texts) == (len(QUERIES), len(DOCS))
    base.score(QUERIES, DOCS, instruction=INSTRUCTION)
    again = prefix.score(QUERIES, DOCS, instruction=INSTRUCTION)
    assert (counting.query_texts, counting.document_texts) == (len(QUERIES), len(DOCS))
    np.testing.assert_array_equal(first, again)


# ---------------------------------------------------------------- bad sizes
@pytest.mark.parametrize("spec", ["0", "-4", "x", "8.5", "1e2", "+8", "", " , ", "8,,0"])
def test_parse_dims_rejects_bad_sizes(spec: str) -> None:
    with pytest.raises(DimsError, match="--dims"):
        parse_dims(spec)


def test_parse_dims_reads_distinct_sizes_largest_first() -> None:
    assert parse_dims("64, 8,256,64") == [256, 64, 8]
    assert parse_dims([3, 12]) == [12, 3]
    assert parse_dims(None) == []
    with pytest.raises(DimsError):
        parse_dims([True])


def test_sizes_are_checked_against_the_encoder(tiny_encoder: L2VGEncoder) -> None:
    full = tiny_encoder.dim
    with pytest.raises(DimsError, match=f"1..{full}"):
        build_retrievers(tiny_encoder, ["l2vg-gen-docs"], dims=[4, full + 1])
    with pytest.raises(DimsError, match="neither is in the chosen models"):
        build_retrievers(tiny_encoder, ["teacher"], dims=[4])
    base = DenseRetriever("l2vg-gen-docs", tiny_encoder)
    with pytest.raises(DimsError):
        PrefixRetriever("l2vg-gen-docs@0", base, 0)


# ---------------------------------------------------------------- labels, order, sizes
def test_labels_and_table_order() -> None:
    assert model_label("l2vg-gen-docs@128") == "L2VG, documents generative, first 128 dims"
    assert model_label("l2vg-teacher-docs") == "L2VG, documents by teacher"
    assert model_label("mystery") == "mystery" and model_label("mystery@7") == "mystery, first 7 dims"
    assert split_prefix_key("l2vg-gen-docs@64") == ("l2vg-gen-docs", 64)
    assert split_prefix_key("a@b") == ("a@b", None)
    keys = ["zz", "l2vg-gen-docs@64", "l2vg-gen-docs", "bm25", "l2vg-gen-docs@256", "teacher"]
    assert ordered_keys(keys) == [
        "bm25",
        "teacher",
        "l2vg-gen-docs",
        "l2vg-gen-docs@256",
        "l2vg-gen-docs@64",
        "zz",
    ]


def test_dims_summary_records_bytes_per_document(tiny_encoder: L2VGEncoder) -> None:
    retrievers = build_retrievers(tiny_encoder, ["teacher", "l2vg-gen-docs"], dims=[16, 4])
    summary = dims_summary(retrievers, [16, 4], n_documents=10)
    assert summary is not None and summary["dims"] == [16, 4]
    full = tiny_encoder.dim
    assert summary["vector_bytes_per_document"] == {
        "l2vg-gen-docs": 4 * full,
        "l2vg-gen-docs@16": 64,
        "l2vg-gen-docs@4": 16,
    }
    assert summary["collection_bytes"]["l2vg-gen-docs@4"] == 160
    assert dims_summary(retrievers, []) is None


# ---------------------------------------------------------------- mteb and the CLI
def test_mteb_suite_scores_prefix_keys(tiny_encoder: L2VGEncoder) -> None:
    from l2vg_retrieval.bench.mteb_suite import CachedEncoderView, run_suite

    retrievers = build_retrievers(tiny_encoder, ["l2vg-gen-docs"], dims=[8])
    assert CachedEncoderView(retrievers["l2vg-gen-docs@8"]).dim == 8
    out = run_suite(
        retrievers,
        ["L2VGReasoningRetrieval"],
        limits={"L2VGReasoningRetrieval": 4},
        subset_limits={},
    )
    assert set(out["scores"]) == {"l2vg-gen-docs", "l2vg-gen-docs@8"}
    assert all(np.isfinite(v) for row in out["scores"].values() for v in row.values())


def test_cli_bright_with_dims(tiny_checkpoint: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    results = tmp_path / "r"
    common = ["bench", "bright", "-m", str(tiny_checkpoint), "--dtype", "float32", "--domain", "physics"]
    res = runner.invoke(
        app,
        [
            *common,
            "--models",
            "bm25,l2vg-gen-docs,l2vg-teacher-docs",
            "--dims",
            "16,4",
            "--max-queries",
            "2",
            "--gte-queries",
            "0",
            "--out-dir",
            str(results),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((results / "bright.json").read_text())
    prefixes = [f"{b}@{m}" for b in ("l2vg-gen-docs", "l2vg-teacher-docs") for m in (16, 4)]
    assert set(data["mean"]) == {"bm25", "l2vg-gen-docs", "l2vg-teacher-docs", *prefixes}
    assert data["models"] == ["bm25", "l2vg-gen-docs", "l2vg-teacher-docs"]
    dims = data["dims"]
    assert dims["dims"] == [16, 4]
    assert {k: v for k, v in dims["vector_bytes_per_document"].items() if "@" in k} == {
        "l2vg-gen-docs@16": 64,
        "l2vg-gen-docs@4": 16,
        "l2vg-teacher-docs@16": 64,
        "l2vg-teacher-docs@4": 16,
    }
    assert dims["n_documents"] == 65 and dims["collection_bytes"]["l2vg-gen-docs@4"] == 65 * 16
    report = write_report(results, tmp_path / "docs").read_text()
    assert "L2VG, documents generative, first 16 dims" in report
    assert "L2VG, documents by teacher, first 4 dims" in report
    assert "Matryoshka prefixes" in report

    # Bad sizes exit with a message and the usage code, not a traceback.
    for bad in ("0", "x", "4096"):
        res = runner.invoke(app, [*common, "--models", "l2vg-gen-docs", "--dims", bad])
        assert res.exit_code == EXIT_USAGE, res.output
        assert isinstance(res.exception, SystemExit) and "error" in res.output
    res = runner.invoke(app, [*common, "--models", "bm25", "--dims", "8"])
    assert res.exit_code == EXIT_USAGE
    assert "neither is in the chosen models" in " ".join(res.output.split())  # rich wraps lines
