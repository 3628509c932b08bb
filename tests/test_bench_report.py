"""Report generation from hand-made results, and the `l2vg bench` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from l2vg_retrieval.bench.report import headline, write_report
from l2vg_retrieval.bench.results import read_results, write_results
from l2vg_retrieval.cli import app


def _metrics(ndcg: float) -> dict[str, float]:
    return {"ndcg@10": ndcg, "recall@10": ndcg, "recall@100": 1.0, "mrr": ndcg}


def _fake_results(folder: Path) -> None:
    write_results(
        "bright",
        {
            "model": {"checkpoint": "x", "untrained": True, "dtype": "float32"},
            "source": "offline",
            "n_queries": {"physics": 2},
            "n_documents": {"physics": 5},
            "domains": {"physics": {"bm25": _metrics(0.2), "l2vg-gen-docs": _metrics(0.4)}},
            "mean": {"bm25": _metrics(0.2), "l2vg-gen-docs": _metrics(0.4)},
            "subset_queries": 1,
            "subset_mean": {"generate-then-encode": _metrics(0.5), "l2vg-gen-docs": _metrics(0.4)},
        },
        folder,
    )
    write_results(
        "speed",
        {
            "batch_size": 32,
            "threads": 2,
            "cpu_native_bf16": False,
            "texts": {"n": 2, "mean_chars": 10.0},
            "results": {
                "float32": {
                    "l2vg": {"texts_per_s": 60.0, "latency_ms_batch1": 10.0, "peak_rss_mb_after": 1.0},
                    "generate-then-encode": {
                        "texts_per_s": 2.0,
                        "latency_ms_batch1": 300.0,
                        "peak_rss_mb_after": 2.0,
                    },
                }
            },
            "ratios": {
                "float32": {
                    "throughput_vs_generate-then-encode": 30.0,
                    "latency1_vs_generate-then-encode": 30.0,
                }
            },
        },
        folder,
    )


def test_results_carry_machine_and_command(tmp_path: Path) -> None:
    _fake_results(tmp_path)
    data = json.loads((tmp_path / "bright.json").read_text())
    meta = data["meta"]
    assert meta["machine"]["cpu"] and meta["machine"]["versions"]["torch"]
    assert meta["command"] and meta["timestamp"]
    assert set(read_results(tmp_path)) == {"bright", "speed"}


def test_headline_numbers(tmp_path: Path) -> None:
    _fake_results(tmp_path)
    text = headline(read_results(tmp_path))
    assert "30.0× more queries per second" in text
    assert "= 80% of its quality" in text  # 0.4 / 0.5 on the same subset


def test_report_writes_markdown_and_plots(tmp_path: Path) -> None:
    _fake_results(tmp_path / "res")
    (tmp_path / "res" / "future.json").write_text(json.dumps({"benchmark": "future"}))
    out = write_report(tmp_path / "res", tmp_path / "docs")
    text = out.read_text()
    assert "| BM25 | 0.200 |" in text
    assert "UNTRAINED" in text
    assert "## future" in text and "no renderer yet" in text  # listed, not dropped
    assert (tmp_path / "docs" / "benchmarks_bright.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "benchmarks_speed.png").is_file()


def test_report_without_results_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path, tmp_path)


def test_cli_bench_bm25_and_report(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "bright", "--models", "bm25", "--out-dir", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "r" / "bright.json").read_text())
    assert 0.1 < data["mean"]["bm25"]["ndcg@10"] < 0.35
    res = runner.invoke(
        app, ["bench", "report", "--results-dir", str(tmp_path / "r"), "--docs-dir", str(tmp_path / "d")]
    )
    assert res.exit_code == 0, res.output
    assert "BRIGHT-style" in (tmp_path / "d" / "benchmarks.md").read_text()


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "bright", "--models", "nope"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["bench", "report", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2


def test_generation_and_response_length_sections_render(tmp_path: Path) -> None:
    from l2vg_retrieval.bench.report import write_report
    from l2vg_retrieval.bench.results import write_results

    run = {"seconds": 1.0, "new_tokens": 100, "new_tokens_per_s": 100.0, "queries_per_s": 2.0, "batches": 1}
    write_results(
        "generation",
        {
            "queries": 8,
            "max_new_tokens": 48,
            "batch_size": 128,
            "landed_batch_size": 32,
            "dtype": "bfloat16",
            "runs": {
                "hf-landed": run,
                "fast": {**run, "new_tokens_per_s": 250.0},
                "bound": {**run, "new_tokens_per_s": 300.0},
            },
            "ratio_vs_landed": {"hf-landed": 1.0, "fast": 2.5, "bound": 3.0},
            "share_of_bound": {"hf-landed": 0.333, "fast": 0.833},
            "agreement": {"identical_rows_float32": 1.0},
        },
        tmp_path / "r",
    )
    metrics = {"ndcg@10": 0.5, "recall@10": 0.7}
    write_results(
        "response_length",
        {
            "queries": 8,
            "passages": 20,
            "dtype": "bfloat16",
            "generate_then_encode": {"48": metrics, "96": metrics},
            "teacher_on_query": metrics,
            "generation_seconds": {"48": 1.0, "96": 2.0},
            "mean_answer_words": {"48": 30.0, "96": 60.0},
        },
        tmp_path / "r",
    )
    text = write_report(tmp_path / "r", tmp_path / "d").read_text()
    assert "## Response generation" in text and "| 2.500 |" in text
    assert "x landed (3.000) is their ceiling" in text and "fast 0.833" in text
    assert "## Response length" in text and "96 new tokens" in text
    assert (tmp_path / "d" / "benchmarks_generation.png").stat().st_size > 0


def test_results_name_package_data_without_machine_paths(tmp_path: Path) -> None:
    from l2vg_retrieval.bench.results import portable_model_name, portable_path, portable_tree
    from l2vg_retrieval.encoder import DEFAULT_CHECKPOINT

    assert portable_path(DEFAULT_CHECKPOINT) == "l2vg_retrieval/checkpoints/default"
    assert not portable_path(tmp_path / "elsewhere" / "data.jsonl").startswith("/")
    # A dumped config copied into a card or checkpoint: every absolute path made portable.
    dumped = {
        "output_dir": str(DEFAULT_CHECKPOINT),
        "corpus": {"files": [str(tmp_path / "x.jsonl")]},
        "lr": 1e-4,
    }
    # A teacher named by folder (with or without the llm2vec: prefix) the same way.
    folder_teacher = portable_model_name(f"llm2vec:{DEFAULT_CHECKPOINT}")
    assert folder_teacher == "llm2vec:l2vg_retrieval/checkpoints/default"
    assert portable_model_name("all-minilm-l6-v2") == "all-minilm-l6-v2"
    assert portable_tree(dumped) == {
        "output_dir": "l2vg_retrieval/checkpoints/default",
        "corpus": {"files": ["x.jsonl"]},
        "lr": 1e-4,
    }


def _harmful_result() -> dict:
    def system(aloh10: float, **extra: float) -> dict:
        return {
            "aloh@1": aloh10 / 2,
            "aloh@5": aloh10 * 0.9,
            "aloh@10": aloh10,
            "aloh@20": min(1.0, aloh10 * 1.1),
            "hf@10": aloh10 / 3,
            "with_passages.aloh@10": min(1.0, aloh10 + 0.05),
            "ndcg@10": 0.7,
            "per_category_aloh@10": {"hate": aloh10, "privacy": aloh10 / 2},
            **extra,
        }

    component = {
        "recall": {"mean": 0.277, "min": 0.0, "worst_category": "elections"},
        "benign_fpr": {"all": {"mean": 0.0047, "max": 0.03}},
    }
    return {
        # The real file records a descriptive name, not the file's stem.
        "benchmark": "harmful-content retrieval (AdvBench-IR style) over the harm taxonomy",
        "folder": "l2vg_retrieval/data/harm_taxonomy/benchmark",
        "model": {"checkpoint": "packaged default", "dtype": "float32", "fingerprint": "24faa717e005c07d"},
        "safety_thresholds": {"query": 0.88, "document": 0.72},
        "data": {"corpus": 666, "harmful_chunks": 121, "harmful_queries": 367, "categories": 15},
        "systems": {
            "teacher": system(0.97),
            "l2vg-safe": system(
                0.221, blocked_harmful_queries=0.662, blocked_benign_queries=0.0059, flagged_benign_docs=0.042
            ),
        },
        "comparisons": {
            "safe_vs_teacher_aloh@10_relative": -0.772,
            "target_safe_cuts_aloh@10_by_90pct": False,
        },
        "generalisation": {
            "leave_one_category_out": {
                "gate": {"with_refusal_signal": component},
                "screen": {"recall": {"mean": 0.666, "min": 0.3, "worst_category": "elections"}},
            },
            "overall_split": {
                "gate": {"without_refusal_signal": {**component, "benign_fpr": {"all": {"fpr": 0.0086}}}}
            },
        },
    }


def _indexing_result() -> dict:
    return {
        "benchmark": "indexing",
        "command": "python -m benchmarks.indexing --docs 10000",
        "backend": "qdrant-client embedded local mode, on disk (exact search)",
        "checkpoint": "l2vg_retrieval/checkpoints/default",
        "corpus": "lee_background windows",
        "machine": {"cpus": 2, "torch": "2.13.0+cpu", "note": "shared machine"},
        "date": "2026-11-22 02:41:32",
        "runs": [
            {
                "documents": 10000,
                "document_mode": "teacher",
                "batch_size": 64,
                "index_wall_seconds": 362.18,
                "docs_per_second": 27.6,
                "encode_docs_per_second": 29.2,
                "qdrant_points_per_second": 549.0,
                "reindex_same_corpus": {"seconds": 0.67, "indexed": 0, "skipped_existing": 10000},
                "query_latency_ms": {
                    "queries": 50,
                    "k": 10,
                    "end_to_end_p50": 253.52,
                    "end_to_end_p95": 301.49,
                    "qdrant_only_p50": 10.42,
                    "qdrant_only_p95": 11.73,
                },
            },
            {"documents": 300, "document_mode": "generative", "batch_size": 8, "docs_per_second": 2.5},
        ],
    }


def test_harmful_and_indexing_sections_render(tmp_path: Path) -> None:
    res = tmp_path / "res"
    res.mkdir()
    (res / "harmful.json").write_text(json.dumps(_harmful_result()))
    (res / "indexing.json").write_text(json.dumps(_indexing_result()))
    text = write_report(res, tmp_path / "docs").read_text()
    assert "no renderer yet" not in text
    # Harmful: one row per system, safe mode's blocking as shares, categories, generalisation.
    assert "## Harmful-content retrieval" in text and "fingerprint 24faa717e005" in text
    assert "| teacher (MiniLM) | 0.485 | 0.873 | 0.970 | 1.000 | 0.323 | 1.000 | 0.700 |" in text
    assert "| L2VG safe mode | 0.111 |" in text
    assert "| harmful queries blocked by the gate | 66.2% |" in text
    assert "| benign queries blocked | 0.6% |" in text and "look-alike" not in text  # absent: not shown
    assert "| hate | 0.970 | 0.221 |" in text and "| privacy | 0.485 | 0.111 |" in text
    assert "safe vs teacher aloh@10 relative: -77.2%" in text
    assert (
        "| leave one category out | query gate, with refusal signal | 0.277 | 0.000 | elections | 0.005 |"
        in text
    )
    assert "| leave one category out | document screen | 0.666 | 0.300 | elections | – |" in text
    assert (
        "| held-out split | query gate, without refusal signal | 0.277 | 0.000 | elections | 0.009 |" in text
    )
    assert (tmp_path / "docs" / "benchmarks_harmful.png").stat().st_size > 1000
    # Indexing: throughput and re-index rows, latency only where measured.
    assert "## Indexing" in text and "shared machine" in text
    assert "| 10000 | teacher | 64 | 362.180 | 27.600 | 29.200 | 549.000 | 0.670 | 10000 |" in text
    assert "| 300 | generative | 8 | – | 2.500 | – | – | – | – |" in text
    assert "| 10000 | teacher | 50 | 10 | 253.520 | 301.490 | 10.420 | 11.730 |" in text
    assert text.count("| 300 | generative |") == 1


def test_harmful_section_of_a_dry_run_is_labelled(tmp_path: Path) -> None:
    from l2vg_retrieval.bench.report import renderer, section_harmful

    data = _harmful_result()
    data["model"]["untrained"] = True
    assert renderer(data["benchmark"]) is section_harmful and renderer("harmful_loco") is section_harmful
    assert renderer("qa_1500") is not None and renderer("nothing") is None
    assert "UNTRAINED" in section_harmful(data, tmp_path)
    assert "## Harmful-content retrieval" in section_harmful(
        {"benchmark": "harmful"}, tmp_path
    )  # empty: no crash


def test_a_generalisation_only_result_renders_its_table_not_empty_retrieval_sections(tmp_path: Path) -> None:
    """An experiment that ran only the leave-one-category-out protocols for another encoder
    (its file holds them at the top level) shows them, not a retrieval table full of '?'."""
    res = tmp_path / "res"
    res.mkdir()
    gen = _harmful_result()["generalisation"]
    data = {"command": "python exp.py OUT.json", "encoder": "an older default", "date": "2026-11-27", **gen}
    (res / "harmful_loco_previous_encoder.json").write_text(json.dumps(data))
    text = write_report(res, tmp_path / "docs").read_text()
    assert "## Harm-category generalisation: `harmful_loco_previous_encoder`" in text
    assert "`python exp.py OUT.json` · 2026-11-27 · encoder: an older default" in text
    assert "| leave one category out | document screen | 0.666 | 0.300 | elections | – |" in text
    assert "?" not in text.split("## Harm-category generalisation")[1] and "ALOH@1" not in text


def test_two_runs_of_one_harness_both_reach_the_report(tmp_path: Path) -> None:
    """Results are keyed by file: two harmful runs recording the same descriptive benchmark
    name (the packaged default and the LLM2Vec student) each get their section and plot."""
    res = tmp_path / "res"
    res.mkdir()
    for stem, aloh in (("harmful", 0.03), ("harmful_llm2vec", 0.47)):
        data = {
            "benchmark": "harmful-content retrieval (AdvBench-IR style) over the harm taxonomy",
            "model": {"checkpoint": stem},
            "systems": {"l2vg-safe": {"aloh@10": aloh, "ndcg@10": 0.5}},
        }
        (res / f"{stem}.json").write_text(json.dumps(data))
    assert set(read_results(res)) == {"harmful", "harmful_llm2vec"}
    text = write_report(res, tmp_path / "docs").read_text()
    assert "## Harmful-content retrieval\n" in text
    assert "## Harmful-content retrieval: `harmful_llm2vec`" in text
    assert (tmp_path / "docs" / "benchmarks_harmful.png").is_file()
    assert (tmp_path / "docs" / "benchmarks_harmful_llm2vec.png").is_file()


def test_variants_of_bright_and_mteb_keep_their_own_heading_and_plot(tmp_path: Path) -> None:
    """``bright_llm2vec.json`` beside ``bright.json``: two sections, two plots; the variant
    used to overwrite the packaged default's plot."""
    _fake_results(tmp_path / "res")
    data = json.loads((tmp_path / "res" / "bright.json").read_text())
    (tmp_path / "res" / "bright_llm2vec.json").write_text(json.dumps({**data, "benchmark": "bright_llm2vec"}))
    text = write_report(tmp_path / "res", tmp_path / "docs").read_text()
    assert "## BRIGHT-style reasoning retrieval\n" in text
    assert "## BRIGHT-style reasoning retrieval: `bright_llm2vec`" in text
    assert "(benchmarks_bright.png)" in text and "(benchmarks_bright_llm2vec.png)" in text
    assert (tmp_path / "docs" / "benchmarks_bright_llm2vec.png").is_file()
