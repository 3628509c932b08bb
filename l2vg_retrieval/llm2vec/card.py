"""The training card of an LLM2Vec checkpoint: recipe, data, steps, time, memory, commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..bench.results import portable_path
from .reference import META_FILE


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _stage_row(label: str, stage: dict[str, Any]) -> str:
    return (
        f"| {label} | {stage.get('steps')} | {_loss(stage.get('final_loss'))} | "
        f"{_minutes(stage.get('wall_seconds'))} | {stage.get('peak_rss_mb')} MB | "
        f"{stage.get('resumed_from_step')} |"
    )


def render_card(meta: dict[str, Any], folder: Path) -> str:
    training = meta.get("training", {})
    cfg = training.get("config", {})
    mntp, simcse = training.get("mntp", {}), training.get("simcse", {})
    corpus = training.get("corpus", {})
    m, s = cfg.get("mntp", {}), cfg.get("simcse", {})
    total = (mntp.get("wall_seconds") or 0.0) + (simcse.get("wall_seconds") or 0.0)
    peak = max(mntp.get("peak_rss_mb") or 0.0, simcse.get("peak_rss_mb") or 0.0)
    evaluation = mntp.get("last_eval") or {}
    lines = [
        f"# LLM2Vec (unsupervised) for `{meta['backbone']}`",
        "",
        "Bidirectional attention + masked next-token prediction (MNTP, LoRA merged) + unsupervised "
        "SimCSE (a second LoRA), mean pooling: the paper's unsupervised teacher recipe, trained in-package "
        "on a CPU. Use it as a teacher (`encoder.teacher: llm2vec:<this folder>`) or as a baseline "
        "(`LLM2VecEncoder.from_pretrained('llm2vec:<this folder>')`).",
        "",
        f"- backbone `{meta['backbone']}`, weight fingerprint `{meta['backbone_fingerprint']}`; "
        f"embedding dim {meta['embedding_dim']}",
        f"- checkpoint fingerprint `{meta['fingerprint']}`; stages "
        + ", ".join(f"`{st['name']}` (sha256 `{st['sha256'][:16]}…`)" for st in meta["stages"]),
        "",
        "## Recipe",
        "",
        "| | reference (McGill-NLP/llm2vec) | here |",
        "|---|---|---|",
        f"| MNTP LoRA | r 16, alpha 32, dropout 0.05, all projections | r {m.get('lora', {}).get('r')}, "
        f"alpha {m.get('lora', {}).get('alpha')}, dropout {m.get('lora', {}).get('dropout')} |",
        f"| MNTP masking | p 0.2, '_' as mask | p {m.get('mask_probability')}, {m.get('mask_token')!r} |",
        f"| MNTP data | 1,000 steps x 32 x 512 tokens, wikitext-103 | {m.get('steps')} steps x "
        f"{m.get('batch_size')} x {m.get('seq_len')} tokens, lr {m.get('lr')} |",
        f"| SimCSE | batch 128, lr 3e-5, 1,000 steps, attention dropout 0.3, T 0.05 | batch "
        f"{s.get('batch_size')}, lr {s.get('lr')}, {s.get('steps')} steps, attention dropout "
        f"{s.get('attention_dropout')}, T {s.get('temperature')}, max length {s.get('max_length')} |",
        "",
        "## Data",
        "",
        f"{corpus.get('train', '?')} training texts and {corpus.get('heldout', '?')} held out (for the MNTP "
        "held-out loss), read from "
        + ", ".join(
            f"`{Path(p).name}`"
            for p in [cfg.get("corpus", {}).get(k) for k in ("queries", "responses")]
            + list(cfg.get("corpus", {}).get("extra_texts", []))
            if p
        )
        + " (with the default config: the query pool's train split and the backbone's cached answers to "
        "those queries; licences in data/queries/sources.json). Answers to held-out queries are not read.",
        "",
        "| source | read | too short | duplicate | overlap with evaluation data | kept |",
        "|---|---|---|---|---|---|",
    ]
    for source, c in corpus.get("counts", {}).items():
        lines.append(
            f"| {source} | {c['read']} | {c['too_short']} | {c['duplicate']} | {c['overlap']} | {c['kept']} |"
        )
    check = corpus.get("overlap_check", {})
    lines += [
        "",
        f"Overlap check: exact match, a shared {check.get('ngram')}-word span, or containing a short "
        f"evaluation text, against {len(check.get('eval_files', []))} evaluation files "
        "(QA, BRIGHT-style, harmful retrieval, the harm taxonomy, sample corpus, gensim STS/classification).",
        "",
        "## Training",
        "",
        "| stage | steps | final loss | wall time | peak RSS | resumed from |",
        "|---|---|---|---|---|---|",
        _stage_row("MNTP", mntp),
        _stage_row("SimCSE", simcse),
        "",
        f"Total wall time {_minutes(total)} (CPU), peak resident memory of the training process "
        f"{peak:.0f} MB.",
    ]
    if evaluation:
        lines.append(
            f"Held-out MNTP loss {evaluation.get('heldout_loss')}, masked-token accuracy "
            f"{evaluation.get('heldout_accuracy')}."
        )
    commands = [c for c in (mntp.get("command"), simcse.get("command")) if c]
    if commands:
        lines += ["", "## Commands", "", "```bash", *dict.fromkeys(commands), "```"]
    lines.append("")
    lines += [
        "Loss logs: `mntp/loss.jsonl` and `simcse/loss.jsonl` under the run directory "
        f"(`{portable_path(folder.parent)}`)."
    ]
    return "\n".join(lines) + "\n"


def write_card(folder: Path) -> Path:
    meta = json.loads((folder / META_FILE).read_text())
    path = folder / "CARD.md"
    path.write_text(render_card(meta, folder))
    return path
