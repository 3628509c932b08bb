"""Forward compatibility: nothing this package calls in transformers, torch or peft is deprecated.

pyproject allows ``transformers<6``, and transformers announces removals one release
ahead with a FutureWarning (``past_key_values`` -> ``cache``, gone in 5.40) or a
``logger.warning_once``. Deprecation warnings are ignored in the rest of the suite
(pyproject ``filterwarnings``); here every model-facing path runs with them recorded, so
the day a new one appears this test names it, before an upgrade removes the old API.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_backbone, build_tiny_encoder, build_tiny_teacher, save_tiny_models

from l2vg_retrieval.config import EncoderLoraConfig
from l2vg_retrieval.encoder import L2VGEncoder

DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
TEXTS = ["what is the capital of France?", "how do I bake bread at home?", "hi"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# Deprecated calls made by another library on our behalf, each with why it is not ours to
# change. Matched against the warning's text; everything else in a checked block fails.
UPSTREAM = {
    "`is_gradient_checkpointing` is deprecated": "peft's PeftModel.__init__ reads the old property "
    "when it wraps a model (peft 0.21); our own code calls activation_checkpointing_enable",
}


@contextmanager
def no_deprecations() -> Iterator[None]:
    """Fail if the block emits a deprecation warning, or transformers logs one (except the
    listed upstream ones)."""
    # transformers' library logger does not propagate to the root logger, and its
    # warning_once remembers messages process-wide: listen on it directly, forget first.
    logger = logging.getLogger("transformers")
    handler = _Records()
    logger.addHandler(handler)
    logging.Logger.warning_once.cache_clear()  # type: ignore[attr-defined]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
    found = [
        f"{w.category.__name__} ({w.filename}:{w.lineno}): {w.message}"
        for w in caught
        if issubclass(w.category, DEPRECATIONS) and not any(u in str(w.message) for u in UPSTREAM)
    ]
    found += [f"transformers log: {m}" for m in handler.messages if "deprecat" in m.lower()]
    assert not found, "deprecated API in use:\n" + "\n".join(found)


def _encode_and_decode(encoder: L2VGEncoder) -> None:
    encoder.encode(TEXTS)
    encoder.encode_query(TEXTS[:2])
    encoder.encode_document(TEXTS[0])
    encoder.decode(TEXTS[:2], max_new_tokens=4)


def _train_step(encoder: L2VGEncoder) -> None:
    from l2vg_retrieval.training.trainer import TrainExample, compute_losses

    eos = encoder.tokenizer.eos_token_id
    batch = [TrainExample(text, (5, 6, eos), torch.zeros(encoder.dim)) for text in TEXTS]
    recon, align = compute_losses(encoder, batch, [None, "retrieve:", None], align_kind="cosine")
    assert recon is not None
    (recon + align).backward()


def _generation(encoder: L2VGEncoder) -> None:
    from l2vg_retrieval.generation import generate_responses, generate_responses_hf

    prompts = encoder.tokenize(TEXTS, None)
    generate_responses(encoder.lm, encoder.tokenizer, prompts, max_new_tokens=4)
    generate_responses_hf(encoder.lm, encoder.tokenizer, prompts, max_new_tokens=4)


def _baselines(encoder: L2VGEncoder) -> None:
    from l2vg_retrieval.baselines import GenerateThenEncode, InputCentricEncoder

    InputCentricEncoder(encoder.backbone, device="cpu", dtype="float32").encode(TEXTS)
    hyde = GenerateThenEncode(encoder.backbone, encoder.teacher, device="cpu", dtype="float32")
    hyde.max_new_tokens = 4
    hyde.encode_query(TEXTS[:2])
    encoder.teacher.encode(TEXTS)


@pytest.mark.parametrize("lora", [False, True], ids=["frozen-encoder", "encoder-lora"])
@pytest.mark.parametrize(
    "path",
    [_encode_and_decode, _train_step, _generation, _baselines],
    ids=["encode-decode", "train-step", "generation", "baselines"],
)
def test_model_calls_use_no_deprecated_api(path: Callable[[L2VGEncoder], None], lora: bool) -> None:
    encoder = build_tiny_encoder(encoder_lora=EncoderLoraConfig(r=2, alpha=4) if lora else None)
    with no_deprecations():
        path(encoder)


@pytest.mark.parametrize("path", [_encode_and_decode, _train_step], ids=["encode-decode", "train-step"])
def test_encoder_options_use_no_deprecated_api(path: Callable[[L2VGEncoder], None]) -> None:
    """Early exit (a view of the first layers, its own cache config) and latent pooling call
    the model in their own way: they must stay off deprecated APIs too."""
    encoder = build_tiny_encoder(
        exit_layer=1,
        exit_norm="learned",
        pooling="latent_attention",
        latent_attention={"n_latents": 8, "n_heads": 2},
        encoder_lora=EncoderLoraConfig(r=2, alpha=4),
    )
    with no_deprecations():
        path(encoder)


def test_safety_passes_use_no_deprecated_api() -> None:
    """Safe mode's own passes: the middle-layer probe (a truncated body of the backbone) and
    the answer-start log-probabilities of the refusal signal, through a real calibration."""
    from l2vg_retrieval.safety import SafetyFilter, calibrate
    from l2vg_retrieval.safety_data import load_calibration_set

    rows = load_calibration_set()
    small = [r for kind in ("query", "passage") for label in (0, 1)
             for r in [x for x in rows if x.kind == kind and x.label == label][:12]]  # fmt: skip
    encoder = build_tiny_encoder()
    with no_deprecations():
        calibration = calibrate(encoder, small, probe_layer=1, min_family_size=1)
        screen = SafetyFilter(encoder, calibration)
        screen.check_queries(TEXTS)
        screen.screen_documents(TEXTS)
    assert calibration.uses_refusal_signal and calibration.probe_layer == 1


def test_llm2vec_training_and_encoding_use_no_deprecated_api(tmp_path: Path) -> None:
    """The teacher's paths: peft LoRA, bidirectional attention, MNTP and SimCSE steps, and
    the encoder over the merged model."""
    import copy

    from l2vg_retrieval.llm2vec.config import LoraSettings, MNTPConfig, SimCSEConfig
    from l2vg_retrieval.llm2vec.encoder import LLM2VecEncoder
    from l2vg_retrieval.llm2vec.mntp import pack_blocks, train_mntp
    from l2vg_retrieval.llm2vec.simcse import train_simcse

    tiny = build_tiny_backbone()
    lora = LoraSettings(r=2, alpha=4, dropout=0.0)
    ids = tiny.tokenizer(TEXTS * 4, add_special_tokens=False)["input_ids"]
    blocks = pack_blocks(ids, 8, tiny.tokenizer.eos_token_id)[:4]
    with no_deprecations():
        train_mntp(
            copy.deepcopy(tiny.model), tiny.tokenizer, blocks,
            MNTPConfig(lora=lora, steps=2, batch_size=4, warmup_steps=0, eval_every=None),
            tmp_path / "mntp", show_progress_bar=False,
        )  # fmt: skip
        train_simcse(
            copy.deepcopy(tiny.model), tiny.tokenizer, TEXTS * 2,
            SimCSEConfig(lora=lora, steps=2, batch_size=4, warmup_steps=0, max_length=16),
            tmp_path / "simcse", show_progress_bar=False,
        )  # fmt: skip
        LLM2VecEncoder(tiny, device="cpu", dtype="float32").encode(TEXTS)


def test_loading_and_checkpoints_use_no_deprecated_api(tmp_path: Path) -> None:
    from l2vg_retrieval.backbones import load_backbone, load_teacher
    from l2vg_retrieval.config import EncoderConfig

    backbone_dir, teacher_dir = save_tiny_models(tmp_path)
    with no_deprecations():
        backbone = load_backbone(str(backbone_dir))
        teacher = load_teacher(str(teacher_dir))
        config = EncoderConfig(
            backbone=str(backbone_dir), teacher=str(teacher_dir), n_thought=1, n_compression=2
        )
        encoder = L2VGEncoder.from_config(config, backbone=backbone, teacher=teacher, dtype="bfloat16")
        encoder.save_pretrained(tmp_path / "ckpt")
        L2VGEncoder.from_pretrained(tmp_path / "ckpt", dtype="float32").encode("bread")


def test_the_detector_sees_a_deprecated_cache_keyword() -> None:
    """The guard itself: the old keyword must trip it (while transformers still accepts it)."""
    from l2vg_retrieval.kv_cache import CACHE_KWARG

    if CACHE_KWARG != "cache":
        pytest.skip("this transformers predates the `cache` keyword; nothing is deprecated yet")
    from transformers import DynamicCache

    model = build_tiny_backbone().model
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(AssertionError, match="past_key_values"), no_deprecations():
        model.get_decoder()(input_ids=ids, past_key_values=DynamicCache(config=model.config), use_cache=True)
    with no_deprecations():
        model.get_decoder()(input_ids=ids, cache=DynamicCache(config=model.config), use_cache=True)
        build_tiny_teacher().model(input_ids=ids)
