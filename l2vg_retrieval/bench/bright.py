"""BRIGHT-style reasoning retrieval: read BRIGHT's format, score as BRIGHT does.

Format (the hub dataset ``xlangai/BRIGHT``, one split per domain):

- ``examples``: ``id``, ``query``, ``gold_ids``, ``excluded_ids`` (``["N/A"]`` when none),
  optionally ``gold_ids_long`` (gold ids in the long-document corpus) and ``reasoning``;
- ``documents`` / ``long_documents``: ``id``, ``content``.

A local folder holds ``examples/<domain>.<ext>``, ``documents/<domain>.<ext>`` and
optionally ``long_documents/<domain>.<ext>`` with ext jsonl, json or parquet (a hub
snapshot's ``<domain>-00000-of-00001.parquet`` names work too). The packaged offline set
(``l2vg_retrieval/data/bright_offline``) is in exactly this layout.

Scoring follows BRIGHT: every document is scored, each query's excluded ids are dropped,
the top 1000 are kept, and nDCG@10 is the primary metric (Recall@{10,100} and MRR too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..jsonl import read_jsonl
from .metrics import NO_EXCLUSION, evaluate_run

OFFLINE_DIR = Path(__file__).resolve().parents[1] / "data" / "bright_offline"
HUB_DATASET = "xlangai/BRIGHT"
BRIGHT_DOMAINS = (
    "biology",
    "earth_science",
    "economics",
    "psychology",
    "robotics",
    "stackoverflow",
    "sustainable_living",
    "leetcode",
    "pony",
    "aops",
    "theoremqa_questions",
    "theoremqa_theorems",
)
# The query-side instruction of the paper's BRIGHT runs; documents get the encoder's
# own document prompt.
DEFAULT_INSTRUCTION = "Given a {domain} post, generate relevant passages that help answer the post:"
TOP_K = 1000  # BRIGHT keeps the top 1000 of each ranking
K_VALUES = (1, 5, 10, 100)
HEADLINE_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr")


class BrightFormatError(ValueError):
    """The data is not in BRIGHT's format or is inconsistent (e.g. a gold id not in the corpus)."""


@dataclass(frozen=True)
class BrightDomain:
    name: str
    examples: list[dict[str, Any]]
    documents: list[dict[str, Any]]
    gold_key: str = "gold_ids"

    def validate(self) -> None:
        if not self.examples:
            raise BrightFormatError(f"domain {self.name!r} has no examples")
        if not self.documents:
            raise BrightFormatError(f"domain {self.name!r} has no documents")
        doc_ids: set[str] = set()
        for i, doc in enumerate(self.documents):
            if not isinstance(doc.get("id"), str) or not isinstance(doc.get("content"), str):
                raise BrightFormatError(f"{self.name}: document #{i} needs string 'id' and 'content'")
            if doc["id"] in doc_ids:
                raise BrightFormatError(f"{self.name}: duplicate document id {doc['id']!r}")
            doc_ids.add(doc["id"])
        seen: set[str] = set()
        for i, ex in enumerate(self.examples):
            for key in ("id", "query", self.gold_key, "excluded_ids"):
                if key not in ex:
                    raise BrightFormatError(f"{self.name}: example #{i} lacks {key!r}")
            if ex["id"] in seen:
                raise BrightFormatError(f"{self.name}: duplicate example id {ex['id']!r}")
            seen.add(ex["id"])
            gold = list(ex[self.gold_key])
            if not gold:
                raise BrightFormatError(f"{self.name}: example {ex['id']!r} has no {self.gold_key}")
            missing = [g for g in gold if g not in doc_ids]
            if missing:
                raise BrightFormatError(
                    f"{self.name}: example {ex['id']!r} has gold ids not in the corpus: {missing[:5]}"
                )
            clash = set(gold) & set(ex["excluded_ids"])
            if clash:
                raise BrightFormatError(f"{self.name}: example {ex['id']!r} excludes its gold ids {clash}")


# ---------------------------------------------------------------- loading
def _read_table(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return read_jsonl(path, error=BrightFormatError)
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise BrightFormatError(f"{path} must hold a JSON list of records")
        return data
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise BrightFormatError(f"reading {path} needs pyarrow (pip install pyarrow)") from exc
        return [_plain(row) for row in pq.read_table(path).to_pylist()]
    raise BrightFormatError(f"unsupported file type {path.suffix!r} for {path}")


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, np.ndarray | tuple) else v) for k, v in row.items()}


def _find(folder: Path, kind: str, domain: str) -> Path | None:
    base = folder / kind
    for ext in (".jsonl", ".json", ".parquet"):
        if (base / f"{domain}{ext}").is_file():
            return base / f"{domain}{ext}"
    shards = sorted(base.glob(f"{domain}-*.parquet"))
    if len(shards) > 1:
        raise BrightFormatError(f"{base} has several shards for {domain}; merge them into one file")
    return shards[0] if shards else None


def local_domains(folder: str | Path) -> list[str]:
    base = Path(folder) / "examples"
    if not base.is_dir():
        raise BrightFormatError(f"{folder} has no 'examples' folder: not a BRIGHT-format folder")
    names = {p.name.split(".")[0].split("-0")[0] for p in base.iterdir() if p.is_file()}
    return sorted(names)


def load_local(
    folder: str | Path, domains: Iterable[str] | None = None, *, long_documents: bool = False
) -> list[BrightDomain]:
    folder = Path(folder)
    names = list(domains) if domains else local_domains(folder)
    kind = "long_documents" if long_documents else "documents"
    out = []
    for name in names:
        ex_path, doc_path = _find(folder, "examples", name), _find(folder, kind, name)
        if ex_path is None or doc_path is None:
            have = ", ".join(local_domains(folder))
            raise BrightFormatError(f"{folder}: no examples/{kind} files for domain {name!r} (have: {have})")
        domain = BrightDomain(
            name,
            _read_table(ex_path),
            _read_table(doc_path),
            gold_key="gold_ids_long" if long_documents else "gold_ids",
        )
        domain.validate()
        out.append(domain)
    return out


def load_hub(
    domains: Iterable[str] | None = None, *, long_documents: bool = False, cache_dir: str | None = None
) -> list[BrightDomain]:  # pragma: no cover - needs the dataset hub, unreachable offline
    """Load BRIGHT from the Hugging Face hub (for users online, with `datasets` installed)."""
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise BrightFormatError("loading BRIGHT from the hub needs `pip install datasets`") from exc
    kind = "long_documents" if long_documents else "documents"
    out = []
    for name in domains or BRIGHT_DOMAINS:
        examples = load_dataset(HUB_DATASET, "examples", split=name, cache_dir=cache_dir)
        documents = load_dataset(HUB_DATASET, kind, split=name, cache_dir=cache_dir)
        domain = BrightDomain(
            name,
            [dict(r) for r in examples],
            [dict(r) for r in documents],
            gold_key="gold_ids_long" if long_documents else "gold_ids",
        )
        domain.validate()
        out.append(domain)
    return out


def load_source(
    source: str, domains: Sequence[str] | None = None, *, long_documents: bool = False
) -> list[BrightDomain]:
    """``offline`` (packaged set), ``hub`` (xlangai/BRIGHT online) or a local folder path."""
    if source == "offline":
        return load_local(OFFLINE_DIR, domains, long_documents=long_documents)
    if source == "hub":
        return load_hub(domains, long_documents=long_documents)
    if not Path(source).is_dir():
        raise BrightFormatError(f"BRIGHT source {source!r} is not 'offline', 'hub' or a folder")
    return load_local(source, domains, long_documents=long_documents)


# ---------------------------------------------------------------- running
def instruction_for(domain: str, template: str = DEFAULT_INSTRUCTION) -> str:
    return template.format(domain=domain.replace("_", " "))


def run_domain(
    domain: BrightDomain,
    retriever: Any,
    *,
    instruction: str | None,
    max_queries: int | None = None,
    top_k: int = TOP_K,
) -> dict[str, float]:
    examples = domain.examples[:max_queries] if max_queries else domain.examples
    doc_ids = [d["id"] for d in domain.documents]
    position = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    scores = np.asarray(
        retriever.score(
            [e["query"] for e in examples], [d["content"] for d in domain.documents], instruction=instruction
        ),
        dtype=np.float64,
    )
    if scores.shape != (len(examples), len(doc_ids)):
        raise ValueError(
            f"retriever returned scores of shape {scores.shape}, expected {(len(examples), len(doc_ids))}"
        )
    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    excluded: dict[str, list[str]] = {}
    for row, ex in zip(scores, examples, strict=True):
        skip = [d for d in ex["excluded_ids"] if d != NO_EXCLUSION]
        row = row.copy()
        # Excluded before the cut, as BRIGHT does, so they cannot take top-k slots.
        for d in skip:
            if d in position:
                row[position[d]] = -np.inf
        keep = min(top_k, len(row))
        top = np.argpartition(-row, keep - 1)[:keep]
        run[ex["id"]] = {doc_ids[i]: float(row[i]) for i in top if np.isfinite(row[i])}
        qrels[ex["id"]] = {g: 1 for g in ex[domain.gold_key]}
        excluded[ex["id"]] = skip
    return evaluate_run(run, qrels, excluded, k_values=K_VALUES)


def _means(per_domain: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    keys = list(dict.fromkeys(k for row in per_domain.values() for k in row))  # table order
    out = {}
    for key in keys:
        rows = [row[key] for row in per_domain.values() if key in row]
        out[key] = {m: float(np.mean([r[m] for r in rows])) for m in rows[0] if m != "n_queries"}
    return out


def run_bright(
    domains: Sequence[BrightDomain],
    retrievers: dict[str, Any],
    *,
    instruction_template: str = DEFAULT_INSTRUCTION,
    max_queries: int | None = None,
    subset_queries: int | None = None,
    subset_only: Sequence[str] = ("generate-then-encode",),
    on_step: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Score every retriever on every domain; means over domains are BRIGHT's headline.

    Models in ``subset_only`` (generate-then-encode: one generation per query) run on the
    first ``subset_queries`` queries of each domain only; every model is also scored on
    that subset (embeddings are cached, so this costs little), which is the fair ground
    for quality ratios. Without ``subset_queries`` every model runs on everything.
    """
    full: dict[str, dict[str, dict[str, float]]] = {}
    subset: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    for key, retriever in retrievers.items():
        start = time.perf_counter()
        for domain in domains:
            if on_step:
                on_step(key, domain.name)
            instruction = instruction_for(domain.name, instruction_template)
            if subset_queries is None or key not in subset_only:
                full.setdefault(domain.name, {})[key] = run_domain(
                    domain, retriever, instruction=instruction, max_queries=max_queries
                )
            if subset_queries is not None:
                subset.setdefault(domain.name, {})[key] = run_domain(
                    domain, retriever, instruction=instruction, max_queries=subset_queries
                )
        seconds[key] = round(time.perf_counter() - start, 3)
    return {
        "domains": full,
        "mean": _means(full),
        "subset_queries": subset_queries,
        "subset_domains": subset,
        "subset_mean": _means(subset) if subset else {},
        "seconds": seconds,
        "n_queries": {d.name: len(d.examples[:max_queries] if max_queries else d.examples) for d in domains},
        "n_documents": {d.name: len(d.documents) for d in domains},
        "instruction_template": instruction_template,
    }
