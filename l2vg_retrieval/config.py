"""Pydantic models for every configuration a user or a file provides.

Unknown fields are refused (``extra="forbid"``) so a typo in a config file is an error
that names the field, not a silently ignored setting.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .backbones import DEFAULT_BACKBONE, DEFAULT_TEACHER

DEFAULT_QUERY_INSTRUCTION = "Given a question, retrieve passages that answer the question:"
DEFAULT_DOCUMENT_PROMPT = "Summarize the following passage:"

DocumentMode = Literal["generative", "teacher"]
DtypeName = Literal["auto", "float32", "bfloat16"]
ExitNorm = Literal["final_norm", "learned"]
Pooling = Literal["mean", "latent_attention"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EncoderLoraConfig(StrictModel):
    """A peft LoRA on the encoding pass only (the reference's ``use_peft_for_encoder``).

    Reconstruction and decoding run with the adapter disabled, so the soft prompts still
    speak to the unadapted LLM and the backbone's own weights stay bit-identical.
    """

    r: int = Field(8, ge=1, le=256)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        min_length=1,
        description="module names (as peft matches them) that get a LoRA",
    )


class LatentAttentionConfig(StrictModel):
    """NV-Embed's latent-attention pooling (used when ``pooling='latent_attention'``)."""

    n_latents: int = Field(512, ge=1, le=8192, description="rows of the trainable latent array")
    n_heads: int = Field(8, ge=1, le=128, description="attention heads; must divide the hidden size")
    mlp_hidden: int | None = Field(
        None, ge=1, description="width of the two-layer GELU MLP; None = the backbone's hidden size"
    )


class EncoderConfig(StrictModel):
    """What defines an encoder's architecture and prompts; stored in every checkpoint."""

    backbone: str = Field(
        DEFAULT_BACKBONE,
        min_length=1,
        description="a packaged short name, a hub id ('org/name'), or a local model folder written "
        "as a path ('/abs/dir', './dir', '~/dir'); in a training config './dir' is relative to the file",
    )
    teacher: str = Field(DEFAULT_TEACHER, min_length=1, description="same forms as backbone")
    n_thought: int = Field(10, ge=0, le=512, description="tokens that only 'think' (no output)")
    n_compression: int = Field(10, ge=1, le=512, description="tokens whose states form the vector")
    max_text_tokens: int = Field(
        512, ge=8, le=32768, description="over-long text is cut here; prompts and special tokens never are"
    )
    use_chat_template: bool = Field(
        True, description="wrap the input as a user turn so the tokens sit where the answer starts"
    )
    query_instruction: str = DEFAULT_QUERY_INSTRUCTION
    document_prompt: str = DEFAULT_DOCUMENT_PROMPT
    document_mode: DocumentMode = Field(
        "generative",
        description="'generative': documents go through the backbone with the document prompt "
        "(the paper); 'teacher': the teacher embeds them directly (same space, far cheaper)",
    )
    encoder_lora: EncoderLoraConfig | None = Field(
        None, description="a LoRA on the encoding pass; None keeps the paper's fully frozen encoder"
    )
    seed: int = Field(0, description="seeds the special-token and head initialisation")
    # ---- options from the seed literature (issue 12); every default is the original encoder
    exit_layer: int | None = Field(
        None,
        ge=1,
        description="L3Prune early exit: run text and special tokens through the first L decoder "
        "layers only and read the compression states there; None = all layers. Reconstruction "
        "and decoding always use the full LM",
    )
    exit_norm: ExitNorm = Field(
        "final_norm",
        description="the norm applied to the states read at exit_layer: 'final_norm' reuses the "
        "model's own final norm (no new parameters); 'learned' trains an RMSNorm started from it",
    )
    truncate_dim: int | None = Field(
        None,
        ge=1,
        description="Matryoshka: keep the first m dimensions of every embedding (then re-normalise, "
        "as sentence-transformers does); None = all",
    )
    pooling: Pooling = Field(
        "mean",
        description="how the K compression vectors become one: 'mean' (the paper) or "
        "'latent_attention' (NV-Embed: cross-attention to trainable latents, GELU MLP, mean)",
    )
    latent_attention: LatentAttentionConfig = Field(default_factory=LatentAttentionConfig)
    teacher_rotation: bool = Field(
        False,
        description="the checkpoint holds a variance-ordered rotation R of the teacher space "
        "(`l2vg rotate`): the alignment head and every teacher vector are rotated by it, so "
        "truncate_dim prefixes keep the most energy; set by rotation, not by hand",
    )

    @model_validator(mode="after")
    def _learned_norm_needs_exit(self) -> EncoderConfig:
        if self.exit_norm == "learned" and self.exit_layer is None:
            raise ValueError("exit_norm='learned' only applies with an exit_layer")
        return self

    @property
    def n_special(self) -> int:
        return self.n_thought + self.n_compression

    def fingerprint_exclusions(self) -> set[str]:
        """Fields left out of the encoder fingerprint.

        ``document_mode`` changes how documents are embedded, not the vector space. The
        option fields came after checkpoints and Qdrant collections existed: at their
        defaults they are left out, so an old encoder keeps its fingerprint (and its
        collections keep opening); set, they enter it, so e.g. a 128-d collection refuses a
        384-d encoder by fingerprint as well as by size.
        """
        excluded = {"document_mode"}
        for name in OPTION_FIELDS:
            if getattr(self, name) == EncoderConfig.model_fields[name].get_default(call_default_factory=True):
                excluded.add(name)
        return excluded


OPTION_FIELDS = (
    "exit_layer",
    "exit_norm",
    "truncate_dim",
    "pooling",
    "latent_attention",
    "teacher_rotation",
)
