"""The encoder options of issue 12 on a tiny random Llama: early exit (L3Prune), Matryoshka
dimensions, latent-attention pooling (NV-Embed). Each default must be the original encoder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import build_tiny_backbone, build_tiny_encoder, build_tiny_teacher
from pydantic import ValidationError

from l2vg_retrieval.config import OPTION_FIELDS, EncoderConfig
from l2vg_retrieval.encoder import CONFIG_FILE, CheckpointError, L2VGEncoder
from l2vg_retrieval.training.trainer import TrainExample, compute_losses, nested_alignment_loss

TEXTS = [
    "what is the capital of France?",
    "bake bread",
    "a much longer text about the quick brown fox that jumps over the lazy dog " * 3,
]
N_LAYERS = 2  # conftest's tiny Llama
SMALL_LATENTS = {"n_latents": 16, "n_heads": 4}


@contextmanager
def layer_calls(encoder: L2VGEncoder) -> Iterator[list[int]]:
    """How many times each decoder layer of the shared backbone runs inside the block."""
    layers = encoder.lm.get_decoder().layers
    calls = [0] * len(layers)
    hooks = [
        layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(layers)
    ]
    try:
        yield calls
    finally:
        for hook in hooks:
            hook.remove()


def _examples(encoder: L2VGEncoder) -> list[TrainExample]:
    eos = encoder.tokenizer.eos_token_id
    return [
        TrainExample(
            "bake bread", (5, 6, 7, eos), torch.randn(32, generator=torch.Generator().manual_seed(1))
        ),
        TrainExample(
            "capital of France", (8, 9, eos), torch.randn(32, generator=torch.Generator().manual_seed(2))
        ),
    ]


def _perturb(encoder: L2VGEncoder) -> None:
    """Move every trainable tensor, so a round trip that dropped one would show."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in encoder.trainable_parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    encoder.clear_caches()


def _load(folder: Path, **kwargs: Any) -> L2VGEncoder:
    return L2VGEncoder.from_pretrained(
        folder, backbone=build_tiny_backbone(), teacher=build_tiny_teacher(), dtype="float32", **kwargs
    )


# ---------------------------------------------------------------------- early exit
def test_exit_at_full_depth_is_exactly_the_default_encoder() -> None:
    full = build_tiny_encoder()
    exited = build_tiny_encoder(exit_layer=N_LAYERS)
    for prompt in (None, "retrieve:"):  # with and without a cached shared prefix
        assert np.array_equal(exited.encode(TEXTS, prompt=prompt), full.encode(TEXTS, prompt=prompt))
        ids = full.tokenize(TEXTS[:1], prompt)
        assert torch.equal(exited.compression_states(ids), full.compression_states(ids))


def test_early_exit_runs_fewer_layers_and_changes_the_vectors() -> None:
    full, early = build_tiny_encoder(), build_tiny_encoder(exit_layer=1)
    with layer_calls(full) as calls_full:
        vectors_full = full.encode(TEXTS, prompt="retrieve:")
    with layer_calls(early) as calls_early:
        vectors_early = early.encode(TEXTS, prompt="retrieve:")
    assert calls_full[1] > 0 and calls_early[0] > 0
    assert calls_early[1] == 0, "the layer above the exit must never run in the encoding pass"
    assert np.abs(vectors_full - vectors_early).max() > 1e-3
    # The shared backbone itself is untouched: decoding still runs every layer.
    assert len(early.lm.get_decoder().layers) == N_LAYERS
    assert early.lm.config.num_hidden_layers == N_LAYERS
    with layer_calls(early) as calls_decode:
        early.decode(TEXTS[0], max_new_tokens=2)
    assert calls_decode[1] > 0


def test_early_exit_states_equal_layer_l_of_one_full_forward_with_the_final_norm() -> None:
    """The staged, KV-cached passes at exit layer 1 read exactly the full model's layer-1
    hidden state with the final norm applied (an independent reference)."""
    encoder = build_tiny_encoder(exit_layer=1)
    prompt = "retrieve:"
    ids = encoder.tokenize([TEXTS[0]], prompt)[0]
    body = encoder.lm.get_decoder()
    with torch.no_grad():
        embeds = torch.cat(
            [body.embed_tokens(torch.tensor([ids])), encoder.special_tokens.unsqueeze(0)], dim=1
        )
        hidden = body(inputs_embeds=embeds, output_hidden_states=True).hidden_states[1]
        reference = body.norm(hidden)[:, -encoder.config.n_compression :]
        staged = encoder.compression_states([ids], encoder.prefix_hint(prompt))
    assert torch.allclose(staged, reference, atol=1e-5)


def test_early_exit_trains_with_a_learned_norm_and_an_encoder_lora() -> None:
    encoder = build_tiny_encoder(exit_layer=1, exit_norm="learned", encoder_lora={"r": 2})
    assert encoder.exit_norm is not None
    # Starts as the final norm: the untrained vectors equal those with the model's norm.
    plain = build_tiny_encoder(exit_layer=1, encoder_lora={"r": 2})
    assert np.abs(encoder.encode(TEXTS) - plain.encode(TEXTS)).max() < 1e-5
    assert any(p is encoder.exit_norm.weight for p in encoder.trainable_parameters())
    recon, align = compute_losses(encoder, _examples(encoder), [None, "retrieve:"])
    assert recon is not None
    (recon + align).backward()
    assert encoder.exit_norm.weight.grad is not None and encoder.exit_norm.weight.grad.abs().sum() > 0
    state = encoder.adapter.state()  # type: ignore[union-attr]
    lora = dict(zip(state, encoder.adapter.parameters(), strict=True))  # type: ignore[union-attr]
    used = [p for k, p in lora.items() if ".layers.0." in k]
    unused = [p for k, p in lora.items() if ".layers.1." in k]
    assert used and any(p.grad is not None and p.grad.abs().sum() > 0 for p in used)
    assert unused and all(p.grad is None for p in unused), "the layer above the exit is never run"
    assert all(p.grad is None for p in encoder.lm.parameters() if not p.requires_grad)


def test_bad_exit_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="exit_layer 3 is outside"):
        build_tiny_encoder(exit_layer=3)
    with pytest.raises(ValidationError, match="only applies with an exit_layer"):
        EncoderConfig(exit_norm="learned")
    with pytest.raises(ValidationError):
        EncoderConfig(exit_layer=0)


# ---------------------------------------------------------------------- Matryoshka
def test_truncation_keeps_the_first_dims_then_renormalises(tiny_encoder: L2VGEncoder) -> None:
    raw = tiny_encoder.encode(TEXTS, normalize_embeddings=False)
    for m in (1, 8, 16):
        cut = tiny_encoder.encode(TEXTS, dim=m)
        assert cut.shape == (len(TEXTS), m)
        expected = raw[:, :m] / np.linalg.norm(raw[:, :m], axis=1, keepdims=True)
        assert np.abs(cut - expected).max() < 1e-5
        assert np.allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
        # Unnormalised: exactly the prefix of the full vector.
        assert np.array_equal(tiny_encoder.encode(TEXTS, dim=m, normalize_embeddings=False), raw[:, :m])
    assert np.array_equal(tiny_encoder.encode(TEXTS, dim=tiny_encoder.dim), tiny_encoder.encode(TEXTS))
    assert tiny_encoder.encode(TEXTS[0], dim=8).shape == (8,)
    assert tiny_encoder.encode([], dim=8).shape == (0, 8)


def test_truncate_dim_setting_equals_the_per_call_dim() -> None:
    full, small = build_tiny_encoder(), build_tiny_encoder(truncate_dim=8)
    assert small.dim == 8 and small.full_dim == full.dim == 32
    assert np.array_equal(small.encode(TEXTS), full.encode(TEXTS, dim=8))
    assert np.array_equal(small.encode_query(TEXTS), full.encode_query(TEXTS, dim=8))
    assert np.array_equal(small.encode_document(TEXTS), full.encode_document(TEXTS, dim=8))
    # A per-call dim overrides the setting, as in sentence-transformers.
    assert np.array_equal(small.encode(TEXTS, dim=32), full.encode(TEXTS))
    emb, answer = small.encode_with_answer_states(TEXTS, prompt="retrieve:")
    _, answer_full = full.encode_with_answer_states(TEXTS, prompt="retrieve:")
    assert emb.shape == (len(TEXTS), 8) and np.array_equal(answer, answer_full)
    assert np.array_equal(emb, full.encode(TEXTS, prompt="retrieve:", dim=8))


def test_teacher_mode_documents_are_truncated_the_same_way() -> None:
    encoder = build_tiny_encoder(document_mode="teacher", truncate_dim=8)
    docs = encoder.encode_document(TEXTS)
    raw = encoder.teacher.encode(TEXTS, normalize_embeddings=False)[:, :8]
    assert docs.shape == (len(TEXTS), 8)
    assert np.abs(docs - raw / np.linalg.norm(raw, axis=1, keepdims=True)).max() < 1e-5
    assert encoder.encode_document(TEXTS[0]).shape == (8,)
    assert encoder.encode_document(TEXTS, convert_to_tensor=True).shape == (len(TEXTS), 8)


@pytest.mark.parametrize("bad", [0, 33, -1, 2.5, True])
def test_bad_dims_are_refused(tiny_encoder: L2VGEncoder, bad: Any) -> None:
    with pytest.raises(ValueError, match=r"dim must be an integer in 1\.\.32"):
        tiny_encoder.encode(TEXTS, dim=bad)


def test_truncate_dim_larger_than_the_embedding_is_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.\.32"):
        build_tiny_encoder(truncate_dim=64)


def test_truncate_dim_enters_the_fingerprint_and_defaults_do_not() -> None:
    base = build_tiny_encoder()
    # Option fields at their defaults stay out of the fingerprinted config: old encoders
    # (the packaged default, existing Qdrant collections) keep their fingerprint.
    hashed = json.loads(base.config.model_dump_json(exclude=base.config.fingerprint_exclusions()))
    assert not set(OPTION_FIELDS) & set(hashed)
    assert build_tiny_encoder(truncate_dim=8).fingerprint != base.fingerprint
    assert build_tiny_encoder(truncate_dim=16).fingerprint != build_tiny_encoder(truncate_dim=8).fingerprint
    assert build_tiny_encoder(truncate_dim=8).fingerprint == build_tiny_encoder(truncate_dim=8).fingerprint


def test_nested_alignment_loss_averages_the_prefix_losses() -> None:
    generator = torch.Generator().manual_seed(0)
    emb, target = torch.randn(4, 32, generator=generator), torch.randn(4, 32, generator=generator)
    for kind in ("cosine", "mse"):
        from l2vg_retrieval.training.trainer import alignment_loss

        expected = sum(alignment_loss(emb[:, :m], target[:, :m], kind) for m in (32, 16, 8)) / 3
        assert torch.allclose(nested_alignment_loss(emb, target, kind, (32, 16, 8)), expected)
        assert torch.equal(nested_alignment_loss(emb, target, kind, None), alignment_loss(emb, target, kind))


def test_matryoshka_training_config_and_limits(tmp_path: Path) -> None:
    from l2vg_retrieval.training.config import TrainConfig
    from l2vg_retrieval.training.trainer import Trainer

    base = {"output_dir": str(tmp_path), "data": {"train_queries": str(tmp_path / "q.jsonl")}}
    config = TrainConfig.model_validate({**base, "matryoshka_dims": [384, 256, 128, 64]})
    assert config.matryoshka_dims == (384, 256, 128, 64)
    for bad in ([], [64, 64], [0, 8]):
        with pytest.raises(ValidationError):
            TrainConfig.model_validate({**base, "matryoshka_dims": bad})
    encoder = build_tiny_encoder()
    examples = _examples(encoder) * 4
    small = TrainConfig.model_validate(
        {**base, "matryoshka_dims": [32, 16, 8], "optim": {"batch_size": 2, "warmup_steps": 0}}
    )
    trainer = Trainer(encoder, examples, small)
    recon, align = trainer.train_step()
    assert recon is not None and np.isfinite(align)
    with pytest.raises(ValueError, match=r"\[64\] exceed the embedding's 32"):
        Trainer(encoder, examples, small.model_copy(update={"matryoshka_dims": (64, 8)}))


def test_qdrant_collection_stores_the_truncated_size_and_refuses_another(tmp_path: Path) -> None:
    from l2vg_retrieval.qdrant import CollectionMismatchError, QdrantIndexer

    small, full = build_tiny_encoder(truncate_dim=8), build_tiny_encoder()
    with QdrantIndexer(small, "docs", path=tmp_path, backend="local") as indexer:
        indexer.index([{"id": str(i), "text": t} for i, t in enumerate(TEXTS)], show_progress=False)
        size, _ = indexer.store.vector_params()
        assert size == 8 and indexer.meta["dim"] == 8
        assert indexer.meta["fingerprint"] == small.fingerprint != full.fingerprint
        hits = indexer.search(TEXTS[1], k=1)
        assert len(hits) == 1
    with pytest.raises(CollectionMismatchError, match=r"holds 8-d vectors .* produces 32-d .*truncate_dim"):
        QdrantIndexer(full, "docs", path=tmp_path, backend="local")
    # The same encoder at the same size reopens it.
    with QdrantIndexer(build_tiny_encoder(truncate_dim=8), "docs", path=tmp_path, backend="local") as again:
        assert again.count() == len(TEXTS)


# ---------------------------------------------------------------------- latent attention
def test_latent_pooling_shapes_and_an_untrained_pooler_is_mean_pooling() -> None:
    mean = build_tiny_encoder()
    latent = build_tiny_encoder(pooling="latent_attention", latent_attention=SMALL_LATENTS)
    pool = latent.latent_pool
    assert pool is not None and tuple(pool.latents.shape) == (16, latent.hidden_size)
    assert pool.attention.num_heads == 4
    soft = latent.soft_prompts(TEXTS)
    with torch.inference_mode():
        pooled = latent.pooled_soft_prompts(soft)
    assert pooled.shape == (len(TEXTS), latent.hidden_size)
    # Zero-initialised output projections: an untrained pooler is exactly a mean.
    assert torch.allclose(pooled, soft.mean(dim=1), atol=1e-6)
    assert np.abs(latent.encode(TEXTS) - mean.encode(TEXTS)).max() < 1e-5
    default = build_tiny_encoder(pooling="latent_attention")
    assert tuple(default.latent_pool.latents.shape) == (512, default.hidden_size)  # type: ignore[union-attr]
    assert default.latent_pool.attention.num_heads == 8  # type: ignore[union-attr]


def test_latent_pooling_trains_with_the_rest() -> None:
    encoder = build_tiny_encoder(pooling="latent_attention", latent_attention=SMALL_LATENTS)
    pooler_params = list(encoder.latent_pool.parameters())  # type: ignore[union-attr]
    trainable = {id(p) for p in encoder.trainable_parameters()}
    assert all(id(p) in trainable for p in pooler_params)
    before = {k: v.clone() for k, v in encoder.trainable_state().items()}
    optimizer = torch.optim.AdamW(encoder.trainable_parameters(), lr=1e-2)
    for _ in range(2):  # the second step reaches what sits behind the zero-initialised outputs
        optimizer.zero_grad()
        recon, align = compute_losses(encoder, _examples(encoder), [None, "retrieve:"], align_kind="cosine")
        (recon + align).backward()  # type: ignore[operator]
        optimizer.step()
    moved = {k for k, v in encoder.trainable_state().items() if not torch.equal(v, before[k])}
    assert {k for k in before if k.startswith("latent_pool.")} <= moved
    soft = encoder.soft_prompts(TEXTS)
    with torch.inference_mode():
        assert not torch.allclose(encoder.pooled_soft_prompts(soft), soft.mean(dim=1), atol=1e-4)


def test_latent_pooling_heads_must_divide_the_hidden_size() -> None:
    with pytest.raises(ValueError, match="n_heads=6 must divide the hidden size 64"):
        build_tiny_encoder(pooling="latent_attention", latent_attention={"n_latents": 4, "n_heads": 6})


def test_refit_solves_the_head_on_latent_pooled_features() -> None:
    from l2vg_retrieval.training.refit import mean_soft_prompts, refit_alignment_head

    encoder = build_tiny_encoder(pooling="latent_attention", latent_attention=SMALL_LATENTS)
    _perturb(encoder)  # a pooler that is no longer a plain mean
    examples = [
        TrainExample(f"{t} {i}", (5,), torch.randn(32, generator=torch.Generator().manual_seed(i)))
        for i, t in enumerate(TEXTS * 4)
    ]
    features = mean_soft_prompts(encoder, [ex.query for ex in examples], None)
    soft = encoder.soft_prompts([ex.query for ex in examples])
    with torch.inference_mode():
        assert torch.allclose(features, encoder.pooled_soft_prompts(soft))
    assert not torch.allclose(features, soft.mean(dim=1), atol=1e-4)
    info = refit_alignment_head(encoder, examples, [None], ridges=(1e-6, 1e-3))
    assert info["align_mse_after_refit"] < info["align_mse_before_refit"]


# ---------------------------------------------------------------------- checkpoints
OPTION_CASES = {
    "early-exit": {"exit_layer": 1},
    "early-exit-learned-norm": {"exit_layer": 1, "exit_norm": "learned"},
    "matryoshka": {"truncate_dim": 8},
    "latent-attention": {"pooling": "latent_attention", "latent_attention": SMALL_LATENTS},
    "all-three": {
        "exit_layer": 1,
        "exit_norm": "learned",
        "truncate_dim": 16,
        "pooling": "latent_attention",
        "latent_attention": {"n_latents": 8, "n_heads": 2, "mlp_hidden": 24},
    },
}


@pytest.mark.parametrize("options", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_save_load_round_trip_with_options(options: dict[str, Any], tmp_path: Path) -> None:
    encoder = build_tiny_encoder(**options)
    _perturb(encoder)
    encoder.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert EncoderConfig.model_validate(meta["config"]) == encoder.config
    assert set(options) <= set(meta["config"]) and meta["embedding_dim"] == encoder.dim
    loaded = _load(tmp_path)
    assert loaded.config == encoder.config
    assert np.array_equal(loaded.encode(TEXTS), encoder.encode(TEXTS))
    assert loaded.fingerprint == encoder.fingerprint


def test_old_checkpoint_without_option_keys_loads_as_the_default(tmp_path: Path) -> None:
    encoder = build_tiny_encoder()
    _perturb(encoder)
    encoder.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    for key in OPTION_FIELDS:
        meta["config"].pop(key)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    loaded = _load(tmp_path)
    assert loaded.config == encoder.config
    assert np.array_equal(loaded.encode(TEXTS), encoder.encode(TEXTS))
    assert loaded.fingerprint == encoder.fingerprint
    # A size chosen at load time applies on top of an old checkpoint.
    assert np.array_equal(_load(tmp_path, truncate_dim=8).encode(TEXTS), encoder.encode(TEXTS, dim=8))


LATENT = {"pooling": "latent_attention", "latent_attention": SMALL_LATENTS}


@pytest.mark.parametrize(
    ("saved", "claimed", "message"),
    [
        ({}, {"pooling": "latent_attention"}, r"missing \['latent_pool\."),
        (LATENT, {"pooling": "mean"}, r"unexpected \['latent_pool\."),
        ({"exit_layer": 1}, {"exit_layer": 1, "exit_norm": "learned"}, r"missing \['exit_norm.weight'\]"),
        (LATENT, {"latent_attention": {"n_latents": 4}}, "shape"),
    ],
    ids=["latent-weights-missing", "latent-weights-unexpected", "exit-norm-missing", "latent-count"],
)
def test_checkpoint_whose_tensors_disagree_with_its_config_is_refused(
    saved: dict[str, Any], claimed: dict[str, Any], message: str, tmp_path: Path
) -> None:
    build_tiny_encoder(**saved).save_pretrained(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["config"].update(claimed)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        _load(tmp_path)


# ---------------------------------------------------------------------- warm start
@pytest.mark.parametrize(
    "options",
    [{"exit_layer": 1}, LATENT, {"exit_layer": 1, "exit_norm": "learned"}],
    ids=["early-exit", "latent-attention", "learned-exit-norm"],
)
def test_warm_start_carries_every_shared_tensor_and_starts_options_as_the_original(
    options: dict[str, Any],
) -> None:
    trained = build_tiny_encoder()
    _perturb(trained)
    fresh_option = build_tiny_encoder(**options)
    started = trained.trainable_state()
    new_names = fresh_option.warm_start_from(started)
    state = fresh_option.trainable_state()
    assert set(new_names) == set(state) - set(started)
    assert all(n.startswith(("latent_pool.", "exit_norm.")) for n in new_names)
    for key, value in started.items():
        assert torch.equal(state[key].float(), value.float()), key
    # Latent pooling starts as exact mean pooling and a learned norm as the final norm: with
    # the same exit depth the warm-started encoder equals the trained one plus that option.
    reference = build_tiny_encoder(exit_layer=options.get("exit_layer"))
    reference.warm_start_from(started)
    assert np.allclose(fresh_option.encode(TEXTS), reference.encode(TEXTS), atol=1e-5)


def test_warm_start_refuses_tensors_that_do_not_fit() -> None:
    trained = build_tiny_encoder(**LATENT).trainable_state()
    with pytest.raises(CheckpointError, match="no place for"):
        build_tiny_encoder().warm_start_from(trained)
    core = build_tiny_encoder().trainable_state()
    core.pop("align_head.weight")
    with pytest.raises(CheckpointError, match="lacks core tensors"):
        build_tiny_encoder().warm_start_from(core)
    other_shape = build_tiny_encoder(n_compression=4).trainable_state()
    with pytest.raises(CheckpointError, match="shape"):
        build_tiny_encoder().warm_start_from(other_shape)


def test_latent_pooling_equals_torch_multihead_attention_with_its_own_weights() -> None:
    """The latents are projected once per call, not per row; the result must be what
    nn.MultiheadAttention computes on the latents expanded to every row."""
    from l2vg_retrieval.config import LatentAttentionConfig
    from l2vg_retrieval.pooling import LatentAttentionPooling

    pool = LatentAttentionPooling(32, LatentAttentionConfig(**SMALL_LATENTS), seed=1)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for param in pool.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    states = torch.randn(5, 3, 32, generator=generator)
    queries = pool.attention_norm(states)
    latents = pool.latents.unsqueeze(0).expand(5, -1, -1)
    expected, _ = pool.attention(queries, latents, latents, need_weights=False)
    assert torch.allclose(pool._attend_to_latents(queries), expected, atol=1e-5)
    assert not torch.allclose(expected, torch.zeros_like(expected))
