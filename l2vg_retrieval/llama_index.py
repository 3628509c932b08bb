"""LlamaIndex ``BaseEmbedding`` backed by an l2vg encoder (``l2vg_retrieval.llama_index.L2VGEmbedding``)."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from pydantic import Field, PrivateAttr

from .encoder_cache import shared_encoder


class L2VGEmbedding(BaseEmbedding):
    """Generative embeddings for LlamaIndex.

    Queries get ``query_instruction`` (default: the checkpoint's); texts (nodes) go through
    ``encode_document``, with ``text_instruction`` replacing the document prompt in
    generative mode. ``_get_text_embeddings`` embeds a whole ``embed_batch_size`` batch in
    one call. Pass ``encoder=`` to share a loaded encoder, else ``model_path`` (None = the
    packaged default) is loaded once per process.
    """

    model_name: str = Field("l2vg-retrieval", description="a label for this embedding model")
    model_path: str | None = Field(None, description="checkpoint folder; None = the packaged default")
    query_instruction: str | None = Field(None, description="task instruction for queries")
    text_instruction: str | None = Field(None, description="document prompt override (generative mode)")
    device: str | None = None
    dtype: str = "auto"
    document_mode: str | None = None
    _encoder: Any = PrivateAttr()

    def __init__(self, *, encoder: Any = None, **data: Any) -> None:
        super().__init__(**data)
        if encoder is None:
            encoder = shared_encoder(
                self.model_path, device=self.device, dtype=self.dtype, document_mode=self.document_mode
            )
        if not (hasattr(encoder, "encode_query") and hasattr(encoder, "encode_document")):
            raise TypeError(f"encoder must have encode_query/encode_document, got {type(encoder).__name__}")
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        return "L2VGEmbedding"

    @property
    def encoder(self) -> Any:
        return self._encoder

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._encoder.encode_query(
            query, instruction=self.query_instruction, show_progress_bar=False
        ).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        kwargs: dict[str, Any] = {"batch_size": self.embed_batch_size, "show_progress_bar": False}
        if self.text_instruction is not None:
            kwargs["prompt"] = self.text_instruction
        return self._encoder.encode_document(list(texts), **kwargs).tolist()

    # Forward passes are CPU-bound: a worker thread keeps the event loop responsive.
    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


class L2VGQdrantRetriever(BaseRetriever):
    """A LlamaIndex retriever over a :class:`~l2vg_retrieval.qdrant.QdrantIndexer` collection.

    ``safe=True`` is the safety switch: the query gate may refuse the query (no nodes; the
    reason is kept in ``last_blocked_reason``) and flagged documents are never returned.
    """

    def __init__(
        self,
        indexer: Any,
        *,
        similarity_top_k: int = 4,
        safe: bool = False,
        filter: dict[str, Any] | None = None,
        instruction: str | None = None,
        **kwargs: Any,
    ) -> None:
        if similarity_top_k < 1:
            raise ValueError(f"similarity_top_k must be >= 1, got {similarity_top_k}")
        super().__init__(**kwargs)
        self.indexer = indexer
        self.similarity_top_k = similarity_top_k
        self.safe = safe
        self.filter = filter
        self.instruction = instruction
        self.last_blocked_reason: str | None = None

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        results = self.indexer.search(
            query_bundle.query_str,
            k=self.similarity_top_k,
            filter=self.filter,
            instruction=self.instruction,
            safe=self.safe,
        )
        self.last_blocked_reason = results.reason if results.blocked else None
        return [
            NodeWithScore(node=TextNode(id_=h.id, text=h.text, metadata=dict(h.metadata)), score=h.score)
            for h in results
        ]
