"""The LLM2Vec checkpoint: the stages' LoRA adapters over a named backbone, validated on load.

Layout of a checkpoint folder::

    llm2vec_config.json   format, version, backbone name + weight fingerprint, hidden size,
                          stages in order with the sha256 of each adapter, inference
                          settings, training summary, and the checkpoint's fingerprint
    config.json           the backbone's transformers config (so AutoConfig reads the dim)
    mntp/                 peft adapter: adapter_config.json + adapter_model.safetensors
    simcse/               the same, trained on top of the MNTP-merged weights
    CARD.md               how it was trained

Only adapters are stored (~20 MB each for the default backbone in fp32), never the
backbone: loading rebuilds the model by merging each stage into the named backbone, after
checking that the backbone's weights are the ones the adapters were trained on.
Nothing is unpickled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..backbones import LoadedBackbone, LoadedTeacher, load_backbone, weights_fingerprint
from ..encoder import CheckpointError, read_meta_file
from .lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, apply_adapter, sha256_file
from .reference import META_FILE, resolve_llm2vec

FORMAT = "l2vg-llm2vec"
FORMAT_VERSION = 1
STAGE_ORDER = ("mntp", "simcse")
_REQUIRED = ("backbone", "backbone_fingerprint", "hidden_size", "stages", "fingerprint")


@dataclass(frozen=True)
class LoadedLLM2Vec(LoadedTeacher):
    """A loaded LLM2Vec model: merged weights, the backbone's tokenizer, the checkpoint's meta."""

    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("fingerprint", ""))


def checkpoint_fingerprint(backbone_fingerprint: str, stages: Sequence[tuple[str, str]]) -> str:
    """Identifies the vector space: backbone weights + each (stage, adapter sha256) in order."""
    digest = hashlib.sha256(backbone_fingerprint.encode())
    for name, sha in stages:
        digest.update(f"|{name}:{sha}".encode())
    return digest.hexdigest()[:32]


def write_checkpoint(
    folder: Path,
    *,
    backbone_name: str,
    backbone_fingerprint: str,
    model_config: Any,
    stage_dirs: dict[str, Path],
    settings: dict[str, Any],
    training: dict[str, Any] | None = None,
) -> Path:
    """Assemble a checkpoint from finished stage adapters (copied in, in ``STAGE_ORDER``)."""
    unknown = set(stage_dirs) - set(STAGE_ORDER)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {STAGE_ORDER}")
    folder.mkdir(parents=True, exist_ok=True)
    stages = []
    for name in STAGE_ORDER:
        if name not in stage_dirs:
            continue
        target = folder / name
        target.mkdir(exist_ok=True)
        for file in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            source = stage_dirs[name] / file
            if source.resolve() != (target / file).resolve():
                shutil.copyfile(source, target / file)
        stages.append({"name": name, "sha256": sha256_file(target / ADAPTER_WEIGHTS)})
    model_config.to_json_file(str(folder / "config.json"))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": backbone_name,
        "backbone_fingerprint": backbone_fingerprint,
        "hidden_size": int(model_config.hidden_size),
        "embedding_dim": int(model_config.hidden_size),
        "stages": stages,
        "fingerprint": checkpoint_fingerprint(
            backbone_fingerprint, [(s["name"], s["sha256"]) for s in stages]
        ),
        "settings": settings,
        "training": training or {},
    }
    tmp = folder / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(folder / META_FILE)
    return folder


def read_meta(folder: Path) -> dict[str, Any]:
    meta = read_meta_file(
        folder, META_FILE, kind="l2vg LLM2Vec", fmt=FORMAT, version=FORMAT_VERSION, required=_REQUIRED
    )
    path = folder / META_FILE
    names = [s.get("name") if isinstance(s, dict) else None for s in meta["stages"]]
    if names != [n for n in STAGE_ORDER if n in names]:
        raise CheckpointError(f"{path}: stages {names} are not an ordered subset of {list(STAGE_ORDER)}")
    expected = checkpoint_fingerprint(
        meta["backbone_fingerprint"], [(s["name"], s["sha256"]) for s in meta["stages"]]
    )
    if expected != meta["fingerprint"]:
        raise CheckpointError(f"{path} is inconsistent: its fingerprint does not match its stages")
    return meta


def _choose_stages(meta: dict[str, Any], stages: Sequence[str] | None, where: Path) -> list[dict[str, Any]]:
    saved = list(meta["stages"])
    if stages is None:
        return saved
    names = [s["name"] for s in saved]
    wanted = list(stages)
    if wanted != names[: len(wanted)]:
        raise ValueError(
            f"stages {wanted} must be a leading part of the checkpoint's stages {names} ({where}): "
            "each stage was trained on top of the previous ones"
        )
    return saved[: len(wanted)]


def load_llm2vec(
    name: str | Path,
    *,
    stages: Sequence[str] | None = None,
    backbone: LoadedBackbone | None = None,
    dtype: torch.dtype = torch.float32,
) -> LoadedLLM2Vec:
    """Rebuild an LLM2Vec model: the named backbone with each stage's adapter merged in order.

    ``stages`` loads only the first stages (``("mntp",)``; ``()`` is the plain backbone)
    for ablations. A given ``backbone`` is copied, never modified. Its weights must match
    the checkpoint's fingerprint, and every adapter its recorded sha256.
    """
    folder = Path(name) if isinstance(name, Path) else resolve_llm2vec(name)
    meta = read_meta(folder)
    chosen = _choose_stages(meta, stages, folder)
    if backbone is None:
        backbone = load_backbone(meta["backbone"])
        model = backbone.model
    else:
        model = copy.deepcopy(backbone.model)
    model = model.float()
    found = weights_fingerprint(model)
    if found != meta["backbone_fingerprint"]:
        raise CheckpointError(
            f"LLM2Vec checkpoint {folder} was trained on backbone '{meta['backbone']}' with weight "
            f"fingerprint {meta['backbone_fingerprint']}, but the backbone '{backbone.name}' given has "
            f"fingerprint {found}: its adapters only mean something for those exact weights"
        )
    hidden = int(model.config.hidden_size)
    if hidden != int(meta["hidden_size"]):
        raise CheckpointError(f"{folder}: hidden size {meta['hidden_size']} != backbone's {hidden}")
    for stage in chosen:
        adapter = folder / stage["name"]
        weights = adapter / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise CheckpointError(f"{folder}: stage '{stage['name']}' has no {ADAPTER_WEIGHTS}")
        if sha256_file(weights) != stage["sha256"]:
            raise CheckpointError(
                f"{weights} is corrupt or was replaced: its sha256 differs from the one recorded "
                f"in {META_FILE}"
            )
        model = apply_adapter(model, adapter)
    model = model.to(dtype).eval()
    model.requires_grad_(False)
    loaded_meta = {
        **meta,
        "stages_loaded": [s["name"] for s in chosen],
        "fingerprint": checkpoint_fingerprint(
            meta["backbone_fingerprint"], [(s["name"], s["sha256"]) for s in chosen]
        ),
    }
    display = name if isinstance(name, str) else str(name)
    return LoadedLLM2Vec(name=display, model=model, tokenizer=backbone.tokenizer, meta=loaded_meta)
