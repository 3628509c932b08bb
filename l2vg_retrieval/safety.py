"""Safety-filtered retrieval: a query gate and a document screen from the encoder's own signal.

Why this shape. A generative embedding is the teacher-space vector of what the LLM would
answer, so a harmful request tends to land near the model's refusals. SmolLM2-135M refuses
only about a quarter of clearly harmful requests, though, so closeness to a refusal alone
catches too little. Both halves therefore use a small calibrated linear probe on the
encoder's own states (the gate a logistic regression, the screen a shrinkage discriminant
whose shrinkage is chosen by recall on harm categories held out of the fit):

- **Query gate**: features = the query's generative embedding (with the retrieval
  instruction), its cosine to a *refusal prototype* (refusal sentences embedded by the
  teacher, i.e. where the encoder puts "the answer is a refusal"), and, by default, **the
  backbone's own refusal signal**: read in the same forward pass as the embedding, the
  log-probability that its answer begins like a refusal ("I'm sorry", "I cannot", ...) and
  like compliance ("Sure", "Here", ...), from the next-token distribution at the answer
  position (:meth:`L2VGEncoder.encode_with_answer_states`). A query scoring at or above the
  threshold is blocked: safe-mode search returns no hits and says why.
- **Document screen**: features = the passage's document pass after the probe layer
  (``probe``, the default), or its embedding in the space calibration found to separate
  best: ``generative`` (how the model would respond to the passage, encoded with the
  document prompt) or ``teacher`` (what the passage says). Scores and flags are
  stored in the Qdrant payload (:data:`HARM_SCORE_KEY`, :data:`HARM_FLAG_KEY`), and safe
  searches filter flagged points out even when the query looks benign.

Calibration (``l2vg safety calibrate``) fits both probes on labelled harmful/benign prompts
and passages (by default the packaged harm-taxonomy set), on a training fold stratified by
label and harm category / benign family, so the validation fold is as broad as the data.
Each threshold is the lowest score that keeps the benign false-positive rate on the
validation fold at or under a target, pooled **and** for every benign family large enough
to measure (technical passages, general questions, look-alikes): benign retrieval must not
pay much for safety, and no kind of benign text may pay more than the rest. Everything is
stored beside the checkpoint as ``safety.json`` (thresholds, metrics, provenance) +
``safety.safetensors`` (probe weights, prototype, digests of the calibration texts, so a
benchmark can prove it tests on unseen data): no pickle. The calibration is tied to the
encoder's fingerprint; loading it for another encoder is an error.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .vectors import unit_rows

HARM_SCORE_KEY = "l2vg_harm_score"
HARM_FLAG_KEY = "l2vg_harm_flagged"
SAFETY_FILE = "safety.json"
SAFETY_WEIGHTS_FILE = "safety.safetensors"
SAFETY_FORMAT = "l2vg-safety"
SAFETY_VERSION = 3
# version 1: no refusal signal, no calibration digests; version 2: no document-pass reading
_READABLE_VERSIONS = (1, 2, 3)

# What the document screen reads. "probe": the encoder's document pass after the probe
# layer (the state at the last position and the mean over the passage's tokens, each unit
# length); "generative" / "teacher": the passage's vector in that document mode.
# Leave-one-category-out, a screen on the probe flagged 86% of the passages of a harm
# category it never saw, one-line passages included (88% on long ones only), against 67%
# (one category at 30%, long passages) on the generative vectors and 42% on the teacher's
# (docs/safety.md): like the gate, it needs what is being said, not the topic the vectors
# encode. It costs ~40% of embedding the passage (the first layers only, no special tokens).
DocSpace = Literal["probe", "generative", "teacher"]
DOC_SPACES: tuple[DocSpace, ...] = ("probe", "generative", "teacher")

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
# How answers begin when the model declines, and when it complies. Only the first token of
# each is read (one forward pass gives one next-token distribution); a token that starts
# openings of both kinds says nothing and is dropped from both.
REFUSAL_OPENINGS: tuple[str, ...] = (
    "I'm sorry", "I am sorry", "Sorry", "I cannot", "I can't", "I won't", "I will not",
    "I'm unable", "I am unable", "I'm not able", "Unfortunately", "As an AI", "I apologize",
    "I must decline", "No",
)  # fmt: skip
COMPLIANCE_OPENINGS: tuple[str, ...] = (
    "Sure", "Certainly", "Of course", "Absolutely", "Here", "Here's", "Yes", "Great", "Okay",
    "Step", "1.", "To", "The", "First", "A", "In",
)  # fmt: skip
GATE_BASE_FEATURES: tuple[str, ...] = ("embedding", "refusal_similarity")
ANSWER_FEATURES: tuple[str, ...] = ("refusal_start_logprob", "compliance_start_logprob")
# The encoding pass's hidden state at the answer position after the first k layers (unit
# length). Leave-one-category-out, a gate reading the middle layer's state blocked 77% of a
# harm category it never saw, against 28% without it: the final layers' states and the
# embedding describe the answer's topic, the middle layers still say what is being asked
# for. It is read from the same forward pass as the embedding, so it costs nothing at search time.
# With the probe the gate leaves the embedding out: in the same measurement, the probe state
# and the refusal signal alone reached 83% (at 0.6% benign false positives) and adding the
# embedding brought it back to 77%, the embedding's topic directions fit the categories seen.
PROBE_FEATURE = "probe_state"
# Beside it, the mean over the request's own tokens at the same layer (unit length), as the
# screen reads passages: leave-one-category-out it ranks a category nobody calibrated for
# better (mean AUC 0.979 -> 0.983 with the LDA gate, 0.975 -> 0.982 logistic) and the LDA gate
# blocks 80% of it at 1.9% benign false positives, against 76% at 2.1% for the state alone
# (benchmarks/results/ablations/safety_gate_probe_mean.json). Same pass, no extra cost.
PROBE_MEAN_FEATURE = "probe_mean"
# And the request read as a passage: the document pass (document prompt, no special tokens)
# after the same layer, the last position's state and the mean, as the screen reads text.
# The query pass reads a request as a question to answer, the document pass as text that
# says something; beside each other, leave-one-category-out, the gate blocked 2.0 points
# more of a category nobody calibrated for, paired on the same rows [+0.5, +3.8], at 2.0%
# benign false positives against 1.9%
# (benchmarks/results/ablations/safety_gate_document_pass.json). Unlike the features
# above it is not free: a single safe query takes 1.44x a plain query's time with it, 1.08x
# without (it rides in the query's own pass as a second row), a batch about 1.3x (a second
# half pass) (benchmarks/results/ablations/safe_query_cost.json).
DOCUMENT_PASS_FEATURE = "document_pass"
DEFAULT_PROBE_LAYER: int | str | None = "middle"
L2_GRID: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
# How a probe is fitted. "logistic": regularised logistic regression, its L2 strength chosen
# by validation AUC. "lda": shrinkage linear discriminant analysis (the class means and the
# pooled within-class covariance shrunk toward the identity), its shrinkage chosen by recall
# on harm categories held out of the fit (:func:`held_out_category_recall`). The screen uses
# LDA: leave-one-category-out on the taxonomy data it flagged 80% of the harmful passages of
# a category it never saw, against 76% for logistic regression, at the same 2% benign budget,
# with only intellectual property still under half (45%; logistic: defamation too).
# Logistic regression finds whatever separates the categories it is shown; the shrunk
# discriminant leans on the directions every harmful passage shares
# (benchmarks/results/safety_screen_generalisation.json). The gate is LDA too since it reads
# the mean over the request's tokens (PROBE_MEAN_FEATURE): leave-one-category-out 80% of a
# category nobody calibrated for at 1.9% benign false positives, against 73% at 0.9% for a
# logistic gate on the same features; chosen per fold by held-out categories inside each
# fold's training rows, LDA won 10 of 15 folds (78% at 1.7%). Before the mean it was the
# other way round: LDA bought recall with benign false positives above the 2% budget
# (benchmarks/results/ablations/safety_gate_probe_mean.json).
ProbeKind = Literal["logistic", "lda"]
# How a probe's hyperparameter is chosen: validation AUC, or recall on harm categories held
# out of the training fold (:func:`held_out_category_recall`); None is each kind's default
# (AUC for logistic, categories for LDA).
Selection = Literal["auc", "categories"]
PROBE_KINDS: tuple[ProbeKind, ...] = ("logistic", "lda")
DEFAULT_SCREEN_PROBE: ProbeKind = "lda"
DEFAULT_GATE_PROBE: ProbeKind = "lda"
SHRINKAGE_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7)
# Harm categories are dealt into this many groups to choose a hyperparameter by held-out
# categories (fewer if the data has fewer categories; none below two: validation AUC then).
CATEGORY_GROUPS = 4
# Below this many validation examples a 2% false-positive rate cannot be measured (it
# would allow zero mistakes), so such a benign family counts only in the pooled rate.
MIN_FAMILY_SIZE = 50


class SafetyCalibrationError(ValueError):
    """No calibration, a corrupt one, or one made for a different encoder."""


# ----------------------------------------------------------------------------- probe
@dataclass
class LogisticProbe:
    """A linear harm score ``sigmoid(w · standardise(x) + b)``.

    Fitted as a logistic regression by Newton's method (:meth:`fit`: Newton (IRLS) on a few
    hundred examples and a few hundred features converges in a dozen steps and has no
    randomness, so the same data gives bit-identical weights) or as a shrinkage linear
    discriminant (:meth:`fit_lda`, closed form). Both store and score the same way.
    """

    weight: np.ndarray
    bias: float
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(
        cls, features: np.ndarray, labels: np.ndarray, *, l2: float = 1.0, max_iter: int = 100
    ) -> LogisticProbe:
        standard, y, mean, scale = _standardised(features, labels)
        z = np.hstack([standard, np.ones((len(standard), 1))])
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

    @classmethod
    def fit_lda(cls, features: np.ndarray, labels: np.ndarray, *, shrinkage: float = 0.3) -> LogisticProbe:
        """Linear discriminant on standardised features: ``w = S⁻¹(μ₁ − μ₀)`` with the pooled
        within-class covariance shrunk toward the identity, ``S = (1 − a)·Σ + a·I``, and the
        bias at the midpoint of the class means (equal priors: the calibration set's ratio of
        harmful to benign says nothing about the ratio at search time). ``a`` = 1 is the plain
        difference of means; near 0, the covariance of a few hundred rows in a few hundred
        dimensions is too noisy to invert."""
        if not 0.0 < shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
        z, y, mean, scale = _standardised(features, labels)
        mu1, mu0 = z[y == 1].mean(0), z[y == 0].mean(0)
        centred = np.vstack([z[y == 1] - mu1, z[y == 0] - mu0])
        covariance = centred.T @ centred / len(centred)
        shrunk = (1.0 - shrinkage) * covariance + shrinkage * np.eye(len(covariance))
        weight = np.linalg.solve(shrunk, mu1 - mu0)
        return cls(weight=weight, bias=float(-weight @ (mu1 + mu0) / 2), mean=mean, scale=scale)

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


def _standardised(
    features: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked inputs of a probe fit: ``(features standardised per column, labels as float,
    column means, column scales)``; a constant column keeps scale 1."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"features must be [N, F] with N = len(labels) > 0, got {x.shape} and {y.shape}")
    if set(np.unique(y)) != {0.0, 1.0}:
        raise ValueError("labels must contain both classes 0 and 1")
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-8] = 1.0
    return (x - mean) / scale, y, mean, scale


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


def threshold_for_families(
    scores: np.ndarray,
    labels: np.ndarray,
    families: Sequence[str],
    max_fpr: float,
    *,
    min_family_size: int = MIN_FAMILY_SIZE,
) -> float:
    """The lowest threshold that keeps the pooled benign FPR, and that of every benign family
    with at least ``min_family_size`` examples, at or under ``max_fpr``."""
    s, y, fam = np.asarray(scores, dtype=np.float64), np.asarray(labels), np.asarray(families)
    threshold = threshold_at_fpr(s, y, max_fpr)
    benign = y == 0
    for family in sorted(set(fam[benign].tolist())):
        mask = benign & (fam == family)
        if mask.sum() >= min_family_size:
            threshold = max(threshold, threshold_at_fpr(s[mask], y[mask], max_fpr))
    return threshold


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


def family_fpr(
    scores: np.ndarray, labels: np.ndarray, families: Sequence[str], threshold: float
) -> dict[str, dict[str, float]]:
    """Benign false-positive rate per family at ``threshold``: {family: {fpr, n}}."""
    s, y, fam = np.asarray(scores), np.asarray(labels), np.asarray(families)
    out: dict[str, dict[str, float]] = {}
    for family in sorted(set(fam[y == 0].tolist())):
        mask = (y == 0) & (fam == family)
        out[family] = {"fpr": float((s[mask] >= threshold).mean()), "n": int(mask.sum())}
    return out


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
    # Names of the gate's feature blocks, in order
    # (GATE_BASE_FEATURES [+ ANSWER_FEATURES]
    #  [+ (PROBE_FEATURE,) [+ (PROBE_MEAN_FEATURE,)] [+ (DOCUMENT_PASS_FEATURE,)]]).
    query_features: tuple[str, ...] = GATE_BASE_FEATURES
    # With PROBE_FEATURE: how many decoder layers the probed state has passed through.
    probe_layer: int | None = None
    # Token ids whose next-token log-probability mass makes each answer feature.
    answer_token_ids: dict[str, list[int]] = field(default_factory=dict)
    # text_digest() of every text the probes were fitted or thresholded on.
    calibration_digests: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def uses_refusal_signal(self) -> bool:
        return ANSWER_FEATURES[0] in self.query_features

    @property
    def needs_answer_states(self) -> bool:
        """Whether the gate reads states from the query's forward pass (signal or probe)."""
        return self.uses_refusal_signal or self.probe_layer is not None

    @property
    def uses_probe_mean(self) -> bool:
        """Whether the gate reads the mean over the request's tokens beside the answer
        position's state (calibrations made before it existed read the state alone)."""
        return PROBE_MEAN_FEATURE in self.query_features

    @property
    def uses_document_pass(self) -> bool:
        """Whether the gate also reads the request through the document pass."""
        return DOCUMENT_PASS_FEATURE in self.query_features

    @property
    def uses_embedding(self) -> bool:
        """Whether the gate reads the query embedding (and its refusal similarity)."""
        return GATE_BASE_FEATURES[0] in self.query_features

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            **self.query_probe.tensors("query_probe"),
            **self.doc_probe.tensors("doc_probe"),
            "refusal_prototype": np.asarray(self.refusal_prototype, dtype=np.float64),
            "calibration_digests": np.asarray(self.calibration_digests, dtype=np.int64),
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
            "query_features": list(self.query_features),
            "probe_layer": self.probe_layer,
            "answer_token_ids": self.answer_token_ids,
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
        if meta.get("format_version") not in _READABLE_VERSIONS:
            raise SafetyCalibrationError(f"{meta_path} has format version {meta.get('format_version')}")
        if meta.get("doc_space") not in DOC_SPACES:
            raise SafetyCalibrationError(f"{meta_path}: doc_space must be one of {DOC_SPACES}")
        if meta["doc_space"] == "probe" and meta.get("probe_layer") is None:
            raise SafetyCalibrationError(f'{meta_path}: doc_space "probe" needs a probe_layer')
        if not weights_path.is_file():
            raise SafetyCalibrationError(f"{folder} has {SAFETY_FILE} but no {SAFETY_WEIGHTS_FILE}")
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise SafetyCalibrationError(f"{weights_path} is corrupt: {exc}") from exc
        features = tuple(meta.get("query_features") or GATE_BASE_FEATURES)
        known = [
            e + a + p
            for e in ((), GATE_BASE_FEATURES)
            for a in ((), ANSWER_FEATURES)
            for probe in ((PROBE_FEATURE,), (PROBE_FEATURE, PROBE_MEAN_FEATURE))
            for p in ((), probe, (*probe, DOCUMENT_PASS_FEATURE))
            if e or p
        ]
        if features not in known:
            raise SafetyCalibrationError(f"{meta_path}: unknown query_features {list(features)}")
        token_ids = {str(k): [int(i) for i in v] for k, v in dict(meta.get("answer_token_ids") or {}).items()}
        if ANSWER_FEATURES[0] in features and set(token_ids) != set(ANSWER_FEATURES):
            raise SafetyCalibrationError(f"{meta_path}: the refusal signal needs answer_token_ids")
        probe_layer = meta.get("probe_layer")
        if (PROBE_FEATURE in features) != (probe_layer is not None) or not (
            probe_layer is None or (isinstance(probe_layer, int) and probe_layer >= 1)
        ):
            raise SafetyCalibrationError(
                f"{meta_path}: probe_layer {probe_layer!r} does not match query_features {list(features)}"
            )
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
                query_features=features,
                probe_layer=probe_layer,
                answer_token_ids=token_ids,
                calibration_digests=np.asarray(
                    tensors.get("calibration_digests", np.zeros(0, dtype=np.int64)), dtype=np.int64
                ),
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


# ----------------------------------------------------------------------------- refusal signal
def answer_token_ids(tokenizer: Any) -> dict[str, list[int]]:
    """First-token ids of refusal and of compliance openings (shared ones dropped from both)."""

    def first_tokens(texts: Sequence[str]) -> set[int]:
        ids = set()
        for text in texts:
            encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
            if encoded:
                ids.add(int(encoded[0]))
        return ids

    refusal, compliance = first_tokens(REFUSAL_OPENINGS), first_tokens(COMPLIANCE_OPENINGS)
    shared = refusal & compliance
    refusal, compliance = sorted(refusal - shared), sorted(compliance - shared)
    if not refusal or not compliance:
        raise ValueError("this tokenizer gives refusal and compliance openings the same first tokens")
    return {ANSWER_FEATURES[0]: refusal, ANSWER_FEATURES[1]: compliance}


def answer_logprobs(
    encoder: Any, states: np.ndarray, token_ids: Mapping[str, Sequence[int]], *, chunk: int = 128
) -> np.ndarray:
    """``[N, 2]``: log of the next-token probability mass on refusal / compliance first tokens,
    from final hidden states at the answer position (the LM's own output head; models whose
    forward rescales logits, e.g. soft-capping, would need that too)."""
    import torch

    states = np.atleast_2d(np.asarray(states, dtype=np.float32))
    head = encoder.lm.get_output_embeddings()
    sets = [torch.tensor(list(token_ids[name]), dtype=torch.long) for name in ANSWER_FEATURES]
    out = np.zeros((len(states), len(sets)), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(states), chunk):
            h = torch.from_numpy(states[start : start + chunk]).to(encoder.device_, encoder.dtype_)
            logp = torch.log_softmax(head(h).float(), dim=-1).cpu()
            for j, ids in enumerate(sets):
                out[start : start + chunk, j] = torch.logsumexp(logp[:, ids], dim=-1).double().numpy()
    return out


def query_features(
    embeddings: np.ndarray,
    prototype: np.ndarray,
    answer_features: np.ndarray | None = None,
    *,
    with_embedding: bool = True,
) -> np.ndarray:
    """The gate's features: the embedding and its cosine to the refusal prototype (unless
    ``with_embedding`` is off), then the features read from the query's forward pass
    (:func:`gate_state_features`: the answer-start log-probabilities and/or the probed
    middle-layer state), if any."""
    emb = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
    cosine = unit_rows(emb) @ prototype
    blocks = [emb, cosine[:, None]] if with_embedding else []
    if answer_features is not None:
        answer = np.atleast_2d(np.asarray(answer_features, dtype=np.float64))
        if answer.ndim != 2 or len(answer) != len(emb):
            raise ValueError(f"answer features must be [{len(emb)}, F], got {answer.shape}")
        blocks.append(answer)
    if not blocks:
        raise ValueError("the gate needs the embedding or features from the query's forward pass")
    return np.hstack(blocks)


def check_doc_spaces(spaces: Sequence[str], probe_layer: int | None) -> tuple[DocSpace, ...]:
    """``spaces`` after checking each is a document space this setting can compute."""
    spaces = tuple(dict.fromkeys(spaces))
    if not spaces or any(s not in DOC_SPACES for s in spaces):
        raise ValueError(f"document spaces must be among {DOC_SPACES}, got {list(spaces)}")
    if "probe" in spaces and probe_layer is None:
        raise ValueError('the "probe" document space reads the probe layer: set one (not "none")')
    return spaces  # type: ignore[return-value]


def resolve_probe_layer(encoder: Any, spec: int | str | None) -> int | None:
    """``"middle"`` → half the encoding pass's layers; ``None``/``"none"`` → no probe; an int is checked."""
    if spec is None or spec == "none":
        return None
    if spec == "middle":
        return max(1, len(encoder.decoder_layers()) // 2)
    if isinstance(spec, str):
        try:
            spec = int(spec)
        except ValueError:
            raise ValueError(f"probe layer must be 'middle', 'none' or a layer count, got {spec!r}") from None
    return int(encoder.check_probe_layer(spec))


def gate_state_features(
    encoder: Any,
    states: np.ndarray,
    *,
    token_ids: Mapping[str, Sequence[int]] | None,
    probe_layer: int | None,
    probe_mean: bool = False,
) -> np.ndarray | None:
    """The gate's features from ``encode_with_answer_states`` output: the answer-start
    log-probabilities (when ``token_ids`` are given) from the final state, then (when
    ``probe_layer`` is set) the unit probe state and, with ``probe_mean``, the unit mean
    over the request's own tokens at that layer."""
    states = np.atleast_2d(np.asarray(states, dtype=np.float32))
    hidden = int(encoder.hidden_size)
    expected = hidden * (3 if probe_layer is not None else 1)
    if states.shape[1] != expected:
        raise ValueError(
            f"answer states must be [N, {expected}] (probe_layer={probe_layer}), got {states.shape}"
        )
    blocks = []
    if token_ids:
        blocks.append(answer_logprobs(encoder, states[:, :hidden], token_ids))
    if probe_layer is not None:
        blocks.append(probe_block(states, hidden, probe_mean))
    return np.hstack(blocks) if blocks else None


def probe_block(states: np.ndarray, hidden: int, with_mean: bool) -> np.ndarray:
    """The gate's probe features from ``[N, 3H]`` answer states: the unit state at the
    answer position after the probe layer, and with ``with_mean`` the unit mean over the
    request's own tokens there."""
    last = unit_rows(states[:, hidden : 2 * hidden], np.float64)
    return np.hstack([last, unit_rows(states[:, 2 * hidden :], np.float64)]) if with_mean else last


def default_doc_spaces(probe_layer: int | None) -> tuple[DocSpace, ...]:
    """The screen's space when none is asked for: the probe when there is a probe layer."""
    return ("probe",) if probe_layer is not None else ("generative", "teacher")


def doc_probe_features(states: np.ndarray) -> np.ndarray:
    """The screen's "probe" features from ``encoder.probe_states``: both halves unit length."""
    states = np.atleast_2d(np.asarray(states))
    half = states.shape[1] // 2
    return np.hstack([unit_rows(states[:, :half], np.float64), unit_rows(states[:, half:], np.float64)])


def embed_documents(
    encoder: Any,
    texts: list[str],
    space: DocSpace,
    *,
    probe_layer: int | None = None,
    show_progress_bar: bool = False,
) -> np.ndarray:
    """Passages in one of the screen's spaces (independent of config.document_mode)."""
    if space == "probe":
        if probe_layer is None:
            raise ValueError('the "probe" document space needs a probe layer')
        states = encoder.probe_states(
            texts,
            probe_layer=probe_layer,
            prompt=encoder.config.document_prompt,
            show_progress_bar=show_progress_bar,
        )
        return doc_probe_features(states)
    if space == "teacher":
        return np.asarray(encoder.teacher.encode(texts, show_progress_bar=show_progress_bar))
    return np.asarray(
        encoder.encode(texts, prompt=encoder.config.document_prompt, show_progress_bar=show_progress_bar)
    )


# ----------------------------------------------------------------------------- features
@dataclass
class SafetyFeatures:
    """Every encoder output calibration needs, computed once for a list of labelled rows.

    Fitting (:func:`fit_calibration`) is pure numpy on these, so leave-one-category-out
    evaluation refits fifteen times without running the encoder again.
    """

    encoder_fingerprint: str
    instruction: str | None
    prototype: np.ndarray
    queries: list[Any]  # LabelledText rows of kind "query", in input order
    passages: list[Any]  # ... of kind "passage"
    query_embeddings: np.ndarray  # [Nq, D], normalised, exactly what encode_query returns
    # [Nq, H], or [Nq, 2H] with a probe: what encode_with_answer_states returned
    answer_states: np.ndarray | None
    answer_features: np.ndarray | None  # [Nq, 2] answer_logprobs() of the final states
    answer_token_ids: dict[str, list[int]]
    doc_embeddings: dict[str, np.ndarray]  # space -> [Nd, D] ([Nd, 2H] for "probe")
    probe_layer: int | None = None
    # [Nq, H] unit state after probe_layer layers ([Nq, 2H] with probe_mean: then the mean)
    probe_states: np.ndarray | None = None
    probe_mean: bool = False
    gate_embedding: bool = True  # whether the gate reads the embedding too
    # The query rows read as passages (space -> [Nq, ...], the document pass): the screen
    # also learns from requests when present (see featurize's ``screen_requests``).
    request_doc_embeddings: dict[str, np.ndarray] | None = None
    # [Nq, 2H]: the requests' document pass at the probe layer, for the gate
    # (DOCUMENT_PASS_FEATURE); None when the gate reads the query pass only.
    gate_document_pass: np.ndarray | None = None

    def gate_matrix(self, refusal_signal: bool, index: np.ndarray | None = None) -> np.ndarray:
        """The gate's features; the probe state (if computed) is in every variant, so
        with/without-refusal-signal comparisons isolate the signal itself."""
        if refusal_signal and self.answer_features is None:
            raise ValueError("these features were computed without the refusal signal")

        def rows(matrix: np.ndarray) -> np.ndarray:
            return matrix if index is None else matrix[index]

        blocks = []
        if refusal_signal:
            assert self.answer_features is not None
            blocks.append(rows(self.answer_features))
        if self.probe_states is not None:
            blocks.append(rows(self.probe_states))
        if self.gate_document_pass is not None:
            blocks.append(rows(self.gate_document_pass))
        extra = np.hstack(blocks) if blocks else None
        return query_features(
            rows(self.query_embeddings), self.prototype, extra, with_embedding=self.gate_embedding
        )

    def labels(self, kind: str) -> np.ndarray:
        rows = self.queries if kind == "query" else self.passages
        return np.array([r.label for r in rows], dtype=np.int64)

    def attribute(self, kind: str, name: str) -> np.ndarray:
        rows = self.queries if kind == "query" else self.passages
        return np.array([str(getattr(r, name)) for r in rows], dtype=object)


def featurize(
    encoder: Any,
    rows: Sequence[Any],
    *,
    doc_spaces: Sequence[DocSpace] | None = None,
    refusal_signal: bool = True,
    probe_layer: int | str | None = DEFAULT_PROBE_LAYER,
    gate_embedding: bool | None = None,
    screen_requests: bool = True,
    probe_mean: bool = True,
    gate_document_pass: bool = True,
    show_progress_bar: bool = False,
) -> SafetyFeatures:
    """Run the encoder once over labelled rows (``text``, ``label``, ``kind`` ...).

    ``doc_spaces`` (default :func:`default_doc_spaces`) are the passage representations
    computed for the screen to choose from. ``gate_embedding`` (default: only without a
    probe layer) puts the query embedding and its refusal similarity among the gate's
    features. ``screen_requests`` also reads every query row through the document pass,
    so the screen learns from requests as well as passages: what makes a request for harm
    harmful is largely what makes a passage harmful, requests are the more plentiful and
    varied rows, and left out, a category's passages are ranked better by a screen that
    learned from them (docs/safety.md, "The screen learns from requests too").
    ``probe_mean`` (with a probe layer) gives the gate the mean state over each request's
    own tokens beside the answer position's (docs/safety.md, "The gate reads the whole
    request"); off, the features are those of calibrations made before it.
    ``gate_document_pass`` (with a probe layer) gives the gate the request read through the
    document pass too (:data:`DOCUMENT_PASS_FEATURE`); with ``screen_requests`` and the
    "probe" space it is the pass the screen reads requests with, so it costs nothing more here."""
    queries = [r for r in rows if r.kind == "query"]
    passages = [r for r in rows if r.kind == "passage"]
    instruction = encoder.config.query_instruction
    layer = resolve_probe_layer(encoder, probe_layer)
    spaces = check_doc_spaces(doc_spaces if doc_spaces is not None else default_doc_spaces(layer), layer)
    token_ids: dict[str, list[int]] = answer_token_ids(encoder.tokenizer) if refusal_signal else {}
    states = answer = probe = None
    q_texts = [r.text for r in queries]
    if refusal_signal or layer is not None:
        q_emb, states = encoder.encode_with_answer_states(
            q_texts, prompt=instruction, show_progress_bar=show_progress_bar, probe_layer=layer
        )
        hidden = int(encoder.hidden_size)
        if refusal_signal:
            answer = answer_logprobs(encoder, states[:, :hidden], token_ids) if q_texts else np.zeros((0, 2))
        if layer is not None:
            probe = probe_block(states, hidden, probe_mean)
    else:
        q_emb = (
            np.asarray(
                encoder.encode_query(q_texts, instruction=instruction, show_progress_bar=show_progress_bar)
            )
            if q_texts
            else np.zeros((0, encoder.dim), np.float32)
        )
    d_texts = [r.text for r in passages]
    docs = {
        space: embed_documents(
            encoder, d_texts, space, probe_layer=layer, show_progress_bar=show_progress_bar
        )
        if d_texts
        else np.zeros((0, 2 * encoder.hidden_size if space == "probe" else encoder.dim), np.float32)
        for space in spaces
    }
    requests = None
    if screen_requests and q_texts:
        requests = {
            space: np.asarray(
                embed_documents(
                    encoder, q_texts, space, probe_layer=layer, show_progress_bar=show_progress_bar
                ),
                dtype=np.float64,
            )
            for space in spaces
        }
    read_as_passages = None
    if gate_document_pass and layer is not None:
        if requests is not None and "probe" in requests:
            read_as_passages = requests["probe"]
        else:
            read_as_passages = (
                np.asarray(
                    embed_documents(
                        encoder, q_texts, "probe", probe_layer=layer, show_progress_bar=show_progress_bar
                    ),
                    dtype=np.float64,
                )
                if q_texts
                else np.zeros((0, 2 * encoder.hidden_size))
            )
    return SafetyFeatures(
        encoder_fingerprint=encoder.fingerprint,
        instruction=instruction,
        prototype=refusal_prototype(encoder),
        queries=queries,
        passages=passages,
        query_embeddings=np.asarray(q_emb, dtype=np.float64),
        answer_states=states,
        answer_features=answer,
        answer_token_ids=token_ids,
        doc_embeddings={k: np.asarray(v, dtype=np.float64) for k, v in docs.items()},
        probe_layer=layer,
        probe_states=probe,
        probe_mean=probe_mean and layer is not None,
        gate_embedding=(layer is None) if gate_embedding is None else gate_embedding,
        request_doc_embeddings=requests,
        gate_document_pass=read_as_passages,
    )


# ----------------------------------------------------------------------------- fitting
def stratified_folds(
    strata: Sequence[str], labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / validation indices with every stratum split in the same proportion
    (a stratum of one example trains), so the validation fold is as broad as the data."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    strata_arr = np.asarray(strata, dtype=object)
    train, val = [], []
    for stratum in sorted(set(strata_arr.tolist())):
        idx = np.flatnonzero(strata_arr == stratum)
        idx = idx[rng.permutation(len(idx))]
        n_val = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    train_idx, val_idx = np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
    y = np.asarray(labels)
    for cls in (0, 1):
        if not (y[train_idx] == cls).any() or not (y[val_idx] == cls).any():
            raise ValueError(f"class {cls} has too few examples to both fit and validate")
    return train_idx, val_idx


def _strata(rows: Sequence[Any]) -> list[str]:
    return [f"{r.label}:{getattr(r, 'category', '') or _family(r)}" for r in rows]


def _family(row: Any) -> str:
    family = getattr(row, "family", None)
    if family:
        return str(family)
    return "harmful" if row.label == 1 else "general"


def fit_probe(kind: ProbeKind, features: np.ndarray, labels: np.ndarray, value: float) -> LogisticProbe:
    """A probe of ``kind`` with its hyperparameter (L2 strength, or LDA shrinkage)."""
    if kind == "logistic":
        return LogisticProbe.fit(features, labels, l2=value)
    if kind == "lda":
        return LogisticProbe.fit_lda(features, labels, shrinkage=value)
    raise ValueError(f"probe kind must be one of {PROBE_KINDS}, got {kind!r}")


def category_groups(
    labels: np.ndarray, categories: Sequence[str], n_groups: int = CATEGORY_GROUPS, seed: int = 0
) -> list[list[str]]:
    """The harm categories of the harmful rows, dealt (seeded) into at most ``n_groups``
    groups; empty when there are fewer than two categories."""
    cats = np.asarray(categories, dtype=object)
    harmful = sorted({str(c) for c in cats[np.asarray(labels) == 1].tolist()} - {""})
    if len(harmful) < 2:
        return []
    order = [harmful[i] for i in np.random.default_rng(seed).permutation(len(harmful))]
    k = min(n_groups, len(harmful))
    return [order[g::k] for g in range(k)]


def held_out_category_recall(
    kind: ProbeKind, features: np.ndarray, labels: np.ndarray, categories: Sequence[str], value: float,
    *, max_fpr: float, n_groups: int = CATEGORY_GROUPS, seed: int = 0,
) -> float | None:  # fmt: skip
    """How well a hyperparameter generalises to harm nobody calibrated for: each group of
    categories (:func:`category_groups`) is held out in turn, with its look-alikes and a
    matching share of the generic benign rows; the probe is fitted on the rest, thresholded
    at ``max_fpr`` on the held-out benign rows, and scored by recall on the held-out harmful
    ones. Returns the mean over groups, or None when no group can be held out (too few
    benign rows to threshold on, or a fit side left with one class)."""
    labels = np.asarray(labels)
    cats = np.asarray(categories, dtype=object)
    groups = category_groups(labels, categories, n_groups, seed)
    if not groups:
        raise ValueError("choosing by held-out categories needs harmful rows of at least two categories")
    grouped = np.isin(cats, [c for g in groups for c in g])
    share = np.random.default_rng(seed + 1).integers(0, len(groups), size=len(labels))
    recalls = []
    for g, held in enumerate(groups):
        test = np.isin(cats, held) | (~grouped & (share == g))
        if len(set(labels[~test].tolist())) < 2 or not (labels[test] == 0).any():
            continue
        scores = fit_probe(kind, features[~test], labels[~test], value).score(features[test])
        threshold = threshold_at_fpr(scores, labels[test], max_fpr)
        recalls.append(float((scores[labels[test] == 1] >= threshold).mean()))
    if not recalls:
        return None  # every group left one side without both classes or benign rows
    return float(np.mean(recalls))


def _better(key: tuple[float, float], than: tuple[float, float], tol: float = 1e-12) -> bool:
    """Lexicographic, with float noise ignored: the first entry, then the second."""
    if abs(key[0] - than[0]) > tol:
        return key[0] > than[0]
    return key[1] > than[1] + tol


def fit_probe_with_threshold(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    max_fpr: float,
    val_fraction: float = 0.35,
    seed: int = 0,
    strata: Sequence[str] | None = None,
    families: Sequence[str] | None = None,
    min_family_size: int = MIN_FAMILY_SIZE,
    kind: ProbeKind = "logistic",
    categories: Sequence[str] | None = None,
    fit_only: np.ndarray | None = None,
    select_by: Selection | None = None,
) -> tuple[LogisticProbe, float, dict[str, Any]]:
    """Fit on a training fold, threshold on the validation fold's benign examples (pooled
    and per family, :func:`threshold_for_families`). Rows marked ``fit_only`` (a boolean
    mask) always train and are never validated on: they shape the probe, while the AUC and
    the threshold are the other rows' alone.

    The hyperparameter (``kind``'s grid: :data:`L2_GRID` or :data:`SHRINKAGE_GRID`) is chosen
    by validation AUC for a logistic probe. An LDA probe given the rows' ``categories`` is
    chosen by recall on categories held out of the training fold
    (:func:`held_out_category_recall`, validation AUC breaking ties), by validation AUC when
    the training fold has fewer than two harm categories or too few rows to hold any out."""
    labels = np.asarray(labels)
    strata = list(strata) if strata is not None else [str(v) for v in labels]
    families = list(families) if families is not None else ["harmful" if v else "general" for v in labels]
    if fit_only is None:
        train, val = stratified_folds(strata, labels, val_fraction, seed)
    else:
        only = np.asarray(fit_only, dtype=bool)
        own = np.flatnonzero(~only)
        own_train, own_val = stratified_folds([strata[i] for i in own], labels[own], val_fraction, seed)
        train, val = np.sort(np.concatenate([own[own_train], np.flatnonzero(only)])), own[own_val]
    grid = L2_GRID if kind == "logistic" else SHRINKAGE_GRID
    train_categories = None if categories is None else [str(categories[i]) for i in train]
    by_categories = (
        (select_by or ("categories" if kind == "lda" else "auc")) == "categories"
        and train_categories is not None
        and bool(category_groups(labels[train], train_categories, seed=seed))
    )
    held_out_recall: dict[str, float] = {}
    if by_categories:
        assert train_categories is not None
        for value in grid:
            recall = held_out_category_recall(
                kind, features[train], labels[train], train_categories, value, max_fpr=max_fpr, seed=seed
            )
            if recall is None:  # the data is too small to hold categories out
                by_categories, held_out_recall = False, {}
                break
            held_out_recall[str(value)] = recall
    best: tuple[tuple[float, float], float, LogisticProbe] | None = None
    for value in grid:
        probe = fit_probe(kind, features[train], labels[train], value)
        auc = roc_auc(probe.score(features[val]), labels[val])
        key = (held_out_recall.get(str(value), 0.0), auc)
        if best is None or _better(key, best[0]):
            best = (key, value, probe)
    assert best is not None
    (_, auc), value, probe = best
    val_scores = probe.score(features[val])
    val_families = np.asarray(families, dtype=object)[val]
    threshold = threshold_for_families(
        val_scores, labels[val], val_families, max_fpr, min_family_size=min_family_size
    )
    report = {
        "auc": auc,
        "probe": kind,
        ("l2" if kind == "logistic" else "shrinkage"): value,
        "selected_by": "held-out categories" if by_categories else "validation AUC",
        **({"held_out_category_recall": held_out_recall} if by_categories else {}),
        "threshold": threshold,
        "max_fpr": max_fpr,
        **precision_recall(val_scores, labels[val], threshold),
        "family_fpr": family_fpr(val_scores, labels[val], val_families, threshold),
        "n_train": len(train),
        "n_val": len(val),
    }
    return probe, threshold, report


def fit_gate(
    features: SafetyFeatures,
    query_index: np.ndarray | None = None,
    *,
    refusal_signal: bool = True,
    seed: int = 0,
    max_fpr: float = 0.02,
    val_fraction: float = 0.35,
    min_family_size: int = MIN_FAMILY_SIZE,
    probe_kind: ProbeKind = DEFAULT_GATE_PROBE,
    select_by: Selection | None = None,
) -> tuple[LogisticProbe, float, dict[str, Any]]:
    """The query gate's probe and threshold from the query rows ``query_index`` selects
    (an LDA probe's shrinkage chosen by held-out harm categories, as the screen's is)."""
    q_idx = (
        np.arange(len(features.queries)) if query_index is None else np.asarray(query_index, dtype=np.int64)
    )
    rows = [features.queries[i] for i in q_idx]
    labels = np.array([r.label for r in rows], dtype=np.int64)
    if len(labels) == 0 or labels.min() == labels.max():
        raise ValueError("calibration needs harmful and benign query examples")
    feats = features.gate_matrix(refusal_signal, q_idx)
    probe, threshold, report = fit_probe_with_threshold(
        feats, labels, max_fpr=max_fpr, val_fraction=val_fraction, seed=seed,
        strata=_strata(rows), families=[_family(r) for r in rows], min_family_size=min_family_size,
        kind=probe_kind, categories=[str(r.category) for r in rows], select_by=select_by,
    )  # fmt: skip
    n_base = features.query_embeddings.shape[1] + 1 if features.gate_embedding else 0
    if features.gate_embedding:
        report["refusal_similarity_auc"] = roc_auc(feats[:, n_base - 1], labels)
    if refusal_signal:
        # How well the backbone's own answer start separates on its own (refusal - compliance).
        report["refusal_signal_auc"] = roc_auc(feats[:, n_base] - feats[:, n_base + 1], labels)
    report["gate_features"] = int(feats.shape[1])
    return probe, threshold, report


def _held_out_recall_at_choice(report: dict[str, Any]) -> float:
    """The held-out-category recall of the hyperparameter the probe kept; -1 when the probe
    was not chosen that way (a logistic probe, or too few categories)."""
    recall = report.get("held_out_category_recall", {}).get(str(report.get("shrinkage")))
    return -1.0 if recall is None else float(recall)


def fit_screen(
    features: SafetyFeatures,
    passage_index: np.ndarray | None = None,
    *,
    request_index: np.ndarray | None = None,
    doc_spaces: Sequence[DocSpace] | None = None,
    seed: int = 0,
    max_fpr: float = 0.02,
    val_fraction: float = 0.35,
    min_family_size: int = MIN_FAMILY_SIZE,
    probe_kind: ProbeKind = DEFAULT_SCREEN_PROBE,
    validate_on_requests: bool = True,
) -> tuple[DocSpace, LogisticProbe, float, dict[str, Any]]:
    """The document screen from the passage rows ``passage_index`` selects, and the query
    rows ``request_index`` selects read as passages (``features.request_doc_embeddings``;
    fitted and validated on like passages; with ``validate_on_requests=False`` they only
    train, which did worse left out): one probe per space, the best kept. Spaces are compared the way an LDA
    probe's shrinkage is chosen: by recall on harm categories held out of the training fold
    when the probe measured it (a space that fits the calibrated categories best need not
    carry over to others), then by validation recall at the allowed FPR, then by AUC."""
    d_idx = (
        np.arange(len(features.passages))
        if passage_index is None
        else np.asarray(passage_index, dtype=np.int64)
    )
    r_idx = np.zeros(0, dtype=np.int64) if request_index is None else np.asarray(request_index, np.int64)
    if len(r_idx) and features.request_doc_embeddings is None:
        raise ValueError("request rows for the screen need features computed with screen_requests=True")
    rows = [features.passages[i] for i in d_idx] + [features.queries[i] for i in r_idx]
    labels = np.array([r.label for r in rows], dtype=np.int64)
    if len(labels) == 0 or labels.min() == labels.max():
        raise ValueError("calibration needs harmful and benign passage examples")
    spaces = list(doc_spaces) if doc_spaces is not None else list(features.doc_embeddings)

    def matrix(space: str) -> np.ndarray:
        passages = features.doc_embeddings[space][d_idx]
        if not len(r_idx):
            return passages
        assert features.request_doc_embeddings is not None
        return np.vstack([passages, features.request_doc_embeddings[space][r_idx]])

    reports: dict[str, Any] = {}
    best: tuple[tuple[float, float], DocSpace, LogisticProbe, float] | None = None
    for space in spaces:
        probe, threshold, report = fit_probe_with_threshold(
            matrix(space), labels, max_fpr=max_fpr, val_fraction=val_fraction,
            seed=seed, strata=_strata(rows), families=[_family(r) for r in rows],
            min_family_size=min_family_size, kind=probe_kind,
            categories=[str(getattr(r, "category", "") or "") for r in rows],
            fit_only=None if validate_on_requests or not len(r_idx) else np.arange(len(rows)) >= len(d_idx),
        )  # fmt: skip
        reports[space] = report
        key = (_held_out_recall_at_choice(report), report["recall"] + 1e-3 * report["auc"])
        if best is None or _better(key, best[0]):
            best = (key, space, probe, threshold)
    if best is None:
        raise ValueError(f"doc_spaces must name at least one of {DOC_SPACES}")
    _, space, probe, threshold = best
    return space, probe, threshold, reports


def fit_calibration(
    features: SafetyFeatures,
    *,
    query_index: np.ndarray | None = None,
    passage_index: np.ndarray | None = None,
    refusal_signal: bool = True,
    doc_spaces: Sequence[DocSpace] | None = None,
    seed: int = 0,
    max_fpr_query: float = 0.02,
    max_fpr_doc: float = 0.02,
    val_fraction: float = 0.35,
    min_family_size: int = MIN_FAMILY_SIZE,
    screen_probe: ProbeKind = DEFAULT_SCREEN_PROBE,
    gate_probe: ProbeKind = DEFAULT_GATE_PROBE,
) -> SafetyCalibration:
    """Fit the gate and the screen on the rows ``query_index`` / ``passage_index`` select
    (default: all); nothing outside them is seen, neither to fit nor to set a threshold."""
    from .safety_data import text_digest

    q_idx = (
        np.arange(len(features.queries)) if query_index is None else np.asarray(query_index, dtype=np.int64)
    )
    d_idx = (
        np.arange(len(features.passages))
        if passage_index is None
        else np.asarray(passage_index, dtype=np.int64)
    )
    common = {"seed": seed, "val_fraction": val_fraction, "min_family_size": min_family_size}
    q_probe, q_threshold, q_report = fit_gate(
        features, q_idx, refusal_signal=refusal_signal, max_fpr=max_fpr_query, probe_kind=gate_probe, **common
    )
    # The screen learns from the requests too when the features read them as passages.
    r_idx = q_idx if features.request_doc_embeddings is not None else None
    doc_space, doc_probe, doc_threshold, doc_reports = fit_screen(
        features, d_idx, request_index=r_idx, doc_spaces=doc_spaces, max_fpr=max_fpr_doc,
        probe_kind=screen_probe, **common,
    )  # fmt: skip
    rows = [features.queries[i] for i in q_idx] + [features.passages[i] for i in d_idx]
    digests = np.array(sorted({text_digest(r.text) for r in rows}), dtype=np.int64)
    categories = sorted({str(getattr(r, "category", "") or "") for r in rows} - {""})
    return SafetyCalibration(
        encoder_fingerprint=features.encoder_fingerprint,
        query_probe=q_probe,
        doc_probe=doc_probe,
        refusal_prototype=features.prototype,
        query_threshold=q_threshold,
        doc_threshold=doc_threshold,
        doc_space=doc_space,
        query_instruction=features.instruction,
        metrics={
            "query_gate": q_report,
            "document_screen": doc_reports[doc_space],
            "doc_spaces": doc_reports,
        },
        provenance={
            **common,
            "max_fpr_query": max_fpr_query,
            "max_fpr_doc": max_fpr_doc,
            "screen_probe": screen_probe,
            "gate_probe": gate_probe,
            "n_query_examples": len(q_idx),
            "n_passage_examples": len(d_idx),
            "n_screen_request_examples": 0 if r_idx is None else len(r_idx),
            "probe_layer": features.probe_layer,
            "categories": categories,
            "refusal_texts": list(REFUSAL_TEXTS),
            "refusal_openings": list(REFUSAL_OPENINGS) if refusal_signal else [],
            "compliance_openings": list(COMPLIANCE_OPENINGS) if refusal_signal else [],
        },
        query_features=(GATE_BASE_FEATURES if features.gate_embedding else ())
        + (ANSWER_FEATURES if refusal_signal else ())
        + ((PROBE_FEATURE,) if features.probe_layer is not None else ())
        + ((PROBE_MEAN_FEATURE,) if features.probe_mean else ())
        + ((DOCUMENT_PASS_FEATURE,) if features.gate_document_pass is not None else ()),
        probe_layer=features.probe_layer,
        answer_token_ids=dict(features.answer_token_ids) if refusal_signal else {},
        calibration_digests=digests,
    )


def calibrate(
    encoder: Any,
    rows: Sequence[Any] | None = None,
    *,
    seed: int = 0,
    max_fpr_query: float = 0.02,
    max_fpr_doc: float = 0.02,
    val_fraction: float = 0.35,
    doc_spaces: Sequence[DocSpace] | None = None,
    refusal_signal: bool = True,
    probe_layer: int | str | None = DEFAULT_PROBE_LAYER,
    gate_embedding: bool | None = None,
    min_family_size: int = MIN_FAMILY_SIZE,
    screen_probe: ProbeKind = DEFAULT_SCREEN_PROBE,
    gate_probe: ProbeKind = DEFAULT_GATE_PROBE,
    screen_requests: bool = True,
    probe_mean: bool = True,
    gate_document_pass: bool = True,
    show_progress_bar: bool = False,
) -> SafetyCalibration:
    """Fit the gate and the screen on labelled rows (default: the packaged calibration set).

    ``rows`` are :class:`~l2vg_retrieval.safety_data.LabelledText`-like objects with
    ``text``, ``label`` (1 harmful) and ``kind`` ("query" or "passage"), and optionally a
    ``category`` and a ``family`` (benign family). The seed fixes the folds; the fit itself
    is deterministic.
    """
    from .safety_data import load_calibration_set

    rows = list(rows) if rows is not None else load_calibration_set()
    for kind in ("query", "passage"):
        labels = {r.label for r in rows if r.kind == kind}
        if labels != {0, 1}:
            raise ValueError(f"calibration needs harmful and benign {kind} examples")
    features = featurize(
        encoder,
        rows,
        doc_spaces=doc_spaces,
        refusal_signal=refusal_signal,
        probe_layer=probe_layer,
        gate_embedding=gate_embedding,
        screen_requests=screen_requests,
        probe_mean=probe_mean,
        gate_document_pass=gate_document_pass,
        show_progress_bar=show_progress_bar,
    )
    calibration = fit_calibration(
        features, refusal_signal=refusal_signal, doc_spaces=doc_spaces, seed=seed,
        max_fpr_query=max_fpr_query, max_fpr_doc=max_fpr_doc, val_fraction=val_fraction,
        min_family_size=min_family_size, screen_probe=screen_probe, gate_probe=gate_probe,
    )  # fmt: skip
    # The precision of the passes the probes were fitted on (bf16 rounding moves thresholds).
    dtype = getattr(encoder, "dtype_", None)
    if dtype is not None:
        calibration.provenance["dtype"] = str(dtype).removeprefix("torch.")
    return calibration


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
        if calibration.probe_layer is not None:
            try:
                encoder.check_probe_layer(calibration.probe_layer)
            except ValueError as exc:
                raise SafetyCalibrationError(
                    f"the calibration's probe layer does not fit this encoder: {exc}"
                ) from exc
        expected = (
            (encoder.dim + 1 if calibration.uses_embedding else 0)
            + (len(ANSWER_FEATURES) if calibration.uses_refusal_signal else 0)
            + (encoder.hidden_size if calibration.probe_layer is not None else 0)
            + (encoder.hidden_size if calibration.uses_probe_mean else 0)
            + (2 * encoder.hidden_size if calibration.uses_document_pass else 0)
        )
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

    @property
    def uses_refusal_signal(self) -> bool:
        return self.calibration.uses_refusal_signal

    @property
    def probe_layer(self) -> int | None:
        return self.calibration.probe_layer

    @property
    def needs_answer_states(self) -> bool:
        """Whether the gate reads from the query's forward pass: search should then call
        ``encode_with_answer_states(..., probe_layer=self.probe_layer)``."""
        return self.calibration.needs_answer_states

    # -- queries
    def encode_queries(
        self, queries: Sequence[str], instruction: str | None = None, *, show_progress_bar: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Query embeddings (identical to ``encode_query``'s) and, when the gate reads the
        query's forward pass (refusal signal, probe layer), its features, from that one pass
        (and the document pass when the gate reads it): what a safe search should call."""
        prompt = instruction or self.calibration.query_instruction or self.encoder.config.query_instruction
        if not self.needs_answer_states:
            emb = self.encoder.encode_query(
                list(queries), instruction=prompt, show_progress_bar=show_progress_bar
            )
            return np.atleast_2d(np.asarray(emb)), None
        from .encoder import FUSED_READING_MAX_TEXTS

        queries = list(queries)
        if self.uses_document_pass and 0 < len(queries) <= FUSED_READING_MAX_TEXTS:
            # One query: the passage reading rides in the query pass's own batch.
            emb, states = self.encoder.encode_with_answer_states(
                queries, prompt=prompt, show_progress_bar=show_progress_bar, probe_layer=self.probe_layer,
                document_prompt=self.encoder.config.document_prompt,
            )  # fmt: skip
            states = np.atleast_2d(states)
            query_pass = 3 * self.encoder.hidden_size
            document = doc_probe_features(states[:, query_pass:])
            return np.atleast_2d(emb), self.answer_features(
                states[:, :query_pass], document_features=document
            )
        emb, states = self.encoder.encode_with_answer_states(
            queries, prompt=prompt, show_progress_bar=show_progress_bar, probe_layer=self.probe_layer
        )
        return np.atleast_2d(emb), self.answer_features(states, queries)

    @property
    def uses_document_pass(self) -> bool:
        return self.calibration.uses_document_pass

    def answer_features(
        self,
        states: np.ndarray,
        queries: Sequence[str] | None = None,
        *,
        document_features: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """The gate's features beyond the embedding: read from the query's forward pass (the
        states ``encode_with_answer_states(..., probe_layer=self.probe_layer)`` returns),
        then, when the gate reads it, from the queries' document pass: computed from
        ``queries``, or given as ``document_features`` (:func:`embed_documents` in the
        "probe" space at this probe layer, e.g. what indexing computed for the same texts)."""
        features = gate_state_features(
            self.encoder,
            states,
            token_ids=self.calibration.answer_token_ids if self.uses_refusal_signal else None,
            probe_layer=self.probe_layer,
            probe_mean=self.calibration.uses_probe_mean,
        )
        if not self.uses_document_pass:
            return features
        if document_features is None:
            if queries is None:
                raise ValueError("this gate also reads the queries' document pass: pass the queries")
            document_features = embed_documents(
                self.encoder, list(queries), "probe", probe_layer=self.probe_layer
            )
        document = np.atleast_2d(np.asarray(document_features, dtype=np.float64))
        assert features is not None  # a document-pass gate has a probe layer
        if document.shape != (len(features), 2 * self.encoder.hidden_size):
            raise ValueError(
                f"document-pass features must be [{len(features)}, {2 * self.encoder.hidden_size}], "
                f"got {document.shape}"
            )
        return np.hstack([features, document])

    def query_scores(self, queries: Sequence[str], *, instruction: str | None = None,
                     embeddings: np.ndarray | None = None,
                     answer_features: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """Harm probabilities of queries. ``embeddings`` (from encode_query) and, with the
        refusal signal, ``answer_features`` skip re-encoding; given embeddings but no answer
        features, the queries are encoded once more to read the backbone's refusal signal."""
        answer = answer_features
        if embeddings is None or (self.needs_answer_states and answer is None):
            embeddings, answer = self.encode_queries(queries, instruction)
        feats = query_features(
            np.atleast_2d(np.asarray(embeddings)),
            self.calibration.refusal_prototype,
            answer if self.needs_answer_states else None,
            with_embedding=self.calibration.uses_embedding,
        )
        return self.calibration.query_probe.score(feats)

    def _decision(self, score: float) -> GateDecision:
        cal = self.calibration
        t = cal.query_threshold
        gate = cal.metrics.get("query_gate", {})
        nan = float("nan")
        reads = []
        if cal.uses_embedding:
            reads.append("the generative query embedding + refusal similarity")
        if self.uses_refusal_signal:
            reads.append("the backbone's refusal signal")
        if self.probe_layer is not None:
            reads.append(f"its states after {self.probe_layer} layers")
        if self.uses_document_pass:
            reads.append("the request read as a passage")
        basis = (
            f"probe on {' + '.join(reads)}, calibrated at "
            f"precision {gate.get('precision', nan):.3f} / recall {gate.get('recall', nan):.3f}"
            f" / benign FPR {gate.get('fpr', nan):.3f}"
        )
        if score >= t:
            reason = f"blocked by query gate: harm score {score:.4f} >= threshold {t:.4f} ({basis})"
            return GateDecision(True, score, reason, t)
        return GateDecision(False, score, f"passed query gate: harm score {score:.4f} < threshold {t:.4f}", t)

    def check_query(self, query: str, instruction: str | None = None, *,
                    embedding: np.ndarray | None = None,
                    answer_features: np.ndarray | None = None) -> GateDecision:  # fmt: skip
        if not isinstance(query, str):
            raise TypeError(f"query must be str, got {type(query).__name__}")
        if not query.strip():
            raise ValueError("query is empty or whitespace only")
        emb = None if embedding is None else np.asarray(embedding)[None, :]
        answer = None if answer_features is None else np.atleast_2d(np.asarray(answer_features))
        score = float(
            self.query_scores([query], instruction=instruction, embeddings=emb, answer_features=answer)[0]
        )
        return self._decision(score)

    def check_queries(self, queries: Sequence[str], instruction: str | None = None, *,
                      embeddings: np.ndarray | None = None,
                      answer_features: np.ndarray | None = None) -> list[GateDecision]:  # fmt: skip
        if not queries:
            return []
        scores = self.query_scores(
            queries, instruction=instruction, embeddings=embeddings, answer_features=answer_features
        )
        return [self._decision(float(s)) for s in scores]

    # -- documents
    def document_scores(self, texts: Sequence[str], *, embeddings: np.ndarray | None = None) -> np.ndarray:
        """Harm probabilities of passages; ``embeddings`` must be in ``calibration.doc_space``."""
        if embeddings is None:
            if len(texts) == 0:
                return np.zeros(0)
            embeddings = embed_documents(
                self.encoder, list(texts), self.calibration.doc_space, probe_layer=self.probe_layer
            )
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
        """Recorded in a screened collection's metadata: which calibration flagged it. The
        last part digests the screen itself (space, probe, threshold), so two calibrations
        for one encoder get different names even at the same threshold."""
        cal = self.calibration
        digest = hashlib.sha256(f"{cal.doc_space}:{cal.doc_threshold!r}".encode())
        for tensor in cal.doc_probe.tensors("doc_probe").values():
            digest.update(np.ascontiguousarray(tensor, dtype=np.float64).tobytes())
        return (
            f"l2vg-safety:{cal.encoder_fingerprint[:12]}:doc{cal.doc_threshold:.4f}:{digest.hexdigest()[:12]}"
        )
