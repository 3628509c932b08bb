"""An mteb v2 encoder for l2vg: ``mteb.evaluate(L2VGMtebEncoder(), tasks, cache=None)``.

Queries get the task instruction, documents the document path (generative or teacher),
chosen by mteb's ``prompt_type``. Metadata is a full ``ModelMeta`` (a partial one leaves
``similarity_fn_name`` unset and evaluation fails).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.types import PromptType

from .encoder_cache import shared_encoder

DEFAULT_NAME = "l2vg-retrieval/smollm2-135m-instruct-l2vg-gen"
_BACKBONE_PARAMS = 134_515_008  # SmolLM2-135M-Instruct


def _load(model_name: str | None = None, revision: str | None = None, **kwargs: Any) -> L2VGMtebEncoder:
    return L2VGMtebEncoder(model_name, revision, **kwargs)


def l2vg_model_meta(
    encoder: Any = None, *, name: str = DEFAULT_NAME, revision: str | None = None
) -> ModelMeta:
    """The model card mteb records next to every score; exact numbers when an encoder is given."""
    config = getattr(encoder, "config", None)
    n_params = _BACKBONE_PARAMS
    if encoder is not None and hasattr(encoder, "lm"):
        n_params = sum(p.numel() for p in encoder.lm.parameters()) + sum(
            t.numel() for t in encoder.trainable_state().values()
        )
    return ModelMeta(
        loader=_load,
        loader_kwargs={},
        name=name,
        revision=revision or (getattr(encoder, "fingerprint", None) if encoder is not None else None),
        release_date="2026-03-11",
        languages=["eng-Latn"],
        n_parameters=int(n_params),
        memory_usage_mb=round(n_params * 4 / 2**20, 1),
        max_tokens=float(config.max_text_tokens) if config is not None else 512.0,
        embed_dim=int(encoder.dim) if encoder is not None else 384,
        license="apache-2.0",
        open_weights=True,
        # Trained by this package (`l2vg train`), not by the paper's reference code.
        public_training_code=None,
        public_training_data=False,
        framework=["PyTorch"],
        reference="https://arxiv.org/abs/2603.10913",
        similarity_fn_name="cosine",
        use_instructions=True,
        training_datasets=set(),
        adapted_from="HuggingFaceTB/SmolLM2-135M-Instruct",
        modalities=["text"],
        model_type=["dense"],
    )


class L2VGMtebEncoder(AbsEncoder):
    """mteb's encoder protocol over an l2vg encoder (loaded once and shared, or given)."""

    def __init__(
        self,
        model_name: str | None = None,
        revision: str | None = None,
        *,
        device: str | None = None,
        encoder: Any = None,
        checkpoint: str | None = None,
        query_instruction: str | None = None,
        dtype: str = "auto",
        document_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        # model_name is mteb's label (org/name); the weights come from `checkpoint`.
        self.model = encoder or shared_encoder(
            checkpoint, device=device, dtype=dtype, document_mode=document_mode
        )
        self.query_instruction = query_instruction
        self.mteb_model_meta = l2vg_model_meta(self.model, name=model_name or DEFAULT_NAME, revision=revision)

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts: list[str] = [t for batch in inputs for t in batch["text"]]
        batch_size = int(kwargs.get("batch_size", 32))
        out = np.zeros((len(texts), self.model.dim), dtype=np.float32)
        # Empty texts occur in real corpora; they get a zero vector (similarity 0 to
        # everything) rather than aborting the whole evaluation.
        keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        if not keep:
            return out
        kept = [texts[i] for i in keep]
        common = {"batch_size": batch_size, "show_progress_bar": False}
        if prompt_type == PromptType.document:
            vectors = self.model.encode_document(kept, **common)
        else:
            # Queries and symmetric tasks (STS, classification) take the query path.
            vectors = self.model.encode_query(kept, instruction=self.query_instruction, **common)
        out[keep] = np.asarray(vectors, dtype=np.float32)
        return out


class SampleCorpusRetrieval(AbsTaskRetrieval):
    """The bundled sample corpus as an offline mteb retrieval task (12 queries, 30 passages)."""

    metadata = TaskMetadata(
        type="Retrieval",
        name="L2VGSampleCorpusRetrieval",
        description="l2vg_retrieval's bundled sample corpus: short original passages and questions "
        "phrased unlike their answers.",
        reference="https://arxiv.org/abs/2603.10913",
        dataset={"path": "l2vg_retrieval/data/sample_corpus", "revision": "1"},
        main_score="ndcg_at_10",
        category="t2t",
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        date=("2026-01-01", "2026-01-01"),
        dialect=[],
        domains=["Web"],
        task_subtypes=["Question answering"],
        license="apache-2.0",
        annotations_creators="expert-annotated",
        modalities=["text"],
        sample_creation="created",
        bibtex_citation="",
    )

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        from datasets import Dataset

        from .sources import sample_passages, sample_queries

        passages, queries = sample_passages(), sample_queries()
        split = RetrievalSplitData(
            corpus=Dataset.from_list([{"id": p["id"], "text": p["text"], "title": ""} for p in passages]),
            queries=Dataset.from_list([{"id": q["id"], "text": q["text"]} for q in queries]),
            relevant_docs={q["id"]: dict.fromkeys(q["relevant"], 1) for q in queries},
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True
