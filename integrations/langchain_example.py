"""LangChain end to end: langchain-qdrant's QdrantVectorStore with L2VGEmbeddings.

Run: python integrations/langchain_example.py            (packaged default encoder)
     python integrations/langchain_example.py --url http://localhost:6333   (a Qdrant server)
"""

from __future__ import annotations

import argparse
from typing import Any

from langchain_core.documents import Document
from langchain_qdrant import QdrantVectorStore
from qdrant_client import models

from l2vg_retrieval.langchain import L2VGEmbeddings
from l2vg_retrieval.qdrant import point_id
from l2vg_retrieval.sources import sample_passages


def main(encoder: Any = None, *, url: str | None = None, verbose: bool = True) -> dict[str, Any]:
    embeddings = L2VGEmbeddings(encoder=encoder) if encoder is not None else L2VGEmbeddings()
    docs = [
        Document(page_content=p["text"], metadata={**p["metadata"], "id": p["id"]}) for p in sample_passages()
    ]
    where = {"url": url} if url else {"location": ":memory:"}
    store = QdrantVectorStore.from_documents(
        docs,
        embeddings,
        collection_name="l2vg_langchain_demo",
        # Same uuid5 ids as QdrantIndexer: re-running overwrites, never duplicates.
        ids=[point_id(d.metadata["id"]) for d in docs],
        force_recreate=True,
        **where,
    )
    query = "How do I make bread at home?"
    plain = store.similarity_search_with_score(query, k=3)
    gardening_only = models.Filter(
        must=[models.FieldCondition(key="metadata.topic", match=models.MatchValue(value="gardening"))]
    )
    filtered = store.similarity_search(query, k=3, filter=gardening_only)
    retriever = store.as_retriever(search_kwargs={"k": 2})
    retrieved = retriever.invoke("Why do we have summer and winter?")
    if verbose:
        print(f"query: {query}")
        for doc, score in plain:
            print(f"  {score:.3f} [{doc.metadata['topic']}] {doc.page_content[:80]}")
        print("filtered to topic=gardening:")
        for doc in filtered:
            print(f"  [{doc.metadata['topic']}] {doc.page_content[:80]}")
        print("retriever: Why do we have summer and winter?")
        for doc in retrieved:
            print(f"  [{doc.metadata['topic']}] {doc.page_content[:80]}")
    return {"plain": plain, "filtered": filtered, "retrieved": retrieved}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a Qdrant server instead of the in-memory engine")
    main(url=parser.parse_args().url)
