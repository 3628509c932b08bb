"""corpus → MNTP → SimCSE → checkpoint, each stage resumable and skipped once finished."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backbones import LoadedBackbone, load_backbone, resolve_backbone_path, weights_fingerprint
from .checkpoint import write_checkpoint
from .config import LLM2VecTrainConfig
from .corpus import build_corpus, load_corpus
from .lora import ADAPTER_WEIGHTS, apply_adapter, sha256_file
from .mntp import pack_blocks, train_mntp
from .simcse import train_simcse

logger = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"
OnStep = Callable[[int, float], None] | None


class StageOrderError(RuntimeError):
    """A stage was asked for before the stage it builds on has finished."""


def _summary(folder: Path) -> dict[str, Any] | None:
    path = folder / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _stage_key(config: LLM2VecTrainConfig, stage: str) -> dict[str, Any]:
    """What a finished stage was made from: a change in any of it means it is not finished."""
    settings = getattr(config, stage)
    return {
        "settings": settings.resume_key(),
        "steps": settings.steps,
        "corpus": config.corpus.model_dump(mode="json"),
        "backbone": config.backbone,
        "seed": config.seed,
    }


def _finished(config: LLM2VecTrainConfig, stage: str) -> dict[str, Any] | None:
    """The stage's summary if it finished with the current settings and its adapter is intact."""
    summary = _summary(config.stage_dir(stage))
    adapter = config.stage_dir(stage) / "adapter" / ADAPTER_WEIGHTS
    if (
        summary
        and summary.get("key") == _stage_key(config, stage)
        and adapter.is_file()
        and summary.get("adapter_sha256") == sha256_file(adapter)
    ):
        return summary
    return None


def _private_backbone(config: LLM2VecTrainConfig, backbone: LoadedBackbone | None) -> LoadedBackbone:
    """Weights a stage may change in place: a fresh load, or a copy of the backbone given.

    A fresh load (0.25 s for the cached default) rather than a copy keeps a single set of
    weights in memory during training.
    """
    if backbone is None:
        return load_backbone(config.backbone)
    return LoadedBackbone(backbone.name, copy.deepcopy(backbone.model).float(), backbone.tokenizer)


def run_corpus(config: LLM2VecTrainConfig) -> dict[str, Any]:
    return build_corpus(config.corpus, config.corpus_dir, seed=config.seed)


def run_mntp(
    config: LLM2VecTrainConfig,
    *,
    backbone: LoadedBackbone | None = None,
    command: str | None = None,
    show_progress_bar: bool = True,
    on_step: OnStep = None,
) -> dict[str, Any]:
    """Build the corpus if needed, then train (or resume, or skip) the MNTP stage."""
    folder = config.stage_dir("mntp")
    done = _finished(config, "mntp")
    if done is not None:
        return done
    manifest = run_corpus(config)
    train, heldout = load_corpus(config.corpus_dir)
    private = _private_backbone(config, backbone)
    fingerprint = weights_fingerprint(private.model)
    tokenizer = private.tokenizer
    separator = tokenizer.eos_token_id  # type: ignore[attr-defined]
    encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    blocks = pack_blocks(encode(train), config.mntp.seq_len, separator)
    held = pack_blocks(encode(heldout), config.mntp.seq_len, separator) if heldout else None
    logger.info("mntp: %d blocks of %d tokens", blocks.shape[0], config.mntp.seq_len)
    _, result = train_mntp(
        private.model,
        tokenizer,
        blocks,
        config.mntp,
        folder,
        heldout_blocks=held,
        seed=config.seed,
        base_model=config.backbone,
        show_progress_bar=show_progress_bar,
        on_step=on_step,
    )
    summary = {
        **result.as_dict(),
        "adapter_sha256": sha256_file(folder / "adapter" / ADAPTER_WEIGHTS),
        "backbone": config.backbone,
        "backbone_fingerprint": fingerprint,
        "train_blocks": int(blocks.shape[0]),
        "tokens_seen": result.steps * config.mntp.batch_size * config.mntp.seq_len,
        "corpus": {"train": manifest["train"], "heldout": manifest["heldout"]},
        "command": command,
        "key": _stage_key(config, "mntp"),
    }
    if result.steps >= config.mntp.steps:
        (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_simcse(
    config: LLM2VecTrainConfig,
    *,
    backbone: LoadedBackbone | None = None,
    command: str | None = None,
    show_progress_bar: bool = True,
    on_step: OnStep = None,
) -> dict[str, Any]:
    """Train (or resume, or skip) SimCSE on the MNTP-merged model; MNTP must have finished."""
    folder = config.stage_dir("simcse")
    mntp = _finished(config, "mntp")
    if mntp is None:
        raise StageOrderError(
            f"MNTP has not finished under {config.stage_dir('mntp')}: run `l2vg llm2vec mntp CONFIG` first"
        )
    done = _finished(config, "simcse")
    if done is not None and done.get("mntp_sha256") == mntp["adapter_sha256"]:
        return done
    train, _ = load_corpus(config.corpus_dir)
    private = _private_backbone(config, backbone)
    if weights_fingerprint(private.model) != mntp["backbone_fingerprint"]:
        raise StageOrderError("the backbone's weights differ from the ones MNTP was trained on")
    model = apply_adapter(private.model, config.stage_dir("mntp") / "adapter")
    _, result = train_simcse(
        model,
        private.tokenizer,
        train,
        config.simcse,
        folder,
        seed=config.seed,
        base_model=config.backbone,
        identity={"mntp_sha256": mntp["adapter_sha256"]},
        show_progress_bar=show_progress_bar,
        on_step=on_step,
    )
    summary = {
        **result.as_dict(),
        "adapter_sha256": sha256_file(folder / "adapter" / ADAPTER_WEIGHTS),
        "mntp_sha256": mntp["adapter_sha256"],
        "texts_seen": result.steps * config.simcse.batch_size,
        "command": command,
        "key": _stage_key(config, "simcse"),
    }
    if result.steps >= config.simcse.steps:
        (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def export_checkpoint(config: LLM2VecTrainConfig) -> Path:
    """Write ``output_dir/final``: both finished adapters, the config with fingerprints, a card."""
    from transformers import AutoConfig

    from ..bench.results import portable_tree
    from .card import write_card

    mntp, simcse = _finished(config, "mntp"), _finished(config, "simcse")
    if mntp is None or simcse is None or simcse.get("mntp_sha256") != mntp["adapter_sha256"]:
        raise StageOrderError(
            "both MNTP and SimCSE (on that MNTP adapter) must finish before the checkpoint is written"
        )
    model_config = AutoConfig.from_pretrained(resolve_backbone_path(config.backbone))
    manifest = json.loads((config.corpus_dir / "manifest.json").read_text())
    folder = write_checkpoint(
        config.final_dir,
        backbone_name=config.backbone,
        backbone_fingerprint=mntp["backbone_fingerprint"],
        model_config=model_config,
        stage_dirs={
            "mntp": config.stage_dir("mntp") / "adapter",
            "simcse": config.stage_dir("simcse") / "adapter",
        },
        settings={"max_length": config.max_length, "pooling": "mean", "instruction_pooled": False},
        # Configs, summaries and the corpus manifest name files; the card must not name this machine.
        training=portable_tree(
            {
                "config": json.loads(config.model_dump_json()),
                "mntp": mntp,
                "simcse": simcse,
                "corpus": {k: manifest[k] for k in ("counts", "train", "heldout", "overlap_check")},
            }
        ),
    )
    write_card(folder)
    return folder


def run_all(
    config: LLM2VecTrainConfig,
    *,
    backbone: LoadedBackbone | None = None,
    command: str | None = None,
    show_progress_bar: bool = True,
) -> dict[str, Any]:
    """Every stage in order; returns a summary (also in the checkpoint's card).

    Each stage trains its own fresh copy of the backbone (or of ``backbone``, if given).
    """
    started = time.time()
    mntp = run_mntp(config, backbone=backbone, command=command, show_progress_bar=show_progress_bar)
    simcse = run_simcse(config, backbone=backbone, command=command, show_progress_bar=show_progress_bar)
    folder = export_checkpoint(config)
    return {
        "checkpoint": str(folder),
        "teacher_name": f"llm2vec:{folder}",
        "mntp": mntp,
        "simcse": simcse,
        "this_run_seconds": round(time.time() - started, 1),
    }
