"""The packaged default trained encoder (slow: real SmolLM2 + MiniLM)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from l2vg_retrieval.encoder import DEFAULT_CHECKPOINT, L2VGEncoder, read_checkpoint_meta

pytestmark = pytest.mark.slow

RESPONSES = Path(__file__).resolve().parents[1] / "data" / "responses" / "pool48.responses.jsonl.gz"
HELDOUT = Path(__file__).resolve().parents[1] / "data" / "queries" / "queries.heldout.jsonl"


@pytest.fixture(scope="module")
def trained() -> L2VGEncoder:
    return L2VGEncoder.from_pretrained(dtype="float32")


def _heldout_pairs(n: int) -> list[dict]:
    heldout_ids = [json.loads(line)["id"] for line in HELDOUT.read_text().splitlines()]
    responses = {}
    with gzip.open(RESPONSES, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            responses[row["id"]] = row
    return [responses[i] for i in heldout_ids if i in responses][:n]


def test_default_checkpoint_is_small_and_self_describing() -> None:
    meta = read_checkpoint_meta(DEFAULT_CHECKPOINT)
    assert meta["config"]["backbone"] == "smollm2-135m-instruct"
    size = sum(p.stat().st_size for p in DEFAULT_CHECKPOINT.iterdir())
    # Tokens + heads ~2.3 MB, the encoder LoRA (r 8 on every projection, fp32) ~9.8 MB.
    assert size < 16_000_000, f"checkpoint folder is {size} bytes"
    assert (DEFAULT_CHECKPOINT / "CARD.md").is_file()


def test_trained_default_aligns_far_better_than_untrained(trained: L2VGEncoder) -> None:
    """On held-out queries the trained encoder lands nearer the backbone's real responses."""
    rows = _heldout_pairs(40)
    assert len(rows) >= 30
    queries = [r["query"] for r in rows]
    targets = trained.teacher.encode([r["response"] for r in rows])
    untrained = L2VGEncoder.from_config(trained.config, backbone=trained.backbone, dtype="float32")
    cos_trained = np.sum(trained.encode_query(queries) * targets, axis=1).mean()
    cos_untrained = np.sum(untrained.encode_query(queries) * targets, axis=1).mean()
    assert cos_trained > cos_untrained + 0.2, (cos_trained, cos_untrained)


def test_default_decodes_to_text(trained: L2VGEncoder) -> None:
    out = trained.decode(["What is the capital of France?"], max_new_tokens=16)
    assert isinstance(out[0], str) and out[0].strip()
