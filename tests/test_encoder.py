"""L2VGEncoder properties on a tiny random Llama: invariance, truncation, I/O, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_encoder

from l2vg_retrieval.encoder import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, L2VGEncoder

TEXTS = [
    "what is the capital of France?",
    "bake bread",
    "a much longer text about the quick brown fox that jumps over the lazy dog " * 4,
    "retrieval with generative embeddings",
]


def test_single_string_gives_one_unit_vector(tiny_encoder: L2VGEncoder) -> None:
    vec = tiny_encoder.encode("what is the capital of France?")
    assert vec.shape == (tiny_encoder.dim,)
    assert vec.dtype == np.float32
    assert np.isclose(np.linalg.norm(vec), 1.0, atol=1e-5)


def test_batch_invariance_alone_vs_padded_vs_batch_size(tiny_encoder: L2VGEncoder) -> None:
    alone = np.stack([tiny_encoder.encode(t) for t in TEXTS])
    together = tiny_encoder.encode(TEXTS, batch_size=len(TEXTS))
    pairs = tiny_encoder.encode(TEXTS, batch_size=2)
    assert np.abs(alone - together).max() < 1e-4
    assert np.abs(alone - pairs).max() < 1e-4
    # Unnormalised outputs too: normalisation must not hide a scale difference.
    raw_alone = tiny_encoder.encode(TEXTS[1], normalize_embeddings=False)
    raw_batch = tiny_encoder.encode(TEXTS, normalize_embeddings=False, batch_size=4)[1]
    assert np.abs(raw_alone - raw_batch).max() < 1e-4


def test_different_texts_give_different_vectors(tiny_encoder: L2VGEncoder) -> None:
    out = tiny_encoder.encode(TEXTS)
    assert np.abs(out[0] - out[1]).max() > 1e-3


def test_truncation_cuts_text_and_keeps_special_tokens() -> None:
    encoder = build_tiny_encoder(max_text_tokens=16)
    long_text = "the quick brown fox jumps over the lazy dog " * 200
    ids = encoder.tokenize([long_text], prompt="retrieve:")[0]
    suffix = list(encoder.template.suffix_ids)
    assert ids[-len(suffix) :] == suffix, "the template's end must survive truncation"
    text_ids = encoder.tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(text_ids)
    # Inputs that differ only after the cut embed identically: only text was cut.
    longer = long_text + " and something else entirely different at the end"
    assert np.abs(encoder.encode(long_text) - encoder.encode(longer)).max() < 1e-6
    states = encoder.compression_states([ids])
    assert states.shape == (1, encoder.config.n_compression, encoder.hidden_size)


def test_megabyte_string_is_truncated_not_crashing(tiny_encoder: L2VGEncoder) -> None:
    vec = tiny_encoder.encode("x" * 1_000_000)
    assert vec.shape == (tiny_encoder.dim,) and np.isfinite(vec).all()


def test_control_characters_are_cleaned(tiny_encoder: L2VGEncoder) -> None:
    dirty = tiny_encoder.encode("bake\x00 bread\x07")
    clean = tiny_encoder.encode("bake  bread ")
    assert np.abs(dirty - clean).max() < 1e-6
    assert np.isfinite(tiny_encoder.encode("lone surrogate \ud800 here")).all()


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ("", ValueError),
        ("   \n\t", ValueError),
        (None, TypeError),
        (42, TypeError),
        (b"bytes", TypeError),
        (["ok", None], TypeError),
        (["ok", ""], ValueError),
    ],
)
def test_bad_input_is_a_clear_error(tiny_encoder: L2VGEncoder, bad: object, error: type) -> None:
    with pytest.raises(error, match=r"str|empty|None|bytes"):
        tiny_encoder.encode(bad)


def test_empty_list_gives_zero_rows(tiny_encoder: L2VGEncoder) -> None:
    assert tiny_encoder.encode([]).shape == (0, tiny_encoder.dim)
    assert tiny_encoder.encode([], convert_to_tensor=True).shape == (0, tiny_encoder.dim)


def test_output_conversions(tiny_encoder: L2VGEncoder) -> None:
    as_tensor = tiny_encoder.encode(TEXTS[:2], convert_to_tensor=True)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (2, tiny_encoder.dim)
    as_list = tiny_encoder.encode(TEXTS[:2], convert_to_numpy=False)
    assert isinstance(as_list, list) and len(as_list) == 2
    assert np.allclose(as_tensor.numpy(), tiny_encoder.encode(TEXTS[:2]), atol=1e-6)


def test_query_and_document_prompts_differ(tiny_encoder: L2VGEncoder) -> None:
    q = tiny_encoder.encode_query("bake bread")
    d = tiny_encoder.encode_document("bake bread")
    assert np.abs(q - d).max() > 1e-4
    custom = tiny_encoder.encode_query("bake bread", instruction="Find recipes:")
    assert np.abs(q - custom).max() > 1e-4


def test_teacher_document_mode_uses_teacher_space() -> None:
    encoder = build_tiny_encoder(document_mode="teacher")
    doc = encoder.encode_document(["bake bread", "capital of France"])
    assert doc.shape == (2, encoder.dim)
    assert np.allclose(doc, encoder.teacher.encode(["bake bread", "capital of France"]), atol=1e-6)


def test_decode_stops_per_row_and_accepts_soft_prompts(tiny_encoder: L2VGEncoder) -> None:
    outs = tiny_encoder.decode(TEXTS, max_new_tokens=5, batch_size=3)
    assert isinstance(outs, list) and len(outs) == len(TEXTS)
    assert all(isinstance(o, str) for o in outs)
    soft = tiny_encoder.soft_prompts(TEXTS[:2])
    assert soft.shape == (2, tiny_encoder.config.n_compression, tiny_encoder.hidden_size)
    assert tiny_encoder.decode(soft, max_new_tokens=5) == tiny_encoder.decode(TEXTS[:2], max_new_tokens=5)
    assert isinstance(tiny_encoder.decode(TEXTS[0], max_new_tokens=3), str)
    with pytest.raises(ValueError, match="cannot be decoded"):
        tiny_encoder.decode(torch.zeros(2, tiny_encoder.dim))


def test_decode_rows_stop_at_eos_independently() -> None:
    """A batch mixing rows that hit EOS at once with rows that never do decodes each row
    exactly as it decodes alone: finished rows stop, the others run to max_new_tokens."""
    encoder = build_tiny_encoder()
    eos = encoder.tokenizer.eos_token_id
    texts = [f"question number {i} about bread and foxes" for i in range(8)]
    with torch.no_grad():
        # Tied embeddings: point the EOS row along (h0 - h1), the difference of rows 0 and
        # 1's first-step hidden states, and scale it up: EOS then wins for row 0 and loses
        # for row 1, so one row stops at once while the other keeps generating.
        soft = encoder.soft_prompts(texts[:2])
        hidden = encoder.lm.get_decoder()(inputs_embeds=soft).last_hidden_state[:, -1]
        direction = hidden[0] - hidden[1]
        encoder.lm.get_input_embeddings().weight[eos] = 1e3 * direction / direction.norm()
    batch = encoder.decode(texts, max_new_tokens=6, batch_size=8)
    alone = [encoder.decode(t, max_new_tokens=6) for t in texts]
    assert batch == alone
    token_counts = [len(encoder.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in batch]
    assert min(token_counts) == 0, "some row should have stopped at EOS straight away"
    assert max(token_counts) > 0, "some row should have kept generating"


def test_frozen_backbone_after_a_training_step(tiny_encoder: L2VGEncoder) -> None:
    from l2vg_retrieval.training.trainer import TrainExample, compute_losses

    before = {k: v.clone() for k, v in tiny_encoder.lm.state_dict().items()}
    trainable_before = {k: v.clone() for k, v in tiny_encoder.trainable_state().items()}
    batch = [
        TrainExample("bake bread", (5, 6, 7, tiny_encoder.tokenizer.eos_token_id), torch.randn(32)),
        TrainExample("capital of France", (8, 9, tiny_encoder.tokenizer.eos_token_id), torch.randn(32)),
    ]
    params = [p for p in tiny_encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    recon, align = compute_losses(tiny_encoder, batch, [None, "retrieve:"])
    (recon + align).backward()
    assert all(p.grad is None for p in tiny_encoder.lm.parameters()), "no weight gradients for the backbone"
    optimizer.step()
    for key, value in tiny_encoder.lm.state_dict().items():
        assert torch.equal(value, before[key]), f"backbone tensor {key} changed"
    changed = [
        k for k, v in tiny_encoder.trainable_state().items() if not torch.equal(v, trainable_before[k])
    ]
    assert set(changed) == set(trainable_before), f"only some trainable tensors moved: {changed}"
    assert sum(p.numel() for p in params) == sum(v.numel() for v in trainable_before.values())


def test_save_load_round_trip(tiny_encoder: L2VGEncoder, tmp_path) -> None:
    from conftest import build_tiny_backbone, build_tiny_teacher

    with torch.no_grad():
        tiny_encoder.special_tokens.add_(0.5)
    tiny_encoder.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    loaded = L2VGEncoder.from_pretrained(
        tmp_path, backbone=build_tiny_backbone(), teacher=build_tiny_teacher(), dtype="float32"
    )
    assert np.array_equal(loaded.encode(TEXTS), tiny_encoder.encode(TEXTS))
    assert loaded.fingerprint == tiny_encoder.fingerprint


def test_checkpoint_for_another_backbone_is_refused(tiny_encoder: L2VGEncoder, tmp_path) -> None:
    from conftest import build_tiny_backbone

    tiny_encoder.save_pretrained(tmp_path)
    other = build_tiny_backbone(seed=1)  # same shapes, different weights
    with pytest.raises(CheckpointError, match="fingerprint"):
        L2VGEncoder.from_pretrained(tmp_path, backbone=other, dtype="float32")


def test_wrong_dims_are_refused(tiny_encoder: L2VGEncoder, tmp_path) -> None:
    from conftest import build_tiny_backbone

    tiny_encoder.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["config"]["n_compression"] = 7
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        L2VGEncoder.from_pretrained(tmp_path, backbone=build_tiny_backbone(), dtype="float32")


@pytest.mark.parametrize("damage", ["weights", "config", "missing"])
def test_corrupt_checkpoint_is_refused(tiny_encoder: L2VGEncoder, tmp_path, damage: str) -> None:
    from conftest import build_tiny_backbone

    tiny_encoder.save_pretrained(tmp_path)
    if damage == "weights":
        data = (tmp_path / WEIGHTS_FILE).read_bytes()
        (tmp_path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "config":
        (tmp_path / CONFIG_FILE).write_text("{not json")
    else:
        (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError):
        L2VGEncoder.from_pretrained(tmp_path, backbone=build_tiny_backbone(), dtype="float32")


def test_concurrent_encode_from_threads(tiny_encoder: L2VGEncoder) -> None:
    from concurrent.futures import ThreadPoolExecutor

    expected = tiny_encoder.encode(TEXTS)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: tiny_encoder.encode(TEXTS), range(8)))
    for result in results:
        assert np.abs(result - expected).max() < 1e-5


def test_cached_prefix_passes_match_one_full_forward(tiny_encoder: L2VGEncoder) -> None:
    """The staged KV-cache computation equals running [text | special tokens] in one pass."""
    prompt = "retrieve:"
    ids = tiny_encoder.tokenize([TEXTS[0]], prompt)[0]
    lm = tiny_encoder.lm
    with torch.no_grad():
        embeds = torch.cat(
            [lm.get_input_embeddings()(torch.tensor([ids])), tiny_encoder.special_tokens.unsqueeze(0)], dim=1
        )
        full = lm.get_decoder()(inputs_embeds=embeds).last_hidden_state
        reference = full[:, -tiny_encoder.config.n_compression :]
        staged = tiny_encoder.compression_states([ids], tiny_encoder.prefix_hint(prompt))
        # Second call reuses the cached prefix: same result.
        again = tiny_encoder.compression_states([ids], tiny_encoder.prefix_hint(prompt))
    assert torch.allclose(staged, reference, atol=1e-5)
    assert torch.equal(staged, again)


def test_a_missing_default_checkpoint_names_the_install_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import l2vg_retrieval.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "DEFAULT_CHECKPOINT", tmp_path / "gone")
    with pytest.raises(CheckpointError, match=r"packaged default checkpoint is missing.*make install"):
        L2VGEncoder.from_pretrained()
    with pytest.raises(CheckpointError, match="no checkpoint folder at"):
        L2VGEncoder.from_pretrained(tmp_path / "elsewhere")
