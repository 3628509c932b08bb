"""Which document space and which choice of regularisation make the screen generalise to
harm categories it was not calibrated on (issue 13, leave-one-category-out screen recall).

The encoder runs once over the packaged calibration and held-out taxonomy data (every
document space); the features are cached in ``CACHE`` so variants are pure numpy refits:

* the space the screen reads: each of probe / teacher / generative, and their concatenations;
* the probe: logistic regression (L2 strength by validation AUC) or shrinkage LDA (shrinkage
  chosen by recall on harm categories held out *inside* each fold's training rows, so the
  choice never sees the fold's test category: :func:`l2vg_retrieval.safety.held_out_category_recall`).

    python benchmarks/experiments/safety_screen_generalisation.py OUT.json \
        [--checkpoint l2vg_retrieval/checkpoints/default] [--cache runs/exp/safety_features.npz] \
        [--all-logistic]

Prints one line per variant; writes every variant's LOCO screen summary as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from l2vg_retrieval import L2VGEncoder
from l2vg_retrieval.bench.harmful_loco import (
    CALIBRATION,
    HELD_OUT,
    GeneralisationEvaluator,
    LocoSettings,
    screen_variant_line,
    screen_variant_record,
)
from l2vg_retrieval.safety import PROBE_KINDS, SafetyFeatures, doc_probe_features, featurize
from l2vg_retrieval.safety_data import categories_in, load_benchmark_set, load_calibration_set

SPACES = ("probe", "teacher", "generative")
# The probe's half pass reads passages under the document prompt ("Summarize ..."); under a
# prompt that asks about harm, the same layers may hold a more general notion of it, at no
# extra cost (the prompt is the only change).
JUDGE_PROMPT = "Would it be harmful, dangerous or unethical to share the following text?"
CACHED = (*SPACES, "probe_judge")
COMBINATIONS = {
    "probe": ("probe",),
    "teacher": ("teacher",),
    "generative": ("generative",),
    "probe_judge": ("probe_judge",),
    "probe+teacher": ("probe", "teacher"),
    "probe_judge+teacher": ("probe_judge", "teacher"),
    "probe+probe_judge": ("probe", "probe_judge"),
}


def load_features(checkpoint: str, cache: Path) -> tuple[SafetyFeatures, list[Any], list[Any]]:
    cal, held = load_calibration_set(), load_benchmark_set()
    rows = list(cal) + list(held)
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        queries = [r for r in rows if r.kind == "query"]
        passages = [r for r in rows if r.kind == "passage"]
        features = SafetyFeatures(
            encoder_fingerprint=str(z["fingerprint"]),
            instruction=None,
            prototype=z["prototype"],
            queries=queries,
            passages=passages,
            query_embeddings=z["query_embeddings"],
            answer_states=None,
            answer_features=z["answer_features"],
            answer_token_ids={},
            doc_embeddings={s: z[f"doc_{s}"] for s in CACHED},
            probe_layer=int(z["probe_layer"]),
            probe_states=z["probe_states"],
            gate_embedding=False,
        )
        return features, cal, held
    encoder = L2VGEncoder.from_pretrained(checkpoint, dtype="float32")
    features = featurize(
        encoder,
        rows,
        doc_spaces=SPACES,
        screen_requests=False,
        probe_mean=False,
        gate_document_pass=False,
        show_progress_bar=True,
    )
    assert features.probe_layer is not None
    features.doc_embeddings["probe_judge"] = doc_probe_features(  # type: ignore[index]
        encoder.probe_states(
            [r.text for r in features.passages], probe_layer=features.probe_layer, prompt=JUDGE_PROMPT,
            show_progress_bar=True,
        )
    ).astype(np.float64)  # fmt: skip
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        cache,
        fingerprint=np.array(features.encoder_fingerprint),
        prototype=features.prototype,
        query_embeddings=features.query_embeddings,
        answer_features=features.answer_features,
        probe_layer=np.array(features.probe_layer),
        probe_states=features.probe_states,
        **{f"doc_{s}": features.doc_embeddings[s] for s in CACHED},
    )
    return features, cal, held


def main(checkpoint: str, out: str, cache: str, all_logistic: bool = False) -> None:
    features, cal, held = load_features(checkpoint, Path(cache))
    for name, parts in COMBINATIONS.items():
        if name not in features.doc_embeddings:
            blocks = [features.doc_embeddings[p] for p in parts]
            features.doc_embeddings[name] = np.hstack(blocks)  # type: ignore[index]
    held_ids = {id(r) for r in held}
    categories = categories_in(list(cal) + list(held))
    results: dict[str, Any] = {}
    for kind in PROBE_KINDS:
        for name in COMBINATIONS:
            if kind == "logistic" and "+" in name and not all_logistic:
                continue  # Newton on 1,700-2,300 features, 60 fits per fold: minutes each
            settings = LocoSettings(doc_spaces=(name,), screen_probe=kind, gate_probe="logistic")  # type: ignore[arg-type]
            ev = GeneralisationEvaluator(
                features, lambda r: HELD_OUT if id(r) in held_ids else CALIBRATION, categories, settings
            )
            screen = ev.leave_one_category_out(refusal_variants=())["screen"]
            key = f"{kind}/{name}"
            results[key] = screen_variant_record(screen)
            print(screen_variant_line(key, screen), flush=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    report = {"encoder_fingerprint": features.encoder_fingerprint, "variants": results}
    Path(out).write_text(json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--checkpoint", default="l2vg_retrieval/checkpoints/default")
    parser.add_argument("--cache", default="runs/exp/safety_features.npz")
    parser.add_argument("--all-logistic", action="store_true", help="logistic probes on concatenations too")
    args = parser.parse_args()
    main(args.checkpoint, args.out, args.cache, args.all_logistic)
