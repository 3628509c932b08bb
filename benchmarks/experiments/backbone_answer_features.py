"""Would the larger packaged backbone carry more of the answer? (issue 9)

The student's held-out alignment (0.611) stays under the trivial predictor (the teacher's
vector of the query itself, 0.652), and every lever measured on SmolLM2-135M says the
limit is in what its states hold about the answer, not in the head or the tokens
(docs: the card's "Where that ceiling comes from"). A larger backbone is the lever left.
One is packaged offline: Qwen2.5-Coder-0.5B-Instruct (ASSETS.md; 24 layers, hidden 896).
Training a student on it is many hours of CPU, so this measures first what the *frozen*
backbones hold: both read the same seeded sample of training examples the way the
default's refit reads them (the query alone, with the query instruction, its answer with
the document prompt), and a ridge map from their states (the mean over the text's own
positions and the last position, after half, three quarters and all of their layers) to
the teacher's vector of the answer is solved as the refit solves the default's head, then
scored on the 300 held-out queries (the query with the instruction) as the held-out
evaluation scores a student.

The targets are SmolLM2's own answers (the committed response cache): a student on Qwen
would be trained toward Qwen's answers, which were not generated (about an hour here).
So this asks which frozen backbone's states predict *these* answers better; it bounds
neither student.

    python benchmarks/experiments/backbone_answer_features.py OUT.json \\
        --other-dir DIR [--examples 4000] [--dtype bfloat16]

``DIR``: the other backbone as a transformers folder (its GGUF converted once). One pass
per backbone over 3 × examples + 300 texts, cached under runs/exp/; then the solves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from backbone_states import read_states
from qa_hybrid import ROOT
from refit_head_capacity import fit_and_score, held_out_scores, seeded_sample

from l2vg_retrieval.backbones import DEFAULT_BACKBONE, resolve_backbone_path
from l2vg_retrieval.config import DEFAULT_DOCUMENT_PROMPT, DEFAULT_QUERY_INSTRUCTION
from l2vg_retrieval.teacher import TeacherEncoder

RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def backbone_features(
    model_dir: str,
    layers: list[int],
    queries: list[str],
    answers: list[str],
    held: list[str],
    dtype: str,
    cache: Path,
) -> dict[str, np.ndarray]:
    """``train`` [3N, 2H·L] (the three readings, view after view) and ``heldout`` [300, 2H·L]."""
    if cache.is_file():
        stored = np.load(cache)
        return {"train": stored["train"], "heldout": stored["heldout"]}
    views = [(queries, None), (queries, DEFAULT_QUERY_INSTRUCTION), (answers, DEFAULT_DOCUMENT_PROMPT)]
    read = [read_states(model_dir, texts, layers, getattr(torch, dtype), prompt) for texts, prompt in views]
    features = {
        "train": np.vstack(read).astype(np.float16),
        "heldout": read_states(
            model_dir, held, layers, getattr(torch, dtype), DEFAULT_QUERY_INSTRUCTION
        ).astype(np.float16),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **features)
    return features


def blocks(f: np.ndarray, hidden: int, layer_index: int, which: str) -> torch.Tensor:
    """One layer's ``last``, ``mean`` or both (``last+mean``) from a read_states row, each
    block scaled to unit mean variance so one ridge treats them alike."""
    start = 2 * hidden * layer_index
    parts = {"last": f[:, start : start + hidden], "mean": f[:, start + hidden : start + 2 * hidden]}
    chosen = [parts[k] for k in which.split("+")]
    return torch.cat([torch.as_tensor(c, dtype=torch.float64) for c in chosen], dim=1)


def main(args: Any) -> None:
    queries, answers, held = seeded_sample(args.examples)
    encoder = TeacherEncoder()
    y = torch.as_tensor(encoder.encode(answers, batch_size=64)).double().repeat(3, 1)
    held_targets = torch.as_tensor(
        encoder.encode([r["response"].strip() or r["query"] for r in held], batch_size=64)
    ).double()
    trivial = torch.as_tensor(encoder.encode([r["query"] for r in held], batch_size=64)).double()
    report: dict[str, Any] = {
        "command": f"python benchmarks/experiments/backbone_answer_features.py {args.out} --other-dir "
        f"<{Path(args.other_dir).name}> --examples {args.examples} --dtype {args.dtype}",
        "examples": args.examples,
        "heldout_queries": len(held),
        "trivial_predictor": held_out_scores(trivial, held_targets),
        "backbones": {},
    }
    print("trivial predictor", report["trivial_predictor"], flush=True)
    backbones = {
        DEFAULT_BACKBONE: (resolve_backbone_path(DEFAULT_BACKBONE), [15, 22, 30]),
        Path(args.other_dir).name: (args.other_dir, [12, 18, 24]),
    }
    for name, (model_dir, layers) in backbones.items():
        cache = ROOT / "runs" / "exp" / f"answer_features_{name}_{args.examples}_{args.dtype}.npz"
        f = backbone_features(
            model_dir, layers, queries, answers, [r["query"] for r in held], args.dtype, cache
        )
        hidden = f["train"].shape[1] // (2 * len(layers))
        scores: dict[str, Any] = {}
        for i, layer in enumerate(layers):
            for which in ("mean", "last", "last+mean"):
                x, x_held = blocks(f["train"], hidden, i, which), blocks(f["heldout"], hidden, i, which)
                scale = x.var(0).mean().sqrt().clamp(min=1e-8)
                scores[f"layer {layer} {which}"] = s = fit_and_score(
                    x / scale, y, x_held / scale, held_targets, 3, RIDGES
                )
                print(
                    name,
                    layer,
                    which,
                    s["heldout_alignment_cosine"],
                    s["heldout_recall@1"],
                    s["ridge"],
                    flush=True,
                )
        report["backbones"][name] = {"layers": layers, "hidden": hidden, "feature_sets": scores}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--other-dir", required=True)
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    main(parser.parse_args())
