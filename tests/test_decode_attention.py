"""Single-query attention as matmuls (l2vg_retrieval.decode_attention): equal to transformers'
SDPA function wherever it takes over, and scoped to the block that asks for it."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_backbone
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from l2vg_retrieval import decode_attention as da
from l2vg_retrieval import llama_decode
from l2vg_retrieval.generation import generate_responses, generate_responses_hf

B, HEADS, KV, T, D = 3, 6, 2, 7, 8


class _Module(torch.nn.Module):
    """What the attention functions read from the attention module."""

    def __init__(self) -> None:
        super().__init__()
        self.num_key_value_groups = HEADS // KV
        self.is_causal = True
        self.training = False


def _qkv(q_len: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, HEADS, q_len, D, generator=g)
    # Keys and values as the cache hands them over: a view of a longer buffer.
    k = torch.randn(B, KV, T + 5, D, generator=g)[:, :, :T]
    v = torch.randn(B, KV, T + 5, D, generator=g)[:, :, :T]
    return q, k, v


def _bool_mask() -> torch.Tensor:
    mask = torch.ones(B, 1, 1, T, dtype=torch.bool)
    mask[0, ..., :3] = False  # a left-padded row
    mask[2, ..., :1] = False
    return mask


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "per-head"])
def test_single_query_attention_equals_sdpa(mask_kind: str) -> None:
    q, k, v = _qkv()
    mask = {
        "none": None,
        "bool": _bool_mask(),
        "float": torch.zeros(B, 1, 1, T).masked_fill(~_bool_mask(), float("-inf")),
        "per-head": _bool_mask().expand(B, HEADS, 1, T).clone(),
    }[mask_kind]
    module = _Module()
    ours, weights = da._attention_forward(module, q, k, v, mask, scaling=0.3)
    reference, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    assert weights is None and ours.shape == reference.shape == (B, 1, HEADS, D)
    assert torch.allclose(ours, reference, atol=1e-6), (ours - reference).abs().max()


def test_longer_queries_and_dropout_go_to_transformers_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = da._single_query_attention
    monkeypatch.setattr(da, "_single_query_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    module = _Module()
    q, k, v = _qkv(q_len=4)
    out, _ = da._attention_forward(module, q, k, v, None, scaling=0.3)
    assert torch.allclose(out, sdpa_attention_forward(module, q, k, v, None, scaling=0.3)[0])
    da._attention_forward(module, *_qkv(), None, dropout=0.1, scaling=0.3)
    assert calls == []
    da._attention_forward(module, *_qkv(), None, scaling=0.3)
    assert calls == [1]


def test_decode_attention_is_scoped_and_restored_on_error() -> None:
    model = build_tiny_backbone().model
    assert model.config._attn_implementation == "sdpa"
    with da.decode_attention(model):
        assert model.config._attn_implementation == da.IMPLEMENTATION
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="boom"), da.decode_attention(model):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"  # another implementation is left alone
    with da.decode_attention(model):
        assert model.config._attn_implementation == "eager"


def test_greedy_decoding_takes_the_matmul_path_and_matches_model_generate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Equal-length prompts (no mask, SDPA's flash kernel before) and padded ones (a mask):
    the same tokens as ``model.generate`` in float32, with every decode step on our path
    (for a model the hand-written Llama step does not cover: test_llama_decode.py)."""
    monkeypatch.setattr(llama_decode, "supports", lambda _model: False)
    calls: list[int] = []
    real = da._single_query_attention
    monkeypatch.setattr(da, "_single_query_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    backbone = build_tiny_backbone()
    tok = backbone.tokenizer
    for texts in (["bread and butter", "cats and dogs"], ["hi", "the quick brown fox jumps over it"]):
        chats = [f"<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n" for t in texts]
        prompts = [tok(c)["input_ids"] for c in chats]
        calls.clear()
        fast = generate_responses(backbone.model, tok, prompts, max_new_tokens=8)
        assert calls, "decode steps must use the single-query path"
        assert fast == generate_responses_hf(backbone.model, tok, prompts, max_new_tokens=8)
    assert backbone.model.config._attn_implementation == "sdpa"
