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
    (tmp_path / "res" / "harmful.json").write_text(json.dumps({"benchmark": "harmful"}))
    out = write_report(tmp_path / "res", tmp_path / "docs")
    text = out.read_text()
    assert "| BM25 | 0.200 |" in text
    assert "UNTRAINED" in text
    assert "## harmful" in text  # no renderer yet: listed, not dropped
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
            "runs": {"hf-landed": run, "fast": {**run, "new_tokens_per_s": 250.0}},
            "ratio_vs_landed": {"hf-landed": 1.0, "fast": 2.5},
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
    assert "## Response length" in text and "96 new tokens" in text
    assert (tmp_path / "d" / "benchmarks_generation.png").stat().st_size > 0


def test_results_name_package_data_without_machine_paths(tmp_path: Path) -> None:
    from l2vg_retrieval.bench.results import portable_path
    from l2vg_retrieval.encoder import DEFAULT_CHECKPOINT

    assert portable_path(DEFAULT_CHECKPOINT) == "l2vg_retrieval/checkpoints/default"
    assert not portable_path(tmp_path / "elsewhere" / "data.jsonl").startswith("/")
