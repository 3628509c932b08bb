"""An MTEB-style suite of local mteb v2 tasks built from packaged data.

- ``L2VGLeeSTS``: the Lee corpus (50 news documents) with the 50x50 matrix of human
  similarity judgements (Lee, Pincombe & Welsh, 2005), from gensim's test data;
- ``L2VGPolarityClassification``: 200 sentiment-labelled movie-review sentences (Pang &
  Lee), from gensim's test data, split into train/test halves;
- ``L2VGReasoningDomainClustering``: the offline BRIGHT-style posts, clustered by domain;
- ``L2VGReasoningRetrieval``: the offline BRIGHT-style set as one retrieval task.

gensim is only used as a carrier of files: ``pip install --no-deps gensim==4.4.0``; it is
never imported. Real MTEB task names work too (``--task STSBenchmark``) for users online.

Every model runs through the project's mteb encoder (``l2vg_retrieval.mteb``) over a
caching view, which embeds each distinct text once per model: a 50-document STS matrix
has 1,225 pairs but costs 50 forward passes.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bright import OFFLINE_DIR, load_local

LOCAL_TASKS = (
    "L2VGLeeSTS",
    "L2VGPolarityClassification",
    "L2VGReasoningDomainClustering",
    "L2VGReasoningRetrieval",
)
# Per-task caps for the subset that slow models (generate-then-encode) run on. Every
# model is also scored on the same subset, so quality ratios compare like with like.
DEFAULT_SUBSET_LIMITS = {
    "L2VGLeeSTS": 10,  # documents → 45 pairs
    "L2VGReasoningDomainClustering": 16,  # posts, 4 per domain
    "L2VGReasoningRetrieval": 16,  # queries, 4 per domain; documents by the teacher
}
GENSIM_PIP = "gensim==4.4.0"


class MissingDataError(RuntimeError):
    """A packaged data file the suite reads is not installed."""


def gensim_test_data() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(
            "the local STS and classification tasks read gensim's test data: "
            f"pip install --no-deps {GENSIM_PIP}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    if not (folder / "lee.cor").is_file():
        raise MissingDataError(f"{folder} lacks lee.cor; reinstall with pip install --no-deps {GENSIM_PIP}")
    return folder


# ------------------------------------------------------------------ raw data
def lee_sts_pairs(n_docs: int | None = None) -> tuple[list[str], list[str], list[float]]:
    """Every pair (i < j) of the first ``n_docs`` Lee documents with its human score in [0, 1]."""
    folder = gensim_test_data()
    docs = [line.strip() for line in (folder / "lee.cor").read_text(encoding="latin-1").splitlines()]
    docs = [d for d in docs if d]
    matrix = np.loadtxt(folder / "similarities0-1.txt")
    if matrix.shape != (len(docs), len(docs)):
        raise MissingDataError(f"similarity matrix {matrix.shape} does not match {len(docs)} documents")
    n = len(docs) if n_docs is None else min(n_docs, len(docs))
    s1, s2, scores = [], [], []
    for i in range(n):
        for j in range(i + 1, n):
            s1.append(docs[i])
            s2.append(docs[j])
            # The file fills the upper triangle; the lower one is zeros.
            scores.append(float(max(matrix[i, j], matrix[j, i])))
    return s1, s2, scores


def polarity_sentences() -> list[tuple[str, int]]:
    folder = gensim_test_data()
    rows = []
    for line in (folder / "pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines():
        label, _, text = line.strip().partition(" ")
        if text and label in ("__label__pos", "__label__neg"):
            rows.append((text, int(label == "__label__pos")))
    return rows


def _balanced_head(items: Sequence[Any], label_of: Any, limit: int | None) -> list[Any]:
    """The first ``limit`` items taking labels in turn, so a subset keeps every class."""
    if limit is None or limit >= len(items):
        return list(items)
    groups: dict[Any, list[Any]] = {}
    for item in items:
        groups.setdefault(label_of(item), []).append(item)
    out: list[Any] = []
    while len(out) < limit and any(groups.values()):
        for key in list(groups):
            if groups[key] and len(out) < limit:
                out.append(groups[key].pop(0))
    return out


# ------------------------------------------------------------------ mteb tasks
def _metadata(name: str, task_type: str, main_score: str, description: str, reference: str) -> Any:
    from mteb.abstasks.task_metadata import TaskMetadata

    return TaskMetadata(
        name=name,
        description=description,
        reference=reference,
        dataset={"path": f"l2vg_retrieval/local/{name}", "revision": "1"},
        type=task_type,
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score=main_score,
        date=("2000-01-01", "2026-01-01"),
        domains=["Written"],
        task_subtypes=[],
        license="not specified",
        annotations_creators="human-annotated",
        dialect=[],
        sample_creation="found",
        bibtex_citation="",
    )


def build_task(name: str, limit: int | None = None) -> Any:
    """A local task by name; ``limit`` caps its size (documents, posts or queries)."""
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.classification import AbsTaskClassification
    from mteb.abstasks.clustering import AbsTaskClustering
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.sts import AbsTaskSTS

    if name == "L2VGLeeSTS":

        class LeeSTS(AbsTaskSTS):
            metadata = _metadata(
                name,
                "STS",
                "cosine_spearman",
                "Lee et al. (2005) news documents with averaged human similarity judgements.",
                "https://github.com/piskvorky/gensim/tree/develop/gensim/test/test_data",
            )
            min_score = 0
            max_score = 1

            def load_data(self, **kwargs: Any) -> None:
                s1, s2, scores = lee_sts_pairs(limit)
                split = Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": scores})
                self.dataset = DatasetDict({"test": split})
                self.data_loaded = True

        return LeeSTS()

    if name == "L2VGPolarityClassification":

        class PolarityClassification(AbsTaskClassification):
            metadata = _metadata(
                name,
                "Classification",
                "accuracy",
                "Pang & Lee movie-review sentences, positive vs negative.",
                "https://github.com/piskvorky/gensim/tree/develop/gensim/test/test_data",
            )
            samples_per_label = 32
            n_experiments = 5

            def load_data(self, **kwargs: Any) -> None:
                rows = _balanced_head(polarity_sentences(), lambda r: r[1], limit)
                # Alternate each label's rows into train and test, so both halves hold
                # both classes whatever order the rows come in (a balanced head interleaves
                # labels, and plain alternation would then put one label in each half).
                train, test = [], []
                for label in sorted({y for _, y in rows}):
                    of_label = [r for r in rows if r[1] == label]
                    train += of_label[0::2]
                    test += of_label[1::2]
                self.dataset = DatasetDict(
                    {
                        "train": Dataset.from_dict(
                            {"text": [t for t, _ in train], "label": [y for _, y in train]}
                        ),
                        "test": Dataset.from_dict(
                            {"text": [t for t, _ in test], "label": [y for _, y in test]}
                        ),
                    }
                )
                self.data_loaded = True

        return PolarityClassification()

    if name == "L2VGReasoningDomainClustering":

        class DomainClustering(AbsTaskClustering):
            metadata = _metadata(
                name,
                "Clustering",
                "v_measure",
                "Offline BRIGHT-style posts (physics, economics, biology, programming) by domain.",
                "https://arxiv.org/abs/2407.12883",  # BRIGHT; this set: data/bright_offline/README.md
            )
            max_fraction_of_documents_to_embed = None
            max_document_to_embed = None
            n_clusters = 5
            max_documents_per_cluster = 10_000

            def load_data(self, **kwargs: Any) -> None:
                posts = [(e["query"], d.name) for d in load_local(OFFLINE_DIR) for e in d.examples]
                posts = _balanced_head(posts, lambda r: r[1], limit)
                split = Dataset.from_dict(
                    {"sentences": [p for p, _ in posts], "labels": [y for _, y in posts]}
                )
                self.dataset = DatasetDict({"test": split})
                self.data_loaded = True

        return DomainClustering()

    if name == "L2VGReasoningRetrieval":

        class ReasoningRetrieval(AbsTaskRetrieval):
            metadata = _metadata(
                name,
                "Retrieval",
                "ndcg_at_10",
                "Offline BRIGHT-style set: everyday posts to the principle that explains them.",
                "https://arxiv.org/abs/2407.12883",  # BRIGHT; this set: data/bright_offline/README.md
            )

            def load_data(self, **kwargs: Any) -> None:
                domains = load_local(OFFLINE_DIR)
                examples = _balanced_head(
                    [(e, d.name) for d in domains for e in d.examples], lambda r: r[1], limit
                )
                corpus = {doc["id"]: doc["content"] for d in domains for doc in d.documents}
                self.dataset = {
                    "default": {
                        "test": RetrievalSplitData(
                            corpus=Dataset.from_list(
                                [{"id": k, "text": v, "title": ""} for k, v in corpus.items()]
                            ),
                            queries=Dataset.from_list(
                                [{"id": e["id"], "text": e["query"]} for e, _ in examples]
                            ),
                            relevant_docs={e["id"]: {g: 1 for g in e["gold_ids"]} for e, _ in examples},
                            top_ranked=None,
                        )
                    }
                }
                self.data_loaded = True

        return ReasoningRetrieval()

    raise ValueError(f"no local task {name!r}; local tasks are {', '.join(LOCAL_TASKS)}")


def resolve_tasks(names: Iterable[str], limits: dict[str, int | None] | None = None) -> list[Any]:
    """Local tasks by name; any other name is looked up in mteb's registry (needs the hub)."""
    limits = limits or {}
    out = []
    for name in names:
        if name in LOCAL_TASKS:
            out.append(build_task(name, limits.get(name)))
        else:
            import mteb

            out.append(mteb.get_task(name))
    return out


# ------------------------------------------------------------------ the encoder adapter
class CachedEncoderView:
    """The encoder interface the project's mteb adapter expects, over a lineup retriever.

    Every call goes through the retriever's embedding cache, so a text is embedded once
    per model across all tasks (and the subset runs are almost free).
    """

    def __init__(self, retriever: Any) -> None:
        self.retriever = retriever
        # A prefix retriever (``--dims``) has no encoder of its own: its size is its ``dim``.
        own = getattr(retriever, "dim", None)
        self.dim = int(own if own is not None else retriever.encoder.dim)

    def encode_query(
        self, texts: Sequence[str], *, instruction: str | None = None, **kwargs: Any
    ) -> np.ndarray:
        return self.retriever.embed_queries(list(texts), instruction)

    def encode_document(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self.retriever.embed_documents(list(texts))


def make_mteb_encoder(retriever: Any) -> Any:
    """The project's mteb v2 encoder (``l2vg_retrieval.mteb``) over any lineup model."""
    from ..mteb import L2VGMtebEncoder

    return L2VGMtebEncoder(f"l2vg-bench/{retriever.key}", "local", encoder=CachedEncoderView(retriever))


def evaluate_model(retriever: Any, tasks: Sequence[Any], *, batch_size: int = 16) -> dict[str, float]:
    """Main score per task name, through ``mteb.evaluate`` (no result cache: always recompute)."""
    import mteb

    result = mteb.evaluate(
        make_mteb_encoder(retriever),
        list(tasks),
        cache=None,
        show_progress_bar=False,
        encode_kwargs={"batch_size": batch_size},
    )
    return {tr.task_name: float(tr.get_score()) for tr in result.task_results}


def _min_cap(a: int | None, b: int | None) -> int | None:
    caps = [c for c in (a, b) if c is not None]
    return min(caps) if caps else None


def run_suite(
    retrievers: dict[str, Any],
    task_names: Sequence[str] = LOCAL_TASKS,
    *,
    subset_limits: dict[str, int | None] | None = None,
    subset_only: Sequence[str] = ("generate-then-encode",),
    limits: dict[str, int | None] | None = None,
    on_step: Any = None,
) -> dict[str, Any]:
    """Full tasks for every model except ``subset_only``; every model on the subset tasks.

    ``limits`` caps the "full" tasks too (a quick look, or a smoke test); None = whole.
    """
    caps = DEFAULT_SUBSET_LIMITS if subset_limits is None else subset_limits
    subset_names = [n for n in task_names if n in caps]
    # The subset is capped by its own sizes and, if given, by the overall limits too.
    subset_caps = {n: _min_cap(caps[n], (limits or {}).get(n)) for n in subset_names}
    full: dict[str, dict[str, float]] = {}
    subset: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for key, retriever in retrievers.items():
        start = time.perf_counter()
        if key not in subset_only:
            if on_step:
                on_step(key, "full")
            full[key] = evaluate_model(retriever, resolve_tasks(task_names, limits))
        if subset_names:
            if on_step:
                on_step(key, "subset")
            subset[key] = evaluate_model(retriever, resolve_tasks(subset_names, subset_caps))
        seconds[key] = round(time.perf_counter() - start, 3)
    return {
        "tasks": list(task_names),
        "limits": dict(limits or {}),
        "scores": full,
        "subset_limits": subset_caps,
        "subset_scores": subset,
        "seconds": seconds,
    }
