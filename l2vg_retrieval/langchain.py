"""LangChain ``Embeddings`` backed by an l2vg encoder (``l2vg_retrieval.langchain.L2VGEmbeddings``).

Shaped like langchain-huggingface's ``HuggingFaceEmbeddings`` (a pydantic model with
``model_kwargs``, ``encode_kwargs`` and a separate query configuration), so it drops into
any vector store, e.g. langchain-qdrant's ``QdrantVectorStore``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .encoder_cache import shared_encoder

_MODEL_KWARGS = {"device", "dtype", "document_mode"}
_ENCODE_KWARGS = {"batch_size", "normalize_embeddings"}


class L2VGEmbeddings(BaseModel, Embeddings):
    """Generative embeddings for LangChain.

    Queries get the task instruction (``query_instruction``, default: the checkpoint's);
    documents go through ``encode_document`` (generative or teacher, per ``document_mode``).
    Pass ``encoder=`` to reuse an already loaded encoder; otherwise ``model_name`` (a
    checkpoint folder, None = the packaged default) is loaded once per process and shared.
    """

    model_name: str | None = Field(None, description="checkpoint folder; None = the packaged default")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="device, dtype, document_mode")
    encode_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="batch_size, normalize_embeddings"
    )
    query_encode_kwargs: dict[str, Any] = Field(default_factory=dict)
    query_instruction: str | None = Field(None, description="task instruction for queries")
    show_progress: bool = False
    encoder: Any = Field(None, exclude=True, repr=False, description="an already loaded encoder")
    # Safe mode (safety.py) filters at retrieval time, so it belongs on the retriever/indexer,
    # not here: an Embeddings object only turns text into vectors.

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    @model_validator(mode="after")
    def _load_encoder(self) -> L2VGEmbeddings:
        for name, given, allowed in (
            ("model_kwargs", self.model_kwargs, _MODEL_KWARGS),
            ("encode_kwargs", self.encode_kwargs, _ENCODE_KWARGS),
            ("query_encode_kwargs", self.query_encode_kwargs, _ENCODE_KWARGS),
        ):
            unknown = set(given) - allowed
            if unknown:
                raise ValueError(f"{name}: unsupported keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        if self.encoder is None:
            self.encoder = shared_encoder(self.model_name, **self.model_kwargs)
        elif self.model_kwargs:
            raise ValueError("model_kwargs only apply when the encoder is loaded here, not with encoder=")
        if not (hasattr(self.encoder, "encode_query") and hasattr(self.encoder, "encode_document")):
            raise TypeError(
                f"encoder must have encode_query/encode_document, got {type(self.encoder).__name__}"
            )
        return self

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if isinstance(texts, str):
            raise TypeError("embed_documents takes a list of strings; use embed_query for one")
        texts = list(texts)
        if not texts:
            return []
        vectors = self.encoder.encode_document(
            texts, show_progress_bar=self.show_progress, **self.encode_kwargs
        )
        return vectors.tolist()

    def embed_query(self, text: str) -> list[float]:
        vector = self.encoder.encode_query(
            text, instruction=self.query_instruction, show_progress_bar=False, **self.query_encode_kwargs
        )
        return vector.tolist()

    # A forward pass takes tens of ms to seconds: run it in a worker thread so the event
    # loop keeps serving other tasks. The encoder's own lock serialises the model.
    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)


class L2VGQdrantRetriever(BaseRetriever):
    """A LangChain retriever over a :class:`~l2vg_retrieval.qdrant.QdrantIndexer` collection.

    ``safe=True`` is the safety switch: the query gate may refuse the query (no documents;
    the reason is kept in ``last_blocked_reason``) and flagged documents are never returned.
    The collection must have been indexed with ``QdrantIndexer(..., safety=SafetyFilter)``.
    """

    indexer: Any = Field(description="a QdrantIndexer (with safety= for safe mode)")
    k: int = Field(4, ge=1)
    safe: bool = False
    filter: dict[str, Any] | None = None
    instruction: str | None = None
    last_blocked_reason: str | None = None

    model_config = ConfigDict(arbitrary_types_allowed=True)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        results = self.indexer.search(
            query, k=self.k, filter=self.filter, instruction=self.instruction, safe=self.safe
        )
        self.last_blocked_reason = results.reason if results.blocked else None
        if results.blocked:
            run_manager.on_text(f"l2vg safe mode refused the query: {results.reason}")
            return []
        return [
            Document(page_content=h.text, metadata={**h.metadata, "score": h.score}, id=h.id) for h in results
        ]
