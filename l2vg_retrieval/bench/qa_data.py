"""Build the QA retrieval benchmark (``l2vg bench qa``) from Debian's perl-doc and python3.11-doc.

Queries are real FAQ questions: every ``=head2`` of ``perlfaq[1-9].pod`` and
``perlunifaq.pod``, every question section of the Python FAQ (``_sources/faq/*.rst.txt``),
and the question-headed sections of a few other manual pages (:data:`PERL_QUESTION_PODS`,
:data:`PYTHON_QUESTION_DOCS`). Their relevant passages are the authors' written answers. The
distractors are the reference and tutorial documentation of the same two languages (perlfunc,
perlop, perlre, perlsyn, perlvar, ...; the Python tutorial, language reference, HOWTOs and a
selection of library chapters): same domains, same vocabulary, often the very functions an
answer talks about.

Passages
    Every section body is rendered to plain text (POD / reStructuredText markup removed, code
    blocks kept as indented text) and cut into chunks of at most :data:`MAX_PASSAGE_CHARS`
    characters at paragraph boundaries (a longer paragraph at line, then sentence, then word
    boundaries). No passage carries its section heading: an answer's heading is its question.
    Answers are chunked exactly like distractors; a question's relevant set is **all chunks of
    its answer**. Answers shorter than :data:`MIN_ANSWER_CHARS` are dropped with their
    question, distractor chunks shorter than :data:`MIN_DISTRACTOR_CHARS` are dropped.

Ids (deterministic: they depend only on the package files)
    queries ``perlfaq4-012`` (12th ``=head2`` of perlfaq4.pod), ``perlunifaq-005``,
    ``pyfaq-programming-033`` (33rd question section of faq/programming.rst.txt); answer
    passages ``<query id>-p<k>``; distractors ``perl-<pod>-<section>-p<k>`` and
    ``py-<folder>-<file>-<section>-p<k>`` (sections numbered from 1 in file order).

Output (``l2vg_retrieval/data/qa_offline``): ``queries.jsonl`` (``id``, ``text``, ``source``,
``doc``, ``relevant``), ``corpus.jsonl.gz`` (``id``, ``text``, ``source``, ``doc``,
``answer_to``) and ``manifest.json`` (package versions, counts, build settings).

Rebuild: ``python -m l2vg_retrieval.bench.qa_data`` (downloads both packages with
``apt-get download`` into the cache) or pass ``--perl-doc`` / ``--python-doc`` (a .deb or
an unpacked folder).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QA_DIR = Path(__file__).resolve().parents[1] / "data" / "qa_offline"
QUERIES_FILE = "queries.jsonl"
CORPUS_FILE = "corpus.jsonl.gz"
MANIFEST_FILE = "manifest.json"

MAX_PASSAGE_CHARS = 1500
MIN_ANSWER_CHARS = 80
MIN_DISTRACTOR_CHARS = 100
MIN_UNIT_CHARS = 400  # shorter API entries share a passage with the next ones

PERL_PACKAGE = "perl-doc"
PYTHON_PACKAGE = "python3.11-doc"
PERL_POD_GLOB = "usr/share/perl/*/pod"
PYTHON_SOURCES_GLOB = "usr/share/doc/python3.*/html/_sources"

PERL_FAQ_PODS = (*(f"perlfaq{i}" for i in range(1, 10)), "perlunifaq")
# Reference and tutorial pods: the distractors. ``True``: every top-level ``=item`` starts a
# new passage (perlfunc's functions, perlvar's variables, perlrun's switches).
PERL_DISTRACTOR_PODS: dict[str, bool] = {
    "perlfunc": True,
    "perlvar": True,
    "perlrun": True,
    "perlop": False,
    "perlre": False,
    "perlretut": False,
    "perlrequick": False,
    "perlrecharclass": False,
    "perlsyn": False,
    "perldata": False,
    "perlsub": False,
    "perlref": False,
    "perlreftut": False,
    "perldsc": False,
    "perllol": False,
    "perlopentut": False,
    "perlipc": False,
    "perlport": False,
    "perlunitut": False,
    "perluniintro": False,
    "perlobj": False,
    "perlootut": False,
    "perlmod": False,
    "perlmodinstall": False,
    "perlstyle": False,
    "perltrap": False,
    "perlsec": False,
    "perlform": False,
    "perldebtut": False,
    "perlpacktut": False,
    "perlnumber": False,
    "perlintro": False,
    "perllocale": False,
}
PYTHON_FAQ_GLOB = "faq/*.rst.txt"
# Manual pages outside the FAQs whose question headings are answered by their section
# (none of them is a distractor document). Headings listed as excluded only make sense in
# their page's flow ("Is there anything else I need to know?").
PERL_QUESTION_PODS: dict[str, frozenset[str]] = {
    "perlguts": frozenset(
        {
            "So what happened to dTHR?",
            "How do I use all this in extensions?",
            "Is there anything else I need to know?",
        }
    ),
    "perlthrtut": frozenset(),
}
PYTHON_QUESTION_DOCS: tuple[str, ...] = (
    "installing/index",
    "library/doctest",
    "library/profile",
    "library/secrets",
    "library/__main__",
    "library/optparse",
    "howto/curses",
    "howto/enum",
)
# Python documentation chapters used as distractors (relative to ``_sources``, without
# ``.rst.txt``); folders stand for all their files.
PYTHON_DISTRACTOR_DOCS: tuple[str, ...] = (
    "tutorial",
    "reference",
    "howto/argparse",
    "howto/descriptor",
    "howto/functional",
    "howto/logging",
    "howto/regex",
    "howto/sockets",
    "howto/sorting",
    "howto/unicode",
    "howto/urllib2",
    "extending/extending",
    "extending/embedding",
    "using/cmdline",
    "using/windows",
    "glossary",
    "library/functions",
    "library/stdtypes",
    "library/exceptions",
    "library/os",
    "library/os.path",
    "library/sys",
    "library/re",
    "library/string",
    "library/datetime",
    "library/time",
    "library/subprocess",
    "library/threading",
    "library/pickle",
    "library/json",
    "library/csv",
    "library/collections",
    "library/itertools",
    "library/functools",
    "library/io",
    "library/pathlib",
    "library/shutil",
    "library/tempfile",
    "library/socket",
    "library/urllib.request",
    "library/tkinter",
    "library/sqlite3",
    "library/random",
    "library/math",
    "library/copy",
    "library/weakref",
    "library/gc",
    "library/pdb",
    "library/timeit",
    "library/signal",
    "library/heapq",
    "library/bisect",
    "library/queue",
    "library/struct",
    "library/array",
    "library/smtplib",
    "library/select",
)
PYTHON_SKIP_DOCS = frozenset({"reference/grammar", "reference/index", "tutorial/index"})
# Front and back matter of a pod: not reference text.
SKIP_POD_SECTIONS = frozenset(
    {"NAME", "VERSION", "AUTHOR", "AUTHORS", "AUTHOR AND COPYRIGHT", "COPYRIGHT", "SEE ALSO"}
)

SOURCE_INFO: dict[str, dict[str, str]] = {
    "perlfaq": {"package": PERL_PACKAGE, "license": "Artistic-1.0 or GPL-1.0-or-later (same terms as Perl)"},
    "perlunifaq": {
        "package": PERL_PACKAGE,
        "license": "Artistic-1.0 or GPL-1.0-or-later (same terms as Perl)",
    },
    "pyfaq": {"package": PYTHON_PACKAGE, "license": "PSF-2.0 (Python documentation)"},
    "perlman": {"package": PERL_PACKAGE, "license": "Artistic-1.0 or GPL-1.0-or-later (same terms as Perl)"},
    "pydocs": {"package": PYTHON_PACKAGE, "license": "PSF-2.0 (Python documentation)"},
    "perldoc": {"package": PERL_PACKAGE, "license": "Artistic-1.0 or GPL-1.0-or-later (same terms as Perl)"},
    "pydoc": {"package": PYTHON_PACKAGE, "license": "PSF-2.0 (Python documentation)"},
}


class QADataError(ValueError):
    """The packaged QA set (or a folder given instead) is missing or inconsistent."""


# ---------------------------------------------------------------------------------- chunking
def split_long(text: str, max_chars: int = MAX_PASSAGE_CHARS) -> list[str]:
    """Cut one block into pieces of at most ``max_chars``: at line breaks first, then at
    sentence ends, then at spaces, and only as a last resort inside a word."""
    if len(text) <= max_chars:
        return [text]
    for separator, joiner in ((r"\n", "\n"), (r"(?<=[.!?;:])\s+", " "), (r"\s+", " ")):
        parts = [p for p in re.split(separator, text) if p.strip()]
        if len(parts) < 2:
            continue
        out: list[str] = []
        current = ""
        for part in parts:
            for piece in split_long(part, max_chars):
                if current and len(current) + len(joiner) + len(piece) > max_chars:
                    out.append(current)
                    current = piece
                else:
                    current = f"{current}{joiner}{piece}" if current else piece
        if current:
            out.append(current)
        return out
    return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]


def _pack(blocks: Sequence[str], max_chars: int) -> list[str]:
    pieces = [p for b in blocks for p in split_long(b, max_chars)]
    total = sum(len(p) for p in pieces) + 2 * max(0, len(pieces) - 1)
    # Aim at equal chunks (n chunks of total/n) rather than full ones and a stub at the end.
    target = min(max_chars, math.ceil(total / max(1, math.ceil(total / max_chars)) * 1.1))
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > target:
            chunks.append(current)
            current = piece
        else:
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    # A stub after the balancing still joins its neighbour when they fit together.
    stub = len(chunks) >= 2 and len(chunks[-1]) < max_chars // 5
    if stub and len(chunks[-2]) + 2 + len(chunks[-1]) <= max_chars:
        chunks[-2:] = [f"{chunks[-2]}\n\n{chunks[-1]}"]
    return chunks


def chunk_blocks(
    blocks: Sequence[str | None], max_chars: int = MAX_PASSAGE_CHARS, min_unit_chars: int = MIN_UNIT_CHARS
) -> list[str]:
    """Pack rendered blocks (paragraphs, code blocks) into passages of at most ``max_chars``.

    ``None`` in ``blocks`` is a break: the next block starts a new passage (one Perl function
    or one Python API entry per passage, where a section holds many) unless the unit before
    it is shorter than ``min_unit_chars``, in which case short entries share a passage.
    """
    units: list[list[str]] = [[]]
    for block in blocks:
        if block is None:
            if sum(len(b) for b in units[-1]) >= min_unit_chars:
                units.append([])
        elif block.strip():
            units[-1].append(block)
    return [chunk for unit in units if unit for chunk in _pack(unit, max_chars)]


def _code_block(lines: Sequence[str]) -> str:
    text = textwrap.dedent("\n".join(line.rstrip() for line in lines)).strip("\n")
    return "\n".join("    " + line if line else "" for line in text.split("\n"))


# ---------------------------------------------------------------------------------- POD
_POD_ENTITIES = {"lt": "<", "gt": ">", "sol": "/", "verbar": "|", "quot": '"', "amp": "&"}
# Private-use stand-ins: decoded "<"/">" must not be read as the brackets of a formatting code.
_POD_LT, _POD_GT = "\ue000", "\ue001"


def _pod_link(match: re.Match[str]) -> str:
    """``L<name>``, ``L<name/"sec">``, ``L</sec>``, ``L<url>`` as perldoc shows them."""
    target = match.group(1).strip()
    if re.match(r"\w+://", target):
        return target
    page, slash, section = target.partition("/")
    if not slash:
        return page.strip('"')
    section = section.strip().strip('"')
    return f'"{section}" in {page}' if page else f'"{section}"'


def pod_inline(text: str) -> str:
    """Plain text of a POD paragraph: formatting codes removed, whitespace collapsed.

    ``C<< $x->method >>`` → ``$x->method``, ``I<foo>`` → ``foo``, ``L<text|target>`` →
    ``text``, ``L<perlop/"Quote Operators">`` → ``"Quote Operators" in perlop``, ``E<lt>`` →
    ``<``; ``X<>`` index entries and ``Z<>`` markers disappear.
    """

    def entity(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "lt":
            return _POD_LT
        if name == "gt":
            return _POD_GT
        if name.isdigit():
            return chr(int(name))
        return _POD_ENTITIES.get(name, match.group(0))

    text = re.sub(r"E<(\w+)>", entity, text)
    text = re.sub(r"[XZ]<[^<>]*>", "", text)
    previous = None
    while previous != text:
        previous = text
        text = re.sub(r"[A-Z](<{2,})\s+(.*?)\s+(>{2,})", lambda m: m.group(2), text)
        text = re.sub(r"L<([^<>|]*)\|[^<>]*>", r"\1", text)
        text = re.sub(r"L<([^<>|]*)>", _pod_link, text)
        text = re.sub(r"[A-Z]<([^<>]*)>", r"\1", text)
    text = text.replace(_POD_LT, "<").replace(_POD_GT, ">")
    return " ".join(text.split())


@dataclass
class Section:
    """One headed section of a document: its level (1 = top), title and rendered blocks."""

    level: int
    title: str
    blocks: list[str | None] = field(default_factory=list)


def _pod_paragraphs(text: str) -> list[list[str]]:
    paragraphs: list[list[str]] = []
    current: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip():
            current.append(line.rstrip())
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    return paragraphs


def pod_sections(text: str, *, split_items: bool = False) -> list[Section]:
    """Split a POD document into ``=head1``..``=head4`` sections of rendered blocks.

    Verbatim paragraphs stay code (indented by four spaces); ``=item`` labels become lines of
    their own (``*`` bullets prefix the next paragraph with "- "). With ``split_items`` every
    top-level ``=item`` group starts a new passage (a ``None`` break). ``=begin``/``=end``
    and ``=for`` blocks (other formats) are left out.
    """
    sections = [Section(0, "")]
    depth = 0
    skipping: str | None = None
    bullet = ""
    last_was_item = False
    for para in _pod_paragraphs(text):
        first = para[0]
        if skipping is not None:
            if first.startswith("=end"):
                skipping = None
            continue
        if first.startswith("="):
            command, _, rest = first.partition(" ")
            arg = " ".join([rest, *para[1:]]).strip()
            is_item = False
            head = re.fullmatch(r"=head([1-4])", command)
            if head:
                sections.append(Section(int(head.group(1)), pod_inline(arg)))
                bullet = ""
            elif command == "=over":
                depth += 1
            elif command == "=back":
                depth = max(0, depth - 1)
                bullet = ""
            elif command == "=item":
                label = pod_inline(arg)
                if split_items and depth == 1 and not last_was_item:
                    sections[-1].blocks.append(None)
                if label in ("", "*", "-", "o"):
                    bullet = "- "
                elif re.fullmatch(r"\d+\.?", label):
                    bullet = label.rstrip(".") + ". "
                else:
                    blocks = sections[-1].blocks
                    if last_was_item and blocks and blocks[-1] is not None:
                        blocks[-1] = f"{blocks[-1]}\n{label}"
                    else:
                        blocks.append(label)
                    bullet = ""
                is_item = True
            elif command == "=begin":
                skipping = arg
            # =pod, =cut, =encoding, =for and unknown commands carry no text, and do not end
            # a run of =item labels (perlfunc puts "=for Pod::Functions" between them).
            if command not in ("=pod", "=cut", "=encoding", "=for", "=begin", "=end"):
                last_was_item = is_item
            continue
        last_was_item = False
        if first[0] in " \t":
            sections[-1].blocks.append(_code_block(para))
        else:
            sections[-1].blocks.append(bullet + pod_inline(" ".join(para)))
            bullet = ""
    return sections


# ---------------------------------------------------------------------------------- RST
_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}\s*$")
_BULLET = re.compile(r"^(?:[*+\-•]|#\.|\d+\.|\(?[a-zA-Z0-9]\))\s+")
_ROLE = re.compile(r":(?:[\w.+-]+:)+`([^`]*)`")
_TABLE_BORDER = re.compile(r"^[=+][-=+ ]*$")

DROP_DIRECTIVES = frozenset(
    {
        "index",
        "toctree",
        "contents",
        "highlight",
        "module",
        "currentmodule",
        "moduleauthor",
        "sectionauthor",
        "include",
        "literalinclude",
        "image",
        "figure",
        "raw",
        "testsetup",
        "testcleanup",
        "audit-event",
        "tabularcolumns",
        "program",
        "sectnum",
        "role",
        "default-role",
        "opcode",
    }
)
CODE_DIRECTIVES = frozenset(
    {"code-block", "sourcecode", "code", "doctest", "testcode", "testoutput", "productionlist", "math"}
)
OBJECT_DIRECTIVES = frozenset(
    {
        "function",
        "class",
        "method",
        "classmethod",
        "staticmethod",
        "abstractmethod",
        "attribute",
        "data",
        "exception",
        "decorator",
        "decoratormethod",
        "coroutinefunction",
        "coroutinemethod",
        "describe",
        "envvar",
        "option",
        "cmdoption",
        "pdbcommand",
    }
)
ADMONITION_PREFIX = {
    "note": "Note:",
    "warning": "Warning:",
    "caution": "Caution:",
    "important": "Important:",
    "tip": "Tip:",
    "hint": "Hint:",
    "attention": "Attention:",
    "danger": "Danger:",
    "error": "Error:",
    "seealso": "See also:",
    "impl-detail": "CPython implementation detail:",
}
VERSION_PREFIX = {
    "versionadded": "New in version {}.",
    "versionchanged": "Changed in version {}.",
    "deprecated": "Deprecated since version {}.",
    "deprecated-removed": "Deprecated since version {}.",
}


def _role_text(content: str) -> str:
    if content.endswith(">") and "<" in content:
        label = content[: content.rindex("<")].strip()
        if label:
            return label
        content = content[content.rindex("<") + 1 : -1]
    content = content.lstrip("!")
    if content.startswith("~"):
        content = content[1:].rsplit(".", 1)[-1]
    return content


def rst_inline(text: str) -> str:
    """Plain text of an RST paragraph: roles, links, literals and emphasis unwrapped."""
    literals: list[str] = []

    def keep(match: re.Match[str]) -> str:
        literals.append(match.group(1))
        return f"\ue000{len(literals) - 1}\ue001"

    text = re.sub(r"``(.+?)``", keep, text)
    text = re.sub(r":(?:[\w.+-]+:)*pep:`([^`]*)`", lambda m: "PEP " + _role_text(m.group(1)), text)
    text = re.sub(r":(?:[\w.+-]+:)*rfc:`([^`]*)`", lambda m: "RFC " + _role_text(m.group(1)), text)
    text = _ROLE.sub(lambda m: _role_text(m.group(1)), text)
    text = re.sub(r"`<([^`>]*)>`__?", r"\1", text)
    text = re.sub(r"`([^`<]*?)\s*<[^`>]*>`__?", r"\1", text)
    text = re.sub(r"`([^`]+)`__?", r"\1", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    text = re.sub(r"\s*\[(?:#\w*|\d+|\*)\]_", "", text)
    text = re.sub(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*\\])\*(?=[^\s*])([^*]*?[^\s*\\])\*(?![\w*])", r"\1", text)
    text = text.replace("\\ ", "")
    text = re.sub(r"\\(.)", r"\1", text)
    text = re.sub("\ue000(\\d+)\ue001", lambda m: literals[int(m.group(1))], text)
    return " ".join(text.split())


def _indented_extent(lines: Sequence[str], start: int) -> int:
    """Index after the run of blank or indented lines beginning at ``start``."""
    end = start
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t"):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return end


def _dedent(lines: Sequence[str]) -> list[str]:
    return textwrap.dedent("\n".join(line.rstrip() for line in lines)).split("\n")


def _directive(first: str, body: list[str]) -> list[str | None]:
    match = re.match(r"\.\.\s+([\w:.-]+)::\s*(.*)$", first)
    if not match:
        return []  # a comment, a link target, a footnote or a substitution definition
    name, arg = match.group(1).split(":")[-1], match.group(2).strip()
    body = _dedent(body) if body else []
    # Leading lines before the first blank one: continued arguments (an object's extra
    # signatures) or ``:option:`` lines.
    head: list[str] = []
    while body and body[0].strip():
        head.append(body.pop(0))
    options = [h for h in head if re.match(r"\s*:[\w-]+:", h)]
    extra = [h for h in head if h not in options]
    content = body
    if name in DROP_DIRECTIVES:
        return []
    if name in CODE_DIRECTIVES:
        code = [*extra, *content] if name != "math" else [arg, *extra, *content]
        return [_code_block(code)] if any(line.strip() for line in code) else []
    if name in OBJECT_DIRECTIVES:
        signatures = "\n".join(s.strip() for s in [arg, *extra] if s.strip())
        return [None, signatures, *rst_blocks(content)]
    if name in VERSION_PREFIX:
        version, _, rest = arg.partition(" ")
        blocks = rst_blocks([rest, *extra, "", *content] if rest else [*extra, "", *content])
        prefix = VERSION_PREFIX[name].format(version.rstrip(","))
        return _prefixed(prefix, blocks)
    if name in ADMONITION_PREFIX:
        blocks = rst_blocks([arg, *extra, "", *content])
        return _prefixed(ADMONITION_PREFIX[name], blocks)
    if name in ("rubric", "topic", "sidebar", "admonition", "centered"):
        return [rst_inline(arg), *rst_blocks([*extra, "", *content])] if arg else rst_blocks(content)
    # only, container, glossary, hlist, list-table, csv-table, table, tab, ...: their content.
    return rst_blocks([*extra, "", *content])


def _prefixed(prefix: str, blocks: list[str | None]) -> list[str | None]:
    for i, block in enumerate(blocks):
        if block is not None:
            if block.startswith("    "):
                return [*blocks[:i], prefix, *blocks[i:]]
            return [*blocks[:i], f"{prefix} {block}", *blocks[i + 1 :]]
    return [prefix]


def rst_blocks(lines: Sequence[str]) -> list[str | None]:
    """Render reStructuredText body lines (no section titles) to plain-text blocks.

    Paragraphs are unwrapped, literal blocks (after ``::``), doctest blocks and code
    directives stay code, object directives (``.. function::``) keep their signature line and
    are preceded by a ``None`` break, admonitions keep a "Note:"-style prefix, and index,
    toctree, image, comment and target markup disappears.
    """
    out: list[str | None] = []
    literal_next = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line[0] in " \t":
            end = _indented_extent(lines, i)
            block = _dedent(lines[i:end])
            out.extend([_code_block(block)] if literal_next else rst_blocks(block))
            literal_next = False
            i = end
            continue
        literal_next = False
        if line.startswith(".."):
            end = _indented_extent(lines, i + 1)
            out.extend(_directive(line, list(lines[i + 1 : end])))
            i = end
            continue
        bullet = _BULLET.match(line) is not None
        para = [line]
        i += 1
        while i < len(lines) and lines[i].strip():
            if lines[i][0] in " \t" and not bullet:
                break  # a definition list's body (or a block quote) follows its term
            para.append(lines[i])
            i += 1
        if para[0].startswith(">>>"):
            out.append(_code_block(para))
            continue
        if _TABLE_BORDER.match(para[0].strip()):
            rows = [rst_inline(r.strip().strip("|").replace("|", " | ")) for r in para]
            out.append("\n".join(r for r in rows if r and not _TABLE_BORDER.match(r)))
            continue
        if bullet:
            items: list[list[str]] = []
            for row in para:
                if _BULLET.match(row):
                    items.append([_BULLET.sub("", row, count=1)])
                else:
                    items[-1].append(row.strip())
            out.append("\n".join("- " + rst_inline(" ".join(item)) for item in items))
            continue
        text = " ".join(p.strip() for p in para)
        if text.endswith("::"):
            # "Example::" reads "Example:", "Example ::" reads "Example", a lone "::" vanishes;
            # the indented block that follows is code.
            literal_next = True
            stem = text[:-2]
            text = stem.rstrip() if not stem or stem[-1].isspace() else stem + ":"
        rendered = rst_inline(text)
        if rendered:
            out.append(rendered)
    return out


def rst_sections(text: str) -> list[Section]:
    """Split an RST document into titled sections (levels in order of first appearance)."""
    lines = text.replace("\r\n", "\n").split("\n")
    styles: list[tuple[bool, str]] = []
    raw: list[tuple[int, str, list[str]]] = [(0, "", [])]
    i = 0
    while i < len(lines):
        line = lines[i]
        title = None
        if (
            _ADORNMENT.match(line)
            and i + 2 < len(lines)
            and lines[i + 1].strip()
            and _ADORNMENT.match(lines[i + 2])
            and lines[i + 2].strip()[0] == line.strip()[0]
        ):
            title, style, step = lines[i + 1].strip(), (True, line.strip()[0]), 3
        elif (
            line.strip()
            and line[0] not in " \t"
            and not re.match(r"\.\.(\s|$)", line)
            and i + 1 < len(lines)
            and _ADORNMENT.match(lines[i + 1])
            and len(lines[i + 1].rstrip()) >= len(line.rstrip()) - 2
            and (i == 0 or not lines[i - 1].strip())
        ):
            title, style, step = line.strip(), (False, lines[i + 1].strip()[0]), 2
        if title is None:
            raw[-1][2].append(line)
            i += 1
            continue
        if style not in styles:
            styles.append(style)
        raw.append((styles.index(style) + 1, title, []))
        i += step
    return [Section(level, rst_inline(title), rst_blocks(body)) for level, title, body in raw]


# ---------------------------------------------------------------------------------- extraction
@dataclass
class QAItem:
    id: str
    question: str
    answer_blocks: list[str | None]
    source: str
    doc: str


def _answer_body(sections: Sequence[Section], index: int) -> list[str | None]:
    """The blocks of section ``index`` plus those of its subsections (with their titles)."""
    level = sections[index].level
    blocks = list(sections[index].blocks)
    for sub in sections[index + 1 :]:
        if sub.level <= level:
            break
        blocks += [sub.title, *sub.blocks]
    return [b for b in blocks if b is not None]  # an answer is one unit: no hard breaks


def perlfaq_items(path: Path) -> list[QAItem]:
    """Every ``=head2`` of a perlfaq pod is a question; its answer runs to the next
    ``=head1``/``=head2`` (``=head3`` subsections included)."""
    name = path.name.removesuffix(".pod")
    sections = pod_sections(path.read_text(encoding="utf-8", errors="replace"))
    items = []
    number = 0
    for i, section in enumerate(sections):
        if section.level != 2:
            continue
        number += 1
        items.append(
            QAItem(
                f"{name}-{number:03d}",
                section.title,
                _answer_body(sections, i),
                "perlunifaq" if name == "perlunifaq" else "perlfaq",
                name,
            )
        )
    return items


def _is_pyfaq_question(section: Section, question_level: int) -> bool:
    return section.level > 1 and (section.title.endswith("?") or section.level == question_level)


def pyfaq_items(path: Path) -> list[QAItem]:
    """Question sections of a Python FAQ page: titles ending in "?" plus every title at the
    page's question level (the level of its first "?" title: a few questions are phrased as
    statements, e.g. "My class defines __del__ but it is not called ...")."""
    name = path.name.removesuffix(".rst.txt")
    sections = rst_sections(path.read_text(encoding="utf-8", errors="replace"))
    levels = [s.level for s in sections if s.level > 1 and s.title.endswith("?")]
    if not levels:
        return []
    question_level = max(set(levels), key=levels.count)
    items = []
    number = 0
    for i, section in enumerate(sections):
        if not _is_pyfaq_question(section, question_level):
            continue
        number += 1
        items.append(
            QAItem(
                f"pyfaq-{name}-{number:03d}", section.title, _answer_body(sections, i), "pyfaq", f"faq/{name}"
            )
        )
    return items


def pod_question_items(path: Path, exclude: Iterable[str] = ()) -> list[QAItem]:
    """``=head1``/``=head2`` headings ending in "?" of a Perl manual page, with their sections
    as answers (source ``perlman``)."""
    name = path.name.removesuffix(".pod")
    sections = pod_sections(path.read_text(encoding="utf-8", errors="replace"))
    skip = set(exclude)
    items = []
    for i, section in enumerate(sections):
        if section.level in (1, 2) and section.title.endswith("?") and section.title not in skip:
            items.append(
                QAItem(
                    f"{name}-{len(items) + 1:03d}", section.title, _answer_body(sections, i), "perlman", name
                )
            )
    return items


def rst_question_items(path: Path, rel: str) -> list[QAItem]:
    """Section titles ending in "?" of a Python documentation page (source ``pydocs``). A title
    continuing its parent's ("How do I ...?" / "... install pip?") is joined to it."""
    sections = rst_sections(path.read_text(encoding="utf-8", errors="replace"))
    items = []
    for i, section in enumerate(sections):
        title = section.title
        if section.level <= 1 or not title.endswith("?") or title.endswith("...?"):
            continue
        if title.startswith("..."):
            parent = next((s for s in reversed(sections[:i]) if s.level < section.level), None)
            if parent is None or not parent.title.endswith("...?"):
                continue
            title = parent.title.removesuffix("...?").rstrip() + " " + title.removeprefix("...").lstrip()
        items.append(
            QAItem(
                f"pydocs-{_slug(rel)}-{len(items) + 1:03d}", title, _answer_body(sections, i), "pydocs", rel
            )
        )
    return items


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def distractor_units(
    sections: Sequence[Section], prefix: str, skip_titles: Iterable[str] = ()
) -> Iterator[tuple[str, list[str | None]]]:
    """``(id prefix, blocks)`` for every non-empty section, numbered in file order."""
    skip = set(skip_titles)
    for number, section in enumerate(sections, start=1):
        if section.title in skip or not any(section.blocks):
            continue
        yield f"{prefix}-{number:03d}", section.blocks


# ---------------------------------------------------------------------------------- building
def _find_dir(root: Path, pattern: str, probe: str) -> Path:
    """``root`` itself when it holds ``probe``, else the match of ``pattern`` under it."""
    if (root / probe).exists() or list(root.glob(probe)):
        return root
    hits = sorted(p for p in root.glob(pattern) if p.is_dir())
    if not hits:
        raise FileNotFoundError(f"{root}: no {pattern} folder (an unpacked {probe} location)")
    return hits[-1]


def _deb_version(deb: Path) -> str | None:
    try:
        proc = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError):
        match = re.match(r"[^_]+_([^_]+)_", deb.name)
        return match.group(1) if match else None
    return proc.stdout.strip() or None


def _patterns_for(package: str) -> tuple[str, ...]:
    if package == PERL_PACKAGE:
        pods = [*PERL_FAQ_PODS, *PERL_QUESTION_PODS, *PERL_DISTRACTOR_PODS]
        return tuple(f"{PERL_POD_GLOB}/{name}.pod" for name in pods)
    return (
        f"{PYTHON_SOURCES_GLOB}/{PYTHON_FAQ_GLOB}",
        *(f"{PYTHON_SOURCES_GLOB}/{doc}.rst.txt" for doc in PYTHON_QUESTION_DOCS),
        *(f"{PYTHON_SOURCES_GLOB}/{doc}.rst.txt" for doc in PYTHON_DISTRACTOR_DOCS),
        *(f"{PYTHON_SOURCES_GLOB}/{doc}/*.rst.txt" for doc in PYTHON_DISTRACTOR_DOCS if "/" not in doc),
    )


def resolve_package(
    package: str, given: str | Path | None, cache_dir: Path | None
) -> tuple[Path, str | None]:
    """An unpacked folder, a .deb (unpacked into the cache) or, with nothing given, a fresh
    ``apt-get download`` (cached). Returns ``(root folder, package version or None)``."""
    from ..training.queries import default_cache_dir, extract_deb, fetch_deb

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if given is None:
        root, deb = fetch_deb(package, cache, _patterns_for(package))
        return root, _deb_version(deb)
    path = Path(given)
    if path.is_file() and path.suffix == ".deb":
        # Unpacked afresh each time (seconds): a given .deb is not a cache entry.
        dest = cache / "extracted" / path.stem
        if dest.exists():
            shutil.rmtree(dest)
        extract_deb(path, dest, _patterns_for(package))
        return dest, _deb_version(path)
    if path.is_dir():
        return path, None
    raise FileNotFoundError(f"{path} is neither a .deb nor a folder")


def _python_docs(sources: Path) -> list[Path]:
    paths: list[Path] = []
    for doc in PYTHON_DISTRACTOR_DOCS:
        folder = sources / doc
        if folder.is_dir():
            paths += sorted(folder.glob("*.rst.txt"))
        elif (sources / f"{doc}.rst.txt").is_file():
            paths.append(sources / f"{doc}.rst.txt")
    return [p for p in paths if str(p.relative_to(sources)).removesuffix(".rst.txt") not in PYTHON_SKIP_DOCS]


def build_qa_set(
    perl_root: str | Path,
    python_root: str | Path,
    *,
    max_chars: int = MAX_PASSAGE_CHARS,
    min_answer_chars: int = MIN_ANSWER_CHARS,
    min_distractor_chars: int = MIN_DISTRACTOR_CHARS,
    perl_pods: dict[str, bool] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Queries, passages and build statistics from unpacked perl-doc and python3.11-doc trees.

    ``perl_root`` may be the package root (``usr/share/perl/*/pod`` below it) or the pod folder
    itself; ``python_root`` the package root or the ``_sources`` folder. Missing distractor
    files are skipped (the tests use tiny trees); missing FAQ files are an error.
    """
    from ..training.queries import dedupe_key

    pod_dir = _find_dir(Path(perl_root), PERL_POD_GLOB, "perlfaq*.pod")
    py_dir = _find_dir(Path(python_root), PYTHON_SOURCES_GLOB, "faq")
    faq_pods = [pod_dir / f"{n}.pod" for n in PERL_FAQ_PODS if (pod_dir / f"{n}.pod").is_file()]
    faq_rsts = sorted((py_dir / "faq").glob("*.rst.txt"))
    if not faq_pods or not faq_rsts:
        raise FileNotFoundError(f"no perlfaq pods in {pod_dir} or no Python FAQ in {py_dir / 'faq'}")

    items = [it for p in faq_pods for it in perlfaq_items(p)]
    items += [
        it
        for name, exclude in PERL_QUESTION_PODS.items()
        if (pod_dir / f"{name}.pod").is_file()
        for it in pod_question_items(pod_dir / f"{name}.pod", exclude)
    ]
    items += [it for p in faq_rsts for it in pyfaq_items(p)]
    items += [
        it
        for rel in PYTHON_QUESTION_DOCS
        if (py_dir / f"{rel}.rst.txt").is_file()
        for it in rst_question_items(py_dir / f"{rel}.rst.txt", rel)
    ]
    stats: dict[str, Any] = {"questions_found": len(items), "short_answer": 0, "duplicate_question": 0}
    queries: list[dict[str, Any]] = []
    passages: list[dict[str, Any]] = []
    seen_questions: set[str] = set()
    for item in items:
        chunks = chunk_blocks(item.answer_blocks, max_chars)
        key = dedupe_key(item.question)
        if sum(len(c) for c in chunks) < min_answer_chars:
            stats["short_answer"] += 1
            continue
        if key in seen_questions:
            stats["duplicate_question"] += 1
            continue
        seen_questions.add(key)
        ids = [f"{item.id}-p{k}" for k in range(1, len(chunks) + 1)]
        queries.append(
            {"id": item.id, "text": item.question, "source": item.source, "doc": item.doc, "relevant": ids}
        )
        for pid, chunk in zip(ids, chunks, strict=True):
            passages.append(
                {"id": pid, "text": chunk, "source": item.source, "doc": item.doc, "answer_to": item.id}
            )

    answer_texts = {p["text"] for p in passages}
    stats["distractor_short"] = stats["distractor_duplicate"] = 0
    distractor_texts: set[str] = set()

    def add_distractors(units: Iterable[tuple[str, list[str | None]]], source: str, doc: str) -> None:
        for prefix, blocks in units:
            for k, chunk in enumerate(chunk_blocks(blocks, max_chars), start=1):
                if len(chunk) < min_distractor_chars:
                    stats["distractor_short"] += 1
                    continue
                if chunk in answer_texts or chunk in distractor_texts:
                    stats["distractor_duplicate"] += 1
                    continue
                distractor_texts.add(chunk)
                passages.append(
                    {"id": f"{prefix}-p{k}", "text": chunk, "source": source, "doc": doc, "answer_to": None}
                )

    for name, split_items in (perl_pods if perl_pods is not None else PERL_DISTRACTOR_PODS).items():
        path = pod_dir / f"{name}.pod"
        if path.is_file():
            sections = pod_sections(
                path.read_text(encoding="utf-8", errors="replace"), split_items=split_items
            )
            add_distractors(distractor_units(sections, f"perl-{name}", SKIP_POD_SECTIONS), "perldoc", name)
    for path in _python_docs(py_dir):
        rel = str(path.relative_to(py_dir)).removesuffix(".rst.txt")
        sections = rst_sections(path.read_text(encoding="utf-8", errors="replace"))
        add_distractors(distractor_units(sections, f"py-{_slug(rel)}"), "pydoc", rel)

    ids = [p["id"] for p in passages]
    if len(set(ids)) != len(ids):
        raise QADataError("duplicate passage ids: the id scheme is broken")
    perl_files = [*PERL_FAQ_PODS, *PERL_QUESTION_PODS, *(perl_pods or PERL_DISTRACTOR_PODS)]
    py_files = [str(p.relative_to(py_dir)) for p in faq_rsts]
    py_files += [f"{rel}.rst.txt" for rel in PYTHON_QUESTION_DOCS if (py_dir / f"{rel}.rst.txt").is_file()]
    py_files += [str(p.relative_to(py_dir)) for p in _python_docs(py_dir)]
    stats["files"] = {
        "perl": [f"{n}.pod" for n in perl_files if (pod_dir / f"{n}.pod").is_file()],
        "python": py_files,
    }
    return queries, passages, stats


def describe(queries: Sequence[dict[str, Any]], passages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts for the card and the results JSON."""
    rel = sorted(len(q["relevant"]) for q in queries)
    by_source: dict[str, int] = {}
    for q in queries:
        source = q.get("source", "unknown")
        by_source[source] = by_source.get(source, 0) + 1
    passage_sources: dict[str, int] = {}
    for p in passages:
        source = p.get("source", "unknown")
        passage_sources[source] = passage_sources.get(source, 0) + 1
    lengths = sorted(len(p["text"]) for p in passages)
    return {
        "queries": len(queries),
        "queries_by_source": by_source,
        "passages": len(passages),
        "answer_passages": sum(1 for p in passages if p.get("answer_to")),
        "distractor_passages": sum(1 for p in passages if not p.get("answer_to")),
        "passages_by_source": passage_sources,
        "relevant_per_query": {
            "mean": round(sum(rel) / len(rel), 3) if rel else 0,
            "median": rel[len(rel) // 2] if rel else 0,
            "max": rel[-1] if rel else 0,
            "one": sum(1 for r in rel if r == 1),
        },
        "passage_chars": {
            "mean": round(sum(lengths) / len(lengths), 1) if lengths else 0,
            "median": lengths[len(lengths) // 2] if lengths else 0,
            "max": lengths[-1] if lengths else 0,
        },
    }


def write_qa_set(
    out_dir: str | Path,
    queries: Sequence[dict[str, Any]],
    passages: Sequence[dict[str, Any]],
    manifest: dict[str, Any],
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / QUERIES_FILE).write_text(
        "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in queries), "utf-8"
    )
    # mtime=0 and no file name in the header: the same set gives the same bytes.
    body = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages).encode("utf-8")
    with (
        open(out / CORPUS_FILE, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0) as gz,
    ):
        gz.write(body)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return out


# ---------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class QASet:
    queries: list[dict[str, Any]]
    passages: list[dict[str, Any]]

    def validate(self) -> None:
        if not self.queries or not self.passages:
            raise QADataError("the QA set needs at least one query and one passage")
        ids: set[str] = set()
        for i, p in enumerate(self.passages):
            if not isinstance(p.get("id"), str) or not isinstance(p.get("text"), str):
                raise QADataError(f"passage #{i} needs string 'id' and 'text'")
            if p["id"] in ids:
                raise QADataError(f"duplicate passage id {p['id']!r}")
            ids.add(p["id"])
        qids: set[str] = set()
        for i, q in enumerate(self.queries):
            for key in ("id", "text", "relevant"):
                if key not in q:
                    raise QADataError(f"query #{i} lacks {key!r}")
            if q["id"] in qids:
                raise QADataError(f"duplicate query id {q['id']!r}")
            qids.add(q["id"])
            if not q["relevant"]:
                raise QADataError(f"query {q['id']!r} has no relevant passage")
            missing = [r for r in q["relevant"] if r not in ids]
            if missing:
                raise QADataError(f"query {q['id']!r} has relevant ids not in the corpus: {missing[:5]}")


def _read_jsonl_any(path: Path) -> list[dict[str, Any]]:
    from ..jsonl import read_jsonl

    return read_jsonl(path, error=QADataError)


def load_qa(folder: str | Path | None = None) -> QASet:
    """The packaged QA set, or one in the same layout (``corpus.jsonl`` or ``.jsonl.gz``)."""
    folder = Path(folder) if folder is not None else QA_DIR
    corpus = folder / CORPUS_FILE
    if not corpus.is_file():
        corpus = folder / "corpus.jsonl"
    if not (folder / QUERIES_FILE).is_file() or not corpus.is_file():
        raise QADataError(f"{folder} has no {QUERIES_FILE} and {CORPUS_FILE}: not a QA set folder")
    qa = QASet(_read_jsonl_any(folder / QUERIES_FILE), _read_jsonl_any(corpus))
    qa.validate()
    return qa


def benchmark_questions(folder: str | Path | None = None) -> list[str]:
    """The QA benchmark's question texts (what the training pool must never contain)."""
    path = Path(folder) if folder is not None else QA_DIR
    return [q["text"] for q in _read_jsonl_any(path / QUERIES_FILE)]


def pool_overlap(questions: Iterable[str], pool_files: Iterable[str | Path]) -> list[dict[str, str]]:
    """Rows of query-pool JSONL files whose text equals a benchmark question after case,
    punctuation and whitespace normalisation (:func:`~l2vg_retrieval.training.queries.dedupe_key`).

    Returns ``{"file", "id", "text", "question"}`` per hit: empty means the benchmark is held
    out of training.
    """
    from ..training.queries import dedupe_key

    keys = {dedupe_key(q): q for q in questions}
    hits = []
    for path in pool_files:
        path = Path(path)
        for row in _read_jsonl_any(path):
            text = row.get("text") or row.get("query") or ""
            key = dedupe_key(text)
            if key in keys:
                hits.append(
                    {"file": path.name, "id": str(row.get("id")), "text": text, "question": keys[key]}
                )
    return hits


def sample_order(ids: Iterable[str], salt: str = "qa") -> list[str]:
    """A fixed pseudo-random order of ids (sha1 of salt + id): a deterministic sample that
    does not depend on file order or Python's hash seed."""
    return sorted(ids, key=lambda i: hashlib.sha1(f"{salt}:{i}".encode()).hexdigest())


# ---------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the QA retrieval benchmark from Debian doc packages.")
    parser.add_argument("--perl-doc", help="perl-doc .deb or unpacked folder (default: apt-get download)")
    parser.add_argument(
        "--python-doc", help="python3.11-doc .deb or unpacked folder (default: apt-get download)"
    )
    parser.add_argument("--out", type=Path, default=QA_DIR, help="output folder")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    perl_root, perl_version = resolve_package(PERL_PACKAGE, args.perl_doc, args.cache_dir)
    py_root, py_version = resolve_package(PYTHON_PACKAGE, args.python_doc, args.cache_dir)
    queries, passages, stats = build_qa_set(perl_root, py_root)
    import shlex
    import sys

    given = list(sys.argv[1:] if argv is None else argv)
    manifest = {
        "command": shlex.join(["python", "-m", "l2vg_retrieval.bench.qa_data", *given]),
        "packages": {
            PERL_PACKAGE: {"version": perl_version, "license": SOURCE_INFO["perldoc"]["license"]},
            PYTHON_PACKAGE: {"version": py_version, "license": SOURCE_INFO["pydoc"]["license"]},
        },
        "settings": {
            "max_passage_chars": MAX_PASSAGE_CHARS,
            "min_answer_chars": MIN_ANSWER_CHARS,
            "min_distractor_chars": MIN_DISTRACTOR_CHARS,
            "relevant": "all chunks of the question's answer",
        },
        "counts": describe(queries, passages),
        "build": stats,
    }
    write_qa_set(args.out, queries, passages, manifest)
    print(json.dumps(manifest["counts"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
