"""The Qdrant Edge backend and `l2vg export`, against real qdrant-edge-py and qdrant-client.

No server runs here: the export target is qdrant-client's local mode (``QdrantClient(path=)``),
the same client code that talks to a server, over its embedded engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import build_tiny_encoder
from qdrant_client import QdrantClient, models
from typer.testing import CliRunner

from l2vg_retrieval.qdrant import (
    HARM_FLAG_KEY,
    ClientStore,
    CollectionLockedError,
    CollectionMismatchError,
    CollectionNotFoundError,
    QdrantIndexer,
    open_collection,
    open_store,
    point_id,
)
from l2vg_retrieval.qdrant_edge import BOOL_FIELD, EdgeStore, bool_tokens, translate_filter
from l2vg_retrieval.qdrant_export import export_collection

ROOT = str(Path(__file__).resolve().parents[1])

CORPUS = [
    {"id": f"d{i}", "text": text, "metadata": {"topic": topic, "year": 2000 + i, "reviewed": i % 2 == 0}}
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
QUERIES = ["how do I make bread?", "planets", "roses", "hash maps", "tomatoes"]


@pytest.fixture(scope="module")
def encoder() -> Any:
    return build_tiny_encoder()


def _edge(encoder: Any, folder: Path, name: str = "docs", **kw: Any) -> QdrantIndexer:
    return QdrantIndexer(encoder, name, path=folder, backend="edge", **kw)


# ---------------------------------------------------------------- parity with local mode
def test_edge_and_local_return_the_same_results(tmp_path: Path, encoder: Any) -> None:
    with (
        QdrantIndexer(encoder, "docs", path=tmp_path / "local", backend="local", batch_size=3) as local,
        _edge(encoder, tmp_path / "edge", batch_size=3) as edge,
    ):
        assert (local.backend, edge.backend) == ("local", "edge")
        for idx in (local, edge):
            report = idx.index(CORPUS, show_progress=False)
            assert (report.indexed, report.skipped_existing) == (len(CORPUS), 0)
        docs = encoder.encode_document([d["text"] for d in CORPUS])
        for q in QUERIES:
            a, b = local.search(q, k=5), edge.search(q, k=5)
            # Both must equal cosine(query, document) computed independently.
            scores = docs @ encoder.encode_query(q)
            assert [h.id for h in b] == [CORPUS[i]["id"] for i in np.argsort(-scores)[:5]]
            assert [h.id for h in a] == [h.id for h in b]
            assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
            assert [(h.text, h.metadata) for h in a] == [(h.text, h.metadata) for h in b]
        batch_a, batch_b = local.search_batch(QUERIES, k=3), edge.search_batch(QUERIES, k=3)
        assert [[h.id for h in r] for r in batch_a] == [[h.id for h in r] for r in batch_b]
        for spec in (
            {"topic": "space"},
            {"topic": ["code", "garden"]},
            {"year": {"gte": 2006}},
            {"reviewed": True},
            {"reviewed": False},
            models.Filter(
                must_not=[models.FieldCondition(key="metadata.topic", match=models.MatchValue(value="code"))]
            ),
        ):
            assert local.count(spec) == edge.count(spec), spec
            assert {h.id for h in local.search("anything", k=8, filter=spec)} == {
                h.id for h in edge.search("anything", k=8, filter=spec)
            }, spec
        assert edge.count({"reviewed": True}) == 4 and edge.count({"year": {"gte": 2006}}) == 2
        assert edge.search("x", k=8, score_threshold=2.0) == []
        # Reading everything back: same ids and payloads, and no hidden field leaks out.
        pa = {p.id: p.payload for p in local.iter_points()}
        pb = {p.id: p.payload for p in edge.iter_points(batch_size=3)}
        assert pa == pb and all(BOOL_FIELD not in p for p in pb.values())


def test_delete_and_reindex_on_edge(tmp_path: Path, encoder: Any) -> None:
    with _edge(encoder, tmp_path, batch_size=3) as idx:
        idx.index(CORPUS, show_progress=False)
        again = idx.index(CORPUS, show_progress=False)
        assert (again.indexed, again.skipped_existing) == (0, len(CORPUS)) and idx.count() == len(CORPUS)
        assert idx.index(CORPUS, overwrite=True, show_progress=False).indexed == len(CORPUS)
        assert idx.count() == len(CORPUS)
        idx.delete(["d0", "d1"])
        assert idx.count() == 6
        idx.delete(filter={"topic": "space"})
        assert idx.count() == 4 and idx.count({"topic": "space"}) == 0
        idx.delete(filter={"reviewed": True})  # a boolean filter deletes too
        assert {h.id for h in idx.search("x", k=8)} == {"d5", "d7"}
        with pytest.raises(ValueError):
            idx.delete()


def test_existing_collections_are_found_where_they_are(tmp_path: Path, encoder: Any) -> None:
    with QdrantIndexer(encoder, "old", path=tmp_path, backend="local") as idx:
        idx.index(CORPUS[:2], show_progress=False)
    with _edge(encoder, tmp_path, "new") as idx:
        idx.index(CORPUS[:3], show_progress=False)
    with QdrantIndexer(encoder, "old", path=tmp_path, create=False) as idx:
        assert idx.backend == "local" and idx.count() == 2 and idx.client is not None
    with QdrantIndexer(encoder, "new", path=tmp_path, create=False) as idx:
        assert idx.backend == "edge" and idx.count() == 3
        with pytest.raises(AttributeError, match="Edge"):
            _ = idx.client
    with pytest.raises(CollectionNotFoundError):
        QdrantIndexer(encoder, "missing", path=tmp_path, backend="edge", create=False)
    with pytest.raises(ValueError, match="backend"):
        QdrantIndexer(encoder, "x", path=tmp_path, backend="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="embedded"):
        QdrantIndexer(encoder, "x", url="http://localhost:6333", backend="edge")
    with pytest.raises(ValueError, match="folder"):
        QdrantIndexer(encoder, "x", path=":memory:", backend="edge")


# ---------------------------------------------------------------- safe mode
@dataclass
class _Decision:
    blocked: bool
    score: float
    reason: str


class WordScreen:
    """A small real safety component: flags texts containing any of a few words."""

    name = "word-screen"
    words = ("explosive", "poison")

    def _score(self, text: str) -> float:
        return float(any(w in text.lower() for w in self.words))

    def screen_documents(self, texts: list[str]) -> list[dict[str, Any]]:
        return [{"l2vg_harm_score": self._score(t), HARM_FLAG_KEY: self._score(t) > 0.5} for t in texts]

    def check_query(self, query: str, instruction: str | None, *, embedding: object = None) -> _Decision:
        score = self._score(query)
        return _Decision(score > 0.5, score, "the query asks for harmful content" if score else "")


SAFETY_CORPUS = [
    {"id": "ok1", "text": "How to bake sourdough bread at home.", "metadata": {"lang": "en"}},
    {"id": "ok2", "text": "Growing tomatoes on a balcony.", "metadata": {"lang": "en"}},
    {"id": "ok3", "text": "Pflege von Rosen im Winter.", "metadata": {"lang": "de"}},
    {"id": "bad1", "text": "Step by step instructions for an explosive device.", "metadata": {"lang": "en"}},
    {"id": "bad2", "text": "Which household poison is hardest to detect.", "metadata": {"lang": "de"}},
]


def test_safe_mode_excludes_flagged_documents_on_edge(tmp_path: Path, encoder: Any) -> None:
    with _edge(encoder, tmp_path, "s", safety=WordScreen(), batch_size=2) as idx:
        idx.index(SAFETY_CORPUS, show_progress=False)
        assert idx.meta["screened"] is True and idx.meta["screened_by"] == "word-screen"
        flags = {p.payload["doc_id"]: p.payload[HARM_FLAG_KEY] for p in idx.iter_points()}
        assert flags == {"ok1": False, "ok2": False, "ok3": False, "bad1": True, "bad2": True}
        everything = {h.id for h in idx.search("instructions", k=5)}
        assert everything == {"ok1", "ok2", "ok3", "bad1", "bad2"}
        safe = idx.search("instructions", k=5, safe=True)
        assert {h.id for h in safe} == {"ok1", "ok2", "ok3"} and not safe.blocked
        # A metadata filter and the exclusion hold together.
        assert {h.id for h in idx.search("instructions", k=5, filter={"lang": "de"}, safe=True)} == {"ok3"}
        assert {h.id for h in idx.search("instructions", k=5, filter={"lang": "de"})} == {"ok3", "bad2"}
        refused = idx.search("how to build an explosive", safe=True)
        assert refused.blocked and refused == [] and "harmful" in (refused.reason or "")
        batch = idx.search_batch(["bread", "poison recipes", "roses"], k=5, safe=True)
        assert {h.id for h in batch[0]} == {"ok1", "ok2", "ok3"} and batch[1].blocked
        assert {h.id for h in batch[2]} == {"ok1", "ok2", "ok3"}
    # The screened flag lives in l2vg.json beside the shard and survives reopening.
    with _edge(encoder, tmp_path, "s", safety=WordScreen()) as again:
        assert again.meta["screened"] is True
        assert {h.id for h in again.search("anything", k=5, safe=True)} == {"ok1", "ok2", "ok3"}
    # Unscreened additions clear it.
    with _edge(encoder, tmp_path, "s") as plain:
        plain.index(["an unscreened addition"], show_progress=False)
    with (
        _edge(encoder, tmp_path, "s", safety=WordScreen()) as late,
        pytest.raises(ValueError, match="not fully screened"),
    ):
        late.search("bread", safe=True)


def test_edge_binding_cannot_match_booleans_directly(tmp_path: Path) -> None:
    """Canary for the qdrant-edge-py 0.9.0 defect the hidden boolean field works around: a
    boolean MatchValue reaches the engine as the integer 1 and matches nothing. If an
    upgrade fixes it, this fails, and the workaround in qdrant_edge.py can go."""
    import qdrant_edge as qe

    store = EdgeStore(tmp_path, "c")
    open_collection(store, {"format": 1, "fingerprint": "f", "dim": 4, "screened": False})
    store.upsert([point_id("a"), point_id("b")], np.eye(4, dtype=np.float32)[:2], [{"f": True}, {"f": False}])
    raw = qe.Filter(must=[qe.FieldCondition(key="f", match=qe.MatchValue(True))])
    assert store.shard.count(qe.CountRequest(filter=raw)) == 0
    # Through the translation the same condition works.
    flagged = models.Filter(must=[models.FieldCondition(key="f", match=models.MatchValue(value=True))])
    assert store.count(flagged) == 1
    assert store.count(models.Filter(must_not=flagged.must)) == 1
    store.close()


def test_bool_tokens_and_filter_translation() -> None:
    payload = {"a": True, "m": {"b": False, "n": {"c": True}}, "l": [True, {"d": False}], "x": 1}
    assert bool_tokens(payload) == ["a=true", "l=true", "l[].d=false", "m.b=false", "m.n.c=true"]
    with pytest.raises(ValueError, match="not supported"):
        translate_filter(
            models.Filter(
                must=[
                    models.FieldCondition(
                        key="g", geo_radius=models.GeoRadius(center=models.GeoPoint(lon=0, lat=0), radius=1.0)
                    )
                ]
            )
        )


# ---------------------------------------------------------------- HNSW, resume, locks
def test_optimize_builds_hnsw_and_it_finds_the_exact_neighbours(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = EdgeStore(tmp_path, "h", indexing_threshold_kb=1)
    open_collection(store, {"format": 1, "fingerprint": "f", "dim": 32, "screened": False})
    ids = [str(point_id(i)) for i in range(len(vectors))]
    payloads = [{"doc_id": str(i)} for i in range(len(vectors))]
    for s in range(0, len(vectors), 500):
        store.upsert(ids[s : s + 500], vectors[s : s + 500], payloads[s : s + 500])
    assert store.index_status()["indexed_vectors"] == 0  # nothing is indexed before optimize()
    assert store.optimize() is True
    assert store.index_status()["indexed_vectors"] == len(vectors)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    truth = np.argsort(-(vectors @ queries.T).T, axis=1)[:, :10]
    hnsw = [[int(p["doc_id"]) for _, _, p in store.query(q, None, 10)] for q in queries]
    exact = [[int(p["doc_id"]) for _, _, p in store.query(q, None, 10, exact=True)] for q in queries]
    assert exact == truth.tolist()
    recall = np.mean([len(set(h) & set(t)) / 10 for h, t in zip(hnsw, truth.tolist(), strict=True)])
    assert recall >= 0.9
    store.close()


def test_interrupted_run_resumes_without_gaps_or_duplicates(tmp_path: Path, encoder: Any) -> None:
    def dies_midway():
        for i, doc in enumerate(CORPUS):
            if i == 5:
                raise KeyboardInterrupt
            yield doc

    with _edge(encoder, tmp_path, batch_size=3) as idx, pytest.raises(KeyboardInterrupt):
        idx.index(dies_midway(), show_progress=False)
    with _edge(encoder, tmp_path, batch_size=3) as idx:
        assert idx.count() == 3  # one full chunk of 3 made it, and survived close/reopen
        report = idx.index(CORPUS, show_progress=False)
        assert (report.skipped_existing, report.indexed) == (3, 5)
        assert {p.payload["doc_id"] for p in idx.iter_points()} == {d["id"] for d in CORPUS}


_KILLED_WORKER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.conftest import build_tiny_encoder
    from l2vg_retrieval.qdrant import QdrantIndexer
    idx = QdrantIndexer(build_tiny_encoder(), "kill", path={path!r}, backend="edge", batch_size=5)
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
    script = _KILLED_WORKER.format(root=ROOT, path=str(tmp_path), n=n)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        chunks = 0
        assert proc.stdout is not None
        while chunks < 3:  # a few chunks are in, then kill -9 mid-run
            line = proc.stdout.readline()
            assert line, "the worker exited before it could be killed"
            chunks += line.startswith("chunk")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    corpus = [{"id": i, "text": f"document number {i} about topic {i % 7}"} for i in range(n)]
    with _edge(encoder, tmp_path, "kill", batch_size=5) as idx:  # the dead writer's lock is gone
        partial = idx.count()
        assert 0 < partial < n
        report = idx.index(corpus, show_progress=False)
        assert report.skipped_existing == partial and report.indexed == n - partial
        assert {p.id for p in idx.iter_points()} == {point_id(i) for i in range(n)}


# The opening path QdrantIndexer takes, without torch: a busy machine imports it slowly.
_SECOND_OPENER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from l2vg_retrieval.qdrant import CollectionLockedError, open_store
    try:
        open_store("docs", path={path!r}, backend={backend!r})
    except CollectionLockedError as exc:
        print("LOCKED", exc)
    else:
        print("OPENED")
    """
)


@pytest.mark.parametrize("backend", ["edge", "local"])
def test_second_process_gets_a_clear_lock_error(tmp_path: Path, encoder: Any, backend: str) -> None:
    with QdrantIndexer(encoder, "docs", path=tmp_path, backend=backend) as holder:  # type: ignore[arg-type]
        holder.index(CORPUS[:2], show_progress=False)
        # In this process: a second indexer on the same collection.
        with pytest.raises(CollectionLockedError, match="another process"):
            QdrantIndexer(encoder, "docs", path=tmp_path, backend=backend)  # type: ignore[arg-type]
        script = _SECOND_OPENER.format(root=ROOT, path=str(tmp_path), backend=backend)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("LOCKED") and "another process" in done.stdout
        assert "Traceback" not in done.stderr
        assert holder.count() == 2  # the holder is unharmed
    with QdrantIndexer(encoder, "docs", path=tmp_path, backend=backend) as reopened:  # type: ignore[arg-type]
        assert reopened.count() == 2  # closing released the lock


def test_cli_on_a_locked_collection_exits_cleanly(tmp_path: Path, encoder: Any) -> None:
    from l2vg_retrieval.cli import app

    with _edge(encoder, tmp_path / "src") as holder:
        holder.index(CORPUS[:2], show_progress=False)
        result = CliRunner().invoke(
            app, ["export", "-c", "docs", "--path", str(tmp_path / "src"), "--to-path", str(tmp_path / "dst")]
        )
    assert result.exit_code == 1, result.output
    assert "another process" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# ---------------------------------------------------------------- mismatches
def test_dimension_fingerprint_and_foreign_collections_are_refused(tmp_path: Path, encoder: Any) -> None:
    small = EdgeStore(tmp_path, "small")
    open_collection(small, {"format": 1, "fingerprint": "other", "dim": 16, "screened": False})
    small.close()
    with pytest.raises(CollectionMismatchError, match="16-d"):
        _edge(encoder, tmp_path, "small")
    with _edge(encoder, tmp_path, "c") as idx:
        idx.index(CORPUS[:3], show_progress=False)
    with pytest.raises(CollectionMismatchError, match="fingerprint"):
        _edge(build_tiny_encoder(seed=1), tmp_path, "c")
    (tmp_path / "edge" / "c" / "l2vg.json").unlink()  # now a shard with points and no l2vg metadata
    with pytest.raises(CollectionMismatchError, match="not built by l2vg"):
        _edge(encoder, tmp_path, "c")
    # A refused open released the lock: recreate works right away.
    with _edge(encoder, tmp_path, "c", recreate=True) as fresh:
        assert fresh.count() == 0 and fresh.meta["fingerprint"] == encoder.fingerprint
        with pytest.raises(Exception, match=r"(?i)dimension"):
            fresh.store.upsert([point_id("z")], np.ones((1, 16), dtype=np.float32), [{}])


# ---------------------------------------------------------------- export
def _points(store: Any) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    out, offset = {}, None
    while True:
        batch, offset = store.scroll(offset, 3, with_vectors=True)
        out.update({p.id: (p.payload, np.asarray(p.vector)) for p in batch})
        if offset is None:
            return out


@pytest.mark.parametrize("source_backend", ["edge", "local"])
def test_export_round_trip_into_a_qdrant_client_collection(
    tmp_path: Path, encoder: Any, source_backend: str
) -> None:
    src = tmp_path / "src"
    with QdrantIndexer(encoder, "docs", path=src, backend=source_backend, safety=WordScreen()) as idx:  # type: ignore[arg-type]
        idx.index(CORPUS + SAFETY_CORPUS, show_progress=False)
        expected_hits = [[(h.id, round(h.score, 5)) for h in idx.search(q, k=4, safe=True)] for q in QUERIES]
    source = open_store("docs", path=src, backend=source_backend)
    target_client = QdrantClient(path=str(tmp_path / "server"))  # stand-in for a server: same client API
    target = ClientStore(target_client, "copy", backend="server", owns_client=False)
    try:
        # Interrupted after the first batch, then resumed: nothing lost, nothing doubled.
        def stop_after_first(_: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            export_collection(source, target, batch_size=4, on_batch=stop_after_first)
        assert target_client.count("copy").count == 4
        report = export_collection(source, target, batch_size=4)
        n = len(CORPUS) + len(SAFETY_CORPUS)
        assert (report.exported, report.skipped_existing, report.source_count, report.target_count) == (
            n - 4,
            4,
            n,
            n,
        )
        again = export_collection(source, target, batch_size=4)
        assert (again.exported, again.skipped_existing) == (0, n)  # idempotent
        # Ids, payloads and vectors are the source's, point for point.
        want, got = _points(source), _points(target)
        assert set(want) == set(got) == {point_id(d["id"]) for d in CORPUS + SAFETY_CORPUS}
        for pid, (payload, vector) in want.items():
            assert got[pid][0] == payload
            assert np.allclose(got[pid][1], vector, atol=1e-6)
        # The encoder metadata travels as the target's collection metadata.
        meta = (target_client.get_collection("copy").config.metadata or {})["l2vg"]
        assert meta["fingerprint"] == encoder.fingerprint and meta["dim"] == encoder.dim
        assert meta["screened"] is True
    finally:
        source.close()
    # The copy is a working l2vg collection: same encoder, same safe-mode results.
    with QdrantIndexer(encoder, "copy", client=target_client, create=False, safety=WordScreen()) as copy:
        got_hits = [[(h.id, round(h.score, 5)) for h in copy.search(q, k=4, safe=True)] for q in QUERIES]
        assert got_hits == expected_hits
    with pytest.raises(CollectionMismatchError, match="fingerprint"):
        QdrantIndexer(build_tiny_encoder(seed=1), "copy", client=target_client)
    target_client.close()


def test_export_refuses_a_target_of_another_encoder(tmp_path: Path, encoder: Any) -> None:
    with _edge(encoder, tmp_path / "src") as idx:
        idx.index(CORPUS[:3], show_progress=False)
    client = QdrantClient(":memory:")
    QdrantIndexer(build_tiny_encoder(seed=1), "docs", client=client).index(["x"], show_progress=False)
    source = open_store("docs", path=tmp_path / "src", backend="edge")
    try:
        with pytest.raises(CollectionMismatchError, match="fingerprint"):
            export_collection(source, ClientStore(client, "docs", backend="server", owns_client=False))
        assert client.count("docs").count == 1
        with pytest.raises(CollectionNotFoundError):
            export_collection(
                open_store("nothing", path=tmp_path / "src", backend="edge"),
                ClientStore(client, "other", backend="server", owns_client=False),
            )
    finally:
        source.close()


def test_export_cli(tmp_path: Path, encoder: Any) -> None:
    from l2vg_retrieval.cli import app

    with _edge(encoder, tmp_path / "src") as idx:
        idx.index(CORPUS, show_progress=False)
    args = ["export", "-c", "docs", "--path", str(tmp_path / "src"), "--to-path", str(tmp_path / "dst")]
    first = CliRunner().invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)
    assert (data["source_backend"], data["exported"], data["target_count"]) == (
        "edge",
        len(CORPUS),
        len(CORPUS),
    )
    second = CliRunner().invoke(app, [*args, "--json"])
    assert json.loads(second.stdout)["skipped_existing"] == len(CORPUS)
    client = QdrantClient(path=str(tmp_path / "dst"))
    try:
        assert client.count("docs").count == len(CORPUS)
        assert client.get_collection("docs").config.metadata["l2vg"]["fingerprint"] == encoder.fingerprint
    finally:
        client.close()
    usage = CliRunner().invoke(app, ["export", "-c", "docs", "--path", str(tmp_path / "src")])
    assert usage.exit_code == 2 and "--url or --to-path" in usage.output
    missing = CliRunner().invoke(
        app, ["export", "-c", "nope", "--path", str(tmp_path / "src"), "--to-path", str(tmp_path / "d2")]
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output


# ---------------------------------------------------------------- the scale benchmark
def test_scale_benchmark_smoke(tmp_path: Path, encoder: Any) -> None:
    from l2vg_retrieval.bench.report import section_scale
    from l2vg_retrieval.bench.scale import run_scale

    result = run_scale(
        [300, 600],
        n_queries=5,
        hnsw_efs=(16, 64),
        encoders={"tiny-l2vg": encoder, "tiny-teacher": encoder.teacher},
        n_interactive=3,
        work_dir=tmp_path,
    )
    runs = {(r["backend"], r["n"]): r for r in result["runs"]}
    assert set(runs) == {("local", 300), ("edge", 300), ("local", 600), ("edge", 600)}
    for row in runs.values():
        # Exact at this size on both engines (Edge builds no graph under 10 MB), and the
        # filter, safe mode's boolean exclusion included, holds on every hit.
        assert row["recall@10"] == 1.0 and row["recall@10_filtered"] == 1.0, row
        assert row["filtered_results_obey_filter"] is True
        assert row["search_ms"]["p50"] > 0 and row["disk_mb"] > 0
    assert [e["hnsw_ef"] for e in runs[("edge", 600)]["ef_sweep"]] == [16, 64]
    assert "ef_sweep" not in runs[("local", 600)]
    inter = result["interactive"]
    assert (inter["backend"], inter["n"]) == ("edge", 600)
    assert set(inter["results"]) == {"tiny-l2vg", "tiny-teacher"}
    assert all(m["end_to_end_ms"]["p50"] >= m["search_ms"]["p50"] for m in inter["results"].values())
    skipped = run_scale([300], backends=["local"], n_queries=2, local_max=100, work_dir=tmp_path)
    assert skipped["runs"] == [{"backend": "local", "n": 300, "skipped": "n > --local-max 100"}]
    text = section_scale({"benchmark": "scale", "meta": {}, **result}, tmp_path)
    assert "| edge | 600 |" in text and "tiny-l2vg" in text and (tmp_path / "benchmarks_scale.png").is_file()
