"""The main job in one command: index the bundled sample corpus into embedded Qdrant and search it.

``python -m l2vg_retrieval.demo`` (what ``make demo`` runs). Uses the packaged default
encoder; re-running resumes/skips what is already indexed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .qdrant import CollectionMismatchError, QdrantIndexer, default_path
from .sources import sample_passages, sample_queries

COLLECTION = "l2vg-demo"


def _open(encoder: Any, path: Path, console: Console) -> QdrantIndexer:
    try:
        return QdrantIndexer(encoder, COLLECTION, path=path, batch_size=16)
    except CollectionMismatchError as exc:
        # The demo owns this collection: a new checkpoint simply rebuilds it.
        console.print(f"[yellow]{exc}[/yellow]\nrebuilding the demo collection for this encoder")
        return QdrantIndexer(encoder, COLLECTION, path=path, batch_size=16, recreate=True)


def run_demo(
    model: str | None = None,
    *,
    path: str | Path | None = None,
    n_queries: int = 5,
    k: int = 3,
    decode: bool = True,
    encoder: Any = None,
) -> dict[str, Any]:
    """Index the sample corpus, answer ``n_queries`` sample queries; returns what it printed."""
    console = Console()
    if encoder is None:
        from .encoder import L2VGEncoder

        console.print("loading the encoder ...")
        encoder = L2VGEncoder.from_pretrained(model)
    folder = Path(path) if path is not None else default_path() / "demo"
    console.print(f"encoder: {encoder!r}\nembedded Qdrant at {folder}, collection '{COLLECTION}'")
    passages = sample_passages()
    with _open(encoder, folder, console) as indexer:
        report = indexer.index(passages)
        console.print(
            f"indexed {report.indexed} new passages, skipped {report.skipped_existing} already present "
            f"(encode {report.encode_seconds:.1f}s, qdrant {report.qdrant_seconds:.2f}s); "
            f"collection holds {indexer.count()} points"
        )
        again = indexer.index(passages, show_progress=False)
        console.print(f"re-indexing the same corpus: {again.indexed} new, {again.skipped_existing} skipped")
        queries = sample_queries()[:n_queries]
        results = indexer.search_batch([q["text"] for q in queries], k=k)
    found = 0
    answers = []
    for query, hits in zip(queries, results, strict=True):
        relevant = set(query["relevant"])
        found += any(h.id in relevant for h in hits)
        table = Table("#", "score", "id", "topic", "passage", title=query["text"], title_justify="left")
        for rank, hit in enumerate(hits, start=1):
            mark = "[green]*[/green]" if hit.id in relevant else ""
            table.add_row(
                f"{rank}{mark}", f"{hit.score:.3f}", hit.id, hit.metadata.get("topic", ""), hit.text
            )
        console.print(table)
        answers.append({"query": query["text"], "hits": [h.id for h in hits], "relevant": sorted(relevant)})
    console.print(f"[bold]{found}/{len(queries)} queries have a relevant passage (*) in the top {k}[/bold]")
    decoded = None
    if decode and queries and hasattr(encoder, "decode"):
        text = queries[0]["text"]
        decoded = encoder.decode(text, prompt=encoder.config.query_instruction, max_new_tokens=40)
        console.print(f"what the embedding of {text!r} 'means' (decoded from its soft prompts):\n  {decoded}")
    return {"indexed": report.indexed, "answers": answers, "hits_at_k": found, "decoded": decoded}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="l2vg demo: index a sample corpus and search it")
    parser.add_argument("--model", help="checkpoint folder (default: the packaged encoder)")
    parser.add_argument("--path", help="embedded Qdrant folder (default: <user data dir>/qdrant/demo)")
    parser.add_argument("--queries", type=int, default=5, help="how many sample queries to run (max 12)")
    parser.add_argument("-k", type=int, default=3)
    parser.add_argument("--no-decode", action="store_true", help="skip decoding a query embedding")
    args = parser.parse_args(argv)
    from .encoder import CheckpointError

    try:
        run_demo(args.model, path=args.path, n_queries=args.queries, k=args.k, decode=not args.no_decode)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
