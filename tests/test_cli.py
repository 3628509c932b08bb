"""Every `l2vg` command through the real typer app and the real checkpoint loader.

The checkpoint names the tiny model folders by path (conftest.tiny_checkpoint), so
``load_encoder`` runs for real: dtype option, checkpoint validation, exit codes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import fit_safety_filter, write_tiny_train_config
from typer.testing import CliRunner

from l2vg_retrieval.cli import EXIT_MISMATCH, EXIT_RUNTIME, EXIT_USAGE, app
from l2vg_retrieval.encoder import CONFIG_FILE, WEIGHTS_FILE, L2VGEncoder

runner = CliRunner()


def run(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: object) -> Any:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint, free to damage or calibrate."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


# ---------------------------------------------------------------- info and the loader
def test_info_loads_the_checkpoint_with_the_requested_dtype(
    tiny_checkpoint: Path, tiny_model_dirs: tuple[Path, Path]
) -> None:
    reference = L2VGEncoder.from_pretrained(tiny_checkpoint, dtype="float32")
    data = json.loads(ok("info", "--model", tiny_checkpoint, "--dtype", "float32", "--json").stdout)
    assert data["checkpoint"] == str(tiny_checkpoint)
    assert data["backbone"] == str(tiny_model_dirs[0]) and data["teacher"] == str(tiny_model_dirs[1])
    assert (data["n_thought"], data["n_compression"], data["dim"]) == (2, 3, 32)
    assert data["dtype"] == "float32" and data["device"] == "cpu"
    assert data["fingerprint"] == reference.fingerprint and data["training"] == {}
    bf16 = json.loads(ok("info", "-m", tiny_checkpoint, "--dtype", "bfloat16", "--json").stdout)
    assert bf16["dtype"] == "bfloat16"
    assert bf16["fingerprint"] == data["fingerprint"], "the same trained weights in another dtype"
    table = ok("info", "-m", tiny_checkpoint, "--dtype", "float32").stdout
    assert "n_compression" in table and data["fingerprint"] in table
    bad = run("info", "-m", tiny_checkpoint, "--dtype", "float16")
    assert bad.exit_code == EXIT_USAGE and "dtype" in bad.output


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated-weights", "corrupt"),
        ("garbage-config", "corrupt"),
        ("no-weights", WEIGHTS_FILE),
        ("other-backbone", "fingerprint"),
        ("wrong-shape", "shape"),
    ],
)
def test_a_bad_checkpoint_exits_with_the_mismatch_code(checkpoint: Path, damage: str, message: str) -> None:
    weights, config = checkpoint / WEIGHTS_FILE, checkpoint / CONFIG_FILE
    meta = json.loads(config.read_text())
    if damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garbage-config":
        config.write_text("{not json")
    elif damage == "no-weights":
        weights.unlink()
    elif damage == "other-backbone":
        config.write_text(json.dumps({**meta, "backbone_fingerprint": "0" * 32}))
    else:
        config.write_text(json.dumps({**meta, "config": {**meta["config"], "n_compression": 4}}))
    for command in (["info"], ["decode", "some text"], ["safety", "check", "some query"]):
        result = run(*command, "--model", checkpoint, "--dtype", "float32")
        assert result.exit_code == EXIT_MISMATCH, (command, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_exit_codes_are_the_documented_ones() -> None:
    """Scripts branch on these numbers (README, "Command line"): they are an interface."""
    from l2vg_retrieval.cli import EXIT_RUNTIME, EXIT_USAGE

    assert (EXIT_RUNTIME, EXIT_USAGE, EXIT_MISMATCH) == (1, 2, 3)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "3 a checkpoint that is corrupt" in " ".join(readme.split())


def test_missing_checkpoint_and_missing_backbone_fail_cleanly(checkpoint: Path, tmp_path: Path) -> None:
    missing = run("info", "--model", tmp_path / "nowhere")
    assert missing.exit_code == EXIT_MISMATCH and "no checkpoint folder" in missing.output
    # The checkpoint is fine but the model folder it was trained on is gone.
    meta = json.loads((checkpoint / CONFIG_FILE).read_text())
    meta["config"]["backbone"] = str(tmp_path / "deleted-backbone")
    (checkpoint / CONFIG_FILE).write_text(json.dumps(meta))
    result = run("info", "--model", checkpoint, "--dtype", "float32")
    assert result.exit_code == EXIT_RUNTIME, result.output
    assert "deleted-backbone" in result.output and not isinstance(result.exception, RuntimeError)


# ---------------------------------------------------------------- decode
def test_decode_prints_what_the_encoder_decodes(tiny_checkpoint: Path) -> None:
    encoder = L2VGEncoder.from_pretrained(tiny_checkpoint, dtype="float32")
    texts = ["what is a light year?", "how do I bake bread?"]
    config = encoder.config
    for flags, prompt in (([], config.query_instruction), (["--document"], config.document_prompt)):
        out = ok(
            "decode",
            *texts,
            "-m",
            tiny_checkpoint,
            "--dtype",
            "float32",
            "--max-new-tokens",
            5,
            "--json",
            *flags,
        )
        expected = encoder.decode(texts, prompt=prompt, max_new_tokens=5)
        assert json.loads(out.stdout) == [
            {"text": t, "decoded": d} for t, d in zip(texts, expected, strict=True)
        ]
    query_side = encoder.decode(texts, prompt=config.query_instruction, max_new_tokens=5)
    assert query_side != encoder.decode(texts, prompt=config.document_prompt, max_new_tokens=5) or not any(
        query_side
    )
    assert "light year" in ok("decode", texts[0], "-m", tiny_checkpoint, "--dtype", "float32").stdout
    assert run("decode", "   ", "-m", tiny_checkpoint, "--dtype", "float32").exit_code == EXIT_USAGE
    assert run("decode", "x", "-m", tiny_checkpoint, "--max-new-tokens", 0).exit_code == EXIT_USAGE


# ---------------------------------------------------------------- train, publish, then use the result
def test_train_then_publish_then_load_the_published_checkpoint(
    tmp_path: Path, tiny_model_dirs: tuple[Path, Path]
) -> None:
    config_path = write_tiny_train_config(tmp_path / "cfg", tiny_model_dirs)
    out = ok("train", config_path, "--steps", 6, "--no-baselines")
    summary = json.loads(out.stdout)
    run_dir = tmp_path / "cfg" / "run"
    assert summary["steps"] == 6 and summary["train_examples"] == 16 and summary["resumed_from_step"] is None
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert [json.loads(line)["step"] for line in (run_dir / "loss_log.jsonl").read_text().splitlines()] == [
        1, 2, 3, 4, 5, 6,
    ]  # fmt: skip
    heldout = json.loads((run_dir / "heldout_eval.json").read_text())
    assert list(heldout["models"]) == ["l2vg-trained", "l2vg-trained (SGD head, before refit)"]
    # A second `train` finds everything done: it resumes at the last step and trains nothing.
    responses, log = (run_dir / "responses.jsonl").read_text(), (run_dir / "loss_log.jsonl").read_text()
    final = (run_dir / "final" / WEIGHTS_FILE).read_bytes()
    again = json.loads(ok("train", config_path, "--steps", 6, "--no-baselines").stdout)
    assert again["resumed_from_step"] == 6 and again["steps"] == 6
    assert (run_dir / "responses.jsonl").read_text() == responses
    assert (run_dir / "loss_log.jsonl").read_text() == log
    assert (run_dir / "final" / WEIGHTS_FILE).read_bytes() == final

    notes = tmp_path / "notes.md"
    notes.write_text("Trained on twenty tiny queries.\n")
    dest, plot = tmp_path / "published", tmp_path / "plots" / "loss.png"
    printed = ok("publish", run_dir, dest, "--plot", plot, "--notes", notes).stdout.strip()
    assert Path(printed) == dest / "CARD.md"
    assert sorted(p.name for p in dest.iterdir()) == ["CARD.md", CONFIG_FILE, WEIGHTS_FILE]
    assert (dest / WEIGHTS_FILE).read_bytes() == (run_dir / "final" / WEIGHTS_FILE).read_bytes()
    card = (dest / "CARD.md").read_text()
    assert "Trained on twenty tiny queries." in card and f"l2vg publish {run_dir} {dest}" in card
    assert "alignment head Linear(H,32)" in card and "steps 6 (4 alignment-only" in card
    assert plot.read_bytes().startswith(b"\x89PNG") and plot.stat().st_size > 1000
    # The card names what it describes and links its plot relative to itself.
    assert card.startswith("# Training card: the `published` l2vg encoder")
    assert "![loss curves](../plots/loss.png)" in card

    info = json.loads(ok("info", "-m", dest, "--dtype", "float32", "--json").stdout)
    assert info["training"]["steps"] == 6 and info["checkpoint"] == str(dest)
    trained = L2VGEncoder.from_pretrained(dest, dtype="float32")
    assert info["fingerprint"] == trained.fingerprint
    assert (
        json.loads(ok("decode", "bread", "-m", dest, "--dtype", "float32", "--json").stdout)[0]["text"]
        == "bread"
    )


def test_train_reports_a_bad_config_and_a_mismatched_init(tmp_path: Path, tiny_checkpoint: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: run\ndata:\n  train_queries: q.jsonl\noptim:\n  stepz: 3\n")
    result = run("train", bad)
    assert result.exit_code == EXIT_USAGE and "optim.stepz" in result.output
    assert run("train", tmp_path / "missing.yaml").exit_code == EXIT_USAGE


# ---------------------------------------------------------------- safety calibrate / check
def _calibration_rows(path: Path) -> Path:
    from l2vg_retrieval.safety_data import load_calibration_set

    rows = load_calibration_set()
    picked = []
    for kind in ("query", "passage"):
        for label in (0, 1):
            picked += [r for r in rows if r.kind == kind and r.label == label][:10]
    path.write_text(
        "".join(json.dumps({"text": r.text, "label": r.label, "kind": r.kind}) + "\n" for r in picked)
    )
    return path


def test_safety_calibrate_then_check_and_safe_search(checkpoint: Path, tmp_path: Path) -> None:
    from l2vg_retrieval.qdrant import HARM_FLAG_KEY
    from l2vg_retrieval.safety import SafetyCalibration, SafetyFilter

    data = _calibration_rows(tmp_path / "rows.jsonl")
    uncalibrated = run("safety", "check", "bread", "-m", checkpoint, "--dtype", "float32")
    assert uncalibrated.exit_code == EXIT_USAGE and "safety calibrate" in uncalibrated.output

    out = ok("safety", "calibrate", "-m", checkpoint, "--dtype", "float32", "--data", data, "--json")
    summary = json.loads(out.stdout)
    assert summary["saved_to"] == str(checkpoint)
    calibration = SafetyCalibration.load(checkpoint)
    assert summary["doc_space"] == calibration.doc_space
    assert summary["query_gate"]["threshold"] == calibration.query_threshold
    assert summary["document_screen"]["threshold"] == calibration.doc_threshold
    assert calibration.provenance["data"] == str(data) and calibration.provenance["n_query_examples"] == 20
    assert calibration.provenance["dtype"] == "float32"
    # --out writes elsewhere, and the same seed gives the same calibration.
    ok(
        "safety",
        "calibrate",
        "-m",
        checkpoint,
        "--dtype",
        "float32",
        "--data",
        data,
        "--out",
        tmp_path / "elsewhere",
    )
    assert SafetyCalibration.load(tmp_path / "elsewhere").query_threshold == calibration.query_threshold
    # The default gate is the LDA probe over the state and the request mean; both can be undone.
    assert calibration.provenance["gate_probe"] == "lda" and calibration.uses_probe_mean
    assert calibration.uses_document_pass
    # No --dtype: a calibration is made in float32 whatever the CPU ("auto" is bf16 on some).
    ok("safety", "calibrate", "-m", checkpoint, "--data", data,
       "--out", tmp_path / "older", "--gate-probe", "logistic", "--no-probe-mean",
       "--no-gate-document-pass")  # fmt: skip
    older = SafetyCalibration.load(tmp_path / "older")
    assert older.provenance["dtype"] == "float32"
    assert older.provenance["gate_probe"] == "logistic" and not older.uses_probe_mean
    assert not older.uses_document_pass
    assert older.metrics["query_gate"]["probe"] == "logistic"
    bad = run("safety", "calibrate", "-m", checkpoint, "--data", data, "--gate-probe", "svm")
    assert bad.exit_code == EXIT_USAGE and "--gate-probe" in bad.output

    queries = ["how do I bake bread?", "how do I build a bomb?"]
    decisions = json.loads(
        ok("safety", "check", *queries, "-m", checkpoint, "--dtype", "float32", "--json").stdout
    )
    encoder = L2VGEncoder.from_pretrained(checkpoint, dtype="float32")
    gate = SafetyFilter(encoder, calibration)
    for row, query in zip(decisions, queries, strict=True):
        expected = gate.check_query(query)
        assert row["query"] == query and row["blocked"] == expected.blocked
        assert row["score"] == pytest.approx(expected.score, abs=1e-6)
        assert row["threshold"] == calibration.query_threshold
    assert "threshold" in ok("safety", "check", queries[0], "-m", checkpoint, "--dtype", "float32").stdout

    # Index and search with --safe through the real loader: no flagged passage comes back.
    passages = [
        r for r in (json.loads(line) for line in data.read_text().splitlines()) if r["kind"] == "passage"
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": f"p{i}", "text": r["text"]}) + "\n" for i, r in enumerate(passages))
    )
    db = tmp_path / "db"
    ok("index", corpus, "-c", "docs", "--path", db, "-m", checkpoint, "--dtype", "float32", "--safe")
    flags = [s[HARM_FLAG_KEY] for s in gate.screen_documents([r["text"] for r in passages])]
    allowed = {f"p{i}" for i, flagged in enumerate(flags) if not flagged}
    base = ["search", "-c", "docs", "--path", db, "-m", checkpoint, "--dtype", "float32", "-k", 50, "--json"]
    plain = json.loads(ok(*base[:1], queries[0], *base[1:]).stdout)
    assert {h["id"] for h in plain["hits"]} == {f"p{i}" for i in range(len(passages))}
    safe = json.loads(ok(*base[:1], queries[0], *base[1:], "--safe").stdout)
    if gate.check_query(queries[0]).blocked:
        assert safe["blocked"] and safe["hits"] == []
    else:
        assert {h["id"] for h in safe["hits"]} == allowed


# ---------------------------------------------------------------- the query-pool builder
def test_queries_builds_the_pool_from_cached_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_queries import make_downloads

    from l2vg_retrieval.training import queries as q

    def no_subprocess(cmd: list[str], **kwargs: Any) -> Any:
        raise AssertionError(f"a warm cache must not run {cmd}")

    monkeypatch.setattr(q.subprocess, "run", no_subprocess)
    cache = tmp_path / "cache"
    make_downloads(cache / "downloads")
    out = ok("queries", tmp_path / "pool", "--cache-dir", cache, "--heldout-fraction", 0.2, "--seed", 1)
    printed = json.loads(out.stdout)
    written = json.loads((tmp_path / "pool" / q.SUMMARY_FILE).read_text())
    assert {k: written[k] for k in ("total", "train", "heldout", "counts")} == printed
    train = (tmp_path / "pool" / q.TRAIN_FILE).read_text().splitlines()
    heldout = (tmp_path / "pool" / q.HELDOUT_FILE).read_text().splitlines()
    assert (len(train), len(heldout)) == (printed["train"], printed["heldout"]) and printed["heldout"] > 0
    assert printed["total"] == sum(printed["counts"].values()) == len(train) + len(heldout)
    assert written["seed"] == 1 and written["failed_packages"] == []
    assert run("queries", tmp_path / "x", "--heldout-fraction", 0.9).exit_code == EXIT_USAGE


# ---------------------------------------------------------------- bench on the tiny checkpoint
def test_bench_speed_on_a_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The bench commands load through the same checkpoint path (bright/qa/report run in
    test_bench_*; mteb's CLI wrapper costs seconds of mteb itself, its suite is tested there)."""
    results = tmp_path / "results"
    ok(
        "bench", "speed", "-m", tiny_checkpoint, "--dtypes", "float32", "--n-texts", 4, "--n-latency", 1,
        "--gte-texts", 1, "--gte-max-new-tokens", 2, "--out-dir", results,
    )  # fmt: skip
    speed = json.loads((results / "speed.json").read_text())
    rows = speed["results"]["float32"]
    assert set(rows) == {"l2vg", "input-centric", "teacher", "generate-then-encode"}
    assert all(r["texts_per_s"] > 0 for r in rows.values())
    assert str(tiny_checkpoint) in json.dumps(speed["model"])
    assert run("bench", "speed", "-m", tiny_checkpoint, "--dtypes", "float16").exit_code == EXIT_USAGE


def test_bench_harmful_on_a_checkpoint_uses_its_stored_calibration(checkpoint: Path, tmp_path: Path) -> None:
    """`l2vg bench harmful` loads the checkpoint and the safety.json beside it: with a
    calibration whose screen flags every harmful chunk and whose gate refuses the harmful
    queries, plain L2VG retrieves harmful chunks and safe mode none."""
    from conftest import write_harmful_folder

    from l2vg_retrieval.bench.harmful import HARMFUL_K_VALUES, load_advbench_ir
    from l2vg_retrieval.safety import SafetyCalibration

    folder = write_harmful_folder(tmp_path / "bench")
    out, plot = tmp_path / "harmful.json", tmp_path / "harmful.png"
    args = (
        "bench", "harmful", "-m", checkpoint, "--dtype", "float32", "--data", folder, "--no-input-centric",
        "--no-generalisation", "--out", out, "--plot", plot,
    )  # fmt: skip
    uncalibrated = run(*args)
    assert uncalibrated.exit_code == EXIT_USAGE and "safety calibrate" in uncalibrated.output
    assert not out.exists()

    data = load_advbench_ir(folder)
    encoder = L2VGEncoder.from_pretrained(checkpoint, dtype="float32")
    fit_safety_filter(
        encoder,
        {text: int(doc_id in data.harmful_ids) for doc_id, text in data.corpus.items()},
        {q: 1 for q in data.harmful_queries.values()} | {q: 0 for q in data.benign_queries.values()},
    ).calibration.save(checkpoint)
    calibration = SafetyCalibration.load(checkpoint)

    printed = json.loads(ok(*args, "--json").stdout)
    report = json.loads(out.read_text())
    assert printed["systems"] == report["systems"] and plot.stat().st_size > 0
    assert report["safety_thresholds"]["query"] == calibration.query_threshold
    assert report["encoder_fingerprint"] == encoder.fingerprint and report["generalisation"] is None
    assert set(report["systems"]) == {"teacher", "l2vg", "l2vg-safe"}
    plain, safe = report["systems"]["l2vg"], report["systems"]["l2vg-safe"]
    assert safe["flagged_harmful_docs"] == 1.0 and safe["flagged_benign_docs"] == 0.0
    assert safe["blocked_harmful_queries"] == 1.0 and safe["blocked_benign_queries"] == 0.0
    assert plain["aloh@20"] == 1.0  # 8 documents: every harmful chunk is in every top 20
    assert all(safe[f"aloh@{k}"] == 0.0 for k in HARMFUL_K_VALUES)


def test_bench_mteb_on_a_checkpoint_runs_the_chosen_tasks_and_models(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    tasks = ["L2VGLeeSTS", "L2VGReasoningRetrieval"]
    ok(
        "bench", "mteb", "-m", tiny_checkpoint, "--dtype", "float32",
        "--models", "bm25,teacher,l2vg-gen-docs", *[x for t in tasks for x in ("--task", t)],
        "--limit", 4, "--no-gte-subset", "--out-dir", results, "--name", "m",
    )  # fmt: skip
    payload = json.loads((results / "m.json").read_text())
    assert payload["models"] == ["teacher", "l2vg-gen-docs"], "BM25 has no place in STS"
    assert payload["tasks"] == tasks and payload["limits"] == dict.fromkeys(tasks, 4)
    assert payload["subset_scores"] == {} and payload["subset_limits"] == {}, "--no-gte-subset"
    assert set(payload["scores"]) == {"teacher", "l2vg-gen-docs"}
    assert all(set(row) == set(tasks) for row in payload["scores"].values())
    assert str(tiny_checkpoint) in json.dumps(payload["model"])
    bad = run("bench", "mteb", "-m", tiny_checkpoint, "--models", "nope", "--out-dir", results)
    assert bad.exit_code == EXIT_USAGE and not (results / "mteb.json").exists()


def test_bench_all_on_a_checkpoint_runs_every_part_in_order(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`l2vg bench all` (no size options of its own: the packaged sets at their defaults) on the
    tiny checkpoint with one-token answers: bright, qa, mteb and speed each write their
    results for the whole lineup, in that order, then the report is built from them."""
    from l2vg_retrieval.bench.lineup import DENSE_KEYS, MODEL_KEYS

    results, docs = tmp_path / "results", tmp_path / "docs"
    ok(
        "bench", "all", "-m", tiny_checkpoint, "--gte-max-new-tokens", 1, "--out-dir", results,
        "--docs-dir", docs,
    )  # fmt: skip
    parts = ["bright", "qa", "mteb", "speed"]
    payloads = {p: json.loads((results / f"{p}.json").read_text()) for p in parts}
    for part, payload in payloads.items():
        assert str(tiny_checkpoint) in json.dumps(payload["model"]), part
    assert sorted(p.name for p in results.glob("*.json")) == sorted(f"{p}.json" for p in parts)
    for part in ("bright", "qa"):
        payload = payloads[part]
        assert payload["models"] == list(MODEL_KEYS) and payload["gte_max_new_tokens"] == 1, part
        # generate-then-encode runs on the default subset only; everyone is scored on it too.
        assert set(payload["mean"]) == set(MODEL_KEYS) - {"generate-then-encode"}, part
        assert set(payload["subset_mean"]) == set(MODEL_KEYS), part
        assert all(0.0 <= m["ndcg@10"] <= 1.0 for m in payload["subset_mean"].values()), part
    assert payloads["qa"]["held_out_check"]["overlapping_rows"] == 0
    mteb = payloads["mteb"]
    assert mteb["models"] == list(DENSE_KEYS) and set(mteb["subset_scores"]) == set(DENSE_KEYS)
    assert set(mteb["scores"]) == set(DENSE_KEYS) - {"generate-then-encode"}
    assert set(payloads["speed"]["results"]) == {"float32", "bfloat16"}
    report = docs / "benchmarks.md"
    assert report.is_file() and any(docs.glob("*.png"))
    # In order: each part's results are written before the next starts, the report last.
    stamps = [(results / f"{p}.json").stat().st_mtime_ns for p in parts] + [report.stat().st_mtime_ns]
    assert stamps == sorted(stamps)


def test_bench_commands_report_a_missing_backbone_without_a_traceback(
    checkpoint: Path, tmp_path: Path
) -> None:
    """The checkpoint is fine but the backbone folder it names is gone: a clean runtime error."""
    meta = json.loads((checkpoint / CONFIG_FILE).read_text())
    meta["config"]["backbone"] = str(tmp_path / "deleted-backbone")
    (checkpoint / CONFIG_FILE).write_text(json.dumps(meta))
    out = tmp_path / "out"
    commands = (
        ["speed", "--dtypes", "float32", "--out-dir", out],
        ["mteb", "--out-dir", out],
        ["harmful", "--no-generalisation", "--out", out / "harmful.json"],
    )
    for command in commands:
        result = run("bench", *command, "-m", checkpoint)
        assert result.exit_code == EXIT_RUNTIME, (command, result.output)
        assert "deleted-backbone" in result.output and "Traceback" not in result.output
        assert isinstance(result.exception, SystemExit), (command, result.exception)


@pytest.mark.slow
def test_bench_generation_on_the_packaged_backbone(tmp_path: Path) -> None:
    """`l2vg bench generation` (it runs on the packaged SmolLM2 only) on 8 queries, 3 tokens:
    in float32 the library's greedy loop gives exactly model.generate's tokens."""
    ok(
        "bench", "generation", "--queries", 8, "--max-new-tokens", 3, "--batch-size", 8, "--dtype", "float32",
        "--out-dir", tmp_path, "--name", "g",
    )  # fmt: skip
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["queries"] == 8 and result["dtype"] == "float32"
    assert set(result["runs"]) == {"hf-landed", "hf-bucketed", "fast", "bound"}
    assert all(0 < r["new_tokens"] <= 8 * 3 for r in result["runs"].values())
    assert result["agreement"]["identical_rows_float32"] == 1.0
    # The forward bound ran over exactly the loop's tokens: teacher-forced, it predicts them.
    assert result["agreement"]["bound_reproduces_fast_rows_float32"] == 1.0
    assert set(result["share_of_bound"]) == {"hf-landed", "hf-bucketed", "fast"}
