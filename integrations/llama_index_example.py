"""LlamaIndex end to end: VectorStoreIndex over llama-index-vector-stores-qdrant with L2VGEmbedding.

Run: python integrations/llama_index_example.py          (packaged default encoder)
     python integrations/llama_index_example.py --url http://localhost:6333
"""

from __future__ import annotations

import argparse
from typing import Any

from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters
from llama_index.vector_stores.qdrant import QdrantVectorStore
from qdrant_client import QdrantClient

from l2vg_retrieval.llama_index import L2VGEmbedding
from l2vg_retrieval.sources import sample_passages


def main(encoder: Any = None, *, url: str | None = None, verbose: bool = True) -> dict[str, Any]:
    embed_model = L2VGEmbedding(encoder=encoder, embed_batch_size=16)
    client = QdrantClient(url=url) if url else QdrantClient(":memory:")
    if client.collection_exists("l2vg_llama_index_demo"):
        client.delete_collection("l2vg_llama_index_demo")
    store = QdrantVectorStore(client=client, collection_name="l2vg_llama_index_demo")
    documents = [
        # Without excluded_embed_metadata_keys LlamaIndex would embed "topic: ..." into the text.
        Document(
            text=p["text"], doc_id=p["id"], metadata=p["metadata"], excluded_embed_metadata_keys=["topic"]
        )
        for p in sample_passages()
    ]
    index = VectorStoreIndex.from_documents(
        documents, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed_model
    )
    query = "What is the biggest planet?"
    nodes = index.as_retriever(similarity_top_k=3).retrieve(query)
    only_code = MetadataFilters(filters=[ExactMatchFilter(key="topic", value="programming")])
    filtered = index.as_retriever(similarity_top_k=2, filters=only_code).retrieve("How do dictionaries work?")
    if verbose:
        print(f"query: {query}")
        for n in nodes:
            print(f"  {n.score:.3f} [{n.metadata['topic']}] {n.get_content()[:80]}")
        print("filtered to topic=programming: How do dictionaries work?")
        for n in filtered:
            print(f"  {n.score:.3f} [{n.metadata['topic']}] {n.get_content()[:80]}")
    client.close()
    return {"nodes": nodes, "filtered": filtered}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a Qdrant server instead of the in-memory engine")
    main(url=parser.parse_args().url)
