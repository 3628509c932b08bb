"""The resumable optimisation loop both LLM2Vec stages share.

Every step is a pure function of ``(seed, step)``: its batch comes from a seeded
per-epoch permutation and the step's random draws (masks, dropout) from a generator
seeded with the step, so a run resumed from a checkpoint takes exactly the steps an
uninterrupted run would have taken. A checkpoint holds the adapter and the AdamW state as
safetensors and a JSON with the step, the settings it was made with and the sha256 of both
files; a torn or foreign checkpoint is a clear error, never a silent restart.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..encoder import CheckpointError
from ..runtime import peak_rss_mb, release_free_memory
from ..training.state import flatten_optimizer, restore_optimizer, truncate_log
from .config import StageConfig
from .lora import adapter_tensors, load_adapter_tensors, sha256_file

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
ADAPTER_FILE = "adapter.safetensors"
OPTIM_FILE = "optimizer.safetensors"
LOG_FILE = "loss.jsonl"


@dataclass
class StageResult:
    stage: str
    steps: int
    final_loss: float
    wall_seconds: float  # summed over every run of the stage (resumes continue the clock)
    peak_rss_mb: float
    resumed_from_step: int | None
    log_path: Path
    last_eval: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "steps": self.steps,
            "final_loss": self.final_loss,
            "wall_seconds": round(self.wall_seconds, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "resumed_from_step": self.resumed_from_step,
            "last_eval": self.last_eval,
        }


def lr_at(step: int, settings: StageConfig) -> float:
    """Linear warm-up, then linear decay to zero at the last step."""
    if settings.warmup_steps and step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    remaining = max(1, settings.steps - settings.warmup_steps)
    return settings.lr * max(0.0, 1.0 - (step - settings.warmup_steps) / remaining)


def batch_indices(step: int, n_items: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the items of ``step``: consecutive slices of a seeded permutation per epoch."""
    if n_items < batch_size:
        raise ValueError(f"{n_items} training items is fewer than one batch ({batch_size})")
    per_epoch = n_items // batch_size
    epoch, offset = divmod(step, per_epoch)
    perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return perm[offset * batch_size : (offset + 1) * batch_size].tolist()


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


class StageRunner:
    """Runs ``step_fn`` (forward + backward of one step) under AdamW with checkpoints and a log."""

    def __init__(
        self,
        *,
        stage: str,
        folder: Path,
        peft_model: torch.nn.Module,
        params: list[torch.nn.Parameter],
        settings: StageConfig,
        seed: int,
        identity: dict[str, Any],
    ) -> None:
        if not params:
            raise ValueError("nothing to train: no adapter parameter requires a gradient")
        self.stage = stage
        self.folder = folder
        self.peft_model = peft_model
        self.params = params
        self.settings = settings
        self.seed = seed
        # What a resumed run must share with the run it continues.
        self.identity = {"stage": stage, "seed": seed, "settings": settings.resume_key(), **identity}
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        self.step = 0
        self.checkpoint_dir = folder / "checkpoint"
        self.log_path = folder / LOG_FILE

    # -------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        tmp = self.checkpoint_dir.with_name("checkpoint.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file(adapter_tensors(self.peft_model), str(tmp / ADAPTER_FILE))
        tensors, scalars = flatten_optimizer(self.optimizer)
        save_file(tensors, str(tmp / OPTIM_FILE))
        state = {
            "step": self.step,
            "optimizer": scalars,
            "identity": self.identity,
            "sha256": {name: sha256_file(tmp / name) for name in (ADAPTER_FILE, OPTIM_FILE)},
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        # Swap in two renames; if we die between them the ".old" copy is still complete.
        old = self.checkpoint_dir.with_name("checkpoint.old")
        if old.exists():
            shutil.rmtree(old)
        if self.checkpoint_dir.exists():
            self.checkpoint_dir.rename(old)
        tmp.rename(self.checkpoint_dir)
        if old.exists():
            shutil.rmtree(old)
        return self.checkpoint_dir

    def latest_checkpoint(self) -> Path | None:
        for folder in (self.checkpoint_dir, self.checkpoint_dir.with_name("checkpoint.old")):
            if (folder / STATE_FILE).is_file():
                return folder
        return None

    def resume(self, folder: Path) -> None:
        try:
            state = json.loads((folder / STATE_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"{folder / STATE_FILE} is corrupt ({exc}); delete {folder} to restart"
            ) from exc
        if state.get("identity") != self.identity:
            raise CheckpointError(
                f"the {self.stage} checkpoint in {folder} was made with other settings "
                f"({_differences(state.get('identity'), self.identity)}); use the original config, "
                f"or delete {self.folder} to start this stage over"
            )
        for name, sha in (state.get("sha256") or {}).items():
            if not (folder / name).is_file() or sha256_file(folder / name) != sha:
                raise CheckpointError(f"{folder / name} is missing or corrupt; delete {folder} to restart")
        try:
            load_adapter_tensors(self.peft_model, load_file(str(folder / ADAPTER_FILE)), where=str(folder))
            restore_optimizer(self.optimizer, load_file(str(folder / OPTIM_FILE)), state["optimizer"])
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"cannot resume from {folder}: {exc}; delete it to restart") from exc
        self.step = int(state["step"])

    # -------------------------------------------------------------- loop
    def run(
        self,
        step_fn: Callable[[int], float],
        *,
        evaluate: Callable[[], dict[str, Any]] | None = None,
        eval_every: int | None = None,
        show_progress_bar: bool = True,
        on_step: Callable[[int, float], None] | None = None,
    ) -> StageResult:
        """Train to ``settings.steps``; ``on_step(step, loss)`` runs after each logged step."""
        settings = self.settings
        self.folder.mkdir(parents=True, exist_ok=True)
        started = time.time()
        resumed: int | None = None
        latest = self.latest_checkpoint()
        if latest is not None:
            self.resume(latest)
            resumed = self.step
            logger.info("%s: resuming from %s at step %d", self.stage, latest, self.step)
        last = truncate_log(self.log_path, self.step)
        clock = float(last.get("elapsed", 0.0)) if last else 0.0
        loss = float(last["loss"]) if last else float("nan")
        last_eval: dict[str, Any] | None = None
        with (
            self.log_path.open("a") as log,
            tqdm(
                total=settings.steps, initial=self.step, desc=self.stage, disable=not show_progress_bar
            ) as bar,
        ):
            while self.step < settings.steps:
                lr = lr_at(self.step, settings)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.zero_grad(set_to_none=True)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(step_seed(self.seed, self.step))
                    loss = float(step_fn(self.step))
                if not math.isfinite(loss):
                    raise FloatingPointError(f"{self.stage}: loss became non-finite at step {self.step}")
                torch.nn.utils.clip_grad_norm_(self.params, settings.grad_clip)
                self.optimizer.step()
                self.step += 1
                record: dict[str, Any] = {
                    "step": self.step,
                    "loss": round(loss, 6),
                    "lr": lr,
                    "elapsed": round(clock + time.time() - started, 2),
                }
                if (
                    evaluate is not None
                    and eval_every
                    and (self.step % eval_every == 0 or self.step == settings.steps)
                ):
                    last_eval = record["eval"] = evaluate()
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{loss:.4f}")
                bar.update(1)
                if self.step % settings.checkpoint_every == 0 or self.step == settings.steps:
                    self.save_checkpoint()
                release_free_memory()
                if on_step is not None:
                    on_step(self.step, loss)
        if last_eval is None and last is not None and isinstance(last.get("eval"), dict):
            last_eval = last["eval"]
        return StageResult(
            stage=self.stage,
            steps=self.step,
            final_loss=loss,
            wall_seconds=clock + time.time() - started,
            peak_rss_mb=peak_rss_mb(),
            resumed_from_step=resumed,
            log_path=self.log_path,
            last_eval=last_eval,
        )


def _differences(old: Any, new: dict[str, Any], prefix: str = "") -> str:
    if not isinstance(old, dict):
        return "no settings recorded"
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{key}.")
            if inner:
                diffs.append(inner)
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} then, {b!r} now")
    return "; ".join(diffs)
