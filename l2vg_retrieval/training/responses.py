"""The backbone's own greedy response to each training query, cached and resumable.

The cache is an append-only JSONL keyed by query id. Each batch is flushed and fsynced
after it is generated, so a killed run loses at most the batch in flight; on restart,
ids already in the file are skipped (no duplicates) and every missing id is generated
(no gaps). A torn last line from a kill mid-write is ignored and regenerated.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..batching import length_batches
from ..generation import generate_responses, trim_repetition
from ..inputs import PromptTemplate, build_input_ids, clean_text
from ..llama_decode import packed_weights

logger = logging.getLogger(__name__)


def read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """Rows by id; the first row of an id wins, malformed (torn) lines are skipped."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d is malformed (an interrupted write?); it will be redone", path, line_no)
                continue
            if isinstance(row, dict) and "id" in row and "response" in row:
                rows.setdefault(str(row["id"]), row)
    return rows


def seed_from(seed: Path, cache_path: Path, wanted: Iterable[str]) -> int:
    """Append to the run's cache the rows of ``seed`` (JSONL, optionally gzipped) whose ids
    are wanted and not cached yet; returns how many were copied."""
    import gzip

    opener = gzip.open if seed.suffix == ".gz" else open
    have = read_cache(cache_path)
    todo = set(wanted) - set(have)
    copied = 0
    _repair_tail(cache_path)
    with opener(seed, "rt", encoding="utf-8") as src, cache_path.open("a", encoding="utf-8") as out:
        for line in src:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and str(row.get("id")) in todo and "response" in row:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                todo.discard(str(row["id"]))
                copied += 1
    return copied


def _repair_tail(path: Path) -> None:
    """Drop a torn final line so the next append starts on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        data = path.read_bytes()
        fh.seek(data.rfind(b"\n") + 1)
        fh.truncate()


def generate_response_cache(
    queries: Sequence[dict[str, Any]],
    cache_path: Path,
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    max_new_tokens: int,
    batch_size: int = 64,
    max_query_tokens: int = 256,
    use_chat_template: bool = True,
    show_progress_bar: bool = True,
) -> dict[str, dict[str, Any]]:
    """Generate responses for every query id not yet in the cache; return all rows."""
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(cache_path)
    done = read_cache(cache_path)
    todo = _unique(q for q in queries if str(q["id"]) not in done)
    if not todo:
        return done
    template = PromptTemplate.for_tokenizer(tokenizer, use_chat_template=use_chat_template)
    prompts = build_input_ids(
        tokenizer, template, [q["text"] for q in todo], prompt=None, max_text_tokens=max_query_tokens
    )
    batches = length_batches([len(p) for p in prompts], batch_size)
    with (
        cache_path.open("a", encoding="utf-8") as out,
        tqdm(total=len(todo), desc="responses", unit="query", disable=not show_progress_bar) as bar,
        packed_weights(model),  # packed once for all batches (bfloat16 Llama backbones)
    ):
        for idx in batches:
            token_rows = generate_responses(
                model, tokenizer, [prompts[i] for i in idx], max_new_tokens=max_new_tokens
            )
            lines = []
            for i, tokens in zip(idx, token_rows, strict=True):
                raw = tokenizer.decode(tokens, skip_special_tokens=True)
                response = trim_repetition(clean_text(raw))
                row = {
                    "id": str(todo[i]["id"]),
                    "query": todo[i]["text"],
                    "response": response,
                    # A response cut by max_new_tokens must not be taught to end with EOS.
                    "finished": len(tokens) < max_new_tokens or response != raw.strip(),
                    "n_tokens": len(tokens),
                }
                done[row["id"]] = row
                lines.append(json.dumps(row, ensure_ascii=False))
            out.write("\n".join(lines) + "\n")
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(idx))
    return done


def _unique(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    unique = []
    for row in rows:
        key = str(row["id"])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique
