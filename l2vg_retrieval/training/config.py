"""The training configuration: one pydantic model, read from a YAML or JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import Field, ValidationError, model_validator

from ..config import DtypeName, EncoderConfig, StrictModel

M = TypeVar("M", bound=StrictModel)


class ConfigFileError(ValueError):
    """A config file that cannot be read or does not validate; the message names the field."""


class DataConfig(StrictModel):
    train_queries: Path = Field(description="JSONL (rows with 'text', optional 'id') or TXT")
    heldout_queries: Path | None = Field(None, description="evaluation queries, disjoint from train")
    max_train_queries: int | None = Field(None, ge=1, description="use only the first N train queries")
    max_heldout_queries: int = Field(300, ge=1)


class ResponseConfig(StrictModel):
    max_new_tokens: int = Field(
        64,
        ge=4,
        le=2048,
        description="the paper uses 500; 64 keeps generation affordable on a CPU and still "
        "holds the topic of the answer, which is what the teacher embeds",
    )
    batch_size: int = Field(128, ge=1, le=1024)
    max_query_tokens: int = Field(256, ge=8)
    seed_cache: Path | None = Field(
        None,
        description="a JSONL(.gz) of responses made earlier by this same command (e.g. the one "
        "committed under data/responses): its rows for this run's queries are copied into the "
        "run's cache first, so only missing queries are generated",
    )


class OptimConfig(StrictModel):
    lr: float = Field(5e-4, gt=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    steps: int = Field(
        600,
        ge=0,
        description="optimiser steps; 0 trains nothing, so with --init-from and refit_align_head "
        "the run only re-solves the checkpoint's alignment head (e.g. over more of the pool)",
    )
    batch_size: int = Field(16, ge=1, le=1024)
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="split each batch into micro-batches of this size (gradient accumulation): "
        "same update, less activation memory",
    )
    micro_batch_tokens: int | None = Field(
        None,
        ge=32,
        description="also cap each micro-batch at this many padded tokens (examples sorted longest "
        "first): activation memory follows tokens, not examples, so one long query no longer sets "
        "a step's peak; same update",
    )
    grad_clip: float = Field(1.0, gt=0)
    max_response_tokens: int = Field(
        64, ge=4, description="reconstruction target length (tokens, before the EOS)"
    )


class TrainConfig(StrictModel):
    output_dir: Path
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    data: DataConfig
    responses: ResponseConfig = Field(default_factory=ResponseConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    recon_weight: float = Field(1.0, ge=0)
    align_weight: float = Field(1.0, ge=0)
    align_loss: Literal["cosine", "mse"] = Field(
        "cosine",
        description="'mse': the reference's mean squared error. Against a unit-norm teacher "
        "(MiniLM, 384-d) it is ~0.004 beside a reconstruction CE of ~1.7 and barely moves the "
        "tokens; 'cosine' (1 - cos) is scale-free and is what retrieval scores",
    )
    document_align_weight: float = Field(
        0.0,
        ge=0,
        description="weight of a second alignment term on the document side: the student's "
        "embedding of the response text itself (document prompt) aligned to the teacher's "
        "embedding of it, as the reference's answer-side sub-loss does; one more encoding pass "
        "per example, no generation. 0 = off",
    )
    train_only: tuple[str, ...] | None = Field(
        None,
        min_length=1,
        description="train only the parts whose tensor names start with these prefixes, e.g. "
        "['recon_head'] for a decoding phase: with the tokens and the encoder LoRA fixed the "
        "embedding's features cannot move, and the closed-form refit re-solves the alignment "
        "head for the new soft prompts; None = every trainable part",
    )
    align_only_steps: int = Field(
        0,
        ge=0,
        description="first steps with the alignment loss alone: an alignment step skips the "
        "forward/backward over the response, so it is several times cheaper; the remaining "
        "steps are joint, which keeps the soft prompts decodable",
    )
    instruction_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of training queries shown with the query instruction: retrieval "
        "prepends it at inference, so the tokens must work with and without it",
    )
    refit_max_examples: int | None = Field(
        4000,
        ge=100,
        description="examples (a seeded sample) the closed-form refit encodes; it needs far "
        "fewer rows than training, and each costs two encodes",
    )
    refit_align_head: bool = Field(
        True,
        description="after training, solve the alignment head in closed form (ridge) for the same "
        "MSE objective; see training/refit.py",
    )
    refit_documents: bool | None = Field(
        None,
        description="also give the refit each example's response text read with the document "
        "prompt (the head is shared by queries and generative documents); None = when "
        "document_align_weight > 0",
    )
    matryoshka_dims: tuple[int, ...] | None = Field(
        None,
        min_length=1,
        description="Matryoshka: the alignment loss is averaged over these prefix sizes of the "
        "embedding and the teacher target (e.g. [384, 256, 128, 64]), so the first m dimensions "
        "are themselves an embedding; None = the full vector only",
    )
    dtype: DtypeName = "auto"
    checkpoint_every: int = Field(100, ge=1)
    eval_every: int | None = Field(None, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _some_loss(self) -> TrainConfig:
        if self.recon_weight == 0 and self.align_weight == 0:
            raise ValueError("recon_weight and align_weight cannot both be 0")
        return self

    @model_validator(mode="after")
    def _valid_matryoshka_dims(self) -> TrainConfig:
        dims = self.matryoshka_dims
        if dims is not None and (min(dims) < 1 or len(set(dims)) != len(dims)):
            raise ValueError(f"matryoshka_dims must be distinct positive sizes, got {list(dims)}")
        return self

    @property
    def refit_with_documents(self) -> bool:
        if self.refit_documents is not None:
            return self.refit_documents
        return self.document_align_weight > 0

    @property
    def responses_path(self) -> Path:
        return self.output_dir / "responses.jsonl"

    @property
    def targets_path(self) -> Path:
        return self.output_dir / "targets.safetensors"


def read_config_file(path: Path, model: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Read a YAML/JSON file into ``model``; every failure is a :class:`ConfigFileError`
    naming the file (paths in it are left as written: the caller resolves them)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigFileError(f"cannot read config {path}: {exc}") from exc
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigFileError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from exc
    if not isinstance(raw, dict):
        raise ConfigFileError(f"{path} must hold a mapping of settings")
    raw.update(overrides or {})
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigFileError(f"invalid config {path}: {problems}") from exc


def load_train_config(path: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and validate a YAML/JSON config; relative paths resolve against the file."""
    config = read_config_file(path, TrainConfig, overrides)
    base = path.parent
    data = config.data
    updates = {"train_queries": _rel(base, data.train_queries)}
    if data.heldout_queries is not None:
        updates["heldout_queries"] = _rel(base, data.heldout_queries)
    responses = config.responses
    if responses.seed_cache is not None:
        responses = responses.model_copy(update={"seed_cache": _rel(base, responses.seed_cache)})
    encoder = config.encoder.model_copy(
        update={
            "backbone": _rel_model(base, config.encoder.backbone),
            "teacher": _rel_model(base, config.encoder.teacher),
        }
    )
    return config.model_copy(
        update={
            "output_dir": _rel(base, config.output_dir),
            "encoder": encoder,
            "data": data.model_copy(update=updates),
            "responses": responses,
        }
    )


def _rel(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def _rel_model(base: Path, name: str) -> str:
    """A model folder written ``./x`` or ``../x`` resolves against the config file, like
    every other path in it (also after an ``llm2vec:`` prefix); short names, hub ids and
    absolute paths pass unchanged."""
    from ..llm2vec.reference import PREFIX

    prefix = PREFIX if name.lower().startswith(PREFIX) else ""
    target = name[len(prefix) :]
    if target.startswith(("./", "../")):
        return prefix + str((base / target).resolve())
    return name
