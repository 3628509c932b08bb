"""Results files: one JSON per benchmark, with the machine, versions and command that made it."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

DEFAULT_RESULTS_DIR = Path("benchmarks") / "results"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import torch

    # Cores this process may use (a container or taskset can restrict them below the total).
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores_total": os.cpu_count(),
        "cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            p: _version(p) for p in ("l2vg-retrieval", "torch", "transformers", "mteb", "rank-bm25", "numpy")
        },
    }


def portable_path(path: str | Path) -> str:
    """A path as results files record it: package-relative for the package's own data and
    checkpoints (``l2vg_retrieval/...``), relative to the working directory when under it,
    never the absolute path of the machine that made the file."""
    resolved = Path(path).resolve()
    package_parent = Path(__file__).resolve().parents[2]
    for base in (package_parent, Path.cwd().resolve()):
        if resolved.is_relative_to(base):
            return resolved.relative_to(base).as_posix()
    return Path(path).name


def portable_model_name(name: str) -> str:
    """A model named by folder (``/abs/dir`` or ``llm2vec:/abs/dir``) as results name data;
    short names and hub ids unchanged."""
    from ..llm2vec.reference import PREFIX

    prefix = PREFIX if name.lower().startswith(PREFIX) else ""
    target = name[len(prefix) :]
    return prefix + portable_path(target) if Path(target).is_absolute() else name


def portable_tree(value: Any) -> Any:
    """A JSON-like value (a dumped config) with every absolute path string in it replaced
    by its :func:`portable_path`, so configs copied into cards and checkpoints name no machine."""
    if isinstance(value, dict):
        return {k: portable_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_tree(v) for v in value]
    if isinstance(value, str) and Path(value).is_absolute():
        return portable_path(value)
    return value


def invoked_command() -> str:
    """The command line as the user typed it (``l2vg bench ...`` rather than a script path)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("l2vg", "l2vg.exe"):
        argv[0] = "l2vg"
    elif argv and argv[0].endswith(".py"):
        argv = ["python", *argv]
    return shlex.join(argv)


def write_results(name: str, payload: dict[str, Any], out_dir: str | Path = DEFAULT_RESULTS_DIR) -> Path:
    """Write ``<out_dir>/<name>.json`` with ``meta`` (machine, command, timestamp) added."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "meta": {
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": invoked_command(),
            "machine": machine_info(),
        },
        **payload,
    }
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_results(out_dir: str | Path = DEFAULT_RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """All results JSON in a folder, keyed by file stem (``harmful``, ``harmful_llm2vec``);
    each dict also carries it as ``results_name``. Unreadable files are an error.

    Not by the ``benchmark`` field: two runs of one harness can record the same descriptive
    name, and the later file used to replace the earlier in the report."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(out_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        found[path.stem] = {**data, "results_name": path.stem}
    return found
