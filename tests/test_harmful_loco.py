"""Leave-one-category-out and the overall split, on a synthetic feature table where the
right answers are known: a fold never fits or thresholds on its category, every row of that
category is tested, and the refusal signal's contribution shows up where it should."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from l2vg_retrieval import safety
from l2vg_retrieval.bench.harmful_loco import (
    CALIBRATION,
    HELD_OUT,
    GeneralisationEvaluator,
    LocoSettings,
    generalisation_markdown,
    paired_with_first,
    plot_generalisation,
    run_generalisation,
    screen_variant_line,
    screen_variant_record,
)
from l2vg_retrieval.bench.stats import paired_rate_difference_ci
from l2vg_retrieval.safety import SafetyFeatures
from l2vg_retrieval.safety_data import LabelledText

CATEGORIES = ("A", "B", "C")
DIM = 6
MARKER = 5  # an embedding column that is 1 only on rows of category B


def _rows(split: str) -> list[LabelledText]:
    rows: list[LabelledText] = []

    def add(n: int, label: int, kind: str, category: str, domain: str) -> None:
        rows.extend(
            LabelledText(
                f"{split} {category or domain} {kind} {label} {i}", label, kind, split, "", category, domain
            )
            for i in range(n)
        )

    for c in CATEGORIES:
        add(20, 1, "query", c, "harmful")
        add(10, 0, "query", c, "lookalike")
        add(8, 1, "passage", c, "harmful")
        add(6, 0, "passage", c, "lookalike")
    add(60, 0, "query", "", "general")
    add(20, 0, "query", "", "technical")
    add(60, 0, "passage", "", "technical")
    add(30, 0, "passage", "", "general")
    return rows


def _vectors(rows: list[LabelledText], rng: np.random.Generator) -> np.ndarray:
    """Harmful rows of A, B, C point along axes 0, 1, 2; benign rows are noise around 0."""
    x = rng.normal(0.0, 0.3, (len(rows), DIM))
    for i, r in enumerate(rows):
        if r.label == 1:
            x[i, CATEGORIES.index(r.category)] += 3.0
        x[i, MARKER] = 1.0 if r.category == "B" else 0.0
    return x


def _table(
    seed: int = 0, passages_for: tuple[str, ...] = CATEGORIES, *, requests: bool = False
) -> SafetyFeatures:
    rng = np.random.default_rng(seed)
    rows = _rows(CALIBRATION) + _rows(HELD_OUT)
    rows = [r for r in rows if r.kind == "query" or r.category in passages_for or r.category == ""]
    queries = [r for r in rows if r.kind == "query"]
    passages = [r for r in rows if r.kind == "passage"]
    labels = np.array([r.label for r in queries])
    # The "backbone" starts harmful answers with a refusal far more often, whatever the category.
    answer = np.stack([np.where(labels == 1, -0.5, -4.0), np.where(labels == 1, -4.0, -0.5)], axis=1)
    answer = answer + rng.normal(0.0, 0.3, answer.shape)
    doc = _vectors(passages, rng)
    teacher = doc + rng.normal(0.0, 0.3, doc.shape)
    teacher[:, MARKER] = doc[:, MARKER]
    # The requests read as passages (the document pass): the same layout as passages.
    request_doc = (
        {"generative": _vectors(queries, rng), "teacher": _vectors(queries, rng)} if requests else None
    )
    return SafetyFeatures(
        encoder_fingerprint="synthetic",
        instruction=None,
        prototype=np.eye(DIM)[3],
        queries=queries,
        passages=passages,
        query_embeddings=_vectors(queries, rng),
        answer_states=None,
        answer_features=answer,
        answer_token_ids={"refusal_start_logprob": [1], "compliance_start_logprob": [2]},
        doc_embeddings={"generative": doc, "teacher": teacher},
        request_doc_embeddings=request_doc,
    )


def _split(row: Any) -> str:
    return str(row.source)


def test_a_fold_never_fits_or_thresholds_on_its_category(monkeypatch: pytest.MonkeyPatch) -> None:
    features = _table()
    seen_marker: dict[str, list[float]] = {"fit": [], "fit_lda": []}

    def recording(name: str) -> Any:
        original = getattr(safety.LogisticProbe, name).__func__

        def fit(cls: Any, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> Any:
            seen_marker[name].append(float(np.abs(x[:, MARKER]).max()))
            return original(cls, x, y, **kwargs)

        return classmethod(fit)

    for name in seen_marker:
        monkeypatch.setattr(safety.LogisticProbe, name, recording(name))
    evaluator = GeneralisationEvaluator(features, _split, ["B"])
    loco = evaluator.leave_one_category_out()
    # Gate (LDA, with and without the refusal signal) and screen (LDA, two spaces), each
    # shrinkage also fitted once per held-out group of the fold's two categories A and C:
    # every fit of fold B saw only rows whose B-marker is 0, i.e. no row of category B.
    assert seen_marker["fit"] == []
    assert len(seen_marker["fit_lda"]) == (2 + 2) * len(safety.SHRINKAGE_GRID) * (1 + 2)
    assert max(seen_marker["fit_lda"]) == 0.0
    # A logistic gate (L2 by validation AUC) sees no row of B either.
    seen_marker["fit"].clear()
    logistic_gate = LocoSettings(gate_probe="logistic")
    GeneralisationEvaluator(features, _split, ["B"], logistic_gate).leave_one_category_out()
    assert len(seen_marker["fit"]) == 2 * len(safety.L2_GRID)
    assert max(seen_marker["fit"]) == 0.0
    fold = evaluator.folds["B"]
    q_cats = {features.queries[i].category for i in fold.gate_rows}
    d_cats = {features.passages[i].category for i in fold.screen_rows}
    assert "B" not in q_cats | d_cats and {"A", "C", ""} <= q_cats
    assert {features.queries[i].source for i in fold.gate_rows} == {CALIBRATION}
    assert loco["folds"]["B"]["fit_categories"] == ["A", "C"]
    # The fold's rows and screen are there to be read on their own, the same as the protocol's.
    q_rows, d_rows = evaluator.fold_rows("B")
    assert q_rows.tolist() == fold.gate_rows.tolist() and d_rows.tolist() == fold.screen_rows.tolist()
    space, probe, threshold = evaluator.fold_screen("B")
    harmful_b = [i for i, r in enumerate(features.passages) if r.category == "B" and r.label == 1]
    flagged = probe.score(features.doc_embeddings[space][harmful_b]) >= threshold
    assert float(flagged.mean()) == loco["screen"]["per_category"]["B"]["recall"]
    # ...and it is tested on every row of B, from both splits (none was seen).
    per = loco["gate"]["with_refusal_signal"]["per_category"]["B"]
    assert per["n_harmful"] == 40 and per["n_lookalike"] == 20
    assert loco["screen"]["per_category"]["B"]["n_harmful"] == 16


def test_a_folds_screen_learns_from_its_requests_but_never_the_left_out_categorys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    features = _table(requests=True)
    fits: list[tuple[int, float]] = []
    original = safety.LogisticProbe.fit_lda.__func__  # type: ignore[attr-defined]

    def recording(cls: Any, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> Any:
        fits.append((len(x), float(np.abs(x[:, MARKER]).max())))
        return original(cls, x, y, **kwargs)

    monkeypatch.setattr(safety.LogisticProbe, "fit_lda", classmethod(recording))
    evaluator = GeneralisationEvaluator(features, _split, ["B"])
    loco = evaluator.leave_one_category_out(refusal_variants=())
    q_rows, d_rows = evaluator.fold_rows("B")
    # The fold's full fits (one per shrinkage and space) train on its passages *and* its
    # requests (the validation share held back), and no row of B is among either.
    largest = max(n for n, _ in fits)
    assert largest > len(d_rows) and largest <= len(d_rows) + len(q_rows)
    assert max(marker for _, marker in fits) == 0.0
    # Only passages are scored: B's recall counts its 16 harmful passages, not its requests.
    assert loco["screen"]["per_category"]["B"]["n_harmful"] == 16
    space, probe, threshold = evaluator.fold_screen("B")
    harmful_b = [i for i, r in enumerate(features.passages) if r.category == "B" and r.label == 1]
    flagged = probe.score(features.doc_embeddings[space][harmful_b]) >= threshold
    assert float(flagged.mean()) == loco["screen"]["per_category"]["B"]["recall"]


def test_overall_split_tests_only_the_held_out_split() -> None:
    report, _ = run_generalisation(_table(), _split, list(CATEGORIES))
    overall = report["overall_split"]
    for c in CATEGORIES:
        assert overall["gate"]["with_refusal_signal"]["per_category"][c]["n_harmful"] == 20
        assert overall["screen"]["per_category"][c]["n_harmful"] == 8
    # Seen categories, separable data: the ordinary protocol finds everything.
    assert overall["gate"]["without_refusal_signal"]["recall"]["mean"] >= 0.9
    fpr = overall["screen"]["benign_fpr"]
    assert set(fpr) >= {"all", "technical", "general", "lookalike"} and fpr["technical"]["n"] == 60


def test_the_refusal_signal_carries_a_category_the_embedding_never_saw() -> None:
    report, _ = run_generalisation(_table(), _split, list(CATEGORIES))
    loco = report["leave_one_category_out"]
    without = loco["gate"]["without_refusal_signal"]["per_category"]
    with_ = loco["gate"]["with_refusal_signal"]["per_category"]
    # Each category's harm lies on its own axis: held out, the probe has no weight there.
    assert all(without[c]["recall"] < 0.5 for c in CATEGORIES)
    assert all(with_[c]["recall"] > 0.9 for c in CATEGORIES)
    # Each row's outcome is kept, so the two variants compare pair by pair: the signal's
    # gain is far outside the paired interval's reach of zero.
    for c in CATEGORIES:
        caught = with_[c]["caught"]
        assert len(caught) == with_[c]["n_harmful"] and caught.count("1") / len(caught) == with_[c]["recall"]
    gain = paired_rate_difference_ci(
        {c: with_[c]["caught"] for c in CATEGORIES}, {c: without[c]["caught"] for c in CATEGORIES}
    )
    assert gain["ci95"][0] > 0.3 and gain["groups"] == len(CATEGORIES)
    # What an experiment report records and prints for the same comparison.
    paired, suffix = paired_with_first(
        {c: with_[c]["caught"] for c in CATEGORIES}, {c: without[c]["caught"] for c in CATEGORIES}
    )
    assert paired == gain and suffix.startswith(f" | vs first {gain['mean_difference']:+.3f} [")
    assert (
        report["refusal_signal_contribution"]["leave_one_category_out"]["mean_recall_delta_ci95"]
        == gain["ci95"]
    )
    delta = report["refusal_signal_contribution"]["leave_one_category_out"]
    assert delta["mean_recall_delta"] > 0.5 and set(delta["recall_delta_per_category"]) == set(CATEGORIES)
    summary = loco["gate"]["without_refusal_signal"]["recall"]
    assert set(summary["below_half"]) == set(CATEGORIES) and summary["worst_category"] in CATEGORIES
    assert report["targets_met"]["gate_mean_recall_ge_0.80"] is True
    assert report["targets_met"]["no_screen_category_below_0.50"] is False  # the screen has no such signal


def test_a_category_without_passages_is_reported_not_averaged(tmp_path: Path) -> None:
    report, _ = run_generalisation(_table(passages_for=("A", "B")), _split, list(CATEGORIES))
    screen = report["leave_one_category_out"]["screen"]
    assert (
        screen["per_category"]["C"]["recall"] is None
        and "no harmful passages" in screen["per_category"]["C"]["note"]
    )
    assert screen["recall"]["n_categories"] == 2
    assert plot_generalisation(report, tmp_path / "loco.png").stat().st_size > 1000
    markdown = generalisation_markdown(report)
    assert markdown.count("\n| ") == len(CATEGORIES) + 1 and "| C | " in markdown
    from rich.console import Console

    from l2vg_retrieval.bench.harmful_cli import generalisation_table

    console = Console(record=True, width=200)
    console.print(generalisation_table(report))
    assert "mean" in console.export_text()


def test_screen_variant_record_and_line_summarise_one_loco_screen() -> None:
    screen = GeneralisationEvaluator(_table(), _split, CATEGORIES).leave_one_category_out(
        refusal_variants=()
    )["screen"]
    record = screen_variant_record(screen)
    assert record["per_category"] == {c: screen["per_category"][c]["recall"] for c in CATEGORIES}
    assert record["recall"] == screen["recall"] and record["benign_fpr"] == screen["benign_fpr"]
    assert record["caught"] == {c: screen["per_category"][c]["caught"] for c in CATEGORIES}
    assert set(record["variant_per_fold"]) == set(CATEGORIES)
    assert set(record["variant_per_fold"].values()) <= {"generative", "teacher"}
    line = screen_variant_line("probe", screen)
    assert line.startswith("probe ") and f"mean {screen['recall']['mean']:.3f}" in line
    assert f"technical max {screen['benign_fpr']['technical']['max']:.3f}" in line
