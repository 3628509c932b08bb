"""Where a greedy decode step's time goes, and what the hand-written Llama step saves (issue 9).

The library's greedy loop made 2.28x the new tokens/s of the landed ``model.generate``
generator (interleaved, ``benchmarks/results/generation.json`` of 2026-11-28, before
pre-packed weights); the issue asks for 2.5x. This measures, side by side in one process and
alternating (the median step of each repetition), one decode step at batch 128 after a
60-token prompt:

- ``transformers``: the step through the model (what the loop runs for any backbone the
  hand-written step does not cover: the model's decoder with the library's
  preallocated cache and single-query attention, the LM head on the last position, argmax);
- ``hand-written``: :class:`l2vg_retrieval.llama_decode.LlamaDecodeStep`, the same
  arithmetic written out for a Llama backbone with nothing else: q/k/v and gate/up as one
  matmul each, the cache's keys stored transposed so that attention reads both cache
  halves in place (no copy per layer), RMSNorm and rotary as the model computes them;
- ``hand-written, packed weights``: the same step with its weights pre-packed once for
  oneDNN (what the library runs in bfloat16 inside ``llama_decode.packed_weights``, as when
  writing a pool's responses: the same kernel and bits as ``F.linear``,
  without reordering the weight on every call);
- ``matmuls only``: the step's seven weight matmuls per layer and the LM head at the same
  shapes, on fresh inputs: the arithmetic no step can skip (plain and pre-packed).

It also checks that both hand-written steps pick exactly the tokens the model does.

    python benchmarks/experiments/decode_step_overhead.py OUT.json [--reps 5]

About 6 min with the cores to itself at ``--reps 9``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from l2vg_retrieval.backbones import load_backbone
from l2vg_retrieval.decode_attention import decode_attention
from l2vg_retrieval.kv_cache import CACHE_KWARG, preallocated_cache
from l2vg_retrieval.llama_decode import LlamaDecodeStep, Matmul

BATCH, PROMPT, STEPS = 128, 60, 14


def _median_step(step: Callable[[int], torch.Tensor]) -> tuple[float, torch.Tensor]:
    times, tokens = [], []
    for s in range(STEPS):
        start = time.perf_counter()
        tokens.append(step(s))
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]) * 1e3, torch.stack(tokens)


def main(out: str, reps: int) -> None:
    torch.manual_seed(0)
    backbone = load_backbone("smollm2-135m-instruct")
    model = backbone.model.to(torch.bfloat16).eval()
    body, head, cfg = model.get_decoder(), model.get_output_embeddings(), model.config
    prompt_ids = torch.randint(100, cfg.vocab_size - 100, (BATCH, PROMPT))
    capacity = PROMPT + STEPS + 1

    def prefill() -> tuple[Any, torch.Tensor]:
        cache = preallocated_cache(cfg, capacity)
        hidden = body(input_ids=prompt_ids, **{CACHE_KWARG: cache}, use_cache=True).last_hidden_state
        return cache, head(hidden[:, -1].contiguous()).float().argmax(-1)

    def run_transformers() -> tuple[float, torch.Tensor]:
        cache, tokens = prefill()
        state = {"tokens": tokens}

        def step(s: int) -> torch.Tensor:
            positions = torch.full((BATCH, 1), PROMPT + s)
            hidden = body(
                input_ids=state["tokens"][:, None],
                position_ids=positions,
                **{CACHE_KWARG: cache},
                use_cache=True,
            ).last_hidden_state
            state["tokens"] = head(hidden[:, -1].contiguous()).float().argmax(-1)
            return state["tokens"]

        return _median_step(step)

    def run_hand_written(pack: bool) -> tuple[float, torch.Tensor]:
        cache, tokens = prefill()
        writer = LlamaDecodeStep(model, cache, None, capacity, pack_weights=pack)
        assert writer.packed == pack, "pre-packed weights do not reproduce F.linear on this machine"
        state = {"tokens": tokens}

        def step(s: int) -> torch.Tensor:
            hidden = writer(state["tokens"], torch.full((BATCH,), PROMPT + s))
            state["tokens"] = writer.logits(hidden).float().argmax(-1)
            return state["tokens"]

        return _median_step(step)

    shapes = [(proj.weight.shape) for layer in body.layers for proj in (
        layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
        layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]  # fmt: skip
    weights = [torch.randn(s, dtype=torch.bfloat16) for s in shapes] + [head.weight]
    inputs = {w.shape[1]: torch.randn(BATCH, w.shape[1], dtype=torch.bfloat16) for w in weights}

    packed = [Matmul(w, BATCH, True) for w in weights]

    def run_matmuls() -> tuple[float, torch.Tensor]:
        return _median_step(lambda s: torch.stack([F.linear(inputs[w.shape[1]], w)[0, 0] for w in weights]))

    def run_packed_matmuls() -> tuple[float, torch.Tensor]:
        return _median_step(
            lambda s: torch.stack([m(inputs[w.shape[1]])[0, 0] for m, w in zip(packed, weights, strict=True)])
        )

    runs = {
        "transformers": run_transformers,
        "hand-written": lambda: run_hand_written(False),
        "hand-written, packed weights": lambda: run_hand_written(True),
        "matmuls only": run_matmuls,
        "matmuls only, packed weights": run_packed_matmuls,
    }
    measured: dict[str, list[float]] = {k: [] for k in runs}
    same: list[float] = []
    with torch.inference_mode(), decode_attention(model):
        for fn in runs.values():  # one-time kernel set-up is not a step's cost
            fn()
        for rep in range(reps):
            tokens = {}
            for name, fn in runs.items():
                ms, tokens[name] = fn()
                measured[name].append(round(ms, 1))
            same.append(
                min(
                    float((tokens["transformers"] == tokens[k]).float().mean())
                    for k in ("hand-written", "hand-written, packed weights")
                )
            )
            print(rep, {k: v[-1] for k, v in measured.items()}, flush=True)
    medians = {k: statistics.median(v) for k, v in measured.items()}
    base = medians["transformers"]
    report = {
        "command": f"python benchmarks/experiments/decode_step_overhead.py {out} --reps {reps}",
        "batch": BATCH,
        "prompt_tokens": PROMPT,
        "dtype": "bfloat16",
        "step_ms_per_repetition": measured,
        "step_ms_median": medians,
        "share_of_transformers_step": {k: round(v / base, 3) for k, v in medians.items()},
        "hand_written_same_tokens": same,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["share_of_transformers_step"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    main(args.out, args.reps)
