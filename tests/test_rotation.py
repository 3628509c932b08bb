"""The variance-ordered teacher rotation (issue 12, item 2) on the tiny random models: Matryoshka
prefixes without retraining, full-size cosines unchanged, one space for head and teacher."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import build_tiny_backbone, build_tiny_encoder, build_tiny_teacher
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from l2vg_retrieval.cli import EXIT_MISMATCH, EXIT_USAGE, app
from l2vg_retrieval.encoder import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, L2VGEncoder
from l2vg_retrieval.rotation import (
    RotatedTeacher,
    apply_rotation,
    check_rotation,
    energy_by_prefix,
    variance_rotation,
)
from l2vg_retrieval.teacher import TeacherEncoder

TEXTS = [
    "what is the capital of France?",
    "bake bread at home",
    "a much longer text about the quick brown fox that jumps over the lazy dog " * 3,
    "numbers 0123456789 and punctuation",
]
_SUBJECTS = ["bread", "the fox", "Paris", "a planet", "tomato plants", "a hash map", "light", "yeast"]
_VERBS = ["needs", "jumps over", "is near", "grows from"]
_OBJECTS = ["water", "the lazy dog", "salt and flour", "the morning sun"]
# 128 distinct texts: four times the tiny teacher's 32 dimensions.
FIT_TEXTS = [f"{s} {v} {o}" for s, v, o in itertools.product(_SUBJECTS, _VERBS, _OBJECTS)]
DIM = 32  # conftest's tiny teacher


def _fit(encoder: L2VGEncoder) -> tuple[np.ndarray, torch.Tensor]:
    """Unit teacher vectors of FIT_TEXTS and the rotation fitted on them."""
    vectors = np.asarray(encoder.teacher.encode(FIT_TEXTS), dtype=np.float64)
    return vectors, variance_rotation(vectors)


def _encoder(**options: Any) -> L2VGEncoder:
    """A tiny encoder with a non-zero head bias, so the fold of b is exercised too."""
    encoder = build_tiny_encoder(**options)
    with torch.no_grad():
        encoder.align_head.bias.copy_(torch.randn(DIM, generator=torch.Generator().manual_seed(7)))
    return encoder


def _pair(**options: Any) -> tuple[L2VGEncoder, L2VGEncoder, torch.Tensor]:
    """(unrotated, rotated, R): two encoders with identical weights before the rotation."""
    plain, rotated = _encoder(**options), _encoder(**options)
    _, rotation = _fit(plain)
    return plain, apply_rotation(rotated, rotation), rotation


def _cosines(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit @ unit.T


def _load(folder: Path) -> L2VGEncoder:
    return L2VGEncoder.from_pretrained(
        folder, backbone=build_tiny_backbone(), teacher=build_tiny_teacher(), dtype="float32"
    )


# ---------------------------------------------------------------------- the rotation itself
def test_a_diagonal_second_moment_gives_the_sorting_permutation() -> None:
    # ±diag(s): E[y yᵀ] is exactly diag(s²)/n, so R must be the permutation sorting s, signs +.
    scales = torch.tensor([0.5, 3.0, 1.0, 2.0, 0.25], dtype=torch.float64)
    vectors = torch.cat([torch.diag(scales), -torch.diag(scales)])
    rotation = variance_rotation(vectors)
    expected = torch.eye(5)[torch.argsort(scales, descending=True)]
    assert rotation.dtype == torch.float32 and rotation.shape == (5, 5)
    assert torch.allclose(rotation, expected, atol=1e-6)


def test_rotation_is_orthogonal_sorted_decorrelating_and_deterministic(tiny_encoder: L2VGEncoder) -> None:
    vectors, rotation = _fit(tiny_encoder)
    r = rotation.double()
    assert torch.allclose(r @ r.T, torch.eye(DIM, dtype=torch.float64), atol=1e-5)
    moment = torch.as_tensor(vectors).T @ torch.as_tensor(vectors) / len(vectors)
    rotated_moment = r @ moment @ r.T
    variances = torch.diagonal(rotated_moment)
    assert bool((variances[:-1] >= variances[1:] - 1e-7).all()), "energy must fall along the rows"
    assert variances[0] > 2 * variances[-1]  # the data is anisotropic, so the order is not trivial
    # The eigenbasis: rotated coordinates are uncorrelated.
    assert (rotated_moment - torch.diag(variances)).abs().max() < 1e-5
    # Sign convention: each row's largest-magnitude entry is positive.
    pivots = rotation.abs().argmax(dim=1)
    assert bool((rotation[torch.arange(DIM), pivots] > 0).all())
    assert torch.equal(variance_rotation(vectors), rotation)
    assert torch.equal(variance_rotation(torch.as_tensor(vectors)), rotation)


def test_rotated_prefixes_keep_at_least_the_energy_of_any_other_basis(tiny_encoder: L2VGEncoder) -> None:
    vectors, rotation = _fit(tiny_encoder)
    dims = list(range(1, DIM + 1))
    before = energy_by_prefix(vectors, None, dims)
    after = energy_by_prefix(vectors, rotation, dims)
    random_q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(0)))
    other = energy_by_prefix(vectors, random_q.T.contiguous(), dims)
    for m in dims:
        assert after[m] >= before[m] - 1e-9 and after[m] >= other[m] - 1e-9, m
    assert after[DIM] == pytest.approx(1.0) and before[DIM] == pytest.approx(1.0)
    assert after[1] > before[1] + 0.05 and after[8] > before[8] + 0.05


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 4 vectors"):
        variance_rotation(np.ones((3, 4)))
    with pytest.raises(ValueError, match="2-D"):
        variance_rotation(np.ones(4))
    with pytest.raises(ValueError, match="NaN or infinite"):
        variance_rotation(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="not orthogonal"):
        check_rotation(2 * torch.eye(4), 4)
    with pytest.raises(ValueError, match=r"\[4, 4\]"):
        check_rotation(torch.eye(3), 4)
    with pytest.raises(ValueError, match="prefix size"):
        energy_by_prefix(np.ones((4, 4)), None, [5])


# ---------------------------------------------------------------------- the rotated encoder
def test_rotation_keeps_full_size_cosines_and_rotates_the_head(tmp_path: Path) -> None:
    plain, rotated, rotation = _pair()
    for prompt in (None, "retrieve:"):
        raw_plain = plain.encode(TEXTS, prompt=prompt, normalize_embeddings=False)
        raw_rotated = rotated.encode(TEXTS, prompt=prompt, normalize_embeddings=False)
        assert np.abs(raw_rotated - raw_plain @ rotation.numpy().T).max() < 1e-5
        assert np.abs(_cosines(raw_rotated) - _cosines(raw_plain)).max() < 1e-5
        assert not np.allclose(raw_rotated, raw_plain, atol=1e-3)  # it did rotate
    norms = [np.linalg.norm(e.encode(TEXTS, normalize_embeddings=False), axis=1) for e in (plain, rotated)]
    assert np.abs(norms[0] - norms[1]).max() < 1e-4
    # Prefixes differ: that is the point.
    assert not np.allclose(rotated.encode(TEXTS, dim=8), plain.encode(TEXTS, dim=8), atol=1e-3)
    assert rotated.config.teacher_rotation and not plain.config.teacher_rotation
    assert "teacher_rotation=True" in repr(rotated) and "teacher_rotation" not in repr(plain)


def test_teacher_vectors_live_in_the_rotated_space() -> None:
    plain, rotated, rotation = _pair(document_mode="teacher")
    r = rotation.numpy()
    teacher = rotated.teacher
    assert isinstance(teacher, RotatedTeacher) and isinstance(plain.teacher, TeacherEncoder)
    # The wrapper shares the loaded teacher: callers that reuse its model still can.
    assert teacher.teacher is rotated._teacher_encoder.teacher and teacher.dim == DIM
    raw = plain.teacher.encode(TEXTS, normalize_embeddings=False)
    expected = raw @ r.T
    expected_unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.abs(teacher.encode(TEXTS, normalize_embeddings=False) - expected).max() < 1e-5
    for method in ("encode", "encode_query", "encode_document"):
        assert np.abs(getattr(teacher, method)(TEXTS) - expected_unit).max() < 1e-5, method
    docs = rotated.encode_document(TEXTS)
    assert np.abs(docs - expected_unit).max() < 1e-5
    # Query/document cosines at full size are unchanged.
    scores_rotated = rotated.encode_query(TEXTS) @ docs.T
    scores_plain = plain.encode_query(TEXTS) @ plain.encode_document(TEXTS).T
    assert np.abs(scores_rotated - scores_plain).max() < 1e-5
    # Truncated teacher-mode documents are the normalised prefixes of the rotated vectors.
    cut = rotated.encode_document(TEXTS, dim=8)
    assert np.abs(cut - expected[:, :8] / np.linalg.norm(expected[:, :8], axis=1, keepdims=True)).max() < 1e-5
    # Output conventions match the plain teacher's.
    assert teacher.encode(TEXTS[0]).shape == (DIM,) and teacher.encode([]).shape == (0, DIM)
    tensor = teacher.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (len(TEXTS), DIM)
    assert np.abs(teacher.encode(TEXTS[0]) - expected_unit[0]).max() < 1e-5


def test_training_targets_and_the_refusal_prototype_are_rotated(tmp_path: Path) -> None:
    from l2vg_retrieval.safety import refusal_prototype
    from l2vg_retrieval.training.targets import build_targets

    plain, rotated, rotation = _pair()
    r = rotation.numpy()
    assert np.abs(refusal_prototype(rotated) - refusal_prototype(plain) @ r.T).max() < 1e-5
    responses = {f"r{i}": {"query": t, "response": t} for i, t in enumerate(TEXTS)}
    ours = build_targets(responses, rotated.teacher, tmp_path / "rotated.safetensors")
    theirs = build_targets(responses, plain.teacher, tmp_path / "plain.safetensors")
    for key in responses:
        assert np.abs(ours[key].numpy() - theirs[key].numpy() @ r.T).max() < 1e-5


def test_a_second_rotation_and_a_bad_matrix_are_refused() -> None:
    _, rotated, rotation = _pair()
    with pytest.raises(ValueError, match="already has a teacher rotation"):
        apply_rotation(rotated, rotation)
    with pytest.raises(ValueError, match="not orthogonal"):
        apply_rotation(build_tiny_encoder(), 2 * torch.eye(DIM))
    with pytest.raises(ValueError, match=r"\[32, 32\]"):
        apply_rotation(build_tiny_encoder(), torch.eye(16))


def test_an_unrotated_encoder_has_no_rotation_anywhere(tiny_encoder: L2VGEncoder) -> None:
    assert tiny_encoder.teacher_rotation is None
    assert "teacher_rotation" not in tiny_encoder.trainable_state()
    assert type(tiny_encoder.teacher) is TeacherEncoder
    assert "teacher_rotation" in tiny_encoder.config.fingerprint_exclusions()


# ---------------------------------------------------------------------- checkpoints
def test_round_trip_restores_the_rotation_and_changes_the_fingerprint(tmp_path: Path) -> None:
    plain, rotated, rotation = _pair()
    assert rotated.fingerprint != plain.fingerprint
    rotated.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert meta["config"]["teacher_rotation"] is True
    assert torch.equal(load_file(str(tmp_path / WEIGHTS_FILE))["teacher_rotation"], rotation)
    loaded = _load(tmp_path)
    assert loaded.config.teacher_rotation and loaded.teacher_rotation is not None
    assert torch.equal(loaded.teacher_rotation, rotation)
    assert np.array_equal(loaded.encode(TEXTS), rotated.encode(TEXTS))
    assert np.array_equal(loaded.teacher.encode(TEXTS), rotated.teacher.encode(TEXTS))
    assert loaded.fingerprint == rotated.fingerprint != plain.fingerprint
    # The flag alone, or R alone, also changes the fingerprint: neither may collide.
    flagged = build_tiny_encoder(teacher_rotation=True)
    assert flagged.fingerprint != build_tiny_encoder().fingerprint
    # A twin built from the config, then given the state (the benchmarks do this), is the same.
    twin = L2VGEncoder(
        rotated.config, rotated.backbone, teacher_dim=DIM, teacher=build_tiny_teacher(), dtype="float32"
    )
    twin.load_trainable_state(rotated.trainable_state())
    assert np.array_equal(twin.encode(TEXTS), rotated.encode(TEXTS))
    assert twin.fingerprint == rotated.fingerprint


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", r"missing \['teacher_rotation'\]"),
        ("unexpected", r"unexpected \['teacher_rotation'\]"),
        ("wrong-shape", r"'teacher_rotation' has shape \(16, 16\)"),
        ("not-orthogonal", "not orthogonal"),
    ],
)
def test_a_flag_without_a_valid_rotation_is_refused(damage: str, message: str, tmp_path: Path) -> None:
    _, rotated, _ = _pair()
    rotated.save_pretrained(tmp_path)
    weights, config = tmp_path / WEIGHTS_FILE, tmp_path / CONFIG_FILE
    tensors, meta = load_file(str(weights)), json.loads(config.read_text())
    if damage == "missing":
        del tensors["teacher_rotation"]
    elif damage == "unexpected":
        meta["config"]["teacher_rotation"] = False
    elif damage == "wrong-shape":
        tensors["teacher_rotation"] = torch.eye(16)
    else:
        tensors["teacher_rotation"] = 2 * torch.eye(DIM)
    save_file(tensors, str(weights))
    config.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        _load(tmp_path)


# ---------------------------------------------------------------------- l2vg rotate
runner = CliRunner()


def _run(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def test_rotate_command_end_to_end_and_refuses_a_second_rotation(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in FIT_TEXTS))
    out = tmp_path / "rotated"
    result = _run("rotate", tiny_checkpoint, out, "--texts", texts, "--dims", "64,16,8", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report["energy_by_prefix"]) == ["16", "8"]  # 64 exceeds the 32-d space
    for kept in report["energy_by_prefix"].values():
        assert kept["rotated"] > kept["unrotated"]
    assert report["n_vectors"] == len(FIT_TEXTS) and report["texts"] == "texts.jsonl"

    original = L2VGEncoder.from_pretrained(tiny_checkpoint, dtype="float32")
    rotated = L2VGEncoder.from_pretrained(out, dtype="float32")
    _, expected = _fit(original)
    assert rotated.config.teacher_rotation and rotated.teacher_rotation is not None
    assert torch.allclose(rotated.teacher_rotation, expected, atol=1e-5)
    assert report["fingerprint"] == rotated.fingerprint != original.fingerprint
    raw = original.encode(TEXTS, normalize_embeddings=False)
    assert np.abs(_cosines(rotated.encode(TEXTS, normalize_embeddings=False)) - _cosines(raw)).max() < 1e-5
    stored = json.loads((out / CONFIG_FILE).read_text())["teacher_rotation"]
    assert stored["energy_by_prefix"] == report["energy_by_prefix"]
    # The table form prints the energy kept at each requested size.
    table = _run("rotate", tiny_checkpoint, tmp_path / "again", "--texts", texts, "--dims", "16,8")
    assert table.exit_code == 0 and "16" in table.stdout and "energy kept" in table.stdout

    second = _run("rotate", out, tmp_path / "twice", "--texts", texts)
    assert second.exit_code == EXIT_USAGE and isinstance(second.exception, SystemExit), second.output
    output = " ".join(second.output.split())
    assert "already has a teacher rotation" in output and "Traceback" not in output
    assert not (tmp_path / "twice").exists()


def test_rotate_command_fits_on_training_targets(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from l2vg_retrieval.training.targets import build_targets

    original = L2VGEncoder.from_pretrained(tiny_checkpoint, dtype="float32")
    responses = {f"q{i:03d}": {"query": t, "response": t} for i, t in enumerate(FIT_TEXTS)}
    targets_path = tmp_path / "targets.safetensors"
    targets = build_targets(responses, original.teacher, targets_path)
    out = tmp_path / "rotated"
    result = _run("rotate", tiny_checkpoint, out, "--targets", targets_path, "--dims", "8", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["targets"] == "targets.safetensors"
    expected = variance_rotation(torch.stack([targets[k] for k in sorted(targets)]))
    rotated = L2VGEncoder.from_pretrained(out, dtype="float32")
    assert rotated.teacher_rotation is not None
    assert torch.allclose(rotated.teacher_rotation, expected, atol=1e-5)


def test_rotate_command_refuses_bad_requests(tiny_checkpoint: Path, tmp_path: Path) -> None:
    few = tmp_path / "few.txt"
    few.write_text("\n".join(FIT_TEXTS[:10]) + "\n" + "\n".join(FIT_TEXTS[:30]) + "\n")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(FIT_TEXTS) + "\n")
    not_targets = tmp_path / "other.safetensors"
    save_file({"weights": torch.zeros(3)}, str(not_targets))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "file").write_text("x")
    cases = [
        (["--texts", few], "has 30 distinct texts; a 32-d rotation needs at least 32"),
        (["--texts", texts, "--targets", not_targets], "exactly one of --texts or --targets"),
        ([], "exactly one of --texts or --targets"),
        (["--targets", not_targets], "holds no targets"),
        (["--texts", tmp_path / "missing.txt"], "does not exist"),
        (["--texts", texts, "--dims", "8,x"], "--dims must be comma-separated integers"),
    ]
    for args, message in cases:
        result = _run("rotate", tiny_checkpoint, tmp_path / "out", *args)
        # A clean exit, not an exception the runner caught (which never prints a traceback).
        assert result.exit_code == EXIT_USAGE and isinstance(result.exception, SystemExit), (args, result)
        # Rich wraps long messages at the terminal width.
        output = " ".join(result.output.split())
        assert message in output and "Traceback" not in output, (args, result.output)
        assert not (tmp_path / "out").exists()
    result = _run("rotate", tiny_checkpoint, occupied, "--texts", texts)
    assert result.exit_code == EXIT_USAGE and "not an empty folder" in " ".join(result.output.split())
    missing = _run("rotate", tmp_path / "nowhere", tmp_path / "out", "--texts", texts)
    assert missing.exit_code == EXIT_MISMATCH and "no checkpoint folder" in " ".join(missing.output.split())
