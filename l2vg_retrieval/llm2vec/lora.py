"""peft LoRA adapters of the LLM2Vec stages: attach, save, read back, merge.

Adapters are written in peft's own format (``adapter_config.json`` +
``adapter_model.safetensors``), so a stage's folder also loads with
``PeftModel.from_pretrained``; reading them back here goes through safetensors only
(peft would fall back to a pickled ``adapter_model.bin``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..encoder import CheckpointError
from .config import LoraSettings

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def lora_config(settings: LoraSettings, *, base_model: str | None = None) -> object:
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        base_model_name_or_path=base_model,
    )


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant). transformers
    renamed this in 5.x (``gradient_checkpointing_enable`` warns it goes in v6): the new
    name when the installed version has it, the old one before."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def attach_lora(model: torch.nn.Module, settings: LoraSettings, *, seed: int = 0) -> torch.nn.Module:
    """Inject a fresh adapter into ``model`` (in place) and return peft's wrapper around it.

    Only the adapter's tensors train. ``lora_B`` starts at zero, so the adapted model starts
    out exactly equal to ``model``; ``lora_A`` is seeded.
    """
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, lora_config(settings))
    if not adapter_parameters(peft_model):
        raise ValueError(f"no module of the model matched the LoRA target_modules {settings.target_modules}")
    return peft_model


def adapter_parameters(peft_model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in peft_model.named_parameters() if "lora_" in n and p.requires_grad]


def adapter_tensors(peft_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors under peft's saved key names (no adapter name in them)."""
    from peft import get_peft_model_state_dict

    # No embedding layer is ever a target; "auto" would look the base model up on the hub.
    state = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    return {k: v.detach().float().cpu().contiguous().clone() for k, v in state.items()}


def load_adapter_tensors(
    peft_model: torch.nn.Module, tensors: dict[str, torch.Tensor], *, where: str
) -> None:
    """Copy saved adapter tensors into ``peft_model``; any missing, extra or misshapen key is an error."""
    from peft import set_peft_model_state_dict

    expected = {k: tuple(v.shape) for k, v in adapter_tensors(peft_model).items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{where}: adapter tensors do not match the model's LoRA modules "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}); "
            "was it trained on another backbone or with other target modules?"
        )
    for key, shape in expected.items():
        if got[key] != shape:
            raise CheckpointError(f"{where}: adapter tensor '{key}' has shape {got[key]}, expected {shape}")
    dtype = next(iter(adapter_parameters(peft_model))).dtype
    set_peft_model_state_dict(peft_model, {k: v.to(dtype) for k, v in tensors.items()})


def merge_lora(peft_model: torch.nn.Module) -> torch.nn.Module:
    """Fold the adapter into the base weights (W += scale * B A) and drop the LoRA modules."""
    model = peft_model.merge_and_unload()
    model.requires_grad_(False)
    return model


def save_adapter(folder: Path, peft_model: torch.nn.Module, *, base_model: str | None = None) -> str:
    """Write the adapter in peft's format; returns the sha256 of its weights file."""
    folder.mkdir(parents=True, exist_ok=True)
    config = peft_model.peft_config["default"]
    if base_model is not None:
        config.base_model_name_or_path = base_model
    config.save_pretrained(str(folder))
    tmp = folder / (ADAPTER_WEIGHTS + ".tmp")
    save_file(adapter_tensors(peft_model), str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / ADAPTER_WEIGHTS)
    return sha256_file(folder / ADAPTER_WEIGHTS)


def read_adapter(folder: Path) -> tuple[LoraSettings, dict[str, torch.Tensor]]:
    """An adapter folder's settings and tensors, with a clear error for anything unreadable."""
    config_path, weights_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is not a LoRA adapter: {ADAPTER_CONFIG} is missing")
    if not weights_path.is_file():
        raise CheckpointError(
            f"{folder} has no {ADAPTER_WEIGHTS} (pickled adapter_model.bin files are not read)"
        )
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is corrupt: {exc}") from exc
    if not isinstance(raw, dict) or str(raw.get("peft_type", "LORA")).upper() != "LORA":
        raise CheckpointError(f"{config_path} does not describe a LoRA adapter")
    try:
        targets = raw["target_modules"]
        settings = LoraSettings(
            r=int(raw["r"]),
            alpha=float(raw["lora_alpha"]),
            dropout=float(raw.get("lora_dropout", 0.0)),
            target_modules=tuple(sorted(targets)) if isinstance(targets, list | set) else (targets,),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path} lacks a valid LoRA setting: {exc}") from exc
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights_path} is corrupt or not a safetensors file: {exc}") from exc
    return settings, tensors


def apply_adapter(model: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """Merge the adapter saved in ``folder`` into ``model``'s weights; returns the plain model."""
    settings, tensors = read_adapter(folder)
    # Inference: LoRA dropout plays no part in a merge.
    peft_model = attach_lora(model, settings.model_copy(update={"dropout": 0.0}))
    try:
        load_adapter_tensors(peft_model, tensors, where=str(folder))
    except CheckpointError:
        peft_model.unload()  # leave the caller's model as it was
        raise
    return merge_lora(peft_model)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
