"""Publish a finished training run as a checkpoint folder with its training card and loss plot."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..encoder import CONFIG_FILE, WEIGHTS_FILE


def plot_losses(log_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    evals = [(r["step"], r["eval"]) for r in rows if isinstance(r.get("eval"), dict)]
    fig, axes = plt.subplots(1, 3 if evals else 2, figsize=(15 if evals else 10, 3.6))
    ax1, ax2 = axes[0], axes[1]
    # Alignment-only steps log no reconstruction loss: they leave a gap in that curve.
    recon = [float("nan") if r["recon"] is None else r["recon"] for r in rows]
    ax1.plot(steps, recon, color="tab:blue", lw=1)
    ax1.set(title="reconstruction CE", xlabel="step", ylabel="nats/token")
    if all(r["recon"] is None for r in rows):
        ax1.text(0.5, 0.5, "alignment-only run:\nno reconstruction pass", ha="center", va="center",
                 transform=ax1.transAxes)  # fmt: skip
    ax2.plot(steps, [r["align"] for r in rows], color="tab:orange", lw=1, label="queries")
    if any("document_align" in r for r in rows):
        documents = [r.get("document_align", float("nan")) for r in rows]
        ax2.plot(steps, documents, color="tab:brown", lw=1, label="documents (response text)")
        ax2.legend(fontsize=8)
    ax2.set(title=f"alignment loss ({config_align_loss(log_path)})", xlabel="step")
    if evals:
        ax3 = axes[2]
        for key, color in (
            ("alignment_cosine", "tab:green"),
            ("recall@1", "tab:purple"),
            ("ndcg@10", "tab:red"),
        ):
            ax3.plot([s for s, _ in evals], [e[key] for _, e in evals], marker="o", color=color, label=key)
        ax3.set(title="held-out queries (learning curve)", xlabel="step", ylim=(0, 1))
        ax3.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def config_align_loss(log_path: Path) -> str:
    """The alignment loss a run used, read from the config saved beside its log."""
    config_path = log_path.parent / "train_config.json"
    if config_path.is_file():
        return str(json.loads(config_path.read_text()).get("align_loss", "mse"))
    return "mse"


def publish(
    run_dir: Path,
    dest: Path,
    *,
    sources_json: Path | None,
    plot_path: Path,
    command: str,
    notes: Path | None = None,
) -> Path:
    """Copy ``run_dir/final`` to ``dest`` and write ``dest/CARD.md`` from the run's records."""
    final = run_dir / "final"
    dest.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy2(final / name, dest / name)
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "train_config.json").read_text())
    log_path = run_dir / "loss_log.jsonl"
    # A refit-only stage (steps 0) has no curves: a plot already there (the curves of the
    # stage it extends) is left alone, and the card says which it is.
    if summary["steps"]:
        plot_losses(log_path, plot_path)
    eval_md = (run_dir / "heldout_eval.md").read_text() if (run_dir / "heldout_eval.md").is_file() else ""
    decoded: list[dict[str, str]] = []
    decode_cosine = float("nan")
    if (run_dir / "heldout_eval.json").is_file():
        heldout = json.loads((run_dir / "heldout_eval.json").read_text())
        decoded = heldout.get("decoded", [])
        decode_cosine = float(heldout.get("decode_teacher_cosine", float("nan")))
    sources: dict[str, Any] = json.loads(sources_json.read_text()) if sources_json else {}
    teacher_dim = json.loads((final / CONFIG_FILE).read_text()).get("teacher_dim", "D")
    card = _card(
        summary, config, eval_md, decoded, decode_cosine, sources, plot_path, command, teacher_dim,
        name=dest.name,
        plot_link=Path(os.path.relpath(plot_path.resolve(), dest.resolve())).as_posix(),
    )  # fmt: skip
    if notes is not None:
        card += "\n" + notes.read_text().strip() + "\n"
    (dest / "CARD.md").write_text(card)
    return dest


def _steps_line(summary: dict[str, Any], config: dict[str, Any]) -> str:
    """What the optimiser did, or, for a refit-only stage, that it did nothing."""
    opt = config["optim"]
    if not summary["steps"]:
        refit = summary.get("refit") or {}
        start = Path(str(summary.get("init_from")))
        # Never this machine's absolute path in a card: an absolute start is named by its folder.
        start_name = start.name if start.is_absolute() else start.as_posix()
        return (
            f"- no optimiser steps: the tokens, heads and LoRA of `{start_name}` are kept and the "
            f"alignment head is re-solved in closed form over {refit.get('refit_rows', '?')} rows "
            f"(ridge {refit.get('ridge', '?')}; kept: {refit.get('kept_refit', '?')}), "
            f"dtype {summary['dtype']}"
        )
    return (
        f"- steps {summary['steps']} ({config.get('align_only_steps', 0)} alignment-only, then joint), "
        f"batch {opt['batch_size']}, lr {opt['lr']} (warm-up {opt['warmup_steps']}, linear decay), "
        f"loss = {config['recon_weight']}·recon + {config['align_weight']}·align "
        + (
            f"+ {config['document_align_weight']}·document align (the response text, document prompt) "
            if config.get("document_align_weight")
            else ""
        )
        + f"({config.get('align_loss', 'mse')}), dtype {summary['dtype']}"
        + (f"; only {', '.join(config['train_only'])} trained" if config.get("train_only") else "")
    )


def _card(
    summary: dict[str, Any],
    config: dict[str, Any],
    eval_md: str,
    decoded: list[dict[str, str]],
    decode_cosine: float,
    sources: dict[str, Any],
    plot_path: Path,
    command: str,
    teacher_dim: int | str = 384,
    *,
    name: str = "default",
    plot_link: str | None = None,
) -> str:
    from ..bench.results import portable_model_name

    enc = config["encoder"]
    # A teacher given as a folder is named as results name data, never by this machine's path.
    teacher = portable_model_name(str(enc["teacher"]))
    lines = [
        f"# Training card: the `{name}` l2vg encoder",
        "",
        f"Published with: `{command}`; trained by `l2vg train` with the settings below (the run "
        "folder keeps them in `train_config.json`; it resumes from the last checkpoint if interrupted).",
        "",
        "## What trained",
        f"- backbone `{enc['backbone']}` (frozen), teacher `{teacher}`",
        f"- {enc['n_thought']} thought + {enc['n_compression']} compression tokens, reconstruction "
        f"head Linear(H,H), alignment head Linear(H,{teacher_dim})"
        + (
            f", and a LoRA on the encoding pass (r {enc['encoder_lora']['r']}, alpha "
            f"{enc['encoder_lora']['alpha']}, on {', '.join(enc['encoder_lora']['target_modules'])}; "
            "reconstruction and decoding run without it)"
            if enc.get("encoder_lora")
            else "; nothing else trains"
        ),
        _steps_line(summary, config),
        f"- training examples {summary['train_examples']} (responses ≤ "
        f"{config['responses']['max_new_tokens']} new tokens, greedy, chat template), "
        f"held-out queries {summary['heldout_queries']}",
        f"- wall time: training {summary['train_seconds']} s; whole command this run "
        f"{summary['total_seconds']} s; peak RSS {summary['peak_rss_mb']} MB (2 shared CPU cores)",
        f"- final losses: reconstruction "
        f"{'n/a' if summary['final_recon'] is None else format(summary['final_recon'], '.3f')}, "
        f"alignment ({config.get('align_loss', 'mse')}) "
        f"{'n/a' if summary['final_align'] is None else format(summary['final_align'], '.5f')}",
        "",
        f"![loss curves]({plot_link or plot_path.as_posix()})"
        if summary["steps"]
        else "No optimiser steps, so no loss curves"
        + (
            f"; [the plot]({plot_link or plot_path.as_posix()}) shows the stage this one extends."
            if plot_path.is_file()
            else "."
        ),
        "",
        "## Held-out evaluation",
        "Each held-out query must retrieve the backbone's own response to it among all held-out "
        "responses (embedded by the teacher; the input-centric baseline uses its own space).",
        "",
        eval_md.strip(),
        "",
    ]
    if decoded:
        lines += [
            "## Decoding: what the embedding says",
            "",
            f"Mean teacher cosine between the text decoded from the soft prompts and the real "
            f"response, over {len(decoded)} held-out queries: **{decode_cosine:.3f}** "
            "(the first rows below).",
            "",
            "| query | real response | decoded from the embedding |",
            "|---|---|---|",
        ]
        for row in decoded[:8]:
            cells = [
                row[k].replace("|", "\\|").replace("\n", " ")[:160] for k in ("query", "response", "decoded")
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if sources:
        lines += [
            "## Query pool (data/queries, built by `l2vg queries data/queries`)",
            f"{sources.get('total')} queries after dedupe and screening; "
            + (
                f"the first {config['data']['max_train_queries']} train queries"
                if config["data"].get("max_train_queries")
                else "every train query"
            )
            + f" and the first {config['data'].get('max_heldout_queries')} held-out ones were used "
            "for this checkpoint.",
            "",
            "| source | count | licence |",
            "|---|---|---|",
        ]
        for name, count in sources.get("counts", {}).items():
            lines.append(f"| {name} | {count} | {sources.get('licenses', {}).get(name, '')} |")
        lines.append("")
    return "\n".join(lines)
