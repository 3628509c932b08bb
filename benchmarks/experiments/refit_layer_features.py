"""Do other states of the encoding pass predict the answer's embedding better? (issue 9)

The default's embedding is a linear map of the mean soft prompt, which is the reconstruction
head applied to the *last* layer's states at the compression positions. A wider head over
the same states adds little (``refit_head_capacity.py``: +0.004), so this asks whether
*other* states carry what the last layer lost: the compression positions' states after
each decoder layer, and the mean state of the query's own tokens (the input-centric view)
at a few depths. Every feature set gets its ridge head solved the way the refit solves the
default's (validation by example, three readings per example: the query alone, with the
instruction, its answer with the document prompt) and is scored on the 300 held-out
queries as the held-out evaluation scores them.

    python benchmarks/experiments/refit_layer_features.py OUT.json --examples 4000

One encoder pass collects every feature (forward hooks on the decoder layers); they are
cached under runs/exp/ as fp16, so further feature sets cost only the solves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from qa_hybrid import ROOT
from refit_head_capacity import fit_and_score, refit_views, teacher_vectors

from l2vg_retrieval import L2VGEncoder
from l2vg_retrieval.batching import common_prefix_length, run_batched

# Wider than the refit's grid: concatenated blocks have thousands of features.
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
TEXT_LAYERS = (10, 20, 30)  # depths (decoder layers run) at which the text's mean state is kept


def layer_features(encoder: L2VGEncoder, texts: list[str], prompt: str | None) -> dict[str, torch.Tensor]:
    """``soft`` [N, H] mean soft prompt; ``comp`` [N, L, H] mean compression state after each
    layer; ``text`` [N, len(TEXT_LAYERS), H] mean state of the text's own tokens."""
    layers = encoder.decoder_layers()
    n_layers, hidden, n_special = len(layers), encoder.hidden_size, encoder.config.n_special
    n_comp = encoder.config.n_compression
    ids = encoder.tokenize(texts, prompt)
    hint = encoder.prefix_hint(prompt)
    captured: list[torch.Tensor] = []

    def hook(_module: Any, _args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    def batch_fn(batch: list[list[int]]) -> torch.Tensor:
        captured.clear()
        soft = encoder.soft_prompts_from_ids(batch, hint).float().mean(1)
        # A prompt's first batch also runs its shared prefix once (then cached): keep the
        # last pass only, the batch's own.
        states = captured[-n_layers:]
        shared = common_prefix_length(batch, list(hint or encoder.template.prefix_ids))
        own = torch.tensor([len(row) - shared for row in batch])
        width = states[0].shape[1] - n_special  # the fused pass: padded text, then special tokens
        # Left padding: a row's own tokens are its last ``own`` text positions.
        text_mask = (torch.arange(width).unsqueeze(0) >= (width - own).unsqueeze(1)).float()
        comp = torch.stack([h[:, -n_comp:].float().mean(1) for h in states], dim=1)
        text = torch.stack(
            [
                (states[k - 1][:, :width].float() * text_mask.unsqueeze(-1)).sum(1)
                / text_mask.sum(1, keepdim=True).clamp(min=1)
                for k in TEXT_LAYERS
            ],
            dim=1,
        )
        return torch.cat([soft, comp.flatten(1), text.flatten(1)], dim=1)

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        with torch.inference_mode():
            flat = run_batched(
                ids, [len(i) for i in ids], batch_fn, batch_size=32, show_progress_bar=True, desc="features"
            )
    finally:
        for handle in handles:
            handle.remove()
    comp_end = hidden + n_layers * hidden
    return {
        "soft": flat[:, :hidden],
        "comp": flat[:, hidden:comp_end].view(-1, n_layers, hidden),
        "text": flat[:, comp_end:].view(-1, len(TEXT_LAYERS), hidden),
    }


def feature_cache(n_examples: int) -> Path:
    return ROOT / "runs" / "exp" / f"layer_features_{n_examples}.pt"


def cached_features(encoder: L2VGEncoder, n_examples: int) -> dict[str, Any]:
    cache = feature_cache(n_examples)
    if cache.is_file():
        return torch.load(cache)
    # The same seeded sample as refit_head_capacity.py, so the two experiments compare.
    answers, views, held = refit_views(encoder, n_examples)
    instruction = encoder.config.query_instruction
    parts = [layer_features(encoder, texts, prompt) for texts, prompt in views]
    features: dict[str, Any] = {
        "train": {k: torch.cat([p[k] for p in parts]).half() for k in parts[0]},
        "train_targets": teacher_vectors(encoder, answers).repeat(len(views), 1),
        "heldout": {
            k: v.half() for k, v in layer_features(encoder, [r["query"] for r in held], instruction).items()
        },
        "heldout_targets": teacher_vectors(encoder, [r["response"].strip() or r["query"] for r in held]),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(features, cache)
    return features


def standardised(blocks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each block scaled to unit mean variance, so one ridge strength treats them alike."""
    return [b / b.float().var(0).mean().sqrt().clamp(min=1e-8) for b in blocks]


def feature_set(f: dict[str, torch.Tensor], spec: list[tuple[str, int | None]]) -> torch.Tensor:
    blocks = [f[name].float() if index is None else f[name][:, index].float() for name, index in spec]
    return torch.cat(blocks, dim=1)


def main(out: str, n_examples: int) -> None:
    encoder = L2VGEncoder.from_pretrained()
    f = cached_features(encoder, n_examples)
    n_layers = f["train"]["comp"].shape[1]
    sets: dict[str, list[tuple[str, int | None]]] = {"soft_mean (the default's feature)": [("soft", None)]}
    for layer in range(4, n_layers + 1, 2):
        sets[f"comp_layer{layer}"] = [("comp", layer - 1)]
    for i, depth in enumerate(TEXT_LAYERS):
        sets[f"text_mean_layer{depth}"] = [("text", i)]
    scores: dict[str, Any] = {}

    def run(name: str, spec: list[tuple[str, int | None]]) -> None:
        train = torch.cat(standardised([feature_set(f["train"], [s]) for s in spec]), dim=1)
        held_blocks = [feature_set(f["heldout"], [s]) for s in spec]
        # The held-out blocks scaled by the *training* blocks' scale.
        scales = [feature_set(f["train"], [s]).var(0).mean().sqrt().clamp(min=1e-8) for s in spec]
        held = torch.cat([b / s for b, s in zip(held_blocks, scales, strict=True)], dim=1)
        scores[name] = fit_and_score(train, f["train_targets"], held, f["heldout_targets"], 3, RIDGES)
        s = scores[name]
        print(name, s["heldout_alignment_cosine"], s["heldout_recall@1"], s["ridge"], flush=True)

    for name, spec in sets.items():
        run(name, spec)
    singles = {k: v["heldout_alignment_cosine"] for k, v in scores.items() if k.startswith("comp_layer")}
    best_layers = sorted(singles, key=singles.__getitem__, reverse=True)[:3]
    for name in best_layers:
        run(f"soft_mean + {name}", [("soft", None), sets[name][0]])
    for i, depth in enumerate(TEXT_LAYERS):
        run(f"soft_mean + text_mean_layer{depth}", [("soft", None), ("text", i)])
    run(
        "soft_mean + comp layers 10,15,20,25 + text_mean_layer20",
        [("soft", None), ("comp", 9), ("comp", 14), ("comp", 19), ("comp", 24), ("text", 1)],
    )
    report = {
        "command": f"python benchmarks/experiments/refit_layer_features.py {out} --examples {n_examples}",
        "examples": n_examples,
        "rows": int(f["train"]["soft"].shape[0]),
        "heldout_queries": int(f["heldout"]["soft"].shape[0]),
        "feature_sets": scores,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--examples", type=int, default=4000)
    args = parser.parse_args()
    main(args.out, args.examples)
