"""Response generation throughput: the library's greedy loop against ``model.generate``.

Three configurations over the same training queries, in one process, taking turns (each
round runs a share of every configuration's batches, so load on the shared machine falls on
all alike):

- ``hf-landed``: ``model.generate`` at batch 32 over window-sorted queries, the response
  generator as it first landed;
- ``hf-bucketed``: ``model.generate`` with the new batching (equal-length buckets), which
  separates what the batching buys from what the loop buys;
- ``fast``: :func:`l2vg_retrieval.generation.generate_responses` with the same buckets
  (shared template prefix run once, LM head on the last position only, finished rows
  leaving the batch, no attention mask when a batch has no padding).

Beside them, the **forward bound**: one forward pass over the same tokens with no generation
loop at all (each row's prompt after the shared template prefix, followed by the response
the fast loop wrote, in the same batches; the LM head on the response positions only).
That is the same arithmetic with every matmul at its most efficient size, so no greedy
generator on this machine can beat it; its ratio to the landed generator is the ceiling
for any "x landed" target.

Agreement is reported too: in fp32 both loops must produce identical tokens; in bf16 a
different summation order (the shared prefix runs at batch size 1) flips some greedy
choices, so the teacher cosine between the two responses to each query says whether the
answers still mean the same. Run it with ``l2vg bench generation``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..batching import length_batches
from ..generation import generate_responses, generate_responses_hf
from ..llama_decode import packed_weights

TRAIN_POOL = Path(__file__).resolve().parents[2] / "data" / "queries" / "queries.train.jsonl"


def sample_queries(path: Path, n: int) -> list[str]:
    """``n`` queries spread evenly over the pool (its sources are stored in blocks)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    step = max(1, len(rows) // n)
    return [r["text"] for r in rows[::step][:n]]


def _run(
    fn: Callable[..., list[list[int]]],
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    batches: list[list[int]],
    max_new_tokens: int,
) -> tuple[list[list[int]], float]:
    out: list[list[int]] = [[] for _ in prompts]
    start = time.perf_counter()
    for idx in batches:
        rows = fn(model, tokenizer, [prompts[i] for i in idx], max_new_tokens=max_new_tokens)
        for i, row in zip(idx, rows, strict=True):
            out[i] = row
    return out, time.perf_counter() - start


@torch.inference_mode()
def _forward_bound(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    batches: list[list[int]],
) -> tuple[float, float]:
    """One teacher-forced forward over each batch's prompts and responses.

    Returns its seconds and the share of rows whose response it reproduces (the argmax at
    every response position equals the token the loop chose): 1.0 in float32 says the bound
    did the same work on the same tokens.
    """
    from transformers import DynamicCache

    from ..batching import common_prefix_length, pad_left
    from ..generation import shared_prefix
    from ..kv_cache import CACHE_KWARG

    body, head = model.get_decoder(), model.get_output_embeddings()
    device = next(model.parameters()).device
    predictions: list[tuple[list[int], torch.Tensor]] = []
    start = time.perf_counter()
    for idx in batches:
        # The shared template prefix runs once and its KV states are shared, as in the loop.
        shared = common_prefix_length([prompts[i] for i in idx])
        rows = [list(prompts[i][shared:]) + list(responses[i]) for i in idx]
        input_ids, mask = pad_left(rows, tokenizer.pad_token_id)
        cache = DynamicCache(config=model.config)
        mask, positions = shared_prefix(model, prompts[idx[0]][:shared], mask.to(device), cache)
        inputs = {"input_ids": input_ids.to(device), "attention_mask": mask, "position_ids": positions}
        hidden = body(**inputs, **{CACHE_KWARG: cache}).last_hidden_state
        # Left padding puts every response at the end of its row. The loop runs the LM head
        # once per new token plus once on the token after it: the last width + 1 positions.
        width = max(len(responses[i]) for i in idx)
        tail = hidden[:, hidden.shape[1] - width - 1 :]
        tokens = head(tail.reshape(-1, tail.shape[-1])).float().argmax(dim=-1)
        predictions.append((idx, tokens.view(len(idx), width + 1)))
    seconds = time.perf_counter() - start
    same: list[bool] = []
    for idx, predicted in predictions:
        width = predicted.shape[1] - 1
        for row, i in enumerate(idx):
            # The prediction of each response token sits one position before it.
            same.append(predicted[row, width - len(responses[i]) : width].tolist() == list(responses[i]))
    return seconds, float(np.mean(same))


def _window_sorted(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """The landed generator's batching: length-sorted within windows of 16 batches."""
    window = batch_size * 16
    order = [
        i
        for w in range(0, len(lengths), window)
        for i in sorted(range(w, min(w + window, len(lengths))), key=lambda i: lengths[i])
    ]
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def run_generation_benchmark(
    model: torch.nn.Module,
    tokenizer: Any,
    teacher: Any,
    queries: Sequence[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 128,
    landed_batch_size: int = 32,
    fp32_check_queries: int = 32,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from ..inputs import PromptTemplate, build_input_ids

    template = PromptTemplate.for_tokenizer(tokenizer, use_chat_template=True)
    prompts = build_input_ids(tokenizer, template, list(queries), prompt=None, max_text_tokens=256)
    lengths = [len(p) for p in prompts]
    bucketed = length_batches(lengths, batch_size)
    configs = {
        "hf-landed": (generate_responses_hf, _window_sorted(lengths, landed_batch_size)),
        "hf-bucketed": (generate_responses_hf, bucketed),
        "fast": (generate_responses, bucketed),
    }
    dtype = next(model.parameters()).dtype
    # A few tokens through each path first: one-time kernel set-up is not throughput.
    for fn, _ in configs.values():
        fn(model, tokenizer, prompts[:4], max_new_tokens=2)
    # The configurations take turns, one share of each one's batches per round, so a change
    # in the machine's load (it is shared) falls on all of them alike, not on whichever ran
    # while it lasted; each keeps its own batching.
    rounds = max(1, min(len(batches) for _, batches in configs.values()))
    outputs: dict[str, list[list[int]]] = {name: [[] for _ in prompts] for name in configs}
    seconds = dict.fromkeys(configs, 0.0)
    # The library's loop packs a bfloat16 Llama backbone's weights once for the whole run, as
    # writing a training pool's responses does; the packing is timed (in its first round).
    with packed_weights(model):
        for r in range(rounds):
            if on_step:
                on_step(f"round {r + 1}/{rounds}")
            for name, (fn, batches) in configs.items():
                share = batches[r * len(batches) // rounds : (r + 1) * len(batches) // rounds]
                rows, took = _run(fn, model, tokenizer, prompts, share, max_new_tokens)
                seconds[name] += took
                for idx in share:
                    for i in idx:
                        outputs[name][i] = rows[i]
    runs: dict[str, Any] = {}
    for name, (_, batches) in configs.items():
        new_tokens = sum(len(r) for r in outputs[name])
        runs[name] = {
            "seconds": round(seconds[name], 2),
            "new_tokens": new_tokens,
            "new_tokens_per_s": round(new_tokens / seconds[name], 1),
            "queries_per_s": round(len(prompts) / seconds[name], 2),
            "batches": len(batches),
        }
    if on_step:
        on_step("forward bound")
    bound_seconds, reproduced = _forward_bound(model, tokenizer, prompts, outputs["fast"], bucketed)
    fast_tokens = runs["fast"]["new_tokens"]
    runs["bound"] = {
        "seconds": round(bound_seconds, 2),
        "new_tokens": fast_tokens,
        "new_tokens_per_s": round(fast_tokens / bound_seconds, 1),
        "queries_per_s": round(len(prompts) / bound_seconds, 2),
        "batches": len(bucketed),
    }
    base = runs["hf-landed"]["new_tokens_per_s"]
    ratios = {name: round(r["new_tokens_per_s"] / base, 2) for name, r in runs.items()}

    texts = {
        k: [tokenizer.decode(r, skip_special_tokens=True).strip() or "." for r in v]
        for k, v in outputs.items()
    }
    a = teacher.encode(texts["fast"], batch_size=64)
    b = teacher.encode(texts["hf-bucketed"], batch_size=64)
    agreement = {
        f"identical_rows_{str(dtype).removeprefix('torch.')}": float(
            np.mean([x == y for x, y in zip(outputs["fast"], outputs["hf-bucketed"], strict=True)])
        ),
        "teacher_cosine_fast_vs_hf_mean": float(np.mean(np.sum(a * b, axis=1))),
        f"bound_reproduces_fast_rows_{str(dtype).removeprefix('torch.')}": reproduced,
    }
    if fp32_check_queries and dtype != torch.float32:
        if on_step:
            on_step("fp32 identity check")
        model.float()
        subset = prompts[:fp32_check_queries]
        batches = length_batches([len(p) for p in subset], batch_size)
        fast32, _ = _run(generate_responses, model, tokenizer, subset, batches, max_new_tokens)
        hf32, _ = _run(generate_responses_hf, model, tokenizer, subset, batches, max_new_tokens)
        agreement["identical_rows_float32"] = float(
            np.mean([x == y for x, y in zip(fast32, hf32, strict=True)])
        )
        model.to(dtype)
    return {
        "queries": len(prompts),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "landed_batch_size": landed_batch_size,
        "dtype": str(dtype).removeprefix("torch."),
        "interleaved_rounds": rounds,
        "runs": runs,
        "ratio_vs_landed": ratios,
        # Share of the bound's throughput each generator reaches (1.0 = the bound itself).
        "share_of_bound": {
            name: round(r["new_tokens_per_s"] / runs["bound"]["new_tokens_per_s"], 3)
            for name, r in runs.items()
            if name != "bound"
        },
        "agreement": agreement,
    }
