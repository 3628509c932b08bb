"""Does the screen generalise better when it reads several layers of the passage's pass at
once? (issue 13, leave-one-category-out screen recall).

One document pass over every packaged calibration and held-out passage, through the first
23 layers, reads the probe features (last position + mean over the passage, each unit length)
after layers 7, 11, 15, 19 and 23; the gate side is featurized as the library does. Every
variant is then a numpy refit with the shipped screen (shrinkage LDA, shrinkage chosen on
harm categories held out inside each fold) under the leave-one-category-out protocol of
``l2vg bench harmful``. Layer 15 alone is the shipped screen and must reproduce its number.

    python benchmarks/experiments/safety_screen_layers.py OUT.json \
        [--checkpoint l2vg_retrieval/checkpoints/default] [--cache runs/exp/screen_layers.pkl] [--nested]

Picking the best variant by these numbers would flatter it: they are the test. ``--nested``
measures the choice instead: every fold is given all the variants and keeps one by recall on
harm categories held out *inside* its own training rows (the rule ``fit_screen`` uses, the
same that picks the LDA shrinkage), so the left-out category never takes part in it; the
variant each fold kept is reported.
"""

from __future__ import annotations

import argparse
import json
import pickle
from collections.abc import Callable, Iterable
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
from l2vg_retrieval.safety import doc_probe_features, featurize
from l2vg_retrieval.safety_data import categories_in, load_benchmark_set, load_calibration_set

DEFAULT_CHECKPOINT = "l2vg_retrieval/checkpoints/default"
LAYERS = (7, 11, 15, 19, 23)
VARIANTS = {
    "L15 (shipped)": (15,),
    "L11": (11,),
    "L19": (19,),
    "L11+L15": (11, 15),
    "L15+L19": (15, 19),
    "L11+L15+L19": (11, 15, 19),
    "L7+L15+L23": (7, 15, 23),
}


def layer_states(encoder: Any, texts: list[str], layers: tuple[int, ...]) -> dict[int, np.ndarray]:
    """The screen's probe states of every passage after each of ``layers``, from one pass."""
    states = encoder.probe_states(
        texts, probe_layer=layers, prompt=encoder.config.document_prompt, show_progress_bar=True
    )
    width = 2 * encoder.hidden_size
    return {layer: states[:, i * width : (i + 1) * width] for i, layer in enumerate(layers)}


def held_out_split(held: Iterable[Any]) -> Callable[[Any], str]:
    """Which packaged split a row is in, matched by kind and text (the splits share no text):
    a cached feature table holds its own row objects, not those of ``held``."""
    texts = {(r.kind, r.text) for r in held}
    return lambda r: HELD_OUT if (r.kind, r.text) in texts else CALIBRATION


def load_features(checkpoint: str, cache: Path) -> tuple[Any, dict[int, np.ndarray]]:
    """The feature table and every passage's probe states per layer, from ``cache`` or (first
    run) from the encoder, with the shipped screen's features (layer 15) as "probe"."""
    if cache.exists():
        features, per_layer = pickle.loads(cache.read_bytes())
    else:
        encoder = L2VGEncoder.from_pretrained(checkpoint, dtype="float32")
        rows = list(load_calibration_set()) + list(load_benchmark_set())
        features = featurize(
            encoder,
            rows,
            doc_spaces=("teacher",),
            screen_requests=False,
            probe_mean=False,
            gate_document_pass=False,
            show_progress_bar=True,
        )
        per_layer = layer_states(encoder, [r.text for r in features.passages], LAYERS)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps((features, per_layer)))
    features.doc_embeddings["probe"] = doc_probe_features(per_layer[15])
    return features, per_layer


def main(checkpoint: str, out: str, cache: Path, nested: bool = False) -> None:
    features, per_layer = load_features(checkpoint, cache)
    for name, layers in VARIANTS.items():
        features.doc_embeddings[name] = np.hstack([doc_probe_features(per_layer[layer]) for layer in layers])
    split_of = held_out_split(load_benchmark_set())
    categories = categories_in([*features.queries, *features.passages])
    results: dict[str, Any] = {}
    runs = {"nested: each fold chooses": tuple(VARIANTS)} if nested else {name: (name,) for name in VARIANTS}
    for name, spaces in runs.items():
        settings = LocoSettings(doc_spaces=spaces, screen_probe="lda")  # type: ignore[arg-type]
        ev = GeneralisationEvaluator(features, split_of, categories, settings)
        screen = ev.leave_one_category_out(refusal_variants=())["screen"]
        results[name] = screen_variant_record(screen)
        print(screen_variant_line(name, screen), flush=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(
        json.dumps(
            {"encoder_fingerprint": features.encoder_fingerprint, "variants": results}, indent=1, default=str
        )
        + "\n"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--cache", default="runs/exp/screen_layers.pkl")
    parser.add_argument("--nested", action="store_true", help="each fold chooses its variant (see above)")
    args = parser.parse_args()
    main(args.checkpoint, args.out, Path(args.cache), args.nested)
