"""How long should the training responses be? Generate-then-encode at several lengths on QA.

The student imitates the teacher's embedding of the backbone's greedy answer, so the
answer length that makes generate-then-encode retrieve best is the one worth caching for
training. Each length is scored on the same fixed sample of QA queries against the whole
QA corpus embedded by the teacher (embedded once and shared).

    python -m benchmarks.response_length --queries 100 --lengths 48,96 [--out-dir DIR]

Results go to ``benchmarks/results/ablations/response_length.json`` by default (a choice made
once for the training data, not a headline benchmark).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from l2vg_retrieval.backbones import load_backbone
from l2vg_retrieval.baselines import GenerateThenEncode
from l2vg_retrieval.bench.qa import _evaluate, subset_ids
from l2vg_retrieval.bench.qa_data import load_qa
from l2vg_retrieval.bench.results import write_results
from l2vg_retrieval.teacher import TeacherEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--lengths", default="48,96")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out-dir", default="benchmarks/results/ablations")
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    qa = load_qa()
    chosen = set(subset_ids(qa.queries, args.queries))
    queries = [q for q in qa.queries if q["id"] in chosen]
    teacher = TeacherEncoder()
    corpus = teacher.encode([p["text"] for p in qa.passages], batch_size=64, show_progress_bar=True)
    passage_ids = [p["id"] for p in qa.passages]
    backbone = load_backbone("smollm2-135m-instruct")
    scores: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    mean_words: dict[str, float] = {}
    for n in lengths:
        gte = GenerateThenEncode(backbone, teacher, dtype=args.dtype, max_new_tokens=n)
        start = time.perf_counter()
        answers = gte.generate([q["text"] for q in queries])
        seconds[str(n)] = round(time.perf_counter() - start, 1)
        vectors = teacher.encode(
            [a if a.strip() else q["text"] for a, q in zip(answers, queries, strict=True)]
        )
        scores[str(n)] = _evaluate(vectors @ corpus.T, queries, passage_ids, 1000)["all"]
        mean_words[str(n)] = float(np.mean([len(a.split()) for a in answers]))
        print(n, scores[str(n)]["ndcg@10"], seconds[str(n)], flush=True)
    query_vectors = teacher.encode([q["text"] for q in queries])
    reference = _evaluate(query_vectors @ corpus.T, queries, passage_ids, 1000)["all"]
    path = write_results(
        "response_length",
        {
            "queries": len(queries),
            "passages": len(passage_ids),
            "dtype": args.dtype,
            "generate_then_encode": scores,
            "teacher_on_query": reference,
            "generation_seconds": seconds,
            "mean_answer_words": mean_words,
        },
        args.out_dir,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
