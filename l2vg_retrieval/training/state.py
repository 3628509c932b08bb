"""Resumable-run state both training loops share (the L2VG trainer and the LLM2Vec stages):
the AdamW state as safetensors + JSON scalars, and a loss log cut back to a resumed step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimiser's per-parameter state as ``({"<index>.<name>": tensor}, {same: scalar})``."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            key = f"{index}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    return tensors, scalars


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]
) -> None:
    """Load what :func:`flatten_optimizer` wrote back into ``optimizer``."""
    state = optimizer.state_dict()
    rebuilt: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *scalars.items()]:
        index, name = key.split(".", 1)
        rebuilt.setdefault(int(index), {})[name] = value
    state["state"] = rebuilt
    optimizer.load_state_dict(state)


def truncate_log(path: Path, step: int) -> dict[str, Any] | None:
    """Keep log lines up to the resumed step (no duplicate steps); return the last kept."""
    if not path.is_file():
        return None
    kept: list[str] = []
    last: dict[str, Any] | None = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            if record["step"] <= step:
                kept.append(line)
                last = record
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    path.write_text("".join(k + "\n" for k in kept))
    return last
