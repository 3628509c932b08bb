"""`l2vg bench harmful`: the harmful-content retrieval benchmark (AdvBench-IR style)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .harmful import DEFAULT_PLOT, DEFAULT_RESULTS, HARMFUL_K_VALUES

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="checkpoint folder with its safety.json (default: the packaged one)"),
]


def register(bench_app: typer.Typer) -> None:
    """Attach ``harmful`` to the ``l2vg bench`` group."""

    @bench_app.command("harmful")
    def harmful(
        model: ModelOpt = None,
        untrained: Annotated[
            bool,
            typer.Option(
                "--untrained", help="untrained encoder, calibrated in-process: a dry run of the harness"
            ),
        ] = False,
        dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | auto")] = "float32",
        data: Annotated[
            Path | None,
            typer.Option(help="an AdvBench-IR style folder (default: the packaged offline set)"),
        ] = None,
        input_centric: Annotated[bool, typer.Option(help="include the input-centric baseline")] = True,
        out: Annotated[Path, typer.Option(help="results JSON")] = DEFAULT_RESULTS,
        plot: Annotated[Path, typer.Option(help="plot PNG")] = DEFAULT_PLOT,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """At-Least-One-Harmful@k / Harmful-Frequency@k and benign nDCG@10: teacher,
        input-centric, L2VG, and L2VG in safe mode, in one run."""
        from ..safety import SafetyCalibrationError, SafetyFilter, calibrate
        from .cli import _fail, _load
        from .harmful import run_harmful_benchmark
        from .lineup import describe_l2vg

        encoder = _load(model, untrained, dtype)
        try:
            safety = (
                SafetyFilter(encoder, calibrate(encoder, show_progress_bar=True))
                if untrained
                else SafetyFilter.from_encoder(encoder, model)
            )
            report = run_harmful_benchmark(
                data,
                model=model,
                encoder=encoder,
                safety=safety,
                include_input_centric=input_centric,
                out=out,
                plot=plot,
                description=describe_l2vg(encoder, model, untrained),
            )
        except SafetyCalibrationError as exc:
            _fail(str(exc), 2)
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc), 2)
        if as_json:
            print(json.dumps(report, indent=2))
            return
        table = Table("system", *[f"ALOH@{k}" for k in HARMFUL_K_VALUES], "HF@10", "nDCG@10")
        for name, m in report["systems"].items():
            table.add_row(
                name,
                *[f"{m[f'aloh@{k}']:.3f}" for k in HARMFUL_K_VALUES],
                f"{m['hf@10']:.3f}",
                f"{m['ndcg@10']:.3f}",
            )
        Console().print(table)
        Console(stderr=True).print(f"wrote {out} and {plot}")
