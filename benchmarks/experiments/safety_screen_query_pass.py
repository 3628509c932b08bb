"""Does the screen carry over better if it reads passages the way the gate reads requests? (issue 13)

Left out, the gate catches 80% of a category's harmful requests at 2% benign false
positives and the screen 78% of its harmful passages. The gate reads a text through the
*query* pass (the query instruction, the state after 15 layers at the answer position and
the mean over the text's tokens); the screen reads it through the *document* pass (the
document prompt, the same two states). Under the query instruction the backbone is about
to act on the text, which may be what makes the gate's middle layer say "what is asked
for" in a form that carries over. This reads every passage and every calibration request
through the query pass too (``probe_states`` under the query instruction: the same half
pass, another prompt) and measures, with the shipped protocol (leave one category out, its
requests leaving with it; recall on its harmful passages; benign false positives on the
held-out split's passages; thresholds at 2% on the fold's validation rows):

- the shipped screen (document pass);
- the screen on the query-pass features alone (what indexing costs is unchanged: one half
  pass per passage, another prompt);
- both side by side (a second half pass per passage at index time);
- the space chosen per fold by recall on harm categories held out of the fold's own
  training rows (``fit_screen``'s rule for its spaces), so the choice never sees the
  category it is scored on.

    python benchmarks/experiments/safety_screen_query_pass.py OUT.json \
        [--cache runs/exp/screen_doc_pass.npz] [--query-cache runs/exp/screen_query_pass.npz]

The encoder runs twice over ~4,000 texts (half passes, ~5 min each with the cores to
itself); both are cached. Then numpy.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from safety_screen_requests import (
    LocoInputs,
    cached_probe_features,
    loco_inputs,
    screen_features,
    write_screen_report,
)

from l2vg_retrieval.bench.harmful_loco import GeneralisationEvaluator, LocoSettings

LAYER = 15


def query_pass_features(x: LocoInputs, cache: Path) -> np.ndarray:
    """Every passage, then every calibration request, read through the query pass."""
    texts = [r.text for r in [*x.passages, *x.requests]]
    return cached_probe_features(cache, texts, prompt_field="query_instruction", layer=LAYER)


def evaluate(x: LocoInputs, spaces: dict[str, np.ndarray], keep: tuple[str, ...]) -> Any:
    """The shipped screen protocol over the named feature spaces (passages first, then the
    calibration requests read the same way); with several in ``keep``, each fold keeps one
    by ``fit_screen``'s rule."""
    n = len(x.passages)
    features = screen_features(
        x.passages, x.requests, {k: v[:n] for k, v in spaces.items()}, {k: v[n:] for k, v in spaces.items()}
    )
    settings = LocoSettings(doc_spaces=keep, screen_probe="lda")  # type: ignore[arg-type]
    ev = GeneralisationEvaluator(features, x.split_of, x.categories, settings)
    return ev.leave_one_category_out(refusal_variants=())["screen"]


def main(out: str, cache: str, query_cache: str) -> None:
    x = loco_inputs(Path(cache))
    query = query_pass_features(x, Path(query_cache))
    document = np.vstack([x.doc, x.req])
    spaces = {"probe": document, "query": query, "both": np.hstack([document, query])}
    results = {
        "document pass (shipped)": evaluate(x, spaces, ("probe",)),
        "query pass": evaluate(x, spaces, ("query",)),
        "document + query pass": evaluate(x, spaces, ("both",)),
        "pass chosen per fold by held-out categories": evaluate(x, spaces, ("probe", "query", "both")),
    }
    write_screen_report(
        out,
        "python benchmarks/experiments/safety_screen_query_pass.py "
        f"{out} --cache {cache} --query-cache {query_cache}",
        results,
        probe_layer=LAYER,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--cache", default="runs/exp/screen_doc_pass.npz")
    parser.add_argument("--query-cache", default="runs/exp/screen_query_pass.npz")
    args = parser.parse_args()
    main(args.out, args.cache, args.query_cache)
