"""QdrantIndexer: stream documents through an encoder into a Qdrant collection, and search it.

Three places a collection can live, one API:

- ``backend="local"``: qdrant-client's embedded mode (a folder or ``:memory:``), exact
  search in Python; simplest, fine up to tens of thousands of points;
- ``backend="edge"``: Qdrant Edge, Qdrant's Rust engine in-process (HNSW, payload
  indexes, a write-ahead log), in a folder (``qdrant_edge.py``, the only module that
  touches it);
- ``url=``: a Qdrant server or cluster, through ``QdrantClient``.

The indexer talks to a small *store* (``ClientStore`` here, ``EdgeStore`` there): filters
stay qdrant-client ``models.Filter`` everywhere and Edge translates them.

The encoder's identity lives in Qdrant's own *collection metadata* (``create_collection(
metadata=...)``, stored by local mode and by servers >= 1.16; Edge has none, so an
``l2vg.json`` beside the shard holds it). A reserved "meta point" was the alternative; it
was rejected because every other reader of the collection (LangChain, LlamaIndex, a
dashboard) would see it as a document in searches and counts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from qdrant_client import QdrantClient, models

from .inputs import clean_text

META_KEY = "l2vg"
META_FORMAT = 1
TEXT_KEY = "text"
METADATA_KEY = "metadata"
DOC_ID_KEY = "doc_id"
HARM_FLAG_KEY = "l2vg_harm_flagged"
# Fixed namespace: the same document id maps to the same point id on every machine.
_ID_NAMESPACE = uuid.UUID("5f0c2a53-6d1e-4c39-9b55-2f6c1e8a7d41")
_MAX_REASONS = 100

Backend = Literal["local", "edge"]
BACKENDS: tuple[str, ...] = ("local", "edge")
# The embedded engine for collections that do not exist yet (existing ones are opened
# with the engine that holds them). Local mode stays the default: collections made with
# path= keep their ``.client``, and Edge is a beta binding (pinned; its boolean matches
# needed a workaround). Edge is the one to choose past ~20k points: the README's
# "Large corpora" has the measurements.
DEFAULT_BACKEND: Backend = "local"


class CollectionMismatchError(ValueError):
    """The collection was built with another encoder, dimension or distance (or screened with
    another safety calibration)."""


class CollectionNotFoundError(LookupError):
    """Searching a collection that does not exist."""


class CollectionLockedError(RuntimeError):
    """An embedded collection is already open in another process (or another indexer)."""


@dataclass(frozen=True)
class StoredPoint:
    """A point as stored: its Qdrant id, its payload and (when asked for) its vector."""

    id: str
    payload: dict[str, Any]
    vector: list[float] | None = None


ScoredTuple = tuple[str, float, dict[str, Any]]
IndexKind = Literal["keyword", "integer", "float", "bool"]
_INDEX_KINDS: dict[str, models.PayloadSchemaType] = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
}


class SafetyScreen(Protocol):
    """What safe mode needs from a safety component (implemented in ``safety.py``)."""

    def screen_documents(self, texts: list[str]) -> list[dict[str, Any]]: ...

    def check_query(
        self, query: str, instruction: str | None, *, embedding: Any = None, answer_features: Any = None
    ) -> Any: ...


@dataclass(frozen=True)
class InvalidDocument:
    """A source item that could not be read; the indexer counts it with its reason."""

    ref: str
    reason: str


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any]


class SearchResults(list[Hit]):
    """Hits, best first. ``blocked`` with a ``reason`` means safe mode refused the query."""

    def __init__(self, hits: Iterable[Hit] = (), *, blocked: bool = False, reason: str | None = None):
        super().__init__(hits)
        self.blocked = blocked
        self.reason = reason


@dataclass
class IndexReport:
    indexed: int = 0
    skipped_existing: int = 0
    skipped_duplicate: int = 0
    skipped_invalid: int = 0
    invalid: list[InvalidDocument] = field(default_factory=list)  # first 100 reasons
    encode_seconds: float = 0.0
    qdrant_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "indexed": self.indexed,
            "skipped_existing": self.skipped_existing,
            "skipped_duplicate": self.skipped_duplicate,
            "skipped_invalid": self.skipped_invalid,
            "invalid": [{"ref": d.ref, "reason": d.reason} for d in self.invalid],
            "encode_seconds": round(self.encode_seconds, 3),
            "qdrant_seconds": round(self.qdrant_seconds, 3),
        }

    def _skip(self, ref: str, reason: str) -> None:
        self.skipped_invalid += 1
        if len(self.invalid) < _MAX_REASONS:
            self.invalid.append(InvalidDocument(ref, reason))


@dataclass(frozen=True)
class _Doc:
    point_id: str
    doc_id: str | None
    text: str
    metadata: dict[str, Any]


def point_id(doc_id: str | int | None = None, text: str | None = None) -> str:
    """The Qdrant point id of a document: uuid5 of its id, or of its text when it has none."""
    if doc_id is not None:
        return str(uuid.uuid5(_ID_NAMESPACE, f"id:{doc_id}"))
    if text is None:
        raise ValueError("point_id needs a document id or a text")
    return str(uuid.uuid5(_ID_NAMESPACE, f"text:{text}"))


def default_path() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("l2vg_retrieval")) / "qdrant"


def _normalise(item: Any, position: int) -> _Doc | InvalidDocument:
    """Accept a str, a dict (id/text/metadata, other keys join metadata) or a LangChain Document."""
    ref = f"#{position}"
    if isinstance(item, InvalidDocument):
        return item
    doc_id: Any = None
    metadata: Any = {}
    if isinstance(item, str):
        text: Any = item
    elif isinstance(item, Mapping):
        doc_id = item.get("id")
        text = item.get("text", item.get("page_content"))
        metadata = dict(item.get("metadata") or {}) if isinstance(item.get("metadata", {}), Mapping) else None
        if metadata is None:
            return InvalidDocument(ref, "'metadata' must be a mapping")
        extra = {k: v for k, v in item.items() if k not in ("id", "text", "page_content", "metadata")}
        metadata = {**extra, **metadata}
    elif hasattr(item, "page_content") and hasattr(item, "metadata"):
        doc_id = getattr(item, "id", None)
        text, metadata = item.page_content, dict(item.metadata or {})
    else:
        return InvalidDocument(ref, f"unsupported document type {type(item).__name__}")
    if doc_id is not None:
        if isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
            return InvalidDocument(ref, f"id must be a string or an integer, got {type(doc_id).__name__}")
        doc_id = str(doc_id)
        ref = doc_id
    if not isinstance(text, str):
        return InvalidDocument(ref, "text is missing" if text is None else f"text is {type(text).__name__}")
    if not clean_text(text).strip():
        return InvalidDocument(ref, "text is empty or whitespace/control characters only")
    return _Doc(point_id(doc_id, text), doc_id, text, metadata)


def build_filter(spec: Mapping[str, Any] | models.Filter | None) -> models.Filter | None:
    """Metadata filters: ``{"lang": "en", "tag": ["a", "b"], "year": {"gte": 2000}}``.

    Scalars match exactly, lists match any, a dict of gt/gte/lt/lte is a range; all keys
    must hold. A ready ``models.Filter`` passes through unchanged.
    """
    if spec is None or isinstance(spec, models.Filter):
        return spec
    if not isinstance(spec, Mapping):
        raise TypeError(f"filter must be a dict or a qdrant_client.models.Filter, got {type(spec).__name__}")
    must: list[models.Condition] = []
    for key, value in spec.items():
        qkey = f"{METADATA_KEY}.{key}"
        if isinstance(value, Mapping):
            unknown = set(value) - {"gt", "gte", "lt", "lte"}
            if unknown:
                raise ValueError(f"filter on '{key}': unknown range operators {sorted(unknown)}")
            must.append(models.FieldCondition(key=qkey, range=models.Range(**value)))
        elif isinstance(value, list | tuple | set):
            must.append(models.FieldCondition(key=qkey, match=models.MatchAny(any=list(value))))
        elif isinstance(value, str | int | bool):
            must.append(models.FieldCondition(key=qkey, match=models.MatchValue(value=value)))
        else:
            raise TypeError(f"filter on '{key}': unsupported value type {type(value).__name__}")
    return models.Filter(must=must)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------------- stores
class ClientStore:
    """One collection behind ``QdrantClient``: embedded local mode or a server."""

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        *,
        backend: str,
        owns_client: bool,
        hnsw_ef: int | None = None,
    ) -> None:
        self.client = client
        self.collection = collection
        self.backend = backend
        self.owns_client = owns_client
        self.hnsw_ef = hnsw_ef

    @property
    def location(self) -> str:
        return self.backend

    def exists(self) -> bool:
        return self.client.collection_exists(self.collection)

    def create(self, dim: int, meta: dict[str, Any]) -> None:
        self.client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
            metadata={META_KEY: meta},
        )

    def drop(self) -> None:
        self.client.delete_collection(self.collection)

    def vector_params(self) -> tuple[int, str]:
        vectors = self.client.get_collection(self.collection).config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            raise CollectionMismatchError(
                f"collection '{self.collection}' uses named vectors {sorted(vectors or {})}; "
                "l2vg collections have one unnamed vector"
            )
        return int(vectors.size), str(vectors.distance.value)

    def read_meta(self) -> dict[str, Any] | None:
        stored = (self.client.get_collection(self.collection).config.metadata or {}).get(META_KEY)
        return None if stored is None else dict(stored)

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.client.update_collection(self.collection, metadata={META_KEY: meta})

    def count(self, query_filter: models.Filter | None = None) -> int:
        return self.client.count(self.collection, count_filter=query_filter, exact=True).count

    def existing(self, ids: Sequence[str | int]) -> set[str]:
        present = self.client.retrieve(self.collection, list(ids), with_payload=False, with_vectors=False)
        return {str(p.id) for p in present}

    def upsert(
        self, ids: Sequence[str | int], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
    ) -> None:
        points = [
            models.PointStruct(id=i, vector=np.asarray(v, dtype=np.float32).tolist(), payload=p)
            for i, v, p in zip(ids, vectors, payloads, strict=True)
        ]
        self.client.upsert(self.collection, points, wait=True)

    def _params(self, exact: bool) -> models.SearchParams | None:
        # Local mode is always exact and warns about search params it cannot use.
        if self.backend == "local" or (not exact and self.hnsw_ef is None):
            return None
        return models.SearchParams(hnsw_ef=self.hnsw_ef, exact=exact)

    def query(
        self,
        vector: np.ndarray,
        query_filter: models.Filter | None,
        limit: int,
        score_threshold: float | None = None,
        *,
        exact: bool = False,
    ) -> list[ScoredTuple]:
        response = self.client.query_points(
            self.collection,
            query=np.asarray(vector, dtype=np.float32).tolist(),
            query_filter=query_filter,
            limit=limit,
            with_payload=True,
            score_threshold=score_threshold,
            search_params=self._params(exact),
        )
        return [(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def query_batch(
        self, vectors: np.ndarray, filters: Sequence[models.Filter | None], limit: int, *, exact: bool = False
    ) -> list[list[ScoredTuple]]:
        requests = [
            models.QueryRequest(
                query=np.asarray(v, dtype=np.float32).tolist(),
                filter=f,
                limit=limit,
                with_payload=True,
                params=self._params(exact),
            )
            for v, f in zip(vectors, filters, strict=True)
        ]
        responses = self.client.query_batch_points(self.collection, requests)
        return [[(str(p.id), float(p.score), dict(p.payload or {})) for p in r.points] for r in responses]

    def delete_ids(self, ids: Sequence[str | int]) -> None:
        self.client.delete(self.collection, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def delete_filter(self, query_filter: models.Filter) -> None:
        self.client.delete(
            self.collection, points_selector=models.FilterSelector(filter=query_filter), wait=True
        )

    def create_index(self, key: str, kind: str) -> None:
        if self.backend == "local":
            return  # local mode scans every payload; it would only warn that indexes do nothing
        self.client.create_payload_index(self.collection, key, field_schema=_INDEX_KINDS[kind], wait=True)

    def scroll(self, offset: Any, limit: int, *, with_vectors: bool = True) -> tuple[list[StoredPoint], Any]:
        records, next_offset = self.client.scroll(
            self.collection, limit=limit, offset=offset, with_payload=True, with_vectors=with_vectors
        )
        points = [
            StoredPoint(
                id=str(r.id),
                payload=dict(r.payload or {}),
                vector=list(r.vector) if with_vectors and isinstance(r.vector, list) else None,
            )
            for r in records
        ]
        return points, next_offset

    def optimize(self) -> bool:
        return False  # local mode has no index to build; a server optimises by itself

    def close(self) -> None:
        if self.owns_client:
            self.client.close()


def local_collection_exists(folder: str | Path, collection: str) -> bool:
    """Whether a qdrant-client local-mode folder holds that collection, without opening
    (and so locking) the folder: local mode keeps each collection in ``collection/<name>/``."""
    return (Path(folder) / "collection" / collection).is_dir()


def open_local_client(folder: str | Path) -> QdrantClient:
    """qdrant-client local mode on a folder; a folder held by another process is a clear error."""
    if str(folder) == ":memory:":
        return QdrantClient(location=":memory:")
    Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        return QdrantClient(path=str(folder))
    except RuntimeError as exc:
        if "already accessed" in str(exc):
            raise CollectionLockedError(
                f"the embedded Qdrant folder {folder} is open in another process: local mode allows one "
                "process per folder. Close the other user, or run a Qdrant server for concurrent "
                "access (see `l2vg export`)"
            ) from None
        raise


def resolve_backend(folder: str | Path, collection: str, backend: str | None) -> str:
    """The embedded engine for ``collection`` in ``folder``: the one asked for, else the one
    that already holds it, else :data:`DEFAULT_BACKEND`."""
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        return backend
    if str(folder) == ":memory:":
        return "local"
    from . import qdrant_edge

    in_local = local_collection_exists(folder, collection)
    in_edge = qdrant_edge.collection_exists(folder, collection)
    if in_local and in_edge:
        raise ValueError(
            f"'{collection}' exists in {folder} both as a local-mode and as an Edge collection; "
            "choose one with backend='local' or backend='edge'"
        )
    if in_local:
        return "local"
    if in_edge:
        return "edge"
    return DEFAULT_BACKEND


def open_store(
    collection: str,
    *,
    path: str | Path | None = None,
    url: str | None = None,
    api_key: str | None = None,
    client: QdrantClient | None = None,
    backend: str | None = None,
    timeout: int | None = None,
    hnsw_ef: int | None = None,
) -> ClientStore | Any:
    """The store for a collection: a given client, a server (``url=``) or an embedded folder."""
    if sum(x is not None for x in (path, url, client)) > 1:
        raise ValueError("give at most one of path=, url= or client=")
    if api_key is not None and url is None:
        raise ValueError("api_key= only applies to a server given by url=")
    if backend == "edge" and (url is not None or client is not None):
        raise ValueError("backend='edge' is embedded: give path=, not url= or client=")
    if client is not None:
        return ClientStore(client, collection, backend="client", owns_client=False, hnsw_ef=hnsw_ef)
    if url is not None:
        server = QdrantClient(url=url, api_key=api_key, timeout=timeout)
        return ClientStore(server, collection, backend="server", owns_client=True, hnsw_ef=hnsw_ef)
    folder: str | Path = path if path is not None else default_path()
    chosen = resolve_backend(folder, collection, backend)
    if chosen == "edge":
        from .qdrant_edge import EdgeStore

        return EdgeStore(folder, collection, hnsw_ef=hnsw_ef)
    return ClientStore(open_local_client(folder), collection, backend="local", owns_client=True)


def open_collection(
    store: Any, wanted: dict[str, Any], *, create: bool = True, recreate: bool = False
) -> dict[str, Any]:
    """Create the collection with ``wanted`` metadata, or check that the existing one holds
    vectors of the same space (dimension, distance, encoder fingerprint); its metadata."""
    name = store.collection
    exists = store.exists()
    if exists and recreate:
        store.drop()
        exists = False
    if not exists:
        if not create:
            raise CollectionNotFoundError(
                f"collection '{name}' does not exist; index documents into it first"
            )
        store.create(wanted["dim"], wanted)
        return _read_back_meta(store)
    size, distance = store.vector_params()
    if size != wanted["dim"]:
        raise CollectionMismatchError(
            f"collection '{name}' holds {size}-d vectors but the encoder "
            f"produces {wanted['dim']}-d vectors: use the encoder it was built with (at the same "
            "Matryoshka truncate_dim) or another collection"
        )
    if distance != models.Distance.COSINE.value:
        raise CollectionMismatchError(f"collection '{name}' uses {distance} distance, l2vg needs Cosine")
    stored = store.read_meta()
    if stored is None:
        if store.count():
            raise CollectionMismatchError(
                f"collection '{name}' has points but no l2vg metadata: it was not built by "
                "l2vg, so its vectors cannot be trusted to share this encoder's space"
            )
        store.write_meta(wanted)
        return _read_back_meta(store)
    if stored.get("fingerprint") != wanted["fingerprint"]:
        raise CollectionMismatchError(
            f"collection '{name}' was built with encoder {stored.get('model')} "
            f"(fingerprint {stored.get('fingerprint')}), but this encoder has fingerprint "
            f"{wanted['fingerprint']}: its vectors live in another space"
        )
    return dict(stored)


def _read_back_meta(store: Any) -> dict[str, Any]:
    stored = store.read_meta()
    if stored is None:
        raise RuntimeError(
            "the Qdrant server did not keep the collection metadata (needs Qdrant >= 1.16); "
            "upgrade the server so encoder mismatches can be detected"
        )
    return stored


# ---------------------------------------------------------------------- the indexer
class QdrantIndexer:
    """Index documents with an l2vg encoder into one Qdrant collection and search it.

    Where the collection lives: ``url=`` a server; ``client=`` a ready ``QdrantClient``;
    otherwise an embedded folder (``path=``, default: the user data dir) with
    ``backend="edge"`` (Qdrant Edge, HNSW) or ``"local"`` (qdrant-client local mode, exact
    search, also ``path=":memory:"``). Without ``backend=`` an existing collection is opened
    with the engine that holds it and a new one gets :data:`DEFAULT_BACKEND`.
    """

    def __init__(
        self,
        encoder: Any,
        collection: str,
        *,
        path: str | Path | None = None,
        url: str | None = None,
        api_key: str | None = None,
        client: QdrantClient | None = None,
        backend: Backend | None = None,
        create: bool = True,
        recreate: bool = False,
        batch_size: int = 64,
        safety: SafetyScreen | None = None,
        timeout: int | None = None,
        hnsw_ef: int | None = None,
    ) -> None:
        if not isinstance(collection, str) or not collection.strip():
            raise ValueError("collection must be a non-empty string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if hnsw_ef is not None and hnsw_ef < 1:
            raise ValueError(f"hnsw_ef must be >= 1, got {hnsw_ef}")
        self.encoder = encoder
        self.collection = collection
        self.batch_size = batch_size
        self.safety = safety
        self.store = open_store(
            collection,
            path=path,
            url=url,
            api_key=api_key,
            client=client,
            backend=backend,
            timeout=timeout,
            hnsw_ef=hnsw_ef,
        )
        self.backend: str = self.store.backend
        try:
            self.meta = open_collection(self.store, self._encoder_meta(), create=create, recreate=recreate)
        except BaseException:
            # An embedded store locks its folder until close(): a refused open must not keep it locked.
            self.close()
            raise

    @property
    def client(self) -> QdrantClient:
        """The ``QdrantClient`` behind a local-mode or server collection."""
        if not isinstance(self.store, ClientStore):
            raise AttributeError(
                "an Edge collection has no QdrantClient: use the indexer's own methods, or "
                "`l2vg export` to copy it into a server"
            )
        return self.store.client

    # ------------------------------------------------------------------ collection
    def _encoder_meta(self) -> dict[str, Any]:
        config = getattr(self.encoder, "config", None)
        return {
            "format": META_FORMAT,
            # Baselines have no fingerprint; their name identifies their (fixed) vector space.
            "fingerprint": str(getattr(self.encoder, "fingerprint", None) or self.encoder.name),
            "dim": int(self.encoder.dim),
            "model": getattr(config, "backbone", None) or getattr(self.encoder, "name", None),
            "document_mode": getattr(config, "document_mode", None),
            "screened": False,
        }

    def _set_meta(self, **changes: Any) -> None:
        if all(self.meta.get(k) == v for k, v in changes.items()):
            return
        self.meta = {**self.meta, **changes}
        self.store.write_meta(self.meta)

    # ------------------------------------------------------------------ indexing
    def index(
        self,
        documents: Iterable[Any],
        *,
        overwrite: bool = False,
        show_progress: bool | None = None,
        encode_batch_size: int | None = None,
        optimize: bool = True,
    ) -> IndexReport:
        """Encode and upload documents in chunks of ``batch_size``, in constant memory.

        Ids already in the collection are skipped (so an interrupted run resumes where it
        stopped) unless ``overwrite`` re-encodes them. Empty or malformed documents are
        skipped and counted with a reason. On Edge, ``optimize`` builds the HNSW index once
        the whole run is in (pass False when several ``index`` calls follow each other,
        then call :meth:`optimize` once).
        """
        if isinstance(documents, str | bytes) or not isinstance(documents, Iterable):
            raise TypeError("documents must be an iterable of documents (a single str is not)")
        from tqdm.auto import tqdm

        total = len(documents) if isinstance(documents, Sized) else None
        report = IndexReport()
        # Screened means every point carries a harm score: only true if screening covers them all,
        # and all with one calibration (flags under two would mean two different things).
        if self.safety is not None and self.count() == 0:
            self._set_meta(screened=True, screened_by=_safety_name(self.safety))
        elif self.safety is not None and self.meta.get("screened"):
            _check_same_screen(self.collection, self.meta.get("screened_by"), _safety_name(self.safety))
        elif self.safety is None and self.meta.get("screened"):
            self._set_meta(screened=False)
        seen: set[str] = set()  # point ids in this run; bounded by corpus size, not by text size
        bar = tqdm(total=total, desc=f"index {self.collection}", unit="doc", disable=show_progress is False)
        try:
            for raw_chunk in _chunks(enumerate(documents), self.batch_size):
                self._index_chunk(raw_chunk, report, seen, overwrite, encode_batch_size)
                bar.update(len(raw_chunk))
        finally:
            bar.close()
        if optimize and report.indexed:
            started = time.perf_counter()
            self.optimize()
            report.qdrant_seconds += time.perf_counter() - started
        return report

    def optimize(self) -> bool:
        """Build the search index now (Edge: merge segments, build HNSW; others: nothing).

        Search works before this (exactly, over unindexed segments), only slower at scale.
        """
        return bool(self.store.optimize())

    def _index_chunk(
        self,
        raw_chunk: list[tuple[int, Any]],
        report: IndexReport,
        seen: set[str],
        overwrite: bool,
        encode_batch_size: int | None,
    ) -> None:
        docs: list[_Doc] = []
        for position, item in raw_chunk:
            doc = _normalise(item, position)
            if isinstance(doc, InvalidDocument):
                report._skip(doc.ref, doc.reason)
            elif doc.point_id in seen:
                report.skipped_duplicate += 1
            else:
                seen.add(doc.point_id)
                docs.append(doc)
        if not docs:
            return
        if not overwrite:
            started = time.perf_counter()
            existing = self.store.existing([d.point_id for d in docs])
            report.qdrant_seconds += time.perf_counter() - started
            report.skipped_existing += sum(d.point_id in existing for d in docs)
            docs = [d for d in docs if d.point_id not in existing]
            if not docs:
                return
        texts = [d.text for d in docs]
        started = time.perf_counter()
        vectors = np.asarray(
            self.encoder.encode_document(
                texts, batch_size=encode_batch_size or self.batch_size, show_progress_bar=False
            ),
            dtype=np.float32,
        )
        extra: list[dict[str, Any]] = [{} for _ in docs]
        if self.safety is not None:
            extra = self.safety.screen_documents(texts)
            if len(extra) != len(docs):
                raise RuntimeError(
                    f"safety.screen_documents returned {len(extra)} results for {len(docs)} texts"
                )
        report.encode_seconds += time.perf_counter() - started
        payloads = [
            {TEXT_KEY: d.text, METADATA_KEY: d.metadata, DOC_ID_KEY: d.doc_id, **screen}
            for d, screen in zip(docs, extra, strict=True)
        ]
        started = time.perf_counter()
        self.store.upsert([d.point_id for d in docs], vectors, payloads)
        report.qdrant_seconds += time.perf_counter() - started
        report.indexed += len(docs)

    # ------------------------------------------------------------------ search
    def _safe_filter(
        self,
        query: str,
        instruction: str | None,
        query_filter: models.Filter | None,
        embedding: np.ndarray,
        answer_features: np.ndarray | None = None,
    ) -> tuple[models.Filter | None, SearchResults | None]:
        """Safe mode: refuse the query, or exclude flagged documents from the filter.

        The gate reads the same query embedding the search uses (and, with the backbone's
        refusal signal, answer features from that same pass), so safe mode costs no second
        forward pass.
        """
        if self.safety is None:
            raise ValueError("safe=True needs a safety component: QdrantIndexer(..., safety=...)")
        if not self.meta.get("screened"):
            raise ValueError(
                f"collection '{self.collection}' was not fully screened at index time; re-index it "
                "with QdrantIndexer(..., safety=...) into an empty collection to use safe=True"
            )
        extra = {} if answer_features is None else {"answer_features": answer_features}
        decision = self.safety.check_query(query, instruction, embedding=embedding, **extra)
        if decision.blocked:
            return None, SearchResults([], blocked=True, reason=decision.reason)
        flagged = models.FieldCondition(key=HARM_FLAG_KEY, match=models.MatchValue(value=True))
        base = query_filter or models.Filter()
        return base.model_copy(update={"must_not": [*(base.must_not or []), flagged]}), None

    def _encode_queries(
        self, queries: list[str], instruction: str | None, *, safe: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Query vectors ``[N, D]`` and, when safe mode's gate reads the query's forward pass
        (the backbone's refusal signal, a middle layer's state), those features from the
        same pass."""
        if safe and getattr(self.safety, "needs_answer_states", False):
            # The filter knows which states its gate reads (signal, probe layer) and how.
            emb, features = self.safety.encode_queries(queries, instruction)  # type: ignore[union-attr]
            return np.asarray(emb, dtype=np.float32), features
        emb = self.encoder.encode_query(queries, instruction=instruction, show_progress_bar=False)
        return np.atleast_2d(np.asarray(emb, dtype=np.float32)), None

    def _check_query(self, query: Any, k: int) -> None:
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__}")
        if not query.strip():
            raise ValueError("query is empty")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")

    def search(
        self,
        query: str,
        k: int = 10,
        filter: Mapping[str, Any] | models.Filter | None = None,
        instruction: str | None = None,
        *,
        safe: bool = False,
        score_threshold: float | None = None,
    ) -> SearchResults:
        """The ``k`` documents nearest to the query's generative embedding."""
        self._check_query(query, k)
        query_filter = build_filter(filter)
        vectors, answers = self._encode_queries([query], instruction, safe=safe)
        vector = vectors[0]
        if safe:
            answer = None if answers is None else answers[0]
            query_filter, refused = self._safe_filter(query, instruction, query_filter, vector, answer)
            if refused is not None:
                return refused
        scored = self.store.query(np.asarray(vector, dtype=np.float32), query_filter, k, score_threshold)
        return SearchResults(_hit(*s) for s in scored)

    def search_batch(
        self,
        queries: Sequence[str],
        k: int = 10,
        filter: Mapping[str, Any] | models.Filter | None = None,
        instruction: str | None = None,
        *,
        safe: bool = False,
    ) -> list[SearchResults]:
        """Several queries: one encoder batch and one Qdrant round trip."""
        if isinstance(queries, str):
            raise TypeError("search_batch takes a list of queries; use search() for one")
        queries = list(queries)
        for q in queries:
            self._check_query(q, k)
        if not queries:
            return []
        base_filter = build_filter(filter)
        vectors, answers = self._encode_queries(queries, instruction, safe=safe)
        results: list[SearchResults | None] = [None] * len(queries)
        filters: list[models.Filter | None] = [base_filter] * len(queries)
        if safe:
            for i, q in enumerate(queries):
                answer = None if answers is None else answers[i]
                filters[i], results[i] = self._safe_filter(q, instruction, base_filter, vectors[i], answer)
        todo = [i for i, r in enumerate(results) if r is None]
        if todo:
            batches = self.store.query_batch(vectors[todo], [filters[i] for i in todo], k)
            for i, scored in zip(todo, batches, strict=True):
                results[i] = SearchResults(_hit(*s) for s in scored)
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ maintenance
    def count(self, filter: Mapping[str, Any] | models.Filter | None = None) -> int:
        return self.store.count(build_filter(filter))

    def delete(
        self,
        ids: Sequence[str | int] | None = None,
        *,
        filter: Mapping[str, Any] | models.Filter | None = None,
    ) -> None:
        """Delete by document id (as given at index time) or by metadata filter."""
        if (ids is None) == (filter is None):
            raise ValueError("delete needs exactly one of ids= or filter=")
        if ids is not None:
            if isinstance(ids, str | int):
                ids = [ids]
            self.store.delete_ids([point_id(i) for i in ids])
        else:
            built = build_filter(filter)
            assert built is not None
            self.store.delete_filter(built)

    def index_metadata(self, key: str, kind: IndexKind) -> None:
        """Index a metadata field for filtered search (a server or Edge; local mode scans).

        Worth it for fields you filter on in large collections: the engine then estimates
        how many points pass a filter and picks graph search or a scan of just those.
        """
        if kind not in _INDEX_KINDS:
            raise ValueError(f"kind must be one of {', '.join(_INDEX_KINDS)}, got {kind!r}")
        if not isinstance(key, str) or not key.strip():
            raise ValueError("key must be a non-empty metadata field name")
        self.store.create_index(f"{METADATA_KEY}.{key}", kind)

    def iter_points(self, *, with_vectors: bool = False, batch_size: int = 256) -> Iterator[StoredPoint]:
        """Every stored point (Qdrant id, payload, optionally the vector), in storage order."""
        offset: Any = None
        while True:
            points, offset = self.store.scroll(offset, batch_size, with_vectors=with_vectors)
            yield from points
            if offset is None:
                return

    def close(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()

    def __enter__(self) -> QdrantIndexer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hit(qdrant_id: str, score: float, payload: dict[str, Any]) -> Hit:
    return Hit(
        id=str(payload.get(DOC_ID_KEY) or qdrant_id),
        score=float(score),
        text=str(payload.get(TEXT_KEY, "")),
        metadata=dict(payload.get(METADATA_KEY) or {}),
    )


def _safety_name(safety: Any) -> str:
    return str(getattr(safety, "name", None) or type(safety).__name__)


def _check_same_screen(collection: str, recorded: Any, name: str) -> None:
    """Refuse to add documents screened by another calibration to a screened collection."""
    # Names recorded before SafetyFilter.name carried the screen's digest are its prefix.
    legacy = (
        isinstance(recorded, str) and recorded.startswith("l2vg-safety:") and name.startswith(f"{recorded}:")
    )
    if recorded == name or legacy:
        return
    raise CollectionMismatchError(
        f"collection '{collection}' was screened by {recorded!r}, but this safety filter is {name!r}: "
        "its documents would carry harm flags from two calibrations. Index with the calibration "
        "the collection was screened with, or re-index everything with this one (recreate=True, "
        "`l2vg index --recreate`, or a new collection)"
    )
