"""The ``l2vg`` command line.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or input (typer's own usage errors
also exit 2), 3 a checkpoint/collection mismatch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="l2vg",
    help="Generative embeddings (LLM2Vec-Gen) for retrieval: train, index, search, decode, bench.",
    no_args_is_help=True,
)
console = Console(stderr=True)

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_MISMATCH = 3

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="checkpoint folder (default: the packaged trained encoder)"),
]
DtypeOption = Annotated[str, typer.Option(help="auto | float32 | bfloat16")]


def fail(message: str, code: int = EXIT_USAGE) -> None:
    # Soft wrap: a path or a command in the message stays on one line, copyable as it is.
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(code)


def load_encoder(model: str | None, dtype: str = "auto", document_mode: str | None = None) -> Any:
    """Load an encoder, turning checkpoint problems into a clean exit."""
    from .backbones import MissingAssetError
    from .encoder import CheckpointError, L2VGEncoder

    try:
        return L2VGEncoder.from_pretrained(model, dtype=dtype, document_mode=document_mode)
    except CheckpointError as exc:
        fail(str(exc), EXIT_MISMATCH)
    except MissingAssetError as exc:  # the backbone/teacher it names is not installed here
        fail(str(exc), EXIT_RUNTIME)
    except (OSError, ValueError) as exc:
        fail(str(exc), EXIT_USAGE)
    raise AssertionError("unreachable")


@app.command()
def info(
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show the encoder: backbone, token counts, dimension, dtype, training card summary."""
    from .encoder import DEFAULT_CHECKPOINT, read_checkpoint_meta

    folder = Path(model) if model else DEFAULT_CHECKPOINT
    encoder = load_encoder(model, dtype)
    meta = read_checkpoint_meta(folder)
    data = {
        "checkpoint": str(folder),
        "backbone": encoder.config.backbone,
        "teacher": encoder.config.teacher,
        "n_thought": encoder.config.n_thought,
        "n_compression": encoder.config.n_compression,
        "dim": encoder.dim,
        "dtype": str(encoder.dtype_).removeprefix("torch."),
        "device": str(encoder.device_),
        "document_mode": encoder.config.document_mode,
        "fingerprint": encoder.fingerprint,
        "training": meta.get("training", {}),
    }
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(show_header=False)
    for key, value in data.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    Console().print(table)


@app.command()
def decode(
    texts: Annotated[list[str], typer.Argument(help="texts to encode and decode back")],
    model: ModelOption = None,
    dtype: DtypeOption = "auto",
    max_new_tokens: Annotated[int, typer.Option(min=1, max=2048)] = 64,
    document: Annotated[bool, typer.Option(help="use the document prompt instead of the query one")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show what the embedding of each text "means": greedy decoding from its soft prompts."""
    encoder = load_encoder(model, dtype)
    prompt = encoder.config.document_prompt if document else encoder.config.query_instruction
    try:
        outputs = encoder.decode(texts, prompt=prompt, max_new_tokens=max_new_tokens)
    except (TypeError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps([{"text": t, "decoded": d} for t, d in zip(texts, outputs, strict=True)], indent=2))
        return
    table = Table("text", "decoded from its embedding")
    for text, out in zip(texts, outputs, strict=True):
        table.add_row(text, out)
    Console().print(table)


@app.command()
def rotate(
    checkpoint: Annotated[Path, typer.Argument(help="the checkpoint folder to rotate (left unchanged)")],
    out: Annotated[Path, typer.Argument(help="a new folder for the rotated checkpoint")],
    texts: Annotated[
        Path | None,
        typer.Option(help="texts to fit on: .jsonl (strings or {'text': ...}) or one text per line"),
    ] = None,
    targets: Annotated[
        Path | None, typer.Option(help="a training run's targets.safetensors (teacher vectors) to fit on")
    ] = None,
    dims: Annotated[str, typer.Option(help="comma-separated prefix sizes to report")] = "256,128,64,32",
    batch_size: Annotated[int, typer.Option(min=1, help="teacher batch size for --texts")] = 64,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Order the teacher space's dimensions by energy, so truncate_dim prefixes work untrained.

    Fits the variance-ordered rotation on teacher vectors of your texts (or on a run's
    cached targets), folds it into the alignment head and the teacher, and saves the
    result: full-size cosines are unchanged, the first m dimensions keep the most energy.
    The new fingerprint makes Qdrant collections and safety calibrations of the original
    refuse it: re-index and re-calibrate."""
    import numpy as np

    from .bench.lineup import parse_dims
    from .encoder import CheckpointError, read_checkpoint_meta
    from .rotation import apply_rotation, energy_by_prefix, read_texts, variance_rotation
    from .safety import SAFETY_FILE

    if (texts is None) == (targets is None):
        fail("give exactly one of --texts or --targets")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(f"{out} already exists and is not an empty folder; choose a new one")
    try:
        sizes = parse_dims(dims)  # the benchmarks' own --dims parser
    except ValueError:
        fail(f"--dims must be comma-separated integers, got {dims!r}")
    # Everything that can be refused from the files alone is, before the models load.
    try:
        meta = read_checkpoint_meta(checkpoint)
    except CheckpointError as exc:
        fail(str(exc), EXIT_MISMATCH)
    dim = int(meta["teacher_dim"])
    if meta["config"].get("teacher_rotation"):
        fail(f"{checkpoint} already has a teacher rotation; rotate the unrotated checkpoint instead")
    vectors: np.ndarray | None = None
    items: list[str] = []
    if targets is not None:
        from .training.targets import load_targets

        rows = load_targets(targets)  # the training format's own reader; {} if unreadable
        if not rows:
            fail(f"{targets} holds no targets (missing, or not a training targets.safetensors file)")
        vectors = np.stack([vector.float().numpy() for _, vector in rows.values()])
        if vectors.shape[1] != dim:
            fail(f"{targets} holds {vectors.shape[1]}-d vectors, but this checkpoint's teacher is {dim}-d")
        source = {"targets": targets.name, "n_vectors": len(vectors)}
    else:
        assert texts is not None
        try:
            items = read_texts(texts)
        except (OSError, ValueError) as exc:
            fail(str(exc))
        distinct = len(set(items))
        if distinct < dim:
            fail(f"{texts} has {distinct} distinct texts; a {dim}-d rotation needs at least {dim}")
        source = {"texts": texts.name, "n_vectors": len(items)}
    encoder = load_encoder(str(checkpoint), "float32")
    if vectors is None:
        # Unit vectors, as the training targets are: each text counts once, whatever its norm.
        vectors = np.asarray(
            encoder.teacher.encode(items, batch_size=batch_size, normalize_embeddings=True), dtype=np.float64
        )
    try:
        rotation = variance_rotation(vectors)
        apply_rotation(encoder, rotation)
    except ValueError as exc:
        fail(str(exc))
    reported = [m for m in sizes if m <= dim]  # sizes beyond the space are not reported
    before = energy_by_prefix(vectors, None, reported)
    after = energy_by_prefix(vectors, rotation, reported)
    energy = {str(m): {"unrotated": round(before[m], 4), "rotated": round(after[m], 4)} for m in reported}
    # Carry the source's own records (e.g. its training summary) over; drop nothing it said.
    standard = {"format", "format_version", "config", "backbone_fingerprint", "hidden_size"}
    standard |= {"teacher_dim", "embedding_dim"}
    extra = {k: v for k, v in meta.items() if k not in standard}
    extra["teacher_rotation"] = {**source, "energy_by_prefix": energy}
    encoder.save_pretrained(out, extra=extra)
    if as_json:
        print(json.dumps({"out": str(out), "fingerprint": encoder.fingerprint, **extra["teacher_rotation"]}))
        return
    table = Table("dims", "energy kept, unrotated", "energy kept, rotated")
    for m in reported:
        table.add_row(str(m), f"{before[m]:.3f}", f"{after[m]:.3f}")
    Console().print(table)
    console.print(f"rotated checkpoint written to {out} (fingerprint {encoder.fingerprint})")
    if (checkpoint / SAFETY_FILE).is_file():
        # Not copied: it names the old fingerprint, and its probes live in the old space.
        console.print(f"{checkpoint} has a safety calibration; run `l2vg safety calibrate -m {out}`")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


# --- sub-commands living in their own modules --------------------------------------
from .training.cli import register as _register_training  # noqa: E402

_register_training(app)

from .cli_safety import register as _register_safety  # noqa: E402

_register_safety(app)

from .cli_index import register as _register_index  # noqa: E402

_register_index(app)

from .bench.cli import register as _register_bench  # noqa: E402

_register_bench(app)

from .llm2vec.cli import register as _register_llm2vec  # noqa: E402

_register_llm2vec(app)
