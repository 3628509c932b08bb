"""`l2vg llm2vec {corpus,mntp,simcse,train,info}`: train the unsupervised LLM2Vec teacher."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

llm2vec_app = typer.Typer(
    name="llm2vec",
    help="LLM2Vec for the backbone: bidirectional attention, MNTP, unsupervised SimCSE "
    "(a teacher and a baseline).",
    no_args_is_help=True,
)

ConfigArg = Annotated[Path, typer.Argument(help="YAML/JSON LLM2Vec config", exists=True, dir_okay=False)]
StepsOpt = Annotated[int | None, typer.Option(min=1, help="override the stage's steps")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="no progress bar")]


def register(app: typer.Typer) -> None:
    app.add_typer(llm2vec_app, name="llm2vec")


def _config(path: Path, stage: str | None = None, steps: int | None = None) -> Any:
    from ..cli import fail
    from ..training.config import ConfigFileError
    from .config import load_llm2vec_config

    overrides: dict[str, Any] = {}
    if steps is not None and stage is not None:
        import yaml

        raw = yaml.safe_load(path.read_text()) or {}
        overrides[stage] = {**(raw.get(stage) or {}), "steps": steps}
    try:
        return load_llm2vec_config(path, overrides)
    except ConfigFileError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")


def _run(fn: Any) -> Any:
    """Map the library's errors to the CLI's exit codes."""
    from ..backbones import MissingAssetError
    from ..cli import EXIT_MISMATCH, EXIT_RUNTIME, fail
    from ..encoder import CheckpointError
    from .corpus import CorpusError
    from .pipeline import StageOrderError

    try:
        return fn()
    except CheckpointError as exc:
        fail(str(exc), EXIT_MISMATCH)
    except (CorpusError, StageOrderError, MissingAssetError) as exc:
        fail(str(exc), EXIT_RUNTIME)
    raise AssertionError("unreachable")


def _command() -> str:
    return " ".join(["l2vg", *sys.argv[1:]])


@llm2vec_app.command("corpus")
def corpus(config_path: ConfigArg) -> None:
    """Build the unlabelled corpus and check it against every evaluation set."""
    from .pipeline import run_corpus

    config = _config(config_path)
    manifest = _run(lambda: run_corpus(config))
    print(json.dumps({k: manifest[k] for k in ("counts", "train", "heldout")}, indent=2))
    print(f"overlap check dropped {manifest['overlap_check']['dropped']} texts", file=sys.stderr)


@llm2vec_app.command("mntp")
def mntp(config_path: ConfigArg, steps: StepsOpt = None, quiet: QuietOpt = False) -> None:
    """Stage 1: masked next-token prediction with a LoRA (resumes where it stopped)."""
    from .pipeline import run_mntp

    config = _config(config_path, "mntp", steps)
    summary = _run(lambda: run_mntp(config, command=_command(), show_progress_bar=not quiet))
    print(json.dumps(summary, indent=2))


@llm2vec_app.command("simcse")
def simcse(config_path: ConfigArg, steps: StepsOpt = None, quiet: QuietOpt = False) -> None:
    """Stage 2: unsupervised SimCSE on the MNTP-merged model, then write the checkpoint."""
    from .pipeline import export_checkpoint, run_simcse

    config = _config(config_path, "simcse", steps)
    summary = _run(lambda: run_simcse(config, command=_command(), show_progress_bar=not quiet))
    folder = _run(lambda: export_checkpoint(config))
    print(json.dumps({**summary, "checkpoint": str(folder)}, indent=2))


@llm2vec_app.command("train")
def train(config_path: ConfigArg, quiet: QuietOpt = False) -> None:
    """corpus → MNTP → SimCSE → checkpoint (output_dir/final), each stage resumable."""
    from .pipeline import run_all

    config = _config(config_path)
    summary = _run(lambda: run_all(config, command=_command(), show_progress_bar=not quiet))
    print(json.dumps(summary, indent=2))


@llm2vec_app.command("info")
def info(
    reference: Annotated[str, typer.Argument(help="llm2vec, llm2vec:<folder or hub id>, or a folder")],
) -> None:
    """Show a checkpoint's backbone, stages, fingerprints and training summary (loads no model)."""
    from .checkpoint import read_meta
    from .reference import resolve_llm2vec

    def read() -> dict[str, Any]:
        return read_meta(resolve_llm2vec(reference))

    try:
        meta = _run(read)
    except ValueError as exc:
        from ..cli import fail

        fail(str(exc))
    training = meta.get("training", {})
    print(
        json.dumps(
            {
                "backbone": meta["backbone"],
                "backbone_fingerprint": meta["backbone_fingerprint"],
                "embedding_dim": meta.get("embedding_dim"),
                "stages": meta["stages"],
                "fingerprint": meta["fingerprint"],
                "settings": meta.get("settings"),
                "mntp": {k: training.get("mntp", {}).get(k) for k in ("steps", "final_loss", "wall_seconds")},
                "simcse": {
                    k: training.get("simcse", {}).get(k) for k in ("steps", "final_loss", "wall_seconds")
                },
            },
            indent=2,
        )
    )
