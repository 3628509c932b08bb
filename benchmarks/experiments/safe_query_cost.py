"""What safe mode's gate costs a query, with and without the document-pass reading (issue 13).

A plain search encodes the query once (``encode_query``). Safe mode's gate reads features
from that same pass (``SafetyFilter.encode_queries``: the answer-position and request-mean
states after 15 layers, the refusal signal) and, since the gate reads the request as a
passage too, a second half pass: the document prompt through the first 15 layers. This
times, one query at a time, in one process and interleaved (each round runs every path on
the same query in turn, so the shared machine's load falls on all of them alike):

- ``plain``: ``encode_query``;
- ``gate, query pass``: ``encode_queries`` + ``check_query`` with a calibration that reads
  the query pass only: ``--previous`` is a folder holding the packaged calibration before
  the document pass, e.g. ``git show 7870187:l2vg_retrieval/checkpoints/default/safety.json``
  and ``safety.safetensors`` written into ``runs/previous_gate``;
- ``gate, query + document pass``: the same with the packaged calibration.

Beside them, the bound of the second pass: the first 15 decoder layers (LoRA merged, as
the pass runs them) over only the tokens after the cached template + prompt head, bare
(``bound: 15 layers, own tokens``), and over one token (``bound: 15 layers, 1 token``): on
this CPU a layer costs about the same for 1 token as for 15, so the second pass cannot get
much cheaper without sharing the first pass's walk through the weights.

Then the same three on the whole set in one call (``search_batch``'s way), as queries per
second: batched, the weights stream through the cores once per batch, not per query.

Questions: the first 30 packaged QA questions (real user questions of typical length) and
30 requests of the harm taxonomy's held-out split. p50 per path, and each gate's p50 ratio
to plain, per set.

    python benchmarks/experiments/safe_query_cost.py --previous runs/previous_gate \
        [--previous-name "git 7870187"] [--out FILE] [--rounds 3] [--batch-rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from l2vg_retrieval import L2VGEncoder
from l2vg_retrieval.bench.results import portable_path, write_results
from l2vg_retrieval.bench.scale import qa_texts
from l2vg_retrieval.early_exit import truncated_body
from l2vg_retrieval.safety import SafetyCalibration, SafetyFilter
from l2vg_retrieval.safety_data import load_benchmark_set


def gate_path(gate: SafetyFilter) -> Callable[[str], object]:
    def run(query: str) -> object:
        emb, features = gate.encode_queries([query])
        return gate.check_query(query, embedding=emb[0], answer_features=features)

    return run


def gate_batch(gate: SafetyFilter) -> Callable[[list[str]], object]:
    def run(queries: list[str]) -> object:
        emb, features = gate.encode_queries(queries)
        return gate.check_queries(queries, embeddings=emb, answer_features=features)

    return run


def interleaved_batch_s(
    paths: dict[str, Callable[[list[str]], object]], texts: list[str], rounds: int
) -> dict[str, list[float]]:
    """Seconds per call of each path on the whole list at once (``search_batch``'s way)."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn(texts)
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_ms(
    paths: dict[str, Callable[[str], object]], texts: list[str], rounds: int
) -> dict[str, list[float]]:
    for fn in paths.values():
        fn(texts[0])  # warm-up: caches the shared prefix, packs weights
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for text in texts:
            for name, fn in paths.items():
                start = time.perf_counter()
                fn(text)
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def main(
    previous: Path, previous_name: str, out: str, rounds: int, batch_rounds: int, dtype: str
) -> dict[str, Any]:
    encoder = L2VGEncoder.from_pretrained(dtype=dtype)
    shipped = SafetyFilter.from_encoder(encoder)
    before = SafetyFilter(encoder, SafetyCalibration.load(previous))
    if not shipped.uses_document_pass or before.uses_document_pass:
        raise SystemExit("expected the packaged gate to read the document pass and --previous not to")
    layer = shipped.probe_layer
    assert layer is not None
    body = truncated_body(encoder.lm, layer, keep_norm=False)
    head = len(encoder.prefix_hint(encoder.config.document_prompt))

    def bare(query: str, n_tokens: int | None) -> None:
        ids = encoder.tokenize([query], encoder.config.document_prompt)[0][head:]
        with torch.inference_mode(), encoder._adapter_scope():
            body(input_ids=torch.tensor([ids[-n_tokens:] if n_tokens else ids]), use_cache=False)

    paths = {
        "plain": lambda q: encoder.encode_query([q]),
        "gate, query pass": gate_path(before),
        "gate, query + document pass": gate_path(shipped),
        f"bound: {layer} layers, own tokens": lambda q: bare(q, None),
        f"bound: {layer} layers, 1 token": lambda q: bare(q, 1),
    }
    sets = {
        "qa questions": qa_texts()[1][:30],
        "harm-taxonomy requests": [r.text for r in load_benchmark_set() if r.kind == "query"][:30],
    }
    report: dict[str, Any] = {
        "experiment": "safe-mode gate cost per query, one query at a time, interleaved",
        "command": f"python benchmarks/experiments/safe_query_cost.py --previous {portable_path(previous)} "
        f"--previous-name '{previous_name}' --out {out} --rounds {rounds} --batch-rounds {batch_rounds} "
        f"--dtype {dtype}",
        "previous_calibration": f"{previous_name}: l2vg_retrieval/checkpoints/default/safety.*",
        "dtype": dtype,
        "rounds": rounds,
        "batch_rounds": batch_rounds,
        "sets": {},
    }
    batch_paths = {
        "plain": lambda qs: encoder.encode_query(qs),
        "gate, query pass": gate_batch(before),
        "gate, query + document pass": gate_batch(shipped),
    }
    for name, texts in sets.items():
        times = interleaved_ms(paths, texts, rounds)
        batch = interleaved_batch_s(batch_paths, texts, batch_rounds)
        per_s = {path: round(len(texts) / statistics.median(t), 1) for path, t in batch.items()}
        p50 = {path: round(statistics.median(t), 2) for path, t in times.items()}
        report["sets"][name] = {
            "queries": len(texts),
            "tokens_p50": statistics.median(len(encoder.tokenize([t], None)[0]) for t in texts),
            "p50_ms": p50,
            "over_plain": {path: round(p50[path] / p50["plain"], 2) for path in paths if path != "plain"},
            "document_pass_over_query_pass_gate": round(
                p50["gate, query + document pass"] / p50["gate, query pass"], 2
            ),
            # What the second pass adds, against its bare bound.
            "second_pass_ms": round(p50["gate, query + document pass"] - p50["gate, query pass"], 2),
            # The whole set in one call (median of the rounds): queries per second.
            "batch_queries_per_s": per_s,
            "batch_plain_over": {
                path: round(per_s["plain"] / per_s[path], 2) for path in per_s if path != "plain"
            },
        }
        print(name, report["sets"][name], flush=True)
    stem = Path(out)
    write_results(stem.stem, report, stem.parent)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--previous", required=True, type=Path, help="a calibration folder without the document pass"
    )
    parser.add_argument("--previous-name", default="git 7870187", help="where --previous came from")
    parser.add_argument("--out", default="benchmarks/results/ablations/safe_query_cost.json")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--batch-rounds", type=int, default=9, help="one call on the whole set is short and noisy"
    )
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    main(args.previous, args.previous_name, args.out, args.rounds, args.batch_rounds, args.dtype)
