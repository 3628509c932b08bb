"""Turn user text into token ids: validation, cleaning, prompt templating, truncation.

Kept apart from the model so every path that reads text (encode, decode, training,
baselines) validates it the same way and truncation can never reach the special tokens.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_SENTINEL = "\u2063L2VG_TEXT\u2063"
# A token is at least one character, so this many characters per kept token is always
# enough; it bounds tokenizer work on a megabyte-sized input.
_CHARS_PER_TOKEN_BOUND = 16


def as_text_list(texts: object, *, what: str = "texts") -> tuple[list[str], bool]:
    """Validate input: one string or an iterable of strings. Returns (list, was_single).

    Empty or whitespace-only strings are refused: their "embedding" would be the model's
    reaction to an empty prompt, which no caller means to store or search by.
    """
    if isinstance(texts, str):
        items, single = [texts], True
    elif isinstance(texts, bytes | bytearray):
        raise TypeError(f"{what} must be str, got bytes; decode it first (e.g. .decode('utf-8'))")
    elif texts is None:
        raise TypeError(f"{what} must be a string or a list of strings, got None")
    elif isinstance(texts, Iterable):
        items, single = list(texts), False
    else:
        raise TypeError(f"{what} must be a string or a list of strings, got {type(texts).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{what}[{i}] must be str, got {type(item).__name__}")
        if not item.strip():
            raise ValueError(f"{what}[{i}] is empty or whitespace only; nothing to embed")
    return items, single


def clean_text(text: str) -> str:
    """Replace control characters (except newline/tab) and lone surrogates with spaces."""
    text = text.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(text) else text
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text):
        text = "".join(" " if unicodedata.category(c) == "Cc" and c not in "\n\t" else c for c in text)
    return text


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@dataclass(frozen=True)
class PromptTemplate:
    """Token ids around the user's text: ``prefix + prompt + text + suffix``.

    Pieces are tokenized separately, so truncating the text never cuts the template and
    the same text gives the same ids wherever it appears.
    """

    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]

    @classmethod
    def for_tokenizer(cls, tokenizer: object, *, use_chat_template: bool) -> PromptTemplate:
        if use_chat_template and getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
                [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
            )
            before, after = rendered.split(_SENTINEL)
            prefix = tokenizer(before, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
            suffix = tokenizer(after, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        else:
            # No template: let the tokenizer add its own BOS if it uses one.
            prefix = tokenizer("", add_special_tokens=True)["input_ids"]  # type: ignore[operator]
            suffix = tokenizer("\n", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        return cls(tuple(prefix), tuple(suffix))


def build_input_ids(
    tokenizer: object,
    template: PromptTemplate,
    texts: Sequence[str],
    *,
    prompt: str | None,
    max_text_tokens: int,
) -> list[list[int]]:
    """Token ids per text with the prompt before it; only the text part is truncated."""
    head = prompt_prefix_ids(tokenizer, template, prompt)
    cut = [clean_text(t[: max_text_tokens * _CHARS_PER_TOKEN_BOUND]) for t in texts]
    encoded = tokenizer(cut, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    return [[*head, *ids[:max_text_tokens], *template.suffix_ids] for ids in encoded]


def prompt_prefix_ids(tokenizer: object, template: PromptTemplate, prompt: str | None) -> list[int]:
    """The ids every input with this prompt starts with: template head + instruction."""
    prompt_ids: list[int] = []
    if prompt:
        prompt_ids = tokenizer(prompt.strip() + "\n", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    return [*template.prefix_ids, *prompt_ids]
