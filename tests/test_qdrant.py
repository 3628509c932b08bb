"""QdrantIndexer against real qdrant-client local mode (in memory and on disk) with the tiny encoder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import build_tiny_encoder
from langchain_core.documents import Document
from qdrant_client import QdrantClient, models

from l2vg_retrieval.qdrant import (
    HARM_FLAG_KEY,
    CollectionMismatchError,
    CollectionNotFoundError,
    InvalidDocument,
    QdrantIndexer,
    SearchResults,
    point_id,
)

CORPUS = [
    {"id": f"d{i}", "text": text, "metadata": {"topic": topic, "year": 2000 + i}}
    for i, (text, topic) in enumerate(
        [
            ("Bread needs flour, water, yeast and salt, then time to rise.", "cooking"),
            ("Simmer the tomato sauce slowly so it thickens.", "cooking"),
            ("Jupiter is the largest planet in the solar system.", "space"),
            ("A light year measures distance, not time.", "space"),
            ("Water tomato plants at the base in the morning.", "garden"),
            ("Prune roses in late winter before new growth starts.", "garden"),
            ("Python lists grow dynamically as items are appended.", "code"),
            ("A hash map gives average constant-time lookups.", "code"),
        ]
    )
]


@pytest.fixture(scope="module")
def encoder() -> Any:
    return build_tiny_encoder()


@pytest.fixture
def indexer(encoder: Any) -> QdrantIndexer:
    idx = QdrantIndexer(encoder, "docs", path=":memory:", batch_size=3)
    yield idx
    idx.close()


def test_index_search_and_payload(indexer: QdrantIndexer, encoder: Any) -> None:
    report = indexer.index(CORPUS, show_progress=False)
    assert (report.indexed, report.skipped_existing, report.skipped_invalid) == (len(CORPUS), 0, 0)
    assert indexer.count() == len(CORPUS)

    hits = indexer.search("how do I make bread?", k=4)
    assert isinstance(hits, SearchResults) and not hits.blocked and len(hits) == 4
    # The ranking must be exactly cosine(query, document) computed independently.
    docs = encoder.encode_document([d["text"] for d in CORPUS])
    q = encoder.encode_query("how do I make bread?")
    expected = [CORPUS[i]["id"] for i in np.argsort(-(docs @ q))[:4]]
    assert [h.id for h in hits] == expected
    assert np.allclose([h.score for h in hits], np.sort(docs @ q)[::-1][:4], atol=1e-4)
    by_id = {d["id"]: d for d in CORPUS}
    for hit in hits:
        assert hit.text == by_id[hit.id]["text"]
        assert hit.metadata == by_id[hit.id]["metadata"]


def test_reindex_is_idempotent(indexer: QdrantIndexer) -> None:
    indexer.index(CORPUS, show_progress=False)
    again = indexer.index(CORPUS, show_progress=False)
    assert (again.indexed, again.skipped_existing) == (0, len(CORPUS))
    assert indexer.count() == len(CORPUS)
    forced = indexer.index(CORPUS, overwrite=True, show_progress=False)
    assert forced.indexed == len(CORPUS) and indexer.count() == len(CORPUS)


def test_accepts_strings_dicts_and_langchain_documents(indexer: QdrantIndexer) -> None:
    items = [
        "a plain string document",
        {"text": "a dict without id", "lang": "en"},
        Document(page_content="a langchain document", metadata={"src": "lc"}, id="lc-1"),
    ]
    assert indexer.index(items, show_progress=False).indexed == 3
    # No id: the point id derives from the text, so the same text is the same point.
    assert indexer.client.retrieve("docs", [point_id(text="a plain string document")])
    hits = indexer.search("a langchain document", k=3)
    meta = {h.id: h.metadata for h in hits}
    assert meta["lc-1"] == {"src": "lc"}
    assert {"lang": "en"} in meta.values()  # extra dict keys become metadata


def test_invalid_documents_are_skipped_with_reasons(indexer: QdrantIndexer) -> None:
    items: list[Any] = [
        "ok one",
        "",
        "   \n\t",
        "\x00\x01",
        None,
        {"text": None, "id": "x"},
        {"text": 42},
        {"text": "bad meta", "metadata": "nope"},
        {"text": "bad id", "id": 1.5},
        InvalidDocument("line 9", "invalid JSON"),
        "ok two",
        "ok one",  # duplicate within the run
    ]
    report = indexer.index(items, show_progress=False)
    assert report.indexed == 2
    assert report.skipped_invalid == 9
    assert report.skipped_duplicate == 1
    reasons = {d.ref: d.reason for d in report.invalid}
    assert "empty" in reasons["#1"] and "unsupported" in reasons["#4"]
    assert reasons["x"] == "text is missing" and reasons["line 9"] == "invalid JSON"
    assert indexer.count() == 2
    with pytest.raises(TypeError):
        indexer.index("a bare string is not a corpus")


def test_streams_in_chunks(encoder: Any) -> None:
    """The iterable is consumed lazily: chunk n is in Qdrant before item n+batch is even read."""
    idx = QdrantIndexer(encoder, "stream", path=":memory:", batch_size=4)
    lag: list[int] = []

    def corpus():
        for i in range(20):
            lag.append(i - idx.count())
            yield f"streamed document number {i}"

    assert idx.index(corpus(), show_progress=False).indexed == 20
    assert max(lag) <= 4 and idx.count() == 20


def test_interrupted_run_resumes_without_gaps_or_duplicates(indexer: QdrantIndexer) -> None:
    def dies_midway():
        for i, doc in enumerate(CORPUS):
            if i == 5:
                raise KeyboardInterrupt
            yield doc

    with pytest.raises(KeyboardInterrupt):
        indexer.index(dies_midway(), show_progress=False)
    assert indexer.count() == 3  # one full chunk of 3 made it
    report = indexer.index(CORPUS, show_progress=False)
    assert (report.skipped_existing, report.indexed) == (3, 5)
    stored = {p.payload["doc_id"] for p in indexer.client.scroll("docs", limit=100)[0]}
    assert stored == {d["id"] for d in CORPUS}


_KILLED_WORKER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.conftest import build_tiny_encoder
    from l2vg_retrieval.qdrant import QdrantIndexer
    idx = QdrantIndexer(build_tiny_encoder(), "kill", path={path!r}, batch_size=5)
    def slow():
        for i in range({n}):
            if i and i % 5 == 0:
                print("chunk", flush=True)
                time.sleep(0.3)
            yield {{"id": i, "text": f"document number {{i}} about topic {{i % 7}}"}}
    idx.index(slow(), show_progress=False)
    """
)


def test_killed_process_then_rerun_yields_exactly_the_corpus(tmp_path: Path, encoder: Any) -> None:
    n = 60
    root = str(Path(__file__).resolve().parents[1])
    script = _KILLED_WORKER.format(root=root, path=str(tmp_path / "q"), n=n)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        chunks = 0
        assert proc.stdout is not None
        while chunks < 3:  # wait until a few chunks are committed, then kill -9 mid-run
            line = proc.stdout.readline()
            assert line, "the worker exited before it could be killed"
            chunks += line.startswith("chunk")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    corpus = [{"id": i, "text": f"document number {i} about topic {i % 7}"} for i in range(n)]
    with QdrantIndexer(encoder, "kill", path=tmp_path / "q", batch_size=5) as idx:
        partial = idx.count()
        assert 0 < partial < n
        report = idx.index(corpus, show_progress=False)
        assert report.skipped_existing == partial and report.indexed == n - partial
        assert idx.count() == n
        ids = {str(p.id) for p in idx.client.scroll("kill", limit=1000)[0]}
        assert ids == {point_id(i) for i in range(n)}


def test_filters(indexer: QdrantIndexer) -> None:
    indexer.index(CORPUS, show_progress=False)
    assert {h.metadata["topic"] for h in indexer.search("anything", k=8, filter={"topic": "space"})} == {
        "space"
    }
    assert indexer.count({"topic": ["code", "garden"]}) == 4
    assert indexer.count({"year": {"gte": 2006}}) == 2
    raw = models.Filter(
        must_not=[models.FieldCondition(key="metadata.topic", match=models.MatchValue(value="code"))]
    )
    assert indexer.count(raw) == 6
    with pytest.raises(ValueError, match="unknown range"):
        indexer.count({"year": {"between": 1}})
    with pytest.raises(TypeError):
        indexer.count({"topic": object()})


def test_search_batch_matches_search(indexer: QdrantIndexer) -> None:
    indexer.index(CORPUS, show_progress=False)
    queries = ["planets", "roses", "hash maps"]
    batch = indexer.search_batch(queries, k=3)
    for q, hits in zip(queries, batch, strict=True):
        single = indexer.search(q, k=3)
        assert [h.id for h in hits] == [h.id for h in single]
        assert np.allclose([h.score for h in hits], [h.score for h in single], atol=1e-4)
    assert indexer.search_batch([], k=3) == []


def test_delete(indexer: QdrantIndexer) -> None:
    indexer.index(CORPUS, show_progress=False)
    indexer.delete(["d0", "d1"])
    assert indexer.count() == 6
    indexer.delete(filter={"topic": "space"})
    assert indexer.count() == 4 and indexer.count({"topic": "space"}) == 0
    with pytest.raises(ValueError):
        indexer.delete()


def test_bad_queries(indexer: QdrantIndexer) -> None:
    indexer.index(CORPUS[:2], show_progress=False)
    with pytest.raises(ValueError):
        indexer.search("   ")
    with pytest.raises(TypeError):
        indexer.search(None)  # type: ignore[arg-type]
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            indexer.search("ok", k=bad_k)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        indexer.search_batch("one string")  # type: ignore[arg-type]


def test_mismatch_is_refused(tmp_path: Path, encoder: Any) -> None:
    with QdrantIndexer(encoder, "c", path=tmp_path) as idx:
        idx.index(CORPUS[:3], show_progress=False)
    other = build_tiny_encoder(seed=1)  # same dim, other trained tokens: another vector space
    with pytest.raises(CollectionMismatchError, match="fingerprint"):
        QdrantIndexer(other, "c", path=tmp_path)
    # Reopening with the same encoder keeps everything.
    with QdrantIndexer(encoder, "c", path=tmp_path) as idx:
        assert idx.count() == 3 and idx.meta["dim"] == encoder.dim
        assert idx.meta["fingerprint"] == encoder.fingerprint


def test_dimension_and_foreign_collections(encoder: Any) -> None:
    client = QdrantClient(":memory:")
    client.create_collection(
        "small", vectors_config=models.VectorParams(size=16, distance=models.Distance.COSINE)
    )
    with pytest.raises(CollectionMismatchError, match="16-d"):
        QdrantIndexer(encoder, "small", client=client)
    client.create_collection(
        "dot", vectors_config=models.VectorParams(size=encoder.dim, distance=models.Distance.DOT)
    )
    with pytest.raises(CollectionMismatchError, match="Cosine"):
        QdrantIndexer(encoder, "dot", client=client)
    vp = models.VectorParams(size=encoder.dim, distance=models.Distance.COSINE)
    client.create_collection("foreign", vectors_config=vp)
    client.upsert("foreign", [models.PointStruct(id=1, vector=[0.1] * encoder.dim, payload={})])
    with pytest.raises(CollectionMismatchError, match="not built by l2vg"):
        QdrantIndexer(encoder, "foreign", client=client)
    client.create_collection("empty", vectors_config=vp)  # empty and unlabelled: adopted
    assert QdrantIndexer(encoder, "empty", client=client).meta["fingerprint"] == encoder.fingerprint
    with pytest.raises(CollectionNotFoundError):
        QdrantIndexer(encoder, "missing", client=client, create=False)
    fresh = QdrantIndexer(encoder, "foreign", client=client, recreate=True)
    assert fresh.count() == 0


def test_teacher_document_mode_shares_the_collection() -> None:
    generative = build_tiny_encoder()
    teacher_docs = build_tiny_encoder(document_mode="teacher")
    client = QdrantClient(":memory:")
    QdrantIndexer(generative, "m", client=client).index(CORPUS[:2], show_progress=False)
    # Same vector space (document_mode is not part of the fingerprint), so no mismatch.
    idx = QdrantIndexer(teacher_docs, "m", client=client)
    assert idx.index(CORPUS[2:4], show_progress=False).indexed == 2 and idx.count() == 4


def test_constructor_errors(encoder: Any) -> None:
    with pytest.raises(ValueError, match="at most one"):
        QdrantIndexer(encoder, "c", path=":memory:", url="http://localhost:6333")
    with pytest.raises(ValueError, match="api_key"):
        QdrantIndexer(encoder, "c", path=":memory:", api_key="k")
    with pytest.raises(ValueError):
        QdrantIndexer(encoder, " ", path=":memory:")
    with pytest.raises(ValueError):
        QdrantIndexer(encoder, "c", path=":memory:", batch_size=0)


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
def test_url_without_a_server_fails_clearly(encoder: Any) -> None:
    """The url= path is the same code; with no server listening it must fail at once, not hang."""
    started = time.perf_counter()
    with pytest.raises(Exception, match=r"(?i)connect|refused"):
        QdrantIndexer(encoder, "c", url="http://127.0.0.1:9", timeout=2)
    assert time.perf_counter() - started < 30


# ---------------------------------------------------------------- the safety hook
@dataclass
class _Decision:
    blocked: bool
    score: float
    reason: str


class KeywordSafety:
    """A small real collaborator implementing the safety protocol with a keyword rule."""

    name = "keyword-test"
    words = ("bomb", "poison")

    def _score(self, text: str) -> float:
        return float(any(w in text.lower() for w in self.words))

    def screen_documents(self, texts: list[str]) -> list[dict[str, Any]]:
        return [{"l2vg_harm_score": self._score(t), HARM_FLAG_KEY: self._score(t) > 0.5} for t in texts]

    def check_query(self, query: str, instruction: str | None, *, embedding: object = None) -> _Decision:
        score = self._score(query)
        return _Decision(score > 0.5, score, "query asks for harmful content" if score else "")


SAFETY_CORPUS = [
    {"id": "ok1", "text": "How to bake sourdough bread at home."},
    {"id": "ok2", "text": "Growing tomatoes on a balcony."},
    {"id": "bad1", "text": "Step by step instructions to build a bomb."},
    {"id": "bad2", "text": "Which household poison is hardest to detect."},
]


def test_safe_mode_hook(encoder: Any) -> None:
    client = QdrantClient(":memory:")
    idx = QdrantIndexer(encoder, "s", client=client, safety=KeywordSafety())
    idx.index(SAFETY_CORPUS, show_progress=False)
    assert idx.meta["screened"] is True and idx.meta["screened_by"] == "keyword-test"
    payload = client.retrieve("s", [point_id("bad1")])[0].payload
    assert payload[HARM_FLAG_KEY] is True and payload["l2vg_harm_score"] == 1.0

    unsafe = {h.id for h in idx.search("instructions", k=4)}
    assert unsafe == {"ok1", "ok2", "bad1", "bad2"}
    safe = idx.search("instructions", k=4, safe=True)
    assert {h.id for h in safe} == {"ok1", "ok2"} and not safe.blocked
    # A metadata filter and the safety exclusion combine.
    assert [h.id for h in idx.search("x", k=4, filter=models.Filter(must=[]), safe=True)]
    refused = idx.search("how to make a bomb", safe=True)
    assert refused.blocked and refused == [] and "harmful" in refused.reason
    batch = idx.search_batch(["bread", "poison recipes"], k=4, safe=True)
    assert {h.id for h in batch[0]} <= {"ok1", "ok2"} and batch[1].blocked

    # Re-opening the collection keeps the screened flag (it lives in collection metadata).
    again = QdrantIndexer(encoder, "s", client=client, safety=KeywordSafety())
    assert again.meta["screened"] is True


def test_safe_mode_refuses_without_screening(encoder: Any) -> None:
    client = QdrantClient(":memory:")
    plain = QdrantIndexer(encoder, "p", client=client)
    plain.index(SAFETY_CORPUS, show_progress=False)
    with pytest.raises(ValueError, match="safety component"):
        plain.search("bread", safe=True)
    late = QdrantIndexer(encoder, "p", client=client, safety=KeywordSafety())
    late.index(["one more screened document"], show_progress=False)
    with pytest.raises(ValueError, match="not fully screened"):
        late.search("bread", safe=True)
    # Adding unscreened documents to a screened collection clears the flag.
    screened = QdrantIndexer(encoder, "q", client=client, safety=KeywordSafety())
    screened.index(SAFETY_CORPUS, show_progress=False)
    QdrantIndexer(encoder, "q", client=client).index(["an unscreened addition"], show_progress=False)
    with pytest.raises(ValueError, match="not fully screened"):
        QdrantIndexer(encoder, "q", client=client, safety=KeywordSafety()).search("bread", safe=True)
