"""The speed harness on the tiny encoder: structure, ratios, fp32 before bf16."""

from __future__ import annotations

import pytest

from l2vg_retrieval.bench.speed import measure, run_speed, speed_ratios
from l2vg_retrieval.encoder import L2VGEncoder


def test_run_speed_tiny(tiny_encoder: L2VGEncoder) -> None:
    texts = [f"question number {i} about bread" for i in range(6)]
    out = run_speed(
        tiny_encoder, texts=texts, n_texts=6, n_latency=2, gte_texts=2, gte_max_new_tokens=2, batch_size=4
    )
    fp32, bf16 = out["results"]["float32"], out["results"]["bfloat16"]
    assert set(fp32) == {"l2vg", "input-centric", "teacher", "generate-then-encode"}
    assert "teacher" not in bf16  # the teacher has no bf16 mode
    for row in (*fp32.values(), *bf16.values()):
        assert row["texts_per_s"] > 0 and row["latency_ms_batch1"] > 0 and row["peak_rss_mb_after"] > 0
    ratio = out["ratios"]["float32"]["throughput_vs_teacher"]
    assert ratio == pytest.approx(fp32["l2vg"]["texts_per_s"] / fp32["teacher"]["texts_per_s"])


def test_speed_ratios_by_hand() -> None:
    results = {
        "float32": {
            "l2vg": {"texts_per_s": 100.0, "latency_ms_batch1": 10.0},
            "generate-then-encode": {"texts_per_s": 2.0, "latency_ms_batch1": 500.0},
        }
    }
    assert speed_ratios(results) == {
        "float32": {"throughput_vs_generate-then-encode": 50.0, "latency1_vs_generate-then-encode": 50.0}
    }


def test_measure_refuses_no_texts(tiny_encoder: L2VGEncoder) -> None:
    with pytest.raises(ValueError, match="at least one"):
        measure(tiny_encoder, [], n_latency=1)
