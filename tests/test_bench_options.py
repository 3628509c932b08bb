"""`l2vg bench options`: issue 12's one table, on tiny checkpoints and real results files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_SHAPE

from l2vg_retrieval.bench.options import (
    OptionsSpec,
    _load_encoders,
    build_table,
    collect_quality,
    load_spec,
    measure_peak_memory,
    measure_throughput,
    quality_from_results,
)
from l2vg_retrieval.bench.report import section_options
from l2vg_retrieval.config import EncoderConfig
from l2vg_retrieval.encoder import L2VGEncoder

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
DOCS = ["Paris is the capital of France. " * 6, "Bread needs flour, water and yeast.", "a hash map", "x"]
QUERIES = ["what is the capital of France", "how do I bake bread", "hash map lookups"]


def _row(key: str, checkpoint: str, **extra: object) -> dict[str, object]:
    return {"key": key, "label": key, "checkpoint": checkpoint, **extra}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"reference": "a", "rows": [_row("a", "x"), _row("a", "y")]}, "unique"),
        ({"reference": "b", "rows": [_row("a", "x")]}, "not a row key"),
        ({"reference": "a", "rows": [_row("a", "x", results={"beir": "f"})]}, "unknown harnesses"),
        ({"reference": "a", "rows": [_row("a", "x", dim=0)]}, "greater than or equal"),
        ({"reference": "a", "rows": []}, "at least 1"),
    ],
    ids=["duplicate-keys", "unknown-reference", "unknown-harness", "zero-dim", "no-rows"],
)
def test_bad_specs_are_refused(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OptionsSpec.model_validate(spec)


def test_the_committed_spec_parses_and_names_existing_harnesses() -> None:
    spec = load_spec(Path(__file__).resolve().parents[1] / "benchmarks" / "options.yaml")
    assert spec.reference in {r.key for r in spec.rows}
    # Matryoshka rows read prefixes of one checkpoint; none asks the harmful harness for one.
    assert all("harmful" not in r.results for r in spec.rows if r.dim)


def test_quality_is_read_from_real_results_files_at_the_requested_prefix() -> None:
    qa = json.loads((RESULTS / "qa_1500_dims_rotated.json").read_text())
    full = quality_from_results("qa", qa, None)
    at128 = quality_from_results("qa", qa, 128)
    assert full["qa_ndcg10"] == qa["mean"]["l2vg-gen-docs"]["ndcg@10"]
    assert at128["qa_ndcg10"] == qa["mean"]["l2vg-gen-docs@128"]["ndcg@10"]
    assert at128["qa_ndcg10"] != full["qa_ndcg10"]
    mteb = json.loads((RESULTS / "mteb.json").read_text())
    assert quality_from_results("mteb", mteb, None)["mteb_mean"] == pytest.approx(
        np.mean(list(mteb["scores"]["l2vg-gen-docs"].values()))
    )
    harmful = json.loads((RESULTS / "harmful.json").read_text())
    figures = quality_from_results("harmful", harmful, None)
    assert figures["harmful_aloh10_safe"] == harmful["systems"]["l2vg-safe"]["aloh@10"]
    with pytest.raises(ValueError, match="no Matryoshka prefixes"):
        quality_from_results("harmful", harmful, 128)
    with pytest.raises(ValueError, match="lack"):
        quality_from_results("qa", qa, 48)  # a prefix the run did not score


def test_missing_results_file_names_the_row_and_the_file(tmp_path: Path) -> None:
    spec = OptionsSpec.model_validate({"reference": "a", "rows": [_row("a", "x", results={"qa": "nowhere"})]})
    with pytest.raises(FileNotFoundError, match=r"row 'a'.*nowhere\.json"):
        collect_quality(spec, tmp_path)


@pytest.fixture(scope="module")
def option_checkpoints(tiny_model_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    backbone, teacher = tiny_model_dirs
    root = tmp_path_factory.mktemp("options")
    out = {}
    for key, options in {"full": {}, "exit1": {"exit_layer": 1}}.items():
        config = EncoderConfig(backbone=str(backbone), teacher=str(teacher), **TINY_SHAPE, **options)
        encoder = L2VGEncoder.from_config(config, device="cpu", dtype="float32")
        out[key] = str(encoder.save_pretrained(root / key))
    return out


def test_costs_are_measured_for_every_checkpoint_on_one_backbone(option_checkpoints: dict) -> None:
    encoders = _load_encoders(list(option_checkpoints.values()), "float32")
    full, exit1 = (encoders[option_checkpoints[k]] for k in ("full", "exit1"))
    assert full.backbone is exit1.backbone  # shared, so the timing compares encoders only
    costs = measure_throughput(encoders, DOCS, QUERIES, rounds=2, batch_size=2, n_latency=2)
    assert set(costs) == set(encoders)
    for figures in costs.values():
        assert figures["documents_per_s"] > 0 and figures["queries_per_s"] > 0
        assert figures["query_latency_ms"] > 0


def test_peak_memory_comes_from_a_fresh_process(option_checkpoints: dict) -> None:
    peak = measure_peak_memory(option_checkpoints["exit1"], DOCS, dtype="float32", batch_size=2)
    assert peak["peak_rss_mb_encoding"] >= peak["rss_mb_loaded"] > 50  # torch alone is more than that
    assert peak["encoding_extra_mb"] == pytest.approx(
        peak["peak_rss_mb_encoding"] - peak["rss_mb_loaded"], abs=0.2
    )
    assert peak["process_peak_rss_mb"] >= peak["peak_rss_mb_encoding"] - 1
    with pytest.raises(RuntimeError, match="failed"):
        measure_peak_memory("/nonexistent/checkpoint", DOCS, dtype="float32", batch_size=2)


def _spec_with_results(tmp_path: Path) -> tuple[OptionsSpec, Path]:
    results = tmp_path / "results"
    results.mkdir()
    for stem in ("qa_1500_dims_rotated", "bright", "mteb", "harmful"):
        shutil.copy(RESULTS / f"{stem}.json", results / f"{stem}.json")
    spec = OptionsSpec.model_validate(
        {
            "reference": "full",
            "rows": [
                _row(
                    "full",
                    "ckpt",
                    results={"qa": "qa_1500_dims_rotated", "mteb": "mteb", "harmful": "harmful"},
                ),
                _row("half", "ckpt", dim=128, results={"qa": "qa_1500_dims_rotated"}),
            ],
        }
    )
    return spec, results


def test_table_ratios_are_against_the_reference_and_the_report_renders(tmp_path: Path) -> None:
    spec, results = _spec_with_results(tmp_path)
    quality = collect_quality(spec, results)
    cost = {"ckpt": {"documents_per_s": 20.0, "queries_per_s": 40.0, "query_latency_ms": 90.0}}
    memory = {"ckpt": {"rss_mb_loaded": 1200.0, "peak_rss_mb_encoding": 1500.0, "encoding_extra_mb": 300.0}}
    rows = build_table(spec, quality, cost, memory, {"ckpt": 384})
    full, half = rows
    assert full["relative"]["qa_ndcg10"] == 1.0 and full["vector_bytes"] == 1536
    assert half["dim"] == 128 and half["vector_bytes"] == 512
    assert half["relative"]["qa_ndcg10"] == pytest.approx(half["qa_ndcg10"] / full["qa_ndcg10"])
    assert half["relative"]["mteb_mean"] is None  # not measured for that row: no ratio invented
    docs = tmp_path / "docs"
    docs.mkdir()
    data = {
        "results_name": "options",
        "reference": "full",
        "dtype": "bfloat16",
        "rows": rows,
        "cost_setup": {},
    }
    text = section_options(data, docs)
    assert "## Encoder options" in text and "| **half**: half | 128 | 512 |" in text
    assert f"{half['qa_ndcg10']:.3f} ({half['relative']['qa_ndcg10']:.2f}×)" in text
    assert (docs / "benchmarks_options.png").stat().st_size > 1000


def test_cli_refuses_a_bad_spec_with_the_bad_input_code(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from l2vg_retrieval.cli import EXIT_MISMATCH, EXIT_USAGE, app

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"reference": "z", "rows": [_row("a", "x")]}))
    result = CliRunner().invoke(app, ["bench", "options", str(spec)])
    assert result.exit_code == EXIT_USAGE and "not a row key" in result.output
    spec.write_text(yaml.safe_dump({"reference": "a", "rows": [_row("a", "x", results={"qa": "gone"})]}))
    result = CliRunner().invoke(app, ["bench", "options", str(spec), "--results-dir", str(tmp_path)])
    assert result.exit_code == EXIT_USAGE and "gone.json" in result.output
    # Results present, checkpoint absent: the documented checkpoint exit code.
    shutil.copy(RESULTS / "qa_1500.json", tmp_path / "qa_1500.json")
    spec.write_text(
        yaml.safe_dump(
            {"reference": "a", "rows": [_row("a", str(tmp_path / "nowhere"), results={"qa": "qa_1500"})]}
        )
    )
    result = CliRunner().invoke(app, ["bench", "options", str(spec), "--results-dir", str(tmp_path)])
    assert result.exit_code == EXIT_MISMATCH and "no checkpoint folder" in result.output


def test_committed_results_of_this_stop_render_from_their_own_numbers(tmp_path: Path) -> None:
    from l2vg_retrieval.bench.report import renderer

    for name in ("micro_batch_memory", "options"):
        data = {**json.loads((RESULTS / f"{name}.json").read_text()), "results_name": name}
        render = renderer(name)
        assert render is not None, name
        text = render(data, tmp_path)
        if name == "micro_batch_memory":
            for run in data["runs"].values():
                assert f"| {run['peak_rss_mb']:.3f} | {run['seconds_per_step']:.3f} |" in text
        else:
            assert all(f"**{row['key']}**" in text for row in data["rows"])
