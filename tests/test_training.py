"""Training pipeline on the tiny random model: losses, resume, caches, config validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_backbone, build_tiny_encoder, build_tiny_teacher

from l2vg_retrieval.training.config import ConfigFileError, TrainConfig, load_train_config
from l2vg_retrieval.training.responses import generate_response_cache, read_cache
from l2vg_retrieval.training.targets import build_targets, load_targets
from l2vg_retrieval.training.trainer import Trainer, TrainExample, compute_losses

QUERIES = [
    "what is the capital of France?",
    "how do I bake bread at home?",
    "the quick brown fox",
    "retrieval with generative embeddings",
    "numbers and punctuation",
    "what would a model answer?",
]


def _examples(encoder, n: int = 8) -> list[TrainExample]:
    eos = encoder.tokenizer.eos_token_id
    generator = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = encoder.tokenizer(QUERIES[(i + 1) % len(QUERIES)], add_special_tokens=False)["input_ids"]
        target = torch.nn.functional.normalize(torch.randn(encoder.dim, generator=generator), dim=0)
        out.append(TrainExample(QUERIES[i % len(QUERIES)], (*ids, eos), target))
    return out


def _config(tmp_path: Path, **optim: object) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "output_dir": tmp_path / "run",
            "data": {"train_queries": tmp_path / "q.jsonl"},
            "optim": {"steps": 6, "batch_size": 4, "warmup_steps": 2, "lr": 5e-3, **optim},
            "checkpoint_every": 3,
            "dtype": "float32",
        }
    )


def test_one_step_lowers_both_losses_on_a_fixed_batch() -> None:
    encoder = build_tiny_encoder()
    batch = _examples(encoder, 4)
    prompts = [None] * 4
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    recon0, align0 = compute_losses(encoder, batch, prompts)
    (recon0 + align0).backward()
    optimizer.step()
    with torch.no_grad():
        recon1, align1 = compute_losses(encoder, batch, prompts)
    assert recon1 < recon0, (recon0, recon1)
    assert align1 < align0, (align0, align1)


def test_resume_gives_the_same_next_step_as_an_uninterrupted_run(tmp_path: Path) -> None:
    full = Trainer(build_tiny_encoder(), _examples(build_tiny_encoder()), _config(tmp_path / "a"))
    (tmp_path / "a" / "run").mkdir(parents=True)
    full.run(show_progress_bar=False)

    # Interrupted after step 3 (the checkpoint), then resumed in a fresh process-like state.
    config_b = _config(tmp_path / "b")
    (tmp_path / "b" / "run").mkdir(parents=True)
    first = Trainer(build_tiny_encoder(), _examples(build_tiny_encoder()), config_b)
    for _ in range(3):
        first.train_step()
    first.save_checkpoint()
    first.train_step()  # work after the checkpoint that the "crash" loses
    resumed = Trainer(build_tiny_encoder(), _examples(build_tiny_encoder()), config_b)
    resumed.run(show_progress_bar=False)

    assert resumed.step == full.step == 6
    for key, value in full.encoder.trainable_state().items():
        assert torch.allclose(value, resumed.encoder.trainable_state()[key], atol=1e-6), key
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "b" / "run" / "loss_log.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_checkpoints_hold_no_pickles(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.output_dir.mkdir(parents=True)
    trainer = Trainer(build_tiny_encoder(), _examples(build_tiny_encoder()), config)
    trainer.train_step()
    folder = trainer.save_checkpoint()
    suffixes = {p.suffix for p in folder.iterdir()}
    assert suffixes <= {".json", ".safetensors"}, suffixes


def test_response_cache_resumes_without_duplicates_or_gaps(tmp_path: Path) -> None:
    backbone = build_tiny_backbone()
    rows = [{"id": f"q{i}", "text": q} for i, q in enumerate(QUERIES)]
    cache = tmp_path / "responses.jsonl"
    generate_response_cache(
        rows[:3],
        cache,
        backbone.model,
        backbone.tokenizer,
        max_new_tokens=4,
        batch_size=2,
        show_progress_bar=False,
    )
    # Simulate a kill mid-write: a torn final line.
    with cache.open("a") as fh:
        fh.write('{"id": "q3", "query": "torn')
    done = generate_response_cache(
        rows,
        cache,
        backbone.model,
        backbone.tokenizer,
        max_new_tokens=4,
        batch_size=2,
        show_progress_bar=False,
    )
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    ids = [line["id"] for line in lines]
    assert sorted(ids) == sorted(r["id"] for r in rows), "every id exactly once"
    assert set(done) == set(ids) and set(read_cache(cache)) == set(ids)
    # A third run has nothing to do and leaves the file as it is.
    before = cache.read_text()
    generate_response_cache(
        rows, cache, backbone.model, backbone.tokenizer, max_new_tokens=4, show_progress_bar=False
    )
    assert cache.read_text() == before


def test_targets_cache_recomputes_only_changed_responses(tmp_path: Path) -> None:
    from l2vg_retrieval.teacher import TeacherEncoder

    teacher = TeacherEncoder(build_tiny_teacher(), device="cpu")
    responses = {f"q{i}": {"query": q, "response": f"answer {q}"} for i, q in enumerate(QUERIES)}
    path = tmp_path / "targets.safetensors"
    first = build_targets(responses, teacher, path)
    assert set(load_targets(path)) == set(responses)
    responses["q0"]["response"] = "a different answer"
    second = build_targets(responses, teacher, path)
    assert not torch.allclose(first["q0"], second["q0"])
    assert torch.equal(first["q1"], second["q1"])


def test_config_with_a_bad_field_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("output_dir: run\ndata:\n  train_queries: q.jsonl\noptim:\n  lr: -1\n  stepz: 3\n")
    with pytest.raises(ConfigFileError) as info:
        load_train_config(path)
    assert "optim.lr" in str(info.value) and "optim.stepz" in str(info.value)


def test_config_paths_resolve_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "train.yaml"
    path.parent.mkdir()
    path.write_text("output_dir: run\ndata:\n  train_queries: q.jsonl\n")
    config = load_train_config(path)
    assert config.output_dir == (tmp_path / "sub" / "run").resolve()
    assert config.data.train_queries == (tmp_path / "sub" / "q.jsonl").resolve()


def test_both_loss_weights_zero_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both be 0"):
        TrainConfig.model_validate(
            {
                "output_dir": tmp_path,
                "data": {"train_queries": tmp_path / "q"},
                "recon_weight": 0,
                "align_weight": 0,
            }
        )


def test_refit_alignment_head_solves_the_alignment_mse() -> None:
    from l2vg_retrieval.training.refit import refit_alignment_head

    encoder = build_tiny_encoder()
    examples = _examples(encoder, 12)
    frozen = {k: v.clone() for k, v in encoder.trainable_state().items() if not k.startswith("align_head")}

    def align_mse() -> float:
        with torch.no_grad():
            _, align = compute_losses(encoder, examples, [None] * len(examples))
        return float(align)

    # Targets the head can reach: a fixed linear map of the features, unit-normalised.
    from l2vg_retrieval.training.refit import mean_soft_prompts

    features = mean_soft_prompts(encoder, [ex.query for ex in examples], None)
    true_map = torch.randn(encoder.dim, features.shape[1], generator=torch.Generator().manual_seed(3))
    reachable = torch.nn.functional.normalize(features @ true_map.T, dim=-1)
    examples = [TrainExample(ex.query, ex.response_ids, t) for ex, t in zip(examples, reachable, strict=True)]

    before = align_mse()
    info = refit_alignment_head(encoder, examples, [None], ridges=(1e-6, 1e-3))
    assert info["kept_refit"], info
    assert info["validation_cosine_ridge_head"] > info["validation_cosine_sgd_head"]
    assert info["align_mse_after_refit"] < info["align_mse_before_refit"]
    assert align_mse() < before
    assert info["ridge"] in (1e-6, 1e-3) and info["refit_rows"] == 12
    for key, value in frozen.items():
        assert torch.equal(value, encoder.trainable_state()[key]), f"refit must only touch the head: {key}"


def _config_with(tmp_path: Path, **top: object) -> TrainConfig:
    base = _config(tmp_path).model_dump()
    base.update(top)
    return TrainConfig.model_validate(base)


def test_micro_batches_give_the_full_batch_update(tmp_path: Path) -> None:
    """Alignment-only steps: the per-example mean splits exactly over micro-batches."""
    results = []
    for micro in (None, 2):
        config = _config_with(tmp_path / str(micro), align_only_steps=10, align_loss="cosine")
        config = config.model_copy(
            update={"optim": config.optim.model_copy(update={"micro_batch_size": micro})}
        )
        config.output_dir.mkdir(parents=True)
        trainer = Trainer(build_tiny_encoder(), _examples(build_tiny_encoder()), config)
        recon, align = trainer.train_step()
        assert recon is None  # an alignment-only step skips the response pass
        results.append((align, trainer.encoder.trainable_state()))
    (align_full, state_full), (align_micro, state_micro) = results
    assert abs(align_full - align_micro) < 1e-6
    for key, value in state_full.items():
        assert torch.allclose(value, state_micro[key], atol=1e-6), key


def test_alignment_only_phase_then_joint_steps_in_the_log(tmp_path: Path) -> None:
    config = _config_with(tmp_path, align_only_steps=4, align_loss="cosine")
    config.output_dir.mkdir(parents=True)
    Trainer(build_tiny_encoder(), _examples(build_tiny_encoder()), config).run(show_progress_bar=False)
    log = [json.loads(line) for line in (config.output_dir / "loss_log.jsonl").read_text().splitlines()]
    assert [r["recon"] is None for r in log] == [True] * 4 + [False] * 2
    assert all(0.0 <= r["align"] <= 2.0 for r in log)  # 1 - cosine


def test_response_cache_is_seeded_from_a_committed_gzip(tmp_path: Path) -> None:
    import gzip

    from l2vg_retrieval.training.responses import seed_from

    seed = tmp_path / "seed.jsonl.gz"
    rows = [{"id": f"q{i}", "query": f"question {i}", "response": f"answer {i}"} for i in range(5)]
    with gzip.open(seed, "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows) + '{"torn": ')
    cache = tmp_path / "run" / "responses.jsonl"
    cache.parent.mkdir()
    cache.write_text(json.dumps({**rows[0], "response": "kept"}) + "\n")
    assert seed_from(seed, cache, ["q0", "q1", "q3", "missing"]) == 2
    got = read_cache(cache)
    assert sorted(got) == ["q0", "q1", "q3"]
    assert got["q0"]["response"] == "kept"  # a cached row is never overwritten
    assert seed_from(seed, cache, ["q0", "q1", "q3"]) == 0  # idempotent


def test_refit_keeps_the_sgd_head_when_the_solve_is_worse_on_validation() -> None:
    from l2vg_retrieval.training.refit import refit_alignment_head

    encoder = build_tiny_encoder()
    examples = _examples(encoder, 12)  # random targets: nothing generalises to validation
    head = {k: v.clone() for k, v in encoder.trainable_state().items() if k.startswith("align_head")}
    info = refit_alignment_head(encoder, examples, [None, "retrieve:"], ridges=(1e-3,))
    state = encoder.trainable_state()
    changed = any(not torch.equal(v, state[k]) for k, v in head.items())
    assert changed == info["kept_refit"]
    assert info["kept_refit"] == (info["validation_cosine_ridge_head"] > info["validation_cosine_sgd_head"])
