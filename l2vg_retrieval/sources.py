"""Read a corpus from disk as a lazy stream of documents: a folder of .txt/.md, a JSONL or a CSV.

Readers never load the whole file: the indexer pulls one document at a time. A bad line
or file becomes an ``InvalidDocument`` carrying its location, so the indexer can count it
and go on instead of aborting a long run.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .qdrant import InvalidDocument

TEXT_SUFFIXES = (".txt", ".md")


class SourceError(ValueError):
    """The source cannot be read at all (missing, unsupported, no text column)."""


def read_source(
    source: str | Path, *, text_field: str = "text", id_field: str = "id"
) -> Iterator[dict[str, Any] | InvalidDocument]:
    """Documents from a folder (recursive .txt/.md), a single .txt/.md, a .jsonl or a .csv."""
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    if path.is_dir():
        return _read_folder(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path, text_field, id_field)
    if suffix == ".csv":
        return _read_csv(path, text_field, id_field)
    if suffix in TEXT_SUFFIXES:
        return _read_files(path.parent, [path])
    raise SourceError(f"{path}: unsupported source; give a folder of .txt/.md files, a .jsonl or a .csv")


def _read_folder(folder: Path) -> Iterator[dict[str, Any] | InvalidDocument]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise SourceError(f"{folder} holds no .txt or .md files")
    return _read_files(folder, files)


def _read_files(root: Path, files: list[Path]) -> Iterator[dict[str, Any] | InvalidDocument]:
    for file in files:
        rel = file.relative_to(root).as_posix()
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            yield InvalidDocument(rel, "not UTF-8 text")
            continue
        except OSError as exc:
            yield InvalidDocument(rel, f"unreadable: {exc.strerror or exc}")
            continue
        # The relative path is the id, so re-indexing the folder updates nothing twice.
        yield {"id": rel, "text": text, "metadata": {"source": rel}}


def _pick(record: dict[str, Any], text_field: str, id_field: str) -> dict[str, Any]:
    metadata = record.pop("metadata", None)
    extra = metadata if isinstance(metadata, dict) else {}
    doc = {"text": record.pop(text_field, None), "metadata": {**record, **extra}}
    if id_field in doc["metadata"]:
        doc["id"] = doc["metadata"].pop(id_field)
    if metadata is not None and not isinstance(metadata, dict):
        doc["metadata"] = metadata  # let the indexer report the malformed metadata
    return doc


def _read_jsonl(path: Path, text_field: str, id_field: str) -> Iterator[dict[str, Any] | InvalidDocument]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            ref = f"{path.name}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield InvalidDocument(ref, f"invalid JSON: {exc.msg}")
                continue
            if not isinstance(record, dict):
                yield InvalidDocument(ref, f"expected a JSON object, got {type(record).__name__}")
                continue
            if text_field not in record:
                yield InvalidDocument(ref, f"no '{text_field}' field")
                continue
            yield _pick(record, text_field, id_field)


def _read_csv(path: Path, text_field: str, id_field: str) -> Iterator[dict[str, Any] | InvalidDocument]:
    # Long passages exceed csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    handle = path.open(encoding="utf-8", errors="replace", newline="")
    reader = csv.DictReader(handle)
    if reader.fieldnames is None or text_field not in reader.fieldnames:
        handle.close()
        raise SourceError(f"{path}: no '{text_field}' column (columns: {reader.fieldnames or []})")

    def rows() -> Iterator[dict[str, Any] | InvalidDocument]:
        with handle:
            for number, row in enumerate(reader, start=2):
                if None in row:
                    yield InvalidDocument(f"{path.name}:{number}", "more fields than the header")
                    continue
                yield _pick(dict(row), text_field, id_field)

    return rows()


SAMPLE_CORPUS_DIR = Path(__file__).parent / "data" / "sample_corpus"


def sample_passages() -> list[dict[str, Any]]:
    """The bundled 30-passage sample corpus (original text, Apache-2.0): id, text, metadata."""
    return [json.loads(line) for line in (SAMPLE_CORPUS_DIR / "passages.jsonl").read_text().splitlines()]


def sample_queries() -> list[dict[str, Any]]:
    """The sample corpus's 12 queries: id, text, relevant (passage ids)."""
    return [json.loads(line) for line in (SAMPLE_CORPUS_DIR / "queries.jsonl").read_text().splitlines()]
