"""LLM2Vec in-package: bidirectional attention, MNTP, SimCSE, checkpoints, resume, data hygiene.

Everything runs on a tiny random Llama built in code (conftest), except the one test marked
slow, which checks bidirectionality on the real packaged backbone (no training).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import build_tiny_backbone, build_tiny_encoder
from typer.testing import CliRunner

from l2vg_retrieval.backbones import LoadedBackbone, load_backbone, load_teacher, weights_fingerprint
from l2vg_retrieval.batching import pad_left
from l2vg_retrieval.config import EncoderConfig
from l2vg_retrieval.encoder import CheckpointError, L2VGEncoder
from l2vg_retrieval.llm2vec.attention import bidirectional_attention, forward_hidden
from l2vg_retrieval.llm2vec.checkpoint import LoadedLLM2Vec, load_llm2vec, read_meta
from l2vg_retrieval.llm2vec.config import (
    CorpusConfig,
    LLM2VecTrainConfig,
    LoraSettings,
    MNTPConfig,
    SimCSEConfig,
    load_llm2vec_config,
)
from l2vg_retrieval.llm2vec.corpus import (
    CorpusError,
    OverlapIndex,
    assert_no_overlap,
    build_corpus,
    load_corpus,
)
from l2vg_retrieval.llm2vec.encoder import LLM2VecEncoder
from l2vg_retrieval.llm2vec.inputs import collate, tokenize_texts
from l2vg_retrieval.llm2vec.lora import attach_lora, merge_lora, sha256_file
from l2vg_retrieval.llm2vec.mntp import (
    IGNORE,
    mask_for_mntp,
    mask_token_id,
    mntp_forward,
    mntp_loss,
    pack_blocks,
    shifted_targets,
    train_mntp,
)
from l2vg_retrieval.llm2vec.pipeline import StageOrderError, run_all, run_mntp, run_simcse
from l2vg_retrieval.llm2vec.simcse import attention_dropout, simcse_batch_loss, simcse_loss, train_simcse
from l2vg_retrieval.training.config import ConfigFileError

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "how do I bake bread at home? mix flour, water, yeast and salt",
    "what is the capital of France? Paris is the capital",
    "retrieval with generative embeddings of what a model would answer",
    "numbers 0123456789 and punctuation",
    "bake the bread in a hot oven until the crust is brown",
    "the lazy dog sleeps while the fox runs",
    "Paris is a city in France with many museums",
    "a model would answer with what it knows",
    "mix the flour and the water into a dough",
    "the capital of a country is often its largest city",
    "embeddings place similar texts close together",
]
TINY_LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


TOKENIZER: Any = build_tiny_backbone().tokenizer


def hidden(model: torch.nn.Module, ids: list[list[int]], *, bidirectional: bool) -> torch.Tensor:
    """Final states of left-padded id rows (the tiny and the real tokenizer share pad handling)."""
    input_ids, mask = pad_left(ids, 0)
    with torch.no_grad():
        return forward_hidden(model, input_ids, mask, bidirectional=bidirectional)


@pytest.fixture
def tiny() -> LoadedBackbone:
    return build_tiny_backbone()


# ------------------------------------------------------------------ bidirectional attention
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [False, True])
def test_a_later_token_changes_an_earlier_state_only_when_bidirectional(
    tiny: LoadedBackbone, padded: bool, attention: str
) -> None:
    tiny.model.set_attn_implementation(attention)
    assert tiny.model.config._attn_implementation == attention
    ids = [10, 11, 12, 13, 14, 15]
    changed = [*ids[:-1], 99]
    # With a longer row beside them, both rows carry left padding and the explicit mask path
    # runs; alone, the batch is unpadded (where SDPA's is_causal shortcut would kick in).
    extra = [[20, 21, 22, 23, 24, 25, 26, 27, 28]] if padded else []
    bi_a = hidden(tiny.model, [ids, *extra], bidirectional=True)[0]
    bi_b = hidden(tiny.model, [changed, *extra], bidirectional=True)[0]
    causal_a = hidden(tiny.model, [ids, *extra], bidirectional=False)[0]
    causal_b = hidden(tiny.model, [changed, *extra], bidirectional=False)[0]
    first = bi_a.shape[0] - len(ids)  # the first real token's position in the row
    assert (bi_a[first] - bi_b[first]).abs().max() > 1e-3
    assert (causal_a[first : first + 5] - causal_b[first : first + 5]).abs().max() == 0
    assert (causal_a[-1] - causal_b[-1]).abs().max() > 1e-3


def test_bidirectional_mode_is_undone_after_each_call(tiny: LoadedBackbone) -> None:
    model = tiny.model
    attention = [m for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    assert attention and all(m.is_causal for m in attention)
    before = hidden(model, [[10, 11, 12, 13]], bidirectional=False)
    with bidirectional_attention(model):
        assert not any(m.is_causal for m in attention)
        assert model.config.is_causal is False
    hidden(model, [[10, 11, 12, 13]], bidirectional=True)
    assert all(m.is_causal for m in attention)
    assert "is_causal" not in model.config.__dict__
    # A shared backbone is still causal for everyone else.
    assert torch.equal(hidden(model, [[10, 11, 12, 13]], bidirectional=False), before)
    with pytest.raises(RuntimeError), bidirectional_attention(model):
        raise RuntimeError("boom")
    assert all(m.is_causal for m in attention)


# ------------------------------------------------------------------ encoder
def test_encoder_is_batch_invariant_and_normalised(tiny: LoadedBackbone) -> None:
    encoder = LLM2VecEncoder(tiny, device="cpu", dtype="float32")
    alone = encoder.encode(TEXTS[0])
    assert alone.shape == (64,) and abs(float(np.linalg.norm(alone)) - 1.0) < 1e-5
    batch = encoder.encode([TEXTS[0], TEXTS[1] * 4, TEXTS[2]], batch_size=3)
    for size in (1, 2, 3):
        again = encoder.encode([TEXTS[1] * 4, TEXTS[2], TEXTS[0]], batch_size=size)
        assert np.abs(again[2] - alone).max() < 1e-4
        assert np.abs(again[0] - batch[1]).max() < 1e-4
    assert np.abs(batch[0] - alone).max() < 1e-4
    with_query = encoder.encode_query([TEXTS[0], TEXTS[1] * 3], batch_size=2)
    assert np.abs(with_query[0] - encoder.encode_query(TEXTS[0])).max() < 1e-4
    assert np.abs(with_query[0] - alone).max() > 1e-3  # the instruction is read
    assert encoder.encode([]).shape == (0, 64)
    with pytest.raises(ValueError):
        encoder.encode(["  "])


def test_pooling_covers_the_text_only(tiny: LoadedBackbone) -> None:
    rows = tokenize_texts(
        tiny.tokenizer, ["hello there", "a much longer text than the other one"], prompt="Find:"
    )
    prompt_len = len(tokenize_texts(tiny.tokenizer, ["x"], prompt="Find:")[0]) - 1
    batch = collate(rows, tiny.tokenizer.pad_token_id)
    for i, row in enumerate(rows):
        text_len = len(row) - prompt_len
        assert int(batch.pool_mask[i].sum()) == text_len
        assert int(batch.attention_mask[i].sum()) == len(row)
        # Left padding: the pooled tokens are the last ones of the row.
        assert batch.pool_mask[i, -text_len:].all()


def test_bidirectional_and_causal_encoders_differ_and_untrained_share_backbone(tiny: LoadedBackbone) -> None:
    bi = LLM2VecEncoder.from_backbone(tiny, bidirectional=True, device="cpu")
    causal = LLM2VecEncoder.from_backbone(tiny, bidirectional=False, device="cpu")
    assert bi.model is causal.model
    assert np.abs(bi.encode(TEXTS[3]) - causal.encode(TEXTS[3])).max() > 1e-3


# ------------------------------------------------------------------ MNTP
def test_mask_token_is_underscore_and_single() -> None:
    mask_id = mask_token_id(TOKENIZER, "_")
    assert TOKENIZER.convert_ids_to_tokens(mask_id) == "_"
    with pytest.raises(ValueError, match="single-token"):
        mask_token_id(TOKENIZER, "certainly not one token ___ !!")


def test_mntp_masks_only_eligible_tokens() -> None:
    special = sorted(set(TOKENIZER.all_special_ids))
    ids = torch.randint(10, 300, (8, 32), generator=torch.Generator().manual_seed(0))
    ids[:, 7] = special[0]
    attention = torch.ones_like(ids)
    attention[0, :5] = 0  # a left-padded row
    masked, labels = mask_for_mntp(
        ids,
        mask_id=79,
        vocab_size=400,
        probability=1.0,
        special_ids=special,
        attention_mask=attention,
        mask_fraction=1.0,
        random_fraction=0.0,
        generator=torch.Generator().manual_seed(1),
    )
    chosen = labels != IGNORE
    assert not chosen[:, 0].any(), "position 0 has no logit before it"
    assert not chosen[:, 7].any(), "special tokens are never masked"
    assert not chosen[0, :6].any(), "padding, and the first real token after it, are never masked"
    assert chosen[1:, 1:7].all() and chosen[0, 6:7].all()
    assert torch.equal(labels[chosen], ids[chosen])
    assert (masked[chosen] == 79).all() and torch.equal(masked[~chosen], ids[~chosen])
    # At the usual settings: about 20% chosen; of those ~80% masked, ~10% random, ~10% kept.
    big = torch.randint(10, 300, (64, 128), generator=torch.Generator().manual_seed(2))
    masked, labels = mask_for_mntp(
        big, mask_id=79, vocab_size=400, probability=0.2, generator=torch.Generator().manual_seed(3)
    )
    chosen = labels != IGNORE
    assert 0.17 < chosen.float().mean() < 0.23
    share_masked = (masked[chosen] == 79).float().mean()
    share_kept = (masked[chosen] == big[chosen]).float().mean()
    assert 0.75 < share_masked < 0.85 and 0.06 < share_kept < 0.14


def test_mntp_logit_before_a_masked_token_predicts_it(tiny: LoadedBackbone) -> None:
    labels = torch.full((2, 6), IGNORE)
    labels[0, 3], labels[1, 1], labels[1, 5] = 42, 7, 9
    rows, cols, targets = shifted_targets(labels)
    assert rows.tolist() == [0, 1, 1] and cols.tolist() == [2, 0, 4] and targets.tolist() == [42, 7, 9]

    torch.manual_seed(0)
    states = torch.randn(2, 6, 64)
    head = tiny.model.get_output_embeddings()
    logits = head(states)
    expected = torch.stack(
        [
            torch.nn.functional.cross_entropy(logits[0, 2:3], torch.tensor([42])),
            torch.nn.functional.cross_entropy(logits[1, 0:1], torch.tensor([7])),
            torch.nn.functional.cross_entropy(logits[1, 4:5], torch.tensor([9])),
        ]
    ).mean()
    assert torch.allclose(mntp_loss(states, labels, head), expected, atol=1e-6)
    # Reading the logit AT the masked position would be a different (wrong) objective.
    unshifted = torch.stack(
        [
            torch.nn.functional.cross_entropy(logits[0, 3:4], torch.tensor([42])),
            torch.nn.functional.cross_entropy(logits[1, 1:2], torch.tensor([7])),
            torch.nn.functional.cross_entropy(logits[1, 5:6], torch.tensor([9])),
        ]
    ).mean()
    assert not torch.allclose(expected, unshifted, atol=1e-3)
    assert float(mntp_loss(states, torch.full((2, 6), IGNORE), head)) == 0.0


def test_pack_blocks_concatenates_with_separators() -> None:
    blocks = pack_blocks([[1, 2, 3], [], [4, 5], [6, 7, 8, 9]], 4, separator=0)
    assert blocks.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_blocks([[1]], 8, separator=0)


def _blocks(tokenizer: Any, seq_len: int = 16) -> torch.Tensor:
    ids = tokenizer(TEXTS * 3, add_special_tokens=False)["input_ids"]
    return pack_blocks(ids, seq_len, tokenizer.eos_token_id)


def test_mntp_training_lowers_the_masked_loss(tiny: LoadedBackbone, tmp_path: Path) -> None:
    blocks = _blocks(tiny.tokenizer)[:8]
    config = MNTPConfig(
        lora=TINY_LORA, steps=12, batch_size=8, micro_batch_size=4, lr=1e-2, warmup_steps=0, eval_every=None
    )
    special = sorted(set(tiny.tokenizer.all_special_ids))
    inputs, labels = mask_for_mntp(
        blocks, mask_id=79, vocab_size=400, probability=0.3, special_ids=special,
        generator=torch.Generator().manual_seed(5),
    )  # fmt: skip
    ones = torch.ones_like(inputs)
    with torch.no_grad():
        before = float(mntp_forward(tiny.model, inputs, labels, ones)[0])
    private = copy.deepcopy(tiny.model)
    peft_model, result = train_mntp(
        private, tiny.tokenizer, blocks, config, tmp_path / "mntp", show_progress_bar=False
    )
    with torch.no_grad():
        after = float(mntp_forward(peft_model.get_base_model(), inputs, labels, ones)[0])
    assert result.steps == 12 and math.isfinite(result.final_loss)
    assert after < before - 0.1
    log = [json.loads(line) for line in (tmp_path / "mntp" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert (tmp_path / "mntp" / "adapter" / "adapter_model.safetensors").is_file()


def test_gradient_checkpointing_gives_the_same_step(tiny: LoadedBackbone, tmp_path: Path) -> None:
    blocks = _blocks(tiny.tokenizer)[:4]
    settings = {
        "lora": TINY_LORA,
        "steps": 1,
        "batch_size": 4,
        "lr": 1e-2,
        "warmup_steps": 0,
        "eval_every": None,
    }
    _, plain = train_mntp(
        copy.deepcopy(tiny.model), tiny.tokenizer, blocks, MNTPConfig(**settings), tmp_path / "a",
        show_progress_bar=False,
    )  # fmt: skip
    recompute = MNTPConfig(**settings, gradient_checkpointing=True)
    _, recomputed = train_mntp(
        copy.deepcopy(tiny.model), tiny.tokenizer, blocks, recompute, tmp_path / "b", show_progress_bar=False
    )
    assert abs(plain.final_loss - recomputed.final_loss) < 1e-5


# ------------------------------------------------------------------ SimCSE
def test_simcse_loss_rewards_positives_and_punishes_negatives() -> None:
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 32), dim=-1)
    matched = simcse_loss(a, a + 0.01 * torch.randn(8, 32))
    shuffled = simcse_loss(a, a[torch.tensor([1, 2, 3, 4, 5, 6, 7, 0])])
    assert matched < 0.1 < math.log(8) < shuffled
    # Pulling a positive closer lowers the loss; pulling a negative closer raises it.
    b = torch.randn(8, 32)
    base = simcse_loss(a, b, 0.05)
    closer_positive = b.clone()
    closer_positive[0] = 0.5 * b[0] + 0.5 * a[0]
    closer_negative = b.clone()
    closer_negative[1] = 0.5 * b[1] + 0.5 * a[0]
    assert simcse_loss(a, closer_positive, 0.05) < base

    def row0_loss(second: torch.Tensor) -> float:
        scores = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(second, dim=-1).T
        return float(torch.nn.functional.cross_entropy(scores[:1] / 0.05, torch.tensor([0])))

    # Text 0's loss rises when another text's view moves towards it (a harder negative).
    assert row0_loss(closer_negative) > row0_loss(b)
    with pytest.raises(ValueError):
        simcse_loss(a, a[:4])


def test_simcse_training_lowers_the_contrastive_loss(tiny: LoadedBackbone, tmp_path: Path) -> None:
    config = SimCSEConfig(
        lora=TINY_LORA, steps=10, batch_size=8, lr=5e-3, warmup_steps=0, attention_dropout=0.1, max_length=32
    )
    model = copy.deepcopy(tiny.model)
    texts = TEXTS[:8]

    def measured(m: torch.nn.Module) -> float:
        with (
            torch.no_grad(),
            torch.random.fork_rng(devices=[]),
            attention_dropout(m, config.attention_dropout),
        ):
            torch.manual_seed(123)
            return float(simcse_batch_loss(m, tiny.tokenizer, texts, config))

    before = measured(model)
    peft_model, result = train_simcse(
        model, tiny.tokenizer, texts, config, tmp_path / "simcse", show_progress_bar=False
    )
    after = measured(peft_model.get_base_model())
    assert result.steps == 10
    assert after < before * 0.7


def test_simcse_step_is_the_same_with_recomputed_activations(tiny: LoadedBackbone, tmp_path: Path) -> None:
    from l2vg_retrieval.llm2vec.lora import adapter_tensors

    settings = {
        "lora": TINY_LORA,
        "steps": 1,
        "batch_size": 4,
        "lr": 1e-2,
        "warmup_steps": 0,
        "max_length": 32,
    }
    runs = {}
    for recompute in (False, True):
        config = SimCSEConfig(**settings, gradient_checkpointing=recompute)
        peft_model, result = train_simcse(
            copy.deepcopy(tiny.model), tiny.tokenizer, TEXTS[:4], config, tmp_path / str(recompute),
            show_progress_bar=False,
        )  # fmt: skip
        runs[recompute] = (result.final_loss, adapter_tensors(peft_model))
    assert abs(runs[False][0] - runs[True][0]) < 1e-5
    # Dropout masks are replayed in the recomputation, so the update is the same too.
    assert max(float((runs[False][1][k] - runs[True][1][k]).abs().max()) for k in runs[False][1]) < 1e-5


def test_attention_dropout_makes_the_two_views_differ(tiny: LoadedBackbone) -> None:
    config = SimCSEConfig(lora=TINY_LORA, attention_dropout=0.3, max_length=32, batch_size=4)
    no_dropout = config.model_copy(update={"attention_dropout": 0.0})
    with torch.no_grad():
        # With no dropout at all, each text is its own exact positive.
        with attention_dropout(tiny.model, 0.0):
            clean = float(simcse_batch_loss(tiny.model, tiny.tokenizer, TEXTS[:4], no_dropout))
        with attention_dropout(tiny.model, config.attention_dropout):
            noisy = float(simcse_batch_loss(tiny.model, tiny.tokenizer, TEXTS[:4], config))
    tiny.model.eval()
    # Dropout makes the two views of a text differ, so its positive is no longer exact.
    assert noisy > clean
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in tiny.model.modules())


# ------------------------------------------------------------------ LoRA merge
def test_merged_lora_equals_the_unmerged_adapter(tiny: LoadedBackbone) -> None:
    model = copy.deepcopy(tiny.model)
    peft_model = attach_lora(model, TINY_LORA, seed=3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    ids = [[10, 11, 12, 13, 14], [30, 31, 32]]
    base = hidden(tiny.model, ids, bidirectional=True)
    unmerged = hidden(model, ids, bidirectional=True)
    assert (unmerged - base).abs().max() > 1e-2, "the adapter must change the outputs"
    merged_model = merge_lora(peft_model)
    merged = hidden(merged_model, ids, bidirectional=True)
    assert (merged - unmerged).abs().max() < 1e-5
    assert not any("lora" in n for n, _ in merged_model.named_parameters())


# ------------------------------------------------------------------ pipeline, checkpoint, teacher
def _write_tiny_setup(root: Path) -> tuple[Path, Path]:
    """A tiny backbone saved as a folder (so it resolves by name) and a config for it."""
    backbone = build_tiny_backbone()
    folder = root / "tiny-llama"
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    queries = root / "queries.jsonl"
    queries.write_text(
        "".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS * 2))
    )
    responses = root / "responses.jsonl"
    rows = [{"id": f"q{i}", "query": t, "response": f"{t} and so on {i}"} for i, t in enumerate(TEXTS)]
    rows.append({"id": "heldout-1", "query": "held", "response": "an answer to a held out query"})
    responses.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lora = {"r": 4, "alpha": 8, "dropout": 0.05}
    config = {
        "output_dir": "run",
        "backbone": str(folder),
        "max_length": 64,
        "corpus": {"queries": "queries.jsonl", "responses": "responses.jsonl", "heldout_texts": 2},
        "mntp": {"lora": lora, "steps": 3, "batch_size": 4, "micro_batch_size": 2, "seq_len": 16,
                 "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 2, "eval_every": 2, "eval_blocks": 2},
        "simcse": {"lora": lora, "steps": 3, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1,
                   "checkpoint_every": 2, "max_length": 32},
    }  # fmt: skip
    path = root / "llm2vec.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("llm2vec")
    config_path, backbone_dir = _write_tiny_setup(root)
    config = load_llm2vec_config(config_path)
    # Through the real entry point in its own process (`l2vg llm2vec train`, as users run it;
    # the card records the command line from sys.argv).
    done = subprocess.run(
        [sys.executable, "-c", "from l2vg_retrieval.cli import main; main()",
         "llm2vec", "train", str(config_path), "--quiet"],
        capture_output=True, text=True, timeout=600, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    return {"root": root, "config": config, "config_path": config_path, "summary": summary,
            "final": Path(summary["checkpoint"]), "backbone_dir": backbone_dir}  # fmt: skip


def test_pipeline_writes_a_complete_checkpoint(trained: dict[str, Any]) -> None:
    final, config = trained["final"], trained["config"]
    meta = read_meta(final)
    assert [s["name"] for s in meta["stages"]] == ["mntp", "simcse"]
    assert meta["hidden_size"] == 64 and meta["settings"]["max_length"] == 64
    assert (final / "config.json").is_file() and (final / "CARD.md").is_file()
    card = (final / "CARD.md").read_text()
    assert "l2vg llm2vec train" in card and "peak" in card
    # Neither the card nor the stored config names this machine's folders.
    assert str(final.parent) not in card and str(final.parent) not in json.dumps(meta)
    train, heldout = load_corpus(config.corpus_dir)
    assert len(heldout) == 2 and "an answer to a held out query" not in train + heldout
    mntp_log = [json.loads(x) for x in (config.stage_dir("mntp") / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in mntp_log] == [1, 2, 3] and "eval" in mntp_log[1]
    assert trained["summary"]["simcse"]["steps"] == 3
    # Finished stages are skipped on a rerun: the same adapters, no new log lines.
    again = run_all(config, show_progress_bar=False)
    assert again["mntp"]["adapter_sha256"] == trained["summary"]["mntp"]["adapter_sha256"]
    assert len((config.stage_dir("mntp") / "loss.jsonl").read_text().splitlines()) == 3
    # A finished stage is not reused under other settings: its checkpoint refuses them.
    changed = config.model_copy(update={"mntp": config.mntp.model_copy(update={"lr": 0.5})})
    with pytest.raises(CheckpointError, match="other settings"):
        run_mntp(changed, show_progress_bar=False)


def test_checkpoint_round_trip_reproduces_the_trained_model(trained: dict[str, Any]) -> None:
    from l2vg_retrieval.llm2vec.lora import apply_adapter

    config = trained["config"]
    backbone = load_backbone(str(trained["backbone_dir"]))
    # The model as training left it: MNTP merged, then the SimCSE adapter merged.
    model = apply_adapter(backbone.model, config.stage_dir("mntp") / "adapter")
    model = apply_adapter(model, config.stage_dir("simcse") / "adapter")
    direct = LLM2VecEncoder(LoadedBackbone("direct", model, backbone.tokenizer), device="cpu")
    loaded = LLM2VecEncoder.from_pretrained(f"llm2vec:{trained['final']}", device="cpu")
    assert loaded.max_length == 64 and loaded.dim == 64
    a, b = direct.encode(TEXTS[:4]), loaded.encode(TEXTS[:4])
    assert np.abs(a - b).max() < 1e-5
    # The SimCSE stage changed the vectors; a MNTP-only load differs from the full one.
    mntp_only = LLM2VecEncoder.from_pretrained(trained["final"], stages=("mntp",), device="cpu")
    assert mntp_only.fingerprint != loaded.fingerprint
    assert np.abs(mntp_only.encode(TEXTS[:4]) - b).max() > 1e-4
    with pytest.raises(ValueError, match="leading part"):
        LLM2VecEncoder.from_pretrained(trained["final"], stages=("simcse",))


def _copy_final(trained: dict[str, Any], tmp_path: Path) -> Path:
    target = tmp_path / "final"
    shutil.copytree(trained["final"], target)
    return target


def test_corrupt_or_mismatched_checkpoints_are_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    backbone = load_backbone(str(trained["backbone_dir"]))
    folder = _copy_final(trained, tmp_path)
    weights = folder / "simcse" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        load_llm2vec(folder, backbone=backbone)

    weights.write_bytes(b"not a safetensors file")
    meta = json.loads((folder / "llm2vec_config.json").read_text())
    from l2vg_retrieval.llm2vec.checkpoint import checkpoint_fingerprint
    from l2vg_retrieval.llm2vec.lora import sha256_file

    meta["stages"][1]["sha256"] = sha256_file(weights)
    meta["fingerprint"] = checkpoint_fingerprint(
        meta["backbone_fingerprint"], [(s["name"], s["sha256"]) for s in meta["stages"]]
    )
    (folder / "llm2vec_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_llm2vec(folder, backbone=backbone)

    (folder / "llm2vec_config.json").write_text('{"format": "l2vg-llm2vec", "format_ver')
    with pytest.raises(CheckpointError, match="corrupt"):
        load_llm2vec(folder, backbone=backbone)
    (folder / "llm2vec_config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an l2vg LLM2Vec checkpoint"):
        load_llm2vec(folder, backbone=backbone)
    with pytest.raises(CheckpointError, match=r"llm2vec_config\.json is missing"):
        load_llm2vec(tmp_path, backbone=backbone)


def test_checkpoint_for_another_backbone_is_refused(trained: dict[str, Any]) -> None:
    other = build_tiny_backbone(seed=7)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_llm2vec(trained["final"], backbone=other)
    # The backbone given is copied, never modified, even when loading succeeds.
    mine = load_backbone(str(trained["backbone_dir"]))
    before = weights_fingerprint(mine.model)
    load_llm2vec(trained["final"], backbone=mine)
    assert weights_fingerprint(mine.model) == before


def test_adapter_from_another_model_shape_is_refused(trained: dict[str, Any], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from l2vg_retrieval.llm2vec.lora import apply_adapter

    folder = tmp_path / "adapter"
    shutil.copytree(trained["config"].stage_dir("mntp") / "adapter", folder)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    key = next(iter(tensors))
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="shape"):
        apply_adapter(build_tiny_backbone().model, folder)


def test_llm2vec_checkpoint_is_a_teacher(trained: dict[str, Any]) -> None:
    from l2vg_retrieval.teacher import TeacherEncoder

    name = f"llm2vec:{trained['final']}"
    loaded = load_teacher(name)
    assert (
        isinstance(loaded, LoadedLLM2Vec) and loaded.fingerprint == read_meta(trained["final"])["fingerprint"]
    )
    teacher = TeacherEncoder(loaded, device="cpu")
    assert teacher.dim == 64 and teacher.llm2vec is not None
    direct = LLM2VecEncoder.from_pretrained(name, device="cpu")
    assert np.abs(teacher.encode(TEXTS[:3]) - direct.encode(TEXTS[:3])).max() < 1e-5
    # A bare folder path is recognised too, and an L2VG encoder reads the teacher's dim from it.
    from l2vg_retrieval.encoder import _teacher_dim

    assert _teacher_dim(str(trained["final"]), None) == 64
    assert _teacher_dim(name, None) == 64
    student = L2VGEncoder(
        EncoderConfig(backbone="tiny-random-llama", teacher=name, n_thought=2, n_compression=3),
        build_tiny_backbone(),
        teacher_dim=_teacher_dim(name, None),
        device="cpu",
        dtype="float32",
    )
    assert student.teacher.llm2vec is not None
    vectors = student.teacher.encode(TEXTS[:2], convert_to_tensor=True)
    assert vectors.shape == (2, 64)


def test_lineup_offers_each_llm2vec_step(trained: dict[str, Any]) -> None:
    from l2vg_retrieval.bench.lineup import LLM2VEC_KEYS, MODEL_LABELS, build_retrievers, parse_models

    assert parse_models("llm2vec,bm25") == ["bm25", "llm2vec"]
    assert "llm2vec" not in parse_models("all")
    assert all(k in MODEL_LABELS for k in LLM2VEC_KEYS)
    l2vg = build_tiny_encoder()
    before = l2vg.encode_query(TEXTS[:2])
    retrievers = build_retrievers(l2vg, list(LLM2VEC_KEYS), llm2vec=f"llm2vec:{trained['final']}")
    scores = {k: r.score(TEXTS[:3], TEXTS[3:8]) for k, r in retrievers.items()}
    assert all(s.shape == (3, 5) for s in scores.values())
    assert not np.allclose(scores["llm2vec-causal"], scores["llm2vec-bi"])
    assert not np.allclose(scores["llm2vec-mntp"], scores["llm2vec"])
    # The untrained rows share the L2VG backbone, which stays causal for the L2VG encoder.
    assert np.abs(l2vg.encode_query(TEXTS[:2]) - before).max() < 1e-5


def test_names_resolve_to_folders_or_the_hub(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    from l2vg_retrieval.backbones import MissingAssetError
    from l2vg_retrieval.llm2vec.reference import is_llm2vec_reference, resolve_llm2vec

    final = trained["final"]
    assert is_llm2vec_reference("llm2vec") and is_llm2vec_reference(str(final))
    assert not is_llm2vec_reference("all-minilm-l6-v2") and not is_llm2vec_reference("org/model")
    assert resolve_llm2vec(f"llm2vec:{final}") == final
    asked: list[str] = []

    def fake_download(repo_id: str, **_: Any) -> str:
        asked.append(repo_id)
        return str(final)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert resolve_llm2vec("llm2vec:some-org/llm2vec-smollm2") == final and asked == [
        "some-org/llm2vec-smollm2"
    ]

    def offline(repo_id: str, **_: Any) -> str:
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(MissingAssetError, match="cannot fetch"):
        resolve_llm2vec("llm2vec:some-org/llm2vec-smollm2")
    with pytest.raises(MissingAssetError, match="no LLM2Vec checkpoint"):
        resolve_llm2vec("llm2vec:./no/such/dir")


def test_cli_info_and_exit_codes(trained: dict[str, Any], tmp_path: Path) -> None:
    from l2vg_retrieval.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["llm2vec", "info", str(trained["final"])])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stages"][0]["name"] == "mntp"
    broken = _copy_final(trained, tmp_path)
    (broken / "llm2vec_config.json").write_text("{")
    assert runner.invoke(app, ["llm2vec", "info", f"llm2vec:{broken}"]).exit_code == 3
    assert runner.invoke(app, ["llm2vec", "info", "llm2vec:/no/such/folder"]).exit_code == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"output_dir": "x", "corpus": {"queries": "q.jsonl"}, "mntp": {"stepz": 3}})
    )
    result = runner.invoke(app, ["llm2vec", "mntp", str(bad)])
    assert result.exit_code == 2 and "stepz" in result.output


def test_cli_corpus_writes_the_texts_and_records_the_overlap_check(tmp_path: Path) -> None:
    """`l2vg llm2vec corpus`: the texts and the manifest are written, and an evaluation
    question slipped into the query pool is dropped by the overlap check and counted."""
    from l2vg_retrieval.cli import app
    from l2vg_retrieval.jsonl import read_jsonl
    from l2vg_retrieval.llm2vec.corpus import MANIFEST_FILE, PACKAGE_DATA, TEXTS_FILE

    config_path, _ = _write_tiny_setup(tmp_path)
    qa_query = next(
        r["text"] for r in read_jsonl(PACKAGE_DATA / "qa_offline" / "queries.jsonl") if len(r["text"]) > 30
    )
    with (tmp_path / "queries.jsonl").open("a") as fh:
        fh.write(json.dumps({"id": "leak", "text": qa_query}) + "\n")
    result = CliRunner().invoke(app, ["llm2vec", "corpus", str(config_path)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert "overlap check dropped 1 texts" in result.stderr
    corpus_dir = load_llm2vec_config(config_path).corpus_dir
    manifest = json.loads((corpus_dir / MANIFEST_FILE).read_text())
    assert printed == {k: manifest[k] for k in ("counts", "train", "heldout")}
    assert manifest["overlap_check"]["dropped"] == 1 and manifest["counts"]["queries"]["overlap"] == 1
    assert "l2vg_retrieval/data/qa_offline/queries.jsonl" in manifest["overlap_check"]["eval_files"]
    rows = read_jsonl(corpus_dir / TEXTS_FILE)
    assert len(rows) == manifest["train"] + manifest["heldout"] > 0
    assert sum(r["split"] == "heldout" for r in rows) == manifest["heldout"] == 2
    texts = {r["text"] for r in rows}
    assert set(TEXTS) <= texts and qa_query not in texts
    assert "an answer to a held out query" not in texts


def test_cli_simcse_refuses_to_run_before_mntp_then_writes_its_adapter(tmp_path: Path) -> None:
    """`l2vg llm2vec simcse`: before MNTP a clear error and exit 1 with nothing written;
    after `l2vg llm2vec mntp`, its adapter, summary and the final checkpoint."""
    from l2vg_retrieval.cli import EXIT_RUNTIME, app

    runner = CliRunner()
    config_path, _ = _write_tiny_setup(tmp_path)
    config = load_llm2vec_config(config_path)
    adapter = config.stage_dir("simcse") / "adapter" / "adapter_model.safetensors"
    early = runner.invoke(app, ["llm2vec", "simcse", str(config_path), "--quiet"])
    assert early.exit_code == EXIT_RUNTIME, early.output
    assert "MNTP has not finished" in early.output and "l2vg llm2vec mntp" in early.output
    assert "Traceback" not in early.output and not adapter.exists() and not config.final_dir.exists()

    mntp = runner.invoke(app, ["llm2vec", "mntp", str(config_path), "--quiet"])
    assert mntp.exit_code == 0, mntp.output
    result = runner.invoke(app, ["llm2vec", "simcse", str(config_path), "--steps", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["steps"] == 2 and math.isfinite(printed["final_loss"])
    assert adapter.is_file() and printed["adapter_sha256"] == sha256_file(adapter)
    assert printed["mntp_sha256"] == json.loads(mntp.stdout)["adapter_sha256"]
    summary = json.loads((config.stage_dir("simcse") / "summary.json").read_text())
    assert summary["adapter_sha256"] == printed["adapter_sha256"] and summary["command"].startswith("l2vg")
    final = Path(printed["checkpoint"])
    assert final == config.final_dir
    meta = read_meta(final)
    assert [s["name"] for s in meta["stages"]] == ["mntp", "simcse"]
    assert (final / "simcse" / "adapter_model.safetensors").read_bytes() == adapter.read_bytes()


# ------------------------------------------------------------------ resume
def test_interrupted_stage_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    config_path, backbone_dir = _write_tiny_setup(tmp_path)
    raw = yaml.safe_load(config_path.read_text())
    raw["mntp"].update({"steps": 5, "checkpoint_every": 2})
    config_path.write_text(yaml.safe_dump(raw))
    config = load_llm2vec_config(config_path)

    class Interrupt(Exception):
        pass

    def stop_at_3(step: int, loss: float) -> None:
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_mntp(config, show_progress_bar=False, on_step=stop_at_3)
    folder = config.stage_dir("mntp")
    assert json.loads((folder / "checkpoint" / "state.json").read_text())["step"] == 2
    with pytest.raises(StageOrderError, match="MNTP has not finished"):
        run_simcse(config, show_progress_bar=False)
    resumed = run_mntp(config, show_progress_bar=False)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 5
    steps = [json.loads(x)["step"] for x in (folder / "loss.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]

    # The same run without the interruption ends with the very same adapter.
    raw["output_dir"] = "run-uninterrupted"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw))
    straight_config = load_llm2vec_config(other)
    given = load_backbone(str(backbone_dir))
    before = weights_fingerprint(given.model)
    straight = run_mntp(straight_config, backbone=given, show_progress_bar=False)
    assert straight["resumed_from_step"] is None
    assert weights_fingerprint(given.model) == before, "a given backbone is copied, never trained in place"
    assert not any("lora" in name for name, _ in given.model.named_parameters())
    from safetensors.torch import load_file

    a = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(straight_config.stage_dir("mntp") / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert any(float(a[k].abs().max()) > 0 for k in a if "lora_B" in k), "training moved the adapter"


def test_resume_refuses_other_settings_and_torn_state(tmp_path: Path) -> None:
    config_path, _ = _write_tiny_setup(tmp_path)
    raw = yaml.safe_load(config_path.read_text())
    raw["mntp"].update({"steps": 4, "checkpoint_every": 2})
    config_path.write_text(yaml.safe_dump(raw))
    config = load_llm2vec_config(config_path)

    def stop(step: int, loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_mntp(config, show_progress_bar=False, on_step=stop)
    raw["mntp"]["lr"] = 5e-3
    config_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CheckpointError, match="lr"):
        run_mntp(load_llm2vec_config(config_path), show_progress_bar=False)
    raw["mntp"]["lr"] = 1e-3
    raw["mntp"]["steps"] = 6  # training longer is allowed
    config_path.write_text(yaml.safe_dump(raw))
    checkpoint = config.stage_dir("mntp") / "checkpoint"
    (checkpoint / "adapter.safetensors").write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="missing or corrupt"):
        run_mntp(load_llm2vec_config(config_path), show_progress_bar=False)


# ------------------------------------------------------------------ corpus hygiene
def test_overlap_index_catches_copies_spans_and_contained_questions() -> None:
    passage = " ".join(f"word{i}" for i in range(40))
    index = OverlapIndex(["What is Perl?", passage, "how do I reverse a list in python"], ngram=13)
    assert index.reason("what is PERL") is not None  # equal after normalisation
    span = " ".join(f"word{i}" for i in range(10, 23))
    assert index.reason(f"intro text {span} outro") is not None
    assert index.reason(" ".join(f"word{i}" for i in range(10, 22))) is None  # 12 words: no 13-gram
    assert index.reason("Q: How do I reverse a list in Python? Thanks") is not None
    assert index.reason("What is Perl used for in practice?") is None  # a 3-word text is only matched whole
    with pytest.raises(CorpusError, match="overlap"):
        assert_no_overlap(["fine text", "what is perl"], index)
    assert_no_overlap(["fine text"], index)


def test_corpus_drops_evaluation_texts_and_heldout_answers(tmp_path: Path) -> None:
    from l2vg_retrieval.jsonl import read_jsonl
    from l2vg_retrieval.llm2vec.corpus import PACKAGE_DATA, build_overlap_index

    qa_rows = read_jsonl(PACKAGE_DATA / "qa_offline" / "queries.jsonl")
    qa_query = next(r["text"] for r in qa_rows if len(r["text"]) > 30)  # past min_chars
    harmful = read_jsonl(PACKAGE_DATA / "harmful_offline" / "benchmark" / "harmful_queries.jsonl")[0]["text"]
    bright = read_jsonl(PACKAGE_DATA / "bright_offline" / "examples" / "biology.jsonl")[0]["query"]
    clean = [f"an ordinary question number {i} about cooking pasta" for i in range(30)]
    queries = tmp_path / "q.jsonl"
    rows = [*clean, qa_query, harmful, f"Please help: {bright}", clean[0]]
    queries.write_text("".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(rows)))
    responses = tmp_path / "r.jsonl"
    responses.write_text(
        json.dumps({"id": "q1", "response": "pasta needs salted boiling water"})
        + "\n"
        + json.dumps({"id": "heldout-9", "response": "this answers a held-out query"})
        + "\n"
    )
    config = CorpusConfig(queries=queries, responses=responses, heldout_texts=2)
    manifest = build_corpus(config, tmp_path / "corpus")
    counts = manifest["counts"]
    assert counts["queries"]["overlap"] == 3 and counts["queries"]["duplicate"] == 1
    assert counts["responses"] == {"read": 1, "too_short": 0, "duplicate": 0, "overlap": 0, "kept": 1}
    train, heldout = load_corpus(tmp_path / "corpus")
    assert len(train) + len(heldout) == 31 and len(heldout) == 2
    assert_no_overlap(train + heldout, build_overlap_index(config)[0])
    # Rebuilding with the same settings reuses the files.
    assert build_corpus(config, tmp_path / "corpus") == manifest


def test_corpus_manifest_names_files_portably_and_still_reuses_an_absolute_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest names data as results do (relative, never this machine's paths); a corpus
    whose manifest recorded absolute paths is still recognised, and other settings rebuild."""
    from l2vg_retrieval.llm2vec.corpus import MANIFEST_FILE, TEXTS_FILE

    monkeypatch.chdir(tmp_path)
    queries = tmp_path / "data" / "q.jsonl"
    queries.parent.mkdir()
    rows = [f"an ordinary question number {i} about cooking pasta" for i in range(30)]
    queries.write_text("".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(rows)))
    config = CorpusConfig(queries=queries, heldout_texts=2)
    out = tmp_path / "corpus"
    manifest = build_corpus(config, out)
    written = (out / MANIFEST_FILE).read_text()
    assert str(tmp_path) not in written and '"/' not in written, written
    assert manifest["settings"]["queries"] == "data/q.jsonl"
    eval_files = manifest["overlap_check"]["eval_files"]
    assert "l2vg_retrieval/data/qa_offline/queries.jsonl" in eval_files

    # A manifest from before (absolute paths) still matches: the corpus is reused, not rebuilt.
    old = {**manifest, "settings": {**manifest["settings"], "queries": str(queries)}}
    (out / MANIFEST_FILE).write_text(json.dumps(old))
    stamp = (out / TEXTS_FILE).stat().st_mtime_ns
    assert build_corpus(config, out) == old and (out / TEXTS_FILE).stat().st_mtime_ns == stamp
    # Other settings are not the same corpus.
    rebuilt = build_corpus(CorpusConfig(queries=queries, heldout_texts=2, min_chars=20), out)
    assert rebuilt["settings"]["min_chars"] == 20 and rebuilt["settings"]["queries"] == "data/q.jsonl"


def test_config_file_resolves_paths_and_names_bad_fields(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"output_dir": "../out", "corpus": {"queries": "q.jsonl"}}))
    config = load_llm2vec_config(path)
    assert config.output_dir == (tmp_path / "out").resolve()
    assert config.corpus.queries == (tmp_path / "sub" / "q.jsonl").resolve()
    assert config.mntp.lora.r == 16 and config.mntp.lora.alpha == 32 and config.mntp.mask_probability == 0.2
    assert config.simcse.temperature == 0.05 and config.simcse.attention_dropout == 0.3
    assert isinstance(config, LLM2VecTrainConfig)
    path.write_text(yaml.safe_dump({"output_dir": "x", "corpus": {}}))
    with pytest.raises(ConfigFileError, match="corpus"):
        load_llm2vec_config(path)
    path.write_text(
        yaml.safe_dump({"output_dir": "x", "corpus": {"queries": "q"}, "simcse": {"temprature": 1}})
    )
    with pytest.raises(ConfigFileError, match="temprature"):
        load_llm2vec_config(path)


def test_packaged_config_reads_only_train_split_sources() -> None:
    root = Path(__file__).resolve().parent.parent
    config = load_llm2vec_config(root / "configs" / "llm2vec.yaml")
    assert config.corpus.queries is not None and config.corpus.queries.name == "queries.train.jsonl"
    assert config.mntp.batch_size * config.mntp.seq_len <= 32 * 128
    assert config.simcse.batch_size <= 32 and config.mntp.steps <= 1000 and config.simcse.steps <= 1000


# ------------------------------------------------------------------ the real backbone
@pytest.mark.slow
def test_real_backbone_is_bidirectional_and_batch_invariant() -> None:
    backbone = load_backbone()  # a missing backbone fails with its install step, never skips
    tokenizer = backbone.tokenizer
    assert len(tokenizer("_", add_special_tokens=False)["input_ids"]) == 1
    ids = tokenizer("The cat sat on the mat today", add_special_tokens=False)["input_ids"]
    changed = [*ids[:-1], tokenizer(" yesterday", add_special_tokens=False)["input_ids"][0]]
    bi = hidden(backbone.model, [ids, changed], bidirectional=True)
    causal = hidden(backbone.model, [ids, changed], bidirectional=False)
    assert (bi[0, 0] - bi[1, 0]).abs().max() > 1e-3
    assert (causal[0, :-1] - causal[1, :-1]).abs().max() < 1e-5
    encoder = LLM2VecEncoder(backbone, device="cpu", dtype="float32")
    alone = encoder.encode("What is the capital of France?")
    mixed = encoder.encode(["What is the capital of France?", "A much longer text " * 20], batch_size=2)
    assert np.abs(mixed[0] - alone).max() < 1e-4
