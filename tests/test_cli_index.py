"""`l2vg index` / `l2vg search` through the real typer app, real embedded Qdrant, tiny encoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import build_tiny_encoder
from typer.testing import CliRunner

from l2vg_retrieval import cli_index
from l2vg_retrieval.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def tiny(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Serve the tiny encoder where the CLI would load a checkpoint (seed picks the 'model')."""
    encoders = {"0": build_tiny_encoder(), "1": build_tiny_encoder(seed=1)}
    monkeypatch.setattr(cli_index, "_load_encoder", lambda model, dtype, mode: encoders[model or "0"])
    return encoders


def run(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def test_folder_index_is_resumable_and_reports_bad_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("Bread needs flour, water and yeast.")
    (corpus / "sub" / "b.md").write_text("# Planets\nJupiter is the largest planet.")
    (corpus / "empty.txt").write_text("  \n")
    (corpus / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    (corpus / "ignored.pdf").write_bytes(b"%PDF")
    db = tmp_path / "db"
    first = run("index", corpus, "-c", "docs", "--path", db, "--json")
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)
    assert (data["indexed"], data["skipped_invalid"], data["count"]) == (2, 2, 2)
    assert {d["ref"] for d in data["invalid"]} == {"empty.txt", "binary.txt"}
    again = json.loads(run("index", corpus, "-c", "docs", "--path", db, "--json").stdout)
    assert (again["indexed"], again["skipped_existing"], again["count"]) == (0, 2, 2)
    strict = run("index", corpus, "-c", "docs", "--path", db, "--strict", "--json")
    assert strict.exit_code == 1

    hits = json.loads(
        run("search", "what is the biggest planet", "-c", "docs", "--path", db, "--json").stdout
    )
    assert {h["id"] for h in hits["hits"]} == {"a.txt", "sub/b.md"}
    assert hits["blocked"] is False
    table = run("search", "bread", "-c", "docs", "--path", db, "-k", "1")
    assert table.exit_code == 0 and "score" in table.stdout


def test_jsonl_and_csv_sources_with_filters(tmp_path: Path) -> None:
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        "\n".join(
            [
                json.dumps({"id": "j1", "text": "Jupiter has many moons.", "topic": "space"}),
                json.dumps(
                    {"id": "j2", "text": "Knead the dough for ten minutes.", "metadata": {"topic": "food"}}
                ),
                "{not json",
                json.dumps(["a", "list"]),
                json.dumps({"id": "j5", "body": "no text field"}),
                "",
            ]
        )
    )
    db = tmp_path / "db"
    res = json.loads(run("index", jsonl, "-c", "mixed", "--path", db, "--json").stdout)
    assert (res["indexed"], res["skipped_invalid"]) == (2, 3)
    assert any("invalid JSON" in d["reason"] for d in res["invalid"])

    csv_file = tmp_path / "docs.csv"
    csv_file.write_text(
        'id,text,topic,year\nc1,"Mars is red, and dusty.",space,2001\nc2,Roses need pruning.,garden,2005\n'
    )
    res = json.loads(run("index", csv_file, "-c", "mixed", "--path", db, "--json").stdout)
    assert res["indexed"] == 2 and res["count"] == 4

    out = run(
        "search", "anything", "-c", "mixed", "--path", db, "--filter", "topic=space", "-k", "10", "--json"
    )
    hits = json.loads(out.stdout)["hits"]
    assert {h["id"] for h in hits} == {"j1", "c1"} and all(h["metadata"]["topic"] == "space" for h in hits)
    assert hits[0]["text"]
    # CSV values stay strings; JSONL ones keep their JSON types.
    out = run("search", "x", "-c", "mixed", "--path", db, "--filter", 'year="2005"', "--json")
    assert [h["id"] for h in json.loads(out.stdout)["hits"]] == ["c2"]

    custom = tmp_path / "custom.jsonl"
    custom.write_text(json.dumps({"key": "k1", "body": "custom fields work"}) + "\n")
    res = run(
        "index", custom, "-c", "mixed", "--path", db, "--text-field", "body", "--id-field", "key", "--json"
    )
    assert json.loads(res.stdout)["indexed"] == 1


def test_exit_codes(tmp_path: Path) -> None:
    db = tmp_path / "db"
    assert run("index", tmp_path / "missing", "-c", "x", "--path", db).exit_code == 2
    (tmp_path / "f.pdf").write_bytes(b"%PDF")
    assert run("index", tmp_path / "f.pdf", "-c", "x", "--path", db).exit_code == 2
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("id,body\n1,hello\n")
    assert run("index", bad_csv, "-c", "x", "--path", db).exit_code == 2
    assert run("search", "q", "-c", "nothing-here", "--path", db).exit_code == 2
    assert run("search", "  ", "-c", "x", "--path", db).exit_code == 2
    assert run("search", "q", "-c", "x", "--path", db, "--filter", "no-equals-sign").exit_code == 2
    assert run("search", "q", "-c", "x", "--path", db, "-k", "0").exit_code == 2

    good = tmp_path / "g.txt"
    good.write_text("a document")
    assert run("index", good, "-c", "enc0", "--path", db).exit_code == 0
    # Another encoder (seed 1) against the collection built by seed 0: refused with exit 3.
    mismatch = run("search", "q", "-c", "enc0", "--path", db, "--model", "1")
    assert mismatch.exit_code == 3 and "fingerprint" in mismatch.output
    assert run("index", good, "-c", "enc0", "--path", db, "--model", "1").exit_code == 3
    assert run("index", good, "-c", "enc0", "--path", db, "--url", "http://localhost:6333").exit_code == 2
