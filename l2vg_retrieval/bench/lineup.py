"""The model lineup every benchmark compares, built around ONE loaded backbone and teacher.

A retriever here scores queries against documents. Dense retrievers wrap an encoder with
the library's ``encode_query`` / ``encode_document`` signature and cache embeddings by
text, so a corpus shared by several tasks or domains is embedded once per model.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Protocol

import numpy as np

from ..llm2vec.baselines import LLM2VEC_KEYS, LLM2VEC_LABELS
from ..matryoshka import check_dim
from ..vectors import unit_rows
from .results import portable_model_name

# Order matters: it is the order of every table and plot.
MODEL_KEYS: tuple[str, ...] = (
    "bm25",
    "teacher",
    "input-centric",
    "generate-then-encode",
    "l2vg-gen-docs",
    "l2vg-teacher-docs",
)
MODEL_LABELS: dict[str, str] = {
    "bm25": "BM25",
    "teacher": "teacher (MiniLM) on raw text",
    "input-centric": "input-centric (mean-pooled backbone)",
    "generate-then-encode": "generate-then-encode (HyDE)",
    "l2vg-gen-docs": "L2VG, documents generative",
    "l2vg-teacher-docs": "L2VG, documents by teacher",
}
DENSE_KEYS = tuple(k for k in MODEL_KEYS if k != "bm25")
# LLM2Vec (the paper's unsupervised teacher and its ablation steps): run only when asked
# for by name, since they need a trained LLM2Vec checkpoint (l2vg llm2vec train).
MODEL_LABELS.update(LLM2VEC_LABELS)
# The models ``--dims`` evaluates at Matryoshka prefixes (``l2vg-gen-docs@128``): the ones
# trained with nested prefixes. The baselines have no such training, so cutting them says
# nothing about L2VG.
PREFIX_BASES: tuple[str, ...] = ("l2vg-gen-docs", "l2vg-teacher-docs")
PREFIX_SEPARATOR = "@"
FLOAT32_BYTES = 4  # the caches and every vector store here hold float32


class DimsError(ValueError):
    """A ``--dims`` request that cannot be evaluated (bad number, too large, no L2VG model)."""


def prefix_key(base: str, dim: int) -> str:
    """``l2vg-gen-docs@128``: the key of ``base`` evaluated at its first ``dim`` dimensions."""
    return f"{base}{PREFIX_SEPARATOR}{dim}"


def split_prefix_key(key: str) -> tuple[str, int | None]:
    """``("l2vg-gen-docs", 128)`` for a prefix key, ``(key, None)`` for any other key."""
    base, sep, tail = key.rpartition(PREFIX_SEPARATOR)
    if sep and base and tail.isascii() and tail.isdigit():
        return base, int(tail)
    return key, None


def model_label(key: str) -> str:
    """The table/plot label of a results key: a lineup key, a prefix key or anything else.

    Results files outlive the lineup (a renamed key, a model added later), so an unknown
    key falls back to itself rather than failing the whole report.
    """
    if key in MODEL_LABELS:
        return MODEL_LABELS[key]
    base, dim = split_prefix_key(key)
    if dim is not None:
        return f"{MODEL_LABELS.get(base, base)}, first {dim} dims"
    return key


def ordered_keys(keys: Sequence[str]) -> list[str]:
    """``keys`` in table order: the lineup order, each model's prefixes right after it
    (largest first), then keys the lineup does not know, in the order given."""
    present = list(dict.fromkeys(keys))
    prefixes: dict[str, list[tuple[int, str]]] = {}
    for key in present:
        base, dim = split_prefix_key(key)
        if dim is not None and key not in MODEL_LABELS:
            prefixes.setdefault(base, []).append((dim, key))
    out: list[str] = []
    for base in [*MODEL_LABELS, *(b for b in prefixes if b not in MODEL_LABELS)]:
        if base in present:
            out.append(base)
        out += [key for _, key in sorted(prefixes.get(base, []), reverse=True)]
    return out + [k for k in present if k not in out]


def parse_dims(spec: str | Sequence[int] | None) -> list[int]:
    """``"256,128,64"`` (or a sequence of ints) → distinct positive sizes, largest first.

    Only the syntax is checked here; :func:`build_retrievers` checks each size against the
    encoder's output dimension, which is known only once the model is loaded.
    """
    if spec is None:
        return []
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    dims: list[int] = []
    for item in items:
        if isinstance(item, str):
            if not item:
                continue
            # int() alone would also take "+8", "1_0" or non-ASCII digits; keep the syntax plain.
            if not (item.isascii() and item.isdigit()):
                raise DimsError(f"--dims takes a comma list of positive integers, got {item!r} in {spec!r}")
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, Integral) or item < 1:
            raise DimsError(f"--dims takes a comma list of positive integers, got {item!r} in {spec!r}")
        dims.append(int(item))
    if not dims:
        raise DimsError(f"--dims is empty: {spec!r}")
    return sorted(set(dims), reverse=True)


def check_dims_request(keys: Sequence[str], dims: Sequence[int]) -> None:
    """A prefix needs an L2VG model in the lineup to cut: asking for one without is an error,
    not a silently empty table."""
    if dims and not any(k in PREFIX_BASES for k in keys):
        raise DimsError(f"--dims evaluates {' and '.join(PREFIX_BASES)}; neither is in the chosen models")


class Retriever(Protocol):
    key: str

    def score(
        self, queries: Sequence[str], documents: Sequence[str], *, instruction: str | None = None
    ) -> np.ndarray:
        """A ``[len(queries), len(documents)]`` score matrix, higher is more relevant."""
        ...


# A short English stop list: BM25 should match content words, as pyserini's analyzer does.
_STOPWORD_TEXT = """
a an and are as at be but by for from has have he her his i if in into is it its me my of on or
our she so that the their them then there these they this to was we were what when where which
who why will with you your do does did not no can how
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_TOKEN = re.compile(r"[a-z0-9]+")


def bm25_tokenize(text: str) -> list[str]:
    """Lowercase word tokens without stop words, with a plural 's' stripped.

    A light stand-in for Lucene's English analyzer (BRIGHT's BM25 runs on pyserini):
    enough that "posts" matches "post", not a full stemmer.
    """
    tokens = []
    for tok in _TOKEN.findall(text.lower()):
        if tok in _STOPWORDS:
            continue
        if len(tok) > 3 and tok.endswith("s") and not tok.endswith("ss"):
            tok = tok[:-1]
        tokens.append(tok)
    return tokens


@dataclass
class BM25Retriever:
    key: str = "bm25"
    k1: float = 0.9  # pyserini's defaults, which BRIGHT uses
    b: float = 0.4

    def score(
        self, queries: Sequence[str], documents: Sequence[str], *, instruction: str | None = None
    ) -> np.ndarray:
        from rank_bm25 import BM25Okapi

        # The instruction is for neural models; a lexical model would only match its words.
        corpus = [bm25_tokenize(d) or ["<empty>"] for d in documents]
        index = BM25Okapi(corpus, k1=self.k1, b=self.b)
        return np.stack([index.get_scores(bm25_tokenize(q)) for q in queries]).astype(np.float32)


@dataclass
class DenseRetriever:
    """Cosine similarity between normalised query and document embeddings."""

    key: str
    encoder: Any
    batch_size: int = 16
    show_progress_bar: bool = False
    # Keyed by (instruction, text). The two L2VG document modes share one query cache:
    # their query side is the same model.
    query_cache: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)
    document_cache: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)
    seconds: dict[str, float] = field(default_factory=lambda: {"queries": 0.0, "documents": 0.0})

    def _embed(self, role: str, texts: Sequence[str], instruction: str | None) -> np.ndarray:
        tag = instruction or ""
        cache = self.query_cache if role == "query" else self.document_cache
        missing = list(dict.fromkeys(t for t in texts if (tag, t) not in cache))
        if missing:
            start = time.perf_counter()
            kwargs = {"batch_size": self.batch_size, "show_progress_bar": self.show_progress_bar}
            if role == "query":
                vectors = self.encoder.encode_query(missing, instruction=instruction, **kwargs)
            else:
                vectors = self.encoder.encode_document(missing, **kwargs)
            self.seconds["queries" if role == "query" else "documents"] += time.perf_counter() - start
            for text, vector in zip(missing, np.asarray(vectors, dtype=np.float32), strict=True):
                cache[(tag, text)] = vector
        return np.stack([cache[(tag, t)] for t in texts])

    def embed_queries(self, queries: Sequence[str], instruction: str | None = None) -> np.ndarray:
        return self._embed("query", queries, instruction)

    def embed_documents(self, documents: Sequence[str]) -> np.ndarray:
        return self._embed("document", documents, None)

    def score(
        self, queries: Sequence[str], documents: Sequence[str], *, instruction: str | None = None
    ) -> np.ndarray:
        q = unit_rows(self.embed_queries(queries, instruction))
        d = unit_rows(self.embed_documents(documents))
        return q @ d.T


@dataclass
class PrefixRetriever:
    """A dense retriever's first ``dim`` dimensions, re-normalised, scored by cosine.

    It never encodes: it reads the base's cached full-size vectors (embedding them through
    the base if not yet there, so it is correct in any order), which is what makes a
    ``--dims`` sweep cost a few matrix products instead of one corpus pass per size.
    Cutting then normalising is :func:`l2vg_retrieval.matryoshka.truncate` followed by the
    normalisation ``encode(..., dim=m)`` does, so the scores are those of a prefix encoder.
    """

    key: str
    base: DenseRetriever
    dim: int

    def __post_init__(self) -> None:
        try:
            check_dim(self.dim, self.full_dim)
        except ValueError as exc:
            raise DimsError(f"{self.key}: {exc}") from exc

    @property
    def full_dim(self) -> int:
        """The base encoder's output size: the largest prefix there is."""
        return int(self.base.encoder.dim)

    @property
    def bytes_per_vector(self) -> int:
        return self.dim * FLOAT32_BYTES

    def _cut(self, vectors: np.ndarray) -> np.ndarray:
        if vectors.shape[1] < self.dim:  # an encoder whose dim attribute lies about its output
            raise ValueError(f"{self.key}: the base returned {vectors.shape[1]}-d vectors")
        return unit_rows(np.ascontiguousarray(vectors[:, : self.dim]))

    def embed_queries(self, queries: Sequence[str], instruction: str | None = None) -> np.ndarray:
        return self._cut(self.base.embed_queries(queries, instruction))

    def embed_documents(self, documents: Sequence[str]) -> np.ndarray:
        return self._cut(self.base.embed_documents(documents))

    def score(
        self, queries: Sequence[str], documents: Sequence[str], *, instruction: str | None = None
    ) -> np.ndarray:
        return self.embed_queries(queries, instruction) @ self.embed_documents(documents).T


def dims_summary(
    retrievers: dict[str, Any], dims: Sequence[int], *, n_documents: int | None = None
) -> dict[str, Any] | None:
    """What a ``--dims`` run records: the sizes, and float32 bytes per document vector for
    each L2VG model and each of its prefixes (times ``n_documents``: the collection's size),
    so quality can be read against storage. None without ``dims``."""
    if not dims:
        return None
    sizes: dict[str, int] = {}
    for key, retriever in retrievers.items():
        if isinstance(retriever, PrefixRetriever):
            sizes[key] = retriever.dim
        elif key in PREFIX_BASES and isinstance(retriever, DenseRetriever):
            sizes[key] = int(retriever.encoder.dim)
    per_doc = {k: d * FLOAT32_BYTES for k, d in sizes.items()}
    return {
        "dims": list(dims),
        "dim": sizes,
        "dtype": "float32",
        "vector_bytes_per_document": per_doc,
        "n_documents": n_documents,
        "collection_bytes": (
            {k: b * n_documents for k, b in per_doc.items()} if n_documents is not None else None
        ),
    }


def parse_models(spec: str | Sequence[str] | None) -> list[str]:
    """``"all"``/None, a comma list or a sequence of keys → validated keys in table order."""
    if spec is None or spec == "all":
        return list(MODEL_KEYS)
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    known = (*MODEL_KEYS, *LLM2VEC_KEYS)
    unknown = [s for s in items if s not in known]
    if unknown or not items:
        raise ValueError(f"unknown model(s) {unknown or spec!r}; choose from {', '.join(known)} or 'all'")
    return [k for k in known if k in items]


def encoders_from(
    l2vg: Any, keys: Sequence[str], *, gte_max_new_tokens: int = 96, llm2vec: str | None = None
) -> dict[str, Any]:
    """Build the dense lineup around an existing L2VG encoder, sharing its backbone and teacher.

    ``InputCentricEncoder``/``GenerateThenEncode`` get the same ``LoadedBackbone`` object,
    the teacher baseline is the encoder's own teacher wrapper, and the teacher-documents
    variant is a second encoder over the same backbone with the same trained tensors
    and ``document_mode="teacher"``: only a few hundred kilobytes are duplicated.
    The LLM2Vec keys load the checkpoint ``llm2vec`` names (default: the encoder's own
    teacher if it is one, else the packaged ``llm2vec``).
    """
    from ..baselines import GenerateThenEncode, InputCentricEncoder
    from ..encoder import L2VGEncoder

    teacher = l2vg.teacher
    device, dtype = str(l2vg.device_), l2vg.dtype_
    out: dict[str, Any] = {}
    wanted_llm2vec = [k for k in keys if k in LLM2VEC_KEYS]
    if wanted_llm2vec:
        from ..llm2vec.baselines import llm2vec_lineup

        out.update(llm2vec_lineup(l2vg, wanted_llm2vec, reference=llm2vec))
    for key in keys:
        if key in LLM2VEC_KEYS:
            continue
        if key == "teacher":
            out[key] = teacher
        elif key == "input-centric":
            out[key] = InputCentricEncoder(l2vg.backbone, device=device, dtype=dtype)
        elif key == "generate-then-encode":
            out[key] = GenerateThenEncode(
                l2vg.backbone, teacher, device=device, dtype=dtype, max_new_tokens=gte_max_new_tokens
            )
        elif key in ("l2vg-gen-docs", "l2vg-teacher-docs"):
            mode = "generative" if key == "l2vg-gen-docs" else "teacher"
            if l2vg.config.document_mode == mode:
                out[key] = l2vg
            else:
                twin = L2VGEncoder(
                    l2vg.config.model_copy(update={"document_mode": mode}),
                    l2vg.backbone,
                    teacher_dim=l2vg.teacher_dim,
                    teacher=teacher.teacher,
                    device=device,
                    dtype=dtype,
                )
                twin.load_trainable_state(l2vg.trainable_state())
                out[key] = twin
        elif key != "bm25":
            raise ValueError(f"unknown model key {key!r}")
    return out


def load_l2vg(
    checkpoint: str | None, *, untrained: bool = False, dtype: str = "float32", device: str | None = "cpu"
) -> Any:
    """The trained encoder (packaged default or a folder), or an untrained one for dry runs.

    One backbone and one teacher are loaded here and shared by the whole lineup.
    """
    from ..backbones import load_backbone, load_teacher
    from ..config import EncoderConfig
    from ..encoder import L2VGEncoder, read_checkpoint_meta

    if untrained:
        config = EncoderConfig()
    else:
        from pathlib import Path

        from ..encoder import DEFAULT_CHECKPOINT

        config = EncoderConfig.model_validate(
            read_checkpoint_meta(Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT)["config"]
        )
    backbone = load_backbone(config.backbone)
    teacher = load_teacher(config.teacher)
    if untrained:
        return L2VGEncoder.from_config(config, backbone=backbone, teacher=teacher, device=device, dtype=dtype)
    return L2VGEncoder.from_pretrained(
        checkpoint, backbone=backbone, teacher=teacher, device=device, dtype=dtype
    )


def build_retrievers(
    l2vg: Any,
    keys: Sequence[str],
    *,
    gte_max_new_tokens: int = 96,
    batch_size: int = 16,
    llm2vec: str | None = None,
    dims: Sequence[int] | None = None,
) -> dict[str, Retriever]:
    """One retriever per key, in ``keys`` order; with ``dims``, each L2VG model is followed
    by a :class:`PrefixRetriever` per size (``l2vg-gen-docs@128``) sharing its caches.

    Raises :class:`DimsError` if a size exceeds the encoder's output dimension.
    """
    dims = list(dims or [])
    check_dims_request(keys, dims)
    dense = [k for k in keys if k != "bm25"]
    encoders = (
        encoders_from(l2vg, dense, gte_max_new_tokens=gte_max_new_tokens, llm2vec=llm2vec) if dense else {}
    )
    out: dict[str, Retriever] = {}
    for key in keys:
        out[key] = (
            BM25Retriever() if key == "bm25" else DenseRetriever(key, encoders[key], batch_size=batch_size)
        )
    gen, tea = out.get("l2vg-gen-docs"), out.get("l2vg-teacher-docs")
    if isinstance(gen, DenseRetriever) and isinstance(tea, DenseRetriever):
        tea.query_cache = gen.query_cache
    # These three embed documents with the same teacher, unprompted: one corpus pass serves all.
    teacher_docs = [
        r
        for k in ("teacher", "generate-then-encode", "l2vg-teacher-docs")
        if isinstance(r := out.get(k), DenseRetriever)
    ]
    for retriever in teacher_docs[1:]:
        retriever.document_cache = teacher_docs[0].document_cache
    if not dims:
        return out
    # Each base comes right before its prefixes: the runners go in dict order, so the base
    # fills the caches and its prefixes only read them.
    with_prefixes: dict[str, Retriever] = {}
    for key, retriever in out.items():
        with_prefixes[key] = retriever
        if key in PREFIX_BASES and isinstance(retriever, DenseRetriever):
            for dim in dims:
                with_prefixes[prefix_key(key, dim)] = PrefixRetriever(prefix_key(key, dim), retriever, dim)
    return with_prefixes


def describe_l2vg(l2vg: Any, checkpoint: str | None, untrained: bool) -> dict[str, Any]:
    """What the results were computed with: goes into every results JSON."""
    return {
        "checkpoint": "untrained (from_config)" if untrained else (checkpoint or "packaged default"),
        "untrained": untrained,
        "backbone": l2vg.config.backbone,
        "teacher": portable_model_name(l2vg.config.teacher),
        "n_thought": l2vg.config.n_thought,
        "n_compression": l2vg.config.n_compression,
        "dtype": str(l2vg.dtype_).removeprefix("torch."),
        "fingerprint": l2vg.fingerprint,
    }
