"""`l2vg index`, `l2vg search` and `l2vg export`: build, query and move a Qdrant collection.

Exit codes follow cli.py: 0 ok, 1 runtime failure (Qdrant unreachable or locked; with
``--strict``, some documents were skipped as invalid), 2 bad usage or input, 3 the
collection was built with another encoder.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
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
ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="checkpoint folder")]
DtypeOption = Annotated[str, typer.Option(help="auto | float32 | bfloat16")]
BackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="embedded engine: edge (Qdrant Edge, HNSW) | local (qdrant-client local mode, exact); "
        "default: the engine already holding the collection, else local",
    ),
]


def _load_encoder(model: str | None, dtype: str, document_mode: str | None) -> Any:
    from .cli import load_encoder

    return load_encoder(model, dtype, document_mode)


def _open_indexer(
    encoder: Any,
    collection: str,
    path: Path | None,
    url: str | None,
    api_key: str | None,
    backend: str | None = None,
    **kw: Any,
):
    from .cli import EXIT_USAGE, fail
    from .qdrant import QdrantIndexer

    if path is not None and url is not None:
        fail("give --path or --url, not both")
    if backend is not None and url is not None:
        fail("--backend chooses an embedded engine; it does not apply to --url", EXIT_USAGE)
    with _qdrant_errors():
        return QdrantIndexer(encoder, collection, path=path, url=url, api_key=api_key, backend=backend, **kw)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _qdrant_errors() -> Iterator[None]:
    """Opening or copying collections: known failures become a message and an exit code."""
    from .cli import EXIT_MISMATCH, EXIT_RUNTIME, EXIT_USAGE, fail
    from .qdrant import CollectionLockedError, CollectionMismatchError, CollectionNotFoundError

    try:
        yield
    except CollectionMismatchError as exc:
        fail(str(exc), EXIT_MISMATCH)
    except CollectionNotFoundError as exc:
        fail(str(exc), EXIT_USAGE)
    except CollectionLockedError as exc:
        fail(str(exc), EXIT_RUNTIME)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    except typer.Exit:
        raise
    except Exception as exc:  # connection refused, a server error, ...
        fail(f"Qdrant failed ({type(exc).__name__}): {exc}", EXIT_RUNTIME)


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
    backend: BackendOption = None,
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
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
    from .cli import EXIT_MISMATCH, EXIT_RUNTIME, EXIT_USAGE, fail
    from .qdrant import CollectionMismatchError
    from .sources import SourceError, read_source

    try:
        documents = read_source(source, text_field=text_field, id_field=id_field)
    except SourceError as exc:
        fail(str(exc), EXIT_USAGE)
    encoder = _load_encoder(model, dtype, document_mode)
    safety = _load_safety(encoder, model) if safe else None
    indexer = _open_indexer(
        encoder,
        collection,
        path,
        url,
        api_key,
        backend,
        batch_size=batch_size,
        recreate=recreate,
        safety=safety,
    )
    with indexer:
        try:
            report = indexer.index(documents, overwrite=overwrite, show_progress=not as_json)
        except CollectionMismatchError as exc:  # screened under another safety calibration
            fail(str(exc), EXIT_MISMATCH)
        total = indexer.count()
    data = {
        "collection": collection,
        "backend": indexer.backend,
        "source": str(source),
        "count": total,
        **report.to_dict(),
    }
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
    backend: BackendOption = None,
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
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
    with _open_indexer(
        encoder, collection, path, url, api_key, backend, create=False, safety=safety
    ) as indexer:
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


def export(
    collection: CollectionOption,
    url: Annotated[
        str | None, typer.Option("--url", help="the target Qdrant server, e.g. http://localhost:6333")
    ] = None,
    to_path: Annotated[
        Path | None,
        typer.Option("--to-path", help="or a qdrant-client local-mode folder as the target", file_okay=False),
    ] = None,
    api_key: ApiKeyOption = None,
    path: PathOption = None,
    backend: BackendOption = None,
    to_collection: Annotated[
        str | None, typer.Option("--to-collection", help="target collection name (default: the same)")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=10000, help="points per upload")] = 256,
    overwrite: Annotated[bool, typer.Option(help="re-upload points the target already has")] = False,
    timeout: Annotated[int, typer.Option(min=1, help="server timeout in seconds")] = 60,
    as_json: JsonOption = False,
) -> None:
    """Copy an embedded collection into a Qdrant server (resumable: points already there are
    skipped). Ids, payloads, vectors and the encoder fingerprint are kept; no model is loaded."""
    from qdrant_client import QdrantClient

    from .cli import EXIT_USAGE, fail
    from .qdrant import ClientStore, default_path, open_local_client, open_store
    from .qdrant_export import export_collection

    if (url is None) == (to_path is None):
        fail("give the target as exactly one of --url or --to-path", EXIT_USAGE)
    target_name = to_collection or collection
    with _qdrant_errors():
        source = open_store(collection, path=path, backend=backend)
        try:
            same_folder = to_path is not None and to_path.resolve() == Path(path or default_path()).resolve()
            if same_folder and source.backend == "local":
                fail("--to-path is the source's own local-mode folder, which cannot be opened twice")
            if url is not None:
                client = QdrantClient(url=url, api_key=api_key, timeout=timeout)
                target = ClientStore(client, target_name, backend="server", owns_client=True)
            else:
                assert to_path is not None
                target = ClientStore(
                    open_local_client(to_path), target_name, backend="local", owns_client=True
                )
            try:
                from tqdm.auto import tqdm

                total = source.count() if source.exists() else None
                with tqdm(total=total, desc=f"export {collection}", unit="pt", disable=as_json) as bar:
                    report = export_collection(
                        source, target, batch_size=batch_size, overwrite=overwrite, on_batch=bar.update
                    )
            finally:
                target.close()
        finally:
            source.close()
    data = {
        "collection": collection,
        "source_backend": source.backend,
        "target": url if url is not None else str(to_path),
        "target_collection": target_name,
        **report.to_dict(),
    }
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(show_header=False, title=f"exported '{collection}' → '{target_name}'")
    for key in ("exported", "skipped_existing", "source_count", "target_count", "seconds"):
        table.add_row(key, str(data[key]))
    Console().print(table)
    if report.target_count < report.source_count:
        fail(
            f"the target holds {report.target_count} points, fewer than the source's {report.source_count}",
            1,
        )


def register(app: typer.Typer) -> None:
    """Attach ``index``, ``search`` and ``export`` to the root ``l2vg`` app."""
    app.command("index")(index)
    app.command("search")(search)
    app.command("export")(export)
