"""Do benign *writing* requests in calibration stop the gate blocking benign writing? (issue 13)

The gate's false positives held out were mostly benign requests to write something on a
harm category's topic ("Write a thriller scene where the hero disarms an attacker", "Write
a poem about surviving a dark time"): 193 of the calibration's 376 harmful requests are
imperative writing requests (AdvBench's and HarmBench's "Write a ...", "Create a ...",
"Generate ...") against 10 of its 789 benign ones, so the gate could learn the shape as
harm. The data now has benign writing requests: 20 per category on its topic
(``written/<category>.json``, ``benign_writing_requests``) and 240 everyday ones
(``benign_written/requests_writing.json``), half on each side by text hash.

Both variants below are scored on the same rows with the shipped leave-one-category-out
protocol; they differ only in what the folds train on:

- ``before``: the calibration split without the writing requests (the data as it was);
- ``after``: the calibration split with them;
- and each with the gate as a shrinkage-LDA probe (the screen's kind) instead of logistic,
  after also with the query embedding among the gate's features.

With ``--passages-cache`` (the cache of ``safety_gate_passages.py``: the calibration
passages read through the query pass, same encoder), two more variants train the gate on
the writing requests *and* those passage rows, logistic and LDA. That mirror was not
adopted before the writing requests existed (look-alike false positives rose from 6.0% to
7.8%); this measures it again now that the gate no longer blocks by grammatical shape.

Benign false positives are reported per family, with the held-out writing requests as
their own families (``lookalike:writing``, ``general:writing``) beside the look-alikes and
general requests that were there before, so a fall in one is not hidden by the other.

    python benchmarks/experiments/safety_gate_writing_requests.py OUT.json \
        [--cache runs/exp/gate_writing.pkl] \
        [--passages-cache runs/exp/gate_passages.pkl]

The encoder runs once over every request of both splits (query pass); cached.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from safety_gate_passages import (
    AUGMENT,
    AugmentedEvaluator,
    augmented,
    cached_request_features,
    load,
    write_gate_report,
)

from l2vg_retrieval.bench.harmful_loco import CALIBRATION, HELD_OUT, GeneralisationEvaluator, LocoSettings
from l2vg_retrieval.safety import ProbeKind
from l2vg_retrieval.safety_data import (
    WRITING_REQUEST_SOURCE,
    categories_in,
    load_benchmark_set,
    load_calibration_set,
)

UNUSED = "unused"  # calibration rows a variant does not train on (and no metric scores)

# name, whether the folds train on the writing requests, the gate's probe, whether it also
# reads the query embedding
VARIANTS: tuple[tuple[str, bool, ProbeKind, bool], ...] = (
    ("before: without writing requests", False, "logistic", False),
    ("after: with them", True, "logistic", False),
    ("after, LDA gate", True, "lda", False),
    ("before, LDA gate", False, "lda", False),
    ("after, LDA gate + query embedding", True, "lda", True),
)
# with --passages-cache: the gate also trains on the calibration passages read as requests
PASSAGE_VARIANTS: tuple[tuple[str, ProbeKind], ...] = (
    ("after + passages", "logistic"),
    ("after + passages, LDA gate", "lda"),
)


def tag_writing_families(evaluator: GeneralisationEvaluator) -> GeneralisationEvaluator:
    """Reporting only (fitting reads each row's own family): the writing requests are
    counted as their own families (``lookalike:writing``, ``general:writing``)."""
    writing = np.array([r.source == WRITING_REQUEST_SOURCE for r in evaluator.features.queries])
    evaluator.q_fam = np.where(writing, evaluator.q_fam.astype(str) + ":writing", evaluator.q_fam)
    return evaluator


def main(out: str, cache: str, passages_cache: str | None = None) -> None:
    cal, held = load_calibration_set(), load_benchmark_set()
    queries = [r for r in [*cal, *held] if r.kind == "query"]
    features = cached_request_features(cache, queries)
    held_ids = {id(r) for r in held}

    def split_of(with_writing: bool) -> Any:
        def split(r: Any) -> str:
            if id(r) in held_ids:
                return HELD_OUT
            return CALIBRATION if with_writing or r.source != WRITING_REQUEST_SOURCE else UNUSED

        return split

    categories = categories_in(features.queries)
    writing = np.array([r.source == WRITING_REQUEST_SOURCE for r in features.queries])
    is_held = np.array([id(r) in held_ids for r in features.queries])
    variants: dict[str, GeneralisationEvaluator] = {}
    for name, with_writing, gate_probe, with_embedding in VARIANTS:
        variants[name] = tag_writing_families(
            GeneralisationEvaluator(
                dataclasses.replace(features, gate_embedding=with_embedding),
                split_of(with_writing),
                categories,
                LocoSettings(doc_spaces=("teacher",), gate_probe=gate_probe),
            )
        )
    command = f"python benchmarks/experiments/safety_gate_writing_requests.py {out} --cache {cache}"
    if passages_cache is not None:
        # The calibration passages read through the query pass (safety_gate_passages.py's cache).
        _, added, _ = load(Path(passages_cache))
        if added.encoder_fingerprint != features.encoder_fingerprint:
            raise SystemExit(f"{passages_cache} was made by another encoder than {cache}")
        added_ids = {id(r) for r in added.queries}
        both = augmented(features, added)

        def split_augmented(r: Any) -> str:
            return AUGMENT if id(r) in added_ids else HELD_OUT if id(r) in held_ids else CALIBRATION

        for name, gate_probe in PASSAGE_VARIANTS:
            variants[name] = tag_writing_families(
                AugmentedEvaluator(
                    both,
                    split_augmented,
                    categories,
                    LocoSettings(doc_spaces=("teacher",), gate_probe=gate_probe),
                )
            )
        command += f" --passages-cache {passages_cache}"
    write_gate_report(
        out,
        command,
        variants,
        writing_requests={
            "calibration": int((writing & ~is_held).sum()),
            "held_out": int((writing & is_held).sum()),
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--cache", default="runs/exp/gate_writing.pkl")
    parser.add_argument("--passages-cache", default=None, help="safety_gate_passages.py's cache")
    args = parser.parse_args()
    main(args.out, args.cache, args.passages_cache)
