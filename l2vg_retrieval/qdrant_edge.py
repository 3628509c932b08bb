"""Qdrant Edge (``qdrant-edge-py``): Qdrant's Rust engine in-process, as an embedded store.

The only module that imports ``qdrant_edge``. Edge is beta and its Python API changes
between minor versions, so the package pins one exact version and everything version-
specific lives here, behind the small store interface ``qdrant.py`` uses.

One collection is one folder, ``<path>/edge/<collection>/``:

- ``shard/``: the ``EdgeShard`` (segments, write-ahead log, ``edge_config.json``);
- ``l2vg.json``: the collection metadata (encoder fingerprint, dimension, screened flag).
  Edge has no collection metadata of its own; the file is only read or written while the
  shard is open, so the shard's lock also guards it.

Facts of qdrant-edge-py 0.9.0 that shape this module (each is checked by a test):

- HNSW is built only by ``optimize()``; until then search is exact over plain segments.
- A second ``EdgeShard`` on the same folder (this or another process) fails with a plain
  ``Exception`` mentioning ``WouldBlock``: turned into :class:`CollectionLockedError`.
- ``MatchValue(True)`` reaches the engine as the integer 1 and never matches a JSON
  boolean. Safe mode's exclusion is such a match, and it would silently exclude nothing.
  Every boolean in a payload is therefore mirrored as ``"<path>=true|false"`` strings in
  a hidden keyword field, and boolean matches are rewritten to match those strings. The
  field is stripped from everything read back.
- ``retrieve()`` requires ``with_vector``; ids come back as ``uuid.UUID`` or ``int``.
- Cosine vectors are stored normalised (as a Qdrant server does).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import models

try:
    import qdrant_edge as qe
except ImportError:  # the optional extra is missing: the layout helpers still work
    qe = None

from .qdrant import CollectionLockedError, CollectionMismatchError, StoredPoint

EDGE_VERSION = "0.9.0"
EDGE_DIR = "edge"
SHARD_DIR = "shard"
META_FILE = "l2vg.json"
# Hidden payload field mirroring every boolean as "path=true"/"path=false" (see module doc).
BOOL_FIELD = "_l2vg_bools"

DEFAULT_HNSW_M = 16
DEFAULT_EF_CONSTRUCT = 100
# Search ef: on random 384-d vectors (HNSW's worst case) at 10k points recall@10 was
# 0.66 / 0.84 / 0.97 at ef 128 / 256 / 512 for 1.2 / 1.3 / 1.9 ms CPU per query.
DEFAULT_HNSW_EF = 256
# Segments smaller than this (KB) stay plain (exact search); a few MB of vectors search
# exactly in well under a millisecond, so building a graph for them buys nothing.
DEFAULT_FULL_SCAN_THRESHOLD_KB = 10_000


def collection_dir(root: str | Path, collection: str) -> Path:
    return Path(root) / EDGE_DIR / collection


def collection_exists(root: str | Path, collection: str) -> bool:
    """Whether ``root`` holds an Edge collection of that name (without opening it)."""
    return (collection_dir(root, collection) / SHARD_DIR / "edge_config.json").is_file()


def list_collections(root: str | Path) -> list[str]:
    base = Path(root) / EDGE_DIR
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if collection_exists(root, p.name))


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc)
    return "WouldBlock" in text or "already contains segment data" in text


def _locked(folder: Path, exc: BaseException) -> CollectionLockedError:
    return CollectionLockedError(
        f"the Edge collection at {folder} is open in another process (or another indexer in this "
        "one): an embedded collection has one writer at a time. Close the other user, or run a "
        f"Qdrant server for concurrent access (see `l2vg export`). Engine said: {exc}"
    )


# ---------------------------------------------------------------------- booleans
def bool_tokens(payload: Mapping[str, Any]) -> list[str]:
    """``"path=true"``/``"path=false"`` for every boolean in a payload, in Qdrant key syntax."""
    out: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, bool):
            out.append(f"{path}={'true' if value else 'false'}")
        elif isinstance(value, Mapping):
            for key, inner in value.items():
                walk(inner, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list | tuple):
            for inner in value:
                # Scalars in an array match under the array's own key; objects under "key[]".
                walk(inner, f"{path}[]" if isinstance(inner, Mapping) else path)

    walk(payload, "")
    return sorted(set(out))


def _bool_token(key: str, value: bool) -> str:
    return f"{key}={'true' if value else 'false'}"


# ---------------------------------------------------------------------- filters
def _range(r: models.Range) -> qe.RangeFloat:
    return qe.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt)


def _field_condition(cond: models.FieldCondition) -> Any:
    key, match = cond.key, cond.match
    if match is not None:
        if isinstance(match, models.MatchValue):
            if isinstance(match.value, bool):
                return qe.FieldCondition(key=BOOL_FIELD, match=qe.MatchValue(_bool_token(key, match.value)))
            return qe.FieldCondition(key=key, match=qe.MatchValue(match.value))
        # MatchAny/MatchExcept hold strings or integers only (qdrant-client validates it).
        if isinstance(match, models.MatchAny):
            return qe.FieldCondition(key=key, match=qe.MatchAny(list(match.any)))
        if isinstance(match, models.MatchExcept):
            return qe.FieldCondition(key=key, match=qe.MatchExcept(list(match.except_)))
        if isinstance(match, models.MatchText):
            return qe.FieldCondition(key=key, match=qe.MatchText(match.text))
        raise ValueError(f"filter on '{key}': {type(match).__name__} is not supported by the Edge backend")
    if cond.range is not None:
        if not isinstance(cond.range, models.Range):
            raise ValueError(f"filter on '{key}': only numeric ranges are supported by the Edge backend")
        return qe.FieldCondition(key=key, range=_range(cond.range))
    if cond.values_count is not None:
        vc = cond.values_count
        return qe.FieldCondition(
            key=key, values_count=qe.ValuesCount(lt=vc.lt, gt=vc.gt, lte=vc.lte, gte=vc.gte)
        )
    if cond.is_empty is not None:
        return qe.FieldCondition(key=key, is_empty=cond.is_empty)
    if cond.is_null is not None:
        return qe.FieldCondition(key=key, is_null=cond.is_null)
    raise ValueError(f"filter on '{key}': this kind of field condition is not supported by the Edge backend")


def _condition(cond: Any) -> Any:
    if isinstance(cond, models.FieldCondition):
        return _field_condition(cond)
    if isinstance(cond, models.Filter):
        return translate_filter(cond)
    if isinstance(cond, models.IsEmptyCondition):
        return qe.IsEmptyCondition(key=cond.is_empty.key)
    if isinstance(cond, models.IsNullCondition):
        return qe.IsNullCondition(key=cond.is_null.key)
    if isinstance(cond, models.HasIdCondition):
        return qe.HasIdCondition(point_ids={_edge_id(i) for i in cond.has_id})
    if isinstance(cond, models.NestedCondition):
        return qe.NestedCondition(key=cond.nested.key, filter=translate_filter(cond.nested.filter))
    raise ValueError(f"{type(cond).__name__} filters are not supported by the Edge backend")


def _conditions(items: Any) -> list[Any] | None:
    if items is None:
        return None
    if not isinstance(items, list):
        items = [items]
    return [_condition(c) for c in items]


def translate_filter(spec: models.Filter | None) -> qe.Filter | None:
    """A qdrant-client filter (the library's filter language) as an Edge filter."""
    if spec is None:
        return None
    min_should = None
    if spec.min_should is not None:
        min_should = qe.MinShould(
            conditions=[_condition(c) for c in spec.min_should.conditions],
            min_count=spec.min_should.min_count,
        )
    return qe.Filter(
        must=_conditions(spec.must),
        should=_conditions(spec.should),
        must_not=_conditions(spec.must_not),
        min_should=min_should,
    )


# ---------------------------------------------------------------------- ids and payloads
def _edge_id(point_id: str | int) -> str | int:
    return point_id if isinstance(point_id, int) else str(point_id)


def _plain_id(point_id: Any) -> str:
    return str(point_id)


def _public_payload(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (payload or {}).items() if k != BOOL_FIELD}


def _stored_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    tokens = bool_tokens(payload)
    return {**payload, BOOL_FIELD: tokens} if tokens else dict(payload)


@functools.cache
def _check_version() -> None:
    from importlib import metadata

    installed = metadata.version("qdrant-edge-py")
    if installed != EDGE_VERSION:
        warnings.warn(
            f"qdrant-edge-py {installed} is installed; l2vg_retrieval is tested with {EDGE_VERSION} "
            "(Edge is beta and its API changes between versions)",
            RuntimeWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------- the store
class EdgeStore:
    """One Edge collection: the store interface ``QdrantIndexer`` and ``export`` use."""

    backend = "edge"

    def __init__(
        self,
        root: str | Path,
        collection: str,
        *,
        hnsw_m: int = DEFAULT_HNSW_M,
        ef_construct: int = DEFAULT_EF_CONSTRUCT,
        hnsw_ef: int | None = None,
        indexing_threshold_kb: int | None = None,
        full_scan_threshold_kb: int = DEFAULT_FULL_SCAN_THRESHOLD_KB,
    ) -> None:
        if str(root) == ":memory:":
            raise ValueError("the Edge backend stores collections in a folder; give path=<folder>")
        if qe is None:
            raise ImportError(
                f"backend='edge' needs qdrant-edge-py=={EDGE_VERSION}: pip install 'l2vg-retrieval[edge]'"
            )
        _check_version()
        self.root = Path(root)
        self.collection = collection
        self.folder = collection_dir(root, collection)
        self.hnsw_m = hnsw_m
        self.ef_construct = ef_construct
        self.hnsw_ef = hnsw_ef or DEFAULT_HNSW_EF
        # Segments below this many KB of vectors get no HNSW (engine default: 10 MB,
        # about 6,800 384-d vectors); only tests have a reason to lower it.
        self.indexing_threshold_kb = indexing_threshold_kb
        # A search whose candidates hold fewer KB of vectors than this scans them exactly,
        # graph or not; only tests (which need the graph searched at small N) lower it.
        self.full_scan_threshold_kb = full_scan_threshold_kb
        self._shard: Any = None
        if self.exists():
            self._shard = self._load()

    @property
    def location(self) -> str:
        return str(self.folder)

    # -------------------------------------------------------------- lifecycle
    def _load(self) -> Any:
        try:
            return qe.EdgeShard.load(str(self.folder / SHARD_DIR))
        except Exception as exc:
            if _is_lock_error(exc):
                raise _locked(self.folder, exc) from None
            raise

    @property
    def shard(self) -> Any:
        if self._shard is None:
            raise RuntimeError(f"Edge collection '{self.collection}' is not open")
        return self._shard

    def exists(self) -> bool:
        return collection_exists(self.root, self.collection)

    def create(self, dim: int, meta: dict[str, Any]) -> None:
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(
                m=self.hnsw_m,
                ef_construct=self.ef_construct,
                full_scan_threshold=self.full_scan_threshold_kb,
            ),
            optimizers=(
                qe.EdgeOptimizersConfig(indexing_threshold=self.indexing_threshold_kb)
                if self.indexing_threshold_kb is not None
                else None
            ),
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._shard = qe.EdgeShard.create(str(self.folder / SHARD_DIR), config)
        except Exception as exc:
            if _is_lock_error(exc):  # another process created it between our check and now
                raise _locked(self.folder, exc) from None
            raise
        # The hidden boolean field is filtered on by safe mode: index it so the planner
        # can estimate its cardinality instead of scanning payloads.
        self._shard.update(qe.UpdateOperation.create_field_index(BOOL_FIELD, qe.PayloadSchemaType.Keyword))
        self.write_meta(meta)

    def drop(self) -> None:
        self.close()
        if self.folder.exists():
            shutil.rmtree(self.folder)

    def close(self) -> None:
        if self._shard is not None:
            shard, self._shard = self._shard, None
            shard.close()

    # -------------------------------------------------------------- metadata
    def vector_params(self) -> tuple[int, str]:
        """(size, distance) of the unnamed vector, from the shard's own persisted config."""
        config = json.loads((self.folder / SHARD_DIR / "edge_config.json").read_text())
        vectors = config.get("vectors") or {}
        if set(vectors) != {""}:
            raise CollectionMismatchError(
                f"Edge collection '{self.collection}' uses named vectors {sorted(vectors)}; "
                "l2vg collections have one unnamed vector"
            )
        return int(vectors[""]["size"]), str(vectors[""]["distance"])

    def read_meta(self) -> dict[str, Any] | None:
        path = self.folder / META_FILE
        if not path.is_file():
            return None
        return dict(json.loads(path.read_text()))

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.shard  # noqa: B018 - only the holder of the shard may write its metadata
        path = self.folder / META_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)

    # -------------------------------------------------------------- points
    def count(self, query_filter: models.Filter | None = None) -> int:
        return int(self.shard.count(qe.CountRequest(exact=True, filter=translate_filter(query_filter))))

    def existing(self, ids: Sequence[str | int]) -> set[str]:
        records = self.shard.retrieve([_edge_id(i) for i in ids], False, False)
        return {_plain_id(r.id) for r in records}

    def upsert(
        self, ids: Sequence[str | int], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        points = [
            qe.Point(
                id=_edge_id(i), vector=np.asarray(v, dtype=np.float32).tolist(), payload=_stored_payload(p)
            )
            for i, v, p in zip(ids, vectors, payloads, strict=True)
        ]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def _request(
        self,
        vector: np.ndarray,
        query_filter: models.Filter | None,
        limit: int,
        score_threshold: float | None,
        exact: bool,
    ) -> Any:
        return qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist()),
            filter=translate_filter(query_filter),
            with_payload=True,
            with_vector=False,
            score_threshold=score_threshold,
            params=qe.SearchParams(hnsw_ef=self.hnsw_ef, exact=exact),
        )

    def query(
        self,
        vector: np.ndarray,
        query_filter: models.Filter | None,
        limit: int,
        score_threshold: float | None = None,
        *,
        exact: bool = False,
    ) -> list[tuple[str, float, dict[str, Any]]]:
        points = self.shard.query(self._request(vector, query_filter, limit, score_threshold, exact))
        return [(_plain_id(p.id), float(p.score), _public_payload(p.payload)) for p in points]

    def query_batch(
        self, vectors: np.ndarray, filters: Sequence[models.Filter | None], limit: int, *, exact: bool = False
    ) -> list[list[tuple[str, float, dict[str, Any]]]]:
        requests = [self._request(v, f, limit, None, exact) for v, f in zip(vectors, filters, strict=True)]
        batches = self.shard.query_batch(qe.QueryBatchRequest(requests))
        return [[(_plain_id(p.id), float(p.score), _public_payload(p.payload)) for p in b] for b in batches]

    def delete_ids(self, ids: Sequence[str | int]) -> None:
        self.shard.update(qe.UpdateOperation.delete_points([_edge_id(i) for i in ids]))

    def delete_filter(self, query_filter: models.Filter) -> None:
        translated = translate_filter(query_filter)
        self.shard.update(qe.UpdateOperation.delete_points_by_filter(translated))

    def create_index(self, key: str, kind: str) -> None:
        if kind == "bool":
            return  # booleans are matched through the hidden field, which is indexed already
        schema = {
            "keyword": qe.PayloadSchemaType.Keyword,
            "integer": qe.PayloadSchemaType.Integer,
            "float": qe.PayloadSchemaType.Float,
        }[kind]
        self.shard.update(qe.UpdateOperation.create_field_index(key, schema))

    def scroll(self, offset: Any, limit: int, *, with_vectors: bool = True) -> tuple[list[StoredPoint], Any]:
        records, next_offset = self.shard.scroll(
            qe.ScrollRequest(offset=offset, limit=limit, with_payload=True, with_vector=with_vectors)
        )
        points = [
            StoredPoint(
                id=_plain_id(r.id),
                payload=_public_payload(r.payload),
                vector=list(r.vector) if with_vectors and r.vector is not None else None,
            )
            for r in records
        ]
        return points, next_offset

    def optimize(self) -> bool:
        """Merge segments and build HNSW; blocks until done. Persisted with a flush."""
        changed = bool(self.shard.optimize())
        self.shard.flush()
        return changed

    def index_status(self) -> dict[str, int]:
        info = self.shard.info()
        return {
            "points": int(info.points_count),
            "indexed_vectors": int(info.indexed_vectors_count),
            "segments": int(info.segments_count),
        }
