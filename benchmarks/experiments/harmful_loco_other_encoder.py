"""Leave-one-category-out safety generalisation for any checkpoint on the packaged taxonomy data.

`l2vg bench harmful` measures the packaged default with its own calibration; this runs only
the generalisation protocols (they refit per fold, so no calibration is needed) for another
encoder, e.g. an earlier default restored from git, to separate what a change of data did
from what a change of encoder did.

    git show af80f6d:l2vg_retrieval/checkpoints/default/model.safetensors > prev/model.safetensors  # etc.
    python benchmarks/experiments/harmful_loco_other_encoder.py prev OUT.json

Prints the per-category markdown table; writes the report section as JSON.
"""

from __future__ import annotations

import json
import sys

from l2vg_retrieval import L2VGEncoder
from l2vg_retrieval.bench.harmful import _generalisation
from l2vg_retrieval.bench.harmful_loco import generalisation_markdown


def main(checkpoint: str, out: str) -> None:
    encoder = L2VGEncoder.from_pretrained(checkpoint, dtype="float32")
    report, _ = _generalisation(encoder, None, True)
    report["encoder_fingerprint"] = encoder.fingerprint
    with open(out, "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    print(generalisation_markdown(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
