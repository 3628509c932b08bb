"""Does the gate carry over better if it also learns from the *passages*? (issue 13)

The mirror of ``safety_screen_requests.py``: the screen now learns from requests read
through the document pass; here the gate learns from the calibration split's passages read
through the query pass (the instruction, the answer position's state after the probe layer,
the refusal signal), with their labels, categories and families. The look-alike passages
(written to inform or protect, a third of them instruction-shaped) are the benign side the
gate's look-alike requests (25 per category) are thin on, and the gate's look-alike false
positives (6% held out) are what it misses most. Measured with the shipped protocol: leave
one category out (its passages leave with it), gate recall and look-alike false positives
on that category's *requests* only, benign false positives on the held-out split's
requests; the added rows are never scored.

    python benchmarks/experiments/safety_gate_passages.py OUT.json [--cache runs/exp/gate_passages.pkl]

The encoder runs once over every request and every calibration passage (query pass); cached.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from l2vg_retrieval import L2VGEncoder
from l2vg_retrieval.bench.harmful_loco import (
    CALIBRATION,
    HELD_OUT,
    GeneralisationEvaluator,
    LocoSettings,
    paired_with_first,
)
from l2vg_retrieval.safety import ProbeKind, SafetyFeatures, featurize
from l2vg_retrieval.safety_data import categories_in, load_benchmark_set, load_calibration_set

# The gate these experiments measured: logistic, on the answer position's state alone
# (featurize(probe_mean=False)); pinned so they reproduce after the default moved on.
PREVIOUS_GATE: ProbeKind = "logistic"
AUGMENT = "augment"  # the split of the passages read as requests: trained on, never scored


class AugmentedEvaluator(GeneralisationEvaluator):
    """Gate folds train on the calibration requests *and* the added passage rows (minus the
    left-out category's); the added rows are hidden from every metric."""

    def fold_rows(self, category: str) -> tuple[np.ndarray, np.ndarray]:
        q_rows, d_rows = super().fold_rows(category)
        extra = np.flatnonzero((self.q_split == AUGMENT) & (self.q_cat != category))
        return np.sort(np.concatenate([q_rows, extra])), d_rows

    def _metrics(self, kind: str, sc: Any, category: str, *, held_out_only: bool) -> dict[str, Any]:
        if kind == "query":
            saved = self.q_cat
            self.q_cat = np.where(self.q_split == AUGMENT, "<augment>", saved)
            try:
                return super()._metrics(kind, sc, category, held_out_only=held_out_only)
            finally:
                self.q_cat = saved
        return super()._metrics(kind, sc, category, held_out_only=held_out_only)


def load(cache: Path) -> tuple[SafetyFeatures, SafetyFeatures, list[Any]]:
    """(every request and passage, the calibration passages read as requests, held-out rows)."""
    cal, held = load_calibration_set(), load_benchmark_set()
    if cache.exists():
        base, added = pickle.loads(cache.read_bytes())
    else:
        encoder = L2VGEncoder.from_pretrained(dtype="float32")
        base = featurize_requests(encoder, [r for r in [*cal, *held] if r.kind == "query"])
        added = featurize_requests(
            encoder, [dataclasses.replace(r, kind="query") for r in cal if r.kind == "passage"]
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps((base, added)))
    rebind_queries(base, [r for r in [*cal, *held] if r.kind == "query"])
    return base, added, held


def featurize_requests(encoder: Any, rows: list[Any], *, probe_mean: bool = False) -> SafetyFeatures:
    """What the gate reads of ``rows`` (query rows). Requests only: the gate is what is
    measured, and with no passages no fold fits a screen (the cheapest document space is
    named because one must be). ``probe_mean`` off by default: the gate these experiments
    measured read the answer position's state alone."""
    return featurize(
        encoder,
        rows,
        doc_spaces=("teacher",),
        screen_requests=False,
        probe_mean=probe_mean,
        gate_document_pass=False,
        show_progress_bar=True,
    )


def cached_request_features(
    cache: str | Path, rows: list[Any], *, probe_mean: bool = False
) -> SafetyFeatures:
    """:func:`featurize_requests` of ``rows`` by the packaged default encoder, read from
    ``cache`` when it exists (written there otherwise), bound to ``rows``."""
    path = Path(cache)
    if path.exists():
        features = pickle.loads(path.read_bytes())
    else:
        encoder = L2VGEncoder.from_pretrained(dtype="float32")
        features = featurize_requests(encoder, rows, probe_mean=probe_mean)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(features))
    rebind_queries(features, rows)
    return features


def rebind_queries(features: SafetyFeatures, rows: list[Any]) -> None:
    """Point cached features at ``rows`` (matched by text, in the cached order): the
    experiments tell rows apart by identity."""
    by_text = {r.text: r for r in rows}
    features.queries = [by_text[r.text] for r in features.queries]


def augmented(base: SafetyFeatures, added: SafetyFeatures) -> SafetyFeatures:
    assert base.answer_features is not None and added.answer_features is not None
    assert base.probe_states is not None and added.probe_states is not None
    return dataclasses.replace(
        base,
        queries=[*base.queries, *added.queries],
        query_embeddings=np.vstack([base.query_embeddings, added.query_embeddings]),
        answer_states=None,
        answer_features=np.vstack([base.answer_features, added.answer_features]),
        probe_states=np.vstack([base.probe_states, added.probe_states]),
    )


def gate_line(name: str, gate: dict[str, Any]) -> str:
    recall, fpr = gate["recall"], gate["benign_fpr"]
    look = fpr.get("lookalike", {}).get("mean")
    return (
        f"{name:34s} LOCO gate mean {recall['mean']:.3f} min {recall['min']:.2f} "
        f"below half {recall['below_half']} | FPR all {fpr['all']['mean']:.3f} look-alike "
        f"{look if look is None else round(look, 3)} (worst fold {fpr.get('lookalike', {}).get('max')})"
    )


def gate_variants(variants: dict[str, GeneralisationEvaluator], *, with_auc: bool = False) -> dict[str, Any]:
    """Each evaluator's leave-one-category-out gate (with the refusal signal): recall,
    benign false positives and per-category recall and look-alike FPR (with ``with_auc``
    also each left-out category's AUC against the held-out benign rows, and their mean: the
    ranking, whatever the threshold); printed as it goes. Every variant after the first is
    also compared with the first pair by pair (the same requests; ``paired_vs_first``: the
    difference in mean left-out recall with its 95% interval)."""
    out: dict[str, Any] = {}
    keys = ("recall", "lookalike_fpr", "caught", "auc") if with_auc else ("recall", "lookalike_fpr", "caught")
    for name, evaluator in variants.items():
        gate = evaluator.leave_one_category_out(refusal_variants=(True,))["gate"]["with_refusal_signal"]
        out[name] = {
            "recall": gate["recall"],
            "benign_fpr": gate["benign_fpr"],
            "per_category": {c: {k: m[k] for k in keys} for c, m in gate["per_category"].items()},
        }
        line = gate_line(name, gate)
        if with_auc:
            aucs = [m["auc"] for m in gate["per_category"].values() if m["auc"] is not None]
            out[name]["auc_mean"] = float(np.mean(aucs))
            line += f" | AUC {out[name]['auc_mean']:.4f}"
        first = next(iter(out.values()))
        if out[name] is not first:
            out[name]["paired_vs_first"], suffix = paired_with_first(
                {c: m["caught"] for c, m in out[name]["per_category"].items()},
                {c: m["caught"] for c, m in first["per_category"].items()},
            )
            line += suffix
        print(line, flush=True)
    return out


def write_gate_report(
    out: str,
    command: str,
    variants: dict[str, GeneralisationEvaluator],
    *,
    with_auc: bool = False,
    **extra: Any,
) -> None:
    """Run and print each gate variant (:func:`gate_variants`) and write them, with
    ``extra`` fields, to ``out``."""
    report = {"command": command, **extra, "variants": gate_variants(variants, with_auc=with_auc)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1, default=str) + "\n")


def main(out: str, cache: str) -> None:
    base, added, held = load(Path(cache))
    held_ids = {id(r) for r in held}
    added_ids = {id(r) for r in added.queries}

    def split_of(r: Any) -> str:
        return AUGMENT if id(r) in added_ids else HELD_OUT if id(r) in held_ids else CALIBRATION

    categories = categories_in(base.queries)
    settings = LocoSettings(doc_spaces=("teacher",), gate_probe=PREVIOUS_GATE)
    variants = {
        "requests only (shipped)": GeneralisationEvaluator(base, split_of, categories, settings),
        "requests + passages": AugmentedEvaluator(augmented(base, added), split_of, categories, settings),
    }
    write_gate_report(
        out,
        f"python benchmarks/experiments/safety_gate_passages.py {out} --cache {cache}",
        variants,
        added_passage_rows=len(added.queries),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--cache", default="runs/exp/gate_passages.pkl")
    args = parser.parse_args()
    main(args.out, args.cache)
