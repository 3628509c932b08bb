"""L2VGEmbeddings: langchain-tests' standard suites plus query/document and concurrency checks."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from conftest import build_tiny_encoder, loop_ticks_during
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from l2vg_retrieval.langchain import L2VGEmbeddings


@functools.cache
def tiny() -> Any:
    return build_tiny_encoder()


class TestL2VGEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[L2VGEmbeddings]:
        return L2VGEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"encoder": tiny(), "encode_kwargs": {"batch_size": 2}}


class TestL2VGEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[L2VGEmbeddings]:
        return L2VGEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"encoder": tiny(), "query_instruction": "Find passages about:"}


@pytest.mark.slow
class TestL2VGEmbeddingsIntegrationDefaultModel(EmbeddingsIntegrationTests):
    """The same suite on the real packaged encoder, loaded by name like a user would."""

    @property
    def embeddings_class(self) -> type[L2VGEmbeddings]:
        return L2VGEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_kwargs": {"document_mode": "teacher"}}


def test_queries_and_documents_use_their_own_prompts() -> None:
    enc = tiny()
    emb = L2VGEmbeddings(encoder=enc, query_instruction="Find recipes:")
    text = "how to bake bread"
    assert np.allclose(emb.embed_query(text), enc.encode_query(text, instruction="Find recipes:"), atol=1e-6)
    assert np.allclose(emb.embed_documents([text])[0], enc.encode_document(text), atol=1e-6)
    assert not np.allclose(emb.embed_query(text), emb.embed_documents([text])[0], atol=1e-3)
    assert emb.embed_documents([]) == []


def test_bad_input_and_config() -> None:
    emb = L2VGEmbeddings(encoder=tiny())
    with pytest.raises(ValueError):
        emb.embed_query("   ")
    with pytest.raises(TypeError):
        emb.embed_documents("not a list")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        emb.embed_documents(["ok", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unsupported keys"):
        L2VGEmbeddings(encoder=tiny(), encode_kwargs={"convert_to_tensor": True})
    with pytest.raises(ValueError):
        L2VGEmbeddings(encoder=tiny(), model_kwargs={"dtype": "float32"})
    with pytest.raises(TypeError):
        L2VGEmbeddings(encoder=object())
    with pytest.raises(ValueError):
        L2VGEmbeddings(encoder=tiny(), not_a_field=1)


async def test_async_does_not_block_the_event_loop() -> None:
    emb = L2VGEmbeddings(encoder=tiny())
    texts = [f"a fairly long document number {i} " * 20 for i in range(64)]
    vectors, ticks, elapsed = await loop_ticks_during(emb.aembed_documents(texts))
    assert len(vectors) == 64
    # If encoding ran on the loop thread the ticker could not run at all meanwhile.
    assert ticks >= max(2, int(elapsed / 0.005 * 0.2))


def test_many_adapters_share_one_encoder_across_threads() -> None:
    enc = tiny()
    adapters = [L2VGEmbeddings(encoder=enc, query_instruction=f"task {i}:") for i in range(4)]
    queries = [f"question {i}" for i in range(8)]
    expected = {(a, q): adapters[a].embed_query(q) for a in range(4) for q in queries}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {(a, q): pool.submit(adapters[a].embed_query, q) for a in range(4) for q in queries}
    for key, future in futures.items():
        assert np.allclose(future.result(), expected[key], atol=1e-5)
    assert all(a.encoder is enc for a in adapters)
