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

Questions: the first 30 packaged QA questions (real user questions of typical length) and
30 requests of the harm taxonomy's held-out split. p50 per path, and each gate's p50 ratio
to plain, per set.

    python benchmarks/experiments/safe_query_cost.py --previous runs/previous_gate \
        [--previous-name "git 7870187"] [--out FILE] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from l2vg_retrieval import L2VGEncoder
from l2vg_retrieval.bench.results import portable_path, write_results
from l2vg_retrieval.bench.scale import qa_texts
from l2vg_retrieval.safety import SafetyCalibration, SafetyFilter
from l2vg_retrieval.safety_data import load_benchmark_set


def gate_path(gate: SafetyFilter) -> Callable[[str], object]:
    def run(query: str) -> object:
        emb, features = gate.encode_queries([query])
        return gate.check_query(query, embedding=emb[0], answer_features=features)

    return run


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


def main(previous: Path, previous_name: str, out: str, rounds: int, dtype: str) -> dict[str, Any]:
    encoder = L2VGEncoder.from_pretrained(dtype=dtype)
    shipped = SafetyFilter.from_encoder(encoder)
    before = SafetyFilter(encoder, SafetyCalibration.load(previous))
    if not shipped.uses_document_pass or before.uses_document_pass:
        raise SystemExit("expected the packaged gate to read the document pass and --previous not to")
    paths = {
        "plain": lambda q: encoder.encode_query([q]),
        "gate, query pass": gate_path(before),
        "gate, query + document pass": gate_path(shipped),
    }
    sets = {
        "qa questions": qa_texts()[1][:30],
        "harm-taxonomy requests": [r.text for r in load_benchmark_set() if r.kind == "query"][:30],
    }
    report: dict[str, Any] = {
        "experiment": "safe-mode gate cost per query, one query at a time, interleaved",
        "command": f"python benchmarks/experiments/safe_query_cost.py --previous {portable_path(previous)} "
        f"--previous-name '{previous_name}' --out {out} --rounds {rounds} --dtype {dtype}",
        "previous_calibration": f"{previous_name}: l2vg_retrieval/checkpoints/default/safety.*",
        "dtype": dtype,
        "rounds": rounds,
        "sets": {},
    }
    for name, texts in sets.items():
        times = interleaved_ms(paths, texts, rounds)
        p50 = {path: round(statistics.median(t), 2) for path, t in times.items()}
        report["sets"][name] = {
            "queries": len(texts),
            "tokens_p50": statistics.median(len(encoder.tokenize([t], None)[0]) for t in texts),
            "p50_ms": p50,
            "over_plain": {path: round(p50[path] / p50["plain"], 2) for path in paths if path != "plain"},
            "document_pass_over_query_pass_gate": round(
                p50["gate, query + document pass"] / p50["gate, query pass"], 2
            ),
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
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    main(args.previous, args.previous_name, args.out, args.rounds, args.dtype)
