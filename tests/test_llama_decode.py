"""The hand-written Llama decode step (l2vg_retrieval.llama_decode): the same tokens as the
model's own steps and ``model.generate`` in float32, through padding, finished rows leaving
the batch and the repetition penalty, and only for the layouts it implements."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import build_tiny_backbone, build_tiny_teacher

from l2vg_retrieval import llama_decode
from l2vg_retrieval.generation import _eos_ids, generate_responses, generate_responses_hf, greedy_decode

TEXTS = ["hi", "the quick brown fox jumps over it", "numbers 0123", "what is the capital of France?"]


def _prompts(tokenizer: object, texts: list[str]) -> list[list[int]]:
    return [
        tokenizer(f"<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n")["input_ids"]  # type: ignore[operator]
        for t in texts
    ]


def _decode(
    model: torch.nn.Module, tokenizer: object, prompts: list[list[int]], eos: list[int], n: int
) -> list[list[int]]:
    from l2vg_retrieval.batching import pad_left

    ids, mask = pad_left(prompts, tokenizer.pad_token_id)  # type: ignore[attr-defined]
    return greedy_decode(model, eos_ids=eos, max_new_tokens=n, input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("texts", [TEXTS[:1] * 3, TEXTS], ids=["equal-length", "padded"])
def test_hand_written_steps_match_model_generate(texts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = build_tiny_backbone(initializer_range=0.1)
    tok, model = backbone.tokenizer, backbone.model
    assert llama_decode.supports(model)
    calls: list[int] = []
    real_call = llama_decode.LlamaDecodeStep.__call__
    monkeypatch.setattr(
        llama_decode.LlamaDecodeStep, "__call__", lambda self, *a: calls.append(1) or real_call(self, *a)
    )
    prompts = _prompts(tok, texts)
    fast = generate_responses(model, tok, prompts, max_new_tokens=12)
    assert len(calls) == 11, "every step after the prompt's pass goes through the hand-written step"
    assert fast == generate_responses_hf(model, tok, prompts, max_new_tokens=12)
    assert len({tuple(r) for r in fast}) == len(set(texts))  # answers differ where queries do


def test_soft_prompt_decoding_with_a_repetition_penalty_matches_model_generate() -> None:
    """The penalty is what decoding soft prompts uses; there, as in ``model.generate`` from
    embeddings, it counts the tokens produced so far (with prompt ids, ``model.generate``
    would count the prompt's too, so token-id prompts are compared without it)."""
    from l2vg_retrieval.generation import generate_from_embeds

    backbone = build_tiny_backbone(initializer_range=0.1)
    tok, model = backbone.tokenizer, backbone.model
    embeds = model.get_input_embeddings()(torch.tensor([p[:6] for p in _prompts(tok, TEXTS)])).detach()
    for penalty in (1.0, 1.3):
        ours = generate_from_embeds(model, tok, embeds, max_new_tokens=12, repetition_penalty=penalty)
        with torch.inference_mode():
            out = model.generate(
                inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                max_new_tokens=12, do_sample=False, repetition_penalty=penalty,
                eos_token_id=_eos_ids(tok, model), pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        reference = [tok.decode(row, skip_special_tokens=True).strip() for row in out.tolist()]
        assert ours == reference, penalty
    plain = generate_from_embeds(model, tok, embeds, max_new_tokens=12)
    assert plain != generate_from_embeds(model, tok, embeds, max_new_tokens=12, repetition_penalty=1.3)


def test_rows_that_finish_leave_both_paths_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token some rows produce early is made an end of turn, so rows finish at different
    steps and leave the batch: the hand-written step's own cache must drop the same rows."""
    backbone = build_tiny_backbone(initializer_range=0.1)
    tok, model = backbone.tokenizer, backbone.model
    prompts = _prompts(tok, TEXTS)
    first = _decode(model, tok, prompts, _eos_ids(tok, model), 10)
    # A token that first appears in some row after a few steps and in some other row never.
    row, at, stop = next(
        (r, first[r].index(t), t)
        for r in range(len(first))
        for t in first[r][2:8]
        if first[r].index(t) >= 2 and any(t not in other for other in first)
    )
    eos = [*_eos_ids(tok, model), stop]
    fast = _decode(model, tok, prompts, eos, 10)
    assert len(fast[row]) == at and any(len(r) == 10 for r in fast), [len(r) for r in fast]
    monkeypatch.setattr(llama_decode, "supports", lambda _model: False)
    assert fast == _decode(model, tok, prompts, eos, 10)


def test_only_plain_llama_layers_take_the_hand_written_step() -> None:
    from peft import LoraConfig, get_peft_model

    assert llama_decode.supports(build_tiny_backbone().model)
    model = build_tiny_backbone().model
    model.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert not llama_decode.supports(model)  # another rotary scheme
    wrapped = get_peft_model(build_tiny_backbone().model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert not llama_decode.supports(wrapped.base_model.model)  # a LoRA layer is not skipped


def test_capacity_is_checked() -> None:
    from l2vg_retrieval.kv_cache import CACHE_KWARG, preallocated_cache

    model = build_tiny_backbone().model
    cache = preallocated_cache(model.config, 8)
    with torch.inference_mode():
        model.get_decoder()(
            input_ids=torch.ones((2, 5), dtype=torch.long), **{CACHE_KWARG: cache}, use_cache=True
        )
    with pytest.raises(ValueError, match="capacity"):
        llama_decode.LlamaDecodeStep(model, cache, None, capacity=5)
    step = llama_decode.LlamaDecodeStep(model, cache, None, capacity=6)
    positions = torch.tensor([5, 5])
    assert step(torch.tensor([3, 4]), positions).shape == (2, model.config.hidden_size)
    with pytest.raises(RuntimeError, match="full"):
        step(torch.tensor([3, 4]), positions + 1)


def _steps(model: torch.nn.Module, prompt: torch.Tensor, n: int, *, pack: bool | None) -> torch.Tensor:
    """``n`` greedy steps of the hand-written step after ``prompt``'s pass: the logits."""
    from l2vg_retrieval.kv_cache import CACHE_KWARG, preallocated_cache

    cache = preallocated_cache(model.config, prompt.shape[1] + n + 1)
    with torch.inference_mode():
        hidden = model.get_decoder()(input_ids=prompt, **{CACHE_KWARG: cache}, use_cache=True)
        tokens = model.get_output_embeddings()(hidden.last_hidden_state[:, -1]).float().argmax(-1)
        step = llama_decode.LlamaDecodeStep(model, cache, None, prompt.shape[1] + n + 1, pack_weights=pack)
        assert step.packed == (pack if pack is not None else model in llama_decode._ACTIVE)
        out = []
        for s in range(n):
            logits = step.logits(step(tokens, torch.full_like(tokens, prompt.shape[1] + s)))
            tokens = logits.float().argmax(-1)
            out.append(logits)
    return torch.stack(out)


needs_onednn_bf16 = pytest.mark.skipif(
    not llama_decode.packing_matches(torch.ones((8, 8), dtype=torch.bfloat16), 4),
    reason="pre-packed bfloat16 weights are used only where oneDNN reproduces F.linear exactly",
)


def test_packing_is_used_only_where_it_gives_the_same_bits() -> None:
    assert not llama_decode.packing_matches(torch.ones((8, 8)), 4)  # float32: another kernel


@needs_onednn_bf16
def test_packed_weights_give_the_unpacked_steps_bits() -> None:
    model = build_tiny_backbone(initializer_range=0.1).model.to(torch.bfloat16)
    prompt = torch.randint(5, model.config.vocab_size, (6, 7), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_steps(model, prompt, 6, pack=True), _steps(model, prompt, 6, pack=False))


@needs_onednn_bf16
def test_packed_weights_live_for_a_block_and_follow_a_change_to_the_model() -> None:
    """Inside a packed_weights block every batch reuses one packing; a weight changed in
    place must not decode with the stale copy; after the block nothing is kept or packed."""
    model = build_tiny_backbone(initializer_range=0.1).model.to(torch.bfloat16)
    prompt = torch.randint(5, model.config.vocab_size, (3, 5), generator=torch.Generator().manual_seed(2))
    with llama_decode.packed_weights(model):
        before = _steps(model, prompt, 3, pack=None)
        cached = llama_decode._step_matmuls(model, 3, None)
        assert cached[1] is llama_decode._step_matmuls(model, 3, None)[1]  # packed once, reused
        with torch.no_grad():
            model.model.layers[1].mlp.down_proj.weight.mul_(-3)
        after = _steps(model, prompt, 3, pack=None)
        assert llama_decode._step_matmuls(model, 3, None)[1] is not cached[1]
    assert not torch.equal(before, after)
    assert torch.equal(after, _steps(model, prompt, 3, pack=False))
    assert not llama_decode._step_matmuls(model, 3, None)[1].packed  # released with the block


def test_a_cache_with_transposed_keys_is_stepped_in_place() -> None:
    """The prompt pass's buffers become the step's (no copy), and the step's tokens are those
    of a step that copied them."""
    from l2vg_retrieval.kv_cache import CACHE_KWARG, preallocated_cache

    model = build_tiny_backbone(initializer_range=0.1).model
    prompt = torch.randint(5, model.config.vocab_size, (3, 5), generator=torch.Generator().manual_seed(3))
    steps = []
    for transposed in (True, False):
        cache = preallocated_cache(model.config, 9, keys_transposed=transposed)
        with torch.inference_mode():
            model.get_decoder()(input_ids=prompt, **{CACHE_KWARG: cache}, use_cache=True)
        step = llama_decode.LlamaDecodeStep(model, cache, None, 9)
        buffers = cache.layers[0].transposed_buffers()
        assert (buffers is not None and step.keys[0].data_ptr() == buffers[0].data_ptr()) == transposed
        tokens, out = torch.tensor([7, 8, 9]), []
        for s in range(4):
            tokens = step.logits(step(tokens, torch.full((3,), 5 + s))).argmax(-1)
            out.append(tokens)
        steps.append(torch.stack(out))
    assert torch.equal(steps[0], steps[1])


def test_transposed_key_storage_is_the_same_cache_to_the_model() -> None:
    """Keys stored transposed are handed to attention as the same [B, KV, T, D] values,
    through growth and rows leaving the batch."""
    from l2vg_retrieval.kv_cache import preallocated_cache

    config = build_tiny_backbone().model.config
    caches = [preallocated_cache(config, 4, keys_transposed=t) for t in (True, False)]
    states = torch.randn((2, 3, 2, 6, 16), generator=torch.Generator().manual_seed(4))
    for cache in caches:
        cache.update(states[0, :, :, :3], states[1, :, :, :3], 0)
        cache.update(states[0, :, :, 3:], states[1, :, :, 3:], 0)  # past capacity: grows
        cache.layers[0].batch_select_indices(torch.tensor([2, 0]))
    (a, b), (c, d) = ((cache.layers[0].keys, cache.layers[0].values) for cache in caches)
    assert torch.equal(a, c) and torch.equal(b, d) and a.shape == (2, 2, 6, 16)
    assert caches[0].layers[0].transposed_buffers() is not None
    assert caches[1].layers[0].transposed_buffers() is None


@needs_onednn_bf16
def test_generate_then_encode_packs_for_a_full_batch_and_answers_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The baseline packs its weights when it has at least a batch to generate (packing costs
    about 0.3 s), not for a few queries; its answers are the same either way."""
    from l2vg_retrieval import baselines
    from l2vg_retrieval.teacher import TeacherEncoder

    backbone = build_tiny_backbone(initializer_range=0.1)
    hyde = baselines.GenerateThenEncode(
        backbone, TeacherEncoder(build_tiny_teacher()), device="cpu", dtype="bfloat16", max_new_tokens=5,
        generation_batch_size=4,
    )  # fmt: skip
    packed_during: list[bool] = []
    real = baselines.generate_responses

    def spy(model: torch.nn.Module, *args: object, **kwargs: object) -> list[list[int]]:
        packed_during.append(model in llama_decode._ACTIVE)
        return real(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(baselines, "generate_responses", spy)
    queries = [f"question number {i} about the weather" for i in range(6)]
    packed = hyde.generate(queries)
    assert packed_during == [True, True]  # two batches of up to 4
    assert hyde.model not in llama_decode._ACTIVE  # released with the call
    hyde.generate(queries[:3])
    assert packed_during[2:] == [False]  # fewer than a batch: not worth packing
    monkeypatch.setattr(baselines, "packed_weights", lambda model: contextlib.nullcontext())
    assert hyde.generate(queries) == packed
