"""Which names mean an LLM2Vec checkpoint, and where that checkpoint is on disk.

Accepted forms (anywhere a teacher name is taken, e.g. ``encoder.teacher`` in a config):

- ``llm2vec``: the packaged checkpoint (``l2vg_retrieval/checkpoints/llm2vec``);
- ``llm2vec:<folder>``: a checkpoint folder written by ``l2vg llm2vec train``;
- ``llm2vec:<org>/<name>``: the same folder published on the Hugging Face hub (downloaded
  with ``huggingface_hub`` for users who are online);
- a bare folder path whose folder holds ``llm2vec_config.json``.
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "llm2vec:"
SHORT_NAME = "llm2vec"
META_FILE = "llm2vec_config.json"
DEFAULT_LLM2VEC_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "llm2vec"


def is_llm2vec_reference(name: str) -> bool:
    if not isinstance(name, str):
        return False
    if name.lower() == SHORT_NAME or name.lower().startswith(PREFIX):
        return True
    try:
        return (Path(name).expanduser() / META_FILE).is_file()
    except OSError:
        return False


def resolve_llm2vec(name: str) -> Path:
    """The local checkpoint folder for ``name`` (downloading a hub id); clear errors otherwise."""
    from ..backbones import MissingAssetError

    if not is_llm2vec_reference(name):
        raise ValueError(f"{name!r} does not name an LLM2Vec checkpoint (use 'llm2vec:<folder>')")
    target = name[len(PREFIX) :] if name.lower().startswith(PREFIX) else name
    if target.lower() == SHORT_NAME or not target:
        folder = DEFAULT_LLM2VEC_CHECKPOINT
        if not (folder / META_FILE).is_file():
            raise MissingAssetError(
                f"no packaged LLM2Vec checkpoint at {folder}; train one with "
                "`l2vg llm2vec train configs/llm2vec.yaml` and name it 'llm2vec:<output_dir>/final'"
            )
        return folder
    path = Path(target).expanduser()
    if path.exists() or target.startswith((".", "/", "~")) or target.count("/") != 1:
        if not (path / META_FILE).is_file():
            raise MissingAssetError(f"no LLM2Vec checkpoint at {path} ({META_FILE} is missing)")
        return path
    return _download(target)


def _download(repo_id: str) -> Path:
    from ..backbones import MissingAssetError

    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id))
    except Exception as exc:  # offline, unknown repo, no permission: all mean "not available"
        raise MissingAssetError(
            f"cannot fetch the LLM2Vec checkpoint '{repo_id}' from the hub: {exc}"
        ) from exc
    if not (folder / META_FILE).is_file():
        raise MissingAssetError(
            f"hub repo '{repo_id}' is not an l2vg LLM2Vec checkpoint ({META_FILE} missing)"
        )
    return folder
