"""The local MTEB-style suite: data readers, known scores through mteb, tiny-encoder smoke."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from l2vg_retrieval.bench.bright import load_source
from l2vg_retrieval.bench.lineup import DenseRetriever, build_retrievers
from l2vg_retrieval.bench.mteb_suite import (
    LOCAL_TASKS,
    build_task,
    evaluate_model,
    gensim_test_data,
    lee_sts_pairs,
    polarity_sentences,
    run_suite,
)
from l2vg_retrieval.encoder import L2VGEncoder


def test_the_suite_data_is_installed() -> None:
    """gensim carries the STS and classification data (never imported); the bench extra (and
    so dev) installs it. Missing, every reader fails with MissingDataError naming the step."""
    assert importlib.util.find_spec("gensim") is not None, "pip install -e '.[dev]' (or make install-dev)"
    assert (gensim_test_data() / "lee.cor").is_file()


def test_lee_pairs_and_polarity() -> None:
    s1, s2, scores = lee_sts_pairs()
    assert len(s1) == len(s2) == len(scores) == 50 * 49 // 2
    assert all(0.0 <= s <= 1.0 for s in scores)
    s1, _, _ = lee_sts_pairs(4)
    assert len(s1) == 6
    rows = polarity_sentences()
    assert len(rows) == 200 and {y for _, y in rows} == {0, 1}


class OracleEncoder:
    """Embeds an offline post as the one-hot vector of its gold document, and a document
    as its own one-hot: a perfect retriever, so mteb must report nDCG@10 = 1."""

    def __init__(self) -> None:
        domains = load_source("offline")
        ids = [d["id"] for d in domains[0].documents]
        self.index = {doc["content"]: ids.index(doc["id"]) for doc in domains[0].documents}
        self.gold = {e["query"]: ids.index(e["gold_ids"][0]) for d in domains for e in d.examples}
        self.dim = len(ids)

    def _onehot(self, positions: list[int]) -> np.ndarray:
        out = np.zeros((len(positions), self.dim), dtype=np.float32)
        out[np.arange(len(positions)), positions] = 1.0
        return out

    def encode_query(self, texts: list[str], **kwargs: object) -> np.ndarray:
        return self._onehot([self.gold[t] for t in texts])

    def encode_document(self, texts: list[str], **kwargs: object) -> np.ndarray:
        return self._onehot([self.index[t] for t in texts])


def test_retrieval_task_through_mteb_scores_oracle_perfectly() -> None:
    scores = evaluate_model(
        DenseRetriever("oracle", OracleEncoder()), [build_task("L2VGReasoningRetrieval", 8)]
    )
    assert scores == {"L2VGReasoningRetrieval": pytest.approx(1.0)}


class LabelOracle:
    """Embeds a text as the one-hot vector of its gold label: perfect for classification and
    clustering, so mteb must report accuracy 1 and V-measure 1 unless the task's texts and
    labels are misaligned."""

    def __init__(self, label_of: dict[str, object]) -> None:
        self.label_of = label_of
        self.labels = sorted({str(v) for v in label_of.values()})
        self.dim = len(self.labels)

    def encode_query(self, texts: list[str], **kwargs: object) -> np.ndarray:
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, self.labels.index(str(self.label_of[text]))] = 1.0
        return out

    encode_document = encode_query


def test_classification_and_clustering_through_mteb_score_a_label_oracle_perfectly() -> None:
    polarity = dict(polarity_sentences())
    posts = {e["query"]: d.name for d in load_source("offline") for e in d.examples}
    scores = evaluate_model(
        DenseRetriever("oracle", LabelOracle({**polarity, **posts})),
        [build_task("L2VGPolarityClassification", 24), build_task("L2VGReasoningDomainClustering", 16)],
    )
    assert scores == {
        "L2VGPolarityClassification": pytest.approx(1.0),
        "L2VGReasoningDomainClustering": pytest.approx(1.0),
    }
    # And a model that knows nothing (every text the same vector) is at chance, not at 1.
    blind = LabelOracle(dict.fromkeys([*polarity, *posts], "same"))
    chance = evaluate_model(DenseRetriever("blind", blind), [build_task("L2VGPolarityClassification", 24)])
    assert chance["L2VGPolarityClassification"] == pytest.approx(0.5)


def test_unknown_local_task_is_an_error() -> None:
    with pytest.raises(ValueError, match="no local task"):
        build_task("L2VGNope")


def test_suite_end_to_end_on_tiny_encoder(tiny_encoder: L2VGEncoder) -> None:
    retrievers = build_retrievers(
        tiny_encoder, ["teacher", "generate-then-encode", "l2vg-gen-docs"], gte_max_new_tokens=2
    )
    out = run_suite(
        retrievers,
        LOCAL_TASKS,
        limits={
            "L2VGLeeSTS": 4,
            "L2VGPolarityClassification": 48,
            "L2VGReasoningDomainClustering": 8,
            "L2VGReasoningRetrieval": 4,
        },
        subset_limits={"L2VGLeeSTS": 3, "L2VGReasoningRetrieval": 2},
    )
    assert set(out["scores"]) == {"teacher", "l2vg-gen-docs"}
    assert set(out["scores"]["teacher"]) == set(LOCAL_TASKS)
    assert set(out["subset_scores"]) == set(retrievers)
    assert set(out["subset_scores"]["generate-then-encode"]) == {"L2VGLeeSTS", "L2VGReasoningRetrieval"}
    for row in out["scores"].values():
        assert all(np.isfinite(v) for v in row.values())


def test_full_tasks_are_not_capped_by_the_subset_sizes(tiny_encoder: L2VGEncoder, monkeypatch) -> None:
    """The full run uses ``limits`` (None = whole tasks); only the subset uses its caps."""
    from l2vg_retrieval.bench import mteb_suite

    seen: list[tuple[tuple[str, ...], dict | None]] = []
    real = mteb_suite.resolve_tasks

    def recording(names, limits=None):
        seen.append((tuple(names), dict(limits) if limits else None))
        return real(names, limits)

    monkeypatch.setattr(mteb_suite, "resolve_tasks", recording)
    retrievers = build_retrievers(tiny_encoder, ["teacher"], gte_max_new_tokens=2)
    out = run_suite(
        retrievers,
        ["L2VGReasoningRetrieval"],
        limits={"L2VGReasoningRetrieval": 6},
        subset_limits={"L2VGReasoningRetrieval": 2},
    )
    assert seen[0] == (("L2VGReasoningRetrieval",), {"L2VGReasoningRetrieval": 6})
    assert seen[1] == (("L2VGReasoningRetrieval",), {"L2VGReasoningRetrieval": 2})
    assert out["limits"] == {"L2VGReasoningRetrieval": 6}
    assert out["subset_limits"] == {"L2VGReasoningRetrieval": 2}
