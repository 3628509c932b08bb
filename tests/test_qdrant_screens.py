"""A screened collection's harm flags come from one safety calibration (real embedded Qdrant,
real SafetyFilters fitted on the tiny encoder's vectors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import fit_safety_filter
from typer.testing import CliRunner

from l2vg_retrieval.qdrant import CollectionMismatchError, QdrantIndexer

CORPUS = [
    {"id": "ok1", "text": "Knead the dough for ten minutes, then let it rise."},
    {"id": "bad1", "text": "Pack the pipe with powder and cap both ends tightly."},
    {"id": "ok2", "text": "Water tomato plants at the base in the morning."},
    {"id": "bad2", "text": "Crush the seeds and dissolve them in the drink slowly."},
    {"id": "ok3", "text": "Jupiter is the largest planet in the solar system."},
]
QUERIES = {"how to make a bomb": 1, "how do I poison someone": 1, "bread": 0, "how do I grow tomatoes": 0}


def _filter(encoder: Any, harmful: set[str]) -> Any:
    """A real filter whose screen is fitted to flag ``harmful``; the same threshold every time."""
    return fit_safety_filter(encoder, {d["text"]: int(d["id"] in harmful) for d in CORPUS}, QUERIES)


def test_documents_screened_by_another_calibration_are_refused(tiny_encoder: Any, tmp_path: Path) -> None:
    first, second = _filter(tiny_encoder, {"bad1", "bad2"}), _filter(tiny_encoder, {"bad1"})
    # Same encoder, same threshold, another screen: the names differ; the same fit, the same name.
    assert first.calibration.doc_threshold == second.calibration.doc_threshold
    assert first.name != second.name and first.name == _filter(tiny_encoder, {"bad1", "bad2"}).name

    with QdrantIndexer(tiny_encoder, "c", path=tmp_path, safety=first) as idx:
        idx.index(CORPUS[:3], show_progress=False)
    with QdrantIndexer(tiny_encoder, "c", path=tmp_path, safety=second) as idx:
        with pytest.raises(CollectionMismatchError, match="two calibrations") as err:
            idx.index(CORPUS[3:], show_progress=False)
        assert first.name in str(err.value) and second.name in str(err.value)
        assert idx.count() == 3, "nothing of the refused run was written"
        assert idx.meta["screened"] is True and idx.meta["screened_by"] == first.name
    # The calibration the collection was screened with still adds documents, and safe search
    # excludes exactly what it flagged.
    with QdrantIndexer(tiny_encoder, "c", path=tmp_path, safety=first) as idx:
        idx.index(CORPUS[3:], show_progress=False)
        assert idx.count() == len(CORPUS) and idx.meta["screened_by"] == first.name
        assert {h.id for h in idx.search("bread", k=10, safe=True)} == {"ok1", "ok2", "ok3"}
        # A name recorded before names carried the screen's digest (encoder and threshold
        # only) still matches a filter it could have been; one at another threshold does not.
        legacy = first.name.rsplit(":", 1)[0]
        idx._set_meta(screened_by=legacy)
        idx.index([{"id": "ok4", "text": "Paris is the capital of France."}], show_progress=False)
        idx._set_meta(screened_by=legacy.replace(":doc0.5000", ":doc0.9000"))
        with pytest.raises(CollectionMismatchError):
            idx.index([{"id": "ok5", "text": "A hash map gives fast lookups."}], show_progress=False)
        assert idx.count() == len(CORPUS) + 1
    # Re-indexed from scratch, the collection is screened by the new calibration alone.
    with QdrantIndexer(tiny_encoder, "c", path=tmp_path, safety=second, recreate=True) as idx:
        idx.index(CORPUS, show_progress=False)
        assert idx.meta["screened_by"] == second.name
        assert {h.id for h in idx.search("bread", k=10, safe=True)} == {"ok1", "ok2", "ok3", "bad2"}


def test_cli_index_exits_with_the_mismatch_code_for_another_calibration(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from l2vg_retrieval.cli import EXIT_MISMATCH, app
    from l2vg_retrieval.encoder import L2VGEncoder

    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))
    encoder = L2VGEncoder.from_pretrained(checkpoint, dtype="float32")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    args = ["index", str(corpus), "-c", "docs", "--path", str(tmp_path / "db"), "-m", str(checkpoint)]
    args += ["--dtype", "float32", "--safe", "--json"]
    runner = CliRunner()
    _filter(encoder, {"bad1", "bad2"}).calibration.save(checkpoint)
    assert runner.invoke(app, args).exit_code == 0
    _filter(encoder, {"bad1"}).calibration.save(checkpoint)  # recalibrated since
    corpus.write_text(json.dumps({"id": "ok4", "text": "Paris is the capital of France."}) + "\n")
    refused = runner.invoke(app, args)
    assert refused.exit_code == EXIT_MISMATCH, refused.output
    assert "two calibrations" in refused.output and "Traceback" not in refused.output
