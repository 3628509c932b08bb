"""Step 1b of the safety feature sweep: what the *document* pass knows about a passage.

The gate improved most by reading a middle layer of the encoding pass instead of its output
(docs/safety.md, "Choosing the gate's features"). This asks the same of the screen: it runs
the encoder's document pass (``config.document_prompt``, exactly what indexing runs) over
the taxonomy's passages and keeps, after several depths, the hidden state at the last text
position and the mean over the passage's own tokens. The arrays are added to the pickle
step 1 (``safety_gate_featurize.py``) wrote, under ``"doc_mid"``:
``{("last" | "mean", layer): [Nd, H]}``, rows in ``features.passages`` order.

    python benchmarks/experiments/safety_screen_featurize.py [CHECKPOINT] FEATURES.pkl

A few minutes on 2 CPU cores for the packaged default.
"""

from __future__ import annotations

import pickle
import sys
import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from l2vg_retrieval import L2VGEncoder
from l2vg_retrieval.batching import common_prefix_length, length_batches

# 0-based decoder layers whose output is kept: layer i's output is the state after i+1 layers.
LAYERS = (6, 10, 14, 18, 22)
BATCH = 16


def main(checkpoint: str | None, path: str) -> None:
    start = time.time()
    with open(path, "rb") as f:
        payload = pickle.load(f)
    encoder = L2VGEncoder.from_pretrained(checkpoint, dtype="float32")
    if encoder.fingerprint != payload["features"].encoder_fingerprint:
        raise SystemExit(f"{path} was featurized with another encoder")
    texts = [r.text for r in payload["features"].passages]
    prompt = encoder.config.document_prompt
    ids = encoder.tokenize(texts, prompt)
    hint = encoder.prefix_hint(prompt)
    captured: dict[int, list[torch.Tensor]] = {i: [] for i in LAYERS}

    def keep(i: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            captured[i].append((output[0] if isinstance(output, tuple) else output).float().clone())

        return hook

    layers = encoder.decoder_layers()
    hooks = [layers[i].register_forward_hook(keep(i)) for i in LAYERS]
    out: dict[tuple[str, int], np.ndarray] = {
        (kind, i): np.zeros((len(ids), encoder.hidden_size)) for kind in ("last", "mean") for i in LAYERS
    }
    try:
        with torch.inference_mode(), encoder._adapter_scope():
            for order in tqdm(length_batches([len(x) for x in ids], BATCH, window=len(ids)), desc="passages"):
                batch = [ids[j] for j in order]
                for i in LAYERS:
                    captured[i].clear()
                encoder._compression_states(batch, hint)
                shared = common_prefix_length(batch, hint or encoder.template.prefix_ids)
                width = max(len(x) for x in batch) - shared
                for i in LAYERS:
                    # Calls per batch: maybe the shared prefix (batch 1, when not cached), then
                    # the text (left padded, `width` positions) and the special tokens, as one
                    # pass in inference (two before the passes were fused).
                    hidden = next(h for h in captured[i] if h.shape[0] == len(batch))[:, :width]
                    for row, j in enumerate(order):
                        n = len(ids[j]) - shared
                        out[("last", i)][j] = hidden[row, -1].numpy()
                        out[("mean", i)][j] = hidden[row, -n:].mean(0).numpy()
    finally:
        for h in hooks:
            h.remove()
    payload["doc_mid"] = out
    with open(path, "wb") as f:
        pickle.dump(payload, f)
    print(f"done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if len(args) > 1 else None, args[-1])
