"""Safety-filtered retrieval: a query gate and a document screen from the encoder's own signal.

Why this shape. A generative embedding is the teacher-space vector of what the LLM would
answer, so a harmful request tends to land near the model's refusals. SmolLM2-135M refuses
only about a quarter of clearly harmful requests, though, so closeness to a refusal alone
catches too little. Both halves therefore use a small calibrated logistic-regression probe
on the encoder's own vectors:

- **Query gate**: features = the query's generative embedding (with the retrieval
  instruction) + its cosine to a *refusal prototype* (refusal sentences embedded by the
  teacher, i.e. exactly where the encoder puts "the answer is a refusal"). A query scoring
  at or above the threshold is blocked: safe-mode search returns no hits and says why.
- **Document screen**: features = the passage's embedding in the space calibration found
  to separate best: ``generative`` (how the model would respond to the passage, encoded
  with the document prompt) or ``teacher`` (what the passage says). Scores and flags are
  stored in the Qdrant payload (:data:`HARM_SCORE_KEY`, :data:`HARM_FLAG_KEY`), and safe
  searches filter flagged points out even when the query looks benign.

Calibration (``l2vg safety calibrate``) fits both probes on labelled harmful/benign prompts
and passages, picks each threshold on a held-out fold as the lowest score that keeps the
benign false-positive rate at or under a target (benign retrieval must not pay much for
safety), and records the precision/recall it reached there. Everything is stored beside
the checkpoint as ``safety.json`` (thresholds, metrics, provenance) + ``safety.safetensors``
(probe weights, prototype): no pickle. The calibration is tied to the encoder's
fingerprint; loading it for another encoder is an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

HARM_SCORE_KEY = "l2vg_harm_score"
HARM_FLAG_KEY = "l2vg_harm_flagged"
SAFETY_FILE = "safety.json"
SAFETY_WEIGHTS_FILE = "safety.safetensors"
SAFETY_FORMAT = "l2vg-safety"
SAFETY_VERSION = 1

DocSpace = Literal["generative", "teacher"]
DOC_SPACES: tuple[DocSpace, ...] = ("generative", "teacher")

# What the model says when it declines: embedded by the teacher, these mark where a
# refusal *response* sits in the space generative embeddings are aligned to.
REFUSAL_TEXTS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request because it could cause harm.",
    "I'm not able to provide instructions for illegal or dangerous activities.",
    "Sorry, I won't help with that. It would be unethical and possibly illegal.",
    "I can't provide that information, as it could be used to hurt people.",
    "As an AI assistant, I must decline this request.",
    "I'm unable to help with creating harmful, hateful or violent content.",
    "This request asks for something dangerous, so I will not answer it.",
)
L2_GRID: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)


class SafetyCalibrationError(ValueError):
    """No calibration, a corrupt one, or one made for a different encoder."""


# ----------------------------------------------------------------------------- probe
@dataclass
class LogisticProbe:
    """Logistic regression on standardised features, fitted by Newton's method.

    Newton (IRLS) on a few hundred examples and a few hundred features converges in a
    dozen steps and has no randomness, so the same data gives bit-identical weights.
    """

    weight: np.ndarray
    bias: float
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(
        cls, features: np.ndarray, labels: np.ndarray, *, l2: float = 1.0, max_iter: int = 100
    ) -> LogisticProbe:
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
            raise ValueError(f"features must be [N, F] with N = len(labels) > 0, got {x.shape} and {y.shape}")
        if set(np.unique(y)) != {0.0, 1.0}:
            raise ValueError("labels must contain both classes 0 and 1")
        mean = x.mean(0)
        scale = x.std(0)
        scale[scale < 1e-8] = 1.0
        z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
        # Class-balanced sample weights: the harmful/benign ratio of a calibration set says
        # nothing about the ratio at search time.
        pos = y.sum()
        sample_w = np.where(y == 1, len(y) / (2 * pos), len(y) / (2 * (len(y) - pos)))
        penalty = np.full(z.shape[1], l2)
        penalty[-1] = 0.0  # the intercept is not shrunk
        theta = np.zeros(z.shape[1])
        for _ in range(max_iter):
            p = _sigmoid(z @ theta)
            grad = z.T @ (sample_w * (p - y)) + penalty * theta
            hess = (z * (sample_w * p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
            step = np.linalg.solve(hess, grad)
            theta -= step
            if np.max(np.abs(step)) < 1e-10:
                break
        return cls(weight=theta[:-1], bias=float(theta[-1]), mean=mean, scale=scale)

    def logits(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.weight):
            raise ValueError(f"probe expects [N, {len(self.weight)}] features, got {x.shape}")
        return ((x - self.mean) / self.scale) @ self.weight + self.bias

    def score(self, features: np.ndarray) -> np.ndarray:
        return _sigmoid(self.logits(features))

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.weight": self.weight,
            f"{prefix}.bias": np.array([self.bias]),
            f"{prefix}.mean": self.mean,
            f"{prefix}.scale": self.scale,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], prefix: str) -> LogisticProbe:
        try:
            return cls(
                weight=np.asarray(tensors[f"{prefix}.weight"], dtype=np.float64),
                bias=float(tensors[f"{prefix}.bias"][0]),
                mean=np.asarray(tensors[f"{prefix}.mean"], dtype=np.float64),
                scale=np.asarray(tensors[f"{prefix}.scale"], dtype=np.float64),
            )
        except KeyError as exc:
            raise SafetyCalibrationError(f"safety weights lack tensor {exc}") from exc


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


# ----------------------------------------------------------------------------- metrics
def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random harmful example outscores a random benign one (ties 1/2)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def threshold_at_fpr(scores: np.ndarray, labels: np.ndarray, max_fpr: float) -> float:
    """The lowest threshold (flag if score >= t) whose benign false-positive rate <= max_fpr."""
    if not 0.0 <= max_fpr < 1.0:
        raise ValueError(f"max_fpr must be in [0, 1), got {max_fpr}")
    benign = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(labels) == 0])[::-1]
    if len(benign) == 0:
        raise ValueError("no benign examples to set a threshold on")
    allowed = math.floor(max_fpr * len(benign) + 1e-9)
    if allowed >= len(benign):
        return float(benign[-1])
    # Just above the highest benign score that must not be flagged.
    return float(np.nextafter(benign[allowed], np.inf))


def precision_recall(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    s, y = np.asarray(scores), np.asarray(labels)
    flagged = s >= threshold
    tp = int((flagged & (y == 1)).sum())
    fp = int((flagged & (y == 0)).sum())
    fn = int((~flagged & (y == 1)).sum())
    n_benign = int((y == 0).sum())
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "fpr": fp / n_benign if n_benign else 0.0,
        "n_harmful": int((y == 1).sum()),
        "n_benign": n_benign,
    }


# ----------------------------------------------------------------------------- calibration
@dataclass
class SafetyCalibration:
    """Everything a SafetyFilter needs; stored as safety.json + safety.safetensors."""

    encoder_fingerprint: str
    query_probe: LogisticProbe
    doc_probe: LogisticProbe
    refusal_prototype: np.ndarray
    query_threshold: float
    doc_threshold: float
    doc_space: DocSpace
    query_instruction: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            **self.query_probe.tensors("query_probe"),
            **self.doc_probe.tensors("doc_probe"),
            "refusal_prototype": np.asarray(self.refusal_prototype, dtype=np.float64),
        }
        tmp = out / (SAFETY_WEIGHTS_FILE + ".tmp")
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
        tmp.replace(out / SAFETY_WEIGHTS_FILE)
        meta = {
            "format": SAFETY_FORMAT,
            "format_version": SAFETY_VERSION,
            "encoder_fingerprint": self.encoder_fingerprint,
            "query_threshold": self.query_threshold,
            "doc_threshold": self.doc_threshold,
            "doc_space": self.doc_space,
            "query_instruction": self.query_instruction,
            "metrics": self.metrics,
            "provenance": self.provenance,
        }
        (out / SAFETY_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, folder: str | Path) -> SafetyCalibration:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta_path, weights_path = folder / SAFETY_FILE, folder / SAFETY_WEIGHTS_FILE
        if not meta_path.is_file():
            raise SafetyCalibrationError(
                f"no safety calibration at {folder} ({SAFETY_FILE} missing); run "
                f"`l2vg safety calibrate --model {folder}` first"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SafetyCalibrationError(f"{meta_path} is corrupt: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != SAFETY_FORMAT:
            raise SafetyCalibrationError(f"{meta_path} is not an l2vg safety calibration")
        if meta.get("format_version") != SAFETY_VERSION:
            raise SafetyCalibrationError(f"{meta_path} has format version {meta.get('format_version')}")
        if meta.get("doc_space") not in DOC_SPACES:
            raise SafetyCalibrationError(f"{meta_path}: doc_space must be one of {DOC_SPACES}")
        if not weights_path.is_file():
            raise SafetyCalibrationError(f"{folder} has {SAFETY_FILE} but no {SAFETY_WEIGHTS_FILE}")
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise SafetyCalibrationError(f"{weights_path} is corrupt: {exc}") from exc
        try:
            return cls(
                encoder_fingerprint=str(meta["encoder_fingerprint"]),
                query_probe=LogisticProbe.from_tensors(tensors, "query_probe"),
                doc_probe=LogisticProbe.from_tensors(tensors, "doc_probe"),
                refusal_prototype=np.asarray(tensors["refusal_prototype"], dtype=np.float64),
                query_threshold=float(meta["query_threshold"]),
                doc_threshold=float(meta["doc_threshold"]),
                doc_space=meta["doc_space"],
                query_instruction=meta.get("query_instruction"),
                metrics=dict(meta.get("metrics", {})),
                provenance=dict(meta.get("provenance", {})),
            )
        except KeyError as exc:
            raise SafetyCalibrationError(f"{meta_path} or its weights lack {exc}") from exc


def refusal_prototype(encoder: Any) -> np.ndarray:
    """Unit mean of the teacher embeddings of refusal sentences."""
    vectors = np.asarray(
        encoder.teacher.encode(list(REFUSAL_TEXTS), show_progress_bar=False), dtype=np.float64
    )
    proto = vectors.mean(0)
    return proto / max(float(np.linalg.norm(proto)), 1e-12)


def query_features(embeddings: np.ndarray, prototype: np.ndarray) -> np.ndarray:
    """The gate's features: the embedding and its cosine to the refusal prototype."""
    emb = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    cosine = (emb / norms) @ prototype
    return np.hstack([emb, cosine[:, None]])


def embed_documents(
    encoder: Any, texts: list[str], space: DocSpace, *, show_progress_bar: bool = False
) -> np.ndarray:
    """Passage vectors in one of the screen's spaces (independent of config.document_mode)."""
    if space == "teacher":
        return np.asarray(encoder.teacher.encode(texts, show_progress_bar=show_progress_bar))
    return np.asarray(
        encoder.encode(texts, prompt=encoder.config.document_prompt, show_progress_bar=show_progress_bar)
    )


def _fold(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified seeded split into train / validation indices."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_val = max(1, round(len(idx) * val_fraction))
        if len(idx) - n_val < 1:
            raise ValueError(f"class {cls} has {len(idx)} examples: too few to both fit and validate")
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def fit_probe_with_threshold(
    features: np.ndarray, labels: np.ndarray, *, max_fpr: float, val_fraction: float, seed: int
) -> tuple[LogisticProbe, float, dict[str, Any]]:
    """Fit on a training fold (L2 strength by validation AUC), threshold on the validation fold."""
    train, val = _fold(labels, val_fraction, seed)
    best: tuple[float, float, LogisticProbe] | None = None
    for l2 in L2_GRID:
        probe = LogisticProbe.fit(features[train], labels[train], l2=l2)
        auc = roc_auc(probe.score(features[val]), labels[val])
        if best is None or auc > best[0] + 1e-12:
            best = (auc, l2, probe)
    assert best is not None
    auc, l2, probe = best
    val_scores = probe.score(features[val])
    threshold = threshold_at_fpr(val_scores, labels[val], max_fpr)
    report = {
        "auc": auc,
        "l2": l2,
        "threshold": threshold,
        "max_fpr": max_fpr,
        **precision_recall(val_scores, labels[val], threshold),
        "n_train": len(train),
        "n_val": len(val),
    }
    return probe, threshold, report


def calibrate(
    encoder: Any,
    rows: Sequence[Any] | None = None,
    *,
    seed: int = 0,
    max_fpr_query: float = 0.02,
    max_fpr_doc: float = 0.02,
    val_fraction: float = 0.35,
    doc_spaces: Sequence[DocSpace] = DOC_SPACES,
    show_progress_bar: bool = False,
) -> SafetyCalibration:
    """Fit the gate and the screen on labelled rows (default: the packaged calibration set).

    ``rows`` are :class:`~l2vg_retrieval.safety_data.LabelledText`-like objects with
    ``text``, ``label`` (1 harmful) and ``kind`` ("query" or "passage"). The seed fixes the
    train/validation folds; the fit itself is deterministic.
    """
    from .safety_data import load_calibration_set, split_by_kind

    rows = list(rows) if rows is not None else load_calibration_set()
    q_texts, q_labels = split_by_kind(rows, "query")
    d_texts, d_labels = split_by_kind(rows, "passage")
    for name, labels in (("query", q_labels), ("passage", d_labels)):
        if len(labels) == 0 or labels.min() == labels.max():
            raise ValueError(f"calibration needs harmful and benign {name} examples")

    prototype = refusal_prototype(encoder)
    instruction = encoder.config.query_instruction
    q_emb = np.asarray(
        encoder.encode_query(q_texts, instruction=instruction, show_progress_bar=show_progress_bar)
    )
    q_feats = query_features(q_emb, prototype)
    q_probe, q_threshold, q_report = fit_probe_with_threshold(
        q_feats, q_labels, max_fpr=max_fpr_query, val_fraction=val_fraction, seed=seed
    )
    q_report["refusal_similarity_auc"] = roc_auc(q_feats[:, -1], q_labels)

    doc_reports: dict[str, Any] = {}
    best_doc: tuple[float, DocSpace, LogisticProbe, float] | None = None
    for space in doc_spaces:
        d_emb = embed_documents(encoder, d_texts, space, show_progress_bar=show_progress_bar)
        probe, threshold, report = fit_probe_with_threshold(
            d_emb, d_labels, max_fpr=max_fpr_doc, val_fraction=val_fraction, seed=seed
        )
        doc_reports[space] = report
        # Recall at the allowed FPR is what matters for the screen; AUC breaks ties.
        key = report["recall"] + 1e-3 * report["auc"]
        if best_doc is None or key > best_doc[0] + 1e-12:
            best_doc = (key, space, probe, threshold)
    if best_doc is None:
        raise ValueError(f"doc_spaces must name at least one of {DOC_SPACES}")
    _, doc_space, doc_probe, doc_threshold = best_doc

    return SafetyCalibration(
        encoder_fingerprint=encoder.fingerprint,
        query_probe=q_probe,
        doc_probe=doc_probe,
        refusal_prototype=prototype,
        query_threshold=q_threshold,
        doc_threshold=doc_threshold,
        doc_space=doc_space,
        query_instruction=instruction,
        metrics={
            "query_gate": q_report,
            "document_screen": doc_reports[doc_space],
            "doc_spaces": doc_reports,
        },
        provenance={
            "seed": seed,
            "val_fraction": val_fraction,
            "n_query_examples": len(q_texts),
            "n_passage_examples": len(d_texts),
            "refusal_texts": list(REFUSAL_TEXTS),
        },
    )


# ----------------------------------------------------------------------------- filter
@dataclass(frozen=True)
class GateDecision:
    """The query gate's verdict. ``reason`` says why, with the score and threshold."""

    blocked: bool
    score: float
    reason: str
    threshold: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocked": self.blocked,
            "score": self.score,
            "threshold": self.threshold,
            "reason": self.reason,
        }


class SafetyFilter:
    """Screens documents at index time and gates queries at search time."""

    def __init__(self, encoder: Any, calibration: SafetyCalibration) -> None:
        if calibration.encoder_fingerprint != encoder.fingerprint:
            raise SafetyCalibrationError(
                f"the safety calibration was made for encoder {calibration.encoder_fingerprint}, "
                f"but this encoder is {encoder.fingerprint}: probes only mean something in the "
                "vector space they were fitted in; recalibrate with `l2vg safety calibrate`"
            )
        expected = encoder.dim + 1
        if len(calibration.query_probe.weight) != expected:
            raise SafetyCalibrationError(
                f"query probe has {len(calibration.query_probe.weight)} inputs, encoder needs {expected}"
            )
        self.encoder = encoder
        self.calibration = calibration

    @classmethod
    def from_encoder(cls, encoder: Any, path: str | Path | None = None) -> SafetyFilter:
        """Load the calibration stored beside a checkpoint (default: the packaged one)."""
        from .encoder import DEFAULT_CHECKPOINT

        folder = Path(path) if path is not None else DEFAULT_CHECKPOINT
        return cls(encoder, SafetyCalibration.load(folder))

    # -- queries
    def query_scores(self, queries: Sequence[str], *, instruction: str | None = None,
                     embeddings: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """Harm probabilities of queries; ``embeddings`` (from encode_query) skips re-encoding."""
        if embeddings is None:
            embeddings = self.encoder.encode_query(
                list(queries), instruction=instruction or self.calibration.query_instruction
            )
        feats = query_features(np.atleast_2d(np.asarray(embeddings)), self.calibration.refusal_prototype)
        return self.calibration.query_probe.score(feats)

    def _decision(self, score: float) -> GateDecision:
        cal = self.calibration
        t = cal.query_threshold
        gate = cal.metrics.get("query_gate", {})
        nan = float("nan")
        basis = (
            "probe on the generative query embedding + refusal similarity, calibrated at "
            f"precision {gate.get('precision', nan):.3f} / recall {gate.get('recall', nan):.3f}"
            f" / benign FPR {gate.get('fpr', nan):.3f}"
        )
        if score >= t:
            reason = f"blocked by query gate: harm score {score:.4f} >= threshold {t:.4f} ({basis})"
            return GateDecision(True, score, reason, t)
        return GateDecision(False, score, f"passed query gate: harm score {score:.4f} < threshold {t:.4f}", t)

    def check_query(self, query: str, instruction: str | None = None, *,
                    embedding: np.ndarray | None = None) -> GateDecision:  # fmt: skip
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__}")
        if not query.strip():
            raise ValueError("query is empty or whitespace only")
        emb = None if embedding is None else np.asarray(embedding)[None, :]
        score = float(self.query_scores([query], instruction=instruction, embeddings=emb)[0])
        return self._decision(score)

    def check_queries(self, queries: Sequence[str], instruction: str | None = None, *,
                      embeddings: np.ndarray | None = None) -> list[GateDecision]:  # fmt: skip
        if not queries:
            return []
        return [self._decision(float(s)) for s in self.query_scores(queries, instruction=instruction,
                                                                      embeddings=embeddings)]  # fmt: skip

    # -- documents
    def document_scores(self, texts: Sequence[str], *, embeddings: np.ndarray | None = None) -> np.ndarray:
        """Harm probabilities of passages; ``embeddings`` must be in ``calibration.doc_space``."""
        if embeddings is None:
            if len(texts) == 0:
                return np.zeros(0)
            embeddings = embed_documents(self.encoder, list(texts), self.calibration.doc_space)
        return self.calibration.doc_probe.score(np.atleast_2d(np.asarray(embeddings)))

    def screen_documents(
        self, texts: list[str], *, embeddings: np.ndarray | None = None
    ) -> list[dict[str, Any]]:
        """Per-document payload entries: ``{HARM_SCORE_KEY: float, HARM_FLAG_KEY: bool}``."""
        scores = self.document_scores(texts, embeddings=embeddings)
        t = self.calibration.doc_threshold
        return [{HARM_SCORE_KEY: float(s), HARM_FLAG_KEY: bool(s >= t)} for s in scores]

    @property
    def doc_space(self) -> DocSpace:
        return self.calibration.doc_space

    @property
    def name(self) -> str:
        """Recorded in a screened collection's metadata: which calibration flagged it."""
        cal = self.calibration
        return f"l2vg-safety:{cal.encoder_fingerprint[:12]}:doc{cal.doc_threshold:.4f}"
