"""Settings of LLM2Vec training: one pydantic model per stage, read from one YAML/JSON file.

Defaults follow the reference recipe (LoRA r 16 / alpha 32 / dropout 0.05 on every
projection, MNTP mask probability 0.2 with "_" as the mask token, SimCSE temperature 0.05
and attention dropout 0.3, mean pooling) scaled to a 2-core CPU: the reference ran 1,000
steps of 32 x 512 tokens (MNTP) and 1,000 steps of batch 128 (SimCSE) on a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from ..backbones import DEFAULT_BACKBONE
from ..config import StrictModel
from ..training.config import read_config_file

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraSettings(StrictModel):
    r: int = Field(16, ge=1, le=256)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = Field(LORA_TARGETS, min_length=1)


class StageConfig(StrictModel):
    """What every training stage shares: the LoRA, the schedule and the checkpoint cadence."""

    lora: LoraSettings = Field(default_factory=LoraSettings)
    steps: int = Field(250, ge=1)
    batch_size: int = Field(16, ge=2, le=4096)
    lr: float = Field(1e-4, gt=0, lt=1)
    warmup_steps: int = Field(25, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(25, ge=1)
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~30% more time"
    )

    def resume_key(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues.

        ``steps`` may grow (train longer); what only changes cost or reporting (checkpoint
        and evaluation cadence, micro-batches, recomputation) may change too.
        """
        free = {"steps", "checkpoint_every", "eval_every", "eval_blocks", "micro_batch_size"}
        return self.model_dump(mode="json", exclude=free | {"gradient_checkpointing"})


class MNTPConfig(StageConfig):
    """Masked next-token prediction: the logit at position i-1 predicts the masked token i."""

    mask_probability: float = Field(0.2, gt=0, lt=1)
    mask_token: str = Field(
        "_", min_length=1, description="reference: '_' for Llama tokenizers (they have no mask token)"
    )
    mask_replace_fraction: float = Field(
        0.8, ge=0, le=1, description="of the chosen tokens, the share replaced by the mask token"
    )
    random_replace_fraction: float = Field(
        0.1, ge=0, le=1, description="the share replaced by a random token; the rest stay as they are"
    )
    seq_len: int = Field(128, ge=8, le=8192, description="texts are packed into blocks of this many tokens")
    micro_batch_size: int | None = Field(
        4,
        ge=1,
        description="gradient accumulation inside a step: the same update (micro-batches are "
        "weighted by their masked tokens), less activation memory "
        "(a LoRA keeps ~1.8 MB of activations per token for the default backbone)",
    )
    eval_every: int | None = Field(50, ge=1, description="held-out MNTP loss every N steps (and at the end)")
    eval_blocks: int = Field(32, ge=1, description="held-out blocks scored, with a fixed mask")

    @model_validator(mode="after")
    def _fractions(self) -> MNTPConfig:
        if self.mask_replace_fraction + self.random_replace_fraction > 1:
            raise ValueError("mask_replace_fraction + random_replace_fraction must be <= 1")
        return self


class SimCSEConfig(StageConfig):
    """Unsupervised SimCSE: a text and itself under two dropout masks are a positive pair."""

    steps: int = Field(250, ge=1)
    batch_size: int = Field(32, ge=2, le=4096, description="in-batch negatives: batch_size - 1 per text")
    lr: float = Field(5e-5, gt=0, lt=1)
    temperature: float = Field(0.05, gt=0, le=1, description="the reference's cosine x 20")
    attention_dropout: float = Field(
        0.3, ge=0, lt=1, description="the only augmentation besides LoRA dropout"
    )
    max_length: int = Field(128, ge=4, le=8192)
    gradient_checkpointing: bool = Field(
        True,
        description="both views of the whole batch go through in one pass (the negatives are in-batch, "
        "so no micro-batching): keeping every activation would take several GB at batch 32",
    )


class CorpusConfig(StrictModel):
    """Unlabelled text from packaged material; anything overlapping an evaluation set is dropped."""

    queries: Path | None = Field(
        None,
        description="the training query pool (JSONL rows with 'text'), e.g. "
        "data/queries/queries.train.jsonl; never the held-out queries",
    )
    responses: Path | None = Field(
        None,
        description="the backbone's cached answers (JSONL rows with 'id', 'response'); only rows whose "
        "id is in `queries` are used",
    )
    extra_texts: list[Path] = Field(
        default_factory=list, description="more JSONL ('text' per row) or TXT (one text per line) files"
    )
    min_chars: int = Field(16, ge=1)
    max_texts: int | None = Field(None, ge=10, description="use a seeded sample of this many texts")
    heldout_texts: int = Field(200, ge=0, description="kept out of training, for the held-out MNTP loss")
    ngram: int = Field(13, ge=5, le=50, description="word n-gram length of the overlap check")
    eval_paths: list[Path] = Field(
        default_factory=list,
        description="more evaluation files to keep out (the packaged benchmark data is always checked)",
    )

    @model_validator(mode="after")
    def _some_source(self) -> CorpusConfig:
        if self.queries is None and self.responses is None and not self.extra_texts:
            raise ValueError("the corpus needs at least one of queries, responses, extra_texts")
        return self


class LLM2VecTrainConfig(StrictModel):
    output_dir: Path
    backbone: str = Field(DEFAULT_BACKBONE, min_length=1)
    corpus: CorpusConfig
    mntp: MNTPConfig = Field(default_factory=MNTPConfig)
    simcse: SimCSEConfig = Field(default_factory=SimCSEConfig)
    max_length: int = Field(512, ge=8, le=32768, description="inference: texts are cut to this many tokens")
    seed: int = 0

    @property
    def corpus_dir(self) -> Path:
        return self.output_dir / "corpus"

    @property
    def final_dir(self) -> Path:
        return self.output_dir / "final"

    def stage_dir(self, stage: str) -> Path:
        return self.output_dir / stage


def load_llm2vec_config(path: Path, overrides: dict[str, Any] | None = None) -> LLM2VecTrainConfig:
    """Read and validate a YAML/JSON config; relative paths resolve against the file."""
    config = read_config_file(path, LLM2VecTrainConfig, overrides)
    base = path.parent.resolve()

    def rel(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p).resolve())

    corpus = config.corpus.model_copy(
        update={
            "queries": rel(config.corpus.queries),
            "responses": rel(config.corpus.responses),
            "extra_texts": [rel(p) for p in config.corpus.extra_texts],
            "eval_paths": [rel(p) for p in config.corpus.eval_paths],
        }
    )
    backbone = config.backbone
    if backbone.startswith(("./", "../")):
        backbone = str((base / backbone).resolve())
    return config.model_copy(
        update={"output_dir": rel(config.output_dir), "corpus": corpus, "backbone": backbone}
    )
