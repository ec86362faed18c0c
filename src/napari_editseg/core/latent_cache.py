"""A disk cache of image latents, so reopening a slide, a stack or a tile costs no VAE pass.

An entry is one picture's latents (small: 4×h/8×w/8) under a key made of the picture's content
(its float RGB bytes, which fixes the data, the tile and its scaling), the model (source, family,
dtype and a fingerprint of the VAE's weights) and the model input size. Files are written to a
temporary name and renamed into place, which is atomic on one file system, so two processes
that share the folder never read half a file; the least recently used entries are removed
beyond ``max_bytes``. The folder is the platform's cache folder (``platformdirs`` when installed,
else ``~/.cache``), under ``napari-editseg/latents``; ``NAPARI_EDITSEG_CACHE`` overrides it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

DEFAULT_MAX_BYTES = 2 * 2**30  # 2 GiB: about 8,000 latents of 512-pixel tiles


def cache_folder() -> Path:
    """Where latents are kept: ``$NAPARI_EDITSEG_CACHE``, else the platform's user cache folder."""
    if os.environ.get("NAPARI_EDITSEG_CACHE"):
        return Path(os.environ["NAPARI_EDITSEG_CACHE"])
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path.home() / ".cache" / "napari-editseg" / "latents"
    return Path(user_cache_dir("napari-editseg")) / "latents"


def model_identity(model) -> str:
    """A model's identity for the cache: its source, family and dtype, and its VAE's first weights
    (a folder retrained in place gives other latents, so its path alone is not enough)."""
    digest = hashlib.sha256(f"{model.source}|{model.family}|{model.dtype}".encode())
    vae = getattr(model.pipe, "vae", None)
    if vae is not None:
        for parameter in list(vae.parameters())[:4]:
            digest.update(parameter.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def picture_key(rgb: np.ndarray, model_id: str, size: tuple[int, int]) -> str:
    """The key of one picture (float RGB, as the model is given it) at model input ``size``."""
    digest = hashlib.sha256(f"{model_id}|{size}|{rgb.dtype.str}|{rgb.shape}".encode())
    digest.update(np.ascontiguousarray(rgb).data)
    return digest.hexdigest()


class LatentCache:
    """Latents on disk by :func:`picture_key`; size-capped, safe for two processes (see the module)."""

    def __init__(self, folder: Optional[os.PathLike] = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.folder = Path(folder) if folder is not None else cache_folder()
        self.max_bytes = max_bytes
        self.hits = self.misses = 0

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def get(self, key: str) -> Optional[torch.Tensor]:
        path = self._path(key)
        try:
            latents = torch.load(path, map_location="cpu", weights_only=True)
            os.utime(path)  # recently used: kept longest
        except (OSError, RuntimeError, EOFError):  # absent, removed by another process, or unreadable
            self.misses += 1
            return None
        self.hits += 1
        return latents

    def put(self, key: str, latents: torch.Tensor) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(latents.detach().cpu().contiguous(), file)
            os.replace(temporary, path)  # atomic: readers see the old file, the new one, or none
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.trim()

    def trim(self) -> None:
        """Remove the least recently used entries until the folder holds at most ``max_bytes``."""
        entries = []
        for path in self.folder.glob("*/*.pt"):
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)  # another process may have removed it first
            total -= size

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.pt"))


def cached_latents(cache: Optional[LatentCache], model, encode: Callable[[Sequence[np.ndarray], tuple], torch.Tensor],
                   rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``encode([rgb], size)``, or the latents ``cache`` holds for this picture, model and size (then no
    VAE pass); what is encoded is written to the cache."""
    if cache is None:
        return encode([rgb], size)
    key = picture_key(rgb, model_identity(model), size)
    latents = cache.get(key)
    if latents is None:
        latents = encode([rgb], size)
        cache.put(key, latents)
    return latents.to(model.device, model.dtype)
