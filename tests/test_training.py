"""Training pipeline on the tiny random model: losses, resume, caches, config validation."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_backbone, build_tiny_encoder, build_tiny_teacher, write_tiny_train_config

from l2vg_retrieval.training import trainer as trainer_module
from l2vg_retrieval.training.config import ConfigFileError, TrainConfig, load_train_config
from l2vg_retrieval.training.responses import generate_response_cache, read_cache
from l2vg_retrieval.training.targets import build_targets, load_targets
from l2vg_retrieval.training.trainer import Trainer, TrainExample, compute_losses, split_micro_batches

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
        response = QUERIES[(i + 1) % len(QUERIES)]
        ids = encoder.tokenizer(response, add_special_tokens=False)["input_ids"]
        target = torch.nn.functional.normalize(torch.randn(encoder.dim, generator=generator), dim=0)
        out.append(TrainExample(QUERIES[i % len(QUERIES)], (*ids, eos), target, response))
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
    taken: list[int] = []
    step_once = resumed.train_step

    def counted_step() -> tuple[float | None, float]:
        taken.append(resumed.step)
        return step_once()

    resumed.train_step = counted_step  # type: ignore[method-assign]
    result = resumed.run(show_progress_bar=False)

    assert resumed.step == full.step == 6
    assert result.resumed_from_step == 3 and taken == [3, 4, 5], "resumes at the checkpoint, not at 0"
    for key, value in full.encoder.trainable_state().items():
        assert torch.allclose(value, resumed.encoder.trainable_state()[key], atol=1e-6), key
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "b" / "run" / "loss_log.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_a_save_killed_before_its_rename_is_not_resumed_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A kill inside save_checkpoint leaves ``step-N.tmp`` (finished but not renamed, or half
    written); resume must take the last renamed checkpoint and say so in the log."""
    config = _config(tmp_path)
    config.output_dir.mkdir(parents=True)
    first = Trainer(build_tiny_encoder(), _examples(build_tiny_encoder()), config)
    for _ in range(3):
        first.train_step()
    first.save_checkpoint()
    first.train_step()

    def killed(self: Path, target: Path) -> Path:
        raise KeyboardInterrupt("killed before the rename")

    with monkeypatch.context() as m:
        m.setattr(Path, "rename", killed)
        with pytest.raises(KeyboardInterrupt):
            first.save_checkpoint()
    ckpt = config.output_dir / "checkpoints"
    assert (ckpt / "step-0000004.tmp" / "trainer_state.json").is_file()
    (ckpt / "step-0000005.tmp").mkdir()  # a save killed earlier still: no state file yet

    resumed = Trainer(build_tiny_encoder(), _examples(build_tiny_encoder()), config)
    assert resumed.latest_checkpoint() == ckpt / "step-0000003"
    with caplog.at_level(logging.INFO, logger="l2vg_retrieval.training.trainer"):
        result = resumed.run(show_progress_bar=False)
    assert result.resumed_from_step == 3 and resumed.step == 6
    assert any("resuming from" in r.message and "at step 3" in r.message for r in caplog.records)
    assert resumed.latest_checkpoint() == ckpt / "step-0000006"


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
    # Short names and hub ids pass through; a model folder written './x' is a path like the rest.
    assert (config.encoder.backbone, config.encoder.teacher) == ("smollm2-135m-instruct", "all-minilm-l6-v2")
    path.write_text(
        "output_dir: run\ndata:\n  train_queries: q.jsonl\n"
        "encoder:\n  backbone: ./models/lm\n  teacher: HuggingFaceTB/some-teacher\n"
    )
    config = load_train_config(path)
    assert config.encoder.backbone == str((tmp_path / "sub" / "models" / "lm").resolve())
    assert config.encoder.teacher == "HuggingFaceTB/some-teacher"
    # An LLM2Vec teacher folder after its prefix resolves the same way; the short name does not.
    path.write_text("output_dir: run\ndata:\n  train_queries: q.jsonl\nencoder:\n  teacher: llm2vec:../l2v\n")
    assert load_train_config(path).encoder.teacher == f"llm2vec:{(tmp_path / 'l2v').resolve()}"
    path.write_text("output_dir: run\ndata:\n  train_queries: q.jsonl\nencoder:\n  teacher: llm2vec\n")
    assert load_train_config(path).encoder.teacher == "llm2vec"


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


def _alignment_trainer(folder: Path, **optim: object) -> Trainer:
    """A tiny alignment-only trainer whose optimiser settings are ``optim``."""
    config = _config_with(folder, align_only_steps=10, align_loss="cosine")
    config = config.model_copy(update={"optim": config.optim.model_copy(update=optim)})
    config.output_dir.mkdir(parents=True)
    return Trainer(build_tiny_encoder(), _examples(build_tiny_encoder()), config)


def test_micro_batches_give_the_full_batch_update(tmp_path: Path) -> None:
    """Alignment-only steps: the per-example mean splits exactly over micro-batches."""
    results = []
    for micro in (None, 2):
        trainer = _alignment_trainer(tmp_path / str(micro), micro_batch_size=micro)
        recon, align = trainer.train_step()
        assert recon is None  # an alignment-only step skips the response pass
        results.append((align, trainer.encoder.trainable_state()))
    (align_full, state_full), (align_micro, state_micro) = results
    assert abs(align_full - align_micro) < 1e-6
    for key, value in state_full.items():
        assert torch.allclose(value, state_micro[key], atol=1e-6), key


def test_token_capped_micro_batches_give_the_full_batch_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grouped by padded tokens (longest first), the step is still the full batch's."""
    results = []
    for cap in (None, 40):
        trainer = _alignment_trainer(tmp_path / str(cap), micro_batch_tokens=cap)
        calls: list[int] = []

        def counting(encoder: object, batch: list, *args: object, calls: list[int] = calls, **kwargs: object):
            calls.append(len(batch))
            return compute_losses(encoder, batch, *args, **kwargs)

        monkeypatch.setattr(trainer_module, "compute_losses", counting)
        _, align = trainer.train_step()
        results.append((align, trainer.encoder.trainable_state(), calls))
    (align_full, state_full, calls_full), (align_capped, state_capped, calls_capped) = results
    assert calls_full == [sum(calls_full)] and len(calls_capped) > 1  # the cap did split the batch
    assert sum(calls_capped) == sum(calls_full)
    assert abs(align_full - align_capped) < 1e-6
    for key, value in state_full.items():
        assert torch.allclose(value, state_capped[key], atol=1e-6), key


def test_joint_steps_split_over_micro_batches_give_the_full_batch_update(tmp_path: Path) -> None:
    """With the reconstruction pass, answers of different lengths fall in different
    micro-batches: the CE is a mean over answer tokens, so each micro-batch's CE must weigh
    by its share of the batch's tokens, not of its examples, for the step to be the same."""
    results = []
    for micro in (None, 1):
        config = _config_with(tmp_path / str(micro), align_only_steps=0, align_loss="cosine")
        optim = config.optim.model_copy(update={"micro_batch_size": micro})
        config = config.model_copy(update={"optim": optim})
        config.output_dir.mkdir(parents=True)
        examples = _examples(build_tiny_encoder())
        assert len({len(ex.response_ids) for ex in examples[:4]}) > 1  # lengths differ in the batch
        trainer = Trainer(build_tiny_encoder(), examples, config)
        recon, align = trainer.train_step()
        results.append((recon, align, trainer.encoder.trainable_state()))
    (recon_full, align_full, state_full), (recon_micro, align_micro, state_micro) = results
    assert recon_full is not None and recon_micro is not None
    assert abs(recon_full - recon_micro) < 1e-5 and abs(align_full - align_micro) < 1e-6
    for key, value in state_full.items():
        assert torch.allclose(value, state_micro[key], atol=1e-6), key


def test_document_loss_trains_exactly_the_generative_document_path() -> None:
    """The document-side loss is 1 - cos between the target and what encode_document
    returns for the response text at inference, and a step on it lowers it."""
    from l2vg_retrieval.training.trainer import document_alignment_loss

    encoder = build_tiny_encoder()
    batch = _examples(encoder, 4)
    with torch.no_grad():
        loss = document_alignment_loss(encoder, batch, align_kind="cosine")
    served = torch.as_tensor(
        encoder.encode_document([ex.response for ex in batch], normalize_embeddings=False)
    )
    targets = torch.stack([ex.target for ex in batch])
    expected = (1 - torch.nn.functional.cosine_similarity(served, targets, dim=-1)).mean()
    assert abs(float(loss) - float(expected)) < 1e-5
    # A query-side loss on the same examples reads other text with another prompt.
    with torch.no_grad():
        _, query_side = compute_losses(encoder, batch, [None] * 4, align_kind="cosine", with_recon=False)
    assert abs(float(query_side) - float(loss)) > 1e-4

    params = encoder.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    document_alignment_loss(encoder, batch, align_kind="cosine").backward()
    optimizer.step()
    with torch.no_grad():
        assert document_alignment_loss(encoder, batch, align_kind="cosine") < loss
    with pytest.raises(ValueError, match="response text"):
        document_alignment_loss(encoder, [TrainExample("q", (5,), batch[0].target)], align_kind="cosine")


def test_document_loss_is_logged_and_splits_over_token_capped_micro_batches(tmp_path: Path) -> None:
    results = []
    for cap in (None, 40):
        trainer = _alignment_trainer(tmp_path / str(cap), micro_batch_tokens=cap)
        trainer.config = trainer.config.model_copy(update={"document_align_weight": 0.5})
        _, align = trainer.train_step()
        assert trainer.last_document_align is not None and trainer.last_document_align > 0
        results.append((align, trainer.last_document_align, trainer.encoder.trainable_state()))
    (align_a, doc_a, state_a), (align_b, doc_b, state_b) = results
    assert abs(align_a - align_b) < 1e-6 and abs(doc_a - doc_b) < 1e-6
    for key, value in state_a.items():
        assert torch.allclose(value, state_b[key], atol=1e-6), key
    # Without the document term, the same step moves the weights elsewhere.
    plain = _alignment_trainer(tmp_path / "plain")
    plain.train_step()
    assert plain.last_document_align is None
    assert any(
        not torch.allclose(v, state_a[k], atol=1e-6) for k, v in plain.encoder.trainable_state().items()
    )


def test_refit_with_documents_solves_for_query_and_document_rows() -> None:
    from l2vg_retrieval.training.refit import refit_alignment_head

    encoder = build_tiny_encoder()
    examples = _examples(encoder, 12)
    info = refit_alignment_head(
        encoder, examples, [None, "retrieve:"], ridges=(1e-3,), document_prompt=encoder.config.document_prompt
    )
    assert info["refit_rows"] == 36


def test_micro_batch_groups_respect_both_caps_and_keep_every_example_once() -> None:
    lengths = [5, 30, 12, 12, 50, 3, 7]
    groups = split_micro_batches(len(lengths), max_items=3, max_tokens=36, lengths=lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert groups[0] == [4]  # longer than the cap: alone, not dropped
    for group in groups:
        assert len(group) <= 3
        width = max(lengths[i] for i in group)
        assert len(group) == 1 or len(group) * width <= 36
        assert lengths[group[0]] == width  # longest first: the first sets the padded width
    # Without a token cap: the old consecutive split, unchanged.
    assert split_micro_batches(5, max_items=2, max_tokens=None, lengths=None) == [[0, 1], [2, 3], [4]]
    assert split_micro_batches(3, max_items=None, max_tokens=None, lengths=None) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="one length per example"):
        split_micro_batches(3, max_items=None, max_tokens=10, lengths=[1, 2])


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


# ---------------------------------------------------------------- the whole pipeline, killed and resumed
PIPELINE_STEPS = 12
RESPONSE_BATCH = 4


def _write_pipeline_config(folder: Path, model_dirs: tuple[Path, Path], **top: object) -> Path:
    return write_tiny_train_config(folder, model_dirs, **top)


def _loss_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "loss_log.jsonl").read_text().splitlines()]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dirs: tuple[Path, Path]
) -> tuple[Path, dict]:
    """run_training from start to end in one go, in this process (baselines included)."""
    from l2vg_retrieval.training.pipeline import run_training

    config_path = _write_pipeline_config(tmp_path_factory.mktemp("uninterrupted"), tiny_model_dirs)
    threads = torch.get_num_threads()
    # One thread, as in the subprocesses below (same arithmetic order), and a tiny model only
    # loses time to a second thread when the cores are shared.
    torch.set_num_threads(1)
    try:
        summary = run_training(load_train_config(config_path), show_progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    return config_path.parent / "run", summary


def test_run_training_end_to_end_writes_every_stage(uninterrupted_run: tuple[Path, dict]) -> None:
    from l2vg_retrieval.encoder import L2VGEncoder

    run, summary = uninterrupted_run
    # Responses: one row per train and held-out query, nothing twice.
    responses = [json.loads(line) for line in (run / "responses.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in responses) == [f"q{i:02d}" for i in range(20)]
    assert all(r["n_tokens"] <= 6 for r in responses)
    # Targets: one teacher vector per response, unit length (the teacher normalises).
    targets = load_targets(run / "targets.safetensors")
    assert set(targets) == {r["id"] for r in responses}
    assert all(abs(float(v.norm()) - 1.0) < 1e-4 for _, v in targets.values())
    # Steps: every step once, alignment-only first, checkpoints on the schedule.
    log = [json.loads(line) for line in (run / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, PIPELINE_STEPS + 1))
    assert [r["recon"] is None for r in log] == [True] * 4 + [False] * 8
    assert [r["step"] for r in log if "eval" in r] == [4, 8, 12]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step-{s:07d}" for s in (3, 6, 9, 12)]
    assert summary["steps"] == PIPELINE_STEPS and summary["resumed_from_step"] is None
    assert summary["train_examples"] == 16 and summary["heldout_queries"] == 4
    # Refit: ran over the training examples with both prompts.
    assert summary["refit"]["refit_rows"] == 32
    # Evaluation: the trained model, the SGD head before the refit, and the baselines.
    heldout = json.loads((run / "heldout_eval.json").read_text())
    assert set(heldout["models"]) == {
        "l2vg-trained",
        "l2vg-trained (SGD head, before refit)",
        "l2vg-untrained",
        "input-centric",
        "teacher(query)",
    }
    assert len(heldout["decoded"]) == 4
    assert -1.0 <= heldout["models"]["l2vg-trained"]["response_text_cosine"] <= 1.0
    assert "response_text_cosine" not in heldout["models"]["teacher(query)"]
    assert "| l2vg-trained |" in (run / "heldout_eval.md").read_text()
    # The student against the trivial predictor, paired over the same held-out queries.
    versus = heldout["alignment_vs_trivial"]
    trained, trivial = heldout["models"]["l2vg-trained"], heldout["models"]["teacher(query)"]
    assert versus["mean_difference"] == pytest.approx(
        trained["alignment_cosine"] - trivial["alignment_cosine"]
    )
    assert versus["ci95"][0] <= versus["mean_difference"] <= versus["ci95"][1]
    low, high = trained["alignment_cosine_ci95"]
    assert low <= trained["alignment_cosine"] <= high
    assert "trivial predictor" in (run / "heldout_eval.md").read_text()
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary))
    # The final checkpoint loads through the public API and records the run.
    final = L2VGEncoder.from_pretrained(run / "final", dtype="float32")
    assert final.config.encoder_lora is not None
    assert final.encode_query("what is a light year?").shape == (32,)
    meta = json.loads((run / "final" / "l2vg_config.json").read_text())
    assert meta["training"]["steps"] == PIPELINE_STEPS


def test_init_from_with_other_options_warm_starts_them_and_other_changes_are_refused(
    uninterrupted_run: tuple[Path, dict], tmp_path: Path, tiny_model_dirs: tuple[Path, Path]
) -> None:
    """Issue 12's equal-budget comparison: an option run starts from a trained checkpoint."""
    import yaml

    from l2vg_retrieval.encoder import L2VGEncoder
    from l2vg_retrieval.training.pipeline import run_training

    run, _ = uninterrupted_run
    path = _write_pipeline_config(
        tmp_path / "exit", tiny_model_dirs, align_only_steps=2, refit_align_head=False
    )
    raw = yaml.safe_load(path.read_text())
    raw["encoder"]["exit_layer"] = 1
    raw["optim"]["steps"] = 2
    path.write_text(yaml.safe_dump(raw))
    summary = run_training(
        load_train_config(path), init_from=run / "final", evaluate_baselines=False, show_progress_bar=False
    )
    assert summary["init_from"] == str(run / "final") and summary["steps"] == 2
    started = _weights(run / "final")
    started_config = json.loads((run / "final" / "l2vg_config.json").read_text())["config"]
    trained = L2VGEncoder.from_pretrained(tmp_path / "exit" / "run" / "final", dtype="float32")
    assert trained.config.exit_layer == 1
    moved = _weights(tmp_path / "exit" / "run" / "final")
    assert set(moved) == set(started) and any(not torch.equal(moved[k], started[k]) for k in started)

    def rerun(output_dir: str, **encoder: object) -> dict[str, object]:
        raw["encoder"].update(encoder)
        raw["output_dir"] = output_dir
        path.write_text(yaml.safe_dump(raw))
        config = load_train_config(path)
        return run_training(
            config, init_from=run / "final", evaluate_baselines=False, show_progress_bar=False
        )

    # A change outside the option fields (the token counts) cannot reuse the tensors.
    with pytest.raises(ValueError, match="beyond the option fields"):
        rerun("run2", exit_layer=None, n_compression=4)
    # The encoder LoRA may grow in rank (it starts as the checkpoint's adapter), not shrink.
    lora = raw["encoder"]["encoder_lora"]
    doubled = {**lora, "r": 2 * lora["r"], "alpha": 2 * lora["alpha"]}
    summary = rerun("run3", n_compression=started_config["n_compression"], encoder_lora=doubled)
    grown = L2VGEncoder.from_pretrained(tmp_path / "exit" / "run3" / "final", dtype="float32")
    assert grown.config.encoder_lora.r == 2 * lora["r"] and summary["steps"] == 2
    with pytest.raises(ValueError, match="can only grow"):
        rerun("run4", encoder_lora={**lora, "r": 1})


_STALLING_TRAIN = textwrap.dedent(
    """
    import sys, time
    from l2vg_retrieval.training import responses, trainer

    where = sys.argv[1]

    def stall():
        print("stalled", flush=True)
        time.sleep(600)

    if where == "responses":  # hang in the second response batch: the first is on disk
        real_generate = responses.generate_responses
        calls = []

        def generate(*args, **kwargs):
            if calls:
                stall()
            calls.append(1)
            return real_generate(*args, **kwargs)

        responses.generate_responses = generate
    else:  # hang before optimiser step N+1: steps 1..N are logged, N itself not checkpointed
        at = int(where)
        real_step = trainer.Trainer.train_step

        def train_step(self):
            if self.step == at:
                stall()
            return real_step(self)

        trainer.Trainer.train_step = train_step

    from l2vg_retrieval.cli import main

    sys.argv = ["l2vg", *sys.argv[2:]]
    main()
    """
)


_ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train_until_stalled_then_kill(config_path: Path, where: str) -> None:
    """`l2vg train` in a subprocess, SIGKILLed once it reports it is stalled at ``where``."""
    err_path = config_path.parent / f"stderr-{where}.txt"
    err = err_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", _STALLING_TRAIN, where, "train", str(config_path), "--no-baselines"],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env=_ONE_THREAD,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "stalled":
            pytest.fail(f"the run did not stall as planned: {line!r}\n{err_path.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=120)
        err.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.timeout(600)
def test_killed_training_resumes_at_its_checkpoint_with_the_uninterrupted_result(
    tmp_path: Path, tiny_model_dirs: tuple[Path, Path], uninterrupted_run: tuple[Path, dict]
) -> None:
    config_path = _write_pipeline_config(tmp_path, tiny_model_dirs)
    run = tmp_path / "run"

    # 1. Killed while generating responses: exactly the first batch survives.
    _train_until_stalled_then_kill(config_path, "responses")
    first_batch = (run / "responses.jsonl").read_text()
    assert len(first_batch.splitlines()) == RESPONSE_BATCH
    assert not (run / "checkpoints").exists()

    # 2. Rerun, killed after the step-3 checkpoint with step 4 logged but not checkpointed.
    _train_until_stalled_then_kill(config_path, "4")
    responses = (run / "responses.jsonl").read_text()
    assert responses.startswith(first_batch), "responses already on disk must not be redone"
    ids = [json.loads(line)["id"] for line in responses.splitlines()]
    assert sorted(ids) == [f"q{i:02d}" for i in range(20)], "every response exactly once"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000003"]
    assert _loss_steps(run) == [1, 2, 3, 4]
    kept_lines = (run / "loss_log.jsonl").read_text().splitlines()[:3]

    # 3. Rerun through the real entry point: continues from step 3, redoes the lost step 4.
    entry_point = "from l2vg_retrieval.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", entry_point, "train", str(config_path), "--no-baselines"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_ONE_THREAD,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["resumed_from_step"] == 3 and summary["steps"] == PIPELINE_STEPS
    assert _loss_steps(run) == list(range(1, PIPELINE_STEPS + 1)), "no duplicate or missing step"
    assert (run / "loss_log.jsonl").read_text().splitlines()[:3] == kept_lines
    assert (run / "responses.jsonl").read_text() == responses, "nothing generated twice"

    # The interrupted run ends exactly where the uninterrupted one does.
    reference, reference_summary = uninterrupted_run
    assert (run / "responses.jsonl").read_text().count("\n") == 20
    assert read_cache(run / "responses.jsonl") == read_cache(reference / "responses.jsonl")
    reference_log = [json.loads(line) for line in (reference / "loss_log.jsonl").read_text().splitlines()]
    resumed_log = [json.loads(line) for line in (run / "loss_log.jsonl").read_text().splitlines()]
    for ours, theirs in zip(resumed_log, reference_log, strict=True):
        assert (ours["recon"], ours["align"], ours["lr"]) == (theirs["recon"], theirs["align"], theirs["lr"])
    for folder in ("checkpoints/step-0000012", "final"):
        ours, theirs = _weights(run / folder), _weights(reference / folder)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), f"{folder}: {key} differs"
    assert summary["refit"]["kept_refit"] == reference_summary["refit"]["kept_refit"]


def test_document_stage_then_decoding_phase_through_the_pipeline(
    uninterrupted_run: tuple[Path, dict], tmp_path: Path, tiny_model_dirs: tuple[Path, Path]
) -> None:
    """The default's last two stages on the tiny model: the document-side term (logged,
    refit over query and document rows), then a decoding phase in which only the
    reconstruction head trains and the refit re-solves the alignment head."""
    import yaml

    from l2vg_retrieval.training.pipeline import run_training

    run, _ = uninterrupted_run
    documents = _write_pipeline_config(tmp_path / "documents", tiny_model_dirs, align_only_steps=2)
    raw = yaml.safe_load(documents.read_text())
    raw["optim"]["steps"] = 2
    raw["document_align_weight"] = 1.0
    documents.write_text(yaml.safe_dump(raw))
    summary = run_training(
        load_train_config(documents),
        init_from=run / "final",
        evaluate_baselines=False,
        show_progress_bar=False,
    )
    log = [
        json.loads(line)
        for line in (tmp_path / "documents" / "run" / "loss_log.jsonl").read_text().splitlines()
    ]
    assert all(r["document_align"] > 0 for r in log)
    assert summary["refit"]["refit_rows"] == 3 * summary["train_examples"]

    decode = _write_pipeline_config(tmp_path / "decode", tiny_model_dirs, align_only_steps=0)
    raw = yaml.safe_load(decode.read_text())
    raw["optim"]["steps"] = 2
    raw.update(train_only=["recon_head"], align_weight=0.0, refit_documents=True)
    decode.write_text(yaml.safe_dump(raw))
    summary = run_training(
        load_train_config(decode),
        init_from=tmp_path / "documents" / "run" / "final",
        evaluate_baselines=False,
        show_progress_bar=False,
    )
    assert summary["refit"]["refit_rows"] == 3 * summary["train_examples"]
    before = _weights(tmp_path / "documents" / "run" / "final")
    after = _weights(tmp_path / "decode" / "run" / "final")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"recon_head.weight", "recon_head.bias"} <= moved
    assert moved <= {"recon_head.weight", "recon_head.bias", "align_head.weight", "align_head.bias"}


def test_refit_only_stage_moves_only_the_alignment_head_and_publishes_a_card_without_curves(
    uninterrupted_run: tuple[Path, dict], tmp_path: Path, tiny_model_dirs: tuple[Path, Path]
) -> None:
    """steps 0 (the default's stage 7): no optimiser step, the head re-solved over the whole pool."""
    import yaml

    from l2vg_retrieval.training.card import publish
    from l2vg_retrieval.training.pipeline import run_training

    run, _ = uninterrupted_run
    config = _write_pipeline_config(tmp_path / "refit", tiny_model_dirs, align_only_steps=0)
    raw = yaml.safe_load(config.read_text())
    raw["optim"].update(steps=0, warmup_steps=0)
    raw.update(refit_documents=True, refit_max_examples=None)
    config.write_text(yaml.safe_dump(raw))
    summary = run_training(
        load_train_config(config), init_from=run / "final", evaluate_baselines=False, show_progress_bar=False
    )
    stage = tmp_path / "refit" / "run"
    assert summary["steps"] == 0 and summary["final_align"] is None
    assert not (stage / "loss_log.jsonl").read_text().strip()
    assert summary["refit"]["refit_rows"] == 3 * summary["train_examples"]
    heldout = json.loads((stage / "heldout_eval.json").read_text())
    assert list(heldout["models"]) == ["l2vg-trained", "l2vg-trained (starting head, before refit)"]
    before, after = _weights(run / "final"), _weights(stage / "final")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == ({"align_head.weight", "align_head.bias"} if summary["refit"]["kept_refit"] else set())

    plot = tmp_path / "docs" / "training_loss.png"
    dest = publish(stage, tmp_path / "published", sources_json=None, plot_path=plot, command="l2vg publish")
    card = (dest / "CARD.md").read_text()
    assert "no optimiser steps" in card and f"over {summary['refit']['refit_rows']} rows" in card
    assert "![loss curves]" not in card and not plot.exists()
    assert str(tmp_path) not in card


# ---------------------------------------------------------------- frozen means frozen
def _backbone_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base weights by their original names (a LoRA wraps them as '...base_layer...')."""
    return {
        k.replace(".base_layer", ""): v.detach().clone()
        for k, v in model.state_dict().items()
        if "lora_" not in k
    }


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8.0}], ids=["frozen-encoder", "encoder-lora"])
def test_trainer_run_leaves_every_backbone_tensor_bit_identical(tmp_path: Path, lora: dict | None) -> None:
    from l2vg_retrieval.config import EncoderConfig, EncoderLoraConfig
    from l2vg_retrieval.encoder import L2VGEncoder

    backbone = build_tiny_backbone()
    # As a user's own from_pretrained model arrives: trainable. The encoder must freeze it.
    backbone.model.requires_grad_(True)
    before = _backbone_tensors(backbone.model)
    config = EncoderConfig(
        backbone="tiny-random-llama",
        teacher="tiny-random-bert",
        n_thought=2,
        n_compression=3,
        max_text_tokens=64,
        encoder_lora=EncoderLoraConfig(**lora) if lora else None,
    )
    encoder = L2VGEncoder(
        config, backbone, teacher_dim=32, teacher=build_tiny_teacher(), device="cpu", dtype="float32"
    )
    frozen = [n for n, p in encoder.lm.named_parameters() if "lora_" not in n]
    assert frozen and not any(p.requires_grad for n, p in encoder.lm.named_parameters() if n in frozen)
    train_config = _config_with(tmp_path, align_only_steps=2).model_copy(
        update={"optim": _config(tmp_path).optim.model_copy(update={"weight_decay": 0.1})}
    )
    train_config.output_dir.mkdir(parents=True)
    trainable_before = {k: v.clone() for k, v in encoder.trainable_state().items()}
    result = Trainer(encoder, _examples(encoder), train_config).run(show_progress_bar=False)
    assert result.steps == 6 and result.final_recon is not None
    after = _backbone_tensors(encoder.lm)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"backbone tensors changed in training: {changed}"
    assert all(p.grad is None for n, p in encoder.lm.named_parameters() if n in frozen)
    # ...while every trainable tensor (tokens, heads, LoRA) did move.
    state = encoder.trainable_state()
    assert all(not torch.equal(state[k], v) for k, v in trainable_before.items())
    assert any(k.startswith("encoder_lora.") for k in state) == (lora is not None)


def test_train_only_the_reconstruction_head_leaves_the_embedding_features_fixed(tmp_path: Path) -> None:
    """A decoding phase: only recon_head moves (tokens, LoRA and the alignment head stay
    bit-identical), and the reconstruction loss falls."""
    from l2vg_retrieval.training.trainer import select_parameters

    encoder = build_tiny_encoder(encoder_lora={"r": 4, "alpha": 8})
    config = _config_with(tmp_path, train_only=["recon_head"], align_weight=0.0, recon_weight=1.0)
    config.output_dir.mkdir(parents=True)
    before = {k: v.clone() for k, v in encoder.trainable_state().items()}
    trainer = Trainer(encoder, _examples(encoder), config)
    assert len(trainer.params) == 2  # recon_head.weight and .bias
    batch = _examples(encoder, 4)
    with torch.no_grad():
        recon0, _ = compute_losses(encoder, batch, [None] * 4)
    for _ in range(3):
        trainer.train_step()
    with torch.no_grad():
        recon1, _ = compute_losses(encoder, batch, [None] * 4)
    assert recon1 < recon0
    after = encoder.trainable_state()
    moved = sorted(k for k, v in before.items() if not torch.equal(v, after[k]))
    assert moved == ["recon_head.bias", "recon_head.weight"]
    # The frozen LoRA got no gradient at all: autograd never recorded the encoding pass for it.
    assert all(
        p.grad is None for n, p in encoder.named_trainable_parameters() if n.startswith("encoder_lora.")
    )
    with pytest.raises(ValueError, match="matches no trainable tensor"):
        select_parameters(build_tiny_encoder(), ["no_such_part"])


def test_every_shipped_config_loads() -> None:
    """A typo in a committed recipe (an unknown key, a bad value) fails here, not after an
    hour of response generation. LLM2Vec configs are told apart by their stages."""
    import yaml

    from l2vg_retrieval.llm2vec.config import load_llm2vec_config
    from l2vg_retrieval.training.config import load_train_config

    paths = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        raw = yaml.safe_load(path.read_text())
        if "mntp" in raw or "simcse" in raw:
            load_llm2vec_config(path)
        else:
            config = load_train_config(path)
            # Every recipe keeps a batch-32 step within the machine's 4 GB by micro-batching.
            assert config.optim.micro_batch_size is not None or config.optim.batch_size <= 8, path
