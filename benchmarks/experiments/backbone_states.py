"""Middle- and late-layer states of any causal LM, read the way the encoder reads a text.

Experiments that ask whether another backbone would do better need that backbone's states
under the same input layout as ``L2VGEncoder`` (its chat template, the prompt, the text cut
at the encoder's 512 tokens) without building an encoder around it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from l2vg_retrieval.batching import own_positions, pad_left, positions_from_mask, run_batched
from l2vg_retrieval.early_exit import truncated_body
from l2vg_retrieval.inputs import PromptTemplate, build_input_ids, prompt_prefix_ids

MAX_TEXT_TOKENS = 512  # the packaged encoder's cut


def read_states(
    model_dir: str,
    texts: list[str],
    layers: list[int],
    dtype: torch.dtype,
    prompt: str | None,
    batch_size: int = 16,
) -> np.ndarray:
    """``[N, 2H * len(layers)]``: per layer read, the state at the last position and the
    mean over the text's own positions (after the template + prompt head), as
    ``L2VGEncoder.probe_states`` reads them, from one pass through the deepest layer."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    body = truncated_body(model, max(layers), keep_norm=False)  # nothing past the deepest read runs
    template = PromptTemplate.for_tokenizer(tokenizer, use_chat_template=True)
    head = prompt_prefix_ids(tokenizer, template, prompt)
    ids = build_input_ids(tokenizer, template, texts, prompt=prompt, max_text_tokens=MAX_TEXT_TOKENS)
    captured: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> Any:
        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
            captured[layer] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = [body.layers[layer - 1].register_forward_hook(keep(layer)) for layer in layers]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def states(batch: list[list[int]]) -> torch.Tensor:
        input_ids, mask = pad_left(batch, pad)
        body(
            input_ids=input_ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False
        )
        own = own_positions(batch, head, mask.shape[1])
        blocks = []
        for layer in layers:
            hidden = captured[layer].float()
            blocks += [hidden[:, -1], (hidden * own.unsqueeze(-1)).sum(1) / own.sum(1, keepdim=True)]
        return torch.cat(blocks, 1)

    try:
        with torch.inference_mode():
            out = run_batched(
                ids, [len(r) for r in ids], states, batch_size=batch_size, show_progress_bar=True,
                desc=f"states {model_dir[-40:]}",
            )  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    return out.numpy()
