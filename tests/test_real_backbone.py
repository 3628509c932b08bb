"""The real packaged backbone and teacher (slow: converts the GGUF once, ~30 s on 2 cores)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l2vg_retrieval.backbones import (
    DEFAULT_BACKBONE,
    MissingAssetError,
    load_backbone,
    resolve_backbone_path,
    weights_fingerprint,
)
from l2vg_retrieval.encoder import L2VGEncoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(DEFAULT_BACKBONE)


def test_converted_backbone_is_cached_and_frozen(backbone) -> None:
    folder = resolve_backbone_path(DEFAULT_BACKBONE)
    assert folder == resolve_backbone_path(DEFAULT_BACKBONE), "second resolve reuses the cache"
    assert all(not p.requires_grad for p in backbone.model.parameters())
    assert backbone.tokenizer.eos_token == "<|im_end|>"
    assert weights_fingerprint(backbone.model) == weights_fingerprint(load_backbone(DEFAULT_BACKBONE).model)


def test_untrained_encoder_encodes_unit_vectors_and_decodes(backbone) -> None:
    encoder = L2VGEncoder.from_config(backbone=backbone, dtype="float32")
    vectors = encoder.encode_query(["what is the capital of France?", "how do I bake bread?"])
    assert vectors.shape == (2, 384)
    assert np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    decoded = encoder.decode(["what is the capital of France?", "hi"], max_new_tokens=8)
    assert len(decoded) == 2 and all(isinstance(d, str) for d in decoded)


def test_bf16_matches_fp32(backbone) -> None:
    texts = ["what is the capital of France?", "how do I bake bread at home?"]
    fp32 = L2VGEncoder.from_config(backbone=load_backbone(DEFAULT_BACKBONE), dtype="float32")
    bf16 = L2VGEncoder.from_config(backbone=load_backbone(DEFAULT_BACKBONE), dtype=torch.bfloat16)
    cos = np.sum(fp32.encode(texts) * bf16.encode(texts), axis=1)
    assert (cos > 0.99).all(), cos


def test_missing_local_folder_fails_clearly(tmp_path) -> None:
    with pytest.raises(MissingAssetError, match="no model folder"):
        load_backbone(str(tmp_path / "absent"))
