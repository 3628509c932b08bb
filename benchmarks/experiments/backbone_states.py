"""Middle- and late-layer states of any causal LM, read the way the encoder reads a text.

Experiments that ask whether another backbone would do better need that backbone's states
under the same input layout as ``L2VGEncoder`` (its chat template, the prompt, the text cut
at the encoder's 512 tokens) without building an encoder around it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

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
    deepest = max(layers)
    decoder = model.model
    decoder.layers = decoder.layers[:deepest]  # nothing past the deepest read runs
    decoder.config.num_hidden_layers = deepest
    template = PromptTemplate.for_tokenizer(tokenizer, use_chat_template=True)
    head = len(prompt_prefix_ids(tokenizer, template, prompt))
    ids = build_input_ids(tokenizer, template, texts, prompt=prompt, max_text_tokens=MAX_TEXT_TOKENS)
    captured: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> Any:
        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
            captured[layer] = output[0] if isinstance(output, tuple) else output

        return hook

    for layer in layers:
        decoder.layers[layer - 1].register_forward_hook(keep(layer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = np.argsort([len(r) for r in ids])  # similar lengths together: little padding
    out = np.zeros((len(texts), 2 * model.config.hidden_size * len(layers)), np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=f"states {model_dir[-40:]}", mininterval=10):
            pick = order[start : start + batch_size]
            rows = [ids[i] for i in pick]
            longest = max(len(r) for r in rows)
            input_ids = torch.tensor([[pad] * (longest - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows])
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            decoder(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False)
            own = torch.tensor([[0] * (longest - len(r) + head) + [1] * (len(r) - head) for r in rows])
            blocks = []
            for layer in layers:
                hidden = captured[layer].float()
                mean = (hidden * own.unsqueeze(-1)).sum(1) / own.sum(1, keepdim=True)
                blocks += [hidden[:, -1], mean]
            out[pick] = torch.cat(blocks, 1).numpy()
    return out
