"""Training-step memory: micro-batches by example count against micro-batches by tokens.

    python benchmarks/experiments/micro_batch_memory.py [--steps 16] [--tokens 1024]

Runs the first N steps of ``configs/options/control.yaml`` (alignment-only, batch 32, from
the packaged default) twice, each in a fresh process so each has its own peak RSS: once as
configured (``micro_batch_size: 8``) and once with ``micro_batch_tokens`` added. Both see
the same batches in the same order; the update is the same (gradient accumulation), so
the losses must agree. Writes ``benchmarks/results/micro_batch_memory.json``. The first
16 steps hold the pool order's longest micro-batches but one (step 1: 8 rows padded to
~210 tokens); measured on a quiet machine, about 6 minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "options" / "control.yaml"
DEFAULT = ROOT / "l2vg_retrieval" / "checkpoints" / "default"
TARGETS = ROOT / "runs" / "long" / "targets.safetensors"


def run_steps(steps: int, tokens: int | None) -> dict[str, object]:
    """In this process: ``steps`` training steps; peak RSS, seconds per step, losses."""
    import torch

    from l2vg_retrieval.encoder import L2VGEncoder
    from l2vg_retrieval.runtime import peak_rss_mb, resolve_dtype
    from l2vg_retrieval.training.config import load_train_config
    from l2vg_retrieval.training.queries import load_queries
    from l2vg_retrieval.training.responses import read_cache, seed_from
    from l2vg_retrieval.training.targets import build_targets
    from l2vg_retrieval.training.trainer import Trainer, make_examples

    config = load_train_config(CONFIG)
    optim = config.optim.model_copy(update={"micro_batch_tokens": tokens, "steps": steps})
    out = Path(tempfile.mkdtemp(prefix="micro-memory-"))
    config = config.model_copy(update={"optim": optim, "output_dir": out})
    encoder = L2VGEncoder.from_pretrained(DEFAULT, dtype=resolve_dtype(config.dtype, torch.device("cpu")))
    # The committed responses the default was trained on; teacher targets cached under runs/
    # (the default's own run folder when present: same responses, same vectors).
    ids = [str(r["id"]) for r in load_queries(config.data.train_queries)]
    cache = TARGETS if TARGETS.is_file() else ROOT / "runs" / "micro_batch_memory" / "targets.safetensors"
    cache.parent.mkdir(parents=True, exist_ok=True)
    seed_from(config.responses.seed_cache, out / "responses.jsonl", ids)
    responses = read_cache(out / "responses.jsonl")
    targets = build_targets(responses, encoder.teacher, cache)
    examples = make_examples(encoder, responses, targets, ids, config.optim.max_response_tokens)
    trainer = Trainer(encoder, examples, config)
    before = peak_rss_mb()
    losses, seconds = [], []
    for _ in range(steps):
        start = time.perf_counter()
        _, align = trainer.train_step()
        seconds.append(time.perf_counter() - start)
        losses.append(round(align, 6))
    return {
        "micro_batch_size": config.optim.micro_batch_size,
        "micro_batch_tokens": tokens,
        "peak_rss_mb_before_training": round(before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "seconds_per_step": round(sum(seconds) / len(seconds), 2),
        "align_losses": losses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        tokens = None if args.child == "none" else int(args.child)
        print(json.dumps(run_steps(args.steps, tokens)))
        return
    runs = {}
    for label, setting in (("by examples", "none"), ("by tokens", str(args.tokens))):
        proc = subprocess.run(
            [sys.executable, __file__, "--steps", str(args.steps), "--child", setting],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        runs[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(label, {k: v for k, v in runs[label].items() if k != "align_losses"}, flush=True)
    a, b = (runs[k]["align_losses"] for k in runs)
    from l2vg_retrieval.bench.results import write_results

    path = write_results(
        "micro_batch_memory",
        {
            "config": "configs/options/control.yaml",
            "init_from": "packaged default",
            "steps": args.steps,
            "runs": runs,
            "max_loss_difference": max(abs(x - y) for x, y in zip(a, b, strict=True)),
        },
        ROOT / "benchmarks" / "results",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
