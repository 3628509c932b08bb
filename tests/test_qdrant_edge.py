"""The Qdrant Edge backend and `l2vg export`, against real qdrant-edge-py and qdrant-client.

No server runs here: the export target is qdrant-client's local mode (``QdrantClient(path=)``),
the same client code that talks to a server, over its embedded engine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import QDRANT_CORPUS as CORPUS
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
    # Both thresholds at 1 KB: a graph is built, and searched (below the full-scan threshold,
    # 10 MB by default, Edge answers exactly whatever the index).
    store = EdgeStore(tmp_path, "h", indexing_threshold_kb=1, full_scan_threshold_kb=1)
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
# Dimension and fingerprint mismatches on both backends: tests/test_qdrant.py.
def test_foreign_collections_are_refused(tmp_path: Path, encoder: Any) -> None:
    with _edge(encoder, tmp_path, "c") as idx:
        idx.index(CORPUS[:3], show_progress=False)
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


def test_bench_scale_cli_on_a_checkpoint(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """`l2vg bench scale` through the real app, smallest settings: one size, both backends,
    a few queries, and the interactive run on the tiny checkpoint; its results file holds
    recall and latency for each backend run and end-to-end latency for each encoder."""
    from l2vg_retrieval.cli import app

    out = tmp_path / "results"
    args = [
        "bench", "scale", "--n", "50", "--backends", "local,edge", "--queries", "3",
        "--interactive-queries", "2", "-m", str(tiny_checkpoint), "--dtype", "float32",
        "--work-dir", str(tmp_path / "work"), "--out-dir", str(out), "--name", "s",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "s.json").read_text())
    assert (payload["vectors"]["kind"], payload["vectors"]["queries"], payload["k"]) == ("lowrank", 3, 10)
    runs = {(r["backend"], r["n"]): r for r in payload["runs"]}
    assert set(runs) == {("local", 50), ("edge", 50)}
    for row in runs.values():
        assert row["recall@10"] == 1.0 and row["recall@10_filtered"] == 1.0, row  # exact at this size
        assert row["filtered_results_obey_filter"] is True
        for key in ("search_ms", "search_filtered_ms"):
            assert 0 < row[key]["p50"] <= row[key]["p95"], (key, row)
        assert row["ingest_points_per_s"] > 0
    inter = payload["interactive"]
    assert (inter["backend"], inter["n"]) == ("edge", 50)
    assert set(inter["results"]) == {"l2vg-float32", "minilm"}
    for m in inter["results"].values():
        assert m["queries"] == 2 and 0 < m["search_ms"]["p50"] <= m["end_to_end_ms"]["p50"], m
    assert payload["model"]["dtype"] == "float32" and payload["model"]["untrained"] is False
    assert payload["engines"]["qdrant-edge-py"]
    bad = CliRunner().invoke(
        app, [*args[:5], "nope", "--no-interactive", "--out-dir", str(out), "--name", "bad"]
    )
    assert bad.exit_code == 2 and "unknown backend" in bad.output and not (out / "bad.json").exists()


def test_scale_benchmark_hnsw_recall_against_exact(tmp_path: Path) -> None:
    """The benchmark's own Edge path with a graph really built and searched (indexing and
    full-scan thresholds at 1 KB: by default Edge scans a collection this small exactly).

    Its default (``lowrank``) vectors reach recall@10 >= 0.9 against the exact numpy top 10,
    and Edge's exact search gives that top 10 back id for id, so the ids line up across
    the two result sets. The unit-Gaussian workload at the same size, dimension, ef and
    engine settings does not: it has no neighbour structure (its 10th and 11th cosines are
    nearly tied), which is what made Edge "score" 0.15 at 100k points. A graph that was
    never built, never searched, or fed the wrong distance would fail one of the two.
    """
    import inspect

    from l2vg_retrieval.bench import scale

    n, dim, ef = 2000, 384, 16
    assert inspect.signature(scale.run_scale).parameters["vectors"].default == "lowrank"

    def measure(kind: str) -> tuple[dict[str, Any], float]:
        data = scale._data(kind, n, dim, 0, np.empty((0, dim), dtype=np.float32), 0.0)
        if kind == "lowrank":
            queries = scale.lowrank_vectors(20, dim, 1, basis_seed=0)
        else:
            queries = scale.random_vectors(20, dim, 1)
        truth = scale.exact_top_k(data, queries, 10)
        row, store = scale.run_backend(
            "edge",
            data,
            queries,
            tmp_path / kind,
            truth=truth,
            truth_filtered=scale.exact_top_k(data, queries, 10, scale.filter_mask(n)),
            hnsw_efs=(ef,),
            indexing_threshold_kb=1,
            full_scan_threshold_kb=1,
            keep_open=True,
        )
        try:
            exact = [[int(p["doc_id"]) for _, _, p in store.query(q, None, 10, exact=True)] for q in queries]
        finally:
            store.close()
        assert row["index_status"]["indexed_vectors"] == n, row["index_status"]
        return row, scale.recall_at_k(exact, truth)

    row, exact_recall = measure("lowrank")
    assert exact_recall == 1.0
    assert row["recall@10"] >= 0.9 and row["recall@10_filtered"] >= 0.9, row
    stress, exact_recall = measure("random")
    assert exact_recall == 1.0
    assert stress["recall@10"] < 0.9, stress  # the graph answered, approximately
