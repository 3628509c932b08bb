"""Single-query latency of ``encode_query`` against its bound (issue 11's profile).

For the first 30 packaged QA questions, one at a time, p50 over the set:

- ``bare``: the backbone's decoder over the same tokens (template + instruction + question
  + the special-token slots) in one pass, no LoRA: the bound for one query;
- ``bare + lora``: the same with the encoder LoRA on peft's side path (two small matmuls
  per projection);
- ``encode_query``: the shipped path (prefix KV cached, text and special tokens in one
  pass, the LoRA merged into cached weights), embedding included;
- ``encode_query, training path``: the same call as training runs it (autograd on, so the
  prefix is recomputed, text and special tokens run as two passes, the LoRA on peft's path).

    python benchmarks/experiments/query_latency_profile.py [--dtype bfloat16] [--profile] [--save]

Prints a JSON line per dtype; ``--save`` writes them with the command and machine to
``benchmarks/results/query_latency.json``; ``--profile`` adds torch.profiler's top operators
for 10 shipped queries. Run it on a quiet machine: every number is a ratio to ``bare`` measured
in the same process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from l2vg_retrieval import L2VGEncoder
from l2vg_retrieval.bench.scale import qa_texts


def p50_ms(fn: Callable[[str], object], texts: list[str]) -> float:
    fn(texts[0])  # warm-up: caches the shared prefix, allocates
    times = []
    for text in texts:
        start = time.perf_counter()
        fn(text)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def main(dtype: str, profile: bool) -> dict[str, object]:
    questions = qa_texts()[1][:30]
    encoder = L2VGEncoder.from_pretrained(dtype=dtype)
    instruction = encoder.config.query_instruction
    decoder = encoder.lm.get_decoder()
    pad = [encoder.tokenizer.pad_token_id] * encoder.config.n_special

    @contextlib.contextmanager
    def side_path() -> Iterator[None]:
        # peft's own switch, without the merge EncoderAdapter.active does in inference.
        assert encoder.adapter is not None
        encoder.adapter._set(True)
        try:
            yield
        finally:
            encoder.adapter._set(False)

    def bare(text: str, lora: bool) -> None:
        ids = torch.tensor([encoder.tokenize([text], instruction)[0] + pad])
        scope = side_path() if lora and encoder.adapter is not None else contextlib.nullcontext()
        with torch.inference_mode(), scope:
            decoder(input_ids=ids, use_cache=False)

    def training_path(text: str) -> None:
        ids = encoder.tokenize([text], instruction)
        with torch.enable_grad():
            encoder.embed_soft_prompts(encoder.soft_prompts_from_ids(ids, encoder.prefix_hint(instruction)))

    row = {
        "dtype": dtype,
        "tokens_p50": statistics.median(len(encoder.tokenize([q], instruction)[0]) for q in questions),
        "bare_ms": p50_ms(lambda q: bare(q, False), questions),
        "bare_lora_side_path_ms": p50_ms(lambda q: bare(q, True), questions),
        "encode_query_ms": p50_ms(lambda q: encoder.encode_query([q]), questions),
        "encode_query_training_path_ms": p50_ms(training_path, questions),
    }
    row["encode_query_over_bare"] = round(row["encode_query_ms"] / row["bare_ms"], 2)
    print(json.dumps(row), flush=True)
    if profile:
        with torch.profiler.profile() as prof:
            for q in questions[:10]:
                encoder.encode_query([q])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return row


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", action="append", help="float32 | bfloat16 (repeatable)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/query_latency.json")
    args = parser.parse_args()
    rows = [main(name, args.profile) for name in args.dtype or ["bfloat16", "float32"]]
    if args.save:
        from l2vg_retrieval.bench.results import write_results

        write_results("query_latency", {"checkpoint": "packaged default", "questions": 30, "rows": rows})
