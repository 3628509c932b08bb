"""The encoder LoRA option, the alignment losses and the fast greedy decoder (tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_tiny_backbone, build_tiny_encoder, build_tiny_teacher

from l2vg_retrieval.backbones import weights_fingerprint
from l2vg_retrieval.batching import length_batches
from l2vg_retrieval.config import EncoderConfig, EncoderLoraConfig
from l2vg_retrieval.encoder import CheckpointError, L2VGEncoder
from l2vg_retrieval.generation import generate_responses, generate_responses_hf
from l2vg_retrieval.training.trainer import TrainExample, compute_losses, reconstruction_loss

LORA = {"r": 4, "alpha": 8.0}


def _lora_encoder(**overrides: object) -> L2VGEncoder:
    return build_tiny_encoder(encoder_lora=EncoderLoraConfig(**LORA), **overrides)


def _batch(encoder: L2VGEncoder, n: int = 4) -> list[TrainExample]:
    gen = torch.Generator().manual_seed(1)
    eos = encoder.tokenizer.eos_token_id
    texts = ["what is the capital of France?", "how do I bake bread?", "the quick brown fox", "numbers"]
    out = []
    for i in range(n):
        ids = encoder.tokenizer(texts[(i + 1) % 4], add_special_tokens=False)["input_ids"]
        target = torch.nn.functional.normalize(torch.randn(encoder.dim, generator=gen), dim=0)
        out.append(TrainExample(texts[i % 4], (*ids, eos), target))
    return out


def _base_state(encoder: L2VGEncoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in encoder.lm.state_dict().items() if "lora_" not in k}


def test_lora_trains_and_leaves_the_backbone_bit_identical() -> None:
    encoder = _lora_encoder()
    before = _base_state(encoder)
    fingerprint = encoder.backbone_fingerprint
    params = encoder.trainable_parameters()
    lora = encoder.adapter.parameters()
    assert lora and all(p.requires_grad for p in lora)
    assert not any(p.requires_grad for n, p in encoder.lm.named_parameters() if "lora_" not in n)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    lora_before = [p.detach().clone() for p in lora]
    for _ in range(3):
        recon, align = compute_losses(encoder, _batch(encoder), [None] * 4, align_kind="cosine")
        optimizer.zero_grad()
        (recon + align).backward()
        optimizer.step()
        encoder.clear_caches()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(lora_before, lora, strict=True))
    after = _base_state(encoder)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert weights_fingerprint(encoder.lm) == fingerprint


def test_lora_is_active_only_in_the_encoding_pass() -> None:
    encoder = _lora_encoder()
    with torch.no_grad():
        for p in encoder.adapter.parameters():
            p.normal_(0, 0.5)  # a LoRA that visibly changes outputs (lora_B starts at zero)
    plain = build_tiny_encoder()  # same backbone weights and seed, no LoRA
    plain.load_trainable_state({k: v for k, v in encoder.trainable_state().items() if "lora" not in k})
    ids = encoder.tokenize(["what is the capital of France?"], None)
    with torch.no_grad():
        # Encoding differs: the adapter is on there.
        assert not torch.allclose(encoder.compression_states(ids), plain.compression_states(ids), atol=1e-4)
        # Reconstruction and decoding see the unadapted LM: identical given the same soft prompts.
        soft = encoder.soft_prompts_from_ids(ids)
        response = [tuple(encoder.tokenizer("Paris", add_special_tokens=False)["input_ids"])]
        assert torch.allclose(
            reconstruction_loss(encoder, soft, response), reconstruction_loss(plain, soft, response)
        )
        logits = encoder.lm(input_ids=torch.tensor(ids)).logits
        assert torch.allclose(logits, plain.lm(input_ids=torch.tensor(ids)).logits)


def test_lora_encoder_is_batch_invariant_and_caches_prefix_correctly() -> None:
    encoder = _lora_encoder()
    with torch.no_grad():
        for p in encoder.adapter.parameters():
            p.normal_(0, 0.3)
    encoder.clear_caches()
    texts = ["capital of France?", "how do I bake bread at home with flour and water and salt?"]
    alone = encoder.encode_query(texts[0])
    together = encoder.encode_query(texts, batch_size=2)[0]
    again = encoder.encode_query(texts[0])  # the cached prefix path
    assert abs(alone - together).max() < 1e-4
    assert abs(alone - again).max() < 1e-5


def test_inference_runs_one_fused_pass_on_merged_lora_weights_equal_to_the_training_path() -> None:
    """Without autograd the LoRA is merged into cached weights and the text and special
    tokens run as one pass; with autograd (training) peft's side path and two passes run.
    Both compute the same function, and the backbone's own weights stay untouched."""
    encoder = _lora_encoder()
    with torch.no_grad():
        for p in encoder.adapter.parameters():
            p.normal_(0, 0.3)
    before = _base_state(encoder)
    bases = [m.base_layer.weight for m in encoder.lm.modules() if hasattr(m, "base_layer")]
    texts = ["capital of France?", "how do I bake bread at home with flour and water and salt?"]
    ids = encoder.tokenize(texts, encoder.config.query_instruction)
    hint = encoder.prefix_hint(encoder.config.query_instruction)
    calls = []
    hook = encoder.decoder_layers()[0].register_forward_hook(lambda *_: calls.append(1))

    def run(grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        states: list[torch.Tensor] = []
        with torch.set_grad_enabled(grad), encoder._adapter_scope():
            out = encoder._compression_states(ids, hint, answer_states=states, probe_layer=1)
        return out.detach(), states[0].detach()

    run(False)  # caches the shared prefix
    calls.clear()
    fused, fused_states = run(False)
    assert len(calls) == 1  # one pass: text and special tokens together
    calls.clear()
    split, split_states = run(True)
    assert len(calls) == 3  # training: prefix (fresh), text, special tokens
    hook.remove()
    assert torch.allclose(fused, split, atol=2e-4) and torch.allclose(fused_states, split_states, atol=2e-4)
    # A changed LoRA invalidates the merged copy by itself (the cached prefix states must be
    # cleared, as training does after every step).
    with torch.no_grad():
        for p in encoder.adapter.parameters():
            p.add_(0.05)
    encoder._prefix_kv.clear()
    changed, _ = run(False)
    assert not torch.allclose(changed, fused, atol=1e-2)
    assert torch.allclose(changed, run(True)[0], atol=2e-4)
    after = _base_state(encoder)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(a is b for a, b in zip(bases, [m.base_layer.weight for m in encoder.lm.modules()
                                              if hasattr(m, "base_layer")], strict=True))  # fmt: skip


def test_lora_checkpoint_round_trip_and_mismatch(tmp_path: Path) -> None:
    encoder = _lora_encoder()
    with torch.no_grad():
        for p in encoder.adapter.parameters():
            p.normal_(0, 0.3)
    encoder.clear_caches()
    expected = encoder.encode_query("capital of France?")
    encoder.save_pretrained(tmp_path / "ckpt")
    loaded = L2VGEncoder.from_pretrained(
        tmp_path / "ckpt", backbone=build_tiny_backbone(), teacher=build_tiny_teacher(), dtype="float32"
    )
    assert abs(loaded.encode_query("capital of France?") - expected).max() < 1e-5
    assert loaded.fingerprint == encoder.fingerprint
    # Loading LoRA weights into an encoder without a LoRA (or the reverse) is refused.
    config = EncoderConfig(
        backbone="tiny-random-llama", teacher="tiny-random-bert", n_thought=2, n_compression=3
    )
    plain = L2VGEncoder(config, build_tiny_backbone(), teacher_dim=32, device="cpu", dtype="float32")
    with pytest.raises(CheckpointError):
        plain.load_trainable_state(encoder.trainable_state())


def test_a_trained_lora_grows_in_rank_computing_the_same_update_and_its_new_directions_train(
    tmp_path: Path,
) -> None:
    """A larger adapter warm-started from a trained one starts as exactly that encoder (the
    saved rows and columns in place, B rescaled for the new alpha/r, the new columns of B
    zero), and training moves the new directions: their gradients are not zero."""
    trained = _lora_encoder()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for p in trained.adapter.parameters():
            p.normal_(0, 0.3)
    trained.clear_caches()
    expected = trained.encode(["capital of France?", "how do I bake bread?"])
    trained.save_pretrained(tmp_path / "r4")
    grown = build_tiny_encoder(encoder_lora=EncoderLoraConfig(r=12, alpha=6.0))
    assert grown.warm_start_from_checkpoint(tmp_path / "r4") == []
    assert abs(grown.encode(["capital of France?", "how do I bake bread?"]) - expected).max() < 1e-5
    saved, state = trained.trainable_state(), grown.trainable_state()
    a_key = next(k for k in saved if k.endswith("lora_A.weight"))
    b_key = a_key.replace("lora_A", "lora_B")
    assert torch.equal(state[a_key][:4], saved[a_key]) and state[a_key][4:].abs().sum() > 0
    assert torch.allclose(state[b_key][:, :4], saved[b_key] * (8.0 / 4) / (6.0 / 12))
    assert torch.equal(state[b_key][:, 4:], torch.zeros_like(state[b_key][:, 4:]))
    recon, align = compute_losses(grown, _batch(grown), [None] * 4, align_kind="cosine")
    (recon + align).backward()
    b_param = dict(grown.adapter.named_parameters())[b_key.removeprefix("encoder_lora.")]
    assert b_param.grad is not None and b_param.grad[:, 4:].abs().sum() > 0
    # A LoRA cannot shrink, nor move to other modules.
    with pytest.raises(ValueError, match="only grow"):
        build_tiny_encoder(encoder_lora=EncoderLoraConfig(r=2, alpha=4.0)).warm_start_from_checkpoint(
            tmp_path / "r4"
        )
    with pytest.raises(ValueError, match="same modules"):
        build_tiny_encoder(
            encoder_lora=EncoderLoraConfig(r=8, alpha=16.0, target_modules=("q_proj", "v_proj"))
        ).warm_start_from_checkpoint(tmp_path / "r4")


def test_two_lora_encoders_share_one_backbone_without_interfering() -> None:
    backbone = build_tiny_backbone()
    config = EncoderConfig(
        backbone="tiny-random-llama",
        teacher="tiny-random-bert",
        n_thought=2,
        n_compression=3,
        encoder_lora=EncoderLoraConfig(**LORA),
    )
    first = L2VGEncoder(config, backbone, teacher_dim=32, device="cpu", dtype="float32")
    second = L2VGEncoder(config, backbone, teacher_dim=32, device="cpu", dtype="float32")
    with torch.no_grad():
        for p in second.adapter.parameters():
            p.normal_(0, 0.5)
    second.clear_caches()
    reference = first.encode_query("capital of France?")
    second.encode_query("capital of France?")
    assert abs(first.encode_query("capital of France?") - reference).max() < 1e-6
    assert first.backbone_fingerprint == second.backbone_fingerprint


def test_cosine_alignment_loss_is_scale_free() -> None:
    encoder = build_tiny_encoder()
    batch = _batch(encoder)
    with torch.no_grad():
        _, cosine = compute_losses(encoder, batch, [None] * 4, align_kind="cosine", with_recon=False)
        _, mse = compute_losses(encoder, batch, [None] * 4, align_kind="mse", with_recon=False)
    assert 0.0 <= float(cosine) <= 2.0
    with torch.no_grad():
        encoder.align_head.weight.mul_(10.0)
        encoder.align_head.bias.mul_(10.0)
        _, cosine_scaled = compute_losses(encoder, batch, [None] * 4, align_kind="cosine", with_recon=False)
        _, mse_scaled = compute_losses(encoder, batch, [None] * 4, align_kind="mse", with_recon=False)
    assert abs(float(cosine_scaled) - float(cosine)) < 1e-5
    assert abs(float(mse_scaled) - float(mse)) > 1e-3  # MSE depends on the scale


def test_fast_greedy_decoder_matches_model_generate_in_fp32() -> None:
    backbone = build_tiny_backbone()
    tok = backbone.tokenizer
    texts = ["what is the capital of France?", "bread", "the quick brown fox jumps", "numbers 0123"]
    prompts = [tok(f"<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n")["input_ids"] for t in texts]
    fast = generate_responses(backbone.model, tok, prompts, max_new_tokens=12)
    reference = generate_responses_hf(backbone.model, tok, prompts, max_new_tokens=12)
    assert fast == reference
    # The repetition penalty is compared where it is used, decoding soft prompts
    # (test_llama_decode.py): with prompt ids model.generate also counts the prompt's tokens.


def test_length_batches_cover_every_item_once_and_group_equal_lengths() -> None:
    lengths = [5, 7, 5, 5, 9, 7, 5, 3, 7, 7]
    batches = length_batches(lengths, 2, window=100)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    assert all(len(b) <= 2 for b in batches)
    equal = [b for b in batches if len({lengths[i] for i in b}) == 1 and len(b) == 2]
    assert len(equal) == 4  # two batches of length 5 and two of length 7
    with pytest.raises(ValueError):
        length_batches(lengths, 0)


def test_length_batches_cap_padded_tokens_per_batch() -> None:
    lengths = [10] * 6 + [12, 15, 40, 41, 90, 200]
    batches = length_batches(lengths, 4, window=100, max_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 4 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100), b
    assert [lengths.index(200)] in batches  # over the budget alone: a batch of its own
    assert length_batches(lengths, 4, window=100, max_tokens=None) != batches  # the cap changes it
    with pytest.raises(ValueError, match="max_tokens"):
        length_batches(lengths, 4, max_tokens=0)
