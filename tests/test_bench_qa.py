"""The QA benchmark: builder on tiny trees in the real package layouts (POD and RST
sources), the loader, the held-out check, and the harness on BM25 and the tiny encoder."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from l2vg_retrieval.bench import qa_data as qd
from l2vg_retrieval.bench.lineup import BM25Retriever, build_retrievers
from l2vg_retrieval.bench.metrics import evaluate_run
from l2vg_retrieval.bench.qa import held_out_check, ratio_to_gte, run_qa, select, subset_ids
from l2vg_retrieval.bench.report import write_report
from l2vg_retrieval.cli import app
from l2vg_retrieval.encoder import L2VGEncoder
from l2vg_retrieval.training import queries as tq

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- fixtures
# perlfaq-style POD: =head1 groups, =head2 questions, verbatim code, formatting codes.
PERLFAQ_POD = (
    """=head1 NAME

perlfaq4 - Data Manipulation

=head1 VERSION

version 5.20210520

=head1 Data: Numbers

=head2 How do I round a floating-point number to two decimals?

Use C<sprintf> with a precision: the I<format> C<< "%.2f" >> rounds the
number when it is turned into a string. See L<perlop/"Floating-point Arithmetic">
and L<the sprintf entry|perlfunc/sprintf>. X<round> X<decimals>

    my $rounded = sprintf "%.2f", 3.14159;   # 3.14

=head2 How can I reverse the characters of a string?

Call C<reverse> in scalar context; E<lt>STDINE<gt> lines keep their newline,
so C<chomp> them first:

=over 4

=item *

scalar reverse reverses the characters of a string

=item *

list reverse reverses the order of a list

=back

=head3 Unicode strings

Decode the string first so that reversing works on characters, not bytes.

=head2 Where can I get a module for Roman numerals?

See CPAN.

=head1 Data: Hashes

=head2 How do I sort a hash by its values?

Take the keys and sort them with a comparison of the values: C<sort { $h{$a} <=> $h{$b} } keys %h>
gives the keys ordered by value. Long answer follows.

"""
    + "\n\n".join(
        f"Paragraph {i} of the hash sorting answer explains one more detail about comparing values "
        "numerically or as strings."
        for i in range(6)
    )
    + """

=head1 AUTHOR AND COPYRIGHT

Copyright the perlfaq authors.
"""
)

# perlfunc-style POD: one =item group per function.
PERLFUNC_POD = """=head1 NAME

perlfunc - Perl builtin functions

=head1 DESCRIPTION

=head2 Alphabetical Listing of Perl Functions

=over

=item chomp VARIABLE
X<chomp>

=for Pod::Functions remove a trailing record separator from a string

=item chomp

Removes a trailing newline from a string held in a variable and returns the number of
characters removed. It is often used on lines read from a filehandle before comparing them
with other strings.

=item keys HASH
X<keys>

Returns a list of all the keys of the named hash, in an apparently random order that is
the same order that values and each would use on the same unchanged hash table.

=back

=head1 SEE ALSO

Nothing.
"""

PYFAQ_RST = """:tocdepth: 2

===============
Programming FAQ
===============

.. only:: html

   .. contents::

General Questions
=================

How do I find which module a function comes from?
--------------------------------------------------

Look at the function's ``__module__`` attribute, or call :func:`inspect.getmodule` on it.
The :mod:`inspect` module documents it; see also `the tutorial <https://docs.python.org/tutorial>`_
and :pep:`8`.

.. index:: single: module; lookup

For example::

   >>> import os
   >>> os.getcwd.__module__
   'posix'

Why does my lambda in a loop return the last value?
----------------------------------------------------

Yes.

My class defines __del__ but it is not called when I delete the object.
------------------------------------------------------------------------

The ``del`` statement only decrements the reference count of the object; the
:meth:`~object.__del__` method runs when the count reaches zero.

.. note::
   Reference cycles delay this until the garbage collector runs.

.. _faq-duplicate:

How do I find which module a function comes from?
--------------------------------------------------

A duplicate title: dropped, because the first copy wins, whatever its own answer says here.
"""

INSTALLING_RST = """.. highlight:: none

*************************
Installing Python Modules
*************************

How do I ...?
=============

These are quick answers.

... install packages just for the current user?
-----------------------------------------------

Passing the ``--user`` option to ``python -m pip install`` installs a package just for the
current user, rather than for all users of the system.
"""

OS_RST = """:mod:`os` --- Miscellaneous operating system interfaces
=========================================================

.. module:: os
   :synopsis: Miscellaneous operating system interfaces.

This module provides a portable way of using operating system dependent functionality
such as reading environment variables and walking directory trees.

Files and Directories
---------------------

.. function:: getcwd()

   Return a string representing the current working directory of the running process.

.. function:: listdir(path='.')

   Return a list containing the names of the entries in the directory given by *path*.
   The list is in arbitrary order and does not include the special entries ``'.'`` and ``'..'``.

   .. versionchanged:: 3.2
      The *path* parameter became optional.
"""


def make_trees(root: Path) -> tuple[Path, Path]:
    """Unpacked perl-doc and python3.11-doc trees holding the fixture files at package paths."""
    pod = root / "perl" / "usr/share/perl/5.36.0/pod"
    pod.mkdir(parents=True)
    (pod / "perlfaq4.pod").write_text(PERLFAQ_POD, encoding="utf-8")
    (pod / "perlfunc.pod").write_text(PERLFUNC_POD, encoding="utf-8")
    src = root / "py" / "usr/share/doc/python3.11/html/_sources"
    for rel, text in (
        ("faq/programming.rst.txt", PYFAQ_RST),
        ("installing/index.rst.txt", INSTALLING_RST),
        ("library/os.rst.txt", OS_RST),
    ):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text, encoding="utf-8")
    return root / "perl", root / "py"


@pytest.fixture
def built(tmp_path: Path) -> tuple[list[dict], list[dict], dict]:
    perl, py = make_trees(tmp_path)
    return qd.build_qa_set(perl, py, max_chars=400)


# --------------------------------------------------------------------------- rendering
def test_pod_inline_codes() -> None:
    assert qd.pod_inline("C<< $x->method >> and I<E<lt>fhE<gt>> X<idx>") == "$x->method and <fh>"
    assert qd.pod_inline('L<perlop/"Quote Operators">') == '"Quote Operators" in perlop'
    assert qd.pod_inline("L<text|perlfunc/open> L<perlvar> L</Bugs> L<https://x.org>") == (
        'text perlvar "Bugs" https://x.org'
    )


def test_rst_inline_roles_and_links() -> None:
    text = (
        ":func:`len`, :meth:`~object.__del__`, :ref:`the guide <tut-x>`, :pep:`8`, "
        "``a *b*``, *emph*, **strong**, `site <https://x>`_ and \\*args"
    )
    assert qd.rst_inline(text) == "len, __del__, the guide, PEP 8, a *b*, emph, strong, site and *args"


def test_rst_blocks_keep_code_and_drop_markup() -> None:
    blocks = qd.rst_blocks(OS_RST.split("\n")[3:])
    text = "\n\n".join(b for b in blocks if b is not None)
    assert "module:: os" not in text and "synopsis" not in text
    assert "getcwd()\n\nReturn a string" in text
    assert "Changed in version 3.2. The path parameter became optional." in text
    assert None in blocks  # each API entry starts a new unit


def test_chunking_respects_the_cap_and_breaks() -> None:
    long = " ".join(f"word{i}." for i in range(400))
    chunks = qd.chunk_blocks(
        ["short intro", long, None, "next entry " * 50], max_chars=300, min_unit_chars=10
    )
    assert all(len(c) <= 300 for c in chunks)
    assert chunks[-1].startswith("next entry")  # the break started a new passage
    assert "".join(chunks).replace("\n", " ").count("word399.") == 1  # nothing lost or doubled
    # A unit shorter than min_unit_chars shares its passage with the next one.
    assert qd.chunk_blocks(["tiny", None, "next"], min_unit_chars=400) == ["tiny\n\nnext"]


# --------------------------------------------------------------------------- builder
def test_builder_questions_answers_and_ids(built: tuple[list[dict], list[dict], dict]) -> None:
    queries, passages, stats = built
    by_id = {q["id"]: q for q in queries}
    text = {p["id"]: p["text"] for p in passages}
    # Ids number the =head2 / question sections in file order, kept or not.
    assert by_id["perlfaq4-001"]["text"] == "How do I round a floating-point number to two decimals?"
    assert "perlfaq4-003" not in by_id  # "See CPAN." is under 80 characters
    assert stats["short_answer"] == 2 and stats["duplicate_question"] == 1  # "Yes." and the repeat
    answer = text["perlfaq4-001-p1"]
    assert 'sprintf with a precision: the format "%.2f" rounds' in answer
    assert '"Floating-point Arithmetic" in perlop and the sprintf entry.' in answer
    assert '    my $rounded = sprintf "%.2f", 3.14159;   # 3.14' in answer
    assert "How do I round" not in answer  # no passage carries its heading
    reverse = text["perlfaq4-002-p1"]
    assert "<STDIN> lines" in reverse and "- scalar reverse reverses" in reverse
    assert "Unicode strings\n\nDecode the string first" in reverse  # =head3 stays in the answer
    # A long answer is chunked; all its chunks are relevant and fit the cap.
    long = by_id["perlfaq4-004"]["relevant"]
    assert len(long) >= 2 and all(len(text[p]) <= 400 for p in long)
    py = by_id["pyfaq-programming-001"]
    assert py["source"] == "pyfaq" and py["doc"] == "faq/programming"
    assert "    >>> import os" in text[py["relevant"][0]]
    assert "inspect.getmodule" in text[py["relevant"][0]] and "PEP 8" in text[py["relevant"][0]]
    # A statement-shaped question at the FAQ's question level is a question too.
    assert by_id["pyfaq-programming-003"]["text"].startswith("My class defines __del__")
    assert "Note: Reference cycles" in text[by_id["pyfaq-programming-003"]["relevant"][0]]
    # "How do I ...?" + "... install packages just for the current user?"
    assert (
        by_id["pydocs-installing-index-001"]["text"] == "How do I install packages just for the current user?"
    )
    # Distractors: perlfunc's function entries (the item labels and =for lines grouped) and
    # the os chapter; front matter and SEE ALSO are left out.
    distractors = [p for p in passages if p["answer_to"] is None]
    assert {p["source"] for p in distractors} == {"perldoc", "pydoc"}
    chomp = next(p["text"] for p in distractors if p["text"].startswith("chomp VARIABLE"))
    assert chomp.startswith("chomp VARIABLE\nchomp\n\nRemoves a trailing newline")
    assert not any("Nothing." in p["text"] or "Builtin functions" in p["text"] for p in distractors)
    assert len({p["id"] for p in passages}) == len(passages)


def test_builder_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    perl, py = make_trees(tmp_path / "src")
    assert qd.main(["--perl-doc", str(perl), "--python-doc", str(py), "--out", str(tmp_path / "a")]) == 0
    assert qd.main(["--perl-doc", str(perl), "--python-doc", str(py), "--out", str(tmp_path / "b")]) == 0
    for name in (qd.QUERIES_FILE, qd.CORPUS_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    qa = qd.load_qa(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / qd.MANIFEST_FILE).read_text())
    assert manifest["counts"]["queries"] == len(qa.queries) == 6
    assert manifest["counts"]["passages"] == len(qa.passages)
    with gzip.open(tmp_path / "a" / qd.CORPUS_FILE, "rt") as fh:
        assert json.loads(fh.readline())["id"] == qa.passages[0]["id"]


def test_loader_rejects_broken_sets(tmp_path: Path) -> None:
    with pytest.raises(qd.QADataError, match="not a QA set"):
        qd.load_qa(tmp_path)
    (tmp_path / "queries.jsonl").write_text(json.dumps({"id": "q", "text": "x", "relevant": ["nope"]}) + "\n")
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"id": "p", "text": "y"}) + "\n")
    with pytest.raises(qd.QADataError, match="not in the corpus"):
        qd.load_qa(tmp_path)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_fetch_deb_extracts_only_matching_members_from_cache(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: perl-doc\nVersion: 5.36.0-7\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"
    )
    pod = pkg / "usr/share/perl/5.36.0/pod"
    pod.mkdir(parents=True)
    (pod / "perlfaq4.pod").write_text(PERLFAQ_POD)
    (pod / "perltoc.pod").write_text("=head1 NAME\n")
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    deb = downloads / "perl-doc_5.36.0-7_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(deb)], check=True, capture_output=True)
    # The cached .deb is used: apt-get is never called.
    root, got = tq.fetch_deb("perl-doc", tmp_path / "cache", ("usr/share/perl/*/pod/perlfaq[1-9].pod",))
    assert got == deb
    assert [p.name for p in root.rglob("*.pod")] == ["perlfaq4.pod"]
    assert qd._deb_version(deb) == "5.36.0-7"


# --------------------------------------------------------------------------- held out of training
def test_held_out_check_catches_an_injected_overlap(tmp_path: Path) -> None:
    pool = tmp_path / "queries.train.jsonl"
    rows = [
        {"id": "nq-1", "text": "who wrote the hobbit?"},
        {"id": "nq-2", "text": "  how do I SORT a hash, by its values  "},
    ]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    hits = qd.pool_overlap(["How do I sort a hash by its values?"], [pool])
    assert [h["id"] for h in hits] == ["nq-2"]
    assert qd.pool_overlap(["How do I sort a list?"], [pool]) == []


def test_packaged_questions_are_not_in_the_training_pool() -> None:
    qa = qd.load_qa()
    check = held_out_check(qa, REPO / "data" / "queries")
    assert check is not None, "data/queries/queries.{train,heldout}.jsonl are missing: git checkout data/"
    assert check["overlapping_rows"] == 0, check["examples"]
    responses = REPO / "data" / "responses" / "pool48.responses.jsonl.gz"
    assert responses.is_file()
    assert qd.pool_overlap([q["text"] for q in qa.queries], [responses]) == []


def test_pool_builder_excludes_benchmark_questions() -> None:
    raw = {"nq": ["How do I sort a hash by its values", "who wrote the hobbit?"]}
    pool, stats = tq.clean_pool(raw, exclude=["How do I sort a hash by its values?"])
    assert [r["text"] for r in pool] == ["who wrote the hobbit?"]
    assert stats["nq"]["excluded"] == 1
    with pytest.raises(ValueError, match="evaluation data"):
        tq.clean_pool({"perlfaq": ["How do I sort a hash by its values?"]})


# --------------------------------------------------------------------------- packaged set
def test_packaged_set_shape() -> None:
    qa = qd.load_qa()
    assert len(qa.queries) >= 500 and len(qa.passages) >= 3000
    assert all(len(p["text"]) <= qd.MAX_PASSAGE_CHARS for p in qa.passages)
    answers = {p["id"]: p["answer_to"] for p in qa.passages}
    for q in qa.queries:
        assert all(answers[r] == q["id"] for r in q["relevant"])
    assert {q["source"] for q in qa.queries} == {"perlfaq", "perlunifaq", "perlman", "pyfaq", "pydocs"}
    assert (qd.QA_DIR / qd.CORPUS_FILE).stat().st_size < 3_000_000


def test_packaged_set_is_not_solved_by_word_overlap() -> None:
    qa = select(qd.load_qa(), max_queries=40, max_passages=1500)
    ndcg = run_qa(qa, {"bm25": BM25Retriever()}, instruction=None)["mean"]["bm25"]["ndcg@10"]
    assert 0.1 < ndcg < 0.8


# --------------------------------------------------------------------------- harness
def _fixture_set(tmp_path: Path) -> qd.QASet:
    perl, py = make_trees(tmp_path)
    queries, passages, _ = qd.build_qa_set(perl, py)
    return qd.QASet(queries, passages)


def test_bm25_ranks_the_matching_answer_first(tmp_path: Path) -> None:
    qa = _fixture_set(tmp_path)
    result = run_qa(qa, {"bm25": BM25Retriever()}, instruction=None)
    m = result["mean"]["bm25"]
    assert m["mrr"] == 1.0 and m["recall@1"] == 1.0 and m["ndcg@10"] == 1.0
    assert set(result["by_language"]) == {"perl", "python"}
    assert result["counts"]["queries"] == len(qa.queries)


def test_scoring_against_a_fixed_table(tmp_path: Path) -> None:
    qa = qd.QASet(
        [
            {"id": "a", "text": "qa", "source": "perlfaq", "relevant": ["p1", "p2"]},
            {"id": "b", "text": "qb", "source": "pyfaq", "relevant": ["p3"]},
        ],
        [{"id": f"p{i}", "text": f"t{i}"} for i in range(4)],
    )

    class Table:
        key = "table"

        def score(self, queries: list[str], documents: list[str], *, instruction: str | None = None):
            rows = {"qa": [0.0, 0.9, 0.1, 0.8], "qb": [0.1, 0.2, 0.95, 0.9]}
            return np.array([rows[q] for q in queries])

    out = run_qa(qa, {"table": Table()}, instruction=None)
    # a: p1 at rank 1, p2 at rank 3 → DCG 1 + 1/2 over IDCG 1 + 1/log2(3); b: p3 at rank 2.
    ndcg_a = (1 + 0.5) / (1 + 1 / np.log2(3))
    ndcg_b = 1 / np.log2(3)
    assert out["mean"]["table"]["ndcg@10"] == pytest.approx((ndcg_a + ndcg_b) / 2)
    assert out["mean"]["table"]["recall@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["mean"]["table"]["mrr"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["by_language"]["perl"]["table"]["ndcg@10"] == pytest.approx(ndcg_a)
    # Every query's nDCG@10 is kept, and the interval of the mean is built from them.
    assert out["per_query_ndcg@10"]["table"] == pytest.approx({"a": ndcg_a, "b": ndcg_b}, abs=1e-6)
    low, high = out["ci95"]["mean_ndcg@10"]["table"]
    assert low == pytest.approx(min(ndcg_a, ndcg_b), abs=1e-6) and high == pytest.approx(
        max(ndcg_a, ndcg_b), abs=1e-6
    )


def test_select_keeps_relevant_passages_and_is_deterministic(
    built: tuple[list[dict], list[dict], dict],
) -> None:
    queries, passages, _ = built
    qa = qd.QASet(queries, passages)
    small = select(qa, max_queries=3, max_passages=8)
    assert len(small.queries) == 3
    relevant = {r for q in small.queries for r in q["relevant"]}
    kept = {p["id"] for p in small.passages}
    assert relevant <= kept and len(kept) == max(8, len(relevant))
    assert select(qa, max_queries=3, max_passages=8) == small
    assert set(subset_ids(small.queries, 2)) <= {q["id"] for q in small.queries}
    assert set(subset_ids(small.queries, 2)) == set(subset_ids(qa.queries, 3)) & set(
        subset_ids(qa.queries, 2)
    )


def test_lineup_on_tiny_encoder(tmp_path: Path, tiny_encoder: L2VGEncoder) -> None:
    qa = select(_fixture_set(tmp_path), max_queries=3)
    keys = ["bm25", "teacher", "input-centric", "generate-then-encode", "l2vg-gen-docs", "l2vg-teacher-docs"]
    retrievers = build_retrievers(tiny_encoder, keys, gte_max_new_tokens=2)
    result = run_qa(qa, retrievers, instruction=tiny_encoder.config.query_instruction, subset_queries=2)
    assert set(result["mean"]) == set(keys) - {"generate-then-encode"}
    assert set(result["subset_mean"]) == set(keys) and result["subset_queries"] == 2
    # The reported metrics are exactly the metrics of each model's own cosine scores,
    # computed here from the encoders directly (same batches, so same floats)...
    instruction = tiny_encoder.config.query_instruction
    queries, passages = [q["text"] for q in qa.queries], [p["text"] for p in qa.passages]
    l2vg_q = tiny_encoder.encode_query(queries, instruction=instruction, batch_size=16)
    teacher_docs = tiny_encoder.teacher.encode(passages, batch_size=16)
    sides = {
        "teacher": (tiny_encoder.teacher.encode(queries, batch_size=16), teacher_docs),
        "l2vg-teacher-docs": (l2vg_q, teacher_docs),
        "l2vg-gen-docs": (l2vg_q, tiny_encoder.encode_document(passages, batch_size=16)),
    }
    qrels = {q["id"]: dict.fromkeys(q["relevant"], 1) for q in qa.queries}
    chosen = set(result["subset_ids"])
    for key, (q, d) in sides.items():
        q, d = (np.asarray(x, dtype=np.float32) for x in (q, d))
        scores = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
            d / np.linalg.norm(d, axis=1, keepdims=True)
        ).T
        run = {
            query["id"]: dict(zip([p["id"] for p in qa.passages], map(float, row), strict=True))
            for query, row in zip(qa.queries, scores, strict=True)
        }
        assert result["mean"][key] == pytest.approx(evaluate_run(run, qrels, k_values=(1, 10, 100))), key
        # ...and the subset scores are those of the subset's queries, from the same matrix.
        subset = evaluate_run(
            {i: run[i] for i in chosen}, {i: qrels[i] for i in chosen}, k_values=(1, 10, 100)
        )
        assert result["subset_mean"][key] == pytest.approx(subset), key
    ratio = ratio_to_gte(result, "l2vg-gen-docs")
    assert ratio is not None and ratio["n_queries"] == 2
    per = result["subset_per_query_ndcg@10"]
    assert set(per["generate-then-encode"]) == chosen == set(per["l2vg-gen-docs"])
    gte_total = sum(per["generate-then-encode"].values())
    # The interval is paired over the subset's queries; without a denominator there is none.
    assert (ratio["ndcg@10_ci95"] is None) == (gte_total == 0)


def test_cli_qa_bm25_and_report(tmp_path: Path) -> None:
    perl, py = make_trees(tmp_path / "src")
    qd.main(["--perl-doc", str(perl), "--python-doc", str(py), "--out", str(tmp_path / "set")])
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "bench",
            "qa",
            "--models",
            "bm25",
            "--data",
            str(tmp_path / "set"),
            "--out-dir",
            str(tmp_path / "r"),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "r" / "qa.json").read_text())
    assert data["meta"]["command"] and data["meta"]["machine"]["cpu"]
    assert data["mean"]["bm25"]["mrr"] == 1.0 and data["model"] is None
    assert data["instruction"] == "Given a question, retrieve passages that answer the question:"
    report = write_report(tmp_path / "r", tmp_path / "docs")
    text = report.read_text()
    assert "## QA retrieval" in text and "benchmarks_qa.png" in text
    # BM25 ranks every fixture answer first: a mean of 1 with no spread, reported as such.
    assert data["ci95"]["mean_ndcg@10"]["bm25"] == [1.0, 1.0]
    assert "1.000 (1.000–1.000)" in text and "95% bootstrap interval" in text
    assert (tmp_path / "docs" / "benchmarks_qa.png").stat().st_size > 0
    bad = runner.invoke(app, ["bench", "qa", "--models", "bm25", "--data", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2
