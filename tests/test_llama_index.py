"""L2VGEmbedding: a real llama-index BaseEmbedding over the tiny encoder."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from conftest import build_tiny_encoder, loop_ticks_during
from llama_index.core.base.embeddings.base import BaseEmbedding

from l2vg_retrieval.llama_index import L2VGEmbedding


@pytest.fixture(scope="module")
def encoder() -> Any:
    return build_tiny_encoder()


class CountingEncoder:
    """Wraps the real tiny encoder to record how texts arrive (batching is the point under test)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, []

    def encode_query(self, texts: Any, **kw: Any) -> Any:
        return self.inner.encode_query(texts, **kw)

    def encode_document(self, texts: list[str], **kw: Any) -> Any:
        self.calls.append((len(texts), kw.get("batch_size")))
        return self.inner.encode_document(texts, **kw)


def test_query_and_text_paths(encoder: Any) -> None:
    emb = L2VGEmbedding(encoder=encoder, query_instruction="Find recipes:")
    assert isinstance(emb, BaseEmbedding)
    text = "how to bake bread"
    assert np.allclose(
        emb.get_query_embedding(text), encoder.encode_query(text, instruction="Find recipes:"), atol=1e-6
    )
    assert np.allclose(emb.get_text_embedding(text), encoder.encode_document(text), atol=1e-6)
    custom = L2VGEmbedding(encoder=encoder, text_instruction="Answer the question:")
    assert np.allclose(
        custom.get_text_embedding(text), encoder.encode(text, prompt="Answer the question:"), atol=1e-6
    )


def test_real_batching(encoder: Any) -> None:
    counting = CountingEncoder(encoder)
    emb = L2VGEmbedding(encoder=counting, embed_batch_size=4)
    texts = [f"document {i}" for i in range(10)]
    vectors = emb.get_text_embedding_batch(texts)
    assert len(vectors) == 10 and len(vectors[0]) == encoder.dim
    assert counting.calls == [(4, 4), (4, 4), (2, 4)]  # one encoder call per llama-index batch
    assert np.allclose(vectors, encoder.encode_document(texts), atol=1e-5)


async def test_async_runs_off_the_loop(encoder: Any) -> None:
    emb = L2VGEmbedding(encoder=encoder)
    texts = [f"a long text {i} " * 30 for i in range(32)]
    vectors, ticks, _ = await loop_ticks_during(emb.aget_text_embedding_batch(texts))
    query = await emb.aget_query_embedding("a question")
    assert len(vectors) == 32 and len(query) == encoder.dim
    assert ticks >= 2


def test_threads_share_one_encoder(encoder: Any) -> None:
    adapters = [L2VGEmbedding(encoder=encoder, query_instruction=f"task {i}:") for i in range(3)]
    expected = [a.get_query_embedding("same question") for a in adapters]
    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(lambda a: a.get_query_embedding("same question"), adapters * 3))
    for i, vector in enumerate(got):
        assert np.allclose(vector, expected[i % 3], atol=1e-5)
    assert all(a.encoder is encoder for a in adapters)


def test_bad_input(encoder: Any) -> None:
    emb = L2VGEmbedding(encoder=encoder)
    with pytest.raises(ValueError):
        emb.get_query_embedding("  ")
    with pytest.raises(TypeError):
        L2VGEmbedding(encoder=object())
    assert emb._get_text_embeddings([]) == []
