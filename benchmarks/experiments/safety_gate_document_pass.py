"""Does the gate carry over better if it also reads the request through the document pass? (issue 13)

The gate reads a request through the *query* pass (the query instruction; after 15 layers,
the answer position's state and the mean over the request's tokens; the refusal signal).
The screen reads text through the *document* pass, and it learns from the calibration
requests read that way ("The screen learns from requests too", docs/safety.md). Read
beside the document pass, the query pass lifted the screen's left-out recall by 2 points
(``safety_screen_query_pass.py``); this is the mirror image for the gate: every request of
both splits is also read through the document pass (``probe_states`` under the document
prompt, the screen's features: a half pass, no special tokens) and the gate refitted with
the shipped protocol (leave one category out, shrinkage LDA, thresholds at 2% benign false
positives on the fold's validation rows):

- the shipped gate (query pass: state + mean, refusal signal);
- the gate on the document pass alone (+ refusal signal);
- both side by side (a second half pass per query in safe mode).

The third is what the library's gate has read since 2026-11-28 (``DOCUMENT_PASS_FEATURE``;
``l2vg bench harmful`` reproduces its row); "shipped" in the first variant's name is the
gate this experiment was measured against, kept so reruns compare with the recorded file.

    python benchmarks/experiments/safety_gate_document_pass.py OUT.json \
        [--cache runs/exp/gate_probe_mean.pkl] [--doc-cache runs/exp/gate_document_pass.npz]

The query-pass features are ``safety_gate_probe_mean.py``'s cache (one query pass over the
2,422 requests of both splits, ~4 min); the document pass is another half pass over them
(~3 min), cached. Then numpy.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from safety_gate_passages import cached_request_features, write_gate_report
from safety_screen_requests import cached_probe_features

from l2vg_retrieval.bench.harmful_loco import CALIBRATION, HELD_OUT, GeneralisationEvaluator, LocoSettings
from l2vg_retrieval.safety import SafetyFeatures
from l2vg_retrieval.safety_data import categories_in, load_benchmark_set, load_calibration_set

LAYER = 15


def document_pass(features: SafetyFeatures, cache: Path) -> np.ndarray:
    """The requests (in the cached features' order) read as passages, as the screen reads them."""
    texts = [r.text for r in features.queries]
    return cached_probe_features(cache, texts, fingerprint=features.encoder_fingerprint, layer=LAYER)


def with_states(features: SafetyFeatures, states: np.ndarray) -> SafetyFeatures:
    return dataclasses.replace(features, probe_states=states.astype(np.float32))


def main(out: str, cache: str, doc_cache: str) -> None:
    cal, held = load_calibration_set(), load_benchmark_set()
    queries = [r for r in [*cal, *held] if r.kind == "query"]
    features = cached_request_features(cache, queries, probe_mean=True)
    document = document_pass(features, Path(doc_cache))
    held_ids = {id(r) for r in held}

    def split_of(r: Any) -> str:
        return HELD_OUT if id(r) in held_ids else CALIBRATION

    assert features.probe_states is not None
    categories = categories_in(features.queries)
    settings = LocoSettings(doc_spaces=("teacher",), gate_probe="lda")
    spaces = {
        "query pass (shipped)": features,
        "document pass": with_states(features, document),
        "query + document pass": with_states(features, np.hstack([features.probe_states, document])),
    }
    variants = {
        name: GeneralisationEvaluator(f, split_of, categories, settings) for name, f in spaces.items()
    }
    write_gate_report(
        out,
        "python benchmarks/experiments/safety_gate_document_pass.py "
        f"{out} --cache {cache} --doc-cache {doc_cache}",
        variants,
        with_auc=True,
        encoder_fingerprint=features.encoder_fingerprint,
        probe_layer=LAYER,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--cache", default="runs/exp/gate_probe_mean.pkl")
    parser.add_argument("--doc-cache", default="runs/exp/gate_document_pass.npz")
    args = parser.parse_args()
    main(args.out, args.cache, args.doc_cache)
