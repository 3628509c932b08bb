"""`l2vg bench scale`: local mode vs Qdrant Edge at N vectors, and interactive query latency."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .results import DEFAULT_RESULTS_DIR

console = Console(stderr=True)


def _encoders(model: str | None, untrained: bool, dtype: str) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """L2VG in ``dtype`` and its MiniLM teacher (fp32, as it always runs)."""
    from .cli import _load
    from .lineup import describe_l2vg
    from .results import portable_path

    l2vg = _load(model, untrained, dtype)
    described = describe_l2vg(l2vg, model, untrained)
    if model:
        described["checkpoint"] = portable_path(model)
    label = f"l2vg-{described['dtype']}"
    return {label: l2vg, "minilm": l2vg.teacher}, described, l2vg.teacher


def register(bench_app: typer.Typer) -> None:
    """Attach ``scale`` to the ``l2vg bench`` group."""

    @bench_app.command("scale")
    def scale(
        sizes: Annotated[
            list[int] | None,
            typer.Option("--n", min=10, help="collection sizes (repeatable); default 10k, 100k, 1M"),
        ] = None,
        backends: Annotated[str, typer.Option(help="comma list of local, edge")] = "local,edge",
        vectors: Annotated[
            str,
            typer.Option(
                help="lowrank (synthetic, embedding-like: near a random 16-d subspace) | random (unit "
                "Gaussian: no neighbour structure, a stress case) | real (MiniLM embeddings of the QA "
                "corpus + noise)"
            ),
        ] = "lowrank",
        noise: Annotated[
            float, typer.Option(min=0.0, help="noise std per dimension for --vectors real")
        ] = 0.02,
        queries: Annotated[int, typer.Option(min=1, help="query vectors per measurement")] = 100,
        local_max: Annotated[
            int, typer.Option(min=10, help="skip local mode above this N (exact search in Python)")
        ] = 100_000,
        batch_size: Annotated[int, typer.Option(min=1, help="points per upsert")] = 1024,
        hnsw_ef: Annotated[
            list[int] | None,
            typer.Option("--hnsw-ef", min=1, help="Edge search ef (repeatable: a sweep on the same graph)"),
        ] = None,
        payload_index: Annotated[
            bool, typer.Option(help="index the filtered metadata field before the upload")
        ] = True,
        max_base: Annotated[
            int | None, typer.Option(min=1, help="--vectors real: embed only the first N QA passages")
        ] = None,
        interactive: Annotated[
            bool, typer.Option(help="also time encode_query + search for L2VG and MiniLM (loads the model)")
        ] = True,
        interactive_queries: Annotated[int, typer.Option(min=1, help="single queries per encoder")] = 30,
        model: Annotated[
            str | None, typer.Option("--model", "-m", help="checkpoint folder (default: the packaged one)")
        ] = None,
        untrained: Annotated[bool, typer.Option("--untrained", help="untrained encoder (dry run)")] = False,
        dtype: Annotated[str, typer.Option(help="L2VG dtype for the interactive run")] = "bfloat16",
        work_dir: Annotated[
            Path | None,
            typer.Option(help="where the collections are built (default: a temp dir; needs disk for 1M)"),
        ] = None,
        out_dir: Annotated[Path, typer.Option("--out-dir", help="where results JSON are written")] = (
            DEFAULT_RESULTS_DIR
        ),
        name: Annotated[str, typer.Option(help="results file name (without .json)")] = "scale",
    ) -> None:
        """Ingest, index build, search p50/p95 (with and without a filter), recall@10 vs exact,
        memory and disk for local mode and Qdrant Edge; interactive latency end to end."""
        from platformdirs import user_cache_dir

        from ..qdrant_edge import DEFAULT_HNSW_EF
        from .cli import _fail
        from .results import write_results
        from .scale import run_scale

        chosen = [b.strip() for b in backends.split(",") if b.strip()]
        plan = sorted(set(sizes or [10_000, 100_000, 1_000_000]))
        encoders: dict[str, Any] = {}
        described = None
        teacher = None
        if interactive or vectors == "real":
            encoders, described, teacher = _encoders(model, untrained, dtype)
        started = time.perf_counter()
        try:
            result = run_scale(
                plan,
                backends=chosen,
                n_queries=queries,
                vectors=vectors,
                teacher=teacher,
                noise=noise,
                local_max=local_max,
                batch_size=batch_size,
                hnsw_efs=hnsw_ef or (DEFAULT_HNSW_EF,),
                payload_index=payload_index,
                max_base=max_base,
                encoders=encoders if interactive else None,
                n_interactive=interactive_queries,
                work_dir=work_dir,
                cache_dir=Path(user_cache_dir("l2vg_retrieval")) / "bench",
                on_step=lambda step: console.print(f"[cyan]scale[/cyan] {step}"),
            )
        except ValueError as exc:
            _fail(str(exc))
        from importlib import metadata

        payload = {
            "model": described,
            "engines": {
                "qdrant-client": metadata.version("qdrant-client"),
                "qdrant-edge-py": metadata.version("qdrant-edge-py"),
            },
            "wall_seconds": round(time.perf_counter() - started, 1),
            **result,
        }
        path = write_results(name, payload, out_dir)
        table = Table(
            "backend", "N", "ingest pt/s", "build s", "p50 ms", "p95 ms", "filt p50", "R@10", "R@10 filt"
        )
        for row in result["runs"]:
            if "skipped" in row:
                table.add_row(row["backend"], str(row["n"]), row["skipped"], "", "", "", "", "", "")
                continue
            table.add_row(
                row["backend"],
                str(row["n"]),
                f"{row['ingest_points_per_s']:.0f}",
                f"{row['build_seconds']:.1f}",
                f"{row['search_ms']['p50']:.2f}",
                f"{row['search_ms']['p95']:.2f}",
                f"{row['search_filtered_ms']['p50']:.2f}",
                f"{row['recall@10']:.3f}",
                f"{row['recall@10_filtered']:.3f}",
            )
        Console().print(table)
        if result.get("interactive"):
            for enc, m in result["interactive"]["results"].items():
                console.print(
                    f"  {enc}: encode p50 {m['encode_ms']['p50']:.1f} ms + search p50 "
                    f"{m['search_ms']['p50']:.2f} ms = end to end p50 {m['end_to_end_ms']['p50']:.1f} ms"
                )
        console.print(f"wrote {path}")
