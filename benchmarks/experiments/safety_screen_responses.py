"""Does the screen generalise better if it also learns from the backbone's own *answers* to
the calibration requests? (issue 13)

The screen learns from about 20 harmful passages per category, plus the requests read as
passages (shipped). The backbone answers most harmful requests (SmolLM2-135M rarely
refuses), and what it says is a harmful passage in the style of a model response, which is
what a retrieval corpus of harmful content holds: one more passage per request, on every
category's topics, at the cost of one greedy generation per calibration request. Its
answers to benign requests give benign passages of the same style, so the screen cannot
learn "model-written" as the sign of harm. Answers to harmful requests that open with a
refusal are dropped (a refusal is not harmful; counted in the output).

Measured with the shipped protocol (``GeneralisationEvaluator``): each fold leaves one
category out, its requests *and the answers to them* with it; recall on that category's
harmful passages only, benign false positives on the held-out split's passages; added
rows are never scored. Only calibration-split requests are answered, so nothing of the
held-out split reaches training.

    python benchmarks/experiments/safety_screen_responses.py OUT.json

Answers are cached (``runs/exp/screen_responses.jsonl``, resumable) and so are the
document-pass features of the answers (``runs/exp/screen_responses.npz``); the features
of passages and requests come from ``safety_screen_requests.py``'s cache.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safety_screen_requests import evaluate, loco_inputs, write_screen_report

from l2vg_retrieval import L2VGEncoder
from l2vg_retrieval.backbones import load_backbone
from l2vg_retrieval.safety import embed_documents
from l2vg_retrieval.training.responses import generate_response_cache

# Openings of a refusal: such an answer to a harmful request is not a harmful passage.
REFUSAL = re.compile(
    r"^\s*(I'?m sorry|I am sorry|I can(no|')t|I'?m (not able|unable)|I am (not able|unable)|"
    r"I won'?t|As an AI|Sorry|I must (decline|refuse)|I do not|I don'?t think I can)",
    re.IGNORECASE,
)


def _id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def answers(requests: list[Any], cache: Path, max_new_tokens: int) -> dict[str, str]:
    """The backbone's greedy answer to every request (bf16, the training pool's generator)."""
    backbone = load_backbone(dtype=torch.bfloat16)
    rows = [{"id": _id(r.text), "text": r.text} for r in requests]
    done = generate_response_cache(
        rows, cache, backbone.model, backbone.tokenizer, max_new_tokens=max_new_tokens, batch_size=64
    )
    return {key: row["response"] for key, row in done.items()}


def response_rows(requests: list[Any], said: dict[str, str]) -> tuple[list[Any], dict[str, int]]:
    """Each request's answer as a row with the request's label, category and family."""
    rows, dropped = [], {"refusal": 0, "empty": 0}
    for r in requests:
        text = said.get(_id(r.text), "").strip()
        if len(text.split()) < 3:
            dropped["empty"] += 1
            continue
        if r.label == 1 and REFUSAL.match(text):
            dropped["refusal"] += 1
            continue
        rows.append(replace(r, text=text, source=f"{r.source}:backbone-answer"))
    return rows, dropped


def main(out: str, request_cache: str, answer_cache: str, max_new_tokens: int) -> None:
    x = loco_inputs(Path(request_cache))
    passages, requests, doc, req, split_of, categories = (
        x.passages, x.requests, x.doc, x.req, x.split_of, x.categories
    )  # fmt: skip
    said = answers(requests, Path(answer_cache), max_new_tokens)
    answered, dropped = response_rows(requests, said)
    feature_cache = Path(answer_cache).with_suffix(".npz")
    cached = np.load(feature_cache)["features"] if feature_cache.exists() else None
    if cached is not None and len(cached) == len(answered):
        answer_feats = cached
    else:
        encoder = L2VGEncoder.from_pretrained(dtype="float32")
        answer_feats = embed_documents(
            encoder, [r.text for r in answered], "probe", probe_layer=15, show_progress_bar=True
        )
        np.savez(feature_cache, features=answer_feats, fingerprint=np.array(encoder.fingerprint))
    results = {
        "passages + requests (shipped)": evaluate(passages, requests, doc, req, split_of, categories),
        "passages + requests + answers": evaluate(
            passages, [*requests, *answered], doc, np.concatenate([req, answer_feats]), split_of, categories
        ),
        "passages + answers": evaluate(passages, answered, doc, answer_feats, split_of, categories),
    }
    harmful = sum(r.label for r in answered)
    write_screen_report(
        out,
        f"python benchmarks/experiments/safety_screen_responses.py {out}",
        results,
        max_new_tokens=max_new_tokens,
        answer_rows={"harmful": harmful, "benign": len(answered) - harmful, "dropped": dropped},
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--request-cache", default="runs/exp/screen_requests.npz")
    parser.add_argument("--answer-cache", default="runs/exp/screen_responses.jsonl")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    main(args.out, args.request_cache, args.answer_cache, args.max_new_tokens)
