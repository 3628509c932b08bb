"""LLM2VecEncoder: a decoder-only LM read as a bidirectional text encoder, mean-pooled.

The same class serves the ablation steps of the recipe (causal mean pool → bidirectional
without training → + MNTP → + SimCSE) and the trained teacher, with the library's
``encode`` / ``encode_query`` / ``encode_document`` signature.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..backbones import LoadedBackbone, LoadedTeacher, load_backbone, weights_fingerprint
from ..batching import encode_texts
from ..config import DEFAULT_QUERY_INSTRUCTION
from ..runtime import resolve_device, resolve_dtype
from .attention import forward_hidden
from .inputs import TokenizedText, collate, mean_pool, tokenize_texts


class LLM2VecEncoder:
    """Mean of the final hidden states over a text's own tokens, attention bidirectional.

    ``model`` is used as given: a trained checkpoint's merged model, or a shared backbone
    (bidirectionality is switched on per call and undone after it, so sharing is safe).
    """

    def __init__(
        self,
        loaded: LoadedBackbone | LoadedTeacher,
        *,
        bidirectional: bool = True,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = "float32",
        max_length: int | None = None,
        query_instruction: str = DEFAULT_QUERY_INSTRUCTION,
    ) -> None:
        self.loaded = loaded
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = loaded.model.to(self.device, self.dtype)
        self.tokenizer = loaded.tokenizer
        if self.tokenizer.pad_token_id is None:  # type: ignore[attr-defined]
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
        self.bidirectional = bidirectional
        meta = getattr(loaded, "meta", None) or {}
        # A checkpoint records the length it was meant to read; 512 otherwise.
        self.max_length = max_length or int(meta.get("settings", {}).get("max_length", 512))
        self.query_instruction = query_instruction
        stages = "+".join(meta.get("stages_loaded", [])) or ("bidirectional" if bidirectional else "causal")
        self.name = f"llm2vec:{loaded.name}:{stages}"
        self._meta = meta
        self._fingerprint: str | None = meta.get("fingerprint")
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls, backbone: LoadedBackbone | str, *, bidirectional: bool = True, **kwargs: Any
    ) -> LLM2VecEncoder:
        """The untrained steps of the ablation: the backbone itself, causal or bidirectional."""
        loaded = load_backbone(backbone) if isinstance(backbone, str) else backbone
        return cls(loaded, bidirectional=bidirectional, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        reference: str | Path,
        *,
        stages: Sequence[str] | None = None,
        backbone: LoadedBackbone | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = "float32",
        max_length: int | None = None,
    ) -> LLM2VecEncoder:
        """Load a checkpoint (``llm2vec``, ``llm2vec:<folder or hub id>``, or a folder path)."""
        from .checkpoint import load_llm2vec

        loaded = load_llm2vec(reference, stages=stages, backbone=backbone)
        return cls(loaded, bidirectional=True, device=device, dtype=dtype, max_length=max_length)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def fingerprint(self) -> str:
        """Identifies the vector space (checkpoint fingerprint, or the backbone's + the mode)."""
        if self._fingerprint is None:
            mode = "bidirectional" if self.bidirectional else "causal"
            self._fingerprint = f"{weights_fingerprint(self.model)[:24]}-{mode}"
        return self._fingerprint

    # ------------------------------------------------------------------ forward
    def embed_rows(self, rows: Sequence[TokenizedText]) -> torch.Tensor:
        """Unnormalised mean-pooled embeddings ``[B, H]`` (fp32) of tokenized rows."""
        batch = collate(rows, self.tokenizer.pad_token_id).to(self.device)  # type: ignore[attr-defined]
        hidden = forward_hidden(
            self.model, batch.input_ids, batch.attention_mask, bidirectional=self.bidirectional
        )
        return mean_pool(hidden.float(), batch.pool_mask)

    def encode(
        self,
        texts: Any,
        *,
        prompt: str | None = None,
        batch_size: int = 32,
        normalize_embeddings: bool = True,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
    ) -> Any:
        """Embed texts; ``prompt`` (an instruction) is read by the model but not pooled."""

        def embed(rows: list[TokenizedText]) -> torch.Tensor:
            self.model.eval()
            return self.embed_rows(rows)

        return encode_texts(
            texts,
            dim=self.dim,
            prepare=lambda items: tokenize_texts(
                self.tokenizer, items, prompt=prompt, max_tokens=self.max_length
            ),
            embed=embed,
            lock=self._lock,
            desc="llm2vec encode",
            batch_size=batch_size,
            normalize_embeddings=normalize_embeddings,
            show_progress_bar=show_progress_bar,
            convert_to_numpy=convert_to_numpy,
            convert_to_tensor=convert_to_tensor,
        )

    def encode_query(self, texts: Any, *, instruction: str | None = None, **kwargs: Any) -> Any:
        return self.encode(texts, prompt=instruction or self.query_instruction, **kwargs)

    def encode_document(self, texts: Any, **kwargs: Any) -> Any:
        # LLM2Vec embeds documents without an instruction.
        return self.encode(texts, prompt=kwargs.pop("prompt", None), **kwargs)

    def __repr__(self) -> str:
        return f"LLM2VecEncoder(name={self.name!r}, dim={self.dim}, dtype={self.dtype})"
