"""`l2vg index` and `l2vg search`: build and query a Qdrant collection from the command line.

Exit codes follow cli.py: 0 ok, 1 runtime failure (Qdrant unreachable or locked; with
``--strict``, some documents were skipped as invalid), 2 bad usage or input, 3 the
collection was built with another encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

CollectionOption = Annotated[str, typer.Option("--collection", "-c", help="Qdrant collection name")]
PathOption = Annotated[
    Path | None,
    typer.Option("--path", help="embedded Qdrant folder (default: the user data dir)", file_okay=False),
]
UrlOption = Annotated[str | None, typer.Option("--url", help="a Qdrant server, e.g. http://localhost:6333")]
ApiKeyOption = Annotated[
    str | None, typer.Option("--api-key", envvar="QDRANT_API_KEY", help="server API key")
]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]


def _load_encoder(model: str | None, dtype: str, document_mode: str | None) -> Any:
    from .cli import load_encoder

    return load_encoder(model, dtype, document_mode)


def _open_indexer(
    encoder: Any, collection: str, path: Path | None, url: str | None, api_key: str | None, **kw: Any
):
    from .cli import EXIT_MISMATCH, EXIT_RUNTIME, EXIT_USAGE, fail
    from .qdrant import CollectionMismatchError, CollectionNotFoundError, QdrantIndexer

    if path is not None and url is not None:
        fail("give --path or --url, not both")
    try:
        return QdrantIndexer(encoder, collection, path=path, url=url, api_key=api_key, **kw)
    except CollectionMismatchError as exc:
        fail(str(exc), EXIT_MISMATCH)
    except CollectionNotFoundError as exc:
        fail(str(exc), EXIT_USAGE)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    except Exception as exc:  # connection refused, folder locked by another process, ...
        fail(f"cannot open Qdrant ({type(exc).__name__}): {exc}", EXIT_RUNTIME)
    raise AssertionError("unreachable")


SafeOption = Annotated[
    bool,
    typer.Option(
        "--safe",
        help="safety mode: index screens documents / search gates the query and drops flagged documents "
        "(needs `l2vg safety calibrate` for the checkpoint)",
    ),
]


def _load_safety(encoder: Any, model: str | None) -> Any:
    from .cli import EXIT_USAGE, fail
    from .safety import SafetyCalibrationError, SafetyFilter

    try:
        return SafetyFilter.from_encoder(encoder, model)
    except SafetyCalibrationError as exc:
        fail(str(exc), EXIT_USAGE)
    raise AssertionError("unreachable")


def _parse_filters(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value that parses as JSON (numbers, lists, ranges) is used as such."""
    from .cli import fail

    spec: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            fail(f"--filter expects key=value, got {item!r}")
        try:
            spec[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            spec[key.strip()] = raw
    return spec


def index(
    source: Annotated[Path, typer.Argument(help="a folder of .txt/.md files, a .jsonl or a .csv")],
    collection: CollectionOption,
    path: PathOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="checkpoint folder")] = None,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16")] = "auto",
    document_mode: Annotated[
        str | None, typer.Option(help="generative (the paper) | teacher (much faster documents)")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=4096, help="documents per upload")] = 64,
    text_field: Annotated[str, typer.Option(help="JSONL key / CSV column holding the text")] = "text",
    id_field: Annotated[str, typer.Option(help="JSONL key / CSV column holding the id")] = "id",
    recreate: Annotated[bool, typer.Option(help="drop the collection first")] = False,
    overwrite: Annotated[bool, typer.Option(help="re-encode documents already indexed")] = False,
    strict: Annotated[bool, typer.Option(help="exit 1 if any document was skipped as invalid")] = False,
    safe: SafeOption = False,
    as_json: JsonOption = False,
) -> None:
    """Index a corpus into a Qdrant collection (resumable: documents already there are skipped)."""
    from .cli import EXIT_RUNTIME, EXIT_USAGE, fail
    from .sources import SourceError, read_source

    try:
        documents = read_source(source, text_field=text_field, id_field=id_field)
    except SourceError as exc:
        fail(str(exc), EXIT_USAGE)
    encoder = _load_encoder(model, dtype, document_mode)
    safety = _load_safety(encoder, model) if safe else None
    indexer = _open_indexer(
        encoder, collection, path, url, api_key, batch_size=batch_size, recreate=recreate, safety=safety
    )
    with indexer:
        report = indexer.index(documents, overwrite=overwrite, show_progress=not as_json)
        total = indexer.count()
    data = {"collection": collection, "source": str(source), "count": total, **report.to_dict()}
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        table = Table(show_header=False, title=f"indexed into '{collection}'")
        for key in ("indexed", "skipped_existing", "skipped_duplicate", "skipped_invalid", "count"):
            table.add_row(key, str(data[key]))
        table.add_row("encode / qdrant seconds", f"{report.encode_seconds:.1f} / {report.qdrant_seconds:.1f}")
        Console().print(table)
        for bad in report.invalid[:10]:
            Console(stderr=True).print(f"[yellow]skipped[/yellow] {bad.ref}: {bad.reason}")
    if strict and report.skipped_invalid:
        fail(f"{report.skipped_invalid} invalid documents were skipped (--strict)", EXIT_RUNTIME)


def search(
    query: Annotated[str, typer.Argument(help="the query text")],
    collection: CollectionOption,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=10000, help="number of hits")] = 5,
    path: PathOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="checkpoint folder")] = None,
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16")] = "auto",
    instruction: Annotated[str | None, typer.Option(help="task instruction for the query")] = None,
    filters: Annotated[
        list[str] | None, typer.Option("--filter", help="metadata key=value (repeatable; JSON values ok)")
    ] = None,
    safe: SafeOption = False,
    as_json: JsonOption = False,
) -> None:
    """Search a collection with the query's generative embedding."""
    from .cli import EXIT_USAGE, fail

    if not query.strip():
        fail("the query is empty", EXIT_USAGE)
    spec = _parse_filters(filters or [])
    encoder = _load_encoder(model, dtype, None)
    safety = _load_safety(encoder, model) if safe else None
    with _open_indexer(encoder, collection, path, url, api_key, create=False, safety=safety) as indexer:
        try:
            hits = indexer.search(query, k=k, filter=spec or None, instruction=instruction, safe=safe)
        except (TypeError, ValueError) as exc:
            fail(str(exc), EXIT_USAGE)
    if as_json:
        out = {
            "query": query,
            "collection": collection,
            "blocked": hits.blocked,
            "reason": hits.reason,
            "hits": [{"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata} for h in hits],
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return
    if hits.blocked:
        Console(stderr=True).print(f"[yellow]no results: {hits.reason}[/yellow]")
    table = Table("#", "score", "id", "text", "metadata", title=f"{query!r} in '{collection}'")
    for rank, hit in enumerate(hits, start=1):
        text = hit.text if len(hit.text) <= 160 else hit.text[:157] + "..."
        table.add_row(
            str(rank), f"{hit.score:.3f}", hit.id, text, json.dumps(hit.metadata, ensure_ascii=False)
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Attach ``index`` and ``search`` to the root ``l2vg`` app."""
    app.command("index")(index)
    app.command("search")(search)
