"""Baselines with the same ``encode`` signature, used by every benchmark.

- ``InputCentricEncoder``: mean-pooled last hidden states of the same backbone: what the
  input *says*, the thing generative embeddings are meant to improve on.
- ``GenerateThenEncode``: the backbone writes an answer, the teacher embeds it (HyDE).
  The quality L2VG approximates, at the cost of a full generation per query.
- ``TeacherEncoder`` (in :mod:`l2vg_retrieval.teacher`): the teacher on the raw text.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import torch

from .backbones import DEFAULT_BACKBONE, LoadedBackbone, load_backbone
from .batching import encode_texts, length_batches, pad_left, positions_from_mask
from .config import DEFAULT_DOCUMENT_PROMPT, DEFAULT_QUERY_INSTRUCTION
from .generation import generate_responses, trim_repetition
from .inputs import PromptTemplate, as_text_list, build_input_ids
from .llama_decode import packed_weights
from .runtime import resolve_device, resolve_dtype
from .teacher import TeacherEncoder


class InputCentricEncoder:
    """Mean of the backbone's final hidden states over the input's tokens."""

    def __init__(
        self,
        backbone: LoadedBackbone | str = DEFAULT_BACKBONE,
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = "auto",
        max_text_tokens: int = 512,
    ) -> None:
        self.backbone = load_backbone(backbone) if isinstance(backbone, str) else backbone
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = self.backbone.model.to(self.device, self.dtype)
        self.tokenizer = self.backbone.tokenizer
        # No chat template: this baseline reads the text as text, not as a request.
        self.template = PromptTemplate.for_tokenizer(self.tokenizer, use_chat_template=False)
        self.max_text_tokens = max_text_tokens
        self.name = f"input-centric:{self.backbone.name}"
        self._lock = threading.RLock()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _embed_batch(self, batch: list[list[int]]) -> torch.Tensor:
        input_ids, mask = pad_left(batch, self.tokenizer.pad_token_id)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        body = self.model.get_decoder()
        hidden = body(
            input_ids=input_ids, attention_mask=mask, position_ids=positions_from_mask(mask)
        ).last_hidden_state.float()
        weights = mask.unsqueeze(-1).float()
        return (hidden * weights).sum(1) / weights.sum(1)

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
        return encode_texts(
            texts,
            dim=self.dim,
            prepare=lambda items: build_input_ids(
                self.tokenizer, self.template, items, prompt=prompt, max_text_tokens=self.max_text_tokens
            ),
            embed=self._embed_batch,
            lock=self._lock,
            desc="input-centric",
            batch_size=batch_size,
            normalize_embeddings=normalize_embeddings,
            show_progress_bar=show_progress_bar,
            convert_to_numpy=convert_to_numpy,
            convert_to_tensor=convert_to_tensor,
        )

    def encode_query(self, texts: Any, *, instruction: str | None = None, **kwargs: Any) -> Any:
        return self.encode(texts, prompt=instruction or DEFAULT_QUERY_INSTRUCTION, **kwargs)

    def encode_document(self, texts: Any, **kwargs: Any) -> Any:
        return self.encode(texts, prompt=kwargs.pop("prompt", DEFAULT_DOCUMENT_PROMPT), **kwargs)


class GenerateThenEncode:
    """HyDE: generate the backbone's answer to each query, embed the answer with the teacher.

    Documents are embedded by the teacher directly (they are already answers).
    """

    def __init__(
        self,
        backbone: LoadedBackbone | str = DEFAULT_BACKBONE,
        teacher: TeacherEncoder | None = None,
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = "auto",
        max_new_tokens: int = 96,
        max_text_tokens: int = 512,
        generation_batch_size: int = 64,
    ) -> None:
        self.backbone = load_backbone(backbone) if isinstance(backbone, str) else backbone
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = self.backbone.model.to(self.device, self.dtype)
        self.tokenizer = self.backbone.tokenizer
        self.template = PromptTemplate.for_tokenizer(self.tokenizer, use_chat_template=True)
        self.teacher = teacher or TeacherEncoder(device=str(self.device))
        self.max_new_tokens = max_new_tokens
        self.max_text_tokens = max_text_tokens
        self.generation_batch_size = generation_batch_size
        self.name = f"generate-then-encode:{self.backbone.name}"
        self._lock = threading.RLock()

    @property
    def dim(self) -> int:
        return self.teacher.dim

    def generate(self, texts: list[str], *, prompt: str | None = None) -> list[str]:
        ids = build_input_ids(
            self.tokenizer, self.template, texts, prompt=prompt, max_text_tokens=self.max_text_tokens
        )
        answers: list[str] = [""] * len(ids)
        # Packing the weights (bfloat16 Llama backbones) costs ~0.3 s and makes each decode
        # step 5-15% faster: worth it from a full batch on, not for a few queries.
        many = len(ids) >= self.generation_batch_size
        with self._lock, packed_weights(self.model) if many else contextlib.nullcontext():
            for idx in length_batches([len(i) for i in ids], self.generation_batch_size, window=len(ids)):
                rows = generate_responses(
                    self.model, self.tokenizer, [ids[i] for i in idx], max_new_tokens=self.max_new_tokens
                )
                for i, row in zip(idx, rows, strict=True):
                    answers[i] = trim_repetition(self.tokenizer.decode(row, skip_special_tokens=True))
        return answers

    def encode(self, texts: Any, *, prompt: str | None = None, **kwargs: Any) -> Any:
        items, single = as_text_list(texts)
        if not items:
            return self.teacher.encode(items, **kwargs)
        answers = self.generate(items, prompt=prompt)
        # An empty generation (immediate EOS) falls back to the query itself.
        to_embed = [a if a.strip() else q for a, q in zip(answers, items, strict=True)]
        return self.teacher.encode(to_embed[0] if single else to_embed, **kwargs)

    def encode_query(self, texts: Any, *, instruction: str | None = None, **kwargs: Any) -> Any:
        # HyDE prompts the LM to answer the question; the task instruction is left out so
        # the model writes an answer rather than talk about retrieval.
        return self.encode(texts, **kwargs)

    def encode_document(self, texts: Any, **kwargs: Any) -> Any:
        kwargs.pop("prompt", None)
        return self.teacher.encode(texts, **kwargs)


__all__ = ["GenerateThenEncode", "InputCentricEncoder", "TeacherEncoder"]
