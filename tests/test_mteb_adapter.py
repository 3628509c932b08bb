"""The mteb v2 encoder: protocol, prompt types, ModelMeta, and mteb.evaluate offline."""

from __future__ import annotations

from typing import Any

import mteb
import numpy as np
import pytest
from conftest import build_tiny_encoder
from mteb.models import ModelMeta
from mteb.types import PromptType
from torch.utils.data import DataLoader

from l2vg_retrieval.mteb import L2VGMtebEncoder, SampleCorpusRetrieval, l2vg_model_meta


@pytest.fixture(scope="module")
def encoder() -> Any:
    return build_tiny_encoder()


def loader(texts: list[str], batch_size: int = 2) -> DataLoader:
    from datasets import Dataset

    return DataLoader(Dataset.from_dict({"text": texts}), batch_size=batch_size)


def test_encode_follows_prompt_type(encoder: Any) -> None:
    model = L2VGMtebEncoder(encoder=encoder)
    task = SampleCorpusRetrieval()
    texts = ["how to bake bread", "Jupiter is large", "prune roses in winter"]
    common = {"task_metadata": task.metadata, "hf_split": "test", "hf_subset": "default"}
    q = model.encode(loader(texts), prompt_type=PromptType.query, **common)
    d = model.encode(loader(texts), prompt_type=PromptType.document, **common)
    assert q.shape == d.shape == (3, encoder.dim)
    assert np.allclose(q, encoder.encode_query(texts), atol=1e-5)
    assert np.allclose(d, encoder.encode_document(texts), atol=1e-5)
    # Empty texts in a corpus become zero vectors instead of aborting the evaluation.
    mixed = model.encode(loader(["ok text", "", "  "]), prompt_type=PromptType.document, **common)
    assert np.allclose(mixed[1:], 0.0) and np.linalg.norm(mixed[0]) > 0.5
    sims = model.similarity(q, d)
    assert tuple(sims.shape) == (3, 3)


def test_model_meta_is_complete(encoder: Any) -> None:
    meta = l2vg_model_meta(encoder)
    assert isinstance(meta, ModelMeta)
    assert meta.similarity_fn_name.value == "cosine" and meta.embed_dim == encoder.dim
    assert meta.revision == encoder.fingerprint and meta.n_parameters > 0
    assert meta.loader is not None and "/" in meta.name
    with pytest.raises(ValueError):
        l2vg_model_meta(encoder, name="no-slash")


def test_mteb_evaluate_offline(encoder: Any) -> None:
    model = L2VGMtebEncoder(encoder=encoder, model_name="l2vg-tests/tiny")
    result = mteb.evaluate(model, SampleCorpusRetrieval(), cache=None, show_progress_bar=False)
    task = result.task_results[0]
    assert task.task_name == "L2VGSampleCorpusRetrieval" and result.model_name == "l2vg-tests/tiny"
    score = task.get_score()
    assert task.scores["test"][0]["main_score"] == pytest.approx(task.scores["test"][0]["ndcg_at_10"])
    # mteb's number is nDCG@10 of the encoder's own cosine ranking, computed here directly.
    from l2vg_retrieval.bench.metrics import evaluate_run
    from l2vg_retrieval.sources import sample_passages, sample_queries

    passages, queries = sample_passages(), sample_queries()
    q = encoder.encode_query([x["text"] for x in queries])
    d = encoder.encode_document([x["text"] for x in passages])
    run = {
        query["id"]: {p["id"]: float(s) for p, s in zip(passages, row, strict=True)}
        for query, row in zip(queries, q @ d.T, strict=True)
    }
    qrels = {query["id"]: dict.fromkeys(query["relevant"], 1) for query in queries}
    assert score == pytest.approx(evaluate_run(run, qrels, k_values=(10,))["ndcg@10"], abs=1e-4)
