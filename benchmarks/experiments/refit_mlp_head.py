"""Does a non-linear alignment head read more from the same features? (issue 9)

The default's alignment head is linear, solved by ridge over the mean soft prompt. A wider
linear head (``refit_head_capacity.py``) and other states of the pass
(``refit_layer_features.py``) added at most 0.007 of held-out alignment. The reference
code's other switch is an MLP alignment head (``add_alignment_mlp``): this measures one on
the same cached features (4,000 pool examples, three readings each, the 300 held-out
queries), trained with the alignment loss (1 − cosine) by AdamW. Its width, dropout,
weight decay and number of epochs are chosen on a validation tenth of the *training
examples* (every reading of an example on one side), never on the held-out queries; the
ridge head of the same features is solved the way the refit solves it, for comparison.

    python benchmarks/experiments/refit_mlp_head.py OUT.json [--examples 4000]

Needs ``refit_layer_features.py``'s cache (runs/exp/layer_features_<examples>.pt; it is
made by that script's first run, ~12 min); then a few minutes of CPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from refit_head_capacity import fit_and_score, held_out_scores
from refit_layer_features import RIDGES, feature_cache

EPOCHS = 40
GRID = {"hidden": (1024, 2048), "dropout": (0.1, 0.3), "weight_decay": (1e-3, 1e-1)}


def train_mlp(
    x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, hidden: int, dropout: float,
    weight_decay: float, seed: int = 0,
) -> tuple[torch.nn.Module, list[float]]:  # fmt: skip
    """The MLP after the epoch with the best validation cosine, and the validation curve."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Dropout(dropout), torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(),
        torch.nn.Dropout(dropout), torch.nn.Linear(hidden, y.shape[1]),
    )  # fmt: skip
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=weight_decay)
    curve: list[float] = []
    best: dict[str, torch.Tensor] = {}
    for _ in range(EPOCHS):
        net.train()
        for batch in torch.randperm(len(x)).split(256):
            loss = (1 - F.cosine_similarity(net(x[batch]), y[batch])).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            curve.append(F.cosine_similarity(net(x_val), y_val).mean().item())
        if curve[-1] >= max(curve):
            best = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best)
    return net, curve


def compare(train: torch.Tensor, targets: torch.Tensor, held: torch.Tensor, held_targets: torch.Tensor,
            n_examples: int) -> dict[str, Any]:  # fmt: skip
    mean, std = train.mean(0), train.std(0).clamp(min=1e-6)
    train, held = (train - mean) / std, (held - mean) / std
    ridge = fit_and_score(train, targets, held, held_targets, len(train) // n_examples, RIDGES)
    # Validation by example: rows are the readings stacked view by view.
    example = torch.arange(len(train)) % n_examples
    val = torch.randperm(n_examples, generator=torch.Generator().manual_seed(0))[: n_examples // 10]
    is_val = torch.isin(example, val)
    runs = []
    for hidden, dropout, wd in itertools.product(*GRID.values()):
        net, curve = train_mlp(
            train[~is_val], targets[~is_val], train[is_val], targets[is_val], hidden, dropout, wd
        )
        with torch.no_grad():
            scores = held_out_scores(net(held), held_targets)
        runs.append({"hidden": hidden, "dropout": dropout, "weight_decay": wd,
                     "best_epoch": curve.index(max(curve)) + 1, "validation_cosine": round(max(curve), 4),
                     **scores})  # fmt: skip
        print(runs[-1], flush=True)
    chosen = max(runs, key=lambda r: r["validation_cosine"])
    return {"ridge": ridge, "mlp_chosen_on_validation": chosen, "mlp_grid": runs}


def main(out: str, n_examples: int) -> None:
    f = torch.load(feature_cache(n_examples))
    targets, held_targets = f["train_targets"].float(), f["heldout_targets"].float()
    sets = {
        "soft_mean (the default's feature)": (f["train"]["soft"].float(), f["heldout"]["soft"].float()),
        "soft_mean + comp_layer26": (
            torch.cat([f["train"]["soft"], f["train"]["comp"][:, 25]], 1).float(),
            torch.cat([f["heldout"]["soft"], f["heldout"]["comp"][:, 25]], 1).float(),
        ),
    }
    results = {}
    for name, (train, held) in sets.items():
        print(name, flush=True)
        results[name] = compare(train, targets, held, held_targets, n_examples)
        print(name, "ridge", results[name]["ridge"]["heldout_alignment_cosine"], "mlp",
              results[name]["mlp_chosen_on_validation"]["heldout_alignment_cosine"], flush=True)  # fmt: skip
    report = {
        "command": f"python benchmarks/experiments/refit_mlp_head.py {out} --examples {n_examples}",
        "examples": n_examples,
        "epochs": EPOCHS,
        "feature_sets": results,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--examples", type=int, default=4000)
    args = parser.parse_args()
    main(args.out, args.examples)
