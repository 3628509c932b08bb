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
    console.print(f"[red]error:[/red] {message}")
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
