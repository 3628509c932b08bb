"""The teacher sentence embedder: alignment targets in training, and a baseline encoder."""

from __future__ import annotations

import threading
from typing import Any

import torch

from .backbones import DEFAULT_TEACHER, LoadedTeacher, load_teacher
from .batching import encode_texts
from .inputs import clean_text
from .runtime import resolve_device

# all-MiniLM-L6-v2 was trained on 128-token inputs and its position table stops at 512.
_TEACHER_MAX_TOKENS = 256


class TeacherEncoder:
    """Mean-pooled transformer encoder (matches sentence-transformers for MiniLM)."""

    def __init__(self, teacher: LoadedTeacher | str = DEFAULT_TEACHER, *, device: str | None = None):
        self.teacher = load_teacher(teacher) if isinstance(teacher, str) else teacher
        self.device = resolve_device(device)
        self.teacher.model.to(self.device)
        self.name = f"teacher:{self.teacher.name}"
        self._lock = threading.RLock()
        # An LLM2Vec teacher (a bidirectional decoder LM) embeds through its own encoder.
        self.llm2vec: Any = None
        from .llm2vec.checkpoint import LoadedLLM2Vec

        if isinstance(self.teacher, LoadedLLM2Vec):
            from .llm2vec.encoder import LLM2VecEncoder

            self.llm2vec = LLM2VecEncoder(self.teacher, device=self.device, dtype=torch.float32)

    @property
    def dim(self) -> int:
        return int(self.teacher.model.config.hidden_size)

    def _embed_batch(self, texts: list[str]) -> torch.Tensor:
        tok = self.teacher.tokenizer(
            texts, padding=True, truncation=True, max_length=_TEACHER_MAX_TOKENS, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.teacher.model(**tok).last_hidden_state
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def encode(
        self,
        texts: Any,
        *,
        prompt: str | None = None,
        batch_size: int = 64,
        normalize_embeddings: bool = True,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
    ) -> Any:
        if self.llm2vec is not None:
            return self.llm2vec.encode(
                texts,
                prompt=prompt,
                batch_size=batch_size,
                normalize_embeddings=normalize_embeddings,
                show_progress_bar=show_progress_bar,
                convert_to_numpy=convert_to_numpy,
                convert_to_tensor=convert_to_tensor,
            )
        return encode_texts(
            texts,
            dim=self.dim,
            prepare=lambda items: [clean_text(f"{prompt} {t}" if prompt else t) for t in items],
            embed=self._embed_batch,
            lock=self._lock,
            desc="teacher",
            batch_size=batch_size,
            normalize_embeddings=normalize_embeddings,
            show_progress_bar=show_progress_bar,
            convert_to_numpy=convert_to_numpy,
            convert_to_tensor=convert_to_tensor,
        )

    def encode_query(self, texts: Any, *, instruction: str | None = None, **kwargs: Any) -> Any:
        # The teacher takes no instruction: it was trained on raw sentences.
        return self.encode(texts, **kwargs)

    def encode_document(self, texts: Any, **kwargs: Any) -> Any:
        return self.encode(texts, **kwargs)
