"""Shared fixtures: a tiny random Llama + tiny teacher built in code (milliseconds, offline)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from typing import Any

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from l2vg_retrieval.backbones import LoadedBackbone, LoadedTeacher
from l2vg_retrieval.config import EncoderConfig
from l2vg_retrieval.encoder import L2VGEncoder

_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "how do I bake bread at home? mix flour, water, yeast and salt",
    "what is the capital of France? Paris is the capital",
    "retrieval with generative embeddings of what a model would answer",
    "numbers 0123456789 and punctuation .,;:!?'\"()[]{}",
] * 4


def build_tiny_tokenizer() -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = _CHATML
    return fast


def build_tiny_backbone(seed: int = 0) -> LoadedBackbone:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return LoadedBackbone(name="tiny-random-llama", model=model, tokenizer=tokenizer)


def build_tiny_teacher(seed: int = 0) -> LoadedTeacher:
    from transformers import BertConfig, BertModel

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = BertModel(config).eval()
    model.requires_grad_(False)
    return LoadedTeacher(name="tiny-random-bert", model=model, tokenizer=tokenizer)


def build_tiny_encoder(**config_overrides: object) -> L2VGEncoder:
    overrides = {"n_thought": 2, "n_compression": 3, "max_text_tokens": 64, **config_overrides}
    config = EncoderConfig(backbone="tiny-random-llama", teacher="tiny-random-bert", **overrides)
    return L2VGEncoder(
        config,
        build_tiny_backbone(),
        teacher_dim=32,
        teacher=build_tiny_teacher(),
        device="cpu",
        dtype="float32",
    )


@pytest.fixture
def tiny_encoder() -> L2VGEncoder:
    return build_tiny_encoder()


async def loop_ticks_during(work: Awaitable[Any], period: float = 0.005) -> tuple[Any, int, float]:
    """Await ``work`` while a ticker counts event-loop turns: (result, ticks, seconds).

    Work that blocks the loop thread leaves the ticker no turn at all, so the tick count
    shows whether an async API really runs off the loop.
    """
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(period)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    try:
        result = await work
    finally:
        task.cancel()
    return result, ticks, time.perf_counter() - started
