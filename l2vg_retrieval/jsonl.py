"""Strict JSONL reading shared by the data loaders: a bad line is an error naming file:line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any


def read_jsonl(path: Path, *, error: type[Exception] = ValueError) -> list[Any]:
    """Every non-blank line of ``path`` (gzipped if it ends in ``.gz``) parsed as JSON;
    ``error`` is raised on a bad line."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
    else:
        text = path.read_text(encoding="utf-8")
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{n} is not valid JSON: {exc}") from exc
    return rows
