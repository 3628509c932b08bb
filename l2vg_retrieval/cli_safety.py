"""`l2vg safety calibrate` and `l2vg safety check`: the safety mode's commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

# Defined here, not imported from cli.py: typer resolves these annotations in this module's
# globals, and importing cli.py at module level would be circular (cli.py imports this).
ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="checkpoint folder (default: the packaged trained encoder)"),
]
DtypeOption = Annotated[str, typer.Option(help="auto | float32 | bfloat16")]


def register(app: typer.Typer) -> None:
    """Attach the ``safety`` command group to the root ``l2vg`` app."""
    from .cli import fail

    def load_encoder(model: str | None, dtype: str) -> Any:
        # Looked up at call time, so a test can stand a tiny encoder in for the checkpoint.
        from . import cli

        return cli.load_encoder(model, dtype)

    safety_app = typer.Typer(help="Safety-filtered retrieval: calibrate the query gate and document screen.")
    app.add_typer(safety_app, name="safety")

    @safety_app.command("calibrate")
    def calibrate_cmd(
        model: ModelOption = None,
        # float32, not "auto": "auto" is bf16 on CPUs with native bf16 and fp32 elsewhere,
        # and a calibration made in bf16 fits its probes to bf16 rounding; the packaged one
        # must be the same whichever machine made it (the benchmark reads it in float32 too).
        dtype: Annotated[
            str,
            typer.Option(
                help="float32 | bfloat16 | auto: the precision of the encoder passes the probes are "
                "fitted on (float32: the same calibration on every machine)"
            ),
        ] = "float32",
        data: Annotated[
            Path | None, typer.Option(help="labelled JSONL (text, label, kind); default: the packaged set")
        ] = None,
        out: Annotated[
            Path | None, typer.Option(help="where to write safety.json (default: beside the checkpoint)")
        ] = None,
        seed: Annotated[int, typer.Option(help="seeds the train/validation folds")] = 0,
        max_fpr_query: Annotated[
            float, typer.Option(min=0.0, max=0.5, help="benign queries blocked, at most")
        ] = 0.02,
        max_fpr_doc: Annotated[
            float, typer.Option(min=0.0, max=0.5, help="benign passages flagged, at most")
        ] = 0.02,
        refusal_signal: Annotated[
            bool,
            typer.Option(
                help="add the backbone's own refusal signal (next-token distribution at the answer "
                "position, read in the same pass as the query embedding) to the gate's features"
            ),
        ] = True,
        probe_layer: Annotated[
            str,
            typer.Option(
                help="also give the gate the query's hidden state after this many layers of the "
                "encoding pass, read in the same pass ('middle': half of them; 'none': off)"
            ),
        ] = "middle",
        doc_space: Annotated[
            list[str] | None,
            typer.Option(
                "--doc-space",
                help="what the document screen reads (repeatable: the LDA screen keeps the one with "
                "the best recall on harm categories held out of its training fold): probe (the "
                "document pass's state after the probe layer; default with a probe layer), "
                "generative, teacher (the passage's vector in that document mode)",
            ),
        ] = None,
        min_family_size: Annotated[
            int,
            typer.Option(
                min=1,
                help="a benign family (technical, general, look-alike) with at least this many "
                "validation rows must meet the FPR target on its own, not only pooled",
            ),
        ] = 50,
        screen_probe: Annotated[
            str,
            typer.Option(
                help="the document screen's probe: lda (shrinkage discriminant, shrinkage chosen by "
                "recall on harm categories held out of the fit; default) or logistic"
            ),
        ] = "lda",
        gate_probe: Annotated[
            str,
            typer.Option(
                help="the query gate's probe: lda (shrinkage discriminant, shrinkage chosen by recall "
                "on harm categories held out of the fit; default) or logistic"
            ),
        ] = "lda",
        probe_mean: Annotated[
            bool,
            typer.Option(
                help="the gate also reads the mean over the request's own tokens after the probe "
                "layer, beside the answer position's state (same pass; carries over better to "
                "unseen harm categories)"
            ),
        ] = True,
        gate_document_pass: Annotated[
            bool,
            typer.Option(
                help="the gate also reads each request through the document pass, as the screen "
                "reads passages (a single safe query then takes ~1.4x a plain one's time, not "
                "~1.1x; carries over better to unseen harm categories)"
            ),
        ] = True,
        screen_requests: Annotated[
            bool,
            typer.Option(
                help="the document screen also learns from the query rows, read through the "
                "document pass like passages (carries over better to unseen harm categories)"
            ),
        ] = True,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Fit the gate and screen on labelled harmful/benign prompts and passages; store them.

        --data takes your own JSONL: one row per text with "text", "label" (1 harmful, 0
        benign) and "kind" ("query" or "passage"); optional "category" (a harm category, for
        harmful rows and benign look-alikes) and "domain" (harmful, lookalike, technical,
        general) make the validation fold and the per-family FPR targets as broad as your data."""
        from .encoder import DEFAULT_CHECKPOINT
        from .safety import PROBE_KINDS, calibrate
        from .safety_data import load_calibration_set

        for option, kind in (("--screen-probe", screen_probe), ("--gate-probe", gate_probe)):
            if kind not in PROBE_KINDS:
                fail(f"{option} must be one of {', '.join(PROBE_KINDS)}, got {kind!r}")
        encoder = load_encoder(model, dtype)
        try:
            rows = load_calibration_set(data)
            calibration = calibrate(
                encoder, rows, seed=seed, max_fpr_query=max_fpr_query, max_fpr_doc=max_fpr_doc,
                refusal_signal=refusal_signal, probe_layer=probe_layer, min_family_size=min_family_size,
                doc_spaces=doc_space or None, screen_probe=screen_probe,  # type: ignore[arg-type]
                gate_probe=gate_probe, probe_mean=probe_mean,  # type: ignore[arg-type]
                gate_document_pass=gate_document_pass, screen_requests=screen_requests,
                show_progress_bar=True,
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            fail(str(exc))
        calibration.provenance["data"] = (
            str(data) if data else "packaged: l2vg_retrieval/data/harm_taxonomy/calibration.jsonl"
        )
        folder = out or (Path(model) if model else DEFAULT_CHECKPOINT)
        calibration.save(folder)
        summary = {
            "saved_to": str(folder),
            "doc_space": calibration.doc_space,
            "refusal_signal": calibration.uses_refusal_signal,
            "probe_layer": calibration.probe_layer,
            **calibration.metrics,
        }
        if as_json:
            print(json.dumps(summary, indent=2))
            return
        table = Table(
            "component", "threshold", "precision", "recall", "benign FPR", "AUC", "val n (harm/benign)"
        )
        for label, key in (
            ("query gate", "query_gate"),
            (f"document screen ({calibration.doc_space})", "document_screen"),
        ):
            m = calibration.metrics[key]
            table.add_row(
                label, f"{m['threshold']:.4f}", f"{m['precision']:.3f}", f"{m['recall']:.3f}",
                f"{m['fpr']:.3f}", f"{m['auc']:.3f}", f"{m['n_harmful']}/{m['n_benign']}",
            )  # fmt: skip
        Console().print(table)
        gate = calibration.metrics["query_gate"]
        families = ", ".join(
            f"{name} {m['fpr']:.3f} (n={m['n']})"
            for metrics in (gate, calibration.metrics["document_screen"])
            for name, m in metrics.get("family_fpr", {}).items()
        )
        Console().print(f"benign FPR per family on the validation fold (gate, then screen): {families}")
        if "refusal_signal_auc" in gate:
            Console().print(f"refusal signal alone: AUC {gate['refusal_signal_auc']:.3f}")
        Console(stderr=True).print(f"saved {folder}/safety.json and safety.safetensors")

    @safety_app.command("check")
    def check_cmd(
        queries: Annotated[list[str], typer.Argument(help="queries to run through the gate")],
        model: ModelOption = None,
        dtype: DtypeOption = "auto",
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Show the query gate's decision (blocked or not, score, threshold) for each query."""
        from .safety import SafetyCalibrationError, SafetyFilter

        encoder = load_encoder(model, dtype)
        try:
            gate = SafetyFilter.from_encoder(encoder, model)
            decisions = [gate.check_query(q) for q in queries]
        except SafetyCalibrationError as exc:
            fail(str(exc))
        except (TypeError, ValueError) as exc:
            fail(str(exc))
        if as_json:
            print(
                json.dumps(
                    [{"query": q, **d.to_dict()} for q, d in zip(queries, decisions, strict=True)], indent=2
                )
            )
            return
        table = Table("query", "blocked", "score", "threshold")
        for q, d in zip(queries, decisions, strict=True):
            table.add_row(q, "yes" if d.blocked else "no", f"{d.score:.4f}", f"{d.threshold:.4f}")
        Console().print(table)
