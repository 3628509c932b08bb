"""Step 1 of the safety-gate feature sweep (docs/safety.md, "Choosing the gate's features").

Runs the encoder once over the taxonomy's calibration and held-out rows and pickles what the
sweep compares: the library's safety features (embeddings, answer states, refusal signal,
passage vectors), the teacher's embedding of each query, and the encoding pass's hidden
state at the answer position after several depths (forward hooks on the text pass).

    python benchmarks/experiments/safety_gate_featurize.py [CHECKPOINT] [OUT.pkl]

~13 min on 2 CPU cores for the packaged default. The pickle holds local objects: it is a
scratch file, not a result.
"""

from __future__ import annotations

import pickle
import sys
import time
from typing import Any

import numpy as np
import torch

from l2vg_retrieval import L2VGEncoder
from l2vg_retrieval.safety import featurize
from l2vg_retrieval.safety_data import load_benchmark_set, load_calibration_set

# 0-based decoder layers whose output is kept: "midK" = the state after K+1 layers.
LAYERS = (6, 10, 14, 18, 22, 26)


def main(checkpoint: str | None, out: str) -> None:
    start = time.time()
    encoder = L2VGEncoder.from_pretrained(checkpoint, dtype="float32")
    calibration, held = load_calibration_set(), load_benchmark_set()
    features = featurize(
        encoder, [*calibration, *held], probe_layer=None, screen_requests=False, show_progress_bar=True
    )
    texts = [r.text for r in features.queries]
    teacher_q = np.asarray(encoder.teacher.encode(texts, show_progress_bar=False), dtype=np.float64)
    captured: dict[int, list[torch.Tensor]] = {i: [] for i in LAYERS}

    def keep(i: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            captured[i].append(hidden.float().clone())

        return hook

    layers = encoder.decoder_layers()
    hooks = [layers[i].register_forward_hook(keep(i)) for i in LAYERS]
    ids = encoder.tokenize(texts, encoder.config.query_instruction)
    hint = encoder.prefix_hint(encoder.config.query_instruction)
    mid: dict[int, list[torch.Tensor]] = {i: [] for i in LAYERS}
    n_special = encoder.config.n_special
    with torch.inference_mode(), encoder._adapter_scope():
        for s in range(0, len(ids), 32):
            batch = ids[s : s + 32]
            for i in LAYERS:
                captured[i].clear()
            encoder._compression_states(batch, hint, answer_states=[])
            for i in LAYERS:
                # Inference runs text + special tokens as one pass (after the shared prefix's,
                # when that is not cached yet): the answer position is the last text token.
                hidden = [h for h in captured[i] if h.shape[0] == len(batch)][-1]
                mid[i].append(hidden[:, -1 - n_special])
    for h in hooks:
        h.remove()
    held_ids = {id(r) for r in held}
    payload = {
        "features": features,
        "teacher_q": teacher_q,
        "mid": {i: torch.cat(v).numpy().astype(np.float64) for i, v in mid.items()},
        "split_q": np.array(["held" if id(r) in held_ids else "cal" for r in features.queries]),
        "split_d": np.array(["held" if id(r) in held_ids else "cal" for r in features.passages]),
    }
    with open(out, "wb") as f:
        pickle.dump(payload, f)
    print(f"done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    args = [*sys.argv[1:], "", ""]
    main(args[0] or None, args[1] or "features.pkl")
