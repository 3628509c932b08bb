"""queries → responses → teacher targets → training → held-out evaluation, resumable at each stage."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..backbones import LoadedBackbone, LoadedTeacher, load_backbone
from ..config import OPTION_FIELDS, EncoderConfig, EncoderLoraConfig
from ..encoder import L2VGEncoder, read_checkpoint_meta
from ..runtime import peak_rss_mb, resolve_device, resolve_dtype
from .config import TrainConfig
from .evaluate import TRIVIAL, curve_evaluator, evaluate_heldout, format_table
from .queries import load_queries
from .refit import refit_alignment_head
from .responses import generate_response_cache, seed_from
from .targets import build_targets
from .trainer import Trainer, make_examples

logger = logging.getLogger(__name__)


def run_training(
    config: TrainConfig,
    *,
    init_from: Path | None = None,
    backbone: LoadedBackbone | None = None,
    teacher: LoadedTeacher | None = None,
    evaluate_baselines: bool = True,
    show_progress_bar: bool = True,
) -> dict[str, Any]:
    """Run (or resume) every stage; returns the summary also written to ``summary.json``.

    ``init_from`` starts from a trained checkpoint instead of fresh tokens (to extend a
    model with more data or steps); resuming an interrupted run needs nothing: the
    latest checkpoint under ``output_dir`` is picked up.
    """
    started = time.time()
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(config.model_dump_json(indent=2))

    device = resolve_device(None)
    dtype = resolve_dtype(config.dtype, device)
    backbone = backbone or load_backbone(config.encoder.backbone)
    if init_from is not None:
        encoder = _encoder_from(init_from, config, backbone=backbone, teacher=teacher, dtype=dtype)
    else:
        encoder = L2VGEncoder.from_config(config.encoder, backbone=backbone, teacher=teacher, dtype=dtype)

    train_rows = load_queries(config.data.train_queries)[: config.data.max_train_queries]
    heldout_rows: list[dict[str, Any]] = []
    if config.data.heldout_queries is not None:
        heldout_rows = load_queries(config.data.heldout_queries)[: config.data.max_heldout_queries]
        overlap = {r["id"] for r in train_rows} & {r["id"] for r in heldout_rows}
        if overlap:
            raise ValueError(f"{len(overlap)} held-out query ids also appear in the training queries")

    t0 = time.time()
    if config.responses.seed_cache is not None:
        wanted = [str(r["id"]) for r in heldout_rows + train_rows]
        copied = seed_from(config.responses.seed_cache, config.responses_path, wanted)
        logger.info("seeded %d responses from %s", copied, config.responses.seed_cache)
    responses = generate_response_cache(
        heldout_rows + train_rows,
        config.responses_path,
        encoder.lm,
        encoder.tokenizer,
        max_new_tokens=config.responses.max_new_tokens,
        batch_size=config.responses.batch_size,
        max_query_tokens=config.responses.max_query_tokens,
        use_chat_template=config.encoder.use_chat_template,
        show_progress_bar=show_progress_bar,
    )
    response_seconds = time.time() - t0
    peak_mb = {"responses": round(peak_rss_mb(), 1)}
    t1 = time.time()
    targets = build_targets(responses, encoder.teacher, config.targets_path)
    target_seconds = time.time() - t1
    peak_mb["targets"] = round(peak_rss_mb(), 1)

    train_ids = [str(r["id"]) for r in train_rows]
    examples = make_examples(encoder, responses, targets, train_ids, config.optim.max_response_tokens)
    trainer = Trainer(encoder, examples, config)
    rows = [responses[str(r["id"])] for r in heldout_rows]
    # Learning curves: held-out alignment and response retrieval every eval_every steps.
    curve = curve_evaluator(rows, teacher=encoder.teacher) if rows and config.eval_every else None
    result = trainer.run(show_progress_bar=show_progress_bar, evaluate=curve)
    peak_mb["training"] = round(peak_rss_mb(), 1)

    sgd_head_scores = None
    refit_info: dict[str, Any] | None = None
    if config.refit_align_head:
        if rows:
            before = evaluate_heldout(encoder, rows, teacher=encoder.teacher, n_decode=0)
            sgd_head_scores = before["models"]["l2vg-trained"]
        prompts = [None, config.encoder.query_instruction]
        refit_examples = examples
        if config.refit_max_examples is not None and len(examples) > config.refit_max_examples:
            pick = torch.randperm(len(examples), generator=torch.Generator().manual_seed(config.seed))
            refit_examples = [examples[i] for i in pick[: config.refit_max_examples].tolist()]
        t2 = time.time()
        refit_info = refit_alignment_head(
            encoder,
            refit_examples,
            prompts,
            seed=config.seed,
            document_prompt=config.encoder.document_prompt if config.refit_with_documents else None,
        )
        refit_info["seconds"] = round(time.time() - t2, 1)
        peak_mb["refit"] = round(peak_rss_mb(), 1)

    final_dir = out / "final"
    summary: dict[str, Any] = {
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "train_examples": len(examples),
        "heldout_queries": len(heldout_rows),
        "final_recon": result.final_recon,
        "final_align": result.final_align,
        "train_seconds": round(result.wall_seconds, 1),
        "response_seconds_this_run": round(response_seconds, 1),
        "target_seconds_this_run": round(target_seconds, 1),
        "dtype": str(dtype).removeprefix("torch."),
        "init_from": str(init_from) if init_from else None,
        "refit": refit_info,
    }
    if rows:
        baselines = _baselines(config, backbone, encoder) if evaluate_baselines else {}
        t3 = time.time()
        report = evaluate_heldout(encoder, rows, teacher=encoder.teacher, baselines=baselines)
        summary["eval_seconds"] = round(time.time() - t3, 1)
        if sgd_head_scores is not None:
            # The head before the closed-form refit, for comparison: the paper's (SGD only), or
            # in a refit-only stage the head of the checkpoint it started from.
            before = "SGD head" if result.steps else "starting head"
            report["models"] = {
                "l2vg-trained": report["models"].pop("l2vg-trained"),
                f"l2vg-trained ({before}, before refit)": sgd_head_scores,
                **report["models"],
            }
        (out / "heldout_eval.json").write_text(json.dumps(report, indent=2))
        (out / "heldout_eval.md").write_text(format_table(report) + "\n")
        summary["heldout"] = {k: v for k, v in report.items() if k != "decoded"}
        peak_mb["evaluation"] = round(peak_rss_mb(), 1)
    summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
    # The process peak so far after each stage: the first stage where it jumps is the culprit.
    summary["peak_rss_mb_after"] = peak_mb
    summary["total_seconds"] = round(time.time() - started, 1)
    encoder.save_pretrained(final_dir, extra={"training": summary})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _encoder_from(
    init_from: Path,
    config: TrainConfig,
    *,
    backbone: LoadedBackbone,
    teacher: LoadedTeacher | None,
    dtype: torch.dtype,
) -> L2VGEncoder:
    """The encoder to train, started from the checkpoint ``init_from``.

    The same config extends the checkpoint. A config that differs only in option fields
    (exit layer, pooling, exit norm: issue 12) warm-starts the new options from it: the
    shared tensors carry over and each new option module starts as the original encoder,
    so options are compared at an equal training budget from the same starting point.
    The encoder LoRA may grow in rank (or change alpha): the trained adapter is embedded in
    the larger one, computing the same update, so a larger adapter continues from the
    checkpoint instead of starting from scratch. Anything else (tokens, backbone, teacher,
    the LoRA's modules) is refused: those tensors would not fit.
    """
    saved = EncoderConfig.model_validate(read_checkpoint_meta(init_from)["config"])
    ignore = {"document_mode"}
    if saved.model_dump(exclude=ignore) == config.encoder.model_dump(exclude=ignore):
        return L2VGEncoder.from_pretrained(init_from, backbone=backbone, teacher=teacher, dtype=dtype)
    core = ignore | set(OPTION_FIELDS) | {"encoder_lora"}
    if saved.model_dump(exclude=core) != config.encoder.model_dump(exclude=core):
        raise ValueError(
            f"init_from checkpoint {init_from} has a different encoder config than {config.output_dir} "
            f"beyond the option fields ({', '.join(OPTION_FIELDS)}) and the encoder LoRA's rank"
        )
    _check_lora_growth(saved.encoder_lora, config.encoder.encoder_lora, init_from)
    if saved.teacher_rotation != config.encoder.teacher_rotation or config.encoder.truncate_dim:
        raise ValueError("a warm start cannot change teacher_rotation or train with truncate_dim set")
    # Built once, with the new options, and given the checkpoint's tensors: no second encoder
    # (and no second LoRA injected into the shared backbone) just to read them.
    encoder = L2VGEncoder.from_config(config.encoder, backbone=backbone, teacher=teacher, dtype=dtype)
    fresh = encoder.warm_start_from_checkpoint(init_from)
    logger.info("warm start from %s; option modules starting fresh: %s", init_from, fresh or "none")
    return encoder


def _check_lora_growth(
    saved: EncoderLoraConfig | None, target: EncoderLoraConfig | None, init_from: Path
) -> None:
    """A warm start may give the encoder LoRA a larger rank (or another alpha), nothing else:
    the trained adapter is embedded in the larger one, computing the same update."""
    if saved == target:
        return
    if saved is None or target is None:
        raise ValueError(
            f"init_from checkpoint {init_from}: a warm start cannot add or remove the encoder LoRA"
        )
    same = {"dropout", "target_modules"}
    if saved.model_dump(include=same) != target.model_dump(include=same) or target.r < saved.r:
        raise ValueError(
            f"init_from checkpoint {init_from}: its encoder LoRA (r {saved.r}, dropout {saved.dropout}, "
            f"on {list(saved.target_modules)}) can only grow in rank or change alpha, not become "
            f"r {target.r}, dropout {target.dropout}, on {list(target.target_modules)}"
        )


def _baselines(config: TrainConfig, backbone: LoadedBackbone, trained: L2VGEncoder) -> dict[str, Any]:
    from ..baselines import InputCentricEncoder

    # Same loaded teacher model as the trained encoder: no second copy in memory.
    untrained = L2VGEncoder.from_config(
        config.encoder, backbone=backbone, teacher=trained.teacher.teacher, dtype=trained.dtype_
    )
    return {
        "l2vg-untrained": untrained,
        "input-centric": InputCentricEncoder(backbone, dtype=trained.dtype_),
        TRIVIAL: trained.teacher,
    }
