"""Pydantic models for every configuration a user or a file provides.

Unknown fields are refused (``extra="forbid"``) so a typo in a config file is an error
that names the field, not a silently ignored setting.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .backbones import DEFAULT_BACKBONE, DEFAULT_TEACHER

DEFAULT_QUERY_INSTRUCTION = "Given a question, retrieve passages that answer the question:"
DEFAULT_DOCUMENT_PROMPT = "Summarize the following passage:"

DocumentMode = Literal["generative", "teacher"]
DtypeName = Literal["auto", "float32", "bfloat16"]


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

    @property
    def n_special(self) -> int:
        return self.n_thought + self.n_compression
