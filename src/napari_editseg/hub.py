"""Where a model comes from: known hub ids, the first download, and what exactly was loaded.

Qt-free. The widget downloads through :func:`download` (so the bytes show in napari's
activity dock and a cancel stops them) before loading from the cache; records name a model
by :func:`model_identity`, which a replay checks against.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Iterator, Optional

from .core.backbones import families
from .core.model import (
    HUB_TIMEOUT,
    EditingModel,
    ModelNotAvailableError,
    _looks_like_path,
    hub_unreachable,
)


def known_models() -> dict[str, str]:
    """Editing models in diffusers layout, by hub id, with a title, as the registered families list
    them (``EditingModel.known_models``), in registry order; any other id or folder of a registered
    pipeline class loads too (see core/backbones)."""
    return {model: title for family in families() for model, title in family.known_models.items()}


class _KnownModels(Mapping):
    """:func:`known_models` as a read-only mapping, read afresh each time (a family registered later shows)."""

    def __getitem__(self, model: str) -> str:
        return known_models()[model]

    def __iter__(self) -> Iterator[str]:
        return iter(known_models())

    def __len__(self) -> int:
        return len(known_models())


KNOWN_MODELS: Mapping[str, str] = _KnownModels()  # what the widget's model list shows


def components() -> tuple[str, ...]:
    """The pipeline components the registered families load (a repository holds the ones its pipeline names)."""
    return tuple(dict.fromkeys(part for family in families() for part in family.components))


def is_folder(model: str) -> bool:
    """True when ``model`` names a folder rather than a hub id."""
    return _looks_like_path(str(model))


def cached_revision(repo_id: str) -> Optional[str]:
    """The commit of ``repo_id`` the Hugging Face cache holds (what loading by id uses), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "model_index.json")
    return Path(found).parent.name if isinstance(found, str) else None


def needed_files(files: list[str]) -> list[str]:
    """Of a repository's files, those loading the editing model reads: configs and tokenizer files of
    the components, and one weights file each (safetensors over .bin, no fp16/ema variants; every
    shard of a sharded one)."""
    wanted = ["model_index.json"]
    for component in components():
        inside = [f for f in files if f.startswith(component + "/") and f.count("/") == 1]
        wanted += [f for f in inside if f.endswith((".json", ".txt", ".model"))]
        weights = [f for f in inside if f.endswith((".safetensors", ".bin")) and f.count(".") == 1]
        safetensors = [f for f in weights if f.endswith(".safetensors")]
        wanted += safetensors or weights
    return [f for f in wanted if f in files]


class DownloadCancelled(Exception):
    """The user stopped a download; the files fetched so far stay in the cache for next time."""


def progress_bridge(report: Callable[[tuple[str, int, int]], None], cancelled: threading.Event) -> type:
    """A tqdm class for :func:`download` that reports ``(file, bytes done, bytes total)`` instead of
    printing, and stops the download (:class:`DownloadCancelled`) once ``cancelled`` is set."""
    from tqdm.auto import tqdm

    class Bridge(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.update(disable=False, file=io.StringIO())
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if cancelled.is_set():
                raise DownloadCancelled(self.desc)
            super().update(n)
            report((str(self.desc), int(self.n), int(self.total or 0)))

    return Bridge


def download(repo_id: str, tqdm_class=None) -> str:
    """Fetch what :func:`needed_files` lists into the Hugging Face cache; return the commit.

    ``tqdm_class`` gets one bar per file (bytes); a bar that raises stops the download, and
    the next call resumes it. Files already in the cache are not fetched again.
    """
    from huggingface_hub import HfApi, hf_hub_download

    info = HfApi().model_info(repo_id, timeout=HUB_TIMEOUT)  # asked once: no retries when it does not answer
    files = needed_files([s.rfilename for s in info.siblings or []])
    if "model_index.json" not in files:
        raise ValueError(f"{repo_id!r} on the Hugging Face hub is not a diffusers model (no model_index.json)")
    for name in files:  # on the default branch, so that loading by id finds them (refs/main)
        hf_hub_download(repo_id, name, tqdm_class=tqdm_class)
    return cached_revision(repo_id) or info.sha


def folder_hash(folder: str) -> str:
    """sha256 over every file of a model folder (relative path and bytes), in path order."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(root).parts)):
        digest.update(str(path.relative_to(root).as_posix()).encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def model_identity(model: EditingModel) -> dict:
    """What a record names: the id or folder, and the hub commit or the folder's content hash."""
    source = str(model.source)
    if os.path.isdir(source):
        return {"id": source, "revision": None, "folder_sha256": folder_hash(source)}
    return {"id": source, "revision": cached_revision(source), "folder_sha256": None}


def check_identity(recorded: dict, loaded: dict) -> None:
    """A ValueError when the loaded model is not the one a record was made with."""
    for key, what in (("folder_sha256", "the model folder's content"), ("revision", "the model's hub revision")):
        if recorded.get(key) and recorded[key] != loaded.get(key):
            raise ValueError(f"{what} differs from the record's: recorded {recorded[key]}, found {loaded.get(key)} "
                             f"for {loaded['id']!r}")


def not_available_message(model: str) -> str:
    """What the widget says when a model can be neither found nor fetched (GUI words, not CLI flags)."""
    if is_folder(model):
        return f"The model folder {model!r} does not exist. Choose 'local folder…' under model to pick another."
    return (f"Model {model!r} is not on this computer and could not be downloaded (no internet, or the hub is "
            "unreachable). Connect and press Load model again, or choose 'local folder…' under model to use "
            "a downloaded copy; the Shapes demo in the model list works offline (on the shapes sample).")


__all__ = ["KNOWN_MODELS", "DownloadCancelled", "ModelNotAvailableError", "cached_revision", "check_identity",
           "components", "download", "folder_hash", "hub_unreachable", "is_folder", "known_models", "model_identity",
           "needed_files",
           "not_available_message", "progress_bridge"]
