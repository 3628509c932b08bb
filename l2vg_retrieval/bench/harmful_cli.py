"""`l2vg bench harmful`: the harmful-content retrieval benchmark (AdvBench-IR style)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .harmful import DEFAULT_LOCO_PLOT, DEFAULT_PLOT, DEFAULT_RESULTS, HARMFUL_K_VALUES

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
        generalisation: Annotated[
            bool,
            typer.Option(
                help="also run leave-one-category-out and the overall split over the harm taxonomy "
                "(gate with and without the refusal signal, and the screen)"
            ),
        ] = True,
        loco_plot: Annotated[
            Path, typer.Option(help="per-category generalisation plot PNG")
        ] = DEFAULT_LOCO_PLOT,
        allow_overlap: Annotated[
            bool, typer.Option(help="run even if the calibration under test saw benchmark texts")
        ] = False,
        markdown: Annotated[
            Path | None, typer.Option(help="also write the per-category generalisation table (Markdown)")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """At-Least-One-Harmful@k / Harmful-Frequency@k and benign nDCG@10: teacher,
        input-centric, L2VG, and L2VG in safe mode, in one run; then how the gate and the
        screen generalise to harm categories they were not calibrated on."""
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
                generalisation=generalisation,
                loco_plot=loco_plot,
                allow_overlap=allow_overlap,
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
        if report.get("generalisation"):
            Console().print(generalisation_table(report["generalisation"]))
            if markdown is not None:
                from .harmful_loco import generalisation_markdown

                markdown.write_text(generalisation_markdown(report["generalisation"]))
        Console(stderr=True).print(
            f"wrote {out} and {plot}" + (f" and {loco_plot}" if generalisation else "")
        )


def generalisation_table(gen: dict[str, Any]) -> Table:
    """Per category: leave-one-category-out recall of the gate (with / without the refusal
    signal) and the screen, look-alike FPR, and the overall split's gate recall."""
    loco, overall = gen["leave_one_category_out"], gen["overall_split"]
    gate = loco["gate"]
    with_, without = gate.get("with_refusal_signal"), gate.get("without_refusal_signal")
    table = Table(
        "category", "LOCO gate", "LOCO gate (no refusal)", "look-alike FPR", "LOCO screen",
        "overall gate", "overall screen", title="Generalisation over the harm taxonomy (recall)",
    )  # fmt: skip

    def pct(value: Any) -> str:
        return "-" if value is None else f"{float(value):.2f}"

    main = with_ or without
    overall_gate = overall["gate"].get("with_refusal_signal") or overall["gate"]["without_refusal_signal"]
    for category, m in main["per_category"].items():
        table.add_row(
            category,
            pct(m["recall"]),
            pct(without["per_category"][category]["recall"]) if with_ and without else "-",
            pct(m["lookalike_fpr"]),
            pct(loco["screen"]["per_category"][category].get("recall")),
            pct(overall_gate["per_category"][category]["recall"]),
            pct(overall["screen"]["per_category"][category]["recall"]),
        )
    table.add_row(
        "mean", pct(main["recall"]["mean"]),
        pct(without["recall"]["mean"]) if with_ and without else "-", "",
        pct(loco["screen"]["recall"]["mean"]), pct(overall_gate["recall"]["mean"]),
        pct(overall["screen"]["recall"]["mean"]),
    )  # fmt: skip
    return table
