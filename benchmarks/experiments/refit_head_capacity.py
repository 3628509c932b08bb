"""Would a wider closed-form alignment head lift held-out alignment? (issue 9)

The default's embedding is ``W·mean_K(s_k) + b``: one linear map of the *mean* of the K
compression soft prompts. A head over the K soft prompts side by side, ``W'·[s_1; …; s_K] + b``
(one map per position, summed), has K times the parameters, is still solved exactly by
ridge, and needs no training step. Both heads are solved here on the same examples (the
packaged encoder's tokens and LoRA untouched; three readings per example as in the
default's refit: the query alone, with the instruction, its answer with the document
prompt) and scored on the 300 held-out queries as the held-out evaluation scores them
(the query with the instruction against the teacher's vector of the backbone's response).

    python benchmarks/experiments/refit_head_capacity.py OUT.json --examples 4000

The soft prompts are cached under runs/exp/ (by example count), so trying other heads
afterwards costs only the solves. About 9 min on 2 cores for 4,000 examples.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from qa_hybrid import ROOT, heldout_rows, pool_responses

from l2vg_retrieval import L2VGEncoder
from l2vg_retrieval.training.refit import choose_ridge, solve_ridge

RIDGES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def teacher_vectors(encoder: L2VGEncoder, texts: list[str]) -> torch.Tensor:
    """The alignment targets: the teacher's fp32 vectors of ``texts``."""
    return torch.as_tensor(encoder.teacher.encode(texts, batch_size=64)).float()


def refit_views(
    encoder: L2VGEncoder, n_examples: int
) -> tuple[list[str], list[tuple[list[str], str | None]], list[dict[str, Any]]]:
    """(the sample's answers, its three readings, the held-out rows) for a seeded sample of
    training examples: the query alone, with the instruction, its answer with the document
    prompt, as the default's refit reads them. Every refit experiment draws the same sample
    for a given size, so their numbers compare."""
    queries, answers, held = seeded_sample(n_examples)
    instruction = encoder.config.query_instruction
    views = [(queries, None), (queries, instruction), (answers, encoder.config.document_prompt)]
    return answers, views, held


def seeded_sample(n_examples: int) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(queries, answers) of the seeded sample of training examples every refit experiment
    draws for a given size, and the held-out rows."""
    responses = pool_responses()
    train_ids = [json.loads(line)["id"] for line in (ROOT / "data/queries/queries.train.jsonl").open()]
    train_ids = [i for i in train_ids if i in responses]
    pick = torch.randperm(len(train_ids), generator=torch.Generator().manual_seed(0))[:n_examples].tolist()
    rows = [responses[train_ids[i]] for i in pick]
    return (
        [r["query"] for r in rows],
        [r["response"].strip() or r["query"] for r in rows],
        heldout_rows(responses),
    )


def soft_prompt_features(encoder: L2VGEncoder, n_examples: int) -> dict[str, torch.Tensor]:
    """``train`` [3N, K, H] soft prompts and [3N, D] targets, ``heldout`` [300, K, H] and its
    targets; cached, since the encoder passes are the whole cost."""
    cache = ROOT / "runs" / "exp" / f"head_capacity_{n_examples}.pt"
    if cache.is_file():
        return torch.load(cache)
    answers, views, held = refit_views(encoder, n_examples)
    instruction = encoder.config.query_instruction
    soft = [encoder.soft_prompts(t, prompt=p, batch_size=32, show_progress_bar=True) for t, p in views]
    features = {
        "train": torch.cat(soft).float(),
        "train_targets": teacher_vectors(encoder, answers).repeat(len(views), 1),
        "heldout": encoder.soft_prompts(
            [r["query"] for r in held], prompt=instruction, batch_size=32, show_progress_bar=True
        ).float(),
        "heldout_targets": teacher_vectors(encoder, [r["response"].strip() or r["query"] for r in held]),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(features, cache)
    return features


def held_out_scores(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """The held-out evaluation's alignment cosine and Recall@1 (each query's own answer
    among all held-out answers) of predicted vectors against the teacher's."""
    pred = torch.nn.functional.normalize(pred, dim=-1)
    truth = torch.nn.functional.normalize(truth, dim=-1)
    sims = pred @ truth.T
    return {
        "heldout_alignment_cosine": round((pred * truth).sum(-1).mean().item(), 4),
        "heldout_recall@1": round((sims.argmax(1) == torch.arange(len(sims))).float().mean().item(), 4),
    }


def fit_and_score(
    x: torch.Tensor,
    y: torch.Tensor,
    x_held: torch.Tensor,
    y_held: torch.Tensor,
    n_views: int,
    ridges: tuple[float, ...] = RIDGES,
) -> dict[str, float]:
    """Ridge chosen on a validation slice of training examples (all readings of an example on
    one side), refit on all, then the held-out alignment cosine and Recall@1."""
    x, y, x_held, y_held = x.double(), y.double(), x_held.double(), y_held.double()
    choice = choose_ridge(x, y, n_views, ridges=ridges, validation_fraction=0.1, seed=0)
    w, b = solve_ridge(x, y, choice.ridge)
    return {
        **held_out_scores(x_held @ w.T + b, y_held),
        "ridge": choice.ridge,
        "validation_mse_by_ridge": {str(k): v for k, v in choice.validation_mse.items()},
        "parameters": int(w.numel() + b.numel()),
    }


def packaged_cosine(encoder: L2VGEncoder, f: dict[str, torch.Tensor]) -> float:
    """The packaged head on the cached held-out soft prompts: the held-out evaluation's number."""
    head = encoder.align_head
    with torch.no_grad():
        pred = head(f["heldout"].to(head.weight.dtype)).mean(1).float()
    cos = torch.nn.functional.cosine_similarity(pred, f["heldout_targets"], dim=-1)
    return round(cos.mean().item(), 4)


def main(out: str, n_examples: int) -> None:
    encoder = L2VGEncoder.from_pretrained()
    f = soft_prompt_features(encoder, n_examples)
    heads = {
        # The default's head: the mean soft prompt (reproduces the refit's solve).
        "mean": (f["train"].mean(1), f["heldout"].mean(1)),
        # One map per compression position: the K soft prompts side by side.
        "per_position": (f["train"].flatten(1), f["heldout"].flatten(1)),
    }
    report = {
        "command": f"python benchmarks/experiments/refit_head_capacity.py {out} --examples {n_examples}",
        "examples": n_examples,
        "rows": int(f["train"].shape[0]),
        "heldout_queries": int(f["heldout"].shape[0]),
        "packaged_head_heldout_alignment_cosine": packaged_cosine(encoder, f),
        "heads": {
            name: fit_and_score(x, f["train_targets"], x_held, f["heldout_targets"], 3)
            for name, (x, x_held) in heads.items()
        },
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "heads"}))
    for name, scores in report["heads"].items():
        print(name, {k: v for k, v in scores.items() if k != "validation_mse_by_ridge"})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--examples", type=int, default=4000)
    args = parser.parse_args()
    main(args.out, args.examples)
