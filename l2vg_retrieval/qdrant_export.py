"""Copy an embedded collection (local mode or Edge) into another Qdrant collection, usually
a server's: the way from one machine to a Qdrant server or cluster.

Edge cannot write snapshots a server would restore, so the copy scrolls the source and
upserts into the target through ``QdrantClient``: the same point ids (uuid5 of the
document ids), payloads and vectors, and the encoder metadata (fingerprint, dimension,
screened flag) as the target's collection metadata. Points already in the target are
skipped, so an interrupted export resumes and a repeated one changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .qdrant import CollectionMismatchError, CollectionNotFoundError, open_collection


@dataclass
class ExportReport:
    exported: int = 0
    skipped_existing: int = 0
    source_count: int = 0
    target_count: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "exported": self.exported,
            "skipped_existing": self.skipped_existing,
            "source_count": self.source_count,
            "target_count": self.target_count,
            "seconds": round(self.seconds, 3),
        }


def export_collection(
    source: Any,
    target: Any,
    *,
    batch_size: int = 256,
    overwrite: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> ExportReport:
    """Copy every point of the ``source`` store into the ``target`` store.

    Both are stores as :func:`l2vg_retrieval.qdrant.open_store` returns them. The target
    collection is created with the source's metadata, or must already hold the same
    encoder's vectors (dimension and fingerprint), else :class:`CollectionMismatchError`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    started = time.perf_counter()
    if not source.exists():
        raise CollectionNotFoundError(f"source collection '{source.collection}' does not exist")
    meta = source.read_meta()
    if meta is None:
        raise CollectionMismatchError(
            f"source collection '{source.collection}' has no l2vg metadata: it was not built by l2vg"
        )
    target_meta = open_collection(target, meta, create=True)
    report = ExportReport(source_count=source.count())
    offset: Any = None
    while True:
        points, offset = source.scroll(offset, batch_size, with_vectors=True)
        if points:
            todo = points
            if not overwrite:
                present = target.existing([p.id for p in points])
                todo = [p for p in points if p.id not in present]
                report.skipped_existing += len(points) - len(todo)
            if todo:
                vectors = np.asarray([p.vector for p in todo], dtype=np.float32)
                target.upsert([p.id for p in todo], vectors, [p.payload for p in todo])
                report.exported += len(todo)
            if on_batch is not None:
                on_batch(len(points))
        if offset is None:
            break
    # Screened holds for the target only if every point in it is screened. A target this
    # export created carries the source's metadata, so this is the source's flag; a target
    # that already held other points keeps it only if it was screened too.
    screened = bool(meta.get("screened")) and bool(target_meta.get("screened"))
    if screened != bool(target_meta.get("screened")):
        target.write_meta({**target_meta, "screened": screened})
    target.optimize()
    report.target_count = target.count()
    report.seconds = time.perf_counter() - started
    return report
